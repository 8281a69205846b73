//! The IO shell around the hub: the accept loop, the upgrade, one task per connection, and the
//! timer that drives the hub's clocks. Everything runs on one thread in a `LocalExecutor`.
//!
//! Every input reaches the hub through `Shell::apply` (or `Shell::connect`, which also hands
//! back the new queue): it reads the clock, calls the hub, lets the borrow end, and only then
//! performs the effects (closing queues, appending to the history file) and re-arms the timer.
//! No borrow of the hub is held across an `.await`.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Bytes;
use async_tungstenite::tungstenite::error::ProtocolError as ProtocolViolation;
use async_tungstenite::tungstenite::protocol::frame::coding::{Data as OpData, OpCode};
use async_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame as WsFrame};
use async_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message};
use futures_lite::{AsyncWriteExt, FutureExt, Stream};
use futures_sink::Sink;
use log::{debug, info, warn};
use smol::{Async, LocalExecutor, Timer};

use crate::auth::{AuthError, Verifier};
use crate::config::{Config, ConfigError, Fsync};
use crate::handshakes::{Handshakes, Pending};
use crate::history::HistoryFile;
use crate::http::{self, HeadError, Refusal, Request};
use crate::hub::{ConnId, Effect, Hub, HubConfig, Identity, Incoming, Join, Now, Refused};
use crate::metrics::{self, ShellCounters, Snapshot};
use crate::outbox::{Frame, Next, OutboxRx};
use crate::page::Page;
use crate::protocol::{ClientMessage, CloseReason, ProtocolError, parse_client};

/// Frames a connection's task reads before it yields to the executor. smol has no cooperative
/// budget: without this, a reader with a backlog would broadcast hundreds of messages before any
/// writer ran, and fill every receiver's queue. Measured with `tests/burst.rs` (10 senders × 200
/// messages to 100 receivers, `send_queue` 256), three runs each in debug and release builds:
/// with 64, 256 or no limit the burst cut off most clients as too slow (108 of 110 at 256); with
/// 16 and with 4 it cut off none. The cluster broker hands messages from Redis to the hub in
/// steps of the same size, for the same reason (`tests/burst.rs` runs over two instances too).
pub const READ_BUDGET_FRAMES: usize = 16;
/// After the server sends a close frame, how long the client has to answer it (or, for a client
/// that is not reading, to make room for it) before the socket is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How often `fsync: interval` syncs the history file.
pub const HISTORY_SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Lifetime of the tokens `dev_login` prints.
pub const DEV_TOKEN_TTL_SECS: u64 = 24 * 3600;
/// The header a probe's 426 answer carries.
const UPGRADE: &str = "Upgrade: websocket\r\n";
/// Pause after a failed `accept` (out of file descriptors, usually) before trying again.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// While `accept` keeps failing, one WARN line per this interval, with the count.
pub const ACCEPT_ERROR_REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// The most tungstenite may hold unwritten for one connection: what the client has not read yet
/// of our frames and of the Pongs it asked for. Without a cap, a client that sends Pings and
/// never reads makes the server buffer a Pong for each, without end. The cap is raised when one
/// frame of ours could be larger (see [`max_write_buffer_bytes`]).
pub const MAX_WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// tungstenite writes to the socket once this much is buffered.
pub const WRITE_BUFFER_BYTES: usize = 4096;
/// WebSocket Pings a client may send while the server cannot write to it (it is not reading).
/// Beyond this, the client is closed as too slow (4004): browsers never send Pings, and a
/// client that floods them without reading the answers is either broken or hostile.
pub const MAX_PINGS_WHILE_BLOCKED: u32 = 64;

/// Reads both clocks. The only place the server asks the operating system for the time.
#[allow(clippy::disallowed_methods)]
pub(crate) fn now() -> Now {
    let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    Now { at: Instant::now(), unix_ms }
}

/// State shared by every task on the event loop.
pub(crate) struct Shell {
    /// Private: every input goes through [`Shell::apply`] (or [`Shell::connect`]), every read
    /// through [`Shell::hub`]. Nothing else in the crate can reach the hub mutably.
    hub: RefCell<Hub>,
    verifier: Verifier,
    config: Config,
    ws_config: WebSocketConfig,
    /// Wakes the timer task when an input moved the hub's next deadline earlier.
    rearm: async_channel::Sender<()>,
    /// The deadline the timer task sleeps until.
    armed: Cell<Instant>,
    counters: ShellCounters,
    /// Sockets still in their HTTP handshake.
    handshakes: Rc<Handshakes>,
    start_unix_secs: f64,
    /// The history file, when `history.file` is set.
    history: RefCell<Option<HistoryFile>>,
    page: Page,
    /// The link to the other instances, when `cluster` is set.
    #[cfg(feature = "redis")]
    pub(crate) broker: Option<crate::cluster::Broker>,
}

