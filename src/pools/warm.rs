//! Warm sets: machines a pool's provisioner makes ahead of demand and keeps unassigned, so that
//! step 1 completes at once from one instead of waiting for the provisioner (`warm`,
//! `warm_schedule`; docs/warm-sets.md).
//!
//! - **Target.** At an instant of the server's clock, the largest of `warm` and the `count` of
//!   every `warm_schedule` window open then.
//! - **Taking.** Step 1 of a pool with a warm set first takes a machine from it
//!   ([`Warm::warm_take`](crate::store::Warm::warm_take): of instances racing for the last
//!   one, exactly one gets it), and the runner assigns it like one the provisioner made; only
//!   when the set is empty is the provisioner asked. A take asks for a replacement at once.
//! - **Rounds.** A round brings one pool's set to its target, off every request path, on the
//!   tracker: surplus machines (a window closed) are given back to the provisioner, oldest
//!   first (reason `warm set shrunk`); missing ones are made by `expand` for nobody
//!   (`StepRequest::warm`), at most [`CONCURRENT_FILLS`] at a time, each under
//!   `task_deadline`. The round looks again after each fill and when a take asks it to, so
//!   takes made meanwhile are replaced in the same round. On a shared store one instance at a time runs a pool's
//!   rounds: it holds a lease on the pool's filler id ([`filler_id`]), renewed while it runs.
//! - **Failures.** Each failed fill is logged and counted once (step `warm`); fills then back
//!   off ([`BACKOFF_FIRST`], doubled with each failure in a row, up to [`BACKOFF_MAX`]), so a
//!   failing provisioner is not hammered.
//! - **Restarts.** Warm machines are kept in the store and never released at shutdown; a
//!   fill still running when the drain ends is dropped like a task's step. At start-up a pool
//!   whose config no longer has a warm set gives back what its set still holds.
//!
//! The background loop looks at every set every [`WARM_INTERVAL`] ([`Pools::warm_tick`]);
//! tests call that after moving the clock, and [`Pools::warm_settled`] to wait for the rounds.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use uuid::Uuid;

use super::calendar::Calendar;
use super::{Pool, PoolConfig, PoolView, Pools, step_request};
use crate::domain::{Machine, Task, TaskKind};
use crate::provision::{Diagnosis, Progress, Provisioner, StepError, StepRequest, Update};

/// Fills running at once for one pool; the rest start as those end.
pub const CONCURRENT_FILLS: usize = 8;

/// How often the background loop looks at every warm set.
pub const WARM_INTERVAL: Duration = Duration::from_secs(5);

/// How long fills wait after a failed one; doubled with each failure in a row.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(5);

/// The longest wait after failed fills.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// What a release of a warm machine nobody was given tells the provisioner.
pub const SHRUNK: &str = "warm set shrunk";

/// What a release tells the provisioner of a machine made for the set that the store would
/// not keep.
const NOT_RECORDED: &str = "warm set not recorded";

/// How many machines a pool's set is to hold, by the clock.
struct Policy {
    warm: u32,
    /// Each `warm_schedule` entry as a one-window calendar, with its count.
    windows: Vec<(Calendar, u32)>,
}

impl Policy {
    /// The pool's policy, `None` when it has no warm set at all.
    fn of(config: &PoolConfig) -> Option<Policy> {
        (config.warm > 0 || !config.warm_schedule.is_empty()).then(|| Policy {
            warm: config.warm,
            windows: config
                .warm_schedule
                .iter()
                .map(|w| (Calendar(vec![w.window()]), w.count))
                .collect(),
        })
    }

    /// The target at `at_ms`: the largest of `warm` and the counts of the windows open then.
    fn target(&self, at_ms: u64) -> u32 {
        self.windows
            .iter()
            .filter(|(calendar, _)| calendar.is_open(at_ms))
            .map(|(_, count)| *count)
            .fold(self.warm, u32::max)
    }
}

