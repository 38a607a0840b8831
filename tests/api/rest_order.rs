//! The order of checks on every v2 endpoint, as the mock's FastAPI makes it: a JSON body is
//! decoded first (422 `json_invalid`), then the JWT is checked (403), then path, query and
//! body fields (one 422 listing every problem), and only then state. Each test sends requests
//! that fail more than one check and shows which answer wins (protocol/v2-rest.md has the table).

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

const USER2_FAILED_TASK: &str = "22aaa425-6387-4767-9611-3c26ad1a6161";
const USER1_PENDING_TASK: &str = "fabb9a84-ae96-4d07-b5a0-329ea70fa476";
/// A well-formed UUID no pool or task has.
const NOBODYS: &str = "00000000-0000-4000-8000-000000000000";
const GOOD_CONNECT: &str =
    r#"{"remote_protocol": 1, "width": 800, "height": 600, "password": null}"#;

/// A request with raw parts, so bodies can be as broken as a test needs.
struct Req<'a> {
    method: Method,
    path: &'a str,
    token: Option<&'a str>,
    content_type: Option<&'a str>,
    body: Option<&'a str>,
}

impl<'a> Req<'a> {
    fn get(path: &'a str) -> Self {
        Req {
            method: Method::GET,
            path,
            token: None,
            content_type: None,
            body: None,
        }
    }

    fn post(path: &'a str, body: &'a str) -> Self {
        Req {
            method: Method::POST,
            body: Some(body),
            content_type: Some("application/json"),
            ..Req::get(path)
        }
    }

    fn token(self, token: &'a str) -> Self {
        Req {
            token: Some(token),
            ..self
        }
    }

    fn content_type(self, content_type: &'a str) -> Self {
        Req {
            content_type: Some(content_type),
            ..self
        }
    }

    async fn send(self, app: &TestApp) -> (StatusCode, HeaderMap, Value) {
        let mut req = reqwest::Client::new().request(self.method, app.url(self.path));
        if let Some(t) = self.token {
            req = req.header("authorization", format!("JWT {t}"));
        }
        if let Some(ct) = self.content_type {
            req = req.header("content-type", ct);
        }
        if let Some(b) = self.body {
            req = req.body(b.to_owned());
        }
        let resp = req.send().await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            assert_eq!(headers["www-authenticate"], "JWT", "{status} {text}");
            assert!(body["detail"].is_array(), "{status} {text}");
        }
        (status, headers, body)
    }

    /// The status and, for errors, each item's `(type, loc)`.
    async fn answer(self, app: &TestApp) -> (u16, Vec<(String, Value)>) {
        let (status, _, body) = self.send(app).await;
        let items = body["detail"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|d| {
                        if status == 422 {
                            assert_eq!(d["err_code"], 999, "validation errors carry 999: {d}");
                        }
                        (d["type"].as_str().unwrap().to_owned(), d["loc"].clone())
                    })
                    .collect()
            })
            .unwrap_or_default();
        (status.as_u16(), items)
    }
}

fn item(kind: &str, loc: Value) -> (String, Value) {
    (kind.to_owned(), loc)
}

fn denied() -> (u16, Vec<(String, Value)>) {
    (403, vec![item("default", Value::Null)])
}

#[tokio::test]
async fn connect_with_remote_protocol_2_is_422_even_before_step_one() {
    let app = TestApp::spawn_with(|c| fast_sim(c, OK, OK)).await;
    let token = app.jwt("astravdi").await;
    let path = format!("/api/v2/pools/{POOL_WIN_1}/connect/");
    let rdp = r#"{"remote_protocol": 2, "width": 800, "height": 600, "password": null}"#;
    let (status, _, body) = Req::post(&path, rdp).token(&token).send(&app).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body,
        json!({"detail": [{
            "type": "value_error",
            "loc": ["body", "remote_protocol"],
            "msg": "Value error, remote_protocol must be ConnectionTypesMap.GLINTV1",
            "ctx": {"error": {}},
            "err_code": 999,
        }]})
    );
    // The same request with a valid body reaches the state rule the 422 came before.
    let (status, _, body) = Req::post(&path, GOOD_CONNECT)
        .token(&token)
        .send(&app)
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["detail"][0]["err_code"], 801);
}

