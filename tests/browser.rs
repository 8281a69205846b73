//! The chat page in a real browser: Debian's Chromium, driven by playwright-core
//! (`tests/browser/chat.mjs`). `.ci/setup` installs both.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::json;

/// Runs a script of `tests/browser/` in Node against `server` with `args` after its URL; returns
/// its output, failing the test if the script failed. Its screenshot is named in the CI log.
fn run_in_chromium(script: &str, server: &Server, args: &[&str], screenshot: &Path) -> String {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        here.join("tests/browser/node_modules/playwright-core").is_dir(),
        "playwright-core is missing: run .ci/setup (or npm ci --prefix tests/browser)"
    );
    let out = Command::new("node")
        .arg(here.join("tests/browser").join(script))
        .arg(format!("http://{}", server.addr))
        .args(args)
        .arg(screenshot)
        .output()
        .expect("node (run .ci/setup)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(screenshot.is_file());
    // Straight to stderr, past the test harness's capture, so the CI log names the artifact.
    let line = format!("browser test screenshot (CI artifact): {}\n", screenshot.display());
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    stdout
}

fn screenshot_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join(name)
}

#[test]
fn two_users_chat_in_chromium() {
    let server = Server::start(json!({"log_level": "info"}));
    // The third token expires during the run: that page must ask for a new one.
    let tokens = [token("1", 3600), token("2", 3600), token("3", 15)];
    let tokens = tokens.each_ref().map(String::as_str);
    let screenshot = screenshot_path("chat-screenshot.png");
    let stdout = run_in_chromium("chat.mjs", &server, &tokens, &screenshot);
    assert!(stdout.contains("an expired session asks for a new token"), "{stdout}");
}

#[test]
fn channels_unread_counts_and_a_private_conversation_in_chromium() {
    let server = Server::start(json!({
        "log_level": "info",
        "channels": {"default": "lobby", "rules": [
            {"pattern": "lobby", "join": "public"},
            {"pattern": "forum:*", "join": "public"}
        ]}
    }));
    let tokens = [token("1", 3600), token("2", 3600)];
    let screenshot = screenshot_path("chat-channels-screenshot.png");
    let args = [tokens[0].as_str(), tokens[1].as_str()];
    let stdout = run_in_chromium("channels.mjs", &server, &args, &screenshot);
    assert!(stdout.contains("shows each message once"), "{stdout}");
}

#[test]
fn moderation_shows_on_the_page_in_chromium() {
    const KEY: &str = "browser-test-api-key-0123456789abcdef";
    let server = Server::start(json!({
        "log_level": "info",
        "api": {"listen": "127.0.0.1:0", "key": KEY}
    }));
    let line = server.wait_for_log("server API on ");
    let api = format!("http://{}", line.rsplit("server API on ").next().unwrap().trim());
    let (five, six) = (token("5", 3600), token("6", 3600));
    let screenshot = screenshot_path("chat-moderation-screenshot.png");
    let stdout = run_in_chromium("moderation.mjs", &server, &[&api, KEY, &five, &six], &screenshot);
    assert!(stdout.contains("the page does not retry"), "{stdout}");
}

#[test]
fn page_is_served_with_a_strict_policy() {
    let server = Server::start(json!({}));
    let response = {
        let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
        std::io::Write::write_all(&mut stream, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stream, &mut text).unwrap();
        text
    };
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let csp = response
        .lines()
        .find_map(|l| l.strip_prefix("Content-Security-Policy: "))
        .expect("a Content-Security-Policy header");
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(response.contains("<title>shequ-chat</title>"));
}

#[test]
fn dev_config_prints_a_ready_url_and_production_prints_none() {
    let dev: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("configs/dev.json").unwrap()).unwrap();
    let mut dev_patch = dev.clone();
    dev_patch["listen"] = json!("127.0.0.1:0");
    dev_patch["api"]["listen"] = json!("127.0.0.1:0");
    dev_patch["log_level"] = json!("info");
    let server = Server::start(dev_patch);
    let line = server.wait_for_log("dev: chat as alice: http://");
    let token = line.rsplit("#token=").next().unwrap().trim().to_string();
    assert!(line.contains(&format!("http://{}/#token=", server.addr)), "{line}");
    smol::block_on(async {
        let mut client =
            Client::connect(server.addr, &format!("token={token}"), &[]).await.unwrap();
        assert_eq!(client.recv_type("welcome").await["username"], "alice");
    });
    let production = Server::start(json!({}));
    production.wait_for_log("listening on");
    assert!(!production.log_lines().iter().any(|l| l.contains("#token=")));
}

#[test]
fn the_page_on_a_phone_with_bad_tokens_and_after_the_idle_timeout() {
    let server = Server::start(json!({"log_level": "info"}));
    let idle = Server::start(json!({"idle": {"timeout_secs": 2, "check_interval_secs": 1}}));
    let expired = sign_hs256(json!({"sub": "4", "exp": unix_now() - 3600}));
    let screenshot = screenshot_path("chat-phone-screenshot.png");
    let idle_base = format!("http://{}", idle.addr);
    let args = [idle_base.as_str(), &token("4", 3600), &expired];
    let stdout = run_in_chromium("states.mjs", &server, &args, &screenshot);
    assert!(stdout.contains("said in words, no retry"), "{stdout}");
}
