//! The hub's driver: the one door into the hub, and the timers that run it.
//!
//! Every input reaches the hub through [`Shell::apply`] (or [`Shell::connect`], which also hands
//! back the new queue): it reads the clock, calls the hub, lets the borrow end, and only then
//! performs the effects (closing queues, appending to the history file, handing cluster effects
//! to the broker) and re-arms the timer. The hub itself is private to this module; everything
//! else reads it through [`Shell::hub`]. No borrow of the hub is held across an `.await`.

use std::cell::{Cell, RefCell};
use std::io;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::FutureExt;
use log::{debug, warn};
use smol::Timer;

use crate::auth::Verifier;
use crate::config::Config;
use crate::handshakes::Handshakes;
use crate::history::HistoryFile;
use crate::hub::{ConnId, Effect, Hub, Join, Now, Refused};
use crate::metrics::{self, ShellCounters, Snapshot};
use crate::outbox::{OutboxRx, Pacer, WAKES_PER_TURN};
use crate::page::Page;
use crate::protocol::CloseReason;

/// Frames a connection's task reads before it yields to the executor. smol has no cooperative
/// budget: without this, a reader with a backlog would broadcast hundreds of messages before any
/// writer ran, and fill every receiver's queue. Measured with `tests/burst.rs` (10 senders × 200
/// messages to 100 receivers, `send_queue` 256), three runs each in debug and release builds:
/// with 64, 256 or no limit the burst cut off most clients as too slow (108 of 110 at 256); with
/// 16 and with 4 it cut off none. The cluster broker hands messages from Redis to the hub in
/// steps of the same size, for the same reason (`tests/burst.rs` runs over two instances too).
pub const READ_BUDGET_FRAMES: usize = 16;
/// How often `fsync: interval` syncs the history file.
pub const HISTORY_SYNC_INTERVAL: Duration = Duration::from_secs(1);
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
    pub(crate) verifier: Verifier,
    pub(crate) config: Config,
    /// Wakes the timer task when an input moved the hub's next deadline earlier.
    rearm: async_channel::Sender<()>,
    /// The deadline the timer task sleeps until.
    armed: Cell<Instant>,
    pub(crate) counters: ShellCounters,
    /// Sockets still in their HTTP handshake.
    pub(crate) handshakes: Rc<Handshakes>,
    start_unix_secs: f64,
    /// The history file, when `history.file` is set.
    history: RefCell<Option<HistoryFile>>,
    pub(crate) page: Page,
    /// The next ticket for a message the site publishes.
    tickets: Cell<ConnId>,
    /// Where bans and mutes are kept across restarts, if anywhere.
    pub(crate) moderation_file: Option<PathBuf>,
    /// The link to the other instances, when `cluster` is set.
    #[cfg(feature = "redis")]
    pub(crate) broker: Option<crate::cluster::Broker>,
}

impl Shell {
    /// The shell around `hub`, and the receiver [`drive_timers`] waits on.
    pub(crate) fn new(
        config: Config,
        verifier: Verifier,
        hub: Hub,
        history: Option<HistoryFile>,
        #[cfg(feature = "redis")] broker: Option<crate::cluster::Broker>,
        start: Now,
    ) -> (Shell, async_channel::Receiver<()>) {
        let (rearm, rearm_rx) = async_channel::bounded(1);
        let shell = Shell {
            hub: RefCell::new(hub),
            verifier,
            handshakes: Rc::new(Handshakes::new(&config.limits, &config.trusted_proxies)),
            rearm,
            armed: Cell::new(start.at),
            counters: ShellCounters::default(),
            start_unix_secs: start.unix_ms as f64 / 1000.0,
            history: RefCell::new(history),
            page: Page::new(),
            tickets: Cell::new(crate::hub::SITE_TICKETS),
            moderation_file: config
                .api
                .as_ref()
                .and_then(|api| api.moderation_path(&config.history)),
            config,
            #[cfg(feature = "redis")]
            broker,
        };
        (shell, rearm_rx)
    }

    /// Feeds one input to the hub and performs its effects. The hub's borrow ends before any
    /// effect runs: a removed connection is gone from the hub before its queue is closed.
    pub(crate) fn apply(&self, step: impl FnOnce(&mut Hub, Now) -> Vec<Effect>) {
        self.ask(|hub, now| ((), step(hub, now)));
    }

