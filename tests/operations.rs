//! Running it for real: `/healthz`, `/metrics` read by a real Prometheus parser, graceful
//! shutdown on SIGTERM, and the systemd notify protocol.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use async_tungstenite::tungstenite::Message;
use common::*;
use serde_json::json;

/// Parses an exposition with Python's `prometheus_client.parser` and returns every sample as
/// `name{label="value",…}` → value.
fn parse_with_prometheus(text: &str) -> HashMap<String, f64> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    assert family.documentation, family.name
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out[s.name + ("{" + labels + "}" if labels else "")] = s.value
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition (pip install prometheus_client): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn healthz_answers_ok() {
    let server = Server::start(json!({}));
    assert_eq!(server.get("/healthz"), (200, "ok\n".into()));
}

#[test]
fn metrics_count_what_happened() {
    let server = Server::start(
        json!({"limits": {"rate_per_sec": 0.001, "rate_burst": 2}, "allowed_origins": ["https://ok"]}),
    );
    smol::block_on(async {
        let mut a = server.connect("a").await;
        a.recv_type("welcome").await;
        let mut b = server.connect("b").await;
        b.recv_type("welcome").await;
        let mut b2 = server.connect("b").await; // replaces b
        b2.recv_type("welcome").await;
        assert_eq!(b.close_code().await, Ended::Closed(4001));

        a.chat("one").await;
        a.chat("two").await;
        a.chat("three").await; // over the burst of 2
        assert_eq!(a.recv_type("error").await["code"], "rate_limited");
        a.send(Message::Text("nonsense".into())).await;
        assert_eq!(a.recv_type("error").await["code"], "invalid_json");
        for _ in 0..2 {
            b2.recv_type("chat").await;
        }

        let missing = Client::connect(server.addr, "", &[]).await;
        assert_eq!(missing.err().map(|e| e.0), Some(401));
        let query = format!("token={}", token("c", 60));
        let origin = Client::connect(server.addr, &query, &[("origin", "https://evil")]).await;
        assert_eq!(origin.err().map(|e| e.0), Some(403));

        let (status, text) = server.get("/metrics");
        assert_eq!(status, 200);
        let m = parse_with_prometheus(&text);
        let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no sample {k} in\n{text}"));
        assert_eq!(get("shequ_chat_connections"), 2.0);
        assert_eq!(get("shequ_chat_online_users"), 2.0);
        assert_eq!(get("shequ_chat_connections_accepted_total"), 3.0);
        assert_eq!(get("shequ_chat_replacements_total"), 1.0);
        assert_eq!(get("shequ_chat_messages_received_total"), 4.0);
        assert_eq!(get("shequ_chat_messages_broadcast_total"), 2.0);
        assert_eq!(get("shequ_chat_deliveries_total"), 4.0);
        assert_eq!(get("shequ_chat_rate_limited_total"), 1.0);
        assert_eq!(get("shequ_chat_invalid_messages_total"), 1.0);
        assert_eq!(get("shequ_chat_heartbeat_failures_total"), 0.0);
        assert_eq!(get(r#"shequ_chat_auth_failures_total{reason="missing"}"#), 1.0);
        assert_eq!(get(r#"shequ_chat_auth_failures_total{reason="origin"}"#), 1.0);
        // The same two refusals by their reason among all refusals; capacity is not an auth
        // failure and has no sample there.
        assert_eq!(get(r#"shequ_chat_refusals_total{reason="missing"}"#), 1.0);
        assert_eq!(get(r#"shequ_chat_refusals_total{reason="origin"}"#), 1.0);
        assert_eq!(get(r#"shequ_chat_refusals_total{reason="capacity"}"#), 0.0);
        assert!(!m.contains_key(r#"shequ_chat_auth_failures_total{reason="capacity"}"#));
        assert_eq!(get(r#"shequ_chat_disconnects_total{reason="replaced"}"#), 1.0);
        assert_eq!(get(r#"shequ_chat_disconnects_total{reason="shutdown"}"#), 0.0);
        assert!(get("process_resident_memory_bytes") > 100_000.0);
        assert!(get("process_open_fds") >= 3.0);
        let started = get("process_start_time_seconds");
        assert!((started - unix_now() as f64).abs() < 600.0, "start time {started}");
        let version =
            format!(r#"shequ_chat_build_info{{version="{}"}}"#, env!("CARGO_PKG_VERSION"));
        assert_eq!(get(&version), 1.0);
    });
}

#[test]
fn metrics_on_a_private_listener() {
    let server = Server::start(json!({"metrics_listen": "127.0.0.1:0"}));
    let line = server.wait_for_log("metrics on ");
    let addr = line.rsplit("metrics on ").next().unwrap().trim().parse().unwrap();
    assert_eq!(server.get("/metrics").0, 404, "metrics leaked onto the public listener");
    let (status, text) = get(addr, "/metrics");
    assert_eq!(status, 200);
    assert!(parse_with_prometheus(&text).contains_key("shequ_chat_connections"));
    assert_eq!(get(addr, "/healthz").0, 200);
    assert_eq!(get(addr, "/ws").0, 404, "chat on the metrics listener");
}

#[test]
fn sigterm_closes_everyone_with_1001_and_exits_0() {
    let mut server = Server::start(json!({"shutdown_grace_secs": 5}));
    smol::block_on(async {
        let mut clients = Vec::new();
        for i in 0..3 {
            let mut c = server.connect(&format!("u{i}")).await;
            c.recv_type("welcome").await;
            clients.push(c);
        }
        server.signal("TERM");
        for c in &mut clients {
            assert_eq!(c.close_code().await, Ended::Closed(1001));
        }
    });
    assert_eq!(server.wait_exit(Duration::from_secs(5)), Some(0));
    server.wait_for_log("stopped");
}

#[test]
fn systemd_notify_ready_watchdog_and_stopping() {
    let path = std::env::temp_dir().join(format!("shequ-chat-notify-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    let notify = path.to_string_lossy().into_owned();
    let mut server = Server::start_with_env(
        json!({}),
        &[("NOTIFY_SOCKET", notify.as_str()), ("WATCHDOG_USEC", "200000")],
    );
    let receive = || {
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut seen = Vec::new();
    while seen.iter().filter(|m: &&String| m.contains("WATCHDOG=1")).count() < 3 {
        seen.push(receive());
    }
    assert!(seen.iter().any(|m| m.contains("READY=1")), "{seen:?}");
    server.signal("TERM");
    while !receive().contains("STOPPING=1") {}
    assert_eq!(server.wait_exit(Duration::from_secs(5)), Some(0));
    let _ = std::fs::remove_file(&path);
}

#[test]
fn timestamps_can_be_turned_off() {
    let server = Server::start(json!({"log_timestamps": false}));
    let line = server.wait_for_log("listening on");
    assert!(line.starts_with("INFO"), "{line}");
}
