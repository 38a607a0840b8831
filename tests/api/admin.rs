//! Admin RPCs: the role check, and what each does.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn admin_methods_need_the_admin_role() {
    let app = TestApp::spawn().await;
    let (mut user, _) = app.login("user-2").await;
    for (name, args) in [
        ("admin_sessions", json!({})),
        ("admin_revoke", json!({"username": "astravdi"})),
        ("admin_tasks", json!({})),
        (
            "admin_release",
            json!({"username": "astravdi", "pool_id": POOL_WIN_1}),
        ),
        (
            "admin_reset",
            json!({"username": "user-2", "pool_id": POOL_WIN_1}),
        ),
    ] {
        let reply = user.rpc(name, args).await;
        assert_eq!(error_code(&reply), 403, "{name}: {reply}");
        assert_eq!(reply["args"]["message"], "Admin role required.");
    }
    let mut anon = app.connect().await;
    assert_eq!(error_code(&anon.rpc("admin_tasks", json!({})).await), 401);
}

#[tokio::test]
async fn admin_sessions_says_who_from_where_and_since_when() {
    let app = TestApp::spawn().await;
    let mut user = app.connect_from([127, 0, 9, 7]).await;
    user.auth("user-2", PASSWORD).await;
    let (mut admin, _) = app.login("astravdi").await;
    let list = admin.rpc("admin_sessions", json!({})).await["args"].clone();
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["username"] == "user-2")
        .unwrap_or_else(|| panic!("user-2 listed: {list}"));
    assert_eq!(entry["peer"], "127.0.9.7");
    assert!(entry["since"].as_str().unwrap().ends_with('Z'));
    assert!(
        !list.to_string().contains("pgt_"),
        "no token in the listing"
    );
}

#[tokio::test]
async fn admin_revoke_ends_every_token_and_jwt_of_a_user() {
    let app = TestApp::spawn().await;
    let (mut user, token) = app.login("user-2").await;
    let jwt = app.jwt("user-2").await;
    let (mut admin, _) = app.login("astravdi").await;
    let reply = admin
        .rpc("admin_revoke", json!({"username": "user-2"}))
        .await;
    assert_eq!(reply["args"]["revoked_sessions"], 1, "{reply}");
    assert_eq!(error_code(&user.rpc("pools", json!({})).await), 401);
    let mut again = app.connect().await;
    assert_eq!(
        error_code(&again.rpc("auth_token", json!({"token": token})).await),
        401
    );
    let resp = reqwest::Client::new()
        .get(app.url("/api/v2/pools/"))
        .header("Authorization", format!("JWT {jwt}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        error_code(
            &admin
                .rpc("admin_revoke", json!({"username": "ghost"}))
                .await
        ),
        404
    );
}

#[tokio::test]
async fn admin_tasks_and_admin_release() {
    let app = TestApp::spawn_with(|c| fast_sim(c, OK, OK)).await;
    let (mut user, _) = app.login("user-2").await;
    let (mut admin, _) = app.login("astravdi").await;
    let id = admin
        .rpc("pool_request", json!({"pool_id": POOL_ASTRA_2}))
        .await["args"]["task"]["id"]
        .clone();
    let active = admin.rpc("admin_tasks", json!({})).await["args"].clone();
    assert!(
        active
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == id && t["username"] == "astravdi")
    );
    admin.follow(&id).await;

    // user-2's step 1 fails by design in the demo; give astravdi's machine back instead.
    let reply = admin
        .rpc(
            "admin_release",
            json!({"username": "astravdi", "pool_id": POOL_ASTRA_2}),
        )
        .await;
    assert!(reply["args"]["released"]["id"].is_string(), "{reply}");
    let event = loop {
        let frame = admin.recv().await;
        if frame["name"] == "machine" {
            break frame["args"].clone();
        }
    };
    assert_eq!(event["status"], "RELEASED");
    assert!(event["reason"].as_str().unwrap().contains("astravdi"));
    assert_eq!(
        error_code(
            &admin
                .rpc("connect_info", json!({"pool_id": POOL_ASTRA_2}))
                .await
        ),
        409
    );
    let none = admin
        .rpc(
            "admin_release",
            json!({"username": "user-2", "pool_id": POOL_ASTRA_2}),
        )
        .await;
    assert_eq!(none["args"]["released"], serde_json::Value::Null);
    drop(user.rpc("identify", json!({})).await);
}

