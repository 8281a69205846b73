//! The configuration file: its shape, its defaults, and the checks that run before the server starts.
//!
//! Every field is optional. Unknown fields are rejected by name, so a typo is an error at start-up
//! rather than a setting that silently does nothing. Secrets live in [`Secret`], whose `Debug` and
//! `Serialize` print a mask, so the effective configuration can be logged as it is.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use crate::channels::{ChannelsConfig, Policy};

use crate::hub::HubConfig;

/// The environment variable that holds the JWT secret; it wins over the file.
pub const SECRET_ENV: &str = "SHEQU_CHAT_JWT_SECRET";
/// The environment variable that holds the server API's key; it wins over `api.key` and
/// `api.key_file`.
pub const API_KEY_ENV: &str = "SHEQU_CHAT_API_KEY";
/// The shortest API key accepted.
pub const MIN_API_KEY_BYTES: usize = 32;
/// The environment variable that sets the log level; it wins over `log_level`.
pub const LOG_ENV: &str = "SHEQU_CHAT_LOG";

/// A secret string. Prints as a mask in `Debug` output and in the logged configuration.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself. Every caller is a place the secret can leak from; keep them few.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on, e.g. `127.0.0.1:8080`; port 0 picks a free port.
    pub listen: String,
    /// `error`, `warn`, `info`, `debug` or `trace`; `SHEQU_CHAT_LOG` wins.
    pub log_level: String,
    /// Browser origins allowed to open `/ws`; empty allows any. A request without an `Origin`
    /// header (not a browser) is always allowed: the header protects browsers, not the server.
    pub allowed_origins: Vec<String>,
    /// Reverse proxies whose `X-Forwarded-For` header is believed; from anyone else it is
    /// ignored.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// The shortest time between two `online` frames.
    pub presence_interval_ms: u64,
    /// A separate address for `/metrics` and `/healthz` (a private interface); `None` serves
    /// them on `listen`.
    pub metrics_listen: Option<String>,
    /// On SIGTERM or SIGINT, how long clients have to answer the 1001 close before exit.
    pub shutdown_grace_secs: u64,
    /// Timestamps on log lines; journald adds its own, so systemd setups can turn them off.
    pub log_timestamps: bool,
    /// Development only: print chat URLs with fresh tokens at start.
    pub dev_login: bool,
    pub auth: AuthConfig,
    pub limits: Limits,
    pub heartbeat: Heartbeat,
    pub idle: Idle,
    pub history: History,
    pub presence: Presence,
    /// Several instances as one chat, over Redis; absent runs alone. Needs a build with
    /// `--features redis`.
    pub cluster: Option<Cluster>,
    /// Rooms and private conversations (`channels.rs`); absent: one room, as before channels.
    pub channels: Option<ChannelsConfig>,
    /// The server API for the site's backend (`api.rs`); absent: no API listener.
    pub api: Option<Api>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: "127.0.0.1:8080".into(),
            log_level: "info".into(),
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            presence_interval_ms: 1000,
            metrics_listen: None,
            shutdown_grace_secs: 5,
            log_timestamps: true,
            dev_login: false,
            auth: AuthConfig::default(),
            limits: Limits::default(),
            heartbeat: Heartbeat::default(),
            idle: Idle::default(),
            history: History::default(),
            presence: Presence::default(),
            cluster: None,
            channels: None,
            api: None,
        }
    }
}

/// JWT algorithms the server verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Algorithm {
    HS256,
    HS384,
    HS512,
    ES256,
    EdDSA,
}

