//! The v2 REST shim over real HTTP: every behaviour the mock's own suite checks
//! (tests/test_api_v2_*.py), the stricter promises, and one full flow with the status socket.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::*;

const USER2_ID: &str = "e8d8dd14-cb09-4099-b96e-a83c6b09496c";
const USER2_FAILED_TASK: &str = "22aaa425-6387-4767-9611-3c26ad1a6161";
const USER1_PENDING_TASK: &str = "fabb9a84-ae96-4d07-b5a0-329ea70fa476";

struct Http {
    client: reqwest::Client,
    app: TestApp,
}

impl Http {
    async fn new() -> Http {
        Self::with(TestApp::spawn().await)
    }

    fn with(app: TestApp) -> Http {
        Http {
            client: reqwest::Client::new(),
            app,
        }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let mut req = self.client.get(self.app.url(path));
        if let Some(t) = token {
            req = req.header("Authorization", format!("JWT {t}"));
        }
        read(req.send().await.unwrap()).await
    }

    async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.post(self.app.url(path));
        if let Some(t) = token {
            req = req.header("Authorization", format!("JWT {t}"));
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        read(req.send().await.unwrap()).await
    }

    async fn login(&self, body: Value) -> (StatusCode, Value) {
        self.post("/api/v2/users/login/", None, Some(body)).await
    }
}

async fn read(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    if !status.is_success() {
        assert_eq!(
            resp.headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap()),
            Some("JWT"),
            "every error carries WWW-Authenticate: JWT"
        );
    }
    let text = resp.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    if !status.is_success() {
        let detail = body["detail"]
            .as_array()
            .unwrap_or_else(|| panic!("error shape: {body}"));
        for item in detail {
            assert!(
                item["msg"].is_string() && item["err_code"].is_u64() && item["type"].is_string(),
                "{body}"
            );
        }
    }
    (status, body)
}

// --- test_api_v2_core.py ---

#[tokio::test]
async fn health_and_version_have_the_mocks_shapes() {
    let h = Http::new().await;
    let (s, body) = h.get("/api/v2/health/", None).await;
    assert_eq!(s, 200);
    assert_eq!(body["data"]["code"], 200);
    assert_eq!(body["data"]["response_data"]["ok"], true);
    let (s, body) = h.get("/api/v2/version/", None).await;
    assert_eq!(s, 200);
    for key in [
        "version",
        "build",
        "year",
        "url",
        "copyright",
        "client",
        "gateway",
    ] {
        assert!(body["data"][key].is_string(), "{key}");
    }
    assert_eq!(body["data"]["version"], env!("CARGO_PKG_VERSION"));
}

// --- test_api_v2_users.py ---

#[tokio::test]
async fn logout_is_205_and_anonymous_logout_is_403() {
    let h = Http::new().await;
    let token = h.app.jwt("user-2").await;
    let (s, _) = h.post("/api/v2/users/logout/", Some(&token), None).await;
    assert_eq!(s, 205);
    let (s, body) = h.post("/api/v2/users/logout/", None, None).await;
    assert_eq!(s, 403);
    assert_eq!(
        body,
        json!({"detail": [{"msg": "Permission denied.", "err_code": 999, "type": "default"}]})
    );
}

