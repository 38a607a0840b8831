//! Durable state behind one interface, three backends (`state = "sqlite:<path>" | "redis://…"
//! | "memory"`): sessions, MFA challenges, TOTP last-used steps, JWT revocations, tasks and
//! the latest task per (user, pool, kind), machine assignments with their leases, machines
//! held by static inventories, and task leases (which instance drives a task).
//!
//! Every operation the rules need to be atomic is one call here (a compare-and-set, a
//! set-if-absent), so the rules hold whether one process or several share the state. The
//! store also carries the event bus: what one instance publishes, every instance (itself
//! included) receives on the sink it was built with.

pub mod memory;
pub mod redis;
pub mod sqlite;
mod url;

pub use url::StateUrl;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::domain::{ConnectionData, Machine, Task, TaskKind, TokenHash};

/// A store failure: the backend is unreachable or refused. Requests in flight get 503.
#[derive(Debug, thiserror::Error)]
#[error("state store: {0}")]
pub struct StoreError(#[from] pub anyhow::Error);

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(e.into())
    }
}

impl From<::redis::RedisError> for StoreError {
    fn from(e: ::redis::RedisError) -> Self {
        StoreError(e.into())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError(e.into())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// (user, pool, kind): tasks are keyed so.
pub type TaskKey = (Uuid, Uuid, TaskKind);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    #[serde(with = "hex::serde")]
    pub hash: TokenHash,
    pub user_id: Uuid,
    pub created_ms: u64,
    /// Persisted lazily: never ahead of the truth, at most the flush interval behind.
    pub last_active_ms: u64,
    /// Where the sign-in came from (client address), for the admin view.
    #[serde(default)]
    pub peer: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MfaRecord {
    pub user_id: Uuid,
    pub password_ok: bool,
    pub expires_ms: u64,
    pub attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub user_id: Uuid,
    pub pool_id: Uuid,
    pub machine: Machine,
    /// Wall-clock milliseconds after which the lease sweep gives the machine back.
    pub lease_until_ms: u64,
}

/// What travels between instances.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BusEvent {
    /// A task changed; `notify` says whether sockets are told (creation is not pushed: the
    /// creating request's reply carries it).
    Task {
        #[serde(with = "stored_task")]
        task: Box<Task>,
        notify: bool,
    },
    /// A machine was given back (lease over, admin release).
    Released {
        user_id: Uuid,
        pool_id: Uuid,
        machine_id: Uuid,
        reason: String,
    },
    /// A session token was revoked: every instance flips its in-memory copy.
    SessionRevoked {
        #[serde(with = "hex::serde")]
        hash: TokenHash,
    },
    /// A JWT was revoked.
    JwtRevoked { jti: String, exp: i64 },
    /// Every JWT of a user issued at or before `before` was revoked.
    JwtUserRevoked { user_id: Uuid, before: i64 },
}

/// The storage form of a task: the client-facing fields plus the server-side ones.
#[derive(Serialize)]
struct StoredTask<'a> {
    #[serde(flatten)]
    task: &'a Task,
    user_id: Uuid,
    machine: &'a Option<Machine>,
    connection: &'a Option<ConnectionData>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    cleared: bool,
}

/// Serde for a task in its storage form (with the server-side fields).
mod stored_task {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{StoredTask, Task};

