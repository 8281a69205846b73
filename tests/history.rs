//! No message lost on a page refresh: `since` recovery under load, the history file across
//! restarts and crashes, and a torn last line.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn history_path(name: &str) -> PathBuf {
    let path = std::env::temp_dir()
        .join(format!("shequ-chat-history-test-{}-{name}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

fn chat_id(frame: &Value) -> Option<u64> {
    (frame["type"] == "chat").then(|| frame["id"].as_u64().unwrap())
}

#[test]
fn refresh_during_a_fast_burst_misses_nothing_and_repeats_nothing() {
    const MESSAGES: u64 = 1000;
    let server = Server::start(json!({
        "log_level": "info",
        "history": {"size": 1000, "on_join": 0},
        "limits": {"send_queue": 4096}
    }));
    let ex = smol::LocalExecutor::new();
    smol::block_on(ex.run(async {
        let mut reader = server.connect("reader").await;
        reader.recv_type("welcome").await;
        let mut sender = server.connect("sender").await;
        sender.recv_type("welcome").await;
        let sending = ex.spawn(async move {
            for i in 0..MESSAGES {
                sender.chat(&format!("m{i}")).await;
            }
            sender
        });
        let mut seen: Vec<u64> = Vec::new();
        // Refresh three times in the middle of the burst, each time resuming from the last id.
        for refresh_after in [100, 300, 600] {
            while seen.len() < refresh_after {
                if let Some(id) = chat_id(&reader.recv().await) {
                    seen.push(id);
                }
            }
            drop(reader); // the tab goes away without a close frame
            let since = seen.last().copied().unwrap();
            let t = token("reader", 3600);
            reader = Client::connect(server.addr, &format!("token={t}&since={since}"), &[])
                .await
                .expect("reconnect");
            let welcome = reader.recv_type("welcome").await;
            assert_eq!(welcome["recovered"], true, "{welcome}");
        }
        while (seen.len() as u64) < MESSAGES {
            if let Some(id) = chat_id(&reader.recv().await) {
                seen.push(id);
            }
        }
        let _sender = sending.await;
        let expected: Vec<u64> = (1..=MESSAGES).collect();
        assert_eq!(seen, expected, "every message once, in order");
    }));
}

#[test]
fn since_older_than_the_history_is_not_recovered() {
    let server = Server::start(json!({"history": {"size": 5, "on_join": 3}}));
    smol::block_on(async {
        let mut sender = server.connect("sender").await;
        for i in 0..10 {
            sender.chat_and_see(&format!("m{i}")).await;
        }
        let t = token("late", 3600);
        let mut late =
            Client::connect(server.addr, &format!("token={t}&since=2"), &[]).await.unwrap();
        let welcome = late.recv_type("welcome").await;
        assert_eq!(welcome["recovered"], false);
        let ids: Vec<u64> = [late.recv().await, late.recv().await, late.recv().await]
            .iter()
            .map(|f| chat_id(f).expect("a chat"))
            .collect();
        assert_eq!(ids, vec![8, 9, 10], "the most recent on_join messages");
        let mut fresh = server.connect("fresh").await;
        let welcome = fresh.recv().await;
        assert!(welcome.get("recovered").is_none());
        assert_eq!(chat_id(&fresh.recv().await), Some(8));
        let (_, metrics) = server.get("/metrics");
        for sample in [
            "shequ_chat_history_messages 5\n",
            "shequ_chat_recoveries_total{result=\"too_old\"} 1\n",
            "shequ_chat_recoveries_total{result=\"recovered\"} 0\n",
        ] {
            assert!(metrics.contains(sample), "{sample} not in\n{metrics}");
        }
    });
}

#[test]
fn history_and_ids_survive_a_restart() {
    let path = history_path("restart");
    let config = json!({"history": {"file": path, "fsync": "interval"}});
    let mut server = Server::start(config.clone());
    smol::block_on(async {
        let mut a = server.connect("a").await;
        for i in 0..5 {
            a.chat_and_see(&format!("before {i}")).await;
        }
    });
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
    drop(server);

    let server = Server::start(config);
    smol::block_on(async {
        let t = token("a", 3600);
        let mut a = Client::connect(server.addr, &format!("token={t}&since=2"), &[]).await.unwrap();
        assert_eq!(a.recv_type("welcome").await["recovered"], true);
        for (id, content) in [(3, "before 2"), (4, "before 3"), (5, "before 4")] {
            let m = a.recv().await;
            assert_eq!((chat_id(&m), m["content"].as_str()), (Some(id), Some(content)));
        }
        a.chat("after").await;
        let m = a.recv_type("chat").await;
        assert_eq!((chat_id(&m), m["content"].as_str()), (Some(6), Some("after")));
    });
    let _ = std::fs::remove_file(&path);
}

#[test]
fn sigkill_mid_burst_loses_nothing_anyone_saw() {
    let path = history_path("sigkill");
    let config = json!({
        "log_level": "info",
        "history": {"file": path, "fsync": "always", "size": 1000, "on_join": 0},
        "limits": {"send_queue": 2000}
    });
    let mut server = Server::start(config.clone());
    let acknowledged: Vec<u64> = smol::block_on(async {
        let mut a = server.connect("a").await;
        for i in 0..300 {
            a.chat(&format!("m{i}")).await;
        }
        let mut acked = Vec::new();
        while acked.len() < 100 {
            if let Some(id) = chat_id(&a.recv().await) {
                acked.push(id);
            }
        }
        // Kill it while the rest of the burst is still being handled.
        server.signal("KILL");
        loop {
            match a.next_message().await {
                Some(async_tungstenite::tungstenite::Message::Text(t)) => {
                    let frame: Value = serde_json::from_str(&t).unwrap();
                    acked.extend(chat_id(&frame));
                }
                Some(_) => {}
                None => break,
            }
        }
        acked
    });
    assert_eq!(server.wait_exit(Duration::from_secs(10)), None, "killed by a signal");
    drop(server);

    let server = Server::start(config);
    smol::block_on(async {
        let t = token("b", 3600);
        let mut b = Client::connect(server.addr, &format!("token={t}&since=0"), &[]).await.unwrap();
        let welcome = b.recv_type("welcome").await;
        assert_eq!(welcome["recovered"], true, "{welcome}");
        let recovered: Vec<u64> = b.frames_until_pong().await.iter().filter_map(chat_id).collect();
        for id in &acknowledged {
            assert!(recovered.contains(id), "message {id} was acknowledged, then lost");
        }
    });
    assert!(
        !server.log_lines().iter().any(|l| l.contains("torn")),
        "the history file did not load cleanly"
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn torn_last_line_is_repaired_on_start() {
    let path = history_path("torn");
    let good = |id: u64| {
        json!({"type":"chat","id":id,"user_id":"1","username":"x","content":format!("m{id}"),"ts":1})
            .to_string()
    };
    std::fs::write(&path, format!("{}\n{}\n{{\"type\":\"chat\",\"id\":3,\"con", good(1), good(2)))
        .unwrap();
    let mut server = Server::start(json!({"history": {"file": path}}));
    server.expect_warning("torn line");
    server.wait_for_log("torn line");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{}\n{}\n", good(1), good(2)));
    smol::block_on(async {
        let t = token("a", 3600);
        let mut a = Client::connect(server.addr, &format!("token={t}&since=1"), &[]).await.unwrap();
        assert_eq!(a.recv_type("welcome").await["recovered"], true);
        assert_eq!(chat_id(&a.recv().await), Some(2));
        a.chat("next").await;
        assert_eq!(chat_id(&a.recv_type("chat").await), Some(3));
    });
    let _ = std::fs::remove_file(&path);
}
