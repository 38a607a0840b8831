//! poolgate: a remote-desktop connection broker. One WebSocket per thin client, speaking
//! sysadm-style JSON envelopes (see `protocol/`).
//!
//! Data flows one way: transport (`ws`) → `rpc` → domain (`auth`, `pools`) → `provision`;
//! task events flow back through `events` to the sockets. `state` ties them together.

pub mod admission;
pub mod app;
pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod domain;
pub mod error;
pub mod events;
pub mod files;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod pools;
pub mod preflight;
pub mod provision;
pub mod rest;
pub mod rpc;
pub mod server;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod users_file;
pub mod ws;

pub use app::{Application, ServerHandle};
pub use config::Config;
pub use state::AppState;
