//! What a channel membership costs the hub, in bytes of heap: the same 10 000 connections are
//! connected to a hub with one room, and to hubs with channels where each connection is in the
//! default channel and in two channels of 10, 100 or 1000 members more. A counting allocator measures
//! the hub's live heap after each; the difference per extra membership is what a membership
//! costs beyond the connection (`docs/CHANNELS.md`).
//!
//! `cargo run --release --example membership`

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::IpAddr;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use shequ_chat::channels::{ChannelsConfig, Policy};
use shequ_chat::hub::{Hub, HubConfig, Identity, Incoming, Join, Now};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const CONNECTIONS: usize = 10_000;

fn config(channels: bool) -> HubConfig {
    let section: ChannelsConfig = serde_json::from_str(
        r#"{"default": "all", "rules": [
            {"pattern": "all", "join": "public"},
            {"pattern": "g:*", "join": "public"},
            {"pattern": "h:*", "join": "public"}
        ]}"#,
    )
    .unwrap();
    HubConfig {
        max_connections: CONNECTIONS,
        max_connections_per_user: 1,
        max_connections_per_ip: 0,
        send_queue: 256,
        rate_per_sec: 5.0,
        rate_burst: 10,
        violations_before_close: 20,
        ping_interval: Duration::from_secs(30),
        pong_timeout: Duration::from_secs(60),
        idle_timeout: None,
        idle_check_interval: Duration::from_secs(60),
        presence_interval: Duration::from_secs(1),
        presence_deliveries_per_sec: shequ_chat::hub::PRESENCE_DELIVERIES_PER_SEC,
        presence_grace: Duration::from_secs(3),
        token_leeway: Duration::ZERO,
        history_size: 200,
        history_on_join: 50,
        persist_history: false,
        cluster: false,
        channels: channels.then(|| Policy::new(&section, 200).unwrap()),
        max_channels: 10_000,
        max_channels_per_connection: 32,
    }
}

/// The hub's heap with `CONNECTIONS` connections, each in `extra` channels of `group` beyond
/// the room or default channel; every queue drained, as after the welcomes were written.
fn heap(channels: bool, extra: usize, group: usize) -> isize {
    let before = LIVE.load(Ordering::Relaxed);
    // The hub itself, not the simulator: the simulator checks every invariant after each step,
    // which at this size is quadratic.
    #[allow(clippy::disallowed_methods)] // the clock only has to move forward
    let start = Now { at: std::time::Instant::now(), unix_ms: 1_764_200_000_000 };
    let mut hub = Hub::new(config(channels), start);
    let mut queues = Vec::with_capacity(CONNECTIONS);
    let groups = CONNECTIONS / group;
    for i in 0..CONNECTIONS {
        let identity = Identity {
            user_id: format!("user{i}"),
            username: format!("user {i}"),
            expires_unix_secs: 1_764_200_000 + 3600,
            channels: Vec::new(),
        };
        let join = Join { identity, since: None, ip: IpAddr::from([127, 0, 0, 1]) };
        let connected = hub.connect(start, join).unwrap();
        let names = [format!("g:{}", i / group), format!("h:{}", i % groups)];
        for channel in names.into_iter().take(extra) {
            let effects =
                hub.receive(start, connected.conn, Incoming::Join { channel, since: None });
            assert!(effects.is_empty());
        }
        connected.outbox.drain();
        queues.push(connected.outbox);
    }
    let later = start.after(Duration::from_secs(2));
    assert!(hub.handle_timeout(later).is_empty());
    for rx in &queues {
        rx.drain();
    }
    let live = LIVE.load(Ordering::Relaxed) - before;
    drop((hub, queues));
    live
}

fn main() {
    let per_conn = |bytes: isize| bytes as f64 / CONNECTIONS as f64;
    let room = heap(false, 0, 10);
    let one = heap(true, 0, 10);
    println!("{CONNECTIONS} connections; the hub's heap per connection:");
    println!("  one room:                              {:7.1} bytes", per_conn(room));
    println!("  channels, in the default channel only: {:7.1} bytes", per_conn(one));
    for group in [10, 100, 1000] {
        let three = heap(true, 2, group);
        println!(
            "  in the default channel and two of {group:4}: {:7.1} bytes, {:5.1} bytes per membership \
             beyond the first (the channels' own state included)",
            per_conn(three),
            per_conn(three - one) / 2.0
        );
    }
}
