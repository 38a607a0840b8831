//! The static and command provisioners, and a provisioner that panics.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use poolgate::auth::users::UserRecord;
use poolgate::domain::{ConnectionData, Machine, TaskStatus};
use poolgate::provision::{Progress, Provisioner, StepError, StepRequest};
use poolgate::{AppState, Config};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

fn pool_win_1() -> Uuid {
    POOL_WIN_1.parse().unwrap()
}

/// Waits until a task ends and returns its final status.
async fn wait_done(state: &AppState, user: &str, task_id: Uuid) -> TaskStatus {
    let user = state.auth.users.by_name(user).unwrap().clone();
    for _ in 0..200 {
        let task = state.pools.task(&user, task_id).await.unwrap();
        if task.status.is_done() {
            return task.status;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("task {task_id} did not end");
}

fn extra_users(config: &mut Config, n: usize) -> Vec<String> {
    let template: UserRecord = config.users[0].clone();
    (0..n)
        .map(|i| {
            let mut u = template.clone();
            u.username = format!("load-{i}");
            u.id = Uuid::new_v4();
            config.users.push(u);
            format!("load-{i}")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_static_provisioner_never_gives_a_machine_twice_under_100_concurrent_requests() {
    let mut config = demo_config();
    config.seed_tasks.clear();
    let names = extra_users(&mut config, 100);
    let machines: Vec<String> = (0..10)
        .map(|i| format!("{{ host = \"10.9.0.{i}\", port = 3389 }}"))
        .collect();
    let table = format!("kind = \"static\"\nmachines = [{}]", machines.join(", "));
    config
        .provisioners
        .insert("inventory".into(), toml::from_str(&table).unwrap());
    config.pools[0].provisioner = "inventory".into();
    config.pools[0].users = names.clone();
    let state = AppState::new(config).await.unwrap();

    let mut handles = Vec::new();
    for name in &names {
        let (state, name) = (state.clone(), name.clone());
        handles.push(tokio::spawn(async move {
            let user = state.auth.users.by_name(&name).unwrap().clone();
            // Two requests per user, racing each other too.
            let a = state
                .pools
                .request_machine(&user, LOCAL, pool_win_1())
                .await
                .unwrap();
            // The repeat returns the running task; when the first one has
            // already failed (no machine left), the repeat is a refused
            // retry of a failed step, which is the contract too.
            match state
                .pools
                .request_machine(&user, LOCAL, pool_win_1())
                .await
            {
                Ok(b) => assert_eq!(a.id, b.id),
                Err(poolgate::error::Error::PoolCannotExpand { retry_after }) => {
                    assert!(retry_after.is_some());
                    let t = state.pools.task(&user, a.id).await.unwrap();
                    assert_eq!(t.status, TaskStatus::Failed, "refused only after a failure");
                }
                Err(e) => panic!("unexpected refusal {e:?}"),
            }
            let status = wait_done(&state, &name, a.id).await;
            (user.id, status)
        }));
    }
    let mut holders = Vec::new();
    let mut failed = 0;
    for h in handles {
        match h.await.unwrap() {
            (user, TaskStatus::Completed) => holders.push(user),
            (_, TaskStatus::Failed) => failed += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(holders.len(), 10);
    assert_eq!(failed, 90);
    let given: HashSet<Uuid> = holders
        .iter()
        .map(|u| state.pools.assignment(*u, pool_win_1()))
        .collect::<futures_util::future::JoinAll<_>>()
        .await
        .into_iter()
        .map(|m| m.unwrap().unwrap().id)
        .collect();
    assert_eq!(given.len(), 10, "ten machines, ten different holders");
    // A released machine can be given again.
    state
        .pools
        .release(holders[0], pool_win_1(), "test")
        .await
        .unwrap()
        .unwrap();
    state.shutdown.cancel();
}

#[tokio::test]
async fn the_static_provisioner_probes_the_machine_in_step_2() {
    let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open_port = open.local_addr().unwrap().port();
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for (port, expect) in [(open_port, "COMPLETED"), (closed_port, "FAILED")] {
        let app = TestApp::spawn_with(|c| {
            c.seed_tasks.clear();
            let table = format!(
                "kind = \"static\"\nprobe_timeout = 1\nmachines = [{{ host = \"127.0.0.1\", port = {port}, verbose_name = \"desk\" }}]"
            );
            c.provisioners.insert("inv".into(), toml::from_str(&table).unwrap());
            c.pools[0].provisioner = "inv".into();
        })
        .await;
        let (mut c, _) = app.login("astravdi").await;
        let id = c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"]
            .clone();
        assert_eq!(c.follow(&id).await.0.last().unwrap(), "COMPLETED");
        let id = c.rpc("connect_info", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"]
            .clone();
        let (seen, task) = c.follow(&id).await;
        assert_eq!(seen.last().unwrap(), expect);
        if expect == "FAILED" {
            assert!(
                task["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("does not answer"),
                "{task}"
            );
        } else {
            let reply = c.rpc("connect_info", json!({"pool_id": POOL_WIN_1})).await;
            assert_eq!(reply["args"]["connection"]["port"], port);
            assert_eq!(reply["args"]["connection"]["verbose_name"], "desk");
        }
    }
    drop(open);
}

const SCRIPT: &str = r#"
input=$(cat)
case "$1" in
  ok)
    echo '{"status":"RUNNING"}'
    echo 'some log line that is not JSON'
    echo '{"progress":40}'
    sleep 0.1
    case "$input" in
      *'"step":"expand"'*) echo '{"result":{"host":"10.1.1.1","port":3389,"verbose_name":"vm-a"}}' ;;
      *) echo '{"result":{"port":3390}}' ;;
    esac ;;
  fail)
    echo "boom: no capacity left" >&2
    exit 3 ;;
  hang)
    echo $$ > "$2"
    exec sleep 30 ;;
  env)
    echo "{\"result\":{\"host\":\"$PROV_TOKEN\",\"port\":1}}" ;;
  record)
    echo "$input" >> "$2"
    case "$input" in
      *'"step":"expand"'*) echo '{"result":{"host":"10.1.1.1","port":3389,"verbose_name":"vm-a"}}' ;;
    esac ;;
  group)
    sleep 30 &
    echo $! > "$2.bg"
    echo $$ > "$2"
    exec sleep 30 ;;
  leave)
    sleep 30 &
    echo $! > "$2.bg"
    echo '{"result":{"host":"10.1.1.2","port":3389}}' ;;
  environ)
    tr '\0' '\n' < /proc/$$/environ > "$2.env"
    echo '{"result":{"host":"10.1.1.3","port":3389}}' ;;
  release-hang)
    case "$input" in
      *'"step":"release"'*)
        sleep 30 &
        echo $! > "$2.release-bg"
        echo $$ > "$2.release"
        exec sleep 30 ;;
      *'"step":"expand"'*) echo '{"result":{"host":"10.1.1.4","port":3389}}' ;;
      *) echo '{"result":{}}' ;;
    esac ;;
