//! The hub's own timers in one small table, one optional deadline each (in the style of
//! quinn-proto's `timer.rs`). Deadlines that belong to a connection or a user (token expiry,
//! heartbeat, presence grace) live in ordered sets beside that state; the periodic sweep is
//! always armed. [`Hub::poll_timeout`](super::Hub::poll_timeout) is the earliest of them all.

use std::time::Instant;

/// A timer of the hub itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// Look for idle connections; armed only with an idle timeout.
    IdleCheck,
    /// Send the coalesced `online` frame.
    PresenceFlush,
}

impl Timer {
    const COUNT: usize = 2;

    fn index(self) -> usize {
        self as usize
    }
}

/// When each [`Timer`] is due; `None` is not armed.
#[derive(Debug, Default)]
pub(super) struct TimerTable([Option<Instant>; Timer::COUNT]);

impl TimerTable {
    pub(super) fn set(&mut self, timer: Timer, at: Instant) {
        self.0[timer.index()] = Some(at);
    }

    pub(super) fn stop(&mut self, timer: Timer) {
        self.0[timer.index()] = None;
    }

    pub(super) fn get(&self, timer: Timer) -> Option<Instant> {
        self.0[timer.index()]
    }

    pub(super) fn is_armed(&self, timer: Timer) -> bool {
        self.get(timer).is_some()
    }

    /// Armed and due at `now`.
    pub(super) fn is_due(&self, timer: Timer, now: Instant) -> bool {
        self.get(timer).is_some_and(|at| now >= at)
    }

    /// The earliest armed deadline.
    pub(super) fn next(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn next_is_the_earliest_armed_timer() {
        #[allow(clippy::disallowed_methods)] // any instant will do
        let t0 = Instant::now();
        let mut table = TimerTable::default();
        assert_eq!(table.next(), None);
        table.set(Timer::PresenceFlush, t0 + Duration::from_secs(2));
        table.set(Timer::IdleCheck, t0 + Duration::from_secs(1));
        assert_eq!(table.next(), Some(t0 + Duration::from_secs(1)));
        assert!(table.is_due(Timer::IdleCheck, t0 + Duration::from_secs(1)));
        assert!(!table.is_due(Timer::PresenceFlush, t0 + Duration::from_secs(1)));
        table.stop(Timer::IdleCheck);
        assert!(!table.is_armed(Timer::IdleCheck));
        assert_eq!(table.next(), Some(t0 + Duration::from_secs(2)));
    }
}
