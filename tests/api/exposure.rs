//! What the server lets others see: its state files (private whatever the umask), the
//! cookie-authenticated status socket (only from allowed origins), and `/metrics` (on a
//! listener of its own when configured).

use std::net::SocketAddr;

use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::*;

/// Opens the status socket with the given `Origin` (none: no header); the refusal's status and
/// body on failure.
async fn status_socket_from(
    app: &TestApp,
    jwt: &str,
    origin: Option<&str>,
) -> Result<(), (u16, String)> {
    let mut req = format!("ws://{}/api/v2/pools/ws/{ASTRAVDI_ID}/", app.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("cookie", format!("JWT {jwt}").parse().unwrap());
    if let Some(origin) = origin {
        req.headers_mut().insert("origin", origin.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => Ok(()),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err((
            resp.status().as_u16(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        )),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn the_status_socket_refuses_a_foreign_origin() {
    let app = TestApp::spawn().await;
    let jwt = app.jwt("astravdi").await;
    let (status, body) = status_socket_from(&app, &jwt, Some("https://evil.example"))
        .await
        .expect_err("a page of another site may not use the user's cookie");
    assert_eq!(status, 403);
    assert!(body.contains("Origin not allowed"), "{body}");
    for opaque in ["null", "not an origin"] {
        let (status, _) = status_socket_from(&app, &jwt, Some(opaque))
            .await
            .expect_err("opaque origins are refused");
        assert_eq!(status, 403);
    }
    // A page served by this very host, and clients that send no Origin, are let in.
    let own = format!("http://{}", app.addr);
    status_socket_from(&app, &jwt, Some(&own)).await.unwrap();
    status_socket_from(&app, &jwt, None).await.unwrap();
}

#[tokio::test]
async fn the_status_socket_accepts_exactly_the_configured_origins() {
    let app = TestApp::spawn_with(|c| {
        c.allowed_origins = vec!["https://desktops.example.com".into()];
    })
    .await;
    let jwt = app.jwt("astravdi").await;
    status_socket_from(&app, &jwt, Some("https://desktops.example.com"))
        .await
        .unwrap();
    status_socket_from(&app, &jwt, Some("https://DESKTOPS.example.com:443"))
        .await
        .unwrap();
    for refused in [
        "http://desktops.example.com",
        "https://desktops.example.com:8443",
        "https://evil.example",
        // The list replaces the same-host default.
        &format!("http://{}", app.addr),
    ] {
        let (status, body) = status_socket_from(&app, &jwt, Some(refused))
            .await
            .expect_err(refused);
        assert_eq!(status, 403, "{refused}");
        assert!(body.contains("allowed_origins"), "{body}");
    }
}

#[tokio::test]
async fn an_origin_list_that_does_not_parse_stops_start_up() {
    let mut config = demo_config();
    config.allowed_origins = vec!["desktops.example.com".into()];
    let err = config.validate().unwrap_err();
    assert!(format!("{err:#}").contains("scheme://host"), "{err:#}");
}

#[tokio::test]
async fn metrics_can_be_served_on_their_own_listener_and_then_not_on_the_main_port() {
    let app =
        TestApp::spawn_with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let metrics: SocketAddr = app.metrics_addr.expect("a metrics listener");
    let main = reqwest::get(app.url("/metrics")).await.unwrap();
    assert_eq!(main.status(), 404, "not on the main port any more");
    let resp = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("openmetrics")
    );
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("poolgate_connections_open")
    );
    // Health checks answer on both.
    assert_eq!(
        reqwest::get(app.url("/healthz")).await.unwrap().status(),
        200
    );
    let health = reqwest::get(format!("http://{metrics}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // The metrics listener stops with the server.
    app.stop().await;
    assert!(
        reqwest::get(format!("http://{metrics}/metrics"))
            .await
            .is_err()
    );
}

/// A plain `GET path` on a fresh connection from `source`; the status line.
async fn get_from(source: [u8; 4], to: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    let mut stream = socket.connect(to).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(REPLY_TIMEOUT, stream.read_to_end(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    answer.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn silent_sockets_from_one_address_cannot_starve_the_metrics_health_check() {
    use tokio::io::AsyncReadExt;
    let app = TestApp::spawn_with(|c| {
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        c.http_header_timeout = std::time::Duration::from_secs(1);
    })
    .await;
    let metrics: SocketAddr = app.metrics_addr.expect("a metrics listener");
    let mut silent = Vec::new();
    for _ in 0..64 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        silent.push(socket.connect(metrics).await.unwrap());
    }
    // Another address is served at once, while the 64 are held.
    let status = get_from([127, 0, 0, 2], metrics, "/healthz").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "another address's health check");
    // The silent address itself got its share and no more: the rest were told why.
    let status = get_from([127, 0, 0, 1], metrics, "/healthz").await;
    assert_eq!(status, "HTTP/1.1 429 Too Many Requests");
    // The header read timeout closes the silent sockets that were admitted.
    let started = std::time::Instant::now();
    for stream in &mut silent {
        let mut buf = vec![0u8; 1024];
        loop {
            let read = tokio::time::timeout(REPLY_TIMEOUT, stream.read(&mut buf))
                .await
                .expect("closed within the header timeout");
            if !matches!(read, Ok(n) if n > 0) {
                break;
            }
        }
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "closed after {:?}",
        started.elapsed()
    );
    assert_eq!(
        get_from([127, 0, 0, 1], metrics, "/healthz").await,
        "HTTP/1.1 200 OK",
        "the address is served again once its silent sockets are closed"
    );
    app.stop().await;
}

#[tokio::test]
async fn serve_binds_metrics_listen_and_logs_where() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = config_file(
        dir.path(),
        1.0,
        &format!("metrics_listen = \"127.0.0.1:{port}\""),
    );
    let server = ServerProcess::serve(&config, &dir.path().join("data")).await;
    let resp = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let main = reqwest::get(format!("http://{}/metrics", server.addr))
        .await
        .unwrap();
    assert_eq!(main.status(), 404);
    let log = server.log.lock().unwrap().clone();
    assert!(
        log.contains(&format!(
            "metrics listening (http://127.0.0.1:{port}/metrics)"
        )),
        "{log}"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn state_files_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A data directory and a secret left world-readable (by hand, or by an older version).
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let secret = data.join("jwt-secret");
    std::fs::write(&secret, hex::encode([7u8; 32])).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();

    // umask 000: everything created without an explicit mode would be 0666 / 0777.
    let mut command = tokio::process::Command::new("sh");
    command
        .args(["-c", "umask 000 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_poolgate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .stderr(std::process::Stdio::piped())
        .env("RUST_LOG", "poolgate=info")
        .env("NO_COLOR", "1")
        .kill_on_drop(true);
    let server = ServerProcess::start_command(command).await;
    // Write to the store: sessions and tasks go through the WAL.
    let mut c = server.connect().await;
    c.auth("astravdi", PASSWORD).await;
    let reply = c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await;
    assert_eq!(reply["name"], "response", "{reply}");

    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "the data directory");
    let mut names: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    for expected in [
        "jwt-secret",
        "poolgate.lock",
        "poolgate.sqlite3",
        "poolgate.sqlite3-shm",
        "poolgate.sqlite3-wal",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    for name in &names {
        assert_eq!(mode(&data.join(name)), 0o600, "{name} (of {names:?})");
    }
}

#[tokio::test]
async fn the_docs_page_runs_only_its_own_scripts_and_cannot_be_framed() {
    let app = TestApp::spawn().await;
    let resp = reqwest::get(app.url("/docs")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let csp = header("content-security-policy");
    assert_eq!(header("x-frame-options"), "DENY");
    let script_src = csp
        .split(';')
        .map(str::trim)
        .find(|d| d.starts_with("script-src"))
        .unwrap_or_else(|| panic!("no script-src: {csp}"));
    assert_eq!(script_src, "script-src 'self'", "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let page = resp.text().await.unwrap();
    // Every script is a file of this server's (no inline script), and every asset is served
    // from here, under the same policy: nothing from a CDN.
    let mut assets = Vec::new();
    for part in page.split('<').skip(1) {
        let tag = part.split('>').next().unwrap();
        if tag.starts_with("script") {
            let src = tag.split("src=\"").nth(1).expect("a script with a src");
            assets.push(src.split('"').next().unwrap().to_owned());
        }
        if tag.starts_with("link") {
            let href = tag.split("href=\"").nth(1).unwrap();
            assets.push(href.split('"').next().unwrap().to_owned());
        }
    }
    assert_eq!(assets.len(), 3, "{page}");
    for asset in assets {
        assert!(asset.starts_with("/docs/"), "{asset}");
        let resp = reqwest::get(app.url(&asset)).await.unwrap();
        assert_eq!(resp.status(), 200, "{asset}");
        assert_eq!(resp.headers()["content-security-policy"], csp.as_str());
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    }
}
