//! Durable state behind one interface, three backends (`state = "sqlite:<path>" | "redis://…"
//! | "redis-cluster://…" | "memory"`): sessions, MFA challenges, TOTP last-used steps, JWT revocations, tasks and
//! the latest task per (user, pool, kind), machine assignments with their leases, machines
//! held by static inventories, task leases (which instance drives a task), lockout counters
//! and back-off slots.
//!
//! Every operation the rules need to be atomic is one call here (a compare-and-set, a
//! set-if-absent), so the rules hold whether one process or several share the state. The
//! store also carries the event bus: what one instance publishes, every instance (itself
//! included) receives on the sink it was built with.
//!
//! The [`Store`] trait's docs are the contract — what each call returns, what is atomic, what
//! expires by itself and when, what a backend may skip — and the backend suite
//! (tests/api/backends.rs, on all three) checks it, so a rule that works on one backend works
//! on the others.
//!
//! Layer 2: imports only the plain types of `crate::domain` and `crate::files`.

pub mod cache;
pub mod memory;
pub mod redis_store;
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

impl From<::redis::ParsingError> for StoreError {
    fn from(e: ::redis::ParsingError) -> Self {
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

/// A person who signed in from the directory (LDAP / Active Directory), as the directory
/// described them at their last sign-in: kept so that every instance, and this one after a
/// restart, can resolve their sessions, challenges and tasks without asking the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryUser {
    pub id: Uuid,
    pub dn: String,
    pub username: String,
    pub full_name: String,
    pub email: String,
    pub groups: Vec<String>,
    pub admin: bool,
    /// When this record was written (the sign-in that saw it), ms.
    pub updated_ms: u64,
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
    pub machine: Arc<Machine>,
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
        /// Whose session it was (the event is routed to that user's channel).
        user_id: Uuid,
    },
    /// A JWT was revoked.
    JwtRevoked { jti: String, exp: i64 },
    /// Every JWT of a user issued at or before `before` was revoked.
    JwtUserRevoked { user_id: Uuid, before: i64 },
    /// Sessions of a user were ended by the server (`reason`: the directory no longer admits
    /// them, or `session_max_age`), published after their revocations: every instance closes
    /// the user's sockets whose credentials no longer hold, telling them `reason`. With
    /// `before_ms`, every session of the user signed in at or before it, and every JWT issued
    /// by then, is ended here first (so the event alone suffices, whatever else was lost).
    SessionsEnded {
        user_id: Uuid,
        reason: String,
        #[serde(default)]
        before_ms: Option<u64>,
    },
    /// A user's tasks or assignments (and the task `task_id`) were written by the instance
    /// `origin`: every other instance drops what its read cache holds of them
    /// ([`cache`]). Consumed by the cache, never passed on to the application.
    Invalidate {
        origin: u64,
        user_id: Uuid,
        task_id: Option<Uuid>,
    },
    /// Local only, never sent: the bus lost its connection (`resumed` false; what is published
    /// meanwhile is missed) or has it back (`resumed` true). Consumed by the read cache.
    #[serde(skip)]
    BusGap { resumed: bool },
}

impl BusEvent {
    /// The user the event is about, for the events routed to that user's channel; `None` for
    /// those every instance hears (JWT revocations) and the local-only gap reports.
    pub fn user(&self) -> Option<Uuid> {
        match self {
            BusEvent::Task { task, .. } => Some(task.user_id),
            BusEvent::Released { user_id, .. }
            | BusEvent::SessionRevoked { user_id, .. }
            | BusEvent::SessionsEnded { user_id, .. }
            | BusEvent::Invalidate { user_id, .. } => Some(*user_id),
            BusEvent::JwtRevoked { .. }
            | BusEvent::JwtUserRevoked { .. }
            | BusEvent::BusGap { .. } => None,
        }
    }
}

/// How many of a user's latest tasks the `tasks` method lists (and the event hub reads to
/// catch a new watch up): one figure, so both share the read cache's entry.
pub const RECENT_TASKS: usize = 50;

/// The storage form of a task: the client-facing fields plus the server-side ones.
#[derive(Serialize)]
struct StoredTask<'a> {
    #[serde(flatten)]
    task: &'a Task,
    user_id: Uuid,
    machine: &'a Option<Arc<Machine>>,
    connection: &'a Option<Arc<ConnectionData>>,
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

