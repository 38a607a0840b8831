//! One behaviour suite, run against every state backend (memory, sqlite, redis): the store's
//! contract method by method (the `Store` trait's docs: what each call returns, what is atomic,
//! what expires and when), and the rules that depend on the store's atomic operations and on
//! what survives a restart, through the running app. Memory and SQLite run them in the `api`
//! test target (tests/api/backends.rs); the Redis run lives in the `redis` test target
//! (tests/redis/main.rs), which says it was skipped, and counts the cases as ignored, when no
//! Redis can be had.
//!
//! (The whole API suite can also be run against one backend with
//! `POOLGATE_TEST_STATE=memory|sqlite:|redis://… cargo test`; `.ci/run` does so for redis.)

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use poolgate::Config;
use poolgate::domain::{Machine, Task, TaskKind, TaskStatus, TokenHash};
use poolgate::store::{
    self, Assignment, BusEvent, MfaRecord, SessionRecord, Store, StoreCounts, now_ms,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::helpers::*;
pub use crate::policies::*;
pub use crate::warm::*;
pub use crate::webauthn::*;

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
            let task = state
                .pools
                .request_machine(&user, LOCAL, pool)
                .await
                .unwrap();
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
    // A warning of the lease's end may come first (the lease is within warn_before of its
    // end from the start; the rounds' timing decides whether one sees it before it ends, and
    // following step 1 passes over it): it says why. The warnings' timing is tested with a
    // clock in tests/common/policies.rs.
    let event = loop {
        let frame = a.recv().await;
        if frame["name"] != "machine" {
            continue;
        }
        let args = frame["args"].clone();
        assert_eq!(args["reason"], "lease expired", "{args}");
        if args["status"] == "RELEASED" {
            break args;
        }
        assert_eq!(args["status"], "ENDING", "{args}");
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
    // Long enough that the counter outlives a loaded machine's slow password check.
    c.lockout_window = Duration::from_secs(3);
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
        eventually(Duration::from_secs(15), || {
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

// ---- The store's contract (the `Store` trait's docs), method by method, on each backend ----
//
// These talk to a fresh store directly, built by the backend's own constructor. Times are the
// stores' wall clock (`now_ms`): expiries are set in the past where they can be, and the few
// waits are a fraction of a second.

/// A fresh, empty store of the backend `state` names (as `store::open` opens it), and the sink
/// its bus delivers to.
struct Fresh {
    store: Arc<dyn Store>,
    bus: mpsc::UnboundedReceiver<BusEvent>,
    _dir: tempfile::TempDir,
}

async fn fresh(state: &str) -> Fresh {
    let (sink, bus) = mpsc::unbounded_channel();
    let dir = tempfile::tempdir().unwrap();
    // Opened as serving opens it: SQLite and Redis behind the read cache, so the contract is
    // checked on what the rules actually call.
    let prefix = format!("contract-{}", Uuid::new_v4().simple());
    let store = store::open(&state.parse().unwrap(), None, &prefix, dir.path(), sink)
        .await
        .unwrap();
    Fresh {
        store,
        bus,
        _dir: dir,
    }
}

/// A random token digest.
fn digest() -> TokenHash {
    let mut h = [0; 32];
    h[..16].copy_from_slice(Uuid::new_v4().as_bytes());
    h[16..].copy_from_slice(Uuid::new_v4().as_bytes());
    h
}

/// A session of `user` whose digest fits every backend (a cluster takes only digests in the
/// user's bucket: `Store::token_fits`).
fn session(user: Uuid, last_active_ms: u64) -> SessionRecord {
    let hash = loop {
        let hash = digest();
        if store::redis_store::in_users_bucket(user, &hash) {
            break hash;
        }
    };
    SessionRecord {
        hash,
        user_id: user,
        created_ms: last_active_ms,
        last_active_ms,
        peer: "192.0.2.7".into(),
    }
}

/// Long enough never to lapse during a case.
const LONG: Duration = Duration::from_secs(600);

/// Sleeps until `ms` (wall clock, as the stores count).
async fn sleep_until_ms(ms: u64) {
    let now = now_ms();
    if ms > now {
        tokio::time::sleep(Duration::from_millis(ms - now)).await;
    }
}

/// Runs `n` copies of `f` at once; returns how many got true.
async fn winners<F>(n: usize, f: impl Fn() -> F) -> usize
where
    F: std::future::Future<Output = bool> + Send + 'static,
{
    let handles: Vec<_> = (0..n).map(|_| tokio::spawn(f())).collect();
    let mut won = 0;
    for h in handles {
        won += usize::from(h.await.unwrap());
    }
    won
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// A cluster keeps a user's sessions in their user's slot, so it takes a session only under a
/// digest of that slot's bucket (the token store draws tokens until one fits); every other
/// backend takes any digest.
pub async fn a_session_is_stored_only_under_a_digest_its_store_takes(state: &str) {
    let f = fresh(state).await;
    let s = &f.store;
    let user = Uuid::new_v4();
    // 64 Ki digests: about 64 fit on a cluster; fewer than 20 or more than 140 would happen by
    // chance less than once in 10^10 runs (4 096 left none in about 2 % of runs).
    let digests: Vec<TokenHash> = (0..65_536).map(|_| digest()).collect();
    let fitting = digests.iter().filter(|h| s.token_fits(user, h)).count();
    if state.starts_with("redis-cluster") {
        assert!(
            (20..=140).contains(&fitting),
            "about 1 in 1 024 fits: {fitting}"
        );
        let misfit = digests.iter().find(|h| !s.token_fits(user, h)).unwrap();
        let mut rec = session(user, now_ms());
        rec.hash = *misfit;
        assert!(s.session_put(&rec, LONG, 5).await.is_err());
        assert_eq!(s.session_get(misfit).await.unwrap(), None);
    } else {
        assert_eq!(fitting, digests.len());
    }
    let rec = session(user, now_ms());
    assert!(s.token_fits(user, &rec.hash));
    assert_eq!(
        s.session_put(&rec, LONG, 5).await.unwrap(),
        Vec::<TokenHash>::new()
    );
    assert_eq!(s.session_get(&rec.hash).await.unwrap(), Some(rec));
}

pub async fn a_session_expires_ttl_after_its_last_activity_and_a_touch_moves_both(state: &str) {
    let f = fresh(state).await;
    let s = &f.store;
    let ttl = Duration::from_secs(3);
    let user = Uuid::new_v4();
    let now = now_ms();
    let expired = session(user, now - 4000);
    s.session_put(&expired, ttl, 10).await.unwrap();
    assert_eq!(s.session_get(&expired.hash).await.unwrap(), None);
    assert!(s.sessions_all().await.unwrap().is_empty());
    assert_eq!(
        s.session_touch(&[(expired.hash, now)], ttl).await.unwrap(),
        vec![expired.hash],
        "an expired session is reported gone"
    );
    assert_eq!(
        s.session_get(&expired.hash).await.unwrap(),
        None,
        "and not revived"
    );

    // Idle for 2 s of its 3: expires at now + 1 s unless touched.
    let live = session(user, now - 2000);
    s.session_put(&live, ttl, 10).await.unwrap();
    assert_eq!(s.session_get(&live.hash).await.unwrap(), Some(live.clone()));
    let back = s.session_touch(&[(live.hash, now - 2500)], ttl).await;
    assert!(back.unwrap().is_empty());
    assert_eq!(
        s.session_get(&live.hash)
            .await
            .unwrap()
            .unwrap()
            .last_active_ms,
        now - 2000,
        "activity never moves back"
    );
    let at = now_ms();
    assert!(
        s.session_touch(&[(live.hash, at)], ttl)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.session_get(&live.hash)
            .await
            .unwrap()
            .unwrap()
            .last_active_ms,
        at
    );
    sleep_until_ms(now + 1300).await;
    assert!(
        s.session_get(&live.hash).await.unwrap().is_some(),
        "the touch moved the expiry too"
    );
    assert_eq!(s.sessions_all().await.unwrap().len(), 1);
}

pub async fn a_new_session_trims_its_users_expired_and_least_recently_active_sessions(state: &str) {
    let f = fresh(state).await;
    let s = &f.store;
    let (user, other) = (Uuid::new_v4(), Uuid::new_v4());
    let now = now_ms();
    let expired = session(user, now - 100_000);
    s.session_put(&expired, Duration::from_secs(10), 10)
        .await
        .unwrap();
    let mut a = session(user, now - 3000);
    a.created_ms = now - 50_000;
    let b = session(user, now - 2000);
    let c = session(user, now - 1000);
    let theirs = session(other, now - 9000);
    for rec in [&a, &b, &c, &theirs] {
        assert!(s.session_put(rec, LONG, 10).await.unwrap().is_empty());
    }
    // A fourth live one past a cap of 3: the least recently active goes (not the oldest, and
    // the expired one neither counts nor is reported).
    let d = session(user, now);
    assert_eq!(s.session_put(&d, LONG, 3).await.unwrap(), vec![a.hash]);
    assert_eq!(s.session_get(&a.hash).await.unwrap(), None);
    for rec in [&b, &c, &d, &theirs] {
        assert!(s.session_get(&rec.hash).await.unwrap().is_some());
    }
    // Equally recent: the earlier created goes first.
    let mut e = session(user, now - 2000);
    e.created_ms = b.created_ms + 500;
    assert!(s.session_put(&e, LONG, 10).await.unwrap().is_empty());
    let g = session(user, now);
    assert_eq!(s.session_put(&g, LONG, 4).await.unwrap(), vec![b.hash]);
    let counts = s.counts().await.unwrap();
    assert_eq!(
        (counts.sessions, counts.session_index),
        (5, 5),
        "c, d, e, g and the other user's"
    );
}

pub async fn deleting_a_users_sessions_returns_the_live_ones_and_spares_other_users(state: &str) {
    let f = fresh(state).await;
    let s = &f.store;
    let (user, other) = (Uuid::new_v4(), Uuid::new_v4());
    let now = now_ms();
    let (one, two, theirs) = (session(user, now), session(user, now), session(other, now));
    for rec in [&one, &two, &theirs] {
        s.session_put(rec, LONG, 10).await.unwrap();
    }
    let expired = session(user, now - 5000);
    s.session_put(&expired, Duration::from_secs(1), 10)
        .await
        .unwrap();
    assert_eq!(
        sorted(s.session_delete_user(user).await.unwrap()),
        sorted(vec![one.hash, two.hash])
    );
    assert_eq!(s.session_get(&one.hash).await.unwrap(), None);
    assert!(s.session_delete_user(user).await.unwrap().is_empty());
    assert_eq!(s.sessions_all().await.unwrap(), vec![theirs.clone()]);
    s.session_delete(&theirs.hash).await.unwrap();
    s.session_delete(&theirs.hash).await.unwrap();
    assert_eq!(s.session_get(&theirs.hash).await.unwrap(), None);
    let counts = s.counts().await.unwrap();
    assert_eq!(
        (counts.sessions, counts.session_index),
        (0, 0),
        "nothing held, index included"
    );
}

pub async fn sweeping_deletes_every_expired_record_and_nothing_live(state: &str) {
    let f = fresh(state).await;
    let s = &f.store;
    let now = now_ms();
    let now_s = (now / 1000) as i64;
    let short = Duration::from_millis(50);
    // Expired, or about to be: a session, a user's only session, an MFA challenge, a JWT
    // revocation, a failure counter and a back-off slot.
    let (user, lonely) = (Uuid::new_v4(), Uuid::new_v4());
    let gone = session(user, now - 5000);
    s.session_put(&gone, Duration::from_secs(1), 10)
        .await
        .unwrap();
    let lonely_session = session(lonely, now - 1000);
    s.session_put(&lonely_session, Duration::from_millis(1200), 10)
        .await
        .unwrap();
    let challenge = |expires_ms| MfaRecord {
        user_id: user,
        password_ok: true,
        expires_ms,
        attempts: 0,
    };
    let (spent, pending) = (digest(), digest());
    s.mfa_put(&spent, &challenge(now - 1)).await.unwrap();
    s.jwt_revoke("lapsed", now_s - store::JWT_REVOCATION_MARGIN_S - 1)
        .await
        .unwrap();
    s.failures_add("short", short).await.unwrap();
    let slot = s.backoff_slot("short", now, short, short, short).await;
    assert_eq!(slot.unwrap(), Ok(now));
    // And one of each that lives on.
    let kept = session(Uuid::new_v4(), now);
    s.session_put(&kept, LONG, 10).await.unwrap();
    // Another user's (a user's new challenge takes the place of their last one).
    let pending_challenge = MfaRecord {
        user_id: Uuid::new_v4(),
        ..challenge(now + 600_000)
    };
    s.mfa_put(&pending, &pending_challenge).await.unwrap();
    s.jwt_revoke("current", now_s + 600).await.unwrap();
    s.failures_add("long", LONG).await.unwrap();
    let slot = s.backoff_slot("long", now, short, short, LONG).await;
    assert_eq!(slot.unwrap(), Ok(now));

    sleep_until_ms(now + 300).await;
    // Reads treat them as gone before any sweep.
    assert_eq!(s.session_get(&lonely_session.hash).await.unwrap(), None);
    assert_eq!(s.mfa_get(&spent).await.unwrap(), None);
    assert_eq!(s.failures_get("short").await.unwrap(), 0);
    assert_eq!(
        s.jwt_revocations().await.unwrap(),
        vec![("current".to_owned(), now_s + 600)]
    );

    let swept = s.sweep_expired().await.unwrap();
    if s.is_shared() {
        assert_eq!(swept, 0, "Redis keys expire by themselves");
    } else {
        assert_eq!(
            swept, 6,
            "two sessions, a challenge, a revocation, a counter, a slot"
        );
    }
    assert_eq!(
        s.counts().await.unwrap(),
        StoreCounts {
            sessions: 1,
            session_index: 1,
            tasks: 0,
            failure_counters: 2,
        },
        "only what lives is held (the lonely user's index went with its session)"
    );
    assert_eq!(s.session_get(&kept.hash).await.unwrap(), Some(kept));
    assert!(s.mfa_get(&pending).await.unwrap().is_some());
    assert_eq!(s.failures_get("long").await.unwrap(), 1);
    assert_eq!(s.jwt_revocations().await.unwrap().len(), 1);
    assert_eq!(s.sweep_expired().await.unwrap(), 0, "nothing left to sweep");
}

pub async fn an_mfa_challenge_counts_wrong_codes_is_taken_once_and_expires(state: &str) {
    let f = fresh(state).await;
    let s = &f.store;
    let now = now_ms();
    let rec = MfaRecord {
        user_id: Uuid::new_v4(),
        password_ok: true,
        expires_ms: now + 600_000,
        attempts: 0,
    };
    let hash = digest();
    s.mfa_put(&hash, &rec).await.unwrap();
    assert_eq!(s.mfa_get(&hash).await.unwrap(), Some(rec.clone()));
    assert_eq!(s.mfa_fail(&hash).await.unwrap(), 1);
    assert_eq!(s.mfa_fail(&hash).await.unwrap(), 2);
    assert_eq!(
        s.mfa_get(&hash).await.unwrap().unwrap().attempts,
        2,
        "the record says how many wrong codes it has had"
    );
    s.mfa_put(&hash, &rec).await.unwrap();
    assert_eq!(
        s.mfa_get(&hash).await.unwrap().unwrap().attempts,
        0,
        "a new challenge counts afresh"
    );
    let store = f.store.clone();
    let taken = winners(8, || {
        let store = store.clone();
        async move { store.mfa_take(&hash).await.unwrap() }
    })
    .await;
    assert_eq!(taken, 1, "one use");
    assert_eq!(s.mfa_get(&hash).await.unwrap(), None);
    assert_eq!(s.mfa_fail(&hash).await.unwrap(), u32::MAX);
    assert!(!s.mfa_take(&hash).await.unwrap());

    let expired = digest();
    let old = MfaRecord {
        expires_ms: now - 1,
        ..rec.clone()
    };
    s.mfa_put(&expired, &old).await.unwrap();
    assert_eq!(s.mfa_get(&expired).await.unwrap(), None);
    assert_eq!(s.mfa_fail(&expired).await.unwrap(), u32::MAX);
    assert!(!s.mfa_take(&expired).await.unwrap());

    let brief = digest();
    let soon = MfaRecord {
        expires_ms: now_ms() + 500,
        ..rec
    };
    s.mfa_put(&brief, &soon).await.unwrap();
    assert!(s.mfa_get(&brief).await.unwrap().is_some());
    sleep_until_ms(soon.expires_ms + 50).await;
    assert_eq!(s.mfa_get(&brief).await.unwrap(), None, "gone at expires_ms");
    assert!(!s.mfa_take(&brief).await.unwrap());
}

/// A user has at most one pending challenge of each kind (right password, or not): a new one
/// takes the place of the one before, so a flood of first steps holds one record, and a
/// stranger's wrong password never displaces the challenge of the user's right one.
pub async fn a_users_new_challenge_replaces_its_earlier_one_of_the_same_kind(state: &str) {
    let f = fresh(state).await;
    let s = &f.store;
    let user = Uuid::new_v4();
    let challenge = |password_ok| MfaRecord {
        user_id: user,
        password_ok,
        expires_ms: now_ms() + 600_000,
        attempts: 0,
    };
    let right = digest();
    s.mfa_put(&right, &challenge(true)).await.unwrap();
    let guesses: Vec<TokenHash> = (0..20).map(|_| digest()).collect();
    for g in &guesses {
        s.mfa_put(g, &challenge(false)).await.unwrap();
    }
    assert!(
        s.mfa_get(&right).await.unwrap().is_some(),
        "the right password's challenge stays"
    );
    let live = futures_util::future::join_all(guesses.iter().map(|g| s.mfa_get(g))).await;
    let live: Vec<bool> = live.into_iter().map(|r| r.unwrap().is_some()).collect();
    assert_eq!(live.iter().filter(|&&l| l).count(), 1, "{live:?}");
    assert!(live[19], "the newest stays");
    let again = digest();
    s.mfa_put(&again, &challenge(true)).await.unwrap();
    assert_eq!(s.mfa_get(&right).await.unwrap(), None, "replaced");
    assert!(s.mfa_get(&again).await.unwrap().is_some());
    // Another user's challenges are their own.
    let other = digest();
    s.mfa_put(
        &other,
        &MfaRecord {
            user_id: Uuid::new_v4(),
            ..challenge(true)
        },
    )
    .await
    .unwrap();
    assert!(s.mfa_get(&again).await.unwrap().is_some());
    assert!(s.mfa_get(&other).await.unwrap().is_some());
}

pub async fn a_directory_users_record_is_kept_replaced_whole_and_listed(state: &str) {
    let f = fresh(state).await;
    let s = &f.store;
    let mut record = poolgate::store::DirectoryUser {
        id: Uuid::new_v4(),
        dn: "uid=alice,ou=people,dc=example,dc=org".into(),
        username: "alice".into(),
        full_name: "Alice".into(),
        email: "alice@example.org".into(),
        groups: vec![
            "cn=a,dc=example,dc=org".into(),
            "cn=b,dc=example,dc=org".into(),
        ],
        admin: false,
        updated_ms: 1,
    };
    assert_eq!(s.directory_user_get(record.id).await.unwrap(), None);
    s.directory_user_put(&record).await.unwrap();
    assert_eq!(
        s.directory_user_get(record.id).await.unwrap().as_ref(),
        Some(&record)
    );
    // A later sign-in replaces the whole record (a group left, admin granted).
    record.groups.pop();
    record.admin = true;
    record.updated_ms = 2;
    s.directory_user_put(&record).await.unwrap();
    assert_eq!(
        s.directory_user_get(record.id).await.unwrap().as_ref(),
        Some(&record)
    );
    assert_eq!(s.directory_user_get(Uuid::new_v4()).await.unwrap(), None);
    assert_eq!(s.directory_users().await.unwrap(), vec![record.clone()]);

    // Every record is listed, past the Redis backend's page of 500.
    let mut all = vec![record.clone()];
    for i in 0..510 {
        let other = poolgate::store::DirectoryUser {
            id: Uuid::new_v4(),
            username: format!("user{i}"),
            ..record.clone()
        };
        s.directory_user_put(&other).await.unwrap();
        all.push(other);
    }
    let mut listed = s.directory_users().await.unwrap();
    listed.sort_by_key(|u| u.id);
    all.sort_by_key(|u| u.id);
    assert_eq!(listed, all);
}

pub async fn a_directory_users_totp_enrolment_is_kept_replaced_and_ended(state: &str) {
    let f = fresh(state).await;
    let s = &f.store;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    assert_eq!(s.directory_totp_get(alice).await.unwrap(), None);
    s.directory_totp_put(alice, Some("JBSWY3DPEHPK3PXP"))
        .await
        .unwrap();
    s.directory_totp_put(bob, Some("GEZDGNBVGY3TQOJQ"))
        .await
        .unwrap();
    assert_eq!(
        s.directory_totp_get(alice).await.unwrap().as_deref(),
        Some("JBSWY3DPEHPK3PXP")
    );
    // A new enrolment replaces the secret; ending one leaves the other user's alone.
    s.directory_totp_put(alice, Some("MFRGGZDFMZTWQ2LK"))
        .await
        .unwrap();
    assert_eq!(
        s.directory_totp_get(alice).await.unwrap().as_deref(),
        Some("MFRGGZDFMZTWQ2LK")
    );
    s.directory_totp_put(alice, None).await.unwrap();
    assert_eq!(s.directory_totp_get(alice).await.unwrap(), None);
    s.directory_totp_put(alice, None).await.unwrap();
    assert_eq!(
        s.directory_totp_get(bob).await.unwrap().as_deref(),
        Some("GEZDGNBVGY3TQOJQ")
    );
    // The sign-in's record and the enrolment are apart: replacing one keeps the other.
    let record = poolgate::store::DirectoryUser {
        id: bob,
        dn: "uid=bob,ou=people,dc=example,dc=org".into(),
        username: "bob".into(),
        full_name: String::new(),
        email: String::new(),
        groups: vec![],
        admin: false,
        updated_ms: 1,
    };
    s.directory_user_put(&record).await.unwrap();
    assert!(s.directory_totp_get(bob).await.unwrap().is_some());
}

pub async fn a_directory_name_points_at_the_user_it_last_signed_in_as(state: &str) {
    let f = fresh(state).await;
    let s = &f.store;
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    assert_eq!(s.directory_name_get("alice").await.unwrap(), None);
    s.directory_name_put("alice", first).await.unwrap();
    s.directory_name_put("al:ice ☃", second).await.unwrap();
    assert_eq!(s.directory_name_get("alice").await.unwrap(), Some(first));
    assert_eq!(
        s.directory_name_get("al:ice ☃").await.unwrap(),
        Some(second)
    );
    // A name taken by another entry later points at it.
    s.directory_name_put("alice", second).await.unwrap();
    assert_eq!(s.directory_name_get("alice").await.unwrap(), Some(second));
    assert_eq!(
        s.directory_name_get("ALICE").await.unwrap(),
        None,
        "folded by the caller"
    );
}

pub async fn a_totp_step_is_accepted_once_and_only_forward(state: &str) {
    let f = fresh(state).await;
    let s = &f.store;
    let (user, other) = (Uuid::new_v4(), Uuid::new_v4());
    assert!(
        s.totp_advance(user, 0).await.unwrap(),
        "any first step is accepted"
    );
    assert!(!s.totp_advance(user, 0).await.unwrap());
    assert!(s.totp_advance(user, 100).await.unwrap());
    assert!(!s.totp_advance(user, 100).await.unwrap(), "a replay");
    assert!(!s.totp_advance(user, 99).await.unwrap(), "an earlier step");
    assert!(s.totp_advance(user, 101).await.unwrap());
    assert!(s.totp_advance(other, 50).await.unwrap(), "per user");
    let store = f.store.clone();
    let won = winners(8, || {
        let store = store.clone();
        async move { store.totp_advance(user, 200).await.unwrap() }
    })
    .await;
    assert_eq!(won, 1, "of concurrent uses of one code, one wins");
}

pub async fn jwt_revocations_last_until_the_token_expires_and_a_users_only_move_forward(
    state: &str,
) {
    let f = fresh(state).await;
    let s = &f.store;
    let now_s = (now_ms() / 1000) as i64;
    s.jwt_revoke("live", now_s + 600).await.unwrap();
    s.jwt_revoke("lapsed", now_s - store::JWT_REVOCATION_MARGIN_S - 1)
        .await
        .unwrap();
    s.jwt_revoke("recent", now_s - 1).await.unwrap();
    assert_eq!(
        sorted(s.jwt_revocations().await.unwrap()),
        vec![
            ("live".to_owned(), now_s + 600),
            ("recent".to_owned(), now_s - 1)
        ],
        "kept until exp + the margin"
    );
    let (user, other) = (Uuid::new_v4(), Uuid::new_v4());
    s.jwt_revoke_user(user, 1_000).await.unwrap();
    s.jwt_revoke_user(user, 500).await.unwrap();
    s.jwt_revoke_user(other, 10).await.unwrap();
    assert_eq!(
        sorted(s.jwt_user_revocations().await.unwrap()),
        sorted(vec![(user, 1_000), (other, 10)]),
        "an earlier cut-off never un-revokes"
    );
    s.jwt_revoke_user(user, 2_000).await.unwrap();
    assert!(
        s.jwt_user_revocations()
            .await
            .unwrap()
            .contains(&(user, 2_000))
    );
}

pub async fn a_keys_latest_task_moves_only_by_compare_and_set(state: &str) {
    let f = fresh(state).await;
    let s = &f.store;
    let (user, pool) = (Uuid::new_v4(), Uuid::new_v4());
    let key = (user, pool, TaskKind::PoolExpand);
    let first = Task::new(TaskKind::PoolExpand, user, pool);
    let second = Task::new(TaskKind::PoolExpand, user, pool);
    assert_eq!(s.task_latest(key).await.unwrap(), None);
    assert!(s.task_create(None, &first).await.unwrap());
    assert!(
        !s.task_create(None, &second).await.unwrap(),
        "the key has a latest"
    );
    assert!(!s.task_create(Some(Uuid::new_v4()), &second).await.unwrap());
    assert_eq!(
        s.task_get(user, second.id).await.unwrap(),
        None,
        "a refused create stores nothing"
    );
    assert_eq!(s.task_latest(key).await.unwrap().unwrap().id, first.id);
    assert!(s.task_create(Some(first.id), &second).await.unwrap());
    assert_eq!(s.task_latest(key).await.unwrap().unwrap().id, second.id);
    let glint = Task::new(TaskKind::GlintStart, user, pool);
    assert!(
        s.task_create(None, &glint).await.unwrap(),
        "another kind is another key"
    );

    let store = f.store.clone();
    let won = winners(8, || {
        let store = store.clone();
        async move {
            let task = Task::new(TaskKind::PoolExpand, user, pool);
            store.task_create(Some(second.id), &task).await.unwrap()
        }
    })
    .await;
    assert_eq!(won, 1, "of concurrent creators, one wins");
    let latest = s.task_latest(key).await.unwrap().unwrap();
    assert!(latest.id != second.id);
    assert_eq!(s.tasks_of_user(user, 100).await.unwrap().len(), 4);
    assert!(s.task_get(user, first.id).await.unwrap().is_some());
    assert_eq!(
        s.task_get(Uuid::new_v4(), first.id).await.unwrap(),
        None,
        "someone else's task is not found"
    );
}

pub async fn a_task_update_overwrites_a_stored_task_and_the_lists_follow_it(state: &str) {
    let f = fresh(state).await;
    let s = &f.store;
    let user = Uuid::new_v4();
    let base = chrono::Utc::now() - chrono::Duration::hours(1);
    let mut tasks = Vec::new();
    for i in 0..3 {
        let mut t = Task::new(TaskKind::PoolExpand, user, Uuid::new_v4());
        t.created = base + chrono::Duration::seconds(i);
        assert!(s.task_create(None, &t).await.unwrap());
        tasks.push(t);
    }
    let ids = |v: Vec<Task>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.tasks_of_user(user, 2).await.unwrap()),
        vec![tasks[2].id, tasks[1].id],
        "newest first, at most the limit"
    );
    assert_eq!(s.tasks_active().await.unwrap().len(), 3);

    let mut t = tasks[0].clone();
    t.start();
    t.progress = Some(40);
    s.task_update(&t).await.unwrap();
    let stored = s.task_get(user, t.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.progress),
        (TaskStatus::Running, Some(40))
    );
    t.finish(TaskStatus::Completed, None);
    s.task_update(&t).await.unwrap();
    assert_eq!(
        s.task_get(user, t.id).await.unwrap().unwrap().status,
        TaskStatus::Completed
    );
    assert_eq!(
        s.task_latest((user, t.pool_id, t.kind))
            .await
            .unwrap()
            .unwrap()
            .status,
        TaskStatus::Completed
    );
    assert_eq!(
        sorted(ids(s.tasks_active().await.unwrap())),
        sorted(vec![tasks[1].id, tasks[2].id]),
        "an ended task is no longer active"
    );

    let ghost = Task::new(TaskKind::PoolExpand, user, Uuid::new_v4());
    s.task_update(&ghost).await.unwrap();
    assert_eq!(
        s.task_get(user, ghost.id).await.unwrap(),
        None,
        "an update does not create"
    );
    assert_eq!(s.tasks_active().await.unwrap().len(), 2);
    assert_eq!(s.tasks_of_user(user, 100).await.unwrap().len(), 3);
}

/// A task's end is final: once stored ended, an update with another status (a runner cut off
/// from its lease writing RUNNING or COMPLETED over an orphan sweep's CANCELLED, or the
/// reverse) is refused and changes nothing; one with the same status (an operator clearing a
/// failure) is written. An update of a task that is not stored is not a refusal.
pub async fn an_ended_tasks_status_is_final(state: &str) {
    let f = fresh(state).await;
    let s = &f.store;
    let user = Uuid::new_v4();
    let mut t = Task::new(TaskKind::PoolExpand, user, Uuid::new_v4());
    assert!(s.task_create(None, &t).await.unwrap());
    t.start();
    assert!(s.task_update(&t).await.unwrap());
    let mut cancelled = t.clone();
    cancelled.finish(
        TaskStatus::Cancelled,
        Some(poolgate::domain::TaskError::instance_gone()),
    );
    assert!(s.task_update(&cancelled).await.unwrap());

    let mut running = t.clone();
    running.progress = Some(50);
    let mut completed = t.clone();
    completed.finish(TaskStatus::Completed, None);
    for late in [&running, &completed] {
        assert!(
            !s.task_update(late).await.unwrap(),
            "{:?} over CANCELLED is refused",
            late.status
        );
        let stored = s.task_get(user, t.id).await.unwrap().unwrap();
        assert_eq!(stored.status, TaskStatus::Cancelled);
        assert!(
            s.tasks_active().await.unwrap().is_empty(),
            "nothing made it active again"
        );
    }
    let mut cleared = cancelled.clone();
    cleared.cleared = true;
    assert!(
        s.task_update(&cleared).await.unwrap(),
        "same status: written"
    );
    assert!(s.task_get(user, t.id).await.unwrap().unwrap().cleared);

    let ghost = Task::new(TaskKind::PoolExpand, user, Uuid::new_v4());
    assert!(s.task_update(&ghost).await.unwrap());
    assert_eq!(s.task_get(user, ghost.id).await.unwrap(), None);
}

pub async fn ended_tasks_created_before_the_cutoff_go_except_each_keys_latest(state: &str) {
    let f = fresh(state).await;
    let s = &f.store;
    let cutoff = now_ms() - 60_000;
    let at = |offset_ms: i64| {
        chrono::DateTime::from_timestamp_millis(cutoff as i64 + offset_ms).unwrap()
    };
    let user = Uuid::new_v4();
    // Creates a task of a (pool, kind) key created at `offset_ms` from the cutoff.
    let create = |pool: Uuid, offset_ms: i64, done: bool| {
        let store = f.store.clone();
        async move {
            let mut t = Task::new(TaskKind::PoolExpand, user, pool);
            t.created = at(offset_ms);
            if done {
                t.finish(TaskStatus::Failed, None);
            }
            let latest = store
                .task_latest((user, pool, TaskKind::PoolExpand))
                .await
                .unwrap();
            assert!(store.task_create(latest.map(|l| l.id), &t).await.unwrap());
            t.id
        }
    };
    let (p1, p2, p3) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let superseded = create(p1, -10_000, true).await;
    let latest = create(p1, -5_000, true).await;
    let active = create(p2, -10_000, false).await;
    let at_cutoff = create(p3, 0, true).await;
    let newer = create(p3, 1_000, true).await;
    assert_eq!(s.tasks_sweep(cutoff).await.unwrap(), 1);
    assert_eq!(s.task_get(user, superseded).await.unwrap(), None);
    for (id, why) in [
        (latest, "a key's latest stays"),
        (active, "an active task stays"),
        (at_cutoff, "one created at the cutoff stays"),
        (newer, "a newer one stays"),
    ] {
        assert!(s.task_get(user, id).await.unwrap().is_some(), "{why}");
    }
    assert_eq!(s.tasks_of_user(user, 100).await.unwrap().len(), 4);
    assert_eq!(s.tasks_sweep(cutoff).await.unwrap(), 0);
    assert_eq!(s.tasks_sweep(cutoff + 1).await.unwrap(), 1);
    assert_eq!(s.task_get(user, at_cutoff).await.unwrap(), None);
    assert_eq!(s.counts().await.unwrap().tasks, 3);
}

/// A test assignment of `user` in `pool`.
fn held(user: Uuid, pool: Uuid) -> Assignment {
    Assignment {
        user_id: user,
        pool_id: pool,
        machine: std::sync::Arc::new(Machine {
            id: Uuid::new_v4(),
            verbose_name: "vm".into(),
            host: "10.0.0.1".into(),
            port: 3389,
            protocol_id: 1,
            permissions: vec![],
        }),
        lease_until_ms: now_ms() + 60_000,
        since_ms: now_ms(),
    }
}

/// The reads the read cache serves (a task by id, a key's latest, the user's recent tasks,
/// an assignment): each one, read before a write that changes it, answers the write right
/// after it — on the cached backends this is the cache's invalidation, on memory the map.
pub async fn every_read_follows_the_writes_that_change_it(state: &str) {
    let f = fresh(state).await;
    let s = &f.store;
    let (user, pool) = (Uuid::new_v4(), Uuid::new_v4());
    let key = (user, pool, TaskKind::PoolExpand);
    let reads = || async {
        let latest = s.task_latest(key).await.unwrap();
        let by_id = match &latest {
            Some(t) => s.task_get(user, t.id).await.unwrap(),
            None => None,
        };
        let recent = s.tasks_of_user(user, 50).await.unwrap();
        let held = s.assignment_get(user, pool).await.unwrap();
        (latest, by_id, recent, held)
    };
    // Twice each, so the second is a cache hit where there is a cache.
    let (latest, _, recent, held_before) = reads().await;
    assert_eq!((latest, recent.len(), held_before), (None, 0, None));
    reads().await;

    let mut task = Task::new(TaskKind::PoolExpand, user, pool);
    assert!(s.task_create(None, &task).await.unwrap());
    for _ in 0..2 {
        let (latest, by_id, recent, _) = reads().await;
        assert_eq!(
            latest.as_ref(),
            Some(&task),
            "the key's latest is the new task"
        );
        assert_eq!(by_id.as_ref(), Some(&task));
        assert_eq!(recent, vec![task.clone()]);
    }

    task.start();
    task.progress = Some(70);
    s.task_update(&task).await.unwrap();
    for _ in 0..2 {
        let (latest, by_id, recent, _) = reads().await;
        assert_eq!(
            latest.as_ref(),
            Some(&task),
            "the update, not the task as created"
        );
        assert_eq!(by_id.as_ref(), Some(&task));
        assert_eq!(recent, vec![task.clone()]);
    }

    let a = held(user, pool);
    assert!(s.assignment_create(&a).await.unwrap());
    assert_eq!(reads().await.3, Some(a.clone()));
    assert_eq!(reads().await.3, Some(a.clone()));
    assert_eq!(s.assignment_remove(user, pool).await.unwrap(), Some(a));
    assert_eq!(reads().await.3, None, "gone once removed");

    // A lost compare-and-set leaves the latest as it was, and a new one replaces it.
    let loser = Task::new(TaskKind::PoolExpand, user, pool);
    assert!(!s.task_create(None, &loser).await.unwrap());
    assert_eq!(reads().await.0, Some(task.clone()));
    task.finish(TaskStatus::Completed, None);
    s.task_update(&task).await.unwrap();
    let next = Task::new(TaskKind::PoolExpand, user, pool);
    assert!(s.task_create(Some(task.id), &next).await.unwrap());
    let (latest, by_id, recent, _) = reads().await;
    assert_eq!(latest.as_ref(), Some(&next));
    assert_eq!(by_id.as_ref(), Some(&next));
    assert_eq!(recent.len(), 2);
    assert_eq!(s.task_get(user, task.id).await.unwrap(), Some(task));
}

/// Two instances on one Redis, each behind its read cache: once the announcement of a write on
/// one has reached the other (a marker published after the write, on the same bus, has
/// arrived), the other never answers what the write replaced — also while readers on it race
/// the writes. Prints the delay from the write's return to the marker's arrival.
/// Run by tests/redis, which needs a Redis.
pub async fn a_write_on_one_instance_is_never_read_stale_on_another_once_announced(url: &str) {
    let prefix = format!("two-{}", Uuid::new_v4().simple());
    let dir = tempfile::tempdir().unwrap();
    let open = |sink| {
        let (url, prefix, dir) = (url.to_owned(), prefix.clone(), dir.path().to_owned());
        async move {
            store::open(&url.parse().unwrap(), None, &prefix, &dir, sink)
                .await
                .unwrap()
        }
    };
    let (sink_a, _bus_a) = mpsc::unbounded_channel();
    let (sink_b, mut bus_b) = mpsc::unbounded_channel();
    let (a, b) = (open(sink_a).await, open(sink_b).await);
    let (user, pool) = (Uuid::new_v4(), Uuid::new_v4());
    let key = (user, pool, TaskKind::PoolExpand);
    let mut task = Task::new(TaskKind::PoolExpand, user, pool);
    assert!(a.task_create(None, &task).await.unwrap());
    // B hears the user (as while they have a socket there): its cache keeps their records.
    let _watch = b.router().expect("Redis routes by user").watch(user).await;

    // Readers on B, racing every write, filling its cache all the time.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (b, stop) = (b.clone(), stop.clone());
        let id = task.id;
        readers.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                b.task_get(user, id).await.unwrap();
                b.task_latest(key).await.unwrap();
                b.tasks_of_user(user, 50).await.unwrap();
                b.assignment_get(user, pool).await.unwrap();
                // Cache hits never wait: let the rest of the runtime run.
                tokio::task::yield_now().await;
            }
        }));
    }

    let mut delays = Vec::new();
    task.start();
    for i in 0..100u8 {
        task.progress = Some(i);
        a.task_update(&task).await.unwrap();
        let holds = i % 2 == 0;
        if holds {
            assert!(a.assignment_create(&held(user, pool)).await.unwrap());
        } else {
            a.assignment_remove(user, pool).await.unwrap();
        }
        let written = std::time::Instant::now();
        let marker = format!("marker-{i}");
        a.publish(BusEvent::JwtRevoked {
            jti: marker.clone(),
            exp: 0,
        });
        loop {
            let event = tokio::time::timeout(Duration::from_secs(5), bus_b.recv())
                .await
                .expect("the marker arrives on the other instance")
                .unwrap();
            if matches!(&event, BusEvent::JwtRevoked { jti, .. } if *jti == marker) {
                break;
            }
        }
        delays.push(written.elapsed());
        // Twice: the second read is served by B's cache when the first filled it.
        for _ in 0..2 {
            let by_id = b.task_get(user, task.id).await.unwrap().unwrap();
            assert_eq!(by_id.progress, Some(i), "task by id, write {i}");
            let latest = b.task_latest(key).await.unwrap().unwrap();
            assert_eq!(latest.progress, Some(i), "the key's latest, write {i}");
            let recent = b.tasks_of_user(user, 50).await.unwrap();
            assert_eq!(recent[0].progress, Some(i), "recent tasks, write {i}");
            let assignment = b.assignment_get(user, pool).await.unwrap();
            assert_eq!(assignment.is_some(), holds, "the assignment, write {i}");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    delays.sort();
    println!(
        "announcement delay (write returned on A -> next bus message on B): p50 {:?}, p99 {:?}, max {:?}",
        delays[delays.len() / 2],
        delays[delays.len() * 99 / 100],
        delays[delays.len() - 1]
    );
}

pub async fn a_user_holds_at_most_one_assignment_per_pool(state: &str) {
    let f = fresh(state).await;
    let s = &f.store;
    let (user, pool) = (Uuid::new_v4(), Uuid::new_v4());
    let assignment = |pool_id, lease_until_ms| Assignment {
        lease_until_ms,
        ..held(user, pool_id)
    };
    let first = assignment(pool, now_ms() + 60_000);
    assert!(s.assignment_create(&first).await.unwrap());
    assert!(!s.assignment_create(&assignment(pool, 0)).await.unwrap());
    assert_eq!(
        s.assignment_get(user, pool).await.unwrap(),
        Some(first.clone()),
        "the first one is kept"
    );
    let lapsed = assignment(Uuid::new_v4(), now_ms() - 1);
    assert!(s.assignment_create(&lapsed).await.unwrap());
    assert_eq!(
        s.assignment_get(user, lapsed.pool_id).await.unwrap(),
        Some(lapsed),
        "a lapsed lease is the lease sweep's to end, not the store's"
    );
    let contested = Uuid::new_v4();
    let store = f.store.clone();
    let won = winners(8, || {
        let (store, a) = (store.clone(), assignment(contested, 0));
        async move { store.assignment_create(&a).await.unwrap() }
    })
    .await;
    assert_eq!(won, 1, "of concurrent creators, one wins");
    assert_eq!(s.assignments().await.unwrap().len(), 3);
    assert_eq!(s.assignment_remove(user, pool).await.unwrap(), Some(first));
    assert_eq!(s.assignment_remove(user, pool).await.unwrap(), None);
    assert_eq!(s.assignment_get(user, pool).await.unwrap(), None);
    assert_eq!(s.assignments().await.unwrap().len(), 2);
}

pub async fn a_machine_is_claimed_once_per_inventory(state: &str) {
    let f = fresh(state).await;
    let s = &f.store;
    let (m1, m2) = (Uuid::new_v4(), Uuid::new_v4());
    assert!(s.machine_claim("inv", m1).await.unwrap());
    assert!(!s.machine_claim("inv", m1).await.unwrap());
    assert!(
        s.machine_claim("other", m1).await.unwrap(),
        "claims are per inventory"
    );
    let store = f.store.clone();
    let won = winners(8, || {
        let store = store.clone();
        async move { store.machine_claim("inv", m2).await.unwrap() }
    })
    .await;
    assert_eq!(won, 1);
    assert_eq!(
        sorted(s.machines_claimed("inv").await.unwrap()),
        sorted(vec![m1, m2])
    );
    s.machine_release("inv", m1).await.unwrap();
    s.machine_release("inv", m1).await.unwrap();
    assert_eq!(s.machines_claimed("inv").await.unwrap(), vec![m2]);
    assert!(s.machine_claim("inv", m1).await.unwrap());
    assert!(s.machines_claimed("none").await.unwrap().is_empty());
}

/// A warm set keeps its machines once each, in the order added; a take gives the oldest, and
/// of concurrent takers and removers each machine goes to exactly one.
pub async fn a_warm_machine_is_taken_once_oldest_first(state: &str) {
    let f = fresh(state).await;
    let s = &f.store;
    let machine = |n: usize| Machine {
        id: Uuid::new_v4(),
        verbose_name: format!("warm-{n}"),
        host: format!("10.0.1.{n}"),
        port: 3389,
        protocol_id: 1,
        permissions: vec!["USB_REDIR".into()],
    };
    let (pool, other) = (Uuid::new_v4(), Uuid::new_v4());
    assert_eq!(s.warm_take(pool).await.unwrap(), None);
    assert!(s.warm_list(pool).await.unwrap().is_empty());
    assert!(!s.warm_remove(pool, Uuid::new_v4()).await.unwrap());
    let three: Vec<Machine> = (0..3).map(machine).collect();
    for m in &three {
        assert!(s.warm_add(pool, m).await.unwrap());
    }
    assert!(!s.warm_add(pool, &three[1]).await.unwrap(), "once per set");
    assert!(
        s.warm_add(other, &three[1]).await.unwrap(),
        "sets are per pool"
    );
    assert_eq!(
        s.warm_list(pool).await.unwrap(),
        three,
        "in the order added"
    );
    assert_eq!(
        s.warm_take(pool).await.unwrap(),
        Some(three[0].clone()),
        "the oldest first, whole"
    );
    assert!(s.warm_remove(pool, three[2].id).await.unwrap());
    assert!(
        !s.warm_remove(pool, three[2].id).await.unwrap(),
        "removed once"
    );
    assert!(
        !s.warm_remove(pool, three[0].id).await.unwrap(),
        "a taken machine is gone"
    );
    assert_eq!(s.warm_list(pool).await.unwrap(), vec![three[1].clone()]);
    assert_eq!(s.warm_list(other).await.unwrap(), vec![three[1].clone()]);

    // Eight takers and a remover per machine, all at once, for five machines.
    let race = Uuid::new_v4();
    let five: Vec<Machine> = (10..15).map(machine).collect();
    for m in &five {
        assert!(s.warm_add(race, m).await.unwrap());
    }
    let takers: Vec<_> = (0..8)
        .map(|_| {
            let store = f.store.clone();
            tokio::spawn(async move { store.warm_take(race).await.unwrap().map(|m| m.id) })
        })
        .collect();
    let removers: Vec<_> = five
        .iter()
        .map(|m| {
            let (store, id) = (f.store.clone(), m.id);
            tokio::spawn(async move { store.warm_remove(race, id).await.unwrap().then_some(id) })
        })
        .collect();
    let mut got = Vec::new();
    for h in takers.into_iter().chain(removers) {
        got.extend(h.await.unwrap());
    }
    assert_eq!(
        sorted(got),
        sorted(five.iter().map(|m| m.id).collect()),
        "each machine to exactly one taker or remover"
    );
    assert!(s.warm_list(race).await.unwrap().is_empty());
}

pub async fn a_task_lease_is_exclusive_on_a_shared_store_and_granted_on_others(state: &str) {
    let f = fresh(state).await;
    let s = &f.store;
    assert_eq!(s.is_shared(), state.starts_with("redis"));
    let task = Uuid::new_v4();
    let ttl = Duration::from_secs(5);
    assert!(s.lease_acquire(task, "a", ttl).await.unwrap());
    if !s.is_shared() {
        assert!(
            s.lease_acquire(task, "b", ttl).await.unwrap(),
            "one process owns every task"
        );
        return;
    }
    assert!(!s.lease_acquire(task, "b", ttl).await.unwrap(), "held by a");
    assert!(
        s.lease_acquire(task, "a", ttl).await.unwrap(),
        "renewed by its owner"
    );
    s.lease_release(task, "b").await.unwrap();
    assert!(
        !s.lease_acquire(task, "b", ttl).await.unwrap(),
        "only the owner gives it up"
    );
    s.lease_release(task, "a").await.unwrap();
    let taken = now_ms();
    let short = Duration::from_millis(200);
    assert!(s.lease_acquire(task, "b", short).await.unwrap(), "released");
    sleep_until_ms(taken + 300).await;
    assert!(
        s.lease_acquire(task, "a", ttl).await.unwrap(),
        "lapsed ttl after its last renewal"
    );
}

pub async fn a_failure_counter_counts_in_a_fixed_window_and_never_below_zero(state: &str) {
    let f = fresh(state).await;
    let s = &f.store;
    let window = Duration::from_millis(600);
    let start = now_ms();
    for n in 1..=3 {
        assert_eq!(s.failures_add("k", window).await.unwrap(), n);
    }
    assert_eq!(s.failures_get("k").await.unwrap(), 3);
    assert_eq!(s.failures_get("unknown").await.unwrap(), 0);
    for _ in 0..4 {
        s.failures_undo("k").await.unwrap();
    }
    assert_eq!(s.failures_get("k").await.unwrap(), 0, "never below zero");
    sleep_until_ms(start + 200).await;
    assert_eq!(s.failures_add("k", window).await.unwrap(), 1);
    // The window started with the first failure: neither the undos nor the later failure
    // moved it.
    sleep_until_ms(start + 700).await;
    assert_eq!(
        s.failures_get("k").await.unwrap(),
        0,
        "the window has passed"
    );
    assert_eq!(
        s.failures_add("k", window).await.unwrap(),
        1,
        "a new window"
    );
    s.failures_add("k", window).await.unwrap();
    s.failures_reset("k").await.unwrap();
    assert_eq!(s.failures_get("k").await.unwrap(), 0);
    assert_eq!(s.failures_add("k", window).await.unwrap(), 1);
}

pub async fn back_off_slots_are_spaced_refused_past_the_wait_and_forgotten_after_the_window(
    state: &str,
) {
    let f = fresh(state).await;
    let s = &f.store;
    let ms = Duration::from_millis;
    let now = now_ms();
    let (spacing, max_wait) = (ms(100), ms(250));
    for n in 0..3 {
        let slot = s.backoff_slot("k", now, spacing, max_wait, LONG).await;
        assert_eq!(slot.unwrap(), Ok(now + 100 * n));
    }
    for _ in 0..2 {
        let slot = s.backoff_slot("k", now, spacing, max_wait, LONG).await;
        assert_eq!(slot.unwrap(), Err(now + 300), "refused, and nothing taken");
    }
    let later = s
        .backoff_slot("k", now + 100, spacing, max_wait, LONG)
        .await;
    assert_eq!(later.unwrap(), Ok(now + 300));
    let other = s.backoff_slot("other", now, spacing, max_wait, LONG).await;
    assert_eq!(other.unwrap(), Ok(now), "per key");

    let store = f.store.clone();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let slot = store.backoff_slot("c", now, ms(10), ms(1000), LONG).await;
                slot.unwrap().unwrap()
            })
        })
        .collect();
    let mut slots = Vec::new();
    for h in handles {
        slots.push(h.await.unwrap());
    }
    assert_eq!(
        sorted(slots),
        (0..8).map(|i| now + 10 * i).collect::<Vec<_>>(),
        "each concurrent caller gets its own slot"
    );

    let slot = s.backoff_slot("w", now, spacing, ms(0), ms(500)).await;
    assert_eq!(slot.unwrap(), Ok(now));
    let slot = s.backoff_slot("w", now, spacing, ms(0), ms(500)).await;
    assert_eq!(slot.unwrap(), Err(now + 100));
    sleep_until_ms(now + 600).await;
    let fresh_now = now_ms();
    let slot = s
        .backoff_slot("w", fresh_now, ms(10_000), ms(0), ms(500))
        .await;
    assert_eq!(slot.unwrap(), Ok(fresh_now), "forgotten after the window");
}