    /// Like [`apply`](Self::apply), for an input that also answers (a request of the server
    /// API): the answer is handed back once the effects are performed.
    pub(crate) fn ask<T>(&self, step: impl FnOnce(&mut Hub, Now) -> (T, Vec<Effect>)) -> T {
        let (answer, effects) = step(&mut self.hub.borrow_mut(), now());
        self.perform(effects);
        answer
    }

    /// The hub, to read. Held only for the read: never across an `.await`.
    pub(crate) fn hub(&self) -> std::cell::Ref<'_, Hub> {
        self.hub.borrow()
    }

    fn perform(&self, effects: Vec<Effect>) {
        let mut persisted = false;
        let mut rewrite = false;
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
                | Effect::Announce { .. }
                | Effect::Share(_)) => not_sent.extend(self.to_broker(effect)),
                Effect::SaveModeration => self.save_moderation(),
                Effect::RewriteHistory => rewrite = true,
            }
        }
        if rewrite {
            let keep = self.hub.borrow().held_history();
            self.with_history(|file| file.compact(&keep));
        }
        if persisted {
            self.with_history(|file| file.flush());
            self.compact_history(true);
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

    /// A ticket for a message the site publishes ([`crate::hub::Post::ticket`]): never a
    /// connection's id, never the same twice.
    pub(crate) fn next_ticket(&self) -> ConnId {
        let ticket = self.tickets.get();
        self.tickets.set(ticket + 1);
        ticket
    }

    /// Whether the site's inputs can reach every instance now: always alone; in a cluster, while
    /// Redis is up.
    pub(crate) fn cluster_reachable(&self) -> bool {
        #[cfg(feature = "redis")]
        if let Some(broker) = &self.broker {
            return broker.is_up();
        }
        true
    }

    /// In a cluster: where the id Redis gives the site's message with this ticket will come
    /// (`None` inside: it was not published). Ask before the message goes to the hub. Alone:
    /// `None`, as the hub numbers it at once.
    pub(crate) fn await_published(
        &self,
        _ticket: ConnId,
    ) -> Option<async_channel::Receiver<Option<u64>>> {
        #[cfg(feature = "redis")]
        if let Some(broker) = &self.broker {
            return Some(broker.await_published(_ticket));
        }
        None
    }

    /// Rewrites the history file with the history the hub holds (each channel's last N, in id
    /// order) when it holds more: at start (`growing` false), as soon as it does; while running,
    /// once it holds twice what is kept (or twice `history.size`), so that rewriting costs O(1)
    /// per message.
    pub(crate) fn compact_history(&self, growing: bool) {
        let held = self.hub.borrow().history_len();
        let limit = if growing { 2 * held.max(self.config.history.size).max(1) } else { held };
        let due = self.history.borrow().as_ref().is_some_and(|file| file.lines() > limit);
        if due {
            let keep = self.hub.borrow().held_history();
            self.with_history(|file| file.compact(&keep));
        }
    }

    /// Writes the bans and mutes to their file, if there is one (whole, atomically), and logs a
    /// failure: the bans hold in memory either way.
    fn save_moderation(&self) {
        let Some(path) = &self.moderation_file else {
            return;
        };
        let saved = self.hub.borrow().moderation().saved();
        let mut text = serde_json::to_vec_pretty(&saved).unwrap_or_default();
        text.push(b'\n');
        if let Err(e) = crate::history::write_atomically(path, &text) {
            warn!("moderation: cannot write {}: {e}", path.display());
        }
    }

    /// Runs an operation on the history file, if there is one, and logs a failure.
    pub(crate) fn with_history(&self, op: impl FnOnce(&mut HistoryFile) -> io::Result<()>) {
        if let Some(file) = self.history.borrow_mut().as_mut()
            && let Err(e) = op(file)
        {
            warn!("history: cannot write {}: {e}", file.path().display());
        }
    }

    /// How long the server has been running.
    pub(crate) fn uptime(&self) -> Duration {
        let unix_secs = now().unix_ms as f64 / 1000.0;
        Duration::from_secs_f64((unix_secs - self.start_unix_secs).max(0.0))
    }

    pub(crate) fn metrics(&self) -> String {
        let hub = self.hub.borrow();
        let now_secs = now().unix_ms / 1000;
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
            channels: hub.channel_count(),
            bans: hub.moderation().bans(now_secs).count(),
            mutes: hub.moderation().mutes(now_secs).count(),
            shell: &self.counters,
            handshakes: &self.handshakes,
            start_time_unix_secs: self.start_unix_secs,
        })
    }

    /// Registers a new connection: like [`apply`](Self::apply), the hub's borrow ends before
    /// the replaced connections are closed.
    pub(crate) fn connect(&self, join: Join) -> Result<(ConnId, OutboxRx), Refused> {
        let connected = self.hub.borrow_mut().connect(now(), join)?;
        self.perform(connected.effects);
        Ok((connected.conn, connected.outbox))
    }

    pub(crate) fn disconnect(&self, conn: ConnId, reason: CloseReason) {
        self.apply(|hub, now| hub.disconnect(now, conn, reason));
    }
}

