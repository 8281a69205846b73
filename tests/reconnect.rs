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

/// What a browser does on a refresh: the old page's socket closes (1001, on unload) before the
/// new page connects. Within `presence.grace_ms` nobody else sees the user leave and come back.
#[test]
fn a_browser_refresh_that_closes_first_changes_nobody_s_view() {
    use async_tungstenite::tungstenite::Message;
    use async_tungstenite::tungstenite::protocol::CloseFrame;
    use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use std::time::Duration;

    let server = Server::start(json!({"presence": {"grace_ms": 3000}}));
    smol::block_on(async {
        let mut watcher = server.joined("watcher").await;
        let mut page = server.joined("refresher").await;
        watcher.await_online(2).await;
        for gap in [Duration::from_millis(200), Duration::from_secs(2)] {
            let going_away = CloseFrame { code: CloseCode::Away, reason: "".into() };
            page.send(Message::Close(Some(going_away))).await;
            page.until_closed().await; // the server answers the close
            smol::Timer::after(gap).await; // the new page loading
            page = server.connect("refresher").await;
            assert_eq!(page.recv_type("welcome").await["online"], 2);
            // Everything the watcher was sent up to the new page's chat: no `online` frame.
            let tag = format!("back after {gap:?}");
            page.chat(&tag).await;
            loop {
                let frame = watcher.recv().await;
                assert_ne!(frame["type"], "online", "the watcher saw the refresh: {frame}");
                if frame["content"] == tag.as_str() {
                    break;
                }
            }
        }
        // Leaving for good is seen, once the grace is over.
        page.close().await;
        watcher.await_online(1).await;
    });
}
