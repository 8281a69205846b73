//! The HTTP/1.1 that happens before a WebSocket exists: reading one request head, checking the
//! upgrade headers, and writing the plain responses that refuse a request.
//!
//! The head is parsed here rather than inside tungstenite's handshake so that every refusal gets
//! a status line and a one-line reason, and so that other paths can share the listener.

use std::time::Duration;

use ct_codecs::{Base64, Decoder as _};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, FutureExt};

use crate::auth::AuthError;
use crate::hub::Refused;

/// Largest request head accepted; a longer one gets 431.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Most header lines accepted; more gets 431.
pub const MAX_HEADERS: usize = 64;
/// How long a refused client may keep sending before the socket is dropped, so that the
/// response is not lost to a TCP reset.
pub const LINGER: Duration = Duration::from_secs(1);

/// A parsed request head.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    headers: Vec<(String, String)>,
}

/// Why no request head could be read.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Over [`MAX_HEAD_BYTES`] or [`MAX_HEADERS`].
    TooLarge,
    /// Not HTTP/1.1.
    Malformed,
    /// The client went away first.
    Closed,
}

impl Request {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Whether a comma-separated header contains this token (case-insensitive).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// A query parameter, percent-decoded. `None` when absent or not valid UTF-8.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then(|| percent_decode(value)).flatten()
        })
    }

    /// The `Bearer` token of the `Authorization` header, if any.
    pub fn bearer_token(&self) -> Option<&str> {
        let value = self.header("authorization")?.trim();
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }

    /// Checks the headers of a WebSocket upgrade (RFC 6455 section 4.2.1) and returns the key.
    pub fn websocket_key(&self) -> Result<&str, Refusal> {
        if self.method != "GET" {
            return Err(Refusal::UseGetForWebSocket);
        }
        if !self.header_has_token("upgrade", "websocket")
            || !self.header_has_token("connection", "upgrade")
        {
            return Err(Refusal::NotAnUpgrade);
        }
        if self.header("sec-websocket-version").map(str::trim) != Some("13") {
            return Err(Refusal::WebSocketVersion);
        }
        let key = self.header("sec-websocket-key").map(str::trim).unwrap_or("");
        match Base64::decode_to_vec(key, None) {
            Ok(raw) if raw.len() == 16 => Ok(key),
            _ => Err(Refusal::BadKey),
        }
    }
}

/// A request refused before any upgrade: the one type that says what the client is told (a
/// status, a one-line reason, sometimes a header) and how the refusal is counted
/// (`shequ_chat_refusals_total{reason}`, and for token and origin refusals also
/// `shequ_chat_auth_failures_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not an HTTP/1.1 request head.
    Malformed,
    /// Over [`MAX_HEAD_BYTES`] or [`MAX_HEADERS`].
    HeadTooLarge,
    /// Not `GET` on `/`, `/healthz` or `/metrics`.
    UseGet,
    /// Not `GET` on `/ws`.
    UseGetForWebSocket,
    NotFound,
    /// `Upgrade: websocket` without `Connection: Upgrade`.
    NotAnUpgrade,
    /// `Sec-WebSocket-Version` other than 13.
    WebSocketVersion,
    BadKey,
    /// A token in the query and another in `Authorization`.
    TokensDiffer,
    Token(AuthError),
    /// `Origin` not in `allowed_origins`.
    Origin,
    /// `limits.max_connections` are open.
    Capacity,
    /// `limits.max_connections_per_ip` are open from this address.
    IpLimit,
    /// The site banned the user, until then (Unix seconds) or for good.
    Banned {
        until: Option<u64>,
    },
}

