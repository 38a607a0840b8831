//! The audit log: every sign-in and refusal, connection, release, revocation and admin action,
//! recorded once where it happens ([`AuditLog::record`]), as one JSON line
//! ([`crate::domain::AuditEvent`]) that goes two ways:
//!
//! - at once, to the log on the `poolgate::audit` target (INFO), so journald and log shippers
//!   have it without the store;
//! - through a bounded queue to the state store, where it is kept for `audit_retention` and
//!   queried by `admin_audit` (`poolgate admin audit`). A sign-in never waits for the store:
//!   a full queue or a failing store costs the stored copy of an event (counted, and warned
//!   about at most once per period), never the request.
//!
//! Time is the audit's [`Clock`]: the wall clock, unless a test set it.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::domain::audit::new_id;
pub use crate::domain::clock::Clock;
use crate::domain::{AuditEvent, AuditQuery};
use crate::store::{Store, StoreResult};
use crate::telemetry::RateLimitedLog;

/// Events waiting for the store; past it, new ones reach only the log.
pub const QUEUE: usize = 4096;

/// How often a store that cannot take events is warned about.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Longest a query waits for the events queued before it to be stored.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// How a request reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A thin client's RPC socket.
    Ws,
    /// A browser's RPC socket (the portal: the upgrade carried an `Origin`).
    Portal,
    Rest,
    /// The server itself (a lease that ran out).
    Server,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Portal => "portal",
            Transport::Rest => "rest",
            Transport::Server => "server",
        }
    }
}

/// One event as a recorder describes it; [`AuditLog::record`] adds the id, time and instance.
#[derive(Debug, Clone)]
pub struct Entry {
    pub event: &'static str,
    pub user: Option<String>,
    pub actor: Option<String>,
    pub ip: Option<IpAddr>,
    pub transport: Transport,
    pub method: Option<String>,
    /// `ok`, `refused` or `error`.
    pub outcome: &'static str,
    pub code: Option<u16>,
    pub pool: Option<String>,
    pub detail: Option<String>,
}

impl Entry {
    /// An event that went through (`outcome` `ok`).
    pub fn new(event: &'static str, transport: Transport) -> Self {
        Entry {
            event,
            user: None,
            actor: None,
            ip: None,
            transport,
            method: None,
            outcome: "ok",
            code: None,
            pool: None,
            detail: None,
        }
    }

    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ip = Some(ip);
        self
    }

    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.method = Some(method.into());
        self
    }

    pub fn pool(mut self, pool: impl Into<String>) -> Self {
        self.pool = Some(pool.into());
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Answered with an error: `refused` for what the client got wrong or may not do (4xx),
    /// `error` for the server's own failure (5xx).
    pub fn failed(mut self, code: u16, message: impl Into<String>) -> Self {
        self.outcome = if code >= 500 { "error" } else { "refused" };
        self.code = Some(code);
        self.detail = Some(message.into());
        self
    }
}

enum Job {
    Store(Box<AuditEvent>),
    /// Answered once every event queued before it was handed to the store.
    Flush(oneshot::Sender<()>),
}

/// The audit log of this instance (see the module docs).
pub struct AuditLog {
    queue: mpsc::Sender<Job>,
    store: Arc<dyn Store>,
    instance: String,
    retention: Duration,
    /// The server's clock (shared with the pools' time-driven rules).
    pub clock: Arc<Clock>,
    /// Events that reached the log but not the store (a full queue or a store error).
    dropped: Arc<AtomicU64>,
    /// The ids' tails: this instance's random high bits, then a count, so that the events
    /// one instance records in one millisecond keep their order.
    salt: u64,
    seq: AtomicU64,
    /// Refused sign-ins of code 400 and 429, folded (see [`AuditLog::record`]).
    folds: [RateLimitedLog; 2],
    /// When each (user, pool) was last recorded as given a machine's connection data, and
    /// which machine (see [`AuditLog::first_connect`]).
    connects: dashmap::DashMap<(Uuid, Uuid), (Uuid, u64), foldhash::fast::RandomState>,
}

/// A client asking again for the same machine's connection data within this long is not a
/// new `connect` event.
pub const CONNECT_EVERY: Duration = Duration::from_secs(60);

/// (user, pool) pairs remembered for [`AuditLog::first_connect`] before the memory is cleared.
const CONNECTS_MAX: usize = 100_000;

/// At most one event per this long for each kind of refusal that is folded.
pub const FOLD_EVERY: Duration = Duration::from_secs(10);

/// Bits of an id's tail that count; the rest are the instance's own.
const SEQ_BITS: u32 = 40;