impl Algorithm {
    /// HMAC algorithms use a shared secret; the others a PEM public key.
    pub fn is_hmac(self) -> bool {
        matches!(self, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
    }
}

/// How tokens are checked.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub algorithm: Algorithm,
    /// Shared secret for HS256/384/512. `SHEQU_CHAT_JWT_SECRET` wins over it and `secret_file`.
    pub secret: Option<Secret>,
    /// A file holding the shared secret (surrounding whitespace is ignored).
    pub secret_file: Option<PathBuf>,
    /// A PEM public key file for ES256 or EdDSA.
    pub public_key_file: Option<PathBuf>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway_secs: u64,
    /// The claim holding the user id; a JSON number becomes its decimal string.
    pub user_id_claim: String,
    /// The claim holding the display name; the user id when absent.
    pub username_claim: String,
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            algorithm: Algorithm::HS256,
            secret: None,
            secret_file: None,
            public_key_file: None,
            issuer: None,
            audience: None,
            leeway_secs: 30,
            user_id_claim: "sub".into(),
            username_claim: "name".into(),
        }
    }
}

/// What one client, and all of them together, may do.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Connections at once; the next one gets 503.
    pub max_connections: usize,
    /// Connections per user; a new one beyond it replaces the oldest (close 4001).
    pub max_connections_per_user: usize,
    /// Connections per client address; the next one gets 503. 0 turns the limit off.
    pub max_connections_per_ip: usize,
    /// Characters in a chat message's `content`.
    pub max_content_chars: usize,
    /// Bytes in one WebSocket message; a larger one closes the connection with 1009.
    pub max_message_bytes: usize,
    /// Violations within a minute that close the connection with 1008.
    pub violations_before_close: u32,
    /// Chat messages a user may send per second, on average.
    pub rate_per_sec: f64,
    /// Chat messages a user may send at once after a quiet spell.
    pub rate_burst: u32,
    /// Frames queued for one connection; a receiver whose queue is full is closed with 4004.
    pub send_queue: usize,
    /// Time allowed from TCP accept to a finished WebSocket upgrade.
    pub handshake_timeout_secs: u64,
    /// Sockets accepted but not yet upgraded (or answered), at once; beyond it a new socket is
    /// closed at once.
    pub max_pending_handshakes: usize,
    /// The share of `max_pending_handshakes` one client address may hold. Trusted proxies are
    /// exempt (every client behind them shares their address); 0 turns the share off.
    pub max_pending_handshakes_per_ip: usize,
    /// Bytes the WebSocket layer reads at once per connection, allocated per connection for
    /// as long as it is open, idle or not (one of the largest parts of what an idle one costs).
    /// A larger frame is read in several reads of this size, into a buffer grown to hold it.
    /// 256 bytes hold a Ping, a `join`, and a chat message of about 60 Chinese characters.
    pub read_buffer_bytes: usize,
    /// Channels that exist at once (someone is in them, or they hold history).
    pub max_channels: usize,
    /// Channels one connection may be in at once.
    pub max_channels_per_connection: usize,
    /// The kernel's send buffer per client socket (`SO_SNDBUF`), in bytes; 0 leaves the
    /// kernel's default (`net.ipv4.tcp_wmem`), which grows a buffer as it needs.
    pub socket_send_buffer: usize,
    /// The kernel's receive buffer per client socket (`SO_RCVBUF`), in bytes; 0 leaves the
    /// kernel's default (`net.ipv4.tcp_rmem`).
    pub socket_recv_buffer: usize,
    /// Connections the kernel holds for `accept` (capped by `net.core.somaxconn`): a restart
    /// storm of clients lands here first.
    pub listen_backlog: u32,
    /// `TCP_NODELAY` on client sockets: small frames go out at once instead of waiting to be
    /// merged.
    pub tcp_nodelay: bool,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 10_000,
            max_connections_per_user: 1,
            max_connections_per_ip: 0,
            max_content_chars: 2000,
            max_message_bytes: 16 * 1024,
            violations_before_close: 20,
            rate_per_sec: 5.0,
            rate_burst: 10,
            send_queue: 256,
            handshake_timeout_secs: 10,
            max_pending_handshakes: 1024,
            max_pending_handshakes_per_ip: 16,
            read_buffer_bytes: 256,
            max_channels: 10_000,
            max_channels_per_connection: 32,
            socket_send_buffer: 0,
            socket_recv_buffer: 0,
            listen_backlog: 1024,
            tcp_nodelay: true,
        }
    }
}

