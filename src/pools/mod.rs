//! Pools and the two-step connect flow: the one implementation of the rules, called by the
//! WebSocket RPCs and by the REST shim alike.
//!
//! Tasks are keyed by (user, pool, kind). Deciding what a request gets — the running task, the
//! finished one, or a new one — ends in one compare-and-set on the key's latest task in the
//! state store, so concurrent requests (on any instance) always agree on one task. Every task
//! is driven by one runner, holding the task's lease, under a deadline; whatever happens to
//! the provisioner (error, panic, hang) or to the instance driving it, the task ends.
//!
//! Giving a machine back never runs on the caller's task: the assignment is removed at once
//! (that is what decides who holds the machine), and the provisioner's `release` runs on the
//! tracker under `release_deadline`, a few at a time, and is dropped at shutdown — so a hanging
//! release stalls neither a socket (`admin_release`), nor the lease sweep, nor a SIGTERM.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use dashmap::DashSet;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::auth::users::{User, UserDirectory};
use crate::domain::{ConnectionData, Machine};
use crate::domain::{Task, TaskError, TaskKind, TaskStatus};
use crate::error::Error;
use crate::events::EventHub;
use crate::provision::{
    Diagnosis, Progress, Provisioner, ProvisionerConfig, SimulatedConfig, StepError, StepRequest,
    Update,
};
use crate::store::{Assignment, BusEvent, Store, TaskKey, now_ms};

/// A `[[pools]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub id: Uuid,
    pub name: String,
    #[serde(default = "active")]
    pub status: String,
    #[serde(default)]
    pub is_favorite: bool,
    pub pool_type: String,
    pub os_type: String,
    pub connection_types: Vec<String>,
    /// Usernames assigned to the pool.
    #[serde(default)]
    pub users: Vec<String>,
    /// Name of a `[provisioners.NAME]` table; `simulated` works without one.
    #[serde(default = "simulated")]
    pub provisioner: String,
}

fn active() -> String {
    "ACTIVE".into()
}

fn simulated() -> String {
    "simulated".into()
}

/// A task present at start-up (the mock's demo dataset has two).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedTask {
    pub id: Uuid,
    pub username: String,
    pub pool_id: Uuid,
    pub kind: TaskKind,
    pub status: TaskStatus,
    #[serde(default)]
    pub message: Option<String>,
}

/// A pool as clients see it.
#[derive(Debug, Clone, Serialize)]
pub struct PoolView {
    pub id: Uuid,
    pub name: String,
    pub status: String,
    pub is_favorite: bool,
    pub pool_type: String,
    pub os_type: String,
    pub connection_types: Vec<String>,
}

struct Pool {
    view: PoolView,
    users: HashSet<Uuid>,
    provisioner: Arc<dyn Provisioner>,
}

/// Step 2's arguments, as both the RPC (`connect_info`) and the REST body carry them.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConnectParams {
    #[serde(default)]
    pub remote_protocol: Option<i64>,
    #[serde(default)]
    pub width: Option<i64>,
    #[serde(default)]
    pub height: Option<i64>,
    /// Accepted for compatibility with the v2 API (must be a string); dropped on reading, so
    /// it is never stored or logged.
    #[serde(default)]
    pub password: Option<Discarded>,
}

/// A string field that is checked and thrown away.
#[derive(Debug, Clone)]
pub struct Discarded;

impl<'de> Deserialize<'de> for Discarded {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|_| Discarded)
    }
}

/// What step 2 answers.
#[derive(Debug, Clone)]
pub enum ConnectOutcome {
    /// Not ready yet: the running (or new) task.
    Task(Box<Task>),
    /// Ready: how to connect.
    Connection(ConnectionData),
}

impl From<Task> for ConnectOutcome {
    fn from(task: Task) -> Self {
        ConnectOutcome::Task(Box::new(task))
    }
}

/// Tasks listed by `tasks`.
const RECENT_PER_USER: usize = 50;

/// Timings of the background work around tasks and assignments.
#[derive(Debug, Clone)]
pub struct Timings {
    /// Every connect task ends within this long.
    pub deadline: Duration,
    /// How long a machine stays assigned to a user.
    pub assignment_ttl: Duration,
    /// How often expired assignments are released.
    pub lease_sweep: Duration,
    /// How long an instance's claim on a task lasts without renewal (shared stores).
    pub task_lease: Duration,
    /// How long a FAILED step 1 keeps the pool refusing the user.
    pub failed_step_retry: Duration,
    /// Every provisioner `release` (and the start-up `reconcile`) ends within this long.
    pub release_deadline: Duration,
    /// Ended tasks older than this are deleted (except each key's latest).
    pub task_retention: Duration,
    /// How often they are.
    pub sweep_interval: Duration,
}

