//! Durable state behind one interface, three backends (`state = "sqlite:<path>" | "redis://…"
//! | "redis-cluster://…" | "memory"`): sessions, MFA challenges, TOTP last-used steps, JWT revocations, tasks and
//! the latest task per (user, pool, kind), machine assignments with their leases, machines
//! held by static inventories, warm sets (machines made ahead of demand), task leases (which
//! instance drives a task), lockout counters and back-off slots.
//!
//! Every operation the rules need to be atomic is one call here (a compare-and-set, a
//! set-if-absent), so the rules hold whether one process or several share the state. The
//! store also carries the event bus: what one instance publishes, every instance (itself
//! included) receives on the sink it was built with.
//!
//! The contract is one trait per concern ([`contract`]: sessions, MFA challenges, directory
//! records, JWT revocations, tasks, assignments, inventories, warm sets, sign-in limits, the
//! bus, upkeep); [`Store`] is all of them. Their docs say what each call returns, what is atomic, what
//! expires by itself and when, what a backend may skip — and the backend suite
//! (tests/api/backends.rs, on all three) checks it, so a rule that works on one backend works
//! on the others.
//!
//! Layer 2: imports only the plain types of `crate::domain` and `crate::files`.

pub mod cache;
pub mod contract;
mod forward;
pub mod memory;
pub mod redis_store;
pub mod routing;
pub mod sqlite;
mod url;

pub use contract::{
    Assignments, Audit, Bus, Directory, Federation, Inventory, JwtRevocations, Lockout, Mfa,
    SecurityKeys, Sessions, Tasks, Upkeep, Warm,
};
pub use url::StateUrl;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::domain::{ConnectionData, Machine, Task, TaskKind, TokenHash};

/// A store failure: the backend is unreachable or refused. Requests in flight get 503. It
/// names no backend's error type: each backend turns its own into this one at its edge
/// (`From` impls in `sqlite/` and `redis_store/`), keeping the backend's message.
#[derive(Debug, thiserror::Error)]
#[error("state store: {0}")]
pub struct StoreError(#[from] pub anyhow::Error);

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

/// A person signed in at the OpenID provider, as its last ID token described them: kept so
/// that every instance can resolve their sessions, challenges and tasks (like a
/// [`DirectoryUser`]). `id` is theirs whatever their username becomes: a name-based UUID of
/// (`issuer`, `subject`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederatedUser {
    pub id: Uuid,
    pub issuer: String,
    pub subject: String,
    pub username: String,
    pub groups: Vec<String>,
    pub admin: bool,
    /// When this record was written (the sign-in that saw it), ms.
    pub updated_ms: u64,
}

/// A thin client's browser hand-off, kept under (a digest of) its user code until the person
/// signs in at the provider and the waiting client takes the outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    /// Who waits for it (a socket of an instance, or a REST poller): opaque to the store.
    pub waiter: String,
    pub expires_ms: u64,
    /// Set once, when the person signed in: who, for the waiting client to sign in.
    pub done: Option<SsoOutcome>,
}

/// Who signed in at the provider, for the client that takes it: the user, and whether
/// poolgate's own one-time code is still due (no token is ever stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SsoOutcome {
    pub user_id: Uuid,
    pub otp_due: bool,
}

/// A security key or passkey registered to a user (WebAuthn).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityKey {
    pub user_id: Uuid,
    /// The credential id, base64url without padding: unique across users.
    pub id: String,
    /// What its owner called it ("YubiKey on my keyring").
    pub name: String,
    /// Registered as a discoverable credential: it signs in alone, without a username.
    pub passkey: bool,
    /// The relying party's record of it (webauthn-rs's `Passkey`, as JSON: public key, sign
    /// counter, backup flags).
    pub credential: String,
    pub created_ms: u64,
    pub last_used_ms: Option<u64>,
}

/// What [`contract::SecurityKeys::key_remove_unless_last`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRemoval {
    Removed,
    /// The user has no key of that id.
    NotFound,
    /// It is the user's only key: kept.
    Last,
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
    /// When the machine was assigned (0 in records written before it was kept).
    #[serde(default)]
    pub since_ms: u64,
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
    /// A held machine will be taken away at `ends_at_ms` (the pool's schedule closing,
    /// `max_session`, its lease): the user's sockets are warned.
    Ending {
        user_id: Uuid,
        pool_id: Uuid,
        machine_id: Uuid,
        ends_at_ms: u64,
        /// Seconds left when the warning was sent.
        ends_in: u64,
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
            | BusEvent::Ending { user_id, .. }
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

/// The state every rule relies on: every concern of the contract ([`contract`]) in one bound,
/// which every backend meets by implementing each concern (the way pict-rs's
/// `FullRepo: UploadRepo + SettingsRepo + …` does). Callers hold an `Arc<dyn Store>` and call
/// any concern's methods on it.
pub trait Store:
    Upkeep
    + Bus
    + Sessions
    + Mfa
    + Directory
    + JwtRevocations
    + Tasks
    + Assignments
    + Inventory
    + Lockout
    + Federation
    + SecurityKeys
    + Audit
    + Warm
{
}

impl<T> Store for T where
    T: Upkeep
        + Bus
        + Sessions
        + Mfa
        + Directory
        + JwtRevocations
        + Tasks
        + Assignments
        + Inventory
        + Lockout
        + Federation
        + SecurityKeys
        + Audit
        + Warm
{
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
