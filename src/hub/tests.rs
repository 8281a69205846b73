//! The hub driven directly with a fake clock: no sockets, no sleeps. After every step the harness
//! checks the hub's invariants and that no closed queue receives anything.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use std::net::IpAddr;

use super::sim::Sim;
use super::*;

fn join(identity: Identity) -> Join {
    Join { identity, since: None, ip: IpAddr::from([127, 0, 0, 1]) }
}

const START_UNIX_MS: u64 = 1_764_200_000_000;

fn config() -> HubConfig {
    HubConfig {
        max_connections: 100,
        max_connections_per_user: 1,
        max_connections_per_ip: 0,
        send_queue: 64,
        rate_per_sec: 5.0,
        rate_burst: 10,
        violations_before_close: 20,
        ping_interval: Duration::from_secs(30),
        pong_timeout: Duration::from_secs(60),
        idle_timeout: Some(Duration::from_secs(600)),
        idle_check_interval: Duration::from_secs(60),
        presence_interval: Duration::from_secs(1),
        presence_deliveries_per_sec: PRESENCE_DELIVERIES_PER_SEC,
        // Departures count at once unless a test is about the grace.
        presence_grace: Duration::ZERO,
        token_leeway: Duration::from_secs(0),
        history_size: 20,
        history_on_join: 5,
        persist_history: false,
        cluster: false,
        channels: None,
        max_channels: 100,
        max_channels_per_connection: 8,
    }
}

/// The shared simulator (`hub/sim.rs`) with this file's helpers.
struct Harness(Sim);

impl std::ops::Deref for Harness {
    type Target = Sim;
    fn deref(&self) -> &Sim {
        &self.0
    }
}

impl std::ops::DerefMut for Harness {
    fn deref_mut(&mut self) -> &mut Sim {
        &mut self.0
    }
}

impl Harness {
    fn new(config: HubConfig) -> Harness {
        Harness(Sim::new(config, START_UNIX_MS))
    }

    fn identity(&self, user: &str, ttl: Duration) -> Identity {
        Identity {
            user_id: user.into(),
            username: format!("name-{user}"),
            expires_unix_secs: (self.now.unix_ms / 1000) + ttl.as_secs(),
            channels: Vec::new(),
        }
    }

    fn try_connect(&mut self, user: &str) -> Result<ConnId, Refused> {
        self.try_connect_since(user, None)
    }

    fn connect_since(&mut self, user: &str, since: u64) -> ConnId {
        self.try_connect_since(user, Some(since)).expect("connect")
    }

    fn try_connect_since(&mut self, user: &str, since: Option<u64>) -> Result<ConnId, Refused> {
        self.try_connect_from(user, since, IpAddr::from([127, 0, 0, 1]))
    }

    fn try_connect_from(
        &mut self,
        user: &str,
        since: Option<u64>,
        ip: IpAddr,
    ) -> Result<ConnId, Refused> {
        let identity = self.identity(user, Duration::from_secs(3600));
        self.0.connect(Join { identity, since, ip })
    }

    fn connect(&mut self, user: &str) -> ConnId {
        self.try_connect(user).expect("connect")
    }

    fn receive(&mut self, conn: ConnId, incoming: Incoming) {
        self.apply(|hub, now| hub.receive(now, conn, incoming));
    }

    fn chat(&mut self, conn: ConnId, content: &str) {
        self.receive(conn, Incoming::Chat { content: content.into(), channel: None });
    }

    fn disconnect(&mut self, conn: ConnId) {
        self.apply(|hub, now| hub.disconnect(now, conn, CloseReason::Client));
    }

    /// Frames queued for a connection, as JSON (`{"type":"ws_ping"}` for a WebSocket Ping).
    fn frames(&self, conn: ConnId) -> Vec<Value> {
        let rx = self.open.get(&conn).or(self.closed.get(&conn).map(|(_, rx)| rx)).unwrap();
        rx.drain()
            .into_iter()
            .map(|f| match f {
                Frame::Text(t) => serde_json::from_str(&t).unwrap(),
                Frame::Ping => serde_json::json!({"type": "ws_ping"}),
            })
            .collect()
    }

    fn of_type(&self, conn: ConnId, kind: &str) -> Vec<Value> {
        self.frames(conn).into_iter().filter(|f| f["type"] == kind).collect()
    }

    fn close_reason(&self, conn: ConnId) -> Option<CloseReason> {
        self.closed.get(&conn).map(|(r, _)| *r)
    }
}

#[test]
fn welcome_carries_identity_and_online_count() {
    let mut h = Harness::new(config());
    let a = h.connect("1");
    let b = h.connect("2");
    let wa = &h.of_type(a, "welcome")[0];
    assert_eq!(wa["user_id"], "1");
    assert_eq!(wa["username"], "name-1");
    assert_eq!(wa["online"], 1);
    assert_eq!(h.of_type(b, "welcome")[0]["online"], 2);
}

