//! The hub fed with arbitrary event sequences, the site's inputs (publish, kick, ban, mute,
//! delete) among them, with one room or with channels (the first byte decides); its invariants
//! are checked after every event.
#![no_main]

use std::net::IpAddr;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shequ_chat::hub::sim::{Sim, test_channels};
use shequ_chat::channels::Pattern;
use shequ_chat::hub::moderation::{Ban, Mute};
use shequ_chat::hub::{Action, ConnId, HubConfig, Identity, Incoming, Join, Now, Post, SITE_TICKETS};
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
    Join { conn: u8, channel: u8, since: Option<u8> },
    Leave { conn: u8, channel: u8 },
    Say { conn: u8, channel: u8 },
    /// The site's inputs (server API).
    Publish { channel: u8, as_user: Option<u8> },
    Kick(u8),
    Ban { user: u8, secs: Option<u8> },
    Unban(u8),
    Mute { user: u8, channel: Option<u8>, secs: u8 },
    Delete(u8),
}

/// Channels of every rule kind of `sim::test_channels`, a private conversation, and names no
/// rule covers.
const CHANNELS: [&str; 9] =
    ["general", "forum:1", "forum:2", "staff", "news", "quiet:1", "room:1", "dm:u1:u2", "x y"];

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
        presence_deliveries_per_sec: 50,
        presence_grace: Duration::from_secs(2),
        token_leeway: Duration::from_secs(1),
        history_size: 8,
        history_on_join: 3,
        persist_history: true,
        cluster: false,
        channels: None,
        max_channels: 100,
        max_channels_per_connection: 8,
    }
}

fn act(sim: &mut Sim, action: Action) {
    sim.apply(|hub, now| hub.act(now, &action).1);
}

fuzz_target!(|input: (bool, Vec<Op>)| {
    let (channels, ops) = input;
    let config = HubConfig {
        channels: channels.then(|| test_channels(8)),
        max_channels: 5,
        max_channels_per_connection: 3,
        ..config()
    };
    // The shared simulator checks the hub's invariants and the queues after every event.
    let mut sim = Sim::new(config, 1_764_200_000_000);
    for op in ops {
        // Open connections in id order, so that a byte picks the same one every run.
        let mut open: Vec<ConnId> = sim.open.keys().copied().collect();
        open.sort_unstable();
        let pick = |i: u8| (!open.is_empty()).then(|| open[usize::from(i) % open.len()]);
        let identity = |user: u8, ttl: u64, now: Now| Identity {
            user_id: format!("u{}", user % 6),
            username: "x".into(),
            expires_unix_secs: now.unix_ms / 1000 + ttl,
            channels: if user % 2 == 0 { vec![Pattern::Exact("staff".into())] } else { Vec::new() },
        };
        let receive = |sim: &mut Sim, i: u8, incoming: Incoming| {
            if let Some(id) = pick(i) {
                sim.apply(|hub, now| hub.receive(now, id, incoming));
            }
        };
        match op {
            Op::Connect { user, since, ip } => {
                let join = Join {
                    identity: identity(user, 600, sim.now),
                    since: since.map(u64::from),
                    ip: IpAddr::from([10, 0, 0, ip % 4]),
                };
                let _ = sim.connect(join);
            }
            Op::Disconnect(i) => {
                if let Some(id) = pick(i) {
                    sim.apply(|hub, now| hub.disconnect(now, id, CloseReason::Client));
                }
            }
            Op::Chat(i, long) => {
                let text = if long { "x".repeat(300) } else { "hi".into() };
                receive(&mut sim, i, Incoming::Chat { content: text, channel: None });
            }
            Op::Invalid(i) => receive(&mut sim, i, Incoming::Invalid(ProtocolError::InvalidJson)),
            Op::Ping(i) => receive(&mut sim, i, Incoming::Ping),
            Op::Alive(i) => receive(&mut sim, i, Incoming::Alive),
            Op::Drain(i) => {
                if let Some(id) = pick(i) {
                    sim.open[&id].drain();
                }
            }
            Op::Refresh { conn, user, ttl } => {
                let fresh = identity(user, u64::from(ttl), sim.now);
                receive(&mut sim, conn, Incoming::Refresh(Ok(fresh)));
            }
            Op::Advance(ms) => sim.advance(Duration::from_millis(u64::from(ms))),
            Op::Join { conn, channel, since } => {
                let channel = CHANNELS[usize::from(channel) % CHANNELS.len()].to_string();
                let since = since.map(u64::from);
                receive(&mut sim, conn, Incoming::Join { channel, since });
            }
            Op::Leave { conn, channel } => {
                let channel = CHANNELS[usize::from(channel) % CHANNELS.len()].to_string();
                receive(&mut sim, conn, Incoming::Leave(channel));
            }
            Op::Say { conn, channel } => {
                let channel = Some(CHANNELS[usize::from(channel) % CHANNELS.len()].to_string());
                receive(&mut sim, conn, Incoming::Chat { content: "hi".into(), channel });
            }
            Op::Publish { channel, as_user } => {
                let channel = (channel % 4 != 0)
                    .then(|| CHANNELS[usize::from(channel) % CHANNELS.len()].to_string());
                let sender = as_user.map(|u| (format!("u{}", u % 6), "x".to_string()));
                let post = Post { channel, content: "notice".into(), sender, ticket: SITE_TICKETS };
                sim.apply(|hub, now| hub.publish(now, post).1);
            }
            Op::Kick(user) => {
                act(&mut sim, Action::Disconnect { user_id: format!("u{}", user % 6), reason: None })
            }
            Op::Ban { user, secs } => {
                let user_id = format!("u{}", user % 6);
                let until = secs.map(|s| sim.now.unix_ms / 1000 + u64::from(s) + 1);
                act(&mut sim, Action::Ban(Ban { user_id, until, reason: None, since: 0 }));
            }
            Op::Unban(user) => act(&mut sim, Action::Unban { user_id: format!("u{}", user % 6) }),
            Op::Mute { user, channel, secs } => {
                let user_id = format!("u{}", user % 6);
                let channel = channel.map(|c| CHANNELS[usize::from(c) % CHANNELS.len()].to_string());
                let until = sim.now.unix_ms / 1000 + u64::from(secs) + 1;
                act(&mut sim, Action::Mute(Mute { user_id, channel, until, reason: None }));
            }
            Op::Delete(id) => act(&mut sim, Action::Delete { id: u64::from(id) }),
        }
    }
});
