//! What the hub asked of Redis and Redis has not taken yet, and the policy that bounds it.
//!
//! - Chat messages are queued whether Redis is up or not, numbered in queue order (the number
//!   lets `PUBLISH_SCRIPT` skip a message it already published when a batch is sent again). At
//!   most `cluster.outbox` commands wait; a chat message beyond that is refused, and its sender
//!   is told.
//! - Presence changes are queued only while Redis is up. One that cannot be queued marks the
//!   presence set stale, and the broker rewrites the whole set instead.
//! - Announcements (one connection per user) are queued only while Redis is up: by the time it
//!   is back one would be stale. One that does not fit is dropped.
//! - The site's moderation actions (server API) are queued like chat messages, whether Redis
//!   is up or not, and stay queued across a reconnect; one that does not fit is dropped, and
//!   the broker says so (it was carried out on this instance only).
//! - On reconnect, only chat messages and actions stay: the presence set is rewritten whole.
//!
//! No IO: the broker's task sends what [`Outbox::take`] hands it, and [`Outbox::put_back`]s a
//! batch whose connection failed.

use std::collections::VecDeque;
use std::rc::Rc;

use crate::hub::{Action, ConnId, Effect};
use crate::protocol::ChatHead;

/// A command waiting for Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `seq` numbers this instance's chat messages, in outbox order, from 1.
    Publish {
        from: ConnId,
        head: ChatHead,
        seq: u64,
    },
    /// `channel`: the user's presence in that channel; none: on this instance at all.
    Presence {
        user: Rc<str>,
        channel: Option<Rc<str>>,
        online: bool,
    },
    Announce {
        user: Rc<str>,
        conn: ConnId,
    },
    /// A moderation action to keep in Redis and pass on to every instance.
    Share(Action),
}

/// What became of an effect handed to the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// It waits for Redis.
    Queued,
    /// A chat message did not fit: tell its sender.
    Refused(ConnId),
    /// Nothing to send now (not a cluster effect, or one the policy above drops or folds into
    /// a presence rewrite).
    Skipped,
    /// A moderation action did not fit: it stays on this instance.
    Dropped,
}

#[derive(Debug)]
pub struct Outbox {
    commands: VecDeque<Command>,
    /// Commands waiting, at most.
    max: usize,
    /// The last sequence number given to a chat message.
    last_seq: u64,
    /// A presence change was not queued; the set must be rewritten whole.
    presence_stale: bool,
}

impl Outbox {
    pub fn new(max: usize) -> Outbox {
        Outbox { commands: VecDeque::new(), max, last_seq: 0, presence_stale: false }
    }

