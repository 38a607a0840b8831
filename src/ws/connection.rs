//! The one socket loop every poolgate WebSocket runs — the RPC socket at `/` and the v2 status
//! socket alike — driven by a [`Handler`] that says what the two differ in.
//!
//! One socket, one task: read a frame and hand it to the handler, write its reply; write the
//! events other tasks queue for the socket; ping, if the socket's [`Policy`] says so. The loop
//! alone owns the close codes and when they are sent: on idle, on a missed sign-in grace
//! period, on credentials that no longer hold, on falling behind (a full outbound queue), on
//! transport errors (frames over the limit, bad UTF-8, protocol errors), and on shutdown —
//! also while a request is running.
//!
//! The loop is generic over its handler, so each socket kind gets its own monomorphised loop:
//! no `dyn` call or boxed handler per frame. The future that an idle socket is parked in is
//! what each held connection costs in memory (bench/run.sh measures it), so what a request or
//! a write needs is boxed while it runs instead of living in that future.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::future::Either;
use futures_util::{SinkExt, StreamExt};
use tokio::time::{Instant, sleep_until};
use tungstenite::error::CapacityError;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, Utf8Bytes};

use crate::config::Config;
use crate::error::Error;
use crate::events::{Frame, Outbox};
use crate::state::AppState;

use super::upgrade::{BadControl, Socket as WebSocket, TooBig};

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

/// What one kind of socket does with what the loop reads; everything else is the loop's.
pub trait Handler: Send {
    /// Names the socket kind in logs.
    const KIND: &'static str;

    /// The socket kind's timing and size rules.
    fn policy(config: &Config) -> Policy;

    /// A text frame within [`Policy::max_frame`]; resolves to the reply to write, if any. The
    /// loop stops waiting for it at shutdown (the socket then closes with 1001).
    fn text(&mut self, state: &AppState, text: &str)
    -> impl Future<Output = Option<String>> + Send;

    /// How a frame the loop refuses is answered before the socket goes on (a binary frame, a
    /// text frame over `max_frame`) or closes (bad UTF-8, over `max_message`); `None`: it is
    /// not answered.
    fn refusal(&self, error: &Error) -> Option<String>;

    /// After a reply was written. (The RPC socket subscribes a new sign-in to events here, so
    /// that the catch-up events follow the sign-in's reply.)
    fn replied(&mut self, _state: &AppState) {}

    /// Whether the socket is signed in: while it is not, the [`Policy::grace`] period runs,
    /// and it starts again when the socket signs out. Asked after each reply.
    fn signed_in(&self) -> bool {
        true
    }

    /// Whether the socket's credentials still hold; asked every [`Policy::ping`], and the
    /// socket is closed with 4003 when they do not.
    fn alive(&self) -> bool {
        true
    }

    /// The socket is ending: undo what the handler registered (sessions, event subscriptions).
    fn close(&mut self, state: &AppState);
}

/// The timing and size rules of one kind of socket.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Closed with 4000 when nothing at all (not even a ping or pong) arrived for this long.
    pub idle: Duration,
    /// Closed with 4001 unless signed in within this long of connecting or of signing out;
    /// `None`: the socket is signed in before it opens.
    pub grace: Option<Duration>,
    /// The server pings this often (a client's pong counts as activity) and checks
    /// [`Handler::alive`]; `None`: never.
    pub ping: Option<Duration>,
    /// Text frames longer than this are refused with a 413 [`Handler::refusal`] and the
    /// socket stays open.
    pub max_frame: usize,
    /// The transport's ceiling for a message: longer ones close the socket with 1009.
    pub max_message: usize,
    /// The ceiling while the socket is not signed in (see [`Handler::signed_in`]): a longer
    /// message is refused at its header, before it is buffered, and closes the socket (1009).
    pub max_message_before_auth: usize,
}

impl Policy {
    /// The message ceiling of a socket that is signed in, or not.
    fn message_limit(&self, signed_in: bool) -> usize {
        if signed_in {
            self.max_message
        } else {
            self.max_message_before_auth.min(self.max_message)
        }
    }
}

/// What the loop gives a handler when its socket opens.
pub struct Link {
    pub conn_id: u64,
    /// The socket's outbound queue: events queued here are written by the loop, and
    /// [`Outbox::kick`] makes the socket close as too slow (4002).
    pub outbox: Arc<Outbox>,
}

/// How long a closing socket may take to flush its last frames.
const CLOSE_FLUSH: Duration = Duration::from_secs(5);

/// How long a closing socket waits for the peer's close frame.
const CLOSE_LINGER: Duration = Duration::from_millis(500);

/// Frames written per wake-up before the socket's loop looks at its input again.
const WRITE_BATCH: usize = 64;

