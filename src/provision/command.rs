//! The command provisioner: runs an operator's program for each step. This is how libvirt,
//! Proxmox or in-house scripts plug in.
//!
//! Contract (see protocol/provisioners.md): the program gets one JSON object on stdin
//! (`{"step": "expand"|"connect"|"release", "task_id", "user_id", "username", "pool_id",
//! "pool_name", "machine"?, "width"?, "height"?, "reason"?}`: a release names whose machine it
//! was and why) and writes JSON lines on stdout:
//! `{"status":"RUNNING"}`, `{"progress":40}`, and finally `{"result":{...}}`,
//! `{"error":"why"}` or `{"cancelled":"why"}`. Exit status 0 with a result is success; anything
//! else fails the task. Why a step failed (exit status, last stderr line) goes to the runner,
//! which logs it once.
//!
//! Isolation: the program starts from an empty environment plus an allow-list (`PATH`, `LANG`,
//! `LC_ALL`, `TZ` from poolgate's own, then the provisioner's `env` and `env_files`), so it
//! never sees the broker's secrets (`POOLGATE_JWT_SECRET` would let it forge any user's JWT).
//! With `run_as` (poolgate running as root) it runs as that user instead of poolgate's.
//! It runs in a process group of its own, and the whole group is killed when the step ends —
//! at the deadline, on cancellation or shutdown (the step's future is dropped), or when the
//! program exits leaving children behind — so nothing it started outlives the step.

use std::collections::BTreeMap;
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
    /// Plain (non-secret) environment variables for the program, e.g.
    /// `{ PROXMOX_URL = "https://pve:8006" }`. They may override the inherited `PATH`, `LANG`,
    /// `LC_ALL` and `TZ`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Credentials for the program as environment variables, each read from a file at start
    /// (e.g. `{ PROXMOX_TOKEN = "/etc/poolgate/proxmox.token" }`), so no secret sits in the
    /// config file or on a command line.
    #[serde(default)]
    pub env_files: BTreeMap<String, PathBuf>,
    /// Run the program as this user (its uid and primary group, no supplementary groups)
    /// instead of poolgate's, so it can read neither poolgate's files nor its memory. Only
    /// possible when poolgate runs as root.
    #[serde(default)]
    pub run_as: Option<String>,
}

pub struct Command {
    config: CommandConfig,
    /// The program's whole environment: the allow-list, `env`, and `env_files` read once at
    /// start. Never logged.
    env: Vec<(String, String)>,
    /// `run_as` resolved: (uid, gid).
    run_as: Option<(u32, u32)>,
}

/// `run_as` resolved to a uid and the user's primary gid, or why it cannot be used: an
/// unknown user, or poolgate not running as root (only root can start a program as another
/// user).
pub fn resolve_run_as(user: &str) -> Result<(u32, u32), String> {
    // SAFETY: geteuid only reads.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(format!(
            "run_as = {user:?} needs poolgate to run as root (it runs as uid {euid}): only \
             root can start a program as another user; remove run_as, or start the program \
             through sudo -u {user}"
        ));
    }
    let name = std::ffi::CString::new(user).map_err(|_| format!("{user:?} is not a user name"))?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: getpwnam_r writes only into `pwd` and `buf` (of the length given); `found` is
    // NULL or points at `pwd`.
    let found = unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        );
        (rc == 0 && !found.is_null()).then(|| ((*found).pw_uid, (*found).pw_gid))
    };
    found.ok_or_else(|| format!("run_as names {user:?}, which is not a user of this system"))
}

/// What the program gets from poolgate's own environment; nothing else of it passes. Search
/// path, language and time zone only: none of them carries a secret, and scripts misbehave
/// without them. `HOME`, `USER` and the like are left out (they point at the broker's account);
/// give them with `env` if a tool needs them.
const INHERITED: [&str; 4] = ["PATH", "LANG", "LC_ALL", "TZ"];

/// `PATH` when poolgate itself runs without one.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Refuses variable names the environment cannot carry, and poolgate's own (`POOLGATE_*`), so
/// a broker secret cannot be handed to a script by a slip in the config.
fn check_name(table: &str, name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name.contains(['=', '\0']) {
        bail!("{table}: {name:?} is not a valid environment variable name");
    }
    if name.to_ascii_uppercase().starts_with("POOLGATE_") {
        bail!(
            "{table}.{name}: POOLGATE_* variables are poolgate's own and never passed to a provisioner"
        );
    }
    Ok(())
}

/// The program's process group, killed whole when this is dropped: at the deadline and on
/// cancellation the step's future is dropped, and so is this. Owns the child so the group is
/// killed before tokio reaps the leader (until then the group's id cannot be reused).
struct Running {
    child: tokio::process::Child,
    /// The group's id (the leader's pid); `None` once the group has been killed.
    group: Option<i32>,
}