/// One pool's warm set as this instance drives it.
struct WarmPool {
    policy: Policy,
    /// A round runs for the pool on this instance.
    running: AtomicBool,
    /// A look was asked for (a take, a tick) while a round ran: it looks again before it ends.
    again: AtomicBool,
    /// Wakes a round waiting for its fills to look again now (a take to replace).
    wake: tokio::sync::Notify,
    /// Failed fills in a row, and until when fills wait.
    backoff: Mutex<(u32, Option<Instant>)>,
}

impl WarmPool {
    fn backing_off(&self) -> bool {
        let backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        backoff.1.is_some_and(|until| Instant::now() < until)
    }

    /// A fill failed: the next ones wait, twice as long as after the failure before.
    fn failed(&self) {
        let mut backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        backoff.0 = backoff.0.saturating_add(1);
        let wait = BACKOFF_FIRST
            .saturating_mul(1 << (backoff.0 - 1).min(16))
            .min(BACKOFF_MAX);
        backoff.1 = Some(Instant::now() + wait);
    }

    fn succeeded(&self) {
        *self.backoff.lock().unwrap_or_else(|e| e.into_inner()) = (0, None);
    }
}

/// The warm sets of the pools that have one, and the rounds running on this instance.
pub(super) struct WarmSets {
    pools: HashMap<Uuid, WarmPool>,
    /// Rounds running here ([`Pools::warm_settled`] waits for none).
    rounds: watch::Sender<usize>,
}

impl WarmSets {
    pub(super) fn new(configs: &[PoolConfig]) -> Self {
        WarmSets {
            pools: configs
                .iter()
                .filter_map(|c| {
                    Some((
                        c.id,
                        WarmPool {
                            policy: Policy::of(c)?,
                            running: AtomicBool::new(false),
                            again: AtomicBool::new(false),
                            wake: tokio::sync::Notify::new(),
                            backoff: Mutex::new((0, None)),
                        },
                    ))
                })
                .collect(),
            rounds: watch::Sender::new(0),
        }
    }
}

/// What one look at a pool's warm set found ([`Pools::warm_tick`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmLook {
    /// The pool's name.
    pub pool: String,
    /// Machines in the set.
    pub held: usize,
    /// What it is to hold now.
    pub target: u32,
    /// Whether a round was started to bring it there (not when one runs here already, when
    /// fills back off after a failure, or when nothing is to be done).
    pub started: bool,
}

/// What a round did, for its closing log line.
#[derive(Default)]
struct Round {
    /// Whether it had anything to do (its opening line was logged).
    began: bool,
    made: usize,
    failed: usize,
    given_back: usize,
}

impl Round {
    /// Logs the round's opening line, once.
    fn begin(&mut self, pool: &str, held: usize, target: usize) {
        if !self.began {
            self.began = true;
            tracing::info!(pool = %pool, held, target, "warm set round started");
        }
    }
}

/// A fill's end: a machine, or why not (with what the provisioner reported).
type Fill = Result<Machine, (StepError, Option<Diagnosis>)>;

impl Pools {
    /// Looks at every warm set, by the server's clock: reads how many machines it holds
    /// (the `poolgate_warm_machines` gauge) and its target (`poolgate_warm_target`), and starts
    /// a round where they differ. Returns at once, with what it found; the rounds run on (see
    /// [`Pools::warm_settled`]). The background loop calls it every [`WARM_INTERVAL`].
    pub async fn warm_tick(&self) -> Vec<WarmLook> {
        let now = self.clock.now_ms();
        let mut looks = Vec::new();
        for id in &self.order {
            let (Some(warm), Some(pool)) = (self.warm.pools.get(id), self.pools.get(id)) else {
                continue;
            };
            let target = warm.policy.target(now);
            let held = match self.store.warm_list(*id).await {
                Ok(held) => held.len(),
                Err(e) => {
                    tracing::warn!(pool = %pool.view.name, error = %e, "cannot read the warm set");
                    continue;
                }
            };
            self.warm_gauges(&pool.view.name, held, target);
            let due = match held.cmp(&(target as usize)) {
                std::cmp::Ordering::Greater => true,
                std::cmp::Ordering::Less => !warm.backing_off(),
                std::cmp::Ordering::Equal => false,
            };
            looks.push(WarmLook {
                pool: pool.view.name.clone(),
                held,
                target,
                started: due && self.warm_round(*id),
            });
        }
        looks
    }

