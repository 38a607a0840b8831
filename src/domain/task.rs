//! The task: one asynchronous step of getting a desktop, and its state machine
//! PENDING → RUNNING → COMPLETED | FAILED | CANCELLED (a task may also end straight from PENDING).

use std::sync::Arc;
use std::time::Duration;

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

impl TaskKind {
    /// The wire name (`POOL_EXPAND`, `GLINT_START`), as serde writes it: also the store's key
    /// part and the `kind` label of the task metrics, so every place spells it the same way.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::PoolExpand => "POOL_EXPAND",
            TaskKind::GlintStart => "GLINT_START",
        }
    }
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

    /// Where a status stands in a task's life: PENDING, then RUNNING, then an end. A task
    /// only ever moves forward (see [`Task::stage`]).
    fn order(self) -> u8 {
        match self {
            TaskStatus::Pending => 0,
            TaskStatus::Running => 1,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled => 2,
        }
    }

    /// The wire name (`PENDING` … `CANCELLED`), as serde writes it; the `outcome` label of the
    /// task metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "PENDING",
            TaskStatus::Running => "RUNNING",
            TaskStatus::Completed => "COMPLETED",
            TaskStatus::Failed => "FAILED",
            TaskStatus::Cancelled => "CANCELLED",
        }
    }
}

/// Why a task ended badly, as clients see it. Built only by the constructors below, which own
/// the wire codes (`protocol/pools.md`) and the messages, so a code never drifts from its cause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    pub err_code: u32,
    pub message: String,
}

impl TaskError {
    /// err_code of a task that overran its deadline.
    pub const DEADLINE: u32 = 810;
    /// err_code of a task whose provisioner failed, cancelled or crashed.
    pub const PROVISIONER: u32 = 811;
    /// err_code of a task ended by a restart, a shutdown or its instance going away.
    pub const INTERRUPTED: u32 = 812;

    /// The task did not finish within `limit` (`task_deadline`) and was cancelled.
    pub fn deadline(limit: Duration) -> Self {
        let secs = limit.as_secs_f64();
        TaskError {
            err_code: Self::DEADLINE,
            message: format!(
                "The task did not finish within {secs} s and was cancelled; ask again."
            ),
        }
    }

    /// The provisioner failed or cancelled the step and said why (or a seed task says so).
    pub fn provisioner(message: impl Into<String>) -> Self {
        TaskError {
            err_code: Self::PROVISIONER,
            message: message.into(),
        }
    }

    /// The provisioner's step panicked; what it said stays in the log.
    pub fn provisioner_crashed() -> Self {
        Self::provisioner("The provisioner crashed.")
    }

    /// The step got a machine but the state store could not record the assignment (it was
    /// given back): an interruption, not the provisioner's failure.
    pub fn machine_not_recorded() -> Self {
        Self::interrupted("The state store could not record the machine; ask again.")
    }

    /// A previous run of the server left the task unfinished.
    pub fn server_restarted() -> Self {
        Self::interrupted("The server restarted before the task finished; ask again.")
    }

    /// The server shut down while driving the task.
    pub fn server_shut_down() -> Self {
        Self::interrupted("The server shut down before the task finished; ask again.")
    }

    /// The instance driving the task (shared stores) stopped renewing its lease.
    pub fn instance_gone() -> Self {
        Self::interrupted("The instance driving this task went away; ask again.")
    }

    fn interrupted(message: &str) -> Self {
        TaskError {
            err_code: Self::INTERRUPTED,
            message: message.into(),
        }
    }
}

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
    pub machine: Option<Arc<Machine>>,
    /// Step 2's result: the connection data. Kept server-side; sent by `connect_info`.
    #[serde(skip_serializing)]
    pub connection: Option<Arc<ConnectionData>>,
    /// Set by an operator (`admin_reset`, `admin_release`) on a FAILED step 1: the failure no
    /// longer holds back the user's next request. Kept server-side.
    #[serde(skip_serializing, default)]
    pub cleared: bool,
}

impl Task {
    /// How far the task has come — its status, then its progress — for telling which of two
    /// copies of one task is the newer: a task never goes back.
    pub fn stage(&self) -> (u8, u8) {
        (self.status.order(), self.progress.unwrap_or(0))
    }

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{TaskError, TaskKind, TaskStatus};

    #[test]
    fn as_str_spells_kinds_and_statuses_exactly_as_serde_does() {
        for kind in [TaskKind::PoolExpand, TaskKind::GlintStart] {
            let wire = serde_json::to_value(kind).unwrap();
            assert_eq!(wire, kind.as_str());
        }
        use TaskStatus::*;
        for status in [Pending, Running, Completed, Failed, Cancelled] {
            let wire = serde_json::to_value(status).unwrap();
            assert_eq!(wire, status.as_str());
        }
    }

    #[test]
    fn task_errors_carry_the_documented_codes() {
        let deadline = TaskError::deadline(Duration::from_millis(1500));
        assert_eq!(deadline.err_code, 810);
        assert!(deadline.message.contains("within 1.5 s"), "{deadline:?}");
        for e in [
            TaskError::provisioner("no capacity"),
            TaskError::provisioner_crashed(),
        ] {
            assert_eq!(e.err_code, 811, "{e:?}");
        }
        for e in [
            TaskError::server_restarted(),
            TaskError::server_shut_down(),
            TaskError::machine_not_recorded(),
            TaskError::instance_gone(),
        ] {
            assert_eq!(e.err_code, 812, "{e:?}");
        }
    }
}
