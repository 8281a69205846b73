//! The hub with a `channels` section: joins, leaves, per-channel chat, history, presence and
//! private conversations, on the fake clock.

use super::*;
use crate::channels::{ChannelsConfig, Pattern, Policy};

/// The test channels (`sim::test_channels`), with small limits.
fn forum() -> HubConfig {
    HubConfig {
        channels: Some(super::super::sim::test_channels(20)),
        max_channels: 10,
        max_channels_per_connection: 4,
        ..config()
    }
}

impl Harness {
    fn connect_claiming(&mut self, user: &str, claims: &[&str]) -> ConnId {
        self.reconnect_claiming(user, claims, None)
    }

    fn reconnect_claiming(&mut self, user: &str, claims: &[&str], since: Option<u64>) -> ConnId {
        let mut identity = self.identity(user, Duration::from_secs(3600));
        identity.channels = claims.iter().map(|c| Pattern::parse(c).unwrap()).collect();
        self.0.connect(Join { since, ..join(identity) }).expect("connect")
    }

    fn join_channel(&mut self, conn: ConnId, channel: &str, since: Option<u64>) {
        self.receive(conn, Incoming::Join { channel: channel.into(), since });
    }

    fn say(&mut self, conn: ConnId, channel: &str, content: &str) {
        let channel = Some(channel.into());
        self.receive(conn, Incoming::Chat { content: content.into(), channel });
    }

    /// The one `error` frame queued for `conn`: its code and channel.
    fn error(&self, conn: ConnId) -> (String, String) {
        let errors = self.of_type(conn, "error");
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = &errors[0];
        (e["code"].as_str().unwrap().into(), e["channel"].as_str().unwrap_or("").into())
    }
}

#[test]
fn welcome_puts_the_connection_in_the_default_channel_and_its_claimed_channels() {
    let mut h = Harness::new(forum());
    let a = h.connect_claiming("a", &["staff", "room:*"]);
    let frames: Vec<Value> = h.frames(a).into_iter().filter(|f| f["type"] != "online").collect();
    assert_eq!(frames[0]["type"], "welcome");
    assert_eq!(frames[0]["protocol"], 2);
    assert_eq!(frames[0]["channels"], serde_json::json!(["general", "staff"]));
    assert_eq!(frames[0]["online"], 1, "the default channel's count");
    assert_eq!(frames[1]["type"], "joined");
    assert_eq!(frames[1]["channel"], "staff");
    assert_eq!(frames[1]["online"], 1);
    assert_eq!(frames.len(), 2);
    // A chat without a channel goes to the default one, and says which.
    h.chat(a, "hello");
    let chat = &h.of_type(a, "chat")[0];
    assert_eq!(chat["channel"], "general");
}

#[test]
fn a_message_reaches_the_members_of_its_channel_and_nobody_else() {
    let mut h = Harness::new(forum());
    let (a, b, c) = (h.connect("a"), h.connect("b"), h.connect("c"));
    h.join_channel(a, "forum:1", None);
    h.join_channel(b, "forum:1", None);
    h.join_channel(c, "forum:2", None);
    for conn in [a, b, c] {
        h.frames(conn);
    }
    let deliveries = h.hub.stats().deliveries;
    h.say(a, "forum:1", "in one");
    assert_eq!(h.hub.stats().deliveries - deliveries, 2, "two members, two deliveries");
    for conn in [a, b] {
        let chats = h.of_type(conn, "chat");
        assert_eq!(chats.len(), 1);
        assert_eq!(chats[0]["channel"], "forum:1");
        assert_eq!(chats[0]["content"], "in one");
    }
    assert!(h.of_type(c, "chat").is_empty());
}

#[test]
fn each_refusal_has_its_code_and_names_the_channel() {
    let mut h = Harness::new(forum());
    let a = h.connect("a");
    h.frames(a);
    let cases: [(&str, &str); 4] = [
        ("nowhere", "no_such_channel"),
        ("bad name!", "no_such_channel"),
        ("staff", "forbidden"),
        ("dm:b:c", "forbidden"),
    ];
    for (channel, code) in cases {
        h.join_channel(a, channel, None);
        assert_eq!(h.error(a), (code.to_string(), channel.to_string()), "{channel}");
    }
    h.join_channel(a, "news", None);
    h.frames(a);
    h.say(a, "news", "hi");
    assert_eq!(h.error(a), ("read_only".into(), "news".into()));
    h.say(a, "forum:9", "hi");
    assert_eq!(h.error(a), ("not_joined".into(), "forum:9".into()));
    h.say(a, "nowhere", "hi");
    assert_eq!(h.error(a), ("no_such_channel".into(), "nowhere".into()));
    h.receive(a, Incoming::Leave("forum:9".into()));
    assert_eq!(h.error(a), ("not_joined".into(), "forum:9".into()));
    // general, news, and two more: the fifth is one too many.
    h.join_channel(a, "forum:1", None);
    h.join_channel(a, "forum:2", None);
    h.frames(a);
    h.join_channel(a, "forum:3", None);
    assert_eq!(h.error(a), ("too_many_channels".into(), "forum:3".into()));
    assert_eq!(h.hub.stats().channel_refusals, 9);
    assert!(h.close_reason(a).is_none(), "refusals are answered, not punished");
    assert_eq!(h.hub.channel_count(), 4, "a refused channel is not kept");
}