#[tokio::test]
async fn connect_decodes_json_before_the_token_and_checks_fields_after_it() {
    let app = TestApp::spawn_with(|c| fast_sim(c, OK, OK)).await;
    let token = app.jwt("astravdi").await;
    let path = format!("/api/v2/pools/{POOL_WIN_1}/connect/");
    let bad_path = "/api/v2/pools/not-a-uuid/connect/";

    // 1. JSON syntax, before the token (also without a Content-Type).
    let (status, _, body) = Req::post(bad_path, "{\"width\": ").send(&app).await;
    assert_eq!(status, 422);
    assert_eq!(body["detail"][0]["type"], "json_invalid");
    assert_eq!(body["detail"][0]["loc"], json!(["body", 10]));
    assert_eq!(body["detail"][0]["msg"], "JSON decode error");
    let mut no_type = Req::post(&path, "{");
    no_type.content_type = None;
    assert_eq!(
        no_type.answer(&app).await,
        (422, vec![item("json_invalid", json!(["body", 1]))])
    );

    // 2. The token, before the path and the fields.
    assert_eq!(Req::post(bad_path, "{}").answer(&app).await, denied());
    assert_eq!(Req::post(bad_path, "").answer(&app).await, denied());
    // A body that is not JSON by its Content-Type is not decoded, so the token comes first.
    let not_json = Req::post(&path, "{").content_type("text/plain");
    assert_eq!(not_json.answer(&app).await, denied());

    // 3. Path and body fields, every problem in one 422, path first.
    let (status, items) = Req::post(
        bad_path,
        r#"{"remote_protocol": 9, "width": 1, "height": "x"}"#,
    )
    .token(&token)
    .answer(&app)
    .await;
    assert_eq!(status, 422);
    assert_eq!(
        items,
        vec![
            item("uuid_parsing", json!(["path", "id"])),
            item("enum", json!(["body", "remote_protocol"])),
            item("greater_than_equal", json!(["body", "width"])),
            item("int_parsing", json!(["body", "height"])),
            item("missing", json!(["body", "password"])),
        ]
    );
    for (body, content_type, expected) in [
        ("", "application/json", item("missing", json!(["body"]))),
        ("null", "application/json", item("missing", json!(["body"]))),
        (
            "[]",
            "application/json",
            item("model_attributes_type", json!(["body"])),
        ),
        (
            GOOD_CONNECT,
            "text/plain",
            item("model_attributes_type", json!(["body"])),
        ),
    ] {
        let answer = Req::post(&path, body)
            .content_type(content_type)
            .token(&token)
            .answer(&app)
            .await;
        assert_eq!(answer, (422, vec![expected]), "{body} as {content_type}");
    }

    // 4. State: lax forms pydantic accepts get as far as the pool rules.
    for body in [
        GOOD_CONNECT,
        r#"{"remote_protocol": "1", "width": "800", "height": 600.0, "password": "x", "extra": 1}"#,
    ] {
        let (status, items) = Req::post(&path, body).token(&token).answer(&app).await;
        assert_eq!((status, items.len()), (409, 1), "{body}");
    }
    let other = format!("/api/v2/pools/{NOBODYS}/connect/");
    let (status, _, body) = Req::post(&other, GOOD_CONNECT)
        .token(&token)
        .send(&app)
        .await;
    assert_eq!(
        (status.as_u16(), body["detail"][0]["err_code"].clone()),
        (403, json!(900))
    );
}

#[tokio::test]
async fn step_1_checks_the_token_then_the_pool_id_then_the_pool() {
    let app = TestApp::spawn().await;
    let token = app.jwt("astravdi").await;
    let bad = "/api/v2/pools/not-a-uuid/connect/";
    assert_eq!(Req::get(bad).answer(&app).await, denied());
    let (status, _, body) = Req::get(bad).token(&token).send(&app).await;
    assert_eq!(status, 422);
    assert_eq!(body["detail"][0]["loc"], json!(["path", "id"]));
    assert_eq!(body["detail"][0]["type"], "uuid_parsing");
    // pydantic's words, then the parser's own account of what is wrong.
    let msg = body["detail"][0]["msg"].as_str().unwrap();
    assert!(msg.starts_with("Input should be a valid UUID, "), "{msg}");
    assert_eq!(
        body["detail"][0]["ctx"]["error"],
        msg["Input should be a valid UUID, ".len()..]
    );
    let other = format!("/api/v2/pools/{NOBODYS}/connect/");
    let (status, _, body) = Req::get(&other).token(&token).send(&app).await;
    assert_eq!(
        (status.as_u16(), body["detail"][0]["err_code"].clone()),
        (403, json!(900))
    );
}

