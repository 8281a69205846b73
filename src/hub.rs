//! The hub: the one owner of connection state, as a plain state machine.
//!
//! The hub does no IO, never awaits and never reads a clock. The event loop feeds it inputs
//! ([`Hub::connect`], [`Hub::receive`], [`Hub::disconnect`], [`Hub::handle_timeout`]) with the
//! current time, and it answers with [`Effect`]s; [`Hub::poll_timeout`] says when it next wants
//! [`Hub::handle_timeout`]. Pushing a frame onto a connection's [`OutboxTx`] is memory, not IO: the
//! connection's own task does the writing.
//!
//! **Closing is an effect.** When the hub ends a connection (a newer one replaced it, it went
//! idle, its queue filled up…) it first removes it from every map, and only then hands its
//! [`OutboxTx`] out in [`Effect::Close`]. The event loop closes the queue after its borrow of the
//! hub has ended, and the connection's task then writes the close frame and drops the socket. So a
//! broadcast can never find a connection that is being closed, and since `OutboxTx::close` takes
//! the queue by value, nothing can close it twice. The Go handler this replaces closed the old
//! connection first and removed it from the map afterwards, under a lock, and a broadcast in
//! between panicked with "close of closed channel".
//!
//! A `disconnect` for a connection the hub no longer knows (it was replaced, and its task ended
//! afterwards) is harmless and does nothing.
//!
//! **Time is per connection and per user.** Each connection has one heartbeat deadline (its next
//! Ping, or the end of its allowed silence), so a silent client is closed `pong_timeout` after
//! its own last frame, and first Pings are spread over the interval. A user whose last
//! connection closes keeps counting as online for `presence_grace`: a browser refresh closes the
//! old page's socket before the new page connects, and nobody should see that.
//!
//! **In a cluster** ([`HubConfig::cluster`]) ids come from Redis, so an accepted message is not
//! broadcast at once: it leaves as [`Effect::Publish`] and comes back through [`Hub::deliver`],
//! like every other instance's messages, in id order. The hub also reports its users coming and
//! going ([`Effect::Presence`]) and, with one connection per user, each new connection
//! ([`Effect::Announce`]), so that another instance can close the user's older connection
//! ([`Hub::joined_elsewhere`]). The broker that talks to Redis lives in `cluster/`; the hub only
//! sees events.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Utf8Bytes;
use log::debug;

use self::channel::{Channel, Replay};
use self::moderation::Moderation;
use self::timers::{Timer, TimerTable};

use crate::channels::{Kind, Pattern, Policy, dm_members};
use crate::outbox::{Frame, OutboxRx, OutboxTx, Pacer, WAKES_PER_TURN, outbox};
use crate::protocol::{
    ChannelError, ChatHead, CloseReason, PROTOCOL_CHANNELS, ProtocolError, ServerMessage,
};

/// Identifies one connection for its whole life; never reused.
pub type ConnId = u64;

/// The window over which violations are counted.
pub const VIOLATION_WINDOW: Duration = Duration::from_secs(60);

/// The current time, as the event loop read it: monotonic for timers, wall clock for `ts` and
/// token expiry.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub at: Instant,
    pub unix_ms: u64,
}

impl Now {
    /// The same moment moved forward by `d` on both clocks (for tests and simulations).
    pub fn after(self, d: Duration) -> Now {
        Now { at: self.at + d, unix_ms: self.unix_ms + d.as_millis() as u64 }
    }
}

/// Who a verified token says the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub username: String,
    /// The token's `exp`, in Unix seconds.
    pub expires_unix_secs: u64,
    /// The channels the token's claim lists (`channels.claim`); empty without a `channels`
    /// section.
    pub channels: Vec<crate::channels::Pattern>,
}

/// The hub's settings, taken from the configuration file by `HubConfig::from(&Config)` in
/// `config.rs`: the hub does not know the file format.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    /// 0 turns the per-address limit off.
    pub max_connections_per_ip: usize,
    pub send_queue: usize,
    pub rate_per_sec: f64,
    pub rate_burst: u32,
    pub violations_before_close: u32,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    /// `None` turns idle cleanup off.
    pub idle_timeout: Option<Duration>,
    pub idle_check_interval: Duration,
    pub presence_interval: Duration,
    /// `online` frames per second, at most, over all channels: after a flush that reached N
    /// connections the next waits N / this, when that is longer than `presence_interval`.
    /// [`PRESENCE_DELIVERIES_PER_SEC`] unless a test says otherwise.
    pub presence_deliveries_per_sec: u32,
    /// How long a user whose last connection closed still counts as online: a reconnect within
    /// it (a page refresh) changes nobody's view. Zero counts the departure at once.
    pub presence_grace: Duration,
    /// Added to a token's `exp` before the connection is closed, as it is when the token is
    /// checked, so a token accepted within the leeway is not cut at once.
    pub token_leeway: Duration,
    /// Chat messages kept for replay; 0 keeps none.
    pub history_size: usize,
    /// Messages a client gets on connect without (or with too old a) `since`.
    pub history_on_join: usize,
    /// Emit [`Effect::Persist`] for every chat message.
    pub persist_history: bool,
    /// Part of a cluster: see the module documentation.
    pub cluster: bool,
    /// The `channels` section; `None`: one room, and frames without `channel` fields.
    pub channels: Option<Policy>,
    /// Channels alive at once.
    pub max_channels: usize,
    /// Channels one connection may be in.
    pub max_channels_per_connection: usize,
}

/// What the event loop must do after an input.
#[derive(Debug)]
pub enum Effect {
    /// The connection is already gone from the hub; close its queue (which makes its task send
    /// the close frame and drop the socket).
    Close { conn: ConnId, outbox: OutboxTx, reason: CloseReason },
    /// A chat message to append to the history file, before anyone can read it. Only when
    /// [`HubConfig::persist_history`] is set.
    Persist { line: Utf8Bytes },
    /// Cluster: an accepted chat message for the broker to number and publish. It reaches this
    /// instance's clients through [`Hub::deliver`], like everyone else's.
    Publish { from: ConnId, head: ChatHead },
    /// Cluster: the user's first connection on this instance opened (`online`), or their last
    /// one closed; with `channel`, the user came into that channel here, or left it (after the
    /// grace), for its count across instances.
    Presence { user: Rc<str>, channel: Option<Rc<str>>, online: bool },
    /// Cluster, one connection per user: the user connected here; other instances close theirs.
    Announce { user: Rc<str>, conn: ConnId },
    /// The bans or mutes changed: write [`Hub::moderation`] where it is kept.
    SaveModeration,
    /// A message left the history: rewrite the history file from [`Hub::held_history`] now.
    /// Only when [`HubConfig::persist_history`] is set.
    RewriteHistory,
    /// Cluster: a moderation action the site asked this instance for, to keep in Redis (bans,
    /// mutes, deletes from the history streams) and to carry out on every other instance
    /// ([`Hub::act_shared`]).
    Share(Action),
}

/// Why a connection was refused before its upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `limits.max_connections` are open.
    Capacity,
    /// `limits.max_connections_per_ip` are open from this address.
    IpLimit,
    /// The site banned the user, until then (Unix seconds) or for good.
    Banned { until: Option<u64> },
}

/// A verified client asking to join.
#[derive(Debug, Clone)]
pub struct Join {
    pub identity: Identity,
    /// The last message id the client saw, from `?since=`.
    pub since: Option<u64>,
    /// The client's address (behind a trusted proxy, from `X-Forwarded-For`).
    pub ip: IpAddr,
}

/// A connection the hub accepted.
#[derive(Debug)]
pub struct Connected {
    pub conn: ConnId,
    /// The frames for this connection, starting with `welcome`.
    pub outbox: OutboxRx,
    /// Connections this one replaced, to be closed.
    pub effects: Vec<Effect>,
}

/// A frame from a client, already parsed by the event loop.
#[derive(Debug)]
pub enum Incoming {
    /// A valid chat message, to the channel it names or else to the default channel.
    Chat {
        content: String,
        channel: Option<String>,
    },
    /// `join`, with the last message id the client saw in the channel.
    Join {
        channel: String,
        since: Option<u64>,
    },
    Leave(String),
    /// The app-level `ping`.
    Ping,
    /// An `auth` message, with the result of checking its token.
    Refresh(Result<Identity, &'static str>),
    /// A frame that failed parsing or validation.
    Invalid(ProtocolError),
    /// Any other frame (a WebSocket Ping or Pong): proof of life, nothing more.
    Alive,
}

/// Counters since start, read by the metrics endpoint.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub connections_accepted: u64,
    pub messages_received: u64,
    /// Chat messages broadcast.
    pub messages_broadcast: u64,
    /// Chat messages queued to receivers (one broadcast to N connections is N).
    pub deliveries: u64,
    pub replacements: u64,
    pub heartbeat_failures: u64,
    pub rate_limited: u64,
    pub invalid_messages: u64,
    /// Indexed by [`CloseReason::index`].
    pub disconnects: [u64; CloseReason::ALL.len()],
    /// Connects with `since` that got every message after it.
    pub recoveries_recovered: u64,
    /// Connects with `since` older than the history (or unknown).
    pub recoveries_too_old: u64,
    /// Cluster: connections closed because their user connected to another instance.
    pub replaced_elsewhere: u64,
    /// Channels joined, on connect or by `join`.
    pub joins: u64,
    /// Channels left by `leave`.
    pub leaves: u64,
    /// `join`, `leave` and `chat` frames refused for a reason of their channel.
    pub channel_refusals: u64,
    /// Dormant channels evicted with their history to make room for new ones.
    pub channels_evicted: u64,
    /// Chat messages refused because the site muted their sender.
    pub muted_refusals: u64,
}