pub async fn the_store_answers_a_ping_and_delivers_its_own_events_in_order(state: &str) {
    let mut f = fresh(state).await;
    f.store.ping().await.unwrap();
    for i in 0..5 {
        f.store.publish(BusEvent::JwtRevoked {
            jti: format!("j{i}"),
            exp: i,
        });
    }
    for i in 0..5 {
        let event = tokio::time::timeout(Duration::from_secs(5), f.bus.recv())
            .await
            .expect("the event arrives")
            .unwrap();
        match event {
            BusEvent::JwtRevoked { jti, exp } => assert_eq!((jti, exp), (format!("j{i}"), i)),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The directory re-check of a user is claimed by one caller per period, whoever else asks
/// at once; the others learn when the claim was made; the claim lapses after the period and is
/// swept; another user's claim is apart. (A session's sign-in time, which `session_max_age`
/// counts from, is its record's `created_ms`, which a touch never moves.)
pub async fn a_directory_recheck_is_claimed_once_per_period(state: &str) {
    let f = fresh(state).await;
    let s = f.store.clone();
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let period = Duration::from_millis(1500);
    let at = now_ms();
    let won = winners(8, || {
        let s = s.clone();
        async move {
            s.directory_recheck_claim(alice, at, period)
                .await
                .unwrap()
                .is_ok()
        }
    })
    .await;
    assert_eq!(won, 1, "one claim per period");
    assert_eq!(
        s.directory_recheck_claim(alice, at + 10, period)
            .await
            .unwrap(),
        Err(at),
        "the claim that covers it"
    );
    assert_eq!(
        s.directory_recheck_claim(bob, at + 10, period)
            .await
            .unwrap(),
        Ok(()),
        "another user's is apart"
    );
    sleep_until_ms(at + 1600).await;
    assert_eq!(
        s.directory_recheck_claim(alice, now_ms(), period)
            .await
            .unwrap(),
        Ok(()),
        "claimed again once the period is over"
    );
    sleep_until_ms(now_ms() + 1600).await;
    assert!(s.sweep_expired().await.unwrap() >= usize::from(!s.is_shared()) * 2);

    let rec = session(alice, at);
    s.session_put(&rec, LONG, 4).await.unwrap();
    s.session_touch(&[(rec.hash, at + 500)], LONG)
        .await
        .unwrap();
    let stored = s.session_get(&rec.hash).await.unwrap().unwrap();
    assert_eq!(
        (stored.created_ms, stored.last_active_ms),
        (at, at + 500),
        "the sign-in time stays"
    );
}

/// However active a session is, it ends `session_max_age` after its sign-in: the token is
/// refused on a new socket, the sockets holding it are told and closed (4003) or, the one
/// whose request found it ended, answered 401; the REST JWT's own lifetime is capped at the
/// same age and it is refused after it; the end is counted.
pub async fn a_session_ends_at_session_max_age_however_active_it_is(state: &str) {
    use base64::Engine;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let mut c = config(state);
    c.session_max_age = Duration::from_secs(2);
    let app = TestApp::spawn_config(c).await;
    let signed_in = std::time::Instant::now();
    let (mut active, token) = app.login("astravdi").await;
    let mut silent = app.connect().await;
    let resumed = silent.rpc("auth_token", json!({"token": token})).await;
    assert_eq!(resumed["name"], "response", "{resumed}");
    let jwt = app.jwt("astravdi").await;
    // Its age counts from its own issue (a whole second, rounded down): over by then.
    let jwt_over = std::time::Instant::now() + Duration::from_secs(2);
    let payload = jwt.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        2,
        "a JWT lives no longer than session_max_age: {claims}"
    );

    // A request every 200 ms: each slides the inactivity window, none the sign-in's age.
    let ended = loop {
        let id = format!("a{}", signed_in.elapsed().as_millis());
        let req = json!({"namespace": "rpc", "name": "pools", "id": id, "args": {}});
        active
            .ws
            .send(Message::Text(req.to_string().into()))
            .await
            .unwrap();
        let answer = loop {
            match tokio::time::timeout(REPLY_TIMEOUT, active.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let reply: Value = serde_json::from_str(&t).unwrap();
                    if reply["id"] == json!(id) {
                        break Ok(reply);
                    }
                }
                Ok(Some(Ok(Message::Close(Some(frame))))) => {
                    break Err((u16::from(frame.code), frame.reason.to_string()));
                }
                Ok(Some(Ok(_))) => {}
                other => panic!("a reply or a close, got {other:?}"),
            }
        };
        match answer {
            Ok(reply) if reply["name"] == "response" => {
                assert!(
                    signed_in.elapsed() < Duration::from_millis(2300),
                    "still served {:?} after the sign-in",
                    signed_in.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(reply) => {
                assert_eq!(error_code(&reply), 401, "{reply}");
                break signed_in.elapsed();
            }
            Err((code, reason)) => {
                assert_eq!(
                    (code, reason.as_str()),
                    (4003, "session ended: session_max_age")
                );
                break signed_in.elapsed();
            }
        }
    };
    assert!(
        ended >= Duration::from_millis(1900),
        "ended after {ended:?}, before session_max_age"
    );
    // The socket that said nothing is told and closed.
    let (code, reason) = silent.expect_close(Duration::from_secs(3)).await;
    assert_eq!(
        (code, reason.as_str()),
        (4003, "session ended: session_max_age")
    );
    // The saved token is refused on a new socket; the JWT over REST.
    let mut later = app.connect().await;
    assert_eq!(
        error_code(&later.rpc("auth_token", json!({"token": token})).await),
        401
    );
    tokio::time::sleep_until(jwt_over.into()).await;
    let pools = reqwest::Client::new()
        .get(app.url("/api/v2/pools/"))
        .header("Authorization", format!("JWT {jwt}"))
        .send()
        .await
        .unwrap();
    assert_eq!(pools.status(), 403, "the JWT, once session_max_age is over");
    // A new sign-in works, for a new session_max_age.
    let (mut again, _) = app.login("astravdi").await;
    assert_eq!(again.rpc("pools", json!({})).await["name"], "response");
    let metrics = reqwest::get(app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("poolgate_sessions_ended_total{reason=\"session_max_age\"} 1"),
        "counted once:\n{metrics}"
    );
    app.stop().await;
}

/// A state file from before session rows carried their expiry still works: its sessions count
/// as live until the first write that knows the TTL stamps them, after which they expire (and
/// are swept) like any other.
#[tokio::test]
async fn sqlite_sessions_from_before_expiries_are_stamped_by_the_first_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite3");
    let now = now_ms();
    let user = Uuid::new_v4();
    let (old, recent) = (session(user, now - 10_000), session(user, now - 100));
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE sessions (
               hash BLOB PRIMARY KEY, user_id TEXT NOT NULL, created_ms INTEGER NOT NULL,
               last_active_ms INTEGER NOT NULL, peer TEXT NOT NULL DEFAULT '');",
        )
        .unwrap();
        for rec in [&old, &recent] {
            c.execute(
                "INSERT INTO sessions VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![
                    &rec.hash[..],
                    rec.user_id.to_string(),
                    rec.created_ms as i64,
                    rec.last_active_ms as i64,
                    rec.peer
                ],
            )
            .unwrap();
        }
    }
    let (sink, _bus) = mpsc::unbounded_channel();
    // The concrete store: its concerns' methods are the traits'.
    use poolgate::store::{Sessions, Upkeep};
    let s = store::sqlite::SqliteStore::open(&path, sink).unwrap();
    assert_eq!(s.session_get(&old.hash).await.unwrap(), Some(old.clone()));
    assert_eq!(s.sessions_all().await.unwrap().len(), 2);
    let new = session(Uuid::new_v4(), now);
    s.session_put(&new, Duration::from_secs(5), 10)
        .await
        .unwrap();
    assert_eq!(
        s.session_get(&old.hash).await.unwrap(),
        None,
        "idle past the TTL"
    );
    assert_eq!(s.session_get(&recent.hash).await.unwrap(), Some(recent));
    assert_eq!(s.sweep_expired().await.unwrap(), 1);
    assert_eq!(s.counts().await.unwrap().sessions, 2);
}

