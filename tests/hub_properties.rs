//! Property tests of the hub: random sequences of connects, refreshes, messages, bad frames,
//! disconnects, reads and time jumps, with the invariants checked after every event. In cluster
//! mode, Redis is played by the model: it numbers published messages, delivers them (and other
//! instances' messages, and duplicates, as a catch-up after a reconnect would), echoes
//! announcements and reports counts. With channels, connections also join and leave channels of
//! every rule kind and chat in them; every accepted message must reach exactly the connections
//! that were members of its channel when it was accepted, once, in order.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::Value;
use shequ_chat::channels::Pattern;
use shequ_chat::hub::sim::{Sim, test_channels};
use shequ_chat::hub::{ConnId, Effect, Hub, HubConfig, Identity, Incoming, Join, Now};
use shequ_chat::outbox::{Frame, OutboxRx};
use shequ_chat::protocol::{ChatHead, CloseReason, ProtocolError};

const USERS: u8 = 5;
const RATE_PER_SEC: f64 = 5.0;
const BURST: u32 = 4;

#[derive(Debug, Clone)]
enum Op {
    /// A user connects, optionally resuming after a message id.
    Connect {
        user: u8,
        since: Option<u8>,
        reader: bool,
    },
    Disconnect(usize),
    Chat(usize),
    Invalid(usize),
    Ping(usize),
    Alive(usize),
    /// A non-reading connection's writer takes what is queued.
    Drain(usize),
    Refresh {
        conn: usize,
        user: u8,
    },
    Advance(u16),
    /// Cluster: Redis numbers up to this many published messages and delivers them, and then
    /// one from another instance.
    RedisDelivers(u8),
    /// Cluster: a message already delivered comes again.
    Redeliver(usize),
    /// Cluster: the next announcement comes back from Redis.
    AnnounceBack,
    /// Cluster: this user connected to another instance.
    Elsewhere(u8),
    /// Cluster: Redis counted the users (or is unreachable).
    Count(Option<u8>),
    /// Channels: join one of [`CHANNELS`]; `since` only when the connection has seen nothing
    /// of it (else it resumes after the last it saw, as the page does), and none when it is in it.
    Join {
        conn: usize,
        channel: usize,
        since: Option<u8>,
    },
    Leave {
        conn: usize,
        channel: usize,
    },
    Say {
        conn: usize,
        channel: usize,
    },
}

/// The channels the model uses: one of each rule kind, a private conversation, a name no rule
/// covers.
const CHANNELS: [&str; 10] = [
    "general", "forum:0", "forum:1", "forum:2", "staff", "news", "quiet:0", "room:0", "dm:u0:u1",
    "nowhere",
];

fn channels_config() -> HubConfig {
    HubConfig {
        channels: Some(test_channels(16)),
        max_channels: 6,
        max_channels_per_connection: 4,
        ..config()
    }
}

fn channel_op() -> impl Strategy<Value = Op> {
    let channel = 0..CHANNELS.len();
    prop_oneof![
        6 => op(),
        3 => (any::<usize>(), channel.clone(), proptest::option::of(0u8..30))
            .prop_map(|(conn, channel, since)| Op::Join { conn, channel, since }),
        1 => (any::<usize>(), channel.clone()).prop_map(|(conn, channel)| Op::Leave { conn, channel }),
        4 => (any::<usize>(), channel).prop_map(|(conn, channel)| Op::Say { conn, channel }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..USERS, proptest::option::of(0u8..40), any::<bool>())
            .prop_map(|(user, since, reader)| Op::Connect { user, since, reader }),
        1 => any::<usize>().prop_map(Op::Disconnect),
        6 => any::<usize>().prop_map(Op::Chat),
        1 => any::<usize>().prop_map(Op::Invalid),
        1 => any::<usize>().prop_map(Op::Ping),
        1 => any::<usize>().prop_map(Op::Alive),
        2 => any::<usize>().prop_map(Op::Drain),
        1 => (any::<usize>(), 0..USERS).prop_map(|(conn, user)| Op::Refresh { conn, user }),
        3 => (0u16..40_000).prop_map(Op::Advance),
    ]
}

