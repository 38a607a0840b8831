//! The store's contract, one trait per concern; [`super::Store`] is all of them together.
//!
//! Each backend implements each concern in a file of its own (`memory/`, `sqlite/`,
//! `redis_store/`), and the read cache ([`super::cache`]) implements only what it caches —
//! tasks, assignments and what it hears on the bus — passing the rest through
//! ([`super::forward`]). The traits' docs are the contract: what each call returns, what is
//! atomic, what expires by itself and when, what a backend may skip. The backend suite
//! (tests/api/backends.rs, on every backend) checks it, so a rule that works on one backend
//! works on the others.
//!
//! Conventions for every method:
//! - **Errors**: `Err` only when the backend failed (unreachable, refused, corrupt); "not there"
//!   is `None`, `false` or an empty list, never an error.
//! - **Time**: expiries are wall-clock milliseconds ([`now_ms`]), or unix seconds where the
//!   record is a JWT's. A record past its expiry is *gone* for every read the moment it
//!   expires, on every backend; [`Upkeep::sweep_expired`] only reclaims the space (Redis keys
//!   expire by themselves, so it has nothing to do there).
//! - **Atomicity**: what a method documents as atomic holds across every instance sharing the
//!   store; everything else is a single write whose last writer wins.
//! - **Not shared** ([`Bus::is_shared`] false: memory, SQLite): one process serves the store,
//!   so the bus is in-process and task leases are granted without bookkeeping.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

#[allow(unused_imports)] // for the docs
use super::now_ms;
use super::routing::Routing;
use super::{
    Assignment, BusEvent, DirectoryUser, FederatedUser, Handoff, KeyRemoval, MfaRecord,
    SecurityKey, SessionRecord, SsoOutcome, StoreCounts, StoreResult, TaskKey,
};
use crate::domain::{AuditEvent, AuditQuery, Machine, Task, TokenHash};

/// What the store says of itself: whether it answers, and what it holds.
#[async_trait]
pub trait Upkeep: Send + Sync + 'static {
    /// A cheap round trip proving the backend answers (SQLite: a trivial statement on the
    /// connection; Redis: PING; memory: nothing to ask). For `/healthz`.
    async fn ping(&self) -> StoreResult<()>;

    /// For `/healthz`: `Ok(None)` when the whole store answers, `Ok(Some(what))` when part of
    /// it does not (a Redis Cluster master down: its users get 503 while the others are
    /// served), an error when none of it answers.
    async fn health(&self) -> StoreResult<Option<String>> {
        self.ping().await.map(|()| None)
    }

    /// Deletes every record past its expiry: sessions, MFA challenges (and their attempt
    /// counts), lockout failure counters, back-off slots, JWT revocations and directory
    /// re-check claims. Reads already
    /// treat them as gone; this bounds what is *held* ([`Upkeep::counts`]). Returns how many
    /// records it deleted, all kinds together. Redis expires each of them by itself (and a
    /// user's session index with that user's last session), so it deletes nothing there.
    async fn sweep_expired(&self) -> StoreResult<usize>;

    /// How many records of the kinds that must stay bounded the store *holds* — expired ones
    /// not yet swept included (the retention promises are checked against it). May scan: not
    /// for hot paths.
    async fn counts(&self) -> StoreResult<StoreCounts>;

    /// What the instances sharing this store must agree on (e.g. the fingerprint of the key
    /// REST JWTs are signed with): if a live mark under `key` holds another value, that value
    /// (the mark is left alone); else `value` is marked for `ttl` (renewed if it was there)
    /// and `None`. A store only one instance uses has nobody to disagree with: `None`.
    async fn mark(&self, key: &str, value: &str, ttl: Duration) -> StoreResult<Option<String>> {
        let _ = (key, value, ttl);
        Ok(None)
    }

    /// Records that `user` had a signed-in socket on this instance at `seen_ms`, kept for
    /// `ttl` (a pool's `idle_release` on another instance reads it). A later call replaces an
    /// earlier one. A store only one instance uses has no other instance to tell: nothing.
    async fn presence_put(&self, user: Uuid, seen_ms: u64, ttl: Duration) -> StoreResult<()> {
        let _ = (user, seen_ms, ttl);
        Ok(())
    }

    /// The last `seen_ms` recorded for `user` within its `ttl`; `None` otherwise, and always
    /// on a store only one instance uses.
    async fn presence_get(&self, user: Uuid) -> StoreResult<Option<u64>> {
        let _ = user;
        Ok(None)
    }
}