impl Running {
    fn kill_group(&mut self) {
        if let Some(group) = self.group.take() {
            // SAFETY: killpg only sends a signal; it touches no memory of ours. ESRCH (every
            // member already gone) is fine to ignore.
            unsafe {
                libc::killpg(group, libc::SIGKILL);
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill_group();
    }
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
        let mut env: BTreeMap<String, String> = INHERITED
            .iter()
            .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
            .collect();
        env.entry("PATH".into())
            .or_insert_with(|| DEFAULT_PATH.into());
        for (name, value) in &config.env {
            check_name("env", name)?;
            if value.contains('\0') {
                bail!("env.{name}: the value contains a NUL byte");
            }
            env.insert(name.clone(), value.clone());
        }
        for (name, path) in &config.env_files {
            check_name("env_files", name)?;
            if config.env.contains_key(name) {
                bail!("{name} is set in both env and env_files: keep one");
            }
            let value = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("env_files.{name}: cannot read {}: {e}", path.display())
            })?;
            let value = value.trim_end_matches(['\r', '\n']).to_owned();
            if value.is_empty() {
                bail!("env_files.{name}: {} is empty", path.display());
            }
            if value.contains('\0') {
                bail!("env_files.{name}: {} contains a NUL byte", path.display());
            }
            env.insert(name.clone(), value);
        }
        let run_as = match &config.run_as {
            None => None,
            Some(user) => Some(resolve_run_as(user).map_err(|e| anyhow::anyhow!(e))?),
        };
        Ok(Command {
            config,
            env: env.into_iter().collect(),
            run_as,
        })
    }

    /// Starts the program in a process group of its own, with only the configured
    /// environment, as `run_as` if set.
    fn spawn(&self, progress: Option<&Progress>) -> Result<Running, StepError> {
        let mut cmd = tokio::process::Command::new(&self.config.command[0]);
        cmd.args(&self.config.command[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            // A group of its own, so the program and everything it starts can be killed at once.
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &self.config.workdir {
            cmd.current_dir(dir);
        }
        if let Some((uid, gid)) = self.run_as {
            // The group first, then the user; the standard library also drops root's
            // supplementary groups when it changes the user.
            cmd.gid(gid).uid(uid);
        }
        let child = cmd.spawn().map_err(|e| {
            diagnose(progress, "not_started", None, None);
            StepError::Failed(format!(
                "Cannot start provisioner {:?}: {e}.",
                self.config.command[0]
            ))
        })?;
        let group = child.id().and_then(|pid| i32::try_from(pid).ok());
        Ok(Running { child, group })
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
        let mut running = self.spawn(progress)?;
        let child = &mut running.child;
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
        let mut exited = None;
        loop {
            let line = tokio::select! {
                line = lines.next_line() => match line {
                    Ok(Some(line)) => line,
                    // End of output (or unreadable output): what remains is the exit status.
                    _ => break,
                },
                status = running.child.wait(), if exited.is_none() => {
                    exited = Some(status);
                    // The program is done: what it left running in its group goes too, which
                    // also closes their copies of stdout, so the read below ends.
                    running.kill_group();
                    continue;
                }
            };
            if let Some(said) = read_line(&line, progress) {
                outcome = Some(said);
            }
        }
        let status = match exited {
            Some(status) => status,
            None => running.child.wait().await,
        }
        .map_err(|e| StepError::Failed(format!("Provisioner did not exit cleanly: {e}.")))?;
        running.kill_group();
        let stderr = stderr_task.await.unwrap_or_default();
        let (result, why) = verdict(step, status, outcome, &stderr);
        if result.is_err() {
            let code = status
                .code()
                .map_or_else(|| status.to_string(), |c| c.to_string());
            diagnose(progress, why, Some(code), super::last_line(&stderr));
        }
        result
    }
}

/// One line of the program's output: a progress report (passed to `progress`), or the step's
/// outcome (`result`, `error` or `cancelled`), which this returns. Other lines are ignored.
fn read_line(line: &str, progress: Option<&Progress>) -> Option<Result<Value, StepError>> {
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(line) else {
        tracing::debug!(line, "provisioner printed a non-JSON line");
        return None;
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
        Some(Ok(result.clone()))
    } else if let Some(err) = obj.get("error") {
        Some(Err(StepError::Failed(text(err))))
    } else {
        obj.get("cancelled")
            .map(|why| Err(StepError::Cancelled(text(why))))
    }
}

/// The step's result from how the program exited and what it printed, with the reason a
/// failure is logged under (`""` for a success).
fn verdict(
    step: &str,
    status: std::process::ExitStatus,
    outcome: Option<Result<Value, StepError>>,
    stderr: &str,
) -> (Result<Value, StepError>, &'static str) {
    match (status.success(), outcome) {
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