fn cluster_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => op(),
        3 => (1u8..4).prop_map(Op::RedisDelivers),
        1 => any::<usize>().prop_map(Op::Redeliver),
        2 => Just(Op::AnnounceBack),
        1 => (0..USERS).prop_map(Op::Elsewhere),
        1 => proptest::option::of(0u8..10).prop_map(Op::Count),
    ]
}

/// How long a departed user still counts as online.
const PRESENCE_GRACE: Duration = Duration::from_secs(2);

fn config() -> HubConfig {
    HubConfig {
        max_connections: 12,
        max_connections_per_user: 2,
        max_connections_per_ip: 0,
        send_queue: 24,
        rate_per_sec: RATE_PER_SEC,
        rate_burst: BURST,
        violations_before_close: 3,
        ping_interval: Duration::from_secs(10),
        pong_timeout: Duration::from_secs(25),
        idle_timeout: Some(Duration::from_secs(60)),
        idle_check_interval: Duration::from_secs(5),
        presence_interval: Duration::from_millis(500),
        presence_deliveries_per_sec: 50,
        presence_grace: PRESENCE_GRACE,
        token_leeway: Duration::from_secs(0),
        history_size: 16,
        history_on_join: 4,
        persist_history: false,
        cluster: false,
        channels: None,
        max_channels: 100,
        max_channels_per_connection: 8,
    }
}

struct Conn {
    user: String,
    reader: bool,
    /// Ids of the chat messages the connection's writer has taken, in order.
    ids: Vec<u64>,
    /// The last id taken per channel (`""` without channels).
    last: HashMap<String, u64>,
    closed: Option<CloseReason>,
    /// Cluster: its announcement came back.
    announced: bool,
}

impl Conn {
    /// What the connection's writer does: take every queued frame. Ids must keep increasing in
    /// each channel (a channel joined later replays ids older than another's live ones).
    fn take(&mut self, rx: &OutboxRx) {
        for (channel, id) in chat_ids(&rx.drain()) {
            let last = self.last.entry(channel).or_default();
            assert!(id > *last, "id {id} after {last}: out of order or twice");
            *last = id;
            self.ids.push(id);
        }
    }
}

/// The hub on the shared simulator, and what the model expects of it.
struct Model {
    sim: Sim,
    state: State,
    /// The hub has a `channels` section.
    channels: bool,
}

struct State {
    start: Instant,
    conns: Vec<(ConnId, Conn)>,
    /// For each accepted message: the connections live from before it to after it.
    owed: Vec<(u64, Vec<ConnId>)>,
    /// Chat messages admitted per user.
    admitted: HashMap<String, u64>,
    /// Cluster: published and not yet numbered, Redis's counter, what it delivered, the
    /// announcements on their way, and each user's last presence effect.
    published: VecDeque<ChatHead>,
    redis_id: u64,
    delivered: Vec<(u64, String)>,
    announcements: VecDeque<ConnId>,
    presence: HashMap<String, bool>,
    /// Cluster with channels: each (channel, user)'s last presence effect.
    channel_presence: HashMap<(String, String), bool>,
    /// When each user's last connection closed, while they have none.
    left_at: HashMap<String, Instant>,
}

/// A connection's queue, open or closed.
fn rx(sim: &Sim, id: ConnId) -> &OutboxRx {
    sim.open.get(&id).or_else(|| sim.closed.get(&id).map(|(_, rx)| rx)).expect("a queue")
}

impl State {
    fn conn(&mut self, id: ConnId) -> &mut Conn {
        &mut self.conns.iter_mut().find(|(c, _)| *c == id).unwrap().1
    }

