//! Sign-in, MFA, tokens and sign-out over real sockets.

use poolgate::auth::otp::TotpSecret;
use poolgate::auth::users::UserRecord;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn auth_returns_a_strong_token_and_its_lifetime() {
    let app = TestApp::spawn().await;
    let mut c = app.connect().await;
    let reply = c
        .rpc(
            "auth",
            json!({"username": "astravdi", "password": PASSWORD}),
        )
        .await;
    assert_eq!(reply["name"], "response", "{reply}");
    let token = reply["args"][0].as_str().unwrap();
    assert_eq!(reply["args"][1], 300);
    // pgt_ + base64url(32 random bytes + an 8-byte tag) = 256 bits of randomness.
    assert!(token.starts_with("pgt_"));
    assert_eq!(token.len(), 4 + 54);
    let (_, again) = app.login("astravdi").await;
    assert_ne!(token, again, "every sign-in gets its own token");
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_401() {
    let app = TestApp::spawn().await;
    let mut c = app.connect().await;
    let wrong = c
        .rpc("auth", json!({"username": "astravdi", "password": "nope"}))
        .await;
    let unknown = c
        .rpc("auth", json!({"username": "nobody", "password": PASSWORD}))
        .await;
    assert_eq!(error_code(&wrong), 401);
    assert_eq!(wrong["args"], unknown["args"]);
    assert_eq!(wrong["args"]["err_code"], 999);
}

#[tokio::test]
async fn otp_user_gets_428_then_signs_in_with_otp_verify() {
    let app = TestApp::spawn().await;
    let mut c = app.connect().await;
    let reply = c
        .rpc("auth", json!({"username": "user-4", "password": PASSWORD}))
        .await;
    assert_eq!(error_code(&reply), 428);
    assert_eq!(reply["args"]["err_code"], 100);
    assert_eq!(reply["args"]["message"], "MFA required.");
    let mfa = reply["args"]["mfa_token"].as_str().unwrap().to_owned();

    let wrong = c
        .rpc(
            "otp_verify",
            json!({"mfa_token": mfa, "otp_code": "000000"}),
        )
        .await;
    assert_eq!(error_code(&wrong), 401);
    assert_eq!(wrong["args"]["err_code"], 103);

    let ok = c
        .rpc(
            "otp_verify",
            json!({"mfa_token": mfa, "otp_code": date_code()}),
        )
        .await;
    assert_eq!(ok["name"], "response", "{ok}");
    assert_eq!(ok["args"][1], 300);

    // One use only.
    let again = c
        .rpc(
            "otp_verify",
            json!({"mfa_token": mfa, "otp_code": date_code()}),
        )
        .await;
    assert_eq!(error_code(&again), 401);
}

#[tokio::test]
async fn auth_with_otp_code_signs_in_in_one_call() {
    let app = TestApp::spawn().await;
    let mut c = app.connect().await;
    let reply = c
        .rpc(
            "auth",
            json!({"username": "user-4", "password": PASSWORD, "otp_code": date_code()}),
        )
        .await;
    assert_eq!(reply["name"], "response", "{reply}");
    let wrong = c
        .rpc(
            "auth",
            json!({"username": "user-4", "password": PASSWORD, "otp_code": "1"}),
        )
        .await;
    assert_eq!(wrong["args"]["err_code"], 103);
}

#[tokio::test]
async fn a_wrong_password_cannot_be_rescued_by_a_right_otp() {
    let app = TestApp::spawn().await;
    let mut c = app.connect().await;
    let reply = c
        .rpc("auth", json!({"username": "user-4", "password": "wrong"}))
        .await;
    // MFA is checked before the password, as in the mock...
    assert_eq!(error_code(&reply), 428);
    let mfa = reply["args"]["mfa_token"].as_str().unwrap().to_owned();
    // ...but the password is still checked before any token is issued.
    let reply = c
        .rpc(
            "otp_verify",
            json!({"mfa_token": mfa, "otp_code": date_code()}),
        )
        .await;
    assert_eq!(error_code(&reply), 401);
    assert_eq!(reply["args"]["err_code"], 999);
}

#[tokio::test]
async fn disabled_user_is_refused_after_mfa_and_password() {
    let app = TestApp::spawn().await;
    let mut c = app.connect().await;
    let reply = c
        .rpc("auth", json!({"username": "user-1", "password": PASSWORD}))
        .await;
    assert_eq!(error_code(&reply), 428);
    let mfa = reply["args"]["mfa_token"].as_str().unwrap().to_owned();
    let reply = c
        .rpc(
            "otp_verify",
            json!({"mfa_token": mfa, "otp_code": date_code()}),
        )
        .await;
    assert_eq!(error_code(&reply), 403);
    assert_eq!(reply["args"]["message"], "User is disabled.");
}

/// Without `[oidc]`, an ADFS user's 428 says it cannot be done here; a security-key user with
/// no key registered yet is told an administrator must send an enrolment link (with a key,
/// the 428 carries the challenge: tests/common/webauthn.rs).
#[tokio::test]
async fn adfs_and_hardware_token_users_get_428_that_says_what_to_do() {
    let app = TestApp::spawn().await;
    let mut c = app.connect().await;
    for (user, err_code, says) in [
        ("user-5", 101, "cannot be completed over this API"),
        (
            "user-3",
            102,
            "an administrator must send them an enrolment link",
        ),
    ] {
        let reply = c
            .rpc("auth", json!({"username": user, "password": PASSWORD}))
            .await;
        assert_eq!(error_code(&reply), 428);
        assert_eq!(reply["args"]["err_code"], err_code);
        assert!(reply["args"].get("mfa_token").is_none());
        assert!(reply["args"].get("publicKey").is_none());
        assert!(
            reply["args"]["detail"].as_str().unwrap().contains(says),
            "{reply}"
        );
    }
}

/// Without `[oidc]` the mock's behaviour stays exactly: no hand-off fields, and single
/// sign-on's method and pages answer 404.
#[tokio::test]
async fn without_oidc_there_is_no_hand_off_and_the_sso_routes_are_404() {
    let app = TestApp::spawn().await;
    let mut c = app.connect().await;
    let reply = c
        .rpc("auth", json!({"username": "user-5", "password": PASSWORD}))
        .await;
    assert_eq!(error_code(&reply), 428);
    assert!(reply["args"].get("verification_uri").is_none(), "{reply}");
    assert!(reply["args"].get("user_code").is_none(), "{reply}");
    let sso = c.rpc("auth_sso", json!({})).await;
    assert_eq!(error_code(&sso), 404, "{sso}");
    let code = c.rpc("auth_sso_code", json!({"code": "x"})).await;
    assert_eq!(error_code(&code), 404, "{code}");
    for path in [
        "/oidc/config",
        "/oidc/login",
        "/oidc/device",
        "/oidc/callback?state=x",
    ] {
        let status = reqwest::get(app.url(path)).await.unwrap().status();
        assert_eq!(status, 404, "{path}");
    }
    let login = reqwest::Client::new()
        .post(app.url("/api/v2/users/login/"))
        .json(&json!({"username": "user-5", "password": PASSWORD, "ldap": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 428);
    let body: serde_json::Value = login.json().await.unwrap();
    assert_eq!(
        body,
        json!({"detail": [{"msg": "MFA required.", "err_code": 101, "type": "auth", "next_step": "/api/v2/users/adfs/"}]})
    );
}

#[tokio::test]
async fn auth_token_signs_in_a_new_connection() {
    let app = TestApp::spawn().await;
    let (_first, token) = app.login("astravdi").await;
    let mut second = app.connect().await;
    let reply = second.rpc("auth_token", json!({"token": token})).await;
    assert_eq!(reply["name"], "response", "{reply}");
    assert_eq!(reply["args"], json!([token, 300]));
    let reply = second.call("events", "subscribe", json!("task")).await;
    assert_eq!(reply["name"], "response");
}

#[tokio::test]
async fn bad_tokens_are_refused_including_empty_and_prefixes() {
    let app = TestApp::spawn().await;
    let (_first, token) = app.login("astravdi").await;
    let mut c = app.connect().await;
    for bad in ["", "pgt_", &token[..20], &format!("{token}x"), "x"] {
        let reply = c.rpc("auth_token", json!({"token": bad})).await;
        assert_eq!(error_code(&reply), 401, "token {bad:?}");
    }
}

#[tokio::test]
async fn auth_clear_revokes_the_token_everywhere() {
    let app = TestApp::spawn().await;
    let (mut a, token) = app.login("astravdi").await;
    let mut b = app.connect().await;
    assert_eq!(
        b.rpc("auth_token", json!({"token": token})).await["name"],
        "response"
    );
    let reply = a.rpc("auth_clear", json!(null)).await;
    assert_eq!(reply["name"], "response");
    // This connection is signed out...
    assert_eq!(
        error_code(&a.call("events", "subscribe", json!("task")).await),
        401
    );
    // ...the other one holding the same token too...
    assert_eq!(
        error_code(&b.call("events", "subscribe", json!("task")).await),
        401
    );
    // ...and the token cannot be used again.
    let mut c = app.connect().await;
    assert_eq!(
        error_code(&c.rpc("auth_token", json!({"token": token})).await),
        401
    );
}

#[tokio::test]
async fn repeated_failures_on_one_socket_get_429() {
    let app = TestApp::spawn_with(|c| c.max_auth_failures = 3).await;
    let mut c = app.connect().await;
    for _ in 0..3 {
        let reply = c.rpc("auth_token", json!({"token": "pgt_guess"})).await;
        assert_eq!(error_code(&reply), 401);
    }
    let reply = c
        .rpc(
            "auth",
            json!({"username": "astravdi", "password": PASSWORD}),
        )
        .await;
    assert_eq!(error_code(&reply), 429);
    // A fresh connection is not affected.
    let (_, _) = app.login("astravdi").await;
}

fn totp_user(secret: &str) -> UserRecord {
    let demo = poolgate::Config::demo();
    let mut user = demo.users[0].clone();
    user.username = "totp-user".into();
    user.id = uuid::Uuid::new_v4();
    user.otp_enabled = true;
    user.otp_method = Some(poolgate::auth::otp::OtpMethod::Totp);
    user.otp_secret = Some(secret.into());
    user
}

#[tokio::test]
async fn a_totp_code_is_accepted_once_and_never_again() {
    const SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
    let app = TestApp::spawn_with(|c| c.users.push(totp_user(SECRET))).await;
    let totp = TotpSecret::from_base32(SECRET, "t").unwrap();
    let code = totp.code_at(chrono::Utc::now().timestamp() as u64);
    let mut c = app.connect().await;
    let reply = c
        .rpc(
            "auth",
            json!({"username": "totp-user", "password": PASSWORD, "otp_code": code}),
        )
        .await;
    assert_eq!(reply["name"], "response", "{reply}");
    let replay = c
        .rpc(
            "auth",
            json!({"username": "totp-user", "password": PASSWORD, "otp_code": code}),
        )
        .await;
    assert_eq!(error_code(&replay), 401);
    assert_eq!(replay["args"]["err_code"], 103);
}

#[tokio::test]
async fn the_date_code_is_refused_outside_a_demo_server() {
    let mut config = demo_config();
    config.demo = false;
    let err = poolgate::AppState::new(config)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("demo"), "{err}");
}

/// A demo server says so in `identify`, with today's demo code (its date as YYMMDD), which the
/// portal shows at the one-time-code step; a server that is no demo sends neither field.
#[tokio::test]
async fn identify_tells_a_client_of_a_demo_server_and_its_one_time_code() {
    let app = TestApp::spawn().await;
    let mut c = app.connect().await;
    let before = date_code();
    let reply = c.rpc("identify", json!({})).await;
    let after = date_code();
    assert_eq!(reply["args"]["demo"], true, "{reply}");
    let code = reply["args"]["demo_code"]
        .as_str()
        .unwrap_or_else(|| panic!("no demo_code: {reply}"))
        .to_owned();
    assert!(code == before || code == after, "{code} is not today");
    // The code it names is the one user-4 (a date-code user) signs in with.
    let reply = c
        .rpc(
            "auth",
            json!({"username": "user-4", "password": PASSWORD, "otp_code": code}),
        )
        .await;
    assert_eq!(reply["name"], "response", "{reply}");
    drop(c);
    app.stop().await;

    let app = TestApp::spawn_with(|c| {
        c.demo = false;
        // The date code is refused outside a demo: its users go, from the pools too.
        let date = Some(poolgate::auth::otp::OtpMethod::Date);
        let gone: Vec<String> = c
            .users
            .iter()
            .filter(|u| u.otp_method == date)
            .map(|u| u.username.clone())
            .collect();
        c.users.retain(|u| u.otp_method != date);
        for pool in &mut c.pools {
            pool.users.retain(|u| !gone.contains(u));
        }
        c.seed_tasks.clear();
    })
    .await;
    let reply = app.connect().await.rpc("identify", json!({})).await;
    assert_eq!(reply["args"]["type"], "server", "{reply}");
    for field in ["demo", "demo_code"] {
        assert!(reply["args"].get(field).is_none(), "{field}: {reply}");
    }
    app.stop().await;
}
