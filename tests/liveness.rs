//! Connections that stop answering, stop chatting, or stop reading are closed with their own
//! codes, and nobody else notices.

mod common;

use common::*;
use serde_json::json;

#[test]
fn silent_connection_fails_the_heartbeat() {
    let server = Server::start(json!({
        "heartbeat": {"ping_interval_secs": 1, "pong_timeout_secs": 2},
        "idle": {"timeout_secs": 0}
    }));
    smol::block_on(async {
        // `silent` neither reads nor writes, so it never answers the server's pings.
        let mut silent = server.connect("silent").await;
        let mut alive = server.connect("alive").await;
        alive.await_online(2).await;
        // `alive` keeps reading, so its client answers every ping; it sees `silent` go.
        alive.await_online(1).await;
        assert_eq!(silent.close_code().await, Ended::Closed(4005));
        alive.chat_and_see("still connected").await;
    });
}

#[test]
fn idle_connection_is_closed_and_a_chatting_one_is_not() {
    let server = Server::start(json!({"idle": {"timeout_secs": 2, "check_interval_secs": 1}}));
    smol::block_on(async {
        let mut quiet = server.connect("quiet").await;
        let mut talker = server.connect("talker").await;
        talker.await_online(2).await;
        // `talker` chats every time it sees its own message, until `quiet` is gone.
        talker.chat("tick").await;
        loop {
            let frame = talker.recv().await;
            if frame["type"] == "online" && frame["count"] == 1 {
                break;
            }
            if frame["type"] == "chat" {
                smol::Timer::after(std::time::Duration::from_millis(200)).await;
                talker.chat("tick").await;
            }
        }
        assert_eq!(quiet.close_code().await, Ended::Closed(4002));
        talker.chat("after").await;
        loop {
            let frame = talker.recv().await;
            if frame["content"] == "after" {
                break;
            }
        }
    });
}

#[test]
fn reader_that_never_reads_gets_4004_and_others_keep_receiving() {
    let server =
        Server::start(json!({"limits": {"send_queue": 16}, "history": {"size": 0, "on_join": 0}}));
    smol::block_on(async {
        let mut stalled = server.connect("stalled").await;
        let mut sender = server.connect("sender").await;
        let mut reader = server.connect("reader").await;
        reader.await_online(3).await;
        let content = "x".repeat(1500);
        let mut sent = 0;
        let mut received = 0;
        // Send until the reader sees the stalled client leave; the reader gets every message.
        'outer: while sent < 20_000 {
            sender.chat(&content).await;
            sent += 1;
            loop {
                let frame = reader.recv().await;
                match frame["type"].as_str() {
                    Some("chat") => {
                        received += 1;
                        break;
                    }
                    Some("online") if frame["count"] == 2 => break 'outer,
                    _ => {}
                }
            }
        }
        assert!(sent < 20_000, "the stalled client was never dropped");
        // Messages still flow to the ones who read.
        sender.chat("after").await;
        loop {
            let frame = reader.recv().await;
            if frame["type"] == "chat" {
                received += 1;
                if frame["content"] == "after" {
                    break;
                }
            }
        }
        assert_eq!(received, sent + 1, "the reader lost messages");
        let (ended, frames) = stalled.until_closed().await;
        assert_eq!(ended, Ended::Closed(4004));
        assert!(frames.len() < sent, "the stalled client got everything anyway");
    });
}

#[test]
fn websocket_pings_are_answered_between_long_frames_and_every_frame_arrives_whole() {
    use async_tungstenite::tungstenite::Message;
    let server = Server::start(json!({}));
    smol::block_on(async {
        let mut client = server.connect("pinger").await;
        client.await_online(1).await;
        // Frames of about 8 KB (2 000 characters of 4 bytes), several write batches each, with
        // the client's Pings between them: the Pongs and the chat frames leave through the same
        // buffer, and neither may cut into the other.
        const ROUNDS: usize = 20;
        let long = "😀".repeat(1990);
        for round in 0..ROUNDS {
            client.chat(&format!("{round};{long}")).await;
            client.send(Message::Ping(format!("ping {round}").into_bytes().into())).await;
        }
        let (mut chats, mut pongs) = (Vec::new(), Vec::new());
        while chats.len() < ROUNDS || pongs.len() < ROUNDS {
            match client.next_message().await {
                Some(Message::Text(text)) => {
                    let frame: serde_json::Value = serde_json::from_str(&text).expect("JSON");
                    if frame["type"] == "chat" {
                        chats.push(frame["content"].as_str().expect("content").to_string());
                    }
                }
                Some(Message::Pong(payload)) => pongs.push(payload.to_vec()),
                Some(Message::Ping(_)) => {}
                other => panic!("the connection ended or sent {other:?}"),
            }
        }
        for round in 0..ROUNDS {
            assert_eq!(chats[round], format!("{round};{long}"), "chat {round}");
            assert_eq!(pongs[round], format!("ping {round}").into_bytes(), "Pong {round}");
        }
        client.chat_and_see("still here").await;
    });
}
