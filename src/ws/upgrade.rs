//! The WebSocket handshake of every poolgate socket, and the guard that keeps a socket's
//! messages within the limit of the moment: small until the socket has signed in
//! (`max_message_bytes_pre_auth`), `max_message_bytes` after.
//!
//! tungstenite fixes its message and frame ceilings when the socket is built, and reserves a
//! frame's whole announced length as soon as its header arrives: with the signed-in ceiling
//! from the start, an unauthenticated socket announcing 4 MiB made the server hold 4 MiB for
//! it. So the handshake is ours (axum's hides the stream it builds), and the upgraded stream
//! is wrapped in a [`Guarded`] reader that reads the frame headers as their bytes arrive —
//! before tungstenite sees them — and fails the read when a data message would pass the
//! current limit ([`TooBig`]; the socket loop closes with 1009), or when a control frame (ping,
//! pong, close) is longer than 125 bytes or fragmented, which RFC 6455 §5.5 forbids
//! ([`BadControl`]; closed with 1002) — tungstenite would otherwise reserve and read up to
//! `max_message_bytes` for one announced ping, signed in or not. The socket loop raises the
//! limit after a sign-in and lowers it again at a sign-out.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_util::task::TaskTracker;
use tungstenite::protocol::{Role, WebSocketConfig};

/// An upgraded poolgate socket.
pub type Socket = WebSocketStream<Guarded<TokioIo<Upgraded>>>;

/// A valid WebSocket handshake request (HTTP/1.1, version 13), ready to be accepted.
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// Why a request is no WebSocket handshake (axum's answers, which clients may know).
#[derive(Debug)]
pub struct NotUpgrade(StatusCode, &'static str);

impl IntoResponse for NotUpgrade {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

fn header_is(headers: &HeaderMap, name: header::HeaderName, value: &str) -> bool {
    headers
        .get(name)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get(name).is_some_and(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = NotUpgrade;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, NotUpgrade> {
        if parts.method != Method::GET {
            return Err(NotUpgrade(
                StatusCode::METHOD_NOT_ALLOWED,
                "Request method must be `GET`",
            ));
        }
        if !header_has(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(NotUpgrade(
                StatusCode::BAD_REQUEST,
                "Connection header did not include 'upgrade'",
            ));
        }
        if !header_is(&parts.headers, header::UPGRADE, "websocket") {
            return Err(NotUpgrade(
                StatusCode::BAD_REQUEST,
                "`Upgrade` header did not include 'websocket'",
            ));
        }
        if !header_is(&parts.headers, header::SEC_WEBSOCKET_VERSION, "13") {
            return Err(NotUpgrade(
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Version` header did not include '13'",
            ));
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or(NotUpgrade(
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Key` header missing",
            ))?;
        let on_upgrade = parts.extensions.remove::<OnUpgrade>().ok_or(NotUpgrade(
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket request couldn't be upgraded since no upgrade state was present",
        ))?;
        Ok(Upgrade { key, on_upgrade })
    }
}

impl Upgrade {
    /// The 101 answer; once it is written, the socket (read through a [`Guarded`] stream with
    /// `limit`) is given to `open`, whose future runs as a task of its own on `tracker`. That
    /// task holds only `open`'s future: the handshake's state (the pending upgrade, the
    /// settings, `open` itself) ends with the short task that waits for the upgrade, instead of
    /// staying in every idle socket's memory.
    pub fn accept<F>(
        self,
        config: WebSocketConfig,
        limit: Arc<MessageLimit>,
        tracker: &TaskTracker,
        open: impl FnOnce(Socket) -> F + Send + 'static,
    ) -> Response
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        let serving = tracker.clone();
        tracker.spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let stream = Guarded::new(TokioIo::new(upgraded), limit);
            let socket = WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await;
            serving.spawn(open(socket));
        });
        let accept = tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, accept)
            .body(Body::empty())
            .expect("a valid 101 response")
    }
}

/// The largest data message a socket may send now; the socket loop changes it.
#[derive(Debug)]
pub struct MessageLimit(AtomicUsize);

impl MessageLimit {
    pub fn new(bytes: usize) -> Arc<Self> {
        Arc::new(MessageLimit(AtomicUsize::new(bytes)))
    }

