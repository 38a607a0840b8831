//! poolgate's single sign-on flows end to end against the real provider: the thin client's
//! hand-off over a real WebSocket, the REST poll, the portal's one-time code with TOTP on
//! top, and the refusals (replayed `state`, reused or guessed codes, `access_denied`, the
//! provider down).

use std::time::{Duration, Instant};

use poolgate::auth::otp::{OtpMethod, TotpSecret};
use poolgate_test_common::helpers::{PASSWORD, TestApp, demo_config};
use serde_json::{Value, json};

use crate::agent::Agent;
use poolgate_test_common::oidc_provider::{Client, Options, Provider, SOLO, USER, free_port};

const TOTP_SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";

/// A provider and a poolgate that signs people in at it (`public_url` its real address).
pub struct Site {
    pub provider: Provider,
    pub app: TestApp,
    pub public_url: String,
}

pub async fn site(edit: impl FnOnce(&mut poolgate::Config)) -> Site {
    let port = free_port();
    // A name, not 127.0.0.1: public_url's host is also the security keys' relying party.
    let public_url = format!("http://localhost:{port}");
    let provider = Provider::start_with(Options {
        public_url: Some(public_url.clone()),
        ..Options::default()
    })
    .await;
    let mut config = demo_config();
    config.listen = format!("127.0.0.1:{port}").parse().unwrap();
    config.public_url = Some(public_url.clone());
    let mut oidc = provider.settings(Client::Confidential);
    oidc.handoff.interval = Duration::from_secs(1);
    config.oidc = Some(oidc);
    // `solo` is also a local user here, who signs in through the provider and has TOTP.
    let mut solo = config.users[0].clone();
    solo.username = SOLO.0.into();
    solo.id = uuid::Uuid::new_v4();
    solo.adfs_enabled = true;
    solo.otp_enabled = true;
    solo.otp_method = Some(OtpMethod::Totp);
    solo.otp_secret = Some(TOTP_SECRET.into());
    config.users.push(solo);
    edit(&mut config);
    let app = TestApp::spawn_config(config).await;
    Site {
        provider,
        app,
        public_url,
    }
}

impl Site {
    /// A person's browser: opens `start` on poolgate (a device link, or `/oidc/login`), signs
    /// in at the provider as `who` and comes back to the callback. Returns the callback's
    /// answer: status, `Location`, body.
    pub async fn sign_in(&self, start: &str, who: (&str, &str)) -> (u16, Option<String>, String) {
        self.signed_in(start, who).await.1
    }

    /// As [`Site::sign_in`], and the browser (its cookies) afterwards.
    pub async fn signed_in(
        &self,
        start: &str,
        who: (&str, &str),
    ) -> (Agent, (u16, Option<String>, String)) {
        let mut agent = Agent::at(&self.public_url);
        let query = self.at_provider(&mut agent, start, Some(who)).await;
        let answer = agent
            .get(&format!("{}/oidc/callback?{query}", self.public_url))
            .await;
        (agent, answer)
    }

    /// The portal's sign-in as `who` in a browser; then the page's socket, whose upgrade
    /// carries the browser's cookies (the one-time code among them).
    pub async fn portal_socket(
        &self,
        who: (&str, &str),
    ) -> (Agent, poolgate_test_common::helpers::Client) {
        let (agent, (status, location, body)) = self.signed_in("/oidc/login", who).await;
        assert_eq!(
            (status, location.as_deref()),
            (303, Some("/?sso=1")),
            "{body}"
        );
        assert!(
            agent.cookie("pg_sso_code").is_some(),
            "the code is in a cookie"
        );
        assert!(
            agent.cookie("pg_sso_state").is_none(),
            "the state cookie is cleared"
        );
        let socket = self.app.connect_with_cookie(&agent.cookie_header()).await;
        (agent, socket)
    }

