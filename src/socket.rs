//! A connection's socket, and the one write buffer that every byte sent on it goes through.
//!
//! tungstenite keeps its write buffer's capacity for as long as a connection is open (it drains
//! the buffer in place), so one long message to a room used to leave every receiver holding a
//! buffer the size of that frame: 2.7 KiB per idle connection became 10.7 after a single message
//! of 2 000 emoji to 10 000 of them (`shequ-loadgen --scenario idle --long-messages 1`,
//! `BENCHMARKS.md`). Any user could do that to everyone.
//!
//! So the server writes its text frames itself, and tungstenite only reads frames and writes the
//! control frames (Pings, the Pongs a client asks for, close frames). Both go into [`Socket`]'s
//! buffer: the pump formats its text frames into it with [`Socket::push_text`], and tungstenite,
//! which sees this type as its stream, has every write it makes appended to the same buffer,
//! never to the socket. So frames leave in the order they were produced, whoever produced them,
//! and nothing can write half a frame between the halves of another. [`Socket::poll_write_out`]
//! writes the buffer to the socket and gives its memory back as soon as the socket has taken
//! all of it: an idle connection holds no write buffer at all.
//!
//! What bounds the buffer is the pump: it moves frames in only while less than
//! [`WRITE_BATCH_BYTES`] is waiting (a slow reader's backlog stays in its send queue, which has
//! its own bound), and it closes a client that sends more than a few dozen Pings while the
//! socket will not take their Pongs (`conn::MAX_PINGS_WHILE_BLOCKED`).

use std::io;
use std::net::TcpStream;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use smol::Async;

/// The pump moves frames into the buffer while less than this is waiting, and the socket is
/// written once per batch: up to this much (plus one frame) per system call.
pub const WRITE_BATCH_BYTES: usize = 4096;

/// The longest header of a frame the server sends (unmasked, with a 64-bit length).
const MAX_HEADER_BYTES: usize = 10;

/// A TCP socket with its write buffer (see the module documentation).
#[derive(Debug)]
pub struct Socket {
    io: Async<TcpStream>,
    /// Bytes to write; `out[..written]` are written already.
    out: Vec<u8>,
    written: usize,
}

impl Socket {
    pub fn new(io: Async<TcpStream>) -> Socket {
        Socket { io, out: Vec::new(), written: 0 }
    }

    /// Bytes waiting to be written.
    pub fn pending(&self) -> usize {
        self.out.len() - self.written
    }

    /// The buffer's allocation, in bytes (0 whenever nothing is waiting).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.out.capacity()
    }

    /// Appends one text frame with `payload`, which must be UTF-8 (the caller's type says so).
    pub fn push_text(&mut self, payload: &[u8]) {
        self.compact();
        encode_text(&mut self.out, payload);
    }

    /// Writes the buffer to the socket until it is empty, then frees it. `Pending` means the
    /// socket is full, and the task is woken when it can take more.
    pub fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.out[self.written..]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
        self.out = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Drops the written part before more is appended, so that a socket that keeps taking a
    /// little at a time cannot make the buffer grow with everything ever sent.
    fn compact(&mut self) {
        if self.written > 0 {
            self.out.drain(..self.written);
            self.written = 0;
        }
    }
}

