//! Many clients at once: everyone gets `welcome`, the online count settles on the truth, and one
//! broadcast reaches every client exactly once.

mod common;

use std::rc::Rc;

use common::*;
use serde_json::json;
use smol::LocalExecutor;

const CLIENTS: usize = 500;

#[test]
fn five_hundred_clients_connect_at_once() {
    let server = Server::start(json!({"log_level": "info"}));
    let ex = Rc::new(LocalExecutor::new());
    smol::block_on(ex.run(async {
        // All handshakes are started before any is awaited.
        let connecting: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let server = &server;
                ex.spawn(async move {
                    let mut client = server.connect(&format!("user{i}")).await;
                    let welcome = client.recv_type("welcome").await;
                    assert_eq!(welcome["user_id"], format!("user{i}"));
                    client.await_online(CLIENTS as u64).await;
                    client
                })
            })
            .collect();
        let mut clients = Vec::new();
        for task in connecting {
            clients.push(task.await);
        }

        clients[0].chat("to everyone").await;
        let receiving: Vec<_> = clients
            .into_iter()
            .map(|mut client| {
                ex.spawn(async move {
                    let chat = client.recv_type("chat").await;
                    assert_eq!(chat["content"], "to everyone");
                    // Exactly once: the next frame is the pong, not a second copy.
                    for frame in client.frames_until_pong().await {
                        assert_ne!(frame["type"], "chat", "delivered twice: {frame}");
                        assert_eq!(frame["type"], "online");
                        assert_eq!(frame["count"], CLIENTS as u64, "online count drifted");
                    }
                    client
                })
            })
            .collect();
        // Every client stays connected until all have checked: one that left early would change
        // the count that the others are still reading.
        let mut checked = Vec::new();
        for task in receiving {
            checked.push(task.await);
        }
    }));
}