/// Provisioner releases running at once on one instance; more wait their turn (a sweep that
/// finds many expired leases does not start a program per lease all at once).
const CONCURRENT_RELEASES: usize = 8;

#[derive(Clone)]
pub struct Pools(Arc<Inner>);

/// What [`Pools::new`] wires the pools to: the built provisioners and the user directory the
/// config is checked against, and the services and background machinery the tasks run on.
pub struct PoolsDeps<'a> {
    /// By name, from [`Pools::build_provisioners`] (plus any a test adds).
    pub provisioners: &'a HashMap<String, Arc<dyn Provisioner>>,
    pub users: &'a UserDirectory,
    pub store: Arc<dyn Store>,
    pub events: Arc<EventHub>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Runners, releases and sweeps are spawned here, so shutdown waits for them.
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
}

pub struct Inner {
    pools: HashMap<Uuid, Arc<Pool>>,
    /// Config order, for stable listings.
    order: Vec<Uuid>,
    /// Every user's name by id: a release tells the provisioner whose machine it was.
    usernames: HashMap<Uuid, String>,
    store: Arc<dyn Store>,
    events: Arc<EventHub>,
    metrics: Arc<crate::metrics::Metrics>,
    timings: Timings,
    /// This instance's name in task leases.
    instance: String,
    /// Tasks this instance is driving.
    running: DashSet<Uuid>,
    /// Permits for provisioner releases (see [`CONCURRENT_RELEASES`]).
    releases: Arc<tokio::sync::Semaphore>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl std::ops::Deref for Pools {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

fn forbidden() -> Error {
    Error::Forbidden {
        message: "Insufficient permissions.".into(),
        err_code: Some(900),
    }
}

fn cannot_expand() -> Error {
    Error::Forbidden {
        message: "Pool cannot be expanded.".into(),
        err_code: Some(800),
    }
}

/// Concurrent creators of one key's task lose the compare-and-set and read the winner's.
const CREATE_ATTEMPTS: usize = 5;

impl Pools {
    /// Builds the provisioners named in config; `simulated` exists even when not defined.
    pub fn build_provisioners(
        configs: &HashMap<String, ProvisionerConfig>,
        store: &Arc<dyn Store>,
    ) -> anyhow::Result<HashMap<String, Arc<dyn Provisioner>>> {
        let mut built: HashMap<String, Arc<dyn Provisioner>> = HashMap::new();
        for (name, config) in configs {
            let provisioner = config
                .build(name, store.clone())
                .with_context(|| format!("provisioner {name:?}"))?;
            built.insert(name.clone(), provisioner);
        }
        if !built.contains_key("simulated") {
            built.insert(
                "simulated".into(),
                ProvisionerConfig::Simulated(SimulatedConfig::default())
                    .build("simulated", store.clone())?,
            );
        }
        Ok(built)
    }

    /// The pools of the config, served by already-built provisioners, with their timings.
    pub fn new(
        pools: &[PoolConfig],
        deps: PoolsDeps<'_>,
        timings: Timings,
    ) -> anyhow::Result<Self> {
        let PoolsDeps {
            provisioners: built,
            users,
            store,
            events,
            metrics,
            tracker,
            shutdown,
        } = deps;
        let mut map = HashMap::new();
        let mut order = Vec::new();
        for p in pools {
            let Some(provisioner) = built.get(&p.provisioner) else {
                bail!(
                    "pool {:?} names an undefined provisioner {:?}",
                    p.name,
                    p.provisioner
                );
            };
            let mut assigned = HashSet::new();
            for username in &p.users {
                let Some(user) = users.by_name(username) else {
                    bail!("pool {:?} lists an unknown user {username:?}", p.name);
                };
                assigned.insert(user.id);
            }
            let pool = Pool {
                view: PoolView {
                    id: p.id,
                    name: p.name.clone(),
                    status: p.status.clone(),
                    is_favorite: p.is_favorite,
                    pool_type: p.pool_type.clone(),
                    os_type: p.os_type.clone(),
                    connection_types: p.connection_types.clone(),
                },
                users: assigned,
                provisioner: provisioner.clone(),
            };
            if map.insert(p.id, Arc::new(pool)).is_some() {
                bail!("pool id {} is used twice", p.id);
            }
            order.push(p.id);
        }
        Ok(Pools(Arc::new(Inner {
            pools: map,
            order,
            usernames: users.iter().map(|u| (u.id, u.username.clone())).collect(),
            store,
            events,
            metrics,
            timings,
            instance: Uuid::new_v4().simple().to_string(),
            running: DashSet::new(),
            releases: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_RELEASES)),
            tracker,
            shutdown,
        })))
    }

