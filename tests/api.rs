//! The server API (`docs/API.md`) against the real server: every endpoint and refusal, what each
//! does to connected clients, bans and deletes across a restart, `shequ-chat admin`, and the
//! answers checked against `docs/api.yaml`.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use serde_json::{Value, json};

const KEY: &str = "test-api-key-0123456789abcdef0123456789";

/// The forum's channels: a default lobby, topics with history, read-only news.
fn channels() -> Value {
    json!({
        "default": "lobby",
        "rules": [
            {"pattern": "lobby", "join": "public"},
            {"pattern": "forum:*", "join": "public", "history": 50},
            {"pattern": "news", "join": "public", "read_only": true}
        ]
    })
}

fn with_api(mut patch: Value) -> Value {
    merge(&mut patch, json!({"api": {"listen": "127.0.0.1:0", "key": KEY}}));
    patch
}

/// One request with the key; the status and the JSON answer.
fn api(server: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    api_request(server.api_addr(), Some(KEY), method, path, body.map(|b| b.to_string()))
}

/// Connects as `user` with `since`, as a page does after a reload.
async fn since(server: &Server, user: &str, since: u64) -> Client {
    let query = format!("token={}&since={since}", token(user, 60));
    Client::connect(server.addr, &query, &[]).await.expect("connect")
}

