//! Security keys for directory users: an admin's enrolment link, then the key after the
//! directory password — and a wrong directory password gets the same key challenge (which
//! never completes), so the answer does not tell a right password from a wrong one.

use poolgate_test_common::webauthn::{Key, origin_of};
use serde_json::json;

use crate::app::{app_with_directory, ws_auth};
use crate::helpers::*;
use crate::slapd::*;
use crate::totp::admin;

pub async fn a_directory_user_signs_in_with_a_key_after_the_directory_password() {
    let slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_directory(&slapd, dir.path(), |_| {}).await;
    let mut bob = admin(&app).await;
    let reply = bob
        .rpc("admin_enroll_key", json!({"username": "alice"}))
        .await;
    assert_eq!(reply["name"], "response", "{reply}");
    let url = reply["args"]["url"].as_str().unwrap();
    let code = url.rsplit_once("enroll=").unwrap().1;
    let mut key = Key::new(&origin_of(&app));
    let mut c = app.connect().await;
    let begun = c
        .rpc("key_register_begin", json!({"enroll_code": code}))
        .await;
    assert_eq!(begun["args"]["username"], "alice", "{begun}");
    let credential = key.register(&begun["args"]["publicKey"]);
    let done = c
        .rpc(
            "key_register_finish",
            json!({"registration": begun["args"]["registration"], "name": "alice's key", "credential": credential}),
        )
        .await;
    assert_eq!(done["name"], "response", "{done}");

    let mut c = app.connect().await;
    let wrong = ws_auth(&mut c, "alice", "wrong", Some(true)).await;
    assert_eq!(error_code(&wrong), 428, "the same challenge: {wrong}");
    assert_eq!(wrong["args"]["err_code"], 102);
    let answer = key.sign(&wrong["args"]["publicKey"]);
    let reply = c
        .rpc(
            "webauthn_verify",
            json!({"mfa_token": wrong["args"]["mfa_token"], "credential": answer}),
        )
        .await;
    assert_eq!(error_code(&reply), 401, "never completes: {reply}");
    let right = ws_auth(&mut c, "alice", "alice-pw", Some(true)).await;
    assert_eq!(error_code(&right), 428, "{right}");
    let answer = key.sign(&right["args"]["publicKey"]);
    let reply = c
        .rpc(
            "webauthn_verify",
            json!({"mfa_token": right["args"]["mfa_token"], "credential": answer}),
        )
        .await;
    assert_eq!(reply["name"], "response", "{reply}");
}

/// Registers a key for `username` through an admin's enrolment link (`passkey`: a
/// discoverable one).
async fn enrol(app: &TestApp, username: &str, passkey: bool) -> Key {
    let mut bob = admin(app).await;
    let reply = bob
        .rpc("admin_enroll_key", json!({"username": username}))
        .await;
    assert_eq!(reply["name"], "response", "{reply}");
    let url = reply["args"]["url"].as_str().unwrap();
    let code = url.rsplit_once("enroll=").unwrap().1;
    let mut key = Key::new(&origin_of(app));
    let mut c = app.connect().await;
    // A passkey by link takes the directory password too.
    let begun = c
        .rpc(
            "key_register_begin",
            json!({"enroll_code": code, "passkey": passkey, "password": "alice-pw"}),
        )
        .await;
    assert_eq!(begun["name"], "response", "{begun}");
    let credential = key.register(&begun["args"]["publicKey"]);
    let done = c
        .rpc(
            "key_register_finish",
            json!({"registration": begun["args"]["registration"], "name": "alice's passkey", "credential": credential}),
        )
        .await;
    assert_eq!(done["name"], "response", "{done}");
    key
}

/// A sign-in with `key` alone (no username): the `webauthn_verify` reply.
async fn passkey_sign_in(app: &TestApp, key: &mut Key) -> serde_json::Value {
    let mut c = app.connect().await;
    let begun = c.rpc("webauthn_begin", json!({})).await;
    assert_eq!(begun["name"], "response", "{begun}");
    let answer = key.sign(&begun["args"]["publicKey"]);
    c.rpc(
        "webauthn_verify",
        json!({"mfa_token": begun["args"]["mfa_token"], "credential": answer}),
    )
    .await
}