#[test]
fn replacement_closes_old_first_and_keeps_the_count() {
    let mut h = Harness::new(config());
    let watcher = h.connect("watcher");
    let old = h.connect("42");
    h.advance(Duration::from_secs(5));
    h.frames(watcher);
    h.frames(old);

    let new = h.connect("42");
    assert_eq!(h.close_reason(old), Some(CloseReason::Replaced));
    assert_eq!(h.hub.online(), 2);
    assert_eq!(h.hub.stats().replacements, 1);
    h.chat(new, "after");
    h.advance(Duration::from_secs(5));

    assert!(h.frames(old).is_empty(), "the replaced connection got frames after its replacement");
    let got = h.frames(new);
    assert_eq!(got[0]["type"], "welcome");
    assert_eq!(got[0]["online"], 2);
    let chats: Vec<&Value> = got.iter().filter(|f| f["type"] == "chat").collect();
    assert_eq!(chats.len(), 1);
    assert_eq!(chats[0]["content"], "after");
    let seen = h.frames(watcher);
    assert_eq!(seen.iter().filter(|f| f["type"] == "chat").count(), 1);
    assert!(!seen.iter().any(|f| f["type"] == "online"), "a replacement changed presence");

    // The old connection's task ends later; the hub no longer knows it.
    h.disconnect(old);
    h.receive(old, Incoming::Chat { content: "ghost".into(), channel: None });
    assert_eq!(h.hub.online(), 2);
    assert!(h.of_type(watcher, "chat").is_empty());
}

#[test]
fn two_devices_stay_and_a_third_replaces_the_oldest() {
    let mut h = Harness::new(HubConfig { max_connections_per_user: 2, ..config() });
    let phone = h.connect("7");
    let laptop = h.connect("7");
    assert_eq!(h.hub.online(), 1);
    h.chat(phone, "hi");
    assert_eq!(h.of_type(laptop, "chat").len(), 1);
    assert_eq!(h.of_type(phone, "chat").len(), 1);
    let tablet = h.connect("7");
    assert_eq!(h.close_reason(phone), Some(CloseReason::Replaced));
    assert!(h.close_reason(laptop).is_none());
    assert_eq!(h.of_type(tablet, "welcome")[0]["online"], 1);
    assert_eq!(h.hub.connection_count(), 2);
}

#[test]
fn presence_in_a_large_channel_is_paced_by_the_deliveries_it_costs() {
    // 10 `online` deliveries a second: a flush that reaches 30 connections waits 3 s, not 1.
    let mut h = Harness::new(HubConfig { presence_deliveries_per_sec: 10, ..config() });
    let first = h.connect("u0");
    assert_eq!(h.of_type(first, "online")[0]["count"], 1, "one delivery: the interval rules");
    for i in 1..30 {
        h.connect(&format!("u{i}"));
    }
    h.advance(Duration::from_secs(1));
    assert_eq!(h.of_type(first, "online")[0]["count"], 30);
    h.connect("late");
    h.advance(Duration::from_millis(2999));
    assert!(h.of_type(first, "online").is_empty(), "30 deliveries hold the next flush for 3 s");
    h.advance(Duration::from_millis(1));
    assert_eq!(h.of_type(first, "online")[0]["count"], 31);
}

#[test]
fn presence_is_coalesced_into_one_frame_per_interval() {
    let mut h = Harness::new(config());
    let first = h.connect("u0");
    assert_eq!(h.of_type(first, "online")[0]["count"], 1, "first change goes out at once");
    let others: Vec<ConnId> = (1..100).map(|i| h.connect(&format!("u{i}"))).collect();
    assert!(h.of_type(first, "online").is_empty(), "joins within the interval are held back");
    h.advance(Duration::from_millis(999));
    assert!(h.of_type(first, "online").is_empty());
    h.advance(Duration::from_millis(1));
    let online = h.of_type(first, "online");
    assert_eq!(online.len(), 1);
    assert_eq!(online[0]["count"], 100);
    assert_eq!(h.of_type(others[98], "online")[0]["count"], 100);

    // One leaves and one joins within the interval: the count is back where it was, no frame.
    h.disconnect(others[0]);
    h.connect("newcomer");
    h.advance(Duration::from_secs(5));
    assert!(h.of_type(first, "online").is_empty());
}

fn grace() -> HubConfig {
    HubConfig { presence_grace: Duration::from_secs(3), ..config() }
}

#[test]
fn a_refresh_within_the_presence_grace_changes_nobody_s_view() {
    let mut h = Harness::new(grace());
    let bystander = h.connect("bystander");
    let mut page = h.connect("refresher");
    h.advance(Duration::from_secs(5));
    h.frames(bystander);
    // The browser closes the old page's socket first, then the new page connects: after 0.2 s,
    // then after 2 s.
    for gap in [Duration::from_millis(200), Duration::from_secs(2)] {
        h.disconnect(page);
        h.advance(gap);
        page = h.connect("refresher");
        assert_eq!(h.of_type(page, "welcome")[0]["online"], 2);
        h.advance(Duration::from_secs(10));
        assert!(h.of_type(bystander, "online").is_empty(), "the bystander saw the refresh");
        assert_eq!(h.hub.online(), 2);
    }
    // Gone for good: the departure counts once the grace is over, not before.
    h.disconnect(page);
    h.advance(Duration::from_millis(2999));
    assert!(h.of_type(bystander, "online").is_empty());
    assert_eq!(h.hub.online(), 2, "within the grace the user still counts");
    h.advance(Duration::from_millis(1));
    let online = h.of_type(bystander, "online");
    assert_eq!(online.len(), 1);
    assert_eq!(online[0]["count"], 1);
    // A newcomer within someone's grace sees them counted.
    let other = h.connect("other");
    h.disconnect(other);
    let late = h.connect("late");
    assert_eq!(h.of_type(late, "welcome")[0]["online"], 3);
}