impl AuditLog {
    /// Starts the writer that hands queued events to `store`; it ends once the log is dropped
    /// (after storing what was queued).
    pub fn new(store: Arc<dyn Store>, instance: String, retention: Duration) -> Self {
        let (queue, jobs) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        // The writer holds the store weakly: once the state is dropped, so is the store (a
        // SQLite file's lock is given back at once, whenever the writer runs next).
        tokio::spawn(write(Arc::downgrade(&store), jobs, dropped.clone()));
        AuditLog {
            queue,
            store,
            instance,
            retention,
            clock: Arc::default(),
            dropped,
            salt: rand::random::<u64>() << SEQ_BITS,
            seq: AtomicU64::new(0),
            folds: [
                RateLimitedLog::new(FOLD_EVERY),
                RateLimitedLog::new(FOLD_EVERY),
            ],
            connects: dashmap::DashMap::with_hasher(Default::default()),
        }
    }

    /// Whether handing `user` the connection data of `machine` in `pool` now is a `connect`
    /// event: the first time, another machine, or [`CONNECT_EVERY`] after the last one
    /// recorded. A client polls `connect_info` until its desktop is ready and may ask again
    /// for the same data; each of those answers is the same connection, and recording every
    /// one made each of them a log line and a store write (2.7× the CPU of a request,
    /// docs/benchmarks.md). (A single-use Guacamole link is new each time: its callers
    /// record it regardless.)
    pub fn first_connect(&self, user: Uuid, pool: Uuid, machine: Uuid) -> bool {
        let now = self.clock.now_ms();
        let every = CONNECT_EVERY.as_millis() as u64;
        if let Some(last) = self.connects.get(&(user, pool))
            && last.0 == machine
            && now.saturating_sub(last.1) < every
        {
            return false;
        }
        if self.connects.len() >= CONNECTS_MAX {
            self.connects.clear();
        }
        self.connects.insert((user, pool), (machine, now));
        true
    }

    /// The name events of this instance carry.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Records an event: the log line now, the store's copy through the queue. Never waits
    /// and never fails.
    ///
    /// Refused sign-ins that cost the server nothing — malformed (400) or turned away by a
    /// limit (429) — can be repeated at will: of those, one event per code and
    /// [`FOLD_EVERY`] is recorded, its `detail` saying how many more were folded into it
    /// (the sweep reports the end of a flood). Every other event is recorded each time.
    pub fn record(&self, mut entry: Entry) {
        if let Some(fold) = self.fold(&entry) {
            match fold.hit() {
                None => return,
                Some(n) if n > 1 => {
                    let more = format!(" ({} more like it since the last such event)", n - 1);
                    entry.detail = Some(entry.detail.unwrap_or_default() + &more);
                }
                Some(_) => {}
            }
        }
        self.write(entry);
    }

    /// The fold an event is counted in, if it is one that is folded.
    fn fold(&self, entry: &Entry) -> Option<&RateLimitedLog> {
        match (entry.event, entry.code) {
            ("sign_in_refused", Some(400)) => Some(&self.folds[0]),
            ("sign_in_refused", Some(429)) => Some(&self.folds[1]),
            _ => None,
        }
    }

    /// Reports what the folds counted since their last event (the end of a flood).
    fn flush_folds(&self) {
        for (fold, code) in self.folds.iter().zip([400, 429]) {
            if let Some(n) = fold.flush() {
                self.write(
                    Entry::new("sign_in_refused", Transport::Server)
                        .failed(code, format!("{n} more like it since the last such event")),
                );
            }
        }
    }

    fn write(&self, entry: Entry) {
        let ts_ms = self.clock.now_ms();
        let ts = chrono::DateTime::from_timestamp_millis(ts_ms as i64)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let event = AuditEvent {
            id: new_id(
                ts_ms,
                self.salt | (self.seq.fetch_add(1, Ordering::Relaxed) & ((1 << SEQ_BITS) - 1)),
            ),
            ts,
            event: entry.event.to_owned(),
            user: entry.user,
            actor: entry.actor,
            ip: entry.ip.map(|ip| ip.to_canonical().to_string()),
            instance: self.instance.clone(),
            transport: entry.transport.as_str().to_owned(),
            method: entry.method,
            outcome: entry.outcome.to_owned(),
            code: entry.code,
            pool: entry.pool,
            detail: entry.detail,
        };
        tracing::info!(target: "poolgate::audit", "{}", event.to_line());
        if self.queue.try_send(Job::Store(Box::new(event))).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            static FULL: LazyLock<RateLimitedLog> =
                LazyLock::new(|| RateLimitedLog::new(WARN_EVERY));
            if let Some(n) = FULL.hit() {
                tracing::warn!(
                    not_stored = n,
                    "audit queue full: events reach the log but not the state store"
                );
            }
        }
    }

    /// Events that reached the log but not the store, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits (at most a short while) until the events recorded before the call were handed
    /// to the store: a query then sees what this instance just recorded.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        let queued = tokio::time::timeout(FLUSH_WAIT, async {
            if self.queue.send(Job::Flush(done)).await.is_ok() {
                let _ = wait.await;
            }
        });
        let _ = queued.await;
    }

    /// The events `query` asks for, after this instance's queue was flushed.
    pub async fn query(&self, query: &AuditQuery) -> StoreResult<Vec<AuditEvent>> {
        self.flush().await;
        self.store.audit_query(query).await
    }

    /// Deletes the events older than `audit_retention` (by the audit's clock); the sweep
    /// calls it every `sweep_interval`.
    pub async fn sweep(&self) -> StoreResult<usize> {
        self.flush_folds();
        self.flush().await;
        let cutoff = self
            .clock
            .now_ms()
            .saturating_sub(self.retention.as_millis() as u64);
        self.store.audit_sweep(cutoff).await
    }
}

