//! `GET /metrics`: the hub's counters and the process's vitals in the Prometheus text exposition
//! format, version 0.0.4.
//!
//! The counters are plain integers in the hub and the event loop, bumped without locks or atomics
//! (there is one thread); this module only formats them when scraped. `prometheus-client` would
//! cost little (measured: +35 KB, 2.4%, on the stripped release binary) but its metrics are
//! `Arc`ed atomics in a registry: the pure hub would either hold them or have every counter
//! copied into them at each scrape. The format is simple enough to write, and a test reads it
//! with a real Prometheus parser (`tests/operations.rs`).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};

use crate::handshakes::{HandshakeRefusal, Handshakes};
use crate::http::Refusal;
use crate::hub::{Action, Stats};
use crate::protocol::CloseReason;

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Counters kept by the event loop itself (the hub never sees refused connections).
#[derive(Debug, Default)]
pub struct ShellCounters {
    /// By [`Refusal::index`].
    refusals: [Cell<u64>; Refusal::LABELS.len()],
    /// By [`Refusal::auth_index`].
    auth_failures: [Cell<u64>; Refusal::AUTH_LABELS.len()],
    /// `accept` calls that failed (out of file descriptors, usually).
    pub accept_errors: Cell<u64>,
    /// Server API requests by endpoint and status.
    api_requests: RefCell<BTreeMap<(&'static str, u16), u64>>,
    /// Moderation actions carried out, by [`Action::index`].
    actions: [Cell<u64>; Action::LABELS.len()],
}

impl ShellCounters {
    /// Counts a refusal, and, for a token or origin refusal, an auth failure.
    pub fn count(&self, refusal: Refusal) {
        let bump = |cell: &Cell<u64>| cell.set(cell.get() + 1);
        bump(&self.refusals[refusal.index()]);
        if let Some(i) = refusal.auth_index() {
            bump(&self.auth_failures[i]);
        }
    }

    /// Counts a server API request by its endpoint and answer.
    pub fn count_api(&self, endpoint: &'static str, status: u16) {
        *self.api_requests.borrow_mut().entry((endpoint, status)).or_insert(0) += 1;
    }

    /// Counts a moderation action the API carried out.
    pub fn count_action(&self, action: &Action) {
        let cell = &self.actions[action.index()];
        cell.set(cell.get() + 1);
    }
}

/// The cluster broker's state and counters (`cluster/`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BrokerStats {
    /// Connected to Redis and caught up.
    pub up: bool,
    /// Successful connections to Redis, the first included.
    pub connects: u64,
    /// Chat messages this instance published.
    pub published: u64,
    /// Chat messages from every instance that reached this hub through Redis.
    pub received: u64,
    /// Chat messages that never reached Redis (the outbox was full, or Redis refused them).
    pub dropped: u64,
}

/// Everything one scrape reports.
pub struct Snapshot<'a> {
    pub stats: &'a Stats,
    pub connections: usize,
    /// Distinct users here; in a cluster, `shown_online` has everyone.
    pub online: usize,
    /// The online count clients see: in a cluster, all instances'.
    pub shown_online: usize,
    pub broker: Option<BrokerStats>,
    pub history: usize,
    pub channels: usize,
    /// Bans and mutes in force.
    pub bans: usize,
    pub mutes: usize,
    pub shell: &'a ShellCounters,
    pub handshakes: &'a Handshakes,
    pub start_time_unix_secs: f64,
}