#[tokio::test]
async fn settings_are_the_mocks_document_and_anonymous_is_403() {
    let h = Http::new().await;
    let token = h.app.jwt("user-2").await;
    let (s, body) = h.get("/api/v2/users/settings/", Some(&token)).await;
    assert_eq!(s, 200);
    assert_eq!(
        body,
        json!({"data": {
            "general": {
                "admin_mode_enabled": false, "file_logging_enabled": false, "default_remote_protocol": 1,
                "last_pool_autoconnect_enabled": false, "automatically_install_updates_enabled": true,
                "documentation_url": "https://spacevm.ru/client-docs/latest/"
            },
            "security": {
                "otp_enabled": false, "adfs_enabled": false, "hardware_token_enabled": false,
                "domain_username_format_enabled": false, "sc_permissions": []
            },
            "net": {"network_timeout": 15, "ws_channels": [{"channel": "api/v2/pools/ws/", "event": "pool_update"}]},
            "protocols": [{
                "id": 1, "name": "GLINT", "version": "1.0.0", "image_format": "BGRX32", "fps": 30,
                "keep_session_enabled": false, "full_screen_enabled": true, "multi_screen_enabled": false,
                "scale_image_enabled": true, "full_image_redraw_enabled": false,
                "hardware_acceleration_options": {
                    "hardware_acceleration_enabled": false, "video_compression_codec": "AVC420", "h264_bitrate_mbs": 3
                },
                "audio_playback_mode": "CLIENT"
            }]
        }})
    );
    let (s, _) = h.get("/api/v2/users/settings/", None).await;
    assert_eq!(s, 403);
}

#[tokio::test]
async fn login_checks_the_password_unlike_the_mock() {
    let h = Http::new().await;
    let (s, body) = h
        .login(json!({"username": "test", "password": "test", "ldap": false}))
        .await;
    assert_eq!(s, 401);
    assert_eq!(
        body,
        json!({"detail": [{"msg": "Invalid Credentials.", "err_code": 999, "type": "default"}]})
    );
    let (s, wrong) = h
        .login(json!({"username": "astravdi", "password": "test", "ldap": false}))
        .await;
    assert_eq!(s, 401);
    assert_eq!(
        wrong, body,
        "unknown user and wrong password answer the same"
    );
    let (s, ok) = h
        .login(json!({"username": "astravdi", "password": PASSWORD, "ldap": false}))
        .await;
    assert_eq!(s, 200);
    assert!(ok["data"]["access_token"].is_string());
    assert_eq!(ok["data"]["refresh_token"], "");
    assert_eq!(ok["data"]["token_type"], "JWT");
}

#[tokio::test]
async fn the_jwt_carries_the_mocks_claims() {
    let h = Http::new().await;
    let token = h.app.jwt("astravdi").await;
    let parts: Vec<&str> = token.split('.').collect();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(header["alg"], "HS256");
    assert_eq!(claims["sub"], ASTRAVDI_ID);
    assert_eq!(claims["client_id"], ASTRAVDI_ID);
    assert_eq!(claims["username"], "astravdi");
    assert_eq!(claims["roles"], json!(["admin", "user"]));
    assert_eq!(claims["domain"], Value::Null);
    assert!(claims["exp"].as_i64().unwrap() > chrono::Utc::now().timestamp());
}

#[tokio::test]
async fn mfa_logins_follow_the_mocks_flow() {
    let h = Http::new().await;
    // user-1: OTP on (and disabled). MFA is checked first.
    let (s, body) = h
        .login(json!({"username": "user-1", "password": "test", "ldap": false}))
        .await;
    assert_eq!(s, 428);
    assert_eq!(
        body,
        json!({"detail": [{"msg": "MFA required.", "err_code": 100, "type": "auth", "next_step": "/api/v2/users/login/"}]})
    );
    let (s, body) = h
        .login(
            json!({"username": "user-1", "password": "test", "ldap": false, "otp_code": "123456"}),
        )
        .await;
    assert_eq!(s, 401);
    assert_eq!(body["detail"][0]["err_code"], 103);
    let (s, _) = h.login(json!({"username": "user-1", "password": "test", "ldap": false, "otp_code": date_code()})).await;
    assert_eq!(s, 401);
    // Right password and code, but disabled: still 401 Invalid Credentials.
    let (s, body) = h.login(json!({"username": "user-1", "password": PASSWORD, "ldap": false, "otp_code": date_code()})).await;
    assert_eq!(s, 401);
    assert_eq!(body["detail"][0]["err_code"], 999);

    // user-4: password null first (the mock's documented first step), then password + code.
    let (s, body) = h
        .login(json!({"username": "user-4", "password": null, "ldap": false}))
        .await;
    assert_eq!(s, 428);
    assert_eq!(body["detail"][0]["next_step"], "/api/v2/users/login/");
    let (s, body) = h.login(json!({"username": "user-4", "password": PASSWORD, "ldap": false, "otp_code": date_code()})).await;
    assert_eq!(s, 200, "{body}");

    let (s, body) = h
        .login(json!({"username": "user-5", "password": "test", "ldap": false}))
        .await;
    assert_eq!(s, 428);
    assert_eq!(
        body,
        json!({"detail": [{"msg": "MFA required.", "err_code": 101, "type": "auth", "next_step": "/api/v2/users/adfs/"}]})
    );
    let (s, body) = h
        .login(json!({"username": "user-3", "password": "test", "ldap": false}))
        .await;
    assert_eq!(s, 428);
    assert_eq!(
        body,
        json!({"detail": [{"msg": "MFA required.", "err_code": 102, "type": "auth", "next_step": "/api/v2/users/hardware_token/"}]})
    );
}

