//! The static provisioner: a fixed inventory of machines. Step 1 claims a free one with an
//! atomic set-if-absent in the state store, so no machine is ever handed out twice — not even
//! by two instances sharing the store; step 2 checks the machine answers on `host:port` with a
//! TCP connect under a timeout.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use async_trait::async_trait;
use serde::Deserialize;
use uuid::Uuid;

use super::{Balance, ConnectionData, Machine, Progress, Provisioner, StepError, StepRequest};
use crate::store::Store;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticMachine {
    /// Stable id; derived from host:port when omitted, so restarts keep the same ids.
    #[serde(default)]
    pub id: Option<Uuid>,
    #[serde(default)]
    pub verbose_name: Option<String>,
    pub host: String,
    pub port: u16,
    #[serde(default = "one")]
    pub protocol_id: u32,
    #[serde(default = "super::default_permissions")]
    pub permissions: Vec<String>,
    /// With the pool's `balance = "priority"`: higher first.
    #[serde(default)]
    pub priority: i32,
    /// Gets no new users (those holding it keep it until they give it back).
    #[serde(default)]
    pub drain: bool,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    pub machines: Vec<StaticMachine>,
    /// Seconds step 2 waits for the machine's port to answer.
    #[serde(with = "crate::domain::secs", default = "default_probe")]
    pub probe_timeout: Duration,
}

fn default_probe() -> Duration {
    Duration::from_secs(3)
}

pub struct Static {
    /// The inventory's name: the key of its claims in the store.
    name: String,
    machines: Vec<Machine>,
    /// Each machine's `priority` and `drain`, in the same order.
    rules: Vec<(i32, bool)>,
    probe_timeout: Duration,
    store: Arc<dyn Store>,
}

impl Static {
    pub fn new(name: &str, config: StaticConfig, store: Arc<dyn Store>) -> anyhow::Result<Self> {
        let mut seen = HashSet::new();
        let machines: Vec<Machine> = config
            .machines
            .iter()
            .map(|m| Machine {
                id: m.id.unwrap_or_else(|| {
                    Uuid::new_v5(
                        &Uuid::NAMESPACE_URL,
                        format!("{}:{}", m.host, m.port).as_bytes(),
                    )
                }),
                verbose_name: m
                    .verbose_name
                    .clone()
                    .unwrap_or_else(|| format!("{}:{}", m.host, m.port)),
                host: m.host.clone(),
                port: m.port,
                protocol_id: m.protocol_id,
                permissions: m.permissions.clone(),
            })
            .collect();
        for m in &machines {
            if !seen.insert(m.id) {
                bail!(
                    "static provisioner {name:?}: machine {} is listed twice",
                    m.verbose_name
                );
            }
        }
        Ok(Static {
            name: name.to_owned(),
            rules: config
                .machines
                .iter()
                .map(|m| (m.priority, m.drain))
                .collect(),
            machines,
            probe_timeout: config.probe_timeout,
            store,
        })
    }
}

fn store_down(e: crate::store::StoreError) -> StepError {
    StepError::Failed(format!("Cannot reach the state store: {e}."))
}

impl Static {
    /// The free machines that may get a new user (not `held`, not draining), by index, in the
    /// order to try them: the user's previous machine first (affinity), then as `balance`
    /// says.
    async fn candidates(
        &self,
        req: &StepRequest,
        held: &HashSet<Uuid>,
    ) -> Result<Vec<usize>, StepError> {
        let mut free: Vec<usize> = (0..self.machines.len())
            .filter(|&i| !held.contains(&self.machines[i].id) && !self.rules[i].1)
            .collect();
        match req.balance {
            Balance::First => {}
            Balance::Priority => free.sort_by_key(|&i| std::cmp::Reverse(self.rules[i].0)),
            Balance::LeastUsed => {
                let uses: std::collections::HashMap<Uuid, u64> = self
                    .store
                    .machine_uses(&self.name)
                    .await
                    .map_err(store_down)?
                    .into_iter()
                    .collect();
                free.sort_by_key(|&i| uses.get(&self.machines[i].id).copied().unwrap_or(0));
            }
            Balance::RoundRobin if !free.is_empty() => {
                // The n-th hand-out starts at the (n-1)-th machine that takes users (draining
                // ones have no turn), in the inventory's order.
                let n = self
                    .store
                    .machine_count_use(&self.name, Uuid::nil())
                    .await
                    .map_err(store_down)?;
                let serving: Vec<usize> = (0..self.machines.len())
                    .filter(|&i| !self.rules[i].1)
                    .collect();
                let start = serving[((n - 1) % serving.len() as u64) as usize];
                let at = free.partition_point(|&i| i < start);
                free.rotate_left(at);
            }
            Balance::RoundRobin => {}
        }
        if let Some(previous) = req.previous_machine
            && let Some(pos) = free.iter().position(|&i| self.machines[i].id == previous)
        {
            let i = free.remove(pos);
            free.insert(0, i);
        }
        Ok(free)
    }
}

