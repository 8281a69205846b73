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

/// The kernel's view of the server's side of each connection to `port` (`ss -tm`): its receive
/// and send buffer sizes (`rb`, `tb` of `skmem`).
fn server_socket_buffers(port: u16) -> Vec<(u64, u64)> {
    let out = std::process::Command::new("ss")
        .args(["-tmnH", "state", "established", &format!("( sport = :{port} )")])
        .output()
        .expect("ss (iproute2; .ci/setup installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |line: &str, name: &str| -> u64 {
        let start = line.find(&format!(",{name}")).unwrap() + name.len() + 1;
        let digits: String = line[start..].chars().take_while(char::is_ascii_digit).collect();
        digits.parse().unwrap()
    };
    text.lines()
        .filter(|l| l.contains("skmem:"))
        .map(|l| (field(l, "rb"), field(l, "tb")))
        .collect()
}

#[test]
fn socket_buffer_sizes_reach_every_client_socket() {
    let server = Server::start(json!({
        "limits": {"socket_recv_buffer": 16384, "socket_send_buffer": 32768, "listen_backlog": 64}
    }));
    smol::block_on(async {
        let _a = server.joined("a").await;
        let _b = server.joined("b").await;
        let buffers = server_socket_buffers(server.addr.port());
        // The kernel keeps twice what is asked, for its own bookkeeping (socket(7)).
        assert_eq!(buffers, [(32768, 65536), (32768, 65536)], "{buffers:?}");
    });
    // Without them, the kernel's defaults, which are other sizes.
    let default = Server::start(json!({}));
    smol::block_on(async {
        let _a = default.joined("a").await;
        let buffers = server_socket_buffers(default.addr.port());
        assert_eq!(buffers.len(), 1);
        assert_ne!(buffers[0], (32768, 65536));
    });
}