/// WebSocket-level liveness checks.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Heartbeat {
    /// How often the server sends a WebSocket Ping.
    pub ping_interval_secs: u64,
    /// Silence (no frame of any kind) after which a connection is closed. Must exceed the ping
    /// interval, or a healthy client would be cut between two pings.
    pub pong_timeout_secs: u64,
}

impl Default for Heartbeat {
    fn default() -> Heartbeat {
        Heartbeat { ping_interval_secs: 30, pong_timeout_secs: 60 }
    }
}

/// Who counts as online.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Presence {
    /// How long a user whose last connection closed still counts as online. A reconnect within
    /// it (a page refresh) changes nobody's view; 0 counts every departure at once.
    pub grace_ms: u64,
}

impl Default for Presence {
    fn default() -> Presence {
        Presence { grace_ms: 3000 }
    }
}

/// Closing connections whose users have stopped chatting.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Idle {
    /// Time without a chat message after which a connection is closed with 4002; 0 turns it off.
    pub timeout_secs: u64,
    /// How often idle connections are looked for.
    pub check_interval_secs: u64,
}

impl Default for Idle {
    fn default() -> Idle {
        Idle { timeout_secs: 600, check_interval_secs: 60 }
    }
}

/// When the history file is flushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// After every message, before anyone can see it: a crash loses nothing anyone saw.
    Always,
    /// At most once a second: a power cut loses at most the last second.
    Interval,
    /// Left to the operating system.
    Never,
}

/// Recent messages kept for replay on (re)connect.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct History {
    /// Chat messages kept; 0 turns history off.
    pub size: usize,
    /// Messages a client gets on connect without `since`, or with one older than the history.
    pub on_join: usize,
    /// A JSON Lines file that keeps the history (and the ids) across restarts.
    pub file: Option<PathBuf>,
    pub fsync: Fsync,
}

impl Default for History {
    fn default() -> History {
        History { size: 200, on_join: 50, file: None, fsync: Fsync::Interval }
    }
}

/// Joining other instances through Redis (see `cluster/`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cluster {
    /// `redis://host:port/db`, without a password (that goes in `password`). The host is
    /// resolved once, at start.
    pub redis_url: String,
    pub password: Option<Secret>,
    /// Prefix of every Redis key and channel: instances with the same prefix are one chat.
    pub prefix: String,
    /// This instance's name in Redis; empty picks a random one at each start.
    pub instance: String,
    /// Chat messages waiting for Redis, at most (while it is slow or unreachable); more are
    /// refused with an `unavailable` error and counted.
    pub outbox: usize,
    /// An instance that stops refreshing its presence (it crashed) stops counting after this.
    pub presence_ttl_secs: u64,
}

impl Default for Cluster {
    fn default() -> Cluster {
        Cluster {
            redis_url: "redis://127.0.0.1:6379/0".into(),
            password: None,
            prefix: "shequ-chat".into(),
            instance: String::new(),
            outbox: 4096,
            presence_ttl_secs: 15,
        }
    }
}

/// The server API: publishing, moderation and presence for the site's backend, on a listener of
/// its own (`docs/API.md`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Api {
    /// Address of the API listener, e.g. `127.0.0.1:8090`. Keep it private: on an address other
    /// than loopback the server does not start without a key.
    pub listen: String,
    /// The key requests carry as `Authorization: Bearer <key>`, at least 32 bytes.
    /// `SHEQU_CHAT_API_KEY` wins over it and `key_file`.
    pub key: Option<Secret>,
    /// A file holding the key (surrounding whitespace is ignored).
    pub key_file: Option<PathBuf>,
    /// Where bans and mutes are kept across restarts (rewritten whole on each change); by
    /// default `moderation.json` beside `history.file`, and without either they last until the
    /// server stops.
    pub moderation_file: Option<PathBuf>,
    /// The largest request body accepted; a larger one gets 413.
    pub max_body_bytes: usize,
    /// How long a client has to send its whole request.
    pub request_timeout_secs: u64,
}