    /// Opens `start` (following poolgate's device page and `/oidc/login`) and signs in as
    /// `who` at the provider (or cancels: `None`); returns the callback's query.
    async fn at_provider(
        &self,
        agent: &mut Agent,
        start: &str,
        who: Option<(&str, &str)>,
    ) -> String {
        let url = format!("{}{start}", self.public_url);
        let (status, location, body) = if start.starts_with("/oidc/device") {
            let (status, _, page) = agent.get(&url).await;
            assert_eq!(status, 200, "{page}");
            let fields = hidden_fields(&page);
            let fields: Vec<(&str, &str)> = fields
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let answer = agent.post_form(&url, &fields).await;
            // A hand-off asks the provider for a fresh sign-in.
            assert!(
                answer
                    .1
                    .as_deref()
                    .unwrap_or_default()
                    .contains("prompt=login"),
                "{answer:?}"
            );
            answer
        } else {
            agent.get(&url).await
        };
        assert_eq!(status, 303, "{url}: {body}");
        let authorize = location.unwrap();
        assert!(authorize.starts_with(&self.provider.issuer), "{authorize}");
        match who {
            Some((user, password)) => agent.sign_in(&authorize, user, password).await,
            None => agent.cancel(&authorize).await,
        }
    }
}

/// The hidden fields of a page's form: (name, value).
fn hidden_fields(page: &str) -> Vec<(String, String)> {
    page.split("<input type=\"hidden\" ")
        .skip(1)
        .map(|input| {
            let attr = |name: &str| {
                input
                    .split(&format!("{name}=\""))
                    .nth(1)
                    .and_then(|v| v.split('"').next())
                    .unwrap_or_default()
                    .to_owned()
            };
            (attr("name"), attr("value"))
        })
        .collect()
}

/// The path and query of a URL on poolgate.
pub fn path_of(url: &str, public_url: &str) -> String {
    url.strip_prefix(public_url).unwrap().to_owned()
}

/// The next pushed `auth_sso` event (skipping other events).
pub async fn pushed(client: &mut poolgate_test_common::helpers::Client) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no auth_sso event");
        let frame = client.recv().await;
        if frame["namespace"] == "events" && frame["name"] == "auth_sso" {
            return frame["args"].clone();
        }
    }
}

