//! The instance-local read cache in front of the SQLite and Redis backends: the records a
//! client's steady-state requests read on every call — a task by id (`task`), the latest task
//! of a (user, pool, kind) key and the user's assignment in a pool (`connect_info`,
//! `pool_request`), the user's recent tasks (`tasks`) — are served from memory until they
//! change.
//!
//! **When an entry goes.** Every write of a task or an assignment through this instance drops
//! what it changed (the task, and everything cached of its user) once the backend has done
//! the write. On a shared store (Redis) the write is also announced on the bus
//! ([`BusEvent::Invalidate`]) by the write itself: the Redis script or transaction that writes
//! publishes the announcement, so no crash of the writer and no lost connection can leave a
//! write unannounced (and another instance serving the old value). Being published when the
//! write is made, it reaches another instance *before* the task event the domain publishes
//! after it — a client told "ready" by a push never reads "running" on any instance. While
//! the bus is disconnected ([`BusEvent::BusGap`]) nothing is cached or served from the
//! cache, and the cache starts empty when the subscription is back, since announcements may
//! have been missed in between; once the bus is gone for good (shutdown), nothing is served
//! from the cache either.
//!
//! **Racing reads.** A read that misses loads from the backend and then fills the entry —
//! unless an invalidation of that entry happened since the read began: each entry belongs to
//! one of [`STRIPES`] generation counters (by user id, or by task id for tasks by id), an
//! invalidation bumps the counter *before* removing the entry, and a fill checks the counter
//! under the same map lock the removal takes. So once an invalidation has been applied, no
//! read that started before it can put the old value back.
//!
//! **Bounds.** At most [`MAX_ENTRIES`] users' and [`MAX_ENTRIES`] tasks' entries (past that a
//! map is emptied and refills), and nothing older than [`MAX_AGE`] is served: what no write
//! on any instance announces — a task the retention sweep of another instance deleted — is
//! forgotten within that time. Tasks by id are cached only when found: unknown ids (a client
//! guessing) cost a backend read each and no memory.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use rand::Rng;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::forward::{Forward, Wraps};
use super::*;

/// Generation counters; an invalidation makes the reads in flight of 1/STRIPES of the users
/// skip their fill.
pub const STRIPES: usize = 256;
/// Entries per map before it is emptied.
pub const MAX_ENTRIES: usize = 100_000;
/// The oldest entry served.
pub const MAX_AGE: Duration = Duration::from_secs(60);

/// Tasks listed by `tasks_of_user` are cached for this limit only (the one the `tasks`
/// method asks for); other limits go to the backend.
#[derive(Clone)]
struct Recent {
    limit: usize,
    tasks: Vec<Task>,
}

/// What is cached of one user.
#[derive(Default)]
struct UserEntry {
    latest: HashMap<(Uuid, TaskKind), Timed<Option<Task>>>,
    assignments: HashMap<Uuid, Timed<Option<Assignment>>>,
    recent: Option<Timed<Recent>>,
}

struct Timed<T> {
    value: T,
    at: Instant,
    /// The watch epoch of the user whose record this is, when it was read (see `Began`).
    epoch: u64,
}

impl<T> Timed<T> {
    fn new(value: T, epoch: u64) -> Self {
        Timed {
            value,
            at: Instant::now(),
            epoch,
        }
    }

    /// The value, unless it is too old or was read under another watch of its user.
    fn fresh(&self, epoch: u64) -> Option<&T> {
        (self.epoch == epoch && self.at.elapsed() < MAX_AGE).then_some(&self.value)
    }
}

/// Where a read stood when it began: the generation of its stripe, and the router's mark
/// (a fill is kept only under a watch confirmed before the read began: what was read while
/// this instance might not have heard the user's announcements is never served).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Began {
    generation: u64,
    mark: u64,
}

/// The cache's state, shared with the task that applies the bus's announcements.
struct Cache {
    /// This instance's mark on its announcements (its own come back on Redis; they were
    /// applied when the write returned).
    origin: u64,
    users: DashMap<Uuid, UserEntry>,
    tasks: DashMap<Uuid, Timed<Task>>,
    generations: Box<[AtomicU64]>,
    /// False while the bus is disconnected.
    live: AtomicBool,
    /// Which users this instance hears, on a store that routes events per user: only their
    /// records are cached. `None`: every announcement reaches this instance.
    router: Option<Arc<dyn routing::Routing>>,
}

fn stripe(id: Uuid) -> usize {
    let hasher = BuildHasherDefault::<DefaultHasher>::default();
    hasher.hash_one(id) as usize % STRIPES
}

