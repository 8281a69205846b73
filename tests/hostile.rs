//! The bad-input catalogue of `docs/RELIABILITY.md`: each class of bad input gets its documented
//! answer, and a well-behaved client connected at the same time keeps sending and receiving.

// Tests time the server with the real clock; the rule against reading it is for the hub.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message;
use common::*;
use jwt_simple::prelude::*;
use serde_json::{Value, json};

/// A well-behaved user who must not notice any of it.
struct Bystander {
    client: Client,
    sent: usize,
}

impl Bystander {
    async fn join(server: &Server) -> Bystander {
        Bystander::join_with(server, &token("bystander", 3600)).await
    }

    async fn join_with(server: &Server, token: &str) -> Bystander {
        let mut client = server.connect_token(token).await;
        client.recv_type("welcome").await;
        Bystander { client, sent: 0 }
    }

    /// Sends a chat and receives its own copy back; nothing else may be an error.
    async fn still_chats(&mut self) {
        self.sent += 1;
        let tag = format!("still here {}", self.sent);
        self.client.chat(&tag).await;
        loop {
            let frame = self.client.recv().await;
            assert_ne!(frame["type"], "error", "the bystander got an error: {frame}");
            if frame["content"] == tag.as_str() {
                return;
            }
        }
    }
}

fn check(server: &Server, attack: impl FnOnce()) {
    check_with(server, &token("bystander", 3600), attack);
}

fn check_with(server: &Server, bystander_token: &str, attack: impl FnOnce()) {
    smol::block_on(async {
        let mut bystander = Bystander::join_with(server, bystander_token).await;
        attack();
        bystander.still_chats().await;
    });
}

/// Something a raw client does to the server.
type Attack = Box<dyn Fn(&mut RawWs)>;

#[test]
fn http_level_garbage_gets_a_status_line() {
    let server = Server::start(json!({}));
    let t = token("x", 60);
    let ok_query = format!("token={t}");
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "garbage instead of HTTP",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            400,
        ),
        (
            "request head over 8 KiB",
            format!("GET /ws HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000)).into_bytes(),
            431,
        ),
        (
            "too many header lines",
            format!("GET /ws HTTP/1.1\r\n{}\r\n", "X: y\r\n".repeat(100)).into_bytes(),
            431,
        ),
        // A plain GET is the page's probe: the answer the upgrade would get.
        ("plain GET on /ws without a token", b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 401),
        (
            "plain GET on /ws with a good token",
            format!("GET /ws?{ok_query} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
            426,
        ),
        (
            "upgrade without Connection: Upgrade",
            format!("GET /ws?{ok_query} HTTP/1.1\r\nUpgrade: websocket\r\n\r\n").into_bytes(),
            400,
        ),
        ("POST on /ws", b"POST /ws HTTP/1.1\r\nContent-Length: 0\r\n\r\n".to_vec(), 405),
        ("HTTP/1.0", b"GET /ws HTTP/1.0\r\n\r\n".to_vec(), 400),
        (
            "bad Sec-WebSocket-Version",
            String::from_utf8(upgrade_request(&ok_query, ""))
                .unwrap()
                .replace("Version: 13", "Version: 99")
                .into_bytes(),
            426,
        ),
        (
            "bad Sec-WebSocket-Key",
            String::from_utf8(upgrade_request(&ok_query, ""))
                .unwrap()
                .replace("dGhlIHNhbXBsZSBub25jZQ==", "!!")
                .into_bytes(),
            400,
        ),
        ("unknown path", b"GET /admin HTTP/1.1\r\n\r\n".to_vec(), 404),
    ];
    for (name, request, status) in cases {
        check(&server, || {
            let (got, body) = raw_http(server.addr, &request);
            assert_eq!(got, status, "{name}: {body}");
            assert!(body.ends_with('\n') && body.lines().count() == 1, "{name}: one-line reason");
        });
    }
}

