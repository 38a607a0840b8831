//! An echo endpoint built from poolgate's own WebSocket transport (`poolgate::ws::transport`:
//! the same axum upgrade, buffer sizes and message ceiling as `/`), for the Autobahn
//! conformance cases (`bench/autobahn.sh`, run by CI). Text and binary messages are echoed.
//!
//!     cargo run --release --example autobahn_echo -- 127.0.0.1:9002

use axum::Router;
use axum::extract::WebSocketUpgrade;
use axum::extract::ws::{Message, WebSocket};
use axum::response::Response;
use axum::routing::get;

/// Autobahn's largest messages are 16 MiB; poolgate's default ceiling is 4 MiB
/// (`max_message_bytes`), so the 9.x cases above it are excluded by the script.
fn max_message() -> usize {
    poolgate::config::Config::default().max_message_bytes
}

async fn echo(mut socket: WebSocket) {
    while let Some(Ok(msg)) = socket.recv().await {
        let reply = match msg {
            Message::Text(_) | Message::Binary(_) => msg,
            Message::Close(_) => break,
            // Pings are answered by tungstenite itself.
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if socket.send(reply).await.is_err() {
            break;
        }
    }
}

async fn upgrade(ws: WebSocketUpgrade) -> Response {
    poolgate::ws::transport(ws, max_message()).on_upgrade(echo)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9002".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("autobahn echo on ws://{}/", listener.local_addr()?);
    axum::serve(listener, Router::new().route("/", get(upgrade))).await?;
    Ok(())
}
