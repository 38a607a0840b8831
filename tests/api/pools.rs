//! Pools, the two connect steps, deadlines and pushed task events, over real sockets.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

async fn fast_app(expand: (f64, f64, f64), connect: (f64, f64, f64)) -> TestApp {
    TestApp::spawn_with(|c| fast_sim(c, expand, connect)).await
}

#[tokio::test]
async fn pools_lists_only_the_callers_pools_and_filters_favourites() {
    let app = fast_app(OK, OK).await;
    let (mut admin, _) = app.login("astravdi").await;
    let all = admin.rpc("pools", json!({})).await;
    assert_eq!(all["args"].as_array().unwrap().len(), 4);
    let first = &all["args"][0];
    assert_eq!(first["id"], POOL_WIN_1);
    assert_eq!(first["name"], "pool-win-1");
    assert_eq!(first["status"], "ACTIVE");
    assert_eq!(first["is_favorite"], true);
    assert_eq!(first["pool_type"], "AUTOMATED");
    assert_eq!(first["os_type"], "Windows");
    assert_eq!(first["connection_types"], json!(["RDP", "NATIVE_RDP"]));
    let fav = admin.rpc("pools", json!({"is_favorite": true})).await;
    assert_eq!(fav["args"].as_array().unwrap().len(), 1);
    let (mut user2, _) = app.login("user-2").await;
    let names: Vec<Value> = user2.rpc("pools", json!(null)).await["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("pool-win-1"), json!("pool-astra-2")]);
    // Replies are rendered once per user and flag: asked again, in between each other, every
    // caller still gets their own.
    for _ in 0..2 {
        assert_eq!(admin.rpc("pools", json!({})).await["args"], all["args"]);
        assert_eq!(
            admin.rpc("pools", json!({"is_favorite": true})).await["args"],
            fav["args"]
        );
        let theirs = user2.rpc("pools", json!({})).await;
        assert_eq!(theirs["args"].as_array().unwrap().len(), 2);
        let favourites = user2.rpc("pools", json!({"is_favorite": true})).await;
        assert_eq!(
            favourites["args"].as_array().unwrap().len(),
            1,
            "{favourites}"
        );
    }
    assert_eq!(
        error_code(&user2.rpc("pools", json!({"is_favorite": "yes"})).await),
        400
    );
}

#[tokio::test]
async fn both_steps_end_to_end_with_events_in_order() {
    let app = fast_app(OK, OK).await;
    let (mut c, _) = app.login("astravdi").await;

    let reply = c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await;
    let task = &reply["args"]["task"];
    assert_eq!(task["status"], "PENDING", "{reply}");
    assert_eq!(task["kind"], "POOL_EXPAND");
    assert_eq!(task["pool_id"], POOL_WIN_1);
    assert!(task["created"].as_str().unwrap().ends_with('Z'));
    assert!(task["started"].is_null() && task["finished"].is_null());
    let id = task["id"].clone();
    let (seen, done) = c.follow(&id).await;
    assert_eq!(seen, ["RUNNING", "COMPLETED"]);
    assert!(done["started"].is_string() && done["finished"].is_string());
    assert_eq!(done["progress"], 100);

    // Asking again returns the same, finished task: the user has a machine.
    let again = c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await;
    assert_eq!(again["args"]["task"]["id"], id);
    assert_eq!(again["args"]["task"]["status"], "COMPLETED");

    // Step 2.
    let reply = c
        .rpc(
            "connect_info",
            json!({"pool_id": POOL_WIN_1, "remote_protocol": 1, "width": 1920, "height": 1080, "password": "x"}),
        )
        .await;
    let task = &reply["args"]["task"];
    assert_eq!(task["status"], "PENDING", "{reply}");
    assert_eq!(task["kind"], "GLINT_START");
    let (seen, _) = c.follow(&task["id"].clone()).await;
    assert_eq!(seen, ["RUNNING", "COMPLETED"]);
    let reply = c.rpc("connect_info", json!({"pool_id": POOL_WIN_1})).await;
    let conn = &reply["args"]["connection"];
    for field in [
        "id",
        "verbose_name",
        "permissions",
        "host",
        "port",
        "status",
        "protocol_id",
    ] {
        assert!(!conn[field].is_null(), "connection lacks {field}: {reply}");
    }
    assert_eq!(conn["protocol_id"], 1);
}

#[tokio::test]
async fn a_repeated_request_returns_the_running_task_and_concurrent_ones_share_it() {
    let app = fast_app(OK, OK).await;
    let (mut a, token) = app.login("astravdi").await;
    let mut others = Vec::new();
    for _ in 0..8 {
        let mut c = app.connect().await;
        assert_eq!(
            c.rpc("auth_token", json!({"token": token})).await["name"],
            "response"
        );
        others.push(c);
    }
    let mut handles = Vec::new();
    for mut c in others {
        handles.push(tokio::spawn(async move {
            c.rpc("pool_request", json!({"pool_id": POOL_WIN_2})).await["args"]["task"]["id"]
                .clone()
        }));
    }
    let mut ids = HashSet::new();
    for h in handles {
        ids.insert(h.await.unwrap().to_string());
    }
    let again = a.rpc("pool_request", json!({"pool_id": POOL_WIN_2})).await;
    ids.insert(again["args"]["task"]["id"].to_string());
    assert_eq!(ids.len(), 1, "one task for one (user, pool): {ids:?}");
}

#[tokio::test]
async fn tasks_are_keyed_per_pool_not_per_user() {
    let app = fast_app(OK, OK).await;
    let (mut c, _) = app.login("astravdi").await;
    let a = c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await;
    let b = c.rpc("pool_request", json!({"pool_id": POOL_WIN_2})).await;
    assert_ne!(a["args"]["task"]["id"], b["args"]["task"]["id"]);
    assert_eq!(b["args"]["task"]["pool_id"], POOL_WIN_2);
}

#[tokio::test]
async fn a_cancelled_step_1_is_replaced_by_a_new_task() {
    let app = fast_app(CANCEL, OK).await;
    let (mut c, _) = app.login("astravdi").await;
    let first =
        c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    let (seen, done) = c.follow(&first).await;
    assert_eq!(seen.last().unwrap(), "CANCELLED");
    assert!(done["error"]["message"].is_string());
    let second = c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await;
    assert_ne!(second["args"]["task"]["id"], first);
    assert_eq!(second["args"]["task"]["status"], "PENDING");
}

#[tokio::test]
async fn a_failed_step_1_makes_the_pool_refuse_with_800() {
    let app = fast_app(OK, OK).await;
    let (mut c, _) = app.login("user-2").await;
    let id =
        c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    let (seen, done) = c.follow(&id).await;
    assert_eq!(seen.last().unwrap(), "FAILED");
    assert!(done["error"]["err_code"].is_u64());
    let reply = c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await;
    assert_eq!(error_code(&reply), 403);
    assert_eq!(reply["args"]["err_code"], 800);
    assert_eq!(reply["args"]["message"], "Pool cannot be expanded.");
    // And when it may be asked again: the rest of failed_step_retry (60 s by default), in
    // whole seconds, also said in words.
    let secs = reply["args"]["retry_after"]
        .as_u64()
        .unwrap_or_else(|| panic!("no retry_after: {reply}"));
    assert!((55..=60).contains(&secs), "{reply}");
    assert_eq!(
        reply["args"]["detail"],
        format!(
            "The last request for a machine here failed; the pool can be asked again in {secs} s."
        )
    );
}

/// `retry_after` counts down the window, and never says 0 while the pool still refuses.
#[tokio::test]
async fn the_800_says_how_long_the_failure_still_holds_the_pool_back() {
    let app = TestApp::spawn_with(|c| {
        fast_sim(c, OK, OK);
        c.failed_step_retry = Duration::from_secs(4);
    })
    .await;
    let (mut c, _) = app.login("user-2").await;
    let id =
        c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    assert_eq!(c.follow(&id).await.0.last().unwrap(), "FAILED");
    let first = c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await;
    let first = first["args"]["retry_after"].as_u64().expect("retry_after");
    assert!((3..=4).contains(&first), "{first}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let reply = c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await;
    assert_eq!(reply["args"]["err_code"], 800, "{reply}");
    let later = reply["args"]["retry_after"].as_u64().expect("retry_after");
    assert!((1..=2).contains(&later), "{first} then {later}");
}

#[tokio::test]
async fn a_failed_step_1_is_refused_only_within_failed_step_retry_then_a_new_task_starts() {
    let app = TestApp::spawn_with(|c| {
        fast_sim(c, OK, OK);
        c.failed_step_retry = Duration::from_millis(600);
    })
    .await;
    let (mut c, _) = app.login("user-2").await;
    let first =
        c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    assert_eq!(c.follow(&first).await.0.last().unwrap(), "FAILED");
    let reply = c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await;
    assert_eq!(error_code(&reply), 403, "within the window: {reply}");
    assert_eq!(reply["args"]["err_code"], 800);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let reply = c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await;
    assert_eq!(reply["name"], "response", "after the window: {reply}");
    let second = reply["args"]["task"]["id"].clone();
    assert_ne!(second, first, "a new task");
    assert_eq!(reply["args"]["task"]["status"], "PENDING");
    // user-2 fails by design: the new failure holds the pool back again, for a new window.
    assert_eq!(c.follow(&second).await.0.last().unwrap(), "FAILED");
    let reply = c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await;
    assert_eq!(error_code(&reply), 403);
}

#[tokio::test]
async fn the_demo_seeded_failed_task_answers_the_mocks_800_within_the_window_only() {
    // The embedded demo dataset, seed tasks included.
    let app = TestApp::spawn().await;
    let (mut c, _) = app.login("user-2").await;
    let reply = c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await;
    assert_eq!(error_code(&reply), 403, "{reply}");
    assert_eq!(reply["args"]["err_code"], 800);
    drop(c);
    drop(app);

    let app = TestApp::spawn_with(|c| c.failed_step_retry = Duration::from_millis(300)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (mut c, _) = app.login("user-2").await;
    let reply = c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await;
    assert_eq!(
        reply["name"], "response",
        "the seeded failure has passed: {reply}"
    );
    assert_ne!(
        reply["args"]["task"]["id"],
        "22aaa425-6387-4767-9611-3c26ad1a6161"
    );
}

#[tokio::test]
async fn pools_not_assigned_unknown_or_malformed_are_refused() {
    let app = fast_app(OK, OK).await;
    let (mut c, _) = app.login("user-2").await;
    for pool in [POOL_WIN_2, "00000000-0000-4000-8000-000000000000"] {
        for method in ["pool_request", "connect_info"] {
            let reply = c.rpc(method, json!({"pool_id": pool})).await;
            assert_eq!(error_code(&reply), 403, "{method} {pool}");
            assert_eq!(reply["args"]["err_code"], 900);
            assert_eq!(reply["args"]["message"], "Insufficient permissions.");
        }
    }
    for bad in [json!({"pool_id": "nope"}), json!({}), json!({"pool_id": 5})] {
        assert_eq!(error_code(&c.rpc("pool_request", bad).await), 400);
    }
}

#[tokio::test]
async fn step_2_needs_a_machine_and_valid_screen_arguments() {
    let app = fast_app(OK, OK).await;
    let (mut c, _) = app.login("astravdi").await;
    let reply = c.rpc("connect_info", json!({"pool_id": POOL_WIN_1})).await;
    assert_eq!(error_code(&reply), 409);
    assert_eq!(reply["args"]["err_code"], 801);
    assert_eq!(
        reply["args"]["message"],
        "No eligible machine found for user connection."
    );

    let id =
        c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    c.follow(&id).await;
    for bad in [
        json!({"pool_id": POOL_WIN_1, "remote_protocol": 2}),
        json!({"pool_id": POOL_WIN_1, "width": 1, "height": 600}),
        json!({"pool_id": POOL_WIN_1, "width": 800, "height": 0}),
    ] {
        assert_eq!(
            error_code(&c.rpc("connect_info", bad.clone()).await),
            422,
            "{bad}"
        );
    }
    assert_eq!(
        error_code(
            &c.rpc(
                "connect_info",
                json!({"pool_id": POOL_WIN_1, "width": "wide"})
            )
            .await
        ),
        400
    );
}

#[tokio::test]
async fn a_failed_or_cancelled_step_2_is_replaced_by_a_new_task() {
    for outcome in [FAIL, CANCEL] {
        let app = fast_app(OK, outcome).await;
        let (mut c, _) = app.login("astravdi").await;
        let id = c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"]
            .clone();
        c.follow(&id).await;
        let first =
            c.rpc("connect_info", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"]
                .clone();
        let (seen, _) = c.follow(&first).await;
        assert!(["FAILED", "CANCELLED"].contains(&seen.last().unwrap().as_str()));
        let second = c.rpc("connect_info", json!({"pool_id": POOL_WIN_1})).await;
        assert_ne!(second["args"]["task"]["id"], first);
    }
}

#[tokio::test]
async fn a_task_that_overruns_its_deadline_is_cancelled_and_says_so() {
    let app = TestApp::spawn_with(|c| {
        fast_sim(c, OK, OK);
        c.task_deadline = Duration::from_millis(300);
        let slow: toml::Value =
            toml::from_str("kind = \"simulated\"\npending = 0.05\nrunning = [30, 30]").unwrap();
        c.provisioners
            .insert("simulated".into(), slow.try_into().unwrap());
    })
    .await;
    let (mut c, _) = app.login("astravdi").await;
    let id =
        c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    let started = std::time::Instant::now();
    let (seen, done) = c.follow(&id).await;
    assert_eq!(seen, ["RUNNING", "CANCELLED"]);
    assert!(
        done["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not finish within")
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // Cancelled restarts.
    let next = c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await;
    assert_ne!(next["args"]["task"]["id"], id);
}

#[tokio::test]
async fn another_users_task_is_404_and_tasks_lists_only_mine() {
    let app = fast_app(OK, OK).await;
    let (mut a, _) = app.login("astravdi").await;
    let (mut b, _) = app.login("user-2").await;
    let id =
        a.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    assert_eq!(
        a.rpc("task", json!({"task_id": id})).await["args"]["id"],
        id
    );
    assert_eq!(
        error_code(&b.rpc("task", json!({"task_id": id})).await),
        404
    );
    assert_eq!(
        error_code(&b.rpc("task", json!({"task_id": "x"})).await),
        400
    );
    let mine = a.rpc("tasks", json!({})).await;
    assert_eq!(mine["args"].as_array().unwrap().len(), 1);
    let theirs = b.rpc("tasks", json!({})).await;
    assert!(
        theirs["args"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["id"] != id)
    );
}

#[tokio::test]
async fn events_reach_every_socket_of_the_user_and_nobody_else() {
    let app = fast_app(OK, OK).await;
    let (mut a, token) = app.login("astravdi").await;
    let mut a2 = app.connect().await;
    a2.rpc("auth_token", json!({"token": token})).await;
    let mut muted = app.connect().await;
    muted.rpc("auth_token", json!({"token": token})).await;
    muted.call("events", "unsubscribe", json!("task")).await;
    let (mut other, _) = app.login("user-2").await;

    let id =
        a.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    let (seen, _) = a2.follow(&id).await;
    assert_eq!(seen, ["RUNNING", "COMPLETED"]);
    a.follow(&id).await;
    // The muted socket and the other user got nothing: their next frame is their own reply.
    for c in [&mut muted, &mut other] {
        c.send_text(json!({"namespace":"rpc","name":"identify","id":"probe"}).to_string())
            .await;
        assert_eq!(c.recv().await["id"], "probe");
    }
}

#[tokio::test]
async fn signing_in_pushes_the_users_active_tasks_after_the_reply() {
    let app = TestApp::spawn_with(|c| {
        fast_sim(c, OK, OK);
        let slow: toml::Value =
            toml::from_str("kind = \"simulated\"\npending = 0.05\nrunning = [2, 2]").unwrap();
        c.provisioners
            .insert("simulated".into(), slow.try_into().unwrap());
    })
    .await;
    let (mut a, token) = app.login("astravdi").await;
    let id =
        a.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    let mut b = app.connect().await;
    b.send_text(
        json!({"namespace":"rpc","name":"auth_token","id":"x","args":{"token": token}}).to_string(),
    )
    .await;
    assert_eq!(b.recv().await["id"], "x", "the reply comes first");
    let event = b.next_event().await;
    assert_eq!(event["id"], id);
    assert!(["PENDING", "RUNNING"].contains(&event["status"].as_str().unwrap()));
}

#[tokio::test]
async fn a_signed_out_socket_gets_no_more_events() {
    let app = fast_app(OK, OK).await;
    let (mut a, token) = app.login("astravdi").await;
    let mut b = app.connect().await;
    b.rpc("auth_token", json!({"token": token})).await;
    b.rpc("auth_clear", json!({})).await;
    let (mut c, _) = app.login("astravdi").await;
    let id = c
        .rpc("pool_request", json!({"pool_id": POOL_ASTRA_2}))
        .await["args"]["task"]["id"]
        .clone();
    c.follow(&id).await;
    // `a` shared the revoked token: it is signed out too and must not see the task.
    for s in [&mut a, &mut b] {
        s.send_text(json!({"namespace":"rpc","name":"identify","id":"probe"}).to_string())
            .await;
        assert_eq!(s.recv().await["id"], "probe");
    }
}

#[tokio::test]
async fn a_socket_that_cannot_keep_up_is_closed_with_a_reason_not_skipped() {
    let app = fast_app(OK, OK).await;
    let (mut slow, _) = app.login("astravdi").await;
    let (mut other, _) = app.login("user-2").await;
    let user = app.state.auth.users.by_name("astravdi").unwrap().id;
    let task = poolgate::domain::Task::new(
        poolgate::domain::TaskKind::PoolExpand,
        user,
        POOL_WIN_1.parse().unwrap(),
    );
    // This test runs on one thread: the socket's writer cannot run between these calls, so
    // its queue (256 frames) overflows exactly as it would behind a client that stopped reading.
    for _ in 0..1000 {
        app.state.events.publish(&task, true);
    }
    let (code, reason) = slow.expect_close(REPLY_TIMEOUT).await;
    assert_eq!(code, 4002);
    assert!(reason.contains("too slow"), "{reason}");
    // Nobody else was affected.
    assert_eq!(other.rpc("identify", json!({})).await["name"], "response");
}

/// Sends `identify` and returns every frame up to its reply (events pushed before it).
async fn frames_until_identify(c: &mut Client) -> Vec<Value> {
    c.send_text(r#"{"namespace":"rpc","name":"identify","id":"marker","args":{}}"#)
        .await;
    let mut frames = Vec::new();
    loop {
        let frame = c.recv().await;
        if frame["id"] == "marker" {
            return frames;
        }
        frames.push(frame);
    }
}

#[tokio::test]
async fn every_event_the_server_pushes_can_be_unsubscribed_and_subscribed_again() {
    let app = fast_app(OK, OK).await;
    let (mut c, _) = app.login("astravdi").await;
    let release = json!({"username": "astravdi", "pool_id": POOL_WIN_1});

    // Off: a release pushes nothing to this socket.
    let reply = c.call("events", "unsubscribe", json!("machine")).await;
    assert_eq!(reply["args"], json!({"unsubscribe": "machine"}), "{reply}");
    let id =
        c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    c.follow(&id).await;
    let reply = c.rpc("admin_release", release.clone()).await;
    assert!(reply["args"]["released"].is_object(), "{reply}");
    let pushed = frames_until_identify(&mut c).await;
    assert!(
        pushed.iter().all(|f| f["name"] != "machine"),
        "unsubscribed: {pushed:?}"
    );

    // On again, together with task: the release is pushed.
    let reply = c
        .call("events", "subscribe", json!(["task", "machine"]))
        .await;
    assert_eq!(reply["args"], json!({"subscribe": ["task", "machine"]}));
    let id =
        c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    c.follow(&id).await;
    c.rpc("admin_release", release.clone()).await;
    let pushed = frames_until_identify(&mut c).await;
    let machine = pushed
        .iter()
        .find(|f| f["name"] == "machine")
        .unwrap_or_else(|| panic!("subscribed: {pushed:?}"));
    assert_eq!(machine["namespace"], "events");
    assert_eq!(machine["args"]["status"], "RELEASED");

    // Task events off leaves machine events on, and the other way round.
    c.call("events", "unsubscribe", json!("task")).await;
    c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pushed = frames_until_identify(&mut c).await;
    assert!(pushed.iter().all(|f| f["name"] != "task"), "{pushed:?}");

    // Every name the server pushes is accepted (and the docs list them all).
    let docs = include_str!("../../protocol/README.md");
    for event in poolgate::events::EventName::ALL {
        let name = event.as_str();
        for method in ["subscribe", "unsubscribe"] {
            let reply = c.call("events", method, json!(name)).await;
            assert_eq!(reply["name"], "response", "{method} {name}: {reply}");
        }
        assert!(
            docs.contains(&format!("`{name}`")),
            "protocol/README.md names the {name} event"
        );
    }
}

#[tokio::test]
async fn the_launcher_is_the_finished_step_2s_file_and_nothing_before_it() {
    let app = fast_app(OK, OK).await;
    let (mut c, _) = app.login("astravdi").await;
    let reply = c.rpc("launcher", json!({"pool_id": POOL_WIN_1})).await;
    assert_eq!(
        (error_code(&reply), &reply["args"]["err_code"]),
        (409, &json!(801))
    );

    let id =
        c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    c.follow(&id).await;
    let reply = c.rpc("launcher", json!({"pool_id": POOL_WIN_1})).await;
    assert_eq!(error_code(&reply), 404, "no file before step 2: {reply}");
    let tasks = c.rpc("tasks", json!({})).await["args"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(tasks, 1, "asking for the file started nothing");

    let step2 =
        c.rpc("connect_info", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    c.follow(&step2).await;
    let conn =
        c.rpc("connect_info", json!({"pool_id": POOL_WIN_1})).await["args"]["connection"].clone();
    let file = c.rpc("launcher", json!({"pool_id": POOL_WIN_1})).await["args"].clone();
    assert_eq!(file["filename"], "pool-win-1.rdp");
    assert_eq!(file["content_type"], "application/x-rdp");
    let first_line = format!(
        "full address:s:{}:{}\r\n",
        conn["host"].as_str().unwrap(),
        conn["port"]
    );
    assert!(
        file["content"].as_str().unwrap().starts_with(&first_line),
        "{file}"
    );

    // Not another user's pool, and not once the machine is given back.
    let (mut other, _) = app.login("user-2").await;
    let reply = other.rpc("launcher", json!({"pool_id": POOL_WIN_2})).await;
    assert_eq!(error_code(&reply), 403);
    let released = c
        .rpc(
            "admin_release",
            json!({"username": "astravdi", "pool_id": POOL_WIN_1}),
        )
        .await;
    assert!(released["args"]["released"].is_object(), "{released}");
    assert_eq!(
        error_code(&c.rpc("launcher", json!({"pool_id": POOL_WIN_1})).await),
        409
    );
}