/// A static pool with one machine, used by astravdi and user-2 (not a failing user here).
async fn one_machine_pool(retry: Duration) -> TestApp {
    TestApp::spawn_with(|c| {
        c.seed_tasks.clear();
        c.failed_step_retry = retry;
        c.provisioners.insert(
            "one".into(),
            toml::from_str(
                "kind = \"static\"\nmachines = [{ host = \"127.0.0.1\", port = 9, verbose_name = \"only\" }]",
            )
            .unwrap(),
        );
        c.pools[0].provisioner = "one".into();
    })
    .await
}

async fn step_1(c: &mut Client) -> Value {
    let reply = c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await;
    assert_eq!(reply["name"], "response", "{reply}");
    let id = reply["args"]["task"]["id"].clone();
    if reply["args"]["task"]["status"] == "COMPLETED" {
        return reply["args"]["task"].clone();
    }
    c.follow(&id).await.1
}

#[tokio::test]
async fn an_operator_takes_a_full_pool_back_to_working_with_admin_release_and_no_waiting() {
    // The window is long: only the operator's actions may let user-2 in.
    let app = one_machine_pool(Duration::from_secs(600)).await;
    let (mut admin, _) = app.login("astravdi").await;
    let (mut user, _) = app.login("user-2").await;
    assert_eq!(step_1(&mut admin).await["status"], "COMPLETED");
    let failed = step_1(&mut user).await;
    assert_eq!(failed["status"], "FAILED", "the pool is full: {failed}");
    let reply = user
        .rpc("pool_request", json!({"pool_id": POOL_WIN_1}))
        .await;
    assert_eq!(reply["args"]["err_code"], 800, "{reply}");

    // Free the machine (by pool name), then clear user-2's failure with admin_release too.
    let reply = admin
        .rpc(
            "admin_release",
            json!({"username": "astravdi", "pool_id": "pool-win-1"}),
        )
        .await;
    assert_eq!(reply["args"]["released"]["verbose_name"], "only", "{reply}");
    let reply = admin
        .rpc(
            "admin_release",
            json!({"username": "user-2", "pool_id": POOL_WIN_1}),
        )
        .await;
    assert_eq!(reply["args"]["released"], Value::Null, "{reply}");
    let cleared = reply["args"]["cleared"].as_array().unwrap();
    assert_eq!(cleared.len(), 1, "{reply}");
    assert_eq!(cleared[0]["id"], failed["id"]);
    assert_eq!(cleared[0]["username"], "user-2");

    let done = step_1(&mut user).await;
    assert_ne!(done["id"], failed["id"], "a new task");
    assert_eq!(done["status"], "COMPLETED", "{done}");
}

