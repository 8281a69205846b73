//! The hub on a fake clock, for its unit tests, the property test (`tests/hub_properties.rs`)
//! and the fuzz target (`fuzz/fuzz_targets/hub.rs`): one simulator instead of three.
//!
//! It does what the event loop does, without sockets: it feeds the hub inputs at [`Sim::now`],
//! moves the clock to each deadline the hub names and fires it there ([`Sim::advance`]), and
//! performs the effects: a removed connection's queue is closed after the hub call, once; the
//! other effects are logged for the test to look at. After every step it checks the hub's
//! invariants, that every open queue is one the hub knows, and that every closed queue was
//! closed with the reason the hub gave.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{ConnId, Effect, Hub, HubConfig, Join, Now, Refused};
use crate::channels::{ChannelsConfig, Policy};
use crate::outbox::OutboxRx;
use crate::protocol::{ChatHead, CloseReason};

/// The channels the hub's tests, property test and fuzz target use: a default channel, a
/// public prefix with a history of 3, a claim rule, a read-only channel, a prefix without
/// presence or history, and one of at most 2 members. `history_size` is `history.size`.
pub fn test_channels(history_size: usize) -> Policy {
    let section: ChannelsConfig = serde_json::from_str(
        r#"{
          "default": "general",
          "rules": [
            {"pattern": "general",  "join": "public"},
            {"pattern": "forum:*",  "join": "public", "history": 3},
            {"pattern": "staff",    "join": "claim"},
            {"pattern": "news",     "join": "public", "read_only": true},
            {"pattern": "quiet:*",  "join": "public", "presence": false, "history": 0},
            {"pattern": "room:*",   "join": "public", "max_members": 2}
          ]
        }"#,
    )
    .expect("the test channels parse");
    Policy::new(&section, history_size).expect("the test channels are valid")
}

/// The hub, its clock, and what came out of it.
#[derive(Debug)]
pub struct Sim {
    pub hub: Hub,
    pub now: Now,
    /// The queues of open connections, as their tasks would hold them.
    pub open: HashMap<ConnId, OutboxRx>,
    /// Closed connections: the reason and the queue (its last frames are still readable).
    pub closed: HashMap<ConnId, (CloseReason, OutboxRx)>,
    /// `Effect::Persist` lines, in order.
    pub persisted: Vec<String>,
    /// `Effect::Publish`: the sender and the head, in order.
    pub published: Vec<(ConnId, ChatHead)>,
    /// `Effect::Presence` without a channel: user and online, in order.
    pub presence: Vec<(String, bool)>,
    /// `Effect::Presence` with a channel: channel, user and online, in order.
    pub channel_presence: Vec<(String, String, bool)>,
    /// `Effect::Announce`: user and connection, in order.
    pub announced: Vec<(String, ConnId)>,
    /// `Effect::SaveModeration` and `Effect::RewriteHistory`, counted.
    pub saves: usize,
    pub rewrites: usize,
    /// `Effect::Share`, in order.
    pub shared: Vec<super::Action>,
}

impl Sim {
    /// A hub whose clock starts at `unix_ms` on the wall clock and at an arbitrary instant on the
    /// monotonic one (only differences matter).
    pub fn new(config: HubConfig, unix_ms: u64) -> Sim {
        #[allow(clippy::disallowed_methods)] // the fake clock starts anywhere
        let now = Now { at: Instant::now(), unix_ms };
        Sim {
            hub: Hub::new(config, now),
            now,
            open: HashMap::new(),
            closed: HashMap::new(),
            persisted: Vec::new(),
            published: Vec::new(),
            presence: Vec::new(),
            channel_presence: Vec::new(),
            announced: Vec::new(),
            saves: 0,
            rewrites: 0,
            shared: Vec::new(),
        }
    }