/// The event bus the store carries: what one instance publishes, every instance (itself
/// included) receives on the sink it was built with.
pub trait Bus: Send + Sync + 'static {
    /// True when several instances may share this store (Redis): leases and the bus then
    /// matter, and a single process cannot assume every active task is its own.
    fn is_shared(&self) -> bool;

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
    /// users this instance hears ([`super::routing`]). `None`: every event reaches this instance
    /// (a store of one process, whose bus is in-process).
    fn router(&self) -> Option<Arc<dyn Routing>> {
        None
    }
}

/// Sessions: a session record expires `ttl` after its `last_active_ms`, where `ttl` is the one
/// given with the write that last moved `last_active_ms` (`session_put`, `session_touch`).
/// From then on it is gone for `session_get`, `session_touch`, `sessions_all` and
/// `session_delete_user`. Callers still judge a token's liveness themselves (their own TTL
/// may be shorter than what the store keeps).
#[async_trait]
pub trait Sessions: Send + Sync + 'static {
    /// Whether a session of `user` may be stored under this token digest: a cluster keeps a
    /// user's sessions in their user's slot, so it takes only digests of that slot's bucket
    /// (the token store draws tokens until one fits: ~1 in 1 024). Always true elsewhere.
    fn token_fits(&self, _user: Uuid, _hash: &TokenHash) -> bool {
        true
    }

    /// Stores a new session (whose digest [`Sessions::token_fits`] its user; an error if not)
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
}

/// MFA challenges and the TOTP steps last used. A challenge is gone once `expires_ms` has
/// passed (get: None, take: false, fail: u32::MAX).
#[async_trait]
pub trait Mfa: Send + Sync + 'static {
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
}

/// People who signed in from the directory (LDAP / Active Directory).
#[async_trait]
pub trait Directory: Send + Sync + 'static {
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
    /// ([`Upkeep::sweep_expired`] reclaims it).
    async fn directory_recheck_claim(
        &self,
        user: Uuid,
        now_ms: u64,
        period: Duration,
    ) -> StoreResult<Result<(), u64>>;
}

/// JWT revocations.
#[async_trait]
pub trait JwtRevocations: Send + Sync + 'static {
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
}

/// Tasks, and which instance drives each. Tasks never expire by themselves: `tasks_sweep`
/// applies the retention.
#[async_trait]
pub trait Tasks: Send + Sync + 'static {
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

    // ---- Task leases: which instance drives a task ----

    /// Takes or renews the right to drive a task, atomically: true when it was free, lapsed or
    /// already `owner`'s (then held until `ttl` from now); false while another owner holds it.
    /// A store that is not shared serves one process, which owns every task: it grants every
    /// call and keeps nothing (memory, SQLite).
    async fn lease_acquire(&self, task: Uuid, owner: &str, ttl: Duration) -> StoreResult<bool>;
    /// Gives the lease up if `owner` holds it (another owner's lease is left alone).
    async fn lease_release(&self, task: Uuid, owner: &str) -> StoreResult<()>;
}

/// Machine assignments. They never expire by themselves: `lease_until_ms` is read by the
/// pools' lease sweep, which gives the machine back through its provisioner and then removes
/// it.
#[async_trait]
pub trait Assignments: Send + Sync + 'static {
    async fn assignment_get(&self, user: Uuid, pool: Uuid) -> StoreResult<Option<Assignment>>;
    /// Stores the assignment unless the user already holds a machine in the pool (then false,
    /// the stored one unchanged). Atomic: of concurrent creators, exactly one gets true.
    async fn assignment_create(&self, a: &Assignment) -> StoreResult<bool>;
    /// Removes and returns the assignment; of concurrent removers, one gets it.
    async fn assignment_remove(&self, user: Uuid, pool: Uuid) -> StoreResult<Option<Assignment>>;
    /// Every assignment, in no order.
    async fn assignments(&self) -> StoreResult<Vec<Assignment>>;
}

