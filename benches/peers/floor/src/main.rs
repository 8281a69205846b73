//! shequ-floor: a benchmark peer written for this repository, the floor of shequ-chat's stack.
//! One thread, a smol `LocalExecutor`, async-tungstenite with 4 KiB buffers, a bounded
//! `async_channel` of 256 frames per client, and nothing else: no validation, rate limit,
//! history, presence or metrics. What shequ-chat costs above this is the cost of its features.
//!
//! The contract is shequ-chat's `/ws` for the load generator: `GET /ws?token=JWT` (HS256 with
//! `SECRET`; `sub` is the user; a new connection of a user evicts the old), and every
//! `{"type":"chat","content":C}` a client sends goes to every client, the sender included, in
//! shequ-chat's chat envelope (`{"type":"chat","id":N,"user_id":U,"username":U,"content":C,
//! "ts":MS}`), serialized once per broadcast and shared by every queue. A client whose queue is
//! full is dropped, as the Go hub does.
//!
//! Usage: `SECRET=... shequ-floor PORT` (listens on 127.0.0.1:PORT).

// A benchmark peer stamps messages with the real clock.
#![allow(clippy::disallowed_methods)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use async_channel::{Receiver, Sender};
use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::{Message, Utf8Bytes};
use futures_lite::{FutureExt, StreamExt, future};
use futures_sink::Sink;
use jwt_simple::prelude::{HS256Key, MACLike, NoCustomClaims};
use smol::LocalExecutor;
use smol::net::{TcpListener, TcpStream};

const SEND_QUEUE: usize = 256;
const WS_BUFFER_BYTES: usize = 4096;

#[derive(Default)]
struct Room {
    next_client: u64,
    last_message_id: u64,
    clients: HashMap<u64, (Rc<str>, Sender<Utf8Bytes>)>,
    by_user: HashMap<Rc<str>, u64>,
}

impl Room {
    fn join(&mut self, user: &str) -> (u64, Receiver<Utf8Bytes>) {
        let user: Rc<str> = user.into();
        if let Some(old) = self.by_user.get(&user).copied() {
            self.leave(old);
        }
        self.next_client += 1;
        let (tx, rx) = async_channel::bounded(SEND_QUEUE);
        self.clients.insert(self.next_client, (user.clone(), tx));
        self.by_user.insert(user, self.next_client);
        (self.next_client, rx)
    }

    fn leave(&mut self, id: u64) {
        if let Some((user, tx)) = self.clients.remove(&id) {
            tx.close();
            if self.by_user.get(&user) == Some(&id) {
                self.by_user.remove(&user);
            }
        }
    }

    /// Wraps what `from` sent in the chat envelope once and queues it for everyone.
    fn broadcast(&mut self, from: u64, sent: &str) {
        let Some((user, _)) = self.clients.get(&from) else { return };
        let sent: serde_json::Value = serde_json::from_str(sent).unwrap_or_default();
        let content =
            serde_json::to_string(sent["content"].as_str().unwrap_or("")).unwrap_or_default();
        self.last_message_id += 1;
        let user = serde_json::to_string(&**user).unwrap_or_default();
        let ts = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let frame: Utf8Bytes = format!(
            r#"{{"type":"chat","id":{},"user_id":{user},"username":{user},"content":{content},"ts":{ts}}}"#,
            self.last_message_id
        )
        .into();
        let full: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, (_, tx))| tx.try_send(frame.clone()).is_err())
            .map(|(id, _)| *id)
            .collect();
        for id in full {
            self.leave(id);
        }
    }
}

fn user_of(key: &HS256Key, request: &Request) -> Option<String> {
    let query = request.uri().query()?;
    let token = query.split('&').find_map(|kv| kv.strip_prefix("token="))?;
    key.verify_token::<NoCustomClaims>(token, None).ok()?.subject
}

async fn serve(room: Rc<RefCell<Room>>, key: Rc<HS256Key>, stream: TcpStream) {
    let mut user = None;
    // The callback's types are tungstenite's.
    #[allow(clippy::result_large_err)]
    let check = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        user = (request.uri().path() == "/ws").then(|| user_of(&key, request)).flatten();
        match user {
            Some(_) => Ok(response),
            None => Err(http::Response::builder().status(401).body(None).unwrap_or_default()),
        }
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(WS_BUFFER_BYTES)
        .write_buffer_size(WS_BUFFER_BYTES);
    let accepted = async_tungstenite::accept_hdr_async_with_config(stream, check, Some(config));
    let Ok(ws) = accepted.await else { return };
    let Some(user) = user else { return };
    let (id, rx) = room.borrow_mut().join(&user);
    let (mut sink, mut stream) = split(ws);
    // Whatever is queued goes out in one flush.
    let writer = async {
        while let Ok(frame) = rx.recv().await {
            let mut batch = vec![frame];
            batch.extend(std::iter::from_fn(|| rx.try_recv().ok()));
            if send_all(&mut sink, batch).await.is_err() {
                break;
            }
        }
    };
    let reader = async {
        while let Some(Ok(message)) = stream.next().await {
            if let Message::Text(text) = message {
                room.borrow_mut().broadcast(id, &text);
            }
        }
    };
    writer.or(reader).await;
    room.borrow_mut().leave(id);
}

type Ws = WebSocketStream<TcpStream>;

/// Both halves of one WebSocket on one thread: a shared cell, borrowed only inside a poll.
fn split(ws: Ws) -> (Rc<RefCell<Ws>>, Half) {
    let ws = Rc::new(RefCell::new(ws));
    (ws.clone(), Half(ws))
}

struct Half(Rc<RefCell<Ws>>);

impl futures_lite::Stream for Half {
    type Item = Result<Message, async_tungstenite::tungstenite::Error>;
    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_next(cx)
    }
}

/// Hands the frames to the WebSocket as it takes them, then flushes once.
async fn send_all(
    ws: &mut Rc<RefCell<Ws>>,
    frames: Vec<Utf8Bytes>,
) -> Result<(), async_tungstenite::tungstenite::Error> {
    let mut frames = frames.into_iter().peekable();
    future::poll_fn(|cx| {
        let mut ws = ws.borrow_mut();
        let mut ws = Pin::new(&mut *ws);
        while frames.peek().is_some() {
            match ws.as_mut().poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    let frame = frames.next().unwrap_or_default();
                    ws.as_mut().start_send(Message::Text(frame))?;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        ws.poll_flush(cx)
    })
    .await
}

fn main() {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).expect("usage: PORT");
    let secret = std::env::var("SECRET").expect("SECRET");
    let key = Rc::new(HS256Key::from_bytes(secret.as_bytes()));
    let room = Rc::new(RefCell::new(Room::default()));
    let executor = LocalExecutor::new();
    future::block_on(executor.run(async {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            executor.spawn(serve(room.clone(), key.clone(), stream)).detach();
        }
    }));
}
