//! No access outlives its directory account: a directory user's sessions — saved tokens, the
//! sockets signed in with them, REST JWTs — are re-checked against the directory every
//! `directory_recheck` (1 s here) and ended when the account is deleted, disabled, or in no
//! group that grants a pool; a directory that cannot be asked ends nothing.

use std::time::Duration;

use serde_json::{Value, json};

use crate::app::{app_with_directory, ws_auth};
use crate::helpers::*;
use crate::slapd::*;
use crate::totp::rest_login;

const RECHECK: Duration = Duration::from_secs(1);

/// Within this long of a change, every session of the user has been told (a check is due a
/// period after the last one, and the sweep looks a quarter period later at most).
const ENDED_WITHIN: Duration = Duration::from_secs(4);

/// A directory user signed in every way: an active socket, a second socket resumed with the
/// saved token that then says nothing, and a REST JWT.
struct SignedIn {
    socket: Client,
    silent: Client,
    token: String,
    jwt: String,
}

async fn sign_in(app: &TestApp, name: &str, password: &str) -> SignedIn {
    let mut socket = app.connect().await;
    let reply = ws_auth(&mut socket, name, password, Some(true)).await;
    let token = reply["args"][0]
        .as_str()
        .unwrap_or_else(|| panic!("{name}: {reply}"))
        .to_owned();
    let mut silent = app.connect().await;
    let resumed = silent.rpc("auth_token", json!({"token": token})).await;
    assert_eq!(resumed["name"], "response", "{resumed}");
    let (status, body) = rest_login(
        app,
        json!({"username": name, "password": password, "ldap": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let jwt = body["data"]["access_token"].as_str().unwrap().to_owned();
    SignedIn {
        socket,
        silent,
        token,
        jwt,
    }
}

/// The v2 pool list's status with a JWT.
async fn rest_pools(app: &TestApp, jwt: &str) -> u16 {
    reqwest::Client::new()
        .get(app.url("/api/v2/pools/"))
        .header("Authorization", format!("JWT {jwt}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Whether the saved token still signs a new socket in.
async fn resumes(app: &TestApp, token: &str) -> Value {
    let mut c = app.connect().await;
    c.rpc("auth_token", json!({"token": token})).await
}

async fn metrics(app: &TestApp) -> String {
    reqwest::get(app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Every session of `who` ends, for `reason`: both sockets told and closed (neither says
/// anything), the token refused on a new socket, the JWT refused, and the end counted once.
async fn every_session_ends(app: &TestApp, who: SignedIn, reason: &str) {
    let SignedIn {
        mut socket,
        mut silent,
        token,
        jwt,
    } = who;
    let expected = format!("session ended: {reason}");
    for c in [&mut silent, &mut socket] {
        let (code, said) = c.expect_close(ENDED_WITHIN).await;
        assert_eq!((code, said.as_str()), (4003, expected.as_str()));
    }
    let again = resumes(app, &token).await;
    assert_eq!(error_code(&again), 401, "{again}");
    assert_eq!(rest_pools(app, &jwt).await, 403);
    let text = metrics(app).await;
    let line = format!("poolgate_sessions_ended_total{{reason=\"{reason}\"}} 1");
    assert!(text.contains(&line), "{line} in:\n{text}");
}

pub async fn a_deleted_directory_user_loses_every_session_within_directory_recheck() {
    let slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_directory(&slapd, dir.path(), |c| c.directory_recheck = RECHECK).await;
    let alice = sign_in(&app, "alice", "alice-pw").await;
    let bob = sign_in(&app, "bob", "bob-pw").await;
    slapd.modify(&format!("dn: uid=alice,{PEOPLE}\nchangetype: delete\n"));
    every_session_ends(&app, alice, "directory: account gone").await;
    // Someone else's sessions go on.
    let mut bob = bob;
    assert_eq!(bob.socket.rpc("pools", json!({})).await["name"], "response");
    assert_eq!(resumes(&app, &bob.token).await["name"], "response");
    assert_eq!(rest_pools(&app, &bob.jwt).await, 200);
    app.stop().await;
}

/// An AD account disabled (userAccountControl bit 0x2), and an OpenLDAP one locked by its
/// administrator (ppolicy's pwdAccountLockedTime 000001010000Z).
pub async fn a_disabled_directory_user_loses_every_session_within_directory_recheck() {
    let slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_directory(&slapd, dir.path(), |c| c.directory_recheck = RECHECK).await;
    let alice = sign_in(&app, "alice", "alice-pw").await;
    slapd.modify(&format!(
        "dn: uid=alice,{PEOPLE}\nchangetype: modify\nadd: objectClass\nobjectClass: extensibleObject\n-\nadd: userAccountControl\nuserAccountControl: 514\n"
    ));
    every_session_ends(&app, alice, "directory: disabled").await;
    app.stop().await;

    let app = app_with_directory(&slapd, dir.path(), |c| c.directory_recheck = RECHECK).await;
    let bob = sign_in(&app, "bob", "bob-pw").await;
    slapd.modify(&format!(
        "dn: uid=bob,{PEOPLE}\nchangetype: modify\nadd: pwdAccountLockedTime\npwdAccountLockedTime: 000001010000Z\n"
    ));
    every_session_ends(&app, bob, "directory: disabled").await;
    app.stop().await;
}

/// Out of the only pool group: ended. Out of it but still an administrator (by group): kept.
pub async fn a_user_removed_from_every_pool_group_loses_every_session() {
    let slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_directory(&slapd, dir.path(), |c| c.directory_recheck = RECHECK).await;
    let alice = sign_in(&app, "alice", "alice-pw").await;
    let mut bob = sign_in(&app, "bob", "bob-pw").await;
    slapd.modify(&format!(
        "dn: {USERS_GROUP}\nchangetype: modify\ndelete: member\nmember: uid=alice,{PEOPLE}\nmember: uid=bob,{PEOPLE}\n"
    ));
    every_session_ends(&app, alice, "directory: no pool group").await;
    tokio::time::sleep(2 * RECHECK).await;
    assert_eq!(
        bob.socket.rpc("admin_sessions", json!({})).await["name"],
        "response",
        "an administrator by group keeps their sessions"
    );
    assert_eq!(rest_pools(&app, &bob.jwt).await, 200);
    app.stop().await;
}

/// A directory that cannot be asked signs nobody out: sessions, saved tokens and JWTs go on
/// through the outage (logged, counted), and are checked again once it is back.
pub async fn a_directory_outage_keeps_sessions() {
    let mut slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_directory(&slapd, dir.path(), |c| c.directory_recheck = RECHECK).await;
    let mut alice = sign_in(&app, "alice", "alice-pw").await;
    slapd.stop();
    tokio::time::sleep(3 * RECHECK).await;
    assert_eq!(
        alice.socket.rpc("pools", json!({})).await["name"],
        "response"
    );
    assert_eq!(resumes(&app, &alice.token).await["name"], "response");
    assert_eq!(rest_pools(&app, &alice.jwt).await, 200);
    assert!(metric(&metrics(&app).await, "poolgate_directory_errors_total") >= 1.0);
    assert!(
        !metrics(&app)
            .await
            .contains("poolgate_sessions_ended_total{"),
        "nothing ended"
    );

    slapd.resume();
    slapd.modify(&format!("dn: uid=alice,{PEOPLE}\nchangetype: delete\n"));
    every_session_ends(&app, alice, "directory: account gone").await;
    app.stop().await;
}

/// However many sockets and requests, the directory is asked about a user once per
/// `directory_recheck`.
pub async fn the_directory_is_asked_once_per_user_per_period() {
    let slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_directory(&slapd, dir.path(), |c| c.directory_recheck = RECHECK).await;
    let first = sign_in(&app, "alice", "alice-pw").await;
    let mut sockets = vec![first.socket, first.silent];
    for _ in 0..6 {
        let mut c = app.connect().await;
        c.rpc("auth_token", json!({"token": first.token})).await;
        sockets.push(c);
    }
    let start = std::time::Instant::now();
    let mut requests = 0;
    while start.elapsed() < 4 * RECHECK {
        let calls = sockets.iter_mut().map(|c| c.rpc("pools", json!({})));
        for reply in futures_util::future::join_all(calls).await {
            assert_eq!(reply["name"], "response", "{reply}");
            requests += 1;
        }
        assert_eq!(rest_pools(&app, &first.jwt).await, 200);
    }
    let asked = metric(&metrics(&app).await, "poolgate_directory_rechecks_total");
    println!(
        "{requests} requests and REST calls of one user over 4 periods: {asked} directory re-checks"
    );
    assert!((2.0..=5.0).contains(&asked), "{asked} lookups");
    app.stop().await;
}