/// The writer: queued events to the store, one at a time, in order.
async fn write(
    store: std::sync::Weak<dyn Store>,
    mut jobs: mpsc::Receiver<Job>,
    dropped: Arc<AtomicU64>,
) {
    static FAILING: LazyLock<RateLimitedLog> = LazyLock::new(|| RateLimitedLog::new(WARN_EVERY));
    while let Some(job) = jobs.recv().await {
        match job {
            Job::Store(event) => {
                let Some(store) = store.upgrade() else { return };
                if let Err(e) = store.audit_append(&event).await {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    if let Some(n) = FAILING.hit() {
                        tracing::warn!(error = %e, not_stored = n, "cannot keep audit events in the state store: they reach the log only");
                    }
                }
            }
            Job::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// A query's `since`/`until`: an RFC 3339 time, or a span back from `now_ms` — a number and
/// `s`, `m`, `h`, `d` or `w` (`90m`, `1h`, `7d`). In milliseconds.
pub fn parse_time(text: &str, now_ms: u64) -> Result<u64, String> {
    let text = text.trim();
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return u64::try_from(at.timestamp_millis())
            .map_err(|_| format!("{text:?} is before 1970."));
    }
    let unit = text.chars().last().unwrap_or(' ');
    let secs: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        _ => 0,
    };
    let number = text[..text.len() - unit.len_utf8().min(text.len())].parse::<u64>();
    match (secs, number) {
        (secs, Ok(n)) if secs > 0 => Ok(now_ms.saturating_sub(n.saturating_mul(secs * 1000))),
        _ => Err(format!(
            "{text:?} is neither an RFC 3339 time nor a span such as 90m, 1h or 7d."
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer cannot run while the test records (one thread, no await): the queue fills,
    /// and every event past it is counted and left out of the store — without `record` ever
    /// waiting.
    #[tokio::test]
    async fn recording_never_waits_and_a_full_queue_costs_only_the_stores_copy() {
        let (sink, _bus) = mpsc::unbounded_channel();
        let store: Arc<dyn Store> = Arc::new(crate::store::memory::MemoryStore::new(sink));
        let log = AuditLog::new(store.clone(), "test/0".into(), Duration::from_secs(60));
        for i in 0..QUEUE + 10 {
            log.record(Entry::new("sign_in", Transport::Ws).user(format!("u{i}")));
        }
        assert_eq!(log.dropped(), 10);
        let all = AuditQuery {
            since_ms: 0,
            until_ms: u64::MAX / 2,
            user: None,
            event: None,
            limit: 2 * QUEUE,
            after: None,
            newest_first: false,
        };
        let kept = log.query(&all).await.unwrap();
        assert_eq!(kept.len(), QUEUE);
        assert_eq!(kept[0].user.as_deref(), Some("u0"), "in the order recorded");
    }

    #[test]
    fn times_are_rfc3339_or_spans_back_from_now() {
        let now = 10 * 86_400_000;
        assert_eq!(parse_time("1h", now), Ok(now - 3_600_000));
        assert_eq!(parse_time("90m", now), Ok(now - 5_400_000));
        assert_eq!(parse_time("7d", now), Ok(now - 7 * 86_400_000));
        assert_eq!(parse_time("1970-01-02T00:00:00.5Z", now), Ok(86_400_500));
        assert_eq!(parse_time("100w", now), Ok(0));
        for bad in ["", "h", "1y", "-1h", "yesterday", "1.5h"] {
            assert!(parse_time(bad, now).is_err(), "{bad:?}");
        }
    }
}
