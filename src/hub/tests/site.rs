//! The site's inputs (`site.rs`): publish, disconnect, ban, mute and delete, on the fake clock.

use super::*;
use crate::hub::moderation::{Ban, Mute};
use crate::hub::{Action, Post, SiteError};

impl Harness {
    fn act(&mut self, action: Action) -> crate::hub::Outcome {
        let mut outcome = None;
        self.apply(|hub, now| {
            let (o, effects) = hub.act(now, &action);
            outcome = Some(o);
            effects
        });
        outcome.expect("act answers")
    }

    fn publish(&mut self, post: Post) -> Result<Option<u64>, SiteError> {
        let mut answer = None;
        self.apply(|hub, now| {
            let (a, effects) = hub.publish(now, post);
            answer = Some(a);
            effects
        });
        answer.expect("publish answers")
    }

    fn now_secs(&self) -> u64 {
        self.now.unix_ms / 1000
    }
}

fn notice(content: &str) -> Post {
    Post { channel: None, content: content.into(), sender: None, ticket: crate::hub::SITE_TICKETS }
}

#[test]
fn a_site_message_takes_the_next_id_and_is_replayed_like_any_other() {
    let mut h = Harness::new(config());
    let a = h.connect("1");
    h.chat(a, "first");
    assert_eq!(h.publish(notice("from the site")), Ok(Some(2)));
    let chats = h.of_type(a, "chat");
    assert_eq!(chats[1]["content"], "from the site");
    assert!(chats[1].get("user_id").is_none());
    let late = h.connect_since("2", 1);
    let replay = h.of_type(late, "chat");
    assert_eq!(replay.len(), 1);
    assert_eq!(replay[0]["id"], 2);
    let named = Post { channel: Some("x".into()), ..notice("y") };
    assert_eq!(h.publish(named), Err(SiteError::OneRoom));
}

#[test]
fn a_ban_closes_the_users_connections_refuses_them_and_ends_on_time() {
    let mut h = Harness::new(HubConfig { max_connections_per_user: 2, ..config() });
    let (a, b, other) = (h.connect("troll"), h.connect("troll"), h.connect("fine"));
    let until = h.now_secs() + 60;
    let ban = Ban { user_id: "troll".into(), until: Some(until), reason: None, since: 0 };
    let outcome = h.act(Action::Ban(ban));
    assert_eq!(outcome.closed, 2);
    assert_eq!(h.close_reason(a), Some(CloseReason::Banned));
    assert_eq!(h.close_reason(b), Some(CloseReason::Banned));
    assert_eq!(h.close_reason(other), None);
    assert_eq!(h.saves, 1);
    assert_eq!(h.try_connect("troll"), Err(Refused::Banned { until: Some(until) }));
    h.advance(Duration::from_secs(61));
    h.connect("troll");
    // The next sweep (every ping interval) drops it, and asks for the file to be written again.
    h.advance(Duration::from_secs(30));
    assert_eq!(h.hub.moderation().bans(0).count(), 0, "{:?}", h.hub.moderation());
    assert_eq!(h.saves, 2);
}

#[test]
fn disconnect_closes_with_its_own_reason_and_bans_nobody() {
    let mut h = Harness::new(config());
    let a = h.connect("1");
    let outcome = h.act(Action::Disconnect { user_id: "1".into(), reason: None });
    assert_eq!((outcome.closed, h.close_reason(a)), (1, Some(CloseReason::Kicked)));
    assert_eq!(h.saves, 0);
    h.connect("1");
    assert_eq!(h.act(Action::Disconnect { user_id: "nobody".into(), reason: None }).closed, 0);
}