    pub fn set(&self, bytes: usize) {
        self.0.store(bytes, Ordering::Relaxed);
    }

    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// A message announced longer than the limit of the moment: the read that met its header
/// fails with this (inside an `io::Error`), before its payload is buffered.
#[derive(Debug, thiserror::Error)]
#[error("message of at least {size} bytes over the limit of {limit} bytes")]
pub struct TooBig {
    pub size: u64,
    pub limit: usize,
}

impl TooBig {
    /// The limit, if `err` is a refusal of ours.
    pub fn find(err: &io::Error) -> Option<&TooBig> {
        err.get_ref().and_then(|e| e.downcast_ref::<TooBig>())
    }
}

/// A control frame (ping, pong, close) announced longer than 125 bytes or without FIN: RFC 6455
/// §5.5 forbids both, so the read that met its header fails with this, before and after sign-in,
/// and nothing of its payload is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid control frame (opcode {opcode:#x}, {len} bytes{}): at most 125 bytes, unfragmented",
    if *fin { "" } else { ", not final" }
)]
pub struct BadControl {
    pub opcode: u8,
    pub len: u64,
    pub fin: bool,
}

impl BadControl {
    /// The frame, if `err` is this refusal.
    pub fn find(err: &io::Error) -> Option<&BadControl> {
        err.get_ref().and_then(|e| e.downcast_ref::<BadControl>())
    }
}

/// Longest payload of a control frame (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// Why [`FrameScan::scan`] stopped at a frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// A data message over the limit of the moment.
    TooBig { size: u64, limit: usize },
    /// A control frame RFC 6455 forbids.
    BadControl(BadControl),
}

impl Refusal {
    fn error(self) -> io::Error {
        match self {
            Refusal::TooBig { size, limit } => {
                io::Error::new(io::ErrorKind::InvalidData, TooBig { size, limit })
            }
            Refusal::BadControl(bad) => io::Error::new(io::ErrorKind::InvalidData, bad),
        }
    }
}

/// Where the reader is in the client's frames.
#[derive(Debug, Default)]
struct FrameScan {
    /// The header being read (at most 14 bytes: 2, 8 of length, 4 of mask).
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// Length of the current data message so far (its fragments added up).
    message: u64,
}

impl FrameScan {
    /// Header bytes needed once the first two are known.
    fn header_len(&self) -> usize {
        header_len(self.header[1])
    }

    fn payload_len(&self) -> u64 {
        match self.header[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => u64::from_be_bytes(self.header[2..10].try_into().expect("8 bytes")),
            n => u64::from(n),
        }
    }

    /// Follows `bytes`; `Err((at, why))` when a data frame's header takes its message over
    /// `limit`, or a control frame's header is one RFC 6455 forbids: `at` is where that header
    /// begins in `bytes` (0 if it began before them).
    fn scan(&mut self, bytes: &[u8], limit: usize) -> Result<(), (usize, Refusal)> {
        let mut i = 0;
        let mut header_start = 0;
        while i < bytes.len() {
            if self.payload_left > 0 {
                let skip = self.payload_left.min((bytes.len() - i) as u64);
                self.payload_left -= skip;
                i += skip as usize;
                continue;
            }
            if self.have == 0 {
                header_start = i;
                // The usual case: the whole header is in this read, and is taken at once.
                let rest = &bytes[i..];
                if let Some(&second) = rest.get(1)
                    && let Some(header) = rest.get(..header_len(second))
                {
                    self.header[..header.len()].copy_from_slice(header);
                    self.have = header.len();
                    i += header.len();
                }
            }
            if self.have < 2 || self.have < self.header_len() {
                // A header split between reads: a byte at a time.
                self.header[self.have] = bytes[i];
                self.have += 1;
                i += 1;
                if self.have < 2 || self.have < self.header_len() {
                    continue;
                }
            }
            let len = self.payload_len();
            let opcode = self.header[0] & 0x0f;
            if opcode < 8 {
                // A data frame: a continuation adds to its message, text or binary starts one.
                self.message = if opcode == 0 {
                    self.message.saturating_add(len)
                } else {
                    len
                };
                if self.message > limit as u64 {
                    let size = self.message;
                    return Err((header_start, Refusal::TooBig { size, limit }));
                }
            } else {
                // A control frame: checked at its header, so a ping announcing megabytes is
                // refused before anything reserves or reads them (tungstenite's own check
                // comes only once the whole frame is in).
                let fin = self.header[0] & 0x80 != 0;
                if len > MAX_CONTROL_PAYLOAD || !fin {
                    let bad = BadControl { opcode, len, fin };
                    return Err((header_start, Refusal::BadControl(bad)));
                }
            }
            self.have = 0;
            self.payload_left = len;
        }
        Ok(())
    }
}

