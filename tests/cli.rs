//! The `shequ-chat` command line: checking configs, minting tokens, and where the secret comes
//! from.

mod common;

use std::process::Command;

use common::*;
use serde_json::json;

fn shequ_chat(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shequ-chat"))
        .args(args)
        .env_remove("SHEQU_CHAT_JWT_SECRET")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_config(name: &str, text: &str) -> String {
    let path = std::env::temp_dir().join(format!("shequ-chat-cli-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn shipped_configs_pass_the_check() {
    let (ok, out, err) = shequ_chat(&["--check-config", "--config", "configs/dev.json"]);
    assert!(ok, "{err}");
    assert!(out.contains("ok"));
    // The production template has no secret, and a placeholder origin that the check refuses
    // until it is edited; with both done it is complete.
    let check_with_secret = |path: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_shequ-chat"))
            .args(["--check-config", "--config", path])
            .env("SHEQU_CHAT_JWT_SECRET", "a-production-secret-from-the-environment")
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, err) = check_with_secret("configs/shequ-chat.json");
    assert!(!ok);
    assert!(err.contains("allowed_origins") && err.contains("placeholder"), "{err}");
    let template = std::fs::read_to_string("configs/shequ-chat.json").unwrap();
    let edited =
        template.replace(shequ_chat::config::ORIGIN_PLACEHOLDER, "https://forum.example.org");
    assert_ne!(edited, template);
    let edited = write_config("edited-template.json", &edited);
    let (ok, err) = check_with_secret(&edited);
    assert!(ok, "{err}");
    let mut without_secret = Command::new(env!("CARGO_BIN_EXE_shequ-chat"));
    let out = without_secret.args(["--check-config", "--config", &edited]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("secret"));
    // The template keeps /metrics off the public port, and limits each address.
    let t: serde_json::Value = serde_json::from_str(&template).unwrap();
    assert_eq!(t["metrics_listen"], "127.0.0.1:9100");
    assert!(t["limits"]["max_connections_per_ip"].as_u64() > Some(0));
    assert!(t["limits"]["max_pending_handshakes_per_ip"].as_u64() > Some(0));
    // The Debian package's config (with comments) passes as installed, with the secret the
    // package generates in the environment; the check says its origin list is still open.
    let out = Command::new(env!("CARGO_BIN_EXE_shequ-chat"))
        .args(["--check-config", "--config", "configs/debian.json"])
        .env("SHEQU_CHAT_JWT_SECRET", "a-production-secret-from-the-environment")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("allowed_origins is empty"), "{stdout}");
}

#[test]
fn an_origin_with_a_path_or_a_trailing_slash_is_refused() {
    for origin in ["https://forum.example.org/", "forum.example.org", "https://a.org/chat"] {
        let text = format!(
            r#"{{"auth": {{"secret": "0123456789abcdef"}}, "allowed_origins": ["{origin}"]}}"#
        );
        let path = write_config("origin.json", &text);
        let (ok, _, err) = shequ_chat(&["--check-config", "--config", &path]);
        assert!(!ok && err.contains("is not an origin"), "{origin}: {err}");
    }
}

#[test]
fn cluster_configs_need_the_redis_feature() {
    for config in ["configs/cluster-dev-a.json", "configs/cluster-dev-b.json"] {
        let (ok, _, err) = shequ_chat(&["--check-config", "--config", config]);
        if cfg!(feature = "redis") {
            assert!(ok, "{config}: {err}");
        } else {
            assert!(!ok && err.contains("--features redis"), "{config}: {err}");
        }
    }
}

#[test]
fn check_config_names_the_bad_field() {
    let path = write_config("typo.json", r#"{"limits": {"max_conections": 5}}"#);
    let (ok, _, err) = shequ_chat(&["--check-config", "--config", &path]);
    assert!(!ok);
    assert!(err.contains("max_conections"), "{err}");
    let path = write_config(
        "ping.json",
        r#"{"auth": {"secret": "0123456789abcdef0123"}, "heartbeat": {"ping_interval_secs": 90}}"#,
    );
    let (ok, _, err) = shequ_chat(&["--check-config", "--config", &path]);
    assert!(!ok);
    assert!(err.contains("ping_interval_secs"), "{err}");
}

#[test]
fn help_version_and_bad_arguments() {
    let (ok, out, _) = shequ_chat(&["--version"]);
    assert!(ok && out.starts_with("shequ-chat "));
    let (ok, out, _) = shequ_chat(&["--help"]);
    assert!(ok && out.contains("--check-config"));
    let (ok, _, err) = shequ_chat(&["--frobnicate"]);
    assert!(!ok && err.contains("--frobnicate"));
}

#[test]
fn minted_token_connects() {
    let server = Server::start(json!({}));
    let path = write_config("mint.json", &json!({"auth": {"secret": SECRET}}).to_string());
    let (ok, out, err) =
        shequ_chat(&["token", "--config", &path, "--sub", "42", "--name", "alice", "--ttl", "60"]);
    assert!(ok, "{err}");
    smol::block_on(async {
        let mut client = server.connect_token(out.trim()).await;
        let welcome = client.recv_type("welcome").await;
        assert_eq!(
            (welcome["user_id"].as_str(), welcome["username"].as_str()),
            (Some("42"), Some("alice"))
        );
    });
}

#[test]
fn secret_from_the_environment_wins() {
    let server = Server::start_with_env(
        json!({"auth": {"secret": "the-file-secret-that-loses-0123"}}),
        &[("SHEQU_CHAT_JWT_SECRET", SECRET)],
    );
    smol::block_on(async {
        let mut client = server.connect("env").await;
        assert_eq!(client.recv_type("welcome").await["user_id"], "env");
    });
    assert!(!server.log_lines().iter().any(|l| l.contains(SECRET)), "secret in the log");
}

#[test]
fn a_reader_that_goes_away_ends_the_output_without_a_panic() {
    // `shequ-chat token … | head -c 20`: the reader is gone before the line is written.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_shequ-chat"))
        .args(["token", "--config", "configs/dev.json", "--sub", "42"])
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{stderr}");
}
