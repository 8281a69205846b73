//! The broker's task: the Redis connections' life (connect, serve, lose, reconnect with
//! backoff), and what crosses between Redis and the hub. It feeds the hub through the driver
//! (`Shell::apply`), like every other input.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_tungstenite::tungstenite::Utf8Bytes;
use futures_lite::{FutureExt, future};
use log::{debug, info, warn};
use redis::aio::MultiplexedConnection;
use redis::{PushInfo, PushKind, Value};
use smol::Timer;

use crate::driver::{READ_BUDGET_FRAMES, Shell, now};
use crate::hub::Action;
use crate::hub::moderation::{Ban, Moderation, Mute, Saved};
use crate::protocol::ChatHead;

use super::*;

/// Keeps the instance joined to the cluster for as long as the server runs: connects, serves
/// until the connection is lost, reports it once, and reconnects with backoff.
pub(crate) async fn run(shell: Rc<Shell>) {
    let Some(broker) = shell.broker.as_ref() else {
        return;
    };
    let mut backoff = BACKOFF_MIN;
    let mut warned = false;
    loop {
        let Err(lost) = session(&shell, broker, &mut backoff).await;
        let was_up = std::mem::replace(&mut broker.stats.borrow_mut().up, false);
        shell.apply(|hub, now| hub.set_cluster_online(now, None));
        if was_up || !warned {
            warn!(
                "cluster: Redis at {} is unreachable ({lost}); serving local users, retrying",
                broker.addr
            );
            warned = true;
        } else {
            debug!("cluster: reconnect failed: {lost}");
        }
        Timer::after(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection to Redis, from connect to loss.
async fn session(
    shell: &Shell,
    broker: &Broker,
    backoff: &mut Duration,
) -> Result<Infallible, Lost> {
    let (backlog, channel) = async_channel::bounded::<PushInfo>(CHANNEL_BACKLOG);
    let overflowed = Arc::new(AtomicBool::new(false));
    let overflow = overflowed.clone();
    let sender = move |push: PushInfo| {
        if backlog.try_send(push).is_err() {
            overflow.store(true, Ordering::Relaxed);
        }
        Ok(())
    };
    let (mut commands, commands_driver) = broker.open(None).await?;
    let (mut subscriber, subscriber_driver) = broker.open(Some(Box::new(sender))).await?;
    let serving = async {
        subscriber.subscribe(&broker.keys.channel).await?;
        let mut load = redis::pipe();
        for lua in Lua::ALL {
            load.cmd("SCRIPT").arg("LOAD").arg(lua.code()).ignore();
        }
        load.exec_async(&mut commands).await?;
        let last = shell.hub().last_message_id();
        let mut floor = broker.script(Lua::Floor);
        floor.arg(2).arg(&broker.keys.id).arg(&broker.keys.stream).arg(last);
        floor.exec_async(&mut commands).await?;
        catch_up(shell, broker, &mut commands).await?;
        load_moderation(shell, broker, &mut commands).await?;
        // Presence is rewritten whole and announcements from before are stale: only chat
        // messages stay queued.
        broker.outbox.borrow_mut().reconnected();
        rewrite_presence(shell, broker, &mut commands).await?;
        {
            let mut stats = broker.stats.borrow_mut();
            stats.up = true;
            stats.connects += 1;
        }
        info!("cluster: connected to Redis at {} as {}", broker.addr, broker.instance);
        *backoff = BACKOFF_MIN;
        serve(shell, broker, &mut commands, &mut subscriber, &channel, &overflowed).await
    };
    serving
        .or(async {
            commands_driver.or(subscriber_driver).await;
            Err(Lost("connection closed".into()))
        })
        .await
}

/// The connected broker's loop: channel messages to the hub, the outbox to Redis, presence
/// refreshes on time.
async fn serve(
    shell: &Shell,
    broker: &Broker,
    commands: &mut MultiplexedConnection,
    subscriber: &mut MultiplexedConnection,
    channel: &async_channel::Receiver<PushInfo>,
    overflowed: &AtomicBool,
) -> Result<Infallible, Lost> {
    let refresh_every = broker.presence_ttl / 3;
    let mut next_refresh = now().at + refresh_every;
    // The online count needs counting again; it is counted at most once per RECOUNT_INTERVAL,
    // and so are the channels whose users changed somewhere.
    let mut recount = true;
    let mut recount_channels = BTreeSet::new();
    // Connecting rewrote this instance's channels and announced each: they are being counted.
    let live: usize = redis::cmd("ZCARD").arg(&broker.keys.instances).query_async(commands).await?;
    let mut instances_seen = Some(live);
    let mut next_recount = now().at;
    loop {
        let mut budget = READ_BUDGET_FRAMES;
        while let Ok(push) = channel.try_recv() {
            recount |= on_push(shell, broker, push, &mut recount_channels)?;
            budget -= 1;
            if budget == 0 {
                // As a connection's reads do: let the writers drain the queues this filled.
                budget = READ_BUDGET_FRAMES;
                future::yield_now().await;
            }
        }
        if overflowed.swap(false, Ordering::Relaxed) {
            warn!("cluster: fell {CHANNEL_BACKLOG} messages behind Redis; catching up");
            catch_up(shell, broker, commands).await?;
            recount = true;
        }
        // Timers first: a busy outbox must not starve the refresh, or this instance's users
        // would expire from the count.
        if now().at >= next_refresh {
            next_refresh = now().at + refresh_every;
            refresh_presence(shell, broker, commands).await?;
            // A subscribed connection hears nothing when nobody talks: ask it something.
            redis::cmd("PING").exec_async(subscriber).await?;
            recount = true;
            // Every channel is counted again when the set of live instances changed (one
            // started, or one's deadline passed and the room's count dropped it): each channel's
            // own changes are announced, but a crash is not. Not at every refresh: counting
            // every channel scans every channel's users.
            let live: usize =
                redis::cmd("ZCARD").arg(&broker.keys.instances).query_async(commands).await?;
            if instances_seen.replace(live) != Some(live) {
                recount_channels.extend(shell.hub().counted_channels().map(String::from));
            }
        }
        let channels_due = !recount_channels.is_empty();
        if (recount || channels_due) && now().at >= next_recount {
            next_recount = now().at + RECOUNT_INTERVAL;
            if std::mem::take(&mut recount) {
                let mut count = broker.script(Lua::Count);
                count.arg(1).arg(&broker.keys.instances).arg(&broker.keys.presence);
                let n: usize = count.query_async(commands).await?;
                shell.apply(|hub, now| hub.set_cluster_online(now, Some(n)));
            }
            count_channels(shell, broker, commands, &mut recount_channels).await?;
        }
        if !broker.outbox.borrow().is_empty() {
            flush(shell, broker, commands).await?;
            continue;
        }
        let wake_at = if recount || !recount_channels.is_empty() {
            next_refresh.min(next_recount)
        } else {
            next_refresh
        };
        let push =
            async { channel.recv().await.map(Some).map_err(|_| Lost("channel closed".into())) }
                .or(async {
                    let _ = broker.woken.recv().await;
                    Ok(None)
                })
                .or(async {
                    Timer::at(wake_at).await;
                    Ok(None)
                })
                .await?;
        if let Some(push) = push {
            recount |= on_push(shell, broker, push, &mut recount_channels)?;
        }
    }
}

/// Adds to `pipe` what keeps a moderation action in Redis, each reply ignored (the batch's
/// replies are matched to its commands by position): a ban or mute in its hash, a delete out of
/// the history streams. A disconnect keeps nothing.
fn keep_action(shell: &Shell, broker: &Broker, pipe: &mut redis::Pipeline, action: &Action) {
    let keys = &broker.keys;
    match action {
        Action::Disconnect { .. } => {}
        Action::Ban(ban) => store_ban(pipe, keys, ban),
        Action::Unban { user_id } => {
            pipe.cmd("HDEL").arg(&keys.bans).arg(user_id).ignore();
        }
        Action::Mute(mute) => store_mute(pipe, keys, mute),
        Action::Unmute { user_id, channel } => {
            pipe.cmd("HDEL").arg(&keys.mutes).arg(mute_field(user_id, channel.as_deref())).ignore();
        }
        Action::Delete { id } => {
            let known = shell.hub().channel_of_message(*id).unwrap_or_default();
            let mut delete = broker.script(Lua::Delete);
            delete.arg(1).arg(&keys.stream).arg(id).arg(&keys.channel_stream).arg(known);
            pipe.add_command(delete).ignore();
        }
    }
}

/// Adds the ban's entry in `{prefix}:bans` to `pipe`, its reply ignored.
fn store_ban(pipe: &mut redis::Pipeline, keys: &Keys, ban: &Ban) {
    pipe.cmd("HSET").arg(&keys.bans).arg(&ban.user_id).arg(ban.to_json()).ignore();
}

/// Adds the mute's entry in `{prefix}:mutes` to `pipe`, its reply ignored.
fn store_mute(pipe: &mut redis::Pipeline, keys: &Keys, mute: &Mute) {
    let field = mute_field(&mute.user_id, mute.channel.as_deref());
    pipe.cmd("HSET").arg(&keys.mutes).arg(field).arg(mute.to_json()).ignore();
}

/// A mute's field in `{prefix}:mutes`.
fn mute_field(user: &str, channel: Option<&str>) -> String {
    format!("{user}\n{}", channel.unwrap_or_default())
}

/// Takes the bans and mutes from Redis in place of the hub's, which closes the connections of
/// users banned meanwhile. When Redis has none and the hub has some, Redis came back empty: the
/// hub's are written there instead.
async fn load_moderation(
    shell: &Shell,
    broker: &Broker,
    commands: &mut MultiplexedConnection,
) -> Result<(), Lost> {
    let keys = &broker.keys;
    let (bans, mutes): (HashMap<String, String>, HashMap<String, String>) = redis::pipe()
        .cmd("HGETALL")
        .arg(&keys.bans)
        .cmd("HGETALL")
        .arg(&keys.mutes)
        .query_async(commands)
        .await?;
    let now_secs = now().unix_ms / 1000;
    if bans.is_empty() && mutes.is_empty() {
        let saved = shell.hub().moderation().saved();
        if saved.bans.is_empty() && saved.mutes.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for ban in &saved.bans {
            store_ban(&mut pipe, keys, ban);
        }
        for mute in &saved.mutes {
            store_mute(&mut pipe, keys, mute);
        }
        pipe.exec_async(commands).await?;
        info!("cluster: Redis held no bans or mutes; wrote this instance's");
        return Ok(());
    }
    let saved = Saved {
        bans: bans.values().filter_map(|text| parse_entry("ban", text)).collect(),
        mutes: mutes.values().filter_map(|text| parse_entry("mute", text)).collect(),
    };
    let moderation = Moderation::restore(saved, now_secs);
    // What has ended is dropped from Redis too.
    let mut pipe = redis::pipe();
    let expired_bans: Vec<&String> =
        bans.keys().filter(|user| moderation.banned(user, now_secs).is_none()).collect();
    let live_mutes: std::collections::HashSet<String> =
        moderation.mutes(now_secs).map(|m| mute_field(&m.user_id, m.channel.as_deref())).collect();
    let expired_mutes: Vec<&String> = mutes.keys().filter(|f| !live_mutes.contains(*f)).collect();
    if !expired_bans.is_empty() {
        pipe.cmd("HDEL").arg(&keys.bans).arg(&expired_bans).ignore();
    }
    if !expired_mutes.is_empty() {
        pipe.cmd("HDEL").arg(&keys.mutes).arg(&expired_mutes).ignore();
    }
    if !expired_bans.is_empty() || !expired_mutes.is_empty() {
        pipe.exec_async(commands).await?;
    }
    shell.apply(|hub, now| hub.set_moderation(now, moderation));
    Ok(())
}

/// A ban or a mute as Redis keeps it; one that does not read is logged and left out.
fn parse_entry<T: serde::de::DeserializeOwned>(kind: &str, text: &str) -> Option<T> {
    let value = serde_json::from_str(text);
    if value.is_err() {
        warn!("cluster: an unreadable {kind} in Redis; ignored");
    }
    value.ok()
}

/// Keeps this instance and its presence set alive in Redis; rewrites the set first if a change
/// could not be queued.
async fn refresh_presence(
    shell: &Shell,
    broker: &Broker,
    commands: &mut MultiplexedConnection,
) -> Result<(), Lost> {
    let stale = broker.outbox.borrow_mut().take_presence_stale();
    if stale {
        return rewrite_presence(shell, broker, commands).await;
    }
    broker.refresh_command().exec_async(commands).await?;
    Ok(())
}

/// Counts again, in one pipeline, up to [`BATCH_MAX`] of the channels whose users changed
/// (those this instance has), and hands the counts to the hub.
async fn count_channels(
    shell: &Shell,
    broker: &Broker,
    commands: &mut MultiplexedConnection,
    pending: &mut BTreeSet<String>,
) -> Result<(), Lost> {
    let mut names = Vec::new();
    while names.len() < BATCH_MAX {
        let Some(name) = pending.pop_first() else { break };
        if shell.hub().has_channel(&name) {
            names.push(name);
        }
    }
    if names.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for name in &names {
        let mut count = broker.script(Lua::CountChannel);
        count.arg(1).arg(&broker.keys.instances);
        count.arg(format!("{}{name}", broker.keys.channel_users));
        pipe.add_command(count);
    }
    let counts: Vec<usize> = pipe.query_async(commands).await?;
    for (name, n) in names.iter().zip(counts) {
        shell.apply(|hub, now| hub.set_channel_online(now, name, n));
    }
    Ok(())
}

/// Hands one channel message to the hub. Returns whether the online count needs a recount;
/// adds a channel whose users changed to `channels`, to be counted again.
fn on_push(
    shell: &Shell,
    broker: &Broker,
    push: PushInfo,
    channels: &mut BTreeSet<String>,
) -> Result<bool, Lost> {
    match push.kind {
        PushKind::Disconnection => return Err(Lost("disconnected".into())),
        PushKind::Message => {}
        _ => return Ok(false),
    }
    let Some(Value::BulkString(payload)) = push.data.into_iter().nth(1) else {
        return Ok(false);
    };
    let Ok(text) = String::from_utf8(payload) else {
        warn!("cluster: a channel message is not UTF-8; ignored");
        return Ok(false);
    };
    match Event::parse(text) {
        Ok(Event::Chat { id, frame }) => deliver(shell, broker, id, frame),
        Ok(Event::Joined { instance, conn, .. }) if instance == broker.instance => {
            shell.apply(|hub, now| hub.announced(now, conn));
        }
        Ok(Event::Joined { user, .. }) => shell.apply(|hub, now| hub.joined_elsewhere(now, &user)),
        Ok(Event::PresenceChanged { .. }) => return Ok(true),
        Ok(Event::ChannelPresenceChanged { channel }) => {
            channels.insert(channel);
        }
        // Carried out here already, when the site asked.
        Ok(Event::Act { instance, .. }) if instance == broker.instance => {}
        Ok(Event::Act { action, .. }) => {
            shell.apply(|hub, now| hub.act_shared(now, &action).1);
        }
        Err(e) => warn!("cluster: {e} on the channel; ignored"),
    }
    Ok(false)
}

fn deliver(shell: &Shell, broker: &Broker, id: u64, frame: String) {
    broker.stats.borrow_mut().received += 1;
    shell.apply(|hub, now| hub.deliver(now, id, Utf8Bytes::from(frame)));
}

/// Hands the hub what the history stream holds after its last id, as live messages. On the
/// first connection since start, that is the stream's tail: kept as history when nobody is
/// connected yet, and otherwise delivered live, so that users who connected before this
/// instance reached Redis see what they missed.
async fn catch_up(
    shell: &Shell,
    broker: &Broker,
    commands: &mut MultiplexedConnection,
) -> Result<(), Lost> {
    if broker.history_size == 0 {
        return Ok(());
    }
    let last = shell.hub().last_message_id();
    let stream = &broker.keys.stream;
    if broker.stats.borrow().connects == 0 {
        let mut tail: Vec<(String, Vec<String>)> = redis::cmd("XREVRANGE")
            .arg(stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(broker.history_size)
            .query_async(commands)
            .await?;
        if shell.config.channels.is_some() {
            tail.extend(channel_tails(shell, broker, commands).await?);
            // Newest first, as XREVRANGE gives them; the shared stream and a channel's hold
            // the same message under the same id.
            tail.sort_by_key(|(id, _)| std::cmp::Reverse(entry_id(id)));
            tail.dedup_by_key(|(id, _)| entry_id(id));
        }
        tail.reverse();
        debug!("cluster: {} messages of history from Redis", tail.len());
        if shell.hub().connection_count() == 0 {
            let messages =
                tail.into_iter().filter_map(entry).map(|(id, frame)| (id, Utf8Bytes::from(frame)));
            shell.apply(|hub, now| hub.restore(now, messages));
            return Ok(());
        }
        return deliver_all(shell, broker, tail).await;
    }
    let after: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg(format!("({last}-0"))
        .arg("+")
        .query_async(commands)
        .await?;
    deliver_all(shell, broker, after).await
}

/// Every channel stream's last N (the channel's history), newest first within each: what an
/// instance starting with channels restores.
async fn channel_tails(
    shell: &Shell,
    broker: &Broker,
    commands: &mut MultiplexedConnection,
) -> Result<Vec<(String, Vec<String>)>, Lost> {
    let names: Vec<String> =
        redis::cmd("SMEMBERS").arg(&broker.keys.channel_streams).query_async(commands).await?;
    let mut entries = Vec::new();
    for chunk in names.chunks(BATCH_MAX) {
        let mut pipe = redis::pipe();
        for name in chunk {
            let history = shell.hub().channel_history(name).unwrap_or(0);
            pipe.cmd("XREVRANGE").arg(format!("{}{name}", broker.keys.channel_stream));
            pipe.arg("+").arg("-").arg("COUNT").arg(history);
        }
        let tails: Vec<Vec<(String, Vec<String>)>> = pipe.query_async(commands).await?;
        entries.extend(tails.into_iter().flatten());
    }
    Ok(entries)
}

/// The id of a stream entry, `{id}-0`.
fn entry_id(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

/// Delivers history stream entries in order, [`READ_BUDGET_FRAMES`] at a time.
async fn deliver_all(
    shell: &Shell,
    broker: &Broker,
    entries: Vec<(String, Vec<String>)>,
) -> Result<(), Lost> {
    for (i, (id, text)) in entries.into_iter().filter_map(entry).enumerate() {
        deliver(shell, broker, id, text);
        if (i + 1) % READ_BUDGET_FRAMES == 0 {
            future::yield_now().await;
        }
    }
    Ok(())
}

/// One history stream entry: `{id}-0` with the field `m`.
fn entry((id, fields): (String, Vec<String>)) -> Option<(u64, String)> {
    let id = entry_id(&id)?;
    let mut fields = fields.into_iter();
    (fields.next()? == "m").then_some(())?;
    fields.next().map(|frame| (id, frame))
}

/// Replaces this instance's presence set with the users connected now, and tells the others.
async fn rewrite_presence(
    shell: &Shell,
    broker: &Broker,
    commands: &mut MultiplexedConnection,
) -> Result<(), Lost> {
    let keys = &broker.keys;
    let mut pipe = redis::pipe();
    pipe.atomic();
    pipe.cmd("DEL").arg(&keys.mine).ignore();
    {
        let hub = shell.hub();
        let users: Vec<&str> = hub.local_users().collect();
        for chunk in users.chunks(1000) {
            pipe.cmd("SADD").arg(&keys.mine).arg(chunk).ignore();
        }
    }
    broker.presence_changed(&mut pipe);
    pipe.exec_async(commands).await?;
    if shell.config.channels.is_none() {
        return Ok(());
    }
    let mut rewrite = broker.script(Lua::RewriteChannels);
    rewrite.arg(1).arg(&keys.my_channels).arg(&keys.channel_users).arg(&broker.instance);
    for (channel, user) in shell.hub().local_channel_users() {
        rewrite.arg(channel).arg(user);
    }
    let touched: Vec<String> = rewrite.query_async(commands).await?;
    if touched.is_empty() {
        return Ok(());
    }
    let mut tell = redis::pipe();
    for channel in touched {
        let notice = Event::ChannelPresenceChanged { channel };
        tell.cmd("PUBLISH").arg(&keys.channel).arg(notice.encode()).ignore();
    }
    tell.exec_async(commands).await?;
    Ok(())
}

/// Sends up to [`BATCH_MAX`] queued commands in one pipeline. If the connection fails, they go
/// back to the front of the outbox, to be sent after the reconnect.
async fn flush(
    shell: &Shell,
    broker: &Broker,
    commands: &mut MultiplexedConnection,
) -> Result<(), Lost> {
    let batch = broker.outbox.borrow_mut().take(BATCH_MAX);
    let keys = &broker.keys;
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let mut presence_changed = false;
    let mut channels_changed = BTreeSet::new();
    for command in &batch {
        match command {
            Command::Publish { head, seq, .. } => {
                let mut publish = broker.script(Lua::Publish);
                match ChatHead::channel_of(head.as_str()) {
                    Some(name) => {
                        // A name no rule covers any more keeps no stream of its own (0).
                        let history = shell.hub().channel_history(name).unwrap_or(0);
                        publish.arg(5).arg(&keys.id).arg(&keys.stream).arg(&keys.sequence);
                        publish.arg(format!("{}{name}", keys.channel_stream));
                        publish.arg(&keys.channel_streams);
                        publish.arg(head.as_str()).arg(&keys.channel).arg(broker.history_size);
                        publish.arg(seq).arg(history).arg(name);
                    }
                    None => {
                        publish.arg(3).arg(&keys.id).arg(&keys.stream).arg(&keys.sequence);
                        publish.arg(head.as_str()).arg(&keys.channel).arg(broker.history_size);
                        publish.arg(seq);
                    }
                }
                pipe.add_command(publish);
            }
            Command::Presence { user, channel: None, online } => {
                pipe.cmd(if *online { "SADD" } else { "SREM" }).arg(&keys.mine).arg(&**user);
                presence_changed = true;
            }
            Command::Presence { user, channel: Some(channel), online } => {
                let hash = format!("{}{channel}", keys.channel_users);
                let field = format!("{}\n{user}", broker.instance);
                if *online {
                    pipe.cmd("HSET").arg(&hash).arg(field).arg(1);
                    // One reply per command of the batch: the replies are matched by position.
                    pipe.cmd("SADD").arg(&keys.my_channels).arg(&**channel).ignore();
                } else {
                    pipe.cmd("HDEL").arg(&hash).arg(field);
                }
                channels_changed.insert(channel.clone());
            }
            Command::Announce { user, conn } => {
                let joined = Event::Joined {
                    instance: broker.instance.clone(),
                    conn: *conn,
                    user: user.to_string(),
                };
                pipe.cmd("PUBLISH").arg(&keys.channel).arg(joined.encode());
            }
            Command::Share(action) => {
                keep_action(shell, broker, &mut pipe, action);
                let act = Event::Act { instance: broker.instance.clone(), action: action.clone() };
                pipe.cmd("PUBLISH").arg(&keys.channel).arg(act.encode());
            }
        }
    }
    if presence_changed {
        broker.presence_changed(&mut pipe);
    }
    for channel in channels_changed {
        let notice = Event::ChannelPresenceChanged { channel: channel.to_string() };
        pipe.cmd("PUBLISH").arg(&keys.channel).arg(notice.encode()).ignore();
    }
    let replies: Vec<Value> = match pipe.query_async(commands).await {
        Ok(replies) => replies,
        Err(e) => {
            broker.outbox.borrow_mut().put_back(batch);
            return Err(e.into());
        }
    };
    for (command, reply) in batch.iter().zip(&replies) {
        if let Command::Publish { from, .. } = command {
            match reply {
                Value::ServerError(e) => {
                    warn!("cluster: Redis refused a chat message: {e:?}");
                    broker.stats.borrow_mut().dropped += 1;
                    let from = *from;
                    broker.answer_published(from, None);
                    shell.apply(|hub, now| hub.not_sent(now, from));
                }
                reply => {
                    let id = match reply {
                        Value::Int(id) if *id > 0 => u64::try_from(*id).ok(),
                        _ => {
                            debug!("cluster: a resent message was already published");
                            None
                        }
                    };
                    broker.answer_published(*from, id);
                    broker.stats.borrow_mut().published += 1;
                }
            }
        }
    }
    Ok(())
}
