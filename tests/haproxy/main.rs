//! `proxy_protocol = true` behind a real HAProxy (Debian: `haproxy`), under a harness that can
//! tell "skipped" from "passed" (libtest-mimic, `harness = false`, like the LDAP cases).
//!
//! Each case starts its own `haproxy` in `mode tcp` from a generated config: it listens on
//! 127.0.0.2, clients connect to it from 127.0.0.3 (and .5), and it opens each connection to
//! poolgate (from 127.0.0.1, the one trusted proxy) with `send-proxy-v2`, health-checking it
//! every 100 ms. Without `haproxy` every case prints one line saying so and counts as
//! *ignored*, never as passed; `POOLGATE_TEST_REQUIRE_HAPROXY=1` (set by `.ci/run`, which
//! installs it) turns that into a failure.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use libtest_mimic::{Arguments, Trial};
use poolgate_test_common::{harness, helpers};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::MaybeTlsStream;

use harness::{Case, run, selected};
use helpers::*;

/// Where HAProxy listens for clients, and where they come from.
const FRONT: [u8; 4] = [127, 0, 0, 2];
const CLIENT: [u8; 4] = [127, 0, 0, 3];
const OTHER_CLIENT: [u8; 4] = [127, 0, 0, 5];

/// HAProxy on the `PATH`, or in Debian's `/usr/sbin` (not on every `PATH`).
fn haproxy_program() -> Option<PathBuf> {
    harness::on_path_or("haproxy", &["/usr/sbin"])
}

/// A running HAProxy in front of one poolgate; stopped on drop.
struct Haproxy {
    front: SocketAddr,
    _dir: tempfile::TempDir,
    _child: tokio::process::Child,
}

impl Haproxy {
    /// Starts HAProxy passing TCP from `FRONT` to `backend` with `send-proxy-v2` and health
    /// checks, and waits until a request through it is answered.
    async fn start(backend: SocketAddr, tls: bool) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let front = SocketAddr::from((FRONT, free_port()));
        let config = format!(
            "global\n    maxconn 200\n\
             defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30s\n    \
             timeout server 30s\n\
             frontend poolgate\n    bind {front}\n    default_backend poolgate\n\
             backend poolgate\n    server s1 {backend} send-proxy-v2 check inter 100ms\n"
        );
        let file = dir.path().join("haproxy.cfg");
        std::fs::write(&file, config).unwrap();
        let child = tokio::process::Command::new(haproxy_program().unwrap())
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdout(std::process::Stdio::null())
            .stderr(if std::env::var_os("TEST_LOG").is_some() {
                std::process::Stdio::inherit()
            } else {
                std::process::Stdio::null()
            })
            .kill_on_drop(true)
            .spawn()
            .expect("haproxy starts");
        let haproxy = Haproxy {
            front,
            _dir: dir,
            _child: child,
        };
        if !tls {
            haproxy.wait_until_it_answers().await;
        } else {
            haproxy.wait_until_it_listens().await;
        }
        haproxy
    }

    async fn wait_until_it_listens(&self) {
        for _ in 0..100 {
            if TcpStream::connect(self.front).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("haproxy does not listen on {}", self.front);
    }

    /// Until `GET /healthz` through HAProxy is answered 200 (it listens before its server is
    /// known to be up).
    async fn wait_until_it_answers(&self) {
        self.wait_until_it_listens().await;
        for _ in 0..100 {
            if self.healthz().await.starts_with("HTTP/1.1 200") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("poolgate does not answer through haproxy");
    }

    async fn healthz(&self) -> String {
        let Ok(mut tcp) = self.connect_from(CLIENT).await else {
            return String::new();
        };
        let request = b"GET /healthz HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
        if tcp.write_all(request).await.is_err() {
            return String::new();
        }
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(REPLY_TIMEOUT, tcp.read_to_end(&mut reply)).await;
        String::from_utf8_lossy(&reply).into_owned()
    }

    /// A TCP connection to HAProxy from `source`.
    async fn connect_from(&self, source: [u8; 4]) -> std::io::Result<TcpStream> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((source, 0)))?;
        socket.connect(self.front).await
    }

    /// A WebSocket through HAProxy from `source`.
    async fn ws_from(&self, source: [u8; 4]) -> Client {
        let tcp = self.connect_from(source).await.unwrap();
        let url = format!("ws://{}/", self.front);
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp))
            .await
            .unwrap();
        Client::from(ws)
    }
}

/// poolgate behind the HAProxy at 127.0.0.1 (where its connections to 127.0.0.1 come from).
async fn app_behind_haproxy(edit: impl FnOnce(&mut poolgate::Config)) -> TestApp {
    TestApp::spawn_with(|c| {
        c.trusted_proxies = "127.0.0.1".parse().unwrap();
        c.proxy_protocol = true;
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        edit(c);
    })
    .await
}

