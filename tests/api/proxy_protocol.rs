//! Behind an L4 balancer (`proxy_protocol = true`): the PROXY v2 header a trusted balancer
//! opens each connection with names the client for the lockout, the per-address cap and
//! `admin_sessions`; anything else is closed and counted. And `trusted_proxies` entries wide
//! enough to hold clients are warned of. The same against a real HAProxy: tests/haproxy.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::MaybeTlsStream;

use crate::helpers::*;

/// A PROXY protocol v2 header written out byte by byte: the PROXY command for a TCP/IPv4
/// client, or the LOCAL command (a balancer's health check) for none.
pub fn proxy_header(client: Option<SocketAddr>) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    match client {
        Some(SocketAddr::V4(c)) => {
            h.extend([0x21, 0x11, 0, 12]);
            h.extend(c.ip().octets());
            h.extend([127, 0, 0, 1]);
            h.extend(c.port().to_be_bytes());
            h.extend(8080u16.to_be_bytes());
        }
        Some(SocketAddr::V6(_)) => unimplemented!("the tests name IPv4 clients"),
        None => h.extend([0x20, 0x00, 0, 0]),
    }
    h
}

/// A TCP connection from `source` (a loopback address) that has sent `first`.
async fn connect_sending(to: SocketAddr, source: [u8; 4], first: &[u8]) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    let mut tcp = socket.connect(to).await.unwrap();
    tcp.write_all(first).await.unwrap();
    tcp
}

/// A WebSocket through the "balancer" at 127.0.0.1 for `client`, saying `forwarded` in
/// X-Forwarded-For if given.
async fn connect_as(app: &TestApp, client: &str, forwarded: Option<&str>) -> Client {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let header = proxy_header(Some(client.parse().unwrap()));
    let tcp = connect_sending(app.addr, [127, 0, 0, 1], &header).await;
    let mut request = app.ws_url().into_client_request().unwrap();
    if let Some(f) = forwarded {
        request
            .headers_mut()
            .insert("x-forwarded-for", f.parse().unwrap());
    }
    let (ws, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(tcp))
        .await
        .unwrap();
    Client::from(ws)
}

async fn try_auth(c: &mut Client, user: &str, password: &str) -> Value {
    c.rpc("auth", json!({"username": user, "password": password}))
        .await
}

/// The `peer` of each of `username`'s sessions, asked by an admin signed in through the
/// balancer.
async fn peers_of(app: &TestApp, username: &str) -> Vec<String> {
    let mut admin = connect_as(app, "192.0.2.10:1", None).await;
    admin.auth("astravdi", PASSWORD).await;
    let list = admin.rpc("admin_sessions", json!({})).await["args"].clone();
    list.as_array()
        .unwrap()
        .iter()
        .filter(|s| s["username"] == username)
        .map(|s| s["peer"].as_str().unwrap().to_owned())
        .collect()
}

fn behind_the_balancer(c: &mut poolgate::Config) {
    c.trusted_proxies = "127.0.0.1".parse().unwrap();
    c.proxy_protocol = true;
}

/// Everything a connection answers until it is closed (empty: closed without a word).
async fn answer(mut tcp: TcpStream, within: Duration) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, tcp.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the connection is closed within {within:?}");
    String::from_utf8_lossy(&got).into_owned()
}

const GET_HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";

/// 127.0.0.1 (the balancer) carries every client: the lockout counts the client each header
/// names, so 203.0.113.7's wrong passwords lock 203.0.113.7 out and nobody else; the
/// X-Forwarded-For a client writes itself is not believed (the header's client is no trusted
/// proxy); admin_sessions names the client.
#[tokio::test]
async fn the_lockout_and_admin_sessions_see_the_client_the_proxy_header_names() {
    let app = TestApp::spawn_with(|c| {
        behind_the_balancer(c);
        c.lockout_address_attempts = 3;
    })
    .await;
    for i in 0..3 {
        let mut s = connect_as(&app, "203.0.113.7:4000", None).await;
        let reply = try_auth(&mut s, &format!("nobody-{i}"), "x").await;
        assert_eq!(error_code(&reply), 401, "{reply}");
    }
    let mut sprayer = connect_as(&app, "203.0.113.7:4001", Some("198.51.100.1")).await;
    assert_eq!(
        error_code(&try_auth(&mut sprayer, "user-2", PASSWORD).await),
        429,
        "203.0.113.7 is locked, whatever it writes in X-Forwarded-For"
    );
    let mut user = connect_as(&app, "198.51.100.1:4000", Some("203.0.113.99")).await;
    assert_eq!(
        try_auth(&mut user, "user-2", PASSWORD).await["name"],
        "response",
        "another client behind the same balancer is not"
    );
    assert_eq!(peers_of(&app, "user-2").await, vec!["198.51.100.1"]);
}

