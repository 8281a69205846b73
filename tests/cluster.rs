//! Several instances as one chat, over a real `redis-server` (feature `redis`): messages cross
//! instances exactly once and in order, the online count converges, a user's new connection on
//! one instance replaces the old one on another, `since` recovers on any instance, and Redis can
//! die and come back under live users.

#![cfg(feature = "redis")]

mod common;

use common::*;
use serde_json::{Value, json};

/// Starts an instance joined to `redis` under `prefix`, and waits until it has joined.
fn instance(redis: &Redis, prefix: &str, extra: Value) -> Server {
    let mut patch = json!({
        "cluster": { "redis_url": redis.url(), "prefix": prefix, "presence_ttl_secs": 3 }
    });
    merge(&mut patch, extra);
    let server = Server::start(patch);
    server.wait_for_log("cluster: connected to Redis");
    server
}

/// A Redis and two instances joined to it under `prefix`.
fn two_instances(prefix: &str) -> (Redis, Server, Server) {
    let redis = Redis::start();
    let a = instance(&redis, prefix, json!({}));
    let b = instance(&redis, prefix, json!({}));
    (redis, a, b)
}

fn chat_ids(frames: &[Value]) -> Vec<u64> {
    frames.iter().filter(|f| f["type"] == "chat").map(|f| f["id"].as_u64().unwrap()).collect()
}

#[test]
fn a_message_from_one_instance_reaches_users_on_the_other_exactly_once_in_order() {
    let (_redis, a, b) = two_instances("exactly-once");
    smol::block_on(async {
        let mut alice = a.joined("alice").await;
        let mut bob = b.joined("bob").await;
        let mut carol = b.joined("carol").await;

        for i in 0..20 {
            alice.chat(&format!("a{i}")).await;
        }
        bob.chat("from b").await;
        for reader in [&mut alice, &mut bob, &mut carol] {
            let mut got = Vec::new();
            while got.len() < 21 {
                got.push(reader.recv_type("chat").await);
            }
            let ids = chat_ids(&got);
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids not increasing: {ids:?}");
            let from_a: Vec<&str> = got
                .iter()
                .filter(|f| f["user_id"] == "alice")
                .map(|f| f["content"].as_str().unwrap())
                .collect();
            let expected: Vec<String> = (0..20).map(|i| format!("a{i}")).collect();
            assert_eq!(from_a, expected, "alice's messages, each once and in order");
            assert_eq!(got.iter().filter(|f| f["content"] == "from b").count(), 1);
            // Nothing more is on its way: no copy comes after.
            let rest = reader.frames_until_pong().await;
            assert!(chat_ids(&rest).is_empty(), "delivered twice: {rest:?}");
        }
        // A published each of its messages once, and heard all 21 back through Redis.
        a.await_metric("shequ_chat_broker_published_total", 20.0);
        b.await_metric("shequ_chat_broker_published_total", 1.0);
        a.await_metric("shequ_chat_broker_received_total", 21.0);
        b.await_metric("shequ_chat_broker_up", 1.0);
    });
}

#[test]
fn the_online_count_converges_and_a_crashed_instance_s_users_drop_out() {
    let (redis, a, b) = two_instances("presence");
    let c = instance(&redis, "presence", json!({}));
    smol::block_on(async {
        let mut alice = a.joined("alice").await;
        let mut bob = b.connect("bob").await;
        bob.await_online(2).await;
        alice.await_online(2).await;

        let mut dave = c.connect("dave").await;
        dave.await_online(3).await;
        alice.await_online(3).await;

        bob.close().await;
        alice.await_online(2).await;
        dave.await_online(2).await;

        // Instance C dies without a word, dave still connected to it: its presence runs out
        // after `presence_ttl_secs`.
        drop(c);
        alice.await_online(1).await;
        a.await_metric("shequ_chat_cluster_online_users", 1.0);
        drop(dave);
    });
}

#[test]
fn an_instance_restarted_under_its_configured_name_carries_on() {
    let redis = Redis::start();
    let named = json!({"cluster": {"instance": "board-1"}});
    let b = instance(&redis, "restart", json!({}));
    smol::block_on(async {
        let mut bob = b.joined("bob").await;
        for round in 0..2 {
            let a = instance(&redis, "restart", named.clone());
            let mut alice = a.joined("alice").await;
            let content = format!("from board-1, start {round}");
            alice.chat(&content).await;
            assert_eq!(bob.recv_type("chat").await["content"], content.as_str());
            drop(alice);
            drop(a);
        }
    });
}