/// Single sign-on's single-use values (a sign-in under way by its `state`, a portal code):
/// taken by exactly one of concurrent takers, replaced by a put under the same key, gone
/// once expired (for a take, and for the sweep).
pub async fn single_sign_on_values_are_taken_once_and_expire(state: &str) {
    let f = fresh(state).await;
    let s = f.store.clone();
    let later = now_ms() + 60_000;
    s.sso_put("state:a", "first", later).await.unwrap();
    s.sso_put("state:a", "second", later).await.unwrap();
    let won = winners(8, || {
        let s = s.clone();
        async move { s.sso_take("state:a").await.unwrap().is_some() }
    })
    .await;
    assert_eq!(won, 1, "one take wins");
    s.sso_put("state:b", "kept", later).await.unwrap();
    assert_eq!(
        s.sso_take("state:b").await.unwrap().as_deref(),
        Some("kept")
    );
    assert_eq!(s.sso_take("state:b").await.unwrap(), None, "used once");
    let soon = now_ms() + 300;
    s.sso_put("portal:c", "short", soon).await.unwrap();
    sleep_until_ms(soon + 50).await;
    assert_eq!(s.sso_take("portal:c").await.unwrap(), None, "expired");
    s.sso_put("portal:d", "short", now_ms() + 200)
        .await
        .unwrap();
    sleep_until_ms(now_ms() + 250).await;
    assert!(s.sweep_expired().await.unwrap() >= usize::from(!s.is_shared()));
    assert_eq!(s.sso_take("portal:d").await.unwrap(), None);
}