/// Renders a scrape.
pub fn render(s: &Snapshot<'_>) -> String {
    let mut out = Exposition(String::with_capacity(4096));
    let st = s.stats;
    out.single("shequ_chat_connections", "gauge", "Open WebSocket connections.", s.connections);
    out.single(
        "shequ_chat_online_users",
        "gauge",
        "Distinct users with at least one open connection.",
        s.online,
    );
    for (name, help, value) in [
        (
            "shequ_chat_connections_accepted_total",
            "WebSocket connections accepted.",
            st.connections_accepted,
        ),
        (
            "shequ_chat_messages_received_total",
            "Frames with content received from clients (chat, ping, auth, and refused ones).",
            st.messages_received,
        ),
        ("shequ_chat_messages_broadcast_total", "Chat messages broadcast.", st.messages_broadcast),
        (
            "shequ_chat_deliveries_total",
            "Chat messages queued to receivers (one broadcast to N connections counts N).",
            st.deliveries,
        ),
        (
            "shequ_chat_replacements_total",
            "Connections replaced by a newer one of the same user.",
            st.replacements,
        ),
        (
            "shequ_chat_heartbeat_failures_total",
            "Connections closed for silence past the pong timeout.",
            st.heartbeat_failures,
        ),
        (
            "shequ_chat_rate_limited_total",
            "Chat messages dropped by the rate limit.",
            st.rate_limited,
        ),
        (
            "shequ_chat_invalid_messages_total",
            "Frames refused as invalid (bad JSON, shape, content, type, binary, auth).",
            st.invalid_messages,
        ),
        ("shequ_chat_channel_joins_total", "Channels joined, on connect or by join.", st.joins),
        ("shequ_chat_channel_leaves_total", "Channels left by leave.", st.leaves),
        (
            "shequ_chat_channel_refusals_total",
            "join, leave and chat frames refused for a reason of their channel.",
            st.channel_refusals,
        ),
        (
            "shequ_chat_channels_evicted_total",
            "Dormant channels evicted with their history to make room at limits.max_channels.",
            st.channels_evicted,
        ),
        (
            "shequ_chat_muted_refusals_total",
            "Chat messages refused because the site muted their sender.",
            st.muted_refusals,
        ),
    ] {
        out.single(name, "counter", help, value);
    }
    out.single("shequ_chat_history_messages", "gauge", "Chat messages held for replay.", s.history);
    out.single(
        "shequ_chat_channels",
        "gauge",
        "Live channels (someone in them, or history); the room without channels.",
        s.channels,
    );
    if let Some(b) = &s.broker {
        render_broker(&mut out, b, st, s.shown_online);
    }
    let name = "shequ_chat_recoveries_total";
    out.family(name, "counter", "Connects with `since`, by whether every missed message was held.");
    out.sample(name, &[("result", "recovered")], st.recoveries_recovered);
    out.sample(name, &[("result", "too_old")], st.recoveries_too_old);
    let name = "shequ_chat_refusals_total";
    out.family(name, "counter", "Requests refused before the upgrade, by reason.");
    for (label, count) in Refusal::LABELS.iter().zip(&s.shell.refusals) {
        out.sample(name, &[("reason", label)], count.get());
    }
    let name = "shequ_chat_auth_failures_total";
    out.family(name, "counter", "Upgrades refused for their token or origin, by reason.");
    for (label, count) in Refusal::AUTH_LABELS.iter().zip(&s.shell.auth_failures) {
        out.sample(name, &[("reason", label)], count.get());
    }
    out.single(
        "shequ_chat_pending_handshakes",
        "gauge",
        "Accepted sockets whose HTTP handshake is under way.",
        s.handshakes.pending(),
    );
    let name = "shequ_chat_handshakes_refused_total";
    out.family(name, "counter", "Sockets closed at once: too many handshakes under way, by limit.");
    for reason in HandshakeRefusal::ALL {
        out.sample(name, &[("limit", reason.label())], s.handshakes.refused(reason));
    }
    out.single(
        "shequ_chat_accept_waits_total",
        "counter",
        "Times the chat port stopped accepting until one of max_pending_handshakes ended.",
        s.handshakes.waits(),
    );
    out.single(
        "shequ_chat_accept_errors_total",
        "counter",
        "Failed accept calls (out of file descriptors, usually).",
        s.shell.accept_errors.get(),
    );
    out.single("shequ_chat_bans", "gauge", "Bans in force (server API).", s.bans);
    out.single("shequ_chat_mutes", "gauge", "Mutes in force (server API).", s.mutes);
    let name = "shequ_chat_moderation_actions_total";
    out.family(name, "counter", "Moderation actions carried out through the server API.");
    for (label, count) in Action::LABELS.iter().zip(&s.shell.actions) {
        out.sample(name, &[("action", label)], count.get());
    }
    let name = "shequ_chat_api_requests_total";
    out.family(name, "counter", "Server API requests, by endpoint and HTTP status.");
    for ((endpoint, status), count) in s.shell.api_requests.borrow().iter() {
        out.sample(name, &[("endpoint", endpoint), ("status", &status.to_string())], *count);
    }
    let name = "shequ_chat_disconnects_total";
    out.family(name, "counter", "Connections ended, by reason.");
    for reason in CloseReason::ALL {
        out.sample(name, &[("reason", reason.label())], st.disconnects[reason.index()]);
    }
    if let Some(rss) = resident_memory_bytes() {
        out.single("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", rss);
    }
    if let Some(fds) = open_fds() {
        out.single("process_open_fds", "gauge", "Number of open file descriptors.", fds);
    }
    out.single(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch in seconds.",
        s.start_time_unix_secs,
    );
    let name = "shequ_chat_build_info";
    out.family(name, "gauge", "Always 1; the version is in the label.");
    out.sample(name, &[("version", env!("CARGO_PKG_VERSION"))], 1);
    out.0
}