#[test]
fn a_new_connection_on_one_instance_replaces_the_old_one_on_another() {
    let (_redis, a, b) = two_instances("replace");
    smol::block_on(async {
        let mut watcher = a.joined("watcher").await;
        let mut old = a.joined("42").await;
        // Its chat comes back through Redis after its announcement did.
        old.chat_and_see("before").await;
        // B hears it from Redis on its own time: the new connection must come after.
        b.await_metric("shequ_chat_broker_received_total", 1.0);

        let mut new = b.joined("42").await;
        let history = new.frames_until_pong().await;
        let chats: Vec<&Value> = history.iter().filter(|f| f["type"] == "chat").collect();
        assert_eq!(chats.last().unwrap()["content"], "before", "B has A's message");
        let (ended, _) = old.until_closed().await;
        assert_eq!(ended, Ended::Closed(4001));
        new.chat_and_see("after").await;
        let seen = watcher.recv_type("chat").await;
        assert_eq!(seen["content"], "before");
        let seen = watcher.recv_type("chat").await;
        assert_eq!(seen["content"], "after");
        watcher.await_online(2).await;
        a.await_metric("shequ_chat_replaced_elsewhere_total", 1.0);
        b.await_metric("shequ_chat_connections", 1.0);
    });
}

#[test]
fn a_refresh_that_lands_on_another_instance_recovers_exactly() {
    let (redis, a, b) = two_instances("since");
    smol::block_on(async {
        let mut alice = a.joined("alice").await;
        let mut reader = a.joined("reader").await;
        for i in 0..5 {
            alice.chat_and_see(&format!("seen {i}")).await;
        }
        let mut last = 0;
        for _ in 0..5 {
            last = reader.recv_type("chat").await["id"].as_u64().unwrap();
        }
        reader.close().await;
        let mut missed = Vec::new();
        for i in 0..4 {
            alice.chat(&format!("missed {i}")).await;
            missed.push(alice.recv_type("chat").await["id"].as_u64().unwrap());
        }
        // The reader's page reloads, and the load balancer sends it to B.
        let query = format!("token={}&since={last}", token("reader", 3600));
        let mut back = Client::connect(b.addr, &query, &[]).await.unwrap();
        let welcome = back.recv_type("welcome").await;
        assert_eq!(welcome["recovered"], true);
        // B may not have heard the newest of them from Redis yet: those follow live (README).
        let mut got = chat_ids(&back.frames_until_pong().await);
        while got.len() < missed.len() {
            got.push(back.recv_type("chat").await["id"].as_u64().unwrap());
        }
        assert_eq!(got, missed, "exactly the missed messages, in order");
        let after = back.frames_until_pong().await;
        assert!(chat_ids(&after).is_empty(), "a missed message came twice: {after:?}");
    });
    // An instance started afterwards loads the history from Redis.
    let c = instance(&redis, "since", json!({}));
    smol::block_on(async {
        let query = format!("token={}&since=1", token("late", 3600));
        let mut late = Client::connect(c.addr, &query, &[]).await.unwrap();
        assert_eq!(late.recv_type("welcome").await["recovered"], true);
        let frames = late.frames_until_pong().await;
        assert_eq!(chat_ids(&frames), (2..=9).collect::<Vec<u64>>());
    });
}