    /// Follows the effects as the simulator performs them: who published, presence said once
    /// per change, announcements, and the connections closed (their writer takes what was
    /// queued before the close).
    fn perform(&mut self, sim: &mut Sim, effects: Vec<Effect>) {
        let closed = sim.perform_with(effects, |sim, effect| match effect {
            Effect::Publish { from, head } => {
                assert!(sim.open.contains_key(from), "published for a closed connection");
                let user = self.conn(*from).user.clone();
                *self.admitted.entry(user).or_default() += 1;
                self.published.push_back(head.clone());
            }
            Effect::Presence { user, channel: None, online } => {
                let before = self.presence.insert(user.to_string(), *online);
                assert_ne!(before.unwrap_or(false), *online, "{user}: presence said twice");
            }
            Effect::Presence { user, channel: Some(channel), online } => {
                let key = (channel.to_string(), user.to_string());
                let before = self.channel_presence.insert(key, *online);
                assert_ne!(before.unwrap_or(false), *online, "{user} in {channel}: said twice");
            }
            Effect::Announce { conn, .. } => self.announcements.push_back(*conn),
            Effect::Close { .. }
            | Effect::Persist { .. }
            | Effect::SaveModeration
            | Effect::RewriteHistory
            | Effect::Share(_) => {}
        });
        for id in closed {
            let (reason, rx) = &sim.closed[&id];
            let c = self.conn(id);
            c.closed = Some(*reason);
            c.take(rx);
            let user = c.user.clone();
            if !self.conns.iter().any(|(_, c)| c.user == user && c.closed.is_none()) {
                self.left_at.insert(user, sim.now.at);
            }
        }
    }

    /// Connections that read keep their queues drained, as a live client's writer would.
    fn readers_read(&mut self, sim: &Sim) {
        for (id, c) in &mut self.conns {
            if c.reader && c.closed.is_none() {
                c.take(rx(sim, *id));
            }
        }
    }

    fn open_ids(&self) -> Vec<ConnId> {
        self.conns.iter().filter(|(_, c)| c.closed.is_none()).map(|(id, _)| *id).collect()
    }
}

impl Model {
    fn new(config: HubConfig) -> Model {
        let channels = config.channels.is_some();
        let sim = Sim::new(config, 1_764_200_000_000);
        let state = State {
            start: sim.now.at,
            conns: Vec::new(),
            owed: Vec::new(),
            admitted: HashMap::new(),
            published: VecDeque::new(),
            redis_id: 0,
            delivered: Vec::new(),
            announcements: VecDeque::new(),
            presence: HashMap::new(),
            channel_presence: HashMap::new(),
            left_at: HashMap::new(),
        };
        Model { sim, state, channels }
    }

    fn pick(&self, i: usize) -> Option<ConnId> {
        let open = self.state.open_ids();
        (!open.is_empty()).then(|| open[i % open.len()])
    }

    fn identity(&self, user: u8) -> Identity {
        Identity {
            user_id: format!("u{user}"),
            username: format!("user {user}"),
            expires_unix_secs: self.sim.now.unix_ms / 1000 + 3600,
            // Even users may read staff.
            channels: if user.is_multiple_of(2) {
                vec![Pattern::parse("staff").unwrap()]
            } else {
                Vec::new()
            },
        }
    }

    /// Feeds one input through the simulator, the model following its effects.
    fn apply(&mut self, step: impl FnOnce(&mut Hub, Now) -> Vec<Effect>) {
        let effects = step(&mut self.sim.hub, self.sim.now);
        self.state.perform(&mut self.sim, effects);
    }

    fn readers_read(&mut self) {
        self.state.readers_read(&self.sim);
    }

    fn open_ids(&self) -> Vec<ConnId> {
        self.state.open_ids()
    }

