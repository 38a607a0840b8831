//! Review: a single sign-on person (a federated user, no local password) adds a passkey with
//! `{}` — here from a stolen session token on another socket — and that passkey then signs in
//! without the provider. Copy to tests/oidc/keysreview.rs and register it in tests/oidc/main.rs.

use poolgate_test_common::oidc_provider::MFA_USER;
use poolgate_test_common::webauthn::Key;
use serde_json::json;

use crate::flows::site;

pub async fn a_stolen_sso_session_adds_a_passkey_that_skips_the_provider() {
    let site = site(|_| {}).await;
    let (_, mut victim) = site.portal_socket(MFA_USER).await;
    let reply = victim.rpc("auth_sso_code", json!({})).await;
    println!("OBSERVED victim's sso sign-in: {}", reply["args"][2]);
    let token = reply["args"][0].as_str().unwrap().to_owned();
    // The thief: the token on a socket of their own.
    let mut thief = site.app.connect().await;
    let r = thief.rpc("auth_token", json!({"token": token})).await;
    println!("OBSERVED thief resumes: {}", r["name"]);
    let begun = thief
        .rpc("key_register_begin", json!({"passkey": true}))
        .await;
    println!("OBSERVED thief key_register_begin {{}}: {}", begun["name"]);
    let mut key = Key::new(&site.public_url);
    let cred = key.register(&begun["args"]["publicKey"]);
    let done = thief
        .rpc("key_register_finish", json!({"registration": begun["args"]["registration"], "name": "thief", "credential": cred}))
        .await;
    println!("OBSERVED thief finish: {}", done["name"]);
    let mut later = site.app.connect().await;
    let b = later.rpc("webauthn_begin", json!({})).await;
    let cred = key.sign(&b["args"]["publicKey"]);
    let r = later
        .rpc(
            "webauthn_verify",
            json!({"mfa_token": b["args"]["mfa_token"], "credential": cred}),
        )
        .await;
    println!("OBSERVED passkey sign-in without the provider: {r}");
}
