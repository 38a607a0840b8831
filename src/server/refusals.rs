//! Refused connections: the answer they get (a status line over plain HTTP, a close over TLS)
//! and the rate-limited warnings that count them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::admission::Refusal;
use crate::telemetry::RateLimitedLog;

/// At most one log line per this long for each kind of refused connection, with the count.
pub(super) const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// Refused plain-HTTP connections answered at once (the status line is written, then the
/// request is drained so that closing does not reset the connection before the client has
/// read the answer). Past this many, refused connections are only written to and closed.
pub(super) const REFUSERS: usize = 64;
/// How long a refused connection is drained before it is closed anyway.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// The rate-limited warnings of one listener.
pub(super) struct Refusals {
    full: RateLimitedLog,
    per_address: RateLimitedLog,
    pub(super) accept_failed: RateLimitedLog,
    /// `proxy_protocol`: a peer not in `trusted_proxies`, or no valid header in time.
    proxy_header: RateLimitedLog,
}

impl Refusals {
    pub(super) fn new() -> Self {
        Refusals {
            full: RateLimitedLog::new(REFUSAL_LOG_EVERY),
            per_address: RateLimitedLog::new(REFUSAL_LOG_EVERY),
            accept_failed: RateLimitedLog::new(REFUSAL_LOG_EVERY),
            proxy_header: RateLimitedLog::new(REFUSAL_LOG_EVERY),
        }
    }

    /// A `proxy_protocol` connection closed: from a peer not trusted, or without a valid
    /// PROXY header in time (`why`).
    pub(super) fn log_proxy(&self, site: &str, why: &dyn std::fmt::Display, peer: SocketAddr) {
        if let Some(refused) = self.proxy_header.hit() {
            tracing::warn!(
                listener = site,
                reason = "proxy_protocol",
                last_peer = %peer.ip(),
                last_reason = %why,
                refused,
                "connections closed without a PROXY header from a trusted proxy (at most one \
                 line per {} s, with the count since the last)",
                REFUSAL_LOG_EVERY.as_secs()
            );
        }
    }

    pub(super) fn log(&self, site: &str, refusal: Refusal, peer: SocketAddr) {
        let (log, limit) = match refusal {
            Refusal::Full { limit } => (&self.full, limit),
            Refusal::PerAddress { limit } => (&self.per_address, limit),
        };
        if let Some(refused) = log.hit() {
            tracing::warn!(
                listener = site,
                reason = refusal.label(),
                limit,
                last_peer = %crate::domain::address_key(peer.ip()),
                refused,
                "connections refused (at most one line per {} s, with the count since the last)",
                REFUSAL_LOG_EVERY.as_secs()
            );
        }
    }

    /// Reports what was counted since the last line once the period is over.
    pub(super) fn flush(&self, site: &str) {
        for (log, reason) in [
            (&self.full, "max_connections"),
            (&self.per_address, "max_connections_per_address"),
        ] {
            if let Some(refused) = log.flush() {
                tracing::warn!(listener = site, reason, refused, "connections refused");
            }
        }
        if let Some(failed) = self.accept_failed.flush() {
            tracing::warn!(listener = site, failed, "accept failed");
        }
        if let Some(refused) = self.proxy_header.flush() {
            tracing::warn!(
                listener = site,
                reason = "proxy_protocol",
                refused,
                "connections closed without a PROXY header from a trusted proxy"
            );
        }
    }
}

/// Answers a refused connection. Over plain HTTP: the status line and a body saying why,
/// written before the request is read. Over TLS: a close, because answering would first cost
/// a handshake for each refused connection, which is what a flood is after.
pub(super) fn refuse(mut tcp: TcpStream, refusal: Refusal, tls: bool, refusers: &Arc<Semaphore>) {
    if tls {
        return;
    }
    let answer = refusal.http_response();
    let Ok(permit) = refusers.clone().try_acquire_owned() else {
        let _ = tcp.try_write(answer.as_bytes());
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            tcp.write_all(answer.as_bytes()).await?;
            tcp.shutdown().await?;
            // Read what the client sent until it closes: closing with unread input would
            // reset the connection, and the client could lose the answer.
            let mut buf = [0u8; 2048];
            while tcp.read(&mut buf).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
    });
}