/// A thin client's hand-off: pending until completed once (of concurrent completions one
/// wins, a done one never changes), taken once only when done, gone once expired.
pub async fn a_hand_off_is_completed_once_taken_once_and_expires(state: &str) {
    use store::{Handoff, SsoOutcome};
    let f = fresh(state).await;
    let s = f.store.clone();
    let handoff = Handoff {
        waiter: "socket 7".into(),
        expires_ms: now_ms() + 60_000,
        done: None,
    };
    s.handoff_put("handoff:a", &handoff).await.unwrap();
    assert_eq!(
        s.handoff_get("handoff:a").await.unwrap(),
        Some(handoff.clone())
    );
    assert_eq!(
        s.handoff_take("handoff:a").await.unwrap(),
        None,
        "not done yet"
    );
    assert!(
        s.handoff_get("handoff:a").await.unwrap().is_some(),
        "left as it was"
    );
    let won = winners(8, || {
        let s = s.clone();
        async move {
            let outcome = SsoOutcome {
                user_id: Uuid::new_v4(),
                otp_due: false,
            };
            s.handoff_complete("handoff:a", &outcome).await.unwrap()
        }
    })
    .await;
    assert_eq!(won, 1, "completed once");
    let done = s.handoff_get("handoff:a").await.unwrap().unwrap();
    let outcome = done.done.clone().expect("done");
    assert_eq!(done.waiter, "socket 7");
    let won = winners(8, || {
        let s = s.clone();
        async move { s.handoff_take("handoff:a").await.unwrap().is_some() }
    })
    .await;
    assert_eq!(won, 1, "taken once");
    assert_eq!(s.handoff_get("handoff:a").await.unwrap(), None);
    let late = SsoOutcome {
        user_id: outcome.user_id,
        otp_due: true,
    };
    assert!(
        !s.handoff_complete("handoff:a", &late).await.unwrap(),
        "gone"
    );
    assert!(!s.handoff_complete("handoff:none", &late).await.unwrap());
    let short = Handoff {
        expires_ms: now_ms() + 300,
        ..handoff
    };
    s.handoff_put("handoff:b", &short).await.unwrap();
    sleep_until_ms(short.expires_ms + 50).await;
    assert_eq!(s.handoff_get("handoff:b").await.unwrap(), None, "expired");
    assert!(!s.handoff_complete("handoff:b", &late).await.unwrap());
    assert_eq!(s.handoff_take("handoff:b").await.unwrap(), None);
}

