//! Refusals before the upgrade: each gets its HTTP status and a one-line reason, and none
//! disturbs a connected user.

mod common;

use common::*;
use serde_json::json;

#[test]
fn max_connections_gives_503_and_frees_up() {
    let server = Server::start(json!({"limits": {"max_connections": 2}}));
    smol::block_on(async {
        let mut a = server.connect("a").await;
        let b = server.connect("b").await;
        let refused = Client::connect(server.addr, &format!("token={}", token("c", 60)), &[]).await;
        assert_eq!(refused.err(), Some((503, "server full; try again later\n".into())));
        // A replacement does not need a free slot.
        let mut b2 = server.connect("b").await;
        b2.recv_type("welcome").await;
        drop(b);
        a.chat("unbothered").await;
        assert_eq!(a.recv_type("chat").await["content"], "unbothered");
        a.close().await;
        // The slot is free again once `a` has gone.
        let mut c = loop {
            let query = format!("token={}", token("c", 60));
            match Client::connect(server.addr, &query, &[]).await {
                Ok(c) => break c,
                Err((503, _)) => b2.await_online(1).await,
                Err(other) => panic!("{other:?}"),
            }
        };
        assert_eq!(c.recv_type("welcome").await["user_id"], "c");
    });
}

#[test]
fn origin_outside_the_list_gives_403() {
    let server = Server::start(json!({"allowed_origins": ["https://forum.example"]}));
    let query = format!("token={}", token("a", 60));
    smol::block_on(async {
        let bad = Client::connect(server.addr, &query, &[("origin", "https://evil.example")]).await;
        assert_eq!(bad.err(), Some((403, "origin not allowed\n".into())));
        let mut good = Client::connect(server.addr, &query, &[("origin", "https://forum.example")])
            .await
            .expect("allowed origin");
        good.recv_type("welcome").await;
        // Not a browser: no Origin header at all is allowed.
        let mut tool = Client::connect(server.addr, &format!("token={}", token("b", 60)), &[])
            .await
            .expect("no origin");
        tool.recv_type("welcome").await;
    });
}

#[test]
fn plain_http_gets_plain_answers() {
    let server = Server::start(json!({}));
    let (status, body) = raw_http(server.addr, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((status, body.as_str()), (400, "expected a WebSocket upgrade request\n"));
    let (status, _) = raw_http(server.addr, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 404);
    let (status, _) = raw_http(server.addr, b"POST /ws HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(status, 405);
    let (status, _) = raw_http(server.addr, b"\x16\x03\x01\x02\x00garbage\r\n\r\n");
    assert_eq!(status, 400);
    let huge = format!("GET /ws HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(10_000));
    let (status, _) = raw_http(server.addr, huge.as_bytes());
    assert_eq!(status, 431);
    let t = token("a", 60);
    let old_version = String::from_utf8(upgrade_request(&format!("token={t}"), ""))
        .unwrap()
        .replace("Version: 13", "Version: 8");
    let (status, _) = raw_http(server.addr, old_version.as_bytes());
    assert_eq!(status, 426);
    let bad_key = String::from_utf8(upgrade_request(&format!("token={t}"), ""))
        .unwrap()
        .replace("dGhlIHNhbXBsZSBub25jZQ==", "short");
    let (status, body) = raw_http(server.addr, bad_key.as_bytes());
    assert_eq!((status, body.as_str()), (400, "bad Sec-WebSocket-Key\n"));
}

#[test]
fn handshake_that_never_finishes_is_dropped() {
    let server = Server::start(json!({"limits": {"handshake_timeout_secs": 1}}));
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    std::io::Write::write_all(&mut stream, b"GET /ws HTTP/1.1\r\n").unwrap();
    let mut buf = [0u8; 64];
    let read = std::io::Read::read(&mut stream, &mut buf);
    assert!(matches!(read, Ok(0) | Err(_)), "the server answered instead of dropping: {read:?}");
}
