//! Channels on the real server: the forum example config, every refusal and rule kind, private
//! conversations, and a page refresh that recovers each channel once, across a restart too.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use shequ_chat::config::Config;

/// The `channels` section of `configs/forum.json`, as the server reads it.
fn forum_channels() -> Value {
    let text = std::fs::read_to_string("configs/forum.json").unwrap();
    let config = Config::parse(&text).expect("configs/forum.json loads");
    serde_json::to_value(config.channels.expect("a channels section")).unwrap()
}

/// A token for `sub` whose `channels` claim lists `claims`.
fn token_claiming(sub: &str, claims: &[&str]) -> String {
    sign_hs256(json!({
        "sub": sub,
        "name": format!("user-{sub}"),
        "exp": unix_now() + 3600,
        "channels": claims,
    }))
}

async fn connect_claiming(server: &Server, sub: &str, claims: &[&str], query: &str) -> Client {
    let token = token_claiming(sub, claims);
    Client::connect(server.addr, &format!("token={token}{query}"), &[]).await.expect("connect")
}

async fn join(client: &mut Client, channel: &str, since: Option<u64>) -> Value {
    let mut frame = json!({"type": "join", "channel": channel});
    if let Some(since) = since {
        frame["since"] = json!(since);
    }
    client.send_json(frame).await;
    loop {
        let frame = client.recv().await;
        if matches!(frame["type"].as_str(), Some("joined" | "error")) {
            return frame;
        }
    }
}

async fn say(client: &mut Client, channel: &str, content: &str) {
    client.send_json(json!({"type": "chat", "channel": channel, "content": content})).await;
}

/// The next chat frame (skipping presence).
async fn next_chat(client: &mut Client) -> Value {
    client.recv_type("chat").await
}

/// Asserts the next error frame has this code and names this channel.
async fn refused(client: &mut Client, code: &str, channel: &str) {
    let error = client.recv_type("error").await;
    assert_eq!((error["code"].as_str(), error["channel"].as_str()), (Some(code), Some(channel)));
}

#[test]
fn the_forum_config_serves_old_clients_topics_staff_and_announcements() {
    let server = Server::start(json!({"channels": forum_channels()}));
    smol::block_on(async {
        let mut alice = connect_claiming(&server, "alice", &["staff"], "").await;
        let welcome = alice.recv_type("welcome").await;
        assert_eq!(welcome["protocol"], 2);
        assert_eq!(welcome["channels"], json!(["lobby", "staff"]));
        let joined = alice.recv_type("joined").await;
        assert_eq!(joined["channel"], "staff");
        // A client written before channels: no claim, no join, chat without a channel.
        let mut bob = server.connect("bob").await;
        let welcome = bob.recv_type("welcome").await;
        assert_eq!(welcome["channels"], json!(["lobby"]));
        assert!(welcome["online"].as_u64().is_some(), "{welcome}");
        bob.chat("hello lobby").await;
        for client in [&mut alice, &mut bob] {
            let chat = next_chat(client).await;
            assert_eq!(
                (chat["channel"].as_str(), chat["content"].as_str()),
                (Some("lobby"), Some("hello lobby"))
            );
        }
        // Topics: only the topic's members get its messages.
        let mut carol = server.joined("carol").await;
        assert_eq!(join(&mut alice, "forum:7", None).await["type"], "joined");
        assert_eq!(join(&mut bob, "forum:7", None).await["type"], "joined");
        assert_eq!(join(&mut carol, "forum:8", None).await["type"], "joined");
        say(&mut bob, "forum:7", "about topic 7").await;
        let chat = next_chat(&mut alice).await;
        assert_eq!(
            (chat["channel"].as_str(), chat["content"].as_str()),
            (Some("forum:7"), Some("about topic 7"))
        );
        let carol_got = carol.frames_until_pong().await;
        assert!(carol_got.iter().all(|f| f["channel"] != "forum:7"), "{carol_got:?}");
        // Staff is for the claim; announcements are read-only; the rest has no rule.
        let refusal = join(&mut bob, "staff", None).await;
        assert_eq!(
            (refusal["code"].as_str(), refusal["channel"].as_str()),
            (Some("forbidden"), Some("staff"))
        );
        assert_eq!(join(&mut bob, "announcements", None).await["type"], "joined");
        say(&mut bob, "announcements", "me too").await;
        refused(&mut bob, "read_only", "announcements").await;
        let refusal = join(&mut bob, "elsewhere", None).await;
        assert_eq!(refusal["code"], "no_such_channel");
        say(&mut bob, "forum:9", "not in it").await;
        refused(&mut bob, "not_joined", "forum:9").await;
        bob.send_json(json!({"type": "leave", "channel": "forum:7"})).await;
        assert_eq!(bob.recv_type("left").await["channel"], "forum:7");
        // Refusals are answered and counted, and nobody is cut off for them.
        server.await_metric("shequ_chat_channel_refusals_total", 4.0);
        bob.chat_and_see("still here").await;
    });
}