/// Machines held by a static inventory: shared, so instances never hand one out twice.
/// Claims never expire: start-up reconciliation releases those no assignment owns.
#[async_trait]
pub trait Inventory: Send + Sync + 'static {
    /// Claims a machine for an inventory; true only for the one claimant (atomic).
    async fn machine_claim(&self, inventory: &str, machine: Uuid) -> StoreResult<bool>;
    /// Gives a claim back (no-op when not claimed).
    async fn machine_release(&self, inventory: &str, machine: Uuid) -> StoreResult<()>;
    /// The inventory's claimed machines, in no order.
    async fn machines_claimed(&self, inventory: &str) -> StoreResult<Vec<Uuid>>;
    /// Counts one more hand-out of `machine` (or of anything, for the nil id: a round-robin
    /// cursor) and returns the count so far. Atomic: concurrent counts all add up.
    async fn machine_count_use(&self, inventory: &str, machine: Uuid) -> StoreResult<u64>;
    /// Every count of the inventory (`balance = "least_used"`), in no order.
    async fn machine_uses(&self, inventory: &str) -> StoreResult<Vec<(Uuid, u64)>>;
}

/// Warm sets: machines a pool's provisioner made ahead of demand, kept provisioned and
/// unassigned until a step 1 takes one (`warm`, `warm_schedule`). One set per pool, in the
/// order the machines were added. Shared by every instance: a machine in it is given to
/// exactly one taker however many instances take at once. Never expires, and is not cached
/// (every call reaches the backend): the pools' filler alone shrinks a set.
#[async_trait]
pub trait Warm: Send + Sync + 'static {
    /// Adds `machine` at the end of the pool's set; false, nothing changed, when a machine of
    /// that id is in the set already. Atomic (check and add are one step).
    async fn warm_add(&self, pool: Uuid, machine: &Machine) -> StoreResult<bool>;
    /// Removes and returns the pool's oldest warm machine, `None` when the set is empty.
    /// Atomic: of concurrent takers (on any instance), each machine goes to exactly one, and
    /// never also to a concurrent [`Warm::warm_remove`].
    async fn warm_take(&self, pool: Uuid) -> StoreResult<Option<Machine>>;
    /// The pool's warm machines, oldest first.
    async fn warm_list(&self, pool: Uuid) -> StoreResult<Vec<Machine>>;
    /// Removes the machine `machine` from the pool's set; true only for the one call that
    /// removed it (atomic, like a take: a machine taken is not also removed, nor the reverse).
    async fn warm_remove(&self, pool: Uuid, machine: Uuid) -> StoreResult<bool>;
}

/// Sign-in limits: lockout failure counters and back-off slots.
#[async_trait]
pub trait Lockout: Send + Sync + 'static {
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
}