impl Cache {
    fn generation(&self, id: Uuid) -> u64 {
        self.generations[stripe(id)].load(Ordering::Acquire)
    }

    /// Where a read of the records of `id` (a user, or a task by id) begins.
    fn begin(&self, id: Uuid) -> Began {
        Began {
            generation: self.generation(id),
            mark: self.router.as_ref().map_or(1, |r| r.mark()),
        }
    }

    /// The epoch of `user`'s confirmed watch; `None` while this instance may miss their
    /// announcements. Without a router, always 0.
    fn epoch(&self, user: Uuid) -> Option<u64> {
        match &self.router {
            Some(router) => router.epoch(user),
            None => Some(0),
        }
    }

    fn live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// What is cached of `user`, picked by `pick`, if fresh.
    fn user_hit<T: Clone>(
        &self,
        user: Uuid,
        pick: impl FnOnce(&UserEntry) -> Option<&Timed<T>>,
    ) -> Option<T> {
        if !self.live() {
            return None;
        }
        let epoch = self.epoch(user)?;
        let entry = self.users.get(&user)?;
        pick(&entry)?.fresh(epoch).cloned()
    }

    /// Records what a read of `user`'s records that began at generation `began` found, unless
    /// an invalidation came in between.
    fn user_fill(&self, user: Uuid, began: Began, put: impl FnOnce(&mut UserEntry, u64)) {
        if !self.live() {
            return;
        }
        let Some(epoch) = self.epoch(user).filter(|e| *e < began.mark) else {
            return;
        };
        if self.users.len() >= MAX_ENTRIES && !self.users.contains_key(&user) {
            self.users.clear();
        }
        // The entry's lock is the one `drop_user` takes to remove: the check and the insert
        // cannot straddle an invalidation.
        let mut entry = self.users.entry(user).or_default();
        if self.generation(user) == began.generation {
            put(&mut entry, epoch);
        }
    }

    fn task_hit(&self, id: Uuid) -> Option<Task> {
        if !self.live() {
            return None;
        }
        let entry = self.tasks.get(&id)?;
        entry.fresh(self.epoch(entry.value.user_id)?).cloned()
    }

    fn task_fill(&self, task: &Task, began: Began) {
        if !self.live() {
            return;
        }
        let Some(epoch) = self.epoch(task.user_id).filter(|e| *e < began.mark) else {
            return;
        };
        if self.tasks.len() >= MAX_ENTRIES && !self.tasks.contains_key(&task.id) {
            self.tasks.clear();
        }
        // The entry's lock is the one `invalidate` takes to remove (see `user_fill`).
        let entry = self.tasks.entry(task.id);
        if self.generation(task.id) == began.generation {
            entry.insert(Timed::new(task.clone(), epoch));
        }
    }

    /// Drops everything cached of `user`, and the task `task` by id.
    fn invalidate(&self, user: Uuid, task: Option<Uuid>) {
        self.generations[stripe(user)].fetch_add(1, Ordering::AcqRel);
        self.users.remove(&user);
        if let Some(task) = task {
            self.generations[stripe(task)].fetch_add(1, Ordering::AcqRel);
            self.tasks.remove(&task);
        }
    }

    /// Drops everything, and every read in flight skips its fill.
    fn clear(&self) {
        for generation in self.generations.iter() {
            generation.fetch_add(1, Ordering::AcqRel);
        }
        self.users.clear();
        self.tasks.clear();
    }

    /// Drops everything; `live` says whether to serve from the cache from now on. Only the
    /// bus's own reports call it: whoever else empties the cache (`clear`) leaves the bus's
    /// verdict alone, or a clear racing a gap could turn the cache back on mid-gap.
    fn reset(&self, live: bool) {
        if !live {
            self.live.store(false, Ordering::Release);
        }
        self.clear();
        if live {
            self.live.store(true, Ordering::Release);
        }
    }

    /// Applies what the bus says to the cache; true when the event is the cache's alone.
    fn observe(&self, event: &BusEvent) -> bool {
        match *event {
            BusEvent::Invalidate {
                origin,
                user_id,
                task_id,
            } => {
                if origin != self.origin {
                    self.invalidate(user_id, task_id);
                }
                true
            }
            BusEvent::BusGap { resumed } => {
                self.reset(resumed);
                true
            }
            _ => false,
        }
    }
}

/// A backend behind the read cache. See the module docs for what is cached and when it goes.
pub struct CachedStore {
    inner: Arc<dyn Store>,
    cache: Arc<Cache>,
}

