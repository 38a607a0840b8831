//! The web portal in a real browser: headless Chromium driven through chromedriver (WebDriver,
//! the `fantoccini` crate), against a poolgate started in this process.
//!
//! Like the Redis cases, this target has its own `main` (libtest-mimic, `harness = false`), so a
//! machine without the browser reports each case as *ignored*, with one line saying why, never
//! as passed. `.ci/run` installs Debian's `chromium` and `chromium-driver` and sets
//! `POOLGATE_TEST_REQUIRE_BROWSER=1`, which turns every would-be skip into a failure.
//!
//! Each step leaves a screenshot in `target/browser-artefacts/` (or `$POOLGATE_TEST_ARTEFACTS`).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use libtest_mimic::{Arguments, Failed, Trial};
use poolgate_test_common::{harness, helpers};
use serde_json::{Value, json};

use harness::on_path;

use helpers::{OK, PASSWORD, TestApp, date_code, fast_sim, free_port};

/// How long the page may take to show what a step leads to.
const STEP: Duration = Duration::from_secs(20);

type Case = fn(Browser) -> Pin<Box<dyn Future<Output = ()> + Send>>;

fn cases() -> Vec<(&'static str, Case)> {
    vec![
        (
            "portal::a_person_signs_in_with_a_code_connects_downloads_the_launcher_and_signs_out",
            |b| Box::pin(sign_in_with_a_code_connect_download_sign_out(b)),
        ),
        (
            "portal::a_wrong_password_and_then_the_lockout_are_said_plainly",
            |b| Box::pin(a_wrong_password_is_said_plainly(b)),
        ),
        (
            "portal::an_expired_token_signs_the_page_out_and_says_why",
            |b| Box::pin(an_expired_token_signs_the_page_out(b)),
        ),
        (
            "portal::a_failed_step_is_shown_on_its_pool_as_it_happens",
            |b| Box::pin(a_failed_step_is_shown_on_its_pool(b)),
        ),
        (
            "portal::keep_me_signed_in_survives_a_reload_and_works_at_360_px",
            |b| Box::pin(keep_me_signed_in_survives_a_reload(b)),
        ),
        (
            "portal::a_failed_step_says_when_the_pool_may_be_asked_again_and_counts_down",
            |b| Box::pin(a_failed_step_counts_down_to_the_next_try(b)),
        ),
        (
            "portal::a_single_sign_on_user_is_told_this_server_does_not_offer_it",
            |b| {
                Box::pin(a_single_sign_on_user_is_told_this_server_does_not_offer_it(
                    b,
                ))
            },
        ),
        (
            "portal::keep_me_signed_in_reconnects_with_back_off_after_a_server_restart",
            |b| Box::pin(keep_me_signed_in_reconnects_after_a_restart(b)),
        ),
        (
            "portal::keep_me_signed_in_gives_up_once_the_kept_token_would_have_expired",
            |b| Box::pin(keep_me_signed_in_gives_up_when_the_token_would_have_expired(b)),
        ),
        (SSO_CASE, |b| {
            Box::pin(single_sign_on_at_the_provider_signs_the_portal_in(b))
        }),
        (
            "portal::keys_an_admins_link_enrols_a_key_and_user_3_signs_in_with_password_and_key",
            |b| Box::pin(keys::enrol_by_link_then_password_and_key(b)),
        ),
        (
            "portal::keys_a_second_key_is_added_and_the_first_removed_on_the_security_keys_page",
            |b| Box::pin(keys::add_a_second_key_and_remove_the_first(b)),
        ),
        (
            "portal::keys_a_passkey_signs_in_without_a_username_by_hand_made_json",
            |b| Box::pin(keys::a_passkey_signs_in_without_a_username(b)),
        ),
        (
            "portal::keys_on_127_0_0_1_the_page_says_to_open_localhost",
            |b| Box::pin(keys::on_an_ip_address_the_page_says_to_open_localhost(b)),
        ),
        (
            "portal::activity_an_auditor_sees_sessions_tasks_and_the_audit_log_filtered",
            |b| Box::pin(activity::an_auditor_sees_sessions_tasks_and_the_audit_log_filtered(b)),
        ),
        (
            "portal::activity_an_unattended_activity_page_lets_the_session_expire",
            |b| Box::pin(activity::an_unattended_activity_page_lets_the_session_expire(b)),
        ),
        (
            "portal::policies_a_closed_pool_says_when_it_opens_and_a_desktop_about_to_end_is_announced",
            |b| {
                Box::pin(
                    policies::a_closed_pool_says_when_it_opens_and_a_desktop_about_to_end_is_announced(b),
                )
            },
        ),
    ]
}