#[test]
fn a_mute_refuses_chat_with_the_time_left_where_it_applies_and_not_elsewhere() {
    let mut h = Harness::new(HubConfig {
        channels: Some(super::super::sim::test_channels(20)),
        ..config()
    });
    let loud = h.connect("loud");
    h.receive(loud, Incoming::Join { channel: "forum:1".into(), since: None });
    let reader = h.connect("reader");
    h.frames(loud);
    let until = h.now_secs() + 30;
    let mute =
        Mute { user_id: "loud".into(), channel: Some("general".into()), until, reason: None };
    h.act(Action::Mute(mute));
    h.receive(loud, Incoming::Chat { content: "x".into(), channel: Some("general".into()) });
    let error = &h.of_type(loud, "error")[0];
    assert_eq!((error["code"].as_str(), error["until"].as_u64()), (Some("muted"), Some(until)));
    assert!(error["message"].as_str().unwrap().contains("30 seconds"), "{error}");
    assert!(h.of_type(reader, "chat").is_empty());
    assert_eq!(h.hub.stats().muted_refusals, 1);
    h.receive(loud, Incoming::Chat { content: "y".into(), channel: Some("forum:1".into()) });
    let frames = h.frames(loud);
    assert_eq!(frames.iter().filter(|f| f["type"] == "chat").count(), 1, "{frames:?}");
    // It ends by itself (before the heartbeat would close these silent connections).
    h.advance(Duration::from_secs(31));
    h.receive(loud, Incoming::Chat { content: "z".into(), channel: Some("general".into()) });
    assert_eq!(h.of_type(reader, "chat").len(), 1);
}

#[test]
fn a_deleted_message_is_announced_and_never_replayed() {
    let mut h = Harness::new(HubConfig { persist_history: true, ..config() });
    let a = h.connect("1");
    for text in ["one", "two", "three"] {
        h.chat(a, text);
    }
    h.frames(a);
    let outcome = h.act(Action::Delete { id: 2 });
    assert!(outcome.done);
    assert_eq!(h.frames(a), [serde_json::json!({"type": "deleted", "id": 2})]);
    assert_eq!(h.rewrites, 1);
    assert!(!h.act(Action::Delete { id: 2 }).done);
    assert!(!h.act(Action::Delete { id: 99 }).done);
    let late = h.connect_since("2", 1);
    let frames = h.frames(late);
    assert_eq!(frames[0]["recovered"], true);
    let ids: Vec<&Value> =
        frames.iter().filter(|f| f["type"] == "chat").map(|c| &c["id"]).collect();
    assert_eq!(ids, [3]);
    assert!(h.hub.held_history().iter().all(|line| !line.contains("\"two\"")));
}

#[test]
fn in_a_cluster_an_action_asked_here_is_shared_and_one_heard_from_redis_is_not() {
    let mut h = Harness::new(HubConfig { cluster: true, ..config() });
    let a = h.connect("1");
    let kick = Action::Disconnect { user_id: "1".into(), reason: None };
    h.act(kick.clone());
    assert_eq!(h.close_reason(a), Some(CloseReason::Kicked));
    assert_eq!(h.shared, std::slice::from_ref(&kick));
    let b = h.connect("1");
    h.apply(|hub, now| hub.act_shared(now, &kick).1);
    assert_eq!(h.close_reason(b), Some(CloseReason::Kicked));
    assert_eq!(h.shared.len(), 1, "an action heard from Redis went back to it");
    // A site message is published with the caller's ticket, for the id Redis gives it.
    let post = Post { ticket: crate::hub::SITE_TICKETS + 7, ..notice("hello") };
    assert_eq!(h.publish(post), Ok(None));
    assert_eq!(h.published.last().map(|(from, _)| *from), Some(crate::hub::SITE_TICKETS + 7));
}

#[test]
fn bans_taken_from_elsewhere_close_the_users_they_ban() {
    let mut h = Harness::new(config());
    let (troll, fine) = (h.connect("troll"), h.connect("fine"));
    let mut moderation = crate::hub::moderation::Moderation::default();
    moderation.ban(Ban { user_id: "troll".into(), until: None, reason: None, since: 0 });
    h.apply(|hub, now| hub.set_moderation(now, moderation));
    assert_eq!(h.close_reason(troll), Some(CloseReason::Banned));
    assert_eq!(h.close_reason(fine), None);
}