impl CachedStore {
    /// The cache in front of `inner`. For a shared backend, its bus must deliver to the
    /// sender this returns' caller gets from [`CachedStore::bus`].
    fn new(inner: Arc<dyn Store>) -> Self {
        let generations = (0..STRIPES).map(|_| AtomicU64::new(0)).collect();
        CachedStore {
            cache: Arc::new(Cache {
                // The backend's own when it announces writes, so this instance skips them.
                origin: inner
                    .announced_writes_origin()
                    .unwrap_or_else(|| rand::rng().random()),
                users: DashMap::new(),
                tasks: DashMap::new(),
                generations,
                live: AtomicBool::new(true),
                router: inner.router(),
            }),
            inner,
        }
    }

    /// The cache in front of a store of this process alone (SQLite): every write goes
    /// through it, so there is nothing to hear from the bus.
    pub fn local(inner: Arc<dyn Store>) -> Self {
        debug_assert!(!inner.is_shared());
        Self::new(inner)
    }

    /// The cache in front of a shared store (Redis): `connect` opens the backend with the
    /// bus sender it is given; what arrives on it is applied to the cache, and every event
    /// other than the cache's own is passed on to `sink`, in order.
    pub async fn shared<F>(
        sink: mpsc::UnboundedSender<BusEvent>,
        connect: impl FnOnce(mpsc::UnboundedSender<BusEvent>) -> F,
    ) -> anyhow::Result<Self>
    where
        F: Future<Output = anyhow::Result<Arc<dyn Store>>>,
    {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let store = Self::new(connect(tx).await?);
        let cache = store.cache.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                if !cache.observe(&event) && sink.send(event).is_err() {
                    break;
                }
            }
            // No more invalidations will be heard (the bus or the application is gone, as at
            // shutdown): stop serving from the cache.
            cache.reset(false);
        });
        Ok(store)
    }

    /// A write of `user`'s records (and of task `task`) was made, or may have been: drop
    /// what is cached of them here, and announce it to the other instances unless the
    /// backend's write announced itself (Redis does, atomically with the write).
    fn changed(&self, user: Uuid, task: Option<Uuid>) {
        self.cache.invalidate(user, task);
        if self.inner.is_shared() && self.inner.announced_writes_origin().is_none() {
            self.inner.publish(BusEvent::Invalidate {
                origin: self.cache.origin,
                user_id: user,
                task_id: task,
            });
        }
    }
}

impl Wraps for CachedStore {
    fn inner(&self) -> &dyn Store {
        &*self.inner
    }
}

// Nothing of these is cached: passed straight through.
impl Forward<dyn Upkeep> for CachedStore {}
impl Forward<dyn Sessions> for CachedStore {}
impl Forward<dyn Mfa> for CachedStore {}
impl Forward<dyn Directory> for CachedStore {}
impl Forward<dyn JwtRevocations> for CachedStore {}
impl Forward<dyn Inventory> for CachedStore {}
// Warm sets are read only by the filler and taken atomically: a cached list would be stale
// the moment another instance takes a machine, and nothing reads one on a client's path.
impl Forward<dyn Warm> for CachedStore {}
impl Forward<dyn Lockout> for CachedStore {}
impl Forward<dyn Federation> for CachedStore {}
impl Forward<dyn SecurityKeys> for CachedStore {}
impl Forward<dyn Audit> for CachedStore {}

impl Bus for CachedStore {
    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }

    fn publish(&self, event: BusEvent) {
        self.inner.publish(event)
    }

    fn router(&self) -> Option<Arc<dyn routing::Routing>> {
        self.inner.router()
    }
}

#[async_trait]
impl Tasks for CachedStore {
    async fn task_get(&self, user: Uuid, id: Uuid) -> StoreResult<Option<Task>> {
        if let Some(task) = self.cache.task_hit(id) {
            return Ok((task.user_id == user).then_some(task));
        }
        let began = self.cache.begin(id);
        let found = self.inner.task_get(user, id).await?;
        if let Some(task) = &found {
            self.cache.task_fill(task, began);
        }
        Ok(found)
    }

    async fn task_latest(&self, key: TaskKey) -> StoreResult<Option<Task>> {
        let (user, pool, kind) = key;
        if let Some(hit) = self.cache.user_hit(user, |u| u.latest.get(&(pool, kind))) {
            return Ok(hit);
        }
        let began = self.cache.begin(user);
        let found = self.inner.task_latest(key).await?;
        self.cache.user_fill(user, began, |u, epoch| {
            u.latest
                .insert((pool, kind), Timed::new(found.clone(), epoch));
        });
        Ok(found)
    }

