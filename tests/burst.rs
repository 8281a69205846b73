//! A burst: 10 senders × 200 messages back to back, to 100 reading clients. Everyone who reads
//! gets every message, in order, and nobody is cut off as too slow. This is the test that sets
//! `driver::READ_BUDGET_FRAMES`; with `--features redis` it runs over two instances too, where
//! the messages come back from Redis in large batches.

mod common;

use std::cell::Cell;
use std::rc::Rc;

use common::*;
use serde_json::json;
use smol::LocalExecutor;

const RECEIVERS: usize = 100;
const SENDERS: usize = 10;
const MESSAGES: usize = 200;

#[test]
fn burst_reaches_every_reader_and_cuts_no_one() {
    let server = Server::start(json!({"log_level": "info"}));
    burst(&[&server]);
}

#[cfg(feature = "redis")]
#[test]
fn burst_over_two_instances_reaches_every_reader_and_cuts_no_one() {
    let redis = Redis::start();
    let cluster =
        json!({"log_level": "info", "cluster": {"redis_url": redis.url(), "prefix": "burst"}});
    let a = Server::start(cluster.clone());
    let b = Server::start(cluster);
    for server in [&a, &b] {
        server.wait_for_log("cluster: connected to Redis");
    }
    burst(&[&a, &b]);
}

/// Runs the burst with the readers spread over `servers`.
fn burst(servers: &[&Server]) {
    let ex = Rc::new(LocalExecutor::new());
    let total = SENDERS * MESSAGES;
    let cut_off = Rc::new(Cell::new(0usize));
    smol::block_on(ex.run(async {
        let clients: Vec<_> = (0..RECEIVERS + SENDERS)
            .map(|i| {
                // Every sender on the first server: in a cluster, its outbox to Redis takes the
                // whole burst.
                let server = if i < SENDERS { servers[0] } else { servers[i % servers.len()] };
                ex.spawn(async move {
                    let name = if i < SENDERS { format!("sender{i}") } else { format!("r{i}") };
                    let mut client = server.connect(&name).await;
                    client.await_online((RECEIVERS + SENDERS) as u64).await;
                    client
                })
            })
            .collect();
        let mut connected = Vec::new();
        for task in clients {
            connected.push(task.await);
        }
        let tasks: Vec<_> = connected
            .into_iter()
            .enumerate()
            .map(|(i, mut client)| {
                let cut_off = cut_off.clone();
                ex.spawn(async move {
                    if i < SENDERS {
                        for n in 0..MESSAGES {
                            client.chat(&format!("{i}:{n}")).await;
                        }
                    }
                    let mut got = 0;
                    let mut last_id = 0;
                    let mut next_from = [0usize; SENDERS];
                    while got < total {
                        let Some(message) = client.next_message().await else {
                            cut_off.set(cut_off.get() + 1);
                            return got;
                        };
                        let async_tungstenite::tungstenite::Message::Text(text) = message else {
                            if message.is_close() {
                                cut_off.set(cut_off.get() + 1);
                                return got;
                            }
                            continue;
                        };
                        let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                        if frame["type"] != "chat" {
                            continue;
                        }
                        let id = frame["id"].as_u64().unwrap();
                        assert!(id > last_id, "ids out of order");
                        last_id = id;
                        let (from, n) = frame["content"].as_str().unwrap().split_once(':').unwrap();
                        let (from, n): (usize, usize) = (from.parse().unwrap(), n.parse().unwrap());
                        assert_eq!(n, next_from[from], "a message from sender {from} was lost");
                        next_from[from] += 1;
                        got += 1;
                    }
                    got
                })
            })
            .collect();
        let mut delivered = 0;
        for task in tasks {
            delivered += task.await;
        }
        let expected = total * (RECEIVERS + SENDERS);
        assert_eq!(
            (cut_off.get(), delivered),
            (0, expected),
            "clients cut off, deliveries (of {expected})"
        );
    }));
}
