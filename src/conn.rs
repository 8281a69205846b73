//! One connection, from accept to close: the HTTP upgrade and its checks (origin, token,
//! capacity), the client's address behind a proxy, and the pump that moves frames between the
//! WebSocket and the hub, with the bound on everything a client can make it buffer.

use std::future::Future;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::error::ProtocolError as ProtocolViolation;
use async_tungstenite::tungstenite::protocol::frame::CloseFrame;
use async_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message};
use futures_lite::{AsyncWriteExt, FutureExt, Stream};
use futures_sink::Sink;
use log::debug;
use smol::{Async, Timer};

use crate::auth::AuthError;
use crate::config::Config;
use crate::driver::{READ_BUDGET_FRAMES, Shell, now};
use crate::handshakes::Pending;
use crate::http::{self, HeadError, Refusal, Request};
use crate::hub::{ConnId, Identity, Incoming, Join};
use crate::metrics;
use crate::outbox::{Frame, Next, OutboxRx};
use crate::protocol::{ClientMessage, CloseReason, ProtocolError, parse_client};
use crate::socket::{self, Socket, WRITE_BATCH_BYTES};

/// After the server sends a close frame, how long the client has to answer it (or, for a client
/// that is not reading, to make room for it) before the socket is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// The header a probe's 426 answer carries.
const UPGRADE: &str = "Upgrade: websocket\r\n";
/// The most tungstenite may hold in its own write buffer. It writes only control frames (Pings,
/// Pongs, close frames; 127 bytes at most), each passed on at once to the connection's
/// [`Socket`], so this is a backstop, never reached.
pub const MAX_CONTROL_BUFFER_BYTES: usize = 4096;
/// WebSocket Pings a client may send while the server cannot write to it (it is not reading).
/// Beyond this, the client is closed as too slow (4004): browsers never send Pings, and a
/// client that floods them without reading the answers is either broken or hostile. This is
/// what bounds the Pongs waiting in the socket's buffer (64 of at most 127 bytes).
pub const MAX_PINGS_WHILE_BLOCKED: u32 = 64;

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Port {
    Main,
    Metrics,
}

/// tungstenite's settings for one connection: every buffer bounded (see `docs/RELIABILITY.md`).
/// It writes each control frame on at once (`write_buffer_size` 0) into the [`Socket`], whose
/// buffer is the only write buffer a connection has.
pub fn websocket_config(config: &Config) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(config.limits.read_buffer_bytes)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_CONTROL_BUFFER_BYTES)
        .max_message_size(Some(config.limits.max_message_bytes))
        .max_frame_size(Some(config.limits.max_message_bytes))
}

/// Decides what to do with a request for `/ws`: upgrade with a key and an identity, answer a
/// probe, or refuse.
///
/// A plain `GET` of the same URL (no `Upgrade` header) is a probe: it gets the answer the
/// upgrade would get (403, 401 with the reason, 503), or 426 when the upgrade would be
/// taken. A browser cannot see the status of a refused WebSocket, so the page asks this way
/// why it could not connect.
fn check_upgrade<'r>(shell: &Shell, req: &'r Request, ip: IpAddr) -> Result<Checked<'r>, Refusal> {
    let probe = req.method == "GET" && !req.header_has_token("upgrade", "websocket");
    let key = if probe { "" } else { req.websocket_key()? };
    if let Some(origin) = req.header("origin") {
        let allowed = &shell.config.allowed_origins;
        if !allowed.is_empty() && !allowed.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
            return Err(Refusal::Origin);
        }
    }
    let from_query = req.query_param("token").filter(|t| !t.is_empty());
    let token = match (from_query.as_deref(), req.bearer_token()) {
        (Some(q), Some(h)) if q != h => return Err(Refusal::TokensDiffer),
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) => "",
    };
    let identity = shell.verifier.verify(token, now().unix_ms / 1000).map_err(Refusal::Token)?;
    if probe {
        shell.hub().admits(now(), &identity.user_id, ip)?;
        return Ok(Checked::ProbeAccepted);
    }
    Ok(Checked::Upgrade { key, identity })
}

/// Answers a refused request, counted, and closes.
async fn refuse(shell: &Shell, stream: &mut Async<TcpStream>, refusal: Refusal) {
    debug!("refused: {} ({})", refusal.label(), refusal.status());
    shell.counters.count(refusal);
    http::respond_and_close(stream, &refusal.to_response()).await;
}

