//! The WebSocket transport at `/`: the upgrade (with the transport's buffer sizes) and the
//! per-socket loop; the envelope format is `crate::envelope`. Connection limits are the accept loop's
//! (`server`, `admission`): an upgraded socket keeps the slot its connection took.

pub mod connection;

use std::net::SocketAddr;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};

use crate::state::AppState;

/// Read buffer per socket (2 KiB: measured 7.5 KiB RSS per idle signed-in socket with it, 9.5
/// with 4 KiB). tungstenite's default (128 KiB) costs that much RSS per idle socket
/// and halves small-message throughput (tungstenite-rs#480); our messages are small.
pub const READ_BUFFER_BYTES: usize = 2 * 1024;
/// Write buffer per socket (frames are flushed when the outbound queue drains).
pub const WRITE_BUFFER_BYTES: usize = 4 * 1024;

/// The transport settings of every poolgate WebSocket: small buffers and the message ceiling.
/// The Autobahn conformance run (`bench/autobahn.sh`) checks an echo built with exactly this.
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
    get(upgrade)
}

async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(_) => {
            return (
                StatusCode::UPGRADE_REQUIRED,
                [("upgrade", "websocket")],
                "poolgate: this endpoint speaks JSON envelopes over WebSocket; see protocol/ in the \
                 repository (e.g. `wscat -c ws://HOST:PORT/`).\n",
            )
                .into_response();
        }
    };
    // The connection's admission slot (taken at accept) travels inside the upgraded stream.
    transport(ws, state.config.max_message_bytes).on_upgrade(move |socket| {
        let tracker = state.tracker.clone();
        tracker.track_future(connection::serve(socket, state, peer))
    })
}
