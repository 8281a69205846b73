//! Sockets between `accept` and the end of their HTTP handshake, bounded.
//!
//! A connection counts against `limits.max_connections` only once it is upgraded. Before that it
//! is a socket the server has accepted and is reading a request head from, for up to
//! `limits.handshake_timeout_secs`. Without a bound of their own, a crowd of sockets that never
//! finish a request (slowloris) holds file descriptors until the process runs out and `accept`
//! fails for everyone. [`Handshakes::admit`] is asked for every accepted socket: beyond
//! `limits.max_pending_handshakes` at once, or beyond one address's share of it, the socket is
//! closed at once, and the refusal is counted.
//!
//! The chat port does not get that far with the total: while `limits.max_pending_handshakes` are
//! under way it stops accepting ([`Handshakes::room`]) until one ends. A herd of clients
//! reconnecting after a restart then waits in the kernel's listen backlog (and beyond it, in
//! TCP's own SYN retries) and gets in as fast as handshakes finish, instead of being closed and
//! sent into a longer back-off each. What the wait costs is kernel memory for the backlog, no
//! file descriptor.
//!
//! The share is by peer address. Trusted proxies are exempt: every client behind a reverse proxy
//! arrives from the proxy's address, which only the total bounds.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;

use crate::config::Limits;

/// Why an accepted socket was closed before it could send a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeRefusal {
    /// `limits.max_pending_handshakes` handshakes are under way.
    Total,
    /// The address holds its share, `limits.max_pending_handshakes_per_ip`.
    PerIp,
}

impl HandshakeRefusal {
    pub const ALL: [HandshakeRefusal; 2] = [HandshakeRefusal::Total, HandshakeRefusal::PerIp];

    pub fn label(self) -> &'static str {
        match self {
            HandshakeRefusal::Total => "total",
            HandshakeRefusal::PerIp => "per_ip",
        }
    }
}

/// The handshakes under way, and their limits.
#[derive(Debug)]
pub struct Handshakes {
    max_total: usize,
    /// 0: no per-address share.
    max_per_ip: usize,
    exempt: Vec<IpAddr>,
    total: Cell<usize>,
    per_ip: RefCell<HashMap<IpAddr, usize>>,
    refused: [Cell<u64>; HandshakeRefusal::ALL.len()],
    /// Times [`room`](Self::room) had to wait.
    waits: Cell<u64>,
    /// A handshake ended: one signal, kept until [`room`](Self::room) takes it.
    freed: (async_channel::Sender<()>, async_channel::Receiver<()>),
}

/// One handshake under way; it stops counting when dropped.
#[derive(Debug)]
pub struct Pending {
    handshakes: Rc<Handshakes>,
    ip: Option<IpAddr>,
}

impl Handshakes {
    pub fn new(limits: &Limits, trusted_proxies: &[IpAddr]) -> Handshakes {
        Handshakes {
            max_total: limits.max_pending_handshakes,
            max_per_ip: limits.max_pending_handshakes_per_ip,
            exempt: trusted_proxies.to_vec(),
            total: Cell::new(0),
            per_ip: RefCell::new(HashMap::new()),
            refused: Default::default(),
            waits: Cell::new(0),
            freed: async_channel::bounded(1),
        }
    }

    /// Returns once fewer than `limits.max_pending_handshakes` are under way: the chat port's
    /// accept loop waits here rather than accept a socket only to close it. One task waits at a
    /// time (the chat port's loop), so the one kept signal is enough.
    pub async fn room(&self) {
        if self.total.get() < self.max_total {
            return;
        }
        self.waits.set(self.waits.get() + 1);
        while self.total.get() >= self.max_total {
            // The channel lives as long as `self`: `recv` cannot fail here.
            let _ = self.freed.1.recv().await;
        }
    }

    /// Times the chat port stopped accepting until a handshake ended, since start.
    pub fn waits(&self) -> u64 {
        self.waits.get()
    }