#[tokio::test]
async fn admin_reset_clears_failed_step_1_of_a_user_or_of_a_whole_pool_at_once() {
    let app = one_machine_pool(Duration::from_secs(600)).await;
    let (mut admin, _) = app.login("astravdi").await;
    let (mut user, _) = app.login("user-2").await;
    assert_eq!(step_1(&mut admin).await["status"], "COMPLETED");
    let failed = step_1(&mut user).await;
    assert_eq!(failed["status"], "FAILED");

    let reply = admin
        .rpc(
            "admin_reset",
            json!({"username": "user-2", "pool_id": POOL_WIN_1}),
        )
        .await;
    assert_eq!(reply["args"]["cleared"][0]["id"], failed["id"], "{reply}");
    // Cleared: the next request starts a new task (which fails again: the pool is still full).
    let again = step_1(&mut user).await;
    assert_ne!(again["id"], failed["id"]);
    assert_eq!(again["status"], "FAILED");
    // Nothing else to clear for astravdi; the whole pool's reset clears user-2's new failure.
    let reply = admin
        .rpc(
            "admin_reset",
            json!({"username": "astravdi", "pool_id": POOL_WIN_1}),
        )
        .await;
    assert_eq!(reply["args"]["cleared"], json!([]), "{reply}");
    let reply = admin
        .rpc("admin_reset", json!({"pool_id": "pool-win-1"}))
        .await;
    let cleared = reply["args"]["cleared"].as_array().unwrap();
    assert_eq!(cleared.len(), 1, "{reply}");
    assert_eq!(cleared[0]["id"], again["id"]);
    let reply = user
        .rpc("pool_request", json!({"pool_id": POOL_WIN_1}))
        .await;
    assert_eq!(reply["name"], "response", "{reply}");

    for (args, code) in [
        (json!({"pool_id": "no-such-pool"}), 404),
        (json!({"username": "ghost", "pool_id": POOL_WIN_1}), 404),
        (json!({"username": "user-2"}), 400),
    ] {
        let reply = admin.rpc("admin_reset", args.clone()).await;
        assert_eq!(error_code(&reply), code, "{args}: {reply}");
    }
}

/// Refusals anyone can repeat at will without costing the server anything (429 here: the
/// socket's allowance) are folded into one audit event per period, saying how many more it
/// stands for; each wrong password is recorded.
#[tokio::test]
async fn a_flood_of_refusals_that_cost_nothing_is_folded_in_the_audit_log() {
    let app = TestApp::spawn_with(|c| c.max_auth_failures = 2).await;
    let mut flood = app.connect().await;
    for i in 0..10 {
        let reply = flood
            .rpc("auth", json!({"username": "user-2", "password": "wrong"}))
            .await;
        assert_eq!(error_code(&reply), if i < 2 { 401 } else { 429 });
    }
    let (mut admin, _) = app.login("astravdi").await;
    let reply = admin
        .rpc(
            "admin_audit",
            json!({"since": "1h", "event": "sign_in_refused", "order": "oldest"}),
        )
        .await;
    let codes: Vec<u64> = reply["args"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["code"].as_u64().unwrap())
        .collect();
    assert_eq!(codes, [401, 401, 429], "{reply}");
}

/// Every bad `admin_audit` query is a 400 with the request's id and a message that says what
/// is wrong, and the socket keeps answering.
#[tokio::test]
async fn bad_audit_queries_are_400_with_a_reason() {
    let app = TestApp::spawn().await;
    let (mut admin, _) = app.login("astravdi").await;
    for (args, says) in [
        (
            json!({"since": "abc"}),
            "neither an RFC 3339 time nor a span",
        ),
        (
            json!({"since": "2026-13-45T00:00:00Z"}),
            "neither an RFC 3339 time",
        ),
        (json!({"limit": 0}), "limit is 1 to 1000"),
        (json!({"limit": 1_000_000_000_000u64}), "limit is 1 to 1000"),
        (json!({"cursor": "zz"}), "Invalid cursor"),
        (json!({"order": "x"}), "order is \"newest\" or \"oldest\""),
        (json!({"since": "1h", "until": "2h"}), "must be after since"),
        (json!({"event": ["sign_in"]}), "Invalid args"),
    ] {
        let reply = admin.rpc("admin_audit", args.clone()).await;
        assert_eq!(error_code(&reply), 400, "{args}: {reply}");
        let message = reply["args"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{args}: {reply}");
    }
    let reply = admin
        .rpc("admin_audit", json!({"since": "2h", "until": "1h"}))
        .await;
    assert_eq!(reply["name"], "response", "{reply}");
}
