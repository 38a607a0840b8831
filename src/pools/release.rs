//! Taking a machine away and giving it back. The assignment is removed at once (that is what
//! decides who holds the machine); the provisioner's `release` runs off the caller's task, on
//! the tracker, a few at a time, under `release_deadline`, and is dropped at shutdown — so a
//! hanging release stalls neither a socket (`admin_release`), nor the lease sweep, nor a
//! SIGTERM.

use std::sync::Arc;

use uuid::Uuid;

use super::{Pools, step_request};
use crate::audit::{Entry, Transport};
use crate::domain::{Machine, TaskKind};
use crate::error::Error;
use crate::provision::{Diagnosis, Progress, Provisioner, StepError, StepRequest, Update};
use crate::store::BusEvent;

/// Provisioner releases running at once on one instance; more wait their turn (a sweep that
/// finds many expired leases does not start a program per lease all at once).
pub(super) const CONCURRENT_RELEASES: usize = 8;

impl Pools {
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
        let username = match self.usernames.get(&user_id) {
            Some(name) => name.clone(),
            // A directory user: their record in the store.
            None => match self.store.directory_user_get(user_id).await {
                Ok(Some(record)) => record.username,
                _ => String::new(),
            },
        };
        self.audit.record(
            Entry::new("release", Transport::Server)
                .user(if username.is_empty() {
                    user_id.to_string()
                } else {
                    username.clone()
                })
                .pool(self.pool_name(pool_id))
                .detail(format!("{reason}; machine {}", a.machine.verbose_name)),
        );
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
            let mut req = step_request(user_id, &username, &pool.view, Some((*a.machine).clone()));
            req.task_id = task_id;
            req.reason = Some(reason.to_owned());
            self.release_machine(&pool.provisioner, req);
        }
        Ok(Some(Arc::unwrap_or_clone(a.machine)))
    }

    /// Gives a machine back to its provisioner off the caller's task: on the tracker, at most
    /// [`CONCURRENT_RELEASES`] at once, each ended at `release_deadline` (the step's future is
    /// dropped, which kills a command provisioner's program and its process group), and all
    /// of them ended when the shutdown's drain is over. An abandoned release is logged with the machine: provisioners
    /// that keep a record of what they hold (`reconcile`) get it back at the next start-up.
    ///
    /// `req` says whose machine it is (pool, user, the task that obtained it) and why it is
    /// given back; a failed or overrun release is logged and counted once (see
    /// [`Pools::report_failure`]), and the machine counts as released either way.
    pub(super) fn release_machine(&self, provisioner: &Arc<dyn Provisioner>, req: StepRequest) {
        let provisioner = provisioner.clone();
        let permits = self.releases.clone();
        let drained = self.drained.clone();
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
                // The end of the drain first: a release handed over after it (at once at a
                // shutdown without `drain_timeout`) does not even start; during the drain,
                // releases run as usual.
                biased;
                _ = drained.cancelled() => tracing::warn!(
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
}
