//! Sign-in limits that cannot be raced past nor turned against real users, and the
//! no-enumeration promise (same answer after the same work), each shown by a test that fails
//! without the code behind it. The rules are in src/auth/lockout.rs.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

async fn try_auth(c: &mut Client, user: &str, password: &str) -> Value {
    c.rpc("auth", json!({"username": user, "password": password}))
        .await
}

fn verifications(app: &TestApp) -> u64 {
    app.state.auth.passwords.verifications()
}

/// A token that was valid once: signed in, then signed out.
async fn stale_token(app: &TestApp) -> String {
    let (mut c, token) = app.login("astravdi").await;
    assert_eq!(c.rpc("auth_clear", json!({})).await["name"], "response");
    token
}

#[tokio::test]
async fn parallel_wrong_passwords_from_one_address_get_at_most_lockout_attempts_verifications() {
    let app = TestApp::spawn().await;
    // From the user's own address, so that no share of the password checks at once (a
    // stranger's address has one) hides how many get past the lockout's reservation.
    let mut own = app.connect_from([127, 0, 10, 1]).await;
    assert_eq!(
        try_auth(&mut own, "astravdi", PASSWORD).await["name"],
        "response"
    );
    let before = verifications(&app);
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(app.connect_from([127, 0, 10, 1]).await);
    }
    let replies = futures_util::future::join_all(
        clients.iter_mut().map(|c| try_auth(c, "astravdi", "wrong")),
    )
    .await;
    let codes: Vec<u64> = replies.iter().map(error_code).collect();
    assert_eq!(codes.iter().filter(|&&c| c == 401).count(), 5, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 429).count(), 15, "{codes:?}");
    assert_eq!(verifications(&app) - before, 5);
}

#[tokio::test]
async fn parallel_wrong_passwords_from_many_addresses_are_spaced_by_the_usernames_back_off() {
    // Back-off spacing 1 s, and no attempt waits more than 1 s for its turn.
    let app = TestApp::spawn_with(|c| c.lockout_backoff_max = Duration::from_secs(1)).await;
    let before = verifications(&app);
    let mut clients = Vec::new();
    for i in 0..20u8 {
        clients.push(app.connect_from([127, 0, 11, i + 1]).await);
    }
    let replies = futures_util::future::join_all(
        clients.iter_mut().map(|c| try_auth(c, "astravdi", "wrong")),
    )
    .await;
    let codes: Vec<u64> = replies.iter().map(error_code).collect();
    // 5 at once, then one now and one a second later; every other attempt is refused
    // with the time to retry, without any verification.
    assert_eq!(verifications(&app) - before, 7, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 429).count(), 13, "{codes:?}");
    let refused = replies.iter().find(|r| error_code(r) == 429).unwrap();
    let message = refused["args"]["message"].as_str().unwrap();
    assert!(message.contains("try again in"), "{message}");
}

#[tokio::test]
async fn the_right_password_from_an_address_that_has_not_failed_still_signs_in() {
    let app = TestApp::spawn().await;
    let mut attacker = app.connect_from([127, 0, 12, 1]).await;
    for _ in 0..5 {
        assert_eq!(
            error_code(&try_auth(&mut attacker, "astravdi", "wrong").await),
            401
        );
    }
    // The guesser's pair is locked, even with the right password...
    assert_eq!(
        error_code(&try_auth(&mut attacker, "astravdi", PASSWORD).await),
        429
    );
    // ...and the admin signs in from elsewhere.
    let mut admin = app.connect_from([127, 0, 12, 2]).await;
    let reply = try_auth(&mut admin, "astravdi", PASSWORD).await;
    assert_eq!(reply["name"], "response", "{reply}");
}

#[tokio::test]
async fn stale_saved_tokens_are_not_guesses() {
    let app = TestApp::spawn_with(|c| c.lockout_address_attempts = 5).await;
    let mut stale = Vec::new();
    for _ in 0..6 {
        stale.push(stale_token(&app).await);
    }
    // As the bundled client does: the saved token first, then the password; all on one
    // socket (its own limit of five failures must not count them either).
    let mut c = app.connect().await;
    for token in &stale {
        let reply = c.rpc("auth_token", json!({"token": token})).await;
        assert_eq!(error_code(&reply), 401, "{reply}");
    }
    assert_eq!(
        try_auth(&mut c, "astravdi", PASSWORD).await["name"],
        "response"
    );
}