    /// Start-up: end what a previous run left unfinished (single-instance stores), add the
    /// seed tasks, give back machines nobody holds, fill the event hub's view of active
    /// tasks, and start the background sweeps.
    pub async fn start(&self, seeds: &[SeedTask], users: &UserDirectory) -> anyhow::Result<()> {
        if !self.store.is_shared() {
            // Nothing else runs on this store: every active task lost its runner.
            for task in self.store.tasks_active().await? {
                self.end_orphan(task, TaskError::server_restarted()).await;
            }
        }
        self.seed(seeds, users).await?;
        self.reconcile().await?;
        for task in self.store.tasks_active().await? {
            self.events.publish(&task, false);
        }
        let this = self.clone();
        self.tracker.spawn(async move { this.sweeps().await });
        Ok(())
    }

    /// Adds the config's seed tasks unless a previous run already did; active ones are driven
    /// like new tasks.
    async fn seed(&self, seeds: &[SeedTask], users: &UserDirectory) -> anyhow::Result<()> {
        for s in seeds {
            let Some(user) = users.by_name(&s.username) else {
                bail!("seed task {} names an unknown user {:?}", s.id, s.username);
            };
            let Some(pool) = self.pools.get(&s.pool_id).cloned() else {
                bail!("seed task {} names an unknown pool {}", s.id, s.pool_id);
            };
            if self.store.task_get(s.id).await?.is_some() {
                continue;
            }
            let mut task = Task::new(s.kind, user.id, s.pool_id);
            task.id = s.id;
            if s.status.is_done() {
                let error = (s.status != TaskStatus::Completed).then(|| {
                    TaskError::provisioner(s.message.as_deref().unwrap_or("Seeded task."))
                });
                task.finish(s.status, error);
            }
            let latest = self.store.task_latest((user.id, s.pool_id, s.kind)).await?;
            if !self.store.task_create(latest.map(|t| t.id), &task).await? {
                continue;
            }
            if task.status.is_active() {
                let req = step_request(user.id, &user.username, &pool.view, None);
                self.launch(task, pool, req).await;
            }
        }
        Ok(())
    }

    /// Gives back machines a provisioner holds that no assignment owns (a crash between
    /// claiming a machine and recording it, or an assignment removed by hand).
    async fn reconcile(&self) -> anyhow::Result<()> {
        let assigned: HashSet<Uuid> = self
            .store
            .assignments()
            .await?
            .iter()
            .map(|a| a.machine.id)
            .collect();
        if self.store.is_shared()
            && self
                .store
                .tasks_active()
                .await?
                .iter()
                .any(|t| t.kind == TaskKind::PoolExpand)
        {
            // Another instance may be between claiming and recording: try again next start.
            return Ok(());
        }
        let mut seen = HashSet::new();
        for pool in self.pools.values() {
            let p = Arc::as_ptr(&pool.provisioner) as *const () as usize;
            if !seen.insert(p) {
                continue;
            }
            let released = tokio::time::timeout(
                self.timings.release_deadline,
                pool.provisioner.reconcile(&assigned),
            )
            .await
            .unwrap_or_else(|_| {
                tracing::warn!(
                    pool = %pool.view.name,
                    "the provisioner's reconciliation did not finish within release_deadline; \
                     what it held may not all be given back"
                );
                Vec::new()
            });
            for machine in released {
                tracing::warn!(machine = %machine.verbose_name, "released a machine no assignment owns");
            }
        }
        Ok(())
    }

    /// The user's pools, in config order; `favorites_only` keeps the favourites.
    pub fn list(&self, user: &User, favorites_only: bool) -> Vec<PoolView> {
        self.order
            .iter()
            .map(|id| &self.pools[id])
            .filter(|p| p.users.contains(&user.id))
            .filter(|p| !favorites_only || p.view.is_favorite)
            .map(|p| p.view.clone())
            .collect()
    }

    fn pool_for(&self, user: &User, pool_id: Uuid) -> Result<Arc<Pool>, Error> {
        match self.pools.get(&pool_id) {
            Some(p) if p.users.contains(&user.id) => Ok(p.clone()),
            // An unknown pool answers like a foreign one: existence is not disclosed.
            _ => Err(forbidden()),
        }
    }

    /// Step 1: a machine for the user in the pool.
    pub async fn request_machine(&self, user: &User, pool_id: Uuid) -> Result<Task, Error> {
        let pool = self.pool_for(user, pool_id)?;
        let key = (user.id, pool_id, TaskKind::PoolExpand);
        let req = step_request(user.id, &user.username, &pool.view, None);
        self.get_or_create(key, pool, req, |last| async move {
            match last.status {
                TaskStatus::Pending | TaskStatus::Running => Ok(Some(last)),
                TaskStatus::Completed
                    if self.store.assignment_get(user.id, pool_id).await?.is_some() =>
                {
                    Ok(Some(last))
                }
                TaskStatus::Failed if self.failure_holds(&last) => Err(cannot_expand()),
                // CANCELLED, COMPLETED whose machine has since been released, or a FAILED one
                // whose window passed or that an operator cleared.
                TaskStatus::Completed | TaskStatus::Cancelled | TaskStatus::Failed => Ok(None),
            }
        })
        .await
    }

