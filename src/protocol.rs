//! The wire protocol: what clients may send, what the server sends, and why a connection ends.
//!
//! One JSON object per text frame; `docs/PROTOCOL.md` is the reference for client authors. This
//! module parses and validates client frames and builds server frames; it keeps no state.

use serde::Serialize;
use serde_json::Value;

/// A client frame that parsed and passed validation.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientMessage {
    /// `{"type":"chat","content":"…"}`, with `"channel"` when the server has channels.
    Chat { content: String, channel: Option<String> },
    /// `{"type":"join","channel":"…","since":17}` (`since` optional).
    Join { channel: String, since: Option<u64> },
    /// `{"type":"leave","channel":"…"}`
    Leave { channel: String },
    /// `{"type":"ping"}`, answered with `{"type":"pong"}`.
    Ping,
    /// `{"type":"auth","token":"…"}`: a fresh token for the same user.
    Auth { token: String },
}

/// Why a client frame was refused. Each maps to the `code` of an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// Not JSON at all (or nested past serde_json's recursion limit).
    InvalidJson,
    /// JSON, but not an object of the documented shape; the text says what is wrong.
    InvalidMessage(&'static str),
    /// `content` has more characters than `limits.max_content_chars`.
    TooLong { chars: usize, max: usize },
    /// The user's token bucket is empty.
    RateLimited,
    /// A `type` the server does not know.
    UnsupportedType,
    /// A binary frame; the protocol is text only.
    BinaryUnsupported,
    /// A refresh token that did not verify or names another user.
    AuthFailed(&'static str),
    /// Cluster: Redis is unreachable and the queue of messages waiting for it is full.
    Unavailable,
    /// A `join`, `leave` or `chat` refused for a reason of the channel it names.
    Channel(ChannelError, String),
    /// The site muted the user (everywhere, or in this channel) until `until` (Unix seconds);
    /// `left_secs` is how long that is from now.
    Muted { channel: Option<String>, until: u64, left_secs: u64 },
}

/// Why a channel refused a frame; the `error` frame names the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelError {
    /// Not a channel name, or no rule covers it.
    NoSuchChannel,
    /// A rule covers it, but not for this user.
    Forbidden,
    /// The channel has `max_members` users.
    ChannelFull,
    /// Members read; only the server posts.
    ReadOnly,
    /// The connection is in `limits.max_channels_per_connection` channels.
    TooManyChannels,
    /// The server holds `limits.max_channels` channels.
    ServerFull,
    /// A chat to a channel the connection has not joined.
    NotJoined,
}

impl ChannelError {
    pub fn code(self) -> &'static str {
        match self {
            ChannelError::NoSuchChannel => "no_such_channel",
            ChannelError::Forbidden => "forbidden",
            ChannelError::ChannelFull => "channel_full",
            ChannelError::ReadOnly => "read_only",
            ChannelError::TooManyChannels | ChannelError::ServerFull => "too_many_channels",
            ChannelError::NotJoined => "not_joined",
        }
    }

    fn message(self) -> &'static str {
        match self {
            ChannelError::NoSuchChannel => "no channel of that name can be joined here",
            ChannelError::Forbidden => "your token does not allow this channel",
            ChannelError::ChannelFull => "the channel has as many members as it may",
            ChannelError::ReadOnly => "only the site posts to this channel",
            ChannelError::TooManyChannels => "this connection is in as many channels as it may be",
            ChannelError::ServerFull => "the server holds as many channels as it may",
            ChannelError::NotJoined => "join the channel before posting to it",
        }
    }
}

