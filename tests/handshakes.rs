//! Sockets that never finish their handshake (slowloris), under a low open-files limit: the
//! pending-handshake limits keep file descriptors for everyone else, and when `accept` does run
//! out of them, the server backs off and says so once in a while, not ten times a second. And a
//! crowd beyond `limits.max_pending_handshakes` (a restart's herd) waits its turn on the chat
//! port instead of being closed.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};

use common::*;
use serde_json::json;

/// Runs the server with an open-files limit of `nofile`, soft and hard (so it cannot raise it).
fn server_with_nofile(nofile: u32, limits: serde_json::Value) -> Server {
    let limit = format!("--nofile={nofile}:{nofile}");
    Server::start_under(json!({ "limits": limits }), &[], &["prlimit", &limit, "--"])
}

/// Sockets from `from` that send the start of a request head and then nothing.
fn slowloris_crowd(server: &Server, from: Ipv4Addr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = tcp_from(from, server.addr);
            let _ = s.write_all(b"GET /ws?token=");
            s
        })
        .collect()
}

#[test]
fn a_slowloris_crowd_from_one_address_leaves_room_for_everyone_else() {
    let server = server_with_nofile(
        128,
        json!({
            "max_connections": 20,
            "max_pending_handshakes": 32,
            "max_pending_handshakes_per_ip": 8,
            "handshake_timeout_secs": 60
        }),
    );
    let crowd = slowloris_crowd(&server, Ipv4Addr::new(127, 0, 0, 3), 300);
    smol::block_on(async {
        // Every legitimate client gets in, and they stay connected together.
        let mut clients = Vec::new();
        for i in 0..15 {
            let query = format!("token={}", token(&format!("legit{i}"), 3600));
            let connected = Client::connect_from(Ipv4Addr::new(127, 0, 0, 2), server.addr, &query);
            let mut client = connected.await.unwrap_or_else(|e| panic!("client {i}: {e:?}"));
            client.recv_type("welcome").await;
            clients.push(client);
        }
        clients[0].chat_and_see("the crowd did not keep us out").await;
    });
    // The crowd's address held its share (plus this scrape, pending while it is answered); the
    // rest of it was closed at once.
    server.await_metric("shequ_chat_pending_handshakes", 9.0);
    server.await_metric("shequ_chat_handshakes_refused_total{limit=\"per_ip\"}", 292.0);
    server.await_metric("shequ_chat_accept_errors_total", 0.0);
    drop(crowd);
}

#[test]
fn a_max_connections_the_descriptors_cannot_hold_is_refused_at_start() {
    let config =
        std::env::temp_dir().join(format!("shequ-chat-nofile-{}.json", std::process::id()));
    let mut text = base_config();
    merge(&mut text, json!({"limits": {"max_connections": 1000}}));
    std::fs::write(&config, text.to_string()).unwrap();
    let out = std::process::Command::new("prlimit")
        .args(["--nofile=256:256", "--", env!("CARGO_BIN_EXE_shequ-chat"), "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&config);
    assert!(!out.status.success(), "it started");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("limits.max_connections (1000) needs 1064 open files")
            && err.contains("the limit is 256")
            && err.contains("lower limits.max_connections to 192"),
        "{err}"
    );
}

#[test]
fn out_of_file_descriptors_the_server_backs_off_reports_rarely_and_recovers() {
    // Limits that the open-files limit cannot honour: `accept` runs out first.
    let mut server = server_with_nofile(
        128,
        json!({
            "max_connections": 20,
            "max_pending_handshakes": 1000,
            "max_pending_handshakes_per_ip": 0,
            "handshake_timeout_secs": 60
        }),
    );
    server.expect_warning("the open files limit is 128");
    server.expect_warning("accept failed");
    let crowd = slowloris_crowd(&server, Ipv4Addr::new(127, 0, 0, 3), 200);
    server.wait_for_nth_log("accept failed", 1);
    // No file descriptor is free, not even for a scrape of /metrics: what the server says in
    // these two seconds is all there is to see. At one failure per 100 ms back-off, that is
    // about 20 failures, and one line.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let reports = server.log_lines().iter().filter(|l| l.contains("accept failed")).count();
    assert_eq!(reports, 1, "one report per interval, not one per failure");
    drop(crowd);
    // The crowd is gone: its sockets end, and a newcomer gets in.
    smol::block_on(async {
        let mut client = server.joined("after the crowd").await;
        client.chat_and_see("back in").await;
    });
    let failures = server.metric("shequ_chat_accept_errors_total");
    assert!((10.0..=60.0).contains(&failures), "{failures} accept failures in about 2 s");
}

#[test]
fn beyond_max_pending_handshakes_the_chat_port_waits_its_turn_instead_of_refusing() {
    let server = Server::start(json!({"limits": {
        "max_pending_handshakes": 4,
        "max_pending_handshakes_per_ip": 0,
        "handshake_timeout_secs": 60
    }}));
    let crowd = slowloris_crowd(&server, Ipv4Addr::new(127, 0, 0, 3), 4);
    // The kernel completes this connection into the listen backlog; the server, with every
    // handshake slot held, neither accepts it nor closes it. (An absence: nothing to await but
    // the second in which a refusal would have come.)
    let waiting = tcp_from(Ipv4Addr::new(127, 0, 0, 2), server.addr);
    waiting.set_read_timeout(Some(std::time::Duration::from_secs(1))).unwrap();
    let quiet = (&waiting).read(&mut [0u8; 1]).unwrap_err();
    assert!(
        matches!(quiet.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        "closed while waiting: {quiet:?}"
    );
    waiting.set_read_timeout(None).unwrap();
    drop(crowd);
    smol::block_on(async {
        let query = format!("token={}", token("waited", 3600));
        let connected = Client::connect_over(waiting, server.addr, &query).await;
        let mut client = connected.unwrap_or_else(|e| panic!("refused: {e:?}"));
        client.recv_type("welcome").await;
        client.chat_and_see("in, after the crowd").await;
    });
    assert_eq!(server.metric("shequ_chat_handshakes_refused_total{limit=\"total\"}"), 0.0);
    assert!(server.metric("shequ_chat_accept_waits_total") >= 1.0);
}
