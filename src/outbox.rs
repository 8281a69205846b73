//! A connection's send queue: the hub pushes frames in, the connection's task writes them out.
//!
//! Single-threaded (`Rc`, no atomics) and allocated lazily: an idle connection's queue holds no
//! buffer at all, and a drained queue gives its buffer back. A bounded `async_channel` would
//! allocate every slot up front, which at the default queue length costs more per connection than
//! everything else a connection holds together.
//!
//! The two halves have one owner each. [`OutboxTx`] lives in the hub and is neither `Clone` nor
//! reachable from outside it; [`OutboxTx::close`] takes it by value. So a queue cannot be closed
//! twice, and nothing can push to a queue after it was closed: the type system holds the rule that
//! the Go handler broke with "close of closed channel".

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use async_tungstenite::tungstenite::Utf8Bytes;

use crate::protocol::CloseReason;

/// One frame waiting to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A text frame. Broadcasts share one buffer between every receiver (`Utf8Bytes` is a
    /// reference-counted slice), so queueing a message costs a counter increment, not a copy.
    Text(Utf8Bytes),
    /// A WebSocket Ping (the heartbeat).
    Ping,
}

#[derive(Debug, Default)]
struct Shared {
    frames: VecDeque<Frame>,
    closed: Option<CloseReason>,
    waker: Option<Waker>,
}

impl Shared {
    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// The hub's half: push frames, then close it once.
#[derive(Debug)]
pub struct OutboxTx {
    shared: Rc<RefCell<Shared>>,
}

/// The connection task's half: take frames until the queue is closed and empty.
#[derive(Debug)]
pub struct OutboxRx {
    shared: Rc<RefCell<Shared>>,
}

/// What [`OutboxRx::poll_next`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Frame(Frame),
    /// Closed, and every frame queued before the close has been taken.
    Closed(CloseReason),
}

/// A new, empty, open queue.
pub fn outbox() -> (OutboxTx, OutboxRx) {
    let shared = Rc::new(RefCell::new(Shared::default()));
    (OutboxTx { shared: shared.clone() }, OutboxRx { shared })
}

impl OutboxTx {
    /// Frames queued and not yet taken by the connection's task.
    pub fn len(&self) -> usize {
        self.shared.borrow().frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues a frame. Never waits: the caller checks [`len`](Self::len) against its bound first.
    pub fn push(&self, frame: Frame) {
        let mut shared = self.shared.borrow_mut();
        shared.frames.push_back(frame);
        shared.wake();
    }

    /// Queues a frame if fewer than `bound` are waiting (one look at the queue, for the
    /// broadcast loop); returns whether it did.
    pub fn push_below(&self, frame: Frame, bound: usize) -> bool {
        let mut shared = self.shared.borrow_mut();
        if shared.frames.len() >= bound {
            return false;
        }
        shared.frames.push_back(frame);
        shared.wake();
        true
    }

    /// Closes the queue. Frames already queued are still written, then the close frame, except
    /// for a client that is too slow: its backlog is what made it too slow, so it is dropped.
    pub fn close(self, reason: CloseReason) {
        let mut shared = self.shared.borrow_mut();
        if reason == CloseReason::TooSlow {
            shared.frames = VecDeque::new();
        }
        shared.closed = Some(reason);
        shared.wake();
        // `self` is dropped here; Drop sees the queue closed and does nothing more.
    }
}

impl Drop for OutboxTx {
    /// A queue dropped without [`close`](Self::close) (the hub itself going away) reads as a
    /// shutdown, so its task still ends.
    fn drop(&mut self) {
        let mut shared = self.shared.borrow_mut();
        if shared.closed.is_none() {
            shared.closed = Some(CloseReason::Shutdown);
            shared.wake();
        }
    }
}

impl OutboxRx {
    /// Takes the next frame, or registers the task to be woken when there is one.
    pub fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Next> {
        let mut shared = self.shared.borrow_mut();
        if let Some(frame) = shared.frames.pop_front() {
            if shared.frames.is_empty() {
                // Give the buffer back: idle connections are most connections.
                shared.frames = VecDeque::new();
            }
            return Poll::Ready(Next::Frame(frame));
        }
        if let Some(reason) = shared.closed {
            return Poll::Ready(Next::Closed(reason));
        }
        if !shared.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            shared.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Why the queue was closed, if it was (frames may still be waiting).
    pub fn closed(&self) -> Option<CloseReason> {
        self.shared.borrow().closed
    }

    /// Takes every frame queued now, without waiting (the first write of a connection; tests).
    pub fn drain(&self) -> Vec<Frame> {
        let mut shared = self.shared.borrow_mut();
        std::mem::take(&mut shared.frames).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn poll(rx: &OutboxRx) -> Poll<Next> {
        rx.poll_next(&mut Context::from_waker(Waker::noop()))
    }

    fn text(s: &str) -> Frame {
        Frame::Text(Utf8Bytes::from(s.to_string()))
    }

    #[test]
    fn frames_come_out_in_order_then_the_close() {
        let (tx, rx) = outbox();
        assert_eq!(poll(&rx), Poll::Pending);
        tx.push(text("a"));
        tx.push(Frame::Ping);
        assert_eq!(tx.len(), 2);
        tx.close(CloseReason::Replaced);
        assert_eq!(poll(&rx), Poll::Ready(Next::Frame(text("a"))));
        assert_eq!(poll(&rx), Poll::Ready(Next::Frame(Frame::Ping)));
        assert_eq!(poll(&rx), Poll::Ready(Next::Closed(CloseReason::Replaced)));
    }

    #[test]
    fn too_slow_drops_the_backlog() {
        let (tx, rx) = outbox();
        tx.push(text("a"));
        tx.close(CloseReason::TooSlow);
        assert_eq!(poll(&rx), Poll::Ready(Next::Closed(CloseReason::TooSlow)));
    }

    #[test]
    fn dropping_the_sender_reads_as_shutdown() {
        let (tx, rx) = outbox();
        drop(tx);
        assert_eq!(rx.closed(), Some(CloseReason::Shutdown));
    }

    #[test]
    fn drained_queue_frees_its_buffer() {
        let (tx, rx) = outbox();
        for _ in 0..100 {
            tx.push(Frame::Ping);
        }
        while let Poll::Ready(Next::Frame(_)) = poll(&rx) {}
        assert_eq!(rx.shared.borrow().frames.capacity(), 0);
    }
}