    /// Admits a freshly accepted socket from `peer`, or says why it must be closed at once.
    pub fn admit(self: &Rc<Self>, peer: IpAddr) -> Result<Pending, HandshakeRefusal> {
        let shared = self.max_per_ip > 0 && !self.exempt.contains(&peer);
        let refusal = if self.total.get() >= self.max_total {
            Some(HandshakeRefusal::Total)
        } else if shared {
            let mut per_ip = self.per_ip.borrow_mut();
            let held = per_ip.entry(peer).or_insert(0);
            if *held >= self.max_per_ip {
                Some(HandshakeRefusal::PerIp)
            } else {
                *held += 1;
                None
            }
        } else {
            None
        };
        if let Some(refusal) = refusal {
            let cell = &self.refused[refusal as usize];
            cell.set(cell.get() + 1);
            return Err(refusal);
        }
        self.total.set(self.total.get() + 1);
        Ok(Pending { handshakes: self.clone(), ip: shared.then_some(peer) })
    }

    /// Handshakes under way.
    pub fn pending(&self) -> usize {
        self.total.get()
    }

    /// Sockets closed at once, for `reason`, since start.
    pub fn refused(&self, reason: HandshakeRefusal) -> u64 {
        self.refused[reason as usize].get()
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let h = &self.handshakes;
        h.total.set(h.total.get() - 1);
        // Full already means a signal is waiting to be taken.
        let _ = h.freed.0.try_send(());
        if let Some(ip) = self.ip {
            let mut per_ip = h.per_ip.borrow_mut();
            if let Some(n) = per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshakes(total: usize, per_ip: usize, exempt: &[IpAddr]) -> Rc<Handshakes> {
        let limits = Limits {
            max_pending_handshakes: total,
            max_pending_handshakes_per_ip: per_ip,
            ..Limits::default()
        };
        Rc::new(Handshakes::new(&limits, exempt))
    }

    #[test]
    fn an_address_gets_its_share_and_the_total_bounds_everyone() {
        let h = handshakes(5, 2, &[]);
        let a = IpAddr::from([10, 0, 0, 1]);
        let held: Vec<Pending> = (0..2).map(|_| h.admit(a).unwrap()).collect();
        assert_eq!(h.admit(a).unwrap_err(), HandshakeRefusal::PerIp);
        let others: Vec<Pending> =
            (2..5).map(|i| h.admit(IpAddr::from([10, 0, 0, i])).unwrap()).collect();
        assert_eq!(h.admit(IpAddr::from([10, 0, 0, 9])).unwrap_err(), HandshakeRefusal::Total);
        assert_eq!(h.pending(), 5);
        drop(held);
        assert_eq!(h.pending(), 3);
        let _again = h.admit(a).unwrap();
        drop(others);
        assert_eq!(h.pending(), 1);
        assert_eq!(h.refused(HandshakeRefusal::PerIp), 1);
        assert_eq!(h.refused(HandshakeRefusal::Total), 1);
        assert_eq!(h.per_ip.borrow().len(), 1, "addresses with nothing pending are forgotten");
    }

    #[test]
    fn room_waits_until_a_handshake_ends() {
        let h = handshakes(2, 0, &[]);
        let a = IpAddr::from([10, 0, 0, 1]);
        smol::block_on(h.room()); // room at once
        let first = h.admit(a).unwrap();
        let _second = h.admit(a).unwrap();
        let mut waiting = Box::pin(h.room());
        assert!(
            futures_lite::future::block_on(futures_lite::future::poll_once(&mut waiting)).is_none()
        );
        drop(first);
        assert!(
            futures_lite::future::block_on(futures_lite::future::poll_once(&mut waiting)).is_some()
        );
        assert_eq!(h.waits(), 1);
        assert_eq!(h.refused(HandshakeRefusal::Total), 0);
    }

    #[test]
    fn a_trusted_proxy_is_bounded_only_by_the_total() {
        let proxy = IpAddr::from([127, 0, 0, 1]);
        let h = handshakes(4, 1, &[proxy]);
        let held: Vec<Pending> = (0..4).map(|_| h.admit(proxy).unwrap()).collect();
        assert_eq!(h.admit(proxy).unwrap_err(), HandshakeRefusal::Total);
        drop(held);
        assert_eq!(h.pending(), 0);
        assert!(h.per_ip.borrow().is_empty());
    }
}
