//! What a page of another site can make a visitor's browser do: open the RPC socket (refused
//! unless its `Origin` is allowed) or post a sign-in without a JSON `Content-Type` (refused
//! like any non-JSON body); and what a page whose name was rebound to this server's address
//! (DNS rebinding: its `Origin` and `Host` agree) can do: nothing, unless the name is one the
//! server answers browsers on.

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::*;

/// Opens the RPC socket with the given `Origin` (none: no header); the refusal's status and
/// body on failure.
async fn rpc_socket_from(app: &TestApp, origin: Option<&str>) -> Result<Client, (u16, String)> {
    socket_as(app, "/", None, origin, None).await
}

/// Opens the socket at `path` as a browser that reached the server under the name `host`
/// (none: its address), with the given `Origin` and `Cookie`.
async fn socket_as(
    app: &TestApp,
    path: &str,
    host: Option<&str>,
    origin: Option<&str>,
    cookie: Option<&str>,
) -> Result<Client, (u16, String)> {
    let mut req = format!("ws://{}{path}", app.addr)
        .into_client_request()
        .unwrap();
    for (name, value) in [("host", host), ("origin", origin), ("cookie", cookie)] {
        if let Some(value) = value {
            req.headers_mut().insert(name, value.parse().unwrap());
        }
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(Client::from(ws)),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err((
            resp.status().as_u16(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        )),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn a_cross_site_websocket_is_refused() {
    let app = TestApp::spawn().await;
    let Err((status, body)) = rpc_socket_from(&app, Some("https://evil.example")).await else {
        panic!("a page of another site opened the RPC socket");
    };
    assert_eq!(status, 403);
    assert!(body.contains("Origin not allowed"), "{body}");
    for opaque in ["null", "not an origin"] {
        let refused = rpc_socket_from(&app, Some(opaque)).await.err();
        assert_eq!(refused.map(|r| r.0), Some(403), "{opaque}");
    }
    // The portal's own page (same origin as the Host it asked) and clients without an Origin
    // (the CLI, wscat, python websockets, thin clients) are served as before.
    let own = format!("http://{}", app.addr);
    for origin in [Some(own.as_str()), None] {
        let mut client = rpc_socket_from(&app, origin).await.unwrap();
        assert_eq!(client.rpc("identify", json!({})).await["name"], "response");
        client.auth("astravdi", PASSWORD).await;
    }
}

#[tokio::test]
async fn the_rpc_socket_accepts_the_configured_origins() {
    let app = TestApp::spawn_with(|c| {
        c.allowed_origins = vec!["https://desktops.example.com".into()];
    })
    .await;
    let mut client = rpc_socket_from(&app, Some("https://desktops.example.com"))
        .await
        .unwrap();
    assert_eq!(client.rpc("identify", json!({})).await["name"], "response");
    let refused = rpc_socket_from(&app, Some("https://evil.example"))
        .await
        .err();
    let (status, body) = refused.expect("not in the list");
    assert_eq!(status, 403);
    assert!(body.contains("allowed_origins"), "{body}");
}

/// Posts a sign-in with the given `Content-Type` (none: no header).
async fn login_with(app: &TestApp, content_type: Option<&str>, password: &str) -> (u16, Value) {
    let body = json!({"username": "astravdi", "password": password, "ldap": false});
    let mut req = reqwest::Client::new()
        .post(app.url("/api/v2/users/login/"))
        .body(body.to_string());
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn a_sign_in_without_a_json_content_type_is_refused_before_it_counts() {
    let app = TestApp::spawn_with(|c| c.lockout_attempts = 2).await;
    // What a page of another site can post without the browser asking first: no type (a
    // typeless Blob), a form's types. Wrong passwords, more than the lockout allows.
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        for _ in 0..3 {
            let (status, body) = login_with(&app, content_type, "wrong").await;
            assert_eq!(status, 422, "{content_type:?}");
            assert_eq!(body["detail"][0]["type"], "model_attributes_type");
            assert_eq!(body["detail"][0]["loc"], json!(["body"]));
        }
    }
    // None of them reached the sign-in: the user is not locked out.
    let (status, body) = login_with(&app, Some("application/json"), PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["data"]["access_token"].is_string());
}

/// Posts the right password for astravdi as JSON, with the given `Host` and `Origin`.
async fn login_as(app: &TestApp, host: &str, origin: Option<&str>) -> (u16, Value) {
    let body = json!({"username": "astravdi", "password": PASSWORD, "ldap": false});
    let mut req = reqwest::Client::new()
        .post(app.url("/api/v2/users/login/"))
        .header("host", host)
        .json(&body);
    if let Some(origin) = origin {
        req = req.header("origin", origin);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn a_page_rebound_to_this_server_gets_nothing_from_the_sockets_or_the_sign_in() {
    let app = TestApp::spawn().await;
    let port = app.addr.port();
    let host = format!("evil.example:{port}");
    let origin = format!("http://evil.example:{port}");
    let status_path = "/api/v2/pools/ws/7e1459c2-3e19-4c3d-98f5-8344d44ae6f4/";
    let cookie = format!("JWT {}", app.jwt("astravdi").await);
    for (path, cookie) in [("/", None), (status_path, Some(cookie.as_str()))] {
        let refused = socket_as(&app, path, Some(&host), Some(&origin), cookie).await;
        let (status, body) = refused.err().expect("a rebound page opened {path}");
        assert_eq!(status, 403, "{path}");
        assert!(body.contains("Host not allowed"), "{path}: {body}");
        assert!(body.contains("server_names"), "{path}: {body}");
    }
    let (status, body) = login_as(&app, &host, Some(&origin)).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["detail"][0]["msg"]
            .as_str()
            .unwrap()
            .contains("server_names"),
        "{body}"
    );
    // Clients that are no browser send no Origin, whatever name they used: served as before.
    let (status, body) = login_as(&app, &host, None).await;
    assert_eq!(status, 200, "{body}");
    let mut client = socket_as(&app, "/", Some(&host), None, None).await.unwrap();
    assert_eq!(client.rpc("identify", json!({})).await["name"], "response");
}

#[tokio::test]
async fn browsers_are_answered_on_ip_addresses_localhost_and_the_configured_server_names() {
    let app = TestApp::spawn_with(|c| {
        c.server_names = vec!["desktops.example.com".into()];
    })
    .await;
    let port = app.addr.port();
    for name in [
        "127.0.0.1",
        "localhost",
        "desktops.example.com",
        "DESKTOPS.example.com",
    ] {
        let host = format!("{name}:{port}");
        let origin = format!("http://{name}:{port}");
        let mut client = socket_as(&app, "/", Some(&host), Some(&origin), None)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(client.rpc("identify", json!({})).await["name"], "response");
        // The page of a TLS-terminating proxy in front of this plain listener is its own too.
        let proxied = format!("https://{name}:{port}");
        assert!(
            socket_as(&app, "/", Some(&host), Some(&proxied), None)
                .await
                .is_ok(),
            "{name} behind a TLS proxy"
        );
        let (status, body) = login_as(&app, &host, Some(&origin)).await;
        assert_eq!(status, 200, "{name}: {body}");
    }
    // Any other name is still refused, and so is a listed name with another site's Origin.
    let refused = socket_as(
        &app,
        "/",
        Some(&format!("other.example.com:{port}")),
        Some(&format!("http://other.example.com:{port}")),
        None,
    )
    .await;
    assert_eq!(refused.err().map(|e| e.0), Some(403));
    let refused = socket_as(
        &app,
        "/",
        Some(&format!("desktops.example.com:{port}")),
        Some("https://evil.example"),
        None,
    )
    .await;
    assert_eq!(refused.err().map(|e| e.0), Some(403));
}

#[tokio::test]
async fn the_hosts_of_allowed_origins_are_answered_too() {
    let app = TestApp::spawn_with(|c| {
        c.allowed_origins = vec!["https://desktops.example.com".into()];
    })
    .await;
    let mut client = socket_as(
        &app,
        "/",
        Some("desktops.example.com"),
        Some("https://desktops.example.com"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(client.rpc("identify", json!({})).await["name"], "response");
    let refused = socket_as(
        &app,
        "/",
        Some("evil.example"),
        Some("https://desktops.example.com"),
        None,
    )
    .await;
    assert_eq!(refused.err().map(|e| e.0), Some(403));
}