/// What [`check_upgrade`] allows.
enum Checked<'r> {
    Upgrade {
        key: &'r str,
        identity: Identity,
    },
    /// A probe whose upgrade would be taken.
    ProbeAccepted,
}

/// Removes its connection from the hub when dropped, however the task ends (including a
/// handshake timeout between registration and the 101 response). Harmless if the hub removed it
/// already.
struct Registered {
    shell: Rc<Shell>,
    conn: ConnId,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shell.disconnect(self.conn, CloseReason::Client);
    }
}

/// One TCP connection, from accept to close: the handshake, then the [`Pump`].
///
/// This future is what every open connection holds for as long as it is open (the largest part
/// of an idle connection's memory, `BENCHMARKS.md`), so it holds one phase at a time: the
/// handshake (about 2 KiB, bounded in number by `limits.max_pending_handshakes`) runs boxed and
/// is freed when it is done, and from then on the task is the pump and nothing else. An `async`
/// body covering both phases keeps room for the handshake's variables beside the pump, and an
/// `async fn` its arguments twice: 592 to 664 bytes instead of 424 (`-Zprint-type-sizes`).
pub(crate) fn serve(
    shell: Rc<Shell>,
    stream: Async<TcpStream>,
    peer: SocketAddr,
    port: Port,
    pending: Pending,
    alive: async_channel::Sender<()>,
) -> impl Future<Output = ()> {
    Connection::Handshake(Box::pin(handshake(shell, stream, peer, port, pending, alive)))
}

/// A connection's task, one phase at a time (see [`serve`]). The pump is held in place, not
/// boxed: it is the phase a connection lives in.
#[allow(clippy::large_enum_variant)]
enum Connection<H> {
    Handshake(Pin<Box<H>>),
    Pumping(Pump),
    Over,
}

impl<H: Future<Output = Option<Pump>>> Future for Connection<H> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            let next = match this {
                Connection::Handshake(handshake) => match handshake.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(pump)) => Connection::Pumping(pump),
                    Poll::Ready(None) => Connection::Over,
                },
                Connection::Pumping(pump) => match Pin::new(pump).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => Connection::Over,
                },
                Connection::Over => return Poll::Ready(()),
            };
            *this = next;
        }
    }
}

/// The handshake, within `handshake_timeout_secs`: a pump for an upgraded connection, `None`
/// for anything else (answered and closed).
async fn handshake(
    shell: Rc<Shell>,
    mut stream: Async<TcpStream>,
    peer: SocketAddr,
    port: Port,
    pending: Pending,
    alive: async_channel::Sender<()>,
) -> Option<Pump> {
    let _ = stream.get_ref().set_nodelay(shell.config.limits.tcp_nodelay);
    let timeout = shell.config.handshake_timeout();
    let upgraded = upgrade(&shell, &mut stream, peer, port)
        .or(async {
            Timer::after(timeout).await;
            None
        })
        .await;
    drop(pending);
    let (registered, outbox, leftover) = upgraded?;
    let ws_config = Some(websocket_config(&shell.config));
    let socket = Socket::new(stream);
    let ws = WebSocketStream::from_partially_read(socket, leftover, Role::Server, ws_config).await;
    Some(Pump {
        registered,
        ws,
        outbox,
        _alive: alive,
        control: false,
        pings_while_blocked: 0,
        reading: true,
        peer_closed: false,
        closing: None,
        grace: None,
    })
}