/// Without a valid header in time, or from a peer not in trusted_proxies, a connection is
/// closed without an answer and counted; the balancer's LOCAL health check is served.
#[tokio::test]
async fn connections_without_a_proxy_header_from_a_trusted_peer_are_closed_and_counted() {
    let app = TestApp::spawn_with(|c| {
        behind_the_balancer(c);
        c.http_header_timeout = Duration::from_millis(500);
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let quick = Duration::from_secs(2);
    // A plain request, a v1 text header, a truncated v2 header.
    let v2 = proxy_header(Some("203.0.113.7:1".parse().unwrap()));
    let v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 1 2\r\n";
    for first in [GET_HEALTHZ, &v1[..], &v2[..20]] {
        let tcp = connect_sending(app.addr, [127, 0, 0, 1], first).await;
        let started = std::time::Instant::now();
        assert_eq!(answer(tcp, quick).await, "", "{first:?}");
        if first.len() > 20 {
            assert!(
                started.elapsed() < Duration::from_millis(400),
                "refused as soon as seen"
            );
        }
    }
    // Silent: closed after http_header_timeout.
    let tcp = connect_sending(app.addr, [127, 0, 0, 1], b"").await;
    let started = std::time::Instant::now();
    assert_eq!(answer(tcp, quick).await, "");
    assert!(started.elapsed() >= Duration::from_millis(400));
    // A valid header from a peer that is not a trusted proxy.
    let mut header = proxy_header(None);
    header.extend(GET_HEALTHZ);
    let tcp = connect_sending(app.addr, [127, 0, 0, 2], &header).await;
    assert_eq!(answer(tcp, quick).await, "");
    // The balancer's health check (LOCAL) is served.
    let tcp = connect_sending(app.addr, [127, 0, 0, 1], &header).await;
    let reply = answer(tcp, quick).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    let metrics = reqwest::get(format!("http://{}/metrics", app.metrics_addr.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("poolgate_connections_refused_total{reason=\"proxy_protocol\"} 5"),
        "{metrics}"
    );
}

/// The balancer itself is never held to max_connections_per_address (all connections come
/// from it); each client the headers name is.
#[tokio::test]
async fn the_per_address_cap_counts_the_client_the_header_names_not_the_balancer() {
    let app = TestApp::spawn_with(|c| {
        behind_the_balancer(c);
        c.max_connections_per_address = 2;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(connect_as(&app, "203.0.113.7:1", None).await);
    }
    let mut third = proxy_header(Some("203.0.113.7:2".parse().unwrap()));
    third.extend(GET_HEALTHZ);
    let tcp = connect_sending(app.addr, [127, 0, 0, 1], &third).await;
    let reply = answer(tcp, Duration::from_secs(2)).await;
    assert!(reply.starts_with("HTTP/1.1 429"), "{reply}");
    for _ in 0..2 {
        held.push(connect_as(&app, "198.51.100.1:1", None).await);
    }
    for c in &mut held {
        assert_eq!(c.rpc("auth", json!({})).await["name"], "error", "open");
    }
    drop(held.remove(0));
    for _ in 0..100 {
        if app.state.admission.open() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        app.state.admission.open(),
        3,
        "a closed socket gives its slot back"
    );
    let mut again = connect_as(&app, "203.0.113.7:3", None).await;
    again.auth("user-2", PASSWORD).await;
}

/// Over TLS the header comes first, then the handshake; the session is the header's client's.
#[tokio::test]
async fn over_tls_the_proxy_header_precedes_the_handshake() {
    let cert = crate::tls::make_cert();
    let app = TestApp::spawn_with(|c| {
        behind_the_balancer(c);
        c.tls_cert = Some(cert.cert.clone());
        c.tls_key = Some(cert.key.clone());
    })
    .await;
    let header = proxy_header(Some("203.0.113.7:1".parse().unwrap()));
    let tcp = connect_sending(app.addr, [127, 0, 0, 1], &header).await;
    let tls = crate::tls::connector(Some(&cert.der), rustls::DEFAULT_VERSIONS)
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let url = format!("wss://localhost:{}/", app.addr.port());
    let (ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let mut user = Client::from_any(ws);
    user.auth("user-2", PASSWORD).await;

    let header = proxy_header(Some("192.0.2.10:1".parse().unwrap()));
    let tcp = connect_sending(app.addr, [127, 0, 0, 1], &header).await;
    let tls = crate::tls::connector(Some(&cert.der), rustls::DEFAULT_VERSIONS)
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let url = format!("wss://localhost:{}/", app.addr.port());
    let (ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let mut admin = Client::from_any(ws);
    admin.auth("astravdi", PASSWORD).await;
    let list = admin.rpc("admin_sessions", json!({})).await["args"].clone();
    let peers: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["username"] == "user-2")
        .map(|s| s["peer"].as_str().unwrap())
        .collect();
    assert_eq!(peers, ["203.0.113.7"]);
    // Straight to the handshake, without a header: closed.
    let tcp = TcpStream::connect(app.addr).await.unwrap();
    let handshake = crate::tls::connector(Some(&cert.der), rustls::DEFAULT_VERSIONS)
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await;
    assert!(handshake.is_err());
}

const BIN: &str = env!("CARGO_BIN_EXE_poolgate");

/// check-config warns of each trusted_proxies entry wider than a /24 or a /64, on the key's
/// line, and still passes; `serve` logs the same at start. proxy_protocol without any trusted
/// proxy is refused.
#[tokio::test]
async fn trusted_proxies_wider_than_a_24_or_a_64_are_warned_of_and_still_pass() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        1.0,
        "trusted_proxies = [\"10.0.0.0/8\", \"10.0.3.0/24\", \"10.0.0.2\", \"fd00::/8\", \"fd00:1:2:3::/64\"]",
    );
    let text = std::fs::read_to_string(&config).unwrap();
    let line = text
        .lines()
        .position(|l| l.starts_with("trusted_proxies"))
        .unwrap()
        + 1;
    let out = std::process::Command::new(BIN)
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a warning does not fail: {err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    let at = format!("warning: {}:{line}:1: trusted_proxies: ", config.display());
    assert_eq!(warnings.len(), 2, "{err}");
    assert!(
        warnings[0].starts_with(&format!("{at}10.0.0.0/8 is wider than a /24: ")),
        "{err}"
    );
    assert!(
        warnings[1].starts_with(&format!("{at}fd00::/8 is wider than a /64: ")),
        "{err}"
    );
    assert!(
        warnings[0].contains("lockout") && warnings[0].contains("\"10.0.0.2\""),
        "says why and what to write instead: {err}"
    );

    let data = dir.path().join("data");
    let server = ServerProcess::serve(&config, &data).await;
    let logged = server.log_lines("is wider than a /24");
    assert_eq!(logged.len(), 1, "{:?}", server.log.lock().unwrap());
    assert!(logged[0].contains("WARN") && logged[0].contains("10.0.0.0/8"));
    server.kill().await;

    std::fs::write(&config, "proxy_protocol = true\n").unwrap();
    let out = std::process::Command::new(BIN)
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("proxy_protocol = true needs trusted_proxies"),
        "{err}"
    );
}

/// A flood of connections without a header is counted, and logged as one line with the
/// count, not one line each.
#[tokio::test]
async fn a_flood_of_connections_without_a_header_is_one_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        1.0,
        "trusted_proxies = [\"127.0.0.1\"]\nproxy_protocol = true",
    );
    let server = ServerProcess::serve(&config, &dir.path().join("data")).await;
    let addr: SocketAddr = server.addr.parse().unwrap();
    for _ in 0..50 {
        let tcp = connect_sending(addr, [127, 0, 0, 1], GET_HEALTHZ).await;
        assert_eq!(answer(tcp, Duration::from_secs(2)).await, "");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines = server.log_lines("without a PROXY header");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("last_peer=127.0.0.1") && lines[0].contains("no PROXY header"),
        "{}",
        lines[0]
    );
    server.kill().await;
}