/// Single sign-on: sign-ins under way at the OpenID provider, thin clients' hand-offs, the
/// portal's one-time codes and the people the provider signed in. Keys are chosen by the
/// caller (digests of codes, never the codes themselves). Every record but a
/// [`FederatedUser`] expires: gone for every read once its `expires_ms` has passed.
#[async_trait]
pub trait Federation: Send + Sync + 'static {
    /// Keeps a single-use value (a sign-in under way by its `state`, a portal code) until
    /// `expires_ms`, replacing one under the same key.
    async fn sso_put(&self, key: &str, value: &str, expires_ms: u64) -> StoreResult<()>;
    /// Removes and returns a live single-use value: of concurrent takes, exactly one gets it.
    async fn sso_take(&self, key: &str) -> StoreResult<Option<String>>;

    /// Stores a new hand-off (not done), replacing one under the same key.
    async fn handoff_put(&self, key: &str, handoff: &Handoff) -> StoreResult<()>;
    /// The live hand-off, with its outcome once done.
    async fn handoff_get(&self, key: &str) -> StoreResult<Option<Handoff>>;
    /// Records who signed in for a live hand-off not yet done; true only for the one call that
    /// did (atomic: of concurrent completions, exactly one wins; a done one is never changed).
    async fn handoff_complete(&self, key: &str, outcome: &SsoOutcome) -> StoreResult<bool>;
    /// Removes a live, done hand-off and returns its outcome; of concurrent takes exactly one
    /// gets it. One not done yet is left as it is (`None`).
    async fn handoff_take(&self, key: &str) -> StoreResult<Option<SsoOutcome>>;

    /// Stores (or replaces) a federated person's record. Never expires.
    async fn federated_user_put(&self, user: &FederatedUser) -> StoreResult<()>;
    /// The record of a federated person, if one ever signed in with this id.
    async fn federated_user_get(&self, id: Uuid) -> StoreResult<Option<FederatedUser>>;
}

/// Security keys and passkeys (WebAuthn): each user's registered credentials, shared by every
/// instance, and the short-lived values of the ceremonies — a sign-in's or a registration's
/// state, an enrolment link — under keys the caller chooses (digests of tokens and codes, never
/// the tokens themselves). Keys never expire; the values are gone once their `expires_ms` has
/// passed.
#[async_trait]
pub trait SecurityKeys: Send + Sync + 'static {
    /// Keeps a value until `expires_ms`, replacing one under the same key.
    async fn webauthn_put(&self, key: &str, value: &str, expires_ms: u64) -> StoreResult<()>;
    /// The live value, left in place.
    async fn webauthn_get(&self, key: &str) -> StoreResult<Option<String>>;
    /// Removes and returns a live value: of concurrent takes, exactly one gets it.
    async fn webauthn_take(&self, key: &str) -> StoreResult<Option<String>>;

    /// Registers a key to `key.user_id` unless its credential `id` is registered already, to
    /// anyone (false then, nothing changed). Atomic: of concurrent registrations of one id,
    /// exactly one wins.
    async fn key_add(&self, key: &SecurityKey) -> StoreResult<bool>;
    /// The user's keys, in the order they were registered.
    async fn keys_of(&self, user: Uuid) -> StoreResult<Vec<SecurityKey>>;
    /// Whom a credential id is registered to.
    async fn key_owner(&self, id: &str) -> StoreResult<Option<Uuid>>;
    /// Replaces a registered key's `credential` and `last_used_ms` (after a sign-in with it);
    /// false, nothing written, when its user no longer has it.
    async fn key_update(&self, key: &SecurityKey) -> StoreResult<bool>;
    /// Removes one of a user's keys, freeing its credential id; true if the user had it.
    async fn key_remove(&self, user: Uuid, id: &str) -> StoreResult<bool>;
    /// Removes one of a user's keys unless it is their only one. Atomic: of concurrent removals
    /// of a user's keys, however many, at least one key is left.
    async fn key_remove_unless_last(&self, user: Uuid, id: &str) -> StoreResult<KeyRemoval>;
}

/// The audit log: events kept by id (which orders them by time, see
/// [`crate::domain::audit`]) until [`Audit::audit_sweep`] deletes those past the retention.
/// Events never expire by themselves, on any backend.
#[async_trait]
pub trait Audit: Send + Sync + 'static {
    /// Keeps an event (an id already kept is replaced).
    async fn audit_append(&self, event: &AuditEvent) -> StoreResult<()>;
    /// The events the query asks for ([`AuditEvent::matches`]) whose ids fall in
    /// [`AuditQuery::id_bounds`], in id order — descending when `newest_first` — at most
    /// `limit` of them.
    async fn audit_query(&self, query: &AuditQuery) -> StoreResult<Vec<AuditEvent>>;
    /// Deletes the events before `cutoff_ms` (one at `cutoff_ms` stays); returns how many.
    async fn audit_sweep(&self, cutoff_ms: u64) -> StoreResult<usize>;
}
