//! TOTP for directory users: an admin enrols them (by sign-in name or DN, over the RPC or with
//! `poolgate user totp --directory`), and they then get the same 428 / `otp_verify` step as
//! local users, on both transports.

use serde_json::{Value, json};

use crate::app::{app_with_directory, ws_auth};
use crate::helpers::*;
use crate::slapd::*;

/// The current code of `secret`, `steps` periods of 30 s from now (the server accepts one
/// period either side, and each period once per user).
pub(crate) fn code(secret: &str, steps: i64) -> String {
    poolgate::auth::otp::TotpSecret::from_base32(secret, "x")
        .unwrap()
        .code_at((chrono::Utc::now().timestamp() + 30 * steps) as u64)
}

/// bob is an admin by group (vdi-admins).
pub(crate) async fn admin(app: &TestApp) -> Client {
    let mut bob = app.connect().await;
    let reply = ws_auth(&mut bob, "bob", "bob-pw", Some(true)).await;
    assert_eq!(reply["name"], "response", "{reply}");
    bob
}

fn secret_of(reply: &Value) -> String {
    assert_eq!(reply["name"], "response", "{reply}");
    reply["args"]["secret"].as_str().unwrap().to_owned()
}

/// The v2 login with this body: the status and the JSON body (null if none).
pub(crate) async fn rest_login(app: &TestApp, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(app.url("/api/v2/users/login/"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

/// `admin_totp` with `args`, which must succeed: the new secret and the account name.
pub(crate) async fn enrol(admin: &mut Client, args: Value) -> (String, Value) {
    let reply = admin.rpc("admin_totp", args.clone()).await;
    assert_eq!(reply["name"], "response", "{args}: {reply}");
    (
        reply["args"]["secret"].as_str().unwrap().to_owned(),
        reply["args"]["username"].clone(),
    )
}

pub async fn an_enrolled_directory_user_gives_a_code_on_both_transports() {
    let slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    // More wrong guesses than the default lockout allows are made on purpose here.
    let app = app_with_directory(&slapd, dir.path(), |c| c.lockout_attempts = 20).await;
    let mut bob = admin(&app).await;

    // Enrolled before their first sign-in, by sign-in name.
    let reply = bob.rpc("admin_totp", json!({"username": "Alice"})).await;
    let secret = secret_of(&reply);
    assert_eq!(reply["args"]["username"], "alice", "{reply}");
    assert_eq!(reply["args"]["dn"], format!("uid=alice,{PEOPLE}"));
    let url = reply["args"]["otpauth_url"].as_str().unwrap();
    assert!(
        url.starts_with("otpauth://totp/") && url.contains(&format!("secret={secret}")),
        "{url}"
    );

    // The password alone is not enough any more; a wrong one gets the same challenge.
    let mut c = app.connect().await;
    for password in ["alice-pw", "wrong"] {
        let reply = ws_auth(&mut c, "alice", password, Some(true)).await;
        assert_eq!(error_code(&reply), 428, "{password}: {reply}");
        assert_eq!(reply["args"]["err_code"], 100);
        assert!(reply["args"]["mfa_token"].is_string());
    }
    // Without "ldap": true too (alice is not a local user).
    let reply = ws_auth(&mut c, "alice", "wrong", None).await;
    let wrong_mfa = reply["args"]["mfa_token"].as_str().unwrap().to_owned();
    // A wrong password's challenge never completes, even with the right code (which the
    // attempt uses up, as any accepted code).
    let reply = c
        .rpc(
            "otp_verify",
            json!({"mfa_token": wrong_mfa, "otp_code": code(&secret, 0)}),
        )
        .await;
    assert_eq!(error_code(&reply), 401, "{reply}");
    assert_eq!(reply["args"]["err_code"], 999, "{reply}");

    let reply = ws_auth(&mut c, "alice", "alice-pw", Some(true)).await;
    let mfa = reply["args"]["mfa_token"].as_str().unwrap().to_owned();
    for wrong in ["000000".to_owned(), code(&secret, 0)] {
        let reply = c
            .rpc("otp_verify", json!({"mfa_token": mfa, "otp_code": wrong}))
            .await;
        assert_eq!(
            reply["args"]["err_code"], 103,
            "a wrong or used code: {reply}"
        );
    }
    let reply = c
        .rpc(
            "otp_verify",
            json!({"mfa_token": mfa, "otp_code": code(&secret, 1)}),
        )
        .await;
    assert_eq!(reply["name"], "response", "{reply}");
    let pools = c.rpc("pools", json!({})).await;
    assert_eq!(
        pools["args"][0]["id"], POOL_WIN_2,
        "signed in as alice, with her group's pool: {pools}"
    );
    // The same code again, with the password in one call: a replay, refused.
    let reply = c
        .rpc(
            "auth",
            json!({"username": "alice", "password": "alice-pw", "ldap": true, "otp_code": code(&secret, 1)}),
        )
        .await;
    assert_eq!(reply["args"]["err_code"], 103, "replayed: {reply}");

    // v2 REST, for a user whose name has filter metacharacters: 428, then password and code.
    let odd = secret_of(&bob.rpc("admin_totp", json!({"username": ODD_NAME})).await);
    let (status, body) = rest_login(
        &app,
        json!({"username": ODD_NAME, "password": "odd-pw", "ldap": true}),
    )
    .await;
    assert_eq!(
        (status, &body["detail"][0]["err_code"]),
        (428, &json!(100)),
        "{body}"
    );
    // The mock's password-less first step is the server's own users' only: the directory is
    // not asked who a name is without a password (protocol/README.md).
    let (status, _) = rest_login(
        &app,
        json!({"username": ODD_NAME, "password": null, "ldap": true}),
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = rest_login(
        &app,
        json!({"username": ODD_NAME, "password": "odd-pw", "ldap": true, "otp_code": code(&odd, 0)}),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Ended by DN: the password alone signs in again. carol, never enrolled, never asked.
    let reply = bob
        .rpc(
            "admin_totp",
            json!({"dn": format!("uid=alice,{PEOPLE}"), "disable": true}),
        )
        .await;
    assert_eq!(reply["args"]["totp"], false, "{reply}");
    assert!(reply["args"].get("secret").is_none(), "{reply}");
    let mut c = app.connect().await;
    assert_eq!(
        ws_auth(&mut c, "alice", "alice-pw", Some(true)).await["name"],
        "response"
    );
    let mut c = app.connect().await;
    assert_eq!(
        ws_auth(&mut c, "carol", "carol-pw", Some(true)).await["name"],
        "response"
    );
    app.stop().await;
}

pub async fn an_enrolment_by_dn_covers_every_name_of_the_entry_and_survives_a_restart() {
    let slapd = Slapd::start();
    slapd.modify(&format!(
        "dn: uid=carol,{PEOPLE}\nchangetype: modify\nadd: uid\nuid: carol2\n"
    ));
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    let directory = directory_config(&slapd, dir.path());
    let spawn = || {
        let (directory, state) = (directory.clone(), state.clone());
        TestApp::spawn_with(move |c| {
            c.directory = Some(directory);
            c.state = poolgate::store::StateUrl::Sqlite(Some(state));
        })
    };
    let app = spawn().await;
    let mut bob = admin(&app).await;
    let reply = bob
        .rpc("admin_totp", json!({"dn": format!("UID=carol, {PEOPLE}")}))
        .await;
    let secret = secret_of(&reply);
    assert_eq!(reply["args"]["username"], "carol", "{reply}");
    app.stop().await;

    // After a restart, each name of the entry must give the code.
    let app = spawn().await;
    for (name, steps) in [("carol", 0), ("CAROL2", 1)] {
        let mut c = app.connect().await;
        let reply = ws_auth(&mut c, name, "carol-pw", Some(true)).await;
        assert_eq!(error_code(&reply), 428, "{name}: {reply}");
        let reply = c
            .rpc(
                "auth",
                json!({"username": name, "password": "carol-pw", "otp_code": code(&secret, steps)}),
            )
            .await;
        assert_eq!(reply["name"], "response", "{name}: {reply}");
    }
    app.stop().await;
}

pub async fn enrolments_are_refused_clearly() {
    let mut slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_directory(&slapd, dir.path(), |_| {}).await;
    let mut bob = admin(&app).await;
    for (args, code, message) in [
        (
            json!({"username": "nobody"}),
            404,
            "The directory has no user who signs in as \"nobody\".",
        ),
        (
            json!({"username": "al*"}),
            404,
            "The directory has no user who signs in as \"al*\".",
        ),
        // An entry the user filter does not admit (a group), a DN that is no DN.
        (json!({"dn": USERS_GROUP}), 404, ""),
        (json!({"dn": "not a dn="}), 404, ""),
        (
            json!({"username": "alice", "dn": format!("uid=alice,{PEOPLE}")}),
            400,
            "Give exactly one of \"username\" and \"dn\" (not empty).",
        ),
        (json!({}), 400, ""),
        (json!({"username": " "}), 400, ""),
        (
            json!({"username": "alice", "secret": "JBSWY3DPEHPK3PXP"}),
            400,
            "",
        ),
    ] {
        let reply = bob.rpc("admin_totp", args.clone()).await;
        assert_eq!(error_code(&reply), code, "{args}: {reply}");
        if !message.is_empty() {
            assert_eq!(reply["args"]["message"], message, "{args}");
        }
    }
    // Not an admin.
    let mut alice = app.connect().await;
    ws_auth(&mut alice, "alice", "alice-pw", Some(true)).await;
    let reply = alice.rpc("admin_totp", json!({"username": "alice"})).await;
    assert_eq!(error_code(&reply), 403, "{reply}");
    // The directory away: 503, and the connection goes on.
    slapd.stop();
    let reply = bob.rpc("admin_totp", json!({"username": "alice"})).await;
    assert_eq!(error_code(&reply), 503, "{reply}");
    slapd.resume();
    let reply = bob.rpc("admin_totp", json!({"username": "alice"})).await;
    secret_of(&reply);
    app.stop().await;

    // A server without a directory: local users' TOTP is in the users file.
    let app = TestApp::spawn().await;
    let (mut admin, _) = app.login("astravdi").await;
    let reply = admin.rpc("admin_totp", json!({"username": "alice"})).await;
    assert_eq!(error_code(&reply), 422, "{reply}");
    app.stop().await;
}

pub async fn the_cli_enrols_a_directory_user_through_the_server() {
    let slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_directory(&slapd, dir.path(), |_| {}).await;
    let run = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "user",
            "--file",
            "/nonexistent/users.toml",
            "totp",
            "--directory",
            "--server",
        ];
        let server = app.ws_url();
        let token_file = dir.path().join("token");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_poolgate"));
        args.push(&server);
        args.extend(["--admin", "bob", "--password-stdin", "--token-file"]);
        cmd.args(&args)
            .arg(&token_file)
            .args(extra)
            .arg(name)
            .env_remove("POOLGATE_SERVER")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"bob-pw\n").unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = tokio::task::block_in_place(|| run(&format!("uid=alice,{PEOPLE}"), &[]));
    assert!(ok, "{out}{err}");
    assert!(out.contains("TOTP enabled for alice"), "{out}");
    let url = out
        .lines()
        .find(|l| l.starts_with("otpauth://"))
        .unwrap_or_else(|| panic!("a URI: {out}"));
    let secret = url
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("secret="))
        .unwrap()
        .to_owned();
    let mut c = app.connect().await;
    let reply = c
        .rpc(
            "auth",
            json!({"username": "alice", "password": "alice-pw", "otp_code": code(&secret, 0)}),
        )
        .await;
    assert_eq!(reply["name"], "response", "{reply}");

    let (ok, out, err) = tokio::task::block_in_place(|| run("alice", &["--disable"]));
    assert!(ok && out.contains("TOTP disabled for alice"), "{out}{err}");
    let (ok, _, err) = tokio::task::block_in_place(|| run("nobody", &[]));
    assert!(!ok && err.contains("404"), "{err}");
    app.stop().await;
}