#[test]
fn cluster_presence_holds_a_departure_for_the_grace() {
    let mut h = Harness::new(HubConfig { cluster: true, ..grace() });
    let a = h.connect("a");
    h.disconnect(a);
    h.advance(Duration::from_secs(1));
    let a = h.connect("a");
    h.advance(Duration::from_secs(10));
    assert_eq!(h.presence, vec![("a".to_string(), true)], "a refresh is no news to Redis");
    assert_eq!(h.hub.local_users().collect::<Vec<_>>(), vec!["a"]);
    h.disconnect(a);
    assert_eq!(h.hub.local_users().count(), 1, "within the grace Redis still counts them");
    h.advance(Duration::from_secs(3));
    assert_eq!(h.presence[1], ("a".to_string(), false));
    assert_eq!(h.hub.local_users().count(), 0);
}

#[test]
fn a_joiner_who_saw_a_passing_count_gets_the_final_one() {
    let mut h = Harness::new(config());
    let first = h.connect("a");
    let passing = h.connect("b");
    assert_eq!(h.of_type(passing, "welcome")[0]["online"], 2);
    h.disconnect(first);
    h.advance(Duration::from_secs(1));
    let online = h.of_type(passing, "online");
    assert_eq!(online.len(), 1, "{online:?}");
    assert_eq!(online[0]["count"], 1);
}

#[test]
fn message_ids_strictly_increase_and_everyone_gets_each_once() {
    let mut h = Harness::new(HubConfig { rate_burst: 100, ..config() });
    let conns: Vec<ConnId> = (0..5).map(|i| h.connect(&i.to_string())).collect();
    for round in 0..4 {
        for &c in &conns {
            h.chat(c, &format!("m{round}"));
        }
        for &c in &conns {
            let chats = h.of_type(c, "chat");
            assert_eq!(chats.len(), 5);
            let ids: Vec<u64> = chats.iter().map(|m| m["id"].as_u64().unwrap()).collect();
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        }
    }
    assert_eq!(h.hub.stats().deliveries, 4 * 5 * 5, "chat deliveries only");
    assert_eq!(h.hub.stats().messages_broadcast, 4 * 5);
}

#[test]
fn chat_carries_sender_and_wall_clock_time() {
    let mut h = Harness::new(config());
    let a = h.connect("42");
    h.advance(Duration::from_millis(1500));
    h.chat(a, "hello");
    let m = &h.of_type(a, "chat")[0];
    assert_eq!(m["user_id"], "42");
    assert_eq!(m["username"], "name-42");
    assert_eq!(m["content"], "hello");
    assert_eq!(m["ts"], START_UNIX_MS + 1500);
}

#[test]
fn rate_limit_admits_burst_then_rate_and_survives_reconnect() {
    let mut h = Harness::new(config());
    let a = h.connect("spammer");
    for i in 0..12 {
        h.chat(a, &format!("{i}"));
    }
    let frames = h.frames(a);
    assert_eq!(frames.iter().filter(|f| f["type"] == "chat").count(), 10);
    let errors: Vec<&Value> = frames.iter().filter(|f| f["type"] == "error").collect();
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0]["code"], "rate_limited");
    assert_eq!(h.hub.stats().rate_limited, 2);

    // Reconnecting does not refill the bucket.
    let b = h.connect("spammer");
    h.chat(b, "again");
    assert_eq!(h.of_type(b, "error")[0]["code"], "rate_limited");

    // One second refills rate_per_sec tokens.
    h.advance(Duration::from_secs(1));
    for i in 0..6 {
        h.chat(b, &format!("{i}"));
    }
    let frames = h.frames(b);
    assert_eq!(frames.iter().filter(|f| f["type"] == "chat").count(), 5);
    assert_eq!(frames.iter().filter(|f| f["type"] == "error").count(), 1);
}

