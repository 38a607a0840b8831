//! The task runner: drives one task to an end. A step 1 takes a machine from the pool's warm
//! set when there is one (see `warm.rs`); otherwise the provisioner's step runs on its own tokio
//! task, so a panic becomes a FAILED task instead of a lost one; the runner follows its
//! progress, renews the task's lease (shared stores) and ends the task at `task_deadline` or
//! at shutdown, giving back whatever an abandoned step still obtained. Whatever happens, the
//! task is saved ended and every instance is told.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;

use super::{Pool, Pools};
use crate::domain::{ConnectionData, Machine, Task, TaskError, TaskKind, TaskStatus};
use crate::provision::{Diagnosis, Progress, Provisioner, StepError, StepRequest, Update};
use crate::store::{Assignment, BusEvent};

/// What a step obtains when it succeeds.
enum StepOk {
    Machine(Machine),
    Connection(ConnectionData),
}

/// The provisioner's step, on its own tokio task.
type Work = JoinHandle<Result<StepOk, StepError>>;

/// What the step's tokio task returned (`Err`: it panicked).
type StepResult = Result<Result<StepOk, StepError>, JoinError>;

/// How following a step ended.
enum Ended {
    /// The step returned, with the failure the provisioner reported, if any.
    Step(StepResult, Option<Diagnosis>),
    /// `task_deadline` passed first.
    Deadline,
    /// The server is shutting down.
    Shutdown,
    /// Another instance ended the task first (it took this one's unrenewed lease for its
    /// death): its end stands, and this runner stops.
    Lost,
}

/// How a task ends: its status and, unless COMPLETED, why.
type Outcome = (TaskStatus, Option<TaskError>);