    /// Connects; the new connection's queue joins [`open`](Self::open).
    pub fn connect(&mut self, join: Join) -> Result<ConnId, Refused> {
        let connected = self.hub.connect(self.now, join)?;
        self.open.insert(connected.conn, connected.outbox);
        self.perform(connected.effects);
        Ok(connected.conn)
    }

    /// Feeds one input at the current time and performs its effects, as `Shell::apply` does.
    /// Returns the connections it closed.
    pub fn apply(&mut self, step: impl FnOnce(&mut Hub, Now) -> Vec<Effect>) -> Vec<ConnId> {
        let effects = step(&mut self.hub, self.now);
        self.perform(effects)
    }

    /// Moves the clock forward by `d` with no timer fired on the way, then fires every due one
    /// at once: the event loop was busy for `d`.
    pub fn stall(&mut self, d: Duration) {
        self.now = self.now.after(d);
        let effects = self.hub.handle_timeout(self.now);
        self.perform(effects);
    }

    /// Moves the clock forward by `d`, firing every timer on the way at its own deadline.
    pub fn advance(&mut self, d: Duration) {
        self.advance_by(d, |sim, effects| {
            sim.perform(effects);
        });
    }

    /// Like [`advance`](Self::advance), with each timer's effects handed to `perform` (a model
    /// that follows the effects itself calls [`perform_with`](Self::perform_with) there).
    pub fn advance_by(&mut self, d: Duration, mut perform: impl FnMut(&mut Sim, Vec<Effect>)) {
        let end = self.now.at + d;
        loop {
            let next = self.hub.poll_timeout();
            if next > end {
                break;
            }
            let step = next.saturating_duration_since(self.now.at);
            self.now = self.now.after(step);
            let effects = self.hub.handle_timeout(self.now);
            perform(self, effects);
        }
        let rest = end.saturating_duration_since(self.now.at);
        self.now = self.now.after(rest);
    }

    /// What the event loop does with effects: closes each removed connection's queue, after the
    /// hub call, and logs the rest. Returns the connections it closed.
    pub fn perform(&mut self, effects: Vec<Effect>) -> Vec<ConnId> {
        self.perform_with(effects, |_, _| {})
    }

    /// Like [`perform`](Self::perform), showing `inspect` each effect, in order, before it is
    /// performed.
    pub fn perform_with(
        &mut self,
        effects: Vec<Effect>,
        mut inspect: impl FnMut(&Sim, &Effect),
    ) -> Vec<ConnId> {
        let mut closed = Vec::new();
        for effect in effects {
            inspect(self, &effect);
            match effect {
                Effect::Close { conn, outbox, reason } => {
                    let rx = self.open.remove(&conn).expect("closing a connection that is open");
                    assert!(!self.closed.contains_key(&conn), "connection {conn} closed twice");
                    outbox.close(reason);
                    self.closed.insert(conn, (reason, rx));
                    closed.push(conn);
                }
                Effect::Persist { line } => self.persisted.push(line.to_string()),
                Effect::Publish { from, head } => self.published.push((from, head)),
                Effect::Presence { user, channel: None, online } => {
                    self.presence.push((user.to_string(), online));
                }
                Effect::Presence { user, channel: Some(channel), online } => {
                    self.channel_presence.push((channel.to_string(), user.to_string(), online));
                }
                Effect::Announce { user, conn } => self.announced.push((user.to_string(), conn)),
                Effect::SaveModeration => self.saves += 1,
                Effect::RewriteHistory => self.rewrites += 1,
                Effect::Share(action) => self.shared.push(action),
            }
        }
        self.check();
        closed
    }

    /// The hub's invariants, and the queues as the hub says they are.
    pub fn check(&self) {
        self.hub.check_invariants();
        assert_eq!(self.open.len(), self.hub.connection_count(), "open queues");
        for (conn, (reason, rx)) in &self.closed {
            assert_eq!(rx.closed(), Some(*reason), "connection {conn} closed as the hub said");
        }
    }
}