pub async fn a_thin_client_is_signed_in_by_the_browser_hand_off() {
    let site = site(|_| {}).await;
    let mut client = site.app.connect().await;
    // user-5 signs in through the provider: the mock's 428/101, and where to sign in.
    let reply = client
        .rpc(
            "auth",
            json!({"username": "user-5", "password": "anything"}),
        )
        .await;
    let args = &reply["args"];
    assert_eq!(
        (args["code"].as_u64(), args["err_code"].as_u64()),
        (Some(428), Some(101)),
        "{reply}"
    );
    let code = args["user_code"].as_str().unwrap();
    assert_eq!(code.len(), 9, "XXXX-XXXX: {code}");
    assert_eq!(
        args["verification_uri"],
        format!("{}/oidc/device", site.public_url)
    );
    assert_eq!(args["expires_in"], 600);
    assert_eq!(args["interval"], 1);
    let complete = args["verification_uri_complete"].as_str().unwrap();
    assert!(
        complete.ends_with(&format!("?user_code={code}")),
        "{complete}"
    );
    // Not signed in yet.
    let early = client.rpc("pools", json!({})).await;
    assert_eq!(early["args"]["code"], 401, "{early}");

    // A link straight to the provider for this code (what a phisher would send) leads to the
    // confirmation page first.
    let raw = code.replace('-', "");
    let (status, location, _) = Agent::at(&site.public_url)
        .get(&format!("{}/oidc/login?handoff={raw}", site.public_url))
        .await;
    assert_eq!(status, 303);
    assert_eq!(
        location.as_deref(),
        Some(format!("/oidc/device?user_code={code}").as_str())
    );

    // A form posted from elsewhere (another site's page, a script without this browser's
    // confirmation cookie) goes back to the confirmation page, never to the provider.
    let mut forger = Agent::at(&site.public_url);
    let (status, location, _) = forger
        .post_form(
            &format!("{}/oidc/device", site.public_url),
            &[
                ("user_code", raw.as_str()),
                ("token", "x".repeat(43).as_str()),
            ],
        )
        .await;
    assert_eq!(
        (status, location.as_deref()),
        (303, Some(format!("/oidc/device?user_code={code}").as_str()))
    );
    // The confirmation page says where and when the device asked.
    let (_, _, page) = Agent::at(&site.public_url)
        .get(&format!("{}/oidc/device?user_code={code}", site.public_url))
        .await;
    assert!(page.contains("from the address <b>127.0.0.1</b>"), "{page}");

    let (status, _, page) = site
        .sign_in(&path_of(complete, &site.public_url), USER)
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("You are signed in on your device"), "{page}");

    let event = pushed(&mut client).await;
    assert_eq!(event["code"], 200, "{event}");
    assert_eq!(event["username"], "user-5", "{event}");
    let token = event["token"].as_str().unwrap();
    assert!(token.starts_with("pgt_"), "{event}");
    // Signed in at once, as if `auth` had succeeded; the token is a normal one.
    let pools = client.rpc("pools", json!({})).await;
    assert_eq!(pools["name"], "response", "{pools}");
    let mut other = site.app.connect().await;
    let again = other.rpc("auth_token", json!({"token": token})).await;
    assert_eq!(again["name"], "response", "{again}");

    // `auth_sso` gives anyone a hand-off; the person here is a provider-only user (admin-1
    // is no local user): signed in as the federated person, an admin by group.
    let mut thin = site.app.connect().await;
    let reply = thin.rpc("auth_sso", json!({})).await;
    assert_eq!(reply["args"]["code"], 428, "{reply}");
    let complete = reply["args"]["verification_uri_complete"].as_str().unwrap();
    let (status, _, page) = site
        .sign_in(
            &path_of(complete, &site.public_url),
            poolgate_test_common::oidc_provider::ADMIN,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(pushed(&mut thin).await["code"], 200);
    let sessions = thin.rpc("admin_sessions", json!({})).await;
    assert_eq!(
        sessions["name"], "response",
        "admin by admin_groups: {sessions}"
    );
}

pub async fn a_rest_client_polls_for_its_jwt() {
    let site = site(|_| {}).await;
    let http = reqwest::Client::new();
    let login = http
        .post(site.app.url("/api/v2/users/login/"))
        .json(&json!({"username": "user-5", "password": PASSWORD, "ldap": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 428);
    let body: Value = login.json().await.unwrap();
    let item = &body["detail"][0];
    assert_eq!(item["err_code"], 101, "{body}");
    assert_eq!(
        item["next_step"], "/api/v2/users/adfs/",
        "the mock's field stays: {body}"
    );
    let code = item["user_code"].as_str().unwrap().to_owned();
    let device_code = item["device_code"].as_str().unwrap().to_owned();
    let poll = |device_code: &str| {
        let url = site.app.url(&format!(
            "/api/v2/users/login/sso/{code}/?device_code={device_code}"
        ));
        let http = http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, answer) = poll(&device_code).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("authorization_pending"))
    );
    let (status, answer) = poll(&device_code).await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("slow_down")));
    // The user code alone (another client's device_code) does not collect the sign-in.
    let (status, _) = poll("not-the-device-code").await;
    assert_eq!(status, 401);

    let complete = item["verification_uri_complete"].as_str().unwrap();
    let (status, _, page) = site
        .sign_in(&path_of(complete, &site.public_url), USER)
        .await;
    assert_eq!(status, 200, "{page}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, answer) = poll(&device_code).await;
    assert_eq!(status, 200, "{answer}");
    let jwt = answer["data"]["access_token"].as_str().unwrap();
    let pools = http
        .get(site.app.url("/api/v2/pools/"))
        .header("authorization", format!("JWT {jwt}"))
        .send()
        .await
        .unwrap();
    assert_eq!(pools.status(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, answer) = poll(&device_code).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("expired_token")),
        "used once"
    );
}

