//! The cases that need a real Redis beyond the backend suite: two `poolgate serve` processes on
//! one Redis, Redis restarting under load, and the Redis password.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;
use crate::redis_server::*;

fn redis_instance_args(config: &std::path::Path, data: &std::path::Path) -> Vec<String> {
    vec![
        "serve".into(),
        "--config".into(),
        config.to_str().unwrap().into(),
        "--data-dir".into(),
        data.to_str().unwrap().into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ]
}

/// Two `poolgate serve` processes on the test Redis under a fresh prefix (`label`-…): the demo
/// dataset with the simulator at `speed`, one JWT secret, and `extra` config lines; `edit`
/// may rewrite the config text first. The directory holds their data: keep it alive.
async fn two_instances(
    label: &str,
    speed: f64,
    extra: &str,
    edit: impl FnOnce(String) -> String,
) -> (tempfile::TempDir, ServerProcess, ServerProcess) {
    two_instances_on(&redis_url(), label, speed, extra, edit).await
}

/// [`two_instances`] on the store `state` (a Redis or a cluster).
pub async fn two_instances_on(
    state: &str,
    label: &str,
    speed: f64,
    extra: &str,
    edit: impl FnOnce(String) -> String,
) -> (tempfile::TempDir, ServerProcess, ServerProcess) {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{label}-{}", uuid::Uuid::new_v4().simple());
    let extra = format!(
        "state = \"{state}\"\nstate_prefix = \"{prefix}\"\njwt_secret = \"{}\"\n{extra}",
        "k".repeat(40)
    );
    let config = config_file(dir.path(), speed, &extra);
    let text = edit(std::fs::read_to_string(&config).unwrap());
    std::fs::write(&config, text).unwrap();
    let start = |name: &str| {
        let args = redis_instance_args(&config, &dir.path().join(name));
        async move { ServerProcess::start(&args.iter().map(String::as_str).collect::<Vec<_>>()).await }
    };
    let a = start("a").await;
    let b = start("b").await;
    (dir, a, b)
}

/// Each client asks `tasks` until `stop`; every answer must be a response or a 503, and the
/// connection must still answer afterwards. Each handle gives (responses, 503s).
pub fn tasks_load(
    clients: Vec<Client>,
    stop: &tokio_util::sync::CancellationToken,
) -> Vec<tokio::task::JoinHandle<(u32, u32)>> {
    clients
        .into_iter()
        .map(|mut c| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut ok, mut unavailable) = (0u32, 0u32);
                while !stop.is_cancelled() {
                    let reply = c.rpc("tasks", json!({})).await;
                    match reply["name"].as_str() {
                        Some("response") => ok += 1,
                        _ => {
                            assert_eq!(error_code(&reply), 503, "store errors are 503: {reply}");
                            unavailable += 1;
                        }
                    }
                }
                // The connection itself survived: it still answers.
                assert_eq!(c.rpc("identify", json!({})).await["name"], "response");
                (ok, unavailable)
            })
        })
        .collect()
}

pub async fn two_instances_on_one_redis_act_as_one() {
    let (_dir, a, b) = two_instances("two", 20.0, "task_lease = 1", |c| c).await;
    act_as_one(a, b).await;
}