fn render_broker(out: &mut Exposition, b: &BrokerStats, st: &Stats, cluster_online: usize) {
    out.single("shequ_chat_broker_up", "gauge", "1 while Redis is reachable.", u8::from(b.up));
    for (name, help, value) in [
        ("shequ_chat_broker_connects_total", "Connections made to Redis.", b.connects),
        ("shequ_chat_broker_published_total", "Chat messages published to Redis.", b.published),
        (
            "shequ_chat_broker_received_total",
            "Chat messages received from Redis, from every instance.",
            b.received,
        ),
        (
            "shequ_chat_broker_dropped_total",
            "Chat messages that could not be published (outbox full or refused).",
            b.dropped,
        ),
        (
            "shequ_chat_replaced_elsewhere_total",
            "Connections closed because their user connected to another instance.",
            st.replaced_elsewhere,
        ),
    ] {
        out.single(name, "counter", help, value);
    }
    out.single(
        "shequ_chat_cluster_online_users",
        "gauge",
        "Distinct users on all instances, as shown to clients.",
        cluster_online,
    );
}

struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                // Label values here are our own words and the crate version: nothing to escape.
                let _ = write!(self.0, "{k}=\"{v}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// `VmRSS` from `/proc/self/status`, in bytes.
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_help_and_type_and_each_sample_parses() {
        let stats = Stats { deliveries: 7, ..Stats::default() };
        let shell = ShellCounters::default();
        shell.count(Refusal::Origin);
        shell.count(Refusal::Capacity);
        shell.count_api("ban", 200);
        shell.count_api("ban", 200);
        shell.count_api("other", 401);
        shell.count_action(&crate::hub::Action::Delete { id: 1 });
        let handshakes = Handshakes::new(&crate::config::Limits::default(), &[]);
        let text = render(&Snapshot {
            stats: &stats,
            connections: 2,
            online: 1,
            shown_online: 3,
            broker: Some(BrokerStats { up: true, dropped: 4, ..BrokerStats::default() }),
            history: 0,
            channels: 5,
            bans: 6,
            mutes: 0,
            shell: &shell,
            handshakes: &handshakes,
            start_time_unix_secs: 1.5,
        });
        assert!(text.contains("shequ_chat_deliveries_total 7\n"));
        assert!(text.contains("shequ_chat_channels 5\n"));
        assert!(text.contains("shequ_chat_bans 6\n"));
        assert!(
            text.contains("shequ_chat_api_requests_total{endpoint=\"ban\",status=\"200\"} 2\n")
        );
        assert!(
            text.contains("shequ_chat_api_requests_total{endpoint=\"other\",status=\"401\"} 1\n")
        );
        assert!(text.contains("shequ_chat_moderation_actions_total{action=\"delete\"} 1\n"));
        assert!(text.contains("shequ_chat_auth_failures_total{reason=\"origin\"} 1\n"));
        assert!(text.contains("shequ_chat_refusals_total{reason=\"origin\"} 1\n"));
        assert!(text.contains("shequ_chat_refusals_total{reason=\"capacity\"} 1\n"));
        assert!(!text.contains("shequ_chat_auth_failures_total{reason=\"capacity\"}"));
        assert!(text.contains("shequ_chat_disconnects_total{reason=\"too_slow\"} 0\n"));
        assert!(text.contains("shequ_chat_broker_up 1\n"));
        assert!(text.contains("shequ_chat_broker_dropped_total 4\n"));
        assert!(text.contains("shequ_chat_cluster_online_users 3\n"));
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(typed.contains(name), "sample before its TYPE: {line}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
        assert!(typed.len() >= 15);
    }
}
