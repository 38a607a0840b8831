//! poolgate: a remote-desktop connection broker. One WebSocket per thin client, speaking
//! sysadm-style JSON envelopes (see `protocol/`), and beside it the dispatcher's v2 REST API.
//!
//! The modules form layers. A module uses its own layer and those below, never one above,
//! and no two modules (nor two files) import each other in a cycle; `tests/layers/` reads
//! every `crate::` path and checks this drawing (docs/architecture.md draws the same). Bottom to top:
//!
//! 1. `domain`, `files`, `telemetry`, `limits`, `http`, `tls`, `proxy_protocol`, `process` — plain
//!    types and plumbing
//! 2. `store`, `error`, `envelope` — durable state, errors with wire codes, the envelope
//! 3. `auth`, `provision`, `events`, `metrics`, `admission`, `audit` — the domain's services
//! 4. `pools` — the step rules and the task runner
//! 5. `config`, `state` — settings composed from each layer's own, and the wired state
//! 6. `rpc`, `rest`, `portal` — the handlers of both transports, calling the same domain
//!    functions, and the web portal's page
//! 7. `ws`, `server`, `app` — one socket loop, the router, building and stopping the app
//! 8. `cli`, `client`, `preflight`, `users_file` — the commands that `main.rs` dispatches to
//!
//! Layer 1 imports nothing of the crate: `domain` holds what lower layers must name (tasks,
//! machines, token digests, client addresses) so that they never reach up for it. Requests
//! flow down from a transport to the domain; task events flow back up through `events` to
//! the sockets.
pub mod admission;
pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod domain;
pub mod envelope;
pub mod error;
pub mod events;
pub mod files;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod pools;
pub mod portal;
pub mod preflight;
pub mod process;
pub mod provision;
pub mod proxy_protocol;
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