    async fn task_create(&self, expected: Option<Uuid>, task: &Task) -> StoreResult<bool> {
        let created = self.inner.task_create(expected, task).await;
        // Also when the compare-and-set lost: what this instance holds as the latest is old.
        self.changed(task.user_id, None);
        created
    }

    async fn task_update(&self, task: &Task) -> StoreResult<bool> {
        let updated = self.inner.task_update(task).await;
        self.changed(task.user_id, Some(task.id));
        updated
    }

    async fn tasks_of_user(&self, user: Uuid, limit: usize) -> StoreResult<Vec<Task>> {
        let hit = self.cache.user_hit(user, |u| {
            u.recent.as_ref().filter(|r| r.value.limit == limit)
        });
        if let Some(recent) = hit {
            return Ok(recent.tasks);
        }
        let began = self.cache.begin(user);
        let tasks = self.inner.tasks_of_user(user, limit).await?;
        self.cache.user_fill(user, began, |u, epoch| {
            u.recent = Some(Timed::new(
                Recent {
                    limit,
                    tasks: tasks.clone(),
                },
                epoch,
            ));
        });
        Ok(tasks)
    }

    async fn tasks_active(&self) -> StoreResult<Vec<Task>> {
        self.inner.tasks_active().await
    }

    async fn tasks_sweep(&self, cutoff_ms: u64) -> StoreResult<usize> {
        let swept = self.inner.tasks_sweep(cutoff_ms).await;
        if !matches!(swept, Ok(0)) {
            // Which tasks went is not known here: start again (this is an hourly sweep).
            self.cache.clear();
        }
        swept
    }

    async fn lease_acquire(&self, task: Uuid, owner: &str, ttl: Duration) -> StoreResult<bool> {
        self.inner.lease_acquire(task, owner, ttl).await
    }

    async fn lease_release(&self, task: Uuid, owner: &str) -> StoreResult<()> {
        self.inner.lease_release(task, owner).await
    }
}

#[async_trait]
impl Assignments for CachedStore {
    async fn assignment_get(&self, user: Uuid, pool: Uuid) -> StoreResult<Option<Assignment>> {
        if let Some(hit) = self.cache.user_hit(user, |u| u.assignments.get(&pool)) {
            return Ok(hit);
        }
        let began = self.cache.begin(user);
        let found = self.inner.assignment_get(user, pool).await?;
        self.cache.user_fill(user, began, |u, epoch| {
            u.assignments.insert(pool, Timed::new(found.clone(), epoch));
        });
        Ok(found)
    }

    async fn assignment_create(&self, a: &Assignment) -> StoreResult<bool> {
        let created = self.inner.assignment_create(a).await;
        self.changed(a.user_id, None);
        created
    }

    async fn assignment_remove(&self, user: Uuid, pool: Uuid) -> StoreResult<Option<Assignment>> {
        let removed = self.inner.assignment_remove(user, pool).await;
        self.changed(user, None);
        removed
    }

