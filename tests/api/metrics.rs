//! /metrics and /healthz: each counter moves when the thing it counts happens.

use serde_json::json;

use crate::helpers::*;

async fn scrape(app: &TestApp) -> String {
    let resp = reqwest::get(app.url("/metrics")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("openmetrics")
    );
    resp.text().await.unwrap()
}

/// The value of the sample line starting with `prefix` (0 when absent).
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test]
async fn counters_move_with_what_they_count() {
    let app = TestApp::spawn_with(|c| fast_sim(c, OK, OK)).await;
    let before = scrape(&app).await;
    let (mut c, _) = app.login("astravdi").await;
    let mut bad = app.connect().await;
    bad.rpc("auth", json!({"username": "astravdi", "password": "nope"}))
        .await;
    bad.rpc("nope", json!({})).await;
    let id =
        c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    c.follow(&id).await;
    let after = scrape(&app).await;

    let delta = |prefix: &str| sample(&after, prefix) - sample(&before, prefix);
    assert_eq!(
        delta("poolgate_logins_total{outcome=\"ok\"}"),
        1.0,
        "{after}"
    );
    assert_eq!(delta("poolgate_logins_total{outcome=\"denied\"}"), 1.0);
    assert_eq!(delta("poolgate_connections_total"), 2.0);
    assert_eq!(sample(&after, "poolgate_connections_open"), 2.0);
    assert_eq!(
        delta("poolgate_rpc_requests_total{method=\"rpc/pool_request\",code=\"200\"}"),
        1.0
    );
    assert_eq!(
        delta("poolgate_rpc_requests_total{method=\"rpc/auth\",code=\"401\"}"),
        1.0
    );
    assert_eq!(
        delta("poolgate_rpc_requests_total{method=\"unknown\",code=\"404\"}"),
        1.0
    );
    assert_eq!(
        delta("poolgate_task_duration_seconds_count{kind=\"POOL_EXPAND\",outcome=\"COMPLETED\"}"),
        1.0
    );
    assert_eq!(sample(&after, "poolgate_signed_in_sockets"), 1.0);
    drop(bad);
}

#[tokio::test]
async fn healthz_is_ok_while_serving() {
    let app = TestApp::spawn().await;
    let resp = reqwest::get(app.url("/healthz")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "ok\n");
}

/// The audit events that reached the log but not the store are counted (none here: every
/// event was stored).
#[tokio::test]
async fn audit_events_not_stored_are_counted() {
    let app = TestApp::spawn().await;
    let text = scrape(&app).await;
    assert!(
        text.contains("# HELP poolgate_audit_events_not_stored Audit events that reached the log but not the state store"),
        "{text}"
    );
    app.login("astravdi").await;
    let text = scrape(&app).await;
    assert_eq!(metric(&text, "poolgate_audit_events_not_stored_total"), 0.0);
}
