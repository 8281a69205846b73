//! What the site's backend asks of the hub through the server API (`api.rs`): publish a message,
//! act on a user or a message ([`Action`]), and the reads behind presence, history and bans.
//!
//! Each is an input like a client's frame: it takes the time, changes the hub, and returns
//! effects for the event loop, which closes the removed connections' queues after the hub's
//! borrow has ended, exactly as for a replaced connection.

use std::rc::Rc;

use async_tungstenite::tungstenite::Utf8Bytes;
use serde::{Deserialize, Serialize};

use super::moderation::{Ban, Moderation, Mute};
use super::{ConnId, Effect, Hub, Now, ROOM};
use crate::outbox::Frame;
use crate::protocol::{ChatHead, CloseReason, ServerMessage};

/// A moderation action: what `POST /api/disconnect`, `/api/ban`, `/api/mute` and
/// `DELETE /api/ban/…`, `/api/mute/…`, `/api/messages/…` ask for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Closes every connection of the user with 4008.
    Disconnect {
        user_id: String,
        reason: Option<String>,
    },
    /// Closes every connection of the user with 4009 and refuses new ones until it ends.
    Ban(Ban),
    Unban {
        user_id: String,
    },
    Mute(Mute),
    Unmute {
        user_id: String,
        channel: Option<String>,
    },
    /// Takes a message out of its channel's history and tells the channel.
    Delete {
        id: u64,
    },
}

impl Action {
    /// Its label in `shequ_chat_moderation_actions_total{action}`.
    pub fn label(&self) -> &'static str {
        match self {
            Action::Disconnect { .. } => "disconnect",
            Action::Ban(_) => "ban",
            Action::Unban { .. } => "unban",
            Action::Mute(_) => "mute",
            Action::Unmute { .. } => "unmute",
            Action::Delete { .. } => "delete",
        }
    }

    /// Every label, in the order of the counters.
    pub const LABELS: [&'static str; 6] =
        ["disconnect", "ban", "unban", "mute", "unmute", "delete"];

    pub fn index(&self) -> usize {
        Action::LABELS.iter().position(|l| *l == self.label()).unwrap_or(0)
    }
}

/// What an action did here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Connections closed.
    pub closed: usize,
    /// Whether it applied: always for a disconnect, ban or mute; for an unban, unmute or
    /// delete, whether there was such a ban, mute or message.
    pub done: bool,
    /// Delete: the channel the message was in (`None` for the room).
    pub channel: Option<String>,
}

/// A message the site publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Post {
    /// `None`: the default channel (the room without channels).
    pub channel: Option<String>,
    /// Already checked against the content limits.
    pub content: String,
    /// In the name of this user (id, name); `None`: in the site's own name.
    pub sender: Option<(String, String)>,
    /// Cluster: what the message's [`Effect::Publish`] carries as its sender, for the caller to
    /// hear the id Redis gave it. No connection has it (see [`SITE_TICKETS`]).
    pub ticket: ConnId,
}

/// Why the hub could not take a [`Post`] or a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteError {
    /// A server with one room was given a channel, or a server without a default channel none.
    ChannelNeeded,
    OneRoom,
    /// No rule covers the name.
    NoSuchChannel,
    /// `limits.max_channels` channels are in use.
    ServerFull,
}

impl SiteError {
    pub fn message(self) -> &'static str {
        match self {
            SiteError::ChannelNeeded => "this server has no default channel: name a channel",
            SiteError::OneRoom => "this server has one room and no channels: leave out channel",
            SiteError::NoSuchChannel => "no rule covers that channel",
            SiteError::ServerFull => "the server holds as many channels as it may",
        }
    }
}

/// One user in a channel, for `GET /api/presence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Present {
    pub user_id: String,
    pub username: String,
    /// Their connections in the channel on this instance.
    pub connections: usize,
}

impl Hub {
    /// The channel a site request names: the room without channels (which takes no name), the
    /// default channel when none is named. Does not create it.
    pub fn site_channel(&self, channel: Option<&str>) -> Result<String, SiteError> {
        match (&self.config.channels, channel) {
            (None, None) => Ok(ROOM.to_string()),
            (None, Some(_)) => Err(SiteError::OneRoom),
            (Some(policy), None) => {
                policy.default_channel().map(String::from).ok_or(SiteError::ChannelNeeded)
            }
            (Some(policy), Some(name)) => match policy.kind_of(name) {
                Some(_) => Ok(name.to_string()),
                None => Err(SiteError::NoSuchChannel),
            },
        }
    }