/// A federated person's record: kept, replaced whole by the next sign-in, never expiring.
pub async fn a_federated_users_record_is_kept_and_replaced(state: &str) {
    let f = fresh(state).await;
    let s = f.store.clone();
    let mut user = store::FederatedUser {
        id: Uuid::new_v4(),
        issuer: "https://idp.example.com".into(),
        subject: "sub-1".into(),
        username: "ann".into(),
        groups: vec!["vdi-users".into()],
        admin: false,
        updated_ms: now_ms(),
    };
    assert_eq!(s.federated_user_get(user.id).await.unwrap(), None);
    s.federated_user_put(&user).await.unwrap();
    assert_eq!(
        s.federated_user_get(user.id).await.unwrap(),
        Some(user.clone())
    );
    user.username = "ann.b".into();
    user.groups = vec![];
    user.admin = true;
    s.federated_user_put(&user).await.unwrap();
    s.sweep_expired().await.unwrap();
    assert_eq!(s.federated_user_get(user.id).await.unwrap(), Some(user));
}

/// Security keys: a credential id is registered once, to one user (of concurrent registrations
/// one wins); a user's keys are listed in registration order; an update changes only the
/// credential and last use, and not a removed key; a removal frees the id; a user's own
/// removal keeps their last key.
pub async fn security_keys_are_registered_once_listed_updated_and_removed(state: &str) {
    use store::SecurityKey;
    let f = fresh(state).await;
    let s = f.store.clone();
    let (ann, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let key = |user: Uuid, id: &str, created_ms: u64| SecurityKey {
        user_id: user,
        id: id.into(),
        name: format!("key {id}"),
        passkey: id.ends_with('p'),
        credential: "{\"counter\":0}".into(),
        created_ms,
        last_used_ms: None,
    };
    let won = winners(8, || {
        let s = s.clone();
        async move { s.key_add(&key(Uuid::new_v4(), "shared", 1)).await.unwrap() }
    })
    .await;
    assert_eq!(won, 1, "one registration of an id wins");
    assert!(s.key_add(&key(ann, "a1", 10)).await.unwrap());
    assert!(s.key_add(&key(ann, "a2p", 20)).await.unwrap());
    assert!(
        !s.key_add(&key(bob, "a1", 30)).await.unwrap(),
        "someone else's id"
    );
    assert!(
        !s.key_add(&key(ann, "a1", 30)).await.unwrap(),
        "the same id again"
    );
    let listed: Vec<String> = s
        .keys_of(ann)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(listed, ["a1", "a2p"]);
    assert!(s.keys_of(bob).await.unwrap().is_empty());
    assert_eq!(s.key_owner("a1").await.unwrap(), Some(ann));
    assert_eq!(s.key_owner("none").await.unwrap(), None);
    let mut used = key(ann, "a1", 10);
    used.credential = "{\"counter\":7}".into();
    used.last_used_ms = Some(now_ms());
    used.name = "not renamed by an update".into();
    assert!(s.key_update(&used).await.unwrap());
    let stored = s.keys_of(ann).await.unwrap().remove(0);
    assert_eq!(stored.credential, used.credential);
    assert_eq!(stored.last_used_ms, used.last_used_ms);
    assert_eq!(stored.name, "key a1");
    assert!(!s.key_remove(bob, "a1").await.unwrap(), "not bob's");
    assert!(s.key_remove(ann, "a1").await.unwrap());
    assert!(!s.key_remove(ann, "a1").await.unwrap());
    assert!(
        !s.key_update(&used).await.unwrap(),
        "a removed key is not written back"
    );
    assert_eq!(s.keys_of(ann).await.unwrap().len(), 1);
    assert_eq!(s.key_owner("a1").await.unwrap(), None);
    assert!(s.key_add(&key(bob, "a1", 40)).await.unwrap(), "a freed id");
    s.sweep_expired().await.unwrap();
    assert_eq!(s.keys_of(bob).await.unwrap().len(), 1, "keys never expire");
    use store::KeyRemoval;
    assert_eq!(
        s.key_remove_unless_last(bob, "a1").await.unwrap(),
        KeyRemoval::Last
    );
    assert_eq!(
        s.key_remove_unless_last(bob, "a2p").await.unwrap(),
        KeyRemoval::NotFound,
        "ann's"
    );
    assert!(s.key_add(&key(bob, "b2", 50)).await.unwrap());
    assert_eq!(
        s.key_remove_unless_last(bob, "a1").await.unwrap(),
        KeyRemoval::Removed
    );
    assert_eq!(s.key_owner("a1").await.unwrap(), None, "its id freed");
    assert_eq!(
        s.key_remove_unless_last(bob, "b2").await.unwrap(),
        KeyRemoval::Last
    );
}

/// The ceremonies' values: read without being used, taken by exactly one of concurrent takers,
/// gone once expired.
pub async fn webauthn_values_are_kept_taken_once_and_expire(state: &str) {
    let f = fresh(state).await;
    let s = f.store.clone();
    let later = now_ms() + 60_000;
    s.webauthn_put("enrol:a", "ann", later).await.unwrap();
    assert_eq!(
        s.webauthn_get("enrol:a").await.unwrap().as_deref(),
        Some("ann")
    );
    assert_eq!(
        s.webauthn_get("enrol:a").await.unwrap().as_deref(),
        Some("ann")
    );
    let won = winners(8, || {
        let s = s.clone();
        async move { s.webauthn_take("enrol:a").await.unwrap().is_some() }
    })
    .await;
    assert_eq!(won, 1, "one take wins");
    assert_eq!(s.webauthn_get("enrol:a").await.unwrap(), None);
    let soon = now_ms() + 300;
    s.webauthn_put("signin:b", "state", soon).await.unwrap();
    sleep_until_ms(soon + 50).await;
    assert_eq!(s.webauthn_get("signin:b").await.unwrap(), None, "expired");
    assert_eq!(s.webauthn_take("signin:b").await.unwrap(), None);
}

/// Every case of the backend suite, written once: each backend runs the `any` cases, and the
/// durable ones (SQLite here, Redis in tests/redis/main.rs) the `durable` cases too. Calls
/// `$suite!` with the two lists.
#[macro_export]
macro_rules! backend_cases {
    ($suite:ident) => {
        $suite! {
            any: [
                concurrent_requests_create_one_task,
                a_static_inventory_never_gives_a_machine_twice,
                a_totp_code_is_refused_the_second_time,
                an_expired_assignment_is_released,
                a_users_sessions_are_capped_and_the_least_recently_active_is_revoked,
                ended_tasks_are_deleted_after_the_retention_but_each_keys_latest_stays,
                expired_failure_counters_are_swept,
                a_session_gone_from_the_store_is_refused_within_one_session_flush,
                a_session_is_stored_only_under_a_digest_its_store_takes,
                a_session_expires_ttl_after_its_last_activity_and_a_touch_moves_both,
                a_new_session_trims_its_users_expired_and_least_recently_active_sessions,
                deleting_a_users_sessions_returns_the_live_ones_and_spares_other_users,
                sweeping_deletes_every_expired_record_and_nothing_live,
                an_mfa_challenge_counts_wrong_codes_is_taken_once_and_expires,
                a_users_new_challenge_replaces_its_earlier_one_of_the_same_kind,
                a_totp_step_is_accepted_once_and_only_forward,
                a_directory_users_record_is_kept_replaced_whole_and_listed,
                a_directory_users_totp_enrolment_is_kept_replaced_and_ended,
                a_directory_name_points_at_the_user_it_last_signed_in_as,
                jwt_revocations_last_until_the_token_expires_and_a_users_only_move_forward,
                a_keys_latest_task_moves_only_by_compare_and_set,
                a_task_update_overwrites_a_stored_task_and_the_lists_follow_it,
                an_ended_tasks_status_is_final,
                ended_tasks_created_before_the_cutoff_go_except_each_keys_latest,
                a_user_holds_at_most_one_assignment_per_pool,
                a_machine_is_claimed_once_per_inventory,
                a_warm_machine_is_taken_once_oldest_first,
                a_task_lease_is_exclusive_on_a_shared_store_and_granted_on_others,
                a_failure_counter_counts_in_a_fixed_window_and_never_below_zero,
                back_off_slots_are_spaced_refused_past_the_wait_and_forgotten_after_the_window,
                the_store_answers_a_ping_and_delivers_its_own_events_in_order,
                every_read_follows_the_writes_that_change_it,
                a_directory_recheck_is_claimed_once_per_period,
                a_session_ends_at_session_max_age_however_active_it_is,
                single_sign_on_values_are_taken_once_and_expire,
                a_hand_off_is_completed_once_taken_once_and_expires,
                a_federated_users_record_is_kept_and_replaced,
                security_keys_are_registered_once_listed_updated_and_removed,
                webauthn_values_are_kept_taken_once_and_expire,
                a_key_enrolled_by_link_signs_in_after_the_password,
                a_replayed_assertion_is_refused,
                an_expired_challenge_is_refused,
                a_wrong_origin_or_relying_party_is_refused,
                a_cloned_key_is_refused,
                another_users_credential_is_refused,
                a_passkey_signs_in_without_a_username,
                keys_are_added_listed_and_removed,
                the_rest_login_takes_a_key,
                refused_key_answers_count_toward_the_lockout,
                concurrent_removals_never_take_the_last_key,
                audit_events_are_ranged_filtered_paged_and_swept,
                the_audit_log_records_sign_ins_refusals_connections_releases_and_admin_actions,
                asking_again_for_the_same_connection_is_one_connect_event_a_minute,
                audit_events_are_kept_for_the_retention_and_paged,
                an_auditor_sees_the_views_and_changes_nothing,
                a_pool_outside_its_schedule_is_listed_closed_and_refused_until_it_opens,
                the_schedule_warns_before_it_closes_and_releases_unless_end_action_keeps,
                a_pool_is_refused_from_outside_allow_from,
                max_session_warns_and_releases_a_desktop,
                idle_release_gives_back_the_desktop_of_a_user_without_a_socket,
                max_desktops_per_user_counts_desktops_across_pools,
                a_static_pool_balances_drains_and_gives_a_user_their_last_machine,
                a_warm_set_fills_and_step_1_completes_at_once_from_it,
                a_warm_schedule_raises_the_set_at_its_time_and_shrinks_it_after,
                a_failing_provisioner_is_not_hammered_to_fill_a_warm_set,
            ],
            durable: [
                state_survives_a_restart,
                a_task_cut_off_by_a_stop_is_cancelled_and_restarts,
                orphaned_machines_are_released_at_start_up,
                warm_machines_survive_a_restart_and_go_back_when_the_pool_drops_its_set,
            ],
        }
    };
}

// ---- The audit log: the store's part, then the app's over real sockets ----

/// The audit clock's start in these cases: 2026-01-01T00:00:00Z.
const AUDIT_T0: u64 = 1_767_225_600_000;

fn audit_event(ts_ms: u64, user: &str, event: &str) -> poolgate::domain::AuditEvent {
    poolgate::domain::AuditEvent {
        id: poolgate::domain::audit::new_id(ts_ms, rand_tail()),
        ts: String::new(),
        event: event.into(),
        user: Some(user.into()),
        actor: None,
        ip: Some("192.0.2.7".into()),
        instance: "test/00000000".into(),
        transport: "ws".into(),
        method: Some("rpc/auth".into()),
        outcome: "ok".into(),
        code: None,
        pool: None,
        detail: None,
    }
}

fn rand_tail() -> u64 {
    u64::from_be_bytes(Uuid::new_v4().as_bytes()[..8].try_into().unwrap())
}

fn audit_query(since_ms: u64, until_ms: u64) -> poolgate::domain::AuditQuery {
    poolgate::domain::AuditQuery {
        since_ms,
        until_ms,
        user: None,
        event: None,
        limit: 1000,
        after: None,
        newest_first: true,
    }
}

/// Audit events are kept by id (time order), ranged, filtered by user and event, paged by
/// cursor either way, and swept before a cutoff.
pub async fn audit_events_are_ranged_filtered_paged_and_swept(state: &str) {
    let f = fresh(state).await;
    let s = &f.store;
    let ts = |i: u64| AUDIT_T0 + i * 1000;
    let names = ["alice", "bob", "carol"];
    let mut all = Vec::new();
    for i in 0..30u64 {
        let kind = if i % 2 == 0 { "sign_in" } else { "connect" };
        let e = audit_event(ts(i), names[i as usize % 3], kind);
        s.audit_append(&e).await.unwrap();
        all.push(e);
    }
    // Two events in one millisecond are both kept.
    let twin = audit_event(ts(29), "alice", "connect");
    s.audit_append(&twin).await.unwrap();
    all.push(twin);
    all.sort_by(|a, b| a.id.cmp(&b.id));

    let newest = s.audit_query(&audit_query(0, u64::MAX / 2)).await.unwrap();
    let mut expected: Vec<_> = all.iter().rev().cloned().collect();
    assert_eq!(newest, expected, "everything, newest first");

    let mut q = audit_query(ts(5), ts(10));
    q.newest_first = false;
    let range = s.audit_query(&q).await.unwrap();
    assert_eq!(
        range,
        all[5..10].to_vec(),
        "since inclusive, until exclusive"
    );

    let mut q = audit_query(0, ts(100));
    q.user = Some("alice".into());
    q.event = Some("sign_in".into());
    let ids: Vec<u64> = s
        .audit_query(&q)
        .await
        .unwrap()
        .iter()
        .map(|e| (e.ts_ms() - AUDIT_T0) / 1000)
        .collect();
    assert_eq!(ids, [24, 18, 12, 6, 0]);

    // Pages of 3 of bob's events, either way, by cursor: every one once, in order.
    for newest_first in [true, false] {
        let mut q = audit_query(0, ts(100));
        q.user = Some("bob".into());
        q.limit = 3;
        q.newest_first = newest_first;
        let mut seen = Vec::new();
        loop {
            let page = s.audit_query(&q).await.unwrap();
            assert!(page.len() <= 3);
            seen.extend(page.iter().cloned());
            if page.len() < 3 {
                break;
            }
            q.after = Some(page.last().unwrap().id.clone());
        }
        expected = all
            .iter()
            .filter(|e| e.user.as_deref() == Some("bob"))
            .cloned()
            .collect();
        if newest_first {
            expected.reverse();
        }
        assert_eq!(seen, expected, "newest_first {newest_first}");
    }

    assert_eq!(s.audit_sweep(ts(10)).await.unwrap(), 10);
    let left = s.audit_query(&audit_query(0, ts(100))).await.unwrap();
    assert_eq!(left.len(), 21);
    assert_eq!(
        left.last().unwrap().ts_ms(),
        ts(10),
        "one at the cutoff stays"
    );
    assert_eq!(s.audit_sweep(ts(10)).await.unwrap(), 0);
}

/// The demo config on a backend, with an auditor (`auditor = true`).
fn audit_config(state: &str) -> Config {
    let mut c = config(state);
    add_auditor(&mut c);
    c
}

/// The audit log's page of events (oldest first) since the audit clock's `AUDIT_T0`.
async fn audit_page(c: &mut Client, args: Value) -> Vec<Value> {
    let reply = c.rpc("admin_audit", args).await;
    assert_eq!(reply["name"], "response", "{reply}");
    reply["args"]["events"].as_array().unwrap().clone()
}

fn find<'a>(events: &'a [Value], event: &str, user: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["event"] == event && e["user"] == user)
        .unwrap_or_else(|| panic!("{event} of {user} in {events:#?}"))
}