impl Default for Api {
    fn default() -> Api {
        Api {
            listen: "127.0.0.1:8090".into(),
            key: None,
            key_file: None,
            moderation_file: None,
            max_body_bytes: 64 * 1024,
            request_timeout_secs: 10,
        }
    }
}

impl Api {
    /// Where bans and mutes are kept, if anywhere: `moderation_file`, or `moderation.json`
    /// beside the history file.
    pub fn moderation_path(&self, history: &History) -> Option<PathBuf> {
        self.moderation_file.clone().or_else(|| {
            let dir = history.file.as_ref()?.parent()?;
            Some(dir.join("moderation.json"))
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let addr = self.listen.parse::<std::net::SocketAddr>().map_err(|e| {
            invalid(format!("api.listen: {:?} is not an address: {e}", self.listen))
        })?;
        match &self.key {
            Some(key) if key.0.len() < MIN_API_KEY_BYTES => Err(invalid(format!(
                "api.key: use at least {MIN_API_KEY_BYTES} bytes (e.g. `openssl rand -hex 32`)"
            ))),
            None if !addr.ip().is_loopback() => Err(invalid(format!(
                "api: listening on {addr}, beyond this machine, needs a key (api.key_file or \
                 {API_KEY_ENV})"
            ))),
            _ if self.max_body_bytes < 1024 => {
                Err(invalid("api.max_body_bytes: must be at least 1024"))
            }
            _ if self.request_timeout_secs == 0 => {
                Err(invalid("api.request_timeout_secs: must be at least 1"))
            }
            _ => Ok(()),
        }
    }
}

/// Fills in a secret from, in this order: the environment variable `env` (which then also
/// replaces the file), the value written in the configuration, the file it names (`file_field`;
/// surrounding whitespace ignored).
fn resolve_secret(
    env: &str,
    value: &mut Option<Secret>,
    file: &mut Option<PathBuf>,
    file_field: &str,
) -> Result<(), ConfigError> {
    if let Ok(from_env) = std::env::var(env)
        && !from_env.is_empty()
    {
        *value = Some(Secret(from_env));
        *file = None;
    }
    if value.is_none()
        && let Some(path) = file
    {
        let text = std::fs::read_to_string(&*path)
            .map_err(|e| invalid(format!("{file_field}: cannot read {}: {e}", path.display())))?;
        *value = Some(Secret(text.trim().to_string()));
    }
    Ok(())
}

/// A configuration that cannot be used, with a message that says which field and why.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// The hub's settings from the file's. The conversion lives here, on the configuration side, so
/// that the hub does not depend on the file format.
impl From<&Config> for HubConfig {
    fn from(c: &Config) -> HubConfig {
        HubConfig {
            max_connections: c.limits.max_connections,
            max_connections_per_user: c.limits.max_connections_per_user,
            max_connections_per_ip: c.limits.max_connections_per_ip,
            send_queue: c.limits.send_queue,
            rate_per_sec: c.limits.rate_per_sec,
            rate_burst: c.limits.rate_burst,
            violations_before_close: c.limits.violations_before_close,
            ping_interval: Duration::from_secs(c.heartbeat.ping_interval_secs),
            pong_timeout: Duration::from_secs(c.heartbeat.pong_timeout_secs),
            idle_timeout: (c.idle.timeout_secs > 0)
                .then(|| Duration::from_secs(c.idle.timeout_secs)),
            idle_check_interval: Duration::from_secs(c.idle.check_interval_secs),
            presence_interval: Duration::from_millis(c.presence_interval_ms),
            presence_deliveries_per_sec: crate::hub::PRESENCE_DELIVERIES_PER_SEC,
            presence_grace: Duration::from_millis(c.presence.grace_ms),
            token_leeway: Duration::from_secs(c.auth.leeway_secs),
            history_size: c.history.size,
            history_on_join: c.history.on_join,
            persist_history: c.history.file.is_some(),
            cluster: c.cluster.is_some(),
            // `Config::check` has refused a section that does not make a policy.
            channels: c
                .channels
                .as_ref()
                .and_then(|section| Policy::new(section, c.history.size).ok()),
            max_channels: c.limits.max_channels,
            max_channels_per_connection: c.limits.max_channels_per_connection,
        }
    }
}

/// The origin the production template allows until it is edited: `--check-config` (and so the
/// systemd unit's `ExecStartPre`) refuses it, so that a copied template cannot go live allowing
/// nobody, or be "fixed" by emptying the list, which allows everyone.
pub const ORIGIN_PLACEHOLDER: &str = "https://chat.example.com";

/// An entry of `allowed_origins` as a browser sends the `Origin` header: a scheme and a host
/// (and port), nothing after. An entry with a path or a trailing slash would never match.
fn check_origin(origin: &str) -> Result<(), ConfigError> {
    if origin == ORIGIN_PLACEHOLDER {
        return Err(invalid(format!(
            "allowed_origins: {ORIGIN_PLACEHOLDER:?} is the template's placeholder; put your \
             site's origin there (as the browser shows it, e.g. \"https://forum.example.org\")"
        )));
    }
    let host = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
    match host {
        Some(host) if !host.is_empty() && !host.contains('/') => Ok(()),
        _ => Err(invalid(format!(
            "allowed_origins: {origin:?} is not an origin: write scheme and host only, \
             like \"https://forum.example.org\" (no path, no trailing slash)"
        ))),
    }
}

impl Config {
    /// Reads, parses and validates a configuration file, taking the secret from the environment
    /// when it is set there.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
        let mut config =
            Config::parse(&text).map_err(|e| invalid(format!("{}: {}", path.display(), e.0)))?;
        let auth = &mut config.auth;
        resolve_secret(SECRET_ENV, &mut auth.secret, &mut auth.secret_file, "auth.secret_file")?;
        if let Some(api) = &mut config.api {
            resolve_secret(API_KEY_ENV, &mut api.key, &mut api.key_file, "api.key_file")?;
        }
        config.validate()?;
        Ok(config)
    }

    /// Parses configuration text (JSON, in which a line may end with a `//` comment) without
    /// reading files or the environment.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        // serde_json names the unknown field and its line in the message; comments become
        // spaces, so lines and columns stay where the file has them.
        serde_json::from_str(&blank_comments(text)).map_err(|e| invalid(e.to_string()))
    }

