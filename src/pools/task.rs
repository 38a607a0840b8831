//! The task: one asynchronous step of getting a desktop, and its state machine
//! PENDING → RUNNING → COMPLETED | FAILED | CANCELLED (a task may also end straight from PENDING).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::provision::{ConnectionData, Machine};

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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    pub id: Uuid,
    pub kind: TaskKind,
    pub status: TaskStatus,
    pub pool_id: Uuid,
    /// Whose task it is; not sent to clients (they only ever see their own).
    #[serde(skip_serializing)]
    pub user_id: Uuid,
    pub created: DateTime<Utc>,
    pub started: Option<DateTime<Utc>>,
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