/// How long a JWT revocation is kept past the token's own `exp`, in seconds: the margin for
/// clocks that disagree between instances (verification itself allows 5 s of leeway).
pub const JWT_REVOCATION_MARGIN_S: i64 = 60;

/// The state every rule relies on, behind one contract that all three backends keep (the
/// backend suite in tests/api/backends.rs checks each promise on memory, SQLite and Redis).
///
/// Conventions for every method:
/// - **Errors**: `Err` only when the backend failed (unreachable, refused, corrupt); "not there"
///   is `None`, `false` or an empty list, never an error.
/// - **Time**: expiries are wall-clock milliseconds ([`now_ms`]), or unix seconds where the
///   record is a JWT's. A record past its expiry is *gone* for every read the moment it
///   expires, on every backend; [`Store::sweep_expired`] only reclaims the space (Redis keys
///   expire by themselves, so it has nothing to do there).
/// - **Atomicity**: what a method documents as atomic holds across every instance sharing the
///   store; everything else is a single write whose last writer wins.
/// - **Not shared** ([`Store::is_shared`] false: memory, SQLite): one process serves the store,
///   so the bus is in-process and task leases are granted without bookkeeping.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// True when several instances may share this store (Redis): leases and the bus then
    /// matter, and a single process cannot assume every active task is its own.
    fn is_shared(&self) -> bool;

    /// A cheap round trip proving the backend answers (SQLite: a trivial statement on the
    /// connection; Redis: PING; memory: nothing to ask). For `/healthz`.
    async fn ping(&self) -> StoreResult<()>;

    /// For `/healthz`: `Ok(None)` when the whole store answers, `Ok(Some(what))` when part of
    /// it does not (a Redis Cluster master down: its users get 503 while the others are
    /// served), an error when none of it answers.
    async fn health(&self) -> StoreResult<Option<String>> {
        self.ping().await.map(|()| None)
    }

    // ---- Sessions ----
    //
    // A session record expires `ttl` after its `last_active_ms`, where `ttl` is the one given
    // with the write that last moved `last_active_ms` (`session_put`, `session_touch`). From
    // then on it is gone for `session_get`, `session_touch`, `sessions_all` and
    // `session_delete_user`. Callers still judge a token's liveness themselves (their own TTL
    // may be shorter than what the store keeps).

    /// Whether a session of `user` may be stored under this token digest: a cluster keeps a
    /// user's sessions in their user's slot, so it takes only digests of that slot's bucket
    /// (the token store draws tokens until one fits: ~1 in 1 024). Always true elsewhere.
    fn token_fits(&self, _user: Uuid, _hash: &TokenHash) -> bool {
        true
    }

    /// Stores a new session (whose digest [`Store::token_fits`] its user; an error if not)
    /// and, in the same atomic step, trims its user's others: expired
    /// ones go, and past `max_per_user` (at least 1) the least recently active ones are deleted
    /// (ties: the earlier created first). Returns the hashes deleted for the cap — never
    /// `rec`'s, nor the expired ones — so the caller can revoke them everywhere.
    async fn session_put(
        &self,
        rec: &SessionRecord,
        ttl: Duration,
        max_per_user: usize,
    ) -> StoreResult<Vec<TokenHash>>;
    /// The live session with this hash.
    async fn session_get(&self, hash: &TokenHash) -> StoreResult<Option<SessionRecord>>;
    /// For each live session listed, moves `last_active_ms` forward (never back) and, when it
    /// moved, its expiry to the new `last_active_ms + ttl`. Returns the hashes of the sessions
    /// no longer there (revoked, evicted or expired: an expired one is not revived), so an
    /// instance that missed a revocation on the bus still learns of it. Atomic per session.
    async fn session_touch(
        &self,
        touches: &[(TokenHash, u64)],
        ttl: Duration,
    ) -> StoreResult<Vec<TokenHash>>;
    /// Deletes a session (no-op when absent).
    async fn session_delete(&self, hash: &TokenHash) -> StoreResult<()>;
    /// Deletes every session of a user, atomically with respect to `session_put` (a session
    /// stored concurrently is either deleted or survives indexed, so a later call finds it).
    /// Returns the hashes of the live sessions it deleted.
    async fn session_delete_user(&self, user: Uuid) -> StoreResult<Vec<TokenHash>>;
    /// Every live session, in no order (admin view). May scan: not for hot paths.
    async fn sessions_all(&self) -> StoreResult<Vec<SessionRecord>>;

    /// Deletes every record past its expiry: sessions, MFA challenges (and their attempt
    /// counts), lockout failure counters, back-off slots, JWT revocations and directory
    /// re-check claims. Reads already
    /// treat them as gone; this bounds what is *held* ([`Store::counts`]). Returns how many
    /// records it deleted, all kinds together. Redis expires each of them by itself (and a
    /// user's session index with that user's last session), so it deletes nothing there.
    async fn sweep_expired(&self) -> StoreResult<usize>;

    // ---- MFA challenges ----
    //
    // A challenge is gone once `expires_ms` has passed (get: None, take: false, fail: u32::MAX).

    /// Stores a challenge, replacing one with the same hash (its wrong-code count included).
    async fn mfa_put(&self, hash: &TokenHash, rec: &MfaRecord) -> StoreResult<()>;
    /// The live challenge, `attempts` counting every `mfa_fail` since its `mfa_put`.
    async fn mfa_get(&self, hash: &TokenHash) -> StoreResult<Option<MfaRecord>>;
    /// Removes the challenge; true only for the one call that removed a live challenge (it
    /// is one-use: of concurrent takes, exactly one wins).
    async fn mfa_take(&self, hash: &TokenHash) -> StoreResult<bool>;
    /// Counts a wrong code atomically; returns the attempts so far, or `u32::MAX` when there
    /// is no live challenge (so any limit check burns it).
    async fn mfa_fail(&self, hash: &TokenHash) -> StoreResult<u32>;

    /// Records `step` as the user's last accepted TOTP step if it is later than the last one
    /// (any step is later than none); false if not (a replay). Check and update are one atomic
    /// operation: of concurrent calls with the same step, one wins. Never expires.
    async fn totp_advance(&self, user: Uuid, step: u64) -> StoreResult<bool>;

    // ---- Directory users ----

    /// Stores (or replaces) a directory user's record. Never expires.
    async fn directory_user_put(&self, user: &DirectoryUser) -> StoreResult<()>;
    /// The record of a directory user, if one ever signed in with this id.
    async fn directory_user_get(&self, id: Uuid) -> StoreResult<Option<DirectoryUser>>;
    /// Every stored directory user's record, in no particular order (for the pool-wide admin
    /// methods: who is a member of a pool's groups, as each one's last sign-in said).
    async fn directory_users(&self) -> StoreResult<Vec<DirectoryUser>>;
    /// Enrols a directory user in TOTP with this base32 secret (replacing any earlier one), or
    /// ends the enrolment with `None`. Kept apart from the record, which each sign-in replaces.
    /// Never expires.
    async fn directory_totp_put(&self, id: Uuid, secret: Option<&str>) -> StoreResult<()>;
    /// A directory user's TOTP secret (base32), if enrolled.
    async fn directory_totp_get(&self, id: Uuid) -> StoreResult<Option<String>>;
    /// Records that `name` (folded: [`crate::auth::folded_name`]) signed in as the directory
    /// user `id` — the latest one to, for the admin methods when the directory cannot say
    /// (down, or the person gone from it). Never expires.
    async fn directory_name_put(&self, name: &str, id: Uuid) -> StoreResult<()>;
    /// The directory user a (folded) name last signed in as.
    async fn directory_name_get(&self, name: &str) -> StoreResult<Option<Uuid>>;
    /// Claims the re-check of a directory user's sessions due at `now_ms`, atomically: when no
    /// claim of `user` was made within `period` before `now_ms`, one is recorded at `now_ms`
    /// and the answer is `Ok(())` (the caller asks the directory); otherwise nothing changes
    /// and the answer is `Err(at)`, the time of the claim that still covers it. Of concurrent
    /// callers, exactly one gets `Ok`. A claim is gone `period` after it was made
    /// ([`Store::sweep_expired`] reclaims it).
    async fn directory_recheck_claim(
        &self,
        user: Uuid,
        now_ms: u64,
        period: Duration,
    ) -> StoreResult<Result<(), u64>>;

    // ---- JWT revocations ----

    /// Revokes one JWT. Kept until `exp + JWT_REVOCATION_MARGIN_S` (unix seconds), then gone.
    async fn jwt_revoke(&self, jti: &str, exp: i64) -> StoreResult<()>;
    /// Every revocation not yet gone (loaded at start-up), in no order.
    async fn jwt_revocations(&self) -> StoreResult<Vec<(String, i64)>>;
    /// Revokes every JWT of a user issued at or before `before` (unix seconds). Only moves
    /// forward: an earlier `before` than the one stored changes nothing (a late or skewed call
    /// never un-revokes). Never expires (one entry per user).
    async fn jwt_revoke_user(&self, user: Uuid, before: i64) -> StoreResult<()>;
    /// Every per-user revocation, in no order.
    async fn jwt_user_revocations(&self) -> StoreResult<Vec<(Uuid, i64)>>;

    // ---- Tasks ----
    //
    // Tasks never expire by themselves: `tasks_sweep` applies the retention.

    /// The task `id` if it is `user`'s; someone else's is `None`, as an unknown one. (Every
    /// caller knows whose task it asks for, and a cluster keeps a task with its user's keys.)
    async fn task_get(&self, user: Uuid, id: Uuid) -> StoreResult<Option<Task>>;
    /// The latest task of a (user, pool, kind) key, if it is still stored.
    async fn task_latest(&self, key: TaskKey) -> StoreResult<Option<Task>>;
    /// Inserts `task` (a new id) and makes it the latest of its key, only if the latest is
    /// still `expected` (`None`: the key has none). One atomic compare-and-set: of concurrent
    /// creators expecting the same latest, exactly one gets true.
    async fn task_create(&self, expected: Option<Uuid>, task: &Task) -> StoreResult<bool>;
    /// Overwrites a stored task (status, progress, result), unless the stored one has ended
    /// with another status: an end is final, so a runner cut off from its lease (which another
    /// instance took as its death and ended the task) can never turn that CANCELLED back into
    /// RUNNING or COMPLETED, nor an orphan sweep overwrite a runner's end. False when that
    /// refused the write (nothing written, nothing announced). A task that is not stored
    /// (never created, or swept) is not recreated (true: nothing contradicts it).
    async fn task_update(&self, task: &Task) -> StoreResult<bool>;
    /// The user's tasks, newest `created` first, at most `limit`.
    async fn tasks_of_user(&self, user: Uuid, limit: usize) -> StoreResult<Vec<Task>>;
    /// Every PENDING or RUNNING task, in no order.
    async fn tasks_active(&self) -> StoreResult<Vec<Task>>;
    /// Deletes ended tasks created before `cutoff_ms` (task retention; one created at
    /// `cutoff_ms` stays), except the latest task of each key, which the step rules read.
    /// Returns how many were deleted.
    async fn tasks_sweep(&self, cutoff_ms: u64) -> StoreResult<usize>;

    // ---- Assignments ----
    //
    // Assignments never expire by themselves: `lease_until_ms` is read by the pools' lease
    // sweep, which gives the machine back through its provisioner and then removes it.

    async fn assignment_get(&self, user: Uuid, pool: Uuid) -> StoreResult<Option<Assignment>>;
    /// Stores the assignment unless the user already holds a machine in the pool (then false,
    /// the stored one unchanged). Atomic: of concurrent creators, exactly one gets true.
    async fn assignment_create(&self, a: &Assignment) -> StoreResult<bool>;
    /// Removes and returns the assignment; of concurrent removers, one gets it.
    async fn assignment_remove(&self, user: Uuid, pool: Uuid) -> StoreResult<Option<Assignment>>;
    /// Every assignment, in no order.
    async fn assignments(&self) -> StoreResult<Vec<Assignment>>;

    // ---- Machines held by a static inventory ----
    //
    // Shared, so instances never hand one out twice. Claims never expire: start-up
    // reconciliation releases those no assignment owns.

    /// Claims a machine for an inventory; true only for the one claimant (atomic).
    async fn machine_claim(&self, inventory: &str, machine: Uuid) -> StoreResult<bool>;
    /// Gives a claim back (no-op when not claimed).
    async fn machine_release(&self, inventory: &str, machine: Uuid) -> StoreResult<()>;
    /// The inventory's claimed machines, in no order.
    async fn machines_claimed(&self, inventory: &str) -> StoreResult<Vec<Uuid>>;

    // ---- Task leases: which instance drives a task ----

    /// Takes or renews the right to drive a task, atomically: true when it was free, lapsed or
    /// already `owner`'s (then held until `ttl` from now); false while another owner holds it.
    /// A store that is not shared serves one process, which owns every task: it grants every
    /// call and keeps nothing (memory, SQLite).
    async fn lease_acquire(&self, task: Uuid, owner: &str, ttl: Duration) -> StoreResult<bool>;
    /// Gives the lease up if `owner` holds it (another owner's lease is left alone).
    async fn lease_release(&self, task: Uuid, owner: &str) -> StoreResult<()>;

    // ---- Lockout failure counters and back-off slots ----

    /// Counts a failure under `key`, atomically, in a fixed window that starts with the first
    /// failure (later failures and undos do not move it); returns the count so far. Once the
    /// window has passed the counter is gone and the next failure starts a new one.
    async fn failures_add(&self, key: &str, window: Duration) -> StoreResult<u32>;
    /// The count in the key's current window (0 when none).
    async fn failures_get(&self, key: &str) -> StoreResult<u32>;
    /// Deletes the counter.
    async fn failures_reset(&self, key: &str) -> StoreResult<()>;
    /// Takes back one count (a reserved attempt that turned out not to be a guess): never
    /// below zero, the window unchanged.
    async fn failures_undo(&self, key: &str) -> StoreResult<()>;
    /// Schedules an attempt under a per-key back-off, atomically: the slot is the later of
    /// `now_ms` and the key's next free time. If it is at most `max_wait` away it is taken —
    /// the next free time becomes slot + `spacing`, kept for `window` from `now_ms` — and
    /// `Ok(slot)` is returned; otherwise nothing changes and `Err(slot)` says when one would be
    /// free. Of concurrent callers, each gets its own slot.
    async fn backoff_slot(
        &self,
        key: &str,
        now_ms: u64,
        spacing: Duration,
        max_wait: Duration,
        window: Duration,
    ) -> StoreResult<Result<u64, u64>>;

    /// How many records of the kinds that must stay bounded the store *holds* — expired ones
    /// not yet swept included (the retention promises are checked against it). May scan: not
    /// for hot paths.
    async fn counts(&self) -> StoreResult<StoreCounts>;

    /// Sends an event to every instance, this one included, on the sink each was built with;
    /// one publisher's events arrive in the order published. Fire and forget: on Redis an
    /// event may be lost across a reconnect (sessions are re-checked by `session_touch`;
    /// clients can ask for a task's state).
    fn publish(&self, event: BusEvent);

    /// For a shared backend whose writes of tasks and assignments (`task_create`,
    /// `task_update`, `assignment_create`, `assignment_remove`) publish their own
    /// [`BusEvent::Invalidate`] atomically with the write — in the same script or transaction,
    /// so that no crash or lost connection can separate a write from its announcement —
    /// the `origin` those announcements carry. A read cache in front of it then announces
    /// nothing itself.
    fn announced_writes_origin(&self) -> Option<u64> {
        None
    }

    /// For a shared backend that routes each user's events on a channel of their own: which
    /// users this instance hears ([`redis_store::watches`]). `None`: every event reaches this instance
    /// (a store of one process, whose bus is in-process).
    fn router(&self) -> Option<Arc<redis_store::watches::Watches>> {
        None
    }
}