mod activity;
mod keys;
mod policies;

/// The case that needs the test OpenID provider (node) besides the browser.
const SSO_CASE: &str = "portal::sso_the_button_leads_to_the_provider_and_back_signed_in";

/// The portal's "Sign in with …" button: the provider's form, and back to the portal signed in
/// as the provider's user, with that user's pools; no token in the address bar.
async fn single_sign_on_at_the_provider_signs_the_portal_in(b: Browser) {
    use poolgate_test_common::oidc_provider::{Client as Rp, Options, Provider, USER};
    let port = free_port();
    // A name, not 127.0.0.1: the relying party of security keys is public_url's host, and an
    // IP address is refused as one.
    let public_url = format!("http://localhost:{port}");
    let provider = Provider::start_with(Options {
        public_url: Some(public_url.clone()),
        ..Options::default()
    })
    .await;
    let app = TestApp::spawn_with(|c| {
        c.listen = format!("127.0.0.1:{port}").parse().unwrap();
        c.public_url = Some(public_url.clone());
        let mut oidc = provider.settings(Rp::Confidential);
        oidc.display_name = "Test provider".into();
        c.oidc = Some(oidc);
        // user-5 is the provider's person here (no local user of that name), whose groups
        // claim (vdi-users) admits them to the first pool.
        c.users.retain(|u| u.username != USER.0);
        for pool in &mut c.pools {
            pool.users.retain(|u| u != USER.0);
        }
        c.pools[0].groups = vec!["vdi-users".into()];
    })
    .await;
    b.client.goto(&format!("{public_url}/")).await.unwrap();
    b.until(&visible("sso"), "the single sign-on button").await;
    assert_eq!(
        b.text("document.getElementById('sso-button').textContent")
            .await,
        "Sign in with Test provider"
    );
    b.shot("01-button").await;
    b.click("#sso-button").await;
    b.until("document.getElementById('sign-in')", "the provider's form")
        .await;
    b.type_into("username", USER.0).await;
    b.type_into("password", USER.1).await;
    b.shot("02-provider").await;
    b.click("#sign-in").await;
    b.until(&visible("pools-view"), "the pools after the provider")
        .await;
    assert_eq!(
        b.text("document.getElementById('who').textContent").await,
        "Signed in as user-5"
    );
    b.until(
        "document.querySelectorAll('#pools .pool').length >= 1",
        "the pool user-5's group admits",
    )
    .await;
    let address = b.text("location.href").await;
    assert_eq!(
        address,
        format!("{public_url}/"),
        "no code left in the address bar"
    );
    b.shot("03-signed-in").await;
    b.click("#signout").await;
    b.until(
        &visible("sso-signout"),
        "the offer to sign out at the provider",
    )
    .await;
    b.shot("04-signed-out").await;
    // The QR page a thin client's person may be shown: the link of a code, as an SVG image.
    b.client
        .goto(&format!("{public_url}/oidc/qr?user_code=BCDF-GHJK"))
        .await
        .unwrap();
    b.until(
        "document.getElementById('qr').complete && document.getElementById('qr').naturalWidth > 0",
        "the QR code",
    )
    .await;
    b.shot("05-qr-page").await;

    // A thin client's hand-off, completed in this browser: the device page, its confirmation
    // form, the provider's form again (a device is never signed in by a session alone), and
    // the socket gets its token.
    let mut thin = app.connect().await;
    let reply = thin.rpc("auth_sso", json!({})).await;
    let link = reply["args"]["verification_uri_complete"]
        .as_str()
        .unwrap_or_else(|| panic!("{reply}"))
        .to_owned();
    b.client.goto(&link).await.unwrap();
    b.until(
        "document.getElementById('confirm')",
        "the confirmation form",
    )
    .await;
    b.shot("06-confirm").await;
    b.click("#confirm").await;
    b.until(
        "document.getElementById('sign-in')",
        "the provider's form again",
    )
    .await;
    b.type_into("username", USER.0).await;
    b.type_into("password", USER.1).await;
    b.click("#sign-in").await;
    b.until(
        "document.getElementById('done')",
        "the hand-off's last page",
    )
    .await;
    b.shot("07-device-signed-in").await;
    let pushed = tokio::time::timeout(STEP, async {
        loop {
            let frame = thin.recv().await;
            if frame["name"] == "auth_sso" {
                return frame;
            }
        }
    })
    .await
    .expect("the socket's token");
    assert_eq!(pushed["args"]["code"], 200, "{pushed}");
    app.stop().await;
}