esac
"#;

/// The `[provisioners.X]` table running [`SCRIPT`] in `mode`, with its files in `dir`
/// (`dir/pid` and the names derived from it).
fn command_table(dir: &std::path::Path, mode: &str, extra: &str) -> String {
    let script = dir.join("prov.sh");
    std::fs::write(&script, SCRIPT).unwrap();
    let pidfile = dir.join("pid");
    format!(
        "kind = \"command\"\ncommand = [\"sh\", {:?}, {mode:?}, {:?}]{extra}",
        script.to_str().unwrap(),
        pidfile.to_str().unwrap()
    )
}

async fn command_app(mode: &str, extra: &str, deadline: Duration) -> (TestApp, tempfile::TempDir) {
    command_app_with(mode, extra, |c| c.task_deadline = deadline).await
}

/// A test app whose first two pools use the command provisioner in `mode`.
async fn command_app_with(
    mode: &str,
    extra: &str,
    edit: impl FnOnce(&mut Config),
) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let table = command_table(dir.path(), mode, extra);
    let app = TestApp::spawn_with(|c| {
        c.seed_tasks.clear();
        c.provisioners
            .insert("cmd".into(), toml::from_str(&table).unwrap());
        c.pools[0].provisioner = "cmd".into();
        c.pools[1].provisioner = "cmd".into();
        edit(c);
    })
    .await;
    (app, dir)
}

/// Whether a process is still running (a zombie waiting for its reaper is not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

