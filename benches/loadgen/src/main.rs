//! Load generator and benchmark harness: starts a server as a child process pinned to core 0,
//! drives it from core 1 with real WebSocket clients and real tokens, and prints one JSON line
//! per scenario.
//!
//! ```sh
//! benches/run.sh                   # builds everything, runs the whole table
//! cargo run --release -p shequ-loadgen -- --server shequ --scenario fanout --receivers 1000
//! ```
//!
//! With `--group G`, `shequ` runs with channels: every connection is in the default channel
//! `all` and joins two channels of `G` members, `g:<i / G>` and `h:<i mod (N / G)>` (three
//! memberships each). The fan-out senders then post to their own `g:` channel (`--to small`,
//! sender `s` in `g:<s>` with its `G` receivers) or to `all` (`--to all`).
//!
//! With `--instances N`, `shequ` runs as N instances joined through a `redis-server` the load
//! generator starts, every process pinned to core 0 (the binary must be built with
//! `--features redis`); clients are spread over the instances, and CPU and RSS are the sums over
//! all the processes, Redis included.
//!
//! Servers: `shequ` (this project, `configs/bench.json`) and three peers written for this
//! repository in `benches/peers/` (built by `benches/run.sh`): `go-hub` (the Go hub design this
//! project replaces), `rust-floor` (smol + async-tungstenite and nothing else) and `node-ws`
//! (Node's `ws`). All take the same HS256 token in `?token=`, and all send every message in the
//! same chat envelope, built once per broadcast, so frames are the same size everywhere. The load
//! generator finds the send time by the `t=` marker in the frame text.
//!
//! The load generator is itself one smol thread, and async-io's helper thread can take over its
//! sockets, after which the run measures the load generator. Each JSON line says how much CPU
//! that thread used (`loadgen_helper_cpu_secs`); a run over `HELPER_CPU_LIMIT_SECS` is repeated,
//! up to `MAX_ATTEMPTS` runs (`attempts`), for every server alike.

// A benchmark reads the real clock.
#![allow(clippy::disallowed_methods)]

use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message;
use futures_lite::{FutureExt, StreamExt};
use jwt_simple::prelude::*;
use serde_json::json;
use smol::net::TcpStream;
use smol::{LocalExecutor, Timer};

const SECRET: &str = "bench-secret-0123456789";
/// Concurrent handshakes while opening many connections.
const CONNECT_PARALLELISM: usize = 64;

type Ws = WebSocketStream<TcpStream>;

