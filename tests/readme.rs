//! README's commands, run the way they are written, so that README and reality cannot drift
//! apart: every `cargo run` line of its `sh` blocks (the quick start, `--check-config`, the
//! `token` command, the two cluster instances), each server until `/healthz` answers, then
//! stopped. Also every JSON example, through the real configuration loader, and the
//! configuration table against the fields the loader knows.
//!
//! The servers listen where README says (127.0.0.1:8080, 8081, 8082), and the cluster example
//! needs a Redis on its default port: this test starts one there unless one already answers.

// Tests bound their waits with the real clock; the rule against reading it is for the hub.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use shequ_chat::config::Config;

/// How long a README server may take to answer `/healthz`. The test builds first, so this is
/// a start, not a build; generous, for a busy machine where cargo still has to link.
const START_TIMEOUT: Duration = Duration::from_secs(300);

/// The README servers' tests take turns: each builds first (holding cargo's build lock, which
/// the other's `cargo run` would wait on), and they share ports 8080–8082.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn readme() -> String {
    std::fs::read_to_string("README.md").expect("README.md")
}

/// The commands in README's fenced blocks of `lang`, one per command: continuation lines
/// (ending in `\`) joined, comments after `#` kept (bash ignores them).
fn blocks(lang: &str) -> Vec<String> {
    // A `json` block is one example; an `sh` block is one command per line (`\` continues it).
    let whole = lang == "json";
    let mut out = Vec::new();
    let mut inside = false;
    let mut pending = String::new();
    for line in readme().lines() {
        if let Some(tag) = line.strip_prefix("```") {
            if inside && whole {
                out.push(std::mem::take(&mut pending));
            }
            inside = !inside && tag == lang;
            continue;
        }
        if !inside {
            continue;
        }
        if whole {
            pending.push_str(line);
            pending.push('\n');
            continue;
        }
        pending.push_str(line.trim_end_matches('\\'));
        if !line.ends_with('\\') {
            out.push(std::mem::take(&mut pending));
        }
    }
    out
}

/// The `cargo run` commands of README's `sh` blocks.
fn cargo_runs() -> Vec<String> {
    blocks("sh").into_iter().filter(|c| c.contains("cargo run")).collect()
}

/// Runs a command line as README has it, with bash, in the repository.
fn bash(line: &str) -> Command {
    let mut c = Command::new("bash");
    c.args(["-c", line]).env_remove("SHEQU_CHAT_JWT_SECRET").env_remove("SHEQU_CHAT_LOG");
    c
}

/// Builds what a README `cargo run` line runs (its profile and features), so that its start is
/// not a build.
fn build_for(line: &str) {
    let mut cargo = Command::new(env!("CARGO"));
    cargo.args(["build", "--quiet"]);
    if line.contains("--release") {
        cargo.arg("--release");
    }
    if line.contains("--features redis") {
        cargo.args(["--features", "redis"]);
    }
    assert!(cargo.status().expect("cargo").success(), "cargo build for {line}");
}

/// A README server, stopped with SIGTERM (killed if a test fails half-way).
struct Running {
    child: Child,
    output: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(line: &str) -> Running {
        // `exec`, and cargo run execs the server in turn: the child is the server itself.
        let mut child = bash(&format!("exec {line}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bash");
        let (tx, output) = mpsc::channel();
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Running { child, output, seen: Vec::new() }
    }

    /// Waits until `/healthz` on `addr` answers 200; panics with the output so far if the
    /// process ends or the time is up.
    fn wait_healthy(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.seen.extend(self.output.try_iter());
            if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
                && get(addr, "/healthz").0 == 200
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Its last lines may still be in the pipes.
                std::thread::sleep(Duration::from_millis(200));
                self.seen.extend(self.output.try_iter());
                panic!("the server exited ({status}):\n{}", self.seen.join("\n"));
            }
            assert!(Instant::now() < deadline, "no /healthz on {addr}:\n{}", self.seen.join("\n"));
            // Polling a port that is not open yet has no event to wait for.
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The process README started is the server (cargo run execs it), so SIGTERM reaches it.
    fn assert_is_the_server(&self) {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", self.child.id()));
        assert_eq!(comm.unwrap_or_default().trim(), "shequ-chat");
    }

    /// Waits for an output line containing `needle`.
    fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no line with {needle:?} in:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// SIGTERM; the server shuts down gracefully and exits 0.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().expect("wait");
        self.seen.extend(self.output.try_iter());
        assert!(status.success(), "exit {status}:\n{}", self.seen.join("\n"));
    }
}

