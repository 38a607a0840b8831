//! Provisioners: what actually finds a machine (step 1) and makes it connectable (step 2).
//! Pools choose one in config. The task runner in `pools` drives them under a deadline, so a
//! provisioner only has to do its work and report progress; it never sees the socket.

mod command;
mod simulated;
mod static_inventory;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

pub use command::{CommandConfig, resolve_run_as};
pub use simulated::SimulatedConfig;
pub use static_inventory::{StaticConfig, StaticMachine};

use crate::domain::{ConnectionData, Machine};

/// How a step ended when it did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepError {
    /// The step failed (task FAILED).
    Failed(String),
    /// The step was called off (task CANCELLED; the client's next request starts a new one).
    Cancelled(String),
}

/// Progress a provisioner reports while it works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// The work has started (task RUNNING).
    Running,
    /// Percent done, 0–100.
    Percent(u8),
    /// Why the step is about to fail, for the operator's log (sent just before an `Err`).
    Failure(Diagnosis),
}

/// What the operator's log and the failure metric say about a failed step, beyond the
/// client-facing message: the runner logs every failure once, with the pool, task and user,
/// and adds this when the provisioner reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    /// The metric's `outcome` label (see protocol/provisioners.md): `failed`, `cancelled`,
    /// `exit_status`, `no_result`, `bad_result`, `not_started`.
    pub outcome: &'static str,
    /// A program's exit status (`3`, or `signal: 9 (SIGKILL)`).
    pub exit_status: Option<String>,
    /// The last line of a program's stderr, at most [`STDERR_LINE_MAX`] bytes.
    pub stderr: Option<String>,
}

/// Longest stderr line a log entry carries.
pub const STDERR_LINE_MAX: usize = 512;

/// The last non-empty line of `text`, cut to [`STDERR_LINE_MAX`] bytes on a char boundary.
pub fn last_line(text: &str) -> Option<String> {
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
    let mut end = line.len().min(STDERR_LINE_MAX);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = line[..end].to_owned();
    if end < line.len() {
        out.push('…');
    }
    Some(out)
}

/// The sending side of a step's progress reports.
#[derive(Clone)]
pub struct Progress(mpsc::UnboundedSender<Update>);

impl Progress {
    pub fn channel() -> (Progress, mpsc::UnboundedReceiver<Update>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Progress(tx), rx)
    }

    pub fn running(&self) {
        let _ = self.0.send(Update::Running);
    }

    pub fn percent(&self, p: u8) {
        let _ = self.0.send(Update::Percent(p.min(100)));
    }

    /// Says why the step is about to fail (call before returning the `Err`).
    pub fn failure(&self, diagnosis: Diagnosis) {
        let _ = self.0.send(Update::Failure(diagnosis));
    }
}

/// Who and what a step is for: the same fields for every step, so a provisioner can always
/// tell whose machine it is handling (nobody's yet, for a warm set: `warm`).
#[derive(Debug, Clone, Serialize)]
pub struct StepRequest {
    /// The task the step runs for. On `release`: the step-1 task that obtained the machine,
    /// or the task that was abandoned; `None` (null) only when the store no longer knows it.
    pub task_id: Option<Uuid>,
    pub user_id: Uuid,
    pub username: String,
    pub pool_id: Uuid,
    pub pool_name: String,
    /// Step 2 and release: the machine step 1 gave the user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine: Option<Machine>,
    /// Step 1: the id of the machine the user's last step 1 in the pool got, if any — a
    /// provisioner gives it again when it is free (affinity; the static one does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_machine: Option<Uuid>,
    /// Step 2 only: the client's screen size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// Release only: why the machine is given back (`lease expired`, `released by <admin>`,
    /// ...; the list is in protocol/provisioners.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Step 1: the pool's `balance` (how a static inventory picks among free machines).
    #[serde(skip)]
    pub balance: Balance,
    /// For nobody: an `expand` that fills the pool's warm set, or the `release` of a machine
    /// from it that was never given to a user (the set shrank). `user_id` is then the nil
    /// UUID, `username` empty and `task_id` null; the user arrives with step 2. Sent only
    /// when true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub warm: bool,
}

#[async_trait]
pub trait Provisioner: Send + Sync {
    /// Step 1: find or create a machine for the user, or for the pool's warm set (`req.warm`:
    /// no user yet). Must be safe to run concurrently: two calls never return the same
    /// machine while it is held.
    async fn expand(&self, req: &StepRequest, progress: Progress) -> Result<Machine, StepError>;

    /// Step 2: make `req.machine` connectable and return how to connect.
    async fn connect(
        &self,
        req: &StepRequest,
        progress: Progress,
    ) -> Result<ConnectionData, StepError>;

    /// Gives `req.machine` back (lease over, task abandoned, admin release); `req` says whose
    /// it was and `req.reason` why. Best effort: a failure is logged and counted by the caller
    /// (with what was reported on `progress`), and the machine is considered released.
    async fn release(&self, req: &StepRequest, progress: Progress) -> Result<(), StepError>;

    /// Start-up reconciliation: gives back the machines this provisioner holds that no
    /// assignment or warm set owns (`owned` are the machine ids they hold) — a crash between
    /// claiming a machine and recording it, or an assignment removed by hand — and returns
    /// them. Provisioners that keep no record of what they hold do nothing.
    async fn reconcile(&self, owned: &std::collections::HashSet<Uuid>) -> Vec<Machine> {
        let _ = owned;
        Vec::new()
    }
}

/// A provisioner as written in the config (`[provisioners.NAME]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ProvisionerConfig {
    Simulated(SimulatedConfig),
    Static(StaticConfig),
    Command(CommandConfig),
}

impl ProvisionerConfig {
    /// Builds it; `store` keeps what must be shared between instances (held machines).
    pub fn build(
        &self,
        name: &str,
        store: Arc<dyn crate::store::Store>,
    ) -> anyhow::Result<Arc<dyn Provisioner>> {
        Ok(match self {
            ProvisionerConfig::Simulated(c) => Arc::new(simulated::Simulated::new(c.clone())?),
            ProvisionerConfig::Static(c) => {
                Arc::new(static_inventory::Static::new(name, c.clone(), store)?)
            }
            ProvisionerConfig::Command(c) => Arc::new(command::Command::new(c.clone())?),
        })
    }
}

/// `balance`: how a static inventory picks a free machine (after affinity: the machine the
/// user had last, when it is free and not draining).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// The first free machine in the inventory's order.
    #[default]
    First,
    /// The free machine handed out the fewest times.
    LeastUsed,
    /// The free machine after the one handed out last, in the inventory's order.
    RoundRobin,
    /// The free machine of the highest `priority` (the inventory's order among equals).
    Priority,
}

/// Default desktop permissions when the config names none.
pub fn default_permissions() -> Vec<String> {
    ["USB_REDIR", "FOLDERS_REDIR", "SHARED_CLIPBOARD"]
        .map(String::from)
        .to_vec()
}