#[async_trait]
impl Provisioner for Static {
    async fn expand(&self, req: &StepRequest, progress: Progress) -> Result<Machine, StepError> {
        progress.running();
        let held: HashSet<Uuid> = self
            .store
            .machines_claimed(&self.name)
            .await
            .map_err(store_down)?
            .into_iter()
            .collect();
        for i in self.candidates(req, &held).await? {
            let m = &self.machines[i];
            // Someone may claim it between our read and here: the claim itself decides.
            if self
                .store
                .machine_claim(&self.name, m.id)
                .await
                .map_err(store_down)?
            {
                if let Err(e) = self.store.machine_count_use(&self.name, m.id).await {
                    // Only `least_used` reads the count: the hand-out stands.
                    tracing::warn!(machine = %m.verbose_name, error = %e, "cannot count a machine's use");
                }
                return Ok(m.clone());
            }
        }
        Err(StepError::Failed("No free machine in the pool.".into()))
    }

    async fn connect(
        &self,
        req: &StepRequest,
        progress: Progress,
    ) -> Result<ConnectionData, StepError> {
        progress.running();
        let machine = req
            .machine
            .as_ref()
            .ok_or_else(|| StepError::Failed("No machine to connect to.".into()))?;
        let addr = (machine.host.as_str(), machine.port);
        match tokio::time::timeout(self.probe_timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Ok(ConnectionData::for_machine(machine)),
            Ok(Err(e)) => Err(StepError::Failed(format!(
                "Machine {} does not answer on {}:{}: {e}.",
                machine.verbose_name, machine.host, machine.port
            ))),
            Err(_) => Err(StepError::Failed(format!(
                "Machine {} did not answer on {}:{} within {} s.",
                machine.verbose_name,
                machine.host,
                machine.port,
                self.probe_timeout.as_secs_f64()
            ))),
        }
    }

    async fn release(&self, req: &StepRequest, _progress: Progress) -> Result<(), StepError> {
        let Some(machine) = &req.machine else {
            return Ok(());
        };
        self.store
            .machine_release(&self.name, machine.id)
            .await
            .map_err(|e| StepError::Failed(format!("Cannot reach the state store: {e}.")))
    }

    async fn reconcile(&self, owned: &HashSet<Uuid>) -> Vec<Machine> {
        let claimed: HashSet<Uuid> = match self.store.machines_claimed(&self.name).await {
            Ok(c) => c.into_iter().collect(),
            Err(_) => return Vec::new(),
        };
        let mut released = Vec::new();
        for m in &self.machines {
            if claimed.contains(&m.id) && !owned.contains(&m.id) {
                match self.store.machine_release(&self.name, m.id).await {
                    Ok(()) => released.push(m.clone()),
                    Err(e) => {
                        tracing::warn!(machine = %m.verbose_name, error = %e, "cannot release a machine")
                    }
                }
            }
        }
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(balance: Balance) -> StepRequest {
        StepRequest {
            task_id: None,
            user_id: Uuid::new_v4(),
            username: "u".into(),
            pool_id: Uuid::new_v4(),
            pool_name: "p".into(),
            machine: None,
            previous_machine: None,
            width: None,
            height: None,
            reason: None,
            balance,
            warm: false,
        }
    }

    /// Hand-outs, each given back before the next, by new users (no affinity).
    async fn turns(inventory: &Static, balance: Balance, n: usize) -> Vec<String> {
        let mut names = Vec::new();
        for _ in 0..n {
            let (progress, _rx) = Progress::channel();
            let mut req = request(balance);
            let m = inventory.expand(&req, progress.clone()).await.unwrap();
            names.push(m.verbose_name.clone());
            req.machine = Some(m);
            inventory.release(&req, progress).await.unwrap();
        }
        names
    }

    #[tokio::test]
    async fn round_robin_turns_through_the_machines_that_take_users() {
        let (sink, _bus) = tokio::sync::mpsc::unbounded_channel();
        let store: Arc<dyn Store> = Arc::new(crate::store::memory::MemoryStore::new(sink));
        let config: StaticConfig = toml::from_str(
            r#"machines = [
  { verbose_name = "a", host = "127.0.0.1", port = 1 },
  { verbose_name = "b", host = "127.0.0.1", port = 2, drain = true },
  { verbose_name = "c", host = "127.0.0.1", port = 3 },
  { verbose_name = "d", host = "127.0.0.1", port = 4 },
]"#,
        )
        .unwrap();
        let inventory = Static::new("rr", config, store).unwrap();
        // The drained b has no turn, and its neighbour no second one.
        assert_eq!(
            turns(&inventory, Balance::RoundRobin, 6).await,
            ["a", "c", "d", "a", "c", "d"]
        );
        // First: always the first free one.
        assert_eq!(turns(&inventory, Balance::First, 2).await, ["a", "a"]);
    }
}
