//! Security keys over a real WebSocket, with a software authenticator (webauthn-authenticator-rs's
//! `SoftToken`: real key pairs, real signatures, a real sign counter). These cases run on every
//! backend (`backend_cases!`): the keys and the ceremonies' states live in the store.
//!
//! The soft token keeps no resident credentials, so for a passkey sign-in without a username
//! [`Key`] plays the part a resident authenticator and its browser play: it answers with the
//! credential it registered for this relying party and returns the user handle it was given at
//! registration (the user handle is not signed, by the WebAuthn specification). Hand-made
//! answers appear only where a case breaks one on purpose: another origin, another relying
//! party, a cloned token (its state copied, counter and all).

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use poolgate::Config;
use poolgate::store::{SecurityKey, now_ms};
use serde_json::{Value, json};
use webauthn_authenticator_rs::AuthenticatorBackend;
use webauthn_authenticator_rs::prelude::*;
use webauthn_authenticator_rs::softtoken::SoftToken;

use crate::helpers::*;

/// The demo's user who signs in with a security key.
pub const KEY_USER: &str = "user-3";
pub const KEY_USER_ID: &str = "e8d8dd14-cb09-4099-b96e-a83c6b09496d";

/// A security key (a software one) used from a browser at `origin`.
pub struct Key {
    token: SoftToken,
    /// The user handle of each credential registered as a passkey (what a resident key keeps).
    handles: HashMap<Vec<u8>, Vec<u8>>,
    pub origin: Url,
}

impl Key {
    pub fn new(origin: &str) -> Key {
        Key {
            token: SoftToken::new(true).expect("a soft token").0,
            handles: HashMap::new(),
            origin: Url::parse(origin).unwrap(),
        }
    }

    /// Another copy of this key, its sign counter included (a cloned authenticator).
    pub fn cloned(&self) -> Key {
        let bytes = self.token.to_cbor().unwrap();
        Key {
            token: SoftToken::from_cbor(&bytes).unwrap(),
            handles: self.handles.clone(),
            origin: self.origin.clone(),
        }
    }

    /// `navigator.credentials.create({publicKey})`, as its JSON.
    pub fn register(&mut self, public_key: &Value) -> Value {
        let mut options = public_key.clone();
        let passkey = options["authenticatorSelection"]["residentKey"] == "required";
        if passkey {
            // The soft token refuses to be asked for a resident key; the user handle is kept
            // here instead.
            options["authenticatorSelection"]["residentKey"] = json!("discouraged");
            options["authenticatorSelection"]["requireResidentKey"] = json!(false);
        }
        let options: CreationChallengeResponse =
            serde_json::from_value(json!({"publicKey": options})).unwrap();
        let handle = options.public_key.user.id.to_vec();
        let credential = self
            .token
            .do_registration(self.origin.clone(), options)
            .expect("the soft token registers");
        if passkey {
            self.handles.insert(credential.raw_id.to_vec(), handle);
        }
        serde_json::to_value(credential).unwrap()
    }

    /// `navigator.credentials.get({publicKey})` on this key's origin, as its JSON.
    pub fn sign(&mut self, public_key: &Value) -> Value {
        self.sign_at(self.origin.clone(), public_key)
    }

    /// The same, from a page of `origin` (the low-level call: no browser checks the origin
    /// against the relying party, as a phishing page's own client would not).
    pub fn sign_at(&mut self, origin: Url, public_key: &Value) -> Value {
        let mut options: RequestChallengeResponse =
            serde_json::from_value(json!({"publicKey": public_key})).unwrap();
        let discoverable = options.public_key.allow_credentials.is_empty();
        if discoverable {
            // A resident key offers its own credential for the relying party.
            let mut allow: Vec<Value> = Vec::new();
            for id in self.handles.keys() {
                allow.push(json!({"type": "public-key", "id": URL_SAFE_NO_PAD.encode(id)}));
            }
            let mut with = public_key.clone();
            with["allowCredentials"] = Value::Array(allow);
            options = serde_json::from_value(json!({"publicKey": with})).unwrap();
        }
        let mut credential = self
            .token
            .perform_auth(origin, options.public_key, 60_000)
            .expect("the soft token signs");
        if discoverable {
            credential.response.user_handle =
                self.handles.get(&credential.raw_id.to_vec()).cloned();
        }
        serde_json::to_value(credential).unwrap()
    }
}

