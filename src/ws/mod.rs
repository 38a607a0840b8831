//! Every poolgate WebSocket: the upgrade (with the transport's buffer sizes) and the one
//! socket loop (`connection`), with a [`Handler`](connection::Handler) per kind of socket — the
//! RPC socket at `/` (`rpc`) and the v2 status socket at `/api/v2/pools/ws/{client_id}/`
//! (`status`, whose HTTP-side checks are the v2 shim's). The envelope format is
//! `crate::envelope`. Connection limits are the accept loop's (`server`, `admission`): an
//! upgraded socket keeps the slot its connection took.

pub mod connection;
mod rpc;
mod status;
pub mod upgrade;

use axum::extract::ws::WebSocketUpgrade;
use axum::response::Response;
use axum::routing::{MethodRouter, get};

use crate::state::AppState;
use connection::{Handler, Link};

/// Read buffer per socket (512 bytes): what an idle socket holds between messages, so it is
/// as small as our requests are (a `pools` or `task` request is under 100 bytes; a longer
/// message is read in 512-byte steps into a buffer grown to its announced length).
/// tungstenite's default (128 KiB) costs that much RSS per idle socket and halves
/// small-message throughput (tungstenite-rs#480); 2 KiB cost 1.5 KiB more per idle socket
/// than this (docs/benchmarks.md, "Idle sockets").
pub const READ_BUFFER_BYTES: usize = 512;
/// Write buffer per socket (frames are flushed when the outbound queue drains).
pub const WRITE_BUFFER_BYTES: usize = 4 * 1024;

/// The tungstenite settings of every poolgate WebSocket: small buffers and the signed-in
/// message ceiling (the ceiling before sign-in is the [`upgrade::Guarded`] reader's).
pub fn config(max_message_bytes: usize) -> tungstenite::protocol::WebSocketConfig {
    tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

/// [`config`] for an axum upgrade (the echo examples). The Autobahn conformance run
/// (`bench/autobahn.sh`) checks an echo built with it, without the [`upgrade::Guarded`] reader.
pub fn transport(ws: WebSocketUpgrade, max_message_bytes: usize) -> WebSocketUpgrade {
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(max_message_bytes)
        .max_frame_size(max_message_bytes)
}

/// The RPC socket's route (`/`). Names the methods in the metrics first, so each method's
/// counters exist from the first scrape on.
pub fn rpc_route(state: &AppState) -> MethodRouter<AppState> {
    state.metrics.name_methods(crate::rpc::METHOD_NAMES);
    get(rpc::upgrade)
}

/// The v2 status socket's route, for the v2 shim's router (`rest::router`), which may not
/// name `ws` itself.
pub fn status_route() -> MethodRouter<AppState> {
    get(status::upgrade)
}

/// Completes an accepted upgrade: the transport settings of `H`'s policy, then the socket
/// loop on the server's tracker (so shutdown waits for it). The connection's admission slot
/// (taken at accept) travels inside the upgraded stream.
fn accept<H: Handler + 'static>(
    ws: upgrade::Upgrade,
    state: AppState,
    open: impl FnOnce(&AppState, Link) -> H + Send + 'static,
) -> Response {
    let policy = H::policy(&state.config);
    // The loop sets the limit it needs before its first read; until then, the smallest.
    let limit = upgrade::MessageLimit::new(policy.max_message_before_auth);
    let tracker = state.tracker.clone();
    ws.accept(config(policy.max_message), limit, &tracker, move |socket| {
        connection::serve(socket, state, open)
    })
}