impl Refusal {
    /// Every `reason` label of `shequ_chat_refusals_total`, in [`index`](Self::index) order.
    pub const LABELS: [&'static str; 15] = [
        "malformed",
        "too_large",
        "method",
        "not_found",
        "not_an_upgrade",
        "websocket_version",
        "bad_key",
        "tokens_differ",
        "missing",
        "invalid",
        "expired",
        "origin",
        "capacity",
        "ip_limit",
        "banned",
    ];
    /// Every `reason` label of `shequ_chat_auth_failures_total`, in
    /// [`auth_index`](Self::auth_index) order.
    pub const AUTH_LABELS: [&'static str; 4] = ["missing", "invalid", "expired", "origin"];

    pub fn status(self) -> u16 {
        match self {
            Refusal::Malformed
            | Refusal::NotAnUpgrade
            | Refusal::BadKey
            | Refusal::TokensDiffer => 400,
            Refusal::Token(_) => 401,
            Refusal::Origin | Refusal::Banned { .. } => 403,
            Refusal::NotFound => 404,
            Refusal::UseGet | Refusal::UseGetForWebSocket => 405,
            Refusal::WebSocketVersion => 426,
            Refusal::HeadTooLarge => 431,
            Refusal::Capacity | Refusal::IpLimit => 503,
        }
    }

    /// The one-line reason, the response's body.
    pub fn message(self) -> std::borrow::Cow<'static, str> {
        let text = match self {
            Refusal::Malformed => "malformed HTTP request",
            Refusal::HeadTooLarge => "request head too large",
            Refusal::UseGet => "use GET",
            Refusal::UseGetForWebSocket => "use GET to open a WebSocket",
            Refusal::NotFound => "not found",
            Refusal::NotAnUpgrade => "expected a WebSocket upgrade request",
            Refusal::WebSocketVersion => "unsupported WebSocket version; use 13",
            Refusal::BadKey => "bad Sec-WebSocket-Key",
            Refusal::TokensDiffer => "token in query and Authorization header differ",
            Refusal::Token(e) => e.message(),
            Refusal::Origin => "origin not allowed",
            Refusal::Capacity => "server full; try again later",
            Refusal::IpLimit => "too many connections from your address",
            Refusal::Banned { until: None } => "banned",
            Refusal::Banned { until: Some(until) } => {
                return format!("banned until {}", utc_time(until)).into();
            }
        };
        text.into()
    }

    /// Its label in [`LABELS`](Self::LABELS).
    pub fn index(self) -> usize {
        match self {
            Refusal::Malformed => 0,
            Refusal::HeadTooLarge => 1,
            Refusal::UseGet | Refusal::UseGetForWebSocket => 2,
            Refusal::NotFound => 3,
            Refusal::NotAnUpgrade => 4,
            Refusal::WebSocketVersion => 5,
            Refusal::BadKey => 6,
            Refusal::TokensDiffer => 7,
            Refusal::Token(AuthError::Missing) => 8,
            Refusal::Token(AuthError::Invalid(_)) => 9,
            Refusal::Token(AuthError::Expired) => 10,
            Refusal::Origin => 11,
            Refusal::Capacity => 12,
            Refusal::IpLimit => 13,
            Refusal::Banned { .. } => 14,
        }
    }

    /// Its label in [`AUTH_LABELS`](Self::AUTH_LABELS), when it is a token or origin refusal.
    pub fn auth_index(self) -> Option<usize> {
        match self {
            Refusal::Token(AuthError::Missing) => Some(0),
            Refusal::Token(AuthError::Invalid(_)) | Refusal::TokensDiffer => Some(1),
            Refusal::Token(AuthError::Expired) => Some(2),
            Refusal::Origin => Some(3),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        Refusal::LABELS[self.index()]
    }

    pub fn to_response(self) -> String {
        let extra = match self {
            Refusal::WebSocketVersion => "Sec-WebSocket-Version: 13\r\n",
            _ => "",
        };
        response(self.status(), "text/plain; charset=utf-8", extra, &self.message())
    }
}

impl From<Refused> for Refusal {
    fn from(refused: Refused) -> Refusal {
        match refused {
            Refused::Capacity => Refusal::Capacity,
            Refused::IpLimit => Refusal::IpLimit,
            Refused::Banned { until } => Refusal::Banned { until },
        }
    }
}

/// A Unix time as UTC in RFC 3339 (`2026-12-01T09:30:00Z`), for people and for the API.
pub fn utc_time(unix_secs: u64) -> String {
    let (days, secs) = (unix_secs / 86_400, unix_secs % 86_400);
    // Howard Hinnant's days-to-civil algorithm, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// A complete HTTP/1.1 response that closes the connection. A plain-text body gets a newline.
pub fn response(status: u16, content_type: &str, extra_headers: &str, body: &str) -> String {
    let newline = if content_type.starts_with("text/plain") { "\n" } else { "" };
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\nCache-Control: no-store\r\n{extra_headers}\r\n{body}{newline}",
        reason_phrase(status),
        body.len() + newline.len(),
    )
}

/// The response that completes a WebSocket upgrade.
pub fn switching_protocols(key: &str) -> String {
    let accept = async_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Reads one request head. Returns it with any bytes the client sent after it (the start of its
/// first WebSocket frame, if it did not wait for our answer).
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Request, Vec<u8>), HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                if len > MAX_HEAD_BYTES {
                    return Err(HeadError::TooLarge);
                }
                if req.version != Some(1) {
                    return Err(HeadError::Malformed);
                }
                let target = req.path.unwrap_or("/");
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                let request = Request {
                    method: req.method.unwrap_or("").to_string(),
                    path: path.to_string(),
                    query: query.to_string(),
                    headers: req
                        .headers
                        .iter()
                        .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into()))
                        .collect(),
                };
                return Ok((request, buf[len..].to_vec()));
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                return Err(HeadError::TooLarge);
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(_) => return Err(HeadError::Malformed),
        }
    }
}