/// The demo on `state`, with fast simulated timings and `edit` applied.
pub async fn app_on(state: &str, edit: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = demo_config();
    config.state = state.parse().expect("a state URL");
    fast_sim(&mut config, OK, OK);
    edit(&mut config);
    TestApp::spawn_config(config).await
}

/// The origin a browser on this machine uses (no `public_url`: `http://localhost:PORT`).
pub fn origin_of(app: &TestApp) -> String {
    format!("http://localhost:{}", app.addr.port())
}

/// An admin's enrolment link for `username`: its code.
pub async fn enrol_code(app: &TestApp, username: &str) -> String {
    let (mut admin, _) = app.login("astravdi").await;
    let reply = admin
        .rpc("admin_enroll_key", json!({"username": username}))
        .await;
    assert_eq!(reply["name"], "response", "{reply}");
    let url = reply["args"]["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{}/?enroll=", origin_of(app))),
        "{url}"
    );
    url.rsplit_once("enroll=").unwrap().1.to_owned()
}

/// Registers `key` through an enrolment link, on a socket that has not signed in (a passkey
/// with the user's password too). The registration's reply (`{id, name, created}`).
pub async fn enrol(app: &TestApp, key: &mut Key, username: &str, passkey: bool) -> Value {
    let code = enrol_code(app, username).await;
    let mut c = app.connect().await;
    let mut args = json!({"enroll_code": code, "passkey": passkey});
    if passkey {
        args["password"] = json!(PASSWORD);
    }
    let begun = c.rpc("key_register_begin", args).await;
    assert_eq!(begun["name"], "response", "{begun}");
    assert_eq!(begun["args"]["username"], username);
    let credential = key.register(&begun["args"]["publicKey"]);
    let done = c
        .rpc(
            "key_register_finish",
            json!({"registration": begun["args"]["registration"], "name": "YubiKey on my keyring", "credential": credential}),
        )
        .await;
    assert_eq!(done["name"], "response", "{done}");
    // The link was used up.
    let again = c
        .rpc("key_register_begin", json!({"enroll_code": code}))
        .await;
    assert_eq!(error_code(&again), 401, "{again}");
    done["args"].clone()
}

/// `auth` for a key user: the 428/102's `mfa_token` and `publicKey`.
pub async fn password_step(c: &mut Client, username: &str) -> (String, Value) {
    let reply = c
        .rpc("auth", json!({"username": username, "password": PASSWORD}))
        .await;
    assert_eq!(error_code(&reply), 428, "{reply}");
    assert_eq!(reply["args"]["err_code"], 102, "{reply}");
    let token = reply["args"]["mfa_token"].as_str().expect("mfa_token");
    (token.to_owned(), reply["args"]["publicKey"].clone())
}

/// A full sign-in with the password and `key`: the `webauthn_verify` reply.
pub async fn sign_in_with(c: &mut Client, key: &mut Key, username: &str) -> Value {
    let (token, options) = password_step(c, username).await;
    let credential = key.sign(&options);
    c.rpc(
        "webauthn_verify",
        json!({"mfa_token": token, "credential": credential}),
    )
    .await
}

