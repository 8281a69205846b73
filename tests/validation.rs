//! Bad frames get an `error` frame with the right code and reach nobody else; too many close the
//! connection with 1008; an oversized frame closes it with 1009; the rate limit drops the excess.

mod common;

use async_tungstenite::tungstenite::Message;
use common::*;
use serde_json::json;

#[test]
fn each_bad_frame_gets_its_error_code_and_reaches_no_one() {
    let server = Server::start(json!({"limits": {"max_content_chars": 50}}));
    smol::block_on(async {
        let mut bad = server.connect("bad").await;
        let mut other = server.connect("other").await;
        bad.await_online(2).await;
        other.await_online(2).await;
        let cases: Vec<(Message, &str)> = vec![
            (Message::Text("not json".into()), "invalid_json"),
            (Message::Text("[1,2,3]".into()), "invalid_message"),
            (Message::Text(r#"{"type":"chat","content":42}"#.into()), "invalid_message"),
            (Message::Text(r#"{"type":"chat","content":"  \n "}"#.into()), "invalid_message"),
            (Message::Text(r#"{"type":"chat","content":"a\u0000b"}"#.into()), "invalid_message"),
            (
                Message::Text(json!({"type":"chat","content":"x".repeat(51)}).to_string().into()),
                "too_long",
            ),
            (Message::Text(r#"{"type":"dance"}"#.into()), "unsupported_type"),
            (Message::Binary(vec![1, 2, 3].into()), "binary_unsupported"),
            (Message::Text(r#"{"type":"auth","token":"nope"}"#.into()), "auth_failed"),
        ];
        for (message, code) in cases {
            bad.send(message).await;
            let error = bad.recv_type("error").await;
            assert_eq!(error["code"], code, "{error}");
            assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
        // Still connected and able to chat; the other user saw only the good message.
        bad.chat_and_see("a fine message with\ttab and\nnewline").await;
        let seen = loop {
            let frame = other.recv().await;
            assert!(matches!(frame["type"].as_str(), Some("online" | "chat")), "other saw {frame}");
            if frame["type"] == "chat" {
                break frame;
            }
        };
        assert_eq!(seen["content"], "a fine message with\ttab and\nnewline");
        bad.send_json(json!({"type": "ping"})).await;
        assert_eq!(bad.recv().await, json!({"type": "pong"}));
    });
}

#[test]
fn repeated_violations_close_with_1008() {
    let server = Server::start(json!({"limits": {"violations_before_close": 5}}));
    smol::block_on(async {
        let mut troll = server.connect("troll").await;
        let mut bystander = server.connect("bystander").await;
        bystander.await_online(2).await;
        for _ in 0..5 {
            troll.send(Message::Text("{{{".into())).await;
        }
        let (ended, frames) = troll.until_closed().await;
        assert_eq!(ended, Ended::Closed(1008));
        assert_eq!(frames.iter().filter(|f| f["code"] == "invalid_json").count(), 5);
        bystander.await_online(1).await;
        bystander.chat_and_see("unbothered").await;
    });
}

#[test]
fn rate_limit_drops_the_excess() {
    let server = Server::start(json!({"limits": {"rate_per_sec": 1.0, "rate_burst": 3}}));
    smol::block_on(async {
        let mut fast = server.connect("fast").await;
        let mut reader = server.connect("reader").await;
        reader.await_online(2).await;
        for i in 0..5 {
            fast.chat(&format!("m{i}")).await;
        }
        fast.send_json(json!({"type": "ping"})).await;
        let mut chats = 0;
        let mut limited = 0;
        loop {
            let frame = fast.recv().await;
            match frame["type"].as_str() {
                Some("chat") => chats += 1,
                Some("error") => {
                    assert_eq!(frame["code"], "rate_limited");
                    limited += 1;
                }
                Some("pong") => break,
                _ => {}
            }
        }
        assert_eq!((chats, limited), (3, 2));
        // The reader got exactly the three admitted messages, in order.
        for i in 0..3 {
            assert_eq!(reader.recv_type("chat").await["content"], format!("m{i}"));
        }
        let rest = reader.frames_until_pong().await;
        assert!(rest.iter().all(|f| f["type"] != "chat"), "a rate-limited message was delivered");
    });
}

#[test]
fn oversized_frame_closes_with_1009() {
    let server = Server::start(json!({"limits": {"max_message_bytes": 1024}}));
    smol::block_on(async {
        let mut big = server.connect("big").await;
        let mut other = server.connect("other").await;
        other.await_online(2).await;
        let content = "x".repeat(2000);
        big.send_json(json!({"type": "chat", "content": content})).await;
        assert_eq!(big.close_code().await, Ended::Closed(1009));
        other.await_online(1).await;
    });
}