#[test]
fn redis_dies_and_comes_back_under_live_users() {
    let mut redis = Redis::start();
    let outbox = json!({"cluster": {"outbox": 3}});
    let mut a = instance(&redis, "faults", outbox.clone());
    let mut b = instance(&redis, "faults", outbox);
    for server in [&mut a, &mut b] {
        server.expect_warning("cluster: Redis at");
    }
    smol::block_on(async {
        let mut alice = a.joined("alice").await;
        let mut bob = b.joined("bob").await;
        alice.chat_and_see("before").await;
        let before = bob.recv_type("chat").await["id"].as_u64().unwrap();

        redis.kill();
        a.wait_for_log("cluster: Redis at");
        b.wait_for_log("cluster: Redis at");
        a.await_metric("shequ_chat_broker_up", 0.0);
        // Local users are still served.
        assert!(alice.frames_until_pong().await.is_empty());
        let mut local = a.connect("local").await;
        assert_eq!(local.recv_type("welcome").await["online"], 2, "alice and local, on A");
        let history = local.frames_until_pong().await;
        assert_eq!(chat_ids(&history), [before], "the history, from A's memory");
        // Three messages wait in the outbox; the next two do not fit and are refused.
        for i in 0..5 {
            alice.chat(&format!("during {i}")).await;
        }
        for _ in 0..2 {
            assert_eq!(alice.recv_type("error").await["code"], "unavailable");
        }
        a.await_metric("shequ_chat_broker_dropped_total", 2.0);

        // Redis comes back empty; both instances reconnect, and the outbox goes out.
        redis.restart();
        a.wait_for_nth_log("cluster: connected to Redis", 2);
        b.wait_for_nth_log("cluster: connected to Redis", 2);
        for reader in [&mut alice, &mut bob, &mut local] {
            let mut got = Vec::new();
            for _ in 0..3 {
                got.push(reader.recv_type("chat").await);
            }
            let contents: Vec<&str> = got.iter().map(|f| f["content"].as_str().unwrap()).collect();
            assert_eq!(contents, ["during 0", "during 1", "during 2"]);
            let ids = chat_ids(&got);
            assert!(ids[0] > before, "ids went backwards after Redis restarted empty: {ids:?}");
        }
        bob.chat_and_see("after").await;
        assert_eq!(alice.recv_type("chat").await["content"], "after");
        a.await_metric("shequ_chat_broker_up", 1.0);
        b.await_metric("shequ_chat_broker_connects_total", 2.0);
        // Presence was rewritten on reconnect: alice and local on A, bob and a newcomer on B.
        let mut newcomer = b.connect("newcomer").await;
        newcomer.await_online(4).await;
    });
}

#[test]
fn redis_that_stops_answering_counts_as_down_and_nothing_is_published_twice() {
    let redis = Redis::start();
    let mut a = instance(&redis, "hung", json!({}));
    let mut b = instance(&redis, "hung", json!({}));
    for server in [&mut a, &mut b] {
        server.expect_warning("cluster: Redis at");
    }
    smol::block_on(async {
        let mut alice = a.joined("alice").await;
        let mut bob = b.joined("bob").await;

        // Redis hangs with this message on its way: its reply never comes, the broker gives up
        // on the connection and sends the message again after the reconnect, and Redis, once it
        // runs again, has both copies of the request to run.
        redis.pause();
        alice.chat("while hung").await;
        a.wait_for_log("cluster: Redis at");
        a.await_metric("shequ_chat_broker_up", 0.0);
        // A still serves alice; without Redis, she sees A's own count.
        let frames = alice.frames_until_pong().await;
        assert!(chat_ids(&frames).is_empty());
        // The `online` frame is coalesced, so it may come after the pong.
        if !frames.iter().any(|f| f["type"] == "online" && f["count"] == 1) {
            alice.await_online(1).await;
        }
        redis.resume();
        // B may or may not have noticed (it had nothing in flight); A reconnects.
        a.wait_for_nth_log("cluster: connected to Redis", 2);

        alice.chat("after").await;
        for reader in [&mut alice, &mut bob] {
            let mut got = Vec::new();
            for _ in 0..2 {
                got.push(reader.recv_type("chat").await);
            }
            let contents: Vec<&str> = got.iter().map(|f| f["content"].as_str().unwrap()).collect();
            assert_eq!(contents, ["while hung", "after"], "each once, in order");
        }
        a.await_metric("shequ_chat_broker_published_total", 2.0);
    });
}

#[test]
fn an_instance_started_before_redis_serves_and_joins_when_redis_comes() {
    let mut redis = Redis::not_started();
    let mut a = Server::start(json!({"cluster": {"redis_url": redis.url(), "prefix": "late"}}));
    a.expect_warning("cluster: Redis at");
    a.wait_for_log("cluster: Redis at");
    smol::block_on(async {
        let mut alice = a.connect("alice").await;
        assert_eq!(alice.recv_type("welcome").await["online"], 1);
        alice.chat("waiting for Redis").await;

        redis.restart();
        a.wait_for_log("cluster: connected to Redis");
        let b = instance(&redis, "late", json!({}));
        let mut bob = b.joined("bob").await;
        assert_eq!(alice.recv_type("chat").await["content"], "waiting for Redis");
        alice.chat_and_see("now joined").await;
        // B started after the first message reached Redis: it comes in B's history.
        for content in ["waiting for Redis", "now joined"] {
            assert_eq!(bob.recv_type("chat").await["content"], content);
        }
    });
}