#[test]
fn bad_tokens_get_401_or_400() {
    let server = Server::start(json!({"auth": {"issuer": "site", "audience": "chat"}}));
    let now = unix_now();
    let claims = |extra: Value| {
        let mut c = json!({"sub": "1", "exp": now + 60, "iss": "site", "aud": "chat"});
        merge(&mut c, extra);
        c
    };
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims(json!({})).to_string().as_bytes())
    );
    let cases: Vec<(&str, String, u16)> = vec![
        ("alg none", format!("token={none}"), 401),
        ("exp in the past", format!("token={}", sign_hs256(claims(json!({"exp": now - 60})))), 401),
        (
            "nbf in the future",
            format!("token={}", sign_hs256(claims(json!({"nbf": now + 600})))),
            401,
        ),
        ("unknown issuer", format!("token={}", sign_hs256(claims(json!({"iss": "evil"})))), 401),
        ("unknown audience", format!("token={}", sign_hs256(claims(json!({"aud": "shop"})))), 401),
        ("no token", String::new(), 401),
        ("not a JWT", "token=%00%01garbage".into(), 401),
    ];
    let bystander = sign_hs256(claims(json!({"sub": "bystander", "exp": now + 3600})));
    for (name, query, status) in cases {
        check_with(&server, &bystander, || {
            let refused = smol::block_on(Client::connect(server.addr, &query, &[]));
            assert_eq!(refused.err().map(|e| e.0), Some(status), "{name}");
        });
    }
    // The same token twice is fine; two different ones are refused.
    let good = sign_hs256(claims(json!({})));
    let other = sign_hs256(claims(json!({"sub": "2"})));
    check_with(&server, &bystander, || {
        let header = format!("Bearer {other}");
        let refused = smol::block_on(Client::connect(
            server.addr,
            &format!("token={good}"),
            &[("authorization", &header)],
        ));
        assert_eq!(refused.err().map(|e| e.0), Some(400), "query and header disagree");
    });
}

#[test]
fn hs256_signed_with_the_es256_public_key_is_refused() {
    let pair = ES256KeyPair::generate();
    let pem = pair.public_key().to_pem().unwrap();
    let path = std::env::temp_dir().join(format!("shequ-chat-hostile-{}.pem", std::process::id()));
    std::fs::write(&path, &pem).unwrap();
    let server = Server::start(
        json!({"auth": {"algorithm": "ES256", "secret": null, "public_key_file": path}}),
    );
    let confused = sign_with_key(
        &HS256Key::from_bytes(pem.as_bytes()),
        "HS256",
        json!({"sub": "x", "exp": unix_now() + 60}),
    );
    smol::block_on(async {
        let claims =
            Claims::create(jwt_simple::prelude::Duration::from_secs(60)).with_subject("bystander");
        let mut bystander = server.connect_token(&pair.sign(claims).unwrap()).await;
        bystander.recv_type("welcome").await;
        let refused = Client::connect(server.addr, &format!("token={confused}"), &[]).await;
        assert_eq!(refused.err().map(|e| e.0), Some(401));
        bystander.chat_and_see("fine").await;
    });
}

#[test]
fn slowloris_is_dropped_at_the_handshake_timeout() {
    let server = Server::start(json!({"limits": {"handshake_timeout_secs": 2}}));
    check(&server, || {
        let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(1000))).unwrap();
        let request = upgrade_request(&format!("token={}", token("slow", 60)), "");
        let started = Instant::now();
        let mut answer = Vec::new();
        for byte in request.iter().take(20) {
            if stream.write_all(&[*byte]).is_err() {
                break;
            }
            // One byte a second; the read doubles as the wait and notices the drop.
            match stream.read_to_end(&mut answer) {
                Ok(_) => break, // end of stream: dropped
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
        }
        let elapsed = started.elapsed();
        assert!(answer.is_empty(), "the server answered a half-sent request");
        assert!(elapsed < Duration::from_secs(10), "not dropped: {elapsed:?}");
        assert!(elapsed >= Duration::from_millis(1500), "dropped before the timeout: {elapsed:?}");
    });
}

