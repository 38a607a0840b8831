//! The in-memory store: for tests, and for people who want nothing kept. One lock around
//! plain maps makes every operation trivially atomic. Expired records stay in their maps until
//! `sweep_expired`, but every read filters them out, as the contract wants.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::*;

mod audit;
mod keys;
mod warm;

#[derive(Default)]
struct Inner {
    /// Each session with the wall-clock ms at which it expires.
    sessions: HashMap<TokenHash, (SessionRecord, u64)>,
    mfa: HashMap<TokenHash, MfaRecord>,
    /// The one pending challenge of each (user, password_ok).
    mfa_latest: HashMap<(Uuid, bool), TokenHash>,
    totp: HashMap<Uuid, u64>,
    directory_users: HashMap<Uuid, DirectoryUser>,
    directory_totp: HashMap<Uuid, String>,
    directory_names: HashMap<String, Uuid>,
    jwt: HashMap<String, i64>,
    tasks: HashMap<Uuid, Task>,
    latest: HashMap<TaskKey, Uuid>,
    assignments: HashMap<(Uuid, Uuid), Assignment>,
    machines: HashMap<String, HashSet<Uuid>>,
    /// Hand-outs per inventory and machine.
    machine_uses: HashMap<String, HashMap<Uuid, u64>>,
    /// Each pool's warm set, oldest first.
    warm: HashMap<Uuid, std::collections::VecDeque<Machine>>,
    /// Failure counters: (count, window ends), the latter in ms.
    failures: HashMap<String, (u32, u64)>,
    /// Back-off keys: (next free slot, kept until), both in ms.
    backoff: HashMap<String, (u64, u64)>,
    jwt_users: HashMap<Uuid, i64>,
    /// Directory re-check claims: (made at, gone at), both in ms.
    directory_rechecks: HashMap<Uuid, (u64, u64)>,
    /// Single-use sign-on values: (value, expires at).
    sso: HashMap<String, (String, u64)>,
    handoffs: HashMap<String, Handoff>,
    federated: HashMap<Uuid, FederatedUser>,
    /// WebAuthn ceremonies' values: (value, expires at).
    webauthn: HashMap<String, (String, u64)>,
    /// Each user's security keys, in registration order.
    keys: HashMap<Uuid, Vec<SecurityKey>>,
    /// Who each credential id is registered to.
    key_owners: HashMap<String, Uuid>,
    /// The audit log, by id (time order).
    audit: std::collections::BTreeMap<String, crate::domain::AuditEvent>,
}

pub struct MemoryStore {
    inner: Mutex<Inner>,
    sink: mpsc::UnboundedSender<BusEvent>,
}

