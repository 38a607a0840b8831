//! The ceiling reference for the benchmarks: a raw tokio-tungstenite echo server, tuned like
//! poolgate's transport (8 KiB read buffer), one task per socket, text frames echoed back.
//!
//!     cargo run --release --example echo_server -- 127.0.0.1:9001

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("echo listening on ws://{}/", listener.local_addr()?);
    let config = WebSocketConfig::default()
        .read_buffer_size(poolgate::ws::READ_BUFFER_BYTES)
        .write_buffer_size(poolgate::ws::WRITE_BUFFER_BYTES);
    loop {
        let (stream, _) = listener.accept().await?;
        // As poolgate's listener does.
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
            else {
                return;
            };
            let (mut sink, mut stream) = ws.split();
            while let Some(Ok(msg)) = stream.next().await {
                if msg.is_text() || msg.is_binary() {
                    if sink.feed(msg).await.is_err() {
                        return;
                    }
                    // Flush when no more input is ready, like poolgate's writer.
                    if sink.flush().await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}