    /// Queues a hub effect, by the policy above. `up`: whether Redis is connected.
    pub fn push(&mut self, effect: Effect, up: bool) -> Pushed {
        let full = self.commands.len() >= self.max;
        let command = match effect {
            Effect::Publish { from, .. } if full => return Pushed::Refused(from),
            Effect::Publish { from, head } => {
                self.last_seq += 1;
                Command::Publish { from, head, seq: self.last_seq }
            }
            Effect::Presence { .. } if full || !up => {
                self.presence_stale = true;
                return Pushed::Skipped;
            }
            Effect::Presence { user, channel, online } => {
                Command::Presence { user, channel, online }
            }
            Effect::Announce { .. } if full || !up => return Pushed::Skipped,
            Effect::Announce { user, conn } => Command::Announce { user, conn },
            // The shell performs these itself.
            Effect::Share(_) if full => return Pushed::Dropped,
            Effect::Share(action) => Command::Share(action),
            Effect::Close { .. }
            | Effect::Persist { .. }
            | Effect::SaveModeration
            | Effect::RewriteHistory => return Pushed::Skipped,
        };
        self.commands.push_back(command);
        Pushed::Queued
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    pub fn len(&self) -> usize {
        self.commands.len()
    }

    /// The oldest `n` commands (fewer if fewer wait), to send in one batch.
    pub fn take(&mut self, n: usize) -> Vec<Command> {
        let n = n.min(self.commands.len());
        self.commands.drain(..n).collect()
    }

    /// A batch that did not reach Redis goes back to the front, in its order and with its
    /// sequence numbers, to be sent again after the reconnect.
    pub fn put_back(&mut self, batch: Vec<Command>) {
        for command in batch.into_iter().rev() {
            self.commands.push_front(command);
        }
    }

    /// Connected again, and about to rewrite the presence set whole: queued presence changes
    /// and announcements are stale, chat messages and actions stay.
    pub fn reconnected(&mut self) {
        self.commands.retain(|c| matches!(c, Command::Publish { .. } | Command::Share(_)));
        self.presence_stale = false;
    }

    /// Whether the presence set must be rewritten whole; asking clears it.
    pub fn take_presence_stale(&mut self) -> bool {
        std::mem::take(&mut self.presence_stale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(from: ConnId) -> Effect {
        Effect::Publish { from, head: ChatHead::new(None, "u", "u", "x", 0) }
    }

    fn presence(user: &str, online: bool) -> Effect {
        Effect::Presence { user: user.into(), channel: None, online }
    }

    fn announce(user: &str, conn: ConnId) -> Effect {
        Effect::Announce { user: user.into(), conn }
    }

    fn seqs(outbox: &mut Outbox) -> Vec<u64> {
        let batch = outbox.take(usize::MAX);
        let seqs = batch
            .iter()
            .filter_map(|c| match c {
                Command::Publish { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect();
        outbox.put_back(batch);
        seqs
    }

    #[test]
    fn chat_messages_are_numbered_in_order_and_keep_their_numbers_when_sent_again() {
        let mut outbox = Outbox::new(10);
        for from in 1..=3 {
            assert_eq!(outbox.push(chat(from), true), Pushed::Queued);
        }
        let batch = outbox.take(2);
        assert_eq!(outbox.len(), 1);
        outbox.put_back(batch);
        assert_eq!(outbox.push(chat(4), false), Pushed::Queued);
        assert_eq!(seqs(&mut outbox), [1, 2, 3, 4]);
        let froms: Vec<ConnId> = outbox
            .take(10)
            .into_iter()
            .map(|c| match c {
                Command::Publish { from, .. } => from,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(froms, [1, 2, 3, 4]);
        assert!(outbox.is_empty());
    }

    #[test]
    fn while_redis_is_down_chat_waits_and_presence_is_rewritten_later() {
        let mut outbox = Outbox::new(10);
        assert_eq!(outbox.push(presence("a", true), false), Pushed::Skipped);
        assert_eq!(outbox.push(announce("a", 1), false), Pushed::Skipped);
        assert_eq!(outbox.push(chat(1), false), Pushed::Queued);
        assert_eq!(outbox.len(), 1);
        assert!(outbox.take_presence_stale());
        assert!(!outbox.take_presence_stale(), "asking clears it");
    }

    #[test]
    fn a_full_outbox_refuses_chat_to_its_sender_and_marks_presence_stale() {
        let mut outbox = Outbox::new(2);
        assert_eq!(outbox.push(presence("a", true), true), Pushed::Queued);
        assert_eq!(outbox.push(chat(1), true), Pushed::Queued);
        assert_eq!(outbox.push(chat(2), true), Pushed::Refused(2));
        assert_eq!(outbox.push(announce("b", 3), true), Pushed::Skipped);
        assert!(!outbox.take_presence_stale());
        assert_eq!(outbox.push(presence("b", true), true), Pushed::Skipped);
        assert!(outbox.take_presence_stale());
        assert_eq!(outbox.len(), 2);
        // A refused message takes no number: the next one continues the sequence.
        outbox.take(2);
        assert_eq!(outbox.push(chat(3), true), Pushed::Queued);
        assert_eq!(seqs(&mut outbox), [2]);
    }

    #[test]
    fn on_reconnect_only_chat_messages_stay_in_their_order() {
        let mut outbox = Outbox::new(10);
        outbox.push(chat(1), true);
        outbox.push(presence("a", false), true);
        outbox.push(announce("a", 2), true);
        outbox.push(chat(3), true);
        outbox.push(presence("b", true), false);
        outbox.reconnected();
        assert!(!outbox.take_presence_stale(), "the rewrite covers it");
        assert_eq!(outbox.len(), 2);
        assert_eq!(seqs(&mut outbox), [1, 2]);
    }

    #[test]
    fn effects_the_shell_performs_are_not_queued() {
        let mut outbox = Outbox::new(10);
        let line = async_tungstenite::tungstenite::Utf8Bytes::from_static("{}");
        assert_eq!(outbox.push(Effect::Persist { line }, true), Pushed::Skipped);
        assert!(outbox.is_empty());
    }
}