    /// A message from the site: numbered, kept and broadcast like a member's, including in a
    /// `read_only` channel (only the site posts there). Returns its id; in a cluster `None`, as
    /// Redis numbers it.
    pub fn publish(
        &mut self,
        now: Now,
        post: Post,
    ) -> (Result<Option<u64>, SiteError>, Vec<Effect>) {
        let mut effects = Vec::new();
        let name = match self.site_channel(post.channel.as_deref()) {
            Ok(name) => name,
            Err(e) => return (Err(e), effects),
        };
        let key = match self.channels.get_key_value(name.as_str()) {
            Some((key, _)) => key.clone(),
            None => {
                let kind = self.config.channels.as_ref().and_then(|p| p.kind_of(&name)).cloned();
                match kind.and_then(|kind| self.create_channel(&name, kind)) {
                    Some(key) => key,
                    None => return (Err(SiteError::ServerFull), effects),
                }
            }
        };
        let channel = self.config.channels.is_some().then_some(&*key);
        let head = match &post.sender {
            Some((id, name)) => ChatHead::new(channel, id, name, &post.content, now.unix_ms),
            None => ChatHead::from_site(channel, &post.content, now.unix_ms),
        };
        if self.config.cluster {
            // Numbered by Redis and delivered to every instance, this one included.
            effects.push(Effect::Publish { from: post.ticket, head });
            self.settle(&key);
            return (Ok(None), effects);
        }
        self.last_message_id += 1;
        let id = self.last_message_id;
        let text = Utf8Bytes::from(head.into_frame(id));
        if self.config.persist_history {
            effects.push(Effect::Persist { line: text.clone() });
        }
        self.record(&key, id, text, now, &mut effects);
        self.presence_if_changed(now, &mut effects);
        (Ok(Some(id)), effects)
    }

    /// Carries out a moderation action the site asked this instance for; in a cluster it is
    /// also handed on ([`Effect::Share`]) to be kept in Redis and carried out on every instance.
    pub fn act(&mut self, now: Now, action: &Action) -> (Outcome, Vec<Effect>) {
        let (outcome, mut effects) = self.act_shared(now, action);
        if self.config.cluster {
            effects.push(Effect::Share(action.clone()));
        }
        (outcome, effects)
    }

    /// Cluster: carries out an action another instance was asked for (it came through Redis).
    pub fn act_shared(&mut self, now: Now, action: &Action) -> (Outcome, Vec<Effect>) {
        let mut effects = Vec::new();
        let mut outcome = Outcome { done: true, ..Outcome::default() };
        let saves = !matches!(action, Action::Disconnect { .. } | Action::Delete { .. });
        match action {
            Action::Disconnect { user_id, .. } => {
                outcome.closed = self.close_user(now, user_id, CloseReason::Kicked, &mut effects);
            }
            Action::Ban(ban) => {
                self.moderation.ban(ban.clone());
                outcome.closed =
                    self.close_user(now, &ban.user_id, CloseReason::Banned, &mut effects);
            }
            Action::Unban { user_id } => outcome.done = self.moderation.unban(user_id),
            Action::Mute(mute) => self.moderation.mute(mute.clone()),
            Action::Unmute { user_id, channel } => {
                outcome.done = self.moderation.unmute(user_id, channel.as_deref());
            }
            Action::Delete { id } => {
                outcome.done = false;
                if let Some(key) = self.forget_message(*id) {
                    outcome.done = true;
                    let channel = self.config.channels.is_some().then_some(&*key);
                    outcome.channel = channel.map(String::from);
                    let json = ServerMessage::Deleted { id: *id, channel }.to_json();
                    self.broadcast(now, &key, Frame::Text(json.into()), &mut effects);
                    self.settle(&key);
                    if self.config.persist_history {
                        effects.push(Effect::RewriteHistory);
                    }
                }
            }
        }
        if saves {
            effects.push(Effect::SaveModeration);
        }
        self.presence_if_changed(now, &mut effects);
        (outcome, effects)
    }