/// A passkey signs a directory user in without their directory password, so the directory is
/// asked whether the account still stands: while it cannot be asked the sign-in is refused
/// (503, as a password's would be), and once the account is disabled or deleted (403) — not
/// merely ended by the next re-check after a session was handed out.
pub async fn a_directory_users_passkey_signs_in_only_while_the_directory_admits_them() {
    let mut slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_directory(&slapd, dir.path(), |_| {}).await;
    let mut key = enrol(&app, "alice", true).await;
    let reply = passkey_sign_in(&app, &mut key).await;
    assert_eq!(reply["name"], "response", "{reply}");
    assert_eq!(reply["args"][2], "alice", "{reply}");

    slapd.stop();
    let reply = passkey_sign_in(&app, &mut key).await;
    assert_eq!(error_code(&reply), 503, "directory down: {reply}");
    slapd.resume();
    let reply = passkey_sign_in(&app, &mut key).await;
    assert_eq!(reply["name"], "response", "back up: {reply}");

    slapd.modify(&format!(
        "dn: uid=alice,{PEOPLE}\nchangetype: modify\nadd: objectClass\nobjectClass: extensibleObject\n-\nadd: userAccountControl\nuserAccountControl: 514\n"
    ));
    let reply = passkey_sign_in(&app, &mut key).await;
    assert_eq!(error_code(&reply), 403, "disabled: {reply}");

    slapd.modify(&format!("dn: uid=alice,{PEOPLE}\nchangetype: delete\n"));
    let reply = passkey_sign_in(&app, &mut key).await;
    assert_eq!(error_code(&reply), 403, "deleted: {reply}");
    app.stop().await;
}

/// A directory user adds a key by proving their directory password again, as a local user
/// proves theirs: a session alone proves nothing — here alice's token resumed on a thief's
/// socket moments after her sign-in, sending `{}` — and a wrong password is refused (401).
pub async fn a_directory_user_adds_a_key_only_with_the_directory_password_again() {
    let slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_directory(&slapd, dir.path(), |_| {}).await;
    let mut alice = app.connect().await;
    let signed_in = ws_auth(&mut alice, "alice", "alice-pw", Some(true)).await;
    assert_eq!(signed_in["name"], "response", "{signed_in}");
    let token = signed_in["args"][0].as_str().unwrap();

    let mut thief = app.connect_from([127, 0, 0, 66]).await;
    let resumed = thief.rpc("auth_token", json!({"token": token})).await;
    assert_eq!(resumed["name"], "response", "{resumed}");
    let begun = thief
        .rpc("key_register_begin", json!({"passkey": true}))
        .await;
    assert_eq!(error_code(&begun), 400, "no password: {begun}");
    let begun = thief
        .rpc(
            "key_register_begin",
            json!({"passkey": true, "password": "guess"}),
        )
        .await;
    assert_eq!(error_code(&begun), 401, "a wrong password: {begun}");

    let begun = alice
        .rpc(
            "key_register_begin",
            json!({"passkey": true, "password": "alice-pw"}),
        )
        .await;
    assert_eq!(begun["name"], "response", "{begun}");
    assert_eq!(begun["args"]["username"], "alice");
    let mut key = Key::new(&origin_of(&app));
    let credential = key.register(&begun["args"]["publicKey"]);
    let done = alice
        .rpc(
            "key_register_finish",
            json!({"registration": begun["args"]["registration"], "name": "alice's passkey", "credential": credential}),
        )
        .await;
    assert_eq!(done["name"], "response", "{done}");
    let reply = passkey_sign_in(&app, &mut key).await;
    assert_eq!(reply["args"][2], "alice", "{reply}");
    app.stop().await;
}
