//! The fan-out ceiling for the benchmarks: a minimal tokio-tungstenite broadcast server, tuned
//! like poolgate's transport (same read and write buffers), one task per socket. Every text
//! frame a client sends is written, as the same shared bytes, to every connected socket —
//! what poolgate does with a task's status change, without the sign-in, the subscriptions, the
//! per-socket queue bound or the hub. `loadgen broadcast` drives it and times each delivery
//! exactly as `loadgen fanout` times poolgate's.
//!
//!     cargo run --release --example broadcast_server -- 127.0.0.1:9002

use futures_util::{SinkExt, StreamExt};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9002".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("broadcast listening on ws://{}/", listener.local_addr()?);
    let config = WebSocketConfig::default()
        .read_buffer_size(poolgate::ws::READ_BUFFER_BYTES)
        .write_buffer_size(poolgate::ws::WRITE_BUFFER_BYTES);
    let (tx, _) = broadcast::channel::<Utf8Bytes>(64);
    loop {
        let (stream, _) = listener.accept().await?;
        // As poolgate's listener does.
        stream.set_nodelay(true)?;
        let (tx, mut rx) = (tx.clone(), tx.subscribe());
        tokio::spawn(async move {
            let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
            else {
                return;
            };
            let (mut sink, mut stream) = ws.split();
            loop {
                tokio::select! {
                    msg = stream.next() => match msg {
                        Some(Ok(Message::Text(text))) => {
                            let _ = tx.send(text);
                        }
                        Some(Ok(_)) => {}
                        _ => return,
                    },
                    frame = rx.recv() => {
                        let text = match frame {
                            Ok(text) => text,
                            Err(broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(broadcast::error::RecvError::Closed) => return,
                        };
                        if sink.feed(Message::Text(text)).await.is_err() {
                            return;
                        }
                        // Whatever else is already queued goes in the same write.
                        while let Ok(text) = rx.try_recv() {
                            if sink.feed(Message::Text(text)).await.is_err() {
                                return;
                            }
                        }
                        if sink.flush().await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}