    /// Waits until no warm-set round runs on this instance: the fills they started have been
    /// made and added (or failed), and the surplus taken out (its releases, like every
    /// release, run on in the background).
    pub async fn warm_settled(&self) {
        let mut rounds = self.warm.rounds.subscribe();
        // The sender lives as long as `self`.
        let _ = rounds.wait_for(|n| *n == 0).await;
    }

    /// Background: looks at every warm set every [`WARM_INTERVAL`] until shutdown.
    pub(super) async fn warm_loop(self) {
        if self.warm.pools.is_empty() {
            return;
        }
        let mut every = tokio::time::interval(WARM_INTERVAL);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = every.tick() => {
                    self.warm_tick().await;
                }
            }
        }
    }

    /// Step 1's first resort in a pool with a warm set: a machine from the set, taken
    /// atomically, and a round asked for to replace it. `None` (the provisioner is asked
    /// then): no warm set, an empty one, or the store failed.
    pub(super) async fn take_warm(&self, task: &Task) -> Option<Machine> {
        if task.kind != TaskKind::PoolExpand || !self.warm.pools.contains_key(&task.pool_id) {
            return None;
        }
        let taken = self
            .store
            .warm_take(task.pool_id)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(task_id = %task.id, error = %e, "cannot take a warm machine; asking the provisioner");
                None
            });
        if let Some(machine) = &taken {
            tracing::debug!(task_id = %task.id, machine = %machine.verbose_name, "step 1 took a warm machine");
        }
        self.warm_round(task.pool_id);
        taken
    }

    /// Start-up: a pool whose config has no warm set any more gives back what its set still
    /// holds. Under the pool's filler lease, so that an instance still filling the set under
    /// the old config is left alone.
    pub(super) async fn warm_leftovers(&self) {
        for id in &self.order {
            let Some(pool) = self
                .pools
                .get(id)
                .filter(|_| !self.warm.pools.contains_key(id))
            else {
                continue;
            };
            let held = match self.store.warm_list(*id).await {
                Ok(held) if !held.is_empty() => held,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(pool = %pool.view.name, error = %e, "cannot read the warm set");
                    continue;
                }
            };
            let lease = filler_id(*id);
            let ttl = self.timings.task_lease;
            if !matches!(
                self.store.lease_acquire(lease, &self.instance, ttl).await,
                Ok(true)
            ) {
                continue;
            }
            tracing::info!(pool = %pool.view.name, machines = held.len(), "the pool has no warm set any more: giving back what its set held");
            for machine in held {
                if let Ok(true) = self.store.warm_remove(*id, machine.id).await {
                    let req = warm_request(&pool.view, Some(machine), Some(SHRUNK));
                    self.release_machine(&pool.provisioner, req);
                }
            }
            let _ = self.store.lease_release(lease, &self.instance).await;
        }
    }

    /// Starts a round for the pool, unless one runs here already: that one then looks again,
    /// at once if it waits for fills, else before it ends. True when this started one.
    fn warm_round(&self, id: Uuid) -> bool {
        let Some(warm) = self.warm.pools.get(&id) else {
            return false;
        };
        warm.again.store(true, Ordering::SeqCst);
        if warm.running.swap(true, Ordering::SeqCst) {
            warm.wake.notify_one();
            return false;
        }
        self.warm.rounds.send_modify(|n| *n += 1);
        let this = self.clone();
        self.tracker.spawn(async move {
            let warm = &this.warm.pools[&id];
            loop {
                warm.again.store(false, Ordering::SeqCst);
                this.warm_round_once(id, warm).await;
                warm.running.store(false, Ordering::SeqCst);
                // Asked again meanwhile, and no other round took over since: once more.
                if !warm.again.load(Ordering::SeqCst) || warm.running.swap(true, Ordering::SeqCst) {
                    break;
                }
            }
            this.warm.rounds.send_modify(|n| *n -= 1);
        });
        true
    }

    /// One round: under the pool's filler lease, takes out the surplus or starts the missing
    /// fills, looks again as each fill ends, and ends when none runs.
    async fn warm_round_once(&self, id: Uuid, warm: &WarmPool) {
        let Some(pool) = self.pools.get(&id).cloned() else {
            return;
        };
        let lease = filler_id(id);
        let ttl = self.timings.task_lease;
        match self.store.lease_acquire(lease, &self.instance, ttl).await {
            Ok(true) => {}
            // Another instance fills this set.
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(pool = %pool.view.name, error = %e, "cannot take the warm set's filler lease; the next look tries again");
                return;
            }
        }
        let mut fills: JoinSet<Fill> = JoinSet::new();
        let mut round = Round::default();
        let mut renew = tokio::time::interval(ttl / 3);
        renew.tick().await;
        // The lease went to another instance (this one could not renew it in time): the fills
        // under way are kept, no new one starts.
        let mut lost = false;
        loop {
            if !lost && !self.shutdown.is_cancelled() {
                self.warm_step(&pool, warm, &mut fills, &mut round).await;
            }
            if fills.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                // Fills run on during the drain, like tasks; those done by its end are kept.
                _ = self.drained.cancelled() => {
                    fills.abort_all();
                    while let Some(done) = fills.join_next().await {
                        if let Ok(Ok(machine)) = done {
                            self.warm_keep(&pool, machine, &mut round).await;
                        }
                    }
                    break;
                }
                Some(done) = fills.join_next() => self.warm_filled(&pool, warm, done, &mut round).await,
                // Asked to look again (a machine was taken): on to the next step at once.
                _ = warm.wake.notified() => {}
                _ = renew.tick(), if self.store.is_shared() => {
                    match self.store.lease_acquire(lease, &self.instance, ttl).await {
                        Ok(true) => {}
                        Ok(false) => {
                            lost = true;
                            tracing::warn!(pool = %pool.view.name, "another instance took over the warm set's filling; this one ends its fills under way and starts no more");
                        }
                        Err(e) => tracing::warn!(pool = %pool.view.name, error = %e, "cannot renew the warm set's filler lease"),
                    }
                }
            }
        }
        let _ = self.store.lease_release(lease, &self.instance).await;
        if round.began {
            let target = warm.policy.target(self.clock.now_ms());
            let held = self.store.warm_list(id).await.map(|h| h.len());
            if let Ok(held) = held {
                self.warm_gauges(&pool.view.name, held, target);
            }
            tracing::info!(
                pool = %pool.view.name,
                held = held.ok(),
                target,
                made = round.made,
                failed = round.failed,
                given_back = round.given_back,
                "warm set round ended"
            );
        }
    }

    /// Compares the set with its target now: gives back the surplus (oldest first, as takes
    /// would have given them out next), or starts the missing fills, unless fills back off.
    async fn warm_step(
        &self,
        pool: &Pool,
        warm: &WarmPool,
        fills: &mut JoinSet<Fill>,
        round: &mut Round,
    ) {
        let id = pool.view.id;
        let target = warm.policy.target(self.clock.now_ms()) as usize;
        let held = match self.store.warm_list(id).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(pool = %pool.view.name, error = %e, "cannot read the warm set");
                return;
            }
        };
        if held.len() > target {
            round.begin(&pool.view.name, held.len(), target);
            for machine in &held[..held.len() - target] {
                match self.store.warm_remove(id, machine.id).await {
                    Ok(true) => {
                        let req = warm_request(&pool.view, Some(machine.clone()), Some(SHRUNK));
                        self.release_machine(&pool.provisioner, req);
                        round.given_back += 1;
                    }
                    // Taken by a step 1 meanwhile.
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(pool = %pool.view.name, error = %e, "cannot take a machine out of the warm set");
                        return;
                    }
                }
            }
            return;
        }
        let missing = target
            .saturating_sub(held.len() + fills.len())
            .min(CONCURRENT_FILLS.saturating_sub(fills.len()));
        if missing == 0 || warm.backing_off() {
            return;
        }
        round.begin(&pool.view.name, held.len(), target);
        for _ in 0..missing {
            let req = warm_request(&pool.view, None, None);
            fills.spawn(fill(pool.provisioner.clone(), req, self.timings.deadline));
        }
    }

    /// A fill ended: its machine joins the set; a failure is logged and counted once, and
    /// makes the next fills wait.
    async fn warm_filled(
        &self,
        pool: &Pool,
        warm: &WarmPool,
        done: Result<Fill, JoinError>,
        round: &mut Round,
    ) {
        let (error, diagnosis) = match done {
            Ok(Ok(machine)) => {
                warm.succeeded();
                self.warm_keep(pool, machine, round).await;
                return;
            }
            Ok(Err(failure)) => failure,
            Err(join) if join.is_panic() => (
                StepError::Failed(format!("The provisioner crashed: {join}.")),
                Some(Diagnosis {
                    outcome: "crashed",
                    exit_status: None,
                    stderr: None,
                }),
            ),
            // Aborted: not a failure of the provisioner's.
            Err(_) => return,
        };
        round.failed += 1;
        warm.failed();
        self.report_failure(
            &warm_request(&pool.view, None, None),
            "warm",
            &error,
            diagnosis,
        );
    }

    /// Adds a machine made for the set. Retried for about six seconds, a failover's worth; a
    /// machine the store would not take is given back rather than forgotten.
    async fn warm_keep(&self, pool: &Pool, machine: Machine, round: &mut Round) {
        let id = pool.view.id;
        let mut added = self.store.warm_add(id, &machine).await;
        for wait_ms in [100, 200, 400, 800, 1600, 3200] {
            let Err(e) = &added else { break };
            tracing::warn!(pool = %pool.view.name, error = %e, "cannot add a machine to the warm set; retrying");
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            added = self.store.warm_add(id, &machine).await;
        }
        match added {
            Ok(true) => round.made += 1,
            // A write whose reply was lost, retried: the machine is in the set.
            Ok(false) => {}
            Err(e) => {
                tracing::error!(pool = %pool.view.name, machine = %machine.verbose_name, error = %e, "cannot add a machine to the warm set; giving it back");
                let req = warm_request(&pool.view, Some(machine), Some(NOT_RECORDED));
                self.release_machine(&pool.provisioner, req);
            }
        }
    }

    fn warm_gauges(&self, pool: &str, held: usize, target: u32) {
        let labels = crate::metrics::PoolLabels {
            pool: pool.to_owned(),
        };
        self.metrics
            .warm_machines
            .get_or_create(&labels)
            .set(held as i64);
        self.metrics
            .warm_target
            .get_or_create(&labels)
            .set(i64::from(target));
    }
}