#[test]
fn users_who_connected_before_their_instance_reached_redis_get_what_they_missed_live() {
    let redis = Redis::start();
    // B knows the password Redis asks for; A knows the next one, so it waits outside until then.
    redis.run(&["CONFIG SET requirepass early-password"]);
    let b = instance(&redis, "gap", json!({"cluster": {"password": "early-password"}}));
    let mut a = Server::start(json!({"cluster": {
        "redis_url": redis.url(), "prefix": "gap", "password": "late-password"
    }}));
    a.expect_warning("cluster: Redis at");
    a.wait_for_log("cluster: Redis at");
    smol::block_on(async {
        let mut alice = a.connect("alice").await;
        assert_eq!(alice.recv_type("welcome").await["online"], 1);
        let mut bob = b.joined("bob").await;
        bob.chat_and_see("while A was outside").await;

        redis.run(&["AUTH early-password", "CONFIG SET requirepass late-password"]);
        a.wait_for_log("cluster: connected to Redis");
        assert_eq!(alice.recv_type("chat").await["content"], "while A was outside");
        bob.chat_and_see("after").await;
        assert_eq!(alice.recv_type("chat").await["content"], "after");
    });
}

/// Joins `channel` (with `since`) and returns the frames up to the client's own pong.
async fn join_and_read(client: &mut Client, channel: &str, since: Option<u64>) -> Vec<Value> {
    let mut join = json!({"type": "join", "channel": channel});
    if let Some(since) = since {
        join["since"] = json!(since);
    }
    client.send_json(join).await;
    let frames = client.frames_until_pong().await;
    assert!(frames.iter().any(|f| f["type"] == "joined" && f["channel"] == channel), "{frames:?}");
    frames
}

#[test]
fn channels_history_and_private_conversations_work_across_instances() {
    let redis = Redis::start();
    let channels = json!({"channels": {"default": "lobby", "rules": [
        {"pattern": "lobby", "join": "public"},
        {"pattern": "forum:*", "join": "public", "history": 50}
    ]}});
    let a = instance(&redis, "channels", channels.clone());
    let b = instance(&redis, "channels", channels);
    smol::block_on(async {
        let mut alice = a.joined("alice").await;
        let mut bob = b.joined("bob").await;
        let mut carol = b.joined("carol").await;
        join_and_read(&mut alice, "forum:1", None).await;
        join_and_read(&mut bob, "forum:1", None).await;
        join_and_read(&mut carol, "forum:2", None).await;
        alice.send_json(json!({"type": "chat", "channel": "forum:1", "content": "one"})).await;
        let chat = bob.recv_type("chat").await;
        assert_eq!(
            (chat["channel"].as_str(), chat["content"].as_str()),
            (Some("forum:1"), Some("one"))
        );
        let first = chat["id"].as_u64().unwrap();
        let carol_got = carol.frames_until_pong().await;
        assert!(chat_ids(&carol_got).is_empty(), "forum:2 got forum:1's message: {carol_got:?}");

        // Bob's tab closes; alice goes on in forum:1 and the lobby; bob comes back on A.
        drop(bob);
        for i in 0..3 {
            alice
                .send_json(
                    json!({"type": "chat", "channel": "forum:1", "content": format!("f{i}")}),
                )
                .await;
            alice.chat(&format!("l{i}")).await;
        }
        let mut last = 0;
        while last < first + 6 {
            last = alice.recv_type("chat").await["id"].as_u64().unwrap();
        }
        let t = token("bob", 3600);
        let mut bob =
            Client::connect(a.addr, &format!("token={t}&since={first}"), &[]).await.unwrap();
        let mut frames = vec![bob.recv_type("welcome").await];
        assert_eq!(frames[0]["recovered"], true);
        frames.extend(join_and_read(&mut bob, "forum:1", Some(first)).await);
        let mut ids = chat_ids(&frames);
        ids.sort_unstable();
        assert_eq!(
            ids,
            ((first + 1)..=(first + 6)).collect::<Vec<u64>>(),
            "each missed message once"
        );

        // A private conversation across instances: carol (B) is told of alice's (A) message.
        join_and_read(&mut alice, "dm:alice:carol", None).await;
        alice
            .send_json(json!({"type": "chat", "channel": "dm:alice:carol", "content": "psst"}))
            .await;
        let notice = carol.recv_type("dm").await;
        assert_eq!(
            (notice["channel"].as_str(), notice["user_id"].as_str()),
            (Some("dm:alice:carol"), Some("alice"))
        );
        let frames = join_and_read(&mut carol, "dm:alice:carol", Some(0)).await;
        let chat = frames.iter().find(|f| f["type"] == "chat").expect("the conversation's message");
        assert_eq!(chat["content"], "psst");
    });
}

