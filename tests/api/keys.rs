//! Security keys and passkeys: the rules of who may register a key and how (protocol/webauthn.md),
//! with the software authenticator of tests/common/webauthn.rs. The ceremonies themselves run
//! on every backend (tests/common/webauthn.rs, `backend_cases!`).

use poolgate_test_common::webauthn::*;
use serde_json::{Value, json};

use crate::helpers::*;

/// A passkey sign-in without a username: the `webauthn_verify` reply.
async fn passkey_sign_in(c: &mut Client, key: &mut Key) -> Value {
    let begun = c.rpc("webauthn_begin", json!({})).await;
    assert_eq!(begun["name"], "response", "{begun}");
    let credential = key.sign(&begun["args"]["publicKey"]);
    c.rpc(
        "webauthn_verify",
        json!({"mfa_token": begun["args"]["mfa_token"], "credential": credential}),
    )
    .await
}

/// A single sign-on user signs in at the provider: no key is registered for them (an admin's
/// link is refused, 422), and a passkey registered before they became one no longer signs them
/// in around the provider (401) — the provider never sees such a sign-in, and it would outlive
/// their account there.
#[tokio::test]
async fn a_single_sign_on_user_gets_no_keys_and_an_earlier_passkey_does_not_sign_them_in() {
    fn user_5_adfs(config: &mut poolgate::Config, adfs: bool) {
        let user = config.users.iter_mut().find(|u| u.username == "user-5");
        user.unwrap().adfs_enabled = adfs;
    }
    // user-5 before the switch to single sign-on: a local user with a passkey.
    let app = app_on("sqlite:", |c| user_5_adfs(c, false)).await;
    let mut key = Key::new(&origin_of(&app));
    enrol(&app, &mut key, "user-5", true).await;
    let mut c = app.connect().await;
    let reply = passkey_sign_in(&mut c, &mut key).await;
    assert_eq!(reply["args"][2], "user-5", "before: {reply}");

    let app = app.restart_with(|c| user_5_adfs(c, true)).await;
    key.origin = origin_of(&app).parse().unwrap();
    let mut c = app.connect().await;
    let reply = passkey_sign_in(&mut c, &mut key).await;
    assert_eq!(error_code(&reply), 401, "after: {reply}");
    let (mut admin, _) = app.login("astravdi").await;
    let reply = admin
        .rpc("admin_enroll_key", json!({"username": "user-5"}))
        .await;
    assert_eq!(error_code(&reply), 422, "{reply}");
    assert!(
        reply["args"]["message"]
            .as_str()
            .unwrap()
            .contains("single sign-on"),
        "{reply}"
    );
}
