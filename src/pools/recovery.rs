//! Start-up: end what a previous run left unfinished, add the seed tasks, give back machines
//! no assignment owns, and start the sweeps. Runs once, before the server accepts anyone, so
//! the first request already sees a consistent store.

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::bail;
use uuid::Uuid;

use super::{Pools, SeedTask, step_request};
use crate::auth::users::UserDirectory;
use crate::domain::{Task, TaskError, TaskKind, TaskStatus};

impl Pools {
    /// Start-up: end what a previous run left unfinished (single-instance stores), add the
    /// seed tasks, give back machines nobody holds (and the warm sets of pools that no longer
    /// have one), fill the event hub's view of active tasks, and start the background sweeps
    /// and the warm sets' loop.
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
        self.warm_leftovers().await;
        let this = self.clone();
        self.tracker.spawn(async move { this.sweeps().await });
        let this = self.clone();
        self.tracker.spawn(async move { this.warm_loop().await });
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
            if self.store.task_get(user.id, s.id).await?.is_some() {
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

    /// Gives back machines a provisioner holds that no assignment or warm set owns (a crash
    /// between claiming a machine and recording it, or an assignment removed by hand).
    async fn reconcile(&self) -> anyhow::Result<()> {
        let mut assigned: HashSet<Uuid> = self
            .store
            .assignments()
            .await?
            .iter()
            .map(|a| a.machine.id)
            .collect();
        for id in &self.order {
            assigned.extend(self.store.warm_list(*id).await?.iter().map(|m| m.id));
        }
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
}