/// Two instances on one store: a token from A works on B, A's task events reach B, a sign-out
/// on A ends the session on B, and when A dies mid-task B ends the task.
pub async fn act_as_one(a: ServerProcess, b: ServerProcess) {
    // Log in on A, resume on B.
    let mut on_a = a.connect().await;
    let token = on_a.auth("astravdi", PASSWORD).await;
    let mut on_b = b.connect().await;
    let reply = on_b.rpc("auth_token", json!({"token": token})).await;
    assert_eq!(reply["name"], "response", "{reply}");

    // Step 1 on A; its events reach B.
    let id = on_a
        .rpc("pool_request", json!({"pool_id": POOL_WIN_1}))
        .await["args"]["task"]["id"]
        .clone();
    let event = on_b.next_event().await;
    assert_eq!(event["id"], id);
    assert_eq!(event["status"], "RUNNING");
    // B sees the same task for the same key.
    let same = on_b
        .rpc("pool_request", json!({"pool_id": POOL_WIN_1}))
        .await;
    assert_eq!(same["args"]["task"]["id"], id);

    // A sign-out on A ends the same session on B (another user's session is kept).
    let mut other_on_a = a.connect().await;
    let other = other_on_a.auth("user-2", PASSWORD).await;
    let mut leaving_on_b = b.connect().await;
    let mut leaving_on_a = a.connect().await;
    let leaving = leaving_on_a.auth("astravdi", PASSWORD).await;
    let resumed = leaving_on_b
        .rpc("auth_token", json!({"token": leaving}))
        .await;
    assert_eq!(resumed["name"], "response", "{resumed}");
    assert_eq!(
        leaving_on_a.rpc("auth_clear", json!({})).await["name"],
        "response"
    );
    let mut refused = false;
    for _ in 0..50 {
        let reply = leaving_on_b.rpc("tasks", json!({})).await;
        if reply["name"] == "error" {
            assert_eq!(error_code(&reply), 401, "{reply}");
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "a session signed out on A is refused on B");
    let mut fresh_b = b.connect().await;
    let revoked = fresh_b.rpc("auth_token", json!({"token": leaving})).await;
    assert_eq!(error_code(&revoked), 401, "{revoked}");
    let kept = fresh_b.rpc("auth_token", json!({"token": other})).await;
    assert_eq!(kept["name"], "response", "{kept}");

    // A dies mid-task: B ends it (well within the 90 s deadline) and says why.
    taken_over_when_killed(a, &mut on_b, &id, Duration::from_secs(10)).await;
    drop(b);
}

/// Signs astravdi in on A, resumes the session on B, starts step 1 on A and waits until B
/// hears it RUNNING: the socket on A, the one on B, and the task's id.
pub async fn task_on_a_heard_on_b(
    a: &ServerProcess,
    b: &ServerProcess,
) -> (Client, Client, serde_json::Value) {
    let mut on_a = a.connect().await;
    let token = on_a.auth("astravdi", PASSWORD).await;
    let mut on_b = b.connect().await;
    assert_eq!(
        on_b.rpc("auth_token", json!({"token": token})).await["name"],
        "response"
    );
    let id = on_a
        .rpc("pool_request", json!({"pool_id": POOL_WIN_1}))
        .await["args"]["task"]["id"]
        .clone();
    assert_eq!(on_b.next_event().await["status"], "RUNNING");
    (on_a, on_b, id)
}

/// `a` is killed (`kill -9`) while task `id` runs on it: the socket on the other instance is
/// pushed the task's end, CANCELLED because its instance went away, within `within`, and a new
/// request there starts a new task.
pub async fn taken_over_when_killed(
    a: ServerProcess,
    on_b: &mut Client,
    id: &serde_json::Value,
    within: Duration,
) {
    a.kill().await;
    let started = std::time::Instant::now();
    let (seen, task) = on_b.follow(id).await;
    assert_eq!(seen.last().unwrap(), "CANCELLED", "{task}");
    assert!(
        task["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("went away")),
        "{task}"
    );
    assert!(
        started.elapsed() < within,
        "ended in {:?}",
        started.elapsed()
    );
    let next = on_b
        .rpc("pool_request", json!({"pool_id": POOL_WIN_1}))
        .await;
    assert_ne!(&next["args"]["task"]["id"], id);
}

/// What a push tells a client on one instance, a request on that instance never contradicts,
/// though the task is driven by another instance and the first one caches what it reads: after
/// each pushed status, `task`, `tasks` and `pool_request` on it answer that status or a later
/// one — never an older, cached one.
pub async fn a_pushed_status_is_never_contradicted_by_a_request_on_the_same_instance() {
    let (_dir, a, b) = two_instances("two", 0.6, "", |c| c).await;
    let rank = |status: &serde_json::Value| match status.as_str().unwrap() {
        "PENDING" => 0,
        "RUNNING" => 1,
        _ => 2,
    };

    let mut on_a = a.connect().await;
    let token = on_a.auth("astravdi", PASSWORD).await;
    let mut watch_b = b.connect().await;
    let mut ask_b = b.connect().await;
    for c in [&mut watch_b, &mut ask_b] {
        let reply = c.rpc("auth_token", json!({"token": token})).await;
        assert_eq!(reply["name"], "response", "{reply}");
    }
    for round in 0..3 {
        // B has read (and cached) the key's state before A changes it.
        let before = ask_b
            .rpc("pool_request", json!({"pool_id": POOL_WIN_1}))
            .await;
        assert_eq!(before["name"], "response", "{before}");
        ask_b.rpc("tasks", json!({})).await;
        if round > 0 {
            // The machine from the round before: released on A, so the next request on B
            // starts again rather than answering from what B held.
            let reply = on_a
                .rpc(
                    "admin_release",
                    json!({"username": "astravdi", "pool_id": POOL_WIN_1}),
                )
                .await;
            assert_eq!(reply["name"], "response", "{reply}");
        }
        let id = on_a
            .rpc("pool_request", json!({"pool_id": POOL_WIN_1}))
            .await["args"]["task"]["id"]
            .clone();
        loop {
            // Machine events (the release) pass by too.
            let frame = watch_b.recv().await;
            let pushed = &frame["args"];
            if frame["name"] != "task" || pushed["id"] != id {
                continue;
            }
            let task = ask_b.rpc("task", json!({"task_id": id})).await;
            assert!(
                rank(&task["args"]["status"]) >= rank(&pushed["status"])
                    && task["args"]["progress"].as_u64() >= pushed["progress"].as_u64(),
                "pushed {pushed}, then read {task}"
            );
            let listed = ask_b.rpc("tasks", json!({})).await;
            let listed = listed["args"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["id"] == id)
                .cloned()
                .unwrap_or_else(|| panic!("task {id} missing from {listed}"));
            assert!(
                rank(&listed["status"]) >= rank(&pushed["status"]),
                "{listed}"
            );
            let again = ask_b
                .rpc("pool_request", json!({"pool_id": POOL_WIN_1}))
                .await;
            assert_eq!(again["args"]["task"]["id"], id, "{again}");
            assert!(rank(&again["args"]["task"]["status"]) >= rank(&pushed["status"]));
            if rank(&pushed["status"]) == 2 {
                break;
            }
        }
    }
    drop((a, b));
}

pub async fn redis_restarting_under_load_costs_only_the_requests_in_flight() {
    let port = free_port();
    let redis_dir = tempfile::tempdir().unwrap();
    let persist = persistent(redis_dir.path());
    let mut redis = spawn_redis_with(port, &persist);
    let app = TestApp::spawn_with(|c| {
        c.state = format!("redis://127.0.0.1:{port}").parse().unwrap();
        fast_sim(c, OK, OK);
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(app.login("astravdi").await.0);
    }
    // Signed in before the outage, and only listening: its user's channel must be subscribed
    // again once Redis is back.
    let (mut listener, _) = app.login("user-2").await;
    let stop = tokio_util::sync::CancellationToken::new();
    let load = tasks_load(clients, &stop);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_redis(&mut redis, port).await;
    // The health check asks the store itself (a PING), so a load balancer sees the outage.
    let health = reqwest::get(app.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 503, "/healthz while Redis is down");
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis = spawn_redis_with(port, &persist);
    // Give the connection manager time to reconnect, then check the service is back.
    let mut back = false;
    let (mut probe, token) = app.login_retrying("astravdi").await;
    for _ in 0..50 {
        if probe.rpc("tasks", json!({})).await["name"] == "response" {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the service resumes after redis comes back");
    let health = reqwest::get(app.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200, "/healthz once Redis is back");
    // Events resume for the socket from before the outage: a task of its user, made on
    // another socket, is pushed to it to the end.
    let (mut user2, _) = app.login_retrying("user-2").await;
    let id = user2
        .rpc("pool_request", json!({"pool_id": POOL_ASTRA_2}))
        .await["args"]["task"]["id"]
        .clone();
    assert!(id.is_string(), "a task: {id}");
    let (seen, _) = listener.follow(&id).await;
    assert!(
        seen.last()
            .is_some_and(|s| s != "PENDING" && s != "RUNNING"),
        "pushed to the end after the outage: {seen:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let (mut ok, mut unavailable) = (0, 0);
    for h in load {
        let (o, u) = h.await.unwrap();
        ok += o;
        unavailable += u;
    }
    assert!(
        ok > 0 && unavailable > 0,
        "ok {ok}, unavailable {unavailable}"
    );
    // Sessions are in redis too (persisted): the token from before the outage still works.
    let mut again = app.connect().await;
    assert_eq!(
        again.rpc("auth_token", json!({"token": token})).await["name"],
        "response"
    );
    stop_redis(&mut redis, port).await;
}

pub async fn the_redis_password_comes_from_a_file_and_is_required() {
    let port = free_port();
    let mut redis = spawn_redis_with(
        port,
        "--save '' --appendonly no --requirepass correct-horse-battery",
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("redis.pass");
    std::fs::write(&file, "correct-horse-battery\n").unwrap();
    let app = TestApp::spawn_with(|c| {
        c.state = format!("redis://127.0.0.1:{port}").parse().unwrap();
        c.state_password_file = Some(file.clone());
    })
    .await;
    let (_c, _) = app.login("astravdi").await;

    let mut without = demo_config();
    without.state = format!("redis://127.0.0.1:{port}").parse().unwrap();
    assert!(
        poolgate::AppState::new(without).await.is_err(),
        "no password, no service"
    );

    let empty = dir.path().join("empty.pass");
    std::fs::write(&empty, "\n").unwrap();
    let mut blank = demo_config();
    blank.state = format!("redis://127.0.0.1:{port}").parse().unwrap();
    blank.state_password_file = Some(empty);
    let err = poolgate::AppState::new(blank).await.err().expect("refused");
    assert!(err.to_string().contains("empty"), "{err}");
    drop(app);
    stop_redis(&mut redis, port).await;
}

/// On A a socket sits idle past `token_ttl` while B keeps its token alive, so A's sweep would
/// drop the session from A's memory; the socket then revives it from the store. A sign-out on
/// B (`auth_clear`), and an admin's `admin_revoke` on B, must still reach that socket on A,
/// within one `session_flush`.
pub async fn revocation_reaches_a_socket_whose_session_the_sweep_dropped_on_another_instance() {
    let (_dir, a, b) = two_instances(
        "revive",
        1.0,
        "session_flush = 0.5\nsweep_interval = 0.2",
        |c| c.replace("token_ttl = 300", "token_ttl = 1.5"),
    )
    .await;
    let mut admin = b.connect().await;
    admin.auth("astravdi", PASSWORD).await;

    for how in ["auth_clear", "admin_revoke"] {
        let mut on_a = a.connect().await;
        let token = on_a.auth("user-2", PASSWORD).await;
        let mut on_b = b.connect().await;
        let reply = on_b.rpc("auth_token", json!({"token": token})).await;
        assert_eq!(reply["name"], "response", "{reply}");
        // Idle on A for longer than the TTL (A's sweep runs every 0.2 s), alive on B.
        let idle = std::time::Instant::now();
        while idle.elapsed() < Duration::from_millis(2200) {
            assert_eq!(on_b.rpc("tasks", json!({})).await["name"], "response");
            admin.rpc("identify", json!({})).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(on_b.rpc("tasks", json!({})).await["name"], "response");
        // A's socket revives the session from the store.
        let revived = on_a.rpc("tasks", json!({})).await;
        assert_eq!(
            revived["name"], "response",
            "alive on B, so alive on A: {revived}"
        );

        let reply = match how {
            "auth_clear" => on_b.rpc("auth_clear", json!({})).await,
            _ => {
                admin
                    .rpc("admin_revoke", json!({"username": "user-2"}))
                    .await
            }
        };
        assert_eq!(reply["name"], "response", "{how}: {reply}");
        let revoked = std::time::Instant::now();
        loop {
            let reply = on_a.rpc("tasks", json!({})).await;
            if reply["name"] == "error" {
                assert_eq!(error_code(&reply), 401, "{how}: {reply}");
                break;
            }
            assert!(
                revoked.elapsed() < Duration::from_millis(500 + 700),
                "{how} on B has not reached the socket on A after {:?}",
                revoked.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop((a, b));
}

/// A write announces itself to the other instances' read caches even when its writer dies the
/// moment the write returns (found by a hostile review: the announcement used to leave after
/// the write, from the writer's outbox, and another instance then served the replaced task and
/// a machine the user no longer held for up to `cache::MAX_AGE`, 60 s). The announcement is
/// now published by the write's own script or transaction.
pub async fn a_write_is_announced_even_when_its_writer_dies_as_it_returns() {
    use poolgate::domain::{Machine, Task, TaskKind, TaskStatus};
    use poolgate::store::{self, Assignment, Store, now_ms};
    use std::sync::Arc;
    use tokio::sync::mpsc;
    use uuid::Uuid;

    let url = redis_url();
    let prefix = format!("announce-{}", Uuid::new_v4().simple());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_owned();
    let open = {
        let (url, prefix, data) = (url.clone(), prefix.clone(), data.clone());
        move |sink| {
            let (url, prefix, data) = (url.clone(), prefix.clone(), data.clone());
            async move {
                store::open(&url.parse().unwrap(), None, &prefix, &data, sink)
                    .await
                    .unwrap()
            }
        }
    };
    // Runs `write` on an instance of its own (its own runtime), which then dies at once: the
    // write has returned, the announcement it queued never leaves.
    type Write =
        Box<dyn FnOnce(Arc<dyn Store>) -> futures_util::future::BoxFuture<'static, ()> + Send>;
    let write_then_die = |write: Write| {
        let open = open.clone();
        tokio::task::spawn_blocking(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let (sink, _bus) = mpsc::unbounded_channel();
            let a = rt.block_on(open(sink));
            rt.block_on(write(a.clone()));
            drop(a);
            drop(rt); // killed: its outbox task never runs again
        })
    };

    let (user, pool) = (Uuid::new_v4(), Uuid::new_v4());
    let machine = Arc::new(Machine {
        id: Uuid::new_v4(),
        verbose_name: "vm".into(),
        host: "10.0.0.1".into(),
        port: 3389,
        protocol_id: 1,
        permissions: vec![],
    });
    let mut task = Task::new(TaskKind::PoolExpand, user, pool);
    task.start();

    // Set up through an instance that stays alive long enough to announce.
    let (sink_setup, _bus_setup) = mpsc::unbounded_channel();
    let setup = open(sink_setup).await;
    assert!(setup.task_create(None, &task).await.unwrap());
    assert!(
        setup
            .assignment_create(&Assignment {
                user_id: user,
                pool_id: pool,
                machine: machine.clone(),
                lease_until_ms: now_ms() + 600_000,
            })
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Instance B: reads, and so caches, the RUNNING task and the assignment.
    let (sink_b, _bus_b) = mpsc::unbounded_channel();
    let b = open(sink_b).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        b.task_get(task.user_id, task.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        TaskStatus::Running
    );
    assert!(b.assignment_get(user, pool).await.unwrap().is_some());
    assert!(
        b.task_latest((user, pool, TaskKind::PoolExpand))
            .await
            .unwrap()
            .is_some()
    );

    // Instance A1 completes the task and dies; A2 takes the machine away and dies.
    let mut done = task.clone();
    done.finish(TaskStatus::Completed, None);
    let d = done.clone();
    write_then_die(Box::new(move |a| {
        Box::pin(async move { assert!(a.task_update(&d).await.unwrap()) })
    }))
    .await
    .unwrap();
    write_then_die(Box::new(move |a| {
        Box::pin(async move {
            a.assignment_remove(user, pool)
                .await
                .unwrap()
                .expect("it was held");
        })
    }))
    .await
    .unwrap();

    // What Redis holds now, read by an instance with an empty cache.
    let (sink_c, _bus_c) = mpsc::unbounded_channel();
    let c = open(sink_c).await;
    let truth_status = c
        .task_get(task.user_id, task.id)
        .await
        .unwrap()
        .unwrap()
        .status;
    let truth_held = c.assignment_get(user, pool).await.unwrap().is_some();
    assert_eq!((truth_status, truth_held), (TaskStatus::Completed, false));

    // B — connected all along, no gap in its bus — sees the writes well within its cache's
    // 60 s age limit (asked until then; the announcements arrive in milliseconds).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = b
            .task_get(task.user_id, task.id)
            .await
            .unwrap()
            .unwrap()
            .status;
        let latest = b
            .task_latest((user, pool, TaskKind::PoolExpand))
            .await
            .unwrap()
            .unwrap()
            .status;
        let held = b.assignment_get(user, pool).await.unwrap();
        let now = (status, latest, held.as_ref().map(|a| a.machine.id));
        if now == (TaskStatus::Completed, TaskStatus::Completed, None) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "instance B still serves {now:?} 10 s after the writes (Redis: COMPLETED, no \
             assignment)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `poolgate_bus_messages_received_total` and `poolgate_bus_watched_users` of an instance.
async fn bus(server: &ServerProcess) -> (f64, f64) {
    let text = reqwest::get(format!("http://{}/metrics", server.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{name} in {text}"))
            .parse()
            .unwrap()
    };
    (
        value("poolgate_bus_messages_received_total"),
        value("poolgate_bus_watched_users"),
    )
}

/// Per-user routing: an instance hears the bus only for the users with a socket on it — a
/// user's task on A costs B nothing until the user opens a socket on B, and nothing again once
/// it is closed — while events still reach every socket of the user, on any instance.
pub async fn an_instance_hears_only_the_users_with_a_socket_on_it() {
    let (_dir, a, b) = two_instances("route", 20.0, "", |c| c).await;

    let mut astra = a.connect().await;
    let token = astra.auth("astravdi", PASSWORD).await;
    let mut user2 = b.connect().await;
    user2.auth("user-2", PASSWORD).await;
    assert_eq!(bus(&a).await.1, 1.0, "A watches astravdi");
    assert_eq!(bus(&b).await.1, 1.0, "B watches user-2");

    // astravdi's whole step 1 on A: none of it reaches B.
    let (b_before, _) = bus(&b).await;
    let (a_before, _) = bus(&a).await;
    let id = astra
        .rpc("pool_request", json!({"pool_id": POOL_WIN_1}))
        .await["args"]["task"]["id"]
        .clone();
    let (seen, _) = astra.follow(&id).await;
    assert_eq!(seen.last().unwrap(), "COMPLETED", "{seen:?}");
    let (a_after, _) = bus(&a).await;
    let (b_after, _) = bus(&b).await;
    assert!(
        a_after - a_before >= seen.len() as f64,
        "A heard the task: {a_before} → {a_after}"
    );
    assert_eq!(
        b_after, b_before,
        "B heard nothing of a user it has no socket of"
    );

    // astravdi opens a socket on B: B hears the next task, and its socket is told.
    let mut astra_b = b.connect().await;
    let reply = astra_b.rpc("auth_token", json!({"token": token})).await;
    assert_eq!(reply["name"], "response", "{reply}");
    assert_eq!(bus(&b).await.1, 2.0);
    let id = astra
        .rpc("connect_info", json!({"pool_id": POOL_WIN_1}))
        .await["args"]["task"]["id"]
        .clone();
    let (seen_b, _) = astra_b.follow(&id).await;
    assert_eq!(seen_b.last().unwrap(), "COMPLETED", "{seen_b:?}");
    let (b_heard, _) = bus(&b).await;
    assert!(b_heard > b_after, "B hears astravdi now");

    // The socket on B closes: B stops hearing astravdi.
    drop(astra_b);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while bus(&b).await.1 != 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "B still watches astravdi"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (b_left, _) = bus(&b).await;
    let reply = astra
        .rpc(
            "admin_release",
            json!({"username": "astravdi", "pool_id": POOL_WIN_1}),
        )
        .await;
    assert_eq!(reply["name"], "response", "{reply}");
    let id = astra
        .rpc("pool_request", json!({"pool_id": POOL_WIN_1}))
        .await["args"]["task"]["id"]
        .clone();
    astra.follow(&id).await;
    assert_eq!(
        bus(&b).await.0,
        b_left,
        "B heard nothing once the socket left"
    );
    drop((a, b));
}

/// The publish path is bounded: while Redis does not answer, events past the outbox's capacity
/// are shed and counted (`poolgate_bus_events_shed_total`) instead of queued without limit,
/// and publishing goes on once Redis is back.
pub async fn a_redis_that_cannot_keep_up_sheds_events_with_a_count_and_recovers() {
    use poolgate::store::{self, BusEvent};
    let port = free_port();
    let mut redis = spawn_redis(port);
    let url = format!("redis://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let (sink, mut bus) = tokio::sync::mpsc::unbounded_channel();
    let store = store::open(&url.parse().unwrap(), None, "shed", dir.path(), sink)
        .await
        .unwrap();
    let router = store.router().expect("Redis routes by user");
    let user = uuid::Uuid::new_v4();
    let _watch = router.watch(user).await;
    let released = |reason: &str| BusEvent::Released {
        user_id: user,
        pool_id: uuid::Uuid::nil(),
        machine_id: uuid::Uuid::nil(),
        reason: reason.into(),
    };

    // Redis stops answering (every client paused) while far more than the outbox holds is
    // published.
    let paused = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "client", "pause", "2000", "ALL"])
        .output()
        .unwrap();
    assert!(paused.status.success(), "{paused:?}");
    let published = store::redis_store::OUTBOX_CAPACITY + 10_000;
    for _ in 0..published {
        store.publish(released("load"));
    }
    let shed = router.counts().shed;
    assert!(
        (9_000..=10_000).contains(&shed),
        "about what the outbox could not hold is shed: {shed} of {published}"
    );
    // A sign-out after the flood is not shed: revocations wait apart and go first.
    store.publish(BusEvent::SessionRevoked {
        hash: [7; 32],
        user_id: user,
    });
    assert_eq!(
        router.counts().shed,
        shed,
        "a revocation is never shed for task events"
    );

    // Once Redis answers again, every event the outbox took is published, in order, and
    // publishing goes on: a later event arrives after them.
    let kept = published - shed as usize;
    let mut loads = 0;
    let mut revoked = false;
    let arrived = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(event) = bus.recv().await {
            match &event {
                BusEvent::SessionRevoked { hash, .. } if *hash == [7; 32] => {
                    revoked = true;
                }
                BusEvent::Released { reason, .. } if reason == "marker" => return true,
                BusEvent::Released { .. } => {
                    loads += 1;
                    if loads >= kept {
                        store.publish(released("marker"));
                    }
                }
                _ => {}
            }
        }
        false
    })
    .await;
    // (A publish retried after its reply timed out may arrive twice: at least once each.)
    assert!(
        loads >= kept,
        "every event the outbox took was published: {loads} of {kept}"
    );
    assert_eq!(arrived, Ok(true), "publishing resumed after the pause");
    assert!(revoked, "the revocation was published");
    stop_redis(&mut redis, port).await;
}

/// `config_file` pointed at `state`, its data directory under `dir`.
pub fn config_on(dir: &std::path::Path, state: &str) -> std::path::PathBuf {
    let path = config_file(dir, 1.0, &format!("state = {state:?}"));
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "data_dir = \"poolgate-data\"",
        &format!("data_dir = {:?}", dir.join("data")),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `poolgate check-config --connect`: whether it passed, and what it said on stderr.
pub fn check_config_connect(config: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_poolgate"))
        .args(["check-config", "--connect"])
        .arg(config)
        .env_remove("POOLGATE_JWT_SECRET")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A Redis that keeps no append-only file loses what it acknowledged since its last snapshot
/// when it restarts: `check-config --connect` warns of it (naming the `state` line, and still
/// passing) and `serve` logs it once at start; a Redis with `appendonly yes` gets neither.
pub async fn a_redis_without_an_append_only_file_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let (volatile, durable) = (free_port(), free_port());
    let mut volatile_redis = spawn_redis_with(volatile, "--save '' --appendonly no");
    let mut durable_redis = spawn_redis_with(
        durable,
        &format!("--save '' --appendonly yes --dir {}", dir.path().display()),
    );
    for (port, warned) in [(volatile, true), (durable, false)] {
        let here = dir.path().join(port.to_string());
        std::fs::create_dir(&here).unwrap();
        let config = config_on(&here, &format!("redis://127.0.0.1:{port}"));
        let (ok, err) = check_config_connect(&config);
        assert!(ok, "a warning does not fail the check: {err}");
        let line = std::fs::read_to_string(&config)
            .unwrap()
            .lines()
            .position(|l| l.starts_with("state = "))
            .unwrap()
            + 1;
        let expected = format!(
            "warning: {}:{line}: state: redis://127.0.0.1:{port} keeps no append-only file",
            config.display()
        );
        assert_eq!(err.contains(&expected), warned, "{expected}\nin:\n{err}");
        assert_eq!(err.contains("append-only"), warned, "{err}");

        let server = ServerProcess::start(&[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .await;
        let mut seen = Vec::new();
        for _ in 0..50 {
            seen = server.log_lines("append-only");
            if !seen.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if warned {
            assert_eq!(seen.len(), 1, "{seen:?}");
            assert!(
                seen[0].contains("WARN")
                    && seen[0].contains(&format!("redis://127.0.0.1:{port} keeps no append-only"))
                    && seen[0].contains("appendonly yes"),
                "{seen:?}"
            );
        } else {
            assert!(seen.is_empty(), "{seen:?}");
        }
    }
    stop_redis(&mut volatile_redis, volatile).await;
    stop_redis(&mut durable_redis, durable).await;
}

/// A rolling restart: instance A is stopped (SIGTERM) with a task of its running and
/// `drain_timeout` set. Its sockets close at once (their clients come back through B), and A
/// drives the task to its end before it exits: the client, now on B, is pushed COMPLETED.
pub async fn a_stopped_instance_finishes_its_running_tasks_within_the_drain_timeout() {
    let (_dir, mut a, b) =
        two_instances("drain", 1.5, "task_lease = 1\ndrain_timeout = 30", |c| c).await;
    let (_on_a, mut on_b, id) = task_on_a_heard_on_b(&a, &b).await;
    let pid = a.child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let (seen, task) = on_b.follow(&id).await;
    assert_eq!(seen.last().unwrap(), "COMPLETED", "{task}");
    let status = tokio::time::timeout(Duration::from_secs(10), a.child.wait())
        .await
        .expect("A exits once its task has ended")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// A `state_prefix` with glob characters (`pg*`) lists only its own keys when the store scans
/// (the admin views, counts, directory users): before, its pattern also matched `pgx:…`, the
/// keys of another deployment sharing the Redis.
pub async fn a_state_prefix_with_glob_characters_scans_only_its_own_keys() {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let (glob, _a) = crate::routing_review::other_instance(&redis_url(), &format!("g{tag}*")).await;
    let (other, _b) =
        crate::routing_review::other_instance(&redis_url(), &format!("g{tag}x")).await;
    let user = |name: &str| poolgate::store::DirectoryUser {
        id: uuid::Uuid::new_v4(),
        dn: format!("uid={name},dc=example,dc=org"),
        username: name.into(),
        full_name: name.into(),
        email: String::new(),
        groups: vec![],
        admin: false,
        updated_ms: 1,
    };
    let mine = user("mine");
    glob.directory_user_put(&mine).await.unwrap();
    other.directory_user_put(&user("theirs")).await.unwrap();
    assert_eq!(glob.directory_users().await.unwrap(), vec![mine]);
}