/// `poolgate_logins_total{outcome=…}` now.
pub async fn logins(app: &TestApp, outcome: &str) -> f64 {
    let text = reqwest::get(app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let name = format!("poolgate_logins_total{{outcome=\"{outcome}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(&name))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// Enrolment by an admin's link, then user-3 signs in with password and key (the 428/102
/// carries the request options); the key's use is kept; `keys` lists it. On a shared store, a
/// second instance finishes a ceremony the first began, and signs in with the key registered
/// on the first.
pub async fn a_key_enrolled_by_link_signs_in_after_the_password(state: &str) {
    let app = app_on(state, |_| {}).await;
    let mut key = Key::new(&origin_of(&app));
    let registered = enrol(&app, &mut key, KEY_USER, false).await;
    assert_eq!(registered["name"], "YubiKey on my keyring");
    let before = logins(&app, "ok").await;
    let mut c = app.connect().await;
    let reply = sign_in_with(&mut c, &mut key, KEY_USER).await;
    assert_eq!(reply["name"], "response", "{reply}");
    assert!(reply["args"][0].as_str().unwrap().starts_with("pgt_"));
    assert_eq!(
        reply["args"].as_array().unwrap().len(),
        2,
        "as auth answers"
    );
    assert_eq!(logins(&app, "ok").await - before, 1.0);
    let listed = c.rpc("keys", json!({})).await;
    let keys = listed["args"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{listed}");
    assert_eq!(keys[0]["id"], registered["id"]);
    assert_eq!(keys[0]["passkey"], false);
    assert!(keys[0]["last_used"].is_string(), "{listed}");
    let pools = c.rpc("pools", json!({})).await;
    assert_eq!(pools["name"], "response", "signed in: {pools}");
    if app.state.store.is_shared() {
        // Same store, same secrets: another instance of the deployment, reached by browsers
        // at the same origin (behind one public_url in production; here A's origin).
        let mut config = app.state.config.clone();
        config.webauthn_origins = vec![origin_of(&app)];
        let b = TestApp::spawn_config(config).await;
        let mut on_a = app.connect().await;
        let (token, options) = password_step(&mut on_a, KEY_USER).await;
        let mut on_b = b.connect().await;
        let credential = key.sign(&options);
        let reply = on_b
            .rpc(
                "webauthn_verify",
                json!({"mfa_token": token, "credential": credential}),
            )
            .await;
        assert_eq!(
            reply["name"], "response",
            "begun on A, finished on B: {reply}"
        );
        let mut c = b.connect().await;
        let reply = sign_in_with(&mut c, &mut key, KEY_USER).await;
        assert_eq!(reply["name"], "response", "on B: {reply}");
    }
}

/// A replayed assertion is refused: the same answer again (its challenge used), and the same
/// answer to a new challenge.
pub async fn a_replayed_assertion_is_refused(state: &str) {
    let app = app_on(state, |_| {}).await;
    let mut key = Key::new(&origin_of(&app));
    enrol(&app, &mut key, KEY_USER, false).await;
    let mut c = app.connect().await;
    let (token, options) = password_step(&mut c, KEY_USER).await;
    let credential = key.sign(&options);
    let answer = json!({"mfa_token": token, "credential": credential});
    let first = c.rpc("webauthn_verify", answer.clone()).await;
    assert_eq!(first["name"], "response", "{first}");
    let mut other = app.connect().await;
    let again = other.rpc("webauthn_verify", answer).await;
    assert_eq!(error_code(&again), 401, "{again}");
    assert!(
        again["args"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{again}"
    );
    let (token, _) = password_step(&mut other, KEY_USER).await;
    let again = other
        .rpc(
            "webauthn_verify",
            json!({"mfa_token": token, "credential": credential}),
        )
        .await;
    assert_eq!(error_code(&again), 401, "another challenge: {again}");
    assert!(
        again["args"]["message"]
            .as_str()
            .unwrap()
            .contains("refused"),
        "{again}"
    );
}

/// A challenge answered after `webauthn_challenge_ttl` is refused as expired.
pub async fn an_expired_challenge_is_refused(state: &str) {
    let app = app_on(state, |c| {
        c.webauthn_challenge_ttl = Duration::from_millis(800)
    })
    .await;
    let mut key = Key::new(&origin_of(&app));
    enrol(&app, &mut key, KEY_USER, false).await;
    let mut c = app.connect().await;
    let (token, options) = password_step(&mut c, KEY_USER).await;
    let credential = key.sign(&options);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let late = c
        .rpc(
            "webauthn_verify",
            json!({"mfa_token": token, "credential": credential}),
        )
        .await;
    assert_eq!(error_code(&late), 401, "{late}");
    assert!(
        late["args"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{late}"
    );
    // In time, the same key signs in.
    let reply = sign_in_with(&mut c, &mut key, KEY_USER).await;
    assert_eq!(reply["name"], "response", "{reply}");
}

/// An answer from a page of another origin, or for another relying party, is refused and
/// counted as a wrong password is.
pub async fn a_wrong_origin_or_relying_party_is_refused(state: &str) {
    let app = app_on(state, |_| {}).await;
    let mut key = Key::new(&origin_of(&app));
    enrol(&app, &mut key, KEY_USER, false).await;
    let denied = logins(&app, "denied").await;
    let mut c = app.connect().await;
    let (token, options) = password_step(&mut c, KEY_USER).await;
    let phished = key.sign_at(
        Url::parse("https://poolgate.example.net").unwrap(),
        &options,
    );
    let reply = c
        .rpc(
            "webauthn_verify",
            json!({"mfa_token": token, "credential": phished}),
        )
        .await;
    assert_eq!(error_code(&reply), 401, "{reply}");
    let (token, mut options) = password_step(&mut c, KEY_USER).await;
    options["rpId"] = json!("example.net");
    let other_rp = key.sign(&options);
    let reply = c
        .rpc(
            "webauthn_verify",
            json!({"mfa_token": token, "credential": other_rp}),
        )
        .await;
    assert_eq!(error_code(&reply), 401, "{reply}");
    assert_eq!(logins(&app, "denied").await - denied, 2.0, "both counted");
}

/// A cloned key (its state copied: its sign counter goes back once the original has signed) is
/// refused, and counted.
pub async fn a_cloned_key_is_refused(state: &str) {
    let app = app_on(state, |_| {}).await;
    let mut key = Key::new(&origin_of(&app));
    enrol(&app, &mut key, KEY_USER, false).await;
    let mut clone = key.cloned();
    let mut c = app.connect().await;
    let reply = sign_in_with(&mut c, &mut key, KEY_USER).await;
    assert_eq!(reply["name"], "response", "the original: {reply}");
    let denied = logins(&app, "denied").await;
    let mut c = app.connect().await;
    let reply = sign_in_with(&mut c, &mut clone, KEY_USER).await;
    assert_eq!(error_code(&reply), 401, "the clone: {reply}");
    assert_eq!(logins(&app, "denied").await - denied, 1.0, "counted");
    let reply = sign_in_with(&mut c, &mut key, KEY_USER).await;
    assert_eq!(reply["name"], "response", "the original still: {reply}");
}

/// Another user's credential: refused at sign-in, and its id refused at registration (409).
pub async fn another_users_credential_is_refused(state: &str) {
    // Challenges short-lived, to see that a refused registration gives the link back with its
    // own expiry (24 h), not the challenge's.
    let ttl = Duration::from_secs(2);
    let app = app_on(state, |c| c.webauthn_challenge_ttl = ttl).await;
    let mut key = Key::new(&origin_of(&app));
    enrol(&app, &mut key, KEY_USER, false).await;
    let mut theirs = Key::new(&origin_of(&app));
    enrol(&app, &mut theirs, "user-2", false).await;
    // user-3's challenge answered with user-2's key.
    let mut c = app.connect().await;
    let (token, mut options) = password_step(&mut c, KEY_USER).await;
    let (_, theirs_options) = password_step(&mut app.connect().await, "user-2").await;
    options["allowCredentials"] = theirs_options["allowCredentials"].clone();
    let answer = theirs.sign(&options);
    let reply = c
        .rpc(
            "webauthn_verify",
            json!({"mfa_token": token, "credential": answer}),
        )
        .await;
    assert_eq!(error_code(&reply), 401, "{reply}");
    // A registration whose credential id someone else holds.
    let code = enrol_code(&app, KEY_USER).await;
    let begun = c
        .rpc("key_register_begin", json!({"enroll_code": code}))
        .await;
    let mut fresh = Key::new(&origin_of(&app));
    let credential = fresh.register(&begun["args"]["publicKey"]);
    let user2 = app.state.auth.users.by_name("user-2").unwrap().id;
    let taken = SecurityKey {
        user_id: user2,
        id: credential["id"].as_str().unwrap().to_owned(),
        name: "someone's".into(),
        passkey: false,
        credential: "{}".into(),
        created_ms: now_ms(),
        last_used_ms: None,
    };
    assert!(app.state.store.key_add(&taken).await.unwrap());
    let reply = c
        .rpc(
            "key_register_finish",
            json!({"registration": begun["args"]["registration"], "name": "mine", "credential": credential}),
        )
        .await;
    assert_eq!(error_code(&reply), 409, "{reply}");
    assert!(
        reply["args"]["message"]
            .as_str()
            .unwrap()
            .contains("another account"),
        "{reply}"
    );
    // The link is still usable after the failed registration, past the challenge's lifetime.
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let again = c
        .rpc("key_register_begin", json!({"enroll_code": code}))
        .await;
    assert_eq!(again["name"], "response", "{again}");
}

/// A passkey signs in alone, without a username (`webauthn_begin`); a key registered as a
/// second factor does not.
pub async fn a_passkey_signs_in_without_a_username(state: &str) {
    let app = app_on(state, |_| {}).await;
    let mut key = Key::new(&origin_of(&app));
    let registered = enrol(&app, &mut key, KEY_USER, true).await;
    let mut c = app.connect().await;
    let begun = c.rpc("webauthn_begin", json!({})).await;
    assert_eq!(begun["name"], "response", "{begun}");
    let options = &begun["args"]["publicKey"];
    assert_eq!(options["userVerification"], "required");
    assert_eq!(options["allowCredentials"], json!([]), "{options}");
    let credential = key.sign(options);
    let reply = c
        .rpc(
            "webauthn_verify",
            json!({"mfa_token": begun["args"]["mfa_token"], "credential": credential}),
        )
        .await;
    assert_eq!(reply["name"], "response", "{reply}");
    assert_eq!(reply["args"][2], KEY_USER, "who signed in: {reply}");
    let keys = c.rpc("keys", json!({})).await;
    assert_eq!(keys["args"][0]["id"], registered["id"]);
    assert_eq!(keys["args"][0]["passkey"], true);
    // A second-factor key of user-2 does not sign in alone (even with its user handle).
    let mut second = Key::new(&origin_of(&app));
    let theirs = enrol(&app, &mut second, "user-2", false).await;
    let user2 = app.state.auth.users.by_name("user-2").unwrap().id;
    let id = URL_SAFE_NO_PAD
        .decode(theirs["id"].as_str().unwrap())
        .unwrap();
    second.handles.insert(id, user2.as_bytes().to_vec());
    let mut c = app.connect().await;
    let begun = c.rpc("webauthn_begin", json!({})).await;
    let credential = second.sign(&begun["args"]["publicKey"]);
    let reply = c
        .rpc(
            "webauthn_verify",
            json!({"mfa_token": begun["args"]["mfa_token"], "credential": credential}),
        )
        .await;
    assert_eq!(error_code(&reply), 401, "{reply}");
}

/// A signed-in user adds a key after proving their password again, and removes keys — never
/// the last one (409), which an admin may remove; a user marked for keys without any is told
/// that an administrator must send an enrolment link.
pub async fn keys_are_added_listed_and_removed(state: &str) {
    let app = app_on(state, |_| {}).await;
    let mut key = Key::new(&origin_of(&app));
    let first = enrol(&app, &mut key, KEY_USER, false).await;
    let mut c = app.connect().await;
    let reply = sign_in_with(&mut c, &mut key, KEY_USER).await;
    assert_eq!(reply["name"], "response", "{reply}");
    let wrong = c
        .rpc("key_register_begin", json!({"password": "nope"}))
        .await;
    assert_eq!(error_code(&wrong), 401, "{wrong}");
    let begun = c
        .rpc("key_register_begin", json!({"password": PASSWORD}))
        .await;
    assert_eq!(begun["name"], "response", "{begun}");
    let excluded = begun["args"]["publicKey"]["excludeCredentials"]
        .as_array()
        .unwrap();
    assert_eq!(excluded[0]["id"], first["id"], "its keys are excluded");
    let mut spare = Key::new(&origin_of(&app));
    let credential = spare.register(&begun["args"]["publicKey"]);
    let added = c
        .rpc(
            "key_register_finish",
            json!({"registration": begun["args"]["registration"], "name": "spare", "credential": credential}),
        )
        .await;
    assert_eq!(added["name"], "response", "{added}");
    let keys = c.rpc("keys", json!({})).await;
    assert_eq!(keys["args"].as_array().unwrap().len(), 2, "{keys}");
    let removed = c.rpc("key_remove", json!({"id": first["id"]})).await;
    assert_eq!(removed["args"], "success", "{removed}");
    let last = c
        .rpc("key_remove", json!({"id": added["args"]["id"]}))
        .await;
    assert_eq!(error_code(&last), 409, "{last}");
    assert!(
        last["args"]["message"]
            .as_str()
            .unwrap()
            .contains("administrator"),
        "{last}"
    );
    let (mut admin, _) = app.login("astravdi").await;
    let listed = admin.rpc("admin_keys", json!({"username": KEY_USER})).await;
    assert_eq!(listed["args"][0]["name"], "spare", "{listed}");
    let removed = admin
        .rpc(
            "admin_remove_key",
            json!({"username": KEY_USER, "id": added["args"]["id"]}),
        )
        .await;
    assert_eq!(removed["args"], "success", "{removed}");
    let mut c = app.connect().await;
    let reply = c
        .rpc("auth", json!({"username": KEY_USER, "password": PASSWORD}))
        .await;
    assert_eq!(error_code(&reply), 428, "{reply}");
    assert_eq!(reply["args"]["err_code"], 102);
    assert!(reply["args"].get("publicKey").is_none(), "{reply}");
    assert!(
        reply["args"]["detail"]
            .as_str()
            .unwrap()
            .contains("enrolment link"),
        "{reply}"
    );
}

/// The REST login: the mock's 428/102 body with the challenge as `next_step`, answered at
/// `/api/v2/users/login/webauthn/` for the login's JWT.
pub async fn the_rest_login_takes_a_key(state: &str) {
    let app = app_on(state, |_| {}).await;
    let mut key = Key::new(&origin_of(&app));
    enrol(&app, &mut key, KEY_USER, false).await;
    let http = reqwest::Client::new();
    let resp = http
        .post(app.url("/api/v2/users/login/"))
        .json(&json!({"username": KEY_USER, "password": PASSWORD, "ldap": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 428);
    let body: Value = resp.json().await.unwrap();
    let item = &body["detail"][0];
    assert_eq!(item["err_code"], 102, "{body}");
    assert_eq!(item["msg"], "MFA required.");
    let step = &item["next_step"];
    let credential = key.sign(&step["publicKey"]);
    let answer = json!({"mfa_token": step["mfa_token"], "credential": credential});
    let resp = http
        .post(app.url("/api/v2/users/login/webauthn/"))
        .json(&answer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["data"]["token_type"], "JWT", "{body}");
    let resp = http
        .post(app.url("/api/v2/users/login/webauthn/"))
        .json(&answer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "replayed");
}

/// A refused key answer counts toward the lockout like a wrong password: three password steps
/// with a phished answer each lock the user out at this address (the steps alone would not:
/// a challenge counts one, the lockout takes five).
pub async fn refused_key_answers_count_toward_the_lockout(state: &str) {
    let app = app_on(state, |_| {}).await;
    let mut key = Key::new(&origin_of(&app));
    enrol(&app, &mut key, KEY_USER, false).await;
    let phishing = Url::parse("https://poolgate.example.net").unwrap();
    let mut codes = Vec::new();
    for _ in 0..3 {
        let mut c = app.connect().await;
        let reply = c
            .rpc("auth", json!({"username": KEY_USER, "password": PASSWORD}))
            .await;
        codes.push(error_code(&reply));
        if error_code(&reply) != 428 {
            continue;
        }
        let credential = key.sign_at(phishing.clone(), &reply["args"]["publicKey"]);
        let answer = json!({"mfa_token": reply["args"]["mfa_token"], "credential": credential});
        codes.push(error_code(&c.rpc("webauthn_verify", answer).await));
    }
    let mut c = app.connect().await;
    let reply = c
        .rpc("auth", json!({"username": KEY_USER, "password": PASSWORD}))
        .await;
    codes.push(error_code(&reply));
    assert_eq!(codes.last(), Some(&429), "locked out: {codes:?}");
    assert_eq!(&codes[..2], [428, 401], "{codes:?}");
}

/// The last key stays, however the removals come: a user's own removals of all their keys at
/// once (the session on several sockets, as a thief holding it would send them) leave exactly
/// one key, refused with 409, round after round; the admin's removal of it then works.
pub async fn concurrent_removals_never_take_the_last_key(state: &str) {
    let app = app_on(state, |_| {}).await;
    let user2 = app.state.auth.users.by_name("user-2").unwrap().id;
    // Signed in before the keys are added (the keys' records are enough for removals).
    let (_, token) = app.login("user-2").await;
    for round in 0..5 {
        let ids: Vec<String> = (0..6).map(|i| format!("r{round}k{i}")).collect();
        for (i, id) in ids.iter().enumerate() {
            let key = SecurityKey {
                user_id: user2,
                id: id.clone(),
                name: format!("key {i}"),
                passkey: false,
                credential: "{}".into(),
                created_ms: now_ms(),
                last_used_ms: None,
            };
            assert!(app.state.store.key_add(&key).await.unwrap());
        }
        let mut sockets = Vec::new();
        for _ in &ids {
            let mut c = app.connect().await;
            let r = c.rpc("auth_token", json!({"token": token})).await;
            assert_eq!(r["name"], "response", "{r}");
            sockets.push(c);
        }
        let removals = sockets.into_iter().zip(ids).map(|(mut c, id)| {
            tokio::spawn(async move { c.rpc("key_remove", json!({"id": id})).await })
        });
        let mut refused = 0;
        for removal in removals.collect::<Vec<_>>() {
            let reply = removal.await.unwrap();
            if reply["name"] != "response" {
                assert_eq!(error_code(&reply), 409, "{reply}");
                refused += 1;
            }
        }
        let left = app.state.store.keys_of(user2).await.unwrap();
        assert_eq!(left.len(), 1, "round {round}: {left:?}");
        assert_eq!(refused, 1, "round {round}");
        let (mut admin, _) = app.login("astravdi").await;
        let removed = admin
            .rpc(
                "admin_remove_key",
                json!({"username": "user-2", "id": left[0].id}),
            )
            .await;
        assert_eq!(removed["args"], "success", "{removed}");
    }
}