/// Appends a final, unmasked text frame (RFC 6455, section 5.2): a server's frames are never
/// masked. Used for the first write of a connection too (the 101 and the frames queued with it).
pub fn encode_text(out: &mut Vec<u8>, payload: &[u8]) {
    const FIN_TEXT: u8 = 0x80 | 0x1;
    let len = payload.len();
    out.reserve(MAX_HEADER_BYTES + len);
    out.push(FIN_TEXT);
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// tungstenite's reads: straight to the socket. `Async` tries the read before asking the reactor,
/// so a task woken to send a frame also makes a `recvfrom` that usually finds nothing (0.5 µs
/// here). Waiting for the reactor's word instead saved no measurable CPU and delayed messages:
/// a sender woken by its own echo no longer picks up its next message at once (1 000 receivers
/// at 300 msg/s, six alternated pairs: p50 14.8 → 21.5 ms, p99 32.5 → 41.4 ms).
impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

/// tungstenite's writes: appended to the buffer, always whole, never to the socket.
impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.compact();
        this.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    /// The pump writes the buffer out ([`Socket::poll_write_out`]); for tungstenite, a frame in
    /// the buffer is flushed.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpListener;
    use std::task::Waker;

    use async_tungstenite::tungstenite::Bytes;
    use async_tungstenite::tungstenite::protocol::frame::Frame;
    use async_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    use super::*;

    #[test]
    fn text_frames_are_encoded_as_tungstenite_encodes_them() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload = vec![b'x'; len];
            let mut ours = Vec::new();
            encode_text(&mut ours, &payload);
            let mut theirs = Vec::new();
            let frame = Frame::message(Bytes::from(payload), OpCode::Data(Data::Text), true);
            frame.format(&mut theirs).expect("a frame into a Vec");
            assert_eq!(ours, theirs, "a payload of {len} bytes");
        }
    }

    /// A connected pair: our socket and the peer's end.
    fn pair() -> (Socket, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let peer = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        let (ours, _) = listener.accept().expect("accept");
        (Socket::new(Async::new(ours).expect("non-blocking")), peer)
    }

    fn write_out(socket: &mut Socket) -> Poll<io::Result<()>> {
        socket.poll_write_out(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn the_buffer_is_freed_once_written() {
        let (mut socket, mut peer) = pair();
        let long = "😀".repeat(2000);
        socket.push_text(long.as_bytes());
        let mut from_tungstenite = Pin::new(&mut socket);
        let pong = [0x8a, 0x00];
        let accepted =
            from_tungstenite.as_mut().poll_write(&mut Context::from_waker(Waker::noop()), &pong);
        assert!(matches!(accepted, Poll::Ready(Ok(2))));
        assert_eq!(socket.pending(), 4 + long.len() + 2);
        assert!(socket.capacity() >= socket.pending());

        assert!(matches!(write_out(&mut socket), Poll::Ready(Ok(()))));
        assert_eq!((socket.pending(), socket.capacity()), (0, 0), "nothing kept once written");

        let mut got = vec![0; 4 + long.len() + 2];
        peer.read_exact(&mut got).expect("the frames");
        assert_eq!(got[..4], [0x81, 126, 0x1f, 0x40], "a text frame of 8 000 bytes");
        assert_eq!(&got[4..4 + long.len()], long.as_bytes());
        assert_eq!(got[4 + long.len()..], pong, "the Pong after it, in order");
    }

    #[test]
    fn a_full_socket_keeps_the_rest_and_written_bytes_are_not_kept() {
        let (mut socket, mut peer) = pair();
        let payload = vec![b'y'; 60_000];
        // Until the kernel's buffers are full (the peer does not read).
        let mut pushed = 0;
        loop {
            socket.push_text(&payload);
            pushed += 1;
            if write_out(&mut socket).is_pending() {
                break;
            }
            assert!(pushed < 10_000, "the socket never filled");
        }
        let waiting = socket.pending();
        assert!(waiting > 0 && socket.capacity() >= waiting);
        // More frames while it is full: the written part is dropped before each is appended.
        socket.push_text(b"after");
        assert_eq!(socket.pending(), waiting + 2 + 5);
        assert!(socket.capacity() < waiting + 2 * (payload.len() + MAX_HEADER_BYTES));

        // The peer reads everything; the rest goes out, and the buffer is freed.
        let total = pushed * (4 + payload.len()) + 2 + 5;
        let reader = std::thread::spawn(move || {
            let mut all = vec![0; total];
            peer.read_exact(&mut all).map(|_| all)
        });
        let written = smol::block_on(futures_lite::future::poll_fn(|cx| socket.poll_write_out(cx)));
        assert!(written.is_ok());
        assert_eq!(socket.capacity(), 0);
        let all = reader.join().expect("the reader").expect("every byte");
        assert_eq!(all[total - 7..], [0x81, 5, b'a', b'f', b't', b'e', b'r']);
    }
}
