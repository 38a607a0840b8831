//! TLS: wss:// and https:// on one port with a certificate made at test time, verified by the
//! client; TLS 1.2 and 1.3; a silent client cannot hold up the others.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::helpers::*;

pub struct Cert {
    _dir: tempfile::TempDir,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

pub fn make_cert() -> Cert {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    Cert {
        der: generated.cert.der().clone(),
        _dir: dir,
        cert,
        key,
    }
}

async fn tls_app(cert: &Cert) -> TestApp {
    TestApp::spawn_with(|c| {
        c.tls_cert = Some(cert.cert.clone());
        c.tls_key = Some(cert.key.clone());
    })
    .await
}

pub fn connector(
    trusted: Option<&CertificateDer<'static>>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(der) = trusted {
        roots.add(der.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

pub async fn tls_connect(
    addr: std::net::SocketAddr,
    trusted: Option<&CertificateDer<'static>>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    connector(trusted, versions)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

#[tokio::test]
async fn wss_serves_the_rpc_protocol_to_a_verifying_client() {
    let cert = make_cert();
    let app = tls_app(&cert).await;
    let tls = tls_connect(app.addr, Some(&cert.der), rustls::DEFAULT_VERSIONS)
        .await
        .unwrap();
    let (ws, _) = tokio_tungstenite::client_async("wss://localhost/", tls)
        .await
        .unwrap();
    let mut c = Client::from_any(ws);
    let reply = c
        .rpc(
            "auth",
            json!({"username": "astravdi", "password": PASSWORD}),
        )
        .await;
    assert_eq!(reply["name"], "response", "{reply}");
}

#[tokio::test]
async fn https_serves_the_rest_shim_over_tls_1_2_and_1_3() {
    let cert = make_cert();
    let app = tls_app(&cert).await;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut tls = tls_connect(app.addr, Some(&cert.der), &[version])
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.protocol_version(), Some(version.version));
        tls.write_all(
            b"GET /api/v2/health/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut resp = String::new();
        tls.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.contains("\"ok\":true"));
    }
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_is_refused_and_plain_text_gets_nothing() {
    let cert = make_cert();
    let app = tls_app(&cert).await;
    assert!(
        tls_connect(app.addr, None, rustls::DEFAULT_VERSIONS)
            .await
            .is_err()
    );
    assert!(
        tokio_tungstenite::connect_async(app.ws_url())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_silent_client_does_not_hold_up_the_handshakes_of_others() {
    let cert = make_cert();
    let app = tls_app(&cert).await;
    let _silent: Vec<TcpStream> =
        futures_util::future::join_all((0..20).map(|_| TcpStream::connect(app.addr)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    let started = std::time::Instant::now();
    tokio::time::timeout(
        Duration::from_secs(3),
        tls_connect(app.addr, Some(&cert.der), rustls::DEFAULT_VERSIONS),
    )
    .await
    .expect("handshake not blocked")
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn serve_takes_tls_cert_and_key_flags() {
    let cert = make_cert();
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--tls-cert",
        cert.cert.to_str().unwrap(),
        "--tls-key",
        cert.key.to_str().unwrap(),
    ])
    .await;
    let addr = server.addr.parse().unwrap();
    let tls = tls_connect(addr, Some(&cert.der), rustls::DEFAULT_VERSIONS)
        .await
        .unwrap();
    let (ws, _) = tokio_tungstenite::client_async("wss://localhost/", tls)
        .await
        .unwrap();
    let mut c = Client::from_any(ws);
    assert_eq!(c.rpc("identify", json!({})).await["name"], "response");
}

/// One request over a fresh TLS connection: the whole response as text.
async fn https_get(app: &TestApp, cert: &Cert, path: &str, accept: &str) -> String {
    let mut tls = tls_connect(app.addr, Some(&cert.der), rustls::DEFAULT_VERSIONS)
        .await
        .unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    let _ = tls.read_to_end(&mut resp).await;
    String::from_utf8_lossy(&resp).into_owned()
}

#[tokio::test]
async fn every_response_over_tls_carries_strict_transport_security() {
    let cert = make_cert();
    let app = tls_app(&cert).await;
    for (path, accept, status) in [
        ("/api/v2/health/", "*/*", "200"),
        ("/api/v2/pools/", "*/*", "403"),
        ("/", "*/*", "426"),
        ("/", "text/html", "200"),
        ("/portal/app.js", "*/*", "200"),
        ("/docs", "text/html", "200"),
        ("/no/such/page", "*/*", "404"),
    ] {
        let resp = https_get(&app, &cert, path, accept).await;
        assert!(
            resp.starts_with(&format!("HTTP/1.1 {status}")),
            "{path}: {resp:.200}"
        );
        let head = resp.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
        assert!(
            head.contains("\r\nstrict-transport-security: max-age=31536000\r\n"),
            "{path}: {head}"
        );
    }
    // Over plain HTTP the header would mean nothing (browsers ignore it) and is not sent.
    let plain = TestApp::spawn().await;
    let resp = reqwest::get(plain.url("/api/v2/health/")).await.unwrap();
    assert!(resp.headers().get("strict-transport-security").is_none());
}

/// `poolgate admin` against `wss://localhost:PORT/` with the server's self-signed certificate:
/// status, stdout, stderr.
async fn admin_over_wss(
    app: &TestApp,
    ca_file: Option<&std::path::Path>,
) -> (bool, String, String) {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_poolgate"));
    command
        .args(["admin", "--server"])
        .arg(format!("wss://localhost:{}/", app.addr.port()))
        .args(["--user", "astravdi", "--password-stdin", "--token-file"])
        .arg(dir.path().join("token"))
        // Whatever the environment asks for, a failure is one short message.
        .env("RUST_BACKTRACE", "1")
        .env_remove("POOLGATE_CA_FILE")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(file) = ca_file {
        command.arg("--ca-file").arg(file);
    }
    let mut child = command.arg("sessions").spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .await
        .unwrap();
    drop(input);
    let out = tokio::time::timeout(REPLY_TIMEOUT, child.wait_with_output())
        .await
        .expect("admin finishes")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The client commands over `wss://` in the binary built with the tests (whose
/// dev-dependencies link a second rustls crypto provider): no panic; a private CA is trusted
/// with `--ca-file`; without it, one clear error, no backtrace.
#[tokio::test]
async fn the_client_commands_trust_a_private_ca_given_with_ca_file() {
    let cert = make_cert();
    let app = tls_app(&cert).await;
    let (ok, stdout, stderr) = admin_over_wss(&app, Some(&cert.cert)).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("astravdi"), "the sessions: {stdout}");

    let (ok, _, stderr) = admin_over_wss(&app, None).await;
    assert!(!ok);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.starts_with("error: cannot connect to wss://localhost:"),
        "{stderr}"
    );
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");
    assert!(!stderr.contains("stack backtrace"), "{stderr}");
    assert!(stderr.lines().count() <= 4, "{stderr}");
}
