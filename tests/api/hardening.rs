//! Brute-force limits and the no-enumeration promise, each shown by a test that fails without
//! the code behind it.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

async fn try_auth(c: &mut Client, user: &str, password: &str) -> Value {
    c.rpc("auth", json!({"username": user, "password": password}))
        .await
}

#[tokio::test]
async fn a_locked_out_username_gets_429_without_any_argon2_work() {
    let app = TestApp::spawn().await;
    // Different sockets and addresses: only the username's counter is shared.
    for i in 0..5u8 {
        let mut c = app.connect_from([127, 0, 1, i + 1]).await;
        assert_eq!(
            error_code(&try_auth(&mut c, "astravdi", "wrong").await),
            401
        );
    }
    let before = app.state.auth.passwords.verifications();
    let mut c = app.connect_from([127, 0, 1, 99]).await;
    let reply = try_auth(&mut c, "astravdi", PASSWORD).await;
    assert_eq!(
        error_code(&reply),
        429,
        "even the right password is refused: {reply}"
    );
    assert_eq!(
        app.state.auth.passwords.verifications(),
        before,
        "no argon2 ran"
    );
    // Other users are not affected.
    assert_eq!(
        try_auth(&mut c, "user-2", PASSWORD).await["name"],
        "response"
    );
}

#[tokio::test]
async fn a_locked_out_address_gets_429_for_every_username() {
    let app = TestApp::spawn().await;
    let mut c = app.connect_from([127, 0, 2, 1]).await;
    for user in ["a", "b", "c", "d", "e"] {
        assert_eq!(error_code(&try_auth(&mut c, user, "x").await), 401);
    }
    let mut same_addr = app.connect_from([127, 0, 2, 1]).await;
    assert_eq!(
        error_code(&try_auth(&mut same_addr, "user-2", PASSWORD).await),
        429
    );
    let mut other_addr = app.connect_from([127, 0, 2, 2]).await;
    assert_eq!(
        try_auth(&mut other_addr, "user-2", PASSWORD).await["name"],
        "response"
    );
}

#[tokio::test]
async fn token_guesses_count_against_the_address() {
    let app = TestApp::spawn().await;
    let (_, token) = app.login("astravdi").await;
    for _ in 0..5 {
        let mut c = app.connect_from([127, 0, 3, 1]).await;
        assert_eq!(
            error_code(&c.rpc("auth_token", json!({"token": "pgt_guess"})).await),
            401
        );
    }
    let mut c = app.connect_from([127, 0, 3, 1]).await;
    assert_eq!(
        error_code(&c.rpc("auth_token", json!({"token": token})).await),
        429
    );
}

#[tokio::test]
async fn a_successful_sign_in_resets_the_usernames_counter() {
    let app = TestApp::spawn().await;
    let mut a = app.connect_from([127, 0, 4, 1]).await;
    for _ in 0..4 {
        assert_eq!(error_code(&try_auth(&mut a, "user-2", "wrong").await), 401);
    }
    assert_eq!(
        try_auth(&mut a, "user-2", PASSWORD).await["name"],
        "response"
    );
    let mut b = app.connect_from([127, 0, 4, 2]).await;
    for _ in 0..4 {
        assert_eq!(error_code(&try_auth(&mut b, "user-2", "wrong").await), 401);
    }
    // Without the reset the username would be at 8 failures and locked.
    let mut c = app.connect_from([127, 0, 4, 3]).await;
    assert_eq!(
        try_auth(&mut c, "user-2", PASSWORD).await["name"],
        "response"
    );
}

#[tokio::test]
async fn wrong_one_time_codes_count_and_rest_logins_share_the_counters() {
    let app = TestApp::spawn().await;
    let http = reqwest::Client::new();
    for _ in 0..5 {
        let resp = http
            .post(app.url("/api/v2/users/login/"))
            .json(&json!({"username": "user-4", "password": PASSWORD, "ldap": false, "otp_code": "000000"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }
    // The WebSocket path sees the same lock, from another address.
    let mut c = app.connect_from([127, 0, 5, 9]).await;
    let reply = c
        .rpc(
            "auth",
            json!({"username": "user-4", "password": PASSWORD, "otp_code": date_code()}),
        )
        .await;
    assert_eq!(error_code(&reply), 429);
    let resp = http
        .post(app.url("/api/v2/users/login/"))
        .json(&json!({"username": "user-4", "password": PASSWORD, "ldap": false, "otp_code": date_code()}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["detail"][0]["err_code"], 999);
}

#[tokio::test]
async fn the_lock_lifts_when_the_window_passes() {
    let app = TestApp::spawn_with(|c| c.lockout_window = Duration::from_millis(800)).await;
    let mut c = app.connect_from([127, 0, 6, 1]).await;
    for _ in 0..5 {
        try_auth(&mut c, "user-2", "wrong").await;
    }
    let mut d = app.connect_from([127, 0, 6, 2]).await;
    assert_eq!(error_code(&try_auth(&mut d, "user-2", PASSWORD).await), 429);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        try_auth(&mut d, "user-2", PASSWORD).await["name"],
        "response"
    );
}

#[tokio::test]
async fn an_unknown_user_costs_the_same_argon2_work_as_a_wrong_password() {
    let app = TestApp::spawn().await;
    let mut c = app.connect_from([127, 0, 7, 1]).await;
    // Warm the dummy hash so its one-time creation is not counted.
    try_auth(&mut c, "nobody-0", "x").await;
    let before = app.state.auth.passwords.verifications();
    try_auth(&mut c, "astravdi", "wrong").await;
    let known = app.state.auth.passwords.verifications() - before;
    let mut d = app.connect_from([127, 0, 7, 2]).await;
    let before = app.state.auth.passwords.verifications();
    try_auth(&mut d, "nobody-1", "wrong").await;
    let unknown = app.state.auth.passwords.verifications() - before;
    assert_eq!((known, unknown), (1, 1));
}

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