/// How long a write may wait on a peer that stopped reading before the socket is dropped.
const WRITE_STALL: Duration = Duration::from_secs(30);

/// Why the socket's loop ended.
enum End {
    /// The peer closed or vanished: nothing more to send.
    Gone,
    /// We close, with a code and a reason the client can show.
    Close(u16, String),
}

/// Runs one upgraded socket until it ends. `open` builds the handler once the socket has its
/// id, queue and kick token.
///
/// The returned future is what every idle socket costs, so it is built to be small: not an
/// `async fn` (whose arguments rustc stores twice, once as arguments and once as locals), and
/// the set-up runs before it is made, so it holds only what the loop uses (not `open`, nor a
/// second copy of the policy).
pub fn serve<H: Handler>(
    socket: WebSocket,
    state: AppState,
    open: impl FnOnce(&AppState, Link) -> H,
) -> impl Future<Output = ()> {
    let policy = H::policy(&state.config);
    let conn_id = state.next_conn_id();
    state.metrics.connections_open.inc();
    state.metrics.connections_total.inc();
    // Events from elsewhere arrive here; the socket's own task writes them (no writer task).
    let outbox = Outbox::new(state.config.outbound_queue);
    state.sockets.open(conn_id, &outbox, &state.shutdown);
    let handler = open(
        &state,
        Link {
            conn_id,
            outbox: outbox.clone(),
        },
    );
    socket
        .get_ref()
        .limit()
        .set(policy.message_limit(handler.signed_in()));
    let clock = Clock::new(&policy, Instant::now());
    run(socket, state, handler, outbox, clock, conn_id)
}

/// The socket's loop, from its first read to the close handshake (see [`serve`]).
// Not an `async fn`, for the reason given at `serve`.
#[allow(clippy::manual_async_fn)]
fn run<H: Handler>(
    mut socket: WebSocket,
    state: AppState,
    mut handler: H,
    outbox: Arc<Outbox>,
    mut clock: Clock,
    conn_id: u64,
) -> impl Future<Output = ()> {
    async move {
        // One timer serves every deadline (idle, grace, ping). It is re-armed only when it fires
        // or a deadline moves earlier (a sign-out), so a message costs no timer or waiter
        // registration: the idle deadline moves with `last_seen` and is checked when it fires.
        // The policy is read from the config when needed rather than kept in this future.
        let policy = || H::policy(&state.config);
        let timer = sleep_until(clock.next(&policy()));
        tokio::pin!(timer);

        let end = loop {
            let outcome = tokio::select! {
                biased;
                _ = &mut timer => {
                    // The policy is not kept over the write below (every socket's future has room
                    // for what any of its waits holds).
                    let due = {
                        let policy = policy();
                        let due = clock.fired(&policy, Instant::now(), || handler.alive());
                        timer.as_mut().reset(clock.next(&policy));
                        due
                    };
                    match due {
                        Err(end) => break end,
                        // An empty text frame would confuse clients; a ping is answered by any stack.
                        Ok(true) => Box::pin(write(&mut socket, Some(Frame::Ping), &outbox)).await,
                        Ok(false) => continue,
                    }
                }
                // After the timer, so that a flood of events cannot hold off the idle and ping
                // deadlines. Events, and the kick that stops the socket (it fell behind, or shutdown:
                // `OpenSockets`) come as wake-ups of the outbound queue.
                _ = outbox.ready() => {
                    if outbox.kicked() {
                        break stopped(&state);
                    }
                    Box::pin(write(&mut socket, None, &outbox)).await
                }
                frame = socket.next() => {
                    clock.last_seen = Instant::now();
                    let max_frame = policy().max_frame;
                    let reply = match frame {
                        None => break End::Gone,
                        Some(Ok(Message::Text(text))) if text.len() > max_frame => {
                            handler.refusal(&Error::FrameTooLarge { limit: max_frame })
                        }
                        // Boxed: the request's future (the largest method's state) lives only while a
                        // request runs, instead of inside every idle connection's future.
                        // A request that is still running at shutdown (a provisioner that hangs,
                        // a store that does not answer) is dropped: the socket closes with 1001 now
                        // rather than when, or if, the request ends.
                        Some(Ok(Message::Text(text))) => {
                            let request = Box::pin(handler.text(&state, &text));
                            match futures_util::future::select(request, outbox.stopped()).await {
                                Either::Left((reply, _)) => reply,
                                Either::Right(_) => break stopped(&state),
                            }
                        }
                        Some(Ok(Message::Binary(_))) => handler.refusal(&Error::bad_request(
                            "Binary frames are not supported; send JSON in text frames.",
                        )),
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                        Some(Ok(Message::Close(_))) => break End::Gone,
                        Some(Err(err)) => break Box::pin(last_words(&mut socket, transport_error(err, &handler))).await,
                    };
                    let Some(reply) = reply else { continue };
                    // Boxed, like the request: the write's state lives only while it runs.
                    let outcome = Box::pin(write(&mut socket, Some(Frame::Text(reply.into())), &outbox)).await;
                    handler.replied(&state);
                    let signed_in = handler.signed_in();
                    // Read before the next frame is: a sign-in raises the limit, a sign-out lowers it.
                    let policy = policy();
                    socket.get_ref().limit().set(policy.message_limit(signed_in));
                    if clock.signed_in(&policy, signed_in) {
                        timer.as_mut().reset(clock.next(&policy));
                    }
                    outcome
                }
            };
            if let Err(end) = outcome {
                break end;
            }
        };

        handler.close(&state);
        state.sockets.close(conn_id);
        Box::pin(finish(&mut socket, end, &state, conn_id, H::KIND)).await;
    }
}

