//! The server process: binding the listeners, accepting (within the pending-handshake limits),
//! start-up, the systemd watchdog and shutdown. Everything runs on one thread in a
//! `LocalExecutor`; the hub's driver is `driver.rs`, one connection's life is `conn.rs`.

use std::future::Future;
use std::io;
use std::net::TcpListener;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use log::{debug, info, warn};
use smol::{Async, LocalExecutor, Timer};

use crate::auth::Verifier;
use crate::config::{Config, ConfigError, Fsync};
use crate::conn::{Port, serve};
use crate::driver::{Shell, drive_pacer, drive_timers, now, sync_history_every_second};
use crate::history::HistoryFile;
use crate::hub::moderation::Moderation;
use crate::hub::{Hub, HubConfig};

/// Lifetime of the tokens `dev_login` prints.
pub const DEV_TOKEN_TTL_SECS: u64 = 24 * 3600;
/// Pause after a failed `accept` (out of file descriptors, usually) before trying again.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// While `accept` keeps failing, one WARN line per this interval, with the count.
pub const ACCEPT_ERROR_REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// The sockets the server listens on.
pub struct Listeners {
    /// `/ws`, `/healthz`, and `/metrics` unless it has a listener of its own.
    pub main: TcpListener,
    /// `/metrics` and `/healthz` only, when `metrics_listen` is set.
    pub metrics: Option<TcpListener>,
    /// The server API, when `api` is set.
    pub api: Option<TcpListener>,
}

/// Binds `listen` and, when set, `metrics_listen` and `api.listen`.
pub fn bind(config: &Config) -> io::Result<Listeners> {
    let main = bind_chat(config)?;
    let metrics = config.metrics_listen.as_ref().map(TcpListener::bind).transpose()?;
    let api = config.api.as_ref().map(|api| TcpListener::bind(&api.listen)).transpose()?;
    Ok(Listeners { main, metrics, api })
}

/// The chat's listener, with `limits.listen_backlog` and the socket buffer sizes of
/// `limits.socket_send_buffer` and `limits.socket_recv_buffer` (accepted sockets inherit them
/// from the listener, which also lets the receive buffer shape the window offered in the
/// handshake).
fn bind_chat(config: &Config) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let addr: std::net::SocketAddr = config
        .listen
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e}")))?;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // As std's own bind does: a restart does not wait for the old sockets' TIME_WAIT.
    socket.set_reuse_address(true)?;
    let l = &config.limits;
    if l.socket_send_buffer > 0 {
        socket.set_send_buffer_size(l.socket_send_buffer)?;
    }
    if l.socket_recv_buffer > 0 {
        socket.set_recv_buffer_size(l.socket_recv_buffer)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(l.listen_backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
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
    let verifier = Verifier::new(&config.auth)?
        .with_channels_claim(config.channels.as_ref().map(|c| c.claim.as_str()));
    let cannot = |e: io::Error| ConfigError(format!("cannot use the listener: {e}"));
    let main = Async::new(listeners.main).map_err(cannot)?;
    let metrics_listener = listeners.metrics.map(Async::new).transpose().map_err(cannot)?;
    let api_listener = listeners.api.map(Async::new).transpose().map_err(cannot)?;
    let start = now();
    let shutdown_grace = config.shutdown_grace();
    let hub = Hub::new(HubConfig::from(&config), start);
    let (history, restored) = match &config.history.file {
        Some(path) => {
            let loaded = HistoryFile::open(path, config.history.fsync)
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
    let (shell, rearm_rx) = Shell::new(
        config,
        verifier,
        hub,
        history,
        #[cfg(feature = "redis")]
        broker,
        start,
    );
    let shell = Rc::new(shell);
    shell.apply(|hub, now| hub.restore(now, restored));
    if let Some(moderation) = load_moderation(&shell)? {
        shell.apply(|hub, now| hub.set_moderation(now, moderation));
    }
    // The file may hold more than the hub keeps (a smaller history, a channel without a rule).
    shell.compact_history(false);
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
    if let Some(api) = &api_listener {
        info!("server API on {}", addr(api).unwrap_or_default());
        if shell.config.api.as_ref().is_some_and(|api| api.key.is_none()) {
            warn!("api: no key set, so anyone on this machine can use the server API");
        }
    }
    if shell.config.dev_login {
        print_dev_urls(&shell.config, &addr(&main).unwrap_or_default());
    }
    let executor = LocalExecutor::new();
    smol::block_on(executor.run(async {
        executor.spawn(drive_timers(shell.clone(), rearm_rx)).detach();
        executor.spawn(drive_pacer(shell.hub().pacer())).detach();
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
        let accepting = accepting.or(async {
            match &api_listener {
                Some(listener) => {
                    crate::api::accept_loop(&executor, &shell, listener, &alive).await
                }
                None => std::future::pending().await,
            }
        });
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        accepting.or(shutdown).await;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        drop(main);
        drop(metrics_listener);
        drop(api_listener);
        let open = shell.hub().connection_count();
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

/// The bans and mutes of the last run, from `api.moderation_file` (or beside the history file).
/// A file that is not there yet is no bans; one that cannot be read stops the start, as a
/// history file does: starting without the bans would let every banned user back in.
fn load_moderation(shell: &Shell) -> Result<Option<Moderation>, ConfigError> {
    let Some(path) = &shell.moderation_file else {
        if shell.config.api.is_some() {
            info!(
                "api: bans and mutes are kept in memory until the server stops; set \
                 api.moderation_file (or history.file) to keep them across restarts"
            );
        }
        return Ok(None);
    };
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ConfigError(format!("moderation file {}: {e}", path.display()))),
    };
    let saved = serde_json::from_slice(&text)
        .map_err(|e| ConfigError(format!("moderation file {}: {e}", path.display())))?;
    let moderation = Moderation::restore(saved, now().unix_ms / 1000);
    let unix = now().unix_ms / 1000;
    info!(
        "moderation: {} bans and {} mutes from {}",
        moderation.bans(unix).count(),
        moderation.mutes(unix).count(),
        path.display()
    );
    Ok(Some(moderation))
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

/// Accepts connections until dropped, one task each. The chat port waits for room while
/// `limits.max_pending_handshakes` are under way (a restart's herd waits in the listen backlog);
/// a socket beyond an address's share, or on the metrics port beyond the total, is closed at
/// once. When `accept` fails (out of file descriptors), it waits [`ACCEPT_BACKOFF`]
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
        if port == Port::Main {
            shell.handshakes.room().await;
        }
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

/// Tells systemd the event loop is alive, twice per watchdog interval. It runs on the event loop
/// itself, so if the loop wedges, the pings stop and systemd restarts the service.
async fn keep_watchdog_fed(interval: Duration) {
    loop {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        Timer::after(interval / 2).await;
    }
}
