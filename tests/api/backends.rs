//! One behaviour suite, run against every state backend (memory, sqlite, redis): the rules
//! that depend on the store's atomic operations and on what survives a restart. Memory and
//! SQLite run here; the Redis run lives in the `redis` test target (tests/redis/main.rs),
//! which says it was skipped, and counts the cases as ignored, when no Redis can be had.
//!
//! (The whole API suite can also be run against one backend with
//! `POOLGATE_TEST_STATE=memory|sqlite:|redis://… cargo test`; `.ci/run` does so for redis.)

use std::collections::HashSet;
use std::time::Duration;

use poolgate::Config;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

/// The demo config on a given backend, with fast simulated timings.
fn config(state: &str) -> Config {
    let mut c = demo_config();
    c.state = state.parse().expect("a state URL");
    fast_sim(&mut c, OK, OK);
    c
}

async fn app(state: &str) -> TestApp {
    TestApp::spawn_config(config(state)).await
}

async fn step_1_done(c: &mut Client, pool: &str) -> Value {
    let id = c.rpc("pool_request", json!({"pool_id": pool})).await["args"]["task"]["id"].clone();
    let (seen, task) = c.follow(&id).await;
    assert_eq!(seen.last().unwrap(), "COMPLETED");
    task
}

pub async fn concurrent_requests_create_one_task(state: &str) {
    let app = app(state).await;
    let (_a, token) = app.login("astravdi").await;
    let mut handles = Vec::new();
    for _ in 0..10 {
        let mut c = app.connect().await;
        c.rpc("auth_token", json!({"token": token})).await;
        handles.push(tokio::spawn(async move {
            c.rpc("pool_request", json!({"pool_id": POOL_WIN_2})).await["args"]["task"]["id"]
                .to_string()
        }));
    }
    let mut ids = HashSet::new();
    for h in handles {
        ids.insert(h.await.unwrap());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
}

pub async fn a_static_inventory_never_gives_a_machine_twice(state: &str) {
    let mut c = config(state);
    let names: Vec<String> = (0..30)
        .map(|i| {
            let mut u = c.users[0].clone();
            u.username = format!("racer-{i}");
            u.id = Uuid::new_v4();
            c.users.push(u);
            format!("racer-{i}")
        })
        .collect();
    let table = "kind = \"static\"\nmachines = [{ host = \"10.0.0.1\", port = 1 }, { host = \"10.0.0.2\", port = 1 }, { host = \"10.0.0.3\", port = 1 }]";
    c.provisioners
        .insert("inv".into(), toml::from_str(table).unwrap());
    c.pools[0].provisioner = "inv".into();
    c.pools[0].users = names.clone();
    let app = TestApp::spawn_config(c).await;
    let pool: Uuid = POOL_WIN_1.parse().unwrap();
    let mut handles = Vec::new();
    for name in names {
        let state = app.state.clone();
        handles.push(tokio::spawn(async move {
            let user = state.auth.users.by_name(&name).unwrap().clone();
            let task = state.pools.request_machine(&user, pool).await.unwrap();
            for _ in 0..200 {
                let t = state.pools.task(&user, task.id).await.unwrap();
                if t.status.is_done() {
                    return state.pools.assignment(user.id, pool).await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("task did not end");
        }));
    }
    let mut given = Vec::new();
    for h in handles {
        if let Some(m) = h.await.unwrap() {
            given.push(m.id);
        }
    }
    assert_eq!(given.len(), 3, "three machines, three holders");
    assert_eq!(given.iter().collect::<HashSet<_>>().len(), 3);
}

pub async fn a_totp_code_is_refused_the_second_time(state: &str) {
    const SECRET: &str = "KRSXG5CTMVRXEZLUKRSXG5CTMVRXEZLU";
    let mut c = config(state);
    let mut u = c.users[0].clone();
    u.username = "totp".into();
    u.id = Uuid::new_v4();
    u.otp_enabled = true;
    u.otp_method = Some(poolgate::auth::otp::OtpMethod::Totp);
    u.otp_secret = Some(SECRET.into());
    c.users.push(u);
    let app = TestApp::spawn_config(c).await;
    let code = poolgate::auth::otp::TotpSecret::from_base32(SECRET, "t")
        .unwrap()
        .code_at(chrono::Utc::now().timestamp() as u64);
    let mut a = app.connect().await;
    let ok = a
        .rpc(
            "auth",
            json!({"username": "totp", "password": PASSWORD, "otp_code": code}),
        )
        .await;
    assert_eq!(ok["name"], "response", "{ok}");
    // Where the store is durable, the replay comes after a restart.
    let app = if state == "memory" {
        app
    } else {
        app.restart().await
    };
    let mut b = app.connect().await;
    let again = b
        .rpc(
            "auth",
            json!({"username": "totp", "password": PASSWORD, "otp_code": code}),
        )
        .await;
    assert_eq!(
        again["args"]["err_code"], 103,
        "replayed code refused (after a restart where durable)"
    );
}

/// Tokens, revocations, tasks and assignments survive a restart of the server.
pub async fn state_survives_a_restart(state: &str) {
    let app = app(state).await;
    let (mut c, token) = app.login("astravdi").await;
    let (_, revoked) = app.login("astravdi").await;
    let task = step_1_done(&mut c, POOL_WIN_1).await;
    let mut r = app.connect().await;
    r.rpc("auth_token", json!({"token": revoked})).await;
    r.rpc("auth_clear", json!({})).await;
    let jwt = app.jwt("astravdi").await;
    let revoked_jwt = app.jwt("astravdi").await;
    let http = reqwest::Client::new();
    let logout = http
        .post(app.url("/api/v2/users/logout/"))
        .header("Authorization", format!("JWT {revoked_jwt}"))
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 205);

    let app = app.restart().await;
    let mut c = app.connect().await;
    let reply = c.rpc("auth_token", json!({"token": token})).await;
    assert_eq!(
        reply["name"], "response",
        "a valid token is still valid: {reply}"
    );
    let mut r = app.connect().await;
    assert_eq!(
        error_code(&r.rpc("auth_token", json!({"token": revoked})).await),
        401
    );
    let again = c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await;
    assert_eq!(
        again["args"]["task"]["id"], task["id"],
        "the assignment is still there"
    );
    assert_eq!(again["args"]["task"]["status"], "COMPLETED");
    let ok = http
        .get(app.url("/api/v2/pools/"))
        .header("Authorization", format!("JWT {jwt}"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let gone = http
        .get(app.url("/api/v2/pools/"))
        .header("Authorization", format!("JWT {revoked_jwt}"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 403, "a revoked JWT stays revoked");
}

/// A task cut off by a stop is ended with a reason, and the next request starts a new one.
pub async fn a_task_cut_off_by_a_stop_is_cancelled_and_restarts(state: &str) {
    let mut c = config(state);
    let slow: toml::Value =
        toml::from_str("kind = \"simulated\"\npending = 0.05\nrunning = [20, 20]").unwrap();
    c.provisioners
        .insert("simulated".into(), slow.try_into().unwrap());
    let app = TestApp::spawn_config(c).await;
    let (mut a, token) = app.login("astravdi").await;
    let id =
        a.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    let app = app.restart().await;
    let mut b = app.connect().await;
    b.rpc("auth_token", json!({"token": token})).await;
    let task = b.rpc("task", json!({"task_id": id})).await;
    assert_eq!(task["args"]["status"], "CANCELLED", "{task}");
    assert!(
        task["args"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ask again")
    );
    let next = b.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await;
    assert_ne!(next["args"]["task"]["id"], id);
}

/// An expired assignment is given back by the sweep, with an event, and step 1 starts over.
pub async fn an_expired_assignment_is_released(state: &str) {
    let mut c = config(state);
    c.assignment_ttl = Duration::from_millis(400);
    c.lease_sweep = Duration::from_millis(100);
    let app = TestApp::spawn_config(c).await;
    let (mut a, _) = app.login("astravdi").await;
    let task = step_1_done(&mut a, POOL_WIN_1).await;
    let event = loop {
        let frame = a.recv().await;
        if frame["name"] == "machine" {
            break frame["args"].clone();
        }
    };
    assert_eq!(event["status"], "RELEASED");
    assert_eq!(event["pool_id"], POOL_WIN_1);
    let next = a.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await;
    assert_ne!(
        next["args"]["task"]["id"], task["id"],
        "no machine any more: a new step 1"
    );
    assert_eq!(
        error_code(&a.rpc("connect_info", json!({"pool_id": POOL_WIN_2})).await),
        409
    );
}

/// A machine an inventory holds without an assignment is released at start-up.
pub async fn orphaned_machines_are_released_at_start_up(state: &str) {
    let mut c = config(state);
    let table = "kind = \"static\"\nmachines = [{ id = \"11111111-1111-4111-8111-111111111111\", host = \"10.0.0.9\", port = 1 }]";
    c.provisioners
        .insert("inv".into(), toml::from_str(table).unwrap());
    c.pools[0].provisioner = "inv".into();
    let app = TestApp::spawn_config(c).await;
    let machine: Uuid = "11111111-1111-4111-8111-111111111111".parse().unwrap();
    // As if a crash happened between claiming the machine and recording the assignment.
    assert!(app.state.store.machine_claim("inv", machine).await.unwrap());
    let app = app.restart().await;
    // Released in the background (under release_deadline), right after start-up.
    let mut released = false;
    for _ in 0..100 {
        if app
            .state
            .store
            .machines_claimed("inv")
            .await
            .unwrap()
            .is_empty()
        {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(released, "the orphaned machine was released");
    let (mut a, _) = app.login("astravdi").await;
    step_1_done(&mut a, POOL_WIN_1).await;
}

/// Polls `check` every 25 ms for up to `within`; true as soon as it holds.
async fn eventually<F: std::future::Future<Output = bool>>(
    within: Duration,
    mut check: impl FnMut() -> F,
) -> bool {
    let start = std::time::Instant::now();
    loop {
        if check().await {
            return true;
        }
        if start.elapsed() > within {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Signing in past `max_sessions_per_user` revokes the user's least recently active session
/// (not the oldest), on every instance; the store holds at most the cap.
pub async fn a_users_sessions_are_capped_and_the_least_recently_active_is_revoked(state: &str) {
    let mut c = config(state);
    c.max_sessions_per_user = 3;
    c.session_flush = Duration::from_millis(100);
    let app = TestApp::spawn_config(c).await;
    let (mut first, _) = app.login("astravdi").await;
    let (mut second, _) = app.login("astravdi").await;
    let (mut third, _) = app.login("astravdi").await;
    // The first is used again: the second is now the least recently active.
    assert_eq!(first.rpc("pools", json!({})).await["name"], "response");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (mut fourth, _) = app.login("astravdi").await;
    assert_eq!(
        error_code(&second.rpc("pools", json!({})).await),
        401,
        "the least recently active session was revoked"
    );
    for c in [&mut first, &mut third, &mut fourth] {
        assert_eq!(c.rpc("pools", json!({})).await["name"], "response");
    }
    let counts = app.state.store.counts().await.unwrap();
    assert_eq!(
        (counts.sessions, counts.session_index),
        (3, 3),
        "the store holds the cap, sessions and index alike"
    );
}

/// Ended tasks go once `task_retention` has passed; the latest task of each (user, pool,
/// kind) stays, since the step rules read it.
pub async fn ended_tasks_are_deleted_after_the_retention_but_each_keys_latest_stays(state: &str) {
    let mut c = config(state);
    fast_sim(&mut c, CANCEL, OK);
    c.task_retention = Duration::from_millis(800);
    c.sweep_interval = Duration::from_millis(100);
    let app = TestApp::spawn_config(c).await;
    let (mut a, _) = app.login("astravdi").await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let id = a.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"]
            .clone();
        assert_eq!(a.follow(&id).await.0.last().unwrap(), "CANCELLED");
        ids.push(id);
    }
    assert_eq!(
        a.rpc("tasks", json!({})).await["args"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let store = app.state.store.clone();
    assert!(
        eventually(Duration::from_secs(5), || {
            let store = store.clone();
            async move { store.counts().await.unwrap().tasks == 1 }
        })
        .await,
        "the superseded task was deleted"
    );
    assert_eq!(
        error_code(&a.rpc("task", json!({"task_id": ids[0]})).await),
        404
    );
    let latest = a.rpc("task", json!({"task_id": ids[1]})).await;
    assert_eq!(
        latest["args"]["status"], "CANCELLED",
        "the latest stays: {latest}"
    );
    let listed = a.rpc("tasks", json!({})).await;
    assert_eq!(listed["args"].as_array().unwrap().len(), 1, "{listed}");
    // The rules still work on what is left.
    let next = a.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await;
    assert_eq!(next["args"]["task"]["status"], "PENDING", "{next}");
}

/// Lockout failure counters whose window has passed are deleted from the store.
pub async fn expired_failure_counters_are_swept(state: &str) {
    let mut c = config(state);
    c.lockout_window = Duration::from_millis(500);
    c.sweep_interval = Duration::from_millis(100);
    let app = TestApp::spawn_config(c).await;
    let mut a = app.connect().await;
    let wrong = a
        .rpc("auth", json!({"username": "astravdi", "password": "wrong"}))
        .await;
    assert_eq!(error_code(&wrong), 401);
    assert!(app.state.store.counts().await.unwrap().failure_counters > 0);
    let store = app.state.store.clone();
    assert!(
        eventually(Duration::from_secs(5), || {
            let store = store.clone();
            async move { store.counts().await.unwrap().failure_counters == 0 }
        })
        .await,
        "expired failure counters are gone from the store"
    );
}

/// A session deleted from the store without a word on the bus (as if the revocation's
/// message were lost in a reconnect) is refused within one `session_flush`.
pub async fn a_session_gone_from_the_store_is_refused_within_one_session_flush(state: &str) {
    let mut c = config(state);
    c.session_flush = Duration::from_millis(300);
    let app = TestApp::spawn_config(c).await;
    let (mut a, token) = app.login("astravdi").await;
    assert_eq!(a.rpc("pools", json!({})).await["name"], "response");
    let hash = poolgate::auth::tokens::hash_token(&token);
    app.state.store.session_delete(&hash).await.unwrap();
    let deleted = std::time::Instant::now();
    loop {
        let reply = a.rpc("pools", json!({})).await;
        if reply["name"] == "error" {
            assert_eq!(error_code(&reply), 401);
            break;
        }
        assert!(
            deleted.elapsed() < Duration::from_millis(300 + 500),
            "still accepted {:?} after the session was deleted",
            deleted.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `backend_suite! { name => state, [case, ...]; ... }` makes one test per case and backend;
/// memory is not durable, so the restart cases are not listed for it. Keep the Redis list in
/// tests/redis/main.rs in step with the sqlite one.
macro_rules! backend_suite {
    ($($backend:ident => $state:expr, [$($case:ident),* $(,)?];)*) => {$(
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(&$state.to_string()).await
                }
            )*
        }
    )*};
}

backend_suite! {
    memory => "memory", [
        concurrent_requests_create_one_task,
        a_static_inventory_never_gives_a_machine_twice,
        a_totp_code_is_refused_the_second_time,
        an_expired_assignment_is_released,
        a_users_sessions_are_capped_and_the_least_recently_active_is_revoked,
        ended_tasks_are_deleted_after_the_retention_but_each_keys_latest_stays,
        expired_failure_counters_are_swept,
        a_session_gone_from_the_store_is_refused_within_one_session_flush,
    ];
    sqlite => "sqlite:", [
        concurrent_requests_create_one_task,
        a_static_inventory_never_gives_a_machine_twice,
        a_totp_code_is_refused_the_second_time,
        an_expired_assignment_is_released,
        state_survives_a_restart,
        a_task_cut_off_by_a_stop_is_cancelled_and_restarts,
        orphaned_machines_are_released_at_start_up,
        a_users_sessions_are_capped_and_the_least_recently_active_is_revoked,
        ended_tasks_are_deleted_after_the_retention_but_each_keys_latest_stays,
        expired_failure_counters_are_swept,
        a_session_gone_from_the_store_is_refused_within_one_session_flush,
    ];
}