/// The pid a script wrote into `path`, once it is there.
async fn pid_in(path: &std::path::Path) -> u32 {
    for _ in 0..200 {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(pid) = text.trim().parse()
        {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no pid written to {}", path.display());
}

/// Waits up to `within` for every process in `pids` to be gone.
async fn all_gone(pids: &[u32], within: Duration) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < within {
        if !pids.iter().any(|p| running(*p)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// Kills what a failed test left running.
struct KillOnDrop(Vec<std::path::PathBuf>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for path in &self.0 {
            if let Ok(pid) = std::fs::read_to_string(path) {
                let _ = std::process::Command::new("kill")
                    .args(["-9", pid.trim()])
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
    }
}

#[tokio::test]
async fn the_command_provisioner_reports_progress_and_results() {
    let (app, _dir) = command_app("ok", "", Duration::from_secs(10)).await;
    let (mut c, _) = app.login("astravdi").await;
    let id =
        c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    let mut progress = Vec::new();
    loop {
        let task = c.next_event().await;
        progress.push(task["progress"].clone());
        if task["status"] == "COMPLETED" {
            break;
        }
        assert_eq!(task["status"], "RUNNING", "{task}");
    }
    assert!(progress.contains(&json!(40)), "{progress:?}");
    let id2 =
        c.rpc("connect_info", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    assert_ne!(id, id2);
    c.follow(&id2).await;
    let conn = c.rpc("connect_info", json!({"pool_id": POOL_WIN_1})).await;
    let conn = &conn["args"]["connection"];
    assert_eq!(conn["host"], "10.1.1.1");
    assert_eq!(conn["port"], 3390, "step 2's result overrides the port");
    assert_eq!(conn["verbose_name"], "vm-a");
}

#[tokio::test]
async fn the_command_provisioner_gets_credentials_from_files_as_environment() {
    let secrets = tempfile::tempdir().unwrap();
    let token = secrets.path().join("token");
    std::fs::write(&token, "tok-from-file\n").unwrap();
    let extra = format!(
        "\nenv_files = {{ PROV_TOKEN = {:?} }}",
        token.to_str().unwrap()
    );
    let (app, _dir) = command_app("env", &extra, Duration::from_secs(10)).await;
    let (mut c, _) = app.login("astravdi").await;
    let id =
        c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    assert_eq!(c.follow(&id).await.0.last().unwrap(), "COMPLETED");
    let machine = app
        .state
        .pools
        .assignment(
            app.state.auth.users.by_name("astravdi").unwrap().id,
            pool_win_1(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(machine.host, "tok-from-file");
}

#[tokio::test]
async fn the_command_provisioner_failure_carries_the_programs_message() {
    let (app, _dir) = command_app("fail", "", Duration::from_secs(10)).await;
    let (mut c, _) = app.login("astravdi").await;
    let id =
        c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    let (seen, task) = c.follow(&id).await;
    assert_eq!(seen.last().unwrap(), "FAILED");
    let msg = task["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("boom: no capacity left") && msg.contains('3'),
        "{msg}"
    );
}

#[tokio::test]
async fn the_command_provisioner_is_killed_at_the_deadline() {
    let (app, dir) = command_app("hang", "", Duration::from_millis(700)).await;
    let (mut c, _) = app.login("astravdi").await;
    let id =
        c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    let (seen, _) = c.follow(&id).await;
    assert_eq!(seen.last().unwrap(), "CANCELLED");
    let pid = std::fs::read_to_string(dir.path().join("pid")).unwrap();
    let mut gone = false;
    for _ in 0..40 {
        let alive = std::process::Command::new("kill")
            .args(["-0", pid.trim()])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        if !alive {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the provisioner process {pid} was killed");
    assert_eq!(
        failures(&app.state, "expand", "deadline"),
        1,
        "counted once"
    );
}

/// `poolgate_provisioner_failures_total` for pool-win-1.
fn failures(state: &AppState, step: &'static str, outcome: &'static str) -> u64 {
    state
        .metrics
        .provisioner_failures
        .get_or_create(&poolgate::metrics::ProvisionerLabels {
            pool: "pool-win-1".into(),
            step,
            outcome,
        })
        .get()
}

struct Panics;

#[async_trait]
impl Provisioner for Panics {
    async fn expand(&self, _: &StepRequest, progress: Progress) -> Result<Machine, StepError> {
        progress.running();
        tokio::time::sleep(Duration::from_millis(50)).await;
        panic!("provisioner bug");
    }
    async fn connect(&self, _: &StepRequest, _: Progress) -> Result<ConnectionData, StepError> {
        unreachable!()
    }
    async fn release(&self, _: &StepRequest, _: Progress) -> Result<(), StepError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_panicking_provisioner_fails_the_task_and_the_server_carries_on() {
    let mut config = demo_config();
    config.seed_tasks.clear();
    config.pools[0].provisioner = "panics".into();
    let extra: HashMap<String, Arc<dyn Provisioner>> = HashMap::from([(
        "panics".to_owned(),
        Arc::new(Panics) as Arc<dyn Provisioner>,
    )]);
    let state = AppState::with_provisioners(config, extra).await.unwrap();
    let user = state.auth.users.by_name("astravdi").unwrap().clone();
    let task = state
        .pools
        .request_machine(&user, LOCAL, pool_win_1())
        .await
        .unwrap();
    assert_eq!(
        wait_done(&state, "astravdi", task.id).await,
        TaskStatus::Failed
    );
    let task = state.pools.task(&user, task.id).await.unwrap();
    assert_eq!(task.error.unwrap().message, "The provisioner crashed.");
    assert_eq!(failures(&state, "expand", "crashed"), 1);
    // FAILED step 1: the pool now refuses, per the rules.
    let err = state
        .pools
        .request_machine(&user, LOCAL, pool_win_1())
        .await
        .unwrap_err();
    assert_eq!(err.code(), 403);
}

#[tokio::test]
async fn the_command_provisioners_whole_process_group_is_killed_at_the_deadline() {
    let (app, dir) = command_app("group", "", Duration::from_millis(700)).await;
    let files = ["pid", "pid.bg"].map(|f| dir.path().join(f));
    let _cleanup = KillOnDrop(files.to_vec());
    let (mut c, _) = app.login("astravdi").await;
    let id =
        c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    let script = pid_in(&files[0]).await;
    let background = pid_in(&files[1]).await;
    assert!(running(background), "the script's background child runs");
    let (seen, _) = c.follow(&id).await;
    assert_eq!(seen.last().unwrap(), "CANCELLED");
    assert!(
        all_gone(&[script, background], Duration::from_secs(3)).await,
        "the script ({script}) and its background child ({background}) were both killed"
    );
}

#[tokio::test]
async fn a_command_step_ends_when_the_program_exits_and_what_it_left_running_is_killed() {
    // The background child keeps the program's stdout open: waiting for end of output alone
    // would hang the step until the deadline.
    let (app, dir) = command_app("leave", "", Duration::from_secs(20)).await;
    let bg = dir.path().join("pid.bg");
    let _cleanup = KillOnDrop(vec![bg.clone()]);
    let (mut c, _) = app.login("astravdi").await;
    let started = std::time::Instant::now();
    let id =
        c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    let (seen, _) = c.follow(&id).await;
    assert_eq!(seen.last().unwrap(), "COMPLETED");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the step ended with the program, in {:?}",
        started.elapsed()
    );
    let background = pid_in(&bg).await;
    assert!(
        all_gone(&[background], Duration::from_secs(3)).await,
        "the program's leftover child {background} was killed"
    );
}

/// The demo config as a file for `poolgate serve`, every pool on [`SCRIPT`] in `mode` (the
/// demo's `simulated` provisioner replaced), no seed tasks, and `extra` top-level keys.
fn command_config_file(dir: &std::path::Path, mode: &str, extra: &str) -> std::path::PathBuf {
    let path = config_file(dir, 1.0, extra);
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text.find("[provisioners.simulated]").unwrap();
    let end = start + text[start..].find("[[pools]]").unwrap();
    let seeds = text.find("[[seed_tasks]]").unwrap_or(text.len());
    let table = command_table(dir, mode, "");
    let text = format!(
        "{}[provisioners.simulated]\n{table}\n\n{}",
        &text[..start],
        &text[end..seeds]
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn the_command_provisioner_sees_only_the_allow_listed_environment_never_the_brokers_secrets()
{
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "tok-from-file\n").unwrap();
    let config = command_config_file(dir.path(), "environ", "");
    // The provisioner's own variables: a plain one and one from a file.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "kind = \"command\"",
        &format!(
            "kind = \"command\"\nenv = {{ PROV_PLAIN = \"plain\" }}\nenv_files = {{ PROV_TOKEN = {:?} }}",
            token.to_str().unwrap()
        ),
    );
    std::fs::write(&config, text).unwrap();
    let data = dir.path().join("data");
    let mut command = server_command(&[
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    command
        .env("POOLGATE_JWT_SECRET", "broker-jwt-secret-".repeat(4))
        .env("POOLGATE_REDIS_PASSWORD", "broker-redis-password")
        .env("BROKER_ONLY", "not for scripts")
        .env("HOME", "/home/broker")
        .env("LANG", "C.UTF-8")
        .env("TZ", "UTC")
        .env_remove("LC_ALL");
    let server = ServerProcess::start_command(command).await;
    let mut c = server.connect().await;
    c.auth("astravdi", PASSWORD).await;
    let id =
        c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    assert_eq!(c.follow(&id).await.0.last().unwrap(), "COMPLETED");

    let seen = std::fs::read_to_string(dir.path().join("pid.env")).unwrap();
    let env: std::collections::BTreeMap<&str, &str> =
        seen.lines().filter_map(|l| l.split_once('=')).collect();
    assert!(!seen.contains("broker-"), "no secret of the broker: {seen}");
    assert_eq!(
        env.keys().copied().collect::<Vec<_>>(),
        ["LANG", "PATH", "PROV_PLAIN", "PROV_TOKEN", "TZ"],
        "exactly the allow-list, env and env_files: {seen}"
    );
    assert_eq!(env["PATH"], std::env::var("PATH").unwrap());
    assert_eq!(env["PROV_PLAIN"], "plain");
    assert_eq!(env["PROV_TOKEN"], "tok-from-file");
    assert_eq!((env["LANG"], env["TZ"]), ("C.UTF-8", "UTC"));
}

#[tokio::test]
async fn a_provisioner_variable_named_poolgate_is_refused_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    for table in [
        "env = { POOLGATE_JWT_SECRET = \"x\" }",
        "env = { \"A=B\" = \"x\" }",
    ] {
        let extra = format!("\n{table}");
        let table = command_table(dir.path(), "ok", &extra);
        let mut config = demo_config();
        config
            .provisioners
            .insert("cmd".into(), toml::from_str(&table).unwrap());
        let err = AppState::new(config).await.err().expect("refused");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("POOLGATE_") || msg.contains("not a valid environment variable name"),
            "{msg}"
        );
    }
}

/// Step 1 on both command pools for astravdi.
async fn two_machines(c: &mut Client) {
    for pool in [POOL_WIN_1, POOL_WIN_2] {
        let id =
            c.rpc("pool_request", json!({"pool_id": pool})).await["args"]["task"]["id"].clone();
        assert_eq!(c.follow(&id).await.0.last().unwrap(), "COMPLETED");
    }
}

/// The next `machine` event's args.
async fn next_release(c: &mut Client) -> Value {
    loop {
        let frame = c.recv().await;
        // Warnings of the lease's end (`ENDING`) come first.
        if frame["name"] == "machine" && frame["args"]["status"] == "RELEASED" {
            return frame["args"].clone();
        }
    }
}

#[tokio::test]
async fn admin_release_answers_at_once_while_the_provisioners_release_hangs_and_the_release_is_killed_at_its_deadline()
 {
    let (app, dir) = command_app_with("release-hang", "", |c| {
        c.release_deadline = Duration::from_millis(800);
    })
    .await;
    let files = ["pid.release", "pid.release-bg"].map(|f| dir.path().join(f));
    let _cleanup = KillOnDrop(files.to_vec());
    let (mut admin, _) = app.login("astravdi").await;
    two_machines(&mut admin).await;

    let asked = std::time::Instant::now();
    let reply = tokio::time::timeout(
        Duration::from_secs(2),
        admin.rpc(
            "admin_release",
            json!({"username": "astravdi", "pool_id": POOL_WIN_1}),
        ),
    )
    .await
    .expect("admin_release answers without waiting for the provisioner");
    assert_eq!(reply["args"]["released"]["host"], "10.1.1.4", "{reply}");
    assert_eq!(reply["args"]["release_deadline"], 0.8, "{reply}");
    assert_eq!(next_release(&mut admin).await["pool_id"], POOL_WIN_1);
    // The socket is alive while the release hangs.
    assert_eq!(admin.rpc("identify", json!({})).await["name"], "response");

    let script = pid_in(&files[0]).await;
    let background = pid_in(&files[1]).await;
    assert!(
        all_gone(&[script, background], Duration::from_secs(4)).await,
        "the hanging release and its child were killed at release_deadline"
    );
    assert!(
        asked.elapsed() >= Duration::from_millis(800),
        "not before the deadline"
    );
    // The user no longer holds the machine: step 1 starts over.
    let again = admin
        .rpc("pool_request", json!({"pool_id": POOL_WIN_1}))
        .await;
    assert_eq!(again["args"]["task"]["status"], "PENDING", "{again}");
}

#[tokio::test]
async fn the_lease_sweep_keeps_releasing_while_earlier_releases_hang() {
    let (app, dir) = command_app_with("release-hang", "", |c| {
        c.release_deadline = Duration::from_secs(20);
        c.assignment_ttl = Duration::from_millis(600);
        c.lease_sweep = Duration::from_millis(100);
    })
    .await;
    let _cleanup = KillOnDrop(
        ["pid.release", "pid.release-bg"]
            .map(|f| dir.path().join(f))
            .to_vec(),
    );
    let (mut c, _) = app.login("astravdi").await;
    two_machines(&mut c).await;
    let mut released = HashSet::new();
    for _ in 0..2 {
        let event = tokio::time::timeout(Duration::from_secs(3), next_release(&mut c))
            .await
            .expect("each expired lease is released, however long the releases before it take");
        released.insert(event["pool_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(released.len(), 2, "{released:?}");
    // Later leases still expire on time, with two releases still hanging.
    let id =
        c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    assert_eq!(c.follow(&id).await.0.last().unwrap(), "COMPLETED");
    let event = tokio::time::timeout(Duration::from_secs(3), next_release(&mut c))
        .await
        .expect("the sweep is not stalled");
    assert_eq!(event["pool_id"], POOL_WIN_1);
    drop(app);
}

#[tokio::test]
async fn sigterm_stops_the_server_promptly_while_a_provisioner_release_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let config = command_config_file(dir.path(), "release-hang", "release_deadline = 60");
    let files = ["pid.release", "pid.release-bg"].map(|f| dir.path().join(f));
    let _cleanup = KillOnDrop(files.to_vec());
    let data = dir.path().join("data");
    let mut server = ServerProcess::serve(&config, &data).await;
    let mut admin = server.connect().await;
    admin.auth("astravdi", PASSWORD).await;
    let id = admin
        .rpc("pool_request", json!({"pool_id": POOL_WIN_1}))
        .await["args"]["task"]["id"]
        .clone();
    assert_eq!(admin.follow(&id).await.0.last().unwrap(), "COMPLETED");
    let reply = admin
        .rpc(
            "admin_release",
            json!({"username": "astravdi", "pool_id": POOL_WIN_1}),
        )
        .await;
    assert!(reply["args"]["released"].is_object(), "{reply}");
    let script = pid_in(&files[0]).await;
    let background = pid_in(&files[1]).await;

    let pid = server.child.id().unwrap().to_string();
    let stopping = std::time::Instant::now();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(5), server.child.wait())
        .await
        .expect("the server stops within seconds of SIGTERM")
        .unwrap();
    assert!(status.success(), "clean exit: {status}");
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "stopped in {:?}",
        stopping.elapsed()
    );
    assert!(
        all_gone(&[script, background], Duration::from_secs(3)).await,
        "the interrupted release's processes were killed"
    );
    assert!(
        server.log.lock().unwrap().contains("shutdown interrupted"),
        "the interrupted release is logged"
    );
}

/// The JSON objects the `record` script was given, in order.
fn recorded(dir: &tempfile::TempDir) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.path().join("pid"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits until the `record` script saw a release; returns it and the step-1 request.
async fn recorded_release(dir: &tempfile::TempDir) -> (serde_json::Value, serde_json::Value) {
    for _ in 0..100 {
        let seen = recorded(dir);
        if let Some(release) = seen.iter().find(|r| r["step"] == "release") {
            let expand = seen.iter().find(|r| r["step"] == "expand").unwrap();
            return (release.clone(), expand.clone());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no release step was run: {:?}", recorded(dir));
}

#[tokio::test]
async fn every_release_step_carries_the_real_pool_user_task_and_a_reason() {
    // admin_release.
    let (app, dir) = command_app_with("record", "", |_| {}).await;
    let (mut c, _) = app.login("astravdi").await;
    let id =
        c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    assert_eq!(c.follow(&id).await.0.last().unwrap(), "COMPLETED");
    let reply = c
        .rpc(
            "admin_release",
            json!({"username": "astravdi", "pool_id": POOL_WIN_1}),
        )
        .await;
    assert_eq!(reply["args"]["released"]["host"], "10.1.1.1", "{reply}");
    let (release, expand) = recorded_release(&dir).await;
    let astravdi = app.state.auth.users.by_name("astravdi").unwrap().id;
    assert_eq!(expand["task_id"], id, "step 1 names its task: {expand}");
    assert_eq!(
        release["task_id"], id,
        "the task that obtained the machine: {release}"
    );
    assert_eq!(release["pool_id"], POOL_WIN_1);
    assert_eq!(release["pool_name"], "pool-win-1");
    assert_eq!(release["user_id"], json!(astravdi));
    assert_eq!(release["username"], "astravdi");
    assert_eq!(release["machine"]["host"], "10.1.1.1");
    assert_eq!(release["reason"], "released by astravdi");
    assert!(
        expand.get("reason").is_none(),
        "only releases have a reason"
    );
    drop(c);
    drop(app);

    // The lease sweep.
    let (app, dir) = command_app_with("record", "", |c| {
        c.assignment_ttl = Duration::from_millis(300);
        c.lease_sweep = Duration::from_millis(100);
    })
    .await;
    let (mut c, _) = app.login("user-2").await;
    let id =
        c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    assert_eq!(c.follow(&id).await.0.last().unwrap(), "COMPLETED");
    let (release, _) = recorded_release(&dir).await;
    assert_eq!(release["reason"], "lease expired", "{release}");
    assert_eq!(release["username"], "user-2");
    assert_eq!(release["task_id"], id);
    assert_eq!(release["pool_name"], "pool-win-1");
}

/// Fails step 1 in turn by exiting 3 with a stderr line, then by exiting 0 without a result;
/// succeeds the third time; every release exits 4.
const FLAKY: &str = r#"
input=$(cat)
dir=$(dirname "$0")
case "$input" in
  *'"step":"release"'*) echo "cannot power off vm-a" >&2; exit 4 ;;
esac
n=$(cat "$dir/n" 2>/dev/null || echo 0)
echo $((n + 1)) > "$dir/n"
case $n in
  0) echo "starting" >&2; echo "boom: no capacity left" >&2; exit 3 ;;
  1) exit 0 ;;
  *) echo '{"result":{"host":"10.1.1.1","port":3389,"verbose_name":"vm-a"}}' ;;
esac
"#;

/// A config file serving one pool (pool-win-1, astravdi's) from a command provisioner.
pub fn script_config_file(dir: &std::path::Path, script: &str, extra: &str) -> std::path::PathBuf {
    let demo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/demo.toml"))
        .unwrap();
    let start = demo.find("[[users]]").unwrap();
    let end = start + 1 + demo[start + 1..].find("[[users]]").unwrap();
    let astravdi = &demo[start..end];
    let path = dir.join("prov.sh");
    std::fs::write(&path, script).unwrap();
    let text = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {data:?}\nstate = \"memory\"\n{extra}\n\n{astravdi}\n\
         [provisioners.cmd]\nkind = \"command\"\ncommand = [\"sh\", {script:?}]\n\n\
         [[pools]]\nid = \"{POOL_WIN_1}\"\nname = \"pool-win-1\"\npool_type = \"AUTOMATED\"\n\
         os_type = \"Windows\"\nconnection_types = [\"RDP\"]\nprovisioner = \"cmd\"\nusers = [\"astravdi\"]\n",
        data = dir.join("data").to_str().unwrap(),
        script = path.to_str().unwrap(),
    );
    let config = dir.join("poolgate.toml");
    std::fs::write(&config, text).unwrap();
    config
}

#[tokio::test]
async fn every_provisioner_failure_is_logged_once_at_warn_with_its_cause_and_counted_by_pool() {
    let dir = tempfile::tempdir().unwrap();
    let config = script_config_file(dir.path(), FLAKY, "failed_step_retry = 0");
    // The default log filter and format: nothing set in the environment.
    let server =
        ServerProcess::start_with(&["serve", "--config", config.to_str().unwrap()], |_| {}).await;
    let mut c = server.connect().await;
    c.auth("astravdi", PASSWORD).await;
    let mut ids = Vec::new();
    for expect in ["FAILED", "FAILED", "COMPLETED"] {
        let reply = c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await;
        let id = reply["args"]["task"]["id"].clone();
        assert_eq!(c.follow(&id).await.0.last().unwrap(), expect, "{reply}");
        ids.push(id.as_str().unwrap().to_owned());
    }
    let reply = c
        .rpc(
            "admin_release",
            json!({"username": "astravdi", "pool_id": POOL_WIN_1}),
        )
        .await;
    assert_eq!(reply["args"]["released"]["host"], "10.1.1.1", "{reply}");

    let mut failures = Vec::new();
    for _ in 0..100 {
        failures = server.log_lines("provisioner step failed");
        if failures.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(failures.len(), 3, "one line per failure: {failures:#?}");
    let (exit3, no_result, release) = (&failures[0], &failures[1], &failures[2]);
    for line in [exit3, no_result, release] {
        assert!(line.contains("WARN"), "{line}");
        assert!(
            line.contains("pool=pool-win-1") && line.contains("user=astravdi"),
            "{line}"
        );
    }
    assert!(
        exit3.contains(&ids[0]) && exit3.contains("step=\"expand\""),
        "{exit3}"
    );
    assert!(exit3.contains("outcome=\"exit_status\""), "{exit3}");
    assert!(exit3.contains("exit_status=\"3\""), "{exit3}");
    assert!(
        exit3.contains("stderr=\"boom: no capacity left\""),
        "the last stderr line: {exit3}"
    );
    assert!(no_result.contains(&ids[1]), "{no_result}");
    assert!(
        no_result.contains("outcome=\"no_result\"") && no_result.contains("exit_status=\"0\""),
        "{no_result}"
    );
    assert!(
        release.contains(&ids[2]),
        "the task that obtained the machine: {release}"
    );
    assert!(
        release.contains("step=\"release\"") && release.contains("exit_status=\"4\""),
        "{release}"
    );
    assert!(
        release.contains("stderr=\"cannot power off vm-a\""),
        "{release}"
    );
    assert!(
        release.contains("reason=\"released by astravdi\""),
        "{release}"
    );
    for id in &ids[..2] {
        let mentions = server.log_lines(id);
        assert!(
            mentions.iter().filter(|l| l.contains("WARN")).count() == 1,
            "logged once: {mentions:#?}"
        );
    }

    let metrics = reqwest::get(format!("http://{}/metrics", server.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (step, outcome) in [
        ("expand", "exit_status"),
        ("expand", "no_result"),
        ("release", "exit_status"),
    ] {
        let series = format!(
            "poolgate_provisioner_failures_total{{pool=\"pool-win-1\",step=\"{step}\",outcome=\"{outcome}\"}} 1"
        );
        assert!(metrics.contains(&series), "{series} in\n{metrics}");
    }
}

#[test]
fn the_stderr_line_in_a_log_entry_is_the_last_one_and_bounded() {
    use poolgate::provision::{STDERR_LINE_MAX, last_line};
    assert_eq!(last_line("a\nb\n\n  \n").as_deref(), Some("b"));
    assert_eq!(last_line(""), None);
    let long = "é".repeat(STDERR_LINE_MAX);
    let cut = last_line(&long).unwrap();
    assert!(
        cut.len() <= STDERR_LINE_MAX + '…'.len_utf8(),
        "{}",
        cut.len()
    );
    assert!(cut.ends_with('…'));
}

/// A step 1 that waits for the test before it returns its machine, and counts its releases.
struct GatedCounting {
    gate: Arc<tokio::sync::Notify>,
    released: Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait]
impl Provisioner for GatedCounting {
    async fn expand(&self, _: &StepRequest, progress: Progress) -> Result<Machine, StepError> {
        progress.running();
        self.gate.notified().await;
        Ok(machine_named("vm-gated"))
    }
    async fn connect(&self, _: &StepRequest, _: Progress) -> Result<ConnectionData, StepError> {
        Err(StepError::Failed("not here".into()))
    }
    async fn release(&self, _: &StepRequest, _: Progress) -> Result<(), StepError> {
        self.released
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

fn machine_named(name: &str) -> Machine {
    Machine {
        id: Uuid::new_v4(),
        verbose_name: name.into(),
        host: "10.0.0.1".into(),
        port: 3389,
        protocol_id: 1,
        permissions: vec![],
    }
}

/// A machine given back to its provisioner while the server drains (here: step 1 ends with a
/// machine the user cannot be given, as the pool already holds one for them) is released like
/// any other, within the drain — before, every release handed over after SIGTERM was dropped,
/// and the machine stayed with the provisioner until some later start-up.
#[tokio::test]
async fn a_release_handed_over_during_the_drain_runs() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let released = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut config = demo_config();
    config.seed_tasks.clear();
    config.drain_timeout = Duration::from_secs(5);
    config.pools[0].provisioner = "gated".into();
    let extra: HashMap<String, Arc<dyn Provisioner>> = HashMap::from([(
        "gated".to_owned(),
        Arc::new(GatedCounting {
            gate: gate.clone(),
            released: released.clone(),
        }) as Arc<dyn Provisioner>,
    )]);
    let app = TestApp::spawn_with_provisioners(config, extra).await;
    let (mut c, _) = app.login("astravdi").await;
    c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await;
    let user = app.state.auth.users.by_name("astravdi").unwrap().id;
    // Meanwhile the pool has come to hold a machine for the user.
    assert!(
        app.state
            .store
            .assignment_create(&poolgate::store::Assignment {
                user_id: user,
                pool_id: pool_win_1(),
                machine: Arc::new(machine_named("vm-held")),
                lease_until_ms: poolgate::store::now_ms() + 600_000,
                since_ms: poolgate::store::now_ms(),
            })
            .await
            .unwrap()
    );
    app.server.stop();
    gate.notify_one();
    tokio::time::timeout(Duration::from_secs(10), app.server.stopped())
        .await
        .expect("stops once the task has ended");
    assert_eq!(
        released.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the machine step 1 could not assign was released during the drain"
    );
}