/// The id under which one instance at a time fills a pool's set, the same on every instance:
/// a name-based UUID in the pool's namespace (task ids are random: never the same).
pub(super) fn filler_id(pool: Uuid) -> Uuid {
    Uuid::new_v5(&pool, b"poolgate warm set filler")
}

/// A step for the pool's warm set, for nobody: an `expand` that fills it (no machine), or the
/// `release` of one of its machines, saying why.
fn warm_request(pool: &PoolView, machine: Option<Machine>, reason: Option<&str>) -> StepRequest {
    let mut req = step_request(Uuid::nil(), "", pool, machine);
    req.reason = reason.map(str::to_owned);
    req.warm = true;
    req
}

/// One fill: the provisioner's `expand` for the set, ended at `deadline`, with what it reported
/// of a failure.
async fn fill(provisioner: Arc<dyn Provisioner>, req: StepRequest, deadline: Duration) -> Fill {
    let (progress, mut updates) = Progress::channel();
    let ended = tokio::time::timeout(deadline, provisioner.expand(&req, progress)).await;
    let mut diagnosis = None;
    while let Ok(update) = updates.try_recv() {
        if let Update::Failure(d) = update {
            diagnosis = Some(d);
        }
    }
    match ended {
        Ok(Ok(machine)) => Ok(machine),
        Ok(Err(e)) => Err((e, diagnosis)),
        Err(_) => Err((
            StepError::Cancelled(format!(
                "The fill did not finish within task_deadline ({} s).",
                deadline.as_secs_f64()
            )),
            Some(Diagnosis {
                outcome: "deadline",
                exit_status: None,
                stderr: None,
            }),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml: &str) -> Policy {
        let text = format!(
            "id = \"6f1c2a4e-0000-4000-8000-000000000001\"\nname = \"p\"\npool_type = \"A\"\n\
             os_type = \"W\"\nconnection_types = []\n{toml}"
        );
        Policy::of(&toml::from_str(&text).unwrap()).unwrap()
    }

    fn ms(s: &str) -> u64 {
        s.parse::<jiff::Timestamp>().unwrap().as_millisecond() as u64
    }

    #[test]
    fn the_target_is_the_largest_of_warm_and_the_open_windows() {
        // Moscow is UTC+3; 2026-12-07 is a Monday.
        let p = policy(
            "warm = 2\nwarm_schedule = [\
             { days = \"Mon-Fri\", at = \"08:30\", count = 30, timezone = \"Europe/Moscow\" },\
             { at = \"12:00\", until = \"14:00\", count = 40, timezone = \"Europe/Moscow\" },\
             { at = \"22:00\", until = \"02:00\", count = 1 }]",
        );
        assert_eq!(p.target(ms("2026-12-07T05:29:59Z")), 2, "before 08:30");
        assert_eq!(p.target(ms("2026-12-07T05:30:00Z")), 30, "from 08:30");
        assert_eq!(
            p.target(ms("2026-12-07T09:00:00Z")),
            40,
            "the larger of two"
        );
        assert_eq!(p.target(ms("2026-12-07T20:59:59Z")), 30, "until 24:00");
        assert_eq!(p.target(ms("2026-12-07T21:00:00Z")), 2, "the day is over");
        assert_eq!(p.target(ms("2026-12-12T06:00:00Z")), 2, "not on Saturday");
        assert_eq!(p.target(ms("2026-12-12T09:00:00Z")), 40, "every day");
        let night = policy("warm_schedule = [{ at = \"22:00\", until = \"02:00\", count = 3 }]");
        assert_eq!(night.target(ms("2026-12-08T01:00:00Z")), 3, "over midnight");
        assert_eq!(night.target(ms("2026-12-08T02:00:00Z")), 0);
    }

    #[test]
    fn a_pool_without_warm_keys_has_no_warm_set() {
        let text = "id = \"6f1c2a4e-0000-4000-8000-000000000001\"\nname = \"p\"\n\
                    pool_type = \"A\"\nos_type = \"W\"\nconnection_types = []";
        assert!(Policy::of(&toml::from_str(text).unwrap()).is_none());
        assert_eq!(
            policy("warm_schedule = [{ at = \"08:00\", count = 1 }]").warm,
            0
        );
    }

    #[test]
    fn a_pools_filler_id_is_the_same_everywhere_and_its_own() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(filler_id(a), filler_id(a));
        assert_ne!(filler_id(a), filler_id(b));
        assert_ne!(filler_id(a), a);
    }

    #[test]
    fn fills_back_off_longer_after_each_failure_up_to_the_cap() {
        let warm = WarmPool {
            policy: policy("warm = 1"),
            running: AtomicBool::new(false),
            again: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            backoff: Mutex::new((0, None)),
        };
        assert!(!warm.backing_off());
        let mut waits = Vec::new();
        for _ in 0..10 {
            let before = Instant::now();
            warm.failed();
            let until = warm.backoff.lock().unwrap().1.unwrap();
            waits.push((until - before).as_secs());
        }
        assert!(warm.backing_off());
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300, 300, 300]);
        warm.succeeded();
        assert!(!warm.backing_off());
    }
}