    /// The one way a request gets its task: the key's latest task when `keep` says it still
    /// answers the request (`Some`: the running task on a repeat, a result that stands; or an
    /// error), else a new task, started with `req`, in its place. The new task replaces the
    /// latest by compare-and-set, so concurrent requests on any instance agree on one task: a
    /// loser reads the winner's and asks `keep` again.
    async fn get_or_create<T, F>(
        &self,
        key: TaskKey,
        pool: Arc<Pool>,
        req: StepRequest,
        mut keep: impl FnMut(Task) -> F,
    ) -> Result<T, Error>
    where
        T: From<Task>,
        F: Future<Output = Result<Option<T>, Error>>,
    {
        let (user_id, pool_id, kind) = key;
        for _ in 0..CREATE_ATTEMPTS {
            let latest = self.store.task_latest(key).await?;
            let expected = latest.as_ref().map(|t| t.id);
            if let Some(latest) = latest
                && let Some(answer) = keep(latest).await?
            {
                return Ok(answer);
            }
            let task = Task::new(kind, user_id, pool_id);
            if self.store.task_create(expected, &task).await? {
                self.launch(task.clone(), pool, req).await;
                return Ok(task.into());
            }
        }
        Err(Error::internal(anyhow::anyhow!(
            "lost the task race {CREATE_ATTEMPTS} times"
        )))
    }

    /// Whether a FAILED step 1 still makes the pool refuse: within `failed_step_retry` of its
    /// end, unless an operator cleared it.
    fn failure_holds(&self, task: &Task) -> bool {
        let Some(finished) = task.finished else {
            return false;
        };
        let age = (chrono::Utc::now() - finished).to_std().unwrap_or_default();
        !task.cleared && age < self.timings.failed_step_retry
    }

    /// Clears the user's FAILED step 1 in the pool, if one still holds the pool back: the
    /// next request starts a new task. Returns the cleared task.
    pub async fn reset(
        &self,
        user_id: Uuid,
        pool_id: Uuid,
        by: &str,
    ) -> Result<Option<Task>, Error> {
        let key = (user_id, pool_id, TaskKind::PoolExpand);
        let Some(mut last) = self.store.task_latest(key).await? else {
            return Ok(None);
        };
        if last.status != TaskStatus::Failed || !self.failure_holds(&last) {
            return Ok(None);
        }
        last.cleared = true;
        self.store.task_update(&last).await?;
        tracing::info!(user = %user_id, pool = %pool_id, task_id = %last.id, by, "failed step 1 cleared");
        Ok(Some(last))
    }

    /// The ids of a pool's users (admin resets of a whole pool); `None` for an unknown pool.
    pub fn pool_users(&self, pool_id: Uuid) -> Option<Vec<Uuid>> {
        self.pools
            .get(&pool_id)
            .map(|p| p.users.iter().copied().collect())
    }

    /// A pool's id from its id or its name (admin methods take either).
    pub fn pool_id_by_name_or_id(&self, pool: &str) -> Option<Uuid> {
        match pool.parse::<Uuid>() {
            Ok(id) => self.pools.contains_key(&id).then_some(id),
            Err(_) => self
                .order
                .iter()
                .find(|id| self.pools[*id].view.name == pool)
                .copied(),
        }
    }

    /// Step 2: connection data for the user's machine in the pool.
    pub async fn connect_info(
        &self,
        user: &User,
        pool_id: Uuid,
        params: &ConnectParams,
    ) -> Result<ConnectOutcome, Error> {
        let pool = self.pool_for(user, pool_id)?;
        let Some(assignment) = self.store.assignment_get(user.id, pool_id).await? else {
            return Err(Error::Conflict {
                message: "No eligible machine found for user connection.".into(),
                err_code: Some(801),
            });
        };
        if let Some(p) = params.remote_protocol
            && p != 1
        {
            return Err(Error::Unprocessable(format!(
                "Unsupported remote_protocol {p}: only 1 (GLINT v1) is available."
            )));
        }
        for (name, v) in [("width", params.width), ("height", params.height)] {
            if let Some(v) = v
                && v < 2
            {
                return Err(Error::Unprocessable(format!("{name} must be at least 2.")));
            }
        }
        let machine_id = assignment.machine.id;
        let key = (user.id, pool_id, TaskKind::GlintStart);
        let mut req = step_request(
            user.id,
            &user.username,
            &pool.view,
            Some(assignment.machine),
        );
        req.width = params.width.map(|w| w as u32);
        req.height = params.height.map(|h| h as u32);
        self.get_or_create(key, pool, req, |last| async move {
            Ok(match (&last.status, &last.connection) {
                (TaskStatus::Pending | TaskStatus::Running, _) => Some(last.into()),
                // Ready, for the machine the user holds now.
                (TaskStatus::Completed, Some(c)) if c.id == machine_id => {
                    Some(ConnectOutcome::Connection(c.clone()))
                }
                // Ended badly, or connected to a machine since released: connect again.
                _ => None,
            })
        })
        .await
    }

