//! One channel inside the hub: its member connections, the distinct users among them (for
//! presence and `max_members`), its history ring and what its last `online` frame said.
//!
//! Plain data and the operations that touch only it; the hub owns every channel, decides who
//! may join, and does the sending. Without a `channels` section the hub has exactly one channel,
//! the room, and every connection is in it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;

use async_tungstenite::tungstenite::Utf8Bytes;

use super::ConnId;
use crate::channels::Kind;

#[derive(Debug)]
pub(super) struct Channel {
    pub kind: Kind,
    /// The connections in the channel: a broadcast walks this set, so it costs O(members).
    pub members: HashSet<ConnId>,
    /// The distinct users of [`members`](Self::members), each with how many of their
    /// connections are in; 0 for a user whose last connection closed within the presence grace
    /// (the hub keeps their deadline).
    pub users: HashMap<Rc<str>, u32>,
    /// The last `kind.history` chat messages, oldest first, as broadcast.
    pub history: VecDeque<(u64, Utf8Bytes)>,
    /// The highest id that has left the ring (or was never kept in it): after a `since` below
    /// it, some of this channel's messages are gone.
    pub forgotten_up_to: u64,
    /// The count in the last `online` frame.
    pub last_sent: usize,
    /// A `welcome` or `joined` since the last `online` frame carried a count other than
    /// `last_sent`: the next flush must go out even if the count has come back to it.
    pub welcome_differs: bool,
    /// In the hub's list of channels whose count may need an `online` frame.
    pub dirty: bool,
    /// Nobody is in it and it holds history: the id of its last message, its key in the hub's
    /// dormant list.
    pub dormant: Option<u64>,
    /// Cluster: its distinct users on all instances, as Redis last counted them.
    pub cluster_count: Option<usize>,
}

impl Channel {
    pub fn new(kind: Kind) -> Channel {
        Channel {
            kind,
            members: HashSet::new(),
            users: HashMap::new(),
            history: VecDeque::new(),
            forgotten_up_to: 0,
            last_sent: 0,
            welcome_differs: false,
            dirty: false,
            dormant: None,
            cluster_count: None,
        }
    }

    /// Nobody in it, nobody within the grace, no history: the hub frees it.
    pub fn is_unused(&self) -> bool {
        self.members.is_empty() && self.users.is_empty() && self.history.is_empty()
    }

    /// Its distinct users: here, or on all instances when that is more (Redis has not counted
    /// the newest yet, or is away).
    pub fn counted(&self) -> usize {
        self.cluster_count.unwrap_or(0).max(self.users.len())
    }

    /// Keeps a broadcast message in the ring, dropping the oldest beyond `kind.history`.
    pub fn remember(&mut self, id: u64, text: Utf8Bytes) {
        if self.kind.history == 0 {
            self.forgotten_up_to = id;
            return;
        }
        if self.history.len() == self.kind.history
            && let Some((oldest, _)) = self.history.pop_front()
        {
            self.forgotten_up_to = oldest;
        }
        self.history.push_back((id, text));
    }

    /// What a connection joining now gets: `recovered`, and the index in the history to replay
    /// from. `recovered` is `None` without `since`; `Some(true)` when every message of this
    /// channel after `since` is still held (possibly none), and the replay is exactly those;
    /// `Some(false)` when some are gone, or `since` is beyond `last_id` (ids from an earlier run
    /// without a history file), and the replay is the last `on_join`.
    pub fn replay_from(&self, since: Option<u64>, last_id: u64, on_join: usize) -> Replay {
        let held = self.history.len();
        let recent = held - on_join.min(held);
        match since {
            None => Replay { recovered: None, from: recent },
            Some(since) if since <= last_id && since >= self.forgotten_up_to => {
                let from = self.history.partition_point(|(id, _)| *id <= since);
                Replay { recovered: Some(true), from }
            }
            Some(_) => Replay { recovered: Some(false), from: recent },
        }
    }
}

/// See [`Channel::replay_from`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Replay {
    pub recovered: Option<bool>,
    pub from: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(size: usize, ids: &[u64]) -> Channel {
        let mut channel = Channel::new(Kind::room(size));
        for id in ids {
            channel.remember(*id, Utf8Bytes::from(id.to_string()));
        }
        channel
    }

    #[test]
    fn since_recovers_while_nothing_after_it_has_left_the_ring() {
        // Ids 3, 5, 9, 12 went to this channel; the others to other channels.
        let channel = ring(3, &[3, 5, 9, 12]);
        assert_eq!(channel.forgotten_up_to, 3);
        let replay = |since| channel.replay_from(Some(since), 14, 1);
        assert_eq!(replay(2), Replay { recovered: Some(false), from: 2 });
        assert_eq!(replay(3), Replay { recovered: Some(true), from: 0 });
        assert_eq!(replay(4), Replay { recovered: Some(true), from: 0 });
        assert_eq!(replay(9), Replay { recovered: Some(true), from: 2 });
        assert_eq!(replay(14), Replay { recovered: Some(true), from: 3 });
        assert_eq!(replay(15), Replay { recovered: Some(false), from: 2 });
        assert_eq!(channel.replay_from(None, 14, 2), Replay { recovered: None, from: 1 });
    }

    #[test]
    fn a_channel_without_history_recovers_only_the_present() {
        let channel = ring(0, &[4, 7]);
        assert!(channel.history.is_empty());
        assert_eq!(channel.replay_from(Some(6), 8, 5).recovered, Some(false));
        assert_eq!(channel.replay_from(Some(7), 8, 5).recovered, Some(true));
        assert_eq!(channel.replay_from(Some(8), 8, 5).recovered, Some(true));
    }
}