#[test]
fn a_full_channel_counts_users_not_connections() {
    let mut h = Harness::new(HubConfig { max_connections_per_user: 2, ..forum() });
    let a1 = h.connect_claiming("a", &["room:*"]);
    let a2 = h.connect_claiming("a", &["room:*"]);
    let b = h.connect_claiming("b", &["room:*"]);
    let c = h.connect_claiming("c", &["room:*"]);
    for conn in [a1, a2, b, c] {
        h.join_channel(conn, "room:1", None);
    }
    for conn in [a1, a2, b] {
        assert_eq!(h.of_type(conn, "joined").len(), 1);
    }
    assert_eq!(h.error(c), ("channel_full".into(), "room:1".into()));
}

#[test]
fn the_server_holds_at_most_max_channels() {
    let mut h = Harness::new(HubConfig { max_channels_per_connection: 32, ..forum() });
    let a = h.connect("a");
    // `general` is one; nine more fill it.
    for i in 0..9 {
        h.join_channel(a, &format!("forum:{i}"), None);
    }
    h.frames(a);
    h.join_channel(a, "forum:x", None);
    assert_eq!(h.error(a), ("too_many_channels".into(), "forum:x".into()));
    // Leaving an empty channel without history frees it, and room for another.
    h.receive(a, Incoming::Leave("forum:0".into()));
    h.join_channel(a, "forum:x", None);
    assert_eq!(h.of_type(a, "joined").len(), 1);
}