/// Both steps done in pool-win-1: the connection data `connect_info` hands out.
async fn connected_to_win_1(c: &mut Client) {
    step_1_done(c, POOL_WIN_1).await;
    let mut info = c.rpc("connect_info", json!({"pool_id": POOL_WIN_1})).await;
    if info["args"]["task"].is_object() {
        c.follow(&info["args"]["task"]["id"].clone()).await;
        info = c.rpc("connect_info", json!({"pool_id": POOL_WIN_1})).await;
    }
    assert!(info["args"]["connection"].is_object(), "{info}");
}

/// A client that asks again for the connection data of the machine it was given (it polls
/// `connect_info`, or reconnects) makes one `connect` event a minute, on either transport,
/// not one per answer; a minute later it is recorded again.
pub async fn asking_again_for_the_same_connection_is_one_connect_event_a_minute(state: &str) {
    let app = TestApp::spawn_config(audit_config(state)).await;
    app.state.audit.clock.set_ms(AUDIT_T0);
    let (mut admin, _) = app.login("astravdi").await;
    connected_to_win_1(&mut admin).await;
    for _ in 0..3 {
        let again = admin
            .rpc("connect_info", json!({"pool_id": POOL_WIN_1}))
            .await;
        assert!(again["args"]["connection"].is_object(), "{again}");
    }
    let connects = |events: &[Value]| {
        events
            .iter()
            .filter(|e| e["event"] == "connect" && e["user"] == "astravdi")
            .count()
    };
    let events = audit_page(&mut admin, json!({"since": "1h", "order": "oldest"})).await;
    assert_eq!(connects(&events), 1, "{events:#?}");
    app.state
        .audit
        .clock
        .advance(poolgate::audit::CONNECT_EVERY + Duration::from_secs(1));
    let again = admin
        .rpc("connect_info", json!({"pool_id": POOL_WIN_1}))
        .await;
    assert!(again["args"]["connection"].is_object(), "{again}");
    let events = audit_page(&mut admin, json!({"since": "1h", "order": "oldest"})).await;
    assert_eq!(connects(&events), 2, "{events:#?}");
}