/// A frame header's length (2 to 14 bytes) from its second byte: the length's form, the mask.
fn header_len(second: u8) -> usize {
    let ext = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

/// The upgraded stream, read through a [`FrameScan`] against a [`MessageLimit`].
pub struct Guarded<S> {
    inner: S,
    limit: Arc<MessageLimit>,
    scan: FrameScan,
    /// Set once a message over the limit or a forbidden control frame was met: every read
    /// fails from then on.
    refused: Option<Refusal>,
}

impl<S> Guarded<S> {
    fn new(inner: S, limit: Arc<MessageLimit>) -> Self {
        Guarded {
            inner,
            limit,
            scan: FrameScan::default(),
            refused: None,
        }
    }

    /// The limit this stream reads against.
    pub fn limit(&self) -> &MessageLimit {
        &self.limit
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(refused) = this.refused {
            return Poll::Ready(Err(refused.error()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let limit = this.limit.get();
        if let Err((at, why)) = this.scan.scan(&buf.filled()[before..], limit) {
            this.refused = Some(why);
            if at == 0 {
                buf.set_filled(before);
                return Poll::Ready(Err(why.error()));
            }
            // The frames before it are read as usual; the next read fails.
            buf.set_filled(before + at);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame header with `opcode` and payload length `len`.
    fn header(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
        let mut h = vec![(u8::from(fin) << 7) | opcode];
        match len {
            0..=125 => h.push(0x80 | len as u8),
            126..=0xffff => {
                h.push(0x80 | 126);
                h.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                h.push(0x80 | 127);
                h.extend_from_slice(&len.to_be_bytes());
            }
        }
        h.extend_from_slice(&[1, 2, 3, 4]);
        h
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_at_its_header_wherever_the_bytes_split() {
        let mut bytes = header(true, 1, 10);
        bytes.extend_from_slice(&[b'x'; 10]);
        bytes.extend(header(true, 9, 0)); // a ping is no message
        let big_at = bytes.len();
        bytes.extend(header(true, 1, 70_000));
        for split in 0..=bytes.len() {
            let mut scan = FrameScan::default();
            let first = scan.scan(&bytes[..split], 65_536);
            let second = scan.scan(&bytes[split..], 65_536);
            let found = match (first, second) {
                (Err((at, why)), _) => (at, why),
                (Ok(()), Err((at, why))) => (split + at, why),
                (Ok(()), Ok(())) => panic!("not refused (split {split})"),
            };
            // The header began before the split: the second chunk is refused from its start.
            let expected = if split > big_at && split < bytes.len() {
                split
            } else {
                big_at
            };
            let why = Refusal::TooBig {
                size: 70_000,
                limit: 65_536,
            };
            assert_eq!(found, (expected, why), "split {split}");
        }
    }

    #[test]
    fn fragments_add_up_and_a_raised_limit_lets_them_through() {
        let mut bytes = header(false, 1, 40_000);
        bytes.extend(vec![0; 40_000]);
        bytes.extend(header(true, 0, 40_000));
        let mut scan = FrameScan::default();
        let why = Refusal::TooBig {
            size: 80_000,
            limit: 65_536,
        };
        assert_eq!(scan.scan(&bytes, 65_536), Err((40_004 + 4, why)));
        let mut scan = FrameScan::default();
        assert_eq!(scan.scan(&bytes, 4 << 20), Ok(()));
        assert_eq!(scan.payload_left, 40_000);
    }

    #[test]
    fn a_control_frame_over_125_bytes_or_fragmented_is_refused_at_its_header_at_any_limit() {
        for opcode in [8, 9, 10] {
            for (fin, len, refused) in [
                (true, 0, false),
                (true, 125, false),
                (true, 126, true),
                (true, (4 << 20) - 1, true),
                (false, 0, true),
            ] {
                let mut bytes = header(true, 1, 3);
                bytes.extend_from_slice(b"abc");
                let at = bytes.len();
                bytes.extend(header(fin, opcode, len));
                for limit in [65_536, 4 << 20] {
                    let mut scan = FrameScan::default();
                    let got = scan.scan(&bytes, limit);
                    let bad = BadControl { opcode, len, fin };
                    let want = if refused {
                        Err((at, Refusal::BadControl(bad)))
                    } else {
                        Ok(())
                    };
                    assert_eq!(got, want, "opcode {opcode} fin {fin} len {len}");
                }
            }
        }
    }
}