impl Pools {
    /// Takes the task's lease and starts its runner.
    pub(super) async fn launch(&self, task: Task, pool: Arc<Pool>, mut req: StepRequest) {
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

    /// Drives one task to an end: a step 1 takes a machine from the pool's warm set if it can;
    /// otherwise the provisioner's step runs, its progress updates become events, and the
    /// deadline, a provisioner error or panic, and shutdown all end the task. `req` carries
    /// the task id.
    async fn drive(&self, mut task: Task, pool: Arc<Pool>, req: StepRequest) {
        let (status, error) = match self.take_warm(&task).await {
            // Made ahead of time: assigned like a machine the provisioner just made.
            Some(machine) => self.assign(&mut task, &pool, &req, machine).await,
            None => match self.run_step(&mut task, &pool, &req).await {
                Some(outcome) => outcome,
                None => return,
            },
        };
        task.finish(status, error);
        if !self.save(&task, true).await {
            tracing::warn!(task_id = %task.id, status = task.status.as_str(), "another instance ended this task first (the lease could not be renewed); its end stands");
            self.give_back(&task, &pool, &req).await;
        }
    }

    /// Runs the provisioner's step for the task and follows it to an outcome; `None` when
    /// another instance ended the task meanwhile (its end stands, the step is abandoned).
    async fn run_step(&self, task: &mut Task, pool: &Pool, req: &StepRequest) -> Option<Outcome> {
        let (progress, mut updates) = Progress::channel();
        let mut work = start_step(pool.provisioner.clone(), task.kind, req.clone(), progress);
        Some(match self.follow(task, &mut work, &mut updates).await {
            Ended::Lost => {
                tracing::warn!(task_id = %task.id, "another instance ended this task while it ran here (the lease could not be renewed); its end stands and the step is abandoned");
                self.abandon(pool, work, req, "its task was ended by another instance")
                    .await;
                return None;
            }
            Ended::Shutdown => {
                self.abandon(pool, work, req, "server shutting down").await;
                (TaskStatus::Cancelled, Some(TaskError::server_shut_down()))
            }
            Ended::Deadline => self.overran(task.kind, pool, work, req).await,
            Ended::Step(result, diagnosis) => self.settle(task, pool, req, result, diagnosis).await,
        })
    }

    /// A step 1 whose end was refused (the task had been ended elsewhere) may have assigned
    /// a machine: if the assignment still holds it, it is removed and the machine released,
    /// as nobody was told of it.
    async fn give_back(&self, task: &Task, pool: &Pool, req: &StepRequest) {
        let Some(machine) = &task.machine else {
            return;
        };
        if task.kind != TaskKind::PoolExpand {
            return;
        }
        match self.store.assignment_get(task.user_id, task.pool_id).await {
            Ok(Some(held)) if held.machine.id == machine.id => {
                if let Err(e) = self
                    .store
                    .assignment_remove(task.user_id, task.pool_id)
                    .await
                {
                    tracing::error!(task_id = %task.id, error = %e, "cannot remove the assignment of a task ended elsewhere; the lease sweep will");
                    return;
                }
            }
            // Not (or no longer) this machine's assignment: whoever removed it (an admin's
            // release, the lease sweep) released the machine too, and it may be someone
            // else's by now.
            Ok(_) => return,
            Err(e) => {
                tracing::error!(task_id = %task.id, error = %e, "cannot read the assignment of a task ended elsewhere; the lease sweep will release it");
                return;
            }
        }
        let release = release_request(req, machine, "its task was ended by another instance");
        self.release_machine(&pool.provisioner, release);
    }

    /// Follows the step until it returns, the task's deadline passes (counted from its
    /// creation) or the server shuts down: progress is saved as it comes, and the lease is
    /// renewed on shared stores. Progress reported by a step that ended is saved too, but not
    /// at shutdown.
    async fn follow(
        &self,
        task: &mut Task,
        work: &mut Work,
        updates: &mut UnboundedReceiver<Update>,
    ) -> Ended {
        let mut diagnosis = None;
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
                    if apply_update(task, update, &mut diagnosis) && !self.save(task, true).await {
                        return Ended::Lost;
                    }
                }
                result = &mut *work => break Some(result),
                _ = &mut deadline => break None,
                _ = renew.tick(), if self.store.is_shared() => {
                    if let Err(e) = self.store.lease_acquire(task.id, &self.instance, self.timings.task_lease).await {
                        tracing::warn!(task_id = %task.id, error = %e, "cannot renew the task lease");
                    }
                }
                // At shutdown a task goes on until the drain is over (at once without
                // `drain_timeout`).
                _ = self.drained.cancelled() => return Ended::Shutdown,
            }
        };
        let mut changed = false;
        while let Ok(update) = updates.try_recv() {
            changed |= apply_update(task, update, &mut diagnosis);
        }
        if changed && !self.save(task, true).await {
            return Ended::Lost;
        }
        match result {
            Some(result) => Ended::Step(result, diagnosis),
            None => Ended::Deadline,
        }
    }

    /// The deadline passed: the step is abandoned, logged and counted, and the task cancelled.
    async fn overran(&self, kind: TaskKind, pool: &Pool, work: Work, req: &StepRequest) -> Outcome {
        self.abandon(pool, work, req, "task deadline passed").await;
        let secs = self.timings.deadline.as_secs_f64();
        let message = format!("The step did not finish within task_deadline ({secs} s).");
        let killed = Diagnosis {
            outcome: "deadline",
            exit_status: None,
            stderr: None,
        };
        let error = StepError::Cancelled(message);
        self.report_failure(req, step_name(kind), &error, Some(killed));
        (
            TaskStatus::Cancelled,
            Some(TaskError::deadline(self.timings.deadline)),
        )
    }

    /// What the step's result makes of the task; a failure is logged and counted once.
    async fn settle(
        &self,
        task: &mut Task,
        pool: &Pool,
        req: &StepRequest,
        result: StepResult,
        diagnosis: Option<Diagnosis>,
    ) -> Outcome {
        let step = step_name(task.kind);
        match result {
            Ok(Ok(StepOk::Machine(machine))) => self.assign(task, pool, req, machine).await,
            Ok(Ok(StepOk::Connection(connection))) => {
                task.connection = Some(Arc::new(connection));
                (TaskStatus::Completed, None)
            }
            Ok(Err(e)) => {
                self.report_failure(req, step, &e, diagnosis);
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
                self.report_failure(req, step, &error, Some(crashed));
                (TaskStatus::Failed, Some(TaskError::provisioner_crashed()))
            }
        }
    }

    /// Step 1 got a machine: it is the user's once the assignment is recorded; a machine that
    /// cannot be recorded goes back to the provisioner.
    async fn assign(
        &self,
        task: &mut Task,
        pool: &Pool,
        req: &StepRequest,
        machine: Machine,
    ) -> Outcome {
        let machine = Arc::new(machine);
        let now = self.clock.now_ms();
        // `max_session` shortens the lease (the policies warn before either ends).
        let lease = match pool.policy.max_session {
            Some(max) => max.min(self.timings.assignment_ttl),
            None => self.timings.assignment_ttl,
        };
        let assignment = Assignment {
            user_id: task.user_id,
            pool_id: task.pool_id,
            machine: machine.clone(),
            lease_until_ms: now
                .saturating_add(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX)),
            since_ms: now,
        };
        // Retried for about six seconds, a failover's worth: a store outage must not throw
        // away a machine the provisioner just made.
        let mut created = self.store.assignment_create(&assignment).await;
        for wait_ms in [100, 200, 400, 800, 1600, 3200] {
            let Err(e) = &created else { break };
            tracing::warn!(task_id = %task.id, error = %e, "cannot record the assignment; retrying");
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            created = self.store.assignment_create(&assignment).await;
            // A write whose reply was lost may have been made: then the assignment found
            // is this very one, not someone else's.
            if let Ok(false) = created
                && let Ok(Some(held)) = self.store.assignment_get(task.user_id, task.pool_id).await
                && held.machine.id == machine.id
            {
                created = Ok(true);
            }
        }
        match created {
            Ok(true) => {
                task.machine = Some(machine);
                (TaskStatus::Completed, None)
            }
            // One active step-1 task per key makes this impossible; never hold two.
            Ok(false) => {
                let release = release_request(req, &machine, "already assigned");
                self.release_machine(&pool.provisioner, release);
                (TaskStatus::Completed, None)
            }
            Err(e) => {
                tracing::error!(task_id = %task.id, error = %e, "cannot record the assignment");
                let release = release_request(req, &machine, "assignment not recorded");
                self.release_machine(&pool.provisioner, release);
                // Not the provisioner's failure: ended so that the next request starts over
                // at once (a FAILED step 1 would hold the pool back for failed_step_retry).
                (
                    TaskStatus::Cancelled,
                    Some(TaskError::machine_not_recorded()),
                )
            }
        }
    }

    /// Aborts the step; if it finished anyway, gives back what it got, saying `reason`.
    async fn abandon(&self, pool: &Pool, work: Work, req: &StepRequest, reason: &str) {
        work.abort();
        if let Ok(Ok(StepOk::Machine(machine))) = work.await {
            let release = release_request(req, &machine, reason);
            self.release_machine(&pool.provisioner, release);
        }
    }

    /// Writes a task and tells every instance. Retried briefly: a store outage must not leave
    /// a finished task looking active. False when the store refused it because the task had
    /// already ended with another status (see `Store::task_update`): nothing is told then.
    async fn save(&self, task: &Task, notify: bool) -> bool {
        for attempt in 0u64..5 {
            match self.store.task_update(task).await {
                Ok(true) => break,
                Ok(false) => return false,
                Err(e) => {
                    tracing::warn!(task_id = %task.id, error = %e, "cannot save task; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
                }
            }
        }
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
        self.store.publish(BusEvent::Task {
            task: Box::new(task.clone()),
            notify,
        });
        true
    }

    /// Ends a task whose runner is gone; `error` says how it went.
    pub(super) async fn end_orphan(&self, mut task: Task, error: TaskError) {
        let message = error.message.clone();
        task.finish(TaskStatus::Cancelled, Some(error));
        if self.save(&task, true).await {
            tracing::warn!(task_id = %task.id, message, "ended an orphaned task");
        }
    }

    /// Logs a failed provisioner step once, at WARN (a crash at ERROR), with the pool, task,
    /// user, what the provisioner reported (exit status, last stderr line), and counts it in
    /// `poolgate_provisioner_failures_total{pool,step,outcome}`.
    pub(super) fn report_failure(
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
}

/// Starts the provisioner's step for a task of `kind` on its own tokio task.
fn start_step(
    provisioner: Arc<dyn Provisioner>,
    kind: TaskKind,
    req: StepRequest,
    progress: Progress,
) -> Work {
    tokio::spawn(async move {
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
    })
}

/// The provisioner step that carries out a task of `kind`: the `step` of logs and metrics.
fn step_name(kind: TaskKind) -> &'static str {
    match kind {
        TaskKind::PoolExpand => "expand",
        TaskKind::GlintStart => "connect",
    }
}

/// The release of a machine a step obtained: the step's request (pool, user, task) without
/// the screen size, with the machine and why it is given back.
fn release_request(step: &StepRequest, machine: &Machine, reason: &str) -> StepRequest {
    StepRequest {
        machine: Some(machine.clone()),
        width: None,
        height: None,
        reason: Some(reason.to_owned()),
        ..step.clone()
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