impl Shell {
    /// Feeds one input to the hub and performs its effects. The hub's borrow ends before any
    /// effect runs: a removed connection is gone from the hub before its queue is closed.
    pub(crate) fn apply(&self, step: impl FnOnce(&mut Hub, Now) -> Vec<Effect>) {
        let effects = step(&mut self.hub.borrow_mut(), now());
        self.perform(effects);
    }

    /// The hub, to read. Held only for the read: never across an `.await`.
    pub(crate) fn hub(&self) -> std::cell::Ref<'_, Hub> {
        self.hub.borrow()
    }

    fn perform(&self, effects: Vec<Effect>) {
        let mut persisted = false;
        let mut not_sent = Vec::new();
        for effect in effects {
            match effect {
                // Persist effects come before the message can reach any socket: the connection
                // tasks only write once this input is done and the executor runs them.
                Effect::Persist { line } => {
                    self.with_history(|file| file.append(&line));
                    persisted = true;
                }
                Effect::Close { conn, outbox, reason } => {
                    debug!("conn={conn} closing reason={}", reason.label());
                    outbox.close(reason);
                }
                effect @ (Effect::Publish { .. }
                | Effect::Presence { .. }
                | Effect::Announce { .. }) => not_sent.extend(self.to_broker(effect)),
            }
        }
        if persisted {
            self.with_history(|file| file.flush());
        }
        for conn in not_sent {
            self.apply(|hub, now| hub.not_sent(now, conn));
        }
        if self.hub.borrow().poll_timeout() < self.armed.get() {
            let _ = self.rearm.try_send(());
        }
    }

    /// Hands a cluster effect to the broker; returns the sender of a chat message that did not
    /// fit in its outbox.
    #[cfg(feature = "redis")]
    fn to_broker(&self, effect: Effect) -> Option<ConnId> {
        self.broker.as_ref()?.push(effect)
    }

    /// The hub asks for these only in a cluster, which needs the `redis` feature.
    #[cfg(not(feature = "redis"))]
    fn to_broker(&self, _effect: Effect) -> Option<ConnId> {
        None
    }

    /// Runs an operation on the history file, if there is one, and logs a failure.
    fn with_history(&self, op: impl FnOnce(&mut HistoryFile) -> io::Result<()>) {
        if let Some(file) = self.history.borrow_mut().as_mut()
            && let Err(e) = op(file)
        {
            warn!("history: cannot write {}: {e}", file.path().display());
        }
    }

    fn metrics(&self) -> String {
        let hub = self.hub.borrow();
        #[cfg(feature = "redis")]
        let broker = self.broker.as_ref().map(crate::cluster::Broker::stats);
        #[cfg(not(feature = "redis"))]
        let broker = None;
        metrics::render(&Snapshot {
            stats: hub.stats(),
            connections: hub.connection_count(),
            online: hub.online(),
            shown_online: hub.shown_online(),
            broker,
            history: hub.history_len(),
            shell: &self.counters,
            handshakes: &self.handshakes,
            start_time_unix_secs: self.start_unix_secs,
        })
    }

    /// Registers a new connection: like [`apply`](Self::apply), the hub's borrow ends before
    /// the replaced connections are closed.
    fn connect(&self, join: Join) -> Result<(ConnId, OutboxRx), Refused> {
        let connected = self.hub.borrow_mut().connect(now(), join)?;
        self.perform(connected.effects);
        Ok((connected.conn, connected.outbox))
    }

    fn disconnect(&self, conn: ConnId, reason: CloseReason) {
        self.apply(|hub, now| hub.disconnect(now, conn, reason));
    }

    /// Decides what to do with a request for `/ws`: upgrade with a key and an identity, answer a
    /// probe, or refuse.
    ///
    /// A plain `GET` of the same URL (no `Upgrade` header) is a probe: it gets the answer the
    /// upgrade would get (403, 401 with the reason, 503), or 426 when the upgrade would be
    /// taken. A browser cannot see the status of a refused WebSocket, so the page asks this way
    /// why it could not connect.
    fn check_upgrade<'r>(&self, req: &'r Request, ip: IpAddr) -> Result<Checked<'r>, Refusal> {
        let probe = req.method == "GET" && !req.header_has_token("upgrade", "websocket");
        let key = if probe { "" } else { req.websocket_key()? };
        if let Some(origin) = req.header("origin") {
            let allowed = &self.config.allowed_origins;
            if !allowed.is_empty() && !allowed.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
                return Err(Refusal::Origin);
            }
        }
        let from_query = req.query_param("token").filter(|t| !t.is_empty());
        let token = match (from_query.as_deref(), req.bearer_token()) {
            (Some(q), Some(h)) if q != h => return Err(Refusal::TokensDiffer),
            (Some(t), _) | (None, Some(t)) => t,
            (None, None) => "",
        };
        let identity = self.verifier.verify(token, now().unix_ms / 1000).map_err(Refusal::Token)?;
        if probe {
            self.hub().admits(&identity.user_id, ip)?;
            return Ok(Checked::ProbeAccepted);
        }
        Ok(Checked::Upgrade { key, identity })
    }

    /// Answers a refused request, counted, and closes.
    async fn refuse(&self, stream: &mut Async<TcpStream>, refusal: Refusal) {
        debug!("refused: {} ({})", refusal.label(), refusal.status());
        self.counters.count(refusal);
        http::respond_and_close(stream, &refusal.to_response()).await;
    }
}

