//! Security keys and passkeys in the portal (protocol/webauthn.md), with Chromium's WebDriver
//! virtual authenticator (a CTAP2 USB key with resident keys and user verification) standing in
//! for the person's key: real `navigator.credentials.create` / `.get` calls, real signatures.
//!
//! The server has no `public_url`, so its relying party is `localhost` on its port: the page is
//! opened at `http://localhost:PORT/`, as a person on the demo would (browsers refuse an IP
//! address as relying party; the last case checks what the page says at `127.0.0.1`).

use axum::http::Method;
use fantoccini::wd::WebDriverCompatibleCommand;
use poolgate_test_common::helpers::{OK, PASSWORD, TestApp, fast_sim};
use reqwest::Url;
use serde_json::{Value, json};

use super::{Browser, visible};

/// The demo's user who signs in with a security key.
const KEY_USER: &str = "user-3";

/// A WebDriver command of the session that fantoccini has no method for: chromedriver's
/// WebAuthn extension (`webauthn/authenticator…`) and `goog/cdp/execute`.
#[derive(Debug)]
struct SessionCommand {
    method: Method,
    path: String,
    body: Option<Value>,
}

impl WebDriverCompatibleCommand for SessionCommand {
    fn endpoint(
        &self,
        base: &Url,
        session: Option<&str>,
    ) -> Result<Url, <Url as std::str::FromStr>::Err> {
        base.join(&format!(
            "session/{}/{}",
            session.unwrap_or_default(),
            self.path
        ))
    }

    fn method_and_body(&self, _: &Url) -> (Method, Option<String>) {
        (
            self.method.clone(),
            self.body.as_ref().map(Value::to_string),
        )
    }
}

