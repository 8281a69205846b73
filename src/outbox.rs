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
//!
//! A frame for a very large channel is queued at once, like any other, but the task that writes
//! it is woken by the [`Pacer`], a few hundred tasks at a time: woken all at once, 100 000 tasks
//! would stand in the executor's queue ahead of everything else, and a chat message arriving
//! meanwhile would wait for all of their writes (a second or more). A connection that is sent
//! anything else in the meantime is woken at once, and writes the paced frame with it. Only the
//! moment of the wake-up moves: every queue still holds its frames in the hub's order.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use async_tungstenite::tungstenite::Utf8Bytes;

use crate::protocol::CloseReason;

/// The connection tasks the [`Pacer`] wakes in one turn; a broadcast to more receivers is paced.
/// At about 10 µs of writing each, a turn is a few milliseconds: the longest a chat message
/// waits behind a broadcast to everyone.
pub const WAKES_PER_TURN: usize = 256;

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
    /// In the [`Pacer`]'s queue, to be woken at its turn.
    paced: bool,
}

impl Shared {
    fn wake(&mut self) {
        self.paced = false;
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// The wake-ups of connection tasks held back by [`OutboxTx::push_below`], in order, and the
/// task that hands them out ([`Pacer::poll_turn`]). One per hub; cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Pacer {
    inner: Rc<RefCell<PacerQueue>>,
}

#[derive(Debug, Default)]
struct PacerQueue {
    waiting: VecDeque<Rc<RefCell<Shared>>>,
    /// The pacing task, while it waits for work.
    waker: Option<Waker>,
}

impl Pacer {
    /// Wake-ups waiting for their turn.
    pub fn len(&self) -> usize {
        self.inner.borrow().waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One turn: wakes the next `n` held-back tasks and is ready, or, with none waiting,
    /// registers the pacing task to be woken when one is. The task then yields, so that the
    /// tasks it woke (and whatever else is ready) run before its next turn.
    pub fn poll_turn(&self, cx: &mut Context<'_>, n: usize) -> Poll<usize> {
        let mut inner = self.inner.borrow_mut();
        if inner.waiting.is_empty() {
            inner.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut woken = 0;
        while woken < n {
            let Some(shared) = inner.waiting.pop_front() else { break };
            let mut shared = shared.borrow_mut();
            // Not paced any more: woken meanwhile, by another frame or its own socket.
            if shared.paced {
                shared.wake();
                woken += 1;
            }
        }
        Poll::Ready(woken)
    }

    fn hold(&self, shared: Rc<RefCell<Shared>>) {
        let mut inner = self.inner.borrow_mut();
        inner.waiting.push_back(shared);
        if let Some(waker) = inner.waker.take() {
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
    /// broadcast loop); returns whether it did. With a `pacer` (a frame for so many receivers
    /// that their tasks are woken in turns, see the module documentation), a task waiting on
    /// its queue is woken at its turn instead of now.
    pub fn push_below(&self, frame: Frame, bound: usize, pacer: Option<&Pacer>) -> bool {
        let mut shared = self.shared.borrow_mut();
        if shared.frames.len() >= bound {
            return false;
        }
        shared.frames.push_back(frame);
        match pacer {
            None => shared.wake(),
            // A task that is not waiting (running, or woken already) will see the frame anyway.
            Some(pacer) if shared.waker.is_some() && !shared.paced => {
                shared.paced = true;
                pacer.hold(self.shared.clone());
            }
            Some(_) => {}
        }
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
        // Everything is taken: a paced wake-up still waiting would find nothing.
        shared.paced = false;
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

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    impl Count {
        fn get(&self) -> usize {
            self.0.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    /// `n` queues whose tasks wait on them, each with its wake-up counter.
    fn waiting(n: usize) -> Vec<(OutboxTx, OutboxRx, std::sync::Arc<Count>)> {
        (0..n)
            .map(|_| {
                let (tx, rx) = outbox();
                let count = std::sync::Arc::new(Count::default());
                let waker = Waker::from(count.clone());
                assert_eq!(rx.poll_next(&mut Context::from_waker(&waker)), Poll::Pending);
                (tx, rx, count)
            })
            .collect()
    }

    fn turn(pacer: &Pacer, n: usize) -> Poll<usize> {
        pacer.poll_turn(&mut Context::from_waker(Waker::noop()), n)
    }

    #[test]
    fn paced_frames_are_queued_at_once_and_their_tasks_woken_in_turns() {
        let pacer = Pacer::default();
        let queues = waiting(5);
        for (tx, _, _) in &queues {
            assert!(tx.push_below(text("everyone"), 10, Some(&pacer)));
            assert_eq!(tx.len(), 1);
        }
        let woken = || queues.iter().map(|(_, _, count)| count.get()).collect::<Vec<_>>();
        assert_eq!(woken(), [0, 0, 0, 0, 0]);
        assert_eq!(turn(&pacer, 2), Poll::Ready(2));
        assert_eq!(woken(), [1, 1, 0, 0, 0]);
        assert_eq!(turn(&pacer, 2), Poll::Ready(2));
        assert_eq!(turn(&pacer, 2), Poll::Ready(1));
        assert_eq!(woken(), [1, 1, 1, 1, 1]);
        assert_eq!(turn(&pacer, 2), Poll::Pending);
        for (_, rx, _) in &queues {
            assert_eq!(poll(rx), Poll::Ready(Next::Frame(text("everyone"))));
        }
    }

    #[test]
    fn another_frame_wakes_a_paced_task_at_once_and_its_turn_is_skipped() {
        let pacer = Pacer::default();
        let queues = waiting(2);
        for (tx, _, _) in &queues {
            tx.push_below(text("everyone"), 10, Some(&pacer));
        }
        // Paced twice, held once.
        queues[0].0.push_below(text("everyone again"), 10, Some(&pacer));
        assert_eq!(pacer.len(), 2);
        queues[0].0.push(text("to you"));
        assert_eq!(queues[0].2.get(), 1);
        // The second queue's task drained its queue by itself (its socket woke it).
        assert_eq!(poll(&queues[1].1), Poll::Ready(Next::Frame(text("everyone"))));
        assert_eq!(poll(&queues[1].1), Poll::Pending);
        assert_eq!(turn(&pacer, 10), Poll::Ready(0));
        assert_eq!(queues[0].2.get(), 1);
        assert_eq!(queues[1].2.get(), 0);
        // The frames are still in the hub's order.
        assert_eq!(poll(&queues[0].1), Poll::Ready(Next::Frame(text("everyone"))));
        assert_eq!(poll(&queues[0].1), Poll::Ready(Next::Frame(text("everyone again"))));
        assert_eq!(poll(&queues[0].1), Poll::Ready(Next::Frame(text("to you"))));
    }

    #[test]
    fn a_task_not_waiting_is_not_held_and_a_full_queue_refuses() {
        let pacer = Pacer::default();
        let (tx, rx) = outbox();
        // Never polled: its task is running (or not started), and will look at the queue.
        assert!(tx.push_below(text("a"), 1, Some(&pacer)));
        assert!(pacer.is_empty());
        assert!(!tx.push_below(text("b"), 1, Some(&pacer)));
        assert_eq!(rx.drain(), [text("a")]);
    }

    #[test]
    fn the_pacing_task_is_woken_when_a_wake_up_is_held() {
        let pacer = Pacer::default();
        let count = std::sync::Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        assert_eq!(pacer.poll_turn(&mut Context::from_waker(&waker), 4), Poll::Pending);
        let queues = waiting(1);
        queues[0].0.push_below(text("everyone"), 10, Some(&pacer));
        assert_eq!(count.get(), 1);
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
