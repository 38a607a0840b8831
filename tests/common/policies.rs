//! Pool policies over real sockets, on every backend (registered in `backend_cases!`): access
//! windows and networks, limits per user, session ends with their warnings, idle release, and
//! how a static pool picks a machine. Time is the server's clock, which the cases set and
//! move; a round of the policies is run by calling it (the background round would do the
//! same), and what a case checks is what the sockets are told and what the store holds.

use std::time::Duration;

use poolgate::Config;
use poolgate::pools::{EndAction, ScheduleWindow};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

/// RFC 3339 → epoch ms.
fn ms(at: &str) -> u64 {
    chrono::DateTime::parse_from_rfc3339(at)
        .unwrap()
        .timestamp_millis() as u64
}

/// Monday 2026-12-14, 15:00 UTC (18:00 in Moscow).
const MONDAY_15: &str = "2026-12-14T15:00:00Z";

fn config(state: &str) -> Config {
    let mut c = demo_config();
    c.state = state.parse().expect("a state URL");
    fast_sim(&mut c, OK, OK);
    c
}

fn pool_mut<'a>(c: &'a mut Config, name: &str) -> &'a mut poolgate::pools::PoolConfig {
    c.pools.iter_mut().find(|p| p.name == name).unwrap()
}

/// A working-day schedule in Moscow (UTC+3): Mon–Fri 07:00–19:00.
fn moscow_working_days() -> Vec<ScheduleWindow> {
    vec![ScheduleWindow {
        days: "Mon-Fri".parse().unwrap(),
        hours: "07:00-19:00".parse().unwrap(),
        timezone: Some("Europe/Moscow".parse().unwrap()),
    }]
}

/// A second password-only user ("carol"), in pool-win-1.
fn add_carol(c: &mut Config) {
    let mut carol = c
        .users
        .iter()
        .find(|u| u.username == "user-2")
        .unwrap()
        .clone();
    carol.username = "carol".into();
    carol.id = Uuid::new_v4();
    c.users.push(carol);
    pool_mut(c, "pool-win-1").users.push("carol".into());
}

fn user_id(app: &TestApp, name: &str) -> Uuid {
    app.state.auth.users.by_name(name).unwrap().id
}

/// Step 1 to COMPLETED over the socket; the machine's name, from the store.
async fn desktop(app: &TestApp, c: &mut Client, user: &str, pool: &str) -> String {
    let reply = c.rpc("pool_request", json!({"pool_id": pool})).await;
    assert_eq!(reply["name"], "response", "{reply}");
    let id = reply["args"]["task"]["id"].clone();
    if reply["args"]["task"]["status"] != "COMPLETED" {
        // Until it ends; `machine` events (a release, a warning) may come between.
        loop {
            let frame = c.recv().await;
            let task = &frame["args"];
            if frame["name"] == "task" && task["id"] == id {
                match task["status"].as_str().unwrap() {
                    "PENDING" | "RUNNING" => continue,
                    status => {
                        assert_eq!(status, "COMPLETED", "{task}");
                        break;
                    }
                }
            }
        }
    }
    app.state
        .pools
        .assignment(user_id(app, user), pool.parse().unwrap())
        .await
        .unwrap()
        .expect("a machine held")
        .verbose_name
}

/// Whether `user` holds a machine in `pool`.
async fn holds(app: &TestApp, user: Uuid, pool: Uuid) -> bool {
    app.state
        .pools
        .assignment(user, pool)
        .await
        .unwrap()
        .is_some()
}

/// The next `machine` event on the socket (task events before it are skipped).
async fn machine_event(c: &mut Client) -> Value {
    loop {
        let frame = c.recv().await;
        assert_eq!(frame["namespace"], "events", "{frame}");
        if frame["name"] == "machine" {
            return frame["args"].clone();
        }
    }
}

/// The listed pool of that name in a `pools` reply.
fn listed<'a>(reply: &'a Value, name: &str) -> &'a Value {
    reply["args"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed: {reply}"))
}

fn err(reply: &Value) -> (u64, u64) {
    assert_eq!(reply["name"], "error", "{reply}");
    (
        reply["args"]["code"].as_u64().unwrap(),
        reply["args"]["err_code"].as_u64().unwrap(),
    )
}