/// Every way in and out is recorded once, with who, when, from where, on which instance and
/// how — and never a password, code or token.
pub async fn the_audit_log_records_sign_ins_refusals_connections_releases_and_admin_actions(
    state: &str,
) {
    let app = TestApp::spawn_config(audit_config(state)).await;
    app.state.audit.clock.set_ms(AUDIT_T0);
    let (mut admin, token) = app.login("astravdi").await;
    // A wrong password, typed from another address.
    let mut guess = app.connect_from([127, 0, 0, 9]).await;
    let reply = guess
        .rpc(
            "auth",
            json!({"username": "user-2", "password": "Wr0ng-Secret!"}),
        )
        .await;
    assert_eq!(error_code(&reply), 401);
    // A disabled account.
    let mut disabled = app.connect().await;
    let reply = disabled
        .rpc(
            "auth",
            json!({"username": "user-1", "password": PASSWORD, "otp_code": date_code()}),
        )
        .await;
    assert_eq!(error_code(&reply), 403);
    // A one-time code: the challenge, then the code.
    let mut otp = app.connect().await;
    let reply = otp
        .rpc("auth", json!({"username": "user-4", "password": PASSWORD}))
        .await;
    assert_eq!(error_code(&reply), 428);
    let mfa = reply["args"]["mfa_token"].as_str().unwrap().to_owned();
    let reply = otp
        .rpc(
            "otp_verify",
            json!({"mfa_token": mfa, "otp_code": date_code()}),
        )
        .await;
    assert_eq!(reply["name"], "response", "{reply}");
    // A saved token, and REST.
    let mut again = app.connect().await;
    again.rpc("auth_token", json!({"token": token})).await;
    let jwt = app.jwt("user-2").await;
    // A connection: both steps, then the admin gives the machine back.
    connected_to_win_1(&mut admin).await;
    let reply = admin
        .rpc(
            "admin_release",
            json!({"username": "astravdi", "pool_id": "pool-win-1"}),
        )
        .await;
    assert_eq!(reply["name"], "response", "{reply}");
    // user-4 signs out; then the admin revokes whatever user-4 still holds.
    otp.rpc("auth_clear", json!({})).await;
    let reply = admin
        .rpc("admin_revoke", json!({"username": "user-4"}))
        .await;
    assert_eq!(reply["name"], "response", "{reply}");

    let events = audit_page(&mut admin, json!({"since": "1h", "order": "oldest"})).await;
    let instance = app.state.audit.instance().to_owned();
    for e in &events {
        assert_eq!(e["instance"], instance.as_str(), "{e}");
        assert_eq!(e["ts"], "2026-01-01T00:00:00.000Z", "{e}");
        let line = e.to_string();
        for secret in [PASSWORD, "Wr0ng-Secret!", &token, &jwt, &mfa, &date_code()] {
            assert!(!line.contains(secret), "a secret in {line}");
        }
    }
    let signed_in = find(&events, "sign_in", "astravdi");
    assert_eq!(signed_in["transport"], "ws");
    assert_eq!(signed_in["method"], "rpc/auth");
    assert_eq!(signed_in["ip"], "127.0.0.1");
    assert_eq!(signed_in["outcome"], "ok");
    assert_eq!(signed_in["detail"], "password");
    let refused = find(&events, "sign_in_refused", "user-2");
    assert_eq!(refused["ip"], "127.0.0.9");
    assert_eq!(refused["code"], 401);
    assert_eq!(refused["outcome"], "refused");
    let disabled = find(&events, "sign_in_refused", "user-1");
    assert_eq!(disabled["code"], 403);
    let challenge = find(&events, "sign_in", "user-4");
    assert_eq!(challenge["outcome"], "challenge");
    assert!(
        events.iter().any(|e| e["event"] == "sign_in"
            && e["user"] == "user-4"
            && e["method"] == "rpc/otp_verify"
            && e["outcome"] == "ok"
            && e["detail"] == "otp"),
        "{events:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["method"] == "rpc/auth_token" && e["detail"] == "token"),
        "{events:#?}"
    );
    let rest = events
        .iter()
        .find(|e| e["event"] == "sign_in" && e["transport"] == "rest")
        .unwrap_or_else(|| panic!("a REST sign-in in {events:#?}"));
    assert_eq!(rest["user"], "user-2");
    let connect = find(&events, "connect", "astravdi");
    assert_eq!(connect["pool"], "pool-win-1");
    let release = find(&events, "release", "astravdi");
    assert_eq!(release["transport"], "server");
    assert!(
        release["detail"]
            .as_str()
            .unwrap()
            .contains("released by astravdi")
    );
    let by_admin = find(&events, "admin", "astravdi");
    assert_eq!(by_admin["method"], "rpc/admin_release");
    assert_eq!(by_admin["actor"], "astravdi");
    let revoke = find(&events, "revoke", "user-4");
    assert_eq!(revoke["actor"], "astravdi");
    let out = find(&events, "sign_out", "user-4");
    assert_eq!(out["method"], "rpc/auth_clear");

    // Filters: by user, by event; the CLI's range as RFC 3339.
    let only = audit_page(&mut admin, json!({"since": "1h", "user": "user-2"})).await;
    assert!(!only.is_empty() && only.iter().all(|e| e["user"] == "user-2"));
    let only = audit_page(
        &mut admin,
        json!({"since": "2025-12-31T23:00:00Z", "event": "sign_in_refused"}),
    )
    .await;
    assert_eq!(only.len(), 2, "{only:#?}");
    let reply = admin
        .rpc("admin_audit", json!({"since": "yesterday-ish"}))
        .await;
    assert_eq!(error_code(&reply), 400);
}