pub async fn totp_is_still_asked_after_the_providers_sign_in() {
    let site = site(|_| {}).await;
    let (_, mut client) = site.portal_socket(SOLO).await;
    let reply = client.rpc("auth_sso_code", json!({})).await;
    let args = &reply["args"];
    assert_eq!(
        (args["code"].as_u64(), args["err_code"].as_u64()),
        (Some(428), Some(100)),
        "{reply}"
    );
    let mfa_token = args["mfa_token"].as_str().unwrap();
    let totp = TotpSecret::from_base32(TOTP_SECRET, "t").unwrap();
    let otp = totp.code_at(chrono::Utc::now().timestamp() as u64);
    let done = client
        .rpc(
            "otp_verify",
            json!({"mfa_token": mfa_token, "otp_code": otp}),
        )
        .await;
    assert_eq!(done["name"], "response", "{done}");
    let pools = client.rpc("pools", json!({})).await;
    assert_eq!(pools["name"], "response", "{pools}");

    // Without TOTP (user-5): the portal's code is a token at once, with who signed in.
    let (_, mut client) = site.portal_socket(USER).await;
    let reply = client.rpc("auth_sso_code", json!({})).await;
    assert_eq!(reply["args"][2], "user-5", "{reply}");
}

pub async fn replayed_state_reused_and_guessed_codes_are_refused_and_counted() {
    // Four refusals and one sign-in begun but never back from the provider (the attacker's,
    // counted until its callback comes) use up this address's five attempts.
    let site = site(|c| c.lockout_address_attempts = 5).await;
    // A replayed callback (its state used once already).
    let mut agent = Agent::at(&site.public_url);
    let query = site
        .at_provider(&mut agent, "/oidc/login", Some(USER))
        .await;
    let callback = format!("{}/oidc/callback?{query}", site.public_url);
    let (status, _, _) = agent.get(&callback).await;
    assert_eq!(status, 303);
    let browser = agent.cookie_header();
    let (status, _, page) = agent.get(&callback).await;
    assert_eq!(status, 401, "{page}");
    // The portal code, used twice from its browser.
    let mut client = site.app.connect_with_cookie(&browser).await;
    let first = client.rpc("auth_sso_code", json!({})).await;
    assert_eq!(first["name"], "response", "{first}");
    let mut client = site.app.connect_with_cookie(&browser).await;
    let again = client.rpc("auth_sso_code", json!({})).await;
    assert_eq!(again["args"]["code"], 401, "{again}");
    // A guessed user code.
    let (status, _, page) = agent
        .get(&format!(
            "{}/oidc/device?user_code=BCDF-GHJK",
            site.public_url
        ))
        .await;
    assert_eq!(status, 401, "{page}");
    // A callback with another browser's state cookie (login CSRF): refused, counted.
    let mut attacker = Agent::at(&site.public_url);
    let query = site
        .at_provider(&mut attacker, "/oidc/login", Some(USER))
        .await;
    let mut victim = Agent::at(&site.public_url);
    let (status, _, _) = victim
        .get(&format!("{}/oidc/callback?{query}", site.public_url))
        .await;
    assert_eq!(status, 401);
    // Five counts from this address: the next attempt is refused before anything.
    let (status, _, page) = agent
        .get(&format!(
            "{}/oidc/device?user_code=BCDF-GHJL",
            site.public_url
        ))
        .await;
    assert_eq!(status, 429, "{page}");
    let metrics = reqwest::get(site.app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("poolgate_logins_total{outcome=\"denied\"} 4"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("logins"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

pub async fn access_denied_at_the_provider_signs_nobody_in() {
    let site = site(|_| {}).await;
    let mut agent = Agent::at(&site.public_url);
    let query = site.at_provider(&mut agent, "/oidc/login", None).await;
    assert!(query.contains("error=access_denied"), "{query}");
    let (status, location, page) = agent
        .get(&format!("{}/oidc/callback?{query}", site.public_url))
        .await;
    assert_eq!((status, location), (400, None), "{page}");
    assert!(page.contains("access_denied"), "{page}");

    // RP-initiated logout: on to the provider's end_session_endpoint, back to the portal.
    let (status, location, _) = agent.get(&format!("{}/oidc/logout", site.public_url)).await;
    let location = location.unwrap_or_default();
    assert_eq!(status, 303);
    assert!(
        location.starts_with(&format!("{}/session/end?", site.provider.issuer)),
        "{location}"
    );
    for part in [
        "client_id=poolgate".to_owned(),
        format!(
            "post_logout_redirect_uri={}",
            urlencode(&format!("{}/", site.public_url))
        ),
    ] {
        assert!(location.contains(&part), "{part} not in {location}");
    }
    let config: Value = reqwest::get(site.app.url("/oidc/config"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["display_name"], "single sign-on");
}

fn urlencode(text: &str) -> String {
    openidconnect::url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

pub async fn a_provider_down_is_a_503_within_seconds_and_healthz_degraded() {
    let mut site = site(|_| {}).await;
    site.provider.stop().await;
    let started = Instant::now();
    let mut agent = Agent::at(&site.public_url);
    let (status, _, page) = agent.get(&format!("{}/oidc/login", site.public_url)).await;
    assert_eq!(status, 503, "{page}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let health = reqwest::get(site.app.url("/healthz")).await.unwrap();
    let body = health.text().await.unwrap();
    assert!(
        body.contains("degraded") && body.contains("sign-in provider"),
        "{body}"
    );
    // A thin client's hand-off still starts; the link then says the provider is down.
    let mut client = site.app.connect().await;
    let reply = client.rpc("auth_sso", json!({})).await;
    assert_eq!(reply["args"]["code"], 428, "{reply}");

    // The provider back (where it was): /healthz says ok again without anyone signing in.
    let _back = Provider::start_with(Options {
        public_url: Some(site.public_url.clone()),
        port: Some(site.provider.port),
        ..Options::default()
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = reqwest::get(site.app.url("/healthz"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if body == "ok\n" {
            break;
        }
        assert!(Instant::now() < deadline, "still {body:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn poolgate_connect_sso_prints_the_link_and_is_signed_in() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let site = site(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_poolgate"))
        .args(["connect", "--sso", "--server", &site.app.ws_url()])
        .args([
            "--user",
            "user-5",
            "--pool",
            "nonexistent-pool",
            "--password-stdin",
        ])
        .arg("--out")
        .arg(dir.path())
        .arg("--token-file")
        .arg(&token_file)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let prefix = format!("{}/oidc/device?user_code=", site.public_url);
    let mut printed = String::new();
    let link = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            printed.push_str(&line);
            printed.push('\n');
            if line.starts_with(&prefix) {
                return line;
            }
        }
        panic!("connect ended without a link: {printed}")
    })
    .await
    .expect("the link within 20 s");
    assert!(
        printed.contains('█') || printed.contains('▀'),
        "a terminal QR code: {printed}"
    );
    let (status, _, page) = site.sign_in(&path_of(&link, &site.public_url), USER).await;
    assert_eq!(status, 200, "{page}");
    // Signed in: the token saved, then it looks for the pool (which user-5 does not have).
    let rest = tokio::time::timeout(Duration::from_secs(20), async {
        let mut rest = String::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            rest.push_str(&line);
        }
        rest
    })
    .await
    .expect("connect ends");
    assert!(rest.contains("has no pool"), "{rest}");
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert!(token.starts_with("pgt_"), "{token}");
}