    /// Hands the hub one message from Redis, and records who was owed it.
    fn deliver(&mut self, id: u64, text: String) {
        // Owed to the members of the frame's channel (everyone, without channels).
        let channel = ChatHead::channel_of(&text).unwrap_or("").to_string();
        let live_before: Vec<ConnId> = self
            .open_ids()
            .into_iter()
            .filter(|c| channel.is_empty() || self.sim.hub.is_member(*c, &channel))
            .collect();
        let frame = text.clone();
        self.apply(|hub, now| hub.deliver(now, id, frame.into()));
        let live_after: HashSet<ConnId> = self.open_ids().into_iter().collect();
        let owed = live_before.into_iter().filter(|c| live_after.contains(c));
        self.state.owed.push((id, owed.collect()));
        self.state.delivered.push((id, text));
        self.readers_read();
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Connect { user, since, reader } => {
                let join = Join {
                    identity: self.identity(user),
                    since: since.map(u64::from),
                    ip: IpAddr::from([127, 0, 0, 1]),
                };
                if let Ok(connected) = self.sim.hub.connect(self.sim.now, join) {
                    let conn = Conn {
                        user: format!("u{user}"),
                        reader,
                        ids: Vec::new(),
                        last: HashMap::new(),
                        closed: None,
                        announced: false,
                    };
                    self.sim.open.insert(connected.conn, connected.outbox);
                    self.state.conns.push((connected.conn, conn));
                    self.state.left_at.remove(&format!("u{user}"));
                    self.state.perform(&mut self.sim, connected.effects);
                }
            }
            Op::Disconnect(i) => {
                if let Some(id) = self.pick(i) {
                    self.apply(|hub, now| hub.disconnect(now, id, CloseReason::Client));
                }
            }
            Op::Chat(i) => self.say(i, None),
            Op::Say { conn, channel } => self.say(conn, Some(CHANNELS[channel])),
            Op::Join { conn, channel, since } => {
                if let Some(id) = self.pick(conn) {
                    let channel = CHANNELS[channel];
                    // A member asking again with `since` asks for a resync, and gets what is
                    // still on its way once more; the page never does that.
                    let member = self.sim.hub.is_member(id, channel);
                    // A page joins after reading what it had (up to its `left`).
                    let queue = rx(&self.sim, id);
                    self.state.conn(id).take(queue);
                    let seen = self.state.conn(id).last.get(channel).copied();
                    let since = if member { None } else { seen.or(since.map(u64::from)) };
                    let channel = channel.to_string();
                    self.apply(|hub, now| hub.receive(now, id, Incoming::Join { channel, since }));
                }
            }
            Op::Leave { conn, channel } => {
                if let Some(id) = self.pick(conn) {
                    let channel = CHANNELS[channel].to_string();
                    self.apply(|hub, now| hub.receive(now, id, Incoming::Leave(channel)));
                }
            }
            Op::Invalid(i) => self.receive(i, Incoming::Invalid(ProtocolError::InvalidJson)),
            Op::Ping(i) => self.receive(i, Incoming::Ping),
            Op::Alive(i) => self.receive(i, Incoming::Alive),
            Op::Refresh { conn, user } => {
                let identity = self.identity(user);
                self.receive(conn, Incoming::Refresh(Ok(identity)));
            }
            Op::Drain(i) => {
                if let Some(id) = self.pick(i) {
                    let queue = rx(&self.sim, id);
                    self.state.conn(id).take(queue);
                }
            }
            Op::RedisDelivers(n) => {
                for _ in 0..n {
                    let Some(head) = self.state.published.pop_front() else { break };
                    self.state.redis_id += 1;
                    let id = self.state.redis_id;
                    self.deliver(id, head.with_id(id));
                }
                // Another instance's message; ids from Redis may skip.
                self.state.redis_id += 2;
                let id = self.state.redis_id;
                // Without channels the frame has none; with them, another instance's user
                // writes in the lobby or a topic.
                let channel = self.channels.then(|| CHANNELS[(id % 3) as usize]);
                let head =
                    ChatHead::new(channel, "elsewhere", "someone", "hi", self.sim.now.unix_ms);
                self.deliver(id, head.with_id(id));
            }
            Op::Redeliver(i) => {
                if !self.state.delivered.is_empty() {
                    let (id, text) = self.state.delivered[i % self.state.delivered.len()].clone();
                    self.apply(|hub, now| hub.deliver(now, id, text.into()));
                    self.readers_read();
                }
            }
            Op::AnnounceBack => {
                if let Some(conn) = self.state.announcements.pop_front() {
                    self.apply(|hub, now| hub.announced(now, conn));
                    let c = self.state.conn(conn);
                    c.announced = c.closed.is_none();
                }
            }
            Op::Elsewhere(user) => {
                let user = format!("u{user}");
                let open_before = self.open_ids();
                self.apply(|hub, now| hub.joined_elsewhere(now, &user));
                for (id, c) in &self.state.conns {
                    let older = c.user == user && c.announced;
                    assert!(!(older && c.closed.is_none()), "{id} survived a newer connection");
                    let newer = open_before.contains(id) && !older;
                    assert!(!(newer && c.closed.is_some()), "{id} closed by an older connection");
                }
            }
            Op::Count(n) => {
                self.apply(|hub, now| hub.set_cluster_online(now, n.map(usize::from)));
            }
            Op::Advance(ms) => {
                let Model { sim, state, .. } = self;
                sim.advance_by(Duration::from_millis(u64::from(ms)), |sim, effects| {
                    state.perform(sim, effects);
                    state.readers_read(sim);
                });
            }
        }
        self.readers_read();
    }

    /// A chat message from a connection; if accepted, it is owed to the members of its channel
    /// (the default one without a name; the room without channels) that are still open after it.
    fn say(&mut self, i: usize, channel: Option<&str>) {
        let Some(id) = self.pick(i) else { return };
        let target = match (channel, self.sim.hub.is_member(id, "")) {
            (_, true) => "",
            (Some(name), false) => name,
            (None, false) => "general",
        };
        let members_before: Vec<ConnId> =
            self.open_ids().into_iter().filter(|c| self.sim.hub.is_member(*c, target)).collect();
        let before = self.sim.hub.last_message_id();
        let incoming = Incoming::Chat { content: "hi".into(), channel: channel.map(String::from) };
        self.apply(|hub, now| hub.receive(now, id, incoming));
        let after = self.sim.hub.last_message_id();
        if after != before {
            assert_eq!(after, before + 1);
            assert!(members_before.contains(&id), "a message from outside {target:?} accepted");
            let user = self.state.conn(id).user.clone();
            *self.state.admitted.entry(user).or_default() += 1;
            let live_after: HashSet<ConnId> = self.open_ids().into_iter().collect();
            let owed = members_before.into_iter().filter(|c| live_after.contains(c));
            self.state.owed.push((after, owed.collect()));
        }
    }

    fn receive(&mut self, i: usize, incoming: Incoming) {
        if let Some(id) = self.pick(i) {
            self.apply(|hub, now| hub.receive(now, id, incoming));
        }
    }

    fn check(&self) {
        let (sim, state) = (&self.sim, &self.state);
        sim.check();
        let mut users: HashSet<&str> = state
            .conns
            .iter()
            .filter(|(_, c)| c.closed.is_none())
            .map(|(_, c)| c.user.as_str())
            .collect();
        // A user whose last connection closed counts until the presence grace is over.
        let in_grace = state.left_at.iter().filter(|(_, at)| sim.now.at < **at + PRESENCE_GRACE);
        users.extend(in_grace.map(|(user, _)| user.as_str()));
        assert_eq!(sim.hub.online(), users.len(), "online = users connected or within the grace");
        for (user, online) in &state.presence {
            assert_eq!(*online, users.contains(user.as_str()), "{user}: last presence effect");
        }
        for (id, c) in &state.conns {
            if c.closed.is_some() {
                assert!(
                    rx(sim, *id).drain().is_empty(),
                    "connection {id} got a frame after its close"
                );
            }
        }
        let elapsed = sim.now.at.duration_since(state.start).as_secs_f64();
        for (user, n) in &state.admitted {
            let bound = f64::from(BURST) + RATE_PER_SEC * elapsed + 1e-9;
            assert!(*n as f64 <= bound, "{user} got {n} messages in {elapsed}s");
        }
    }

    /// Every accepted message reached, exactly once, every connection live across it that was
    /// not later cut off as too slow.
    fn check_deliveries(&mut self) {
        let Model { sim, state, .. } = self;
        for (id, c) in &mut state.conns {
            c.take(rx(sim, *id));
        }
        let by_id: HashMap<ConnId, &Conn> = state.conns.iter().map(|(id, c)| (*id, c)).collect();
        for (message, owed) in &state.owed {
            for conn in owed {
                let c = by_id[conn];
                if c.closed == Some(CloseReason::TooSlow) {
                    continue;
                }
                let copies = c.ids.iter().filter(|id| *id == message).count();
                assert_eq!(copies, 1, "message {message} reached connection {conn} {copies} times");
            }
        }
    }
}