/// The socket's loop ended and its handler was told: the close handshake runs when we close,
/// and the socket is counted out.
async fn finish(socket: &mut WebSocket, end: End, state: &AppState, conn_id: u64, kind: &str) {
    if let End::Close(code, reason) = end {
        tracing::debug!(conn_id, code, reason, "closing");
        let close = Message::Close(Some(CloseFrame {
            code: code.into(),
            reason: Utf8Bytes::from(reason),
        }));
        Box::pin(close_handshake(socket, close, state)).await;
    }
    state.metrics.connections_open.dec();
    tracing::debug!(conn_id, socket = kind, "disconnected");
}

/// After a frame that could not be read (too big, not UTF-8, a protocol error, a reset): the
/// error's last reply is sent if it has one, and the loop ends as the error says.
async fn last_words(socket: &mut WebSocket, (end, reply): (End, Option<String>)) -> End {
    if let Some(reply) = reply {
        Box::pin(send_last(socket, reply)).await;
    }
    end
}

/// Sends a last text frame before closing, for at most [`CLOSE_FLUSH`].
async fn send_last(socket: &mut WebSocket, text: String) {
    let _ = tokio::time::timeout(CLOSE_FLUSH, socket.send(Message::Text(text.into()))).await;
}

/// Why the loop was stopped: shutdown, or the socket fell behind on its events (a kick).
fn stopped(state: &AppState) -> End {
    if state.shutdown.is_cancelled() {
        End::Close(close_code::GOING_AWAY, "server shutting down".into())
    } else {
        End::Close(
            close_code::TOO_SLOW,
            "too slow: the socket did not read its events and its queue filled up".into(),
        )
    }
}

/// The socket's deadlines, all served by one timer. (Its rules, the [`Policy`], are passed
/// in: every idle socket holds this, and the policy is the config's.)
struct Clock {
    /// When the last frame of any kind arrived.
    last_seen: Instant,
    /// Closed unless signed in by then; `None` while signed in (or without a grace period).
    grace_ends: Option<Instant>,
    next_ping: Option<Instant>,
}

impl Clock {
    fn new(policy: &Policy, now: Instant) -> Self {
        Clock {
            last_seen: now,
            grace_ends: policy.grace.map(|grace| now + grace),
            next_ping: policy.ping.map(|every| now + every),
        }
    }

    /// The earliest deadline.
    fn next(&self, policy: &Policy) -> Instant {
        [self.grace_ends, self.next_ping]
            .into_iter()
            .flatten()
            .fold(self.last_seen + policy.idle, Instant::min)
    }

    /// The timer fired at `now`: the reason to close, or whether to ping now. Credentials are
    /// checked at ping time, before the idle rule; the idle rule before the grace rule.
    fn fired(
        &mut self,
        policy: &Policy,
        now: Instant,
        alive: impl FnOnce() -> bool,
    ) -> Result<bool, End> {
        let ping = self.next_ping.is_some_and(|at| at <= now);
        if ping && !alive() {
            return Err(End::Close(
                close_code::TOKEN_GONE,
                "token expired or revoked".into(),
            ));
        }
        if self.last_seen + policy.idle <= now {
            return Err(End::Close(
                close_code::IDLE_TIMEOUT,
                format!(
                    "idle timeout: nothing received for {} s",
                    policy.idle.as_secs_f64()
                ),
            ));
        }
        if let (Some(at), Some(grace)) = (self.grace_ends, policy.grace)
            && at <= now
        {
            return Err(End::Close(
                close_code::AUTH_TIMEOUT,
                format!(
                    "authentication timeout: not signed in within {} s",
                    grace.as_secs_f64()
                ),
            ));
        }
        if ping {
            self.next_ping = policy.ping.map(|every| now + every);
        }
        Ok(ping)
    }