#[tokio::test]
async fn a_success_clears_only_its_own_pair_not_the_addresss_spraying_count() {
    let app = TestApp::spawn_with(|c| c.lockout_address_attempts = 10).await;
    let from = [127, 0, 17, 1];
    // Nine wrong guesses over as many usernames, then the sprayer's own right sign-in...
    for i in 0..9 {
        let mut s = app.connect_from(from).await;
        assert_eq!(
            error_code(&try_auth(&mut s, &format!("someone-{i}"), "x").await),
            401
        );
    }
    let mut own = app.connect_from(from).await;
    assert_eq!(
        try_auth(&mut own, "user-2", PASSWORD).await["name"],
        "response"
    );
    // ...leaves the nine standing: one more guess, and the address is locked (a success used
    // to reset the address, so any employee could spray without end).
    let mut s = app.connect_from(from).await;
    assert_eq!(error_code(&try_auth(&mut s, "someone-9", "x").await), 401);
    let mut s = app.connect_from(from).await;
    assert_eq!(error_code(&try_auth(&mut s, "someone-10", "x").await), 429);
    // The pair it proved starts afresh: its own wrong password is a plain 401 there, and the
    // user's own sign-ins never add to the address's count.
    let mut d = app.connect_from([127, 0, 17, 2]).await;
    for _ in 0..4 {
        assert_eq!(error_code(&try_auth(&mut d, "user-2", "wrong").await), 401);
    }
    for _ in 0..12 {
        let mut d = app.connect_from([127, 0, 17, 2]).await;
        assert_eq!(
            try_auth(&mut d, "user-2", PASSWORD).await["name"],
            "response"
        );
    }
}

#[tokio::test]
async fn made_up_tokens_count_against_the_address_but_a_valid_token_is_never_refused_for_it() {
    let app = TestApp::spawn_with(|c| c.lockout_address_attempts = 5).await;
    let (_, token) = app.login("astravdi").await;
    let guess = format!("pgt_{}", "A".repeat(54));
    for _ in 0..5 {
        let mut c = app.connect_from([127, 0, 13, 1]).await;
        assert_eq!(
            error_code(&c.rpc("auth_token", json!({"token": guess})).await),
            401
        );
    }
    // The address is locked for guesses...
    let mut c = app.connect_from([127, 0, 13, 1]).await;
    assert_eq!(
        error_code(&c.rpc("auth_token", json!({"token": guess})).await),
        429
    );
    assert_eq!(error_code(&try_auth(&mut c, "user-2", PASSWORD).await), 429);
    // ...but a valid saved token, obtained elsewhere, is not a guess: it signs in.
    let mut c = app.connect_from([127, 0, 13, 1]).await;
    assert_eq!(
        c.rpc("auth_token", json!({"token": token})).await["name"],
        "response"
    );
    let mut other = app.connect_from([127, 0, 13, 2]).await;
    assert_eq!(
        other.rpc("auth_token", json!({"token": token})).await["name"],
        "response"
    );
}

#[tokio::test]
async fn a_sprayed_address_is_locked_for_every_username() {
    let app = TestApp::spawn_with(|c| c.lockout_address_attempts = 8).await;
    let mut c = app.connect_from([127, 0, 14, 1]).await;
    for i in 0..8 {
        let user = format!("nobody-{i}");
        let mut s = app.connect_from([127, 0, 14, 1]).await;
        assert_eq!(error_code(&try_auth(&mut s, &user, "x").await), 401);
    }
    assert_eq!(error_code(&try_auth(&mut c, "user-2", PASSWORD).await), 429);
    let mut other = app.connect_from([127, 0, 14, 2]).await;
    assert_eq!(
        try_auth(&mut other, "user-2", PASSWORD).await["name"],
        "response"
    );
}

#[tokio::test]
async fn an_otp_users_challenge_is_counted_whether_the_password_was_right_or_not() {
    let app = TestApp::spawn().await;
    let before = verifications(&app);
    let mut c = app.connect_from([127, 0, 15, 1]).await;
    for _ in 0..5 {
        let reply = try_auth(&mut c, "user-4", "wrong").await;
        assert_eq!(error_code(&reply), 428, "{reply}");
        assert!(reply["args"]["mfa_token"].is_string(), "{reply}");
    }
    assert_eq!(verifications(&app) - before, 5);
    let mut d = app.connect_from([127, 0, 15, 1]).await;
    assert_eq!(
        error_code(&try_auth(&mut d, "user-4", PASSWORD).await),
        429,
        "the pair is locked after five wrong passwords"
    );
    // A right password's challenge counts like a wrong one's — otherwise the lockout would
    // tell someone without the code which password was right...
    let mut e = app.connect_from([127, 0, 15, 2]).await;
    for _ in 0..5 {
        assert_eq!(error_code(&try_auth(&mut e, "user-4", PASSWORD).await), 428);
    }
    assert_eq!(error_code(&try_auth(&mut e, "user-4", PASSWORD).await), 429);
}

