//! What a page of another site can make a visitor's browser do: open the RPC socket (refused
//! unless its `Origin` is allowed) or post a sign-in without a JSON `Content-Type` (refused
//! like any non-JSON body).

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::*;

/// Opens the RPC socket with the given `Origin` (none: no header); the refusal's status and
/// body on failure.
async fn rpc_socket_from(app: &TestApp, origin: Option<&str>) -> Result<Client, (u16, String)> {
    let mut req = app.ws_url().into_client_request().unwrap();
    if let Some(origin) = origin {
        req.headers_mut().insert("origin", origin.parse().unwrap());
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