#[test]
fn violations_answer_with_errors_then_close_with_policy() {
    let mut h = Harness::new(HubConfig {
        violations_before_close: 3,
        ping_interval: Duration::from_secs(100),
        pong_timeout: Duration::from_secs(200),
        ..config()
    });
    let bad = h.connect("troll");
    let good = h.connect("nice");
    h.receive(bad, Incoming::Invalid(ProtocolError::InvalidJson));
    h.receive(bad, Incoming::Invalid(ProtocolError::UnsupportedType));
    let errors = h.of_type(bad, "error");
    assert_eq!(errors[0]["code"], "invalid_json");
    assert_eq!(errors[1]["code"], "unsupported_type");
    assert!(h.close_reason(bad).is_none());
    // The window restarts after a minute.
    h.advance(VIOLATION_WINDOW);
    h.receive(bad, Incoming::Invalid(ProtocolError::InvalidJson));
    h.receive(bad, Incoming::Invalid(ProtocolError::InvalidJson));
    assert!(h.close_reason(bad).is_none());
    h.receive(bad, Incoming::Invalid(ProtocolError::BinaryUnsupported));
    assert_eq!(h.close_reason(bad), Some(CloseReason::Policy));
    assert_eq!(h.hub.stats().invalid_messages, 5);
    assert!(h.of_type(good, "error").is_empty(), "another user saw the errors");
}

#[test]
fn ping_gets_pong() {
    let mut h = Harness::new(config());
    let a = h.connect("a");
    h.frames(a);
    h.receive(a, Incoming::Ping);
    assert_eq!(h.frames(a), vec![serde_json::json!({"type": "pong"})]);
}

#[test]
fn heartbeat_pings_and_drops_the_silent() {
    let mut h = Harness::new(config());
    let alive = h.connect("alive");
    let silent = h.connect("silent");
    h.advance(Duration::from_secs(30));
    assert_eq!(h.of_type(silent, "ws_ping").len(), 1);
    h.receive(alive, Incoming::Alive);
    h.advance(Duration::from_secs(29));
    assert!(h.close_reason(silent).is_none());
    assert!(h.close_reason(silent).is_none(), "closed before its pong timeout");
    h.receive(alive, Incoming::Alive);
    h.advance(Duration::from_secs(1));
    assert_eq!(h.close_reason(silent), Some(CloseReason::Heartbeat));
    h.receive(alive, Incoming::Alive);
    h.advance(Duration::from_secs(30));
    assert!(h.close_reason(alive).is_none());
    assert_eq!(h.hub.stats().heartbeat_failures, 1);
    assert_eq!(h.hub.online(), 1);
}

#[test]
fn a_silent_connection_closes_at_its_own_deadline_not_at_a_later_tick() {
    let mut h = Harness::new(config());
    let bystander = h.connect("bystander");
    // Connections opened at different moments: each is judged from its own last frame.
    h.advance(Duration::from_millis(12_345));
    let silent = h.connect("silent");
    h.advance(Duration::from_secs(17));
    h.receive(silent, Incoming::Alive);
    let last_frame = h.now.at;
    for _ in 0..59 {
        h.receive(bystander, Incoming::Alive);
        h.advance(Duration::from_secs(1));
    }
    h.advance(Duration::from_millis(999));
    assert!(h.close_reason(silent).is_none(), "closed before 60 s of silence");
    h.receive(bystander, Incoming::Alive);
    h.advance(Duration::from_millis(1));
    assert_eq!(h.close_reason(silent), Some(CloseReason::Heartbeat));
    assert_eq!(h.now.at - last_frame, Duration::from_secs(60), "pong_timeout after its last frame");
    assert!(h.close_reason(bystander).is_none());
}

/// A restart storm: 200 connections in the same instant, never silent for long enough to be
/// closed.
fn two_hundred_at_once() -> (Harness, Vec<ConnId>) {
    let mut h = Harness::new(HubConfig {
        max_connections: 200,
        pong_timeout: Duration::from_secs(3600),
        ..config()
    });
    let conns = (0..200).map(|i| h.connect(&format!("u{i}"))).collect();
    (h, conns)
}

/// Moves the clock a second at a time for `secs` seconds: the seconds (from 1) in which each
/// connection got a Ping.
fn ping_seconds(h: &mut Harness, conns: &[ConnId], secs: u64) -> HashMap<ConnId, Vec<u64>> {
    let mut pings: HashMap<ConnId, Vec<u64>> = HashMap::new();
    for second in 1..=secs {
        h.advance(Duration::from_secs(1));
        for &c in conns {
            if !h.of_type(c, "ws_ping").is_empty() {
                pings.entry(c).or_default().push(second);
            }
        }
    }
    pings
}

/// How many connections have `which` of their ping seconds in each second.
fn per_second(pings: &HashMap<ConnId, Vec<u64>>, which: usize) -> HashMap<u64, usize> {
    let mut per_second: HashMap<u64, usize> = HashMap::new();
    for seconds in pings.values() {
        *per_second.entry(seconds[which]).or_default() += 1;
    }
    per_second
}

#[test]
fn pings_are_spread_over_the_interval_and_then_keep_their_pace() {
    let (mut h, conns) = two_hundred_at_once();
    let pings = ping_seconds(&mut h, &conns, 90);
    let per_second = per_second(&pings, 0);
    assert_eq!(pings.len(), 200, "everyone is pinged within the interval");
    assert!(per_second.keys().all(|s| (15..=30).contains(s)), "{per_second:?}");
    assert!(per_second.len() >= 14, "first pings fall in {} distinct seconds", per_second.len());
    assert!(per_second.values().all(|&n| n <= 30), "a wave: {per_second:?}");
    for (c, seconds) in &pings {
        let gaps: Vec<u64> = seconds.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|&g| g == 30), "connection {c} pinged at {seconds:?}");
    }
}