impl MemoryStore {
    pub fn new(sink: mpsc::UnboundedSender<BusEvent>) -> Self {
        MemoryStore {
            inner: Mutex::new(Inner::default()),
            sink,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Upkeep for MemoryStore {
    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn sweep_expired(&self) -> StoreResult<usize> {
        let mut inner = self.lock();
        let held = |i: &Inner| {
            i.sessions.len() + i.mfa.len() + i.failures.len() + i.backoff.len() + i.jwt.len()
        };
        let before = held(&inner);
        let now = now_ms();
        inner.sessions.retain(|_, (_, until)| *until > now);
        inner.mfa.retain(|_, m| m.expires_ms > now);
        let Inner {
            mfa, mfa_latest, ..
        } = &mut *inner;
        mfa_latest.retain(|_, hash| mfa.contains_key(hash));
        inner.failures.retain(|_, (_, until)| *until > now);
        inner.backoff.retain(|_, (_, until)| *until > now);
        let now_s = (now / 1000) as i64;
        inner
            .jwt
            .retain(|_, exp| *exp + JWT_REVOCATION_MARGIN_S > now_s);
        let claims = inner.directory_rechecks.len()
            + inner.sso.len()
            + inner.handoffs.len()
            + inner.webauthn.len();
        inner
            .directory_rechecks
            .retain(|_, (_, until)| *until > now);
        inner.sso.retain(|_, (_, until)| *until > now);
        inner.handoffs.retain(|_, h| h.expires_ms > now);
        inner.webauthn.retain(|_, (_, until)| *until > now);
        let left = inner.directory_rechecks.len()
            + inner.sso.len()
            + inner.handoffs.len()
            + inner.webauthn.len();
        Ok(before - held(&inner) + claims - left)
    }

    async fn counts(&self) -> StoreResult<StoreCounts> {
        let inner = self.lock();
        Ok(StoreCounts {
            sessions: inner.sessions.len(),
            session_index: inner.sessions.len(),
            tasks: inner.tasks.len(),
            failure_counters: inner.failures.len() + inner.backoff.len(),
        })
    }
}

impl Bus for MemoryStore {
    fn is_shared(&self) -> bool {
        false
    }

    fn publish(&self, event: BusEvent) {
        let _ = self.sink.send(event);
    }
}

#[async_trait]
impl Sessions for MemoryStore {
    async fn session_put(
        &self,
        rec: &SessionRecord,
        ttl: Duration,
        max_per_user: usize,
    ) -> StoreResult<Vec<TokenHash>> {
        let mut inner = self.lock();
        let now = now_ms();
        inner.sessions.insert(
            rec.hash,
            (rec.clone(), rec.last_active_ms + ttl.as_millis() as u64),
        );
        inner
            .sessions
            .retain(|h, (s, until)| s.user_id != rec.user_id || *h == rec.hash || *until > now);
        let mut mine: Vec<(u64, u64, TokenHash)> = inner
            .sessions
            .values()
            .filter(|(s, _)| s.user_id == rec.user_id && s.hash != rec.hash)
            .map(|(s, _)| (s.last_active_ms, s.created_ms, s.hash))
            .collect();
        let excess = (mine.len() + 1).saturating_sub(max_per_user.max(1));
        mine.sort_unstable();
        let evicted: Vec<TokenHash> = mine.into_iter().take(excess).map(|(_, _, h)| h).collect();
        for h in &evicted {
            inner.sessions.remove(h);
        }
        Ok(evicted)
    }

    async fn session_get(&self, hash: &TokenHash) -> StoreResult<Option<SessionRecord>> {
        let now = now_ms();
        Ok(self
            .lock()
            .sessions
            .get(hash)
            .filter(|(_, until)| *until > now)
            .map(|(s, _)| s.clone()))
    }

    async fn session_touch(
        &self,
        touches: &[(TokenHash, u64)],
        ttl: Duration,
    ) -> StoreResult<Vec<TokenHash>> {
        let mut inner = self.lock();
        let now = now_ms();
        let mut missing = Vec::new();
        for (hash, at) in touches {
            match inner.sessions.get_mut(hash) {
                Some((s, until)) if *until > now => {
                    if *at > s.last_active_ms {
                        s.last_active_ms = *at;
                        *until = at + ttl.as_millis() as u64;
                    }
                }
                _ => missing.push(*hash),
            }
        }
        Ok(missing)
    }

    async fn session_delete(&self, hash: &TokenHash) -> StoreResult<()> {
        self.lock().sessions.remove(hash);
        Ok(())
    }

    async fn session_delete_user(&self, user: Uuid) -> StoreResult<Vec<TokenHash>> {
        let mut inner = self.lock();
        let now = now_ms();
        let mut live = Vec::new();
        inner.sessions.retain(|h, (s, until)| {
            if s.user_id != user {
                return true;
            }
            if *until > now {
                live.push(*h);
            }
            false
        });
        Ok(live)
    }

    async fn sessions_all(&self) -> StoreResult<Vec<SessionRecord>> {
        let now = now_ms();
        Ok(self
            .lock()
            .sessions
            .values()
            .filter(|(_, until)| *until > now)
            .map(|(s, _)| s.clone())
            .collect())
    }
}

#[async_trait]
impl Mfa for MemoryStore {
    async fn mfa_put(&self, hash: &TokenHash, rec: &MfaRecord) -> StoreResult<()> {
        let mut inner = self.lock();
        if let Some(old) = inner
            .mfa_latest
            .insert((rec.user_id, rec.password_ok), *hash)
            .filter(|old| old != hash)
        {
            inner.mfa.remove(&old);
        }
        inner.mfa.insert(*hash, rec.clone());
        Ok(())
    }

    async fn mfa_get(&self, hash: &TokenHash) -> StoreResult<Option<MfaRecord>> {
        let now = now_ms();
        Ok(self
            .lock()
            .mfa
            .get(hash)
            .filter(|m| m.expires_ms > now)
            .cloned())
    }

    async fn mfa_take(&self, hash: &TokenHash) -> StoreResult<bool> {
        let now = now_ms();
        Ok(self
            .lock()
            .mfa
            .remove(hash)
            .is_some_and(|m| m.expires_ms > now))
    }

    async fn mfa_fail(&self, hash: &TokenHash) -> StoreResult<u32> {
        let now = now_ms();
        Ok(self
            .lock()
            .mfa
            .get_mut(hash)
            .filter(|m| m.expires_ms > now)
            .map_or(u32::MAX, |m| {
                m.attempts = m.attempts.saturating_add(1);
                m.attempts
            }))
    }

    async fn totp_advance(&self, user: Uuid, step: u64) -> StoreResult<bool> {
        let mut inner = self.lock();
        if inner.totp.get(&user).is_some_and(|last| step <= *last) {
            return Ok(false);
        }
        inner.totp.insert(user, step);
        Ok(true)
    }
}

#[async_trait]
impl Directory for MemoryStore {
    async fn directory_user_put(&self, user: &DirectoryUser) -> StoreResult<()> {
        self.lock().directory_users.insert(user.id, user.clone());
        Ok(())
    }

    async fn directory_user_get(&self, id: Uuid) -> StoreResult<Option<DirectoryUser>> {
        Ok(self.lock().directory_users.get(&id).cloned())
    }

    async fn directory_users(&self) -> StoreResult<Vec<DirectoryUser>> {
        Ok(self.lock().directory_users.values().cloned().collect())
    }

    async fn directory_totp_put(&self, id: Uuid, secret: Option<&str>) -> StoreResult<()> {
        let mut inner = self.lock();
        match secret {
            Some(secret) => inner.directory_totp.insert(id, secret.to_owned()),
            None => inner.directory_totp.remove(&id),
        };
        Ok(())
    }

    async fn directory_totp_get(&self, id: Uuid) -> StoreResult<Option<String>> {
        Ok(self.lock().directory_totp.get(&id).cloned())
    }

    async fn directory_name_put(&self, name: &str, id: Uuid) -> StoreResult<()> {
        self.lock().directory_names.insert(name.to_owned(), id);
        Ok(())
    }

    async fn directory_name_get(&self, name: &str) -> StoreResult<Option<Uuid>> {
        Ok(self.lock().directory_names.get(name).copied())
    }

    async fn directory_recheck_claim(
        &self,
        user: Uuid,
        now_ms: u64,
        period: Duration,
    ) -> StoreResult<Result<(), u64>> {
        let mut inner = self.lock();
        if let Some((at, until)) = inner.directory_rechecks.get(&user)
            && *until > now_ms
        {
            return Ok(Err(*at));
        }
        let until = now_ms + period.as_millis() as u64;
        inner.directory_rechecks.insert(user, (now_ms, until));
        Ok(Ok(()))
    }
}

#[async_trait]
impl JwtRevocations for MemoryStore {
    async fn jwt_revoke(&self, jti: &str, exp: i64) -> StoreResult<()> {
        self.lock().jwt.insert(jti.to_owned(), exp);
        Ok(())
    }

    async fn jwt_revocations(&self) -> StoreResult<Vec<(String, i64)>> {
        let now_s = (now_ms() / 1000) as i64;
        Ok(self
            .lock()
            .jwt
            .iter()
            .filter(|(_, exp)| **exp + JWT_REVOCATION_MARGIN_S > now_s)
            .map(|(k, v)| (k.clone(), *v))
            .collect())
    }

    async fn jwt_revoke_user(&self, user: Uuid, before: i64) -> StoreResult<()> {
        let mut inner = self.lock();
        let stored = inner.jwt_users.entry(user).or_insert(before);
        *stored = (*stored).max(before);
        Ok(())
    }

    async fn jwt_user_revocations(&self) -> StoreResult<Vec<(Uuid, i64)>> {
        Ok(self
            .lock()
            .jwt_users
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect())
    }
}

#[async_trait]
impl Tasks for MemoryStore {
    async fn task_get(&self, user: Uuid, id: Uuid) -> StoreResult<Option<Task>> {
        Ok(self
            .lock()
            .tasks
            .get(&id)
            .filter(|t| t.user_id == user)
            .cloned())
    }

    async fn task_latest(&self, key: TaskKey) -> StoreResult<Option<Task>> {
        let inner = self.lock();
        Ok(inner
            .latest
            .get(&key)
            .and_then(|id| inner.tasks.get(id))
            .cloned())
    }

    async fn task_create(&self, expected: Option<Uuid>, task: &Task) -> StoreResult<bool> {
        let mut inner = self.lock();
        let key = (task.user_id, task.pool_id, task.kind);
        if inner.latest.get(&key).copied() != expected {
            return Ok(false);
        }
        inner.latest.insert(key, task.id);
        inner.tasks.insert(task.id, task.clone());
        Ok(true)
    }

    async fn task_update(&self, task: &Task) -> StoreResult<bool> {
        if let Some(stored) = self.lock().tasks.get_mut(&task.id) {
            if stored.status.is_done() && stored.status != task.status {
                return Ok(false);
            }
            *stored = task.clone();
        }
        Ok(true)
    }

    async fn tasks_of_user(&self, user: Uuid, limit: usize) -> StoreResult<Vec<Task>> {
        let inner = self.lock();
        let mut tasks: Vec<Task> = inner
            .tasks
            .values()
            .filter(|t| t.user_id == user)
            .cloned()
            .collect();
        tasks.sort_by_key(|t| std::cmp::Reverse(t.created));
        tasks.truncate(limit);
        Ok(tasks)
    }

    async fn tasks_active(&self) -> StoreResult<Vec<Task>> {
        Ok(self
            .lock()
            .tasks
            .values()
            .filter(|t| t.status.is_active())
            .cloned()
            .collect())
    }

    async fn tasks_sweep(&self, cutoff_ms: u64) -> StoreResult<usize> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let latest: HashSet<Uuid> = inner.latest.values().copied().collect();
        let before = inner.tasks.len();
        inner.tasks.retain(|id, t| {
            t.status.is_active()
                || latest.contains(id)
                || t.created.timestamp_millis() >= cutoff_ms as i64
        });
        Ok(before - inner.tasks.len())
    }

    /// Not shared: this process owns every task.
    async fn lease_acquire(&self, _task: Uuid, _owner: &str, _ttl: Duration) -> StoreResult<bool> {
        Ok(true)
    }

    async fn lease_release(&self, _task: Uuid, _owner: &str) -> StoreResult<()> {
        Ok(())
    }
}

#[async_trait]
impl Assignments for MemoryStore {
    async fn assignment_get(&self, user: Uuid, pool: Uuid) -> StoreResult<Option<Assignment>> {
        Ok(self.lock().assignments.get(&(user, pool)).cloned())
    }

    async fn assignment_create(&self, a: &Assignment) -> StoreResult<bool> {
        let mut inner = self.lock();
        let key = (a.user_id, a.pool_id);
        if inner.assignments.contains_key(&key) {
            return Ok(false);
        }
        inner.assignments.insert(key, a.clone());
        Ok(true)
    }

    async fn assignment_remove(&self, user: Uuid, pool: Uuid) -> StoreResult<Option<Assignment>> {
        Ok(self.lock().assignments.remove(&(user, pool)))
    }

    async fn assignments(&self) -> StoreResult<Vec<Assignment>> {
        Ok(self.lock().assignments.values().cloned().collect())
    }
}

#[async_trait]
impl Inventory for MemoryStore {
    async fn machine_claim(&self, inventory: &str, machine: Uuid) -> StoreResult<bool> {
        Ok(self
            .lock()
            .machines
            .entry(inventory.to_owned())
            .or_default()
            .insert(machine))
    }

    async fn machine_release(&self, inventory: &str, machine: Uuid) -> StoreResult<()> {
        if let Some(set) = self.lock().machines.get_mut(inventory) {
            set.remove(&machine);
        }
        Ok(())
    }

    async fn machines_claimed(&self, inventory: &str) -> StoreResult<Vec<Uuid>> {
        Ok(self
            .lock()
            .machines
            .get(inventory)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default())
    }

    async fn machine_count_use(&self, inventory: &str, machine: Uuid) -> StoreResult<u64> {
        let mut inner = self.lock();
        let count = inner
            .machine_uses
            .entry(inventory.to_owned())
            .or_default()
            .entry(machine)
            .or_default();
        *count += 1;
        Ok(*count)
    }

    async fn machine_uses(&self, inventory: &str) -> StoreResult<Vec<(Uuid, u64)>> {
        Ok(self
            .lock()
            .machine_uses
            .get(inventory)
            .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default())
    }
}

#[async_trait]
impl Lockout for MemoryStore {
    async fn failures_add(&self, key: &str, window: Duration) -> StoreResult<u32> {
        let mut inner = self.lock();
        let now = now_ms();
        let entry = inner
            .failures
            .entry(key.to_owned())
            .or_insert((0, now + window.as_millis() as u64));
        if entry.1 <= now {
            *entry = (0, now + window.as_millis() as u64);
        }
        entry.0 += 1;
        Ok(entry.0)
    }

    async fn failures_get(&self, key: &str) -> StoreResult<u32> {
        let now = now_ms();
        Ok(self
            .lock()
            .failures
            .get(key)
            .filter(|(_, until)| *until > now)
            .map_or(0, |(n, _)| *n))
    }

    async fn failures_reset(&self, key: &str) -> StoreResult<()> {
        self.lock().failures.remove(key);
        Ok(())
    }

    async fn failures_undo(&self, key: &str) -> StoreResult<()> {
        if let Some((n, _)) = self.lock().failures.get_mut(key) {
            *n = n.saturating_sub(1);
        }
        Ok(())
    }

    async fn backoff_slot(
        &self,
        key: &str,
        now_ms: u64,
        spacing: Duration,
        max_wait: Duration,
        window: Duration,
    ) -> StoreResult<Result<u64, u64>> {
        let mut inner = self.lock();
        let next = inner
            .backoff
            .get(key)
            .filter(|(_, until)| *until > now_ms)
            .map_or(0, |(next, _)| *next);
        let slot = next.max(now_ms);
        if slot - now_ms > max_wait.as_millis() as u64 {
            return Ok(Err(slot));
        }
        let entry = (
            slot + spacing.as_millis() as u64,
            now_ms + window.as_millis() as u64,
        );
        inner.backoff.insert(key.to_owned(), entry);
        Ok(Ok(slot))
    }
}

#[async_trait]
impl Federation for MemoryStore {
    async fn sso_put(&self, key: &str, value: &str, expires_ms: u64) -> StoreResult<()> {
        self.lock()
            .sso
            .insert(key.to_owned(), (value.to_owned(), expires_ms));
        Ok(())
    }

    async fn sso_take(&self, key: &str) -> StoreResult<Option<String>> {
        let now = now_ms();
        Ok(self
            .lock()
            .sso
            .remove(key)
            .filter(|(_, until)| *until > now)
            .map(|(value, _)| value))
    }

    async fn handoff_put(&self, key: &str, handoff: &Handoff) -> StoreResult<()> {
        let mut handoff = handoff.clone();
        handoff.done = None;
        self.lock().handoffs.insert(key.to_owned(), handoff);
        Ok(())
    }

    async fn handoff_get(&self, key: &str) -> StoreResult<Option<Handoff>> {
        let now = now_ms();
        Ok(self
            .lock()
            .handoffs
            .get(key)
            .filter(|h| h.expires_ms > now)
            .cloned())
    }

    async fn handoff_complete(&self, key: &str, outcome: &SsoOutcome) -> StoreResult<bool> {
        let now = now_ms();
        let mut inner = self.lock();
        match inner.handoffs.get_mut(key) {
            Some(h) if h.expires_ms > now && h.done.is_none() => {
                h.done = Some(outcome.clone());
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn handoff_take(&self, key: &str) -> StoreResult<Option<SsoOutcome>> {
        let now = now_ms();
        let mut inner = self.lock();
        match inner.handoffs.get(key) {
            Some(h) if h.expires_ms > now && h.done.is_some() => {
                Ok(inner.handoffs.remove(key).and_then(|h| h.done))
            }
            _ => Ok(None),
        }
    }

    async fn federated_user_put(&self, user: &FederatedUser) -> StoreResult<()> {
        self.lock().federated.insert(user.id, user.clone());
        Ok(())
    }

    async fn federated_user_get(&self, id: Uuid) -> StoreResult<Option<FederatedUser>> {
        Ok(self.lock().federated.get(&id).cloned())
    }
}
