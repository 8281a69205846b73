//! What crosses the Redis events channel, written and read in this one place.
//!
//! Every instance publishes to one channel and hears everything on it, its own messages
//! included. A message is text of one of three shapes, told apart by its first byte:
//!
//! - **A chat message** is its frame, exactly as clients get it and as the history stream holds
//!   it: `{"type":"chat",…,"id":17}`. [`PUBLISH_SCRIPT`](super::PUBLISH_SCRIPT) writes it inside
//!   Redis, where the id is assigned: it appends the id and the closing brace to the
//!   [`ChatHead`](crate::protocol::ChatHead) it is given, as [`ChatHead::into_frame`] does, and
//!   publishes the frame as it is. The id is read back from the frame's last field
//!   ([`ChatHead::id_of`]), so the frame is handed to the hub without a copy.
//! - `j{instance}\n{conn}\n{user}`: a connection of `user` joined on `instance`
//!   ([`Event::Joined`]).
//! - `p{instance}`: `instance`'s presence set changed; count the online users again.
//! - `c{channel}`: some instance's users in `channel` changed; count that channel again.
//! - `a{instance}\n{action}`: the site asked `instance` for a moderation action (server API),
//!   as JSON; every other instance carries it out too ([`Event::Act`]).
//!
//! A frame begins with `{`; the tags are letters, so the first byte decides.

use std::fmt;

use crate::hub::{Action, ConnId};
use crate::protocol::ChatHead;

/// One message on the events channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A chat message Redis numbered, published by any instance.
    Chat { id: u64, frame: String },
    /// `user` opened connection `conn` on `instance` (one connection per user).
    Joined { instance: String, conn: ConnId, user: String },
    /// `instance`'s presence set changed.
    PresenceChanged { instance: String },
    /// Some instance's users in `channel` changed.
    ChannelPresenceChanged { channel: String },
    /// The site asked `instance` for a moderation action.
    Act { instance: String, action: Action },
}

const JOINED: char = 'j';
const PRESENCE_CHANGED: char = 'p';
const CHANNEL_PRESENCE_CHANGED: char = 'c';
const ACT: char = 'a';

/// A channel message that is none of the three shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl Event {
    /// The text to publish. Chat messages are published by `PUBLISH_SCRIPT`, which writes the
    /// same text.
    pub fn encode(&self) -> String {
        match self {
            Event::Chat { frame, .. } => frame.clone(),
            Event::Joined { instance, conn, user } => format!("{JOINED}{instance}\n{conn}\n{user}"),
            Event::PresenceChanged { instance } => format!("{PRESENCE_CHANGED}{instance}"),
            Event::ChannelPresenceChanged { channel } => {
                format!("{CHANNEL_PRESENCE_CHANGED}{channel}")
            }
            Event::Act { instance, action } => {
                // An action is plain data: serializing it cannot fail.
                let json = serde_json::to_string(action).unwrap_or_default();
                format!("{ACT}{instance}\n{json}")
            }
        }
    }

    /// Reads a channel message. Takes the text by value: a chat frame is kept, not copied.
    pub fn parse(text: String) -> Result<Event, Malformed> {
        if text.starts_with('{') {
            let id = ChatHead::id_of(&text).ok_or(Malformed("a chat frame without an id"))?;
            return Ok(Event::Chat { id, frame: text });
        }
        let mut chars = text.chars();
        let tag = chars.next().ok_or(Malformed("an empty message"))?;
        let body = chars.as_str();
        match tag {
            JOINED => {
                let mut parts = body.splitn(3, '\n');
                let (Some(instance), Some(conn), Some(user)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return Err(Malformed("a join notice without instance, connection and user"));
                };
                let conn = conn.parse().map_err(|_| Malformed("a join notice's connection"))?;
                Ok(Event::Joined { instance: instance.into(), conn, user: user.into() })
            }
            PRESENCE_CHANGED => Ok(Event::PresenceChanged { instance: body.into() }),
            CHANNEL_PRESENCE_CHANGED => Ok(Event::ChannelPresenceChanged { channel: body.into() }),
            ACT => {
                let (instance, json) =
                    body.split_once('\n').ok_or(Malformed("an action without its instance"))?;
                let action = serde_json::from_str(json)
                    .map_err(|_| Malformed("an action that is not one"))?;
                Ok(Event::Act { instance: instance.into(), action })
            }
            _ => Err(Malformed("an unknown message kind")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(event: Event) {
        assert_eq!(Event::parse(event.encode()), Ok(event));
    }

    #[test]
    fn every_event_reads_back_as_written() {
        let frame = ChatHead::new(None, "42", "alice", "hi", 1_764_200_000_000).into_frame(17);
        round_trip(Event::Chat { id: 17, frame });
        round_trip(Event::Joined { instance: "a".into(), conn: 7, user: "42".into() });
        round_trip(Event::PresenceChanged { instance: "0123abcd".into() });
        round_trip(Event::ChannelPresenceChanged { channel: "forum:7".into() });
        let ban = crate::hub::moderation::Ban {
            user_id: "a\nb".into(),
            until: None,
            reason: Some("spam".into()),
            since: 5,
        };
        round_trip(Event::Act { instance: "i".into(), action: Action::Ban(ban) });
        round_trip(Event::Act { instance: "i".into(), action: Action::Delete { id: 3 } });
        // User ids are free text: a newline in one stays in it.
        round_trip(Event::Joined { instance: "b".into(), conn: 1, user: "x\ny".into() });
    }

    #[test]
    fn a_chat_message_is_the_frame_clients_get() {
        let frame = ChatHead::new(None, "1", "bob", "x", 5).into_frame(u64::MAX);
        let event = Event::parse(frame.clone()).unwrap();
        assert_eq!(event, Event::Chat { id: u64::MAX, frame: frame.clone() });
        assert_eq!(event.encode(), frame);
    }

    /// What `PUBLISH_SCRIPT` publishes: `ARGV[1] .. id .. '}'`, with `ARGV[1]` the head.
    #[test]
    fn the_script_s_frame_parses() {
        let head = ChatHead::new(None, "1", "bob", r#"{"id":5}"#, 5);
        let published = format!("{}{}{}", head.as_str(), 99, '}');
        assert_eq!(Event::parse(published.clone()), Ok(Event::Chat { id: 99, frame: published }));
    }

    #[test]
    fn malformed_messages_are_refused_with_a_reason() {
        for text in [
            "",
            "{\"type\":\"chat\"}",
            "{\"id\":}",
            "jonly-instance",
            "ja\nnot-a-number\nu",
            "x1",
            "ai",
            "ai\n{}",
        ] {
            assert!(Event::parse(text.into()).is_err(), "{text:?}");
        }
    }
}
