//! shequ-chat: a WebSocket chat server for self-hosted community sites.
//!
//! One OS thread runs everything. [`hub::Hub`] is a plain state machine that owns all connection
//! state; around it, [`driver`] is the one door into the hub and runs its timers, [`conn`] is one
//! connection's life (the HTTP upgrade, then the pump between the WebSocket and the hub),
//! [`socket`] is a connection's one write buffer, [`api`] is the site's server API (another
//! input through the same door), and [`server`] binds, accepts, starts and stops the process.

#![forbid(unsafe_code)]
#![deny(clippy::await_holding_refcell_ref)]

pub mod admin;
pub mod api;
pub mod auth;
pub mod channels;
#[cfg(feature = "redis")]
pub mod cluster;
pub mod config;
pub mod conn;
pub mod driver;
pub mod handshakes;
pub mod history;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod outbox;
pub mod page;
pub mod protocol;
pub mod server;
pub mod socket;