    /// Follows the handler's sign-in state after a reply; a sign-out starts the grace period
    /// again from the frame that caused it. True when a deadline moved earlier (re-arm).
    fn signed_in(&mut self, policy: &Policy, signed_in: bool) -> bool {
        let Some(grace) = policy.grace else {
            return false;
        };
        match (signed_in, self.grace_ends) {
            (true, Some(_)) => {
                self.grace_ends = None;
                false
            }
            (false, None) => {
                self.grace_ends = Some(self.last_seen + grace);
                true
            }
            _ => false,
        }
    }
}

/// Sends our close frame, then reads until the peer answers it, for at most [`CLOSE_LINGER`]:
/// dropping a socket with unread input resets the connection, and the peer may lose the close
/// frame still in flight. At shutdown the frame is sent without waiting for the answer.
async fn close_handshake(socket: &mut WebSocket, close: Message, state: &AppState) {
    if tokio::time::timeout(CLOSE_FLUSH, socket.send(close))
        .await
        .map_or(true, |sent| sent.is_err())
        || state.shutdown.is_cancelled()
    {
        return;
    }
    let answered = async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
                // Unreadable input (it failed before): wait out the linger instead.
                None | Some(Err(_)) => std::future::pending::<()>().await,
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_LINGER, answered).await;
}

/// An event's or a reply's text as tungstenite's, without checking it again: a
/// [`crate::events::Text`] is made only from a `String` or a `&'static str` (its field is
/// private), so it is UTF-8. The check this skips read every byte of every reply again (a
/// `pools` listing: ~400 of the ~12 000 instructions of a request; docs/benchmarks.md).
fn utf8(text: crate::events::Text) -> Utf8Bytes {
    let bytes = text.into_bytes();
    debug_assert!(std::str::from_utf8(&bytes).is_ok());
    // SAFETY: `Text` is UTF-8 by construction (above); `from_bytes_unchecked` needs only that.
    unsafe { Utf8Bytes::from_bytes_unchecked(bytes) }
}

fn message(frame: Frame) -> Message {
    match frame {
        Frame::Text(text) => Message::Text(utf8(text)),
        Frame::Close(code, reason) => Message::Close(Some(CloseFrame {
            code: code.into(),
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
) -> Result<bool, tungstenite::Error> {
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
/// (the peer's receive window is full) is abandoned when the socket is kicked (the peer fell
/// behind, or shutdown), or after [`WRITE_STALL`].
async fn write(socket: &mut WebSocket, first: Option<Frame>, outbox: &Outbox) -> Result<(), End> {
    let mut batch = std::pin::pin!(write_batch(socket, first, outbox));
    let done = match std::future::poll_fn(|cx| Poll::Ready(batch.as_mut().poll(cx))).await {
        Poll::Ready(done) => done,
        Poll::Pending => {
            tokio::select! {
                done = &mut batch => done,
                _ = outbox.stopped() => return Err(End::Gone),
                _ = tokio::time::sleep(WRITE_STALL) => return Err(End::Gone),
            }
        }
    };
    match done {
        Ok(false) => Ok(()),
        Ok(true) | Err(_) => Err(End::Gone),
    }
}

/// A read error ends the stream (tungstenite fuses it): how to close, and what the handler
/// answers first to say why.
fn transport_error(err: tungstenite::Error, handler: &impl Handler) -> (End, Option<String>) {
    let (code, reason, error) = match err {
        tungstenite::Error::Io(e) if TooBig::find(&e).is_some() => {
            let limit = TooBig::find(&e).map_or(0, |t| t.limit);
            tracing::debug!(error = %e, "message over the limit refused at its header");
            let end = End::Close(
                close_code::TOO_BIG,
                if handler.signed_in() {
                    format!("message exceeds the limit of {limit} bytes")
                } else {
                    format!("message exceeds the limit of {limit} bytes before sign-in")
                },
            );
            return (end, handler.refusal(&Error::FrameTooLarge { limit }));
        }
        tungstenite::Error::Io(e) if BadControl::find(&e).is_some() => {
            tracing::debug!(error = %e, "invalid control frame refused at its header");
            let end = End::Close(
                close_code::PROTOCOL_ERROR,
                "websocket protocol error: a control frame must be at most 125 bytes and \
                 unfragmented"
                    .into(),
            );
            return (end, None);
        }
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
            let end = End::Close(
                close_code::PROTOCOL_ERROR,
                "websocket protocol error".into(),
            );
            return (end, None);
        }
        other => {
            tracing::debug!(error = %other, "socket read failed");
            return (End::Gone, None);
        }
    };
    (End::Close(code, reason.into()), handler.refusal(&error))
}
