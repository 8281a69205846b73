//! The hub fed with arbitrary event sequences; its invariants are checked after every event.
#![no_main]

use std::net::IpAddr;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shequ_chat::hub::{ConnId, Effect, Hub, HubConfig, Identity, Incoming, Join, Now};
use shequ_chat::outbox::OutboxRx;
use shequ_chat::protocol::{CloseReason, ProtocolError};

#[derive(Arbitrary, Debug)]
enum Op {
    Connect { user: u8, since: Option<u8>, ip: u8 },
    Disconnect(u8),
    Chat(u8, bool),
    Invalid(u8),
    Ping(u8),
    Alive(u8),
    Drain(u8),
    Refresh { conn: u8, user: u8, ttl: u8 },
    Advance(u16),
}

fn config() -> HubConfig {
    HubConfig {
        max_connections: 16,
        max_connections_per_user: 2,
        max_connections_per_ip: 6,
        send_queue: 12,
        rate_per_sec: 3.0,
        rate_burst: 3,
        violations_before_close: 4,
        ping_interval: Duration::from_secs(5),
        pong_timeout: Duration::from_secs(12),
        idle_timeout: Some(Duration::from_secs(30)),
        idle_check_interval: Duration::from_secs(3),
        presence_interval: Duration::from_millis(300),
        presence_grace: Duration::from_secs(2),
        token_leeway: Duration::from_secs(1),
        history_size: 8,
        history_on_join: 3,
        persist_history: true,
        cluster: false,
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let start = Now { at: Instant::now(), unix_ms: 1_764_200_000_000 };
    let mut now = start;
    let mut hub = Hub::new(config(), now);
    let mut open: Vec<(ConnId, OutboxRx)> = Vec::new();
    let mut closed: Vec<OutboxRx> = Vec::new();
    for op in ops {
        let pick = |i: u8, open: &[(ConnId, OutboxRx)]| {
            (!open.is_empty()).then(|| open[usize::from(i) % open.len()].0)
        };
        let identity = |user: u8, ttl: u64, now: Now| Identity {
            user_id: format!("u{}", user % 6),
            username: "x".into(),
            expires_unix_secs: now.unix_ms / 1000 + ttl,
        };
        let effects: Vec<Effect> = match op {
            Op::Connect { user, since, ip } => {
                let join = Join {
                    identity: identity(user, 600, now),
                    since: since.map(u64::from),
                    ip: IpAddr::from([10, 0, 0, ip % 4]),
                };
                match hub.connect(now, join) {
                    Ok(c) => {
                        open.push((c.conn, c.outbox));
                        c.effects
                    }
                    Err(_) => Vec::new(),
                }
            }
            Op::Disconnect(i) => match pick(i, &open) {
                Some(id) => hub.disconnect(now, id, CloseReason::Client),
                None => Vec::new(),
            },
            Op::Chat(i, long) => match pick(i, &open) {
                Some(id) => {
                    let text = if long { "x".repeat(300) } else { "hi".into() };
                    hub.receive(now, id, Incoming::Chat(text))
                }
                None => Vec::new(),
            },
            Op::Invalid(i) => match pick(i, &open) {
                Some(id) => hub.receive(now, id, Incoming::Invalid(ProtocolError::InvalidJson)),
                None => Vec::new(),
            },
            Op::Ping(i) => match pick(i, &open) {
                Some(id) => hub.receive(now, id, Incoming::Ping),
                None => Vec::new(),
            },
            Op::Alive(i) => match pick(i, &open) {
                Some(id) => hub.receive(now, id, Incoming::Alive),
                None => Vec::new(),
            },
            Op::Drain(i) => {
                if !open.is_empty() {
                    let n = open.len();
                    open[usize::from(i) % n].1.drain();
                }
                Vec::new()
            }
            Op::Refresh { conn, user, ttl } => match pick(conn, &open) {
                Some(id) => {
                    let fresh = identity(user, u64::from(ttl), now);
                    hub.receive(now, id, Incoming::Refresh(Ok(fresh)))
                }
                None => Vec::new(),
            },
            Op::Advance(ms) => {
                now = now.after(Duration::from_millis(u64::from(ms)));
                hub.handle_timeout(now)
            }
        };
        for effect in effects {
            if let Effect::Close { conn, outbox, reason } = effect {
                let at = open.iter().position(|(id, _)| *id == conn).expect("closing an open one");
                let (_, rx) = open.remove(at);
                outbox.close(reason);
                rx.drain();
                closed.push(rx);
            }
        }
        hub.check_invariants();
        assert_eq!(hub.connection_count(), open.len());
        for rx in &closed {
            assert!(rx.drain().is_empty(), "a frame after the close");
        }
    }
});