impl Browser {
    async fn command(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let path = path.to_owned();
        self.client
            .issue_cmd(SessionCommand {
                method,
                path: path.clone(),
                body,
            })
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Plugs in a new virtual security key; its id.
    async fn add_key(&self) -> String {
        let id = self
            .command(
                Method::POST,
                "webauthn/authenticator",
                Some(json!({
                    "protocol": "ctap2",
                    "transport": "usb",
                    "hasResidentKey": true,
                    "hasUserVerification": true,
                    "isUserVerified": true,
                })),
            )
            .await;
        id.as_str().expect("an authenticator id").to_owned()
    }

    /// Unplugs a virtual key (its credentials go with it).
    async fn unplug_key(&self, id: &str) {
        self.command(
            Method::DELETE,
            &format!("webauthn/authenticator/{id}"),
            None,
        )
        .await;
    }

    /// Whether the key's PIN or fingerprint check succeeds (false: the person gives up).
    async fn key_verifies(&self, id: &str, verified: bool) {
        self.command(
            Method::POST,
            &format!("webauthn/authenticator/{id}/uv"),
            Some(json!({"isUserVerified": verified})),
        )
        .await;
    }

    /// The credentials a virtual key holds.
    async fn key_credentials(&self, id: &str) -> Vec<Value> {
        let list = self
            .command(
                Method::GET,
                &format!("webauthn/authenticator/{id}/credentials"),
                None,
            )
            .await;
        list.as_array().cloned().unwrap_or_default()
    }

    /// Runs `source` in every page before the page's own scripts (Chrome DevTools Protocol).
    async fn before_each_page(&self, source: &str) {
        self.command(
            Method::POST,
            "goog/cdp/execute",
            Some(json!({
                "cmd": "Page.addScriptToEvaluateOnNewDocument",
                "params": {"source": source},
            })),
        )
        .await;
    }

    async fn expect_text(&self, id: &str, expected: &str) {
        assert_eq!(
            self.text(&format!("document.getElementById('{id}').textContent"))
                .await,
            expected,
            "#{id}"
        );
    }
}

/// The demo with quick simulated steps, on 127.0.0.1 and an ephemeral port, no `public_url`.
async fn key_app() -> TestApp {
    TestApp::spawn_with(|c| fast_sim(c, OK, OK)).await
}

/// The page's address at localhost, where keys work.
fn localhost(app: &TestApp) -> String {
    format!("http://localhost:{}/", app.addr.port())
}

/// What an admin does: `admin_enroll_key` over a socket signed in as astravdi; the link.
async fn admin_link(app: &TestApp, username: &str) -> String {
    let (mut admin, _) = app.login("astravdi").await;
    let reply = admin
        .rpc("admin_enroll_key", json!({"username": username}))
        .await;
    assert_eq!(reply["name"], "response", "{reply}");
    reply["args"]["url"].as_str().unwrap().to_owned()
}

/// A user's keys as an admin sees them (`admin_keys`).
async fn keys_of(app: &TestApp, username: &str) -> Vec<Value> {
    let (mut admin, _) = app.login("astravdi").await;
    let reply = admin.rpc("admin_keys", json!({"username": username})).await;
    assert_eq!(reply["name"], "response", "{reply}");
    reply["args"].as_array().unwrap().clone()
}

/// Opens an admin's link and registers the plugged-in key under `name`; the link.
async fn enrol(b: &Browser, app: &TestApp, name: &str, passkey: bool, shots: bool) -> String {
    let link = admin_link(app, KEY_USER).await;
    assert!(
        link.starts_with(&format!("{}?enroll=", localhost(app))),
        "{link}"
    );
    b.client.goto(&link).await.unwrap();
    b.until(&visible("enroll-form"), "the enrolment form").await;
    b.expect_text("enroll-title", "Register a security key for user-3")
        .await;
    assert_eq!(
        b.text("location.href").await,
        localhost(app),
        "the code leaves the address bar at once"
    );
    b.type_into("enroll-name", name).await;
    if passkey {
        // A passkey by link takes the password too.
        b.click("#enroll-passkey").await;
        b.until(&visible("enroll-password-row"), "the password field")
            .await;
        b.type_into("enroll-password", PASSWORD).await;
    }
    if shots {
        b.shot("02-enrolment").await;
    }
    b.click("#enroll-button").await;
    b.until(&visible("enroll-done"), "the key registered").await;
    b.expect_text(
        "enroll-done-text",
        &format!(
            "Your key “{name}” is registered for user-3. Sign in with your password and the key."
        ),
    )
    .await;
    if shots {
        b.shot("03-registered").await;
    }
    link
}

/// user-3's password, then the key; their pools.
async fn sign_in_with_key(b: &Browser) {
    b.sign_in(KEY_USER, PASSWORD, false).await;
    b.until(&visible("pools-view"), "the pools after password and key")
        .await;
    b.expect_text("who", "Signed in as user-3").await;
    b.until(
        "document.querySelectorAll('#pools .pool').length >= 1",
        "user-3's pools",
    )
    .await;
}

/// user-3 has no key yet: the page says whom to ask. An admin's link enrols one; the link is
/// then used up. user-3 signs in with password and key; a key that does not verify its person
/// (the browser's NotAllowedError) is said plainly and the step can be tried again.
pub async fn enrol_by_link_then_password_and_key(b: Browser) {
    let app = key_app().await;
    let key = b.add_key().await;
    b.client.goto(&localhost(&app)).await.unwrap();
    b.sign_in(KEY_USER, PASSWORD, false).await;
    b.until(&visible("signin-error"), "the error").await;
    b.expect_text(
        "signin-error",
        "No security key is registered for you yet: ask an administrator for an enrolment link.",
    )
    .await;
    b.shot("01-no-key-yet").await;

    let link = enrol(&b, &app, "YubiKey on my keyring", false, true).await;
    assert_eq!(b.key_credentials(&key).await.len(), 1, "the key holds one");
    let keys = keys_of(&app, KEY_USER).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0]["name"], "YubiKey on my keyring");
    assert_eq!(keys[0]["passkey"], false);
    assert!(keys[0]["last_used"].is_null());

    // The link is single-use.
    b.client.goto(&link).await.unwrap();
    b.until(&visible("enroll-error"), "the used link refused")
        .await;
    b.expect_text(
        "enroll-error",
        "This enrolment link is not valid: it was used, it expired, or it is mistyped. Ask an \
         administrator for a new one.",
    )
    .await;
    assert!(
        b.text("document.getElementById('enroll-form').hidden")
            .await
            == "true"
    );

    b.click("#enroll-signin").await;
    b.until(&visible("signin-view"), "the sign-in form").await;
    assert!(
        b.text("document.getElementById('passkey').hidden").await == "false",
        "the passkey button on localhost"
    );
    assert!(
        b.text("document.getElementById('key-note').hidden").await == "true",
        "no note on localhost"
    );

    // The person does not complete the key's check: said, and tried again.
    b.key_verifies(&key, false).await;
    b.sign_in(KEY_USER, PASSWORD, false).await;
    b.until(&visible("signin-error"), "the refused key").await;
    b.expect_text("signin-error", "The security key was not used. Try again.")
        .await;
    b.expect_text("signin-button", "Use the security key").await;
    assert!(b.text("document.getElementById('pools-view').hidden").await == "true");
    b.shot("04-key-not-used").await;
    b.key_verifies(&key, true).await;
    b.click("#signin-button").await;
    b.until(&visible("pools-view"), "the pools after the key")
        .await;
    b.expect_text("who", "Signed in as user-3").await;
    b.shot("05-signed-in").await;
    let keys = keys_of(&app, KEY_USER).await;
    assert!(keys[0]["last_used"].is_string(), "{keys:?}");

    // Signed out, the password and key again, in one go.
    b.click("#signout").await;
    b.until(&visible("signin-view"), "signed out").await;
    sign_in_with_key(&b).await;
    app.stop().await;
}