#[derive(Debug)]
struct Conn {
    user: Rc<str>,
    username: Rc<str>,
    outbox: OutboxTx,
    /// Last frame of any kind from the client (heartbeat).
    last_seen: Instant,
    /// When the next WebSocket Ping is due.
    next_ping: Instant,
    /// This connection's entry in [`Hub::beats`].
    beat_at: Instant,
    /// Last chat message from the client (idle cleanup).
    last_chat: Instant,
    /// When its token runs out, leeway included.
    expires: Instant,
    ip: IpAddr,
    /// Cluster: this connection's [`Effect::Announce`] came back from Redis, so any later
    /// announcement for the same user is newer than this connection.
    announced: bool,
    /// The channels it is in (at most `max_channels_per_connection`: a scan is cheaper than a
    /// set at that size).
    channels: Vec<Rc<str>>,
    /// The channels its token's claim covers (updated by a refreshed token).
    claims: Box<[Pattern]>,
}

/// What the hub keeps per user id, beyond the user's connections: the rate limiter and the
/// violation count survive a reconnect, so reconnecting resets neither.
#[derive(Debug)]
struct User {
    /// Oldest first.
    conns: Vec<ConnId>,
    tokens: f64,
    tokens_at: Instant,
    violations: u32,
    violations_since: Instant,
    /// The user's last connection closed; they stop counting as online at this instant unless
    /// they connect again before it (their entry in [`Hub::departures`]).
    leaving_at: Option<Instant>,
}

/// The room's name among the channels when there is no `channels` section.
const ROOM: &str = "";

/// The state machine. See the module documentation.
#[derive(Debug)]
pub struct Hub {
    config: HubConfig,
    conns: HashMap<ConnId, Conn>,
    users: HashMap<Rc<str>, User>,
    /// Users with at least one connection, or within the presence grace after their last.
    online: usize,
    /// Cluster: distinct users on all instances, as Redis last counted them; `None` while the
    /// broker is down.
    cluster_online: Option<usize>,
    next_conn: ConnId,
    /// Ids are one sequence across all channels.
    last_message_id: u64,
    /// Every live channel by name; without a `channels` section, only the room ([`ROOM`]).
    channels: HashMap<Rc<str>, Box<Channel>>,
    /// Channels whose count may need an `online` frame (each once: [`Channel::dirty`]).
    dirty: Vec<Rc<str>>,
    /// When the next flush of `online` frames may run: `presence_interval` after the last one
    /// that sent any, or longer after a large one (`presence_deliveries_per_sec`). Each flush
    /// sends one frame per channel whose count changed.
    presence_due: Option<Instant>,
    /// The most frames a queue may hold: `send_queue` for live traffic, plus one replay (which
    /// is queued whole, when the queue is below `send_queue`).
    queue_bound: usize,
    /// Token deadlines, earliest first.
    expiries: BTreeSet<(Instant, ConnId)>,
    /// Open connections per client address.
    ips: HashMap<IpAddr, usize>,
    /// One entry per connection: when its heartbeat next needs a look (a Ping due, or the end
    /// of its allowed silence), earliest first. Frames from the client do not touch it: the
    /// entry, when it comes up, reads `last_seen` and moves itself to the real deadline.
    beats: BTreeSet<(Instant, ConnId)>,
    /// Users whose departure is held for the presence grace, earliest first.
    departures: BTreeSet<(Instant, Rc<str>)>,
    /// The same per channel: (deadline, channel, user).
    channel_departures: BTreeSet<(Instant, Rc<str>, Rc<str>)>,
    /// The deadline of each (channel, user) in `channel_departures`, to cancel it when the user
    /// joins again. Kept apart from [`Channel::users`] so that a member costs a count, not a
    /// deadline, while nobody is leaving.
    channel_leaving: HashMap<(Rc<str>, Rc<str>), Instant>,
    /// Channels nobody is in that hold history, by the id of their last message: the oldest is
    /// evicted when a new channel needs room ([`Hub::create_channel`]).
    dormant: BTreeSet<(u64, Rc<str>)>,
    /// The last message id of the newest channel evicted (0: none yet).
    evicted_up_to: u64,
    /// When users who have left and whose limiter state has run out are next forgotten (every
    /// ping interval; always armed).
    next_sweep: Instant,
    timers: TimerTable,
    /// The site's bans and mutes (`site.rs`).
    moderation: Moderation,
    stats: Stats,
    /// Wakes the tasks of a broadcast to more than [`WAKES_PER_TURN`] in turns; the shell runs
    /// its turns ([`Hub::pacer`]).
    pacer: Pacer,
}

impl Hub {
    pub fn new(config: HubConfig, now: Now) -> Hub {
        let mut timers = TimerTable::default();
        if config.idle_timeout.is_some() {
            timers.set(Timer::IdleCheck, now.at + config.idle_check_interval);
        }
        let longest_history = match &config.channels {
            Some(policy) => policy.longest_history(),
            None => config.history_size,
        };
        let mut channels = HashMap::new();
        if config.channels.is_none() {
            channels
                .insert(Rc::from(ROOM), Box::new(Channel::new(Kind::room(config.history_size))));
        }
        Hub {
            next_sweep: now.at + config.ping_interval,
            timers,
            queue_bound: config.send_queue + longest_history + 1,
            config,
            conns: HashMap::new(),
            users: HashMap::new(),
            online: 0,
            cluster_online: None,
            next_conn: 1,
            last_message_id: 0,
            channels,
            dirty: Vec::new(),
            presence_due: None,
            expiries: BTreeSet::new(),
            ips: HashMap::new(),
            beats: BTreeSet::new(),
            departures: BTreeSet::new(),
            channel_departures: BTreeSet::new(),
            channel_leaving: HashMap::new(),
            dormant: BTreeSet::new(),
            evicted_up_to: 0,
            moderation: Moderation::default(),
            stats: Stats::default(),
            pacer: Pacer::default(),
        }
    }