#[tokio::test]
async fn login_validates_its_whole_body_before_it_looks_up_the_user() {
    let app = TestApp::spawn_with(|c| c.lockout_attempts = 2).await;
    let path = "/api/v2/users/login/";
    let (status, items) = Req::post(path, "{\"username\": ").answer(&app).await;
    assert_eq!((status, items[0].0.as_str()), (422, "json_invalid"));
    // Every problem at once, in the model's field order; an unknown user would be 401.
    assert_eq!(
        Req::post(path, r#"{"username": "nobody", "otp_code": 5}"#)
            .answer(&app)
            .await,
        (
            422,
            vec![
                item("missing", json!(["body", "password"])),
                item("missing", json!(["body", "ldap"])),
                item("string_type", json!(["body", "otp_code"])),
            ]
        )
    );
    let form = Req::post(path, "username=astravdi&password=x")
        .content_type("application/x-www-form-urlencoded");
    assert_eq!(
        form.answer(&app).await,
        (422, vec![item("model_attributes_type", json!(["body"]))])
    );
    // Malformed bodies never reach the lockout: after many, a good sign-in still works.
    for _ in 0..4 {
        let bad = r#"{"username": "astravdi", "password": "wrong", "ldap": "maybe"}"#;
        assert_eq!(
            Req::post(path, bad).answer(&app).await,
            (422, vec![item("bool_parsing", json!(["body", "ldap"]))])
        );
    }
    let good = format!(r#"{{"username": "astravdi", "password": "{PASSWORD}", "ldap": "no"}}"#);
    assert_eq!(Req::post(path, &good).answer(&app).await.0, 200);
}

#[tokio::test]
async fn logout_checks_only_the_token_and_never_reads_a_body() {
    let app = TestApp::spawn().await;
    let token = app.jwt("user-2").await;
    let path = "/api/v2/users/logout/";
    assert_eq!(Req::post(path, "{not json").answer(&app).await, denied());
    assert_eq!(
        Req::post(path, "{not json")
            .token(&token)
            .answer(&app)
            .await
            .0,
        205
    );
}

#[tokio::test]
async fn settings_check_only_the_token_and_ignore_the_query() {
    let app = TestApp::spawn().await;
    let token = app.jwt("user-2").await;
    let path = "/api/v2/users/settings/?page=0&is_favorite=maybe";
    assert_eq!(Req::get(path).answer(&app).await, denied());
    assert_eq!(Req::get(path).token(&token).answer(&app).await.0, 200);
}

#[tokio::test]
async fn pools_check_the_token_then_every_query_parameter() {
    let app = TestApp::spawn().await;
    let token = app.jwt("astravdi").await;
    let bad = "/api/v2/pools/?is_favorite=maybe&size=101&page=0";
    assert_eq!(Req::get(bad).answer(&app).await, denied());
    // fastapi-pagination's parameters come first, as in the mock.
    assert_eq!(
        Req::get(bad).token(&token).answer(&app).await,
        (
            422,
            vec![
                item("greater_than_equal", json!(["query", "page"])),
                item("less_than_equal", json!(["query", "size"])),
                item("bool_parsing", json!(["query", "is_favorite"])),
            ]
        )
    );
    // Valid parameters page like fastapi-pagination.
    let (status, _, body) = Req::get("/api/v2/pools/?page=2&size=1&is_favorite=F")
        .token(&token)
        .send(&app)
        .await;
    assert_eq!(status, 200);
    let total = body["total"].as_u64().unwrap();
    assert!(total >= 2, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert_eq!(
        (&body["page"], &body["size"], &body["pages"]),
        (&json!(2), &json!(1), &json!(total))
    );
}

#[tokio::test]
async fn a_task_checks_the_token_then_the_task_id_then_ownership() {
    let app = TestApp::spawn().await;
    let token = app.jwt("user-2").await;
    for suffix in ["", "is-done/"] {
        let bad = format!("/api/v2/tasks/xyz/{suffix}");
        assert_eq!(Req::get(&bad).answer(&app).await, denied(), "{bad}");
        assert_eq!(
            Req::get(&bad).token(&token).answer(&app).await,
            (422, vec![item("uuid_parsing", json!(["path", "task_id"]))]),
            "{bad}"
        );
        let theirs = format!("/api/v2/tasks/{USER1_PENDING_TASK}/{suffix}");
        assert_eq!(Req::get(&theirs).token(&token).answer(&app).await.0, 404);
        let mine = format!("/api/v2/tasks/{USER2_FAILED_TASK}/{suffix}");
        assert_eq!(Req::get(&mine).token(&token).answer(&app).await.0, 200);
    }
}

#[tokio::test]
async fn health_and_version_check_nothing_and_ignore_a_bad_token() {
    let app = TestApp::spawn().await;
    for path in ["/api/v2/health/?x=1", "/api/v2/version/?page=0"] {
        assert_eq!(
            Req::get(path).token("garbage").answer(&app).await.0,
            200,
            "{path}"
        );
    }
}

#[tokio::test]
async fn a_known_path_with_another_method_is_a_mock_shaped_405() {
    let app = TestApp::spawn().await;
    let token = app.jwt("astravdi").await;
    let path = format!("/api/v2/pools/{POOL_WIN_1}/connect/");
    let mut put = Req::get(&path).token(&token);
    put.method = Method::PUT;
    let (status, headers, body) = put.send(&app).await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "GET,HEAD,POST");
    assert_eq!(body["detail"][0]["msg"], "Method Not Allowed.");
    let mut delete = Req::get("/api/v2/pools/");
    delete.method = Method::DELETE;
    assert_eq!(delete.answer(&app).await.0, 405);
}

#[tokio::test]
async fn any_other_path_under_the_api_is_a_mock_shaped_404_and_other_paths_are_not() {
    let app = TestApp::spawn().await;
    let token = app.jwt("astravdi").await;
    for path in [
        "/api/v2",
        "/api/v2/",
        "/api/v2/nope",
        "/api/v2/pools",
        "/api/v2/pools/x",
        "/api/v2/users/login",
        "/api/v2//pools/",
    ] {
        for method in [Method::GET, Method::POST, Method::DELETE] {
            let mut req = Req::get(path).token(&token);
            req.method = method.clone();
            let (status, _, body) = req.send(&app).await;
            assert_eq!(status, 404, "{method} {path}");
            assert_eq!(body["detail"][0]["msg"], "Not found.", "{method} {path}");
        }
    }
    // Outside the shim, the server's own 404 (no body), as before.
    let resp = reqwest::get(app.url("/api/v22/pools/")).await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.text().await.unwrap(), "");
}

#[tokio::test]
async fn an_unreadable_sso_poll_is_answered_in_the_shims_shape_like_any_other() {
    // Found by a hostile review: a user code that is not UTF-8 and a repeated `device_code`
    // got axum's plain-text 400s. (`Req::send` checks every error's shape.)
    let app = TestApp::spawn().await;
    let (usual, _, _) = Req::get("/api/v2/users/login/sso/abc/?device_code=a")
        .send(&app)
        .await;
    for path in [
        "/api/v2/users/login/sso/%FF/?device_code=a",
        "/api/v2/users/login/sso/abc/?device_code=a&device_code=b",
    ] {
        let (status, _, _) = Req::get(path).send(&app).await;
        assert_eq!(status, usual, "{path}");
    }
}

#[tokio::test]
async fn the_status_socket_refuses_plain_http_before_it_checks_the_token() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn().await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "GET /api/v2/pools/ws/{ASTRAVDI_ID}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 426"), "{answer}");

    // A handshake: the token first, then the client id.
    let handshake = |cookie: Option<String>, client_id: &str| {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{}/api/v2/pools/ws/{client_id}/", app.addr)
            .into_client_request()
            .unwrap();
        if let Some(c) = cookie {
            req.headers_mut().insert("cookie", c.parse().unwrap());
        }
        async move {
            match tokio_tungstenite::connect_async(req).await {
                Ok(_) => 101,
                Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
                Err(e) => panic!("{e}"),
            }
        }
    };
    assert_eq!(handshake(None, "not-a-uuid").await, 403);
    let token = app.jwt("astravdi").await;
    assert_eq!(
        handshake(Some(format!("JWT {token}")), "not-a-uuid").await,
        403
    );
    assert_eq!(
        handshake(Some(format!("JWT {token}")), ASTRAVDI_ID).await,
        101
    );
}
