//! Instances sharing one Redis act as one: two `poolgate serve` processes on one Redis, what
//! each hears of the other, Redis restarting under load, a stop draining its tasks. The
//! helpers that start two instances serve the cluster cases too.

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
    let (glob, _a) = crate::routing::other_instance(&redis_url(), &format!("g{tag}*")).await;
    let (other, _b) = crate::routing::other_instance(&redis_url(), &format!("g{tag}x")).await;
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

/// The cases of this file, for `cases()` in main.rs.
pub(crate) fn cases() -> Vec<(&'static str, crate::Needs, crate::harness::Case)> {
    use crate::Needs::*;
    vec![
        (
            "instances::two_instances_on_one_redis_act_as_one",
            Redis,
            || Box::pin(two_instances_on_one_redis_act_as_one()),
        ),
        (
            "instances::an_instance_hears_only_the_users_with_a_socket_on_it",
            Redis,
            || Box::pin(an_instance_hears_only_the_users_with_a_socket_on_it()),
        ),
        (
            "instances::a_pushed_status_is_never_contradicted_by_a_request_on_the_same_instance",
            Redis,
            || Box::pin(a_pushed_status_is_never_contradicted_by_a_request_on_the_same_instance()),
        ),
        (
            "instances::revocation_reaches_a_socket_whose_session_the_sweep_dropped_on_another_instance",
            Redis,
            || {
                Box::pin(
                    revocation_reaches_a_socket_whose_session_the_sweep_dropped_on_another_instance(
                    ),
                )
            },
        ),
        (
            "instances::redis_restarting_under_load_costs_only_the_requests_in_flight",
            RedisServer,
            || Box::pin(redis_restarting_under_load_costs_only_the_requests_in_flight()),
        ),
        (
            "instances::a_stopped_instance_finishes_its_running_tasks_within_the_drain_timeout",
            Redis,
            || Box::pin(a_stopped_instance_finishes_its_running_tasks_within_the_drain_timeout()),
        ),
        (
            "instances::a_state_prefix_with_glob_characters_scans_only_its_own_keys",
            Redis,
            || Box::pin(a_state_prefix_with_glob_characters_scans_only_its_own_keys()),
        ),
        (
            "instances::a_write_on_one_instance_is_never_read_stale_on_another_once_announced",
            Redis,
            || {
                Box::pin(async {
                    crate::backends::a_write_on_one_instance_is_never_read_stale_on_another_once_announced(
                        &redis_url(),
                    )
                    .await
                })
            },
        ),
    ]
}
