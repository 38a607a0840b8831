//! What keeps single sign-on from being turned against its users: the portal's code works
//! only in the browser that came back from the provider; a local account is pinned to the
//! provider's person who first signed in as it, and names that would pass for another
//! account are refused; signing out gives up a waiting hand-off; hand-offs are counted
//! against the address until used, and a user who signs in through them is never locked
//! out by doing so.

use std::time::Duration;

use poolgate_test_common::helpers::PASSWORD;
use poolgate_test_common::oidc_provider::{CASE, COLON, IMPOSTOR, USER};
use serde_json::json;

use crate::agent::Agent;
use crate::flows::{path_of, site};

pub async fn the_portals_code_signs_in_only_the_browser_that_came_back() {
    let site = site(|_| {}).await;
    let (agent, mut page) = site.portal_socket(USER).await;
    let code = agent.cookie("pg_sso_code").unwrap().to_owned();
    // Another browser (a link sent to a victim, a script that learnt the code): its socket
    // has no cookie, with or without the code in the call.
    let mut other = site.app.connect().await;
    for args in [json!({}), json!({"code": code})] {
        let reply = other.rpc("auth_sso_code", args).await;
        assert_eq!(reply["args"]["code"], 401, "{reply}");
    }
    // The browser itself: signed in, once.
    let reply = page.rpc("auth_sso_code", json!({})).await;
    assert_eq!(reply["name"], "response", "{reply}");
    assert_eq!(reply["args"][2], "user-5", "{reply}");
}

pub async fn a_local_account_is_pinned_and_names_passing_for_another_are_refused() {
    let site = site(|_| {}).await;
    // user-5 (local, adfs_enabled) signs in: pinned to the provider's sub-user-5.
    let (status, location, body) = site.sign_in("/oidc/login", USER).await;
    assert_eq!(
        (status, location.as_deref()),
        (303, Some("/?sso=1")),
        "{body}"
    );
    // Another person the provider calls USER-5 does not become user-5.
    let (status, _, page) = site.sign_in("/oidc/login", IMPOSTOR).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("belongs to another person"), "{page}");
    // `User-1` is the local user-1 in another case, who does not sign in at the provider.
    let (status, _, page) = site.sign_in("/oidc/login", CASE).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("local account of that name"), "{page}");
    // `ldap:user-1` would be the directory's user-1 in Guacamole.
    let (status, _, page) = site.sign_in("/oidc/login", COLON).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("holds a colon"), "{page}");
    // user-5 still signs in.
    let (status, location, body) = site.sign_in("/oidc/login", USER).await;
    assert_eq!(
        (status, location.as_deref()),
        (303, Some("/?sso=1")),
        "{body}"
    );
}