    /// The wake-ups of large broadcasts, for the shell to hand out in turns (`outbox.rs`).
    pub fn pacer(&self) -> Pacer {
        self.pacer.clone()
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Distinct users with at least one open connection here.
    pub fn online(&self) -> usize {
        self.online
    }

    /// The count clients see: this instance's users, or in a cluster, everyone's (never fewer
    /// than are here, even before Redis has counted the newest).
    pub fn shown_online(&self) -> usize {
        self.cluster_online.unwrap_or(0).max(self.online)
    }

    /// Cluster: the users connected here, for the broker to write to Redis after a reconnect.
    /// A user within the presence grace after their last connection still counts.
    pub fn local_users(&self) -> impl Iterator<Item = &str> {
        self.users.iter().filter(|(_, u)| u.counts_online()).map(|(id, _)| &**id)
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Registers a new connection for a verified user. When the user is at
    /// `max_connections_per_user`, the oldest of their connections is removed first and returned
    /// in [`Connected::effects`] to be closed with [`CloseReason::Replaced`]; the online count
    /// does not change.
    ///
    /// The new connection's queue starts with `welcome` and then the history it should see: the
    /// messages after `since` when the history still holds them all (`"recovered": true`), or
    /// else the last `history.on_join`. Both are queued in this same step, so no live message
    /// can come between them, none is missing and none comes twice.
    pub fn connect(&mut self, now: Now, join: Join) -> Result<Connected, Refused> {
        let Join { identity, since, ip } = join;
        self.admits(now, &identity.user_id, ip)?;
        let existing = self.users.get(identity.user_id.as_str()).map_or(0, |u| u.conns.len());
        let user_key: Rc<str> = match self.users.get_key_value(identity.user_id.as_str()) {
            Some((key, _)) => key.clone(),
            None => {
                let key: Rc<str> = identity.user_id.as_str().into();
                self.users.insert(key.clone(), self.new_user(now));
                key
            }
        };
        let mut effects = Vec::new();
        while self.users[&user_key].conns.len() >= self.config.max_connections_per_user {
            let oldest = self.users[&user_key].conns[0];
            self.remove_replaced(now, oldest, &mut effects);
            self.stats.replacements += 1;
        }
        let conn = self.next_conn;
        self.next_conn += 1;
        let (tx, rx) = outbox();
        let expires = token_deadline(now, identity.expires_unix_secs, self.config.token_leeway);
        let username: Rc<str> = identity.username.into();
        let claims = identity.channels.into_boxed_slice();
        let replaced = !effects.is_empty();
        let user = self.users.get_mut(&user_key).expect("inserted above");
        user.conns.push(conn);
        // Back within the presence grace (a page refresh): they never stopped counting.
        let returning = user.leaving_at.take();
        if let Some(at) = returning {
            self.departures.remove(&(at, user_key.clone()));
        }
        let newly_online = user.conns.len() == 1 && !replaced && returning.is_none();
        let next_ping = now.at + first_ping_delay(conn, self.config.ping_interval);
        let beat_at = next_ping.min(now.at + self.config.pong_timeout);
        self.beats.insert((beat_at, conn));
        self.conns.insert(
            conn,
            Conn {
                user: user_key.clone(),
                username,
                outbox: tx,
                last_seen: now.at,
                next_ping,
                beat_at,
                last_chat: now.at,
                expires,
                ip,
                announced: false,
                channels: Vec::new(),
                claims,
            },
        );
        self.expiries.insert((expires, conn));
        *self.ips.entry(ip).or_insert(0) += 1;
        self.stats.connections_accepted += 1;
        if newly_online {
            self.online += 1;
            if self.config.cluster {
                effects.push(Effect::Presence {
                    user: user_key.clone(),
                    channel: None,
                    online: true,
                });
            }
        }
        if self.config.cluster && self.config.max_connections_per_user == 1 {
            effects.push(Effect::Announce { user: user_key.clone(), conn });
        }
        debug!(
            "user_id={} action={} old_exists={} total_clients={}",
            user_key,
            if replaced { "replace" } else { "register" },
            existing > 0,
            self.conns.len()
        );
        self.welcome(now, conn, since, &mut effects);
        self.presence_if_changed(now, &mut effects);
        Ok(Connected { conn, outbox: rx, effects })
    }

    /// Joins a new connection to its first channels and queues `welcome` and what follows it.
    /// Without channels, that is the room: `welcome` carries its count, and its history follows.
    /// With channels: the default channel, whose count and history go with `welcome` as the
    /// room's did (so a client written for one room keeps working), then each exact name in the
    /// token's claim, each with a `joined` frame and its history. `since` serves every one of
    /// them: ids are one sequence, and a connection receives them in order.
    fn welcome(&mut self, now: Now, conn: ConnId, since: Option<u64>, effects: &mut Vec<Effect>) {
        let (home, wanted): (Option<String>, Vec<String>) = match &self.config.channels {
            None => (Some(ROOM.into()), Vec::new()),
            Some(policy) => {
                let claimed = self.conns[&conn].claims.iter().filter_map(|p| match p {
                    Pattern::Exact(name) => Some(name.clone()),
                    Pattern::Prefix(_) => None,
                });
                (policy.default_channel().map(String::from), claimed.collect())
            }
        };
        let home = home.and_then(|name| self.enter(conn, &name, effects).ok());
        let mut joined = Vec::new();
        for name in wanted {
            if home.as_deref() == Some(name.as_str()) {
                continue;
            }
            match self.enter(conn, &name, effects) {
                Ok(key) => joined.push(key),
                // A claim naming a channel that is full, unknown or one too many: the token
                // still lets the user in, and `welcome` lists what was joined.
                Err(error) => debug!("conn={conn} not joined to {name}: {}", error.code()),
            }
        }
        let replay = home.as_ref().map(|key| self.replay(key, since));
        let online = home.as_ref().and_then(|key| self.shown_count(key));
        let c = &self.conns[&conn];
        let channels_mode = self.config.channels.is_some();
        let welcome = ServerMessage::Welcome {
            user_id: &c.user,
            username: &c.username,
            online,
            recovered: replay.and_then(|r| r.recovered),
            protocol: channels_mode.then_some(PROTOCOL_CHANNELS),
            channels: channels_mode.then(|| home.iter().chain(&joined).map(|k| &**k).collect()),
        };
        c.outbox.push(Frame::Text(welcome.to_json().into()));
        if let (Some(key), Some(replay)) = (&home, replay) {
            self.queue_replay(conn, key, replay);
            self.shown_to_joiner(key);
        }
        for key in joined {
            self.answer_join(now, conn, &key, since, false, effects);
        }
    }

    /// Puts the connection in the channel `name` (creating it), if the rules and limits allow;
    /// returns the channel's key. Already in it: nothing changes. Queues nothing.
    fn enter(
        &mut self,
        conn: ConnId,
        name: &str,
        effects: &mut Vec<Effect>,
    ) -> Result<Rc<str>, ChannelError> {
        let Some(c) = self.conns.get(&conn) else {
            return Err(ChannelError::NotJoined);
        };
        if let Some(key) = c.channels.iter().find(|k| ***k == *name) {
            return Ok(key.clone());
        }
        if c.channels.len() >= self.config.max_channels_per_connection {
            // Checked first: a refused join must not have made room by evicting a channel.
            self.check_access(name, c)?;
            return Err(ChannelError::TooManyChannels);
        }
        let user = c.user.clone();
        let key = match self.channels.get_key_value(name) {
            Some((key, channel)) => {
                self.check_access(name, c)?;
                let new_user = !channel.users.contains_key(&c.user);
                let max = channel.kind.max_members;
                if new_user && max > 0 && channel.counted() >= max {
                    return Err(ChannelError::ChannelFull);
                }
                key.clone()
            }
            None => {
                let kind = self.check_access(name, c)?.clone();
                self.create_channel(name, kind).ok_or(ChannelError::ServerFull)?
            }
        };
        let c = self.conns.get_mut(&conn).expect("looked up above");
        // Grown one at a time: most connections are in one channel (the room, or the default
        // one) or a few, and a join is rare next to a message. A first push would reserve four.
        c.channels.reserve_exact(1);
        c.channels.push(key.clone());
        let channel = self.channels.get_mut(&key).expect("found or created above");
        channel.members.insert(conn);
        let conns = channel.users.entry(user.clone()).or_insert(0);
        *conns += 1;
        let first = *conns == 1;
        let pair = (key.clone(), user);
        // Back within the grace: still counted, nothing to tell anyone.
        let returning = if first { self.channel_leaving.remove(&pair) } else { None };
        let newcomer = first && returning.is_none();
        let (_, user) = pair;
        if let Some(at) = returning {
            self.channel_departures.remove(&(at, key.clone(), user.clone()));
        }
        if newcomer {
            self.mark_dirty(&key);
            self.tell_cluster(&key, &user, true, effects);
        }
        self.settle(&key); // no longer dormant
        self.stats.joins += 1;
        Ok(key)
    }

    /// Whether the connection's user may join `name`; what the channel is like. Without a
    /// `channels` section only the room exists, and anyone may be in it.
    fn check_access(&self, name: &str, c: &Conn) -> Result<&Kind, ChannelError> {
        let Some(policy) = &self.config.channels else {
            return match self.channels.get(name) {
                Some(room) if name == ROOM => Ok(&room.kind),
                _ => Err(ChannelError::NoSuchChannel),
            };
        };
        policy.access(name, &c.user, &c.claims).map_err(|denied| match denied {
            crate::channels::Denied::NoSuchChannel => ChannelError::NoSuchChannel,
            crate::channels::Denied::Forbidden => ChannelError::Forbidden,
        })
    }

    /// Takes the connection out of a channel. A user whose last connection in it left by
    /// `leave` is gone from it at once; one whose connection closed (`closing`) still counts
    /// for the presence grace, so that a page refresh changes nobody's count.
    fn exit(
        &mut self,
        now: Now,
        conn: ConnId,
        (user, key): (&Rc<str>, &Rc<str>),
        closing: bool,
        effects: &mut Vec<Effect>,
    ) {
        let grace = self.config.presence_grace;
        let Some(channel) = self.channels.get_mut(key) else {
            return;
        };
        channel.members.remove(&conn);
        let Some(conns) = channel.users.get_mut(user) else {
            return;
        };
        *conns = conns.saturating_sub(1);
        if *conns == 0 {
            if closing && !grace.is_zero() {
                let at = now.at + grace;
                self.channel_leaving.insert((key.clone(), user.clone()), at);
                self.channel_departures.insert((at, key.clone(), user.clone()));
            } else {
                channel.users.remove(user);
                self.mark_dirty(key);
                self.tell_cluster(key, user, false, effects);
            }
        }
        self.settle(key);
    }

    /// After a change to who is in a channel or what it holds: frees a channel that nobody is
    /// in, nobody is leaving and that holds no history; files one that nobody is in but holds
    /// history as dormant, and takes it off that list when someone is back. The room of a
    /// server without channels is neither.
    fn settle(&mut self, key: &str) {
        let Some((key, channel)) = self.channels.get_key_value(key) else {
            return;
        };
        if self.config.channels.is_none() {
            return;
        }
        let key = key.clone();
        let occupied = !channel.members.is_empty() || !channel.users.is_empty();
        let last = channel.history.back().map(|(id, _)| *id);
        let dormant = if occupied { None } else { last };
        if channel.dormant != dormant {
            if let Some(id) = channel.dormant {
                self.dormant.remove(&(id, key.clone()));
            }
            if let Some(id) = dormant {
                self.dormant.insert((id, key.clone()));
            }
            if let Some(channel) = self.channels.get_mut(&key) {
                channel.dormant = dormant;
            }
        }
        if self.channels.get(&key).is_some_and(|c| c.is_unused()) {
            self.drop_channel(&key);
        }
    }

    /// Takes a channel out of the hub, and out of the flush list.
    fn drop_channel(&mut self, key: &str) {
        if let Some(channel) = self.channels.remove(key)
            && channel.dirty
        {
            self.dirty.retain(|k| **k != *key);
        }
    }

    /// A new channel, if there is room for it: at `limits.max_channels`, the dormant channel
    /// whose last message is the oldest is evicted with its history, so that channels filled
    /// with one message each cannot lock everyone out of new ones. A `since` before the newest
    /// evicted message cannot be trusted in a channel created after it (it may be an evicted
    /// one, back), so such a channel answers it with `"recovered": false`.
    fn create_channel(&mut self, name: &str, kind: Kind) -> Option<Rc<str>> {
        if self.channels.len() >= self.config.max_channels {
            let (last, victim) = self.dormant.pop_first()?;
            debug!("channel {victim} evicted with its history (last message {last})");
            self.drop_channel(&victim);
            self.evicted_up_to = self.evicted_up_to.max(last);
            self.stats.channels_evicted += 1;
        }
        let key: Rc<str> = name.into();
        let mut channel = Channel::new(kind);
        channel.forgotten_up_to = self.evicted_up_to;
        self.channels.insert(key.clone(), Box::new(channel));
        Some(key)
    }

    /// Cluster with channels: a user came into a channel here or left it, for its count across
    /// instances. Only channels whose count matters (presence, or a members limit).
    fn tell_cluster(&self, key: &Rc<str>, user: &Rc<str>, online: bool, effects: &mut Vec<Effect>) {
        let counted =
            self.channels.get(key).is_some_and(|c| c.kind.presence || c.kind.max_members > 0);
        if self.config.cluster && self.config.channels.is_some() && counted {
            effects.push(Effect::Presence {
                user: user.clone(),
                channel: Some(key.clone()),
                online,
            });
        }
    }

    /// The channel's count may have changed: the next flush looks at it.
    fn mark_dirty(&mut self, key: &Rc<str>) {
        if let Some(channel) = self.channels.get_mut(key)
            && !channel.dirty
        {
            channel.dirty = true;
            self.dirty.push(key.clone());
        }
    }

    /// The `online` count of a channel (`None` for one without presence): its distinct users;
    /// for the room in a cluster, everyone's (never fewer than are here).
    fn shown_count(&self, key: &str) -> Option<usize> {
        let channel = self.channels.get(key)?;
        if !channel.kind.presence {
            return None;
        }
        Some(channel.counted())
    }

    /// A `welcome` or `joined` just showed the channel's count to a joiner: if it differs
    /// from what the last `online` frame said, the next flush must tell everyone.
    fn shown_to_joiner(&mut self, key: &Rc<str>) {
        let shown = self.shown_count(key);
        if let Some(channel) = self.channels.get_mut(key)
            && shown.is_some_and(|n| n != channel.last_sent)
        {
            channel.welcome_differs = true;
            self.mark_dirty(key);
        }
    }

    /// What a connection joining the channel now is owed after `since`, counted.
    fn replay(&mut self, key: &str, since: Option<u64>) -> Replay {
        let on_join = self.config.history_on_join;
        let replay =
            self.channels.get(key).map_or(Replay { recovered: None, from: 0 }, |channel| {
                channel.replay_from(since, self.last_message_id, on_join)
            });
        match replay.recovered {
            Some(true) => self.stats.recoveries_recovered += 1,
            Some(false) => self.stats.recoveries_too_old += 1,
            None => {}
        }
        replay
    }

    /// Queues the channel's history from `replay.from` on.
    fn queue_replay(&self, conn: ConnId, key: &str, replay: Replay) {
        if let (Some(c), Some(channel)) = (self.conns.get(&conn), self.channels.get(key)) {
            for (_, text) in channel.history.range(replay.from..) {
                c.outbox.push(Frame::Text(text.clone()));
            }
        }
    }

    /// Queues `joined` and the history after `since`, in this one step: no live message of the
    /// channel can come between them. A replay is queued whole, and only to a queue below
    /// `send_queue`; a connection whose queue is full is closed as too slow, as a broadcast
    /// would close it.
    fn answer_join(
        &mut self,
        now: Now,
        conn: ConnId,
        key: &Rc<str>,
        since: Option<u64>,
        already_in: bool,
        effects: &mut Vec<Effect>,
    ) {
        let full = self.conns.get(&conn).is_some_and(|c| c.outbox.len() >= self.config.send_queue);
        if full {
            self.remove(now, conn, CloseReason::TooSlow, effects);
            return;
        }
        // Already in it: only an explicit `since` asks for a replay (a resync).
        let replay = match (already_in, since) {
            (true, None) => {
                let held = self.channels.get(&**key).map_or(0, |c| c.history.len());
                Replay { recovered: None, from: held }
            }
            _ => self.replay(key, since),
        };
        let joined = ServerMessage::Joined {
            channel: key,
            online: self.shown_count(key),
            recovered: replay.recovered,
        };
        if let Some(c) = self.conns.get(&conn) {
            c.outbox.push(Frame::Text(joined.to_json().into()));
        }
        self.queue_replay(conn, key, replay);
        self.shown_to_joiner(key);
    }

    /// The channel a chat frame goes to: the one it names, which the connection must be in, or
    /// without a name the default channel (the room without channels).
    fn chat_target(&self, c: &Conn, named: Option<String>) -> Result<Rc<str>, ProtocolError> {
        let name = match (named, &self.config.channels) {
            // Without channels a `channel` field is ignored, as every unknown field is.
            (_, None) => ROOM.to_string(),
            (Some(name), Some(_)) => name,
            (None, Some(policy)) => match policy.default_channel() {
                Some(default) => default.to_string(),
                None => {
                    return Err(ProtocolError::InvalidMessage("a chat message needs \"channel\""));
                }
            },
        };
        let Some(key) = c.channels.iter().find(|k| ***k == *name) else {
            let error = match self.check_access(&name, c) {
                Err(ChannelError::NoSuchChannel) => ChannelError::NoSuchChannel,
                _ => ChannelError::NotJoined,
            };
            return Err(ProtocolError::Channel(error, name));
        };
        if self.channels.get(&**key).is_some_and(|ch| ch.kind.read_only) {
            return Err(ProtocolError::Channel(ChannelError::ReadOnly, name));
        }
        Ok(key.clone())
    }

    /// Answers a refused channel frame with its `error`; counted, and not a violation (a page
    /// may ask for a channel it has lost, or one that filled up).
    fn refuse(&mut self, now: Now, conn: ConnId, error: ProtocolError, effects: &mut Vec<Effect>) {
        if matches!(error, ProtocolError::Channel(..)) {
            self.stats.channel_refusals += 1;
            self.send_error(now, conn, &error, effects);
        } else {
            self.stats.invalid_messages += 1;
            self.violation(now, conn, error, effects);
        }
    }

    /// Whether [`connect`](Self::connect) would take a connection of `user` from `ip` now,
    /// counting the user's oldest connection that it would replace. Changes nothing.
    pub fn admits(&self, now: Now, user: &str, ip: IpAddr) -> Result<(), Refused> {
        if let Some(ban) = self.moderation.banned(user, now.unix_ms / 1000) {
            return Err(Refused::Banned { until: ban.until });
        }
        let mine: &[ConnId] = self.users.get(user).map_or(&[], |u| &u.conns);
        // The oldest connections of this user that a new one replaces.
        let replacing =
            &mine[..(mine.len() + 1).saturating_sub(self.config.max_connections_per_user)];
        if self.conns.len() >= self.config.max_connections && replacing.is_empty() {
            return Err(Refused::Capacity);
        }
        let per_ip = self.config.max_connections_per_ip;
        if per_ip > 0 {
            let freed = replacing.iter().filter(|c| self.conns[*c].ip == ip).count();
            if self.ips.get(&ip).copied().unwrap_or(0) - freed >= per_ip {
                return Err(Refused::IpLimit);
            }
        }
        Ok(())
    }

    /// The connection's task has ended (the client closed, the socket failed, or the hub closed
    /// it earlier). Unknown connections are ignored.
    pub fn disconnect(&mut self, now: Now, conn: ConnId, reason: CloseReason) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.remove(now, conn, reason, &mut effects);
        if !effects.is_empty() {
            self.presence_if_changed(now, &mut effects);
        }
        effects
    }

    /// Cluster: a chat message from Redis, with the id Redis gave it, from any instance (this one
    /// included). Broadcast here unless its id is not above the last one seen: after a
    /// reconnect the same message can come both from the stream and from the channel, and it is
    /// delivered once.
    pub fn deliver(&mut self, now: Now, id: u64, text: Utf8Bytes) -> Vec<Effect> {
        let mut effects = Vec::new();
        if id > self.last_message_id {
            self.last_message_id = id;
            match self.channel_of_frame(&text) {
                Some(key) => self.record(&key, id, text, now, &mut effects),
                None => debug!("cluster: message {id} belongs to no channel here; dropped"),
            }
            self.presence_if_changed(now, &mut effects);
        }
        effects
    }

    /// Cluster: the number of distinct users on all instances, or `None` when it is unknown
    /// (Redis is unreachable) and clients should see this instance's count.
    pub fn set_cluster_online(&mut self, now: Now, count: Option<usize>) -> Vec<Effect> {
        self.cluster_online = count;
        // The room's count is the cluster's, as a channel's is its count across instances.
        if let Some(room) = self.channels.get_mut(ROOM) {
            room.cluster_count = count;
        }
        self.mark_dirty(&Rc::from(ROOM));
        if count.is_none() {
            // Redis is away: every channel shows this instance's own count.
            let counted: Vec<Rc<str>> = self
                .channels
                .iter_mut()
                .filter_map(|(key, c)| c.cluster_count.take().map(|_| key.clone()))
                .collect();
            for key in counted {
                self.mark_dirty(&key);
            }
        }
        let mut effects = Vec::new();
        self.presence_if_changed(now, &mut effects);
        effects
    }

    /// Cluster with channels: the distinct users of `channel` on all instances, as Redis counted
    /// them. Shown (and checked against `max_members`) as the larger of it and this instance's
    /// own count.
    pub fn set_channel_online(&mut self, now: Now, channel: &str, count: usize) -> Vec<Effect> {
        let mut effects = Vec::new();
        if let Some((key, c)) = self.channels.get_key_value(channel) {
            let key = key.clone();
            if c.cluster_count != Some(count) {
                if let Some(c) = self.channels.get_mut(&key) {
                    c.cluster_count = Some(count);
                }
                self.mark_dirty(&key);
                self.presence_if_changed(now, &mut effects);
            }
        }
        effects
    }

    /// The history a channel keeps by its rule (with channels; `None` for a name no rule
    /// covers).
    pub fn channel_history(&self, name: &str) -> Option<usize> {
        Some(self.config.channels.as_ref()?.kind_of(name)?.history)
    }

    /// Whether the channel is live here.
    pub fn has_channel(&self, name: &str) -> bool {
        self.channels.contains_key(name)
    }

    /// Cluster with channels: the channels whose users this instance reports, and so counts.
    pub fn counted_channels(&self) -> impl Iterator<Item = &str> {
        self.channels
            .iter()
            .filter(|(_, c)| (c.kind.presence || c.kind.max_members > 0) && !c.users.is_empty())
            .map(|(key, _)| &**key)
    }

    /// Cluster with channels: each (channel, user) this instance reports, for the broker to
    /// write to Redis after a reconnect. Users within the grace still count.
    pub fn local_channel_users(&self) -> impl Iterator<Item = (&str, &str)> {
        self.channels
            .iter()
            .filter(|(_, c)| c.kind.presence || c.kind.max_members > 0)
            .flat_map(|(key, c)| c.users.keys().map(move |user| (&**key, &**user)))
    }

    /// Cluster: this connection's [`Effect::Announce`] came back through Redis.
    ///
    /// Like every input it takes the time and returns effects, though it has none today: a
    /// later effect of it cannot be dropped by a caller that did not expect one.
    pub fn announced(&mut self, _now: Now, conn: ConnId) -> Vec<Effect> {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.announced = true;
        }
        Vec::new()
    }