#[test]
fn frame_level_abuse_closes_with_the_documented_code() {
    let server = Server::start(json!({"limits": {"max_message_bytes": 4096}}));
    let cases: Vec<(&str, Attack, u16)> = vec![
        (
            "frame above max_message_bytes",
            Box::new(|ws| ws.send_frame(true, 1, &[b'a'; 5000], true)),
            1009,
        ),
        (
            "huge message in many continuation frames",
            Box::new(|ws| {
                ws.send_frame(false, 1, &[b'a'; 1000], true);
                for _ in 0..20 {
                    ws.send_frame(false, 0, &[b'a'; 1000], true);
                }
                ws.send_frame(true, 0, b"", true);
            }),
            1009,
        ),
        ("10 MB content string", Box::new(|ws| ws.send_announced(1, 10 << 20)), 1009),
        (
            "invalid UTF-8 in a text frame",
            Box::new(|ws| ws.send_frame(true, 1, &[0xff, 0xfe, 0x80], true)),
            1007,
        ),
        (
            "unmasked client frame",
            Box::new(|ws| ws.send_frame(true, 1, br#"{"type":"ping"}"#, false)),
            1002,
        ),
        (
            "ping with a payload over 125 bytes",
            Box::new(|ws| ws.send_frame(true, 9, &[0u8; 200], true)),
            1002,
        ),
        ("unknown opcode", Box::new(|ws| ws.send_frame(true, 3, b"??", true)), 1002),
    ];
    for (name, attack, code) in cases {
        check(&server, || {
            let mut ws = RawWs::connect(server.addr, "attacker");
            attack(&mut ws);
            assert_eq!(ws.close_code(), Some(code), "{name}");
        });
    }
}

#[test]
fn message_level_abuse_gets_error_frames_and_stays_connected() {
    // Room for 10 000 levels of nesting (20 000 bytes) within one message.
    let server = Server::start(json!({"limits": {"max_message_bytes": 65536}}));
    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    let cases: Vec<(&str, Message, &str)> = vec![
        ("binary frame", Message::Binary(vec![0u8; 10].into()), "binary_unsupported"),
        ("deeply nested JSON", Message::Text(deep.into()), "invalid_json"),
        (
            "JSON of the wrong shape",
            Message::Text(r#"{"type":["chat"]}"#.into()),
            "invalid_message",
        ),
        (
            "content of the wrong type",
            Message::Text(r#"{"type":"chat","content":{"a":1}}"#.into()),
            "invalid_message",
        ),
        (
            "NUL in content",
            Message::Text(r#"{"type":"chat","content":"a\u0000b"}"#.into()),
            "invalid_message",
        ),
        (
            "escape sequence in content",
            Message::Text(r#"{"type":"chat","content":"\u001b[2J"}"#.into()),
            "invalid_message",
        ),
        (
            "content over the limit",
            Message::Text(json!({"type":"chat","content":"é".repeat(2001)}).to_string().into()),
            "too_long",
        ),
    ];
    smol::block_on(async {
        let mut bystander = Bystander::join(&server).await;
        let mut attacker = server.connect("attacker").await;
        attacker.recv_type("welcome").await;
        for (name, message, code) in cases {
            attacker.send(message).await;
            let error = attacker.recv_type("error").await;
            assert_eq!(error["code"], code, "{name}");
            bystander.still_chats().await;
        }
        attacker.chat("and a good one").await;
        while attacker.recv_type("chat").await["content"] != "and a good one" {}
    });
}

#[test]
fn a_client_that_never_reads_is_cut_with_4004() {
    let server = Server::start(json!({
        "limits": {"send_queue": 16},
        "history": {"size": 0, "on_join": 0}
    }));
    smol::block_on(async {
        let mut bystander = Bystander::join(&server).await;
        let mut stalled = server.connect("stalled").await;
        let content = "x".repeat(1500);
        // Chat until the stalled client is gone (its queue is 16 frames; the kernel buffers the
        // rest), with the bystander reading every message.
        let mut rounds = 0;
        loop {
            bystander.still_chats().await;
            bystander.client.chat(&content).await;
            rounds += 1;
            assert!(rounds < 20_000, "the stalled client was never cut");
            let (_, metrics) = server.get("/metrics");
            if metrics.contains("shequ_chat_disconnects_total{reason=\"too_slow\"} 1\n") {
                break;
            }
        }
        bystander.still_chats().await;
        assert_eq!(stalled.close_code().await, Ended::Closed(4004));
    });
}

#[test]
fn connections_beyond_the_limits_get_503() {
    let server = Server::start(json!({
        "limits": {"max_connections": 3, "max_connections_per_ip": 0}
    }));
    smol::block_on(async {
        let mut bystander = Bystander::join(&server).await;
        let _a = server.connect("a").await;
        let _b = server.connect("b").await;
        let refused = Client::connect(server.addr, &format!("token={}", token("c", 60)), &[]).await;
        assert_eq!(refused.err(), Some((503, "server full; try again later\n".into())));
        bystander.still_chats().await;
    });
}

#[test]
fn per_address_limit_and_trusted_proxies() {
    let server = Server::start(json!({
        "limits": {"max_connections_per_ip": 2},
        "trusted_proxies": ["127.0.0.1"]
    }));
    smol::block_on(async {
        // Behind the (trusted) proxy, each forwarded address has its own budget.
        let from = |ip: &'static str| [("x-forwarded-for", ip)];
        let connect = |sub: &str, ip: &'static str| {
            let q = format!("token={}", token(sub, 60));
            async move { Client::connect(server.addr, &q, &from(ip)).await }
        };
        let mut bystander = {
            let mut c = connect("bystander", "198.51.100.9").await.unwrap();
            c.recv_type("welcome").await;
            Bystander { client: c, sent: 0 }
        };
        let _a = connect("a", "203.0.113.1").await.unwrap();
        let _b = connect("b", "10.1.1.1, 203.0.113.1").await.unwrap();
        let refused = connect("c", "203.0.113.1").await;
        assert_eq!(refused.err(), Some((503, "too many connections from your address\n".into())));
        let _d = connect("d", "203.0.113.2").await.unwrap();
        bystander.still_chats().await;
        let (_, metrics) = server.get("/metrics");
        assert!(metrics.contains("shequ_chat_refusals_total{reason=\"ip_limit\"} 1\n"));
    });

    // Without trusted proxies the header is ignored: everyone here is 127.0.0.1.
    let server = Server::start(json!({"limits": {"max_connections_per_ip": 2}}));
    smol::block_on(async {
        let mut bystander = Bystander::join(&server).await;
        let q = format!("token={}", token("a", 60));
        let _a =
            Client::connect(server.addr, &q, &[("x-forwarded-for", "203.0.113.7")]).await.unwrap();
        let q = format!("token={}", token("b", 60));
        let refused = Client::connect(server.addr, &q, &[("x-forwarded-for", "203.0.113.8")]).await;
        assert_eq!(refused.err().map(|e| e.0), Some(503));
        bystander.still_chats().await;
    });
}

#[test]
fn reconnect_storm_of_one_user() {
    let server = Server::start(json!({"log_level": "info"}));
    smol::block_on(async {
        let mut bystander = Bystander::join(&server).await;
        let started = Instant::now();
        let mut previous: Option<Client> = None;
        for _ in 0..100 {
            let mut next = server.connect("stormy").await;
            next.recv_type("welcome").await;
            if let Some(mut old) = previous.replace(next) {
                assert_eq!(old.close_code().await, Ended::Closed(4001));
            }
        }
        let elapsed = started.elapsed();
        let mut last = previous.unwrap();
        last.chat_and_see("survivor").await;
        bystander.still_chats().await;
        // The bystander saw the user arrive once: no presence churn from the storm.
        let (_, metrics) = server.get("/metrics");
        assert!(metrics.contains("shequ_chat_replacements_total 99\n"), "{metrics}");
        assert!(metrics.contains("shequ_chat_online_users 2\n"));
        eprintln!("100 connections of one user in {elapsed:?}");
    });
}

#[test]
fn a_ping_flood_without_reading_is_cut_and_memory_stays_bounded() {
    let server = Server::start(json!({}));
    let rss_before = server.rss_kib();
    let mut rss_peak = rss_before;
    check(&server, || {
        let mut flooder = RawWs::connect(server.addr, "flooder");
        flooder.set_write_timeout(TIMEOUT);
        // Pings with the largest payload a control frame may carry: each asks for a Pong of the
        // same size. The flooder never reads one.
        let ping = frame(true, 0x9, &[b'p'; 125], true);
        let batch: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * 512).collect();
        const MAX_FLOOD_BYTES: usize = 256 << 20;
        let started = Instant::now();
        let mut sent = 0;
        let mut cut = false;
        while sent < MAX_FLOOD_BYTES && started.elapsed() < Duration::from_secs(60) {
            if flooder.write_raw(&batch).is_err() {
                cut = true;
                break;
            }
            sent += batch.len();
            if sent % (batch.len() * 16) == 0 {
                rss_peak = rss_peak.max(server.rss_kib());
            }
        }
        rss_peak = rss_peak.max(server.rss_kib());
        assert!(cut, "the flooder was not cut after {} MiB of Pings", sent >> 20);
    });
    let growth_kib = rss_peak.saturating_sub(rss_before);
    assert!(growth_kib < 16 * 1024, "RSS grew by {growth_kib} KiB under a ping flood");
    server.await_metric("shequ_chat_disconnects_total{reason=\"too_slow\"}", 1.0);
}
