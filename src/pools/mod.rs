//! Pools and the two-step connect flow: the one implementation of the rules, called by the
//! WebSocket RPCs and by the REST shim alike.
//!
//! Tasks are keyed by (user, pool, kind). Deciding what a request gets — the running task, the
//! finished one, or a new one — happens under that key's map entry, so concurrent requests
//! for the same key always agree on one task. Every task is driven by a runner under a
//! deadline; whatever happens to the provisioner (error, panic, hang), the task ends.

pub mod task;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::auth::users::{User, UserDirectory};
use crate::error::Error;
use crate::events::EventHub;
use crate::provision::{
    ConnectionData, Machine, Progress, Provisioner, ProvisionerConfig, SimulatedConfig, StepError,
    StepRequest, Update,
};
use task::{ERR_DEADLINE, ERR_INTERRUPTED, ERR_PROVISIONER, Task, TaskError, TaskKind, TaskStatus};

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

/// Step 2's arguments.
#[derive(Debug, Clone, Default)]
pub struct ConnectParams {
    pub remote_protocol: Option<i64>,
    pub width: Option<i64>,
    pub height: Option<i64>,
}

/// What step 2 answers.
#[derive(Debug, Clone)]
pub enum ConnectOutcome {
    /// Not ready yet: the running (or new) task.
    Task(Box<Task>),
    /// Ready: how to connect.
    Connection(ConnectionData),
}

/// Tasks remembered per user for `tasks`; older finished ones are forgotten.
const RECENT_PER_USER: usize = 50;

#[derive(Clone)]
pub struct Pools(Arc<Inner>);

pub struct Inner {
    pools: HashMap<Uuid, Arc<Pool>>,
    /// Config order, for stable listings.
    order: Vec<Uuid>,
    tasks: DashMap<Uuid, Task>,
    latest: DashMap<(Uuid, Uuid, TaskKind), Uuid>,
    recent: DashMap<Uuid, VecDeque<Uuid>>,
    assignments: DashMap<(Uuid, Uuid), Machine>,
    events: Arc<EventHub>,
    deadline: Duration,
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

impl Pools {
    /// Builds the provisioners named in config; `simulated` exists even when not defined.
    pub fn build_provisioners(
        configs: &HashMap<String, ProvisionerConfig>,
    ) -> anyhow::Result<HashMap<String, Arc<dyn Provisioner>>> {
        let mut built: HashMap<String, Arc<dyn Provisioner>> = HashMap::new();
        for (name, config) in configs {
            let provisioner = config
                .build(name)
                .with_context(|| format!("provisioner {name:?}"))?;
            built.insert(name.clone(), provisioner);
        }
        if !built.contains_key("simulated") {
            built.insert(
                "simulated".into(),
                ProvisionerConfig::Simulated(SimulatedConfig::default()).build("simulated")?,
            );
        }
        Ok(built)
    }