/// Reads the request head and answers it: a plain HTTP response, or a 101 for a registered
/// connection.
async fn upgrade(
    shell: &Rc<Shell>,
    stream: &mut Async<TcpStream>,
    peer: SocketAddr,
    port: Port,
) -> Option<(Registered, OutboxRx, Vec<u8>)> {
    let (request, leftover) = match http::read_head(stream).await {
        Ok(head) => head,
        Err(HeadError::Closed) => return None,
        Err(HeadError::TooLarge) => {
            refuse(shell, stream, Refusal::HeadTooLarge).await;
            return None;
        }
        Err(HeadError::Malformed) => {
            refuse(shell, stream, Refusal::Malformed).await;
            return None;
        }
    };
    let metrics_here = match port {
        Port::Main => shell.config.metrics_listen.is_none(),
        Port::Metrics => true,
    };
    let answer = match request.path.as_str() {
        "/ws" if port == Port::Main => None,
        "/" | "/healthz" | "/metrics" if request.method != "GET" => Some(Err(Refusal::UseGet)),
        "/healthz" => Some(Ok(http::response(200, "text/plain; charset=utf-8", "", "ok"))),
        "/" if port == Port::Main => Some(Ok(shell.page.response())),
        "/metrics" if metrics_here => {
            Some(Ok(http::response(200, metrics::CONTENT_TYPE, "", &shell.metrics())))
        }
        _ => Some(Err(Refusal::NotFound)),
    };
    match answer {
        Some(Ok(response)) => {
            http::respond_and_close(stream, &response).await;
            return None;
        }
        Some(Err(refusal)) => {
            refuse(shell, stream, refusal).await;
            return None;
        }
        None => {}
    }
    let ip = client_ip(&request, peer.ip(), &shell.config.trusted_proxies);
    let (key, identity) = match check_upgrade(shell, &request, ip) {
        Ok(Checked::Upgrade { key, identity }) => (key, identity),
        Ok(Checked::ProbeAccepted) => {
            let body = "token accepted; open a WebSocket with it to chat";
            let response = http::response(426, "text/plain; charset=utf-8", UPGRADE, body);
            http::respond_and_close(stream, &response).await;
            return None;
        }
        Err(refusal) => {
            refuse(shell, stream, refusal).await;
            return None;
        }
    };
    let user_id = identity.user_id.clone();
    let since = request.query_param("since").and_then(|s| s.parse::<u64>().ok());
    let join = Join { identity, since, ip };
    let (conn, outbox) = match shell.connect(join) {
        Ok(connected) => connected,
        Err(refused) => {
            refuse(shell, stream, refused.into()).await;
            return None;
        }
    };
    let registered = Registered { shell: shell.clone(), conn };
    debug!("conn={conn} user_id={user_id} peer={peer} upgraded");
    // The 101 and the frames already queued (welcome, history) go out in one write: one
    // system call instead of two for every connect, which is most of the cost of a reconnect.
    let mut first = http::switching_protocols(key).into_bytes();
    for frame in outbox.drain() {
        if let Frame::Text(text) = frame {
            socket::encode_text(&mut first, text.as_bytes());
        }
    }
    if stream.write_all(&first).await.is_err() {
        return None;
    }
    Some((registered, outbox, leftover))
}