pub async fn signing_out_gives_up_a_waiting_hand_off() {
    let site = site(|_| {}).await;
    let mut client = site.app.connect().await;
    let reply = client.rpc("auth_sso", json!({})).await;
    assert_eq!(reply["args"]["code"], 428, "{reply}");
    let complete = reply["args"]["verification_uri_complete"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = client.rpc("auth_clear", json!({})).await;
    assert_eq!(out["name"], "response", "{out}");
    // The hand-off is gone: its link signs nobody in (the confirmation page refuses it).
    let device = format!(
        "{}{}",
        site.public_url,
        path_of(&complete, &site.public_url)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _, page) = Agent::at(&site.public_url).get(&device).await;
        if status == 401 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still offered: {page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pushed = tokio::time::timeout(Duration::from_millis(500), client.recv()).await;
    assert!(pushed.is_err(), "a frame after signing out: {pushed:?}");
    let pools = client.rpc("pools", json!({})).await;
    assert_eq!(pools["args"]["code"], 401, "{pools}");
}

pub async fn hand_offs_count_against_the_address_until_used_and_never_lock_their_user() {
    let site = site(|c| {
        c.lockout_address_attempts = 3;
        c.lockout_attempts = 2;
    })
    .await;
    let http = reqwest::Client::new();
    // A user who signs in through REST hand-offs four times (more than lockout_attempts):
    // each hand-off and each sign-in at the provider is given back when it is used.
    for round in 0..4 {
        let login = http
            .post(site.app.url("/api/v2/users/login/"))
            .json(&json!({"username": "user-5", "password": "anything", "ldap": false}))
            .send()
            .await
            .unwrap();
        assert_eq!(login.status(), 428, "round {round}");
        let body: serde_json::Value = login.json().await.unwrap();
        let item = &body["detail"][0];
        let device_code = item["device_code"].as_str().unwrap();
        let complete = item["verification_uri_complete"].as_str().unwrap();
        let (status, _, page) = site
            .sign_in(&path_of(complete, &site.public_url), USER)
            .await;
        assert_eq!(status, 200, "round {round}: {page}");
        let poll = http
            .get(site.app.url(&format!(
                "{}?device_code={device_code}",
                item["poll"].as_str().unwrap()
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(poll.status(), 200, "round {round}");
    }
    // Hand-offs nobody completes hold the address's attempts: the fourth is refused.
    let mut sockets = Vec::new();
    for n in 0..3 {
        let mut client = site.app.connect().await;
        let reply = client.rpc("auth_sso", json!({})).await;
        assert_eq!(reply["args"]["code"], 428, "hand-off {n}: {reply}");
        sockets.push(client);
    }
    let mut client = site.app.connect().await;
    let reply = client.rpc("auth_sso", json!({})).await;
    assert_eq!(reply["args"]["code"], 429, "{reply}");
    // And a browser of that address cannot begin a sign-in either.
    let (status, _, _) = Agent::at(&site.public_url)
        .get(&format!("{}/oidc/login", site.public_url))
        .await;
    assert_eq!(status, 429);
    // Single sign-on's count is its own: the address's password sign-ins are untouched.
    let mut other = site.app.connect().await;
    let reply = other
        .rpc(
            "auth",
            json!({"username": "astravdi", "password": PASSWORD}),
        )
        .await;
    assert_eq!(reply["name"], "response", "{reply}");
    // Closing the sockets gives their hand-offs up, and their counts back.
    drop(sockets);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut client = site.app.connect().await;
        let reply = client.rpc("auth_sso", json!({})).await;
        if reply["args"]["code"] == 428 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {reply}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn another_sites_images_cannot_spend_an_addresss_sign_ins() {
    let site = site(|c| c.lockout_address_attempts = 5).await;
    let http = reqwest::Client::new();
    // What 100 <img> tags on another site's page make a visitor's browser send.
    for path in [
        "/oidc/device?user_code=BCDF-GHJK",
        "/oidc/login",
        "/oidc/callback?state=x",
    ] {
        for _ in 0..20 {
            let answer = http
                .get(site.app.url(path))
                .header("sec-fetch-dest", "image")
                .header("sec-fetch-site", "cross-site")
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 400, "{path}");
        }
    }
    // A page at /?sso=1 without a code cookie asks for nothing: not counted either.
    for _ in 0..10 {
        let mut page = site.app.connect().await;
        let reply = page.rpc("auth_sso_code", json!({})).await;
        assert_eq!(reply["args"]["code"], 401, "{reply}");
    }
    // Nothing was counted: the portal's sign-in still begins.
    let (status, location, _) = Agent::at(&site.public_url)
        .get(&format!("{}/oidc/login", site.public_url))
        .await;
    assert_eq!(status, 303, "{location:?}");
    // Made-up codes typed in a browser are counted (5), against single sign-on only.
    for _ in 0..5 {
        let (status, _, _) = Agent::at(&site.public_url)
            .get(&format!(
                "{}/oidc/device?user_code=BCDF-GHJK",
                site.public_url
            ))
            .await;
        assert!(status == 401 || status == 429, "{status}");
    }
    let (status, _, _) = Agent::at(&site.public_url)
        .get(&format!(
            "{}/oidc/device?user_code=BCDF-GHJK",
            site.public_url
        ))
        .await;
    assert_eq!(status, 429);
    let login = http
        .post(site.app.url("/api/v2/users/login/"))
        .json(&json!({"username": "astravdi", "password": PASSWORD, "ldap": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        login.status(),
        200,
        "the address's password sign-ins are untouched"
    );
}