#[tokio::test]
async fn bad_login_bodies_are_422_never_500() {
    let h = Http::new().await;
    for body in [
        json!({"password": "x"}),
        json!({"username": 5, "password": "x"}),
        json!({"username": "a", "password": 5}),
        json!([1, 2]),
    ] {
        let (s, resp) = h.login(body.clone()).await;
        assert_eq!(s, 422, "{body}");
        assert!(
            resp["detail"]
                .as_array()
                .unwrap()
                .iter()
                .all(|d| d["err_code"] == 999)
        );
    }
    let resp = h
        .client
        .post(h.app.url("/api/v2/users/login/"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (s, _) = read(resp).await;
    assert_eq!(s, 422);
    let resp = h
        .client
        .post(h.app.url("/api/v2/users/login/"))
        .send()
        .await
        .unwrap();
    assert_eq!(read(resp).await.0, 422);
    let resp = h
        .client
        .post(h.app.url("/api/v2/users/login/"))
        .body(vec![b'{'; 200 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(read(resp).await.0, 413);
}

// --- test_api_v2_pools.py ---

#[tokio::test]
async fn pools_are_paged_and_filtered_and_anonymous_is_403() {
    let h = Http::new().await;
    let token = h.app.jwt("user-2").await;
    let (s, body) = h.get("/api/v2/pools/", Some(&token)).await;
    assert_eq!(s, 200);
    assert_eq!(
        (
            body["total"].clone(),
            body["page"].clone(),
            body["size"].clone(),
            body["pages"].clone()
        ),
        (json!(2), json!(1), json!(50), json!(1))
    );
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    let (s, body) = h.get("/api/v2/pools/?is_favorite=true", Some(&token)).await;
    assert_eq!(s, 200);
    assert_eq!(body["total"], 1);
    let (s, _) = h
        .get("/api/v2/pools/?is_favorite=maybe", Some(&token))
        .await;
    assert_eq!(s, 422);
    let (s, _) = h.get("/api/v2/pools/", None).await;
    assert_eq!(s, 403);
}

#[tokio::test]
async fn step_1_as_in_the_mocks_tests() {
    let h = Http::new().await;
    let path = format!("/api/v2/pools/{POOL_WIN_1}/connect/");
    assert_eq!(h.get(&path, None).await.0, 403);
    let user2 = h.app.jwt("user-2").await;
    let (s, body) = h.get(&path, Some(&user2)).await;
    assert_eq!(s, 403);
    assert_eq!(
        body,
        json!({"detail": [{"msg": "Pool cannot be expanded.", "err_code": 800, "type": "default"}]})
    );
    let admin = h.app.jwt("astravdi").await;
    let (s, body) = h.get(&path, Some(&admin)).await;
    assert_eq!(s, 202);
    assert_eq!(body["data"]["kind"], "POOL_EXPAND");
    let id = body["data"]["id"].as_str().unwrap();
    let (s, task) = h.get(&format!("/api/v2/tasks/{id}/"), Some(&admin)).await;
    assert_eq!(s, 200);
    assert_eq!(task["data"]["id"], id);
    // Not assigned, and malformed.
    let (s, body) = h
        .get(
            &format!("/api/v2/pools/{POOL_WIN_2}/connect/"),
            Some(&user2),
        )
        .await;
    assert_eq!(s, 403);
    assert_eq!(body["detail"][0]["err_code"], 900);
    assert_eq!(
        h.get("/api/v2/pools/not-a-uuid/connect/", Some(&admin))
            .await
            .0,
        422
    );
}

#[tokio::test]
async fn step_2_as_in_the_mocks_tests() {
    let h = Http::with(TestApp::spawn_with(|c| fast_sim(c, OK, OK)).await);
    let path = format!("/api/v2/pools/{POOL_WIN_1}/connect/");
    assert_eq!(h.post(&path, None, None).await.0, 403);
    let admin = h.app.jwt("astravdi").await;
    let body = json!({"password": "test", "remote_protocol": 1, "width": 2, "height": 2});
    let (s, resp) = h.post(&path, Some(&admin), Some(body.clone())).await;
    assert_eq!(s, 409);
    assert_eq!(resp["detail"][0]["err_code"], 801);
    // Step 1 until COMPLETED.
    let (s, _) = h.get(&path, Some(&admin)).await;
    assert_eq!(s, 202);
    let mut done = false;
    for _ in 0..100 {
        if h.get(&path, Some(&admin)).await.0 == 200 {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(done, "step 1 completes and then answers 200");
    let (s, resp) = h.post(&path, Some(&admin), Some(body)).await;
    assert_eq!(s, 202);
    assert_eq!(resp["data"]["kind"], "GLINT_START");
    let (s, _) = h
        .post(
            &path,
            Some(&admin),
            Some(json!({"remote_protocol": 7, "width": 800, "height": 600})),
        )
        .await;
    assert_eq!(s, 422);
    let (s, _) = h
        .post(&path, Some(&admin), Some(json!({"width": "x"})))
        .await;
    assert_eq!(s, 422);
}

// --- test_api_v2_tasks.py ---

#[tokio::test]
async fn tasks_and_is_done_as_in_the_mocks_tests() {
    let h = Http::new().await;
    let user2 = h.app.jwt("user-2").await;
    let (s, body) = h
        .get(&format!("/api/v2/tasks/{USER2_FAILED_TASK}/"), Some(&user2))
        .await;
    assert_eq!(s, 200);
    assert_eq!(body["data"]["status"], "FAILED");
    assert_eq!(
        h.get(
            &format!("/api/v2/tasks/{USER1_PENDING_TASK}/"),
            Some(&user2)
        )
        .await
        .0,
        404
    );
    let (s, body) = h
        .get(
            &format!("/api/v2/tasks/{USER2_FAILED_TASK}/is-done/"),
            Some(&user2),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(body["data"]["is_done"], true);
    assert_eq!(
        h.get(
            &format!("/api/v2/tasks/{USER1_PENDING_TASK}/is-done/"),
            Some(&user2)
        )
        .await
        .0,
        404
    );
    assert_eq!(h.get("/api/v2/tasks/xyz/", Some(&user2)).await.0, 422);
}

// --- stricter than the mock ---

#[tokio::test]
async fn a_cancelled_task_is_done() {
    let h = Http::with(TestApp::spawn_with(|c| fast_sim(c, CANCEL, OK)).await);
    let admin = h.app.jwt("astravdi").await;
    let (_, body) = h
        .get(
            &format!("/api/v2/pools/{POOL_WIN_1}/connect/"),
            Some(&admin),
        )
        .await;
    let id = body["data"]["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v2/tasks/{id}/is-done/");
    let mut done = false;
    for _ in 0..100 {
        if h.get(&path, Some(&admin)).await.1["data"]["is_done"] == true {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(done);
    let (_, task) = h.get(&format!("/api/v2/tasks/{id}/"), Some(&admin)).await;
    assert_eq!(task["data"]["status"], "CANCELLED");
}

#[tokio::test]
async fn logout_revokes_the_token_server_side() {
    let h = Http::new().await;
    let token = h.app.jwt("astravdi").await;
    assert_eq!(h.get("/api/v2/pools/", Some(&token)).await.0, 200);
    assert_eq!(
        h.post("/api/v2/users/logout/", Some(&token), None).await.0,
        205
    );
    assert_eq!(h.get("/api/v2/pools/", Some(&token)).await.0, 403);
    // Other tokens of the same user still work.
    let other = h.app.jwt("astravdi").await;
    assert_eq!(h.get("/api/v2/pools/", Some(&other)).await.0, 200);
}

fn forge(header: Value, claims: Value, key: &[u8]) -> String {
    use hmac::Mac;
    let head = URL_SAFE_NO_PAD.encode(header.to_string());
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{head}.{body}").as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{head}.{body}.{sig}")
}

#[tokio::test]
async fn forged_alg_none_expired_and_wrongly_presented_tokens_are_403() {
    let h = Http::new().await;
    // Issued now: a token issued longer than session_max_age ago is refused whatever its exp.
    let iat = chrono::Utc::now().timestamp();
    let claims = |exp: i64| {
        json!({"sub": ASTRAVDI_ID, "username": "astravdi", "roles": ["admin", "user"], "client_id": ASTRAVDI_ID,
               "domain": null, "exp": exp, "iat": iat, "jti": "x"})
    };
    let future = chrono::Utc::now().timestamp() + 3600;
    let secret = std::fs::read(h.app.state.config.data_dir.join("jwt-secret")).unwrap();
    let good = forge(
        json!({"alg": "HS256", "typ": "JWT"}),
        claims(future),
        &secret,
    );
    assert_eq!(
        h.get("/api/v2/pools/", Some(&good)).await.0,
        200,
        "the control token works"
    );
    let cases = [
        (
            "mock's secret",
            forge(
                json!({"alg": "HS256", "typ": "JWT"}),
                claims(future),
                b"super-secret",
            ),
        ),
        (
            "expired",
            forge(
                json!({"alg": "HS256", "typ": "JWT"}),
                claims(1_000_000),
                &secret,
            ),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
                URL_SAFE_NO_PAD.encode(claims(future).to_string())
            ),
        ),
        (
            "HS512",
            forge(
                json!({"alg": "HS512", "typ": "JWT"}),
                claims(future),
                &secret,
            ),
        ),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (name, token) in cases {
        assert_eq!(h.get("/api/v2/pools/", Some(&token)).await.0, 403, "{name}");
    }
    let resp = h
        .client
        .get(h.app.url("/api/v2/pools/"))
        .header("Authorization", format!("Bearer {good}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403, "only the JWT scheme");
}

#[tokio::test]
async fn a_well_known_secret_is_refused_at_start_up() {
    let mut config = demo_config();
    config.jwt_secret = Some(poolgate::config::SecretString("super-secret".into()));
    let err = poolgate::AppState::new(config)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("POOLGATE_JWT_SECRET"), "{err}");
}

#[tokio::test]
async fn the_generated_secret_is_kept_and_reused() {
    let mut config = demo_config();
    // Two states on one data dir at once: keep the (single-process) database out of it.
    config.state = poolgate::store::StateUrl::Memory;
    let a = poolgate::AppState::new(config.clone()).await.unwrap();
    let b = poolgate::AppState::new(config.clone()).await.unwrap();
    let user = a.auth.users.by_name("astravdi").unwrap().clone();
    let token = a.auth.jwt.issue(&user).unwrap();
    assert!(
        b.auth.jwt.verify(&token).is_some(),
        "a restart keeps accepting issued tokens"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(config.data_dir.join("jwt-secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    std::fs::remove_dir_all(&config.data_dir).unwrap();
}

async fn status_socket(
    app: &TestApp,
    client_id: &str,
    cookie: Option<String>,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    u16,
> {
    let mut req = format!("ws://{}/api/v2/pools/ws/{client_id}/", app.addr)
        .into_client_request()
        .unwrap();
    if let Some(c) = cookie {
        req.headers_mut().insert("cookie", c.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn the_status_socket_needs_a_valid_token_for_its_own_client_id() {
    let app = TestApp::spawn().await;
    let token = app.jwt("astravdi").await;
    assert_eq!(
        status_socket(&app, ASTRAVDI_ID, None).await.err(),
        Some(403)
    );
    assert_eq!(
        status_socket(&app, ASTRAVDI_ID, Some("JWT garbage".into()))
            .await
            .err(),
        Some(403)
    );
    assert_eq!(
        status_socket(&app, USER2_ID, Some(format!("JWT {token}")))
            .await
            .err(),
        Some(403),
        "someone else's client_id"
    );
    assert!(
        status_socket(&app, ASTRAVDI_ID, Some(format!("JWT {token}")))
            .await
            .is_ok()
    );
    assert!(
        status_socket(&app, ASTRAVDI_ID, Some(format!("theme=dark; JWT={token}")))
            .await
            .is_ok()
    );
}

async fn next_status(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Value {
    loop {
        let msg = tokio::time::timeout(REPLY_TIMEOUT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// The distinct statuses the status socket reports for one task, until COMPLETED.
async fn statuses_until_completed(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    id: &Value,
    kind: &str,
) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    loop {
        let ev = next_status(ws).await;
        assert_eq!(&ev["id"], id);
        assert_eq!(ev["kind"], kind);
        let status = ev["status"].as_str().unwrap().to_owned();
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if status == "COMPLETED" {
            return seen;
        }
    }
}

#[tokio::test]
async fn full_flow_login_status_socket_step_1_and_step_2() {
    let h = Http::with(TestApp::spawn_with(|c| fast_sim(c, OK, OK)).await);
    let token = h.app.jwt("astravdi").await;
    let mut ws = status_socket(&h.app, ASTRAVDI_ID, Some(format!("JWT {token}")))
        .await
        .unwrap();
    let path = format!("/api/v2/pools/{POOL_ASTRA_2}/connect/");

    let (s, body) = h.get(&path, Some(&token)).await;
    assert_eq!(s, 202);
    let seen = statuses_until_completed(&mut ws, &body["data"]["id"], "POOL_EXPAND").await;
    assert_eq!(seen, ["RUNNING", "COMPLETED"]);
    let (s, body) = h.get(&path, Some(&token)).await;
    assert_eq!(
        (s, body["data"]["status"].clone()),
        (StatusCode::OK, json!("COMPLETED"))
    );

    let req = json!({"remote_protocol": 1, "width": 1280, "height": 800, "password": PASSWORD});
    let (s, body) = h.post(&path, Some(&token), Some(req.clone())).await;
    assert_eq!(s, 202);
    let seen = statuses_until_completed(&mut ws, &body["data"]["id"], "GLINT_START").await;
    assert_eq!(seen, ["RUNNING", "COMPLETED"]);
    let (s, body) = h.post(&path, Some(&token), Some(req)).await;
    assert_eq!(s, 200);
    for field in [
        "id",
        "verbose_name",
        "permissions",
        "host",
        "port",
        "status",
        "protocol_id",
    ] {
        assert!(!body["data"][field].is_null(), "{field}: {body}");
    }
}

#[tokio::test]
async fn the_status_socket_sends_active_tasks_on_connect_and_closes_on_logout() {
    let app = TestApp::spawn_with(|c| {
        fast_sim(c, OK, OK);
        let slow: toml::Value =
            toml::from_str("kind = \"simulated\"\npending = 0.05\nrunning = [3, 3]").unwrap();
        c.provisioners
            .insert("simulated".into(), slow.try_into().unwrap());
        // Liveness is checked every idle_timeout / 2.
        c.idle_timeout = Duration::from_secs(1);
    })
    .await;
    let h = Http::with(app);
    let token = h.app.jwt("astravdi").await;
    let (_, body) = h
        .get(
            &format!("/api/v2/pools/{POOL_WIN_1}/connect/"),
            Some(&token),
        )
        .await;
    let mut ws = status_socket(&h.app, ASTRAVDI_ID, Some(format!("JWT {token}")))
        .await
        .unwrap();
    let first = next_status(&mut ws).await;
    assert_eq!(first["id"], body["data"]["id"]);
    assert_eq!(
        h.post("/api/v2/users/logout/", Some(&token), None).await.0,
        205
    );
    // The revoked socket gets no more task events and is closed at the next liveness check.
    let mut client = Client::from(ws);
    let (code, reason) = client.expect_close(Duration::from_secs(3)).await;
    assert_eq!(code, 4003);
    assert!(reason.contains("revoked"), "{reason}");
    assert!(
        status_socket(&h.app, ASTRAVDI_ID, Some(format!("JWT {token}")))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn openapi_and_swagger_ui_are_served_without_the_network() {
    let h = Http::new().await;
    let (s, spec) = h.get("/api/v2/openapi.json", None).await;
    assert_eq!(s, 200);
    assert_eq!(spec["openapi"], "3.0.3");
    for path in [
        "/users/login/",
        "/pools/",
        "/pools/{id}/connect/",
        "/tasks/{task_id}/is-done/",
    ] {
        assert!(spec["paths"][path].is_object(), "{path}");
    }
    let page = h
        .client
        .get(h.app.url("/docs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("/docs/swagger-ui-bundle.js") && !page.contains("https://"));
    let js = h
        .client
        .get(h.app.url("/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    assert!(js.bytes().await.unwrap().len() > 100_000);
    assert_eq!(h.get("/api/v2/nowhere/", None).await.0, 404);
}

#[tokio::test]
async fn every_428_next_step_points_to_a_path_that_answers() {
    let h = Http::new().await;
    for (user, err_code, method) in [("user-5", 101, "ADFS"), ("user-3", 102, "Hardware-token")] {
        let (s, body) = h
            .login(json!({"username": user, "password": PASSWORD, "ldap": false}))
            .await;
        assert_eq!(s, 428, "{body}");
        let next = body["detail"][0]["next_step"].as_str().unwrap().to_owned();
        let path = next.as_str();
        let expected = json!({"detail": [{
            "msg": format!("{method} sign-in is not available on this server."),
            "err_code": err_code,
            "type": "auth",
        }]});
        let (s, body) = h.post(path, None, Some(json!({"username": user}))).await;
        assert_eq!(s, StatusCode::NOT_IMPLEMENTED, "POST {next}: {body}");
        assert_eq!(body, expected);
        let (s, body) = h.get(path, None).await;
        assert_eq!(s, StatusCode::NOT_IMPLEMENTED, "GET {next}: {body}");
        assert_eq!(body, expected);
    }
    // The OTP pointer is the login path itself, which answers.
    let (s, body) = h
        .login(json!({"username": "user-4", "password": PASSWORD, "ldap": false}))
        .await;
    assert_eq!(s, 428);
    assert_eq!(body["detail"][0]["next_step"], "/api/v2/users/login/");
    // Each pointer is in the OpenAPI document too.
    let (_, spec) = h.get("/api/v2/openapi.json", None).await;
    for path in ["/users/adfs/", "/users/hardware_token/", "/users/login/"] {
        assert!(spec["paths"][path].is_object(), "{path} documented");
    }
}
