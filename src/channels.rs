//! Channels: which rooms exist and who may join them, decided from the config's `channels`
//! section and the user's token. No state and no IO: the hub asks, this answers.
//!
//! - A channel name is 1–64 bytes of `A-Z a-z 0-9 _ . : -`.
//! - A rule's `pattern` is a name, or a prefix ending in `*` (`forum:*`; `*` alone matches every
//!   name). The first rule whose pattern matches a name decides; a name no rule matches cannot
//!   be joined.
//! - `join: "public"`: any authenticated user; `join: "claim"`: a user whose token's claim (named
//!   by `channels.claim`, default `channels`: a JSON array of names and trailing-`*` patterns)
//!   covers the name.
//! - `dm:<a>:<b>`, with the two user ids sorted, is a private conversation: exactly those two
//!   users may join it, whatever the rules say. User ids in it are names without `:`.

use serde::{Deserialize, Serialize};

/// The longest channel name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// The prefix of a private conversation's name.
pub const DM_PREFIX: &str = "dm:";

/// Whether `name` is a channel name: 1–64 bytes of `A-Z a-z 0-9 _ . : -`.
pub fn is_valid_name(name: &str) -> bool {
    (1..=MAX_NAME_BYTES).contains(&name.len()) && name.bytes().all(name_byte)
}

fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_.:-".contains(&b)
}

/// A channel name, or a prefix of names ending in `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    /// Reads a pattern: name bytes, and `*` only at the end.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        let (body, wildcard) = match text.strip_suffix('*') {
            Some(body) => (body, true),
            None => (text, false),
        };
        let fits = body.len() <= MAX_NAME_BYTES && body.bytes().all(name_byte);
        if !fits || (!wildcard && body.is_empty()) {
            return Err(format!(
                "{text:?} is not a channel pattern: up to {MAX_NAME_BYTES} of A-Z a-z 0-9 _ . : - \
                 with `*` only at the end"
            ));
        }
        Ok(if wildcard { Pattern::Prefix(body.into()) } else { Pattern::Exact(body.into()) })
    }

    pub fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Exact(exact) => exact == name,
            Pattern::Prefix(prefix) => name.starts_with(prefix.as_str()),
        }
    }
}

/// Who may join the channels of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinRule {
    /// Any authenticated user.
    Public,
    /// Users whose token's claim covers the channel.
    Claim,
}

/// One rule as the config file writes it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub pattern: String,
    pub join: JoinRule,
    /// Messages kept for `since`; absent: `history.size`.
    #[serde(default)]
    pub history: Option<usize>,
    /// Whether members get `online` counts.
    #[serde(default = "yes")]
    pub presence: bool,
    /// Members at most; 0: no limit.
    #[serde(default)]
    pub max_members: usize,
    /// Members read; only the server posts.
    #[serde(default)]
    pub read_only: bool,
}

fn yes() -> bool {
    true
}

/// The config file's `channels` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelsConfig {
    /// The channel of a connection that never joins one (today's clients).
    pub default: Option<String>,
    /// The token claim that lists a user's channels.
    pub claim: String,
    pub rules: Vec<RuleConfig>,
}

impl Default for ChannelsConfig {
    fn default() -> ChannelsConfig {
        ChannelsConfig { default: None, claim: "channels".into(), rules: Vec::new() }
    }
}

/// What a channel is like, from its rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kind {
    pub join: JoinRule,
    pub history: usize,
    pub presence: bool,
    pub max_members: usize,
    pub read_only: bool,
}

impl Kind {
    /// The one room of a server without a `channels` section.
    pub fn room(history: usize) -> Kind {
        Kind { join: JoinRule::Public, history, presence: true, max_members: 0, read_only: false }
    }
}

/// Why a user may not join a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// Not a channel name, or no rule covers it.
    NoSuchChannel,
    /// A rule covers it, but not for this user.
    Forbidden,
}

/// The checked `channels` section.
#[derive(Debug, Clone)]
pub struct Policy {
    default: Option<String>,
    claim: String,
    rules: Vec<(Pattern, Kind)>,
    dm: Kind,
}

impl Policy {
    /// Checks the section; `history_size` is `history.size`, the default of a rule's `history`.
    pub fn new(config: &ChannelsConfig, history_size: usize) -> Result<Policy, String> {
        let mut rules = Vec::with_capacity(config.rules.len());
        for (i, rule) in config.rules.iter().enumerate() {
            let pattern = Pattern::parse(&rule.pattern)
                .map_err(|e| format!("channels.rules[{i}].pattern: {e}"))?;
            let kind = Kind {
                join: rule.join,
                history: rule.history.unwrap_or(history_size),
                presence: rule.presence,
                max_members: rule.max_members,
                read_only: rule.read_only,
            };
            rules.push((pattern, kind));
        }
        if config.claim.is_empty() {
            return Err("channels.claim: must name a token claim".into());
        }
        let dm = Kind {
            join: JoinRule::Claim,
            history: history_size,
            presence: true,
            max_members: 0,
            read_only: false,
        };
        let policy = Policy { default: None, claim: config.claim.clone(), rules, dm };
        if let Some(default) = &config.default {
            match policy.rule(default) {
                Some(kind) if kind.join == JoinRule::Public && !kind.read_only => {}
                _ => {
                    return Err(format!(
                        "channels.default: {default:?} must be a channel that a public rule \
                         covers, and not read-only: every connection is in it"
                    ));
                }
            }
        }
        Ok(Policy { default: config.default.clone(), ..policy })
    }