    /// Cluster: `user` connected to another instance. Their connections here that Redis
    /// announced before that connection are older, and close ([`CloseReason::Replaced`]); one
    /// whose announcement
    /// is still on its way is newer, and stays (the other instance closes its own when the
    /// announcement reaches it). Every instance sees announcements in the same order, so exactly
    /// one connection survives.
    pub fn joined_elsewhere(&mut self, now: Now, user: &str) -> Vec<Effect> {
        let mut effects = Vec::new();
        let older: Vec<ConnId> = self.users.get(user).map_or(Vec::new(), |u| {
            u.conns.iter().copied().filter(|c| self.conns[c].announced).collect()
        });
        for conn in older {
            self.remove(now, conn, CloseReason::Replaced, &mut effects);
            self.stats.replaced_elsewhere += 1;
        }
        self.presence_if_changed(now, &mut effects);
        effects
    }

    /// Cluster: Redis could not take a chat message (its outbox was full); tell the sender.
    pub fn not_sent(&mut self, now: Now, conn: ConnId) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.send_error(now, conn, &ProtocolError::Unavailable, &mut effects);
        effects
    }

    /// A frame from a client. Frames from connections the hub no longer knows are ignored: a
    /// replaced connection's last frames are not delivered.
    pub fn receive(&mut self, now: Now, conn: ConnId, incoming: Incoming) -> Vec<Effect> {
        let mut effects = Vec::new();
        let Some(c) = self.conns.get_mut(&conn) else {
            return effects;
        };
        c.last_seen = now.at;
        if !matches!(incoming, Incoming::Alive) {
            self.stats.messages_received += 1;
        }
        match incoming {
            Incoming::Alive => {}
            Incoming::Ping => self.send_to(now, conn, ServerMessage::Pong.to_json(), &mut effects),
            Incoming::Chat { content, channel } => {
                c.last_chat = now.at;
                let user = c.user.clone();
                let c = &self.conns[&conn];
                match self.chat_target(c, channel) {
                    Err(error) => self.refuse(now, conn, error, &mut effects),
                    Ok(key) if self.take_token(&user, now) => {
                        let now_secs = now.unix_ms / 1000;
                        match self.moderation.muted(&user, &key, now_secs) {
                            Some(mute) => {
                                let error = ProtocolError::Muted {
                                    channel: mute.channel.clone(),
                                    until: mute.until,
                                    left_secs: mute.until - now_secs,
                                };
                                self.stats.muted_refusals += 1;
                                self.send_error(now, conn, &error, &mut effects);
                            }
                            None => self.broadcast_chat(now, conn, &key, &content, &mut effects),
                        }
                    }
                    Ok(_) => {
                        self.stats.rate_limited += 1;
                        self.violation(now, conn, ProtocolError::RateLimited, &mut effects);
                    }
                }
            }
            Incoming::Join { .. } | Incoming::Leave(_) if self.config.channels.is_none() => {
                // As before channels: an unknown type.
                self.stats.invalid_messages += 1;
                self.violation(now, conn, ProtocolError::UnsupportedType, &mut effects);
            }
            Incoming::Join { channel, since } => {
                let was_member = c.channels.iter().any(|k| **k == *channel);
                match self.enter(conn, &channel, &mut effects) {
                    Ok(key) => {
                        self.answer_join(now, conn, &key, since, was_member, &mut effects);
                    }
                    Err(error) => {
                        let error = ProtocolError::Channel(error, channel);
                        self.refuse(now, conn, error, &mut effects);
                    }
                }
            }
            Incoming::Leave(channel) => {
                let key = c
                    .channels
                    .iter()
                    .position(|k| **k == *channel)
                    .map(|i| c.channels.swap_remove(i));
                match key {
                    Some(key) => {
                        let user = c.user.clone();
                        self.exit(now, conn, (&user, &key), false, &mut effects);
                        self.stats.leaves += 1;
                        let left = ServerMessage::Left { channel: &key }.to_json();
                        self.send_to(now, conn, left, &mut effects);
                    }
                    None => {
                        let error = ProtocolError::Channel(ChannelError::NotJoined, channel);
                        self.refuse(now, conn, error, &mut effects);
                    }
                }
            }
            Incoming::Invalid(error) => {
                self.stats.invalid_messages += 1;
                self.violation(now, conn, error, &mut effects);
            }
            Incoming::Refresh(Ok(identity)) if *identity.user_id == *c.user => {
                let expires =
                    token_deadline(now, identity.expires_unix_secs, self.config.token_leeway);
                self.expiries.remove(&(c.expires, conn));
                c.expires = expires;
                c.claims = identity.channels.into_boxed_slice();
                self.expiries.insert((expires, conn));
            }
            Incoming::Refresh(result) => {
                self.stats.invalid_messages += 1;
                let why = result.err().unwrap_or("the token is for another user");
                self.violation(now, conn, ProtocolError::AuthFailed(why), &mut effects);
            }
        }
        self.presence_if_changed(now, &mut effects);
        effects
    }

    /// Runs every timer that is due: presence, heartbeat, idle cleanup, token expiry. Safe to
    /// call early or twice; a call with nothing due does nothing.
    pub fn handle_timeout(&mut self, now: Now) -> Vec<Effect> {
        let mut effects = Vec::new();
        while let Some(&(deadline, conn)) = self.expiries.first() {
            if deadline > now.at {
                break;
            }
            self.remove(now, conn, CloseReason::TokenExpired, &mut effects);
        }
        self.heartbeat(now, &mut effects);
        if now.at >= self.next_sweep {
            self.next_sweep = now.at + self.config.ping_interval;
            self.forget_departed(now);
            if self.moderation.expire(now.unix_ms / 1000) {
                effects.push(Effect::SaveModeration);
            }
        }
        if let Some(timeout) = self.config.idle_timeout
            && self.timers.is_due(Timer::IdleCheck, now.at)
        {
            self.timers.set(Timer::IdleCheck, now.at + self.config.idle_check_interval);
            let idle = |c: &Conn| now.at.saturating_duration_since(c.last_chat) >= timeout;
            self.remove_where(now, idle, CloseReason::Idle, &mut effects);
        }
        while let Some((at, user)) = self.departures.first().cloned() {
            if at > now.at {
                break;
            }
            self.departures.pop_first();
            if let Some(u) = self.users.get_mut(&user) {
                u.leaving_at = None;
            }
            self.depart(user, &mut effects);
        }
        while let Some((at, key, user)) = self.channel_departures.first().cloned() {
            if at > now.at {
                break;
            }
            self.channel_departures.pop_first();
            let pair = (key, user);
            if self.channel_leaving.get(&pair) != Some(&at) {
                continue;
            }
            self.channel_leaving.remove(&pair);
            let (key, user) = pair;
            if let Some(channel) = self.channels.get_mut(&key) {
                channel.users.remove(&user);
                self.mark_dirty(&key);
                self.tell_cluster(&key, &user, false, &mut effects);
                self.settle(&key);
            }
        }
        if self.timers.is_due(Timer::PresenceFlush, now.at) {
            self.flush_presence(now, &mut effects);
        }
        self.presence_if_changed(now, &mut effects);
        effects
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has work.
    pub fn poll_timeout(&self) -> Instant {
        let mut next = self.next_sweep;
        for at in [
            self.timers.next(),
            self.expiries.first().map(|&(at, _)| at),
            self.beats.first().map(|&(at, _)| at),
            self.departures.first().map(|(at, _)| *at),
            self.channel_departures.first().map(|(at, _, _)| *at),
        ]
        .into_iter()
        .flatten()
        {
            next = next.min(at);
        }
        next
    }

    /// The id of the last chat message broadcast (0 before the first).
    pub fn last_message_id(&self) -> u64 {
        self.last_message_id
    }

    /// Chat messages held for replay, in all channels.
    pub fn history_len(&self) -> usize {
        self.channels.values().map(|channel| channel.history.len()).sum()
    }

    /// Whether the connection is in the channel (the room: `""`). For tests.
    #[doc(hidden)]
    pub fn is_member(&self, conn: ConnId, channel: &str) -> bool {
        self.channels.get(channel).is_some_and(|c| c.members.contains(&conn))
    }

    /// Channels that hold at least one message. For tests.
    #[doc(hidden)]
    pub fn channels_with_history(&self) -> usize {
        self.channels.values().filter(|c| !c.history.is_empty()).count()
    }

    /// Live channels (with a member, a user within the grace, or history).
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Every message held for replay, in id order: what the history file keeps when it is
    /// compacted.
    pub fn held_history(&self) -> Vec<Utf8Bytes> {
        let mut held: Vec<&(u64, Utf8Bytes)> =
            self.channels.values().flat_map(|channel| &channel.history).collect();
        held.sort_unstable_by_key(|(id, _)| *id);
        held.into_iter().map(|(_, text)| text.clone()).collect()
    }

    /// Fills the history from a previous run, or in a cluster from Redis, (oldest first) and
    /// continues ids after the last. Nothing is broadcast: for start-up. Ids not above the last
    /// one held are skipped, so restoring twice does not duplicate. With channels each frame
    /// goes to the channel it names; a frame of a channel that no rule covers any more, or
    /// beyond `limits.max_channels`, is dropped. Whatever came before the first message of a
    /// channel may have been compacted away, so a `since` before it does not recover.
    pub fn restore(
        &mut self,
        _now: Now,
        messages: impl IntoIterator<Item = (u64, Utf8Bytes)>,
    ) -> Vec<Effect> {
        for (id, text) in messages {
            if id <= self.last_message_id {
                continue;
            }
            self.last_message_id = id;
            let Some(key) = self.channel_of_frame(&text) else {
                debug!("history: message {id} belongs to no channel here; dropped");
                continue;
            };
            if let Some(channel) = self.channels.get_mut(&key) {
                if channel.history.is_empty() {
                    channel.forgotten_up_to = channel.forgotten_up_to.max(id - 1);
                }
                channel.remember(id, text);
            }
            self.settle(&key);
        }
        Vec::new()
    }

    /// The channel a frame from the history file or from Redis goes to (created if need be, if
    /// a rule still covers it and there is room).
    fn channel_of_frame(&mut self, text: &str) -> Option<Rc<str>> {
        let Some(policy) = &self.config.channels else {
            return Some(Rc::from(ROOM));
        };
        let name = ChatHead::channel_of(text)?;
        if let Some((key, _)) = self.channels.get_key_value(name) {
            return Some(key.clone());
        }
        let kind = policy.kind_of(name)?.clone();
        self.create_channel(name, kind)
    }

    /// Removes every connection, to be closed with [`CloseReason::Shutdown`].
    pub fn shutdown(&mut self, now: Now) -> Vec<Effect> {
        let all: Vec<ConnId> = self.conns.keys().copied().collect();
        let mut effects = Vec::new();
        for conn in all {
            self.remove(now, conn, CloseReason::Shutdown, &mut effects);
        }
        effects
    }

    fn new_user(&self, now: Now) -> User {
        User {
            conns: Vec::new(),
            tokens: f64::from(self.config.rate_burst),
            tokens_at: now.at,
            violations: 0,
            violations_since: now.at,
            leaving_at: None,
        }
    }

    /// Takes the connection out of every map and hands back its queue to be closed.
    fn remove(&mut self, now: Now, conn: ConnId, reason: CloseReason, effects: &mut Vec<Effect>) {
        self.remove_inner(now, conn, reason, false, effects);
    }

    /// Removes a connection that a newer one of the same user, on this instance, replaces: the
    /// user stays online.
    fn remove_replaced(&mut self, now: Now, conn: ConnId, effects: &mut Vec<Effect>) {
        self.remove_inner(now, conn, CloseReason::Replaced, true, effects);
    }

    /// The only place a connection leaves the hub.
    fn remove_inner(
        &mut self,
        now: Now,
        conn: ConnId,
        reason: CloseReason,
        successor: bool,
        effects: &mut Vec<Effect>,
    ) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.expiries.remove(&(c.expires, conn));
        self.beats.remove(&(c.beat_at, conn));
        if let Some(n) = self.ips.get_mut(&c.ip) {
            *n -= 1;
            if *n == 0 {
                self.ips.remove(&c.ip);
            }
        }
        for key in &c.channels {
            self.exit(now, conn, (&c.user, key), true, effects);
        }
        if let Some(user) = self.users.get_mut(&c.user) {
            user.conns.retain(|&id| id != conn);
            if user.conns.is_empty() && !successor {
                let grace = self.config.presence_grace;
                if grace.is_zero() {
                    self.depart(c.user.clone(), effects);
                } else {
                    let at = now.at + grace;
                    user.leaving_at = Some(at);
                    self.departures.insert((at, c.user.clone()));
                }
            }
        }
        self.stats.disconnects[reason.index()] += 1;
        if reason == CloseReason::Heartbeat {
            self.stats.heartbeat_failures += 1;
        }
        debug!(
            "user_id={} action=unregister old_exists=true reason={} total_clients={}",
            c.user,
            reason.label(),
            self.conns.len()
        );
        effects.push(Effect::Close { conn, outbox: c.outbox, reason });
    }

    /// Queues a text frame for one connection (see [`push_or_close`](Self::push_or_close)).
    fn send_to(&mut self, now: Now, conn: ConnId, json: String, effects: &mut Vec<Effect>) {
        self.push_or_close(now, conn, Frame::Text(json.into()), effects);
    }

    /// Queues a frame for one connection, or closes it with [`CloseReason::TooSlow`] when its
    /// queue is full.
    fn push_or_close(&mut self, now: Now, conn: ConnId, frame: Frame, effects: &mut Vec<Effect>) {
        if let Some(c) = self.conns.get(&conn) {
            if c.outbox.len() >= self.config.send_queue {
                self.remove(now, conn, CloseReason::TooSlow, effects);
            } else {
                c.outbox.push(frame);
            }
        }
    }

    /// Queues an `error` frame for one connection.
    fn send_error(
        &mut self,
        now: Now,
        conn: ConnId,
        error: &ProtocolError,
        effects: &mut Vec<Effect>,
    ) {
        let json = ServerMessage::Error {
            code: error.code(),
            message: &error.message(),
            channel: error.channel(),
            until: error.until(),
        }
        .to_json();
        self.send_to(now, conn, json, effects);
    }

    /// Queues one frame for every member of a channel: O(members), whatever else the hub
    /// holds. The bytes are shared, not copied. A receiver whose queue is full is closed
    /// ([`CloseReason::TooSlow`]) rather than skipped, so no one loses messages silently. For
    /// more than [`WAKES_PER_TURN`] members, their tasks are woken in turns by the pacer, so
    /// that other traffic does not wait behind all of them (`outbox.rs`).
    /// Returns how many receivers it was queued for.
    fn broadcast(&mut self, now: Now, key: &str, frame: Frame, effects: &mut Vec<Effect>) -> u64 {
        let Some(channel) = self.channels.get(key) else {
            return 0;
        };
        let mut full = Vec::new();
        let pacer = (channel.members.len() > WAKES_PER_TURN).then_some(&self.pacer);
        for conn in &channel.members {
            if let Some(c) = self.conns.get(conn)
                && !c.outbox.push_below(frame.clone(), self.config.send_queue, pacer)
            {
                full.push(*conn);
            }
        }
        let queued = channel.members.len() - full.len();
        for conn in full {
            self.remove(now, conn, CloseReason::TooSlow, effects);
        }
        queued as u64
    }

    /// Removes every connection for which `pred` holds.
    fn remove_where(
        &mut self,
        now: Now,
        pred: impl Fn(&Conn) -> bool,
        reason: CloseReason,
        effects: &mut Vec<Effect>,
    ) {
        let matching: Vec<ConnId> =
            self.conns.iter().filter(|(_, c)| pred(c)).map(|(id, _)| *id).collect();
        for conn in matching {
            self.remove(now, conn, reason, effects);
        }
    }

    /// An accepted chat message: broadcast to its channel with the next id, or in a cluster,
    /// published.
    fn broadcast_chat(
        &mut self,
        now: Now,
        from: ConnId,
        key: &Rc<str>,
        content: &str,
        effects: &mut Vec<Effect>,
    ) {
        let c = &self.conns[&from];
        let channel = self.config.channels.is_some().then_some(&**key);
        let head = ChatHead::new(channel, &c.user, &c.username, content, now.unix_ms);
        if self.config.cluster {
            effects.push(Effect::Publish { from, head });
            return;
        }
        self.last_message_id += 1;
        let text = Utf8Bytes::from(head.into_frame(self.last_message_id));
        if self.config.persist_history {
            effects.push(Effect::Persist { line: text.clone() });
        }
        self.record(key, self.last_message_id, text, now, effects);
    }

    /// Keeps a message in its channel's history and broadcasts it to the channel's members; in
    /// a private conversation, tells the other user's connections that are not in it. Every
    /// instance of a cluster does this for the messages Redis delivers.
    fn record(&mut self, key: &str, id: u64, text: Utf8Bytes, now: Now, effects: &mut Vec<Effect>) {
        if let Some(channel) = self.channels.get_mut(key) {
            channel.remember(id, text.clone());
        }
        if dm_members(key).is_some() {
            self.notify_dm(now, key, &text, effects);
        }
        self.stats.deliveries += self.broadcast(now, key, Frame::Text(text), effects);
        self.stats.messages_broadcast += 1;
        self.settle(key);
    }

    /// A private conversation has a new message (`frame`): `dm` to each connection of the other
    /// user that is not in it, so that the page can show the conversation and join it.
    fn notify_dm(&mut self, now: Now, key: &str, frame: &str, effects: &mut Vec<Effect>) {
        #[derive(serde::Deserialize)]
        struct Sender<'a> {
            user_id: &'a str,
            username: &'a str,
        }
        let (Some((a, b)), Ok(sender)) = (dm_members(key), serde_json::from_str::<Sender>(frame))
        else {
            return;
        };
        let other = if sender.user_id == a { b } else { a };
        let Some(user) = self.users.get(other) else {
            return;
        };
        let members = self.channels.get(key).map(|channel| &channel.members);
        let outside: Vec<ConnId> = user
            .conns
            .iter()
            .copied()
            .filter(|conn| members.is_none_or(|m| !m.contains(conn)))
            .collect();
        if outside.is_empty() {
            return;
        }
        let notice =
            ServerMessage::Dm { channel: key, user_id: sender.user_id, username: sender.username }
                .to_json();
        for conn in outside {
            self.send_to(now, conn, notice.clone(), effects);
        }
    }

    /// Refills the user's bucket for the time passed and takes one token if there is one.
    fn take_token(&mut self, user: &str, now: Now) -> bool {
        let (rate, burst) = (self.config.rate_per_sec, f64::from(self.config.rate_burst));
        let Some(u) = self.users.get_mut(user) else {
            return false;
        };
        let elapsed = now.at.saturating_duration_since(u.tokens_at).as_secs_f64();
        u.tokens = (u.tokens + elapsed * rate).min(burst);
        u.tokens_at = now.at;
        if u.tokens >= 1.0 {
            u.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Answers a bad frame with an `error` frame and counts it against the user; too many within
    /// [`VIOLATION_WINDOW`] close the connection ([`CloseReason::Policy`]).
    fn violation(
        &mut self,
        now: Now,
        conn: ConnId,
        error: ProtocolError,
        effects: &mut Vec<Effect>,
    ) {
        self.send_error(now, conn, &error, effects);
        let Some(user) = self.conns.get(&conn).and_then(|c| self.users.get_mut(&c.user)) else {
            return;
        };
        if now.at.saturating_duration_since(user.violations_since) >= VIOLATION_WINDOW {
            user.violations = 0;
            user.violations_since = now.at;
        }
        user.violations += 1;
        if user.violations >= self.config.violations_before_close {
            self.remove(now, conn, CloseReason::Policy, effects);
        }
    }

    /// Runs every heartbeat entry that is due: a connection silent for the pong timeout is
    /// closed (at its own deadline, not at the next tick), one whose Ping is due gets it, and the
    /// entry moves to the connection's next deadline. A Ping sent late (the loop was busy: a
    /// restart's handshakes, a broadcast to everyone) keeps the connection's own phase, or every
    /// connection delayed by the same stall would be pinged in one burst every interval after.
    fn heartbeat(&mut self, now: Now, effects: &mut Vec<Effect>) {
        let (ping_interval, pong_timeout) = (self.config.ping_interval, self.config.pong_timeout);
        while let Some(&(at, conn)) = self.beats.first() {
            if at > now.at {
                break;
            }
            let Some(c) = self.conns.get_mut(&conn) else {
                self.beats.pop_first();
                continue;
            };
            let silence_ends = c.last_seen + pong_timeout;
            if now.at >= silence_ends {
                // Takes the entry out with the connection.
                self.remove(now, conn, CloseReason::Heartbeat, effects);
                continue;
            }
            self.beats.pop_first();
            let ping = now.at >= c.next_ping;
            if ping {
                c.next_ping = next_on_phase(c.next_ping, now.at, ping_interval);
            }
            c.beat_at = c.next_ping.min(silence_ends);
            self.beats.insert((c.beat_at, conn));
            if ping {
                self.push_or_close(now, conn, Frame::Ping, effects);
            }
        }
    }

    /// Forgets users who have left and whose limiter and violation state has run out.
    fn forget_departed(&mut self, now: Now) {
        let refill =
            Duration::from_secs_f64(f64::from(self.config.rate_burst) / self.config.rate_per_sec);
        self.users.retain(|_, u| {
            u.counts_online()
                || now.at.saturating_duration_since(u.tokens_at) < refill
                || now.at.saturating_duration_since(u.violations_since) < VIOLATION_WINDOW
        });
    }

    /// The user stops counting as online (their last connection closed, and the presence grace,
    /// if any, is over).
    fn depart(&mut self, user: Rc<str>, effects: &mut Vec<Effect>) {
        self.online -= 1;
        if self.config.cluster {
            effects.push(Effect::Presence { user, channel: None, online: false });
        }
    }

    /// Some channel's count may have changed: if one really differs from its last `online`
    /// frame, flush now when the last flush is old enough, or arm the flush for when it is.
    /// While the flush is armed this does nothing: the flush looks at every dirty channel.
    fn presence_if_changed(&mut self, now: Now, effects: &mut Vec<Effect>) {
        if self.dirty.is_empty() || self.timers.is_armed(Timer::PresenceFlush) {
            return;
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.retain(|key| {
            let differs = self.presence_differs(key);
            if !differs && let Some(channel) = self.channels.get_mut(key) {
                channel.dirty = false;
            }
            differs
        });
        self.dirty = dirty;
        if self.dirty.is_empty() {
            return;
        }
        let due = self.presence_due.unwrap_or(now.at);
        if now.at >= due {
            self.flush_presence(now, effects);
        } else {
            self.timers.set(Timer::PresenceFlush, due);
        }
    }

    /// Whether the channel's count is not what its last `online` frame (or a `welcome` or
    /// `joined` since) said.
    fn presence_differs(&self, key: &str) -> bool {
        match (self.shown_count(key), self.channels.get(key)) {
            (Some(shown), Some(channel)) => shown != channel.last_sent || channel.welcome_differs,
            _ => false,
        }
    }

    /// Sends one `online` frame to each dirty channel whose count differs.
    fn flush_presence(&mut self, now: Now, effects: &mut Vec<Effect>) {
        self.timers.stop(Timer::PresenceFlush);
        // Connections that got an `online` frame in this flush.
        let mut reached = 0;
        for key in std::mem::take(&mut self.dirty) {
            let differs = self.presence_differs(&key);
            let shown = self.shown_count(&key);
            let Some(channel) = self.channels.get_mut(&key) else {
                continue;
            };
            channel.dirty = false;
            if let (true, Some(count)) = (differs, shown) {
                channel.welcome_differs = false;
                channel.last_sent = count;
                let name = self.config.channels.is_some().then_some(&*key);
                let json = ServerMessage::Online { channel: name, count }.to_json();
                reached += channel.members.len();
                self.broadcast(now, &key, Frame::Text(json.into()), effects);
            }
        }
        if reached > 0 {
            // A count in a channel of 100 000 is a broadcast to 100 000: at most
            // `presence_deliveries_per_sec` of those a second, so that presence under steady
            // arrivals cannot take the core that the chat needs.
            let budget = f64::from(self.config.presence_deliveries_per_sec.max(1));
            let paced = Duration::from_secs_f64(reached as f64 / budget);
            self.presence_due = Some(now.at + self.config.presence_interval.max(paced));
        }
    }

    /// Checks the hub's invariants; panics with a description when one is broken. For tests.
    #[doc(hidden)]
    pub fn check_invariants(&self) {
        let mut seen = 0;
        let mut online = 0;
        for (user, u) in &self.users {
            assert!(
                u.conns.len() <= self.config.max_connections_per_user,
                "{user} has {} connections",
                u.conns.len()
            );
            for id in &u.conns {
                let c = self.conns.get(id).expect("a user's connection is registered");
                assert_eq!(&c.user, user, "connection {id} filed under the wrong user");
            }
            seen += u.conns.len();
            online += usize::from(u.counts_online());
            let departing = u.leaving_at.map(|at| (at, user.clone()));
            assert!(u.conns.is_empty() || departing.is_none(), "{user} leaving while connected");
            if let Some(entry) = departing {
                assert!(self.departures.contains(&entry), "{user}'s departure is scheduled");
            }
        }
        assert_eq!(
            self.departures.len(),
            self.users.values().filter(|u| u.leaving_at.is_some()).count(),
            "one departure per leaving user"
        );
        assert_eq!(self.beats.len(), self.conns.len(), "one heartbeat entry per connection");
        assert_eq!(seen, self.conns.len(), "every connection belongs to exactly one user");
        assert_eq!(online, self.online, "online count is the number of distinct users");
        assert_eq!(self.expiries.len(), self.conns.len(), "one token deadline per connection");
        assert_eq!(self.ips.values().sum::<usize>(), self.conns.len(), "per-address counts");
        for (ip, n) in &self.ips {
            assert_eq!(*n, self.conns.values().filter(|c| c.ip == *ip).count());
        }
        for (id, c) in &self.conns {
            assert!(self.expiries.contains(&(c.expires, *id)));
            assert!(self.beats.contains(&(c.beat_at, *id)));
            assert!(c.outbox.len() <= self.queue_bound, "queue over its bound");
            assert!(c.channels.len() <= self.config.max_channels_per_connection);
            for (i, key) in c.channels.iter().enumerate() {
                assert!(!c.channels[..i].contains(key), "{id} in {key} twice");
                let channel = self.channels.get(key).expect("a connection's channel is live");
                assert!(channel.members.contains(id), "{id} missing from {key}'s members");
                assert!(channel.users.get(&c.user).is_some_and(|n| *n > 0));
            }
        }
        assert!(self.conns.len() <= self.config.max_connections);
        self.check_channels();
    }

    fn check_channels(&self) {
        assert!(self.channels.len() <= self.config.max_channels.max(1), "too many channels");
        let mut leaving = 0;
        for (key, channel) in &self.channels {
            if self.config.channels.is_some() {
                assert!(!channel.is_unused(), "unused channel {key:?} kept");
            } else {
                assert_eq!(&**key, ROOM, "only the room without channels");
            }
            assert!(channel.history.len() <= channel.kind.history);
            assert!(
                channel.history.iter().zip(channel.history.iter().skip(1)).all(|(a, b)| a.0 < b.0)
            );
            let mut per_user: HashMap<&str, u32> = HashMap::new();
            for conn in &channel.members {
                let c = self.conns.get(conn).expect("a member is a live connection");
                assert!(c.channels.contains(key), "{conn} is a member of {key:?} it does not list");
                *per_user.entry(&c.user).or_default() += 1;
            }
            for (user, conns) in &channel.users {
                assert_eq!(
                    *conns,
                    per_user.get(&**user).copied().unwrap_or(0),
                    "{user} in {key:?}"
                );
                let at = self.channel_leaving.get(&(key.clone(), user.clone()));
                assert_eq!(*conns == 0, at.is_some(), "{user} in {key:?}");
                if let Some(at) = at {
                    leaving += 1;
                    assert!(self.channel_departures.contains(&(*at, key.clone(), user.clone())));
                }
            }
            assert_eq!(channel.dirty, self.dirty.contains(key), "{key:?}'s dirty flag");
            let occupied = !channel.members.is_empty() || !channel.users.is_empty();
            let dormant = channel.history.back().map(|(id, _)| *id).filter(|_| !occupied);
            if self.config.channels.is_some() {
                assert_eq!(channel.dormant, dormant, "{key:?} dormant");
            }
            if let Some(id) = dormant.filter(|_| self.config.channels.is_some()) {
                assert!(self.dormant.contains(&(id, key.clone())), "{key:?} in the dormant list");
            }
        }
        assert_eq!(self.channel_departures.len(), leaving, "one departure per leaving member");
        assert_eq!(self.channel_leaving.len(), leaving, "every leaving member is in a channel");
        assert_eq!(
            self.dormant.len(),
            self.channels.values().filter(|c| c.dormant.is_some()).count(),
            "one dormant entry per dormant channel"
        );
        assert_eq!(self.dirty.len(), self.channels.values().filter(|c| c.dirty).count());
    }
}

impl User {
    /// Connected, or within the presence grace after the last connection closed.
    fn counts_online(&self) -> bool {
        !self.conns.is_empty() || self.leaving_at.is_some()
    }
}

/// When a new connection gets its first Ping: between half and the whole ping interval, spread
/// by the connection id, so that connections that arrive together (a restart, a reconnect
/// storm) are not all pinged in the same instant ever after.
fn first_ping_delay(conn: ConnId, ping_interval: Duration) -> Duration {
    // Fibonacci hashing: consecutive ids land far apart in [0, 1).
    let spread = (conn.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
    ping_interval.mul_f64(0.5 + spread / 2.0)
}

/// `online` deliveries a second, at most, by default ([`HubConfig::presence_deliveries_per_sec`]):
/// about a tenth of a core at the 13 µs a delivery to an idle connection costs
/// (`BENCHMARKS.md`), so a channel of up to 10 000 members gets its count every
/// `presence_interval_ms`, and one of 100 000 every 10 s.
pub const PRESENCE_DELIVERIES_PER_SEC: u32 = 10_000;

/// The first instant after `now` that is `due` plus a whole number of `interval`s: a timer that
/// fired late stays on its own phase.
fn next_on_phase(due: Instant, now: Instant, interval: Duration) -> Instant {
    let late = now.saturating_duration_since(due).as_nanos();
    let intervals = late / interval.as_nanos().max(1) + 1;
    due + interval.saturating_mul(u32::try_from(intervals).unwrap_or(u32::MAX))
}

/// The instant a token's `exp` (plus leeway) is reached, on the monotonic clock.
fn token_deadline(now: Now, exp_unix_secs: u64, leeway: Duration) -> Instant {
    let deadline_ms = exp_unix_secs.saturating_mul(1000).saturating_add(leeway.as_millis() as u64);
    now.at + Duration::from_millis(deadline_ms.saturating_sub(now.unix_ms))
}

mod channel;
pub mod moderation;
mod site;
pub use site::{Action, Outcome, Post, Present, SITE_TICKETS, SiteError};
#[doc(hidden)]
pub mod sim;
#[cfg(test)]
mod tests;
mod timers;