#[derive(Clone, Debug)]
struct Args {
    server: String,
    scenario: String,
    receivers: usize,
    senders: usize,
    messages: usize,
    /// Messages per second offered by all senders together; 0 = as fast as possible.
    rate: u64,
    connections: usize,
    users: usize,
    secs: u64,
    /// The shequ-chat binary and its configuration.
    server_bin: String,
    config: String,
    /// 0: one instance alone; N: N instances over Redis.
    instances: usize,
    /// 0: one room; G: channels of G members (see the module documentation).
    group: usize,
    /// With `group`: the fan-out goes to the senders' `small` channels or to `all`.
    to: String,
    /// shequ's `heartbeat.ping_interval_secs`; 0 leaves the config's, and in `wave` turns
    /// pings off (an hour).
    ping_secs: u64,
    /// shequ's `limits.socket_send_buffer` and `limits.socket_recv_buffer`; 0 leaves the
    /// kernel's default.
    socket_buffer: usize,
    /// `--set limits.listen_backlog=4096`: any other field of shequ's configuration, by its
    /// dotted path, with a JSON value.
    set: Vec<(String, serde_json::Value)>,
    /// In `wave`: clients that connect all at once halfway through, or with `herd_secs`,
    /// spread over that many seconds from the start.
    herd: usize,
    herd_secs: u64,
    /// In `idle`: after the idle figure, one more client posts this many of the longest messages
    /// the server takes, and the server's memory is read again once every idle client has them.
    long_messages: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        server: "shequ".into(),
        scenario: "fanout".into(),
        receivers: 1000,
        senders: 1,
        messages: 200,
        rate: 0,
        connections: 1000,
        users: 50,
        secs: 5,
        server_bin: "target/release/shequ-chat".into(),
        config: "configs/bench.json".into(),
        instances: 0,
        group: 0,
        to: "small".into(),
        ping_secs: 0,
        socket_buffer: 0,
        set: Vec::new(),
        herd: 0,
        herd_secs: 0,
        long_messages: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--server" => args.server = value(),
            "--scenario" => args.scenario = value(),
            "--receivers" => args.receivers = value().parse().unwrap(),
            "--senders" => args.senders = value().parse().unwrap(),
            "--messages" => args.messages = value().parse().unwrap(),
            "--rate" => args.rate = value().parse().unwrap(),
            "--connections" => args.connections = value().parse().unwrap(),
            "--users" => args.users = value().parse().unwrap(),
            "--secs" => args.secs = value().parse().unwrap(),
            "--server-bin" => args.server_bin = value(),
            "--config" => args.config = value(),
            "--instances" => args.instances = value().parse().unwrap(),
            "--group" => args.group = value().parse().unwrap(),
            "--to" => args.to = value(),
            "--ping-secs" => args.ping_secs = value().parse().unwrap(),
            "--herd" => args.herd = value().parse().unwrap(),
            "--herd-secs" => args.herd_secs = value().parse().unwrap(),
            "--long-messages" => args.long_messages = value().parse().unwrap(),
            "--socket-buffer" => args.socket_buffer = value().parse().unwrap(),
            "--set" => {
                let setting = value();
                let (path, json) = setting.split_once('=').expect("--set PATH=JSON");
                let json = serde_json::from_str(json).expect("--set PATH=JSON: the value is JSON");
                args.set.push((path.to_string(), json));
            }
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

fn token(sub: &str) -> String {
    let claims = Claims::create(jwt_simple::prelude::Duration::from_hours(2)).with_subject(sub);
    HS256Key::from_bytes(SECRET.as_bytes()).authenticate(claims).unwrap()
}

/// The server under test: one process, or several instances and their Redis, all pinned to
/// core 0.
struct Server {
    children: Vec<Child>,
    /// Where clients connect, spread round-robin.
    addrs: Vec<SocketAddr>,
    /// The command line of each server process (not Redis's), to start it again.
    argvs: Vec<Vec<String>>,
}

fn spawn(argv: &[String]) -> Child {
    Command::new(&argv[0])
        .args(&argv[1..])
        .env("SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// `configs/bench.json` (or `--config`) for one shequ-chat process on `port`, with what the
/// run asks for: room for every connection, channels, the heartbeat, socket buffers, and for
/// the restart storm a history file.
fn shequ_config(args: &Args, port: u16, cluster: Option<&serde_json::Value>) -> serde_json::Value {
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&args.config).unwrap()).unwrap();
    config["listen"] = json!(format!("127.0.0.1:{port}"));
    if let Some(cluster) = cluster {
        config["cluster"] = cluster.clone();
    }
    let needed =
        (args.connections + args.herd).max(args.receivers + args.senders) + CONNECTIONS_SPARE;
    let held = config["limits"]["max_connections"].as_u64().unwrap_or(0) as usize;
    config["limits"]["max_connections"] = json!(held.max(needed));
    if args.socket_buffer > 0 {
        config["limits"]["socket_send_buffer"] = json!(args.socket_buffer);
        config["limits"]["socket_recv_buffer"] = json!(args.socket_buffer);
    }
    if args.group > 0 || args.scenario == "wave" {
        config["channels"] = json!({"default": "all", "rules": [
            {"pattern": "all", "join": "public"},
            {"pattern": "g:*", "join": "public"},
            {"pattern": "h:*", "join": "public"}
        ]});
    }
    let ping_secs = match (args.ping_secs, args.scenario.as_str()) {
        (0, "wave") => Some(3600),
        (0, _) => None,
        (secs, _) => Some(secs),
    };
    if let Some(secs) = ping_secs {
        config["heartbeat"] = json!({"ping_interval_secs": secs, "pong_timeout_secs": secs * 3});
    }
    if args.scenario == "storm" {
        let file = std::env::temp_dir().join(format!("shequ-bench-{port}.history.jsonl"));
        let _ = std::fs::remove_file(&file);
        config["history"]["file"] = json!(file);
        config["history"]["fsync"] = json!("never");
    }
    for (path, value) in &args.set {
        let mut field = &mut config;
        for key in path.split('.') {
            field = &mut field[key];
        }
        *field = value.clone();
    }
    config
}

/// Connections a server is asked to hold beyond the run's own clients.
const CONNECTIONS_SPARE: usize = 100;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_until_listening(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Server {
    fn start(args: &Args) -> Server {
        let mut server = Server { children: Vec::new(), addrs: Vec::new(), argvs: Vec::new() };
        let mut cluster = None;
        if args.instances > 0 {
            let port = free_port();
            let redis = Command::new("taskset")
                .args(["-c", "0", "redis-server", "--bind", "127.0.0.1", "--port"])
                .arg(port.to_string())
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server");
            server.children.push(redis);
            wait_until_listening(format!("127.0.0.1:{port}").parse().unwrap(), "redis-server");
            cluster = Some(json!({"redis_url": format!("redis://127.0.0.1:{port}/0"),
                                  "prefix": format!("bench-{port}")}));
        }
        for _ in 0..args.instances.max(1) {
            server.start_one(args, cluster.as_ref());
        }
        server
    }

    fn start_one(&mut self, args: &Args, cluster: Option<&serde_json::Value>) {
        let port = free_port();
        let mut argv: Vec<String> = vec!["taskset".into(), "-c".into(), "0".into()];
        match args.server.as_str() {
            "shequ" => {
                let path = std::env::temp_dir().join(format!("shequ-bench-{port}.json"));
                std::fs::write(&path, shequ_config(args, port, cluster).to_string()).unwrap();
                argv.extend([args.server_bin.clone(), "--config".into()]);
                argv.push(path.display().to_string());
            }
            "go-hub" => argv.extend(["target/peers/go-hub".into(), port.to_string()]),
            "node-ws" => argv.extend([
                "node".into(),
                "benches/peers/node-ws/server.mjs".into(),
                port.to_string(),
            ]),
            "rust-floor" => argv.extend(["target/release/shequ-floor".into(), port.to_string()]),
            other => panic!("unknown server {other}"),
        }
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = spawn(&argv);
        wait_until_listening(addr, &args.server);
        self.children.push(child);
        self.addrs.push(addr);
        self.argvs.push(argv);
    }

    /// Sends SIGTERM to the first process (the server, or the first instance) and waits for it
    /// to exit without blocking the clients, which answer its close frames meanwhile.
    async fn terminate_first(&mut self) {
        use rustix::process::{Pid, Signal, kill_process};
        let first = self.leading();
        let child = &mut self.children[first];
        kill_process(Pid::from_child(child), Signal::TERM).expect("SIGTERM");
        while child.try_wait().expect("wait").is_none() {
            Timer::after(Duration::from_millis(5)).await;
        }
    }

    /// Starts the first process again, on the same port with the same configuration.
    fn start_first_again(&mut self) {
        let i = self.leading();
        self.children[i] = spawn(&self.argvs[i]);
    }

    /// The index of the first server process (after Redis, if there is one).
    fn leading(&self) -> usize {
        self.children.len() - self.argvs.len()
    }

    /// The address for the `i`th client.
    fn addr(&self, i: usize) -> SocketAddr {
        self.addrs[i % self.addrs.len()]
    }

    /// Resident memory of every process, summed.
    fn rss_kib(&self) -> u64 {
        self.proc_kib("status", "VmRSS:").expect("a server process is gone")
    }

    /// Of that, anonymous memory in transparent huge pages: where the kernel backs memory with
    /// 2 MiB pages, a page partly in use is resident whole, and RSS grows with no more data.
    /// 0 where the kernel has no such pages to report.
    fn huge_pages_kib(&self) -> u64 {
        self.proc_kib("smaps_rollup", "AnonHugePages:").unwrap_or(0)
    }

    /// A field in KiB of `/proc/<pid>/<file>`, summed over every process; `None` if a process
    /// or its field is missing.
    fn proc_kib(&self, file: &str, field: &str) -> Option<u64> {
        let kib = |pid: u32| -> Option<u64> {
            let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
            let line = text.lines().find(|l| l.starts_with(field))?;
            line.split_whitespace().nth(1)?.parse().ok()
        };
        self.children.iter().map(|c| kib(c.id())).sum()
    }

    /// User plus system CPU time of every process, summed, in seconds.
    fn cpu_secs(&self) -> f64 {
        let cpu = |pid: u32| -> f64 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
            let ticks: u64 =
                fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
            ticks as f64 / 100.0
        };
        self.children.iter().map(|c| cpu(c.id())).sum()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn connect(addr: SocketAddr, user: &str) -> Option<Ws> {
    connect_with(addr, &token(user)).await
}

/// Client sockets per loopback source address: far below the ephemeral port range (28 232
/// ports by default), so that 100 000 connections to one server port find a port each, and so
/// that the kernel's search for a free port in `bind` stays short. At 10 000 per address that
/// search (`inet_csk_get_port`) took the load generator's whole core while 19 000 clients
/// reconnected, and the restart storm took 20–30 s instead of 3.
const SOCKETS_PER_SOURCE: usize = 2_000;

thread_local! {
    /// Client sockets opened so far, which picks the next one's source address.
    static OPENED: Cell<usize> = const { Cell::new(0) };
}

/// A TCP connection to `addr` from `127.0.0.2`, `127.0.0.3`, … ([`SOCKETS_PER_SOURCE`] each),
/// bound before it connects: one source address has too few ports for 100 000 clients.
async fn tcp_connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let n = OPENED.with(|opened| opened.replace(opened.get() + 1));
    let step = u32::try_from(n / SOCKETS_PER_SOURCE).unwrap_or(0) % 250;
    let source = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(127, 0, 0, 2)) + step);
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    // The ports of the last run's sockets are in TIME_WAIT for a minute (the client closes
    // first); without this, binding to a source address would find none free.
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    // EINPROGRESS: the connect goes on; the socket turns writable when it is done.
    const EINPROGRESS: i32 = 115;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = smol::Async::new(std::net::TcpStream::from(socket))?;
    stream.writable().await?;
    if let Some(e) = stream.get_ref().take_error()? {
        return Err(e);
    }
    Ok(TcpStream::from(stream))
}

