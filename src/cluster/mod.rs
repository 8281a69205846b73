//! The cluster broker (feature `redis`): several instances behind one load balancer behave as
//! one chat, through one Redis server.
//!
//! One task on the event loop owns two Redis connections, one for commands and one subscribed to
//! the events channel. Their drivers are polled by that task, on this thread; nothing is spawned
//! elsewhere. The hub stays a pure state machine: it hands the broker effects and the broker
//! feeds it events, through `Shell::apply` like every other input.
//!
//! - **Chat.** An accepted message leaves the hub as [`Effect::Publish`] with the frame minus its
//!   id. [`PUBLISH_SCRIPT`] `INCR`s the id key, appends the id, `XADD`s the frame to the capped
//!   history stream and `PUBLISH`es it. A script runs atomically, so the channel carries messages
//!   in id order; every instance, this one included, hands what it hears to `Hub::deliver`.
//!   What crosses the channel is [`wire::Event`], written and read in `wire.rs` alone.
//! - **History.** With channels, each channel also has a stream of its own, capped at its
//!   history, read at start so that every channel has its own last N. On every (re)connect the broker reads the stream after the hub's last id (on a
//!   fresh start, its tail) and delivers it before anything from the channel; `deliver` drops
//!   ids it has seen. So a refresh recovers from the same history on any instance, and an
//!   instance that lost Redis for a while catches up, in order. Users who connected before the
//!   instance first reached Redis get what they missed live, like everyone after a reconnect.
//! - **Presence.** Each instance keeps its users in the set `{prefix}:presence:{instance}` and
//!   its deadline in the sorted set `{prefix}:instances`, both refreshed every third of
//!   `presence_ttl_secs`. The online count is the size of the union of the live instances' sets
//!   ([`COUNT_SCRIPT`]), recounted when any instance says its set changed and at every refresh,
//!   so a crashed instance's users drop out within the TTL and a refresh interval.
//! - **Presence per channel** (with channels). Each channel's users on every instance are the
//!   fields `{instance}\n{user}` of the hash `{prefix}:channel:{name}`; a change publishes
//!   `c{name}`, and every instance that has the channel counts it again ([`COUNT_CHANNEL_SCRIPT`],
//!   at most once per [`RECOUNT_INTERVAL`]), and so does each at every refresh for the channels
//!   it has users in. A crashed instance's fields are dropped by the next count after its
//!   deadline. On reconnect, [`REWRITE_CHANNELS_SCRIPT`] replaces this instance's fields.
//! - **The site's actions** (server API). A publish goes out as a member's chat message does,
//!   and the API hears its id from the script's reply ([`Broker::await_published`]). A
//!   moderation action is carried out on the instance asked, kept in Redis (bans in the hash
//!   `{prefix}:bans`, mutes in `{prefix}:mutes`, a delete taken out of the history streams by
//!   [`DELETE_SCRIPT`]) and published as `a{instance}\n{json}`; every other instance carries it
//!   out when it hears it. On every (re)connect an instance takes the bans and mutes from Redis
//!   (or, when Redis has none and it has some, writes its own there: Redis came back empty).
//! - **Replacement.** With one connection per user, each new connection is announced on the
//!   channel; `Hub::joined_elsewhere` explains why the channel's order leaves exactly one.
//! - **Faults.** Without Redis the instance keeps serving its own users (connections, history,
//!   replacement, the local online count); their chat messages wait in the outbox, at most
//!   `cluster.outbox`, beyond which the sender gets an `unavailable` error and the message is
//!   counted as dropped ([`outbox`] holds the policy). The broker logs one warning, reports
//!   `shequ_chat_broker_up 0` and reconnects with backoff. On reconnect it raises the id counter to at least the last id
//!   seen (Redis may have come back empty), rewrites its presence set, catches up from the
//!   stream, and sends the outbox. A batch whose reply was lost with the connection goes out
//!   again; each message carries this instance's sequence number, and Redis skips those it has
//!   published already, so a hung Redis that wakes up publishes nothing twice.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use futures_lite::FutureExt;
use log::warn;
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, ProtocolVersion, PushInfo,
    RedisConnectionInfo, Script,
};
use smol::{Async, Timer};
use tokio_util::compat::FuturesAsyncReadCompatExt;