impl ProtocolError {
    /// The `code` field of the `error` frame.
    pub fn code(&self) -> &'static str {
        match self {
            ProtocolError::InvalidJson => "invalid_json",
            ProtocolError::InvalidMessage(_) => "invalid_message",
            ProtocolError::TooLong { .. } => "too_long",
            ProtocolError::RateLimited => "rate_limited",
            ProtocolError::UnsupportedType => "unsupported_type",
            ProtocolError::BinaryUnsupported => "binary_unsupported",
            ProtocolError::AuthFailed(_) => "auth_failed",
            ProtocolError::Unavailable => "unavailable",
            ProtocolError::Channel(error, _) => error.code(),
            ProtocolError::Muted { .. } => "muted",
        }
    }

    /// The channel an `error` frame names, for errors about one.
    pub fn channel(&self) -> Option<&str> {
        match self {
            ProtocolError::Channel(_, channel) => Some(channel),
            ProtocolError::Muted { channel, .. } => channel.as_deref(),
            _ => None,
        }
    }

    /// The `until` field of the `error` frame (Unix seconds), for `muted`.
    pub fn until(&self) -> Option<u64> {
        match self {
            ProtocolError::Muted { until, .. } => Some(*until),
            _ => None,
        }
    }

    /// The `message` field of the `error` frame: one sentence for a developer.
    pub fn message(&self) -> String {
        match self {
            ProtocolError::InvalidJson => "the frame is not valid JSON".into(),
            ProtocolError::InvalidMessage(why) => (*why).into(),
            ProtocolError::TooLong { chars, max } => {
                format!("content has {chars} characters; the limit is {max}")
            }
            ProtocolError::RateLimited => "too many messages; this one was dropped".into(),
            ProtocolError::UnsupportedType => "unknown message type".into(),
            ProtocolError::BinaryUnsupported => "binary frames are not supported".into(),
            ProtocolError::AuthFailed(why) => (*why).into(),
            ProtocolError::Unavailable => {
                "the chat cannot reach its other servers right now; try again shortly".into()
            }
            ProtocolError::Channel(error, _) => error.message().into(),
            ProtocolError::Muted { left_secs, .. } => {
                format!("you are muted for {}; this message was not sent", for_humans(*left_secs))
            }
        }
    }
}

/// Parses one text frame from a client and validates it against the content limits.
pub fn parse_client(text: &str, max_content_chars: usize) -> Result<ClientMessage, ProtocolError> {
    let value: Value = serde_json::from_str(text).map_err(|_| ProtocolError::InvalidJson)?;
    let Value::Object(mut fields) = value else {
        return Err(ProtocolError::InvalidMessage("a message must be a JSON object"));
    };
    let kind = match fields.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        Some(_) => return Err(ProtocolError::InvalidMessage("\"type\" must be a string")),
        None => return Err(ProtocolError::InvalidMessage("a message needs a \"type\"")),
    };
    match kind {
        "chat" => match fields.remove("content") {
            Some(Value::String(content)) => {
                validate_content(&content, max_content_chars)?;
                let channel = match fields.remove("channel") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(channel)) => Some(channel),
                    Some(_) => {
                        return Err(ProtocolError::InvalidMessage("\"channel\" must be a string"));
                    }
                };
                Ok(ClientMessage::Chat { content, channel })
            }
            Some(_) => Err(ProtocolError::InvalidMessage("\"content\" must be a string")),
            None => Err(ProtocolError::InvalidMessage("a chat message needs \"content\"")),
        },
        "join" => {
            let channel = channel_field(&mut fields, "a join message needs a string \"channel\"")?;
            let since = match fields.remove("since") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => match n.as_u64() {
                    Some(since) => Some(since),
                    None => return Err(ProtocolError::InvalidMessage(SINCE_SHAPE)),
                },
                Some(_) => return Err(ProtocolError::InvalidMessage(SINCE_SHAPE)),
            };
            Ok(ClientMessage::Join { channel, since })
        }
        "leave" => {
            let channel = channel_field(&mut fields, "a leave message needs a string \"channel\"")?;
            Ok(ClientMessage::Leave { channel })
        }
        "ping" => Ok(ClientMessage::Ping),
        "auth" => match fields.remove("token") {
            Some(Value::String(token)) => Ok(ClientMessage::Auth { token }),
            _ => Err(ProtocolError::InvalidMessage("an auth message needs a string \"token\"")),
        },
        _ => Err(ProtocolError::UnsupportedType),
    }
}