/// The channel (`""` without one) and id of each chat frame.
fn chat_ids(frames: &[Frame]) -> Vec<(String, u64)> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Text(t) => serde_json::from_str::<Value>(t).ok(),
            Frame::Ping => None,
        })
        .filter(|v| v["type"] == "chat")
        .map(|v| (v["channel"].as_str().unwrap_or("").to_string(), v["id"].as_u64().unwrap()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn hub_invariants_hold_for_any_sequence(ops in proptest::collection::vec(op(), 1..200)) {
        let mut model = Model::new(config());
        for op in ops {
            model.step(op);
            model.check();
        }
        model.check_deliveries();
    }

    #[test]
    fn channel_hub_invariants_hold_for_any_sequence(
        ops in proptest::collection::vec(channel_op(), 1..200)
    ) {
        let mut model = Model::new(channels_config());
        for op in ops {
            model.step(op);
            model.check();
        }
        model.check_deliveries();
    }

    /// Whatever joins and leaves happened, once every connection has closed and the grace is
    /// over, only channels that hold history are left: nothing leaks.
    #[test]
    fn channels_are_freed_when_nobody_is_in_them(
        ops in proptest::collection::vec(channel_op(), 1..200)
    ) {
        let mut model = Model::new(HubConfig { max_channels: 100, ..channels_config() });
        for op in ops {
            model.step(op);
        }
        for id in model.open_ids() {
            model.apply(|hub, now| hub.disconnect(now, id, CloseReason::Client));
        }
        model.step(Op::Advance(10_000));
        prop_assert_eq!(model.sim.hub.connection_count(), 0);
        let with_history = model.sim.hub.channels_with_history();
        prop_assert_eq!(model.sim.hub.channel_count(), with_history);
    }

    #[test]
    fn cluster_channel_hub_invariants_hold_for_any_sequence(
        ops in proptest::collection::vec(prop_oneof![3 => cluster_op(), 2 => channel_op()], 1..200)
    ) {
        let config = HubConfig { cluster: true, max_connections_per_user: 1, ..channels_config() };
        let mut model = Model::new(config);
        for op in ops {
            model.step(op);
            model.check();
        }
        model.check_deliveries();
    }

    #[test]
    fn cluster_hub_invariants_hold_for_any_sequence(
        ops in proptest::collection::vec(cluster_op(), 1..200)
    ) {
        let config = HubConfig { cluster: true, max_connections_per_user: 1, ..config() };
        let mut model = Model::new(config);
        for op in ops {
            model.step(op);
            model.check();
        }
        model.check_deliveries();
    }
}