/// What a case gets: a fresh browser session and a directory for its downloads and pictures.
struct Browser {
    client: Client,
    downloads: PathBuf,
    artefacts: PathBuf,
    case: String,
}

impl Browser {
    /// Saves a screenshot of the page as `<case>-<step>.png`.
    async fn shot(&self, step: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        let short = self.case.rsplit("::").next().unwrap();
        std::fs::write(self.artefacts.join(format!("{short}-{step}.png")), png).unwrap();
    }

    /// Waits until the JavaScript expression is truthy; fails with `what` after `STEP`.
    async fn until(&self, expr: &str, what: &str) {
        let deadline = Instant::now() + STEP;
        loop {
            let v = self
                .client
                .execute(&format!("return !!({expr});"), vec![])
                .await
                .expect("script");
            if v == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                let text = self.text("document.body.innerText").await;
                panic!("timed out waiting for {what} ({expr}); the page says:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn text(&self, expr: &str) -> String {
        let v = self
            .client
            .execute(&format!("return String({expr});"), vec![])
            .await
            .expect("script");
        v.as_str().unwrap_or_default().to_owned()
    }

    async fn type_into(&self, id: &str, text: &str) {
        let field = self.client.find(Locator::Id(id)).await.expect(id);
        field.clear().await.expect("clear");
        field.send_keys(text).await.expect("type");
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    async fn sign_in(&self, username: &str, password: &str, keep: bool) {
        self.until(
            "!document.getElementById('signin-view').hidden",
            "the sign-in form",
        )
        .await;
        self.type_into("username", username).await;
        self.type_into("password", password).await;
        if keep {
            self.click("#keep").await;
        }
        self.click("#signin-button").await;
    }

    /// Opens the portal, signs astravdi in (`keep`: "Keep me signed in") and waits for the
    /// four pools.
    async fn admin_with_pools(&self, app: &TestApp, keep: bool) {
        self.client.goto(&app.url("/")).await.unwrap();
        self.sign_in("astravdi", PASSWORD, keep).await;
        self.until(
            "document.querySelectorAll('#pools .pool').length == 4",
            "astravdi's pools",
        )
        .await;
    }
}

/// An element missing counts as not visible: while the browser is between pages (back from the
/// provider), the element is not there yet, and reading `.hidden` of null failed the wait
/// instead of letting it look again (seen once on CI).
fn visible(id: &str) -> String {
    format!("(document.getElementById('{id}') || {{hidden: true}}).hidden === false")
}

/// Where pool-win-1's Guacamole gateway is said to be (nothing listens there: the page's link
/// is checked, not followed).
const GATEWAY: &str = "https://gw.example.org/guacamole/";

/// The demo dataset with a simulation that always completes, quickly but visibly; pool-win-1
/// (the one pool of user-4, the one-time-code user) has a Guacamole gateway.
async fn portal_app(token_ttl: Option<Duration>) -> TestApp {
    TestApp::spawn_with(|c| {
        fast_sim(c, OK, OK);
        // The key in a file of the app's own data directory, removed with it.
        std::fs::create_dir_all(&c.data_dir).unwrap();
        let key_file = c.data_dir.join("guacamole.key");
        std::fs::write(&key_file, "9a8d6a7ecdb0804b2afbb9c1d0814442\n").unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            let private = std::fs::Permissions::from_mode(0o600);
            std::fs::set_permissions(&key_file, private).unwrap();
        }
        c.pools[0].guacamole = Some(poolgate::pools::GuacamoleConfig {
            url: GATEWAY.into(),
            secret_key_file: Some(key_file),
            secret_key_env: None,
            protocol: None,
            parameters: Default::default(),
            link_ttl: Duration::from_secs(10),
            directory_user_prefix: "ldap:".into(),
            local_user_prefix: String::new(),
        });
        if let Some(ttl) = token_ttl {
            c.token_ttl = ttl;
        }
    })
    .await
}

async fn sign_in_with_a_code_connect_download_sign_out(b: Browser) {
    let app = portal_app(None).await;
    b.client.goto(&app.url("/")).await.unwrap();
    b.shot("01-sign-in").await;
    b.sign_in("user-4", PASSWORD, false).await;
    b.until(&visible("otp-step"), "the one-time code step")
        .await;
    // A demo server says how to make its code, and today's, as the server's clock has it.
    b.until(&visible("otp-demo"), "the demo code's hint").await;
    let hint = b
        .text("document.getElementById('otp-demo').textContent")
        .await;
    assert_eq!(
        hint,
        format!(
            "This demo server's code is today's date as YYMMDD (the server's date): {}.",
            date_code()
        )
    );
    b.shot("02-one-time-code").await;
    b.type_into("otp", &date_code()).await;
    b.click("#signin-button").await;
    b.until(&visible("pools-view"), "the pools").await;
    assert!(
        b.text("document.getElementById('who').textContent")
            .await
            .contains("user-4")
    );
    b.until(
        "document.querySelectorAll('#pools .pool').length == 1",
        "user-4's one pool",
    )
    .await;
    // People read labels; the server's value is the tooltip.
    let card = "document.querySelector('#pools .pool')";
    for (css, label, raw) in [
        (".status", "Available", "ACTIVE"),
        (".types [title=RDP]", "Remote Desktop (RDP)", "RDP"),
        (
            ".types [title=NATIVE_RDP]",
            "Remote Desktop (RDP) file",
            "NATIVE_RDP",
        ),
    ] {
        let el = format!("{card}.querySelector('{css}')");
        assert_eq!(b.text(&format!("{el}.textContent")).await, label, "{css}");
        assert_eq!(b.text(&format!("{el}.title")).await, raw, "{css}");
    }
    b.shot("03-pools").await;

    // Every text the progress line shows, kept as it changes.
    b.client
        .execute(
            "window.progressTexts = [];
             const line = document.querySelector('#pools .pool .progress-text');
             new MutationObserver(() => window.progressTexts.push(line.textContent))
               .observe(line, { childList: true, characterData: true, subtree: true });",
            vec![],
        )
        .await
        .unwrap();
    b.click("#pools .pool .connect").await;
    b.until(
        "!document.querySelector('#pools .pool .progress').hidden",
        "the progress bar",
    )
    .await;
    // A figure never breaks from its unit: "— 0 s" with a no-break space.
    b.until(
        r"/ — \d+\u00a0s$/.test(document.querySelector('#pools .pool .progress-text').textContent)",
        "the step's elapsed time, on one line",
    )
    .await;
    b.shot("04-progress").await;
    b.until(
        "!document.querySelector('#pools .pool .result').hidden",
        "the result",
    )
    .await;
    let percent = b
        .text("document.querySelector('#pools .pool progress').value")
        .await;
    assert_eq!(percent, "100", "the bar reached the end");
    // "(0 %)" while a step runs, never broken across lines: a no-break space.
    let texts = b.text("JSON.stringify(window.progressTexts)").await;
    let texts: Vec<String> = serde_json::from_str(&texts).unwrap();
    let percents: Vec<&String> = texts.iter().filter(|t| t.contains('%')).collect();
    assert!(!percents.is_empty(), "no running step seen: {texts:?}");
    for t in percents {
        assert!(
            t.contains("\u{a0}%)") && !t.contains(" %"),
            "the percent may wrap: {t:?}"
        );
    }
    // Said once, and in words: no raw permission names.
    let text = b.text(&format!("{card}.innerText")).await;
    assert_eq!(text.to_lowercase().matches("ready").count(), 1, "{text}");
    for raw in ["ACTIVE", "NATIVE_RDP", "USB_REDIR", "SHARED_CLIPBOARD"] {
        assert!(!text.contains(raw), "{raw} shown: {text}");
    }
    assert_eq!(
        b.text(&format!(
            "{card}.querySelector('.allowed [title=USB_REDIR]').textContent"
        ))
        .await,
        "USB devices"
    );
    b.shot("05-ready").await;

    // The pool has a Guacamole gateway: a link into the desktop through it, opened in a new
    // tab that is told nothing about this page.
    let guacamole = "document.querySelector('#pools .pool .guacamole')";
    assert_eq!(b.text(&format!("{guacamole}.hidden")).await, "false");
    let href = b.text(&format!("{guacamole}.href")).await;
    assert!(
        href.starts_with(&format!("{GATEWAY}#/?data=")) && href.len() > 200,
        "{href}"
    );
    assert_eq!(b.text(&format!("{guacamole}.target")).await, "_blank");
    assert_eq!(
        b.text(&format!("{guacamole}.rel")).await,
        "noopener noreferrer"
    );

    // The link carries the server's launcher (rpc/launcher); the page's CSP keeps even its own
    // script from reading it back, so the downloaded file is what is checked.
    let name = b
        .text("document.querySelector('#pools .pool .download').download")
        .await;
    assert_eq!(name, "pool-win-1.rdp");
    b.click("#pools .pool .download").await;
    let file = b.downloads.join("pool-win-1.rdp");
    let deadline = Instant::now() + STEP;
    let content = loop {
        if let Ok(text) = std::fs::read_to_string(&file)
            && text.ends_with("\r\n")
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the launcher was not downloaded to {file:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        content.starts_with("full address:s:") && content.contains("username:s:user-4\r\n"),
        "{content:?}"
    );

    b.click("#signout").await;
    b.until(
        &visible("signin-view"),
        "the sign-in form after signing out",
    )
    .await;
    assert_eq!(
        b.text("document.getElementById('notice').textContent")
            .await,
        "You signed out."
    );
    b.shot("06-signed-out").await;
    app.stop().await;
}

/// The page's one socket has 2 sign-in attempts and the lockout comes after 3 failures: the
/// third attempt is asked again on a new socket (still a wrong password), and the fourth meets
/// the lockout, whose own sentence says when to try again.
async fn a_wrong_password_is_said_plainly(b: Browser) {
    let app = TestApp::spawn_with(|c| {
        c.max_auth_failures = 2;
        c.lockout_attempts = 3;
    })
    .await;
    b.client.goto(&app.url("/")).await.unwrap();
    for attempt in 1..=4 {
        b.sign_in("astravdi", "not the password", false).await;
        b.until(&visible("signin-error"), "the error").await;
        let error = b
            .text("document.getElementById('signin-error').textContent")
            .await;
        if attempt < 4 {
            assert_eq!(error, "Wrong username or password.", "attempt {attempt}");
            if attempt == 1 {
                b.shot("01-wrong-password").await;
            }
        } else {
            assert_eq!(
                error, "Too many failed sign-in attempts; try again in up to 15 minutes.",
                "a 429 says when to retry"
            );
            b.shot("02-too-many-attempts").await;
        }
        assert!(
            b.text("document.getElementById('pools-view').hidden").await == "true",
            "not signed in"
        );
    }
    app.stop().await;
}

/// Also with a ready desktop behind a Guacamole gateway on the page, whose link (10 s) expires
/// before the token (12 s): nothing the page does by itself keeps an unattended session alive
/// (a hostile review found the link's renewal did).
async fn an_expired_token_signs_the_page_out(b: Browser) {
    let app = portal_app(Some(Duration::from_secs(12))).await;
    b.admin_with_pools(&app, false).await;
    b.click("#pools .pool .connect").await;
    b.until(
        "!document.querySelector('#pools .pool .guacamole').hidden",
        "the Guacamole link",
    )
    .await;
    b.until(
        "!document.querySelector('#pools .pool .guacamole-renew').hidden",
        "the expired link giving way to a button",
    )
    .await;
    b.until(&visible("signin-view"), "the page signing itself out")
        .await;
    let notice = b
        .text("document.getElementById('notice').textContent")
        .await;
    assert_eq!(
        notice,
        "You were signed out: no activity for 12 seconds. Sign in again."
    );
    b.shot("01-signed-out-by-expiry").await;
    app.stop().await;
}

async fn a_failed_step_is_shown_on_its_pool(b: Browser) {
    let app = TestApp::spawn_with(|c| fast_sim(c, helpers::FAIL, OK)).await;
    b.admin_with_pools(&app, false).await;
    b.click("#pools .pool .connect").await;
    b.until(
        "!document.querySelector('#pools .pool .error').hidden",
        "the step's error",
    )
    .await;
    let error = b
        .text("document.querySelector('#pools .pool .error').textContent")
        .await;
    assert!(error.ends_with("Try again."), "{error}");
    assert!(
        error.contains("(simulated failure)"),
        "the task's reason: {error}"
    );
    assert_eq!(
        b.text("document.querySelector('#pools .pool .connect').textContent")
            .await,
        "Connect"
    );
    b.shot("01-step-failed").await;
    app.stop().await;
}

/// The next click after a failed step 1 meets the server's wait (`failed_step_retry`, 3 s
/// here): the card says how long, counting down with the button held, then gives the button
/// back, and the pool is asked again.
async fn a_failed_step_counts_down_to_the_next_try(b: Browser) {
    let app = TestApp::spawn_with(|c| {
        fast_sim(c, helpers::FAIL, OK);
        c.failed_step_retry = Duration::from_secs(3);
    })
    .await;
    b.admin_with_pools(&app, false).await;
    let error = "document.querySelector('#pools .pool .error')";
    let button = "document.querySelector('#pools .pool .connect')";
    b.click("#pools .pool .connect").await;
    b.until(&format!("!{error}.hidden"), "the step's error")
        .await;
    b.click("#pools .pool .connect").await;
    b.until(
        &format!("{error}.textContent.includes('The last attempt failed')"),
        "the wait",
    )
    .await;
    let text = b.text(&format!("{error}.textContent")).await;
    let seconds: u64 = text
        .rsplit("try again in ")
        .next()
        .and_then(|s| s.strip_suffix("\u{a0}s."))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no wait in seconds: {text:?}"));
    assert!((1..=3).contains(&seconds), "{text}");
    assert!(
        text.starts_with("The pool cannot provide a machine (simulated failure). "),
        "the reason first: {text}"
    );
    assert_eq!(b.text(&format!("{button}.disabled")).await, "true");
    b.shot("01-counting-down").await;
    b.until(
        &format!("!{button}.disabled && {error}.hidden"),
        "the button back after the wait",
    )
    .await;
    // The pool may be asked again: a new task runs (and fails again, with its reason).
    b.click("#pools .pool .connect").await;
    b.until(
        &format!("!{error}.hidden && {error}.textContent.includes('simulated failure')"),
        "the second try's failure",
    )
    .await;
    assert!(
        !b.text(&format!("{error}.textContent"))
            .await
            .contains("The last attempt failed"),
        "a new task, not the wait"
    );
    app.stop().await;
}

/// user-5, the demo's single sign-on user, on a server without single sign-on: said plainly,
/// in words, not as the protocol's "ADFS" message.
async fn a_single_sign_on_user_is_told_this_server_does_not_offer_it(b: Browser) {
    let app = TestApp::spawn().await;
    b.client.goto(&app.url("/")).await.unwrap();
    b.sign_in("user-5", PASSWORD, false).await;
    b.until(&visible("signin-error"), "user-5's refusal").await;
    assert_eq!(
        b.text("document.getElementById('signin-error').textContent")
            .await,
        "This account signs in through single sign-on, which this server does not offer. \
         Ask your administrator."
    );
    app.stop().await;
}

/// "Keep me signed in" through a server restart that takes several seconds: the page keeps
/// trying (1, 2, 4 … s apart), says it is reconnecting, and is signed in again with the kept
/// token once the server is back on the same port and data.
async fn keep_me_signed_in_reconnects_after_a_restart(b: Browser) {
    let port = free_port();
    let app = TestApp::spawn_with(|c| {
        c.listen = format!("127.0.0.1:{port}").parse().unwrap();
    })
    .await;
    b.admin_with_pools(&app, true).await;
    let config = app.stop_keeping_data().await;
    b.until(
        "document.getElementById('notice').textContent.endsWith('Reconnecting…')",
        "the page saying it reconnects",
    )
    .await;
    // Tries at about 1 and 3 s fail: for 5 s the page keeps the token and keeps waiting
    // (a page that gave up after one failed try, 2 s into it, is caught here).
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        assert_eq!(
            b.text(&visible("signin-view")).await,
            "false",
            "not signed out"
        );
        assert!(
            b.text("document.getElementById('notice').textContent")
                .await
                .ends_with("Reconnecting…")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        b.text("sessionStorage.getItem('poolgate.token')")
            .await
            .starts_with("pgt_"),
        "the token kept"
    );
    b.shot("01-reconnecting").await;
    let app = TestApp::spawn_config(config).await;
    b.until(
        "document.getElementById('notice').hidden && document.getElementById('signin-view').hidden",
        "the page signed in again",
    )
    .await;
    assert_eq!(
        b.text("document.getElementById('who').textContent").await,
        "Signed in as astravdi"
    );
    b.until(
        "document.querySelectorAll('#pools .pool').length == 4",
        "astravdi's pools again",
    )
    .await;
    app.stop().await;
}

/// A server that does not come back: the page stops trying once the kept token would have
/// expired (`token_ttl`, 6 s here, after the last accepted message) and says so.
async fn keep_me_signed_in_gives_up_when_the_token_would_have_expired(b: Browser) {
    let app = TestApp::spawn_with(|c| c.token_ttl = Duration::from_secs(6)).await;
    b.admin_with_pools(&app, true).await;
    let stopped = Instant::now();
    app.stop().await;
    b.until(
        "document.getElementById('notice').textContent.endsWith('Reconnecting…')",
        "the page saying it reconnects",
    )
    .await;
    b.until(&visible("signin-view"), "the page giving up").await;
    assert!(
        stopped.elapsed() < Duration::from_secs(7),
        "not after the token's end: {:?}",
        stopped.elapsed()
    );
    assert_eq!(
        b.text("document.getElementById('notice').textContent")
            .await,
        "The server is restarting. The server did not come back before your session ended. \
         Sign in again."
    );
    assert_eq!(
        b.text("sessionStorage.getItem('poolgate.token')").await,
        "null",
        "the dead token dropped"
    );
}

async fn keep_me_signed_in_survives_a_reload(b: Browser) {
    let app = portal_app(None).await;
    b.client.set_window_size(360, 740).await.unwrap();
    b.client.goto(&app.url("/")).await.unwrap();
    b.sign_in("astravdi", PASSWORD, true).await;
    b.until(&visible("pools-view"), "the pools").await;
    b.until(
        "document.querySelectorAll('#pools .pool').length == 4",
        "astravdi's pools",
    )
    .await;
    // Nothing is wider than the screen.
    let overflow = b
        .text("document.documentElement.scrollWidth > document.documentElement.clientWidth")
        .await;
    assert_eq!(overflow, "false", "the page scrolls sideways at 360 px");
    b.shot("01-360px").await;
    b.client.refresh().await.unwrap();
    b.until(
        &visible("pools-view"),
        "the pools again after a reload, without a password",
    )
    .await;
    // The token never shows in the address bar.
    let url = b.client.current_url().await.unwrap();
    assert!(!url.as_str().contains("pgt_"), "{url}");
    app.stop().await;
}

/// Where the pictures go.
fn artefacts() -> PathBuf {
    let dir = std::env::var_os("POOLGATE_TEST_ARTEFACTS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/browser-artefacts"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A chromedriver on a free loopback port, stopped on drop.
struct Driver {
    child: std::process::Child,
    url: String,
}

impl Driver {
    fn start(program: &Path) -> Driver {
        let port = free_port();
        let child = std::process::Command::new(program)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

async fn session(driver: &str, downloads: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900", "--no-first-run", "--disable-extensions"],
            "prefs": {
                "download.default_directory": downloads,
                "download.prompt_for_download": false,
                "safebrowsing.enabled": false,
            },
        }),
    );
    ClientBuilder::rustls()
        .expect("TLS roots")
        .capabilities(caps)
        .connect(driver)
        .await
        .expect("a chromedriver session")
}

fn run(driver: &str, name: &str, case: Case) -> Result<(), Failed> {
    let downloads = tempfile::tempdir().map_err(|e| Failed::from(e.to_string()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failed::from(format!("cannot build a runtime: {e}")))?;
    rt.block_on(async {
        let client = session(driver, downloads.path()).await;
        let browser = Browser {
            client: client.clone(),
            downloads: downloads.path().to_owned(),
            artefacts: artefacts(),
            case: name.to_owned(),
        };
        let outcome = tokio::spawn(case(browser)).await;
        client.close().await.ok();
        outcome.map_err(|e| Failed::from(format!("{e}")))
    })
}

fn main() -> ExitCode {
    // fantoccini's HTTP client brings rustls with a second crypto backend; name the one
    // poolgate uses, or rustls cannot pick.
    rustls::crypto::ring::default_provider()
        .install_default()
        .ok();
    let args = Arguments::from_args();
    let required = std::env::var("POOLGATE_TEST_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    let found = (
        on_path("chromedriver"),
        on_path("chromium").or_else(|| on_path("chromium-browser")),
    );
    let missing = match &found {
        (Some(_), Some(_)) => None,
        _ => Some(
            "no headless browser: chromedriver and chromium are not both on the PATH; to run it: \
             apt-get install chromium chromium-driver",
        ),
    };
    // One chromedriver for the whole run, started only if a case will use it.
    let driver = match (&found.0, missing) {
        (Some(program), None) if !args.list => Some(std::sync::Arc::new(Driver::start(program))),
        _ => None,
    };
    let mut trials = Vec::new();
    let no_provider = poolgate_test_common::oidc_provider::missing();
    let provider_required = std::env::var("POOLGATE_TEST_REQUIRE_OIDC").is_ok_and(|v| v == "1");
    for (name, case) in cases() {
        if name == SSO_CASE
            && let Some(why) = &no_provider
            && !provider_required
        {
            if !args.list && args.filter.as_deref().is_none_or(|f| name.contains(f)) {
                println!("skipped browser case {name}: {why}");
            }
            trials.push(Trial::test(name, || Ok(())).with_ignored_flag(true));
            continue;
        }
        let trial = match (missing, &driver) {
            (None, Some(driver)) => {
                let driver = driver.clone();
                Trial::test(name, move || run(&driver.url, name, case))
            }
            (Some(why), _) if required => Trial::test(name, move || {
                Err(format!("POOLGATE_TEST_REQUIRE_BROWSER=1, but {why}").into())
            }),
            (why, _) => {
                if let Some(why) = why
                    && !args.list
                    && args.filter.as_deref().is_none_or(|f| name.contains(f))
                {
                    println!("skipped browser case {name}: {why}");
                }
                Trial::test(name, || Ok(())).with_ignored_flag(true)
            }
        };
        trials.push(trial);
    }
    let conclusion = libtest_mimic::run(&args, trials);
    drop(driver);
    conclusion.exit_code()
}