impl Drop for Running {
    /// A test that failed half-way leaves no server holding README's ports.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn quick_start_check_config_and_token_work_as_written() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let runs = cargo_runs();
    let quick_start = runs
        .iter()
        .find(|c| c.contains("--config configs/dev.json") && !c.contains("--check-config"))
        .filter(|c| !c.contains(" token "))
        .expect("README's quick start command");
    let check = runs.iter().find(|c| c.contains("--check-config")).expect("a --check-config line");
    let token_line =
        runs.iter().find(|c| c.starts_with("TOKEN=$(")).expect("README's token command");
    for line in [quick_start, check, token_line] {
        build_for(line);
    }

    let out = bash(check).output().unwrap();
    assert!(out.status.success(), "{check}: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "configs/dev.json: ok");

    let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let mut server = Running::start(quick_start);
    server.wait_healthy(addr);
    server.assert_is_the_server();
    // The first screen README describes.
    server.wait_for_line("listening on 127.0.0.1:8080");
    server.wait_for_line("open files limit");
    let alice = server.wait_for_line("dev: chat as alice: http://127.0.0.1:8080/#token=");
    server.wait_for_line("dev: chat as bob: http://127.0.0.1:8080/#token=");

    // README's token line, then the connection README shows (websocat's part, by our client).
    let out = bash(&format!("{token_line}\nprintf %s \"$TOKEN\"")).output().unwrap();
    assert!(out.status.success(), "{token_line}: {}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap();
    let shown = readme_json_lines();
    smol::block_on(async {
        let mut client = Client::connect(addr, &format!("token={token}"), &[]).await.unwrap();
        let welcome = client.recv_type("welcome").await;
        assert_eq!(welcome["user_id"], shown[0]["user_id"], "{welcome}");
        assert_eq!(welcome["username"], shown[0]["username"], "{welcome}");
        client.send_json(shown[1].clone()).await;
        let chat = client.recv_type("chat").await;
        assert_eq!(chat["content"], shown[2]["content"]);
        assert_eq!(chat["username"], shown[2]["username"]);
        // The printed dev URL's token works too.
        let dev = alice.rsplit("#token=").next().unwrap();
        let mut dev_client = Client::connect(addr, &format!("token={dev}"), &[]).await.unwrap();
        assert_eq!(dev_client.recv_type("welcome").await["username"], "alice");
    });
    server.stop();
}

/// The frames README's "Connect" section shows: welcome, what the user types, the echo.
fn readme_json_lines() -> Vec<Value> {
    let text = readme();
    let block = text.split("websocat \"ws://").nth(1).expect("README's websocat example");
    let frames: Vec<Value> = block
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("a JSON frame in README"))
        .collect();
    assert_eq!(frames.len(), 3, "{frames:?}");
    frames
}

#[test]
fn the_cluster_commands_work_as_written() {
    let runs = cargo_runs();
    let instances: Vec<&String> = runs.iter().filter(|c| c.contains("cluster-dev-")).collect();
    assert_eq!(instances.len(), 2, "README's two cluster commands");
    if !cfg!(feature = "redis") {
        // Their `--features redis` build is what they need; this run has no Redis code to test.
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for line in &instances {
        build_for(line);
    }
    let redis_addr: SocketAddr = "127.0.0.1:6379".parse().unwrap();
    let _redis = match TcpStream::connect_timeout(&redis_addr, Duration::from_secs(1)) {
        Ok(_) => None, // README assumes Debian's redis-server on its default port
        Err(_) => Some(Redis::start_on(6379)),
    };
    let mut servers = Vec::new();
    for (line, port) in instances.iter().zip([8081, 8082]) {
        let mut server = Running::start(line);
        server.wait_healthy(SocketAddr::from(([127, 0, 0, 1], port)));
        server.assert_is_the_server();
        servers.push(server);
    }
    let urls: Vec<String> =
        servers.iter_mut().map(|s| s.wait_for_line("dev: chat as alice: http://")).collect();
    // /healthz answers before an instance has joined Redis, and a message sent before both
    // have joined reaches the other as history, not live (.ci/stress caught this once in 20).
    for server in &mut servers {
        server.wait_for_line("cluster: connected to Redis");
    }
    // A message sent on one instance reaches the other.
    smol::block_on(async {
        let token_a = urls[0].rsplit("#token=").next().unwrap();
        let token_b = servers[1].wait_for_line("dev: chat as bob: http://");
        let token_b = token_b.rsplit("#token=").next().unwrap();
        let a = SocketAddr::from(([127, 0, 0, 1], 8081));
        let b = SocketAddr::from(([127, 0, 0, 1], 8082));
        let mut alice = Client::connect(a, &format!("token={token_a}"), &[]).await.unwrap();
        alice.recv_type("welcome").await;
        let mut bob = Client::connect(b, &format!("token={token_b}"), &[]).await.unwrap();
        bob.recv_type("welcome").await;
        alice.chat("across instances").await;
        assert_eq!(bob.recv_type("chat").await["content"], "across instances");
    });
    for server in servers {
        server.stop();
    }
}

#[test]
fn every_json_example_loads() {
    let examples = blocks("json");
    assert!(!examples.is_empty(), "README has configuration examples");
    for example in examples {
        // A fragment (`"cluster": {…}`) is a part of a configuration file.
        let body = example.trim().trim_end_matches(',');
        let text = if body.starts_with('{') {
            body.to_string()
        } else {
            format!(r#"{{ {body}, "auth": {{ "secret": "0123456789abcdef" }} }}"#)
        };
        match Config::parse(&text) {
            Ok(_) => {}
            Err(e) if !cfg!(feature = "redis") && e.0.contains("--features redis") => {}
            Err(e) => panic!("README's example does not load: {e}\n{text}"),
        }
    }
}

#[test]
fn the_configuration_table_names_every_field_and_only_real_ones() {
    // Every field the loader knows, as README writes it (`limits.max_connections`).
    let defaults = serde_json::to_value(Config::default()).unwrap();
    let mut fields = Vec::new();
    flatten("", &defaults, &mut fields);
    // The cluster section is absent by default; its fields are those of a cluster example.
    let cluster = Config::parse(r#"{"auth": {"secret": "0123456789abcdef"}, "cluster": {}}"#);
    if let Ok(c) = cluster {
        flatten("", &serde_json::to_value(c).unwrap(), &mut fields);
    }
    // So is the channels section.
    let channels = Config::parse(r#"{"auth": {"secret": "0123456789abcdef"}, "channels": {}}"#);
    flatten("", &serde_json::to_value(channels.unwrap()).unwrap(), &mut fields);
    // And the api section.
    let api = Config::parse(r#"{"auth": {"secret": "0123456789abcdef"}, "api": {}}"#);
    flatten("", &serde_json::to_value(api.unwrap()).unwrap(), &mut fields);
    let text = readme();
    let section = text.split("## Configuration").nth(1).expect("a Configuration section");
    let table: Vec<String> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .flat_map(|l| {
            let cell = l.split(" |").next().unwrap_or("");
            cell.split(", ").map(|f| f.trim_matches('`').to_string()).collect::<Vec<_>>()
        })
        .collect();
    for field in &fields {
        assert!(table.contains(field), "README's configuration table leaves out `{field}`");
    }
    for field in &table {
        assert!(fields.contains(field), "README's table names `{field}`, which is no field");
    }
}

/// `a.b` paths of every leaf, and of the sections that are `null` by default (`cluster`,
/// `channels`).
fn flatten(prefix: &str, value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            if !prefix.is_empty()
                && !out.contains(&prefix.to_string())
                && ["cluster", "channels"].contains(&prefix)
            {
                out.push(prefix.to_string());
            }
            for (k, v) in map {
                let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&path, v, out);
            }
        }
        _ => {
            if !out.contains(&prefix.to_string()) {
                out.push(prefix.to_string());
            }
        }
    }
}
