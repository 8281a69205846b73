//! shequ-chat: a WebSocket chat server for self-hosted community sites.
//!
//! One OS thread runs everything. [`hub::Hub`] is a plain state machine that owns all connection
//! state; [`server`] is the IO shell around it: the accept loop, the HTTP handshake, one task per
//! connection, and the timer that drives the hub's heartbeats, presence and expiries.

#![forbid(unsafe_code)]
#![deny(clippy::await_holding_refcell_ref)]

pub mod auth;
#[cfg(feature = "redis")]
pub mod cluster;
pub mod config;
pub mod handshakes;
pub mod history;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod outbox;
pub mod page;
pub mod protocol;
pub mod server;