    /// The pools of the config, served by already-built provisioners.
    pub fn new(
        pools: &[PoolConfig],
        built: &HashMap<String, Arc<dyn Provisioner>>,
        users: &UserDirectory,
        events: Arc<EventHub>,
        deadline: Duration,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
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
            tasks: DashMap::new(),
            latest: DashMap::new(),
            recent: DashMap::new(),
            assignments: DashMap::new(),
            events,
            deadline,
            tracker,
            shutdown,
        })))
    }

    /// Adds the config's seed tasks; active ones are driven like new tasks.
    pub fn seed(&self, seeds: &[SeedTask], users: &UserDirectory) -> anyhow::Result<()> {
        for s in seeds {
            let Some(user) = users.by_name(&s.username) else {
                bail!("seed task {} names an unknown user {:?}", s.id, s.username);
            };
            let Some(pool) = self.pools.get(&s.pool_id).cloned() else {
                bail!("seed task {} names an unknown pool {}", s.id, s.pool_id);
            };
            let mut task = Task::new(s.kind, user.id, s.pool_id);
            task.id = s.id;
            if s.status.is_done() {
                let error = (s.status != TaskStatus::Completed).then(|| TaskError {
                    err_code: ERR_PROVISIONER,
                    message: s.message.clone().unwrap_or_else(|| "Seeded task.".into()),
                });
                task.finish(s.status, error);
            }
            let active = task.status.is_active();
            self.tasks.insert(task.id, task.clone());
            self.latest.insert((user.id, s.pool_id, s.kind), task.id);
            self.remember(&task);
            if active {
                let req = step_request(user, &pool.view, None);
                self.spawn_runner(task, pool, req);
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
    pub fn request_machine(&self, user: &User, pool_id: Uuid) -> Result<Task, Error> {
        let pool = self.pool_for(user, pool_id)?;
        let key = (user.id, pool_id, TaskKind::PoolExpand);
        let entry = self.latest.entry(key);
        if let dashmap::Entry::Occupied(e) = &entry
            && let Some(last) = self.tasks.get(e.get()).map(|t| t.clone())
        {
            match last.status {
                TaskStatus::Completed if self.assignments.contains_key(&(user.id, pool_id)) => {
                    return Ok(last);
                }
                TaskStatus::Failed => {
                    return Err(Error::Forbidden {
                        message: "Pool cannot be expanded.".into(),
                        err_code: Some(800),
                    });
                }
                TaskStatus::Pending | TaskStatus::Running => return Ok(last),
                // CANCELLED, or COMPLETED whose machine has since been released: start again.
                TaskStatus::Completed | TaskStatus::Cancelled => {}
            }
        }
        let task = Task::new(TaskKind::PoolExpand, user.id, pool_id);
        // Into `tasks` before `latest` names it, so a concurrent request always finds it.
        self.tasks.insert(task.id, task.clone());
        drop(entry.insert(task.id));
        self.remember(&task);
        self.spawn_runner(
            task.clone(),
            pool.clone(),
            step_request(user, &pool.view, None),
        );
        Ok(task)
    }

    /// Step 2: connection data for the user's machine in the pool.
    pub fn connect_info(
        &self,
        user: &User,
        pool_id: Uuid,
        params: &ConnectParams,
    ) -> Result<ConnectOutcome, Error> {
        let pool = self.pool_for(user, pool_id)?;
        let Some(machine) = self.assignments.get(&(user.id, pool_id)).map(|m| m.clone()) else {
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
        let key = (user.id, pool_id, TaskKind::GlintStart);
        let entry = self.latest.entry(key);
        if let dashmap::Entry::Occupied(e) = &entry
            && let Some(last) = self.tasks.get(e.get()).map(|t| t.clone())
        {
            match (&last.status, &last.connection) {
                (TaskStatus::Completed, Some(c)) if c.id == machine.id => {
                    return Ok(ConnectOutcome::Connection(c.clone()));
                }
                (TaskStatus::Pending | TaskStatus::Running, _) => {
                    return Ok(ConnectOutcome::Task(Box::new(last)));
                }
                _ => {}
            }
        }
        let task = Task::new(TaskKind::GlintStart, user.id, pool_id);
        self.tasks.insert(task.id, task.clone());
        drop(entry.insert(task.id));
        self.remember(&task);
        let mut req = step_request(user, &pool.view, Some(machine));
        req.width = params.width.map(|w| w as u32);
        req.height = params.height.map(|h| h as u32);
        self.spawn_runner(task.clone(), pool, req);
        Ok(ConnectOutcome::Task(Box::new(task)))
    }

    /// One of the user's tasks; someone else's is "not found".
    pub fn task(&self, user: &User, id: Uuid) -> Result<Task, Error> {
        match self.tasks.get(&id) {
            Some(t) if t.user_id == user.id => Ok(t.clone()),
            _ => Err(Error::NotFound("Task not found.".into())),
        }
    }

    /// The user's recent tasks, newest first.
    pub fn recent_tasks(&self, user: &User) -> Vec<Task> {
        let ids: Vec<Uuid> = self
            .recent
            .get(&user.id)
            .map(|r| r.iter().rev().copied().collect())
            .unwrap_or_default();
        ids.iter()
            .filter_map(|id| self.tasks.get(id).map(|t| t.clone()))
            .collect()
    }

    /// The user's PENDING and RUNNING tasks, oldest first (for catch-up after sign-in).
    pub fn active_tasks(&self, user_id: Uuid) -> Vec<Task> {
        let ids: Vec<Uuid> = self
            .recent
            .get(&user_id)
            .map(|r| r.iter().copied().collect())
            .unwrap_or_default();
        ids.iter()
            .filter_map(|id| self.tasks.get(id).map(|t| t.clone()))
            .filter(|t| t.status.is_active())
            .collect()
    }

    /// Every PENDING or RUNNING task (admin view).
    pub fn all_active_tasks(&self) -> Vec<Task> {
        self.tasks
            .iter()
            .filter(|t| t.status.is_active())
            .map(|t| t.clone())
            .collect()
    }

    /// The machine a user holds in a pool, if any.
    pub fn assignment(&self, user_id: Uuid, pool_id: Uuid) -> Option<Machine> {
        self.assignments.get(&(user_id, pool_id)).map(|m| m.clone())
    }

    /// Gives a user's machine in a pool back to the provisioner.
    pub async fn release(&self, user_id: Uuid, pool_id: Uuid) -> Option<Machine> {
        let (_, machine) = self.assignments.remove(&(user_id, pool_id))?;
        if let Some(pool) = self.pools.get(&pool_id) {
            pool.provisioner.release(&machine).await;
        }
        Some(machine)
    }

    /// Adds a task to its user's recent list, forgetting the oldest finished ones.
    fn remember(&self, task: &Task) {
        let evicted: Vec<Uuid> = {
            let mut recent = self.recent.entry(task.user_id).or_default();
            recent.push_back(task.id);
            let excess = recent.len().saturating_sub(RECENT_PER_USER);
            recent.drain(..excess).collect()
        };
        for old in evicted {
            // Copy out, then look at `latest`: never hold two map guards at once here.
            let Some((key, active)) = self
                .tasks
                .get(&old)
                .map(|t| ((t.user_id, t.pool_id, t.kind), t.status.is_active()))
            else {
                continue;
            };
            let is_latest = self.latest.get(&key).is_some_and(|l| *l == old);
            // Tasks still running or still deciding their key's rules stay.
            if !active && !is_latest {
                self.tasks.remove(&old);
            }
        }
    }

    /// Applies a change to a task and pushes the new state to the user's sockets.
    fn update(&self, id: Uuid, change: impl FnOnce(&mut Task)) -> Option<Task> {
        let snapshot = {
            let mut task = self.tasks.get_mut(&id)?;
            let before = (task.status, task.progress);
            change(&mut task);
            if (task.status, task.progress) == before {
                return None;
            }
            task.clone()
        };
        tracing::debug!(task_id = %id, status = ?snapshot.status, progress = ?snapshot.progress, "task changed");
        self.events.publish(&snapshot);
        Some(snapshot)
    }

    fn spawn_runner(&self, task: Task, pool: Arc<Pool>, mut req: StepRequest) {
        req.task_id = task.id;
        let this = self.clone();
        self.tracker
            .spawn(async move { this.drive(task, pool, req).await });
    }

    /// Drives one task to an end: progress updates become events; the deadline, a provisioner
    /// error or panic, and shutdown all end the task.
    async fn drive(self, task: Task, pool: Arc<Pool>, req: StepRequest) {
        let (progress, mut updates) = Progress::channel();
        let provisioner = pool.provisioner.clone();
        let kind = task.kind;
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
        let deadline = tokio::time::sleep_until(Instant::now() + self.deadline.saturating_sub(age));
        tokio::pin!(deadline);
        let result = loop {
            tokio::select! {
                biased;
                Some(update) = updates.recv() => self.apply_update(task.id, update),
                result = &mut work => break Some(result),
                _ = &mut deadline => break None,
                _ = self.shutdown.cancelled() => {
                    work.abort();
                    self.abandon(&pool, work).await;
                    self.update(task.id, |t| t.finish(TaskStatus::Cancelled, Some(TaskError {
                        err_code: ERR_INTERRUPTED,
                        message: "The server shut down before the task finished; ask again.".into(),
                    })));
                    return;
                }
            }
        };
        while let Ok(update) = updates.try_recv() {
            self.apply_update(task.id, update);
        }
        let Some(result) = result else {
            work.abort();
            self.abandon(&pool, work).await;
            let secs = self.deadline.as_secs_f64();
            tracing::warn!(task_id = %task.id, "task overran its deadline");
            self.update(task.id, |t| {
                t.finish(
                    TaskStatus::Cancelled,
                    Some(TaskError {
                        err_code: ERR_DEADLINE,
                        message: format!(
                            "The task did not finish within {secs} s and was cancelled; ask again."
                        ),
                    }),
                )
            });
            return;
        };
        let (status, error) = match result {
            Ok(Ok(StepOk::Machine(machine))) => {
                let key = (task.user_id, task.pool_id);
                if let dashmap::Entry::Vacant(v) = self.assignments.entry(key) {
                    v.insert(machine.clone());
                    if let Some(mut t) = self.tasks.get_mut(&task.id) {
                        t.machine = Some(machine);
                    }
                } else {
                    // Cannot happen with one active step-1 task per key; never hold two machines.
                    pool.provisioner.release(&machine).await;
                }
                (TaskStatus::Completed, None)
            }
            Ok(Ok(StepOk::Connection(connection))) => {
                if let Some(mut t) = self.tasks.get_mut(&task.id) {
                    t.connection = Some(connection);
                }
                (TaskStatus::Completed, None)
            }
            Ok(Err(StepError::Failed(message))) => (
                TaskStatus::Failed,
                Some(TaskError {
                    err_code: ERR_PROVISIONER,
                    message,
                }),
            ),
            Ok(Err(StepError::Cancelled(message))) => (
                TaskStatus::Cancelled,
                Some(TaskError {
                    err_code: ERR_PROVISIONER,
                    message,
                }),
            ),
            Err(join) => {
                tracing::error!(task_id = %task.id, error = %join, "provisioner crashed");
                (
                    TaskStatus::Failed,
                    Some(TaskError {
                        err_code: ERR_PROVISIONER,
                        message: "The provisioner crashed.".into(),
                    }),
                )
            }
        };
        self.update(task.id, |t| t.finish(status, error));
    }

    fn apply_update(&self, id: Uuid, update: Update) {
        self.update(id, |t| match update {
            Update::Running => t.start(),
            Update::Percent(p) => {
                t.start();
                t.progress = Some(p);
            }
        });
    }

    /// After an abort: if the step finished anyway, give back what it got.
    async fn abandon(&self, pool: &Pool, work: tokio::task::JoinHandle<Result<StepOk, StepError>>) {
        if let Ok(Ok(StepOk::Machine(machine))) = work.await {
            pool.provisioner.release(&machine).await;
        }
    }
}

enum StepOk {
    Machine(Machine),
    Connection(ConnectionData),
}

fn step_request(user: &User, pool: &PoolView, machine: Option<Machine>) -> StepRequest {
    StepRequest {
        task_id: Uuid::nil(),
        user_id: user.id,
        username: user.username.clone(),
        pool_id: pool.id,
        pool_name: pool.name.clone(),
        machine,
        width: None,
        height: None,
    }
}
