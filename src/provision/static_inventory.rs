//! The static provisioner: a fixed inventory of machines. Step 1 claims a free one (under a
//! lock, so no machine is ever handed out twice); step 2 checks the machine answers on
//! `host:port` with a TCP connect under a timeout.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::bail;
use async_trait::async_trait;
use serde::Deserialize;
use uuid::Uuid;

use super::{ConnectionData, Machine, Progress, Provisioner, StepError, StepRequest};

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
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    pub machines: Vec<StaticMachine>,
    /// Seconds step 2 waits for the machine's port to answer.
    #[serde(with = "crate::config::secs", default = "default_probe")]
    pub probe_timeout: Duration,
}

fn default_probe() -> Duration {
    Duration::from_secs(3)
}

pub struct Static {
    machines: Vec<Machine>,
    probe_timeout: Duration,
    /// Ids of machines currently held.
    held: Mutex<HashSet<Uuid>>,
}

impl Static {
    pub fn new(name: &str, config: StaticConfig) -> anyhow::Result<Self> {
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
            machines,
            probe_timeout: config.probe_timeout,
            held: Mutex::new(HashSet::new()),
        })
    }
}

#[async_trait]
impl Provisioner for Static {
    async fn expand(&self, _req: &StepRequest, progress: Progress) -> Result<Machine, StepError> {
        progress.running();
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        match self.machines.iter().find(|m| !held.contains(&m.id)) {
            Some(m) => {
                held.insert(m.id);
                Ok(m.clone())
            }
            None => Err(StepError::Failed("No free machine in the pool.".into())),
        }
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

    async fn release(&self, machine: &Machine) {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&machine.id);
    }
}
