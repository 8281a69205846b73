//! Capacity and origin limits. (Malformed requests are in `hostile.rs`.)

mod common;

use common::*;
use serde_json::json;

#[test]
fn max_connections_gives_503_and_frees_up() {
    let server = Server::start(json!({"limits": {"max_connections": 2}}));
    smol::block_on(async {
        let mut a = server.connect("a").await;
        let b = server.connect("b").await;
        let refused = Client::connect(server.addr, &format!("token={}", token("c", 60)), &[]).await;
        assert_eq!(refused.err(), Some((503, "server full; try again later\n".into())));
        // A replacement does not need a free slot.
        let mut b2 = server.connect("b").await;
        b2.recv_type("welcome").await;
        drop(b);
        a.chat_and_see("unbothered").await;
        a.close().await;
        // The slot is free again once `a` has gone.
        let mut c = loop {
            let query = format!("token={}", token("c", 60));
            match Client::connect(server.addr, &query, &[]).await {
                Ok(c) => break c,
                Err((503, _)) => b2.await_online(1).await,
                Err(other) => panic!("{other:?}"),
            }
        };
        assert_eq!(c.recv_type("welcome").await["user_id"], "c");
    });
}

#[test]
fn origin_outside_the_list_gives_403() {
    let server = Server::start(json!({"allowed_origins": ["https://forum.example"]}));
    let query = format!("token={}", token("a", 60));
    smol::block_on(async {
        let bad = Client::connect(server.addr, &query, &[("origin", "https://evil.example")]).await;
        assert_eq!(bad.err(), Some((403, "origin not allowed\n".into())));
        let mut good = Client::connect(server.addr, &query, &[("origin", "https://forum.example")])
            .await
            .expect("allowed origin");
        good.recv_type("welcome").await;
        // Not a browser: no Origin header at all is allowed.
        let mut tool = Client::connect(server.addr, &format!("token={}", token("b", 60)), &[])
            .await
            .expect("no origin");
        tool.recv_type("welcome").await;
    });
}