/// Reads until an `online` frame for `channel` says `count`.
async fn await_channel_online(client: &mut Client, channel: &str, count: u64) {
    loop {
        let frame = client.recv_type("online").await;
        if frame["channel"] == channel && frame["count"] == count {
            return;
        }
    }
}

#[test]
fn a_channel_s_online_count_is_its_users_on_every_instance() {
    let redis = Redis::start();
    let channels = json!({"channels": {"rules": [{"pattern": "forum:*", "join": "public"}]}});
    let a = instance(&redis, "channel-presence", channels.clone());
    let b = instance(&redis, "channel-presence", channels.clone());
    smol::block_on(async {
        let mut alice = a.joined("alice").await;
        let mut bob = b.joined("bob").await;
        join_and_read(&mut alice, "forum:1", None).await;
        join_and_read(&mut bob, "forum:1", None).await;
        await_channel_online(&mut alice, "forum:1", 2).await;
        await_channel_online(&mut bob, "forum:1", 2).await;
        // A third user on a third instance, then bob leaves: every count follows.
        let c = instance(&redis, "channel-presence", channels);
        let mut carol = c.joined("carol").await;
        let joined = join_and_read(&mut carol, "forum:1", None).await;
        assert!(joined.iter().any(|f| f["type"] == "joined"));
        await_channel_online(&mut carol, "forum:1", 3).await;
        await_channel_online(&mut alice, "forum:1", 3).await;
        bob.send_json(json!({"type": "leave", "channel": "forum:1"})).await;
        await_channel_online(&mut alice, "forum:1", 2).await;
        await_channel_online(&mut carol, "forum:1", 2).await;
        // An instance that dies takes its users out of the count (after its presence TTL).
        drop(c);
        await_channel_online(&mut alice, "forum:1", 1).await;
    });
}

#[test]
fn an_instance_that_starts_later_has_each_channel_s_own_history() {
    let redis = Redis::start();
    // The shared stream keeps 3 messages; forum:* channels keep 5 each.
    let config = json!({
        "history": {"size": 3, "on_join": 3},
        "channels": {"default": "lobby", "rules": [
            {"pattern": "lobby", "join": "public"},
            {"pattern": "forum:*", "join": "public", "history": 5}
        ]}
    });
    let a = instance(&redis, "channel-history", config.clone());
    let mut ids = Vec::new();
    smol::block_on(async {
        let mut alice = a.joined("alice").await;
        join_and_read(&mut alice, "forum:1", None).await;
        for i in 0..6 {
            alice
                .send_json(
                    json!({"type": "chat", "channel": "forum:1", "content": format!("f{i}")}),
                )
                .await;
            ids.push(alice.recv_type("chat").await["id"].as_u64().unwrap());
        }
        for i in 0..4 {
            alice.chat_and_see(&format!("l{i}")).await;
        }
    });
    // The lobby's messages pushed forum:1's out of the shared stream; its own stream has its 5.
    let b = instance(&redis, "channel-history", config);
    smol::block_on(async {
        let mut bob = b.joined("bob").await;
        let frames = join_and_read(&mut bob, "forum:1", Some(ids[0])).await;
        let joined = frames.iter().find(|f| f["type"] == "joined").unwrap();
        assert_eq!(joined["recovered"], true, "{frames:?}");
        let in_forum: Vec<Value> =
            frames.into_iter().filter(|f| f["channel"] == "forum:1").collect();
        assert_eq!(chat_ids(&in_forum), ids[1..].to_vec());
    });
}

const API_KEY: &str = "cluster-test-api-key-0123456789abcdef";