/// What [`Shell::check_upgrade`] allows.
enum Checked<'r> {
    Upgrade {
        key: &'r str,
        identity: Identity,
    },
    /// A probe whose upgrade would be taken.
    ProbeAccepted,
}

/// The sockets the server listens on.
pub struct Listeners {
    /// `/ws`, `/healthz`, and `/metrics` unless it has a listener of its own.
    pub main: TcpListener,
    /// `/metrics` and `/healthz` only, when `metrics_listen` is set.
    pub metrics: Option<TcpListener>,
}

/// Binds `listen` and, when set, `metrics_listen`.
pub fn bind(config: &Config) -> io::Result<Listeners> {
    let main = TcpListener::bind(&config.listen)?;
    let metrics = config.metrics_listen.as_ref().map(TcpListener::bind).transpose()?;
    Ok(Listeners { main, metrics })
}

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    Main,
    Metrics,
}

/// Runs the server until `shutdown` completes, then closes every connection with 1001 and
/// returns once they are gone (or after `shutdown_grace_secs`).
///
/// Under systemd (`Type=notify`) it reports `READY=1` once serving, `WATCHDOG=1` from a timer on
/// the event loop (so a wedged loop gets restarted), and `STOPPING=1` on shutdown.
pub fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ConfigError> {
    let verifier = Verifier::new(&config.auth)?;
    let cannot = |e: io::Error| ConfigError(format!("cannot use the listener: {e}"));
    let main = Async::new(listeners.main).map_err(cannot)?;
    let metrics_listener = listeners.metrics.map(Async::new).transpose().map_err(cannot)?;
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(config.limits.read_buffer_bytes)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(max_write_buffer_bytes(&config))
        .max_message_size(Some(config.limits.max_message_bytes))
        .max_frame_size(Some(config.limits.max_message_bytes));
    let (rearm, rearm_rx) = async_channel::bounded(1);
    let start = now();
    let shutdown_grace = config.shutdown_grace();
    let hub = Hub::new(HubConfig::from(&config), start);
    let (history, restored) = match &config.history.file {
        Some(path) => {
            let loaded = HistoryFile::open(path, config.history.fsync, config.history.size)
                .map_err(|e| ConfigError(format!("history.file {}: {e}", path.display())))?;
            info!("history: {} messages from {}", loaded.messages.len(), path.display());
            (Some(loaded.file), loaded.messages)
        }
        None => (None, Vec::new()),
    };
    let sync_history = history.is_some() && config.history.fsync == Fsync::Interval;
    #[cfg(feature = "redis")]
    let broker = match &config.cluster {
        Some(cluster) => Some(crate::cluster::Broker::new(cluster, config.history.size)?),
        None => None,
    };
    let handshakes = Rc::new(Handshakes::new(&config.limits, &config.trusted_proxies));
    let shell = Rc::new(Shell {
        hub: RefCell::new(hub),
        verifier,
        config,
        ws_config,
        rearm,
        armed: Cell::new(start.at),
        counters: ShellCounters::default(),
        handshakes,
        start_unix_secs: start.unix_ms as f64 / 1000.0,
        history: RefCell::new(history),
        page: Page::new(),
        #[cfg(feature = "redis")]
        broker,
    });
    shell.apply(|hub, now| hub.restore(now, restored));
    // Logged once everything is loaded: from this line on, the server answers.
    let addr = |l: &Async<TcpListener>| l.get_ref().local_addr().map(|a| a.to_string());
    info!(
        "shequ-chat {} listening on {}",
        env!("CARGO_PKG_VERSION"),
        addr(&main).unwrap_or_default()
    );
    if let Some(metrics) = &metrics_listener {
        info!("metrics on {}", addr(metrics).unwrap_or_default());
    }
    if shell.config.dev_login {
        print_dev_urls(&shell.config, &addr(&main).unwrap_or_default());
    }
    let executor = LocalExecutor::new();
    smol::block_on(executor.run(async {
        executor.spawn(drive_timers(shell.clone(), rearm_rx)).detach();
        if sync_history {
            executor.spawn(sync_history_every_second(shell.clone())).detach();
        }
        #[cfg(feature = "redis")]
        executor.spawn(crate::cluster::run(shell.clone())).detach();
        if let Some(interval) = sd_notify::watchdog_enabled() {
            executor.spawn(keep_watchdog_fed(interval)).detach();
        }
        // Each connection task holds a clone of `alive`; `done` closes when the last one ends.
        let (alive, done) = async_channel::bounded::<()>(1);
        let accepting = accept_loop(&executor, &shell, &main, Port::Main, &alive);
        let accepting = accepting.or(async {
            match &metrics_listener {
                Some(listener) => {
                    accept_loop(&executor, &shell, listener, Port::Metrics, &alive).await
                }
                None => std::future::pending().await,
            }
        });
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        accepting.or(shutdown).await;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        drop(main);
        drop(metrics_listener);
        let open = shell.hub.borrow().connection_count();
        info!("shutting down: closing {open} connections");
        shell.apply(|hub, now| hub.shutdown(now));
        drop(alive);
        let all_gone = async {
            let _ = done.recv().await;
        };
        all_gone
            .or(async {
                Timer::after(shutdown_grace).await;
            })
            .await;
        shell.with_history(HistoryFile::sync);
        info!("stopped");
    }));
    Ok(())
}

