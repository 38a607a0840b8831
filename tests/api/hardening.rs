//! Hostile input: floods, wrong types, oversized frames, secrets. (Sign-in limits and the
//! no-enumeration promise are in lockout.rs.)

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn a_flood_of_10000_requests_on_one_socket_is_answered_in_full() {
    let app = TestApp::spawn().await;
    let (mut flood, _) = app.login("astravdi").await;
    let (mut other, _) = app.login("user-2").await;
    let frames: Vec<String> = (0..10_000)
        .map(|i| match i % 4 {
            0 => json!({"namespace": "rpc", "name": "tasks", "id": i}).to_string(),
            1 => format!(
                "{{\"namespace\":\"rpc\",\"name\":\"task\",\"id\":{i},\"args\":{{\"task_id\":7}}}}"
            ),
            2 => "]".to_owned(),
            _ => json!({"namespace": "rpc", "name": "pools", "id": i, "args": {"is_favorite": []}})
                .to_string(),
        })
        .collect();
    // Pipelined in bursts of 1000, read back between bursts (so neither side's buffers can
    // fill up and stall the test).
    let mut errors = 0;
    for burst in frames.chunks(1000) {
        for f in burst {
            flood.send_text(f.clone()).await;
        }
        for _ in burst {
            if flood.recv().await["name"] == "error" {
                errors += 1;
            }
        }
    }
    assert_eq!(errors, 7_500);
    assert_eq!(other.rpc("pools", json!({})).await["name"], "response");
}

#[tokio::test]
async fn wrong_types_in_every_field_of_every_method_get_400_with_the_id() {
    let app = TestApp::spawn().await;
    let (mut c, _) = app.login("astravdi").await;
    let cases = [
        ("rpc", "auth", json!({"username": 1, "password": "x"})),
        ("rpc", "auth", json!({"username": "x", "password": []})),
        (
            "rpc",
            "auth",
            json!({"username": "x", "password": "y", "otp_code": 5}),
        ),
        (
            "rpc",
            "otp_verify",
            json!({"mfa_token": {}, "otp_code": "1"}),
        ),
        (
            "rpc",
            "otp_verify",
            json!({"mfa_token": "x", "otp_code": false}),
        ),
        ("rpc", "auth_token", json!({"token": 12})),
        ("events", "subscribe", json!(42)),
        ("events", "unsubscribe", json!([1, 2])),
        ("rpc", "pools", json!({"is_favorite": "yes"})),
        ("rpc", "pool_request", json!({"pool_id": 5})),
        ("rpc", "pool_request", json!({"pool_id": "not-a-uuid"})),
        (
            "rpc",
            "connect_info",
            json!({"pool_id": POOL_WIN_1, "remote_protocol": "one"}),
        ),
        (
            "rpc",
            "connect_info",
            json!({"pool_id": POOL_WIN_1, "width": 1.5}),
        ),
        (
            "rpc",
            "connect_info",
            json!({"pool_id": POOL_WIN_1, "height": "tall"}),
        ),
        (
            "rpc",
            "connect_info",
            json!({"pool_id": POOL_WIN_1, "password": 7}),
        ),
        ("rpc", "task", json!({"task_id": null})),
        ("rpc", "task", json!({"task_id": [1]})),
    ];
    for (i, (ns, name, args)) in cases.into_iter().enumerate() {
        c.send_text(json!({"namespace": ns, "name": name, "id": i, "args": args}).to_string())
            .await;
        let reply = c.recv().await;
        assert_eq!(error_code(&reply), 400, "{ns}/{name} {args}: {reply}");
        assert_eq!(reply["id"], i);
    }
    assert_eq!(c.rpc("pools", json!({})).await["name"], "response");
}
