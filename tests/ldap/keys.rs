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