/// The Security keys page: the one key listed and not removable (the server's 409, shown); a
/// wrong password refused; a second key (another authenticator) added after the password;
/// the first removed; the page signs in with the second.
pub async fn add_a_second_key_and_remove_the_first(b: Browser) {
    let app = key_app().await;
    let first = b.add_key().await;
    enrol(&b, &app, "YubiKey on my keyring", false, false).await;
    b.click("#enroll-signin").await;
    sign_in_with_key(&b).await;

    b.click("#keys-button").await;
    b.until(&visible("keys-view"), "the security keys page")
        .await;
    b.until(
        "document.querySelectorAll('#keys .key').length == 1",
        "the one key",
    )
    .await;
    let item = "document.querySelector('#keys .key')";
    assert_eq!(
        b.text(&format!("{item}.querySelector('.name').textContent"))
            .await,
        "YubiKey on my keyring"
    );
    assert_eq!(
        b.text(&format!("{item}.querySelector('.passkey').textContent"))
            .await,
        "no"
    );
    assert_ne!(
        b.text(&format!("{item}.querySelector('.last-used').textContent"))
            .await,
        "never",
        "used to sign in"
    );
    b.click("#keys .key .remove").await;
    b.until(&visible("keys-error"), "the last key refused")
        .await;
    let error = b
        .text("document.getElementById('keys-error').textContent")
        .await;
    assert!(
        error.starts_with("This is the account's last security key"),
        "{error}"
    );
    b.shot("01-last-key-kept").await;

    // A second key: another authenticator (the first would refuse, holding an excluded key).
    b.unplug_key(&first).await;
    let second = b.add_key().await;
    b.type_into("addkey-password", "not the password").await;
    b.type_into("addkey-name", "Backup key in the drawer").await;
    b.click("#addkey-button").await;
    b.until(
        "document.getElementById('keys-error').textContent == 'That password is not right.'",
        "the wrong password refused",
    )
    .await;
    assert!(b.key_credentials(&second).await.is_empty());
    b.type_into("addkey-password", PASSWORD).await;
    b.click("#addkey-button").await;
    b.until(
        "document.querySelectorAll('#keys .key').length == 2",
        "the two keys",
    )
    .await;
    b.expect_text("keys-status", "“Backup key in the drawer” is added.")
        .await;
    assert_eq!(b.key_credentials(&second).await.len(), 1);
    b.shot("02-two-keys").await;
    // On a phone: nothing wider than the screen.
    b.client.set_window_size(360, 740).await.unwrap();
    let overflow = b
        .text("document.documentElement.scrollWidth > document.documentElement.clientWidth")
        .await;
    assert_eq!(
        overflow, "false",
        "the keys page scrolls sideways at 360 px"
    );
    b.shot("02-two-keys-360px").await;
    b.client.set_window_size(1280, 900).await.unwrap();

    b.click("#keys .key .remove").await;
    b.until(
        "document.querySelectorAll('#keys .key').length == 1",
        "one key left",
    )
    .await;
    b.expect_text("keys-status", "“YubiKey on my keyring” is removed.")
        .await;
    let keys = keys_of(&app, KEY_USER).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0]["name"], "Backup key in the drawer");
    b.shot("03-one-removed").await;

    b.click("#keys-back").await;
    b.until(&visible("pools-view"), "the desktops again").await;
    b.click("#signout").await;
    b.until(&visible("signin-view"), "signed out").await;
    sign_in_with_key(&b).await;
    app.stop().await;
}

