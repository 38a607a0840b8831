//! One WebSocket connection: read a frame, dispatch it, write the reply; close on idle, on a
//! missed sign-in grace period, and on shutdown. Writes go through a bounded queue drained by
//! a writer task, so replies and pushed events share one ordered outbound path.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tungstenite::error::CapacityError;

use super::envelope;
use crate::error::Error;
use crate::events::Frame;
use crate::rpc::{self, Conn, Ctx};
use crate::state::AppState;

/// Close codes (4000–4999 are the application's own).
pub mod close_code {
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
    pub const IDLE_TIMEOUT: u16 = 4000;
    pub const AUTH_TIMEOUT: u16 = 4001;
    pub const TOO_SLOW: u16 = 4002;
    pub const TOKEN_GONE: u16 = 4003;
}

/// How long a closing socket may take to flush its last frames.
pub(crate) const CLOSE_FLUSH: Duration = Duration::from_secs(5);

/// Why the read loop ended.
enum End {
    /// The peer closed or vanished: nothing more to send.
    Gone,
    /// We close, with a code and a reason the client can show.
    Close(u16, String),
}

pub async fn serve(socket: WebSocket, state: AppState, peer: SocketAddr) {
    let conn_id = state.next_conn_id();
    state.metrics.connections_total.inc();
    state.metrics.connections_open.inc();
    let (sink, mut stream) = socket.split();
    let (tx, rx) = mpsc::channel::<Frame>(state.config.outbound_queue);
    let mut writer = tokio::spawn(write_loop(sink, rx));
    let mut conn = Conn::new(conn_id, peer, tx.clone());
    let kick = conn.kick.clone();
    tracing::debug!(conn_id, %peer, "connected");

    let idle = state.config.idle_timeout;
    let grace = state.config.auth_grace;
    let mut last_seen = Instant::now();
    // Re-armed lazily: each message only records `last_seen`, the timer checks it when it fires.
    let mut idle_at = last_seen + idle;
    let mut grace_at = Some(last_seen + grace);

    let end = loop {
        tokio::select! {
            biased;
            _ = state.shutdown.cancelled() => {
                break End::Close(close_code::GOING_AWAY, "server shutting down".into());
            }
            _ = kick.cancelled() => {
                break End::Close(close_code::TOO_SLOW,
                    "too slow: the socket did not read its events and its queue filled up".into());
            }
            _ = sleep_until(idle_at) => {
                if last_seen + idle <= Instant::now() {
                    break End::Close(close_code::IDLE_TIMEOUT, format!(
                        "idle timeout: nothing received for {} s", idle.as_secs_f64()));
                }
                idle_at = last_seen + idle;
            }
            _ = sleep_until(grace_at.unwrap_or(idle_at)), if grace_at.is_some() => {
                break End::Close(close_code::AUTH_TIMEOUT, format!(
                    "authentication timeout: not signed in within {} s", grace.as_secs_f64()));
            }
            frame = stream.next() => {
                last_seen = Instant::now();
                let reply = match frame {
                    None => break End::Gone,
                    // Boxed: the request's future (the largest method's state) lives only while a
                    // request runs, instead of inside every idle connection's future.
                    Some(Ok(Message::Text(text))) => Some(Box::pin(handle_text(&state, &mut conn, &text)).await),
                    Some(Ok(Message::Binary(_))) => Some(envelope::error(None, RawValue::NULL,
                        &Error::bad_request("Binary frames are not supported; send JSON in text frames."))),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => None,
                    Some(Ok(Message::Close(_))) => break End::Gone,
                    Some(Err(err)) => break transport_error(&tx, err).await,
                };
                if let Some(reply) = reply
                    && tx.send(Frame::Text(reply)).await.is_err()
                {
                    break End::Gone;
                }
                conn.subscribe_if_signed_in(&state);
                grace_at = match (&conn.session, grace_at) {
                    (Some(_), _) => None,
                    (None, None) => Some(last_seen + grace),
                    (None, at) => at,
                };
            }
        }
    };

    conn.clear_session(&state);
    if let End::Close(code, reason) = end {
        tracing::debug!(conn_id, code, reason, "closing");
        let _ = tokio::time::timeout(CLOSE_FLUSH, tx.send(Frame::Close(code, reason))).await;
    }
    drop(tx);
    drop(conn);
    // A peer that stopped reading must not keep the writer (and this task) alive forever.
    if tokio::time::timeout(CLOSE_FLUSH, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    state.metrics.connections_open.dec();
    tracing::debug!(conn_id, "disconnected");
}

/// Parses and runs one text frame; always produces exactly one reply.
async fn handle_text(state: &AppState, conn: &mut Conn, text: &str) -> String {
    let limit = state.config.max_frame_bytes;
    if text.len() > limit {
        return envelope::error(None, RawValue::NULL, &Error::FrameTooLarge { limit });
    }
    let request = match envelope::parse(text) {
        Ok(request) => request,
        Err(bad) => return envelope::error(bad.namespace.as_deref(), bad.id, &bad.error),
    };
    let mut ctx = Ctx { state, conn };
    let result = rpc::dispatch(&mut ctx, &request.namespace, &request.name, request.args).await;
    let method =
        rpc::Method::lookup(&request.namespace, &request.name).map_or("unknown", rpc::Method::name);
    state
        .metrics
        .rpc(method, result.as_ref().map_or_else(|e| e.code(), |_| 200));
    match result {
        Ok(args) => envelope::response(&request.namespace, request.id, &args),
        Err(err) => {
            if let Error::Internal(cause) = &err {
                tracing::error!(conn_id = ctx.conn.id, method = %request.name, error = ?cause, "internal error");
            }
            envelope::error(Some(&request.namespace), request.id, &err)
        }
    }
}

/// A read error ends the stream (tungstenite fuses it); say why before closing.
async fn transport_error(tx: &mpsc::Sender<Frame>, err: axum::Error) -> End {
    let err = match err.into_inner().downcast::<tungstenite::Error>() {
        Ok(err) => *err,
        Err(other) => {
            tracing::debug!(error = %other, "socket read failed");
            return End::Gone;
        }
    };
    let (code, reason, error) = match err {
        tungstenite::Error::Utf8(_) => (
            close_code::INVALID_PAYLOAD,
            "text frame is not valid UTF-8",
            Error::bad_request("Text frame is not valid UTF-8."),
        ),
        tungstenite::Error::Capacity(CapacityError::MessageTooLong { max_size, .. }) => (
            close_code::TOO_BIG,
            "message exceeds the transport limit",
            Error::FrameTooLarge { limit: max_size },
        ),
        tungstenite::Error::Protocol(p) => {
            tracing::debug!(error = %p, "websocket protocol error");
            return End::Close(
                close_code::PROTOCOL_ERROR,
                "websocket protocol error".into(),
            );
        }
        other => {
            tracing::debug!(error = %other, "socket read failed");
            return End::Gone;
        }
    };
    let reply = envelope::error(None, RawValue::NULL, &error);
    let _ = tx.send(Frame::Text(reply)).await;
    End::Close(code, reason.into())
}

/// Drains the outbound queue into the socket, flushing when the queue runs dry so bursts of
/// replies go out in few syscalls.
pub(crate) async fn write_loop(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Frame>,
) {
    while let Some(frame) = rx.recv().await {
        let closing = matches!(frame, Frame::Close(..));
        let msg = match frame {
            Frame::Text(text) => Message::Text(text.into()),
            Frame::Close(code, reason) => Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from(reason),
            })),
            Frame::Ping => Message::Ping(Default::default()),
        };
        if sink.feed(msg).await.is_err() {
            return;
        }
        if (rx.is_empty() || closing) && sink.flush().await.is_err() {
            return;
        }
        if closing {
            break;
        }
    }
    let _ = sink.close().await;
}