use crate::config::{Cluster, ConfigError};
use crate::hub::{ConnId, Effect};
use crate::metrics::BrokerStats;
use outbox::{Command, Outbox, Pushed};
use wire::Event;

/// First pause before reconnecting to Redis; it doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a TCP connect plus the Redis handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long Redis may take to answer a command before the connection counts as lost.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Channel messages read from Redis and not yet handed to the hub. Past this the broker stops
/// queueing and catches up from the history stream instead, so memory stays bounded.
pub const CHANNEL_BACKLOG: usize = 4096;
/// The shortest time between two counts of the online users (each is a set union in Redis).
pub const RECOUNT_INTERVAL: Duration = Duration::from_millis(100);
/// Queued commands sent to Redis in one pipeline.
pub const BATCH_MAX: usize = 1024;

/// Numbers a chat message, keeps it in the history stream and publishes it, atomically, so that
/// the channel carries ids in order. The frame is the head and the id as
/// `ChatHead::into_frame` writes them, and the channel message is the frame ([`wire`]). A
/// message whose sequence number this instance has already published is skipped (returns 0): a
/// batch whose reply was lost with the connection is sent again after the reconnect, and Redis
/// may have run it the first time.
/// With channels, the frame also goes to its channel's own stream, capped at the channel's
/// history, whose name joins the set of channel streams: an instance that starts reads each
/// channel's history from there, so every channel keeps its own last N as one instance does.
/// KEYS: id counter, history stream, this instance's last sequence number; with channels, the
/// channel's stream and the set of channel names.
/// ARGV: frame up to the id, events channel, history size, the message's sequence number; with
/// channels, the channel's history size and name.
pub const PUBLISH_SCRIPT: &str = r"
local seq = tonumber(ARGV[4])
if seq <= tonumber(redis.call('GET', KEYS[3]) or '0') then return 0 end
redis.call('SET', KEYS[3], seq, 'EX', 86400)
local id = redis.call('INCR', KEYS[1])
local frame = ARGV[1] .. id .. '}'
if tonumber(ARGV[3]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], id .. '-0', 'm', frame)
end
if KEYS[4] and tonumber(ARGV[5]) > 0 then
  redis.call('XADD', KEYS[4], 'MAXLEN', ARGV[5], id .. '-0', 'm', frame)
  redis.call('SADD', KEYS[5], ARGV[6])
end
redis.call('PUBLISH', ARGV[2], frame)
return id
";

/// Takes a deleted message out of the shared history stream and out of its channel's stream
/// (named by the frame in the shared stream, or else by the channel the instance knew).
/// KEYS: the shared history stream. ARGV: the message id, the prefix of channel stream names,
/// the channel the instance knew ("" if none).
pub const DELETE_SCRIPT: &str = r#"
local entry = ARGV[1] .. '-0'
local channel = ARGV[3]
local held = redis.call('XRANGE', KEYS[1], entry, entry)
if #held > 0 then
  local named = string.match(held[1][2][2], '^{"type":"chat","channel":"([^"]*)"')
  if named then channel = named end
end
local n = redis.call('XDEL', KEYS[1], entry)
if channel ~= '' then n = n + redis.call('XDEL', ARGV[2] .. channel, entry) end
return n
"#;

/// Raises the id counter to at least the last id this instance or the stream has seen, so ids
/// keep increasing when Redis restarted empty.
/// KEYS: id counter, history stream. ARGV: the hub's last id.
pub const FLOOR_SCRIPT: &str = r"
local floor = tonumber(ARGV[1])
local newest = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #newest > 0 then
  local id = tonumber(string.match(newest[1][1], '^%d+'))
  if id > floor then floor = id end
end
if tonumber(redis.call('GET', KEYS[1]) or '0') < floor then
  redis.call('SET', KEYS[1], floor)