    /// The longest history any channel keeps.
    pub fn longest_history(&self) -> usize {
        self.rules.iter().map(|(_, kind)| kind.history).fold(self.dm.history, usize::max)
    }

    /// The channel of a connection that never joins one.
    pub fn default_channel(&self) -> Option<&str> {
        self.default.as_deref()
    }

    /// The token claim that lists a user's channels.
    pub fn claim(&self) -> &str {
        &self.claim
    }

    /// The rule that decides `name` (not for private conversations).
    fn rule(&self, name: &str) -> Option<&Kind> {
        if !is_valid_name(name) || name.starts_with(DM_PREFIX) {
            return None;
        }
        self.rules.iter().find(|(pattern, _)| pattern.matches(name)).map(|(_, kind)| kind)
    }

    /// What `name` is like, whoever asks: its rule's kind, or a private conversation's. For
    /// history read back at start, whose channel must still exist under the current rules.
    pub fn kind_of(&self, name: &str) -> Option<&Kind> {
        match dm_members(name) {
            Some(_) => Some(&self.dm),
            None => self.rule(name),
        }
    }

    /// Whether `user_id`, whose token's claim lists `claimed`, may join `name`; if so, what the
    /// channel is like.
    pub fn access(&self, name: &str, user_id: &str, claimed: &[Pattern]) -> Result<&Kind, Denied> {
        if let Some((a, b)) = dm_members(name) {
            return if a == user_id || b == user_id {
                Ok(&self.dm)
            } else {
                Err(Denied::Forbidden)
            };
        }
        let kind = self.rule(name).ok_or(Denied::NoSuchChannel)?;
        match kind.join {
            JoinRule::Public => Ok(kind),
            JoinRule::Claim if claimed.iter().any(|p| p.matches(name)) => Ok(kind),
            JoinRule::Claim => Err(Denied::Forbidden),
        }
    }
}

/// The private conversation of two users, or `None` if either id cannot be in a name (a `:`,
/// a byte outside the name bytes, or a name over [`MAX_NAME_BYTES`]) or they are the same user.
pub fn dm_name(a: &str, b: &str) -> Option<String> {
    let usable = |id: &str| !id.is_empty() && !id.contains(':') && id.bytes().all(name_byte);
    if a == b || !usable(a) || !usable(b) {
        return None;
    }
    let (first, second) = if a < b { (a, b) } else { (b, a) };
    let name = format!("{DM_PREFIX}{first}:{second}");
    (name.len() <= MAX_NAME_BYTES).then_some(name)
}

/// The two users of a private conversation's name; `None` if it is not one (written as
/// [`dm_name`] writes it).
pub fn dm_members(name: &str) -> Option<(&str, &str)> {
    let (a, b) = name.strip_prefix(DM_PREFIX)?.split_once(':')?;
    (dm_name(a, b).as_deref() == Some(name)).then_some((a, b))
}