/// The client's address: the peer's, or, when the peer is a trusted proxy, the nearest address in
/// `X-Forwarded-For` that is not itself a trusted proxy. Unparseable entries end the search.
fn client_ip(request: &Request, peer: IpAddr, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let Some(forwarded) = request.header("x-forwarded-for") else {
        return peer;
    };
    let mut client = peer;
    for hop in forwarded.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !trusted.contains(&ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

type Ws = WebSocketStream<Socket>;

/// Moves frames between one WebSocket and the hub until the connection is over: the hub's
/// queued frames out, the client's frames in (at most [`READ_BUDGET_FRAMES`] per poll).
///
/// Text frames go from the queue straight into the [`Socket`]'s buffer; control frames go
/// through tungstenite, which keeps the protocol's state and writes them into the same buffer
/// (see `socket.rs`).
///
/// It ends when the read side is over and the queue is closed and written, when a write fails,
/// or [`CLOSE_GRACE`] after the queue was closed.
struct Pump {
    /// The connection in the hub (removed from it when the pump is dropped), and the shell.
    registered: Registered,
    ws: Ws,
    outbox: OutboxRx,
    /// Held until the connection is over: the server's shutdown waits for every one.
    _alive: async_channel::Sender<()>,
    /// tungstenite may hold a control frame not yet passed to the socket's buffer: a Pong or
    /// the reply to a close it read, or a frame handed to it.
    control: bool,
    /// WebSocket Pings read since the socket last took everything (see
    /// [`MAX_PINGS_WHILE_BLOCKED`]).
    pings_while_blocked: u32,
    /// The client may still send frames.
    reading: bool,
    /// The client sent a close frame: nothing but the reply is written from then on.
    peer_closed: bool,
    /// The queue is closed and its close frame (if any) handed to the WebSocket.
    closing: Option<CloseReason>,
    grace: Option<Timer>,
}

impl Pump {
    /// Writes queued frames, a batch at a time, while the socket takes them. `Err` means the
    /// socket failed and the connection is over.
    fn write(&mut self, cx: &mut Context<'_>) -> Result<(), WsError> {
        if self.grace.is_none() && self.outbox.closed().is_some() {
            self.grace = Some(Timer::after(CLOSE_GRACE));
        }
        loop {
            let more = self.take_frames(cx)?;
            if self.control
                && let Poll::Ready(result) = Pin::new(&mut self.ws).poll_flush(cx)
            {
                result?;
                self.control = false;
            }
            match self.ws.get_mut().poll_write_out(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(result) => result?,
            }
            self.pings_while_blocked = 0;
            if !more {
                return Ok(());
            }
        }
    }

    /// Moves frames from the queue into the socket's buffer until it holds a batch
    /// ([`WRITE_BATCH_BYTES`]); returns whether it stopped for that (more may be queued). What
    /// the buffer cannot take stays in the queue, under the queue's bound.
    fn take_frames(&mut self, cx: &mut Context<'_>) -> Result<bool, WsError> {
        while self.closing.is_none() {
            if self.ws.get_ref().pending() >= WRITE_BATCH_BYTES {
                return Ok(true);
            }
            let message = match self.outbox.poll_next(cx) {
                Poll::Pending => break,
                Poll::Ready(Next::Frame(Frame::Text(text))) => {
                    if !self.peer_closed {
                        self.ws.get_mut().push_text(text.as_bytes());
                    }
                    continue;
                }
                Poll::Ready(Next::Frame(Frame::Ping)) => Message::Ping(Default::default()),
                Poll::Ready(Next::Closed(reason)) => {
                    self.closing = Some(reason);
                    let Some(code) = reason.code() else {
                        break;
                    };
                    let frame = CloseFrame { code: code.into(), reason: reason.label().into() };
                    Message::Close(Some(frame))
                }
            };
            Pin::new(&mut self.ws).start_send(message)?;
            self.control = true;
        }
        Ok(false)
    }

    /// Hands one frame from the client to the hub.
    fn read(&mut self, item: Option<Result<Message, WsError>>) {
        let incoming = match item {
            None => return self.stop_reading(CloseReason::Client),
            Some(Err(e)) => return self.stop_reading(close_reason_for(&e)),
            Some(Ok(Message::Close(_))) => {
                self.control = true; // tungstenite queued its reply
                self.peer_closed = true;
                return self.stop_reading(CloseReason::Client);
            }
            Some(Ok(Message::Text(text))) => self.parse(&text),
            Some(Ok(Message::Binary(_))) => Incoming::Invalid(ProtocolError::BinaryUnsupported),
            Some(Ok(Message::Ping(_))) => {
                self.control = true; // tungstenite queued a Pong
                self.pings_while_blocked += 1;
                if self.pings_while_blocked > MAX_PINGS_WHILE_BLOCKED {
                    debug!("conn={} sends Pings and does not read the Pongs", self.registered.conn);
                    return self.stop_reading(CloseReason::TooSlow);
                }
                Incoming::Alive
            }
            Some(Ok(Message::Pong(_) | Message::Frame(_))) => Incoming::Alive,
        };
        let conn = self.registered.conn;
        self.registered.shell.apply(|hub, now| hub.receive(now, conn, incoming));
    }

    fn parse(&self, text: &str) -> Incoming {
        match parse_client(text, self.registered.shell.config.limits.max_content_chars) {
            Ok(ClientMessage::Chat { content, channel }) => Incoming::Chat { content, channel },
            Ok(ClientMessage::Join { channel, since }) => Incoming::Join { channel, since },
            Ok(ClientMessage::Leave { channel }) => Incoming::Leave(channel),
            Ok(ClientMessage::Ping) => Incoming::Ping,
            Ok(ClientMessage::Auth { token }) => {
                let result = self.registered.shell.verifier.verify(&token, now().unix_ms / 1000);
                Incoming::Refresh(result.map_err(AuthError::message))
            }
            Err(error) => Incoming::Invalid(error),
        }
    }

    fn stop_reading(&mut self, reason: CloseReason) {
        self.reading = false;
        self.registered.shell.disconnect(self.registered.conn, reason);
    }

    fn finished(&self) -> bool {
        self.closing.is_some() && !self.reading && !self.control && self.ws.get_ref().pending() == 0
    }
}

impl Future for Pump {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let mut budget = READ_BUDGET_FRAMES;
        loop {
            if let Err(e) = this.write(cx) {
                debug!("conn={} write failed: {e}", this.registered.conn);
                if this.reading {
                    this.stop_reading(CloseReason::Client);
                }
                return Poll::Ready(());
            }
            if this.finished() {
                return Poll::Ready(());
            }
            if !this.reading {
                break;
            }
            if budget == 0 {
                // The read budget is spent: let the other tasks run, then carry on.
                cx.waker().wake_by_ref();
                break;
            }
            match Pin::new(&mut this.ws).poll_next(cx) {
                Poll::Pending => break,
                Poll::Ready(item) => {
                    budget -= 1;
                    this.read(item);
                }
            }
        }
        if let Some(grace) = &mut this.grace
            && Pin::new(grace).poll(cx).is_ready()
        {
            debug!("conn={} close grace over", this.registered.conn);
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// The close reason for an error on the read side.
fn close_reason_for(e: &WsError) -> CloseReason {
    match e {
        WsError::Capacity(_) => CloseReason::TooBig,
        WsError::Utf8(_) => CloseReason::InvalidUtf8,
        // A client that drops the TCP connection without a close frame has simply left.
        WsError::Protocol(ProtocolViolation::ResetWithoutClosingHandshake) => CloseReason::Client,
        WsError::Protocol(_) => CloseReason::Protocol,
        _ => CloseReason::Client,
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Error as IoError, ErrorKind};

    use async_tungstenite::tungstenite::error::{CapacityError, ProtocolError as Violation};

    use super::*;

    fn request(xff: Option<&str>) -> Request {
        let header = xff.map(|v| format!("X-Forwarded-For: {v}\r\n")).unwrap_or_default();
        let head = format!("GET /ws HTTP/1.1\r\nHost: x\r\n{header}\r\n");
        let mut reader = futures_lite::io::Cursor::new(head.into_bytes());
        smol::block_on(http::read_head(&mut reader)).expect("a request head").0
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn client_ip_believes_forwarded_for_only_from_trusted_proxies() {
        let proxy = ip("10.0.0.1");
        let trusted = [proxy, ip("10.0.0.2")];
        let forwarded = request(Some("198.51.100.7, 10.0.0.2"));
        // From a trusted proxy: the nearest address that is not itself a trusted proxy.
        assert_eq!(client_ip(&forwarded, proxy, &trusted), ip("198.51.100.7"));
        // From anyone else the header is ignored: a client cannot pick its own address.
        assert_eq!(client_ip(&forwarded, ip("203.0.113.9"), &trusted), ip("203.0.113.9"));
        // No header, or nothing but proxies in it: the last address seen.
        assert_eq!(client_ip(&request(None), proxy, &trusted), proxy);
        assert_eq!(client_ip(&request(Some("10.0.0.2")), proxy, &trusted), ip("10.0.0.2"));
        // A forged entry left of the real client is never reached; garbage ends the search.
        let forged = request(Some("1.2.3.4, 198.51.100.7"));
        assert_eq!(client_ip(&forged, proxy, &trusted), ip("198.51.100.7"));
        let garbage = request(Some("198.51.100.7, not-an-address"));
        assert_eq!(client_ip(&garbage, proxy, &trusted), proxy);
        // IPv6 too.
        let v6 = request(Some("2001:db8::1"));
        assert_eq!(client_ip(&v6, proxy, &trusted), ip("2001:db8::1"));
    }

    #[test]
    fn read_errors_map_to_their_close_reasons() {
        let too_long = WsError::Capacity(CapacityError::MessageTooLong { size: 2, max_size: 1 });
        assert_eq!(close_reason_for(&too_long), CloseReason::TooBig);
        assert_eq!(close_reason_for(&WsError::Utf8(String::new())), CloseReason::InvalidUtf8);
        let reset = WsError::Protocol(Violation::ResetWithoutClosingHandshake);
        assert_eq!(close_reason_for(&reset), CloseReason::Client, "a client that just left");
        let unmasked = WsError::Protocol(Violation::UnmaskedFrameFromClient);
        assert_eq!(close_reason_for(&unmasked), CloseReason::Protocol);
        let io = WsError::Io(IoError::from(ErrorKind::ConnectionReset));
        assert_eq!(close_reason_for(&io), CloseReason::Client);
    }
}