#[test]
fn pings_sent_late_together_keep_their_own_phases() {
    let (mut h, conns) = two_hundred_at_once();
    // The loop is busy for 40 s: every first ping (due at 15–30 s) goes out in one instant.
    h.stall(Duration::from_secs(40));
    assert!(conns.iter().all(|&c| h.of_type(c, "ws_ping").len() == 1));
    // From then on each is pinged on its own phase again, not all together every 30 s.
    let pings = ping_seconds(&mut h, &conns, 30);
    assert!(pings.values().all(|seconds| seconds.len() == 1), "{pings:?}");
    let per_second = per_second(&pings, 0);
    assert_eq!(per_second.values().sum::<usize>(), 200, "{per_second:?}");
    assert!(per_second.len() >= 14, "pings fall in {} distinct seconds", per_second.len());
    assert!(per_second.values().all(|&n| n <= 30), "a wave: {per_second:?}");
}

#[test]
fn idle_connections_close_and_chatting_ones_stay() {
    let mut h = Harness::new(HubConfig {
        idle_timeout: Some(Duration::from_secs(2)),
        idle_check_interval: Duration::from_secs(1),
        ping_interval: Duration::from_secs(100),
        pong_timeout: Duration::from_secs(200),
        ..config()
    });
    let quiet = h.connect("quiet");
    let talker = h.connect("talker");
    h.advance(Duration::from_millis(1500));
    h.chat(talker, "still here");
    h.advance(Duration::from_millis(1500));
    assert_eq!(h.close_reason(quiet), Some(CloseReason::Idle));
    assert!(h.close_reason(talker).is_none());
    h.advance(Duration::from_secs(2));
    assert_eq!(h.close_reason(talker), Some(CloseReason::Idle));
}

#[test]
fn idle_off_keeps_quiet_connections() {
    let mut h = Harness::new(HubConfig { idle_timeout: None, ..config() });
    let quiet = h.connect("quiet");
    for _ in 0..100 {
        h.receive(quiet, Incoming::Alive);
        h.frames(quiet);
        h.advance(Duration::from_secs(30));
    }
    assert!(h.close_reason(quiet).is_none());
}

#[test]
fn token_expiry_closes_and_refresh_extends() {
    let mut h = Harness::new(config());
    let identity = h.identity("u", Duration::from_secs(10));
    let connected = h.0.hub.connect(h.0.now, join(identity)).unwrap();
    let a = connected.conn;
    h.open.insert(a, connected.outbox);
    let b_identity = h.identity("other", Duration::from_secs(5));
    let connected = h.0.hub.connect(h.0.now, join(b_identity)).unwrap();
    let b = connected.conn;
    h.open.insert(b, connected.outbox);

    h.advance(Duration::from_secs(4));
    let fresh = h.identity("u", Duration::from_secs(20));
    h.receive(a, Incoming::Refresh(Ok(fresh)));
    let wrong_user = h.identity("someone-else", Duration::from_secs(20));
    h.receive(a, Incoming::Refresh(Ok(wrong_user)));
    assert_eq!(h.of_type(a, "error")[0]["code"], "auth_failed");

    h.advance(Duration::from_millis(999));
    assert!(h.close_reason(b).is_none());
    h.advance(Duration::from_millis(1));
    assert_eq!(h.close_reason(b), Some(CloseReason::TokenExpired));
    h.advance(Duration::from_secs(10));
    assert!(h.close_reason(a).is_none(), "the refreshed token was ignored");
    h.advance(Duration::from_secs(10));
    assert_eq!(h.close_reason(a), Some(CloseReason::TokenExpired));
}

#[test]
fn slow_receiver_is_closed_not_skipped() {
    let mut h = Harness::new(HubConfig { rate_burst: 100, send_queue: 8, ..config() });
    let slow = h.connect("slow");
    let reader = h.connect("reader");
    let sender = h.connect("sender");
    // send_queue is 8; `slow` never drains.
    for i in 0..20 {
        h.chat(sender, &format!("{i}"));
        h.frames(reader);
        h.frames(sender);
    }
    assert_eq!(h.close_reason(slow), Some(CloseReason::TooSlow));
    assert!(h.close_reason(reader).is_none());
    assert!(h.frames(slow).is_empty(), "a too-slow queue keeps its backlog");
    assert_eq!(h.hub.online(), 2);
}

#[test]
fn capacity_refuses_newcomers_but_not_replacements() {
    let mut h = Harness::new(HubConfig { max_connections: 2, ..config() });
    h.connect("a");
    let b = h.connect("b");
    assert_eq!(h.try_connect("c"), Err(Refused::Capacity));
    let b2 = h.connect("b");
    assert_eq!(h.close_reason(b), Some(CloseReason::Replaced));
    h.disconnect(b2);
    h.connect("c");
}