/// A key enrolled as a passkey signs in alone: "Sign in with a passkey", no username, signed in
/// as the key's user; once an admin has removed it, the same passkey is refused. The page runs here as in a browser without
/// `parse…OptionsFromJSON` and `toJSON()` (removed before its script), so its hand-made
/// conversions are what is checked.
pub async fn a_passkey_signs_in_without_a_username(b: Browser) {
    let app = key_app().await;
    b.before_each_page(
        "delete PublicKeyCredential.parseRequestOptionsFromJSON; \
         delete PublicKeyCredential.parseCreationOptionsFromJSON; \
         delete PublicKeyCredential.prototype.toJSON;",
    )
    .await;
    let key = b.add_key().await;
    enrol(&b, &app, "Phone", true, false).await;
    assert!(
        b.text("typeof PublicKeyCredential.prototype.toJSON").await == "undefined",
        "the browser's own JSON is out of the way"
    );
    let credentials = b.key_credentials(&key).await;
    assert_eq!(credentials.len(), 1);
    assert_eq!(credentials[0]["isResidentCredential"], true, "a passkey");
    assert_eq!(keys_of(&app, KEY_USER).await[0]["passkey"], true);

    b.click("#enroll-signin").await;
    b.until(&visible("passkey"), "the passkey button").await;
    b.shot("01-sign-in-page").await;
    b.click("#passkey-button").await;
    b.until(&visible("pools-view"), "the pools after the passkey")
        .await;
    b.expect_text("who", "Signed in as user-3").await;
    b.until(
        "document.querySelectorAll('#pools .pool').length >= 1",
        "user-3's pools",
    )
    .await;
    b.shot("02-signed-in").await;

    // The Security keys page says it is a passkey.
    b.click("#keys-button").await;
    b.until(
        "document.querySelectorAll('#keys .key').length == 1",
        "the key",
    )
    .await;
    assert_eq!(
        b.text("document.querySelector('#keys .key .passkey').textContent")
            .await,
        "yes"
    );

    // An admin removes the key: the passkey, still in the authenticator, is refused.
    let id = keys_of(&app, KEY_USER).await[0]["id"].clone();
    let (mut admin, _) = app.login("astravdi").await;
    let reply = admin
        .rpc("admin_remove_key", json!({"username": KEY_USER, "id": id}))
        .await;
    assert_eq!(reply["name"], "response", "{reply}");
    b.click("#signout").await;
    b.until(&visible("passkey"), "the passkey button").await;
    b.click("#passkey-button").await;
    b.until(&visible("signin-error"), "the removed passkey refused")
        .await;
    b.expect_text(
        "signin-error",
        "This passkey was not accepted. Sign in with your username and password.",
    )
    .await;
    assert!(b.text("document.getElementById('pools-view').hidden").await == "true");
    assert_eq!(b.key_credentials(&key).await.len(), 1, "still in the key");
    b.shot("03-removed-passkey-refused").await;
    app.stop().await;
}

/// At `http://127.0.0.1:PORT/` keys cannot work (an IP address is no relying party): the
/// sign-in and enrolment pages say where they do, with the link; the passkey button is not
/// offered; the password still signs in.
pub async fn on_an_ip_address_the_page_says_to_open_localhost(b: Browser) {
    let app = key_app().await;
    b.add_key().await;
    let port = app.addr.port();
    b.client.goto(&app.url("/")).await.unwrap();
    b.until(&visible("signin-view"), "the sign-in form").await;
    b.until(&visible("key-note"), "the note").await;
    let note = b
        .text("document.getElementById('key-note').textContent")
        .await;
    let note = note.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        note.starts_with(&format!(
            "Security keys work on http://localhost:{port}/ — open that address."
        )),
        "{note}"
    );
    assert_eq!(
        b.text("document.getElementById('key-note-link').href")
            .await,
        format!("http://localhost:{port}/")
    );
    assert!(b.text("document.getElementById('passkey').hidden").await == "true");
    b.shot("01-sign-in-note").await;

    // An enrolment link opened here: the note, with a link that carries the code on.
    let link = admin_link(&app, KEY_USER).await;
    let code = link.rsplit_once("enroll=").unwrap().1.to_owned();
    b.client
        .goto(&app.url(&format!("/?enroll={code}")))
        .await
        .unwrap();
    b.until(&visible("enroll-note"), "the enrolment page's note")
        .await;
    b.expect_text("enroll-title", "Register a security key for user-3")
        .await;
    assert_eq!(
        b.text("document.getElementById('enroll-note-link').href")
            .await,
        format!("http://localhost:{port}/?enroll={code}")
    );
    assert!(
        b.text("document.getElementById('enroll-form').hidden")
            .await
            == "true"
    );
    b.shot("02-enrol-note").await;

    // Password sign-in still works here.
    b.client.goto(&app.url("/")).await.unwrap();
    b.sign_in("astravdi", PASSWORD, false).await;
    b.until(&visible("pools-view"), "astravdi's pools").await;
    app.stop().await;
}