    /// Checks values that parse but cannot work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| invalid(format!("listen: {:?} is not an address: {e}", self.listen)))?;
        if let Some(metrics) = &self.metrics_listen {
            metrics.parse::<std::net::SocketAddr>().map_err(|e| {
                invalid(format!("metrics_listen: {metrics:?} is not an address: {e}"))
            })?;
        }
        for origin in &self.allowed_origins {
            check_origin(origin)?;
        }
        if self.log_level.parse::<log::LevelFilter>().is_err() {
            return Err(invalid(format!("log_level: unknown level {:?}", self.log_level)));
        }
        let a = &self.auth;
        if a.algorithm.is_hmac() {
            match &a.secret {
                None => {
                    return Err(invalid(format!(
                        "auth: {:?} needs a secret (auth.secret, auth.secret_file or {SECRET_ENV})",
                        a.algorithm
                    )));
                }
                Some(s) if s.0.len() < 16 => {
                    return Err(invalid("auth.secret: use at least 16 bytes"));
                }
                Some(_) => {}
            }
        } else if a.public_key_file.is_none() {
            return Err(invalid(format!(
                "auth: {:?} needs auth.public_key_file (a PEM public key)",
                a.algorithm
            )));
        }
        if self.dev_login && !a.algorithm.is_hmac() {
            return Err(invalid("dev_login: needs an HS algorithm to mint tokens with"));
        }
        if a.user_id_claim.is_empty() {
            return Err(invalid("auth.user_id_claim: must not be empty"));
        }
        let l = &self.limits;
        if l.max_connections == 0 {
            return Err(invalid("limits.max_connections: must be at least 1"));
        }
        if l.max_connections_per_user == 0 {
            return Err(invalid("limits.max_connections_per_user: must be at least 1"));
        }
        if l.max_content_chars == 0 {
            return Err(invalid("limits.max_content_chars: must be at least 1"));
        }
        if l.max_message_bytes < 128 {
            return Err(invalid("limits.max_message_bytes: must be at least 128"));
        }
        if l.violations_before_close == 0 {
            return Err(invalid("limits.violations_before_close: must be at least 1"));
        }
        if !(l.rate_per_sec.is_finite() && l.rate_per_sec > 0.0) {
            return Err(invalid("limits.rate_per_sec: must be a positive number"));
        }
        if l.rate_burst < 1 {
            return Err(invalid("limits.rate_burst: must be at least 1"));
        }
        if l.send_queue < 2 {
            return Err(invalid("limits.send_queue: must be at least 2"));
        }
        if l.handshake_timeout_secs == 0 {
            return Err(invalid("limits.handshake_timeout_secs: must be at least 1"));
        }
        if l.max_pending_handshakes == 0 {
            return Err(invalid("limits.max_pending_handshakes: must be at least 1"));
        }
        if l.max_pending_handshakes_per_ip > l.max_pending_handshakes {
            return Err(invalid(format!(
                "limits.max_pending_handshakes_per_ip ({}) must not exceed \
                 limits.max_pending_handshakes ({})",
                l.max_pending_handshakes_per_ip, l.max_pending_handshakes
            )));
        }
        for (name, bytes) in [
            ("socket_send_buffer", l.socket_send_buffer),
            ("socket_recv_buffer", l.socket_recv_buffer),
        ] {
            if bytes != 0 && !(2048..=16 << 20).contains(&bytes) {
                return Err(invalid(format!(
                    "limits.{name}: 0 (the kernel's default) or from 2048 to 16777216 bytes"
                )));
            }
        }
        if l.listen_backlog == 0 {
            return Err(invalid("limits.listen_backlog: must be at least 1"));
        }
        if !(64..=1 << 20).contains(&l.read_buffer_bytes) {
            return Err(invalid("limits.read_buffer_bytes: must be between 64 and 1048576"));
        }
        let h = &self.heartbeat;
        if h.ping_interval_secs == 0 {
            return Err(invalid("heartbeat.ping_interval_secs: must be at least 1"));
        }
        if h.ping_interval_secs >= h.pong_timeout_secs {
            return Err(invalid(format!(
                "heartbeat: ping_interval_secs ({}) must be below pong_timeout_secs ({})",
                h.ping_interval_secs, h.pong_timeout_secs
            )));
        }
        if self.idle.timeout_secs > 0 && self.idle.check_interval_secs == 0 {
            return Err(invalid("idle.check_interval_secs: must be at least 1"));
        }
        let history = &self.history;
        if history.on_join > history.size {
            return Err(invalid(format!(
                "history.on_join ({}) must not exceed history.size ({})",
                history.on_join, history.size
            )));
        }
        if history.file.is_some() && history.size == 0 {
            return Err(invalid("history.file needs history.size above 0"));
        }
        if history.size >= l.send_queue {
            return Err(invalid(format!(
                "history.size ({}) must be below limits.send_queue ({}): a replay is queued whole",
                history.size, l.send_queue
            )));
        }
        if self.presence_interval_ms == 0 {
            return Err(invalid("presence_interval_ms: must be at least 1"));
        }
        if let Some(cluster) = &self.cluster {
            self.validate_cluster(cluster)?;
        }
        if let Some(api) = &self.api {
            api.validate()?;
        }
        if l.max_channels == 0 || l.max_channels_per_connection == 0 {
            return Err(invalid(
                "limits.max_channels and limits.max_channels_per_connection: must be at least 1",
            ));
        }
        if let Some(channels) = &self.channels {
            let policy = Policy::new(channels, self.history.size).map_err(invalid)?;
            if policy.longest_history() >= l.send_queue {
                return Err(invalid(format!(
                    "channels.rules: a history of {} must be below limits.send_queue ({}): a \
                     replay is queued whole",
                    policy.longest_history(),
                    l.send_queue
                )));
            }
        }
        Ok(())
    }

    fn validate_cluster(&self, cluster: &Cluster) -> Result<(), ConfigError> {
        if !cfg!(feature = "redis") {
            return Err(invalid(
                "cluster: this build has no Redis support; build with `--features redis`",
            ));
        }
        if self.history.file.is_some() {
            return Err(invalid("history.file: a cluster keeps its history in Redis; remove it"));
        }
        if cluster.outbox == 0 {
            return Err(invalid("cluster.outbox: must be at least 1"));
        }
        if cluster.presence_ttl_secs < 3 {
            return Err(invalid("cluster.presence_ttl_secs: must be at least 3"));
        }
        if cluster.prefix.is_empty() {
            return Err(invalid("cluster.prefix: must not be empty"));
        }
        // The name goes into key names and channel messages (`cluster/wire.rs`).
        let name_byte = |b: u8| b.is_ascii_alphanumeric() || b"_.:-".contains(&b);
        if cluster.instance.len() > 64 || !cluster.instance.bytes().all(name_byte) {
            return Err(invalid("cluster.instance: at most 64 of A-Z a-z 0-9 _ . : -"));
        }
        let url = cluster.redis_url.as_str();
        let Some(rest) = url.strip_prefix("redis://") else {
            return Err(invalid(format!("cluster.redis_url: {url:?} must start with redis://")));
        };
        if rest.split('/').next().is_some_and(|authority| authority.contains('@')) {
            return Err(invalid("cluster.redis_url: put the password in cluster.password"));
        }
        Ok(())
    }

    /// The configuration as JSON with every secret masked, for the start-up log line.
    pub fn redacted_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("<unprintable: {e}>"))
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.handshake_timeout_secs)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// `text` with every `//` comment outside a string replaced by spaces, up to the end of its line.
fn blank_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped, mut in_comment) = (false, false, false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_comment {
            in_comment = c != '\n';
            out.push(if in_comment { ' ' } else { c });
            continue;
        }
        if in_string {
            (in_string, escaped) = (escaped || c != '"', !escaped && c == '\\');
        } else if c == '"' {
            in_string = true;
        } else if c == '/' && chars.peek() == Some(&'/') {
            in_comment = true;
            out.push(' ');
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_are_allowed_at_the_end_of_a_line() {
        let text = "{ // the chat\n  \"listen\": \"127.0.0.1:1\", // not a \"string\"\n  // a whole line\n  \"allowed_origins\": [\"https://a.example//x\", \"\\\\\"]\n}";
        let c = Config::parse(text).unwrap();
        assert_eq!(c.listen, "127.0.0.1:1");
        assert_eq!(c.allowed_origins, ["https://a.example//x", "\\"]);
        let err = Config::parse("{\n // fine\n \"nope\": 1}").unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
    }

    fn with_secret(extra: &str) -> String {
        format!(r#"{{"auth": {{"secret": "0123456789abcdef0123"}}{extra}}}"#)
    }

    #[test]
    fn empty_file_is_all_defaults_but_needs_a_secret() {
        let c = Config::parse("{}").unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080");
        assert_eq!(c.limits.rate_burst, 10);
        assert_eq!(c.heartbeat.pong_timeout_secs, 60);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("secret"), "{err}");
        Config::parse(&with_secret("")).unwrap().validate().unwrap();
    }

    #[test]
    fn unknown_field_is_named() {
        let err = Config::parse(r#"{"limits": {"max_conections": 5}}"#).unwrap_err().to_string();
        assert!(err.contains("max_conections"), "{err}");
    }

    #[test]
    fn ping_must_be_below_pong() {
        let text =
            with_secret(r#", "heartbeat": {"ping_interval_secs": 60, "pong_timeout_secs": 60}"#);
        let err = Config::parse(&text).unwrap().validate().unwrap_err().to_string();
        assert!(err.contains("ping_interval_secs"), "{err}");
    }

    #[test]
    fn burst_must_be_positive() {
        let text = with_secret(r#", "limits": {"rate_burst": 0}"#);
        let err = Config::parse(&text).unwrap().validate().unwrap_err().to_string();
        assert!(err.contains("rate_burst"), "{err}");
    }

    #[test]
    fn public_key_algorithms_need_a_key() {
        let text = r#"{"auth": {"algorithm": "ES256"}}"#;
        let err = Config::parse(text).unwrap().validate().unwrap_err().to_string();
        assert!(err.contains("public_key_file"), "{err}");
    }

    #[cfg(feature = "redis")]
    #[test]
    fn an_instance_name_is_a_plain_word() {
        for (name, ok) in [("", true), ("pi-4.b:1_x", true), ("a\nb", false), ("a b", false)] {
            let cluster = format!(r#", "cluster": {{"instance": {}}}"#, serde_json::json!(name));
            let result = Config::parse(&with_secret(&cluster)).unwrap().validate();
            assert_eq!(result.is_ok(), ok, "{name:?}: {result:?}");
        }
        let long = format!(r#", "cluster": {{"instance": "{}"}}"#, "x".repeat(65));
        assert!(Config::parse(&with_secret(&long)).unwrap().validate().is_err());
    }

    #[test]
    fn a_channels_section_is_checked() {
        let section = r#", "channels": {"default": "general",
            "rules": [{"pattern": "general", "join": "public"}]}"#;
        Config::parse(&with_secret(section)).unwrap().validate().unwrap();
        let bad = with_secret(r#", "channels": {"rules": [{"pattern": "a*b", "join": "public"}]}"#);
        let err = Config::parse(&bad).unwrap().validate().unwrap_err().to_string();
        assert!(err.contains("channels.rules[0].pattern"), "{err}");
        let none = with_secret(r#", "limits": {"max_channels_per_connection": 0}"#);
        let err = Config::parse(&none).unwrap().validate().unwrap_err().to_string();
        assert!(err.contains("max_channels_per_connection"), "{err}");
    }

    #[test]
    fn an_api_needs_a_long_key_beyond_loopback() {
        let check = |api: &str| {
            Config::parse(&with_secret(&format!(r#","api":{api}"#))).unwrap().validate()
        };
        assert!(check(r#"{"listen":"127.0.0.1:8090"}"#).is_ok());
        let open = check(r#"{"listen":"0.0.0.0:8090"}"#).unwrap_err().0;
        assert!(open.contains("needs a key"), "{open}");
        let short = check(r#"{"listen":"0.0.0.0:8090","key":"short"}"#).unwrap_err().0;
        assert!(short.contains("at least 32 bytes"), "{short}");
        let key = "k".repeat(32);
        assert!(check(&format!(r#"{{"listen":"0.0.0.0:8090","key":"{key}"}}"#)).is_ok());
        let c = Config::parse(&with_secret(&format!(r#","api":{{"key":"{key}"}}"#))).unwrap();
        assert!(!c.redacted_json().contains(&key));
    }

    #[test]
    fn secrets_never_print() {
        let c = Config::parse(&with_secret("")).unwrap();
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
        assert!(!c.redacted_json().contains("0123456789abcdef"));
        assert!(c.redacted_json().contains("<redacted>"));
    }
}