    pub fn serialize<S: Serializer>(task: &Task, s: S) -> Result<S::Ok, S::Error> {
        StoredTask {
            task,
            user_id: task.user_id,
            machine: &task.machine,
            connection: &task.connection,
            cleared: task.cleared,
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Box<Task>, D::Error> {
        Task::deserialize(d).map(Box::new)
    }
}

pub fn task_to_json(task: &Task) -> String {
    serde_json::to_string(&StoredTask {
        task,
        user_id: task.user_id,
        machine: &task.machine,
        connection: &task.connection,
        cleared: task.cleared,
    })
    .expect("a task always serializes")
}

pub fn task_from_json(text: &str) -> StoreResult<Task> {
    Ok(serde_json::from_str(text)?)
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// True when several instances may share this store (leases and the bus matter).
    fn is_shared(&self) -> bool;

    // Sessions. `ttl` is how long a record is kept after its last activity (backends that
    // expire keys by themselves use it).
    /// Stores a new session and trims its user's sessions in the same atomic step: records
    /// idle for longer than `ttl` go, and past `max_per_user` the least recently active ones
    /// are deleted. Returns the hashes of the sessions deleted for the cap (never `rec`'s), so
    /// the caller can revoke them everywhere.
    async fn session_put(
        &self,
        rec: &SessionRecord,
        ttl: Duration,
        max_per_user: usize,
    ) -> StoreResult<Vec<TokenHash>>;
    async fn session_get(&self, hash: &TokenHash) -> StoreResult<Option<SessionRecord>>;
    /// Moves `last_active_ms` forward (never back) for each session still present; returns
    /// the hashes of those no longer present (revoked, evicted or expired), so an instance
    /// that missed a revocation on the bus still learns of it.
    async fn session_touch(
        &self,
        touches: &[(TokenHash, u64)],
        ttl: Duration,
    ) -> StoreResult<Vec<TokenHash>>;
    async fn session_delete(&self, hash: &TokenHash) -> StoreResult<()>;
    /// Deletes every session of a user and returns their hashes.
    async fn session_delete_user(&self, user: Uuid) -> StoreResult<Vec<TokenHash>>;
    /// Every stored session (admin view).
    async fn sessions_all(&self) -> StoreResult<Vec<SessionRecord>>;
    /// Deletes sessions idle since before `cutoff_ms`, and every other record past its expiry:
    /// MFA challenges, failure counters (lockout), JWT revocations. Returns the sessions
    /// deleted. (Backends whose keys expire by themselves may have nothing to do.)
    async fn session_sweep(&self, cutoff_ms: u64) -> StoreResult<usize>;

    // MFA challenges.
    async fn mfa_put(&self, hash: &TokenHash, rec: &MfaRecord) -> StoreResult<()>;
    async fn mfa_get(&self, hash: &TokenHash) -> StoreResult<Option<MfaRecord>>;
    /// Removes the challenge; true if this call removed it (one use).
    async fn mfa_take(&self, hash: &TokenHash) -> StoreResult<bool>;
    /// Counts a wrong code; returns the attempts so far.
    async fn mfa_fail(&self, hash: &TokenHash) -> StoreResult<u32>;

    /// Records `step` as the user's last accepted TOTP step if it is newer; false if not
    /// (a replay). Check and update are one atomic operation.
    async fn totp_advance(&self, user: Uuid, step: u64) -> StoreResult<bool>;

    // JWT revocations.
    async fn jwt_revoke(&self, jti: &str, exp: i64) -> StoreResult<()>;
    /// Every revocation not yet expired (loaded at start-up).
    async fn jwt_revocations(&self) -> StoreResult<Vec<(String, i64)>>;
    /// Revokes every JWT of a user issued at or before `before` (unix seconds).
    async fn jwt_revoke_user(&self, user: Uuid, before: i64) -> StoreResult<()>;
    async fn jwt_user_revocations(&self) -> StoreResult<Vec<(Uuid, i64)>>;

    // Tasks.
    async fn task_get(&self, id: Uuid) -> StoreResult<Option<Task>>;
    async fn task_latest(&self, key: TaskKey) -> StoreResult<Option<Task>>;
    /// Inserts `task` and makes it the latest of its key, only if the latest is still
    /// `expected`. False when another request got there first.
    async fn task_create(&self, expected: Option<Uuid>, task: &Task) -> StoreResult<bool>;
    async fn task_update(&self, task: &Task) -> StoreResult<()>;
    /// The user's tasks, newest first.
    async fn tasks_of_user(&self, user: Uuid, limit: usize) -> StoreResult<Vec<Task>>;
    /// Every PENDING or RUNNING task.
    async fn tasks_active(&self) -> StoreResult<Vec<Task>>;
    /// Deletes ended tasks created before `cutoff_ms` (task retention), except the latest
    /// task of each key, which the step rules read. Returns how many were deleted.
    async fn tasks_sweep(&self, cutoff_ms: u64) -> StoreResult<usize>;

    // Assignments.
    async fn assignment_get(&self, user: Uuid, pool: Uuid) -> StoreResult<Option<Assignment>>;
    /// Stores the assignment unless the user already holds a machine in the pool.
    async fn assignment_create(&self, a: &Assignment) -> StoreResult<bool>;
    async fn assignment_remove(&self, user: Uuid, pool: Uuid) -> StoreResult<Option<Assignment>>;
    async fn assignments(&self) -> StoreResult<Vec<Assignment>>;

    // Machines held by a static inventory (shared, so instances never hand one out twice).
    async fn machine_claim(&self, inventory: &str, machine: Uuid) -> StoreResult<bool>;
    async fn machine_release(&self, inventory: &str, machine: Uuid) -> StoreResult<()>;
    async fn machines_claimed(&self, inventory: &str) -> StoreResult<Vec<Uuid>>;

    /// Takes or renews the right to drive a task. False while another owner holds it.
    async fn lease_acquire(&self, task: Uuid, owner: &str, ttl: Duration) -> StoreResult<bool>;
    async fn lease_release(&self, task: Uuid, owner: &str) -> StoreResult<()>;

    /// Counts a failure under `key` in a fixed window starting at the first failure; returns
    /// the count so far (lockout counters: per username and per client address).
    async fn failures_add(&self, key: &str, window: Duration) -> StoreResult<u32>;
    async fn failures_get(&self, key: &str) -> StoreResult<u32>;
    async fn failures_reset(&self, key: &str) -> StoreResult<()>;
    /// Takes back one count (a reserved attempt that turned out not to be a guess): never
    /// below zero, the window unchanged.
    async fn failures_undo(&self, key: &str) -> StoreResult<()>;
    /// Schedules an attempt under a per-key back-off, atomically: the slot is the later of
    /// `now_ms` and the key's next free time. If it is at most `max_wait` away it is taken —
    /// the next free time becomes slot + `spacing`, kept for `window` — and `Ok(slot)` is
    /// returned; otherwise nothing changes and `Err(slot)` says when one would be free.
    async fn backoff_slot(
        &self,
        key: &str,
        now_ms: u64,
        spacing: Duration,
        max_wait: Duration,
        window: Duration,
    ) -> StoreResult<Result<u64, u64>>;

    /// How many records of the kinds that must stay bounded the store holds (the retention
    /// promises are checked against it). May scan: not for hot paths.
    async fn counts(&self) -> StoreResult<StoreCounts>;

    /// Sends an event to every instance (this one included). Fire and forget.
    fn publish(&self, event: BusEvent);
}

/// Records held, by kind: what `session_put`'s cap, `session_sweep` and `tasks_sweep` bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounts {
    pub sessions: usize,
    /// Entries of the per-user session indexes (Redis keeps one set per user; the SQL and
    /// memory backends index the sessions themselves, so this equals `sessions` there).
    pub session_index: usize,
    pub tasks: usize,
    /// Lockout failure counters, expired or not.
    pub failure_counters: usize,
}

/// Opens the store named by `state`, delivering bus events to `sink`. `data_dir` holds the
/// default SQLite file (created, private, when that is used).
pub async fn open(
    state: &StateUrl,
    password: Option<&str>,
    prefix: &str,
    data_dir: &std::path::Path,
    sink: mpsc::UnboundedSender<BusEvent>,
) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match state {
        StateUrl::Memory => Arc::new(memory::MemoryStore::new(sink)),
        StateUrl::Sqlite(path) => {
            let path = match path {
                Some(path) => path.clone(),
                None => {
                    crate::files::data_dir(data_dir)?;
                    data_dir.join(url::SQLITE_FILE)
                }
            };
            Arc::new(sqlite::SqliteStore::open(&path, sink)?)
        }
        StateUrl::Redis { url } => {
            Arc::new(redis::RedisStore::connect(url, password, prefix, sink).await?)
        }
    })
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