fn temp_path(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("shequ-chat-api-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

#[test]
fn a_published_message_is_numbered_kept_and_sent_like_any_other() {
    let server = Server::start(with_api(json!({})));
    smol::block_on(async {
        let mut reader = server.joined("1").await;
        let (status, body) = api(
            &server,
            "POST",
            "/api/publish",
            Some(json!({"content": "the forum is down at 22:00"})),
        );
        assert_eq!(status, 200, "{body}");
        let id = body["id"].as_u64().unwrap();
        let notice = reader.recv_type("chat").await;
        assert_eq!(notice["id"], id);
        assert_eq!(notice["content"], "the forum is down at 22:00");
        assert!(notice.get("user_id").is_none(), "a site notice has no user: {notice}");
        let on_behalf = json!({"content": "hello", "user_id": "42", "username": "alice"});
        assert_eq!(api(&server, "POST", "/api/publish", Some(on_behalf)).0, 200);
        let chat = reader.recv_type("chat").await;
        assert_eq!(
            (chat["user_id"].as_str(), chat["username"].as_str()),
            (Some("42"), Some("alice"))
        );
        // A reconnect with `since` gets both, as for members' messages.
        let mut late = since(&server, "2", 0).await;
        assert_eq!(late.recv_type("welcome").await["recovered"], true);
        assert_eq!(late.recv_type("chat").await["id"], id);
        // One room: a channel is refused.
        let (status, body) =
            api(&server, "POST", "/api/publish", Some(json!({"channel": "x", "content": "y"})));
        assert_eq!(status, 400);
        assert!(body["error"].as_str().unwrap().contains("one room"), "{body}");
    });
}

#[test]
fn a_read_only_channel_takes_the_sites_messages_and_not_its_members() {
    let server = Server::start(with_api(json!({"channels": channels()})));
    smol::block_on(async {
        let mut member = server.joined("1").await;
        member.send_json(json!({"type": "join", "channel": "news"})).await;
        member.recv_type("joined").await;
        member.send_json(json!({"type": "chat", "channel": "news", "content": "me too"})).await;
        assert_eq!(member.recv_type("error").await["code"], "read_only");
        let post = json!({"channel": "news", "content": "release 2.0"});
        assert_eq!(api(&server, "POST", "/api/publish", Some(post)).0, 200);
        let chat = member.recv_type("chat").await;
        assert_eq!(
            (chat["channel"].as_str(), chat["content"].as_str()),
            (Some("news"), Some("release 2.0"))
        );
        let (status, _) = api(
            &server,
            "POST",
            "/api/publish",
            Some(json!({"channel": "elsewhere", "content": "x"})),
        );
        assert_eq!(status, 404);
    });
}

#[test]
fn disconnect_closes_every_connection_of_the_user_with_4008_and_nobody_else() {
    let server = Server::start(with_api(json!({"limits": {"max_connections_per_user": 2}})));
    smol::block_on(async {
        let mut a = server.joined("spammer").await;
        let mut b = server.joined("spammer").await;
        let mut other = server.joined("other").await;
        let (status, body) = api(
            &server,
            "POST",
            "/api/disconnect",
            Some(json!({"user_id": "spammer", "reason": "caught"})),
        );
        assert_eq!((status, body["closed"].as_u64()), (200, Some(2)), "{body}");
        assert_eq!(a.close_code().await, Ended::Closed(4008));
        assert_eq!(b.close_code().await, Ended::Closed(4008));
        other.chat_and_see("still here").await;
        // Not a ban: they may come back.
        server.joined("spammer").await;
    });
    server.await_metric("shequ_chat_bans", 0.0);
}

#[test]
fn a_ban_closes_with_4009_refuses_the_upgrade_and_survives_a_restart() {
    let history = temp_path("ban-history.jsonl");
    let moderation =
        history.with_file_name(format!("shequ-chat-api-{}-bans.json", std::process::id()));
    let _ = std::fs::remove_file(&moderation);
    let config = with_api(json!({
        "history": {"file": history},
        "api": {"moderation_file": moderation}
    }));
    let server = Server::start(config.clone());
    smol::block_on(async {
        let mut banned = server.joined("troll").await;
        let ban = json!({"user_id": "troll", "for_secs": 3600, "reason": "spam"});
        let (status, body) = api(&server, "POST", "/api/ban", Some(ban));
        assert_eq!((status, body["closed"].as_u64()), (200, Some(1)), "{body}");
        assert_eq!(banned.close_code().await, Ended::Closed(4009));
        let refused =
            Client::connect(server.addr, &format!("token={}", token("troll", 60)), &[]).await;
        let (status, reason) = refused.err().expect("the upgrade is refused");
        assert_eq!(status, 403);
        assert!(reason.starts_with("banned until 20"), "{reason}");
        // A permanent one too.
        assert_eq!(api(&server, "POST", "/api/ban", Some(json!({"user_id": "forever"}))).0, 200);
    });
    server.await_metric("shequ_chat_bans", 2.0);
    drop(server);

    let server = Server::start(config.clone());
    server.wait_for_log("moderation: 2 bans and 0 mutes");
    let (_, bans) = api(&server, "GET", "/api/bans", None);
    let users: Vec<&str> =
        bans["bans"].as_array().unwrap().iter().map(|b| b["user_id"].as_str().unwrap()).collect();
    assert_eq!(users, ["forever", "troll"]);
    assert_eq!(bans["bans"][1]["reason"], "spam");
    smol::block_on(async {
        let refused =
            Client::connect(server.addr, &format!("token={}", token("troll", 60)), &[]).await;
        assert_eq!(refused.err().map(|e| e.0), Some(403));
        // The page asks with a plain GET why it could not connect, and gets the same answer.
        let (status, body) = server.get(&format!("/ws?token={}", token("forever", 60)));
        assert_eq!((status, body.trim()), (403, "banned"));
        assert_eq!(api(&server, "DELETE", "/api/ban/troll", None).0, 200);
        assert_eq!(api(&server, "DELETE", "/api/ban/troll", None).0, 404);
        server.joined("troll").await;
    });
    drop(server);
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(&moderation).unwrap()).unwrap();
    assert_eq!(saved["bans"].as_array().unwrap().len(), 1, "{saved}");
    let _ = std::fs::remove_file(&history);
    let _ = std::fs::remove_file(&moderation);
}

#[test]
fn a_muted_user_reads_on_and_is_told_how_long_the_mute_lasts() {
    let server = Server::start(with_api(json!({"channels": channels()})));
    smol::block_on(async {
        let mut muted = server.joined("loud").await;
        muted.send_json(json!({"type": "join", "channel": "forum:1"})).await;
        muted.recv_type("joined").await;
        let mut reader = server.joined("quiet").await;
        let mute = json!({"user_id": "loud", "channel": "lobby", "for_secs": 600});
        let (status, body) = api(&server, "POST", "/api/mute", Some(mute));
        assert_eq!(status, 200, "{body}");
        let until = body["until"].as_u64().unwrap();
        muted.send_json(json!({"type": "chat", "channel": "lobby", "content": "LOUD"})).await;
        let error = muted.recv_type("error").await;
        assert_eq!(error["code"], "muted");
        assert_eq!(error["channel"], "lobby");
        assert_eq!(error["until"], until);
        assert!(error["message"].as_str().unwrap().contains("10 minutes"), "{error}");
        // Still connected, still reading; other channels are not muted.
        muted
            .send_json(json!({"type": "chat", "channel": "forum:1", "content": "fine here"}))
            .await;
        assert_eq!(muted.recv_type("chat").await["content"], "fine here");
        reader.chat_and_see("hello").await;
        assert_eq!(muted.recv_type("chat").await["content"], "hello");
        // Lifted: the lobby takes their message again.
        assert_eq!(api(&server, "DELETE", "/api/mute/loud?channel=lobby", None).0, 200);
        muted.send_json(json!({"type": "chat", "channel": "lobby", "content": "sorry"})).await;
        assert_eq!(reader.recv_type("chat").await["content"], "sorry");
    });
    server.await_metric("shequ_chat_muted_refusals_total", 1.0);
}

#[test]
fn a_deleted_message_is_gone_from_history_file_and_every_later_since() {
    let history = temp_path("delete-history.jsonl");
    let config = with_api(json!({"history": {"file": history, "size": 20, "on_join": 20}}));
    let server = Server::start(config.clone());
    let ids = smol::block_on(async {
        let mut reader = server.joined("1").await;
        let mut writer = server.joined("2").await;
        let mut ids = Vec::new();
        for text in ["one", "spam", "three"] {
            writer.chat(text).await;
            ids.push(reader.recv_type("chat").await["id"].as_u64().unwrap());
        }
        let (status, body) = api(&server, "DELETE", &format!("/api/messages/{}", ids[1]), None);
        assert_eq!(status, 200, "{body}");
        assert_eq!(reader.recv_type("deleted").await, json!({"type": "deleted", "id": ids[1]}));
        let mut late = since(&server, "3", ids[0]).await;
        assert_eq!(late.recv_type("welcome").await["recovered"], true);
        assert_eq!(late.recv_type("chat").await["id"], ids[2]);
        ids
    });
    drop(server);
    let file = std::fs::read_to_string(&history).unwrap();
    assert!(!file.contains("spam"), "the file still holds it:\n{file}");
    let server = Server::start(config);
    smol::block_on(async {
        let mut after = since(&server, "4", ids[0]).await;
        after.recv_type("welcome").await;
        assert_eq!(after.recv_type("chat").await["id"], ids[2]);
        let (_, held) = api(&server, "GET", "/api/history", None);
        let held: Vec<u64> = held["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_u64().unwrap())
            .collect();
        assert_eq!(held, [ids[0], ids[2]]);
    });
    let _ = std::fs::remove_file(&history);
}

#[test]
fn presence_history_and_info_read_the_chat_as_it_is() {
    let server = Server::start(with_api(
        json!({"channels": channels(), "limits": {"max_connections_per_user": 3}}),
    ));
    smol::block_on(async {
        let _a = server.joined("1").await;
        let _b = server.joined("1").await;
        let mut c = server.joined("2").await;
        c.send_json(json!({"type": "join", "channel": "forum:9"})).await;
        c.recv_type("joined").await;
        c.send_json(json!({"type": "chat", "channel": "forum:9", "content": "first"})).await;
        c.recv_type("chat").await;
        let (status, lobby) = api(&server, "GET", "/api/presence", None);
        assert_eq!(status, 200);
        assert_eq!(lobby["channel"], "lobby");
        assert_eq!(
            lobby["users"],
            json!([
                {"user_id": "1", "username": "user-1", "connections": 2},
                {"user_id": "2", "username": "user-2", "connections": 1}
            ])
        );
        let (_, topic) = api(&server, "GET", "/api/presence?channel=forum:9", None);
        assert_eq!(topic["online"], 1);
        let (_, empty) = api(&server, "GET", "/api/presence?channel=forum:10", None);
        assert_eq!(empty["users"], json!([]));
        let (_, history) = api(&server, "GET", "/api/history?channel=forum:9&limit=5", None);
        assert_eq!(history["messages"][0]["content"], "first");
        let (_, info) = api(&server, "GET", "/api/info", None);
        assert_eq!(
            (info["connections"].as_u64(), info["users_online"].as_u64()),
            (Some(3), Some(2))
        );
        assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    });
}

#[test]
fn every_refusal_has_its_status_and_a_one_line_reason() {
    let server = Server::start(with_api(
        json!({"api": {"request_timeout_secs": 1, "max_body_bytes": 2048}}),
    ));
    let addr = server.api_addr();
    let body = |v: Value| Some(v.to_string());
    /// The key, method, path, body and the status expected.
    type Case<'a> = (Option<&'a str>, &'a str, &'a str, Option<String>, u16);
    let cases: Vec<Case> = vec![
        (None, "GET", "/api/info", None, 401),
        (Some("wrong-key-wrong-key-wrong-key-wrong"), "GET", "/api/info", None, 401),
        (Some(KEY), "GET", "/api/nothing", None, 404),
        (Some(KEY), "GET", "/", None, 404),
        (Some(KEY), "POST", "/api/info", None, 405),
        (Some(KEY), "GET", "/api/publish", None, 405),
        (Some(KEY), "POST", "/api/publish", Some("{oops".into()), 400),
        (Some(KEY), "POST", "/api/publish", None, 400),
        (Some(KEY), "POST", "/api/publish", body(json!({"content": "x", "colour": "red"})), 400),
        (Some(KEY), "POST", "/api/publish", body(json!({"content": 5})), 400),
        (Some(KEY), "POST", "/api/publish", body(json!({"content": "x".repeat(3000)})), 413),
        (Some(KEY), "POST", "/api/publish", body(json!({"content": "\u{7}"})), 400),
        (Some(KEY), "POST", "/api/publish", body(json!({"content": "x", "username": "n"})), 400),
        (Some(KEY), "POST", "/api/ban", body(json!({"user_id": "a", "until": 5})), 400),
        (Some(KEY), "POST", "/api/mute", body(json!({"user_id": "a"})), 400),
        (Some(KEY), "DELETE", "/api/messages/abc", None, 400),
        (Some(KEY), "DELETE", "/api/messages/999", None, 404),
        (Some(KEY), "DELETE", "/api/mute/nobody", None, 404),
        (Some(KEY), "GET", "/api/history?limit=100000", None, 400),
    ];
    for (key, method, path, body, expected) in cases {
        let (status, answer) = api_request(addr, key, method, path, body.clone());
        assert_eq!(status, expected, "{method} {path} {body:?}: {answer}");
        let reason = answer["error"].as_str().unwrap_or_else(|| panic!("{answer}"));
        assert!(!reason.is_empty() && !reason.contains('\n'), "{reason:?}");
    }
    // A request that never ends gets 408 after the timeout, and never reaches the hub.
    let mut slow = std::net::TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(
        &mut slow,
        b"POST /api/publish HTTP/1.1\r\nContent-Length: 10\r\n\r\n{",
    )
    .unwrap();
    slow.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut slow, &mut answer);
    assert_eq!(parse_response(&answer).0, 408);
    // The API is not served on the chat's port.
    assert_eq!(server.get("/api/info").0, 404);
    let (_, metrics) = server.get("/metrics");
    assert!(
        metrics.contains("shequ_chat_api_requests_total{endpoint=\"info\",status=\"401\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("shequ_chat_api_requests_total{endpoint=\"publish\",status=\"413\"} 1")
    );
}

#[test]
fn the_admin_command_drives_a_running_server() {
    let server = Server::start(json!({
        "channels": channels(),
        "api": {"listen": "127.0.0.1:0", "key_file": temp_key_file()}
    }));
    let addr = server.api_addr();
    // The command reads the address from the config: give it one with the real port.
    let config = temp_path("admin.json");
    let mut text = base_config();
    merge(
        &mut text,
        json!({"channels": channels(), "api": {"listen": addr.to_string(), "key_file": temp_key_file()}}),
    );
    std::fs::write(&config, text.to_string()).unwrap();
    let admin = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_shequ-chat"))
            .arg("admin")
            .arg("--config")
            .arg(&config)
            .args(args)
            .env_remove("SHEQU_CHAT_API_KEY")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    smol::block_on(async {
        let mut alice = server.joined("alice").await;
        let (ok, out) = admin(&["who"]);
        assert!(ok, "{out}");
        assert!(
            out.contains("user-alice (alice): 1 connection") && out.contains("1 online in lobby"),
            "{out}"
        );
        let (ok, out) = admin(&["publish", "lobby", "maintenance at 22:00"]);
        assert!(ok && out.starts_with("published message "), "{out}");
        assert_eq!(alice.recv_type("chat").await["content"], "maintenance at 22:00");
        let (ok, out) = admin(&["mute", "alice", "--for", "10m"]);
        assert!(ok && out.contains("muted alice everywhere until 20"), "{out}");
        let (ok, out) = admin(&["mutes"]);
        assert!(ok && out.contains("1 in force"), "{out}");
        let (ok, out) = admin(&["kick", "alice", "--reason", "testing"]);
        assert!(ok && out.contains("disconnected alice: 1 connection closed"), "{out}");
        assert_eq!(alice.close_code().await, Ended::Closed(4008));
        let (ok, out) = admin(&["ban", "alice", "--for", "1h", "--reason", "spam"]);
        assert!(ok && out.contains("banned alice until 20") && out.contains("(spam)"), "{out}");
        let (ok, out) = admin(&["bans"]);
        assert!(ok && out.contains("alice until") && out.contains("1 in force"), "{out}");
        let (ok, out) = admin(&["unban", "alice"]);
        assert!(ok && out.contains("unbanned alice"), "{out}");
        let (ok, out) = admin(&["unban", "alice"]);
        assert!(!ok && out.contains("404: that user is not banned"), "{out}");
        let (ok, out) = admin(&["delete", "1"]);
        assert!(ok && out.contains("deleted message 1"), "{out}");
        let (ok, out) = admin(&["info"]);
        assert!(ok && out.contains("version: \"0."), "{out}");
        let (ok, out) = admin(&["frobnicate"]);
        assert!(!ok && out.contains("unknown command"), "{out}");
    });
    // With the wrong key the command says so.
    let out = Command::new(env!("CARGO_BIN_EXE_shequ-chat"))
        .args(["admin", "--config"])
        .arg(&config)
        .arg("info")
        .env("SHEQU_CHAT_API_KEY", "another-key-another-key-another-key-x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    let _ = std::fs::remove_file(&config);
}

fn temp_key_file() -> PathBuf {
    let path = std::env::temp_dir().join(format!("shequ-chat-api-{}-key", std::process::id()));
    std::fs::write(&path, format!("{KEY}\n")).unwrap();
    path
}

#[test]
fn the_server_refuses_to_start_an_api_beyond_loopback_without_a_key() {
    let config = temp_path("open-api.json");
    let mut text = base_config();
    merge(&mut text, json!({"api": {"listen": "0.0.0.0:0"}}));
    std::fs::write(&config, text.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_shequ-chat"))
        .arg("--config")
        .arg(&config)
        .env_remove("SHEQU_CHAT_API_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs a key"), "{err}");
    // The key may come from the environment, and never shows in the log.
    let server = Server::start_with_env(
        json!({"api": {"listen": "0.0.0.0:0"}}),
        &[("SHEQU_CHAT_API_KEY", KEY)],
    );
    server.wait_for_log("server API on ");
    assert!(server.log_lines().iter().all(|l| !l.contains(KEY)));
    let _ = std::fs::remove_file(&config);
}

#[test]
fn the_answers_match_the_openapi_description() {
    let server = Server::start(with_api(json!({"channels": channels()})));
    let addr = server.api_addr();
    smol::block_on(async {
        let _online = server.joined("7").await;
        let out = Command::new("python3")
            .args(["tests/api_conformance.py", &format!("http://{addr}"), KEY, "7"])
            .output()
            .expect("python3");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("every answer matches docs/api.yaml"), "{text}");
    });
}