#[test]
fn limits_and_private_conversations() {
    let server = Server::start(json!({
        "limits": {"max_channels": 4, "max_channels_per_connection": 2},
        "channels": {"rules": [
            {"pattern": "room:*", "join": "public", "max_members": 1, "history": 0},
            {"pattern": "topic:*", "join": "public", "history": 0}
        ]}
    }));
    smol::block_on(async {
        let mut a = server.joined("a").await;
        let mut b = server.joined("b").await;
        let mut c = server.joined("c").await;
        // max_members counts users.
        assert_eq!(join(&mut a, "room:1", None).await["type"], "joined");
        let refusal = join(&mut b, "room:1", None).await;
        assert_eq!(
            (refusal["code"].as_str(), refusal["channel"].as_str()),
            (Some("channel_full"), Some("room:1"))
        );
        // Two channels per connection.
        assert_eq!(join(&mut a, "topic:1", None).await["type"], "joined");
        let refusal = join(&mut a, "topic:2", None).await;
        assert_eq!(
            (refusal["code"].as_str(), refusal["channel"].as_str()),
            (Some("too_many_channels"), Some("topic:2"))
        );
        // Four channels on the server: room:1, topic:1, then two more.
        assert_eq!(join(&mut b, "topic:2", None).await["type"], "joined");
        assert_eq!(join(&mut b, "topic:3", None).await["type"], "joined");
        let refusal = join(&mut c, "topic:4", None).await;
        assert_eq!(
            (refusal["code"].as_str(), refusal["channel"].as_str()),
            (Some("too_many_channels"), Some("topic:4"))
        );
        // A private conversation needs no rule, is for its two users, and tells the other one.
        a.send_json(json!({"type": "leave", "channel": "topic:1"})).await;
        a.recv_type("left").await;
        assert_eq!(join(&mut a, "dm:a:c", None).await["type"], "joined");
        let refusal = join(&mut b, "dm:a:c", None).await;
        assert_eq!(refusal["code"], "forbidden");
        say(&mut a, "dm:a:c", "psst").await;
        let notice = c.recv_type("dm").await;
        assert_eq!(
            notice,
            json!({"type": "dm", "channel": "dm:a:c", "user_id": "a", "username": "user-a"})
        );
        let joined = join(&mut c, "dm:a:c", Some(0)).await;
        assert_eq!(joined["recovered"], true);
        let chat = next_chat(&mut c).await;
        assert_eq!(
            (chat["channel"].as_str(), chat["content"].as_str()),
            (Some("dm:a:c"), Some("psst"))
        );
    });
}

