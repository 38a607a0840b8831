//! Hostile input: floods, wrong types, oversized frames, secrets. (Sign-in limits and the
//! no-enumeration promise are in lockout.rs.)

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn a_flood_of_10000_requests_on_one_socket_is_answered_in_full() {
    let app = TestApp::spawn().await;
    let (mut flood, _) = app.login("astravdi").await;
    let (mut other, _) = app.login("user-2").await;
    let frames: Vec<String> = (0..10_000)
        .map(|i| match i % 4 {
            0 => json!({"namespace": "rpc", "name": "tasks", "id": i}).to_string(),
            1 => format!(
                "{{\"namespace\":\"rpc\",\"name\":\"task\",\"id\":{i},\"args\":{{\"task_id\":7}}}}"
            ),
            2 => "]".to_owned(),
            _ => json!({"namespace": "rpc", "name": "pools", "id": i, "args": {"is_favorite": []}})
                .to_string(),
        })
        .collect();
    // Pipelined in bursts of 1000, read back between bursts (so neither side's buffers can
    // fill up and stall the test).
    let mut errors = 0;
    for burst in frames.chunks(1000) {
        for f in burst {
            flood.send_text(f.clone()).await;
        }
        for _ in burst {
            if flood.recv().await["name"] == "error" {
                errors += 1;
            }
        }
    }
    assert_eq!(errors, 7_500);
    assert_eq!(other.rpc("pools", json!({})).await["name"], "response");
}

#[tokio::test]
async fn wrong_types_in_every_field_of_every_method_get_400_with_the_id() {
    let app = TestApp::spawn().await;
    let (mut c, _) = app.login("astravdi").await;
    let cases = [
        ("rpc", "auth", json!({"username": 1, "password": "x"})),
        ("rpc", "auth", json!({"username": "x", "password": []})),
        (
            "rpc",
            "auth",
            json!({"username": "x", "password": "y", "otp_code": 5}),
        ),
        (
            "rpc",
            "otp_verify",
            json!({"mfa_token": {}, "otp_code": "1"}),
        ),
        (
            "rpc",
            "otp_verify",
            json!({"mfa_token": "x", "otp_code": false}),
        ),
        ("rpc", "auth_token", json!({"token": 12})),
        ("events", "subscribe", json!(42)),
        ("events", "unsubscribe", json!([1, 2])),
        ("rpc", "pools", json!({"is_favorite": "yes"})),
        ("rpc", "pool_request", json!({"pool_id": 5})),
        ("rpc", "pool_request", json!({"pool_id": "not-a-uuid"})),
        (
            "rpc",
            "connect_info",
            json!({"pool_id": POOL_WIN_1, "remote_protocol": "one"}),
        ),
        (
            "rpc",
            "connect_info",
            json!({"pool_id": POOL_WIN_1, "width": 1.5}),
        ),
        (
            "rpc",
            "connect_info",
            json!({"pool_id": POOL_WIN_1, "height": "tall"}),
        ),
        (
            "rpc",
            "connect_info",
            json!({"pool_id": POOL_WIN_1, "password": 7}),
        ),
        ("rpc", "task", json!({"task_id": null})),
        ("rpc", "task", json!({"task_id": [1]})),
    ];
    for (i, (ns, name, args)) in cases.into_iter().enumerate() {
        c.send_text(json!({"namespace": ns, "name": name, "id": i, "args": args}).to_string())
            .await;
        let reply = c.recv().await;
        assert_eq!(error_code(&reply), 400, "{ns}/{name} {args}: {reply}");
        assert_eq!(reply["id"], i);
    }
    assert_eq!(c.rpc("pools", json!({})).await["name"], "response");
}

