//! The command provisioner: runs an operator's program for each step. This is how libvirt,
//! Proxmox or in-house scripts plug in.
//!
//! Contract (see protocol/provisioners.md): the program gets one JSON object on stdin
//! (`{"step": "expand"|"connect"|"release", "task_id", "user_id", "username", "pool_id",
//! "pool_name", "machine"?, "width"?, "height"?, "reason"?}`: a release names whose machine it
//! was and why) and writes JSON lines on stdout:
//! `{"status":"RUNNING"}`, `{"progress":40}`, and finally `{"result":{...}}`,
//! `{"error":"why"}` or `{"cancelled":"why"}`. Exit status 0 with a result is success; anything
//! else fails the task. The program is killed when the task's deadline passes. Why a step
//! failed (exit status, last stderr line) goes to the runner, which logs it once.

use std::path::PathBuf;
use std::process::Stdio;

use anyhow::bail;
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use uuid::Uuid;

use super::{ConnectionData, Machine, Progress, Provisioner, StepError, StepRequest};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    /// Program and arguments, e.g. `["/usr/local/libexec/pool-proxmox", "--cluster", "a"]`.
    pub command: Vec<String>,
    /// Working directory for the program.
    #[serde(default)]
    pub workdir: Option<PathBuf>,
    /// Credentials for the program as environment variables, each read from a file at start
    /// (e.g. `{ PROXMOX_TOKEN = "/etc/poolgate/proxmox.token" }`), so no secret sits in the
    /// config file or on a command line.
    #[serde(default)]
    pub env_files: std::collections::BTreeMap<String, PathBuf>,
}

pub struct Command {
    config: CommandConfig,
    /// Read once from `env_files`; never logged.
    env: Vec<(String, String)>,
}

/// Longest stderr tail kept for a failure message.
const STDERR_TAIL: usize = 2048;

#[derive(Deserialize)]
struct MachineResult {
    #[serde(default)]
    id: Option<Uuid>,
    #[serde(default)]
    verbose_name: Option<String>,
    host: String,
    port: u16,
    #[serde(default)]
    protocol_id: Option<u32>,
    #[serde(default)]
    permissions: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
struct ConnectResult {
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    permissions: Option<Vec<String>>,
    #[serde(default)]
    status: Option<String>,
}

impl Command {
    pub fn new(config: CommandConfig) -> anyhow::Result<Self> {
        if config.command.is_empty() {
            bail!("command provisioner: `command` must name a program");
        }
        let mut env = Vec::new();
        for (name, path) in &config.env_files {
            let value = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("env_files.{name}: cannot read {}: {e}", path.display())
            })?;
            let value = value.trim_end_matches(['\r', '\n']).to_owned();
            if value.is_empty() {
                bail!("env_files.{name}: {} is empty", path.display());
            }
            env.push((name.clone(), value));
        }
        Ok(Command { config, env })
    }

    /// Runs one step; returns the final `result` object.
    async fn run(
        &self,
        step: &str,
        req: &StepRequest,
        progress: Option<&Progress>,
    ) -> Result<Value, StepError> {
        let mut input = serde_json::to_value(req).unwrap_or_default();
        input["step"] = Value::from(step);
        let mut cmd = tokio::process::Command::new(&self.config.command[0]);
        cmd.args(&self.config.command[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Dropping the future at the deadline kills the program.
            .kill_on_drop(true);
        if let Some(dir) = &self.config.workdir {
            cmd.current_dir(dir);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd.spawn().map_err(|e| {
            diagnose(progress, "not_started", None, None);
            StepError::Failed(format!(
                "Cannot start provisioner {:?}: {e}.",
                self.config.command[0]
            ))
        })?;
        let mut stdin = child.stdin.take().expect("piped");
        let mut line = input.to_string();
        line.push('\n');
        // A program that does not read stdin is not an error.
        let _ = stdin.write_all(line.as_bytes()).await;
        drop(stdin);

        let mut stderr = child.stderr.take().expect("piped");
        let stderr_task = tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = (&mut stderr).take(1 << 20).read_to_end(&mut buf).await;
            let start = buf.len().saturating_sub(STDERR_TAIL);
            String::from_utf8_lossy(&buf[start..]).trim().to_owned()
        });

        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let mut outcome: Option<Result<Value, StepError>> = None;
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(&line) else {
                tracing::debug!(line, "provisioner printed a non-JSON line");
                continue;
            };
            if let Some(p) = progress {
                if obj.get("status").and_then(Value::as_str) == Some("RUNNING") {
                    p.running();
                }
                if let Some(pct) = obj.get("progress").and_then(Value::as_u64) {
                    p.running();
                    p.percent(pct.min(100) as u8);
                }
            }
            if let Some(result) = obj.get("result") {
                outcome = Some(Ok(result.clone()));
            } else if let Some(err) = obj.get("error") {
                outcome = Some(Err(StepError::Failed(text(err))));
            } else if let Some(why) = obj.get("cancelled") {
                outcome = Some(Err(StepError::Cancelled(text(why))));
            }
        }
        let status = child
            .wait()
            .await
            .map_err(|e| StepError::Failed(format!("Provisioner did not exit cleanly: {e}.")))?;
        let stderr = stderr_task.await.unwrap_or_default();
        let (result, why) = match (status.success(), outcome) {
            (true, Some(Ok(v))) => (Ok(v), ""),
            (true, None) if step == "release" => (Ok(Value::Null), ""),
            (true, None) => (
                Err(StepError::Failed(
                    "Provisioner exited without printing a result.".into(),
                )),
                "no_result",
            ),
            (_, Some(Err(e @ StepError::Cancelled(_)))) => (Err(e), "cancelled"),
            (_, Some(Err(e))) => (Err(e), "failed"),
            (false, _) => {
                let mut msg = format!("Provisioner failed ({status})");
                if let Some(last) = stderr.lines().last() {
                    msg.push_str(": ");
                    msg.push_str(last);
                }
                msg.push('.');
                (Err(StepError::Failed(msg)), "exit_status")
            }
        };
        if result.is_err() {
            let code = status
                .code()
                .map_or_else(|| status.to_string(), |c| c.to_string());
            diagnose(progress, why, Some(code), super::last_line(&stderr));
        }
        result
    }
}