/// `fsync: interval`: syncs the history file at most once a second, from the event loop.
pub(crate) async fn sync_history_every_second(shell: Rc<Shell>) {
    loop {
        Timer::after(HISTORY_SYNC_INTERVAL).await;
        shell.with_history(HistoryFile::sync);
    }
}

/// Wakes the connection tasks of large broadcasts, [`WAKES_PER_TURN`] at a time, and yields
/// after each turn: the tasks it woke, and anything else that became ready meanwhile (a chat
/// frame read from another socket), run before its next turn (`outbox.rs`).
pub(crate) async fn drive_pacer(pacer: Pacer) {
    loop {
        std::future::poll_fn(|cx| pacer.poll_turn(cx, WAKES_PER_TURN)).await;
        futures_lite::future::yield_now().await;
    }
}

/// How late the hub's timers may fire, so that one wake-up serves every deadline within it.
/// Heartbeats are spread, one deadline per connection: at 19 000 connections pinged every 5 s
/// (the rate of 100 000 at the default 30 s), waking for each deadline alone took 32% of the
/// core, and with 5 ms of slack 13%, with the p99 of a chat beside it unchanged
/// (`benches/scale.sh`, the wave).
const TIMER_SLACK: Duration = Duration::from_millis(5);

/// Sleeps until the hub's next deadline (or until an input moves it earlier) and runs the hub's
/// timers.
pub(crate) async fn drive_timers(shell: Rc<Shell>, rearm: async_channel::Receiver<()>) {
    loop {
        let deadline = shell.hub.borrow().poll_timeout();
        shell.armed.set(deadline);
        let sleep = async {
            Timer::at(deadline + TIMER_SLACK).await;
        };
        sleep
            .or(async {
                let _ = rearm.recv().await;
            })
            .await;
        shell.apply(|hub, now| hub.handle_timeout(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{Frame, Next, outbox};
    use async_tungstenite::tungstenite::Utf8Bytes;
    use smol::LocalExecutor;

    /// On the server's own executor: a frame for one connection, queued while a broadcast to
    /// four turns' worth of connections is being written, is written after at most one turn of
    /// them, not after all of them; and every receiver of the broadcast gets it once, in the
    /// order it was queued.
    #[test]
    fn a_frame_queued_during_a_large_broadcast_waits_for_one_turn_not_for_all() {
        let receivers = 4 * WAKES_PER_TURN;
        let ex = LocalExecutor::new();
        let pacer = Pacer::default();
        let written = Rc::new(RefCell::new(Vec::new()));
        // One task per queue, taking frames as a connection's pump does: receivers 0..n, and
        // the chat's receiver, n.
        let mut queues = Vec::new();
        for i in 0..=receivers {
            let (tx, rx) = outbox();
            let written = written.clone();
            ex.spawn(async move {
                while let Next::Frame(_) = std::future::poll_fn(|cx| rx.poll_next(cx)).await {
                    written.borrow_mut().push(i);
                }
            })
            .detach();
            queues.push(tx);
        }
        ex.spawn(drive_pacer(pacer.clone())).detach();
        while ex.try_tick() {}
        let chat = queues.pop().unwrap();
        let everyone = Frame::Text(Utf8Bytes::from_static("everyone"));
        for tx in &queues {
            assert!(tx.push_below(everyone.clone(), 8, Some(&pacer)));
        }
        ex.try_tick(); // the pacer's first turn
        chat.push(Frame::Text(Utf8Bytes::from_static("to one")));
        while ex.try_tick() {}

        let written = written.borrow();
        let chat_at = written.iter().position(|&i| i == receivers).unwrap();
        assert!(chat_at <= WAKES_PER_TURN, "the chat was written after {chat_at} others");
        let broadcast: Vec<usize> = written.iter().copied().filter(|&i| i != receivers).collect();
        assert_eq!(broadcast, (0..receivers).collect::<Vec<_>>());
    }
}
