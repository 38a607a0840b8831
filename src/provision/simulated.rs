//! The simulated provisioner, the embedded default: PENDING for a while, RUNNING for a random
//! while, then an outcome drawn from configured weights. The mock's timings (3 s, then 5–60 s)
//! are `pending = 3, running = [5, 60]`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::bail;
use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use uuid::Uuid;

use super::{ConnectionData, Machine, Progress, Provisioner, StepError, StepRequest};

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Weights {
    pub completed: f64,
    pub cancelled: f64,
    pub failed: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            completed: 1.0,
            cancelled: 0.0,
            failed: 0.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatedConfig {
    /// Seconds a task stays PENDING.
    #[serde(with = "crate::domain::secs")]
    pub pending: Duration,
    /// Seconds a task stays RUNNING: drawn uniformly from `[min, max]`.
    pub running: [f64; 2],
    /// Outcome weights of step 1 (the mock: CANCELLED or COMPLETED).
    pub expand: Weights,
    /// Outcome weights of step 2 (the mock: CANCELLED, COMPLETED or FAILED).
    pub connect: Weights,
    /// Fixed seed for reproducible outcomes and timings.
    pub seed: Option<u64>,
    /// Usernames whose step 1 always fails (the mock's user-2).
    pub fail_users: Vec<String>,
    /// Address handed out for simulated machines.
    pub host: String,
    pub port: u16,
    pub permissions: Vec<String>,
}

impl Default for SimulatedConfig {
    fn default() -> Self {
        SimulatedConfig {
            pending: Duration::from_secs(1),
            running: [1.0, 3.0],
            expand: Weights::default(),
            connect: Weights::default(),
            seed: None,
            fail_users: Vec::new(),
            host: "192.0.2.10".into(),
            port: 5900,
            permissions: super::default_permissions(),
        }
    }
}

pub struct Simulated {
    config: SimulatedConfig,
    rng: Mutex<StdRng>,
    counter: AtomicU64,
}

enum Outcome {
    Completed,
    Cancelled,
    Failed,
}

impl Simulated {
    pub fn new(config: SimulatedConfig) -> anyhow::Result<Self> {
        let [lo, hi] = config.running;
        if !(lo >= 0.0 && hi >= lo && hi.is_finite()) {
            bail!("simulated: running must be [min, max] seconds with 0 <= min <= max");
        }
        for w in [config.expand, config.connect] {
            let parts = [w.completed, w.cancelled, w.failed];
            if parts.iter().any(|p| !p.is_finite() || *p < 0.0) || parts.iter().sum::<f64>() <= 0.0
            {
                bail!("simulated: outcome weights must be non-negative and not all zero");
            }
        }
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Ok(Simulated {
            config,
            rng: Mutex::new(rng),
            counter: AtomicU64::new(0),
        })
    }

    /// Draws the running time and the outcome in one lock.
    fn draw(&self, w: Weights) -> (Duration, Outcome) {
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        let [lo, hi] = self.config.running;
        let running = Duration::from_secs_f64(if hi > lo {
            rng.random_range(lo..=hi)
        } else {
            lo
        });
        let total = w.completed + w.cancelled + w.failed;
        let x = rng.random_range(0.0..total);
        let outcome = if x < w.completed {
            Outcome::Completed
        } else if x < w.completed + w.cancelled {
            Outcome::Cancelled
        } else {
            Outcome::Failed
        };
        (running, outcome)
    }

    /// PENDING, then RUNNING with progress in quarters.
    async fn work(&self, running: Duration, progress: &Progress) {
        tokio::time::sleep(self.config.pending).await;
        progress.running();
        for pct in [25, 50, 75] {
            tokio::time::sleep(running / 4).await;
            progress.percent(pct);
        }
        tokio::time::sleep(running / 4).await;
    }
}

#[async_trait]
impl Provisioner for Simulated {
    async fn expand(&self, req: &StepRequest, progress: Progress) -> Result<Machine, StepError> {
        let (running, mut outcome) = self.draw(self.config.expand);
        if self.config.fail_users.contains(&req.username) {
            outcome = Outcome::Failed;
        }
        self.work(running, &progress).await;
        match outcome {
            Outcome::Completed => {
                let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
                Ok(Machine {
                    id: Uuid::new_v4(),
                    verbose_name: format!("{}-vm-{n}", req.pool_name),
                    host: self.config.host.clone(),
                    port: self.config.port,
                    protocol_id: 1,
                    permissions: self.config.permissions.clone(),
                })
            }
            Outcome::Cancelled => Err(StepError::Cancelled(
                "The pool did not provide a machine in time (simulated); ask again.".into(),
            )),
            Outcome::Failed => Err(StepError::Failed(
                "The pool cannot provide a machine (simulated failure).".into(),
            )),
        }
    }

    async fn connect(
        &self,
        req: &StepRequest,
        progress: Progress,
    ) -> Result<ConnectionData, StepError> {
        let (running, outcome) = self.draw(self.config.connect);
        self.work(running, &progress).await;
        let machine = req
            .machine
            .as_ref()
            .ok_or_else(|| StepError::Failed("No machine to connect to.".into()))?;
        match outcome {
            Outcome::Completed => Ok(ConnectionData::for_machine(machine)),
            Outcome::Cancelled => Err(StepError::Cancelled(
                "The desktop did not start in time (simulated); ask again.".into(),
            )),
            Outcome::Failed => Err(StepError::Failed(
                "The desktop failed to start (simulated failure).".into(),
            )),
        }
    }

    async fn release(&self, _req: &StepRequest, _progress: Progress) -> Result<(), StepError> {
        Ok(())
    }
}