    /// One of the user's tasks; someone else's is "not found".
    pub async fn task(&self, user: &User, id: Uuid) -> Result<Task, Error> {
        match self.store.task_get(id).await? {
            Some(t) if t.user_id == user.id => Ok(t),
            _ => Err(Error::NotFound("Task not found.".into())),
        }
    }

    /// The user's recent tasks, newest first.
    pub async fn recent_tasks(&self, user: &User) -> Result<Vec<Task>, Error> {
        Ok(self.store.tasks_of_user(user.id, RECENT_PER_USER).await?)
    }

    /// Every PENDING or RUNNING task (admin view).
    pub async fn all_active_tasks(&self) -> Result<Vec<Task>, Error> {
        Ok(self.store.tasks_active().await?)
    }

    /// The machine a user holds in a pool, if any.
    pub async fn assignment(&self, user_id: Uuid, pool_id: Uuid) -> Result<Option<Machine>, Error> {
        Ok(self
            .store
            .assignment_get(user_id, pool_id)
            .await?
            .map(|a| a.machine))
    }

    /// Takes a user's machine in a pool away and hands it back to the provisioner. Returns
    /// once the assignment is gone (the user's sockets are told); the provisioner's release
    /// runs in the background (see [`Pools::release_machine`]).
    pub async fn release(
        &self,
        user_id: Uuid,
        pool_id: Uuid,
        reason: &str,
    ) -> Result<Option<Machine>, Error> {
        let Some(a) = self.store.assignment_remove(user_id, pool_id).await? else {
            return Ok(None);
        };
        tracing::info!(user = %user_id, pool = %pool_id, machine = %a.machine.verbose_name, reason, "machine released");
        self.store.publish(BusEvent::Released {
            user_id,
            pool_id,
            machine_id: a.machine.id,
            reason: reason.to_owned(),
        });
        if let Some(pool) = self.pools.get(&pool_id) {
            // The step-1 task that obtained the machine, when the store still has it.
            let key = (user_id, pool_id, TaskKind::PoolExpand);
            let task_id = match self.store.task_latest(key).await {
                Ok(Some(t)) if t.machine.as_ref().is_some_and(|m| m.id == a.machine.id) => {
                    Some(t.id)
                }
                _ => None,
            };
            let username = self.usernames.get(&user_id).cloned().unwrap_or_default();
            let mut req = step_request(user_id, &username, &pool.view, Some(a.machine.clone()));
            req.task_id = task_id;
            req.reason = Some(reason.to_owned());
            self.release_machine(&pool.provisioner, req);
        }
        Ok(Some(a.machine))
    }

    /// How long a provisioner release may take before it is abandoned (and its program killed).
    pub fn release_deadline(&self) -> Duration {
        self.timings.release_deadline
    }

