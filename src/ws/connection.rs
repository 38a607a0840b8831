//! One WebSocket connection, one task: read a frame, dispatch it, write the reply; write the
//! events other tasks queue for it; close on idle, on a missed sign-in grace period, on
//! falling behind, and on shutdown — also while a request is running.

use std::future::Future;
use std::net::SocketAddr;
use std::task::Poll;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use serde_json::value::RawValue;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tungstenite::error::CapacityError;

use crate::envelope;
use crate::error::Error;
use crate::events::{Frame, Outbox};
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

/// Why the socket's loop ended.
pub(crate) enum End {
    /// The peer closed or vanished: nothing more to send.
    Gone,
    /// We close, with a code and a reason the client can show.
    Close(u16, String),
}

pub async fn serve(mut socket: WebSocket, state: AppState, peer: SocketAddr) {
    let conn_id = state.next_conn_id();
    state.metrics.connections_open.inc();
    state.metrics.connections_total.inc();
    // Events from elsewhere arrive here; the socket's own task writes them (no writer task).
    let outbox = Outbox::new(state.config.outbound_queue);
    let mut conn = Conn::new(conn_id, peer, outbox.clone(), state.shutdown.child_token());
    let kick = conn.kick.clone();
    tracing::debug!(conn_id, %peer, "connected");

    let idle = state.config.idle_timeout;
    let grace = state.config.auth_grace;
    let mut last_seen = Instant::now();
    // Created once and re-armed only when they fire (the idle timer checks `last_seen`), so a
    // message costs no timer or waiter registration.
    let idle_timer = sleep_until(last_seen + idle);
    let grace_timer = sleep_until(last_seen + grace);
    let stop = kick.cancelled();
    let queued = outbox.ready();
    tokio::pin!(idle_timer, grace_timer, stop, queued);
    let mut signed_in = false;

    // Why `kick` fired: shutdown, or the socket fell behind on its events.
    let stopped = || {
        if state.shutdown.is_cancelled() {
            End::Close(close_code::GOING_AWAY, "server shutting down".into())
        } else {
            End::Close(
                close_code::TOO_SLOW,
                "too slow: the socket did not read its events and its queue filled up".into(),
            )
        }
    };

    let end = loop {
        let outcome = tokio::select! {
            biased;
            _ = &mut stop => break stopped(),
            _ = &mut idle_timer => {
                if last_seen + idle <= Instant::now() {
                    break End::Close(close_code::IDLE_TIMEOUT, format!(
                        "idle timeout: nothing received for {} s", idle.as_secs_f64()));
                }
                idle_timer.as_mut().reset(last_seen + idle);
                continue;
            }
            _ = &mut grace_timer, if !signed_in => break End::Close(close_code::AUTH_TIMEOUT, format!(
                "authentication timeout: not signed in within {} s", grace.as_secs_f64())),
            _ = &mut queued => {
                queued.set(outbox.ready());
                Box::pin(write(&mut socket, None, &outbox, &kick)).await
            }
            frame = socket.recv() => {
                last_seen = Instant::now();
                let reply = match frame {
                    None => break End::Gone,
                    // Boxed: the request's future (the largest method's state) lives only while a
                    // request runs, instead of inside every idle connection's future.
                    // A request that is still running at shutdown (a provisioner that hangs,
                    // a store that does not answer) is dropped: the socket closes with 1001 now
                    // rather than when, or if, the request ends.
                    Some(Ok(Message::Text(text))) => {
                        let request = Box::pin(handle_text(&state, &mut conn, &text));
                        match futures_util::future::select(request, stop.as_mut()).await {
                            futures_util::future::Either::Left((reply, _)) => reply,
                            futures_util::future::Either::Right(_) => break stopped(),
                        }
                    }
                    Some(Ok(Message::Binary(_))) => envelope::error(None, RawValue::NULL,
                        &Error::bad_request("Binary frames are not supported; send JSON in text frames.")),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) => break End::Gone,
                    Some(Err(err)) => break Box::pin(transport_error(&mut socket, err)).await,
                };
                // Boxed, like the request: the write's state lives only while it runs.
                let outcome = Box::pin(write(&mut socket, Some(Frame::Text(reply.into())), &outbox, &kick)).await;
                // Subscribing after the reply is written keeps catch-up events behind it.
                conn.subscribe_if_signed_in(&state);
                match (&conn.session, signed_in) {
                    (Some(_), _) => signed_in = true,
                    (None, true) => {
                        // Signed out: the grace period starts again.
                        signed_in = false;
                        grace_timer.as_mut().reset(last_seen + grace);
                    }
                    (None, false) => {}
                }
                outcome
            }
        };
        if let Err(end) = outcome {
            break end;
        }
    };

    conn.clear_session(&state);
    if let End::Close(code, reason) = end {
        tracing::debug!(conn_id, code, reason, "closing");
        let close = Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from(reason),
        }));
        Box::pin(close_handshake(&mut socket, close, &state)).await;
    }
    state.metrics.connections_open.dec();
    tracing::debug!(conn_id, "disconnected");
}

