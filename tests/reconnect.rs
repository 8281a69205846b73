//! A page refresh is a replacement: the old connection gets 4001 and nothing after it, the new one
//! gets `welcome`, and the online count does not move. Also multi-device settings.

mod common;

use common::*;
use serde_json::json;

#[test]
fn page_refresh_replaces_the_old_connection() {
    let server = Server::start(json!({}));
    smol::block_on(async {
        let mut watcher = server.connect("watcher").await;
        watcher.await_online(1).await;
        let mut old = server.connect("42").await;
        assert_eq!(old.recv_type("welcome").await["online"], 2);
        watcher.await_online(2).await;

        let mut new = server.connect("42").await;
        let welcome = new.recv().await;
        assert_eq!(welcome["type"], "welcome");
        assert_eq!(welcome["user_id"], "42");
        assert_eq!(welcome["online"], 2, "a replacement changed the online count");
        new.chat("right after the refresh").await;

        let chat = new.recv_type("chat").await;
        assert_eq!(chat["content"], "right after the refresh");
        assert_eq!(watcher.recv_type("chat").await["content"], "right after the refresh");

        let (ended, frames) = old.until_closed().await;
        assert_eq!(ended, Ended::Closed(4001));
        assert!(
            frames.iter().all(|f| f["type"] != "chat"),
            "the replaced connection received a chat sent after its replacement: {frames:?}"
        );

        // The count never changed: a further chat arrives with no `online` frame before it, and
        // the new connection got its chat exactly once.
        watcher.chat("marker").await;
        let next = watcher.recv().await;
        assert_eq!(next["content"], "marker", "unexpected frame {next}");
        loop {
            let frame = new.recv().await;
            assert_ne!(frame["type"], "online", "presence changed on a replacement");
            assert_ne!(frame["content"], "right after the refresh", "delivered twice");
            if frame["content"] == "marker" {
                break;
            }
        }
    });
}

#[test]
fn one_connection_per_user_by_default() {
    let server = Server::start(json!({}));
    smol::block_on(async {
        let mut first = server.connect("7").await;
        first.recv_type("welcome").await;
        let mut second = server.connect("7").await;
        second.recv_type("welcome").await;
        assert_eq!(first.close_code().await, Ended::Closed(4001));
        let mut third = server.connect("7").await;
        assert_eq!(third.recv_type("welcome").await["online"], 1);
        assert_eq!(second.close_code().await, Ended::Closed(4001));
    });
}

#[test]
fn two_devices_with_max_connections_per_user_2() {
    let server = Server::start(json!({"limits": {"max_connections_per_user": 2}}));
    smol::block_on(async {
        let mut phone = server.connect("7").await;
        phone.recv_type("welcome").await;
        let mut laptop = server.connect("7").await;
        assert_eq!(laptop.recv_type("welcome").await["online"], 1);
        phone.chat("from the phone").await;
        assert_eq!(laptop.recv_type("chat").await["content"], "from the phone");
        assert_eq!(phone.recv_type("chat").await["content"], "from the phone");

        let mut tablet = server.connect("7").await;
        tablet.recv_type("welcome").await;
        assert_eq!(phone.close_code().await, Ended::Closed(4001), "the oldest is replaced");
        tablet.chat("from the tablet").await;
        assert_eq!(laptop.recv_type("chat").await["content"], "from the tablet");
        // The tablet joined with the recent history, then got its own message live.
        assert_eq!(tablet.recv_type("chat").await["content"], "from the phone");
        assert_eq!(tablet.recv_type("chat").await["content"], "from the tablet");
    });
}

#[test]
fn leaving_lowers_the_online_count() {
    let server = Server::start(json!({}));
    smol::block_on(async {
        let mut stays = server.connect("a").await;
        let leaves = server.connect("b").await;
        stays.await_online(2).await;
        leaves.close().await;
        stays.await_online(1).await;
    });
}