    async fn assignments(&self) -> StoreResult<Vec<Assignment>> {
        self.inner.assignments().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> Cache {
        Cache {
            origin: 1,
            users: DashMap::new(),
            tasks: DashMap::new(),
            generations: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            live: AtomicBool::new(true),
            router: None,
        }
    }

    fn put_recent(c: &Cache, user: Uuid, began: Began, tasks: Vec<Task>) {
        c.user_fill(user, began, |u, epoch| {
            u.recent = Some(Timed::new(Recent { limit: 50, tasks }, epoch))
        });
    }

    fn recent(c: &Cache, user: Uuid) -> Option<usize> {
        c.user_hit(user, |u| u.recent.as_ref())
            .map(|r| r.tasks.len())
    }

    /// A router whose subscriptions always succeed at once.
    struct Accept;

    impl redis_store::watches::Subscriber for Accept {
        async fn apply(&self, _subscribe: bool, _users: &[Uuid]) -> bool {
            true
        }
    }

    #[tokio::test]
    async fn with_routing_only_what_was_read_under_the_users_confirmed_watch_is_served() {
        let router = redis_store::watches::Watches::new(Accept);
        let c = Cache {
            router: Some(router.clone() as Arc<dyn routing::Routing>),
            ..cache()
        };
        let user = Uuid::new_v4();
        put_recent(&c, user, c.begin(user), vec![]);
        assert_eq!(recent(&c, user), None, "not watched: not kept");

        let began = c.begin(user);
        let watch = router.watch(user).await;
        put_recent(&c, user, began, vec![]);
        assert_eq!(
            recent(&c, user),
            None,
            "read before the watch was confirmed"
        );
        put_recent(&c, user, c.begin(user), vec![]);
        assert_eq!(recent(&c, user), Some(0), "read under the watch");

        drop(watch);
        assert_eq!(recent(&c, user), None, "the watch ended: not served");
        let _again = router.watch(user).await;
        assert_eq!(
            recent(&c, user),
            None,
            "a new watch does not serve what the old one read (announcements were missed between)"
        );
        put_recent(&c, user, c.begin(user), vec![]);
        assert_eq!(recent(&c, user), Some(0));

        let task = Task::new(TaskKind::PoolExpand, user, Uuid::new_v4());
        c.task_fill(&task, c.begin(task.id));
        assert_eq!(c.task_hit(task.id), Some(task.clone()));
        router.disconnected();
        assert!(
            c.task_hit(task.id).is_none(),
            "a lost connection unconfirms the watch: a task by id is not served either"
        );
    }

    #[test]
    fn a_read_that_began_before_an_invalidation_does_not_fill() {
        let c = cache();
        let user = Uuid::new_v4();
        let began = c.begin(user);
        c.invalidate(user, None);
        put_recent(&c, user, began, vec![]);
        assert_eq!(recent(&c, user), None, "the read's old answer was not kept");
        put_recent(&c, user, c.begin(user), vec![]);
        assert_eq!(recent(&c, user), Some(0), "a read begun after it fills");
        c.invalidate(user, None);
        assert_eq!(recent(&c, user), None, "and the next invalidation drops it");
    }

    #[test]
    fn a_task_read_that_began_before_its_invalidation_does_not_fill() {
        let c = cache();
        let task = Task::new(TaskKind::PoolExpand, Uuid::new_v4(), Uuid::new_v4());
        let began = c.begin(task.id);
        c.invalidate(task.user_id, Some(task.id));
        c.task_fill(&task, began);
        assert!(c.task_hit(task.id).is_none());
        c.task_fill(&task, c.begin(task.id));
        assert_eq!(c.task_hit(task.id), Some(task));
    }

    #[test]
    fn nothing_is_served_or_kept_during_a_bus_gap_and_the_cache_restarts_empty() {
        let c = cache();
        let user = Uuid::new_v4();
        put_recent(&c, user, c.begin(user), vec![]);
        let began = c.begin(user);
        assert!(c.observe(&BusEvent::BusGap { resumed: false }));
        assert_eq!(recent(&c, user), None);
        put_recent(&c, user, c.begin(user), vec![]);
        assert_eq!(recent(&c, user), None, "not filled while the bus is away");
        assert!(c.observe(&BusEvent::BusGap { resumed: true }));
        put_recent(&c, user, began, vec![]);
        assert_eq!(
            recent(&c, user),
            None,
            "a read from before the gap does not fill"
        );
        put_recent(&c, user, c.begin(user), vec![]);
        assert_eq!(recent(&c, user), Some(0));
    }

    #[test]
    fn emptying_the_cache_during_a_bus_gap_does_not_end_the_gap() {
        let c = cache();
        let user = Uuid::new_v4();
        assert!(c.observe(&BusEvent::BusGap { resumed: false }));
        c.clear();
        put_recent(&c, user, c.begin(user), vec![]);
        assert_eq!(recent(&c, user), None, "still off until the bus is back");
        assert!(c.observe(&BusEvent::BusGap { resumed: true }));
        put_recent(&c, user, c.begin(user), vec![]);
        assert_eq!(recent(&c, user), Some(0));
    }

    #[test]
    fn another_instances_announcement_invalidates_and_its_own_is_skipped() {
        let c = cache();
        let user = Uuid::new_v4();
        put_recent(&c, user, c.begin(user), vec![]);
        let own = BusEvent::Invalidate {
            origin: c.origin,
            user_id: user,
            task_id: None,
        };
        assert!(c.observe(&own));
        assert_eq!(recent(&c, user), Some(0), "applied when its write returned");
        let other = BusEvent::Invalidate {
            origin: c.origin + 1,
            user_id: user,
            task_id: None,
        };
        assert!(c.observe(&other));
        assert_eq!(recent(&c, user), None);
        assert!(!c.observe(&BusEvent::JwtRevoked {
            jti: "j".into(),
            exp: 0
        }));
    }
}