/// The patterns a token's claim lists: a JSON array of strings. Entries that are not patterns
/// are left out (the token is the site's, and one bad entry must not lock a user out of the
/// others).
pub fn claimed_patterns(claim: Option<&serde_json::Value>) -> Vec<Pattern> {
    let Some(serde_json::Value::Array(entries)) = claim else {
        return Vec::new();
    };
    entries.iter().filter_map(|e| Pattern::parse(e.as_str()?).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the channels issue and `configs/forum.json`.
    fn forum() -> Policy {
        let config: ChannelsConfig = serde_json::from_str(
            r#"{
              "default": "general",
              "rules": [
                {"pattern": "general",  "join": "public"},
                {"pattern": "forum:*",  "join": "public", "history": 100},
                {"pattern": "staff",    "join": "claim"},
                {"pattern": "news",     "join": "public", "read_only": true},
                {"pattern": "room:*",   "join": "claim", "presence": false, "max_members": 500}
              ]
            }"#,
        )
        .unwrap();
        Policy::new(&config, 200).unwrap()
    }

    fn patterns(list: &[&str]) -> Vec<Pattern> {
        list.iter().map(|p| Pattern::parse(p).unwrap()).collect()
    }

    #[test]
    fn names_are_1_to_64_name_bytes() {
        assert!(is_valid_name("forum:thread-17.v2_x"));
        assert!(is_valid_name(&"x".repeat(64)));
        for bad in ["", "a b", "é", "a/b", "a*", &"x".repeat(65)] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_star_only_ends_a_pattern() {
        assert_eq!(Pattern::parse("forum:*"), Ok(Pattern::Prefix("forum:".into())));
        assert_eq!(Pattern::parse("*"), Ok(Pattern::Prefix(String::new())));
        assert_eq!(Pattern::parse("staff"), Ok(Pattern::Exact("staff".into())));
        for bad in ["", "fo*rum", "**", "a b*", "*x"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Pattern::parse("forum:*").unwrap().matches("forum:17"));
        assert!(Pattern::parse("forum:*").unwrap().matches("forum:"));
        assert!(!Pattern::parse("forum:*").unwrap().matches("forums"));
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let policy = forum();
        let nobody = patterns(&[]);
        assert_eq!(policy.access("general", "1", &nobody).unwrap().history, 200);
        assert_eq!(policy.access("forum:17", "1", &nobody).unwrap().history, 100);
        assert!(policy.access("news", "1", &nobody).unwrap().read_only);
        assert_eq!(policy.access("staff", "1", &nobody), Err(Denied::Forbidden));
        assert_eq!(policy.access("elsewhere", "1", &nobody), Err(Denied::NoSuchChannel));
        assert_eq!(policy.access("bad name", "1", &nobody), Err(Denied::NoSuchChannel));
        let room = policy.access("room:9", "1", &patterns(&["room:*"])).unwrap();
        assert_eq!((room.presence, room.max_members), (false, 500));
        assert_eq!(policy.default_channel(), Some("general"));
        assert_eq!(policy.claim(), "channels");
    }

    #[test]
    fn a_claim_covers_names_and_prefixes() {
        let policy = forum();
        assert!(policy.access("staff", "1", &patterns(&["staff"])).is_ok());
        assert!(policy.access("staff", "1", &patterns(&["*"])).is_ok());
        assert!(policy.access("room:9", "1", &patterns(&["room:1*"])).is_err());
        assert!(policy.access("room:17", "1", &patterns(&["room:1*"])).is_ok());
        // A claim does not open a channel no rule covers.
        assert_eq!(
            policy.access("secret", "1", &patterns(&["secret"])),
            Err(Denied::NoSuchChannel)
        );
    }

    #[test]
    fn a_private_conversation_is_for_its_two_users_only() {
        let policy = forum();
        let name = dm_name("42", "7").unwrap();
        assert_eq!(name, "dm:42:7", "sorted");
        assert_eq!(dm_name("7", "42").unwrap(), name);
        assert_eq!(dm_members(&name), Some(("42", "7")));
        assert!(policy.access(&name, "7", &[]).is_ok());
        assert!(policy.access(&name, "42", &[]).is_ok());
        assert_eq!(policy.access(&name, "8", &patterns(&["*"])), Err(Denied::Forbidden));
        // Written any other way, it is not a conversation, and no rule covers `dm:`.
        assert_eq!(dm_members("dm:7:42"), None);
        assert_eq!(policy.access("dm:7:42", "7", &[]), Err(Denied::NoSuchChannel));
        for (a, b) in [("7", "7"), ("a:b", "c"), ("", "c"), ("x y", "c")] {
            assert_eq!(dm_name(a, b), None, "{a:?} {b:?}");
        }
        assert_eq!(dm_name(&"x".repeat(40), &"y".repeat(40)), None, "over 64 bytes");
    }

    #[test]
    fn the_claim_is_a_list_of_patterns_and_bad_entries_are_left_out() {
        let claim = serde_json::json!(["staff", "room:*", 5, "bad name", "fo*o"]);
        assert_eq!(claimed_patterns(Some(&claim)), patterns(&["staff", "room:*"]));
        assert!(claimed_patterns(Some(&serde_json::json!("staff"))).is_empty());
        assert!(claimed_patterns(None).is_empty());
    }

    #[test]
    fn a_bad_section_is_refused_naming_the_field() {
        let parse = |text: &str| {
            let config: ChannelsConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
            Policy::new(&config, 200).map(|_| ())
        };
        let err = parse(r#"{"rules": [{"pattern": "a*b", "join": "public"}]}"#).unwrap_err();
        assert!(err.contains("channels.rules[0].pattern"), "{err}");
        let err =
            parse(r#"{"default": "staff", "rules": [{"pattern": "staff", "join": "claim"}]}"#)
                .unwrap_err();
        assert!(err.contains("channels.default"), "{err}");
        let err = parse(r#"{"default": "none"}"#).unwrap_err();
        assert!(err.contains("channels.default"), "{err}");
        let err = parse(r#"{"rules": [{"pattern": "a", "join": "everyone"}]}"#).unwrap_err();
        assert!(err.contains("everyone"), "{err}");
        let err =
            parse(r#"{"rules": [{"pattern": "a", "join": "public", "size": 1}]}"#).unwrap_err();
        assert!(err.contains("size"), "{err}");
        assert!(parse(r#"{"claim": ""}"#).unwrap_err().contains("channels.claim"));
    }
}
