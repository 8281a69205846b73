//! Shared test harness: the real `shequ-chat` binary on a loopback port, real WebSocket clients,
//! raw HTTP. Every wait is for an event, bounded by [`TIMEOUT`].
//!
//! When a [`Server`] is dropped, its log is checked: no panic, and no WARN or ERROR line unless
//! the test said it expects one.

#![allow(dead_code)]
// The harness mints real tokens and bounds real waits: it reads the real clocks.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::{Error as WsError, Message};
use futures_lite::{FutureExt, StreamExt};
use jwt_simple::prelude::*;
use serde_json::{Value, json};
use smol::net::TcpStream;

/// The longest any single wait in a test may take before it fails.
pub const TIMEOUT: Duration = Duration::from_secs(20);
/// The HS256 secret of the test configuration.
pub const SECRET: &str = "integration-test-secret-0123456789";

static NEXT_CONFIG: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

/// A running server process.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Log>,
    expected_warnings: Vec<String>,
    config_path: std::path::PathBuf,
    log_readers: Vec<std::thread::JoinHandle<()>>,
}

/// The test configuration: limits out of the way unless a test sets them.
pub fn base_config() -> Value {
    json!({
        "listen": "127.0.0.1:0",
        "log_level": "debug",
        "presence_interval_ms": 100,
        "auth": { "secret": SECRET, "leeway_secs": 0 },
        "limits": {
            // Well within any machine's open files limit: the server refuses more connections
            // than its descriptors can hold.
            "max_connections": 1000,
            "rate_per_sec": 100000.0,
            "rate_burst": 100000,
            "max_pending_handshakes_per_ip": 0
        },
        // Departures count at once, so that tests see them without waiting for a grace.
        "presence": { "grace_ms": 0 }
    })
}

/// Merges `patch` into `base`, object by object.
pub fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

impl Server {
    /// Starts the server with the test configuration plus `patch`.
    pub fn start(patch: Value) -> Server {
        Server::start_with_env(patch, &[])
    }

    pub fn start_with_env(patch: Value, env: &[(&str, &str)]) -> Server {
        Server::start_under(patch, env, &[])
    }

