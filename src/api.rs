//! The server API: what the site's backend asks of the chat (publish, disconnect, ban, mute,
//! delete, presence, history, info), over HTTP/1.1 with JSON, on a listener of its own
//! (`api.listen`). `docs/API.md` is the reference and `docs/api.yaml` its OpenAPI description.
//!
//! A request is read whole (head and body, each bounded in size, the whole within
//! `api.request_timeout_secs`), checked for its key, parsed by [`parse`] into a [`Call`] (pure:
//! the property test feeds it anything), and answered. A call that changes the chat goes to the
//! hub through the same door as every client frame ([`Shell::ask`]): the hub decides, and the
//! event loop closes connections and writes files after the hub's borrow has ended. One request
//! per connection; the answer closes it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, FutureExt};
use log::{debug, info, warn};
use serde::Deserialize;
use serde_json::{Value, json};
use smol::{Async, LocalExecutor, Timer};

use crate::config::Config;
use crate::driver::{Shell, now};
use crate::hub::moderation::{Ban, Mute};
use crate::hub::{Action, Post, SITE_TICKETS, SiteError};
use crate::protocol::validate_content;

/// API connections open at once; more are closed at once. The API serves one backend, not the
/// public: a handful is plenty, and the bound keeps a runaway client from taking descriptors.
pub const MAX_API_CONNECTIONS: usize = 64;
/// The most messages `GET /api/history` returns, whatever `limit` asks.
pub const MAX_HISTORY_LIMIT: usize = 1000;
/// The history returned without `limit`.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;
/// The longest user id or name the API takes.
pub const MAX_USER_BYTES: usize = 256;
/// In a cluster, how long `POST /api/publish` waits for Redis to number the message.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest `reason` the API takes.
pub const MAX_REASON_CHARS: usize = 500;

/// A request the API understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Publish(Post),
    Act(Action),
    Bans,
    Mutes,
    Presence { channel: Option<String> },
    History { channel: Option<String>, since: Option<u64>, limit: usize },
    Info,
}

/// An answer other than 200: the status and a one-line reason (`{"error": …}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub message: String,
}

fn refused(status: u16, message: impl Into<String>) -> Refused {
    Refused { status, message: message.into() }
}

/// Every `endpoint` label of `shequ_chat_api_requests_total`.
pub const ENDPOINTS: [&str; 13] = [
    "publish",
    "disconnect",
    "ban",
    "unban",
    "bans",
    "mute",
    "unmute",
    "mutes",
    "delete",
    "presence",
    "history",
    "info",
    "other",
];

/// The endpoint a path names, as its metric label, and the method it takes; `None` for a path
/// that is none.
fn route(path: &str) -> Option<(&'static str, &'static str)> {
    let segments: Vec<&str> = path.split('/').collect();
    let ["", "api", rest @ ..] = segments.as_slice() else {
        return None;
    };
    Some(match rest {
        ["publish"] => ("publish", "POST"),
        ["disconnect"] => ("disconnect", "POST"),
        ["ban"] => ("ban", "POST"),
        ["ban", _] => ("unban", "DELETE"),
        ["bans"] => ("bans", "GET"),
        ["mute"] => ("mute", "POST"),
        ["mute", _] => ("unmute", "DELETE"),
        ["mutes"] => ("mutes", "GET"),
        ["messages", _] => ("delete", "DELETE"),
        ["presence"] => ("presence", "GET"),
        ["history"] => ("history", "GET"),
        ["info"] => ("info", "GET"),
        _ => return None,
    })
}