/// The `peer` of each of `username`'s sessions.
async fn peers_of(admin: &mut Client, username: &str) -> Vec<String> {
    let list = admin.rpc("admin_sessions", json!({})).await["args"].clone();
    list.as_array()
        .unwrap()
        .iter()
        .filter(|s| s["username"] == username)
        .map(|s| s["peer"].as_str().unwrap().to_owned())
        .collect()
}

async fn refused_for_proxy_protocol(app: &TestApp) -> String {
    let metrics = reqwest::get(format!("http://{}/metrics", app.metrics_addr.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find(|l| l.contains("reason=\"proxy_protocol\""))
        .unwrap_or("none")
        .to_owned()
}

/// 127.0.0.3's wrong passwords, carried by HAProxy, lock out 127.0.0.3 and not 127.0.0.5
/// behind the same HAProxy; admin_sessions names the client; HAProxy's health checks (LOCAL)
/// are never refused.
async fn poolgate_sees_the_client_haproxy_carries() {
    let app = app_behind_haproxy(|c| c.lockout_address_attempts = 3).await;
    let haproxy = Haproxy::start(app.addr, false).await;
    for i in 0..3 {
        let mut s = haproxy.ws_from(CLIENT).await;
        let reply = s
            .rpc(
                "auth",
                json!({"username": format!("nobody-{i}"), "password": "x"}),
            )
            .await;
        assert_eq!(error_code(&reply), 401, "{reply}");
    }
    let mut locked = haproxy.ws_from(CLIENT).await;
    let reply = locked
        .rpc("auth", json!({"username": "user-2", "password": PASSWORD}))
        .await;
    assert_eq!(error_code(&reply), 429, "127.0.0.3 is locked: {reply}");
    let mut user = haproxy.ws_from(OTHER_CLIENT).await;
    user.auth("user-2", PASSWORD).await;
    let mut admin = haproxy.ws_from(OTHER_CLIENT).await;
    admin.auth("astravdi", PASSWORD).await;
    assert_eq!(peers_of(&mut admin, "user-2").await, ["127.0.0.5"]);
    // Health checks every 100 ms have been running all along.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(refused_for_proxy_protocol(&app).await, "none");
}

/// HAProxy passes TLS through (mode tcp): the header comes first, the handshake is
/// poolgate's, and the session is the client's.
async fn tls_passes_through_haproxy_after_the_header() {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let app = app_behind_haproxy(|c| {
        c.tls_cert = Some(cert.clone());
        c.tls_key = Some(key.clone());
    })
    .await;
    let haproxy = Haproxy::start(app.addr, true).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(generated.cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let mut clients = Vec::new();
    for (source, who) in [(CLIENT, "user-2"), (OTHER_CLIENT, "astravdi")] {
        // HAProxy may still hold the server down for a moment after it listens.
        let mut tls = None;
        for _ in 0..100 {
            let tcp = haproxy.connect_from(source).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            if let Ok(t) = connector.connect(name, tcp).await {
                tls = Some(t);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let url = format!("wss://localhost:{}/", haproxy.front.port());
        let (ws, _) = tokio_tungstenite::client_async(url, tls.expect("a TLS handshake"))
            .await
            .unwrap();
        let mut client = Client::from_any(ws);
        client.auth(who, PASSWORD).await;
        clients.push(client);
    }
    let list = clients[1].rpc("admin_sessions", json!({})).await["args"].clone();
    let peers: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["username"] == "user-2")
        .map(|s| s["peer"].as_str().unwrap())
        .collect();
    assert_eq!(peers, ["127.0.0.3"]);
    assert_eq!(refused_for_proxy_protocol(&app).await, "none");
}

fn cases() -> Vec<(&'static str, Case)> {
    vec![
        (
            "haproxy::poolgate_sees_the_client_haproxy_carries_with_send_proxy_v2",
            || Box::pin(poolgate_sees_the_client_haproxy_carries()),
        ),
        (
            "haproxy::tls_passes_through_haproxy_after_the_proxy_header",
            || Box::pin(tls_passes_through_haproxy_after_the_header()),
        ),
    ]
}

/// Why the cases cannot run here, with how to make them run; `None` if they can.
fn missing() -> Option<String> {
    haproxy_program().is_none().then(|| {
        "no haproxy on the PATH or in /usr/sbin; to run it: apt-get install haproxy".to_owned()
    })
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let missing = missing();
    let required = std::env::var("POOLGATE_TEST_REQUIRE_HAPROXY").is_ok_and(|v| v == "1");
    let mut trials = Vec::new();
    for (name, case) in cases() {
        let trial = match &missing {
            None => Trial::test(name, move || run(case)),
            Some(why) if required => {
                let why = why.clone();
                Trial::test(name, move || {
                    Err(format!("POOLGATE_TEST_REQUIRE_HAPROXY=1, but {why}").into())
                })
            }
            Some(why) => {
                if !args.list && selected(&args, name) {
                    println!("skipped haproxy case {name}: {why}");
                }
                Trial::test(name, move || run(case)).with_ignored_flag(true)
            }
        };
        trials.push(trial);
    }
    libtest_mimic::run(&args, trials).exit_code()
}