/// A duration as a person says it: "45 seconds", "12 minutes", "3 hours", "2 days" (rounded up,
/// so that a mute never reads as shorter than it is).
pub fn for_humans(secs: u64) -> String {
    let (n, unit) = match secs {
        0..60 => (secs, "second"),
        60..3600 => (secs.div_ceil(60), "minute"),
        3600..86400 => (secs.div_ceil(3600), "hour"),
        _ => (secs.div_ceil(86400), "day"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

const SINCE_SHAPE: &str = "\"since\" must be a whole number of 0 or more";

fn channel_field(
    fields: &mut serde_json::Map<String, Value>,
    missing: &'static str,
) -> Result<String, ProtocolError> {
    match fields.remove("channel") {
        Some(Value::String(channel)) => Ok(channel),
        _ => Err(ProtocolError::InvalidMessage(missing)),
    }
}

/// Content must be non-blank, within the character limit, and free of control characters other
/// than newline and tab.
pub fn validate_content(content: &str, max_chars: usize) -> Result<(), ProtocolError> {
    if content.trim().is_empty() {
        return Err(ProtocolError::InvalidMessage("content is empty"));
    }
    // Counting stops just past the limit, so a huge string costs no more than a legal one.
    let chars = content.chars().take(max_chars + 1).count();
    if chars > max_chars {
        return Err(ProtocolError::TooLong { chars: content.chars().count(), max: max_chars });
    }
    if content.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(ProtocolError::InvalidMessage("content has control characters"));
    }
    Ok(())
}

/// Frames the server sends, serialized with [`ServerMessage::to_json`].
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    /// The first frame. Without channels: `online` and `recovered` are the room's, and the
    /// last two fields are absent. With channels: `online` and `recovered` are the default
    /// channel's (absent when the connection is not in one), `protocol` is
    /// [`PROTOCOL_CHANNELS`] and `channels` lists the channels joined on connect.
    Welcome {
        user_id: &'a str,
        username: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        online: Option<usize>,
        /// Only when the client sent `since`.
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        protocol: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        channels: Option<Vec<&'a str>>,
    },
    /// A channel's distinct users; without channels, the room's.
    Online {
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
        count: usize,
    },
    /// The answer to `join` (and to each channel joined on connect but the default one).
    Joined {
        channel: &'a str,
        /// Absent for a channel whose rule has `presence: false`.
        #[serde(skip_serializing_if = "Option::is_none")]
        online: Option<usize>,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    },
    Left {
        channel: &'a str,
    },
    /// A private conversation has a message for a user whose connection is not in it.
    Dm {
        channel: &'a str,
        user_id: &'a str,
        username: &'a str,
    },
    /// The site deleted a message; absent `channel` on a server with one room.
    Deleted {
        id: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
    },
    Pong,
    Error {
        code: &'static str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
        /// For `muted`: when the mute ends, in Unix seconds.
        #[serde(skip_serializing_if = "Option::is_none")]
        until: Option<u64>,
    },
}

/// The `protocol` field of `welcome` on a server with channels. A `welcome` without it comes
/// from a server with one room.
pub const PROTOCOL_CHANNELS: u32 = 2;

impl ServerMessage<'_> {
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: no maps with non-string keys, no floats.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A `chat` frame without its id: everything known when a message is accepted. The id goes last,
/// appended by [`ChatHead::into_frame`] (or [`ChatHead::with_id`], which keeps the head); in a
/// cluster, Redis appends it to the same bytes (see `cluster/wire.rs`), so both paths send the
/// same frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatHead(String);

impl ChatHead {
    /// `channel` is `None` on a server without channels: the frame has no `channel` field.
    pub fn new(
        channel: Option<&str>,
        user_id: &str,
        username: &str,
        content: &str,
        ts: u64,
    ) -> ChatHead {
        ChatHead::build(channel, Some((user_id, username)), content, ts)
    }

    /// A message the site publishes in its own name (`POST /api/publish` without a user): the
    /// frame has no `user_id` or `username`.
    pub fn from_site(channel: Option<&str>, content: &str, ts: u64) -> ChatHead {
        ChatHead::build(channel, None, content, ts)
    }

    fn build(
        channel: Option<&str>,
        sender: Option<(&str, &str)>,
        content: &str,
        ts: u64,
    ) -> ChatHead {
        #[derive(Serialize)]
        struct Body<'a> {
            r#type: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            channel: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            user_id: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            username: Option<&'a str>,
            content: &'a str,
            ts: u64,
        }
        let (user_id, username) = sender.unzip();
        let body = Body { r#type: "chat", channel, user_id, username, content, ts };
        // As for `ServerMessage`, this cannot fail; the closing brace comes back in `into_frame`.
        let mut head = serde_json::to_string(&body).unwrap_or_else(|_| "{".into());
        head.pop();
        head.push_str(r#","id":"#);
        ChatHead(head)
    }

    /// The whole frame.
    pub fn with_id(&self, id: u64) -> String {
        self.clone().into_frame(id)
    }

    /// The whole frame, in the head's own buffer (one allocation per message, as before the
    /// head existed).
    pub fn into_frame(mut self, id: u64) -> String {
        use std::fmt::Write as _;
        let _ = write!(self.0, "{id}}}");
        self.0
    }

    /// The frame up to the id, as sent to Redis.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The channel of a whole frame (or head), read from its second field: a channel name needs
    /// no escaping, so the field is the name between quotes. `None` for a frame without one.
    pub fn channel_of(frame: &str) -> Option<&str> {
        let rest = frame.strip_prefix(r#"{"type":"chat","channel":""#)?;
        let name = &rest[..rest.find('"')?];
        crate::channels::is_valid_name(name).then_some(name)
    }

    /// The id of a whole frame, read back from its last field (the inverse of
    /// [`into_frame`](Self::into_frame)). `"id":` cannot occur unescaped in a string value, and
    /// the last occurrence is the field itself.
    pub fn id_of(frame: &str) -> Option<u64> {
        let (_, id) = frame.strip_suffix('}')?.rsplit_once(r#""id":"#)?;
        id.parse().ok()
    }
}

/// Why a connection ended. One place maps each reason to its close code, its log word and its
/// metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The client closed the connection or it dropped.
    Client,
    /// A newer connection of the same user took its place.
    Replaced,
    /// No chat message for `idle.timeout_secs`.
    Idle,
    /// No frame at all for `heartbeat.pong_timeout_secs`.
    Heartbeat,
    /// Its send queue was full: it was not reading.
    TooSlow,
    /// Its token expired and was not refreshed.
    TokenExpired,
    /// Too many violations within a minute.
    Policy,
    /// The server is shutting down.
    Shutdown,
    /// A message above `limits.max_message_bytes`.
    TooBig,
    /// A WebSocket protocol error (unmasked frame, bad opcode, oversized control frame…).
    Protocol,
    /// A text frame that is not valid UTF-8.
    InvalidUtf8,
    /// The site disconnected the user (`POST /api/disconnect`): do not reconnect on your own.
    Kicked,
    /// The site banned the user (`POST /api/ban`): a reconnect is refused until the ban ends.
    Banned,
}

impl CloseReason {
    /// Every reason, for metrics that list each label.
    pub const ALL: [CloseReason; 13] = [
        CloseReason::Client,
        CloseReason::Replaced,
        CloseReason::Idle,
        CloseReason::Heartbeat,
        CloseReason::TooSlow,
        CloseReason::TokenExpired,
        CloseReason::Policy,
        CloseReason::Shutdown,
        CloseReason::TooBig,
        CloseReason::Protocol,
        CloseReason::InvalidUtf8,
        CloseReason::Kicked,
        CloseReason::Banned,
    ];

    /// The WebSocket close code the server sends; `None` when the client ended it.
    pub fn code(self) -> Option<u16> {
        match self {
            CloseReason::Client => None,
            CloseReason::Replaced => Some(4001),
            CloseReason::Idle => Some(4002),
            CloseReason::TokenExpired => Some(4003),
            CloseReason::TooSlow => Some(4004),
            CloseReason::Heartbeat => Some(4005),
            CloseReason::Policy => Some(1008),
            CloseReason::Shutdown => Some(1001),
            CloseReason::TooBig => Some(1009),
            CloseReason::Protocol => Some(1002),
            CloseReason::InvalidUtf8 => Some(1007),
            CloseReason::Kicked => Some(4008),
            CloseReason::Banned => Some(4009),
        }
    }

    /// The word used in logs, in the close frame's reason text and as the metric label.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::Replaced => "replaced",
            CloseReason::Idle => "idle",
            CloseReason::Heartbeat => "heartbeat",
            CloseReason::TooSlow => "too_slow",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::Policy => "policy",
            CloseReason::Shutdown => "shutdown",
            CloseReason::TooBig => "too_big",
            CloseReason::Protocol => "protocol",
            CloseReason::InvalidUtf8 => "invalid_utf8",
            CloseReason::Kicked => "kicked",
            CloseReason::Banned => "banned",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClientMessage, ProtocolError> {
        parse_client(text, 10)
    }

    #[test]
    fn good_messages_parse() {
        assert_eq!(
            parse(r#"{"type":"chat","content":"hi"}"#),
            Ok(ClientMessage::Chat { content: "hi".into(), channel: None })
        );
        assert_eq!(parse(r#"{"type":"ping"}"#), Ok(ClientMessage::Ping));
        assert_eq!(
            parse(r#"{"type":"auth","token":"t"}"#),
            Ok(ClientMessage::Auth { token: "t".into() })
        );
        assert_eq!(
            parse("{\"type\":\"chat\",\"content\":\"a\\nb\\tc\"}"),
            Ok(ClientMessage::Chat { content: "a\nb\tc".into(), channel: None })
        );
    }

    #[test]
    fn each_bad_shape_has_its_code() {
        let code = |t: &str| parse(t).unwrap_err().code();
        assert_eq!(code("nope"), "invalid_json");
        assert_eq!(code("[1,2]"), "invalid_message");
        assert_eq!(code(r#"{"content":"x"}"#), "invalid_message");
        assert_eq!(code(r#"{"type":7}"#), "invalid_message");
        assert_eq!(code(r#"{"type":"chat"}"#), "invalid_message");
        assert_eq!(code(r#"{"type":"chat","content":5}"#), "invalid_message");
        assert_eq!(code(r#"{"type":"chat","content":"   "}"#), "invalid_message");
        assert_eq!(code(r#"{"type":"chat","content":"a\u0000b"}"#), "invalid_message");
        assert_eq!(code(r#"{"type":"chat","content":"a\u007fb"}"#), "invalid_message");
        assert_eq!(code(r#"{"type":"chat","content":"01234567890"}"#), "too_long");
        assert_eq!(code(r#"{"type":"dance"}"#), "unsupported_type");
        assert_eq!(code(r#"{"type":"auth"}"#), "invalid_message");
        assert_eq!(code(r#"{"type":"chat","content":"x","channel":5}"#), "invalid_message");
        assert_eq!(code(r#"{"type":"join"}"#), "invalid_message");
        assert_eq!(code(r#"{"type":"join","channel":"x","since":-1}"#), "invalid_message");
        assert_eq!(code(r#"{"type":"join","channel":"x","since":1.5}"#), "invalid_message");
        assert_eq!(code(r#"{"type":"join","channel":"x","since":"1"}"#), "invalid_message");
        assert_eq!(code(r#"{"type":"leave","channel":7}"#), "invalid_message");
    }

    #[test]
    fn channel_frames_parse() {
        assert_eq!(
            parse(r#"{"type":"chat","channel":"a","content":"hi"}"#),
            Ok(ClientMessage::Chat { content: "hi".into(), channel: Some("a".into()) })
        );
        assert_eq!(
            parse(r#"{"type":"join","channel":"a","since":17}"#),
            Ok(ClientMessage::Join { channel: "a".into(), since: Some(17) })
        );
        assert_eq!(
            parse(r#"{"type":"join","channel":"a"}"#),
            Ok(ClientMessage::Join { channel: "a".into(), since: None })
        );
        assert_eq!(
            parse(r#"{"type":"leave","channel":"a"}"#),
            Ok(ClientMessage::Leave { channel: "a".into() })
        );
    }

    #[test]
    fn limit_counts_characters_not_bytes() {
        assert!(validate_content("ééééééééééé", 11).is_ok());
        assert!(validate_content("ééééééééééé", 10).is_err());
    }

    #[test]
    fn deep_nesting_is_invalid_json_not_a_crash() {
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert_eq!(parse(&deep), Err(ProtocolError::InvalidJson));
    }

    #[test]
    fn server_frames_have_the_documented_shape() {
        let chat = ChatHead::new(None, "42", "alice", "hi \"there\"", 1764200000000);
        assert_eq!(
            chat.with_id(17),
            r#"{"type":"chat","user_id":"42","username":"alice","content":"hi \"there\"","ts":1764200000000,"id":17}"#
        );
        assert_eq!(ChatHead::id_of(&chat.with_id(17)), Some(17));
        let tricky = ChatHead::new(None, "1", "\"id\":3}", "\"id\":4}", 0).into_frame(5);
        assert_eq!(ChatHead::id_of(&tricky), Some(5));
        assert_eq!(ChatHead::id_of(r#"{"type":"chat","id":}"#), None);
        let in_channel = ChatHead::new(Some("forum:1"), "1", "a", "\"channel\":\"x\"", 0);
        assert_eq!(ChatHead::channel_of(&in_channel.with_id(3)), Some("forum:1"));
        assert_eq!(ChatHead::channel_of(&chat.with_id(17)), None);
        assert_eq!(ServerMessage::Pong.to_json(), r#"{"type":"pong"}"#);
        assert_eq!(
            ServerMessage::Online { channel: None, count: 3 }.to_json(),
            r#"{"type":"online","count":3}"#
        );
        let in_channel = ChatHead::new(Some("forum:1"), "42", "alice", "hi", 5).into_frame(6);
        assert_eq!(
            in_channel,
            r#"{"type":"chat","channel":"forum:1","user_id":"42","username":"alice","content":"hi","ts":5,"id":6}"#
        );
        assert_eq!(
            ServerMessage::Online { channel: Some("x"), count: 3 }.to_json(),
            r#"{"type":"online","channel":"x","count":3}"#
        );
        let welcome = ServerMessage::Welcome {
            user_id: "1",
            username: "a",
            online: Some(2),
            recovered: None,
            protocol: None,
            channels: None,
        };
        assert_eq!(
            welcome.to_json(),
            r#"{"type":"welcome","user_id":"1","username":"a","online":2}"#
        );
        let error = ProtocolError::Channel(ChannelError::ReadOnly, "news".into());
        let frame = ServerMessage::Error {
            code: error.code(),
            message: &error.message(),
            channel: error.channel(),
            until: error.until(),
        };
        assert_eq!(
            frame.to_json(),
            r#"{"type":"error","code":"read_only","message":"only the site posts to this channel","channel":"news"}"#
        );
        let muted = ProtocolError::Muted { channel: None, until: 1764200600, left_secs: 599 };
        let frame = ServerMessage::Error {
            code: muted.code(),
            message: &muted.message(),
            channel: muted.channel(),
            until: muted.until(),
        };
        assert_eq!(
            frame.to_json(),
            r#"{"type":"error","code":"muted","message":"you are muted for 10 minutes; this message was not sent","until":1764200600}"#
        );
        let notice = ChatHead::from_site(Some("news"), "down at 22:00", 5).into_frame(9);
        assert_eq!(
            notice,
            r#"{"type":"chat","channel":"news","content":"down at 22:00","ts":5,"id":9}"#
        );
        assert_eq!(ChatHead::channel_of(&notice), Some("news"));
        assert_eq!(
            ServerMessage::Deleted { id: 9, channel: Some("news") }.to_json(),
            r#"{"type":"deleted","id":9,"channel":"news"}"#
        );
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(for_humans(1), "1 second");
        assert_eq!(for_humans(59), "59 seconds");
        assert_eq!(for_humans(61), "2 minutes");
        assert_eq!(for_humans(3600), "1 hour");
        assert_eq!(for_humans(86401), "2 days");
    }

    #[test]
    fn close_codes_are_distinct() {
        let mut codes: Vec<u16> = CloseReason::ALL.iter().filter_map(|r| r.code()).collect();
        let n = codes.len();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), n);
        for (i, r) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