/// Records held, by kind: what `session_put`'s cap, `sweep_expired` and `tasks_sweep` bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounts {
    pub sessions: usize,
    /// Entries of the per-user session indexes. The SQL and memory backends index the
    /// sessions themselves, so this equals `sessions` there; Redis keeps one set per user,
    /// trimmed at each sign-in and expiring with the user's last session, so while a user has
    /// a live session it may also hold that user's expired ones (never more than the cap).
    pub session_index: usize,
    pub tasks: usize,
    /// Lockout failure counters and back-off slots.
    pub failure_counters: usize,
}

/// Opens the store named by `state`, delivering bus events to `sink`. `data_dir` holds the
/// default SQLite file (created, private, when that is used). SQLite and Redis are opened
/// behind the read cache ([`cache`]); the memory store is its own cache.
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
            Arc::new(cache::CachedStore::local(Arc::new(
                sqlite::SqliteStore::open(&path, sink)?,
            )))
        }
        StateUrl::Redis { url } => Arc::new(
            cache::CachedStore::shared(sink, |bus| async move {
                let store = redis_store::RedisStore::connect(url, password, prefix, bus).await?;
                Ok(Arc::new(store) as Arc<dyn Store>)
            })
            .await?,
        ),
        StateUrl::RedisCluster { nodes, .. } => Arc::new(
            cache::CachedStore::shared(sink, |bus| async move {
                let store =
                    redis_store::RedisStore::connect_cluster(nodes, password, prefix, bus).await?;
                Ok(Arc::new(store) as Arc<dyn Store>)
            })
            .await?,
        ),
    })
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
