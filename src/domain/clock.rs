//! The server's wall clock, which a test may set and move: time-driven rules (the audit log's
//! retention, pool schedules, session limits, warm sets) all read it, so a test moves a day
//! forward with one call instead of sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The wall clock, or a time a test set and moves.
#[derive(Debug, Default)]
pub struct Clock {
    /// 0: the wall clock.
    set_ms: AtomicU64,
}

impl Clock {
    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        match self.set_ms.load(Ordering::Relaxed) {
            0 => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            ms => ms,
        }
    }

    /// From now on the clock says `ms` (tests).
    pub fn set_ms(&self, ms: u64) {
        self.set_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// Moves a set clock forward (from the wall clock's now if it was not set).
    pub fn advance(&self, by: Duration) {
        self.set_ms(self.now_ms() + by.as_millis() as u64);
    }

    /// Whether a test set the clock.
    pub fn is_set(&self) -> bool {
        self.set_ms.load(Ordering::Relaxed) != 0
    }
}

/// Epoch milliseconds as RFC 3339 in UTC (`2026-12-07T08:30:00Z`), as clients get times.
pub fn rfc3339(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms as i64).map_or_else(|_| String::new(), |t| t.to_string())
}