    /// Gives a machine back to its provisioner off the caller's task: on the tracker, at most
    /// [`CONCURRENT_RELEASES`] at once, each ended at `release_deadline` (the step's future is
    /// dropped, which kills a command provisioner's program and its process group), and all
    /// of them ended at shutdown. An abandoned release is logged with the machine: provisioners
    /// that keep a record of what they hold (`reconcile`) get it back at the next start-up.
    ///
    /// `req` says whose machine it is (pool, user, the task that obtained it) and why it is
    /// given back; a failed or overrun release is logged and counted once (see
    /// [`Pools::report_failure`]), and the machine counts as released either way.
    fn release_machine(&self, provisioner: &Arc<dyn Provisioner>, req: StepRequest) {
        let provisioner = provisioner.clone();
        let permits = self.releases.clone();
        let shutdown = self.shutdown.clone();
        let deadline = self.timings.release_deadline;
        let this = self.clone();
        self.tracker.spawn(async move {
            let Some(machine) = req.machine.clone() else {
                return;
            };
            let reason = req.reason.clone().unwrap_or_default();
            let (progress, mut updates) = Progress::channel();
            let release = async {
                let _permit = permits.acquire_owned().await;
                tokio::time::timeout(deadline, provisioner.release(&req, progress)).await
            };
            tokio::select! {
                // Shutdown first: a release handed over during shutdown does not even start.
                biased;
                _ = shutdown.cancelled() => tracing::warn!(
                    machine = %machine.id, verbose_name = %machine.verbose_name, reason,
                    "shutdown interrupted the provisioner's release; the machine may still be held \
                     by the provisioner"
                ),
                ended = release => match ended {
                    Ok(Ok(())) => tracing::debug!(machine = %machine.id, reason, "provisioner released the machine"),
                    Ok(Err(e)) => {
                        let mut diagnosis = None;
                        while let Ok(update) = updates.try_recv() {
                            if let Update::Failure(d) = update {
                                diagnosis = Some(d);
                            }
                        }
                        this.report_failure(&req, "release", &e, diagnosis);
                    }
                    Err(_) => {
                        // Logged once, by report_failure, with the machine's id.
                        let message = format!(
                            "The provisioner's release did not finish within release_deadline \
                             ({} s) and was abandoned; the machine may still be held by the \
                             provisioner.",
                            deadline.as_secs_f64()
                        );
                        let overran = Diagnosis {
                            outcome: "deadline",
                            exit_status: None,
                            stderr: None,
                        };
                        this.report_failure(&req, "release", &StepError::Cancelled(message), Some(overran));
                    }
                },
            }
        });
    }

    /// Logs a failed provisioner step once, at WARN (a crash at ERROR), with the pool, task,
    /// user, what the provisioner reported (exit status, last stderr line), and counts it in
    /// `poolgate_provisioner_failures_total{pool,step,outcome}`.
    fn report_failure(
        &self,
        req: &StepRequest,
        step: &'static str,
        error: &StepError,
        diagnosis: Option<Diagnosis>,
    ) {
        let (default_outcome, message) = match error {
            StepError::Failed(m) => ("failed", m.as_str()),
            StepError::Cancelled(m) => ("cancelled", m.as_str()),
        };
        let d = diagnosis.unwrap_or(Diagnosis {
            outcome: default_outcome,
            exit_status: None,
            stderr: None,
        });
        self.metrics
            .provisioner_failures
            .get_or_create(&crate::metrics::ProvisionerLabels {
                pool: req.pool_name.clone(),
                step,
                outcome: d.outcome,
            })
            .inc();
        let task_id = req.task_id.map(|t| t.to_string());
        let machine = req.machine.as_ref().map(|m| m.verbose_name.as_str());
        let machine_id = req.machine.as_ref().map(|m| m.id.to_string());
        let (exit_status, stderr) = (d.exit_status.as_deref(), d.stderr.as_deref());
        if d.outcome == "crashed" {
            tracing::error!(pool = %req.pool_name, pool_id = %req.pool_id, task_id, user = %req.username, step, outcome = d.outcome, machine, machine_id, error = message, "provisioner step failed");
        } else {
            tracing::warn!(pool = %req.pool_name, pool_id = %req.pool_id, task_id, user = %req.username, step, outcome = d.outcome, exit_status, stderr, machine, machine_id, reason = req.reason.as_deref(), error = message, "provisioner step failed");
        }
    }