/// `dev_login`: prints ready-to-open chat URLs with fresh tokens for two users, so that the
/// README's run command leads straight to a chat. To stdout, not the log: tokens stay out of logs.
fn print_dev_urls(config: &Config, addr: &str) {
    for (sub, name) in [("1", "alice"), ("2", "bob")] {
        match crate::auth::mint(&config.auth, sub, Some(name), DEV_TOKEN_TTL_SECS) {
            Ok(token) => println!("dev: chat as {name}: http://{addr}/#token={token}"),
            Err(e) => warn!("dev_login: cannot mint a token: {e}"),
        }
    }
}

/// The largest frame the server may write through tungstenite, plus the buffer it fills before
/// writing: a chat frame whose every character is escaped as `\uXXXX` (6 bytes), with a user id
/// and a name as long as a token allows (their escaped form is in the token). With the default
/// limits this is below [`MAX_WRITE_BUFFER_BYTES`], which is then the cap.
pub fn max_write_buffer_bytes(config: &Config) -> usize {
    let largest_frame =
        6 * config.limits.max_content_chars + 2 * crate::auth::MAX_TOKEN_BYTES + 512;
    MAX_WRITE_BUFFER_BYTES.max(WRITE_BUFFER_BYTES + largest_frame)
}

/// Accepts connections until dropped, one task each. A socket beyond the handshake limits is
/// closed at once. When `accept` fails (out of file descriptors), it waits [`ACCEPT_BACKOFF`]
/// and says so at most once per [`ACCEPT_ERROR_REPORT_INTERVAL`].
async fn accept_loop(
    executor: &LocalExecutor<'_>,
    shell: &Rc<Shell>,
    listener: &Async<TcpListener>,
    port: Port,
    alive: &async_channel::Sender<()>,
) {
    let mut reported: Option<(Instant, u64)> = None;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => match shell.handshakes.admit(peer.ip()) {
                Ok(pending) => {
                    let task = serve(shell.clone(), stream, peer, port, pending, alive.clone());
                    executor.spawn(task).detach();
                }
                Err(refusal) => {
                    debug!("closed at once: {peer}: pending handshakes ({})", refusal.label());
                    drop(stream);
                }
            },
            Err(e) => {
                let errors = &shell.counters.accept_errors;
                errors.set(errors.get() + 1);
                let at = now().at;
                let due = reported.is_none_or(|(last, _)| {
                    at.saturating_duration_since(last) >= ACCEPT_ERROR_REPORT_INTERVAL
                });
                if due {
                    let since = reported.map_or(0, |(_, count)| errors.get() - count - 1);
                    warn!(
                        "accept failed: {e}; {since} more failures since the last report; \
                         retrying every {ACCEPT_BACKOFF:?}"
                    );
                    reported = Some((at, errors.get()));
                }
                Timer::after(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// `fsync: interval`: syncs the history file at most once a second, from the event loop.
async fn sync_history_every_second(shell: Rc<Shell>) {
    loop {
        Timer::after(HISTORY_SYNC_INTERVAL).await;
        shell.with_history(HistoryFile::sync);
    }
}

/// Tells systemd the event loop is alive, twice per watchdog interval. It runs on the event loop
/// itself, so if the loop wedges, the pings stop and systemd restarts the service.
async fn keep_watchdog_fed(interval: Duration) {
    loop {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        Timer::after(interval / 2).await;
    }
}

/// Sleeps until the hub's next deadline (or until an input moves it earlier) and runs the hub's
/// timers.
async fn drive_timers(shell: Rc<Shell>, rearm: async_channel::Receiver<()>) {
    loop {
        let deadline = shell.hub.borrow().poll_timeout();
        shell.armed.set(deadline);
        let sleep = async {
            Timer::at(deadline).await;
        };
        sleep
            .or(async {
                let _ = rearm.recv().await;
            })
            .await;
        shell.apply(|hub, now| hub.handle_timeout(now));
    }
}

/// Removes its connection from the hub when dropped, however the task ends (including a
/// handshake timeout between registration and the 101 response). Harmless if the hub removed it
/// already.
struct Registered {
    shell: Rc<Shell>,
    conn: ConnId,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shell.disconnect(self.conn, CloseReason::Client);
    }
}

/// One TCP connection, from accept to close.
async fn serve(
    shell: Rc<Shell>,
    mut stream: Async<TcpStream>,
    peer: SocketAddr,
    port: Port,
    pending: Pending,
    _alive: async_channel::Sender<()>,
) {
    let _ = stream.get_ref().set_nodelay(true);
    let timeout = shell.config.handshake_timeout();
    // Boxed so the handshake's state does not stay in every connection's task after it is done.
    let handshake = Box::pin(upgrade(&shell, &mut stream, peer, port));
    let upgraded = handshake
        .or(async {
            Timer::after(timeout).await;
            None
        })
        .await;
    drop(pending);
    let Some((registered, outbox, leftover)) = upgraded else {
        return;
    };
    let ws_config = Some(shell.ws_config);
    let mut ws =
        WebSocketStream::from_partially_read(stream, leftover, Role::Server, ws_config).await;
    Pump {
        shell: &shell,
        conn: registered.conn,
        ws: &mut ws,
        outbox: &outbox,
        unflushed: false,
        pings_while_blocked: 0,
        reading: true,
        closing: None,
        grace: None,
    }
    .await;
}

/// Reads the request head and answers it: a plain HTTP response, or a 101 for a registered
/// connection.
async fn upgrade(
    shell: &Rc<Shell>,
    stream: &mut Async<TcpStream>,
    peer: SocketAddr,
    port: Port,
) -> Option<(Registered, OutboxRx, Vec<u8>)> {
    let (request, leftover) = match http::read_head(stream).await {
        Ok(head) => head,
        Err(HeadError::Closed) => return None,
        Err(HeadError::TooLarge) => {
            shell.refuse(stream, Refusal::HeadTooLarge).await;
            return None;
        }
        Err(HeadError::Malformed) => {
            shell.refuse(stream, Refusal::Malformed).await;
            return None;
        }
    };
    let metrics_here = match port {
        Port::Main => shell.config.metrics_listen.is_none(),
        Port::Metrics => true,
    };
    let answer = match request.path.as_str() {
        "/ws" if port == Port::Main => None,
        "/" | "/healthz" | "/metrics" if request.method != "GET" => Some(Err(Refusal::UseGet)),
        "/healthz" => Some(Ok(http::response(200, "text/plain; charset=utf-8", "", "ok"))),
        "/" if port == Port::Main => Some(Ok(shell.page.response())),
        "/metrics" if metrics_here => {
            Some(Ok(http::response(200, metrics::CONTENT_TYPE, "", &shell.metrics())))
        }
        _ => Some(Err(Refusal::NotFound)),
    };
    match answer {
        Some(Ok(response)) => {
            http::respond_and_close(stream, &response).await;
            return None;
        }
        Some(Err(refusal)) => {
            shell.refuse(stream, refusal).await;
            return None;
        }
        None => {}
    }
    let ip = client_ip(&request, peer.ip(), &shell.config.trusted_proxies);
    let (key, identity) = match shell.check_upgrade(&request, ip) {
        Ok(Checked::Upgrade { key, identity }) => (key, identity),
        Ok(Checked::ProbeAccepted) => {
            let body = "token accepted; open a WebSocket with it to chat";
            let response = http::response(426, "text/plain; charset=utf-8", UPGRADE, body);
            http::respond_and_close(stream, &response).await;
            return None;
        }
        Err(refusal) => {
            shell.refuse(stream, refusal).await;
            return None;
        }
    };
    let user_id = identity.user_id.clone();
    let since = request.query_param("since").and_then(|s| s.parse::<u64>().ok());
    let join = Join { identity, since, ip };
    let (conn, outbox) = match shell.connect(join) {
        Ok(connected) => connected,
        Err(refused) => {
            shell.refuse(stream, refused.into()).await;
            return None;
        }
    };
    let registered = Registered { shell: shell.clone(), conn };
    debug!("conn={conn} user_id={user_id} peer={peer} upgraded");
    // The 101 and the frames already queued (welcome, history) go out in one write: one
    // system call instead of two for every connect, which is most of the cost of a reconnect.
    let mut first = http::switching_protocols(key).into_bytes();
    for frame in outbox.drain() {
        let Frame::Text(text) = frame else { continue };
        let frame = WsFrame::message(Bytes::from(text), OpCode::Data(OpData::Text), true);
        if frame.format(&mut first).is_err() {
            return None;
        }
    }
    if stream.write_all(&first).await.is_err() {
        return None;
    }
    Some((registered, outbox, leftover))
}

/// The client's address: the peer's, or, when the peer is a trusted proxy, the nearest address in
/// `X-Forwarded-For` that is not itself a trusted proxy. Unparseable entries end the search.
fn client_ip(request: &Request, peer: IpAddr, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let Some(forwarded) = request.header("x-forwarded-for") else {
        return peer;
    };
    let mut client = peer;
    for hop in forwarded.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !trusted.contains(&ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

type Ws = WebSocketStream<Async<TcpStream>>;

/// Moves frames between one WebSocket and the hub until the connection is over: the hub's
/// queued frames out, the client's frames in (at most [`READ_BUDGET_FRAMES`] per poll).
///
/// It ends when the read side is over and the queue is closed and flushed, when a write fails,
/// or [`CLOSE_GRACE`] after the queue was closed.
struct Pump<'a> {
    shell: &'a Shell,
    conn: ConnId,
    ws: &'a mut Ws,
    outbox: &'a OutboxRx,
    /// Frames handed to the WebSocket since the last completed flush.
    unflushed: bool,
    /// WebSocket Pings read since the last completed flush (see [`MAX_PINGS_WHILE_BLOCKED`]).
    pings_while_blocked: u32,
    /// The client may still send frames.
    reading: bool,
    /// The queue is closed and its close frame (if any) handed to the WebSocket.
    closing: Option<CloseReason>,
    grace: Option<Timer>,
}

impl Pump<'_> {
    /// Writes queued frames while the socket takes them, then flushes. `Err` means the socket
    /// failed and the connection is over.
    fn write(&mut self, cx: &mut Context<'_>) -> Result<(), WsError> {
        if self.grace.is_none() && self.outbox.closed().is_some() {
            self.grace = Some(Timer::after(CLOSE_GRACE));
        }
        while self.closing.is_none() {
            match Pin::new(&mut *self.ws).poll_ready(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(result) => result?,
            }
            let message = match self.outbox.poll_next(cx) {
                Poll::Pending => break,
                Poll::Ready(Next::Frame(Frame::Text(text))) => Message::Text(text),
                Poll::Ready(Next::Frame(Frame::Ping)) => Message::Ping(Default::default()),
                Poll::Ready(Next::Closed(reason)) => {
                    self.closing = Some(reason);
                    let Some(code) = reason.code() else {
                        break;
                    };
                    let frame = CloseFrame { code: code.into(), reason: reason.label().into() };
                    Message::Close(Some(frame))
                }
            };
            Pin::new(&mut *self.ws).start_send(message)?;
            self.unflushed = true;
        }
        if self.unflushed
            && let Poll::Ready(result) = Pin::new(&mut *self.ws).poll_flush(cx)
        {
            result?;
            self.unflushed = false;
            self.pings_while_blocked = 0;
        }
        Ok(())
    }

    /// Hands one frame from the client to the hub.
    fn read(&mut self, item: Option<Result<Message, WsError>>) {
        let incoming = match item {
            None => return self.stop_reading(CloseReason::Client),
            Some(Err(e)) => return self.stop_reading(close_reason_for(&e)),
            Some(Ok(Message::Close(_))) => {
                self.unflushed = true; // tungstenite queued its reply
                return self.stop_reading(CloseReason::Client);
            }
            Some(Ok(Message::Text(text))) => self.parse(&text),
            Some(Ok(Message::Binary(_))) => Incoming::Invalid(ProtocolError::BinaryUnsupported),
            Some(Ok(Message::Ping(_))) => {
                self.unflushed = true; // tungstenite queued a Pong
                self.pings_while_blocked += 1;
                if self.pings_while_blocked > MAX_PINGS_WHILE_BLOCKED {
                    debug!("conn={} sends Pings and does not read the Pongs", self.conn);
                    return self.stop_reading(CloseReason::TooSlow);
                }
                Incoming::Alive
            }
            Some(Ok(Message::Pong(_) | Message::Frame(_))) => Incoming::Alive,
        };
        let conn = self.conn;
        self.shell.apply(|hub, now| hub.receive(now, conn, incoming));
    }

    fn parse(&self, text: &str) -> Incoming {
        match parse_client(text, self.shell.config.limits.max_content_chars) {
            Ok(ClientMessage::Chat { content }) => Incoming::Chat(content),
            Ok(ClientMessage::Ping) => Incoming::Ping,
            Ok(ClientMessage::Auth { token }) => {
                let result = self.shell.verifier.verify(&token, now().unix_ms / 1000);
                Incoming::Refresh(result.map_err(AuthError::message))
            }
            Err(error) => Incoming::Invalid(error),
        }
    }

    fn stop_reading(&mut self, reason: CloseReason) {
        self.reading = false;
        self.shell.disconnect(self.conn, reason);
    }

    fn finished(&self) -> bool {
        self.closing.is_some() && !self.reading && !self.unflushed
    }
}

impl Future for Pump<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let mut budget = READ_BUDGET_FRAMES;
        loop {
            if let Err(e) = this.write(cx) {
                debug!("conn={} write failed: {e}", this.conn);
                if this.reading {
                    // A full write buffer: the client is not reading what it is sent.
                    let reason = match e {
                        WsError::WriteBufferFull(_) => CloseReason::TooSlow,
                        _ => CloseReason::Client,
                    };
                    this.stop_reading(reason);
                }
                return Poll::Ready(());
            }
            if this.finished() {
                return Poll::Ready(());
            }
            if !this.reading {
                break;
            }
            if budget == 0 {
                // The read budget is spent: let the other tasks run, then carry on.
                cx.waker().wake_by_ref();
                break;
            }
            match Pin::new(&mut *this.ws).poll_next(cx) {
                Poll::Pending => break,
                Poll::Ready(item) => {
                    budget -= 1;
                    this.read(item);
                }
            }
        }
        if let Some(grace) = &mut this.grace
            && Pin::new(grace).poll(cx).is_ready()
        {
            debug!("conn={} close grace over", this.conn);
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// The close reason for an error on the read side.
fn close_reason_for(e: &WsError) -> CloseReason {
    match e {
        WsError::Capacity(_) => CloseReason::TooBig,
        WsError::Utf8(_) => CloseReason::InvalidUtf8,
        // A client that drops the TCP connection without a close frame has simply left.
        WsError::Protocol(ProtocolViolation::ResetWithoutClosingHandshake) => CloseReason::Client,
        WsError::Protocol(_) => CloseReason::Protocol,
        _ => CloseReason::Client,
    }
}