/// A directory that is down fails every directory sign-in — each one a 503 and counted in
/// `poolgate_directory_errors_total` — but a flood of them is one log line per period with
/// the count, not a line per attempt.
#[tokio::test]
async fn a_flood_of_sign_ins_while_the_directory_is_down_is_one_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("ldap-password");
    std::fs::write(&password_file, "service-secret").unwrap();
    // Nothing listens on this port: the directory is down from the start.
    let down = free_port();
    let config = config_file(dir.path(), 1.0, "");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[directory]\nurl = \"ldap://127.0.0.1:{down}\"\n\
         bind_dn = \"cn=poolgate,dc=example,dc=org\"\nbind_password_file = {password_file:?}\n\
         user_base = \"ou=people,dc=example,dc=org\"\ntimeout = 1\n"
    ));
    std::fs::write(&config, text).unwrap();
    let server = ServerProcess::serve(&config, &dir.path().join("data")).await;
    let mut c = server.connect().await;
    for i in 0..20 {
        let reply = c
            .rpc(
                "auth",
                json!({"username": format!("person{i}"), "password": "pw", "ldap": true}),
            )
            .await;
        assert_eq!(error_code(&reply), 503, "{reply}");
    }
    let metrics = reqwest::get(format!("http://{}/metrics", server.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let errors = metric(&metrics, "poolgate_directory_errors_total");
    assert!(errors >= 20.0, "every failed sign-in counted: {errors}");
    // The metrics reply came after every sign-in's reply; give the log pipe a moment.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let lines = server.log_lines("a directory sign-in was answered 503");
    assert_eq!(lines.len(), 1, "{lines:#?}");
}

/// A flood of `/healthz` probes (anyone may send them) is not a flood of checks: probes that
/// arrive while a check runs share its verdict. Counted by the directory check, which counts
/// each unanswered ping in `poolgate_directory_errors_total`.
#[tokio::test]
async fn a_flood_of_health_probes_shares_the_checks() {
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("ldap-password");
    std::fs::write(&password_file, "service-secret").unwrap();
    let down = free_port();
    let directory: poolgate::auth::directory::DirectoryConfig = toml::from_str(&format!(
        "url = \"ldap://127.0.0.1:{down}\"\nbind_dn = \"cn=poolgate,dc=example,dc=org\"\n\
         bind_password_file = {password_file:?}\nuser_base = \"ou=people,dc=example,dc=org\"\n\
         timeout = 1\n"
    ))
    .unwrap();
    let app = TestApp::spawn_with(|c| c.directory = Some(directory)).await;
    let probes = (0..40).map(|_| {
        let url = app.url("/healthz");
        tokio::spawn(async move {
            let resp = reqwest::get(url).await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        })
    });
    for probe in futures_util::future::join_all(probes).await {
        assert_eq!(
            probe.unwrap(),
            (200, "degraded: directory unreachable\n".to_owned())
        );
    }
    let metrics = reqwest::get(app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let checks = metric(&metrics, "poolgate_directory_errors_total");
    assert!(
        (1.0..=10.0).contains(&checks),
        "40 probes at once ran {checks} checks"
    );
}

/// Every refusal a client can repeat at will is logged at a bounded rate with its count: a
/// flood down each path — a status socket opened with a valid token for another client_id,
/// one from a foreign Origin, sign-ins refused by the lockout on both transports — is a line
/// or two per path, not a line per request (the first path was 20 000 lines in 1.1 s).
#[tokio::test]
async fn every_refusal_path_logs_at_a_bounded_rate_with_a_count() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    const FLOOD: usize = 150;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let server =
        ServerProcess::start(&["serve", "--listen", "127.0.0.1:0", "--data-dir", data]).await;
    let http = reqwest::Client::new();
    let login_url = format!("http://{}/api/v2/users/login/", server.addr);
    let body: serde_json::Value = http
        .post(&login_url)
        .json(&json!({"username": "astravdi", "password": PASSWORD, "ldap": false}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwt = body["data"]["access_token"].as_str().unwrap().to_owned();
    let status_socket = |client_id: &str, origin: Option<&str>| {
        let mut req = format!("ws://{}/api/v2/pools/ws/{client_id}/", server.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("cookie", format!("JWT={jwt}").parse().unwrap());
        if let Some(origin) = origin {
            req.headers_mut().insert("origin", origin.parse().unwrap());
        }
        async move {
            match tokio_tungstenite::connect_async(req).await {
                Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
                other => panic!("not refused: {:?}", other.map(|_| ())),
            }
        }
    };
    let someone_else = uuid::Uuid::new_v4().to_string();
    for _ in 0..FLOOD {
        assert_eq!(status_socket(&someone_else, None).await, 403);
        assert_eq!(
            status_socket(ASTRAVDI_ID, Some("https://evil.example")).await,
            403
        );
    }
    // Five wrong passwords lock this (user, address) pair; every later sign-in of it is
    // refused, on the WebSocket and on the REST login.
    let mut c = server.connect().await;
    for _ in 0..5 {
        c.rpc("auth", json!({"username": "user-2", "password": "wrong"}))
            .await;
    }
    for _ in 0..FLOOD {
        let mut c = server.connect().await;
        let reply = c
            .rpc("auth", json!({"username": "user-2", "password": "wrong"}))
            .await;
        assert_eq!(error_code(&reply), 429, "{reply}");
        let status = http
            .post(&login_url)
            .json(&json!({"username": "user-2", "password": "wrong", "ldap": false}))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 429);
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for needle in [
        "client_id is not the token's",
        "foreign Origin",
        "sign-in refused",
    ] {
        let lines = server.log_lines(needle);
        assert!(
            (1..=2).contains(&lines.len()),
            "{needle}: {} lines\n{lines:#?}",
            lines.len()
        );
    }
    let warnings = server.log_lines("WARN");
    assert!(
        warnings.len() <= 8,
        "{} WARN lines:\n{warnings:#?}",
        warnings.len()
    );
}