end
return floor
";

/// Keeps this instance alive in the registry and its presence set from expiring, by Redis's
/// clock. KEYS: instances, this instance's set. ARGV: instance name, TTL in milliseconds.
pub const REFRESH_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return now
";

/// Replaces this instance's users in every channel hash: removes its fields from each channel
/// it wrote to before (listed in its set of channel names), writes the current (channel, user)
/// pairs, and returns every channel touched, so that each can be counted again.
/// KEYS: this instance's set of channel names.
/// ARGV: the prefix of channel hash names, instance name, then channel and user, alternating.
pub const REWRITE_CHANNELS_SCRIPT: &str = r"
local mine = ARGV[2] .. '\n'
local touched = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local hash = ARGV[1] .. name
  for _, field in ipairs(redis.call('HKEYS', hash)) do
    if string.sub(field, 1, #mine) == mine then redis.call('HDEL', hash, field) end
  end
  touched[name] = true
end
redis.call('DEL', KEYS[1])
for i = 3, #ARGV, 2 do
  redis.call('HSET', ARGV[1] .. ARGV[i], mine .. ARGV[i + 1], 1)
  redis.call('SADD', KEYS[1], ARGV[i])
  touched[ARGV[i]] = true
end
local names = {}
for name, _ in pairs(touched) do names[#names + 1] = name end
return names
";

/// Counts a channel's distinct users on the live instances. Its hash has a field
/// `{instance}\n{user}` per user of each instance; fields of instances past their deadline are
/// removed on the way, so a crashed instance's users drop out as they do from the room's count.
/// KEYS: instances. ARGV: the channel's hash.
pub const COUNT_CHANNEL_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local live = {}
for _, name in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do live[name] = true end
local users, n = {}, 0
for _, field in ipairs(redis.call('HKEYS', ARGV[1])) do
  local sep = string.find(field, '\n', 1, true)
  if sep and live[string.sub(field, 1, sep - 1)] then
    local user = string.sub(field, sep + 1)
    if not users[user] then users[user] = true; n = n + 1 end
  else
    redis.call('HDEL', ARGV[1], field)
  end
end
return n
";

/// Forgets instances past their deadline and counts the distinct users of the others.
/// KEYS: instances. ARGV: the prefix of presence set names.
pub const COUNT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local live = redis.call('ZRANGE', KEYS[1], 0, -1)
if #live == 0 then return 0 end
local sets = {}
for i, name in ipairs(live) do sets[i] = ARGV[1] .. name end
return #redis.call('SUNION', unpack(sets))
";

/// The scripts, loaded on every connect (Redis forgets them when it restarts) and called by hash.
#[derive(Debug, Clone, Copy)]
enum Lua {
    Publish,
    Floor,
    Refresh,
    Count,
    RewriteChannels,
    CountChannel,
    Delete,
}

impl Lua {
    const ALL: [Lua; 7] = [
        Lua::Publish,
        Lua::Floor,
        Lua::Refresh,
        Lua::Count,
        Lua::RewriteChannels,
        Lua::CountChannel,
        Lua::Delete,
    ];

    fn code(self) -> &'static str {
        match self {
            Lua::Publish => PUBLISH_SCRIPT,
            Lua::Floor => FLOOR_SCRIPT,
            Lua::Refresh => REFRESH_SCRIPT,
            Lua::Count => COUNT_SCRIPT,
            Lua::RewriteChannels => REWRITE_CHANNELS_SCRIPT,
            Lua::CountChannel => COUNT_CHANNEL_SCRIPT,
            Lua::Delete => DELETE_SCRIPT,
        }
    }
}

/// Where a connection's channel messages go.
type PushSink = Box<dyn Fn(PushInfo) -> Result<(), ()> + Send + Sync>;

/// Reads and writes a connection's socket; ends when the connection is lost.
type Driver = std::pin::Pin<Box<dyn Future<Output = ()>>>;

/// Redis key and channel names, all under `cluster.prefix`.
struct Keys {
    id: String,
    stream: String,
    channel: String,
    instances: String,
    /// Prefix of every instance's presence set.
    presence: String,
    /// This instance's presence set.
    mine: String,
    /// The last sequence number of this run of this instance that Redis published.
    sequence: String,
    /// Prefix of every channel's hash of users (with channels).
    channel_users: String,
    /// The channels this instance has written users to.
    my_channels: String,
    /// Prefix of every channel's history stream (with channels).
    channel_stream: String,
    /// The names of the channels that have a history stream.
    channel_streams: String,
    /// Bans by user id, each the ban as JSON.
    bans: String,
    /// Mutes by `{user}\n{channel}` (channel empty: everywhere), each the mute as JSON.
    mutes: String,
}

/// Why a session with Redis ended.
#[derive(Debug)]
pub struct Lost(String);

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<redis::RedisError> for Lost {
    fn from(e: redis::RedisError) -> Lost {
        Lost(e.to_string())
    }
}

impl From<std::io::Error> for Lost {
    fn from(e: std::io::Error) -> Lost {
        Lost(e.to_string())
    }
}

/// The broker's state on the event loop. The shell owns it; [`run`] drives it.
pub struct Broker {
    addr: SocketAddr,
    info: RedisConnectionInfo,
    keys: Keys,
    instance: String,
    history_size: usize,
    presence_ttl: Duration,
    /// SHA-1 of each [`Lua`] script.
    hashes: [String; 7],
    outbox: RefCell<Outbox>,
    /// Wakes [`run`] when the outbox gains a command.
    wake: async_channel::Sender<()>,
    woken: async_channel::Receiver<()>,
    stats: RefCell<BrokerStats>,
    /// The site's messages on their way to Redis, by ticket ([`crate::hub::Post::ticket`]):
    /// where to send the id Redis gives each (`None`: it was not published).
    published: RefCell<HashMap<ConnId, async_channel::Sender<Option<u64>>>>,
}

impl Broker {
    /// Checks the cluster settings and resolves Redis's address (once: a name that moves needs a
    /// restart).
    pub fn new(config: &Cluster, history_size: usize) -> Result<Broker, ConfigError> {
        let invalid = |e: &dyn fmt::Display| ConfigError(format!("cluster.redis_url: {e}"));
        let info = config.redis_url.as_str().into_connection_info().map_err(|e| invalid(&e))?;
        let ConnectionAddr::Tcp(host, port) = info.addr() else {
            return Err(invalid(&"only redis:// (plain TCP) is supported"));
        };
        let addr = (host.as_str(), *port)
            .to_socket_addrs()
            .map_err(|e| invalid(&e))?
            .next()
            .ok_or_else(|| invalid(&format!("{host} has no address")))?;
        let mut settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
        if let Some(password) = &config.password {
            settings = settings.set_password(password.expose());
        }
        // Random for each start (RandomState's keys are), unlike a configured instance name.
        let run = format!("{:016x}", RandomState::new().hash_one(std::process::id()));
        let instance =
            if config.instance.is_empty() { run.clone() } else { config.instance.clone() };
        let p = &config.prefix;
        let keys = Keys {
            id: format!("{p}:id"),
            stream: format!("{p}:history"),
            channel: format!("{p}:events"),
            instances: format!("{p}:instances"),
            presence: format!("{p}:presence:"),
            mine: format!("{p}:presence:{instance}"),
            // Per start: sequence numbers begin again at 1 when the process does.
            sequence: format!("{p}:sequence:{instance}:{run}"),
            channel_users: format!("{p}:channel:"),
            my_channels: format!("{p}:channels:{instance}"),
            channel_stream: format!("{p}:history:"),
            channel_streams: format!("{p}:histories"),
            bans: format!("{p}:bans"),
            mutes: format!("{p}:mutes"),
        };
        let (wake, woken) = async_channel::bounded(1);
        Ok(Broker {
            addr,
            info: settings,
            keys,
            instance,
            history_size,
            presence_ttl: Duration::from_secs(config.presence_ttl_secs),
            hashes: Lua::ALL.map(|lua| Script::new(lua.code()).get_hash().to_owned()),
            outbox: RefCell::new(Outbox::new(config.outbox)),
            wake,
            woken,
            stats: RefCell::new(BrokerStats::default()),
            published: RefCell::new(HashMap::new()),
        })
    }

    pub fn stats(&self) -> BrokerStats {
        self.stats.borrow().clone()
    }

    /// Whether Redis is connected and caught up.
    pub fn is_up(&self) -> bool {
        self.stats.borrow().up
    }

    /// Queues an effect of the hub for Redis, by the [`outbox`] policy. Returns the sender of a
    /// chat message that did not fit, to be told.
    pub fn push(&self, effect: Effect) -> Option<ConnId> {
        let up = self.stats.borrow().up;
        match self.outbox.borrow_mut().push(effect, up) {
            Pushed::Queued => {
                let _ = self.wake.try_send(());
                None
            }
            Pushed::Refused(from) => {
                self.stats.borrow_mut().dropped += 1;
                self.answer_published(from, None);
                Some(from)
            }
            Pushed::Dropped => {
                warn!("cluster: the outbox is full: a moderation action stays on this instance");
                self.stats.borrow_mut().dropped += 1;
                None
            }
            Pushed::Skipped => None,
        }
    }

    /// The id Redis will give the site's message with this ticket, when it has (`None`: it was
    /// not published). Ask before the message is handed to the hub.
    pub fn await_published(&self, ticket: ConnId) -> async_channel::Receiver<Option<u64>> {
        let (tx, rx) = async_channel::bounded(1);
        self.published.borrow_mut().insert(ticket, tx);
        rx
    }

    /// Tells whoever awaits the message with this sender what became of it. A member's message
    /// has nobody waiting.
    fn answer_published(&self, from: ConnId, id: Option<u64>) {
        if let Some(tx) = self.published.borrow_mut().remove(&from) {
            let _ = tx.try_send(id);
        }
    }

    /// Ends a pipeline that changed this instance's presence set: refreshes its TTL (a set
    /// created by SADD has none yet) and tells every instance to count again.
    fn presence_changed(&self, pipe: &mut redis::Pipeline) {
        pipe.add_command(self.refresh_command()).ignore();
        let notice = Event::PresenceChanged { instance: self.instance.clone() };
        pipe.cmd("PUBLISH").arg(&self.keys.channel).arg(notice.encode()).ignore();
    }

    /// Runs [`REFRESH_SCRIPT`] for this instance.
    fn refresh_command(&self) -> redis::Cmd {
        let mut refresh = self.script(Lua::Refresh);
        refresh.arg(2).arg(&self.keys.instances).arg(&self.keys.mine);
        refresh.arg(&self.instance).arg(self.presence_ttl.as_millis() as u64);
        refresh
    }

    fn script(&self, lua: Lua) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.hashes[lua as usize]);
        cmd
    }

    /// Opens a connection; with `pushes`, its channel messages go there. The returned future
    /// drives the connection and ends when it is lost.
    async fn open(
        &self,
        pushes: Option<PushSink>,
    ) -> Result<(MultiplexedConnection, Driver), Lost> {
        let connecting = async {
            let stream = Async::<TcpStream>::connect(self.addr).await?;
            let _ = stream.get_ref().set_nodelay(true);
            let mut config =
                AsyncConnectionConfig::new().set_response_timeout(Some(RESPONSE_TIMEOUT));
            if let Some(pushes) = pushes {
                config = config.set_push_sender(pushes);
            }
            let stream = stream.compat();
            let (connection, driver) =
                MultiplexedConnection::new_with_config(&self.info, stream, config).await?;
            Ok::<_, Lost>((connection, Box::pin(driver) as Driver))
        };
        connecting
            .or(async {
                Timer::after(CONNECT_TIMEOUT).await;
                Err(Lost(format!("no answer from {} within {CONNECT_TIMEOUT:?}", self.addr)))
            })
            .await
    }
}

mod link;
pub mod outbox;
pub mod wire;
pub(crate) use link::run;
