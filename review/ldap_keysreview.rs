//! Review: a directory user's passkey after the directory account is deleted or disabled, and
//! while the directory is down. Copy to tests/ldap/keysreview.rs and register the case in
//! tests/ldap/main.rs (`mod keysreview;` and a Trial for `keysreview::passkey_outlives_the_directory_account`).

use poolgate_test_common::webauthn::{Key, origin_of};
use serde_json::json;

use crate::app::app_with_directory;
use crate::helpers::*;
use crate::slapd::*;
use crate::totp::admin;

async fn passkey_sign_in(app: &TestApp, key: &mut Key) -> serde_json::Value {
    let mut c = app.connect().await;
    let b = c.rpc("webauthn_begin", json!({})).await;
    let cred = key.sign(&b["args"]["publicKey"]);
    let r = c
        .rpc(
            "webauthn_verify",
            json!({"mfa_token": b["args"]["mfa_token"], "credential": cred}),
        )
        .await;
    let pools = c.rpc("pools", json!({})).await;
    json!({"verify": r, "pools": pools["name"]})
}

pub async fn passkey_outlives_the_directory_account() {
    let mut slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    // directory_recheck left at its default (300 s).
    let app = app_with_directory(&slapd, dir.path(), |_| {}).await;
    let mut bob = admin(&app).await;
    let reply = bob
        .rpc("admin_enroll_key", json!({"username": "alice"}))
        .await;
    let code = reply["args"]["url"]
        .as_str()
        .unwrap()
        .rsplit_once("enroll=")
        .unwrap()
        .1
        .to_owned();
    let mut key = Key::new(&origin_of(&app));
    let mut c = app.connect().await;
    let begun = c
        .rpc(
            "key_register_begin",
            json!({"enroll_code": code, "passkey": true}),
        )
        .await;
    let credential = key.register(&begun["args"]["publicKey"]);
    let done = c
        .rpc("key_register_finish", json!({"registration": begun["args"]["registration"], "name": "alice's passkey", "credential": credential}))
        .await;
    assert_eq!(done["name"], "response", "{done}");
    println!(
        "OBSERVED passkey sign-in, account live: {}",
        passkey_sign_in(&app, &mut key).await
    );
    slapd.modify(&format!(
        "dn: uid=alice,{PEOPLE}\nchangetype: modify\nadd: objectClass\nobjectClass: extensibleObject\n-\nadd: userAccountControl\nuserAccountControl: 514\n"
    ));
    let mut p = app.connect().await;
    let pw = p
        .rpc(
            "auth",
            json!({"username": "alice", "password": "alice-pw", "ldap": true}),
        )
        .await;
    println!(
        "OBSERVED password sign-in, account disabled: {} {}",
        error_code(&pw),
        pw["args"]["err_code"]
    );
    println!(
        "OBSERVED passkey sign-in, account disabled: {}",
        passkey_sign_in(&app, &mut key).await
    );
    slapd.modify(&format!("dn: uid=alice,{PEOPLE}\nchangetype: delete\n"));
    println!(
        "OBSERVED passkey sign-in, account deleted: {}",
        passkey_sign_in(&app, &mut key).await
    );
    slapd.stop();
    println!(
        "OBSERVED passkey sign-in, directory down: {}",
        passkey_sign_in(&app, &mut key).await
    );
    app.stop().await;
}

/// With directory_recheck at 1 s: a deleted user's passkey session is ended by the re-check,
/// and the passkey signs in again at once.
pub async fn passkey_signs_in_again_after_each_recheck() {
    let slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_directory(&slapd, dir.path(), |c| {
        c.directory_recheck = std::time::Duration::from_secs(1)
    })
    .await;
    let mut bob = admin(&app).await;
    let reply = bob
        .rpc("admin_enroll_key", json!({"username": "alice"}))
        .await;
    let code = reply["args"]["url"]
        .as_str()
        .unwrap()
        .rsplit_once("enroll=")
        .unwrap()
        .1
        .to_owned();
    let mut key = Key::new(&origin_of(&app));
    let mut c = app.connect().await;
    let begun = c
        .rpc(
            "key_register_begin",
            json!({"enroll_code": code, "passkey": true}),
        )
        .await;
    let credential = key.register(&begun["args"]["publicKey"]);
    c.rpc("key_register_finish", json!({"registration": begun["args"]["registration"], "name": "p", "credential": credential})).await;
    slapd.modify(&format!("dn: uid=alice,{PEOPLE}\nchangetype: delete\n"));
    for round in 0..3 {
        let mut s = app.connect().await;
        let b = s.rpc("webauthn_begin", json!({})).await;
        let cred = key.sign(&b["args"]["publicKey"]);
        let r = s
            .rpc(
                "webauthn_verify",
                json!({"mfa_token": b["args"]["mfa_token"], "credential": cred}),
            )
            .await;
        let t = std::time::Instant::now();
        let mut alive = 0;
        loop {
            let p =
                tokio::time::timeout(std::time::Duration::from_secs(1), s.rpc("pools", json!({})))
                    .await;
            match p {
                Ok(v) if v["name"] == "response" => alive += 1,
                _ => break,
            }
            if t.elapsed() > std::time::Duration::from_secs(8) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        println!(
            "OBSERVED round {round}: deleted user's passkey sign-in {}; pools answered {alive} times over {:?}",
            r["name"],
            t.elapsed()
        );
    }
    app.stop().await;
}

/// A directory user's session token, stolen within 5 minutes of their sign-in, adds the
/// thief's passkey with `{}` (no password asked); the passkey then signs in alone.
pub async fn a_stolen_fresh_directory_session_adds_a_passkey() {
    let slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_directory(&slapd, dir.path(), |_| {}).await;
    let mut victim = app.connect().await;
    let r = crate::app::ws_auth(&mut victim, "alice", "alice-pw", Some(true)).await;
    let token = r["args"][0].as_str().unwrap().to_owned();
    let mut thief = app.connect_from([127, 0, 0, 66]).await;
    let resumed = thief.rpc("auth_token", json!({"token": token})).await;
    println!("OBSERVED thief resumes alice's token: {}", resumed["name"]);
    let begun = thief
        .rpc("key_register_begin", json!({"passkey": true}))
        .await;
    println!("OBSERVED thief key_register_begin {{}}: {}", begun["name"]);
    let mut key = Key::new(&origin_of(&app));
    let cred = key.register(&begun["args"]["publicKey"]);
    let done = thief
        .rpc("key_register_finish", json!({"registration": begun["args"]["registration"], "name": "alice's laptop", "credential": cred}))
        .await;
    println!("OBSERVED thief finish: {}", done["name"]);
    let mut later = app.connect_from([127, 0, 0, 67]).await;
    let b = later.rpc("webauthn_begin", json!({})).await;
    let cred = key.sign(&b["args"]["publicKey"]);
    let r = later
        .rpc(
            "webauthn_verify",
            json!({"mfa_token": b["args"]["mfa_token"], "credential": cred}),
        )
        .await;
    println!("OBSERVED thief's passkey sign-in as alice: {r}");
    app.stop().await;
}