#[test]
fn shutdown_closes_everyone_once() {
    let mut h = Harness::new(config());
    for i in 0..10 {
        h.connect(&i.to_string());
    }
    let effects = h.0.hub.shutdown(h.0.now);
    h.perform(effects);
    assert_eq!(h.closed.len(), 10);
    assert!(h.closed.values().all(|(r, _)| *r == CloseReason::Shutdown));
    assert_eq!(h.hub.online(), 0);
}

#[test]
fn departed_users_are_forgotten_once_their_limits_expire() {
    let mut h = Harness::new(config());
    let a = h.connect("gone");
    h.chat(a, "bye");
    h.disconnect(a);
    assert_eq!(h.hub.users.len(), 1, "limiter state outlives the connection");
    h.advance(Duration::from_secs(120));
    assert!(h.hub.users.is_empty());
}

#[test]
fn timeouts_called_early_or_twice_do_nothing() {
    let mut h = Harness::new(config());
    let a = h.connect("a");
    h.frames(a);
    for _ in 0..3 {
        let effects = h.0.hub.handle_timeout(h.0.now);
        h.perform(effects);
    }
    assert!(h.frames(a).is_empty());
    assert!(h.closed.is_empty());
}

fn chat_ids(frames: &[Value]) -> Vec<u64> {
    frames.iter().filter(|f| f["type"] == "chat").map(|f| f["id"].as_u64().unwrap()).collect()
}

/// A harness with a sender who has sent `n` messages (ids 1..=n).
fn with_messages(n: u64) -> (Harness, ConnId) {
    let mut h = Harness::new(HubConfig { rate_burst: 1000, ..config() });
    let sender = h.connect("sender");
    for i in 1..=n {
        h.chat(sender, &format!("m{i}"));
        h.frames(sender);
    }
    (h, sender)
}

#[test]
fn joining_without_since_gets_the_last_on_join_messages() {
    let (mut h, _) = with_messages(12);
    let c = h.connect("late");
    let frames = h.frames(c);
    assert_eq!(frames[0]["type"], "welcome");
    assert!(frames[0].get("recovered").is_none());
    assert_eq!(chat_ids(&frames), vec![8, 9, 10, 11, 12]);
}

#[test]
fn since_within_the_history_recovers_exactly_what_was_missed() {
    let (mut h, sender) = with_messages(12);
    let c = h.connect_since("back", 9);
    h.chat(sender, "live");
    let frames = h.frames(c);
    assert_eq!(frames[0]["recovered"], true);
    assert_eq!(chat_ids(&frames), vec![10, 11, 12, 13], "replay, then live, no gap");
    let up_to_date = h.connect_since("current", 13);
    let frames = h.frames(up_to_date);
    assert_eq!(frames[0]["recovered"], true);
    assert!(chat_ids(&frames).is_empty());
    assert_eq!(h.hub.stats().recoveries_recovered, 2);
}

#[test]
fn since_older_than_the_history_says_so_and_sends_the_recent() {
    let (mut h, _) = with_messages(30); // history holds 11..=30
    let edge = h.connect_since("edge", 10);
    let frames = h.frames(edge);
    assert_eq!(frames[0]["recovered"], true, "since = oldest - 1 is still complete");
    assert_eq!(chat_ids(&frames).len(), 20);
    let old = h.connect_since("old", 9);
    let frames = h.frames(old);
    assert_eq!(frames[0]["recovered"], false);
    assert_eq!(chat_ids(&frames), vec![26, 27, 28, 29, 30]);
    let future = h.connect_since("future", 31);
    assert_eq!(h.frames(future)[0]["recovered"], false);
    assert_eq!(h.hub.stats().recoveries_too_old, 2);
}