/// Sends our close frame, then reads until the peer answers it, for at most [`CLOSE_LINGER`]:
/// dropping a socket with unread input resets the connection, and the peer may lose the close
/// frame still in flight. At shutdown the frame is sent without waiting for the answer.
pub(crate) async fn close_handshake(socket: &mut WebSocket, close: Message, state: &AppState) {
    if tokio::time::timeout(CLOSE_FLUSH, socket.send(close))
        .await
        .map_or(true, |sent| sent.is_err())
        || state.shutdown.is_cancelled()
    {
        return;
    }
    let answered = async {
        loop {
            match socket.recv().await {
                Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
                // Unreadable input (it failed before): wait out the linger instead.
                None | Some(Err(_)) => std::future::pending::<()>().await,
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_LINGER, answered).await;
}

/// How long a closing socket waits for the peer's close frame.
const CLOSE_LINGER: Duration = Duration::from_millis(500);

/// Frames written per wake-up before the socket's loop looks at its input again.
const WRITE_BATCH: usize = 64;

/// How long a write may wait on a peer that stopped reading before the socket is dropped.
pub(crate) const WRITE_STALL: Duration = Duration::from_secs(30);

fn message(frame: Frame) -> Message {
    match frame {
        Frame::Text(text) => Message::Text(text),
        Frame::Close(code, reason) => Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from(reason),
        })),
        Frame::Ping => Message::Ping(Default::default()),
    }
}

/// Feeds `first` and whatever else is already queued (up to a batch), then flushes once: a
/// burst of events costs one syscall. `Ok(true)` when a close frame went out.
async fn write_batch(
    socket: &mut WebSocket,
    first: Option<Frame>,
    outbox: &Outbox,
) -> Result<bool, axum::Error> {
    let mut next = first.or_else(|| outbox.pop());
    let mut written = 0;
    while let Some(frame) = next.take() {
        let closing = matches!(frame, Frame::Close(..));
        socket.feed(message(frame)).await?;
        if closing {
            socket.flush().await?;
            return Ok(true);
        }
        written += 1;
        if written < WRITE_BATCH {
            next = outbox.pop();
        } else {
            // More may be queued: come back for it after looking at the input.
            outbox.rearm();
        }
    }
    if written > 0 {
        socket.flush().await?;
    }
    Ok(false)
}

/// Writes from the socket's own task. Almost every write completes at once; one that waits
/// (the peer's receive window is full) is abandoned when `stop` is cancelled (the peer fell
/// behind, or shutdown), or after [`WRITE_STALL`].
pub(crate) async fn write(
    socket: &mut WebSocket,
    first: Option<Frame>,
    outbox: &Outbox,
    stop: &CancellationToken,
) -> Result<(), End> {
    let mut batch = std::pin::pin!(write_batch(socket, first, outbox));
    let done = match std::future::poll_fn(|cx| Poll::Ready(batch.as_mut().poll(cx))).await {
        Poll::Ready(done) => done,
        Poll::Pending => tokio::select! {
            done = &mut batch => done,
            _ = stop.cancelled() => return Err(End::Gone),
            _ = tokio::time::sleep(WRITE_STALL) => return Err(End::Gone),
        },
    };
    match done {
        Ok(false) => Ok(()),
        Ok(true) | Err(_) => Err(End::Gone),
    }
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
    let method = rpc::Method::lookup(&request.namespace, &request.name);
    let result = rpc::dispatch(
        &mut ctx,
        method,
        &request.namespace,
        &request.name,
        request.args,
    )
    .await;
    state.metrics.rpc(
        method.map(|m| (m.index(), m.name())),
        result.as_ref().map_or_else(|e| e.code(), |_| 200),
    );
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
async fn transport_error(socket: &mut WebSocket, err: axum::Error) -> End {
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
    let _ = tokio::time::timeout(CLOSE_FLUSH, socket.send(Message::Text(reply.into()))).await;
    End::Close(code, reason.into())
}
