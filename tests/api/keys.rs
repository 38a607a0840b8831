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

/// `webauthn_begin` keeps a ceremony in the store until it is answered or expires: an address
/// has at most `lockout_address_attempts` unanswered ones (429 past that, whatever socket they
/// come from), an answer gives its count back, and neither another address nor the address's
/// password sign-ins are held back by it.
#[tokio::test]
async fn unanswered_passkey_sign_ins_are_held_to_the_address_limit() {
    let app = app_on("memory", |c| c.lockout_address_attempts = 4).await;
    let mut key = Key::new(&origin_of(&app));
    enrol(&app, &mut key, KEY_USER, true).await;
    let flooder = [127, 0, 0, 77];
    let mut kept = Vec::new();
    let mut refused = None;
    // Two begins a socket (a socket's own cap is max_auth_failures), new sockets after.
    'flood: for _ in 0..5 {
        let mut c = app.connect_from(flooder).await;
        for _ in 0..2 {
            let reply = c.rpc("webauthn_begin", json!({})).await;
            if reply["name"] != "response" {
                refused = Some(reply);
                break 'flood;
            }
            kept.push(reply["args"].clone());
        }
    }
    let refused = refused.expect("a flood of begins is refused");
    assert_eq!(kept.len(), 4, "{refused}");
    assert_eq!(error_code(&refused), 429, "{refused}");
    assert!(
        refused["args"]["message"]
            .as_str()
            .unwrap()
            .contains("passkey sign-ins begun"),
        "{refused}"
    );
    // Elsewhere, passkeys still sign in; here, passwords still do.
    let mut other = app.connect_from([127, 0, 0, 78]).await;
    let reply = passkey_sign_in(&mut other, &mut key).await;
    assert_eq!(reply["args"][2], KEY_USER, "{reply}");
    let mut here = app.connect_from(flooder).await;
    let token = here.auth("user-2", PASSWORD).await;
    assert!(token.starts_with("pgt_"));
    // One answered: its count is given back, and one more may begin.
    let mut c = app.connect_from(flooder).await;
    let credential = key.sign(&kept[0]["publicKey"]);
    let reply = c
        .rpc(
            "webauthn_verify",
            json!({"mfa_token": kept[0]["mfa_token"], "credential": credential}),
        )
        .await;
    assert_eq!(reply["args"][2], KEY_USER, "{reply}");
    let mut c = app.connect_from(flooder).await;
    let again = c.rpc("webauthn_begin", json!({})).await;
    assert_eq!(again["name"], "response", "{again}");
    let again = c.rpc("webauthn_begin", json!({})).await;
    assert_eq!(error_code(&again), 429, "{again}");
}

/// An enrolment link may leak (a mailbox, a chat): alone, it does not make a passkey — one
/// signs in without a password, so registering one by link takes the user's password too
/// (none: 400; a wrong one: 401, counted as a wrong password) — while a second-factor key,
/// useless without the password, still needs only the link.
#[tokio::test]
async fn an_enrolment_link_alone_does_not_make_a_passkey() {
    let app = app_on("memory", |_| {}).await;
    let code = enrol_code(&app, KEY_USER).await;
    let mut thief = app.connect_from([127, 0, 0, 9]).await;
    let begun = thief
        .rpc(
            "key_register_begin",
            json!({"enroll_code": code, "passkey": true}),
        )
        .await;
    assert_eq!(error_code(&begun), 400, "{begun}");
    assert!(
        begun["args"]["message"]
            .as_str()
            .unwrap()
            .contains("password"),
        "{begun}"
    );
    let begun = thief
        .rpc(
            "key_register_begin",
            json!({"enroll_code": code, "passkey": true, "password": "guess"}),
        )
        .await;
    assert_eq!(error_code(&begun), 401, "{begun}");
    assert_eq!(begun["args"]["err_code"], 999, "a wrong password: {begun}");

    // The person, with the link and their password, registers a passkey; it signs in alone.
    let mut person = app.connect().await;
    let begun = person
        .rpc(
            "key_register_begin",
            json!({"enroll_code": code, "passkey": true, "password": PASSWORD}),
        )
        .await;
    assert_eq!(begun["name"], "response", "{begun}");
    let mut key = Key::new(&origin_of(&app));
    let credential = key.register(&begun["args"]["publicKey"]);
    let done = person
        .rpc(
            "key_register_finish",
            json!({"registration": begun["args"]["registration"], "name": "mine", "credential": credential}),
        )
        .await;
    assert_eq!(done["name"], "response", "{done}");
    let reply = passkey_sign_in(&mut person, &mut key).await;
    assert_eq!(reply["args"][2], KEY_USER, "{reply}");

    // A second-factor key by link alone.
    let code = enrol_code(&app, KEY_USER).await;
    let begun = thief
        .rpc("key_register_begin", json!({"enroll_code": code}))
        .await;
    assert_eq!(begun["name"], "response", "{begun}");
}

/// A user has one live enrolment link: a new one replaces the earlier (an administrator who
/// fears a link leaked sends a new one), and leaves other users' links alone.
#[tokio::test]
async fn a_new_enrolment_link_replaces_the_users_earlier_one() {
    let app = app_on("memory", |_| {}).await;
    let earlier = enrol_code(&app, KEY_USER).await;
    let someone_elses = enrol_code(&app, "user-2").await;
    let later = enrol_code(&app, KEY_USER).await;
    let mut c = app.connect().await;
    let reply = c
        .rpc("key_register_begin", json!({"enroll_code": earlier}))
        .await;
    assert_eq!(error_code(&reply), 401, "the earlier link: {reply}");
    for code in [later, someone_elses] {
        let reply = c
            .rpc("key_register_begin", json!({"enroll_code": code}))
            .await;
        assert_eq!(reply["name"], "response", "{reply}");
    }
}

/// A stolen session token must not become a password oracle: re-proving the password to add a
/// key is counted per session, wherever its sockets are (each address is "known" by the token,
/// so the username's back-off spares them), and the session is ended at the third wrong one
/// — everywhere. Two typos and the right password leave it alone.
#[tokio::test]
async fn a_session_that_cannot_give_its_password_to_add_a_key_is_ended() {
    let app = app_on("memory", |_| {}).await;
    let (mut owner, token) = app.login("user-2").await;
    for _ in 0..2 {
        let wrong = owner
            .rpc("key_register_begin", json!({"password": "typo"}))
            .await;
        assert_eq!(error_code(&wrong), 401, "{wrong}");
    }
    let right = owner
        .rpc("key_register_begin", json!({"password": PASSWORD}))
        .await;
    assert_eq!(right["name"], "response", "{right}");

    for i in 0..3 {
        let mut thief = app.connect_from([127, 0, 0, 30 + i]).await;
        let resumed = thief.rpc("auth_token", json!({"token": token})).await;
        assert_eq!(resumed["name"], "response", "guess {i}: {resumed}");
        let wrong = thief
            .rpc("key_register_begin", json!({"password": "guess"}))
            .await;
        assert_eq!(error_code(&wrong), 401, "{wrong}");
    }
    let mut thief = app.connect_from([127, 0, 0, 40]).await;
    let resumed = thief.rpc("auth_token", json!({"token": token})).await;
    assert_eq!(error_code(&resumed), 401, "ended: {resumed}");
    let pools = owner.rpc("pools", json!({})).await;
    assert_eq!(error_code(&pools), 401, "the owner's socket too: {pools}");
    // The person signs in again.
    let (mut again, _) = app.login("user-2").await;
    assert_eq!(again.rpc("pools", json!({})).await["name"], "response");
}