    /// Starts the server under `wrapper` (a command and its arguments, e.g. `prlimit …`, which
    /// execs the server in its own process), or under `SHEQU_CHAT_TEST_WRAPPER` when empty.
    pub fn start_under(patch: Value, env: &[(&str, &str)], wrapper: &[&str]) -> Server {
        let mut config = base_config();
        merge(&mut config, patch);
        let n = NEXT_CONFIG.fetch_add(1, Ordering::Relaxed);
        let config_path =
            std::env::temp_dir().join(format!("shequ-chat-test-{}-{n}.json", std::process::id()));
        std::fs::write(&config_path, config.to_string()).unwrap();
        // SHEQU_CHAT_TEST_WRAPPER runs the server under a tool, e.g. valgrind (see
        // docs/RELIABILITY.md); the server is then stopped with SIGTERM so the tool can report.
        let from_env = std::env::var("SHEQU_CHAT_TEST_WRAPPER").unwrap_or_default();
        let wrapper = if wrapper.is_empty() { from_env } else { wrapper.join(" ") };
        let mut words = wrapper.split_whitespace();
        let mut command = match words.next() {
            Some(tool) => {
                let mut c = Command::new(tool);
                c.args(words).arg(env!("CARGO_BIN_EXE_shequ-chat"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_shequ-chat")),
        };
        command.arg("--config").arg(&config_path);
        command.env_remove("SHEQU_CHAT_JWT_SECRET").env_remove("SHEQU_CHAT_LOG");
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start shequ-chat");
        let log = Arc::new(Log::default());
        let mut log_readers = Vec::new();
        for pipe in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let log = log.clone();
            log_readers.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    log.lines.lock().unwrap().push(line);
                    log.changed.notify_all();
                }
            }));
        }
        let mut server = Server {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            log,
            expected_warnings: Vec::new(),
            config_path,
            log_readers,
        };
        let line = server.wait_for_log("listening on ");
        let addr = line.rsplit("listening on ").next().unwrap().trim();
        server.addr = addr.parse().expect("listen address in the log");
        server
    }

    /// Waits until a log line contains `needle`, and returns it.
    pub fn wait_for_log(&self, needle: &str) -> String {
        self.wait_for_nth_log(needle, 1)
    }

    /// Waits until `n` log lines contain `needle`, and returns the `n`th.
    pub fn wait_for_nth_log(&self, needle: &str, n: usize) -> String {
        let deadline = std::time::Instant::now() + TIMEOUT;
        let mut lines = self.log.lines.lock().unwrap();
        loop {
            if let Some(line) = lines.iter().filter(|l| l.contains(needle)).nth(n - 1) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                // Unlock first: the log is read again when the server is dropped.
                drop(lines);
                panic!("no {n}th log line with {needle:?} (the log follows)");
            }
            lines = self.log.changed.wait_timeout(lines, left).unwrap().0;
        }
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lines.lock().unwrap().clone()
    }

    /// Declares that a WARN line containing `needle` is expected in this test.
    pub fn expect_warning(&mut self, needle: &str) {
        self.expected_warnings.push(needle.to_string());
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws?{query}", self.addr)
    }

    /// Connects as `sub` with a fresh one-hour token.
    pub async fn connect(&self, sub: &str) -> Client {
        self.connect_token(&token(sub, 3600)).await
    }

    pub async fn connect_token(&self, token: &str) -> Client {
        match Client::connect(self.addr, &format!("token={token}"), &[]).await {
            Ok(client) => client,
            Err(status) => panic!("connect refused with {status:?}"),
        }
    }

    /// Connects as `sub` and reads its `welcome` frame.
    pub async fn joined(&self, sub: &str) -> Client {
        let mut client = self.connect(sub).await;
        client.recv_type("welcome").await;
        client
    }

    /// A sample of `/metrics` without labels.
    pub fn metric(&self, name: &str) -> f64 {
        let (status, text) = self.get("/metrics");
        assert_eq!(status, 200);
        let line = text.lines().find(|l| l.split(' ').next() == Some(name));
        let line = line.unwrap_or_else(|| panic!("no {name} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    /// Waits until a sample of `/metrics` reads `expected`, and fails with the last value read
    /// if it does not within [`TIMEOUT`]. For values that settle after the event a test saw
    /// (a count another instance or Redis updates, a counter bumped after a reply): reading
    /// them once and asserting an exact value is a race.
    pub fn await_metric(&self, name: &str, expected: f64) {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            let value = self.metric(name);
            if value == expected {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{name} is {value}, not {expected}");
            // A scrape is the only way to see it: there is no event to wait for.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Connects with `token` and returns the `welcome` frame.
    pub fn welcome_for(&self, token: &str) -> Value {
        smol::block_on(async { self.connect_token(token).await.recv_type("welcome").await })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's resident memory (`VmRSS` of `/proc/PID/status`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Sends a signal (`TERM`, `INT`…) to the server.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `limit`; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let pid = self.child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        // `Child::wait` blocks; a helper thread turns it into a bounded wait.
        let mut child = std::mem::replace(
            &mut self.child,
            Command::new("true").spawn().expect("placeholder process"),
        );
        std::thread::spawn(move || {
            let _ = tx.send(child.wait().map(|s| s.code()));
        });
        match rx.recv_timeout(limit) {
            Ok(Ok(code)) => code,
            _ => panic!("server {pid} did not exit within {limit:?}"),
        }
    }

    /// A plain HTTP GET on this server; returns status and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        get(self.addr, path)
    }

    /// The server API's address, from its start-up line.
    pub fn api_addr(&self) -> SocketAddr {
        let line = self.wait_for_log("server API on ");
        line.rsplit("server API on ").next().unwrap().trim().parse().unwrap()
    }
}

/// One server API request with `key` (none: no `Authorization`); the status and the answer.
pub fn api_request(
    addr: SocketAddr,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<String>,
) -> (u16, Value) {
    let body = body.unwrap_or_default();
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, text) = raw_http(addr, request.as_bytes());
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    (status, value)
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::env::var_os("SHEQU_CHAT_TEST_WRAPPER").is_some()
            && matches!(self.child.try_wait(), Ok(None))
        {
            let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        } else {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        // The log readers end when the process's pipes close: then the log is complete.
        for reader in self.log_readers.drain(..) {
            let _ = reader.join();
        }
        let _ = std::fs::remove_file(&self.config_path);
        let lines = self.log_lines();
        if std::thread::panicking() {
            eprintln!("--- server log ---\n{}\n--- end of server log ---", lines.join("\n"));
            return;
        }
        for line in &lines {
            assert!(!line.contains("panicked"), "the server panicked: {line}");
            assert!(
                !line.contains("definitely lost: ") || line.contains("definitely lost: 0 bytes"),
                "leak: {line}"
            );
            assert!(!line.contains("LeakSanitizer"), "leak: {line}");
            assert!(
                !line.contains("ERROR SUMMARY: ") || line.contains("ERROR SUMMARY: 0 errors"),
                "memory errors: {line}"
            );
            // Lines from a wrapping tool (`==pid== …`) are not the server's own.
            let own = !line.starts_with("==");
            let trouble = own && (line.contains(" WARN ") || line.contains(" ERROR "));
            if trouble && !self.expected_warnings.iter().any(|w| line.contains(w.as_str())) {
                panic!("unexpected warning in the server log: {line}");
            }
        }
    }
}

/// Unix time now, in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// An HS256 token for the test secret.
pub fn token(sub: &str, ttl_secs: u64) -> String {
    sign_hs256(json!({"sub": sub, "name": format!("user-{sub}"), "exp": unix_now() + ttl_secs}))
}

/// Signs arbitrary claims with the test secret.
pub fn sign_hs256(claims: Value) -> String {
    sign_with_key(&HS256Key::from_bytes(SECRET.as_bytes()), "HS256", claims)
}

pub fn sign_with_key(key: &HS256Key, alg: &str, claims: Value) -> String {
    let header = json!({"alg": alg, "typ": "JWT"}).to_string();
    let signed = format!("{}.{}", b64(header.as_bytes()), b64(claims.to_string().as_bytes()));
    let tag = key.authentication_tag(signed.as_bytes());
    format!("{signed}.{}", b64(&tag))
}

pub fn b64(bytes: &[u8]) -> String {
    Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap()
}

/// Waits for `fut`, failing the test after [`TIMEOUT`].
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    let what = what.to_string();
    fut.or(async move {
        smol::Timer::after(TIMEOUT).await;
        panic!("timed out waiting for {what}");
    })
    .await
}

/// A WebSocket client.
pub struct Client {
    ws: WebSocketStream<TcpStream>,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Closed(u16),
    Dropped,
}

impl Client {
    /// Connects with a query string and extra headers. `Err` carries the HTTP status and body of
    /// a refusal.
    pub async fn connect(
        addr: SocketAddr,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, (u16, String)> {
        let mut request = format!("ws://{addr}/ws?{query}").into_client_request().unwrap();
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            request.headers_mut().insert(name, HeaderValue::from_str(value).unwrap());
        }
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        Client::handshake(stream, request).await
    }

    /// Like [`connect`](Self::connect), from the loopback address `from` (127.0.0.2, say).
    pub async fn connect_from(
        from: std::net::Ipv4Addr,
        addr: SocketAddr,
        query: &str,
    ) -> Result<Client, (u16, String)> {
        Client::connect_over(tcp_from(from, addr), addr, query).await
    }

    /// Opens a WebSocket over a TCP connection the test made itself.
    pub async fn connect_over(
        stream: std::net::TcpStream,
        addr: SocketAddr,
        query: &str,
    ) -> Result<Client, (u16, String)> {
        let request = format!("ws://{addr}/ws?{query}").into_client_request().unwrap();
        Client::handshake(TcpStream::from(smol::Async::new(stream).unwrap()), request).await
    }

    async fn handshake(
        stream: TcpStream,
        request: async_tungstenite::tungstenite::handshake::client::Request,
    ) -> Result<Client, (u16, String)> {
        let handshake = async_tungstenite::client_async(request, stream);
        match within("the WebSocket handshake", handshake).await {
            Ok((ws, _)) => Ok(Client { ws }),
            Err(WsError::Http(response)) => {
                let body = response
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Err((response.status().as_u16(), body))
            }
            Err(e) => panic!("handshake failed: {e}"),
        }
    }

    /// The next message of any kind, or `None` when the connection is over.
    pub async fn next_message(&mut self) -> Option<Message> {
        match within("a frame", self.ws.next()).await {
            Some(Ok(m)) => Some(m),
            _ => None,
        }
    }

    /// The next JSON frame, skipping WebSocket pings and pongs. Panics if the connection ends.
    pub async fn recv(&mut self) -> Value {
        loop {
            match self.next_message().await {
                Some(Message::Text(t)) => return serde_json::from_str(&t).unwrap(),
                Some(Message::Ping(_) | Message::Pong(_)) => continue,
                other => panic!("expected a JSON frame, got {other:?}"),
            }
        }
    }

    /// The next frame of this `type`, skipping others.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    /// Skips frames until an `online` frame (or `welcome`) reports `count`.
    pub async fn await_online(&mut self, count: u64) {
        loop {
            let frame = self.recv().await;
            let seen = match frame["type"].as_str() {
                Some("online") => frame["count"].as_u64(),
                Some("welcome") => frame["online"].as_u64(),
                _ => None,
            };
            if seen == Some(count) {
                return;
            }
        }
    }

    /// Sends an app-level ping and returns every frame that arrived before the pong: what the
    /// server had queued for this client up to now.
    pub async fn frames_until_pong(&mut self) -> Vec<Value> {
        self.send_json(json!({"type": "ping"})).await;
        let mut frames = Vec::new();
        loop {
            let frame = self.recv().await;
            if frame["type"] == "pong" {
                return frames;
            }
            frames.push(frame);
        }
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send(Message::Text(value.to_string().into())).await;
    }

    /// Sends a chat message and checks that the next chat message back is its own copy.
    pub async fn chat_and_see(&mut self, content: &str) {
        self.chat(content).await;
        assert_eq!(self.recv_type("chat").await["content"], content);
    }

    pub async fn chat(&mut self, content: &str) {
        self.send_json(json!({"type": "chat", "content": content})).await;
    }

    pub async fn send(&mut self, message: Message) {
        within("a send", self.ws.send(message)).await.expect("send");
    }

    /// Reads until the connection ends; returns the close code (if a close frame came) and the
    /// JSON frames received before it.
    pub async fn until_closed(&mut self) -> (Ended, Vec<Value>) {
        let mut frames = Vec::new();
        loop {
            match within("the connection to end", self.ws.next()).await {
                Some(Ok(Message::Text(t))) => frames.push(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(Some(CloseFrame { code, .. })))) => {
                    // One more read lets the client send its half of the close handshake.
                    let _ = within("the close handshake", self.ws.next()).await;
                    return (Ended::Closed(code.into()), frames);
                }
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => {
                    return (Ended::Dropped, frames);
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// Reads until the close frame and returns its code.
    pub async fn close_code(&mut self) -> Ended {
        self.until_closed().await.0
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        while let Some(Ok(_)) = within("the close to finish", self.ws.next()).await {}
    }
}

/// A TCP connection to `addr` from the loopback address `from`.
pub fn tcp_from(from: std::net::Ipv4Addr, addr: SocketAddr) -> std::net::TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((from, 0)).into()).expect("bind a loopback address");
    socket.connect(&addr.into()).expect("tcp connect");
    socket.into()
}

/// A plain HTTP GET; returns status and body.
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    raw_http(addr, format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
}

/// Sends raw bytes over TCP and returns the status code and body of the response.
pub fn raw_http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(request).unwrap();
    // Done sending: the server's lingering close sees our end of stream at once.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    parse_response(&response)
}

pub fn parse_response(response: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// A well-formed upgrade request for `/ws` with the given query and extra header lines.
pub fn upgrade_request(query: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET /ws?{query} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// A WebSocket client that speaks raw frames, for sending what a proper client never would.
pub struct RawWs {
    stream: std::net::TcpStream,
}

impl RawWs {
    /// Upgrades with a token for `sub`; panics unless the server answers 101.
    pub fn connect(addr: SocketAddr, sub: &str) -> RawWs {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.write_all(&upgrade_request(&format!("token={}", token(sub, 3600)), "")).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).expect("upgrade response");
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        RawWs { stream }
    }

    /// Writes bytes as they are; the error says when the server has hung up.
    pub fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    pub fn set_write_timeout(&mut self, timeout: Duration) {
        self.stream.set_write_timeout(Some(timeout)).unwrap();
    }

    /// Sends one frame. Write errors are ignored: the server may have hung up already.
    pub fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8], masked: bool) {
        let _ = self.stream.write_all(&frame(fin, opcode, payload, masked));
    }

    /// Sends a header that announces `len` bytes, then as many as the server takes of them.
    pub fn send_announced(&mut self, opcode: u8, len: u64) {
        let _ = self.stream.write_all(&frame_header(true, opcode, len, true));
        let _ = self.stream.write_all(&[1, 2, 3, 4]);
        let chunk = vec![b'a'; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            if self.stream.write_all(&chunk[..n]).is_err() {
                break;
            }
            left -= n as u64;
        }
    }

    /// Reads frames until the server's close frame; its code, or `None` if the socket just ended.
    pub fn close_code(&mut self) -> Option<u16> {
        loop {
            let mut head = [0u8; 2];
            self.stream.read_exact(&mut head).ok()?;
            let opcode = head[0] & 0x0f;
            let len = match head[1] & 0x7f {
                126 => {
                    let mut b = [0u8; 2];
                    self.stream.read_exact(&mut b).ok()?;
                    u64::from(u16::from_be_bytes(b))
                }
                127 => {
                    let mut b = [0u8; 8];
                    self.stream.read_exact(&mut b).ok()?;
                    u64::from_be_bytes(b)
                }
                n => u64::from(n),
            };
            let mut payload = vec![0u8; len as usize];
            self.stream.read_exact(&mut payload).ok()?;
            if opcode == 8 {
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
    }
}

/// One frame's bytes, masked as a client's must be unless `masked` is false.
pub fn frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut bytes = frame_header(fin, opcode, payload.len() as u64, masked);
    if masked {
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        bytes.extend_from_slice(&mask);
        bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        bytes.extend_from_slice(payload);
    }
    bytes
}

fn frame_header(fin: bool, opcode: u8, len: u64, masked: bool) -> Vec<u8> {
    let mut header = vec![(u8::from(fin) << 7) | opcode];
    let mask_bit = u8::from(masked) << 7;
    if len < 126 {
        header.push(mask_bit | len as u8);
    } else if len <= u64::from(u16::MAX) {
        header.push(mask_bit | 126);
        header.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        header.push(mask_bit | 127);
        header.extend_from_slice(&len.to_be_bytes());
    }
    header
}

/// A real `redis-server` on a loopback port of its own, without persistence (a restart comes
/// back empty, the hardest case for the cluster). Killed when dropped.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Redis {
        let mut redis = Redis::not_started();
        redis.restart();
        redis
    }

    /// A Redis on a given port (README's examples use the default one, 6379).
    pub fn start_on(port: u16) -> Redis {
        let mut redis = Redis { child: None, port };
        redis.restart();
        redis
    }

    /// A port for a Redis that `restart` starts later.
    pub fn not_started() -> Redis {
        // A free port from the kernel; redis-server cannot report one it picked itself.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Redis { child: None, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts it (again) on the same port, and waits until it answers PING.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server is running");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed (`.ci/setup` installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + TIMEOUT;
        while self.ping().is_none() {
            assert!(std::time::Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it at once (SIGKILL): no goodbye to its clients.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes it (SIGSTOP): connections stay open and nothing answers, like a hung server or
    /// a network that drops everything. `resume` thaws it.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("redis-server is running").id();
        let status = Command::new("kill").args([format!("-{name}"), pid.to_string()]).status();
        assert!(status.expect("run kill").success());
    }

    /// Runs inline commands (one per line), each of which must answer `+OK`.
    pub fn run(&self, commands: &[&str]) {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        for command in commands {
            stream.write_all(format!("{command}\r\n").as_bytes()).unwrap();
            let mut reply = [0u8; 5];
            stream.read_exact(&mut reply).expect("a reply from redis-server");
            assert_eq!(&reply, b"+OK\r\n", "{command}");
        }
    }

    fn ping(&self) -> Option<()> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        stream.write_all(b"PING\r\n").ok()?;
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).ok()?;
        (&reply == b"+PONG\r\n").then_some(())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
