//! A few-second smoke run of every benchmark scenario against the debug build: it checks
//! correctness (nothing lost, nobody cut off, no error), not speed. Speed is `benches/run.sh`
//! and `benches/scale.sh`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

/// The load generator, built once: it is a package of its own (`benches/loadgen`), so cargo does
/// not build it for this package's tests. Built into the same target folder as the server.
fn loadgen_bin() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "shequ-loadgen"])
            .status()
            .expect("run cargo");
        assert!(status.success(), "cargo build -p shequ-loadgen failed");
        let server = PathBuf::from(env!("CARGO_BIN_EXE_shequ-chat"));
        server.with_file_name("shequ-loadgen")
    })
}

fn loadgen(args: &[&str]) -> Value {
    let out = Command::new(loadgen_bin())
        .args(["--server", "shequ", "--server-bin", env!("CARGO_BIN_EXE_shequ-chat")])
        .args(["--config", "configs/bench.json"])
        .args(args)
        .output()
        .expect("run shequ-loadgen");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

#[test]
fn idle_connections_all_open() {
    let r = loadgen(&["--scenario", "idle", "--connections", "200"]);
    assert_eq!(r["connections"], 200, "{r}");
    assert!(r["kib_per_connection"].as_f64().unwrap() > 0.0, "{r}");
}

#[test]
fn fanout_loses_nothing() {
    for extra in [&["--rate", "0"][..], &["--rate", "2000"][..]] {
        let mut args = vec!["--scenario", "fanout", "--receivers", "200", "--senders", "2"];
        args.extend_from_slice(&["--messages", "50"]);
        args.extend_from_slice(extra);
        let r = loadgen(&args);
        assert_eq!((r["lost"].as_u64(), r["disconnected"].as_u64()), (Some(0), Some(0)), "{r}");
        assert_eq!(r["deliveries"], 200 * 2 * 50, "{r}");
    }
}

#[test]
fn burst_cuts_no_one() {
    let args = ["--scenario", "burst", "--receivers", "100", "--senders", "10", "--messages", "50"];
    let r = loadgen(&args);
    assert_eq!((r["lost"].as_u64(), r["disconnected"].as_u64()), (Some(0), Some(0)), "{r}");
}

#[test]
fn churn_keeps_serving() {
    let r = loadgen(&["--scenario", "churn", "--users", "10", "--secs", "2"]);
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(r["still_serving"], true, "{r}");
    assert!(r["handshakes_per_sec"].as_f64().unwrap() > 0.0, "{r}");
}

#[test]
fn wave_pings_everyone_and_the_chat_loses_nothing() {
    let args = ["--scenario", "wave", "--connections", "200", "--senders", "4", "--rate", "100"];
    let r = loadgen(&[&args[..], &["--secs", "3", "--ping-secs", "1"]].concat());
    assert_eq!(r["deliveries"], r["expected_deliveries"], "{r}");
    assert_eq!(r["idle_disconnected"], 0, "{r}");
    // 200 connections pinged every second.
    assert!(r["pings_per_sec"].as_f64().unwrap() > 100.0, "{r}");
}

#[test]
fn restart_storm_brings_everyone_back_with_every_message_once() {
    let args = ["--scenario", "storm", "--connections", "200", "--messages", "5", "--secs", "60"];
    let r = loadgen(&args);
    assert_eq!(r["never_back"], 0, "{r}");
    assert_eq!(r["recovered"], 200, "{r}");
    assert_eq!((r["lost"].as_u64(), r["duplicates"].as_u64()), (Some(0), Some(0)), "{r}");
    assert_eq!(r["unrecoverable"], 0, "{r}");
}

/// `benches/cluster.sh`'s set-up: two instances over a Redis the load generator starts.
#[cfg(feature = "redis")]
#[test]
fn fanout_over_two_instances_loses_nothing() {
    let args = ["--scenario", "fanout", "--receivers", "200", "--senders", "2", "--messages", "50"];
    let r = loadgen(&[&args[..], &["--instances", "2"]].concat());
    assert_eq!((r["lost"].as_u64(), r["disconnected"].as_u64()), (Some(0), Some(0)), "{r}");
    assert_eq!(r["deliveries"], 200 * 2 * 50, "{r}");
    assert_eq!(r["instances"], 2, "{r}");
}