/// Raises the open files limit, soft and hard, as far as the kernel lets this process
/// (`fs.nr_open`; a hard limit above the current one needs root), before any server starts:
/// the servers inherit it. Returns the limit now.
fn raise_open_files_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let limit = getrlimit(Resource::Nofile);
    let wanted = Rlimit { current: Some(ceiling), maximum: Some(ceiling) };
    if setrlimit(Resource::Nofile, wanted).is_err() {
        let soft = Rlimit { current: limit.maximum, maximum: limit.maximum };
        let _ = setrlimit(Resource::Nofile, soft);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Connects with a token minted earlier: a client reconnecting (a page reload) keeps its token.
async fn connect_with(addr: SocketAddr, token: &str) -> Option<Ws> {
    try_connect(addr, token).await.ok()
}

/// A client's WebSocket buffers: tungstenite's default read buffer is 128 KiB per connection,
/// which at 19 000 clients made the load generator, not the server, the limit of a restart
/// storm (2 GB and a full core while they reconnected).
fn client_config() -> async_tungstenite::tungstenite::protocol::WebSocketConfig {
    async_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(4096)
}

/// [`connect_with`], saying what failed: the TCP connect, or the WebSocket handshake.
async fn try_connect(addr: SocketAddr, token: &str) -> Result<Ws, String> {
    let stream = tcp_connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let url = format!("ws://{addr}/ws?token={token}");
    match async_tungstenite::client_async_with_config(url, stream, Some(client_config())).await {
        Ok((ws, _)) => Ok(ws),
        Err(async_tungstenite::tungstenite::Error::Http(response)) => {
            Err(format!("handshake: HTTP {}", response.status().as_u16()))
        }
        Err(async_tungstenite::tungstenite::Error::Io(e)) => {
            Err(format!("handshake: {:?}", e.kind()))
        }
        Err(e) => Err(format!("handshake: {e}")),
    }
}

/// Opens `n` connections, `CONNECT_PARALLELISM` at a time, spread over the server's instances.
async fn connect_many(ex: &LocalExecutor<'_>, server: &Server, prefix: &str, n: usize) -> Vec<Ws> {
    let mut out = Vec::with_capacity(n);
    connect_each(ex, server, prefix, n, |ws| out.push(ws)).await;
    out
}

/// Above this many connections, [`connect_each`] says on stderr how far it is every
/// `PROGRESS_EVERY` (an emulated machine takes many minutes for 100 000).
const PROGRESS_EVERY: usize = 10_000;

/// [`connect_many`], handing each connection to `each` as soon as its batch is in (users
/// `<prefix><i>`).
async fn connect_each(
    ex: &LocalExecutor<'_>,
    server: &Server,
    prefix: &str,
    n: usize,
    mut each: impl FnMut(Ws),
) {
    let started = Instant::now();
    for chunk_start in (0..n).step_by(CONNECT_PARALLELISM) {
        let crossed = chunk_start / PROGRESS_EVERY
            > chunk_start.saturating_sub(CONNECT_PARALLELISM) / PROGRESS_EVERY;
        if n > PROGRESS_EVERY && crossed {
            eprintln!(
                "{prefix}: {chunk_start} connected in {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
        let tasks: Vec<_> = (chunk_start..(chunk_start + CONNECT_PARALLELISM).min(n))
            .map(|i| {
                let user = format!("{prefix}{i}");
                let addr = server.addr(i);
                ex.spawn(async move { connect(addr, &user).await })
            })
            .collect();
        for t in tasks {
            each(t.await.expect("connect"));
        }
    }
}

/// With `--group`: connection `i` of `conns` joins `g:<i / G>` and `h:<i mod (N / G)>`, and
/// waits for both answers.
async fn join_groups(conns: &mut [Ws], group: usize) {
    let groups = (conns.len() / group).max(1);
    for (i, ws) in conns.iter_mut().enumerate() {
        for channel in [format!("g:{}", i / group), format!("h:{}", i % groups)] {
            let join = json!({"type": "join", "channel": channel}).to_string();
            ws.send(Message::Text(join.into())).await.expect("join");
        }
        let mut joined = 0;
        while joined < 2 {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.contains(r#""type":"joined""#) => joined += 1,
                Some(Ok(Message::Text(t))) if t.contains(r#""type":"error""#) => panic!("{t}"),
                Some(Ok(_)) => {}
                other => panic!("connection {i} ended while joining: {other:?}"),
            }
        }
    }
}

fn now_us(origin: Instant) -> u64 {
    origin.elapsed().as_micros() as u64
}

/// The send time carried in a frame as `t=<µs>;`.
fn sent_at(text: &str) -> Option<u64> {
    let start = text.find("t=")? + 2;
    let end = start + text[start..].find(';')?;
    text[start..end].parse().ok()
}

/// The message a frame carries, as `s=<sender>;m=<number>` after its send time.
fn message_of(text: &str) -> String {
    let start = text.find(";s=").map_or(0, |i| i + 1);
    let end = start + text[start..].find('"').unwrap_or(text.len() - start);
    text[start..end].to_string()
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Memory per idle connection: the server's RSS and the kernel's socket memory, before and after
/// `--connections` clients connect and settle. Memory does not depend on how fast the clients
/// got in, so this scenario reports no helper-thread CPU and is never run again for it
/// (`connects_per_sec` is for information).
fn idle(args: &Args) -> serde_json::Value {
    let server = Server::start(args);
    let ex = LocalExecutor::new();
    smol::block_on(ex.run(async {
        Timer::after(Duration::from_millis(300)).await;
        let kernel_settle_secs = KernelMemory::settle().await;
        let rss_start = server.rss_kib();
        let kernel_start = KernelMemory::read();
        // Idle clients read what they are sent (welcome, presence, Pings), as a page does:
        // unread, it would sit in the clients' receive queues and count as the kernel's TCP
        // memory, and a client that answered no Ping would be closed. Each reads from the moment
        // it is connected: on a slow machine (an emulated one takes minutes for 100 000) the
        // first would otherwise miss their Pings while the last connect.
        let long_received = Rc::new(Cell::new(0usize));
        let reading = |mut ws: Ws| {
            let long_received = long_received.clone();
            ex.spawn(async move {
                while let Some(Ok(message)) = ws.next().await {
                    if let Message::Text(text) = message
                        && text.contains(LONG_MARKER)
                    {
                        long_received.set(long_received.get() + 1);
                    }
                }
            })
        };
        let started = Instant::now();
        let mut readers = Vec::with_capacity(args.connections);
        if args.group > 0 {
            let mut conns = connect_many(&ex, &server, "idle", args.connections).await;
            join_groups(&mut conns, args.group).await;
            readers.extend(conns.into_iter().map(reading));
        } else {
            connect_each(&ex, &server, "idle", args.connections, |ws| readers.push(reading(ws)))
                .await;
        }
        let connect_secs = started.elapsed().as_secs_f64();
        let count = readers.len();
        // Let every welcome and presence frame be written and the queues drained.
        Timer::after(Duration::from_secs(3)).await;
        let rss = server.rss_kib();
        let huge_pages = server.huge_pages_kib();
        let kernel = KernelMemory::read().since(&kernel_start);
        // Both ends of every connection live in this kernel, and they cost the same: the
        // server's side is half.
        let per_side = |kib: i64| kib as f64 / 2.0 / count as f64;
        let mut result = json!({
            "server": args.server, "scenario": "idle", "connections": count,
            "group": args.group,
            "rss_start_kib": rss_start, "rss_kib": rss, "huge_pages_kib": huge_pages,
            "kib_per_connection": (rss - rss_start) as f64 / count as f64,
            "kernel_tcp_kib_per_connection": per_side(kernel.tcp_kib),
            "kernel_slab_kib_per_connection": per_side(kernel.slab_kib),
            "kernel_settle_secs": kernel_settle_secs,
            "connects_per_sec": count as f64 / connect_secs,
        });
        if args.long_messages > 0 {
            let rss_long =
                after_long_messages(&server, args.long_messages, count, &long_received).await;
            result["long_messages"] = json!(args.long_messages);
            result["kib_per_connection_after_long"] =
                json!((rss_long - rss_start) as f64 / count as f64);
        }
        result
    }))
}

/// Marks the messages of `--long-messages`.
const LONG_MARKER: &str = "long;";
/// The characters of one long message: the server's default `limits.max_content_chars`, each
/// four bytes in UTF-8 (and not escaped in JSON), so the frame every client gets is about 8 KB.
const LONG_CHARS: usize = 2000;

/// Posts `messages` long messages from one more client, waits until each of the `receivers`
/// idle clients has them all (counted in `received`) and the server has settled, and returns the
/// server's RSS: what its buffers keep after a burst of large frames.
async fn after_long_messages(
    server: &Server,
    messages: usize,
    receivers: usize,
    received: &Cell<usize>,
) -> u64 {
    let mut sender = connect(server.addr(0), "long-sender").await.expect("connect");
    let filler: String = "\u{1F600}".repeat(LONG_CHARS - LONG_MARKER.len());
    let frame = json!({"type": "chat", "content": format!("{LONG_MARKER}{filler}")}).to_string();
    for _ in 0..messages {
        sender.send(Message::Text(frame.clone().into())).await.expect("send");
    }
    let wanted = messages * receivers;
    let deadline = Instant::now() + Duration::from_secs(600);
    while received.get() < wanted {
        assert!(Instant::now() < deadline, "{} of {wanted} long frames arrived", received.get());
        Timer::after(Duration::from_millis(50)).await;
    }
    Timer::after(Duration::from_secs(3)).await;
    let rss = server.rss_kib();
    drop(sender);
    rss
}

/// The kernel's memory for sockets, system-wide: TCP buffers (`/proc/net/sockstat`, `mem` in
/// pages) and the slab caches (`Slab:` of `/proc/meminfo`), where each socket's own structures
/// live. RSS shows neither.
struct KernelMemory {
    tcp_kib: i64,
    slab_kib: i64,
}

/// A field of the `TCP:` line of `/proc/net/sockstat` (`alloc`, `tw`, `mem` in pages…), 0 if
/// missing.
fn sockstat_tcp(name: &str) -> u64 {
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let tcp = sockstat.lines().find(|l| l.starts_with("TCP:")).unwrap_or("");
    let mut words = tcp.split_whitespace().skip_while(|w| *w != name);
    words.nth(1).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// [`KernelMemory::settle`] waits until fewer TCP sockets than this are left, allocated or in
/// TIME_WAIT.
const KERNEL_SETTLED_SOCKETS: u64 = 1000;
/// ... and at most this long.
const KERNEL_SETTLE_LIMIT: Duration = Duration::from_secs(120);

impl KernelMemory {
    /// Waits for the kernel to free the sockets of a run before (a server that just exited,
    /// its clients, their TIME_WAIT), as a baseline read meanwhile makes this run's kernel
    /// figures too small: at 100 000 in an emulated machine, a run right after another measured
    /// a negative TCP figure and a third of the slab. Returns the seconds it waited.
    async fn settle() -> f64 {
        let started = Instant::now();
        while started.elapsed() < KERNEL_SETTLE_LIMIT {
            if sockstat_tcp("alloc") + sockstat_tcp("tw") < KERNEL_SETTLED_SOCKETS {
                break;
            }
            Timer::after(Duration::from_millis(500)).await;
        }
        started.elapsed().as_secs_f64()
    }

    fn read() -> KernelMemory {
        let tcp_pages = sockstat_tcp("mem") as i64;
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let slab_kib: i64 = meminfo
            .lines()
            .find(|l| l.starts_with("Slab:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let page_kib = (rustix::param::page_size() / 1024) as i64;
        KernelMemory { tcp_kib: tcp_pages * page_kib, slab_kib }
    }

    fn since(&self, before: &KernelMemory) -> KernelMemory {
        KernelMemory {
            tcp_kib: self.tcp_kib - before.tcp_kib,
            slab_kib: self.slab_kib - before.slab_kib,
        }
    }
}

fn fanout(args: &Args, scenario: &str) -> serde_json::Value {
    let server = Server::start(args);
    let ex = LocalExecutor::new();
    let origin = Instant::now();
    smol::block_on(ex.run(async {
        let mut receivers = connect_many(&ex, &server, "rx", args.receivers).await;
        let mut senders = connect_many(&ex, &server, "tx", args.senders).await;
        // With channels and `--to small`, sender `s` posts to `g:<s>`, which receivers
        // `s * G .. (s + 1) * G` are in; the others get nothing.
        let small = args.group > 0 && args.to == "small";
        if args.group > 0 {
            join_groups(&mut receivers, args.group).await;
            for (s, ws) in senders.iter_mut().enumerate() {
                let join = json!({"type": "join", "channel": format!("g:{s}")}).to_string();
                ws.send(Message::Text(join.into())).await.expect("join");
            }
        }
        Timer::after(Duration::from_millis(1500)).await; // welcomes and presence settle
        let group = args.group;
        let expected_of = move |i: usize| match small {
            true if i / group < args.senders => args.messages,
            true => 0,
            false => args.senders * args.messages,
        };
        let total: usize = (0..args.receivers).map(expected_of).sum();
        let latencies = Rc::new(RefCell::new(Vec::with_capacity(total)));
        // Per message (sender, number): when its last receiver had it, after it was sent.
        let last_of_message = Rc::new(RefCell::new(std::collections::HashMap::new()));
        let received = Rc::new(Cell::new(0usize));
        let closed = Rc::new(Cell::new(0usize));
        let last_receipt = Rc::new(Cell::new(Instant::now()));
        // Each receiver says when it has every message (or was cut off), and stays connected
        // until the run is over: a client that left at once would make the server handle its close while the
        // last message is still going out to the others, and that would count as the
        // broadcast's time and CPU.
        let (all_mine, complete) = smol::channel::unbounded::<()>();
        let reading: Vec<_> = receivers
            .into_iter()
            .enumerate()
            .filter(|(i, _)| expected_of(*i) > 0)
            .map(|(i, mut ws)| {
                let (latencies, received, closed, last) =
                    (latencies.clone(), received.clone(), closed.clone(), last_receipt.clone());
                let last_of_message = last_of_message.clone();
                let expected = expected_of(i);
                let all_mine = all_mine.clone();
                ex.spawn(async move {
                    let mut got = 0;
                    while got < expected {
                        match ws.next().await {
                            Some(Ok(Message::Text(t))) => {
                                if let Some(at) = sent_at(&t) {
                                    let latency = now_us(origin).saturating_sub(at);
                                    latencies.borrow_mut().push(latency);
                                    let mut slowest = last_of_message.borrow_mut();
                                    let slowest = slowest.entry(message_of(&t)).or_insert(0);
                                    *slowest = latency.max(*slowest);
                                    got += 1;
                                    received.set(received.get() + 1);
                                    last.set(Instant::now());
                                }
                            }
                            Some(Ok(_)) => {}
                            _ => {
                                // Cut off: done too, with what it got.
                                closed.set(closed.get() + 1);
                                let _ = all_mine.send(()).await;
                                return;
                            }
                        }
                    }
                    let _ = all_mine.send(()).await;
                    while let Some(Ok(_)) = ws.next().await {}
                })
            })
            .collect();
        let readers = reading.len();
        let cpu_before = server.cpu_secs();
        let helper_before = helper_thread_cpu_secs();
        let started = Instant::now();
        let per_sender_interval = (args.rate > 0)
            .then(|| Duration::from_secs_f64(args.senders as f64 / args.rate as f64));
        let sending: Vec<_> = senders
            .into_iter()
            .enumerate()
            .map(|(s, ws)| {
                ex.spawn(async move {
                    let (mut sink, mut stream) = ws.split();
                    // Senders read too (their own copies), or the servers would cut them off.
                    let drain = async move { while let Some(Ok(_)) = stream.next().await {} };
                    let send = async move {
                        let mut next = Instant::now();
                        for m in 0..args.messages {
                            if let Some(interval) = per_sender_interval {
                                Timer::at(next).await;
                                next += interval;
                            }
                            let text = format!("t={};s={s};m={m}", now_us(origin));
                            let frame = match small {
                                true => json!({"type": "chat", "channel": format!("g:{s}"), "content": text}),
                                false => json!({"type": "chat", "content": text}),
                            }
                            .to_string();
                            if sink.send(Message::Text(frame.into())).await.is_err() {
                                return;
                            }
                        }
                        Timer::after(Duration::from_secs(3600)).await;
                    };
                    send.or(drain).await;
                })
            })
            .collect();
        let all_in = async {
            for _ in 0..readers {
                let _ = complete.recv().await;
            }
        };
        // Done when every delivery arrived, or nothing arrived for 3 s (losses).
        let stalled = async {
            loop {
                Timer::after(Duration::from_millis(200)).await;
                if last_receipt.get().elapsed() > Duration::from_secs(3) && received.get() > 0 {
                    break;
                }
            }
        };
        all_in.or(stalled).await;
        let elapsed = last_receipt.get().duration_since(started).as_secs_f64();
        let cpu = server.cpu_secs() - cpu_before;
        let helper = helper_thread_cpu_secs() - helper_before;
        drop(sending);
        drop(reading);
        let mut lat = latencies.borrow().clone();
        lat.sort_unstable();
        let mut to_all: Vec<u64> = last_of_message.borrow().values().copied().collect();
        to_all.sort_unstable();
        let delivered = received.get();
        json!({
            "server": args.server, "scenario": scenario, "instances": args.instances,
            "group": args.group, "to": if args.group > 0 { args.to.as_str() } else { "" },
            "receivers": args.receivers, "senders": args.senders, "messages": args.messages,
            "offered_rate": args.rate,
            "deliveries": delivered, "lost": total - delivered.min(total),
            "disconnected": closed.get(),
            "deliveries_per_sec": delivered as f64 / elapsed,
            "server_cpu_us_per_delivery": cpu * 1e6 / delivered.max(1) as f64,
            "loadgen_helper_cpu_secs": helper,
            "latency_ms": {"p50": percentile(&lat, 0.5), "p99": percentile(&lat, 0.99),
                           "max": percentile(&lat, 1.0)},
            // For each message, until its last receiver had it: a broadcast's whole time.
            "to_last_receiver_ms": {"p50": percentile(&to_all, 0.5),
                                    "p99": percentile(&to_all, 0.99),
                                    "max": percentile(&to_all, 1.0)},
            "rss_kib": server.rss_kib(),
        })
    }))
}

/// The heartbeat wave: `--connections` idle clients that answer pings (and count them), beside
/// a steady chat among `--senders` clients in channel `g:chat` at `--rate` messages per second
/// in all, for `--secs` seconds. The chat's latency with pings every `--ping-secs` against the
/// same with pings off (`--ping-secs 0`) is what the wave costs.
fn wave(args: &Args) -> serde_json::Value {
    let server = Server::start(args);
    let ex = LocalExecutor::new();
    let origin = Instant::now();
    smol::block_on(ex.run(async {
        let idle = connect_many(&ex, &server, "idle", args.connections).await;
        let pings = Rc::new(Cell::new(0u64));
        // Pings in each 10 ms after the measured part starts: how evenly they are spread.
        let ping_buckets = Rc::new(RefCell::new(vec![0u32; (args.secs as usize + 1) * 100]));
        let measuring_since = Rc::new(Cell::new(None::<Instant>));
        let idle_closed = Rc::new(Cell::new(0usize));
        // Reading is what answers a Ping: tungstenite queues the Pong and writes it on the
        // next read or write.
        let _answering: Vec<_> = idle
            .into_iter()
            .map(|mut ws| {
                let (pings, idle_closed) = (pings.clone(), idle_closed.clone());
                let (buckets, since) = (ping_buckets.clone(), measuring_since.clone());
                ex.spawn(async move {
                    loop {
                        match ws.next().await {
                            Some(Ok(Message::Ping(_))) => {
                                pings.set(pings.get() + 1);
                                if let Some(since) = since.get() {
                                    let i = since.elapsed().as_millis() as usize / 10;
                                    if let Some(bucket) = buckets.borrow_mut().get_mut(i) {
                                        *bucket += 1;
                                    }
                                }
                            }
                            Some(Ok(_)) => {}
                            _ => break idle_closed.set(idle_closed.get() + 1),
                        }
                    }
                })
            })
            .collect();
        let mut chatters = connect_many(&ex, &server, "chat", args.senders).await;
        for ws in &mut chatters {
            let join = json!({"type": "join", "channel": "g:chat"}).to_string();
            ws.send(Message::Text(join.into())).await.expect("join");
        }
        Timer::after(Duration::from_secs(2)).await; // joins, welcomes and presence settle
        let latencies = Rc::new(RefCell::new(Vec::new()));
        let until = Instant::now() + Duration::from_secs(args.secs);
        let interval = Duration::from_secs_f64(args.senders as f64 / args.rate.max(1) as f64);
        let pings_before = pings.get();
        let cpu_before = server.cpu_secs();
        let helper_before = helper_thread_cpu_secs();
        let started = Instant::now();
        measuring_since.set(Some(started));
        let senders = args.senders;
        let chatting: Vec<_> = chatters
            .into_iter()
            .enumerate()
            .map(|(c, ws)| {
                let latencies = latencies.clone();
                ex.spawn(async move {
                    let (mut sink, mut stream) = ws.split();
                    let read = async move {
                        while let Some(Ok(m)) = stream.next().await {
                            if let Some(at) = m.to_text().ok().and_then(sent_at) {
                                latencies.borrow_mut().push(now_us(origin).saturating_sub(at));
                            }
                        }
                    };
                    let send = async move {
                        // Each chatter on its own phase, as people type.
                        let mut next = Instant::now() + interval.mul_f64(c as f64 / senders as f64);
                        while next < until {
                            Timer::at(next).await;
                            next += interval;
                            let text = format!("t={};s={c}", now_us(origin));
                            let frame =
                                json!({"type": "chat", "channel": "g:chat", "content": text});
                            if sink.send(Message::Text(frame.to_string().into())).await.is_err() {
                                return;
                            }
                        }
                        // The last frames' round trips.
                        Timer::after(Duration::from_secs(1)).await;
                    };
                    send.or(read).await;
                })
            })
            .collect();
        // `--herd H`: halfway through, H more clients connect all at once (a network blip at
        // a big site), not CONNECT_PARALLELISM at a time; with `--herd-secs S`, spread evenly
        // over S seconds from the start instead (people arriving).
        let herd_connected = Rc::new(Cell::new(0usize));
        let _herd: Vec<_> = if args.herd > 0 {
            if args.herd_secs == 0 {
                Timer::after(Duration::from_secs(args.secs) / 2).await;
            }
            let spacing = Duration::from_secs(args.herd_secs) / args.herd as u32;
            (0..args.herd)
                .map(|i| {
                    let (addr, connected) = (server.addr(i), herd_connected.clone());
                    let at = Instant::now() + spacing * i as u32;
                    ex.spawn(async move {
                        Timer::at(at).await;
                        let ws = connect(addr, &format!("herd{i}")).await;
                        connected.set(connected.get() + usize::from(ws.is_some()));
                        let mut ws = ws?;
                        while let Some(Ok(_)) = ws.next().await {}
                        Some(())
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        for c in chatting {
            c.await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = server.cpu_secs() - cpu_before;
        let helper = helper_thread_cpu_secs() - helper_before;
        let mut lat = latencies.borrow().clone();
        lat.sort_unstable();
        let expected = (args.secs as f64 * args.rate as f64) as usize * args.senders;
        let mut buckets: Vec<u64> =
            ping_buckets.borrow()[..args.secs as usize * 100].iter().map(|&n| n as u64).collect();
        buckets.sort_unstable();
        json!({
            "server": args.server, "scenario": "wave", "connections": args.connections,
            "senders": args.senders, "offered_rate": args.rate, "secs": args.secs,
            "ping_secs": args.ping_secs, "herd": args.herd, "herd_secs": args.herd_secs,
            "herd_connected": herd_connected.get(),
            "pings_per_sec": (pings.get() - pings_before) as f64 / elapsed,
            // Pings that arrived in one 10 ms slice: the median slice and the busiest.
            "pings_per_10ms": {"p50": buckets[buckets.len() / 2],
                               "max": buckets.last().copied().unwrap_or(0)},
            "idle_disconnected": idle_closed.get(),
            "deliveries": lat.len(), "expected_deliveries": expected,
            "server_cpu_share": cpu / elapsed,
            "loadgen_helper_cpu_secs": helper,
            "latency_ms": {"p50": percentile(&lat, 0.5), "p99": percentile(&lat, 0.99),
                           "max": percentile(&lat, 1.0)},
            "rss_kib": server.rss_kib(),
        })
    }))
}

/// One client in this many is away while the marked messages are sent (see [`storm`]).
const AWAY_EVERY: usize = 4;

/// The page's reconnect delays: the first try after 250–500 ms, doubling to 15–30 s.
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long one reconnect attempt may take before it counts as failed.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the clients of a restart storm saw, counted together.
#[derive(Default)]
struct StormCounts {
    /// Clients connected again after the restart.
    back: Cell<usize>,
    /// Clients back that hold every message sent before the restart.
    recovered: Cell<usize>,
    /// Clients that went away before the marked messages.
    away: Cell<usize>,
    /// Messages a client got twice.
    duplicates: Cell<u64>,
    /// Distinct messages clients got, summed over the clients.
    held: Cell<u64>,
    /// `"recovered": false` in a welcome.
    unrecoverable: Cell<u64>,
    /// Reconnect attempts that failed, by what failed (refused while the server was down, a
    /// handshake that failed or timed out).
    failures: RefCell<std::collections::BTreeMap<String, u64>>,
    /// When the last client came back, and when the last one recovered.
    all_back_at: Cell<Option<Instant>>,
    all_recovered_at: Cell<Option<Instant>>,
}

/// The restart storm: `--connections` clients connected, a sender posts one message to
/// everyone, one client in [`AWAY_EVERY`] goes away, the sender posts `--messages` marked
/// messages, and once it has its own copy of the last one (the server holds them all) the
/// server gets SIGTERM, exits, and starts again on the same port. Every client reconnects as
/// the page does (backoff with jitter, `?since=` its last id) and counts what it gets; the run
/// ends when all are back and hold every marked message, or after `--secs`. The clients that
/// were away can have the marked messages only from the history, across the restart.
fn storm(args: &Args) -> serde_json::Value {
    let mut server = Server::start(args);
    let ex = LocalExecutor::new();
    let shequ = args.server == "shequ";
    smol::block_on(ex.run(async {
        let n = args.connections;
        let marks = args.messages;
        let conns = connect_many(&ex, &server, "storm", n).await;
        let counts = Rc::new(StormCounts::default());
        let restarted = Rc::new(Cell::new(false));
        let _clients: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(i, ws)| {
                let (counts, restarted) = (counts.clone(), restarted.clone());
                let addr = server.addr(i);
                ex.spawn(storm_client(i, ws, addr, marks, n, counts, restarted))
            })
            .collect();
        let mut sender = connect(server.addr(0), "storm-tx").await.expect("sender");
        Timer::after(Duration::from_secs(1)).await; // welcomes and presence settle
        // A first message everyone gets; then every AWAY_EVERY-th client goes away (its
        // network drops) and comes back only after the restart, with `?since=` that message's
        // id: the marked messages reach it only from the history file, across the restart.
        let warm = json!({"type": "chat", "content": "storm;warm;"}).to_string();
        sender.send(Message::Text(warm.into())).await.expect("send");
        while counts.away.get() < n.div_ceil(AWAY_EVERY) {
            Timer::after(Duration::from_millis(5)).await;
        }
        for m in 0..marks {
            let frame = json!({"type": "chat", "content": format!("storm;m={m};")});
            sender.send(Message::Text(frame.to_string().into())).await.expect("send");
        }
        let last = format!("storm;m={};", marks - 1);
        while let Some(Ok(m)) = sender.next().await {
            if m.to_text().is_ok_and(|t| t.contains(&last)) {
                break;
            }
        }
        drop(sender);
        let helper_before = helper_thread_cpu_secs();
        let sigterm = Instant::now();
        restarted.set(true);
        server.terminate_first().await;
        let exited = sigterm.elapsed();
        server.start_first_again();
        while std::net::TcpStream::connect(server.addr(0)).is_err() {
            Timer::after(Duration::from_millis(2)).await;
        }
        let listening = sigterm.elapsed();
        let deadline = sigterm + Duration::from_secs(args.secs);
        // Clients back at each whole second after SIGTERM.
        let mut back_by_second = Vec::new();
        loop {
            let done = counts.back.get() == n && (!shequ || counts.recovered.get() == n);
            if done || Instant::now() > deadline {
                break;
            }
            Timer::after(Duration::from_millis(10)).await;
            if sigterm.elapsed() >= Duration::from_secs(back_by_second.len() as u64 + 1) {
                back_by_second.push(counts.back.get());
            }
        }
        let since_sigterm =
            |at: Option<Instant>| at.map(|at| at.duration_since(sigterm).as_secs_f64());
        json!({
            "server": args.server, "scenario": "storm", "connections": n, "messages": marks,
            "exit_secs": exited.as_secs_f64(), "listening_secs": listening.as_secs_f64(),
            "all_back_secs": since_sigterm(counts.all_back_at.get()),
            "all_recovered_secs": since_sigterm(counts.all_recovered_at.get()),
            "back": counts.back.get(), "never_back": n - counts.back.get(),
            "back_by_second": back_by_second,
            "recovered": counts.recovered.get(), "away": counts.away.get(),
            "failed_attempts": counts.failures.borrow().values().sum::<u64>(),
            "failures": *counts.failures.borrow(),
            "duplicates": counts.duplicates.get(),
            // Messages a client never got, summed over the clients.
            "lost": (n * marks) as u64 - counts.held.get(),
            "unrecoverable": counts.unrecoverable.get(),
            // The restarted process's CPU: start-up, the handshakes and the replays.
            "new_server_cpu_secs": server.cpu_secs(),
            "rss_kib": server.rss_kib(),
            "loadgen_helper_cpu_secs": helper_thread_cpu_secs() - helper_before,
        })
    }))
}

/// One client of the restart storm: reads, and when the server goes away reconnects like the
/// page, with `?since=` the highest id it has.
async fn storm_client(
    i: usize,
    ws: Ws,
    addr: SocketAddr,
    marks: usize,
    n: usize,
    counts: Rc<StormCounts>,
    restarted: Rc<Cell<bool>>,
) {
    let token = token(&format!("storm{i}"));
    let mut seen = vec![false; marks];
    let mut seen_count = 0;
    let mut last_id = 0u64;
    let mut back = false;
    let mut recovered = false;
    let mut went_away = false;
    let mut random = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut ws = ws;
    loop {
        while let Some(Ok(message)) = ws.next().await {
            let Message::Text(text) = message else { continue };
            let Ok(frame) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
            if frame["recovered"] == json!(false) {
                counts.unrecoverable.set(counts.unrecoverable.get() + 1);
            }
            if let Some(id) = frame["id"].as_u64() {
                last_id = last_id.max(id);
            }
            let content = frame["content"].as_str().unwrap_or("");
            let mark = content.strip_prefix("storm;m=").and_then(|m| m.split(';').next());
            if let Some(m) = mark.and_then(|m| m.parse::<usize>().ok()).filter(|m| *m < marks) {
                if seen[m] {
                    counts.duplicates.set(counts.duplicates.get() + 1);
                } else {
                    seen[m] = true;
                    seen_count += 1;
                    counts.held.set(counts.held.get() + 1);
                }
            }
            if back && !recovered && seen_count == marks {
                recovered = true;
                bump(&counts.recovered, n, &counts.all_recovered_at);
            }
            if i.is_multiple_of(AWAY_EVERY) && !went_away && content.starts_with("storm;warm;") {
                went_away = true;
                counts.away.set(counts.away.get() + 1);
                break;
            }
        }
        if went_away && !restarted.get() {
            drop(ws);
            while !restarted.get() {
                Timer::after(Duration::from_millis(5)).await;
            }
            ws = reconnect(addr, &token, last_id, &mut random, &counts).await;
            back = true;
            bump(&counts.back, n, &counts.all_back_at);
            continue;
        }
        if !restarted.get() {
            return; // closed before the restart: not part of the storm
        }
        // The old socket goes before a new one is opened: at 100 000 clients every
        // descriptor counts.
        drop(ws);
        ws = reconnect(addr, &token, last_id, &mut random, &counts).await;
        if !back {
            back = true;
            bump(&counts.back, n, &counts.all_back_at);
            if seen_count == marks && !recovered {
                recovered = true;
                bump(&counts.recovered, n, &counts.all_recovered_at);
            }
        }
    }
}

/// Reconnects as the page does: after a random 250–500 ms, doubling after each failure, with
/// `?since=` the highest id seen; counts the failed attempts by cause.
async fn reconnect(
    addr: SocketAddr,
    token: &str,
    last_id: u64,
    random: &mut u64,
    counts: &StormCounts,
) -> Ws {
    let mut backoff = BACKOFF_START;
    loop {
        // xorshift: a jitter of its own for each client.
        *random ^= *random << 13;
        *random ^= *random >> 7;
        *random ^= *random << 17;
        let jitter = (*random >> 11) as f64 / (1u64 << 53) as f64;
        Timer::after(backoff.mul_f64(0.5 + jitter / 2.0)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
        let url_token = format!("{token}&since={last_id}");
        let attempt = async { try_connect(addr, &url_token).await }
            .or(async {
                Timer::after(ATTEMPT_TIMEOUT).await;
                Err("timed out".to_string())
            })
            .await;
        match attempt {
            Ok(ws) => return ws,
            Err(why) => {
                *counts.failures.borrow_mut().entry(why).or_insert(0) += 1;
            }
        }
    }
}

/// Counts one more client, and notes the time when all `n` are counted.
fn bump(count: &Cell<usize>, n: usize, all_at: &Cell<Option<Instant>>) {
    count.set(count.get() + 1);
    if count.get() == n {
        all_at.set(Some(Instant::now()));
    }
}

fn churn(args: &Args) -> serde_json::Value {
    let server = Server::start(args);
    let ex = LocalExecutor::new();
    run_ticking(&ex, async {
        let until = Instant::now() + Duration::from_secs(args.secs);
        let handshakes = Rc::new(Cell::new(0u64));
        let errors = Rc::new(Cell::new(0u64));
        let cpu_before = server.cpu_secs();
        let helper_before = helper_thread_cpu_secs();
        let started = Instant::now();
        let users: Vec<_> = (0..args.users)
            .map(|u| {
                let (handshakes, errors) = (handshakes.clone(), errors.clone());
                let addr = server.addr(u);
                ex.spawn(async move {
                    // One token per user, as a browser keeps its token across reloads; minting
                    // one per connect made the load generator, not the server, the limit.
                    let token = token(&format!("churn{u}"));
                    let mut previous: Option<Ws> = None;
                    while Instant::now() < until {
                        match connect_with(addr, &token).await {
                            Some(ws) => {
                                handshakes.set(handshakes.get() + 1);
                                previous = Some(ws); // the old one is replaced, then dropped
                            }
                            None => errors.set(errors.get() + 1),
                        }
                    }
                    drop(previous);
                })
            })
            .collect();
        for u in users {
            u.await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = server.cpu_secs() - cpu_before;
        let helper = helper_thread_cpu_secs() - helper_before;
        // Still serving: a fresh client gets its own message back.
        let mut check = connect(server.addr(0), "after-churn").await.expect("still serving");
        let frame = json!({"type": "chat", "content": "t=0;alive"}).to_string();
        check.send(Message::Text(frame.into())).await.unwrap();
        let alive = async {
            while let Some(Ok(m)) = check.next().await {
                if m.to_text().is_ok_and(|t| t.contains("alive")) {
                    return true;
                }
            }
            false
        }
        .or(async {
            Timer::after(Duration::from_secs(5)).await;
            false
        })
        .await;
        json!({
            "server": args.server, "scenario": "churn", "users": args.users,
            "handshakes_per_sec": handshakes.get() as f64 / elapsed,
            "errors": errors.get(), "still_serving": alive,
            "server_cpu_us_per_handshake": cpu * 1e6 / handshakes.get().max(1) as f64,
            "loadgen_helper_cpu_secs": helper,
        })
    })
}

/// Tasks the load generator runs between two polls of the reactor.
const TASKS_PER_TICK: usize = 4;

/// Runs `main` and the tasks spawned on `executor`, like `smol::block_on(executor.run(main))`,
/// but polls the reactor after every [`TASKS_PER_TICK`] tasks rather than every 200, so that
/// async-io's helper thread, which takes over when the reactor has not been polled for 50 µs,
/// stays asleep (see [`helper_thread_cpu_secs`]). For churn only: there the load generator's
/// core is full of short connection tasks and the helper took over in most runs; in the
/// fan-out scenarios it did not, and polling this often would change how the clients pace
/// their frames.
fn run_ticking<T>(executor: &LocalExecutor<'_>, main: impl Future<Output = T>) -> T {
    smol::block_on(async {
        let mut main = std::pin::pin!(main);
        loop {
            let done = async { Some(main.as_mut().await) }
                .or(async {
                    executor.tick().await;
                    None
                })
                .await;
            if let Some(output) = done {
                return output;
            }
            for _ in 1..TASKS_PER_TICK {
                if !executor.try_tick() {
                    break;
                }
            }
            // Pending once: `block_on` polls the reactor without blocking, then carries on.
            futures_lite::future::yield_now().await;
        }
    })
}

/// CPU time this process's `async-io` thread may use in a run before the run is repeated.
const HELPER_CPU_LIMIT_SECS: f64 = 0.05;
/// Runs of a scenario, at most, while the load generator's `async-io` thread keeps taking over.
const MAX_ATTEMPTS: u32 = 3;

/// CPU seconds used so far by this process's `async-io` thread. async-io (under smol) keeps it to
/// wait on sockets when the main thread has not done so for a while; in some runs it takes over
/// the load generator's sockets, every wake-up then crosses threads on the one core, and the run
/// measures the load generator instead of the server (churn: 9–11k handshakes/s instead of
/// 14–17k for the same server, its core partly idle).
fn helper_thread_cpu_secs() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut ticks = 0u64;
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != "async-io" {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        ticks += field(11) + field(12);
    }
    ticks as f64 / 100.0
}

fn main() {
    let args = parse_args();
    let open_files = raise_open_files_limit();
    let wanted = ((args.connections + args.herd).max(args.receivers + args.senders) + 256) as u64;
    assert!(
        open_files >= wanted,
        "the open files limit is {open_files}, and this run needs about {wanted}: run as root, \
         or raise the hard limit (ulimit -Hn)"
    );
    // A run in which the load generator's own helper thread took over is repeated (at most
    // MAX_ATTEMPTS runs), for every server alike; the output says how many runs it took.
    // Each scenario reports the helper's CPU over its measured part only (not the set-up).
    let mut attempt = 1;
    loop {
        let mut result = match args.scenario.as_str() {
            "idle" => idle(&args),
            "fanout" => fanout(&args, "fanout"),
            "burst" => fanout(&args, "burst"),
            "churn" => churn(&args),
            "wave" => wave(&args),
            "storm" => storm(&args),
            other => panic!("unknown scenario {other}"),
        };
        result["attempts"] = json!(attempt);
        result["socket_buffer"] = json!(args.socket_buffer);
        if !args.set.is_empty() {
            result["set"] = args.set.iter().map(|(path, v)| format!("{path}={v}")).collect();
        }
        let helper = result["loadgen_helper_cpu_secs"].as_f64().unwrap_or(0.0);
        if helper <= HELPER_CPU_LIMIT_SECS || attempt == MAX_ATTEMPTS {
            println!("{result}");
            return;
        }
        eprintln!("the load generator's async-io thread took over ({helper:.2} s of CPU); again");
        attempt += 1;
    }
}