/// Outside its schedule a pool is listed as closed with its next opening, and step 1 is
/// refused (403 / 820, with the request's id) on both transports; at the opening it is open.
pub async fn a_pool_outside_its_schedule_is_listed_closed_and_refused_until_it_opens(state: &str) {
    let mut c = config(state);
    pool_mut(&mut c, "pool-win-1").schedule = moscow_working_days();
    let app = TestApp::spawn_config(c).await;
    let clock = &app.state.audit.clock;
    // Saturday 10:00 UTC.
    clock.set_ms(ms("2026-12-12T10:00:00Z"));
    let (mut admin, _) = app.login("astravdi").await;

    let pools = admin.rpc("pools", json!({})).await;
    let win1 = listed(&pools, "pool-win-1");
    assert_eq!(win1["available"], false, "{win1}");
    assert_eq!(win1["unavailable"], "schedule");
    // Monday 07:00 in Moscow.
    assert_eq!(win1["opens_at"], "2026-12-14T04:00:00Z");
    let win2 = listed(&pools, "pool-win-2");
    assert_eq!(win2["available"], true, "{win2}");
    assert!(win2.get("opens_at").is_none() && win2.get("closes_at").is_none());

    admin
        .send_text(json!({"namespace": "rpc", "name": "pool_request", "id": "closed-1", "args": {"pool_id": POOL_WIN_1}}).to_string())
        .await;
    let refused = admin.recv().await;
    assert_eq!(refused["id"], "closed-1");
    assert_eq!(err(&refused), (403, 820));
    assert_eq!(refused["args"]["opens_at"], "2026-12-14T04:00:00Z");
    assert!(
        refused["args"]["detail"]
            .as_str()
            .unwrap()
            .contains("2026-12-14T04:00:00Z")
    );

    // The REST shim says the same.
    let jwt = app.jwt("astravdi").await;
    let http = reqwest::Client::new();
    let list: Value = http
        .get(app.url("/api/v2/pools/"))
        .header("Authorization", format!("JWT {jwt}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rest_win1 = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "pool-win-1")
        .unwrap();
    assert_eq!(rest_win1["available"], false);
    let step1 = http
        .get(app.url(&format!("/api/v2/pools/{POOL_WIN_1}/connect/")))
        .header("Authorization", format!("JWT {jwt}"))
        .send()
        .await
        .unwrap();
    assert_eq!(step1.status(), 403);
    let body: Value = step1.json().await.unwrap();
    assert_eq!(body["detail"][0]["err_code"], 820, "{body}");
    assert_eq!(body["detail"][0]["opens_at"], "2026-12-14T04:00:00Z");

    // Monday 07:00 Moscow: open until 19:00 (16:00 UTC).
    clock.set_ms(ms("2026-12-14T04:00:00Z"));
    let pools = admin.rpc("pools", json!({})).await;
    let win1 = listed(&pools, "pool-win-1");
    assert_eq!(win1["available"], true, "{win1}");
    assert_eq!(win1["closes_at"], "2026-12-14T16:00:00Z");
    desktop(&app, &mut admin, "astravdi", POOL_WIN_1).await;
}

/// A desktop in a pool whose schedule closes is warned `warn_before` and a minute before,
/// once each, and given back at the closing; with `end_action = "keep"` it stays.
pub async fn the_schedule_warns_before_it_closes_and_releases_unless_end_action_keeps(state: &str) {
    let mut c = config(state);
    pool_mut(&mut c, "pool-win-1").schedule = moscow_working_days();
    let astra = pool_mut(&mut c, "pool-astra-2");
    astra.schedule = moscow_working_days();
    astra.end_action = EndAction::Keep;
    let app = TestApp::spawn_config(c).await;
    let clock = &app.state.audit.clock;
    clock.set_ms(ms(MONDAY_15));
    let (mut admin, _) = app.login("astravdi").await;
    desktop(&app, &mut admin, "astravdi", POOL_WIN_1).await;
    desktop(&app, &mut admin, "astravdi", POOL_ASTRA_2).await;

    // Not yet within warn_before (600 s) of 16:00.
    clock.set_ms(ms("2026-12-14T15:49:00Z"));
    app.state.pools.enforce_policies().await.unwrap();
    clock.set_ms(ms("2026-12-14T15:51:00Z"));
    app.state.pools.enforce_policies().await.unwrap();
    let warning = machine_event(&mut admin).await;
    assert_eq!(warning["status"], "ENDING", "{warning}");
    assert_eq!(warning["pool_id"], POOL_WIN_1);
    assert_eq!(warning["ends_in"], 540);
    assert_eq!(warning["ends_at"], "2026-12-14T16:00:00Z");
    assert_eq!(warning["reason"], "schedule closes the pool");
    // The same stage is not told twice; the last minute is.
    clock.set_ms(ms("2026-12-14T15:55:00Z"));
    app.state.pools.enforce_policies().await.unwrap();
    clock.set_ms(ms("2026-12-14T15:59:30Z"));
    app.state.pools.enforce_policies().await.unwrap();
    let last = machine_event(&mut admin).await;
    assert_eq!(
        (&last["status"], &last["ends_in"]),
        (&json!("ENDING"), &json!(30)),
        "{last}"
    );

    clock.set_ms(ms("2026-12-14T16:00:00Z"));
    app.state.pools.enforce_policies().await.unwrap();
    let released = machine_event(&mut admin).await;
    assert_eq!(released["status"], "RELEASED", "{released}");
    assert_eq!(released["pool_id"], POOL_WIN_1);
    assert_eq!(released["reason"], "schedule closes the pool");
    let admin_id = user_id(&app, "astravdi");
    assert!(!holds(&app, admin_id, POOL_WIN_1.parse().unwrap()).await);
    // end_action = "keep": still held, but a new request is refused.
    assert!(holds(&app, admin_id, POOL_ASTRA_2.parse().unwrap()).await);
    let refused = admin
        .rpc("pool_request", json!({"pool_id": POOL_WIN_1}))
        .await;
    assert_eq!(err(&refused), (403, 820));
    // Asking again for the desktop still held answers with it.
    let again = admin
        .rpc("pool_request", json!({"pool_id": POOL_ASTRA_2}))
        .await;
    assert_eq!(again["args"]["task"]["status"], "COMPLETED", "{again}");
}

/// `allow_from`: from elsewhere the pool is listed unavailable (`network`), step 1 and step
/// 2 are refused with 403 / 821; from inside it works.
pub async fn a_pool_is_refused_from_outside_allow_from(state: &str) {
    let mut c = config(state);
    // A bare address is a network of one (as the config may write it).
    pool_mut(&mut c, "pool-win-1").allow_from =
        vec![poolgate::domain::address::network("127.0.0.2").unwrap()];
    let app = TestApp::spawn_config(c).await;

    let mut outside = app.connect_from([127, 0, 0, 1]).await;
    outside.auth("astravdi", PASSWORD).await;
    let pools = outside.rpc("pools", json!({})).await;
    let win1 = listed(&pools, "pool-win-1");
    assert_eq!(
        (&win1["available"], &win1["unavailable"]),
        (&json!(false), &json!("network")),
        "{win1}"
    );
    assert!(win1.get("opens_at").is_none());
    let refused = outside
        .rpc("pool_request", json!({"pool_id": POOL_WIN_1}))
        .await;
    assert_eq!(err(&refused), (403, 821));

    let mut inside = app.connect_from([127, 0, 0, 2]).await;
    inside.auth("astravdi", PASSWORD).await;
    assert_eq!(
        listed(&inside.rpc("pools", json!({})).await, "pool-win-1")["available"],
        true
    );
    desktop(&app, &mut inside, "astravdi", POOL_WIN_1).await;
    // The connection data is not handed out from outside either.
    let step2 = outside
        .rpc("connect_info", json!({"pool_id": POOL_WIN_1}))
        .await;
    assert_eq!(err(&step2), (403, 821));
    let step2 = inside
        .rpc("connect_info", json!({"pool_id": POOL_WIN_1}))
        .await;
    assert_eq!(step2["name"], "response", "{step2}");
    // Nor the launcher file, which holds the same data.
    let launcher = outside
        .rpc("launcher", json!({"pool_id": POOL_WIN_1}))
        .await;
    assert_eq!(err(&launcher), (403, 821));
}

/// `max_session`: the desktop is warned `warn_before` its end and given back at it.
pub async fn max_session_warns_and_releases_a_desktop(state: &str) {
    let mut c = config(state);
    let win1 = pool_mut(&mut c, "pool-win-1");
    win1.max_session = Some(Duration::from_secs(3600));
    win1.warn_before = Duration::from_secs(300);
    // Past what milliseconds since 1970 can count: never, not a wrapped few ms.
    pool_mut(&mut c, "pool-win-2").max_session = Some(Duration::from_secs(u64::MAX / 1000));
    let app = TestApp::spawn_config(c).await;
    let clock = &app.state.audit.clock;
    let t0 = ms(MONDAY_15);
    clock.set_ms(t0);
    let (mut admin, _) = app.login("astravdi").await;
    desktop(&app, &mut admin, "astravdi", POOL_WIN_1).await;
    desktop(&app, &mut admin, "astravdi", POOL_WIN_2).await;

    clock.set_ms(t0 + 3_299_000);
    app.state.pools.enforce_policies().await.unwrap();
    clock.set_ms(t0 + 3_300_000);
    app.state.pools.enforce_policies().await.unwrap();
    let warning = machine_event(&mut admin).await;
    assert_eq!(
        (&warning["status"], &warning["ends_in"], &warning["reason"]),
        (&json!("ENDING"), &json!(300), &json!("max_session reached")),
        "{warning}"
    );
    clock.set_ms(t0 + 3_600_000);
    app.state.pools.enforce_policies().await.unwrap();
    // 60 s before the end came between: skip to the release.
    let mut event = machine_event(&mut admin).await;
    if event["status"] == "ENDING" {
        event = machine_event(&mut admin).await;
    }
    assert_eq!(
        (&event["status"], &event["reason"]),
        (&json!("RELEASED"), &json!("max_session reached")),
        "{event}"
    );
    // A new request starts a new session.
    desktop(&app, &mut admin, "astravdi", POOL_WIN_1).await;
    assert!(
        holds(&app, user_id(&app, "astravdi"), POOL_WIN_2.parse().unwrap()).await,
        "an unbounded max_session never ends"
    );
}

/// `idle_release`: a desktop whose user has no socket for that long is given back; one whose
/// user keeps a socket stays.
pub async fn idle_release_gives_back_the_desktop_of_a_user_without_a_socket(state: &str) {
    let mut c = config(state);
    add_carol(&mut c);
    pool_mut(&mut c, "pool-win-1").idle_release = Some(Duration::from_secs(600));
    let app = TestApp::spawn_config(c).await;
    let clock = &app.state.audit.clock;
    // After the wall clock's now: the background round at start-up read that (the
    // policies count nobody idle since before their first round).
    let t0 = poolgate::store::now_ms() + 86_400_000;
    clock.set_ms(t0);
    let (mut admin, _) = app.login("astravdi").await;
    let (mut carol, _) = app.login("carol").await;
    desktop(&app, &mut admin, "astravdi", POOL_WIN_1).await;
    desktop(&app, &mut carol, "carol", POOL_WIN_1).await;
    app.state.pools.enforce_policies().await.unwrap();

    // Carol goes away 300 s later: idle_release counts from then.
    clock.set_ms(t0 + 300_000);
    app.state.pools.enforce_policies().await.unwrap();
    drop(carol);
    let carol_id = user_id(&app, "carol");
    for _ in 0..200 {
        if !app.state.events.has_sockets(carol_id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!app.state.events.has_sockets(carol_id));
    let win1: Uuid = POOL_WIN_1.parse().unwrap();
    clock.set_ms(t0 + 899_000);
    app.state.pools.enforce_policies().await.unwrap();
    assert!(holds(&app, carol_id, win1).await);
    clock.set_ms(t0 + 901_000);
    app.state.pools.enforce_policies().await.unwrap();
    assert!(
        !holds(&app, carol_id, win1).await,
        "carol's desktop is given back"
    );
    assert!(
        holds(&app, user_id(&app, "astravdi"), win1).await,
        "astravdi kept a socket"
    );
}

/// `max_desktops_per_user`: past it a new desktop anywhere is refused (403 / 822), while
/// asking again for one held still answers; giving one back makes room.
pub async fn max_desktops_per_user_counts_desktops_across_pools(state: &str) {
    let mut c = config(state);
    c.max_desktops_per_user = Some(1);
    let app = TestApp::spawn_config(c).await;
    let (mut admin, _) = app.login("astravdi").await;
    desktop(&app, &mut admin, "astravdi", POOL_WIN_1).await;
    let refused = admin
        .rpc("pool_request", json!({"pool_id": POOL_WIN_2}))
        .await;
    assert_eq!(err(&refused), (403, 822));
    // Sixty newer tasks of the user's (ended step 2s here) do not hide the desktop held.
    let admin_id = user_id(&app, "astravdi");
    let win1: Uuid = POOL_WIN_1.parse().unwrap();
    let store = &app.state.store;
    let key = (admin_id, win1, poolgate::domain::TaskKind::GlintStart);
    for _ in 0..60 {
        let latest = store.task_latest(key).await.unwrap().map(|t| t.id);
        let mut task = poolgate::domain::Task::new(key.2, admin_id, win1);
        task.finish(poolgate::domain::TaskStatus::Failed, None);
        assert!(store.task_create(latest, &task).await.unwrap());
    }
    let refused = admin
        .rpc("pool_request", json!({"pool_id": POOL_WIN_2}))
        .await;
    assert_eq!(err(&refused), (403, 822));
    assert!(
        refused["args"]["message"]
            .as_str()
            .unwrap()
            .contains("the most desktops allowed (1)"),
        "{refused}"
    );
    let again = admin
        .rpc("pool_request", json!({"pool_id": POOL_WIN_1}))
        .await;
    assert_eq!(again["args"]["task"]["status"], "COMPLETED", "{again}");
    app.state
        .pools
        .release(
            user_id(&app, "astravdi"),
            POOL_WIN_1.parse().unwrap(),
            "released by test",
        )
        .await
        .unwrap();
    desktop(&app, &mut admin, "astravdi", POOL_WIN_2).await;
}

/// A static inventory of four machines for `balance` cases; `m4` drains.
fn static_inventory(c: &mut Config, name: &str, balance: &str) {
    let inventory: poolgate::provision::ProvisionerConfig = toml::from_str(
        r#"kind = "static"
machines = [
  { verbose_name = "m1", host = "127.0.0.1", port = 1, priority = 1 },
  { verbose_name = "m2", host = "127.0.0.1", port = 2, priority = 10 },
  { verbose_name = "m3", host = "127.0.0.1", port = 3, priority = 5 },
  { verbose_name = "m4", host = "127.0.0.1", port = 4, priority = 100, drain = true },
]"#,
    )
    .unwrap();
    c.provisioners.insert(name.into(), inventory);
    let pool = pool_mut(c, "pool-win-1");
    pool.provisioner = name.into();
    pool.balance = toml::Value::String(balance.into()).try_into().unwrap();
}

/// Step 1 for `user`, then give the machine back and wait until the inventory has it back
/// (the provisioner's release runs in the background); the machine's name. Only while
/// nobody else holds one of the inventory's machines.
async fn take_and_give_back(app: &TestApp, c: &mut Client, user: &str) -> String {
    let name = desktop(app, c, user, POOL_WIN_1).await;
    app.state
        .pools
        .release(
            user_id(app, user),
            POOL_WIN_1.parse().unwrap(),
            "released by test",
        )
        .await
        .unwrap();
    let inventory = &app.state.config.pools[0].provisioner;
    for _ in 0..500 {
        if app
            .state
            .store
            .machines_claimed(inventory)
            .await
            .unwrap()
            .is_empty()
        {
            return name;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{name} was not given back to {inventory}");
}

/// The demo with carol on pool-win-1, served by a static inventory balanced as `balance`,
/// and astravdi's and carol's sockets.
async fn balanced_app(state: &str, inventory: &str, balance: &str) -> (TestApp, Client, Client) {
    let mut c = config(state);
    add_carol(&mut c);
    static_inventory(&mut c, inventory, balance);
    let app = TestApp::spawn_config(c).await;
    let (admin, _) = app.login("astravdi").await;
    let (carol, _) = app.login("carol").await;
    (app, admin, carol)
}

/// `balance`: `priority` takes the highest free machine, `least_used` the one handed out
/// least, `round_robin` the next in turn; a draining machine is never handed out; a user gets
/// the machine they had last when it is free (affinity).
pub async fn a_static_pool_balances_drains_and_gives_a_user_their_last_machine(state: &str) {
    // priority: m4 (100) drains, so m2 (10), then m3 (5) while m2 is held.
    let (app, mut admin, mut carol) = balanced_app(state, "inv-priority", "priority").await;
    assert_eq!(
        desktop(&app, &mut admin, "astravdi", POOL_WIN_1).await,
        "m2"
    );
    assert_eq!(desktop(&app, &mut carol, "carol", POOL_WIN_1).await, "m3");
    drop(app);

    // least_used, and affinity over it.
    let (app, mut admin, mut carol) = balanced_app(state, "inv-least", "least_used").await;
    assert_eq!(take_and_give_back(&app, &mut admin, "astravdi").await, "m1");
    assert_eq!(take_and_give_back(&app, &mut carol, "carol").await, "m2");
    // Carol's last machine is m2 (used once, as m1): hers again, not the unused m3.
    assert_eq!(take_and_give_back(&app, &mut carol, "carol").await, "m2");
    // astravdi had m1: free, so m1 again although m3 is used least.
    assert_eq!(
        desktop(&app, &mut admin, "astravdi", POOL_WIN_1).await,
        "m1"
    );
    // Carol's m2 is free, astravdi holds m1: m2 for her.
    assert_eq!(desktop(&app, &mut carol, "carol", POOL_WIN_1).await, "m2");
    drop(app);

    // round_robin: each hand-out starts after the last one's place; m4 drains.
    let (app, mut admin, mut carol) = balanced_app(state, "inv-rr", "round_robin").await;
    let (mut user2, _) = app.login("user-2").await;
    assert_eq!(take_and_give_back(&app, &mut admin, "astravdi").await, "m1");
    // m1 is free, but it is m2's turn, then m3's.
    assert_eq!(take_and_give_back(&app, &mut carol, "carol").await, "m2");
    assert_eq!(take_and_give_back(&app, &mut user2, "user-2").await, "m3");
    // m4's turn: it drains, so the turn goes round to m1 — and carol's own m2 comes first.
    assert_eq!(desktop(&app, &mut carol, "carol", POOL_WIN_1).await, "m2");
    assert_eq!(
        desktop(&app, &mut admin, "astravdi", POOL_WIN_1).await,
        "m1"
    );
    assert_eq!(desktop(&app, &mut user2, "user-2", POOL_WIN_1).await, "m3");
}

/// `idle_release` across instances (a shared store): a user whose only socket is on another
/// instance is present; once it is gone too, the desktop is given back after `idle_release`.
/// Both instances' clocks are moved together; each runs the round (one of them does it).
pub async fn idle_release_counts_a_socket_on_another_instance(state: &str) {
    let mut c = config(state);
    pool_mut(&mut c, "pool-win-1").idle_release = Some(Duration::from_secs(600));
    // Instances sharing a store share the JWT key.
    c.jwt_secret = Some(poolgate::config::SecretString("k".repeat(40)));
    let mut other = c.clone();
    other.data_dir = c.data_dir.with_extension("b");
    let a = TestApp::spawn_config(c).await;
    let b = TestApp::spawn_config(other).await;
    let set = |at: u64| {
        a.state.audit.clock.set_ms(at);
        b.state.audit.clock.set_ms(at);
    };
    let round = || async {
        a.state.pools.enforce_policies().await.unwrap();
        b.state.pools.enforce_policies().await.unwrap();
    };
    let gone = |app: &TestApp| {
        let events = app.state.events.clone();
        let id = user_id(app, "astravdi");
        async move {
            for _ in 0..200 {
                if !events.has_sockets(id) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the socket is still registered");
        }
    };
    let t0 = poolgate::store::now_ms() + 86_400_000;
    set(t0);
    let (mut on_a, _) = a.login("astravdi").await;
    let (on_b, _) = b.login("astravdi").await;
    desktop(&a, &mut on_a, "astravdi", POOL_WIN_1).await;
    round().await;
    drop(on_a);
    gone(&a).await;

    let held = || holds(&a, user_id(&a, "astravdi"), POOL_WIN_1.parse().unwrap());
    // B tells the store the user is there; 700 s on, the desktop stays.
    set(t0 + 300_000);
    b.state.pools.mark_presence().await.unwrap();
    set(t0 + 700_000);
    b.state.pools.mark_presence().await.unwrap();
    round().await;
    assert!(held().await, "a socket on the other instance counts");
    // The last socket goes: 600 s after it was last seen — plus the 15 s between two marks,
    // as the instance that is not B cannot tell when in them it went — the desktop is given
    // back.
    drop(on_b);
    gone(&b).await;
    set(t0 + 1_314_000);
    round().await;
    assert!(held().await);
    set(t0 + 1_316_000);
    round().await;
    assert!(!held().await, "idle for idle_release on every instance");
}