    /// Removes every connection of the user, to be closed with `reason`; how many.
    fn close_user(
        &mut self,
        now: Now,
        user: &str,
        reason: CloseReason,
        effects: &mut Vec<Effect>,
    ) -> usize {
        let conns: Vec<ConnId> = self.users.get(user).map_or(Vec::new(), |u| u.conns.clone());
        for &conn in &conns {
            self.remove(now, conn, reason, effects);
        }
        conns.len()
    }

    /// Takes message `id` out of the history of the channel that holds it; that channel's key.
    fn forget_message(&mut self, id: u64) -> Option<Rc<str>> {
        let (key, at) = self.find_message(id)?;
        self.channels.get_mut(&key)?.history.remove(at);
        Some(key)
    }

    /// The channel whose history holds message `id` (`""` for the room), if one does.
    pub fn channel_of_message(&self, id: u64) -> Option<String> {
        self.find_message(id).map(|(key, _)| key.to_string())
    }

    /// Where message `id` is held: its channel and its place in the ring. Ids are in order
    /// within a channel, so each channel is searched in O(log n).
    fn find_message(&self, id: u64) -> Option<(Rc<str>, usize)> {
        self.channels.iter().find_map(|(key, channel)| {
            let at = channel.history.partition_point(|(held, _)| *held < id);
            let held = channel.history.get(at).is_some_and(|(held, _)| *held == id);
            held.then(|| (key.clone(), at))
        })
    }

    /// The site's bans and mutes.
    pub fn moderation(&self) -> &Moderation {
        &self.moderation
    }

    /// Takes the bans and mutes of a previous run, or in a cluster Redis's, in place of its own;
    /// the connections of users banned now are closed (4009).
    pub fn set_moderation(&mut self, now: Now, moderation: Moderation) -> Vec<Effect> {
        self.moderation = moderation;
        let now_secs = now.unix_ms / 1000;
        let banned: Vec<Rc<str>> = self
            .users
            .iter()
            .filter(|(user, u)| {
                !u.conns.is_empty() && self.moderation.banned(user, now_secs).is_some()
            })
            .map(|(user, _)| user.clone())
            .collect();
        let mut effects = Vec::new();
        for user in banned {
            self.close_user(now, &user, CloseReason::Banned, &mut effects);
        }
        self.presence_if_changed(now, &mut effects);
        effects
    }

    /// The users with a connection in the channel here, by user id; `None` for a channel that
    /// is not live here. O(members).
    pub fn presence(&self, channel: &str) -> Option<Vec<Present>> {
        let channel = self.channels.get(channel)?;
        let mut users: std::collections::BTreeMap<&str, Present> = Default::default();
        for c in channel.members.iter().filter_map(|conn| self.conns.get(conn)) {
            users
                .entry(&c.user)
                .or_insert_with(|| Present {
                    user_id: c.user.to_string(),
                    username: c.username.to_string(),
                    connections: 0,
                })
                .connections += 1;
        }
        Some(users.into_values().collect())
    }

    /// The channel's `online` count as its members see it: in a cluster, its users on every
    /// instance; `None` for a channel that is not live here.
    pub fn online_in(&self, channel: &str) -> Option<usize> {
        self.shown_count(channel).or_else(|| Some(self.channels.get(channel)?.users.len()))
    }

    /// The channel's held messages after `since` (all without it), oldest first, at most
    /// `limit` of them (the newest). Empty for a channel not live here.
    pub fn messages(&self, channel: &str, since: Option<u64>, limit: usize) -> Vec<Utf8Bytes> {
        let Some(channel) = self.channels.get(channel) else {
            return Vec::new();
        };
        let from = since.map_or(0, |since| channel.history.partition_point(|(id, _)| *id <= since));
        let from = from.max(channel.history.len().saturating_sub(limit));
        channel.history.range(from..).map(|(_, text)| text.clone()).collect()
    }
}

/// The first ticket of the site's messages ([`Post::ticket`]): connection ids count up from 1
/// and never reach it, so a ticket is never taken for a connection.
pub const SITE_TICKETS: ConnId = 1 << 63;
