//! The background sweeps, one loop on the tracker until shutdown: held desktops are checked
//! against their lease and the pools' policies (`policy.rs`: warnings, ends, idle users), ended tasks past `task_retention` deleted, and on shared stores tasks whose
//! instance went away (their lease lapsed) ended, so no task stays active without a runner.

use super::Pools;
use crate::domain::TaskError;
use crate::error::Error;
use crate::store::now_ms;

/// The longest wait between two rounds of the policies.
pub(super) const POLICY_TICK: std::time::Duration = std::time::Duration::from_secs(15);

impl Pools {
    /// Background: enforce leases and policies on held desktops; delete ended tasks past their retention; on
    /// shared stores, end tasks whose instance went away (their lease lapsed).
    pub(super) async fn sweeps(self) {
        // Often enough for the last warning a minute before a desktop's end to come in time.
        let mut leases = tokio::time::interval(self.timings.lease_sweep.min(POLICY_TICK));
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
                    if let Err(e) = self.mark_presence().await {
                        tracing::warn!(error = %e, "cannot record which users have sockets here");
                    }
                    if let Err(e) = self.enforce_policies().await {
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
                if let Some(current) = self.store.task_get(task.user_id, task.id).await?
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