#[test]
fn chat_without_a_channel_needs_a_default_one() {
    let mut config = forum();
    let section: ChannelsConfig =
        serde_json::from_str(r#"{"rules": [{"pattern": "*", "join": "public"}]}"#).unwrap();
    config.channels = Some(Policy::new(&section, 20).unwrap());
    let mut h = Harness::new(config);
    let a = h.connect("a");
    let welcome = &h.frames(a)[0];
    assert_eq!(welcome["channels"], serde_json::json!([]));
    assert!(welcome.get("online").is_none());
    h.chat(a, "where does this go");
    let error = &h.of_type(a, "error")[0];
    assert_eq!(error["code"], "invalid_message");
}

#[test]
fn join_with_since_replays_exactly_the_channel_s_missed_messages() {
    let mut h = Harness::new(forum());
    let (a, b) = (h.connect("a"), h.connect("b"));
    h.join_channel(a, "forum:1", None);
    h.say(a, "forum:1", "one"); // id 1
    h.chat(a, "elsewhere"); // id 2, in general
    h.say(a, "forum:1", "two"); // id 3
    h.frames(b);
    h.join_channel(b, "forum:1", Some(1));
    let frames = h.frames(b);
    assert_eq!(frames[0]["type"], "joined");
    assert_eq!(frames[0]["recovered"], true);
    assert_eq!(chat_ids(&frames), vec![3]);
    // The ring holds 3: after five more, id 3 is gone and a `since` before it says so.
    for i in 0..5 {
        h.say(a, "forum:1", &format!("more {i}"));
    }
    h.receive(b, Incoming::Leave("forum:1".into()));
    h.frames(b);
    h.join_channel(b, "forum:1", Some(3));
    let frames = h.frames(b);
    assert_eq!(frames[0]["recovered"], false);
    assert_eq!(chat_ids(&frames), vec![6, 7, 8], "the last on_join (5) the ring holds (3)");
    h.join_channel(b, "forum:1", Some(7));
    let frames = h.frames(b);
    assert_eq!(frames[0]["recovered"], true, "joining again is a resync");
    assert_eq!(chat_ids(&frames), vec![8]);
}

#[test]
fn a_refresh_loses_nothing_and_duplicates_nothing_in_any_channel() {
    let mut h = Harness::new(HubConfig { presence_grace: Duration::from_secs(2), ..forum() });
    let a = h.connect_claiming("a", &["staff"]);
    let b = h.connect_claiming("b", &["staff"]);
    h.join_channel(a, "forum:1", None);
    h.join_channel(b, "forum:1", None);
    h.say(b, "forum:1", "before"); // 1
    h.say(b, "staff", "before"); // 2
    let seen = chat_ids(&h.frames(a));
    assert_eq!(seen, vec![1, 2]);
    h.advance(Duration::from_secs(5));
    h.frames(a);
    h.frames(b);
    // The page closes; messages arrive in every channel before it is back.
    h.disconnect(a);
    h.say(b, "forum:1", "missed"); // 3
    h.say(b, "staff", "missed"); // 4
    h.chat(b, "missed"); // 5, general
    let a = h.reconnect_claiming("a", &["staff"], Some(2));
    let mut frames = h.frames(a);
    h.join_channel(a, "forum:1", Some(2));
    frames.extend(h.frames(a));
    let mut ids = chat_ids(&frames);
    ids.sort_unstable();
    assert_eq!(ids, vec![3, 4, 5], "each missed message once");
    assert_eq!(frames[0]["recovered"], true);
    // Nobody saw the refresh: b's channels kept their counts throughout.
    h.advance(Duration::from_secs(5));
    assert!(h.of_type(b, "online").is_empty());
}

#[test]
fn presence_is_per_channel_and_held_for_the_grace() {
    let mut h = Harness::new(HubConfig { presence_grace: Duration::from_secs(2), ..forum() });
    let (a, b) = (h.connect("a"), h.connect("b"));
    h.join_channel(a, "forum:1", None);
    h.join_channel(b, "forum:1", None);
    h.advance(Duration::from_secs(2));
    let online = h.of_type(a, "online");
    assert!(online.contains(&serde_json::json!({"type":"online","channel":"forum:1","count":2})));
    assert!(online.contains(&serde_json::json!({"type":"online","channel":"general","count":2})));
    // A leave counts at once, in that channel only.
    h.receive(b, Incoming::Leave("forum:1".into()));
    assert_eq!(h.of_type(b, "left"), vec![serde_json::json!({"type":"left","channel":"forum:1"})]);
    h.advance(Duration::from_secs(1));
    assert_eq!(
        h.of_type(a, "online"),
        vec![serde_json::json!({"type":"online","channel":"forum:1","count":1})]
    );
    // A closed connection counts until the grace is over.
    h.disconnect(b);
    h.advance(Duration::from_millis(1900));
    assert!(h.of_type(a, "online").is_empty());
    h.advance(Duration::from_millis(1200));
    assert_eq!(
        h.of_type(a, "online"),
        vec![serde_json::json!({"type":"online","channel":"general","count":1})]
    );
}

#[test]
fn a_channel_without_presence_sends_no_counts() {
    let mut h = Harness::new(forum());
    let (a, b) = (h.connect("a"), h.connect("b"));
    h.join_channel(a, "quiet:1", None);
    let joined = &h.of_type(a, "joined")[0];
    assert!(joined.get("online").is_none());
    h.join_channel(b, "quiet:1", None);
    h.advance(Duration::from_secs(3));
    assert!(h.of_type(a, "online").iter().all(|f| f["channel"] != "quiet:1"));
}

#[test]
fn empty_channels_are_freed_and_channels_with_history_stay() {
    let mut h = Harness::new(forum());
    let a = h.connect("a");
    h.join_channel(a, "quiet:1", None); // history 0
    h.join_channel(a, "forum:1", None);
    h.say(a, "forum:1", "kept");
    h.say(a, "quiet:1", "not kept");
    assert_eq!(h.hub.channel_count(), 3);
    h.disconnect(a);
    assert_eq!(h.hub.channel_count(), 1, "only forum:1, which holds a message");
    let b = h.connect("b");
    h.frames(b);
    h.join_channel(b, "forum:1", Some(0));
    assert_eq!(chat_ids(&h.frames(b)), vec![1]);
}

#[test]
fn a_private_conversation_is_for_its_two_users_and_tells_the_other() {
    let mut h = Harness::new(HubConfig { max_connections_per_user: 2, ..forum() });
    let (a, b1, b2, c) = (h.connect("a"), h.connect("b"), h.connect("b"), h.connect("c"));
    h.join_channel(a, "dm:a:b", None);
    assert_eq!(h.of_type(a, "joined").len(), 1);
    h.join_channel(c, "dm:a:b", None);
    assert_eq!(h.error(c), ("forbidden".into(), "dm:a:b".into()));
    h.join_channel(a, "dm:b:a", None);
    assert_eq!(h.error(a).0, "no_such_channel", "the ids are sorted in the name");
    h.join_channel(b2, "dm:a:b", None);
    h.frames(b1);
    h.frames(b2);
    h.say(a, "dm:a:b", "psst");
    let notices = h.of_type(b1, "dm");
    assert_eq!(
        notices,
        vec![serde_json::json!({"type":"dm","channel":"dm:a:b","user_id":"a","username":"name-a"})]
    );
    let in_it = h.frames(b2);
    assert_eq!(chat_ids(&in_it), vec![1], "the member gets the message, not the notice");
    assert!(in_it.iter().all(|f| f["type"] != "dm"));
    assert!(h.of_type(c, "dm").is_empty());
    h.join_channel(b1, "dm:a:b", Some(0));
    assert_eq!(chat_ids(&h.frames(b1)), vec![1]);
}

#[test]
fn restored_history_goes_to_each_frame_s_channel() {
    let mut h = Harness::new(forum());
    let frame =
        |channel: &str, id: u64| ChatHead::new(Some(channel), "x", "x", "m", 0).into_frame(id);
    let restored = vec![
        (1, frame("forum:1", 1)),
        (2, frame("general", 2)),
        (3, frame("gone", 3)),
        (4, frame("forum:1", 4)),
        (5, frame("forum:1", 5)),
        (6, frame("forum:1", 6)),
        (7, frame("forum:1", 7)),
    ];
    h.apply(|hub, now| hub.restore(now, restored.into_iter().map(|(id, f)| (id, f.into()))));
    assert_eq!(h.hub.last_message_id(), 7);
    assert_eq!(h.hub.history_len(), 4, "forum:1 keeps 3, general 1, `gone` has no rule");
    let held: Vec<u64> = h.hub.held_history().iter().map(|t| ChatHead::id_of(t).unwrap()).collect();
    assert_eq!(held, vec![2, 5, 6, 7]);
    let a = h.connect("a");
    h.frames(a);
    h.join_channel(a, "forum:1", Some(4));
    let frames = h.frames(a);
    assert_eq!(frames[0]["recovered"], true);
    assert_eq!(chat_ids(&frames), vec![5, 6, 7]);
    h.join_channel(a, "forum:1", Some(3));
    assert_eq!(h.frames(a)[0]["recovered"], false);
}

#[test]
fn without_a_channels_section_join_and_leave_are_unknown_types() {
    let mut h = Harness::new(config());
    let a = h.connect("a");
    h.frames(a);
    h.join_channel(a, "general", None);
    let error = &h.of_type(a, "error")[0];
    assert_eq!(error["code"], "unsupported_type");
    assert!(error.get("channel").is_none());
    // A `channel` field on a chat is ignored, as every unknown field is.
    h.say(a, "anything", "hi");
    let chat = &h.of_type(a, "chat")[0];
    assert!(chat.get("channel").is_none());
}

#[test]
fn a_join_to_a_full_queue_closes_the_connection_as_too_slow() {
    let mut h = Harness::new(HubConfig { send_queue: 8, ..forum() });
    let (a, b) = (h.connect("a"), h.connect("b"));
    h.join_channel(a, "forum:1", None);
    h.advance(Duration::from_secs(5));
    h.frames(b);
    for i in 0..8 {
        h.chat(a, &format!("{i}"));
        h.frames(a);
    }
    // b has not read the eight: its queue is full, and a replay would go past it.
    assert!(h.close_reason(b).is_none());
    h.join_channel(b, "forum:1", None);
    assert_eq!(h.close_reason(b), Some(CloseReason::TooSlow));
}

#[test]
fn at_the_limit_the_oldest_dormant_channel_makes_room() {
    let mut h = Harness::new(HubConfig { max_channels_per_connection: 32, ..forum() });
    let a = h.connect("a");
    // `general` and nine topics, each left with one message in it: the server is full.
    for i in 0..9 {
        let topic = format!("forum:{i}");
        h.join_channel(a, &topic, None);
        h.say(a, &topic, "only message");
        h.receive(a, Incoming::Leave(topic));
    }
    assert_eq!(h.hub.channel_count(), 10);
    h.frames(a);
    // A tenth topic evicts forum:0, whose last message (id 1) is the oldest.
    h.join_channel(a, "forum:new", None);
    assert_eq!(h.of_type(a, "joined").len(), 1);
    assert_eq!(h.hub.stats().channels_evicted, 1);
    assert_eq!(h.hub.history_len(), 8);
    // forum:0 comes back empty, and cannot claim to have kept what a `since` asks for.
    h.join_channel(a, "forum:0", Some(0));
    let frames = h.frames(a);
    assert_eq!(frames[0]["recovered"], false);
    assert!(chat_ids(&frames).is_empty());
    // The others kept theirs.
    h.join_channel(a, "forum:8", Some(8));
    let frames = h.frames(a);
    assert_eq!(frames[0]["recovered"], true);
    assert_eq!(chat_ids(&frames), vec![9], "forum:8's one message");
    // Channels in use are never evicted: with all ten joined, a new one is refused.
    let b = h.connect("b");
    h.frames(b);
    for i in 1..8 {
        h.join_channel(a, &format!("forum:{i}"), None);
    }
    h.join_channel(b, "forum:another", None);
    assert_eq!(h.error(b), ("too_many_channels".into(), "forum:another".into()));
}