#[test]
fn restored_history_continues_ids_and_persists_new_ones() {
    let mut h = Harness::new(HubConfig { persist_history: true, ..config() });
    let old: Vec<(u64, Utf8Bytes)> = (40..=42)
        .map(|id| (id, Utf8Bytes::from(format!(r#"{{"type":"chat","id":{id}}}"#))))
        .collect();
    let effects = h.0.hub.restore(h.0.now, old.clone());
    h.perform(effects);
    let effects = h.0.hub.restore(h.0.now, old);
    h.perform(effects);
    assert_eq!(h.hub.history_len(), 3, "restoring twice holds each message once");
    let c = h.connect_since("back", 40);
    h.chat(c, "new");
    let frames = h.frames(c);
    assert_eq!(chat_ids(&frames), vec![41, 42, 43]);
    assert_eq!(h.persisted.len(), 1);
    assert!(h.persisted[0].contains(r#""id":43"#));
}

/// On a 32-bit board (armv7) `usize` is 32 bits: ids, timestamps and `since` arithmetic must not
/// pass through it. Runs there under qemu-user (`.ci/emulated`).
#[test]
fn ids_and_timestamps_beyond_32_bits_survive_replay() {
    let mut h = Harness::new(config());
    let first = u64::from(u32::MAX) + 10;
    let old: Vec<(u64, Utf8Bytes)> = (first..first + 3)
        .map(|id| (id, Utf8Bytes::from(format!(r#"{{"type":"chat","id":{id}}}"#))))
        .collect();
    let effects = h.0.hub.restore(h.0.now, old);
    h.perform(effects);
    let c = h.connect_since("back", first);
    h.chat(c, "new");
    let frames = h.frames(c);
    assert_eq!(frames[0]["recovered"], true);
    assert_eq!(chat_ids(&frames), vec![first + 1, first + 2, first + 3]);
    let ts = frames.last().unwrap()["ts"].as_u64().unwrap();
    assert_eq!(ts, START_UNIX_MS, "a millisecond timestamp is above u32::MAX: {ts}");
    assert!(ts > u64::from(u32::MAX));
    let far = h.connect_since("far", first - 1_000_000);
    assert_eq!(h.frames(far)[0]["recovered"], false, "a gap of a million is too old");
}

#[test]
fn history_off_replays_nothing() {
    let mut h = Harness::new(HubConfig { history_size: 0, history_on_join: 0, ..config() });
    let a = h.connect("a");
    h.chat(a, "gone");
    let b = h.connect_since("b", 0);
    let frames = h.frames(b);
    assert_eq!(frames[0]["recovered"], false);
    assert!(chat_ids(&frames).is_empty());
    assert_eq!(h.hub.history_len(), 0);
}

#[test]
fn per_address_limit_counts_open_connections_and_allows_replacing_one_s_own() {
    let mut h = Harness::new(HubConfig { max_connections_per_ip: 2, ..config() });
    let home = IpAddr::from([192, 0, 2, 1]);
    let cafe = IpAddr::from([192, 0, 2, 2]);
    let a = h.try_connect_from("a", None, home).unwrap();
    h.try_connect_from("b", None, home).unwrap();
    assert_eq!(h.try_connect_from("c", None, home), Err(Refused::IpLimit));
    h.try_connect_from("c", None, cafe).unwrap();
    // `a` refreshing from the same address replaces its own connection: allowed.
    let a2 = h.try_connect_from("a", None, home).unwrap();
    assert_eq!(h.close_reason(a), Some(CloseReason::Replaced));
    h.disconnect(a2);
    h.try_connect_from("d", None, home).unwrap();
}

// ---- Cluster mode: the hub's side of `cluster/`, with Redis played by the test. ----

fn cluster() -> Harness {
    Harness::new(HubConfig { cluster: true, rate_burst: 1000, ..config() })
}

impl Harness {
    /// What Redis does with the published messages: numbers them from `first_id` and hands them
    /// back through `deliver`.
    fn redis_numbers(&mut self, first_id: u64) {
        for (i, (_, head)) in std::mem::take(&mut self.published).into_iter().enumerate() {
            let id = first_id + i as u64;
            let effects = self.0.hub.deliver(self.0.now, id, Utf8Bytes::from(head.with_id(id)));
            self.perform(effects);
        }
    }

    fn deliver_other(&mut self, id: u64, content: &str) {
        let frame = ChatHead::new(None, "remote", "someone", content, self.now.unix_ms).with_id(id);
        let effects = self.0.hub.deliver(self.0.now, id, Utf8Bytes::from(frame));
        self.perform(effects);
    }
}

#[test]
fn cluster_chat_is_published_and_broadcast_only_when_it_comes_back() {
    let mut h = cluster();
    let a = h.connect("a");
    let b = h.connect("b");
    h.frames(a);
    h.frames(b);
    h.chat(a, "hello");
    assert!(h.of_type(b, "chat").is_empty(), "nothing goes out before Redis numbers it");
    assert_eq!(h.published.len(), 1);
    assert_eq!(h.published[0].0, a);
    h.redis_numbers(40);
    let got = h.of_type(b, "chat");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["id"], 40);
    assert_eq!(got[0]["content"], "hello");
    assert_eq!(got[0]["user_id"], "a");
    assert_eq!(h.of_type(a, "chat").len(), 1, "the sender's copy is its acknowledgement");
    assert_eq!(h.hub.last_message_id(), 40);
}

#[test]
fn cluster_delivery_is_in_id_order_and_exactly_once() {
    let mut h = cluster();
    let a = h.connect("a");
    h.frames(a);
    h.deliver_other(5, "five");
    h.deliver_other(6, "six");
    // A reconnect's catch-up from the stream repeats what the channel already brought.
    h.deliver_other(5, "five");
    h.deliver_other(6, "six");
    h.deliver_other(9, "nine");
    assert_eq!(chat_ids(&h.frames(a)), vec![5, 6, 9]);
    assert_eq!(h.hub.stats().messages_broadcast, 3);
    // The history holds them too, for `since` on this instance.
    let back = h.connect_since("back", 5);
    let frames = h.frames(back);
    assert_eq!(frames[0]["recovered"], true);
    assert_eq!(chat_ids(&frames), vec![6, 9]);
}

#[test]
fn cluster_presence_reports_first_and_last_connection_of_a_user() {
    let mut h = Harness::new(HubConfig { cluster: true, max_connections_per_user: 2, ..config() });
    let a1 = h.connect("a");
    let a2 = h.connect("a");
    assert_eq!(h.presence, vec![("a".to_string(), true)], "a second device is not news");
    // A third connection replaces the oldest here: the user stays online.
    let a3 = h.connect("a");
    assert_eq!(h.close_reason(a1), Some(CloseReason::Replaced));
    assert_eq!(h.presence.len(), 1);
    h.disconnect(a2);
    assert_eq!(h.presence.len(), 1);
    h.disconnect(a3);
    assert_eq!(h.presence[1], ("a".to_string(), false));
    assert!(h.announced.is_empty(), "announcements are for one connection per user");
}

#[test]
fn cluster_online_count_is_everyone_s_but_never_below_the_local_one() {
    let mut h = cluster();
    let a = h.connect("a");
    assert_eq!(h.frames(a)[0]["online"], 1);
    let effects = h.0.hub.set_cluster_online(h.0.now, Some(7));
    h.perform(effects);
    h.advance(Duration::from_secs(2));
    let counts: Vec<Value> = h.of_type(a, "online").iter().map(|f| f["count"].clone()).collect();
    assert_eq!(counts.last(), Some(&Value::from(7)));
    let b = h.connect("b");
    assert_eq!(h.frames(b)[0]["online"], 7);
    // Redis lost: clients see the users here.
    let effects = h.0.hub.set_cluster_online(h.0.now, None);
    h.perform(effects);
    h.advance(Duration::from_secs(2));
    let counts: Vec<Value> = h.of_type(b, "online").iter().map(|f| f["count"].clone()).collect();
    assert_eq!(counts.last(), Some(&Value::from(2)));
    // Redis has not counted a newcomer yet: the local count wins.
    let effects = h.0.hub.set_cluster_online(h.0.now, Some(1));
    h.perform(effects);
    assert_eq!(h.hub.shown_online(), 2);
}

#[test]
fn cluster_replacement_closes_only_connections_announced_before() {
    let mut h = cluster();
    let old = h.connect("u");
    assert_eq!(h.announced, vec![("u".to_string(), old)]);
    let effects = h.0.hub.announced(h.0.now, old);
    h.perform(effects);
    // `u` connected elsewhere after `old` was announced: `old` is older, and goes.
    let effects = h.0.hub.joined_elsewhere(h.0.now, "u");
    h.perform(effects);
    assert_eq!(h.close_reason(old), Some(CloseReason::Replaced));
    assert_eq!(h.hub.online(), 0);
    assert_eq!(h.presence.last(), Some(&("u".to_string(), false)));
    assert_eq!(h.hub.stats().replaced_elsewhere, 1);
    // A connection whose own announcement has not come back yet is newer than the one
    // announced elsewhere: it stays, and the other instance closes its own.
    let new = h.connect("u");
    let effects = h.0.hub.joined_elsewhere(h.0.now, "u");
    h.perform(effects);
    assert!(h.close_reason(new).is_none());
    assert_eq!(h.hub.online(), 1);
    // Unknown users and connections are ignored.
    let effects = h.0.hub.joined_elsewhere(h.0.now, "nobody");
    h.perform(effects);
    let effects = h.0.hub.announced(h.0.now, old);
    h.perform(effects);
}

#[test]
fn cluster_message_refused_by_a_full_outbox_tells_the_sender_without_a_violation() {
    let mut h = Harness::new(HubConfig { cluster: true, violations_before_close: 1, ..config() });
    let a = h.connect("a");
    h.frames(a);
    h.chat(a, "lost");
    let effects = h.0.hub.not_sent(h.0.now, a);
    h.perform(effects);
    let errors = h.of_type(a, "error");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["code"], "unavailable");
    assert!(h.close_reason(a).is_none(), "not the sender's fault: no violation");
}

mod channels;
mod site;

/// Every queue drained, with its task waiting on it again (as a connection's pump waits).
fn all_waiting(h: &Harness) {
    for rx in h.open.values() {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        while rx.poll_next(&mut cx).is_ready() {}
    }
}

#[test]
fn a_broadcast_to_more_than_one_turn_of_wakes_is_paced() {
    let mut h = Harness::new(HubConfig { max_connections: WAKES_PER_TURN + 1, ..config() });
    let conns: Vec<ConnId> = (0..WAKES_PER_TURN).map(|i| h.connect(&format!("u{i}"))).collect();
    all_waiting(&h);
    h.chat(conns[0], "to a turn's worth");
    assert!(h.hub.pacer().is_empty());
    assert!(conns.iter().all(|&c| h.of_type(c, "chat").len() == 1));

    let last = h.connect("one more");
    all_waiting(&h);
    h.chat(conns[0], "to more");
    // Every member's frame is queued now; only the wake-ups wait for the pacer.
    assert_eq!(h.hub.pacer().len(), WAKES_PER_TURN + 1);
    for c in conns.iter().chain([&last]) {
        assert_eq!(h.of_type(*c, "chat")[0]["content"], "to more");
    }
}