#[tokio::test]
async fn a_real_otp_user_signing_in_on_the_v2_login_is_never_held_back() {
    let app = TestApp::spawn().await;
    let http = reqwest::Client::new();
    let login = |body: serde_json::Value| {
        let (http, url) = (http.clone(), app.url("/api/v2/users/login/"));
        async move {
            http.post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // More sign-ins than the lockout's attempts, each the mock's two calls: 428, then the
    // password again with the code. Held back, the 7th and 8th would wait 2 s and 4 s for a
    // turn (1.8 s leaves room for a loaded machine's slow password checks).
    for i in 0..8 {
        let started = std::time::Instant::now();
        let first = json!({"username": "user-4", "password": PASSWORD, "ldap": false});
        assert_eq!(login(first).await, 428, "sign-in {i}");
        let second = json!({"username": "user-4", "password": PASSWORD, "ldap": false, "otp_code": date_code()});
        assert_eq!(login(second).await, 200, "sign-in {i}");
        assert!(
            started.elapsed() < std::time::Duration::from_millis(1_800),
            "sign-in {i} waited for a back-off: {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn a_real_otp_user_completing_challenges_is_never_held_back() {
    let app = TestApp::spawn().await;
    // More sign-ins than the lockout's attempts, each a challenge and its code.
    for i in 0..8 {
        let mut c = app.connect_from([127, 0, 15, 4]).await;
        let started = std::time::Instant::now();
        let reply = try_auth(&mut c, "user-4", PASSWORD).await;
        assert_eq!(error_code(&reply), 428, "sign-in {i}: {reply}");
        let mfa = reply["args"]["mfa_token"].as_str().unwrap().to_owned();
        let reply = c
            .rpc(
                "otp_verify",
                json!({"mfa_token": mfa, "otp_code": date_code()}),
            )
            .await;
        assert_eq!(reply["name"], "response", "sign-in {i}: {reply}");
        assert!(
            started.elapsed() < std::time::Duration::from_millis(1_800),
            "sign-in {i} waited for a back-off: {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn unknown_users_wrong_passwords_and_mfa_users_cost_the_same_one_verification() {
    let app = TestApp::spawn().await;
    let mut c = app.connect_from([127, 0, 16, 1]).await;
    // Warm the dummy hash so its one-time creation is not counted.
    try_auth(&mut c, "nobody-0", "x").await;
    // (username, password, expected code): user-3 has a hardware token, user-4 TOTP,
    // user-5 ADFS, user-1 is disabled (with TOTP).
    let cases = [
        ("nobody-1", "wrong", 401),
        ("astravdi", "wrong", 401),
        ("user-3", "wrong", 428),
        ("user-3", PASSWORD, 428),
        ("user-4", "wrong", 428),
        ("user-4", PASSWORD, 428),
        ("user-5", "wrong", 428),
        ("user-5", PASSWORD, 428),
        ("user-1", "wrong", 428),
    ];
    for (i, (user, password, code)) in cases.into_iter().enumerate() {
        let mut s = app.connect_from([127, 0, 16, 10 + i as u8]).await;
        let before = verifications(&app);
        let reply = try_auth(&mut s, user, password).await;
        assert_eq!(error_code(&reply), code, "{user}/{password}: {reply}");
        assert_eq!(verifications(&app) - before, 1, "{user}/{password}");
    }
}

#[tokio::test]
async fn disabled_is_said_only_after_the_password_and_the_code_were_right_on_both_paths() {
    let app = TestApp::spawn().await;
    let http = reqwest::Client::new();
    let rest = |password: &'static str, code: String| {
        http.post(app.url("/api/v2/users/login/"))
            .json(&json!({"username": "user-1", "password": password, "ldap": false, "otp_code": code}))
            .send()
    };
    let mut c = app.connect().await;
    let ws = json!({"username": "user-1", "password": "wrong", "otp_code": date_code()});
    assert_eq!(error_code(&c.rpc("auth", ws).await), 401);
    assert_eq!(rest("wrong", date_code()).await.unwrap().status(), 401);
    let ws = json!({"username": "user-1", "password": PASSWORD, "otp_code": "000000"});
    assert_eq!(error_code(&c.rpc("auth", ws).await), 401);
    let mut d = app.connect().await;
    let ws = json!({"username": "user-1", "password": PASSWORD, "otp_code": date_code()});
    assert_eq!(error_code(&d.rpc("auth", ws).await), 403);
}

#[tokio::test]
async fn rest_and_websocket_sign_ins_share_the_counters() {
    let app = TestApp::spawn().await;
    let http = reqwest::Client::new();
    for _ in 0..5 {
        let resp = http
            .post(app.url("/api/v2/users/login/"))
            .json(&json!({"username": "user-4", "password": PASSWORD, "ldap": false, "otp_code": "000000"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }
    // The WebSocket path from the same address sees the same lock.
    let mut c = app.connect().await;
    let reply = c
        .rpc(
            "auth",
            json!({"username": "user-4", "password": PASSWORD, "otp_code": date_code()}),
        )
        .await;
    assert_eq!(error_code(&reply), 429);
    let resp = http
        .post(app.url("/api/v2/users/login/"))
        .json(&json!({"username": "user-4", "password": PASSWORD, "ldap": false, "otp_code": date_code()}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["detail"][0]["err_code"], 999);
}

#[tokio::test]
async fn the_lock_lifts_when_the_window_passes() {
    // The window is fixed from the first failure; it is long enough for five argon2
    // verifications on a loaded machine, and the test waits for its end from that moment.
    let window = Duration::from_secs(2);
    let app = TestApp::spawn_with(|c| c.lockout_window = window).await;
    let mut c = app.connect_from([127, 0, 17, 1]).await;
    let first = tokio::time::Instant::now();
    for _ in 0..5 {
        try_auth(&mut c, "user-2", "wrong").await;
    }
    let mut d = app.connect_from([127, 0, 17, 1]).await;
    assert_eq!(error_code(&try_auth(&mut d, "user-2", PASSWORD).await), 429);
    assert!(first.elapsed() < window, "the check ran inside the window");
    tokio::time::sleep_until(first + window + Duration::from_millis(200)).await;
    assert_eq!(
        try_auth(&mut d, "user-2", PASSWORD).await["name"],
        "response"
    );
}

#[tokio::test]
async fn a_username_over_256_bytes_is_refused_before_anything_else() {
    let app = TestApp::spawn().await;
    let before = verifications(&app);
    let long = "u".repeat(60 * 1024);
    for _ in 0..10 {
        let mut c = app.connect_from([127, 0, 18, 1]).await;
        let reply = try_auth(&mut c, &long, "x").await;
        assert_eq!(error_code(&reply), 400, "{reply}");
        assert!(
            reply["args"]["message"]
                .as_str()
                .unwrap()
                .contains("at most 256 bytes")
        );
    }
    assert_eq!(verifications(&app), before, "no argon2 ran");
    let ok = "u".repeat(256);
    let mut c = app.connect_from([127, 0, 18, 1]).await;
    assert_eq!(error_code(&try_auth(&mut c, &ok, "x").await), 401);
}

#[tokio::test]
async fn a_flood_of_refused_sign_ins_is_logged_at_a_bounded_rate_with_a_count() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let server =
        ServerProcess::start(&["serve", "--listen", "127.0.0.1:0", "--data-dir", data]).await;
    let mut c = server.connect().await;
    for _ in 0..5 {
        try_auth(&mut c, "astravdi", "wrong").await;
    }
    let long = "u".repeat(60 * 1024);
    for i in 0..50 {
        let mut s = server.connect().await;
        let user = if i % 2 == 0 {
            long.as_str()
        } else {
            "astravdi"
        };
        let code = error_code(&try_auth(&mut s, user, "wrong").await);
        assert!(code == 400 || code == 429, "{code}");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut s = server.connect().await;
    assert_eq!(
        error_code(&try_auth(&mut s, "astravdi", "wrong").await),
        429
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = server.log.lock().unwrap().clone();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("sign-in refused"))
        .collect();
    assert!(
        (1..=3).contains(&lines.len()),
        "{} lines:\n{}",
        lines.len(),
        lines.join("\n")
    );
    assert!(
        lines.iter().any(
            |l| l.contains("also_refused_since_last_line=") && !l.contains("since_last_line=0")
        ),
        "a later line says how many were folded into it:\n{}",
        lines.join("\n")
    );
    assert!(
        !log.contains(&long[..300]),
        "a long username never reaches the log"
    );
    assert!(log.len() < 20_000, "{} bytes of log", log.len());
}

/// A WebSocket whose upgrade request says `X-Forwarded-For: forwarded`, from `source`.
async fn connect_forwarded(app: &TestApp, source: [u8; 4], forwarded: &str) -> Client {
    connect_with_header(app, source, "x-forwarded-for", forwarded).await
}

/// A WebSocket whose upgrade request carries `name: value`, from `source`.
async fn connect_with_header(
    app: &TestApp,
    source: [u8; 4],
    name: &'static str,
    value: &str,
) -> Client {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = app.ws_url().into_client_request().unwrap();
    request.headers_mut().insert(name, value.parse().unwrap());
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::from((source, 0)))
        .unwrap();
    let stream = socket.connect(app.addr).await.unwrap();
    let (ws, _) =
        tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
    Client::from(ws)
}

/// The `peer` admin_sessions shows for `username`'s sessions.
async fn peers_of(app: &TestApp, username: &str) -> Vec<String> {
    let (mut admin, _) = app.login("astravdi").await;
    let list = admin.rpc("admin_sessions", json!({})).await["args"].clone();
    list.as_array()
        .unwrap()
        .iter()
        .filter(|s| s["username"] == username)
        .map(|s| s["peer"].as_str().unwrap().to_owned())
        .collect()
}

/// Behind a trusted load balancer every connection comes from its address: the lockout counts
/// each client by the address the balancer forwarded, so one client's wrong passwords lock
/// out that client, not everyone behind the balancer.
#[tokio::test]
async fn behind_a_trusted_proxy_the_lockout_counts_the_forwarded_client() {
    let app = TestApp::spawn_with(|c| {
        c.lockout_address_attempts = 5;
        c.trusted_proxies = "127.0.15.0/24".parse().unwrap();
    })
    .await;
    // Through the balancer (127.0.15.1): a sprayer at 203.0.113.7 (who also writes an address
    // of its own into the header), then a real user at 198.51.100.1.
    for i in 0..5 {
        let mut s = connect_forwarded(&app, [127, 0, 15, 1], "1.1.1.1, 203.0.113.7").await;
        let reply = try_auth(&mut s, &format!("nobody-{i}"), "x").await;
        assert_eq!(error_code(&reply), 401, "{reply}");
    }
    let mut sprayer = connect_forwarded(&app, [127, 0, 15, 1], "203.0.113.7").await;
    assert_eq!(
        error_code(&try_auth(&mut sprayer, "user-2", PASSWORD).await),
        429,
        "the sprayer's address is locked"
    );
    let mut user = connect_forwarded(&app, [127, 0, 15, 1], "198.51.100.1").await;
    assert_eq!(
        try_auth(&mut user, "user-2", PASSWORD).await["name"],
        "response",
        "another client behind the same balancer is not"
    );
    assert_eq!(peers_of(&app, "user-2").await, vec!["198.51.100.1"]);
}

/// The header of a connection from anywhere but a trusted proxy is the client's own say: it
/// is ignored, whether no proxy is trusted (the default) or the connection comes from another
/// address than the trusted one.
#[tokio::test]
async fn x_forwarded_for_from_an_untrusted_peer_is_ignored() {
    for trusted in [None, Some("127.0.16.2")] {
        let app = TestApp::spawn_with(|c| {
            c.lockout_address_attempts = 3;
            if let Some(t) = trusted {
                c.trusted_proxies = t.parse().unwrap();
            }
        })
        .await;
        // Each attempt claims to come from elsewhere; all count against 127.0.16.1.
        for i in 0..3 {
            let mut s = connect_forwarded(&app, [127, 0, 16, 1], &format!("203.0.113.{i}")).await;
            assert_eq!(error_code(&try_auth(&mut s, "nobody", "x").await), 401);
        }
        let mut c = connect_forwarded(&app, [127, 0, 16, 1], "198.51.100.1").await;
        assert_eq!(
            error_code(&try_auth(&mut c, "user-2", PASSWORD).await),
            429,
            "trusted: {trusted:?}"
        );
        let mut c = app.connect_from([127, 0, 16, 3]).await;
        assert_eq!(
            try_auth(&mut c, "user-2", PASSWORD).await["name"],
            "response"
        );
        assert_eq!(peers_of(&app, "user-2").await, vec!["127.0.16.3"]);
    }
}

/// The v2 REST login behind a trusted proxy counts the forwarded client too. Bytes a client
/// writes into X-Forwarded-For that are not text (left of the hop its proxy appends) change
/// nothing: the client is still the address the proxy saw, and stays locked (before, they
/// made the whole header unreadable and the attempt counted under the proxy's address — a
/// fresh budget for the locked-out client; found by a hostile review).
#[tokio::test]
async fn the_rest_login_behind_a_trusted_proxy_counts_the_forwarded_client() {
    let app = TestApp::spawn_with(|c| {
        c.lockout_address_attempts = 3;
        c.trusted_proxies = "127.0.0.1".parse().unwrap();
    })
    .await;
    let login = |forwarded: &'static [u8], password: &'static str| {
        let url = app.url("/api/v2/users/login/");
        async move {
            reqwest::Client::new()
                .post(url)
                .header(
                    "x-forwarded-for",
                    reqwest::header::HeaderValue::from_bytes(forwarded).unwrap(),
                )
                .json(&json!({"username": "user-2", "password": password, "ldap": false}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    for _ in 0..3 {
        assert_eq!(login(b"203.0.113.7", "wrong").await, 401);
    }
    assert_eq!(login(b"203.0.113.7", PASSWORD).await, 429);
    assert_eq!(login(b"\xff, 203.0.113.7", "wrong").await, 429);
    assert_eq!(login(b"198.51.100.1", PASSWORD).await, 200);
}

/// Strangers guessing `user`'s password from `addresses` addresses of 127.0.`net`.x at once,
/// each five times (its pair's limit) on a socket of its own, each guess sent as soon as the
/// last was answered: the username's back-off queue stays full for as long as they last.
async fn strangers_guessing(
    app: &TestApp,
    user: &'static str,
    net: u8,
    addresses: u8,
) -> tokio::task::JoinSet<()> {
    let mut strangers = tokio::task::JoinSet::new();
    for i in 1..=addresses {
        let mut c = app.connect_from([127, 0, net, i]).await;
        strangers.spawn(async move {
            for _ in 0..5 {
                let reply = try_auth(&mut c, user, "wrong").await;
                if error_code(&reply) == 429 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
    }
    strangers
}

/// Waits until the username's back-off is in force: a fresh address's wrong guess is
/// either queued for a while or refused with the time to retry.
async fn until_backed_off(app: &TestApp, user: &str, net: u8) {
    for i in 1..=50u8 {
        let mut probe = app.connect_from([127, 0, net, i]).await;
        let started = std::time::Instant::now();
        let reply = try_auth(&mut probe, user, "wrong").await;
        if error_code(&reply) == 429 || started.elapsed() > Duration::from_millis(400) {
            return;
        }
    }
    panic!("the username's back-off never started");
}

#[tokio::test]
async fn a_user_signs_in_at_once_from_a_known_address_while_strangers_hold_the_usernames_back_off()
{
    let app = TestApp::spawn_with(|c| c.lockout_backoff_max = Duration::from_secs(5)).await;
    // The admin signed in from this address before (a week ago, say).
    let mut before = app.connect_from([127, 0, 40, 1]).await;
    assert_eq!(
        try_auth(&mut before, "astravdi", PASSWORD).await["name"],
        "response"
    );
    let strangers = strangers_guessing(&app, "astravdi", 41, 16).await;
    until_backed_off(&app, "astravdi", 42).await;
    // Queued behind the strangers, a try would be refused (429) or wait for a turn of up to
    // 5 s; 2.5 s leaves room for a loaded machine's slow password check.
    for i in 0..3 {
        let mut admin = app.connect_from([127, 0, 40, 1]).await;
        let started = std::time::Instant::now();
        let reply = try_auth(&mut admin, "astravdi", PASSWORD).await;
        assert_eq!(reply["name"], "response", "try {i}: {reply}");
        assert!(
            started.elapsed() < Duration::from_millis(2_500),
            "try {i} was queued behind the strangers: {:?}",
            started.elapsed()
        );
    }
    // A new address is still held to the back-off: queued, or told to retry in at most
    // lockout_backoff_max (the queue's tail used to be told, up to twice that).
    let mut new = app.connect_from([127, 0, 43, 1]).await;
    let started = std::time::Instant::now();
    let reply = try_auth(&mut new, "astravdi", PASSWORD).await;
    if reply["name"] == "error" {
        assert_eq!(error_code(&reply), 429, "{reply}");
        let message = reply["args"]["message"].as_str().unwrap();
        assert!(
            (1..=5).any(|s| message.contains(&format!("try again in {s} seconds"))),
            "{message}"
        );
    } else {
        assert!(
            started.elapsed() <= Duration::from_millis(5_500),
            "{:?}",
            started.elapsed()
        );
    }
    strangers.join_all().await;
}

#[tokio::test]
async fn a_browser_that_signed_in_before_is_not_queued_behind_strangers_from_a_new_address() {
    let app = TestApp::spawn_with(|c| c.lockout_backoff_max = Duration::from_secs(5)).await;
    // The portal's page hands the browser its device cookie.
    let page = reqwest::Client::new()
        .get(app.url("/"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    let set_cookie = page.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    // Signed in from this browser at home...
    let mut home = connect_with_header(&app, [127, 0, 44, 1], "cookie", &cookie).await;
    assert_eq!(
        try_auth(&mut home, "user-2", PASSWORD).await["name"],
        "response"
    );
    let strangers = strangers_guessing(&app, "user-2", 45, 16).await;
    until_backed_off(&app, "user-2", 46).await;
    // ...then from a hotel's address: the browser is known, the address is not.
    let mut hotel = connect_with_header(&app, [127, 0, 47, 1], "cookie", &cookie).await;
    let started = std::time::Instant::now();
    let reply = try_auth(&mut hotel, "user-2", PASSWORD).await;
    assert_eq!(reply["name"], "response", "{reply}");
    assert!(
        started.elapsed() < Duration::from_millis(2_500),
        "{:?}",
        started.elapsed()
    );
    // Another browser (a made-up cookie) from there is a stranger.
    let other = format!("pg_device={}", "ab".repeat(32));
    let mut stranger = connect_with_header(&app, [127, 0, 47, 2], "cookie", &other).await;
    let started = std::time::Instant::now();
    let reply = try_auth(&mut stranger, "user-2", PASSWORD).await;
    assert!(
        reply["name"] == "error" || started.elapsed() > Duration::from_millis(400),
        "a stranger's browser skipped the back-off: {reply}"
    );
    strangers.join_all().await;
}

#[tokio::test]
async fn password_less_first_steps_count_against_the_address_and_keep_one_challenge() {
    let app = TestApp::spawn_with(|c| c.lockout_address_attempts = 10).await;
    let http = reqwest::Client::new();
    let login = |body: Value| {
        let (http, url) = (http.clone(), app.url("/api/v2/users/login/"));
        async move {
            let response = http.post(url).json(&body).send().await.unwrap();
            response.status().as_u16()
        }
    };
    // The mock's two calls of a real sign-in, more times than the address's limit: each
    // first step is given back when its sign-in completes.
    for i in 0..12 {
        let first = json!({"username": "user-4", "password": null, "ldap": false});
        assert_eq!(login(first).await, 428, "sign-in {i}");
        let second = json!({"username": "user-4", "password": PASSWORD, "ldap": false, "otp_code": date_code()});
        assert_eq!(login(second).await, 200, "sign-in {i}");
    }
    // A flood of first steps that never complete is held to the address's limit.
    let mut codes = Vec::new();
    for _ in 0..14 {
        let first = json!({"username": "user-4", "password": null, "ldap": false});
        codes.push(login(first).await);
    }
    assert_eq!(codes.iter().filter(|&&c| c == 428).count(), 10, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 429).count(), 4, "{codes:?}");
}

#[tokio::test]
async fn a_users_new_challenge_replaces_the_last_and_a_strangers_never_displaces_it() {
    let app = TestApp::spawn().await;
    let challenge = |reply: &Value| {
        assert_eq!(error_code(reply), 428, "{reply}");
        reply["args"]["mfa_token"].as_str().unwrap().to_owned()
    };
    let mut user = app.connect_from([127, 0, 48, 1]).await;
    let first = challenge(&try_auth(&mut user, "user-4", PASSWORD).await);
    let second = challenge(&try_auth(&mut user, "user-4", PASSWORD).await);
    // A stranger's wrong password gets a challenge too (the same answer)...
    let mut stranger = app.connect_from([127, 0, 48, 2]).await;
    challenge(&try_auth(&mut stranger, "user-4", "wrong").await);
    // ...but the user's newest stays, and the one before it is gone.
    let reply = user
        .rpc(
            "otp_verify",
            json!({"mfa_token": first, "otp_code": date_code()}),
        )
        .await;
    assert_eq!(error_code(&reply), 401, "replaced: {reply}");
    let reply = user
        .rpc(
            "otp_verify",
            json!({"mfa_token": second, "otp_code": date_code()}),
        )
        .await;
    assert_eq!(reply["name"], "response", "{reply}");
}

/// The portal's device cookie, as the page hands it out.
async fn device_cookie(app: &TestApp) -> String {
    let page = reqwest::Client::new()
        .get(app.url("/"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    let set_cookie = page.headers()["set-cookie"].to_str().unwrap().to_owned();
    set_cookie.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_device_cookie_the_server_did_not_hand_out_is_replaced_and_never_known() {
    let app = TestApp::spawn().await;
    let page = |cookie: String| {
        let url = app.url("/");
        async move {
            let page = reqwest::Client::new()
                .get(url)
                .header("accept", "text/html")
                .header("cookie", cookie)
                .send()
                .await
                .unwrap();
            page.headers().get("set-cookie").is_some()
        }
    };
    let real = device_cookie(&app).await;
    assert!(real.starts_with("pg_device=pgd_"), "{real}");
    assert!(!page(real.clone()).await, "a handed-out cookie is kept");
    // Made up, or one tagged by another deployment: replaced.
    let made_up = format!("pg_device=pgd_{}", "A".repeat(54));
    assert!(page(made_up.clone()).await);
    assert!(page(format!("pg_device={}", "ab".repeat(32))).await);
    // A sign-in carrying a made-up cookie makes no browser known: from a new address with
    // it, the user's pair is the address's, locked after its attempts.
    let mut c = connect_with_header(&app, [127, 0, 49, 1], "cookie", &made_up).await;
    assert_eq!(
        try_auth(&mut c, "user-2", PASSWORD).await["name"],
        "response"
    );
    for _ in 0..5 {
        let mut c = connect_with_header(&app, [127, 0, 49, 2], "cookie", &made_up).await;
        assert_eq!(error_code(&try_auth(&mut c, "user-2", "wrong").await), 401);
    }
    let mut c = connect_with_header(&app, [127, 0, 49, 2], "cookie", &made_up).await;
    assert_eq!(error_code(&try_auth(&mut c, "user-2", PASSWORD).await), 429);
}

#[tokio::test]
async fn a_neighbour_at_the_users_address_cannot_lock_out_the_users_browser() {
    let app = TestApp::spawn_with(|c| c.lockout_address_attempts = 10).await;
    let cookie = device_cookie(&app).await;
    let office = [127, 0, 50, 1];
    let mut c = connect_with_header(&app, office, "cookie", &cookie).await;
    assert_eq!(
        try_auth(&mut c, "user-2", PASSWORD).await["name"],
        "response"
    );
    // A neighbour behind the same address guesses user-2's password, then sprays others'.
    for _ in 0..5 {
        let mut n = app.connect_from(office).await;
        assert_eq!(error_code(&try_auth(&mut n, "user-2", "wrong").await), 401);
    }
    for i in 0..6 {
        let mut n = app.connect_from(office).await;
        try_auth(&mut n, &format!("someone-{i}"), "wrong").await;
    }
    let mut n = app.connect_from(office).await;
    assert_eq!(
        error_code(&try_auth(&mut n, "user-2", PASSWORD).await),
        429,
        "the address and the pair are locked for anyone without the browser"
    );
    // The user's own browser there still signs in, and its own typos are its own.
    let mut c = connect_with_header(&app, office, "cookie", &cookie).await;
    assert_eq!(
        try_auth(&mut c, "user-2", PASSWORD).await["name"],
        "response"
    );
    for _ in 0..5 {
        let mut c = connect_with_header(&app, office, "cookie", &cookie).await;
        assert_eq!(error_code(&try_auth(&mut c, "user-2", "typo").await), 401);
    }
    let mut c = connect_with_header(&app, office, "cookie", &cookie).await;
    assert_eq!(error_code(&try_auth(&mut c, "user-2", PASSWORD).await), 429);
}

#[tokio::test]
async fn strangers_flooding_made_up_usernames_do_not_hold_up_a_known_sources_sign_in() {
    let app = TestApp::spawn_with(|c| c.max_concurrent_hashes = 1).await;
    let known = [127, 0, 51, 1];
    let mut c = app.connect_from(known).await;
    assert_eq!(
        try_auth(&mut c, "astravdi", PASSWORD).await["name"],
        "response"
    );
    // 6 addresses keep four wrong sign-ins each in flight, for names nobody has (each one
    // argon2 verification all the same).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flood = tokio::task::JoinSet::new();
    for i in 1..=6u8 {
        for j in 0..4 {
            let mut c = app.connect_from([127, 0, 52, i]).await;
            let stop = stop.clone();
            flood.spawn(async move {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 60 {
                    try_auth(&mut c, &format!("nobody-{j}-{n}"), "wrong").await;
                    n += 1;
                }
            });
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // One more address sends eight at once: four are queued, the rest refused at once.
    let mut burst = Vec::new();
    for _ in 0..8 {
        burst.push(app.connect_from([127, 0, 53, 1]).await);
    }
    let started = std::time::Instant::now();
    let replies = futures_util::future::join_all(burst.iter_mut().enumerate().map(|(i, c)| {
        c.rpc(
            "auth",
            json!({"username": format!("x{i}"), "password": "w"}),
        )
    }));
    let (replies, known_took) = tokio::join!(replies, async {
        let mut slowest = Duration::ZERO;
        for _ in 0..3 {
            let mut c = app.connect_from(known).await;
            let started = std::time::Instant::now();
            assert_eq!(
                try_auth(&mut c, "astravdi", PASSWORD).await["name"],
                "response"
            );
            slowest = slowest.max(started.elapsed());
        }
        slowest
    });
    let stranger_took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let at_once = replies
        .iter()
        .filter(|r| {
            error_code(r) == 429
                && r["args"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("at once from your address"))
        })
        .count();
    assert!(at_once >= 3, "{replies:?}");
    // The strangers' queued ones waited for the flood; the known source did not.
    assert!(
        known_took * 3 < stranger_took,
        "known source {known_took:?}, strangers {stranger_took:?}"
    );
    flood.join_all().await;
}