/// An instance with the server API on.
fn with_api(redis: &Redis, prefix: &str, extra: Value) -> Server {
    let mut patch = json!({"api": {"listen": "127.0.0.1:0", "key": API_KEY}});
    merge(&mut patch, extra);
    instance(redis, prefix, patch)
}

fn api(server: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    api_request(server.api_addr(), Some(API_KEY), method, path, body.map(|b| b.to_string()))
}

#[test]
fn the_sites_calls_on_one_instance_act_on_every_instance() {
    let redis = Redis::start();
    let a = with_api(&redis, "api", json!({}));
    let b = with_api(&redis, "api", json!({}));
    smol::block_on(async {
        let mut reader = b.joined("reader").await;
        // A site message published on A has its id from Redis, and reaches B's users.
        let (status, body) = api(&a, "POST", "/api/publish", Some(json!({"content": "notice"})));
        assert_eq!(status, 200, "{body}");
        let notice = reader.recv_type("chat").await;
        assert_eq!(
            (notice["id"].clone(), notice["content"].as_str()),
            (body["id"].clone(), Some("notice"))
        );
        // Deleted on A: gone on B, from its history and from Redis's.
        let (status, _) = api(&a, "DELETE", &format!("/api/messages/{}", body["id"]), None);
        assert_eq!(status, 200);
        assert_eq!(reader.recv_type("deleted").await["id"], body["id"]);
        let (_, held) = api(&b, "GET", "/api/history", None);
        assert_eq!(held["messages"], json!([]));
        // Muted on A: refused on B, with the time left.
        let mut loud = b.joined("loud").await;
        let (status, _) =
            api(&a, "POST", "/api/mute", Some(json!({"user_id": "loud", "for_secs": 600})));
        assert_eq!(status, 200);
        loop {
            // The mute crosses Redis: until it has, B takes the message.
            loud.chat("still here?").await;
            let frame = loud.recv().await;
            if frame["type"] == "error" {
                assert_eq!(frame["code"], "muted");
                break;
            }
        }
        // Disconnected on A: closed on B with 4008.
        let mut kicked = b.joined("kicked").await;
        let (status, _) = api(&a, "POST", "/api/disconnect", Some(json!({"user_id": "kicked"})));
        assert_eq!(status, 200);
        assert_eq!(kicked.close_code().await, Ended::Closed(4008));
        // Banned on A: closed on B with 4009, and refused there.
        let mut troll = b.joined("troll").await;
        let (status, _) = api(&a, "POST", "/api/ban", Some(json!({"user_id": "troll"})));
        assert_eq!(status, 200);
        assert_eq!(troll.close_code().await, Ended::Closed(4009));
        let refused = Client::connect(b.addr, &format!("token={}", token("troll", 60)), &[]).await;
        assert_eq!(refused.err().map(|e| e.0), Some(403));
        let (_, bans) = api(&b, "GET", "/api/bans", None);
        assert_eq!(bans["bans"][0]["user_id"], "troll");
    });
    // A third instance started now takes the bans and mutes from Redis.
    let c = with_api(&redis, "api", json!({}));
    let (_, bans) = api(&c, "GET", "/api/bans", None);
    assert_eq!(bans["bans"][0]["user_id"], "troll");
    let (_, mutes) = api(&c, "GET", "/api/mutes", None);
    assert_eq!(mutes["mutes"][0]["user_id"], "loud");
    // Lifted on C: B lets the user in again.
    assert_eq!(api(&c, "DELETE", "/api/ban/troll", None).0, 200);
    // The unban crosses Redis: B's count of bans says when it has.
    b.await_metric("shequ_chat_bans", 0.0);
    smol::block_on(b.joined("troll"));
}

#[test]
fn without_redis_the_site_is_told_to_try_again_and_nothing_happens_half_way() {
    let mut redis = Redis::start();
    let mut a = with_api(&redis, "api-down", json!({}));
    a.expect_warning("is unreachable");
    smol::block_on(async {
        let mut alice = a.joined("alice").await;
        redis.kill();
        a.await_metric("shequ_chat_broker_up", 0.0);
        let (status, body) = api(&a, "POST", "/api/disconnect", Some(json!({"user_id": "alice"})));
        assert_eq!(status, 503, "{body}");
        let (status, _) = api(&a, "POST", "/api/publish", Some(json!({"content": "x"})));
        assert_eq!(status, 503);
        // Nobody was disconnected half-way: alice is still here.
        alice.frames_until_pong().await;
    });
}