/// Writes a final response, then reads and discards what the client still sends for up to
/// [`LINGER`], so that closing with unread input does not reset the connection before the
/// client has read the response.
pub async fn respond_and_close<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, text: &str) {
    if stream.write_all(text.as_bytes()).await.is_err() || stream.flush().await.is_err() {
        return;
    }
    let _ = stream.close().await;
    let drain = async {
        let mut sink = [0u8; 1024];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    drain
        .or(async {
            smol::Timer::after(LINGER).await;
        })
        .await;
}

/// Decodes `%XX` and `+` (a space); `None` when that is not valid UTF-8 or a `%` is malformed.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(Request, Vec<u8>), HeadError> {
        smol::block_on(read_head(&mut futures_lite::io::Cursor::new(text.as_bytes().to_vec())))
    }

    #[test]
    fn head_and_leftover() {
        let (req, rest) = parse(
            "GET /ws?token=a.b.c&since=5 HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\n\r\nXY",
        )
        .unwrap();
        assert_eq!(req.path, "/ws");
        assert_eq!(req.query_param("token").as_deref(), Some("a.b.c"));
        assert_eq!(req.query_param("since").as_deref(), Some("5"));
        assert_eq!(req.query_param("nope"), None);
        assert!(req.header_has_token("upgrade", "websocket"));
        assert_eq!(rest, b"XY");
    }

    #[test]
    fn garbage_and_oversize() {
        assert_eq!(parse("\x16\x03\x01garbage\r\n\r\n").unwrap_err(), HeadError::Malformed);
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(parse(&huge).unwrap_err(), HeadError::TooLarge);
        assert_eq!(parse("GET / HTTP/1.1\r\n").unwrap_err(), HeadError::Closed);
        assert_eq!(parse("GET / HTTP/1.0\r\n\r\n").unwrap_err(), HeadError::Malformed);
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_time(1_796_083_199), "2026-11-30T23:59:59Z");
        assert_eq!(
            Refusal::Banned { until: Some(0) }.message(),
            "banned until 1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c").as_deref(), Some("a b c"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn bearer() {
        let (req, _) = parse("GET /ws HTTP/1.1\r\nAuthorization: Bearer  abc \r\n\r\n").unwrap();
        assert_eq!(req.bearer_token(), Some("abc"));
    }

    #[test]
    fn upgrade_checks() {
        let head = |extra: &str| {
            parse(&format!(
                "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n{extra}\r\n"
            ))
            .unwrap()
            .0
        };
        let ok =
            head("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n");
        assert_eq!(ok.websocket_key(), Ok("dGhlIHNhbXBsZSBub25jZQ=="));
        let v8 =
            head("Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n");
        assert_eq!(v8.websocket_key().unwrap_err().status(), 426);
        let bad_key = head("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n");
        assert_eq!(bad_key.websocket_key().unwrap_err().status(), 400);
        let (plain, _) = parse("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(plain.websocket_key().unwrap_err().status(), 400);
        assert!(
            switching_protocols("dGhlIHNhbXBsZSBub25jZQ==")
                .contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
    }
}
