//! The rules of the two steps: who may ask for which pool, what a repeated request gets (the
//! running task, a result that stands, a refusal) and when a new task replaces the last one.
//! Both steps end in `get_or_create`, the one compare-and-set on a key's latest task,
//! so concurrent requests on any instance agree on one task.

use std::net::IpAddr;
use std::sync::Arc;

use uuid::Uuid;

use super::{ConnectOutcome, ConnectParams, Pool, Pools, step_request};
use crate::auth::users::User;
use crate::domain::{Task, TaskKind, TaskStatus};
use crate::error::Error;
use crate::provision::StepRequest;
use crate::store::TaskKey;

/// Concurrent creators of one key's task lose the compare-and-set and read the winner's.
const CREATE_ATTEMPTS: usize = 5;

impl Pools {
    /// The pool, if the user may use it.
    pub(super) fn pool_for(&self, user: &User, pool_id: Uuid) -> Result<Arc<Pool>, Error> {
        match self.pools.get(&pool_id) {
            Some(p) if p.admits(user) => Ok(p.clone()),
            // An unknown pool answers like a foreign one: existence is not disclosed.
            _ => Err(Error::InsufficientPermissions),
        }
    }

    /// Step 1: a machine for the user in the pool, asked from `from`.
    ///
    /// The pool's policies: a request from outside `allow_from` is refused; a new task is
    /// refused while the schedule has the pool closed or the user holds
    /// `max_desktops_per_user` desktops — but a repeated request still gets the task under
    /// way or the desktop held.
    pub async fn request_machine(
        &self,
        user: &User,
        from: IpAddr,
        pool_id: Uuid,
    ) -> Result<Task, Error> {
        let pool = self.pool_for(user, pool_id)?;
        pool.policy.check_address(from)?;
        let refusal = self.refusal(user, &pool).await?;
        let key = (user.id, pool_id, TaskKind::PoolExpand);
        // Built only when a task is started.
        let p = pool.clone();
        let req = || {
            let mut req = step_request(user.id, &user.username, &p.view, None);
            req.balance = p.policy.balance;
            req
        };
        let previous = std::sync::Mutex::new(None);
        let keep = |last: Task| {
            // Affinity: the machine of the user's last step 1 here, for the provisioner.
            if let Some(m) = &last.machine {
                *previous.lock().unwrap_or_else(|e| e.into_inner()) = Some(m.id);
            }
            async move {
                match last.status {
                    TaskStatus::Pending | TaskStatus::Running => Ok(Some(last)),
                    TaskStatus::Completed
                        if self.store.assignment_get(user.id, pool_id).await?.is_some() =>
                    {
                        Ok(Some(last))
                    }
                    TaskStatus::Failed if self.failure_holds(&last) => {
                        Err(Error::PoolCannotExpand {
                            retry_after: self.retry_after(&last),
                        })
                    }
                    // CANCELLED, COMPLETED whose machine has since been released, or a FAILED one
                    // whose window passed or that an operator cleared.
                    TaskStatus::Completed | TaskStatus::Cancelled | TaskStatus::Failed => Ok(None),
                }
            }
        };
        let req = || {
            let mut req = req();
            req.previous_machine = *previous.lock().unwrap_or_else(|e| e.into_inner());
            req
        };
        self.get_or_create(key, pool, req, refusal, keep).await
    }

    /// Step 2: connection data for the user's machine in the pool.
    pub async fn connect_info(
        &self,
        user: &User,
        from: IpAddr,
        pool_id: Uuid,
        params: &ConnectParams,
    ) -> Result<ConnectOutcome, Error> {
        let pool = self.pool_for(user, pool_id)?;
        // The connection data is the desktop: not handed out outside `allow_from` either.
        pool.policy.check_address(from)?;
        let Some(assignment) = self.store.assignment_get(user.id, pool_id).await? else {
            return Err(Error::NoEligibleMachine);
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
        let p = pool.clone();
        let req = || {
            let mut req = step_request(
                user.id,
                &user.username,
                &p.view,
                Some((*assignment.machine).clone()),
            );
            req.width = params.width.map(|w| w as u32);
            req.height = params.height.map(|h| h as u32);
            req
        };
        self.get_or_create(key, pool, req, None, |last| async move {
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

    /// The one way a request gets its task: the key's latest task when `keep` says it still
    /// answers the request (`Some`: the running task on a repeat, a result that stands; or an
    /// error), else a new task, started with what `req` builds, in its place. The new task replaces the
    /// latest by compare-and-set, so concurrent requests on any instance agree on one task: a
    /// loser reads the winner's and asks `keep` again. `refuse_new`, when set, is the answer
    /// instead of a new task (a policy refuses one now).
    async fn get_or_create<T, F>(
        &self,
        key: TaskKey,
        pool: Arc<Pool>,
        req: impl FnOnce() -> StepRequest,
        mut refuse_new: Option<Error>,
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
            if let Some(refusal) = refuse_new.take() {
                return Err(refusal);
            }
            let task = Task::new(kind, user_id, pool_id);
            if self.store.task_create(expected, &task).await? {
                self.launch(task.clone(), pool, req()).await;
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

    /// Seconds until a failed step 1 no longer holds the pool back (rounded up).
    fn retry_after(&self, task: &Task) -> Option<u64> {
        let finished = task.finished?;
        let age = (chrono::Utc::now() - finished).to_std().unwrap_or_default();
        let left = self.timings.failed_step_retry.saturating_sub(age);
        Some(left.as_secs_f64().ceil().max(1.0) as u64)
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
}