fn history_path(name: &str) -> PathBuf {
    let path = std::env::temp_dir()
        .join(format!("shequ-chat-channels-test-{}-{name}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// A page's refresh: reconnect with the last id it saw, then join again each channel that was
/// not joined on connect, with the same `since`. Returns the ids of the chat frames it got up
/// to its own pong, per channel.
async fn refresh(server: &Server, sub: &str, since: u64, rejoin: &[&str]) -> Vec<(String, u64)> {
    let mut page = connect_claiming(server, sub, &[], &format!("&since={since}")).await;
    let welcome = page.recv_type("welcome").await;
    assert_eq!(welcome["recovered"], true, "{welcome}");
    let mut frames = Vec::new();
    for channel in rejoin {
        page.send_json(json!({"type": "join", "channel": channel, "since": since})).await;
    }
    frames.extend(page.frames_until_pong().await);
    for channel in rejoin {
        let joined = frames.iter().find(|f| f["type"] == "joined" && f["channel"] == *channel);
        assert_eq!(joined.expect("joined")["recovered"], true);
    }
    frames
        .iter()
        .filter(|f| f["type"] == "chat")
        .map(|f| (f["channel"].as_str().unwrap().to_string(), f["id"].as_u64().unwrap()))
        .collect()
}

#[test]
fn a_refresh_recovers_each_channel_once_and_the_history_file_keeps_channels() {
    let path = history_path("refresh");
    let config = json!({
        "history": {"file": path, "fsync": "interval"},
        "channels": {"default": "lobby", "rules": [
            {"pattern": "lobby", "join": "public"},
            {"pattern": "forum:*", "join": "public", "history": 3}
        ]}
    });
    let mut server = Server::start(config.clone());
    smol::block_on(async {
        let mut poster = server.joined("poster").await;
        assert_eq!(join(&mut poster, "forum:1", None).await["type"], "joined");
        let mut reader = server.joined("reader").await;
        assert_eq!(join(&mut reader, "forum:1", None).await["type"], "joined");
        say(&mut poster, "forum:1", "f1").await; // 1
        poster.chat("l1").await; // 2
        let mut last = 0;
        while last < 2 {
            last = next_chat(&mut reader).await["id"].as_u64().unwrap();
        }
        drop(reader); // the tab goes away
        say(&mut poster, "forum:1", "f2").await; // 3
        poster.chat("l2").await; // 4
        say(&mut poster, "forum:1", "f3").await; // 5
        let mut seen = 0;
        while seen < 5 {
            seen = next_chat(&mut poster).await["id"].as_u64().unwrap();
        }
        let got = refresh(&server, "reader", 2, &["forum:1"]).await;
        let expected: Vec<(String, u64)> = [("lobby", 4), ("forum:1", 3), ("forum:1", 5)]
            .iter()
            .map(|(c, id)| (c.to_string(), *id))
            .collect();
        let mut got_sorted = got.clone();
        got_sorted.sort_by_key(|(_, id)| *id);
        let mut expected_sorted = expected.clone();
        expected_sorted.sort_by_key(|(_, id)| *id);
        assert_eq!(got_sorted, expected_sorted, "each missed message once: {got:?}");
    });
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
    drop(server);

    let file = std::fs::read_to_string(&path).unwrap();
    assert!(file.lines().all(|l| l.contains(r#""channel":"#)), "{file}");
    let server = Server::start(config);
    smol::block_on(async {
        // Ids go on from the file, and each channel got its own lines back.
        let got = refresh(&server, "reader", 2, &["forum:1"]).await;
        let ids: Vec<u64> = got.iter().map(|(_, id)| *id).collect();
        assert_eq!(ids.iter().filter(|id| [3, 4, 5].contains(id)).count(), 3, "{got:?}");
        let mut poster = server.joined("poster").await;
        poster.chat("after").await;
        let mut chat = next_chat(&mut poster).await;
        while chat["content"] != "after" {
            assert!(chat["id"].as_u64().unwrap() <= 5, "{chat}: history comes first");
            chat = next_chat(&mut poster).await;
        }
        assert_eq!(chat["id"], 6);
    });
    let _ = std::fs::remove_file(&path);
}