/// The endpoint a request is for, by method and path, whatever else is wrong with it: a label
/// of [`ENDPOINTS`].
pub fn endpoint(method: &str, path: &str) -> &'static str {
    match route(path) {
        Some((label, allowed)) if allowed == method => label,
        _ => "other",
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    channel: Option<String>,
    content: String,
    user_id: Option<String>,
    username: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    user_id: String,
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BanBody {
    user_id: String,
    until: Option<u64>,
    for_secs: Option<u64>,
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MuteBody {
    user_id: String,
    channel: Option<String>,
    until: Option<u64>,
    for_secs: Option<u64>,
    reason: Option<String>,
}

/// Parses one request: `method`, `path` and `query` from the head, the body, the content limit
/// of chat messages and the time (for `for_secs`). Checks everything that does not need the
/// hub's state.
pub fn parse(
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
    max_content_chars: usize,
    now_secs: u64,
) -> Result<Call, Refused> {
    let (endpoint, allowed) = route(path).ok_or_else(|| refused(404, "not found"))?;
    if method != allowed {
        return Err(refused(405, format!("use {allowed}")));
    }
    // The user id or message id of `/api/ban/{user_id}` and the like.
    let last = path.rsplit('/').next().unwrap_or_default();
    let param = |name: &str| query_param(query, name);
    match endpoint {
        "publish" => {
            let b: PublishBody = json_body(body)?;
            validate_content(&b.content, max_content_chars)
                .map_err(|e| refused(400, format!("content: {}", e.message())))?;
            let sender = match (b.user_id, b.username) {
                (None, None) => None,
                (None, Some(_)) => return Err(refused(400, "username needs user_id")),
                (Some(id), name) => {
                    let id = user_field("user_id", id)?;
                    let name = user_field("username", name.unwrap_or_else(|| id.clone()))?;
                    Some((id, name))
                }
            };
            // The ticket is the caller's to give (`Shell::next_ticket`).
            let ticket = SITE_TICKETS;
            Ok(Call::Publish(Post { channel: b.channel, content: b.content, sender, ticket }))
        }
        "disconnect" => {
            let b: DisconnectBody = json_body(body)?;
            let user_id = user_field("user_id", b.user_id)?;
            let reason = reason_field(b.reason)?;
            Ok(Call::Act(Action::Disconnect { user_id, reason }))
        }
        "ban" => {
            let b: BanBody = json_body(body)?;
            let until = until_field(b.until, b.for_secs, now_secs)?;
            Ok(Call::Act(Action::Ban(Ban {
                user_id: user_field("user_id", b.user_id)?,
                until,
                reason: reason_field(b.reason)?,
                since: now_secs,
            })))
        }
        "mute" => {
            let b: MuteBody = json_body(body)?;
            let Some(until) = until_field(b.until, b.for_secs, now_secs)? else {
                return Err(refused(400, "a mute needs until or for_secs"));
            };
            Ok(Call::Act(Action::Mute(Mute {
                user_id: user_field("user_id", b.user_id)?,
                channel: b.channel,
                until,
                reason: reason_field(b.reason)?,
            })))
        }
        "unban" => {
            let user_id = user_field("user id", path_segment(last)?)?;
            Ok(Call::Act(Action::Unban { user_id }))
        }
        "unmute" => {
            let user_id = user_field("user id", path_segment(last)?)?;
            Ok(Call::Act(Action::Unmute { user_id, channel: param("channel")? }))
        }
        "delete" => match last.parse::<u64>() {
            Ok(id) if id > 0 => Ok(Call::Act(Action::Delete { id })),
            _ => Err(refused(400, "a message id is a whole number above 0")),
        },
        "bans" => Ok(Call::Bans),
        "mutes" => Ok(Call::Mutes),
        "presence" => Ok(Call::Presence { channel: param("channel")? }),
        "history" => {
            let number = |name: &str| -> Result<Option<u64>, Refused> {
                param(name)?
                    .map(|v| v.parse::<u64>())
                    .transpose()
                    .map_err(|_| refused(400, format!("{name}: a whole number of 0 or more")))
            };
            let limit = number("limit")?.map_or(DEFAULT_HISTORY_LIMIT, |l| l as usize);
            if !(1..=MAX_HISTORY_LIMIT).contains(&limit) {
                return Err(refused(400, format!("limit: from 1 to {MAX_HISTORY_LIMIT}")));
            }
            Ok(Call::History { channel: param("channel")?, since: number("since")?, limit })
        }
        "info" => Ok(Call::Info),
        _ => Err(refused(404, "not found")),
    }
}

/// The body as `T`; serde's message names the field, the line and the column.
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refused> {
    serde_json::from_slice(body).map_err(|e| refused(400, format!("bad JSON body: {e}")))
}

fn user_field(name: &str, value: String) -> Result<String, Refused> {
    if value.is_empty() || value.len() > MAX_USER_BYTES || value.chars().any(char::is_control) {
        return Err(refused(
            400,
            format!("{name}: 1 to {MAX_USER_BYTES} bytes without control characters"),
        ));
    }
    Ok(value)
}

fn reason_field(reason: Option<String>) -> Result<Option<String>, Refused> {
    match reason {
        Some(r) if r.chars().count() > MAX_REASON_CHARS || r.chars().any(char::is_control) => {
            Err(refused(400, format!("reason: at most {MAX_REASON_CHARS} characters, one line")))
        }
        reason => Ok(reason),
    }
}

/// `until` (Unix seconds) or `for_secs` from now; neither: `None`.
fn until_field(
    until: Option<u64>,
    for_secs: Option<u64>,
    now_secs: u64,
) -> Result<Option<u64>, Refused> {
    let until = match (until, for_secs) {
        (Some(_), Some(_)) => return Err(refused(400, "give until or for_secs, not both")),
        (Some(until), None) => until,
        (None, Some(secs)) => now_secs.saturating_add(secs),
        (None, None) => return Ok(None),
    };
    if until <= now_secs {
        return Err(refused(400, "until: must be in the future (Unix seconds)"));
    }
    Ok(Some(until))
}

fn path_segment(segment: &str) -> Result<String, Refused> {
    crate::http::percent_decode(segment).ok_or_else(|| refused(400, "bad percent-encoding in path"))
}

fn query_param(query: &str, name: &str) -> Result<Option<String>, Refused> {
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == name {
            let value = crate::http::percent_decode(value)
                .ok_or_else(|| refused(400, format!("{name}: bad percent-encoding")))?;
            return Ok(Some(value).filter(|v| !v.is_empty()));
        }
    }
    Ok(None)
}

/// Answers a call against the hub: the status and the JSON body.
async fn answer(shell: &Shell, call: Call) -> Result<Value, Refused> {
    let now_secs = now().unix_ms / 1000;
    let changes = matches!(call, Call::Publish(_) | Call::Act(_));
    if changes && !shell.cluster_reachable() {
        // Carried out here alone, it would be lost to the other instances.
        return Err(refused(503, "the chat cannot reach its other servers now; try again"));
    }
    match call {
        Call::Publish(mut post) => {
            post.ticket = shell.next_ticket();
            let published = shell.await_published(post.ticket);
            let id = shell.ask(|hub, now| hub.publish(now, post)).map_err(site_refusal)?;
            let id = match (id, published) {
                (Some(id), _) => Some(id),
                // A cluster: Redis numbers it.
                (None, Some(published)) => published
                    .recv()
                    .or(async {
                        Timer::after(PUBLISH_TIMEOUT).await;
                        Ok(None)
                    })
                    .await
                    .ok()
                    .flatten(),
                (None, None) => None,
            };
            let id = id.ok_or_else(|| {
                refused(503, "the chat could not confirm the message; it may not have been sent")
            })?;
            Ok(json!({ "id": id }))
        }
        Call::Act(action) => {
            if let Action::Mute(Mute { channel: Some(name), .. })
            | Action::Unmute { channel: Some(name), .. } = &action
            {
                shell.hub().site_channel(Some(name)).map_err(site_refusal)?;
            }
            let outcome = shell.ask(|hub, now| hub.act(now, &action));
            if outcome.done {
                shell.counters.count_action(&action);
                info!("api: {}", describe(&action, outcome.closed));
            }
            match action {
                Action::Disconnect { user_id, .. } => {
                    Ok(json!({ "user_id": user_id, "closed": outcome.closed }))
                }
                Action::Ban(ban) => {
                    let mut body = serde_json::to_value(&ban).unwrap_or_default();
                    body["closed"] = outcome.closed.into();
                    Ok(body)
                }
                Action::Mute(mute) => Ok(serde_json::to_value(&mute).unwrap_or_default()),
                Action::Unban { user_id } if outcome.done => Ok(json!({ "user_id": user_id })),
                Action::Unban { .. } => Err(refused(404, "that user is not banned")),
                Action::Unmute { user_id, channel } if outcome.done => {
                    Ok(json!({ "user_id": user_id, "channel": channel }))
                }
                Action::Unmute { .. } => Err(refused(404, "that user is not muted there")),
                Action::Delete { id } if outcome.done => {
                    Ok(json!({ "id": id, "channel": outcome.channel }))
                }
                Action::Delete { .. } => Err(refused(404, "no message with that id is held")),
            }
        }
        Call::Bans => {
            let hub = shell.hub();
            let bans: Vec<&Ban> = hub.moderation().bans(now_secs).collect();
            Ok(json!({ "bans": bans }))
        }
        Call::Mutes => {
            let hub = shell.hub();
            let mutes: Vec<&Mute> = hub.moderation().mutes(now_secs).collect();
            Ok(json!({ "mutes": mutes }))
        }
        Call::Presence { channel } => {
            let hub = shell.hub();
            let name = hub.site_channel(channel.as_deref()).map_err(site_refusal)?;
            let users = hub.presence(&name).unwrap_or_default();
            let online = hub.online_in(&name).unwrap_or(0).max(users.len());
            Ok(json!({ "channel": channel_field(&shell.config, &name), "online": online,
                       "users": users }))
        }
        Call::History { channel, since, limit } => {
            let hub = shell.hub();
            let name = hub.site_channel(channel.as_deref()).map_err(site_refusal)?;
            let messages: Vec<Value> = hub
                .messages(&name, since, limit)
                .iter()
                .filter_map(|text| serde_json::from_str(text).ok())
                .collect();
            Ok(json!({ "channel": channel_field(&shell.config, &name), "messages": messages }))
        }
        Call::Info => {
            let hub = shell.hub();
            Ok(json!({
                "version": env!("CARGO_PKG_VERSION"),
                "uptime_secs": shell.uptime().as_secs(),
                "connections": hub.connection_count(),
                "users_online": hub.shown_online(),
                "channels": hub.channel_count(),
                "history": hub.history_len(),
                "last_message_id": hub.last_message_id(),
                "bans": hub.moderation().bans(now_secs).count(),
                "mutes": hub.moderation().mutes(now_secs).count(),
            }))
        }
    }
}

/// The `channel` field of an answer: the name, or `null` for the room of a server without
/// channels.
fn channel_field(config: &Config, name: &str) -> Value {
    match config.channels {
        Some(_) => Value::from(name),
        None => Value::Null,
    }
}

fn site_refusal(error: SiteError) -> Refused {
    let status = match error {
        SiteError::OneRoom | SiteError::ChannelNeeded => 400,
        SiteError::NoSuchChannel => 404,
        SiteError::ServerFull => 503,
    };
    refused(status, error.message())
}

/// One log line per action: what was done to whom, never the key.
fn describe(action: &Action, closed: usize) -> String {
    match action {
        Action::Disconnect { user_id, reason } => {
            format!("disconnect user_id={user_id} closed={closed} reason={reason:?}")
        }
        Action::Ban(ban) => format!(
            "ban user_id={} until={} closed={closed} reason={:?}",
            ban.user_id,
            ban.until.map_or("never".into(), crate::http::utc_time),
            ban.reason
        ),
        Action::Unban { user_id } => format!("unban user_id={user_id}"),
        Action::Mute(mute) => format!(
            "mute user_id={} channel={:?} until={}",
            mute.user_id,
            mute.channel,
            crate::http::utc_time(mute.until)
        ),
        Action::Unmute { user_id, channel } => {
            format!("unmute user_id={user_id} channel={channel:?}")
        }
        Action::Delete { id } => format!("delete message id={id}"),
    }
}

/// Whether `given` is the key, in time that does not depend on where they differ (both are
/// hashed first, so not on their lengths either).
pub fn key_matches(given: &str, key: &str) -> bool {
    let (a, b) =
        (hmac_sha256::Hash::hash(given.as_bytes()), hmac_sha256::Hash::hash(key.as_bytes()));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Accepts API connections until dropped, at most [`MAX_API_CONNECTIONS`] at once.
pub(crate) async fn accept_loop(
    executor: &LocalExecutor<'_>,
    shell: &Rc<Shell>,
    listener: &Async<TcpListener>,
    alive: &async_channel::Sender<()>,
) {
    let open = Rc::new(std::cell::Cell::new(0usize));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) if open.get() < MAX_API_CONNECTIONS => {
                open.set(open.get() + 1);
                let (shell, open, alive) = (shell.clone(), open.clone(), alive.clone());
                executor
                    .spawn(async move {
                        serve(&shell, stream, peer).await;
                        open.set(open.get() - 1);
                        drop(alive);
                    })
                    .detach();
            }
            Ok((_, peer)) => debug!("api: closed at once: {peer}: {MAX_API_CONNECTIONS} open"),
            Err(e) => {
                warn!("api: accept failed: {e}");
                Timer::after(crate::server::ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// One API request, from accept to close.
async fn serve(shell: &Shell, mut stream: Async<TcpStream>, peer: SocketAddr) {
    let Some(api) = &shell.config.api else {
        return;
    };
    let timeout = Duration::from_secs(api.request_timeout_secs);
    let request = Box::pin(read_request(&mut stream, api.max_body_bytes));
    let read = request
        .or(async {
            Timer::after(timeout).await;
            Err(refused(408, "the request took too long"))
        })
        .await;
    let (endpoint, result) = match read {
        Err(r) if r.status == 0 => return, // the client went away
        Err(r) => ("other", Err(r)),
        Ok((head, Err(r))) if r.status == 0 => {
            debug!("api: {peer} went away during {} {}", head.method, head.path);
            return;
        }
        Ok((head, Err(r))) => (endpoint(&head.method, &head.path), Err(r)),
        Ok((head, Ok(body))) => {
            let endpoint = endpoint(&head.method, &head.path);
            let authorized = match &api.key {
                Some(key) => {
                    head.bearer_token().is_some_and(|given| key_matches(given, key.expose()))
                }
                None => true,
            };
            let result = if authorized {
                let now_secs = now().unix_ms / 1000;
                let max_chars = shell.config.limits.max_content_chars;
                match parse(&head.method, &head.path, &head.query, &body, max_chars, now_secs) {
                    Ok(call) => answer(shell, call).await,
                    Err(r) => Err(r),
                }
            } else {
                Err(refused(401, "missing or wrong API key (Authorization: Bearer <key>)"))
            };
            (endpoint, result)
        }
    };
    let (status, body) = match result {
        Ok(body) => (200, body),
        Err(r) => (r.status, json!({ "error": r.message })),
    };
    shell.counters.count_api(endpoint, status);
    debug!("api: {peer} {endpoint} {status}");
    let extra = if status == 401 { "WWW-Authenticate: Bearer\r\n" } else { "" };
    let response = crate::http::response(status, "application/json", extra, &format!("{body}\n"));
    crate::http::respond_and_close(&mut stream, &response).await;
}

/// Reads a request head and its body (by `Content-Length`, at most `max_body` bytes): the head
/// comes back with the body or why there is none. A status of 0 means the client went away and
/// gets no answer.
async fn read_request(
    stream: &mut Async<TcpStream>,
    max_body: usize,
) -> Result<(crate::http::Request, Result<Vec<u8>, Refused>), Refused> {
    use crate::http::HeadError;
    let (head, mut body) = match crate::http::read_head(stream).await {
        Ok(read) => read,
        Err(HeadError::Closed) => return Err(refused(0, "")),
        Err(HeadError::TooLarge) => return Err(refused(431, "request head too large")),
        Err(HeadError::Malformed) => return Err(refused(400, "malformed HTTP request")),
    };
    let length = match head.header("content-length").map(|v| v.trim().parse::<usize>()) {
        _ if head.header("transfer-encoding").is_some() => {
            Err(refused(411, "send the body with Content-Length"))
        }
        None => Ok(0),
        Some(Ok(n)) if n > max_body => {
            Err(refused(413, format!("body over api.max_body_bytes ({max_body})")))
        }
        Some(Ok(n)) if body.len() > n => Err(refused(400, "more bytes than Content-Length")),
        Some(Ok(n)) => Ok(n),
        Some(Err(_)) => Err(refused(400, "bad Content-Length")),
    };
    let length = match length {
        Ok(length) => length,
        Err(r) => return Ok((head, Err(r))),
    };
    let start = body.len();
    body.resize(length, 0);
    let read = stream.read_exact(&mut body[start..]).await;
    Ok((head, read.map(|()| body).map_err(|_| refused(0, ""))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_800_000_000;

    fn call(method: &str, target: &str, body: &str) -> Result<Call, Refused> {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        parse(method, path, query, body.as_bytes(), 100, NOW)
    }

    #[test]
    fn each_endpoint_parses_to_its_call() {
        assert_eq!(
            call("POST", "/api/publish", r#"{"content":"hi","user_id":"7"}"#),
            Ok(Call::Publish(Post {
                channel: None,
                content: "hi".into(),
                sender: Some(("7".into(), "7".into())),
                ticket: SITE_TICKETS,
            }))
        );
        let ban = call("POST", "/api/ban", r#"{"user_id":"7","for_secs":60}"#).unwrap();
        let Call::Act(Action::Ban(ban)) = ban else { panic!("{ban:?}") };
        assert_eq!((ban.until, ban.since), (Some(NOW + 60), NOW));
        assert_eq!(
            call("DELETE", "/api/mute/a%20b", "").unwrap(),
            Call::Act(Action::Unmute { user_id: "a b".into(), channel: None })
        );
        assert_eq!(
            call("DELETE", "/api/messages/12", ""),
            Ok(Call::Act(Action::Delete { id: 12 }))
        );
        assert_eq!(
            call("GET", "/api/history?channel=forum%3A1&since=3", ""),
            Ok(Call::History { channel: Some("forum:1".into()), since: Some(3), limit: 100 })
        );
        assert_eq!(call("GET", "/api/info", ""), Ok(Call::Info));
    }

    #[test]
    fn refusals_have_their_status() {
        let status = |m, t, b| call(m, t, b).unwrap_err().status;
        assert_eq!(status("GET", "/api/nope", ""), 404);
        assert_eq!(status("GET", "/ws", ""), 404);
        assert_eq!(status("PUT", "/api/ban", ""), 405);
        assert_eq!(status("POST", "/api/ban", r#"{"user_id":"a","for_secs":1,"until":9}"#), 400);
        assert_eq!(status("POST", "/api/publish", r#"{"content":"x","user_id":""}"#), 400);
        assert_eq!(status("POST", "/api/disconnect", r#"{"user_id":"a","reason":"a\nb"}"#), 400);
        assert_eq!(status("DELETE", "/api/messages/0", ""), 400);
        assert_eq!(status("DELETE", "/api/ban/%zz", ""), 400);
        assert_eq!(status("GET", "/api/history?limit=0", ""), 400);
    }

    #[test]
    fn only_the_key_opens_the_api() {
        assert!(key_matches("k".repeat(40).as_str(), "k".repeat(40).as_str()));
        assert!(!key_matches("k".repeat(39).as_str(), "k".repeat(40).as_str()));
        assert!(!key_matches("", "k"));
    }

    proptest! {
        /// Whatever a client sends, the parser answers (no panic), with a status the API
        /// documents, and a one-line reason.
        #[test]
        fn anything_gets_a_documented_answer(
            method in prop_oneof![
                Just("GET".to_string()), Just("POST".to_string()), Just("DELETE".to_string()),
                "[A-Z]{0,7}",
            ],
            path in prop_oneof![
                Just("/api/publish".to_string()), Just("/api/ban".to_string()),
                Just("/api/mute".to_string()), Just("/api/disconnect".to_string()),
                "/api/(ban|mute|messages)/[^/?]{0,12}", "/api/(history|presence|info|bans|mutes)",
                "/[a-z/%]{0,20}",
            ],
            query in "([a-z]{1,8}=[-0-9a-z%:]{0,8}&?){0,3}",
            body in prop_oneof![
                "\\PC{0,40}",
                r#"\{"(content|channel|user_id|username|until|for_secs|reason|x)":("[^"\\]{0,8}"|-?[0-9]{1,21}|null|true|\[\])\}"#,
            ],
            max_chars in 1usize..50,
            now_secs in any::<u64>(),
        ) {
            match parse(&method, &path, &query, body.as_bytes(), max_chars, now_secs) {
                Ok(_) => {}
                Err(r) => {
                    prop_assert!([400, 404, 405].contains(&r.status), "{r:?}");
                    prop_assert!(!r.message.is_empty() && !r.message.contains('\n'), "{r:?}");
                }
            }
        }

        /// A valid ban in any form comes back as the same ban, ending in the future.
        #[test]
        fn a_ban_round_trips(user in "[a-zA-Z0-9_ .:-]{1,40}", secs in 1u64..10_000_000) {
            let body = json!({"user_id": user, "for_secs": secs}).to_string();
            let parsed = parse("POST", "/api/ban", "", body.as_bytes(), 10, NOW);
            prop_assert_eq!(
                parsed,
                Ok(Call::Act(Action::Ban(Ban { user_id: user, until: Some(NOW + secs), reason: None, since: NOW })))
            );
        }
    }
}
