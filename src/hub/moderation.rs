//! What the site has decided about its users: bans (the user is disconnected and refused at the
//! upgrade) and mutes (connected and reading, but chat refused with `muted`), each until a time
//! or, for a ban, for good.
//!
//! Plain data owned by the hub. Times are Unix seconds, because they are the site's times: they
//! are shown to people, stored in a file and survive a restart. The event loop writes the whole
//! set to a file when it changes ([`super::Effect::SaveModeration`]); it is a few entries, not a
//! log.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A banned user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ban {
    pub user_id: String,
    /// When the ban ends (Unix seconds); `None`: never.
    pub until: Option<u64>,
    pub reason: Option<String>,
    /// When the ban was made (Unix seconds).
    pub since: u64,
}

impl Ban {
    /// As stored (the moderation file's entries, Redis's hash fields).
    pub fn to_json(&self) -> String {
        // Plain data: serializing it cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A muted user, everywhere (`channel` absent) or in one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mute {
    pub user_id: String,
    pub channel: Option<String>,
    /// When the mute ends (Unix seconds).
    pub until: u64,
    pub reason: Option<String>,
}

impl Mute {
    /// As stored (the moderation file's entries, Redis's hash fields).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Every ban and mute in force (or expired and not yet swept).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Moderation {
    bans: BTreeMap<String, Ban>,
    /// By user, each of their mutes (everywhere, or one per channel): a chat looks its sender up
    /// by `&str`, without building a key.
    mutes: BTreeMap<String, Vec<Mute>>,
}

/// The file's shape: two lists, so that a person can read it.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Saved {
    pub bans: Vec<Ban>,
    pub mutes: Vec<Mute>,
}

impl Moderation {
    /// From what [`saved`](Self::saved) wrote; entries that ended before `now_secs` are dropped.
    pub fn restore(saved: Saved, now_secs: u64) -> Moderation {
        let mut moderation = Moderation::default();
        for ban in saved.bans {
            moderation.ban(ban);
        }
        for mute in saved.mutes {
            moderation.mute(mute);
        }
        moderation.expire(now_secs);
        moderation
    }

    /// Everything, for the file.
    pub fn saved(&self) -> Saved {
        Saved {
            bans: self.bans.values().cloned().collect(),
            mutes: self.mutes.values().flatten().cloned().collect(),
        }
    }

    /// Bans the user, replacing an earlier ban of theirs.
    pub fn ban(&mut self, ban: Ban) {
        self.bans.insert(ban.user_id.clone(), ban);
    }

    /// Lifts the user's ban; whether there was one.
    pub fn unban(&mut self, user: &str) -> bool {
        self.bans.remove(user).is_some()
    }

    /// The user's ban, if one is in force at `now_secs`.
    pub fn banned(&self, user: &str, now_secs: u64) -> Option<&Ban> {
        self.bans.get(user).filter(|ban| ban.until.is_none_or(|until| now_secs < until))
    }

    /// Mutes the user (in the channel, or everywhere), replacing an earlier mute of the same
    /// scope.
    pub fn mute(&mut self, mute: Mute) {
        let mutes = self.mutes.entry(mute.user_id.clone()).or_default();
        mutes.retain(|m| m.channel != mute.channel);
        mutes.push(mute);
        mutes.sort_by(|a, b| a.channel.cmp(&b.channel));
    }

    /// Lifts the user's mute of that scope; whether there was one.
    pub fn unmute(&mut self, user: &str, channel: Option<&str>) -> bool {
        let Some(mutes) = self.mutes.get_mut(user) else {
            return false;
        };
        let before = mutes.len();
        mutes.retain(|m| m.channel.as_deref() != channel);
        let lifted = mutes.len() != before;
        if mutes.is_empty() {
            self.mutes.remove(user);
        }
        lifted
    }

    /// The mute that keeps the user from posting to `channel` at `now_secs`, if any: of the
    /// mutes everywhere and in the channel, the one that ends last. No allocation: it runs for
    /// every chat message.
    pub fn muted(&self, user: &str, channel: &str, now_secs: u64) -> Option<&Mute> {
        self.mutes
            .get(user)?
            .iter()
            .filter(|m| m.channel.as_deref().is_none_or(|c| c == channel) && now_secs < m.until)
            .max_by_key(|m| m.until)
    }

    /// Drops what has ended by `now_secs`; whether anything was dropped.
    pub fn expire(&mut self, now_secs: u64) -> bool {
        let before = self.bans.len() + self.mutes.values().map(Vec::len).sum::<usize>();
        self.bans.retain(|_, ban| ban.until.is_none_or(|until| now_secs < until));
        for mutes in self.mutes.values_mut() {
            mutes.retain(|mute| now_secs < mute.until);
        }
        self.mutes.retain(|_, mutes| !mutes.is_empty());
        before != self.bans.len() + self.mutes.values().map(Vec::len).sum::<usize>()
    }

    /// Bans in force at `now_secs`, by user id.
    pub fn bans(&self, now_secs: u64) -> impl Iterator<Item = &Ban> {
        self.bans.values().filter(move |ban| ban.until.is_none_or(|until| now_secs < until))
    }

    /// Mutes in force at `now_secs`, by user id and channel.
    pub fn mutes(&self, now_secs: u64) -> impl Iterator<Item = &Mute> {
        self.mutes.values().flatten().filter(move |mute| now_secs < mute.until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(user: &str, until: Option<u64>) -> Ban {
        Ban { user_id: user.into(), until, reason: None, since: 0 }
    }

    fn mute(user: &str, channel: Option<&str>, until: u64) -> Mute {
        Mute { user_id: user.into(), channel: channel.map(String::from), until, reason: None }
    }

    #[test]
    fn a_ban_holds_until_its_end_and_a_permanent_one_for_good() {
        let mut m = Moderation::default();
        m.ban(ban("a", Some(100)));
        m.ban(ban("b", None));
        assert!(m.banned("a", 99).is_some());
        assert!(m.banned("a", 100).is_none());
        assert!(m.banned("b", u64::MAX).is_some());
        assert_eq!(m.bans(100).count(), 1);
        assert!(m.expire(100));
        assert!(!m.expire(100));
        assert!(m.unban("b"));
        assert!(!m.unban("b"));
    }

    #[test]
    fn the_mute_that_ends_last_is_the_one_that_counts() {
        let mut m = Moderation::default();
        m.mute(mute("a", None, 50));
        m.mute(mute("a", Some("lobby"), 80));
        assert_eq!(m.muted("a", "lobby", 10).map(|x| x.until), Some(80));
        assert_eq!(m.muted("a", "other", 10).map(|x| x.until), Some(50));
        assert_eq!(m.muted("a", "other", 50).map(|x| x.until), None);
        assert_eq!(m.muted("b", "lobby", 10), None);
        assert!(m.unmute("a", Some("lobby")));
        assert_eq!(m.muted("a", "lobby", 10).map(|x| x.until), Some(50));
    }

    #[test]
    fn what_is_saved_comes_back_without_what_ended() {
        let mut m = Moderation::default();
        m.ban(ban("a", Some(100)));
        m.ban(ban("b", Some(300)));
        m.mute(mute("c", Some("x"), 200));
        let text = serde_json::to_string(&m.saved()).unwrap();
        let saved: Saved = serde_json::from_str(&text).unwrap();
        let back = Moderation::restore(saved, 150);
        assert_eq!(back.bans(0).map(|b| b.user_id.as_str()).collect::<Vec<_>>(), ["b"]);
        assert_eq!(back.mutes(0).count(), 1);
    }
}