/// Events are kept for `audit_retention` by the audit's clock, then swept; `since` counts back
/// from that clock; pages follow their cursor.
pub async fn audit_events_are_kept_for_the_retention_and_paged(state: &str) {
    let app = TestApp::spawn_config(audit_config(state)).await;
    let clock = &app.state.audit.clock;
    clock.set_ms(AUDIT_T0);
    let (mut admin, _) = app.login("astravdi").await;
    for day in 1..=3u64 {
        clock.set_ms(AUDIT_T0 + day * 86_400_000);
        app.login("user-2").await;
    }
    let signed_in = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .map(|e| e["ts"].as_str().unwrap().to_owned())
            .collect()
    };
    let recent = audit_page(
        &mut admin,
        json!({"since": "36h", "user": "user-2", "event": "sign_in"}),
    )
    .await;
    assert_eq!(
        signed_in(&recent),
        ["2026-01-04T00:00:00.000Z", "2026-01-03T00:00:00.000Z"]
    );
    // Pages of one, newest first, until the cursor is null.
    let mut args = json!({"since": "30d", "user": "user-2", "limit": 1});
    let mut seen = Vec::new();
    loop {
        let reply = admin.rpc("admin_audit", args.clone()).await;
        let page = &reply["args"];
        seen.extend(signed_in(page["events"].as_array().unwrap()));
        match page["cursor"].as_str() {
            Some(cursor) => args["cursor"] = json!(cursor),
            None => break,
        }
    }
    assert_eq!(
        seen,
        [
            "2026-01-04T00:00:00.000Z",
            "2026-01-03T00:00:00.000Z",
            "2026-01-02T00:00:00.000Z"
        ]
    );
    // 90 days after the second day: the first two days are past the retention.
    clock.set_ms(AUDIT_T0 + 92 * 86_400_000 + 1);
    assert_eq!(
        app.state.audit.sweep().await.unwrap(),
        3,
        "astravdi's and two of user-2's"
    );
    let left = audit_page(&mut admin, json!({"since": "100d", "user": "user-2"})).await;
    assert_eq!(signed_in(&left), ["2026-01-04T00:00:00.000Z"]);
}

/// An auditor sees the views and the audit log; every method that changes something answers
/// 403 (with the request's id), and the refusal is itself recorded.
pub async fn an_auditor_sees_the_views_and_changes_nothing(state: &str) {
    let app = TestApp::spawn_config(audit_config(state)).await;
    let (mut auditor, _) = app.login("auditor").await;
    for (name, args) in [
        ("admin_sessions", json!({})),
        ("admin_tasks", json!({})),
        ("admin_audit", json!({"since": "1h"})),
        ("admin_keys", json!({"username": "user-3"})),
    ] {
        let reply = auditor.rpc(name, args).await;
        assert_eq!(reply["name"], "response", "{name}: {reply}");
    }
    for (name, args) in [
        (
            "admin_release",
            json!({"username": "astravdi", "pool_id": POOL_WIN_1}),
        ),
        (
            "admin_reset",
            json!({"username": "user-2", "pool_id": POOL_WIN_1}),
        ),
        ("admin_revoke", json!({"username": "astravdi"})),
        ("admin_enroll_key", json!({"username": "user-3"})),
        ("admin_remove_key", json!({"username": "user-3", "id": "x"})),
        ("admin_unpin_sso", json!({"username": "user-5"})),
        ("admin_totp", json!({"username": "someone"})),
    ] {
        let reply = auditor.call("rpc", name, args).await;
        assert_eq!(error_code(&reply), 403, "{name}: {reply}");
        assert_eq!(
            reply["args"]["message"],
            "Admin role required: an auditor may look but change nothing.",
            "{name}"
        );
        assert!(reply["id"].as_str().unwrap().starts_with('t'), "{reply}");
    }
    // A plain user sees none of it.
    let (mut user, _) = app.login("user-2").await;
    let reply = user.rpc("admin_audit", json!({})).await;
    assert_eq!(error_code(&reply), 403);
    assert_eq!(reply["args"]["message"], "Admin role required.");
    // The auditor's attempts are on the record.
    let events = audit_page(&mut auditor, json!({"since": "1h"})).await;
    let refused: Vec<_> = events
        .iter()
        .filter(|e| e["actor"] == "auditor" && e["outcome"] == "refused")
        .collect();
    assert_eq!(refused.len(), 7, "{events:#?}");
    assert!(
        events
            .iter()
            .any(|e| e["actor"] == "user-2" && e["method"] == "rpc/admin_audit"),
        "{events:#?}"
    );
}