    /// Writes a task and tells every instance. Retried briefly: a store outage must not leave
    /// a finished task looking active.
    async fn save(&self, task: &Task, notify: bool) {
        if let Some(finished) = task.finished
            && task.status.is_done()
        {
            let secs = (finished - task.created).as_seconds_f64().max(0.0);
            self.metrics
                .task_seconds
                .get_or_create(&crate::metrics::TaskLabels {
                    kind: task.kind.as_str(),
                    outcome: task.status.as_str(),
                })
                .observe(secs);
        }
        for attempt in 0u64..5 {
            match self.store.task_update(task).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(task_id = %task.id, error = %e, "cannot save task; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
                }
            }
        }
        self.store.publish(BusEvent::Task {
            task: Box::new(task.clone()),
            notify,
        });
    }

    /// Ends a task whose runner is gone; `error` says how it went.
    async fn end_orphan(&self, mut task: Task, error: TaskError) {
        let message = error.message.clone();
        task.finish(TaskStatus::Cancelled, Some(error));
        tracing::warn!(task_id = %task.id, message, "ended an orphaned task");
        self.save(&task, true).await;
    }

    /// Takes the task's lease and starts its runner.
    async fn launch(&self, task: Task, pool: Arc<Pool>, mut req: StepRequest) {
        req.task_id = Some(task.id);
        // Fresh task ids cannot be leased by anyone else; a failure here is a store outage,
        // and the runner retries renewing.
        let _ = self
            .store
            .lease_acquire(task.id, &self.instance, self.timings.task_lease)
            .await;
        self.store.publish(BusEvent::Task {
            task: Box::new(task.clone()),
            notify: false,
        });
        self.running.insert(task.id);
        let this = self.clone();
        self.tracker.spawn(async move {
            let id = task.id;
            this.drive(task, pool, req).await;
            this.running.remove(&id);
            let _ = this.store.lease_release(id, &this.instance).await;
        });
    }

    /// Drives one task to an end: progress updates become events; the deadline, a provisioner
    /// error or panic, and shutdown all end the task.
    async fn drive(&self, mut task: Task, pool: Arc<Pool>, req: StepRequest) {
        let (progress, mut updates) = Progress::channel();
        let provisioner = pool.provisioner.clone();
        let kind = task.kind;
        // What a release of this step's machine says about it (the step consumes `req`).
        let base = req.clone();
        let this_req = req.clone();
        let step = match kind {
            TaskKind::PoolExpand => "expand",
            TaskKind::GlintStart => "connect",
        };
        let mut diagnosis = None;
        let releases = move |machine: &Machine, reason: &str| {
            let mut r = base.clone();
            r.machine = Some(machine.clone());
            r.width = None;
            r.height = None;
            r.reason = Some(reason.to_owned());
            r
        };
        let mut work = tokio::spawn(async move {
            match kind {
                TaskKind::PoolExpand => provisioner
                    .expand(&req, progress)
                    .await
                    .map(StepOk::Machine),
                TaskKind::GlintStart => provisioner
                    .connect(&req, progress)
                    .await
                    .map(StepOk::Connection),
            }
        });
        let age = (chrono::Utc::now() - task.created)
            .to_std()
            .unwrap_or_default();
        let deadline =
            tokio::time::sleep_until(Instant::now() + self.timings.deadline.saturating_sub(age));
        tokio::pin!(deadline);
        let mut renew = tokio::time::interval(self.timings.task_lease / 3);
        renew.tick().await;
        let result = loop {
            tokio::select! {
                biased;
                Some(update) = updates.recv() => {
                    if apply_update(&mut task, update, &mut diagnosis) {
                        self.save(&task, true).await;
                    }
                }
                result = &mut work => break Some(result),
                _ = &mut deadline => break None,
                _ = renew.tick(), if self.store.is_shared() => {
                    if let Err(e) = self.store.lease_acquire(task.id, &self.instance, self.timings.task_lease).await {
                        tracing::warn!(task_id = %task.id, error = %e, "cannot renew the task lease");
                    }
                }
                _ = self.shutdown.cancelled() => {
                    work.abort();
                    self.abandon(&pool, work, |m| releases(m, "server shutting down")).await;
                    task.finish(TaskStatus::Cancelled, Some(TaskError::server_shut_down()));
                    self.save(&task, true).await;
                    return;
                }
            }
        };
        let mut changed = false;
        while let Ok(update) = updates.try_recv() {
            changed |= apply_update(&mut task, update, &mut diagnosis);
        }
        if changed {
            self.save(&task, true).await;
        }
        let Some(result) = result else {
            work.abort();
            self.abandon(&pool, work, |m| releases(m, "task deadline passed"))
                .await;
            let secs = self.timings.deadline.as_secs_f64();
            let message = format!("The step did not finish within task_deadline ({secs} s).");
            let killed = Diagnosis {
                outcome: "deadline",
                exit_status: None,
                stderr: None,
            };
            self.report_failure(
                &this_req,
                step,
                &StepError::Cancelled(message),
                Some(killed),
            );
            task.finish(
                TaskStatus::Cancelled,
                Some(TaskError::deadline(self.timings.deadline)),
            );
            self.save(&task, true).await;
            return;
        };
        let (status, error) = match result {
            Ok(Ok(StepOk::Machine(machine))) => {
                let assignment = Assignment {
                    user_id: task.user_id,
                    pool_id: task.pool_id,
                    machine: machine.clone(),
                    lease_until_ms: now_ms() + self.timings.assignment_ttl.as_millis() as u64,
                };
                match self.store.assignment_create(&assignment).await {
                    Ok(true) => {
                        task.machine = Some(machine);
                        (TaskStatus::Completed, None)
                    }
                    // One active step-1 task per key makes this impossible; never hold two.
                    Ok(false) => {
                        self.release_machine(
                            &pool.provisioner,
                            releases(&machine, "already assigned"),
                        );
                        (TaskStatus::Completed, None)
                    }
                    Err(e) => {
                        tracing::error!(task_id = %task.id, error = %e, "cannot record the assignment");
                        self.release_machine(
                            &pool.provisioner,
                            releases(&machine, "assignment not recorded"),
                        );
                        (TaskStatus::Failed, Some(TaskError::machine_not_recorded()))
                    }
                }
            }
            Ok(Ok(StepOk::Connection(connection))) => {
                task.connection = Some(connection);
                (TaskStatus::Completed, None)
            }
            Ok(Err(e)) => {
                self.report_failure(&this_req, step, &e, diagnosis.take());
                match e {
                    StepError::Failed(message) => {
                        (TaskStatus::Failed, Some(TaskError::provisioner(message)))
                    }
                    StepError::Cancelled(message) => {
                        (TaskStatus::Cancelled, Some(TaskError::provisioner(message)))
                    }
                }
            }
            Err(join) => {
                let crashed = Diagnosis {
                    outcome: "crashed",
                    exit_status: None,
                    stderr: None,
                };
                let error = StepError::Failed(format!("The provisioner crashed: {join}."));
                self.report_failure(&this_req, step, &error, Some(crashed));
                (TaskStatus::Failed, Some(TaskError::provisioner_crashed()))
            }
        };
        task.finish(status, error);
        self.save(&task, true).await;
    }

    /// After an abort: if the step finished anyway, give back what it got; `release` makes
    /// the release's request.
    async fn abandon(
        &self,
        pool: &Pool,
        work: tokio::task::JoinHandle<Result<StepOk, StepError>>,
        release: impl FnOnce(&Machine) -> StepRequest,
    ) {
        if let Ok(Ok(StepOk::Machine(machine))) = work.await {
            self.release_machine(&pool.provisioner, release(&machine));
        }
    }

    /// Background: release expired assignments; delete ended tasks past their retention; on
    /// shared stores, end tasks whose instance went away (their lease lapsed).
    async fn sweeps(self) {
        let mut leases = tokio::time::interval(self.timings.lease_sweep);
        let mut orphans = tokio::time::interval(self.timings.task_lease / 2);
        let mut retention = tokio::time::interval(self.timings.sweep_interval);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = retention.tick() => {
                    let cutoff = now_ms().saturating_sub(self.timings.task_retention.as_millis() as u64);
                    match self.store.tasks_sweep(cutoff).await {
                        Ok(0) => {}
                        Ok(deleted) => tracing::debug!(deleted, "ended tasks past task_retention deleted"),
                        Err(e) => tracing::warn!(error = %e, "task retention sweep failed"),
                    }
                }
                _ = leases.tick() => {
                    if let Err(e) = self.release_expired().await {
                        tracing::warn!(error = %e, "assignment sweep failed");
                    }
                }
                _ = orphans.tick(), if self.store.is_shared() => {
                    if let Err(e) = self.take_over_orphans().await {
                        tracing::warn!(error = %e, "orphan sweep failed");
                    }
                }
            }
        }
    }

    async fn release_expired(&self) -> Result<(), Error> {
        let now = now_ms();
        for a in self.store.assignments().await? {
            if a.lease_until_ms <= now {
                self.release(a.user_id, a.pool_id, "lease expired").await?;
            }
        }
        Ok(())
    }

    async fn take_over_orphans(&self) -> Result<(), Error> {
        for task in self.store.tasks_active().await? {
            let young = (chrono::Utc::now() - task.created)
                .to_std()
                .is_ok_and(|age| age < self.timings.task_lease);
            // A task this young may not have had its lease taken yet.
            if self.running.contains(&task.id) || young {
                continue;
            }
            // Free lease: the instance that drove the task stopped renewing it.
            if self
                .store
                .lease_acquire(task.id, &self.instance, self.timings.task_lease)
                .await?
            {
                if let Some(current) = self.store.task_get(task.id).await?
                    && current.status.is_active()
                {
                    self.end_orphan(current, TaskError::instance_gone()).await;
                }
                self.store.lease_release(task.id, &self.instance).await?;
            }
        }
        Ok(())
    }
}

/// Applies a progress report; true if the task changed. A failure report is kept for the log.
fn apply_update(task: &mut Task, update: Update, diagnosis: &mut Option<Diagnosis>) -> bool {
    let before = (task.status, task.progress);
    match update {
        Update::Running => task.start(),
        Update::Percent(p) => {
            task.start();
            task.progress = Some(p);
        }
        Update::Failure(d) => *diagnosis = Some(d),
    }
    (task.status, task.progress) != before
}

enum StepOk {
    Machine(Machine),
    Connection(ConnectionData),
}

fn step_request(
    user_id: Uuid,
    username: &str,
    pool: &PoolView,
    machine: Option<Machine>,
) -> StepRequest {
    StepRequest {
        task_id: None,
        user_id,
        username: username.to_owned(),
        pool_id: pool.id,
        pool_name: pool.name.clone(),
        machine,
        width: None,
        height: None,
        reason: None,
    }
}
