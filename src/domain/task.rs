//! The task: one asynchronous step of getting a desktop, and its state machine
//! PENDING → RUNNING → COMPLETED | FAILED | CANCELLED (a task may also end straight from PENDING).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::machine::{ConnectionData, Machine};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskKind {
    /// Step 1: a machine for the user in the pool.
    PoolExpand,
    /// Step 2: the data to connect to that machine.
    GlintStart,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub fn is_active(self) -> bool {
        matches!(self, TaskStatus::Pending | TaskStatus::Running)
    }

    pub fn is_done(self) -> bool {
        !self.is_active()
    }
}

/// Why a task ended badly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    pub err_code: u32,
    pub message: String,
}

/// err_code of a task that overran its deadline.
pub const ERR_DEADLINE: u32 = 810;
/// err_code of a task whose provisioner failed or crashed.
pub const ERR_PROVISIONER: u32 = 811;
/// err_code of a task ended by a restart or by its instance going away.
pub const ERR_INTERRUPTED: u32 = 812;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: Uuid,
    pub kind: TaskKind,
    pub status: TaskStatus,
    pub pool_id: Uuid,
    /// Whose task it is; not sent to clients (they only ever see their own).
    #[serde(skip_serializing)]
    pub user_id: Uuid,
    #[serde(serialize_with = "rfc3339::serialize")]
    pub created: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339::serialize_option")]
    pub started: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339::serialize_option")]
    pub finished: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<u8>,
    /// Step 1's result: the machine given to the user. Kept server-side.
    #[serde(skip_serializing)]
    pub machine: Option<Machine>,
    /// Step 2's result: the connection data. Kept server-side; sent by `connect_info`.
    #[serde(skip_serializing)]
    pub connection: Option<ConnectionData>,
    /// Set by an operator (`admin_reset`, `admin_release`) on a FAILED step 1: the failure no
    /// longer holds back the user's next request. Kept server-side.
    #[serde(skip_serializing, default)]
    pub cleared: bool,
}

impl Task {
    pub fn new(kind: TaskKind, user_id: Uuid, pool_id: Uuid) -> Self {
        Task {
            id: Uuid::new_v4(),
            kind,
            status: TaskStatus::Pending,
            pool_id,
            user_id,
            created: Utc::now(),
            started: None,
            finished: None,
            error: None,
            progress: None,
            machine: None,
            connection: None,
            cleared: false,
        }
    }

    pub fn start(&mut self) {
        if self.status == TaskStatus::Pending {
            self.status = TaskStatus::Running;
            self.started = Some(Utc::now());
        }
    }

    pub fn finish(&mut self, status: TaskStatus, error: Option<TaskError>) {
        debug_assert!(status.is_done());
        self.status = status;
        self.error = error;
        self.finished = Some(Utc::now());
        if status == TaskStatus::Completed {
            self.progress = self.progress.map(|_| 100);
        }
    }
}

/// Task times as chrono writes them (`2026-11-23T08:23:47.537624800Z`: RFC 3339, UTC, 0/3/6/9
/// fraction digits), but formatted into a stack buffer: chrono's `Display` goes through
/// `core::fmt` a character at a time, which was a quarter of a `task` lookup's cost.
mod rfc3339 {
    use chrono::{DateTime, Datelike, Timelike, Utc};
    use serde::{Serialize, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 30];
        match format(t, &mut buf) {
            Some(text) => s.serialize_str(text),
            // Years outside 0..=9999 and leap seconds: chrono's own format.
            None => t.serialize(s),
        }
    }

    pub fn serialize_option<S: Serializer>(
        t: &Option<DateTime<Utc>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => serialize(t, s),
            None => s.serialize_none(),
        }
    }

    fn digits(out: &mut [u8], mut n: u32) {
        for b in out.iter_mut().rev() {
            *b = b'0' + (n % 10) as u8;
            n /= 10;
        }
    }

    pub(super) fn format<'a>(t: &DateTime<Utc>, buf: &'a mut [u8; 30]) -> Option<&'a str> {
        let year = u32::try_from(t.year()).ok().filter(|y| *y <= 9999)?;
        let nanos = t.nanosecond();
        if nanos >= 1_000_000_000 {
            return None;
        }
        buf[..20].copy_from_slice(b"0000-00-00T00:00:00.");
        digits(&mut buf[0..4], year);
        digits(&mut buf[5..7], t.month());
        digits(&mut buf[8..10], t.day());
        digits(&mut buf[11..13], t.hour());
        digits(&mut buf[14..16], t.minute());
        digits(&mut buf[17..19], t.second());
        let end = match nanos {
            0 => 19,
            n if n % 1_000_000 == 0 => {
                digits(&mut buf[20..23], n / 1_000_000);
                23
            }
            n if n % 1_000 == 0 => {
                digits(&mut buf[20..26], n / 1_000);
                26
            }
            n => {
                digits(&mut buf[20..29], n);
                29
            }
        };
        buf[end] = b'Z';
        std::str::from_utf8(&buf[..=end]).ok()
    }

    #[cfg(test)]
    mod tests {
        use chrono::{TimeZone, Utc};

        #[test]
        fn formats_exactly_like_chrono() {
            let base = Utc.with_ymd_and_hms(2026, 11, 23, 8, 3, 7).unwrap();
            let spread = (0..5000i64).map(|i| i * 6_324_555_320_337 + i % 7 * 1_000_000);
            for nanos in [0, 5_000_000, 537_624_000, 537_624_800, 1, 999_999_999]
                .into_iter()
                .chain(spread)
            {
                let t = base + chrono::Duration::nanoseconds(nanos);
                let chrono = serde_json::to_string(&t).unwrap();
                let mut buf = [0u8; 30];
                let ours = format!("\"{}\"", super::format(&t, &mut buf).unwrap());
                assert_eq!(ours, chrono);
            }
        }
    }
}