/// Tells the runner why a step is about to fail: it logs the failure once, with this.
fn diagnose(
    progress: Option<&Progress>,
    outcome: &'static str,
    exit_status: Option<String>,
    stderr: Option<String>,
) {
    if let Some(p) = progress {
        p.failure(super::Diagnosis {
            outcome,
            exit_status,
            stderr,
        });
    }
}

fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

fn bad_result(e: serde_json::Error, progress: &Progress) -> StepError {
    diagnose(Some(progress), "bad_result", Some("0".into()), None);
    StepError::Failed(format!("Provisioner printed an unusable result: {e}."))
}

#[async_trait]
impl Provisioner for Command {
    async fn expand(&self, req: &StepRequest, progress: Progress) -> Result<Machine, StepError> {
        let result = self.run("expand", req, Some(&progress)).await?;
        let m: MachineResult =
            serde_json::from_value(result).map_err(|e| bad_result(e, &progress))?;
        Ok(Machine {
            id: m.id.unwrap_or_else(Uuid::new_v4),
            verbose_name: m
                .verbose_name
                .unwrap_or_else(|| format!("{}:{}", m.host, m.port)),
            host: m.host,
            port: m.port,
            protocol_id: m.protocol_id.unwrap_or(1),
            permissions: m.permissions.unwrap_or_else(super::default_permissions),
        })
    }

    async fn connect(
        &self,
        req: &StepRequest,
        progress: Progress,
    ) -> Result<ConnectionData, StepError> {
        let machine = req
            .machine
            .as_ref()
            .ok_or_else(|| StepError::Failed("No machine to connect to.".into()))?;
        let result = self.run("connect", req, Some(&progress)).await?;
        let c: ConnectResult = if result.is_null() {
            ConnectResult::default()
        } else {
            serde_json::from_value(result).map_err(|e| bad_result(e, &progress))?
        };
        let mut data = ConnectionData::for_machine(machine);
        data.host = c.host.unwrap_or(data.host);
        data.port = c.port.unwrap_or(data.port);
        data.permissions = c.permissions.unwrap_or(data.permissions);
        data.status = c.status.unwrap_or(data.status);
        Ok(data)
    }

    async fn release(&self, req: &StepRequest, progress: Progress) -> Result<(), StepError> {
        self.run("release", req, Some(&progress)).await.map(drop)
    }
}
