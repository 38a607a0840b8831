//! Shared test helpers: a server on 127.0.0.1:0 with the demo dataset, and a WebSocket client.

use std::net::SocketAddr;
use std::sync::Once;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use poolgate::store::StateUrl;
use poolgate::{AppState, Application, Config, ServerHandle};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const PASSWORD: &str = "Bazalt1!";

/// The address test clients connect from, for calls made on the state directly.
pub const LOCAL: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// The demo admin's user id (the mock's).
pub const ASTRAVDI_ID: &str = "7e1459c2-3e19-4c3d-98f5-8344d44ae6f4";
/// Longest any single reply may take in a test before it counts as a failure.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

static TRACING: Once = Once::new();

/// Logs stay quiet unless TEST_LOG is set.
fn init_tracing() {
    TRACING.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter("poolgate=debug")
                .with_test_writer()
                .init();
        }
    });
}

/// A server built by [`Application::build`], as `poolgate serve` builds it, running on a task.
pub struct TestApp {
    pub addr: SocketAddr,
    /// The metrics listener's address, when the config has `metrics_listen`.
    pub metrics_addr: Option<SocketAddr>,
    pub state: AppState,
    pub server: ServerHandle,
    run: Option<JoinHandle<anyhow::Result<()>>>,
    /// Remove the data directory on drop (not when the test restarts the app on it).
    cleanup: bool,
}

/// The demo dataset on an ephemeral port, with its own data directory.
pub fn demo_config() -> Config {
    let mut config = Config::demo();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let id = uuid::Uuid::new_v4().simple().to_string();
    config.data_dir = std::env::temp_dir().join(format!("poolgate-test-{id}"));
    // The same suite runs against each backend: POOLGATE_TEST_STATE=memory | sqlite: |
    // redis://127.0.0.1:PORT (each test app then gets its own key prefix).
    config.state = std::env::var("POOLGATE_TEST_STATE").map_or_else(
        |_| StateUrl::default(),
        |s| s.parse().expect("POOLGATE_TEST_STATE names a state"),
    );
    config.state_prefix = format!("pgtest-{id}");
    config
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(edit: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = demo_config();
        edit(&mut config);
        Self::spawn_config(config).await
    }

    pub async fn spawn_config(config: Config) -> TestApp {
        Self::spawn_with_provisioners(config, Default::default()).await
    }

    /// Like [`TestApp::spawn_config`], with extra provisioners by name.
    pub async fn spawn_with_provisioners(
        config: Config,
        extra: std::collections::HashMap<
            String,
            std::sync::Arc<dyn poolgate::provision::Provisioner>,
        >,
    ) -> TestApp {
        init_tracing();
        let app = Application::build_with_provisioners(config, extra)
            .await
            .expect("valid test config");
        TestApp {
            addr: app.local_addr(),
            metrics_addr: app.metrics_addr(),
            state: app.state().clone(),
            server: app.handle(),
            run: Some(tokio::spawn(app.run_until_stopped())),
            cleanup: true,
        }
    }

    /// Stops the app (keeping its data) and starts a new one on the same config and state.
    pub async fn restart(self) -> TestApp {
        self.restart_with(|_| {}).await
    }

    /// The same, with `edit` applied to the config first (an administrator's change).
    pub async fn restart_with(self, edit: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = self.stop_keeping_data().await;
        edit(&mut config);
        Self::spawn_config(config).await
    }

    /// Stops the app, keeping its data directory, and returns its config: the test starts it
    /// again when it likes (`spawn_config`), on the same port if the config names one.
    pub async fn stop_keeping_data(mut self) -> Config {
        self.cleanup = false;
        let config = self.state.config.clone();
        self.stop().await;
        config
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Signs in over REST and returns the JWT.
    pub async fn jwt(&self, username: &str) -> String {
        let resp = reqwest::Client::new()
            .post(self.url("/api/v2/users/login/"))
            .json(&json!({"username": username, "password": PASSWORD, "ldap": false}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        body["data"]["access_token"].as_str().unwrap().to_owned()
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    pub async fn connect(&self) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(self.ws_url())
            .await
            .expect("websocket connect");
        Client { ws, next_id: 1 }
    }

    /// A connected client whose upgrade carries `cookie` (a `Cookie` header's value), as a
    /// browser's page would.
    pub async fn connect_with_cookie(&self, cookie: &str) -> Client {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = self.ws_url().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("cookie", cookie.parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("websocket connect");
        Client { ws, next_id: 1 }
    }

    /// A connected client signed in as `username`.
    pub async fn login(&self, username: &str) -> (Client, String) {
        let mut client = self.connect().await;
        let token = client.auth(username, PASSWORD).await;
        (client, token)
    }

    /// Stops the server and waits until everything has finished and the run has returned.
    pub async fn stop(mut self) {
        self.server.stop();
        tokio::time::timeout(REPLY_TIMEOUT, self.server.stopped())
            .await
            .expect("server stops in time");
        let run = self.run.take().unwrap();
        tokio::time::timeout(REPLY_TIMEOUT, run)
            .await
            .expect("the run returns once stopped")
            .unwrap()
            .unwrap();
    }
}

/// A WebSocket client speaking the envelope protocol, over plain TCP or TLS.
pub struct Client<S = MaybeTlsStream<TcpStream>> {
    pub ws: WebSocketStream<S>,
    next_id: u64,
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Client<S> {
    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws
            .send(Message::Text(text.into().into()))
            .await
            .unwrap();
    }

    pub async fn send(&mut self, msg: Message) {
        self.ws.send(msg).await.unwrap();
    }

    /// The next text frame as JSON, skipping pings. Panics on close or timeout.
    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(REPLY_TIMEOUT, self.ws.next())
                .await
                .expect("a frame within the timeout")
                .expect("socket open")
                .expect("no transport error");
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).expect("server sends JSON"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Waits for the server's Close frame; returns its code and reason.
    pub async fn expect_close(&mut self, within: Duration) -> (u16, String) {
        loop {
            let msg = tokio::time::timeout(within, self.ws.next())
                .await
                .expect("closed within the timeout");
            match msg {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (frame.code.into(), frame.reason.to_string());
                }
                Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    /// Sends a request and returns the reply with the same id (events are skipped).
    pub async fn call(&mut self, namespace: &str, name: &str, args: Value) -> Value {
        let id = format!("t{}", self.next_id);
        self.next_id += 1;
        let req = json!({"namespace": namespace, "name": name, "id": id, "args": args});
        self.send_text(req.to_string()).await;
        loop {
            let reply = self.recv().await;
            if reply["id"] == json!(id) {
                return reply;
            }
            assert_eq!(reply["namespace"], "events", "unexpected frame {reply}");
        }
    }

    pub async fn rpc(&mut self, name: &str, args: Value) -> Value {
        self.call("rpc", name, args).await
    }

    /// Signs in and returns the token; panics if the server refuses.
    pub async fn auth(&mut self, username: &str, password: &str) -> String {
        let reply = self
            .rpc("auth", json!({"username": username, "password": password}))
            .await;
        assert_eq!(reply["name"], "response", "auth failed: {reply}");
        reply["args"][0].as_str().unwrap().to_owned()
    }
}

/// The value of an unlabelled metric in the text `/metrics` answers (a panic with the text if
/// it is not there).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} in:\n{text}"))
        .parse()
        .unwrap()
}

/// The `code` of an error reply, or a panic with the reply if it was not an error.
pub fn error_code(reply: &Value) -> u64 {
    assert_eq!(reply["name"], "error", "expected an error, got {reply}");
    reply["args"]["code"].as_u64().unwrap()
}

/// A `poolgate serve` process; killed on drop.
pub struct ServerProcess {
    pub child: tokio::process::Child,
    pub addr: String,
    /// Everything the server logged so far.
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

/// The `poolgate` binary cargo built beside the running test target (`target/debug/deps/NAME`
/// runs it from `target/debug/poolgate`). Cargo builds a package's binaries before its
/// integration tests; `CARGO_BIN_EXE_poolgate` is only known to the test targets themselves.
pub fn poolgate_exe() -> std::path::PathBuf {
    let test = std::env::current_exe().expect("the test binary's path");
    let dir = test
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/debug/deps");
    dir.join(format!("poolgate{}", std::env::consts::EXE_SUFFIX))
}

/// The binary under test, with quiet, colourless info logs.
pub fn server_command(args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(poolgate_exe());
    command
        .args(args)
        .stderr(std::process::Stdio::piped())
        .env("RUST_LOG", "poolgate=info")
        .env("NO_COLOR", "1")
        .kill_on_drop(true);
    command
}

/// Runs `command` with its open-file limit set to `soft`/`hard`, as `ulimit -n` would.
pub fn with_file_limit(
    mut command: tokio::process::Command,
    soft: u64,
    hard: u64,
) -> tokio::process::Command {
    // SAFETY: setrlimit is async-signal-safe and touches nothing of the parent's.
    unsafe {
        command.pre_exec(move || rlimit::setrlimit(rlimit::Resource::NOFILE, soft, hard));
    }
    command
}

impl ServerProcess {
    /// `poolgate serve --config CONFIG --listen 127.0.0.1:0 --data-dir DATA`.
    pub async fn serve(config: &std::path::Path, data: &std::path::Path) -> ServerProcess {
        Self::start(&[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .await
    }

    /// Starts the binary with `args` and waits for it to announce its address.
    pub async fn start(args: &[&str]) -> ServerProcess {
        Self::start_command(server_command(args)).await
    }

    /// Same, with the environment set by `env` (nothing of `RUST_LOG` or `NO_COLOR` is set:
    /// the server's defaults apply unless `env` sets them).
    pub async fn start_with(
        args: &[&str],
        env: impl FnOnce(&mut tokio::process::Command),
    ) -> ServerProcess {
        let mut command = server_command(args);
        command.env_remove("RUST_LOG").env_remove("NO_COLOR");
        env(&mut command);
        Self::start_command(command).await
    }

    pub async fn start_command(mut command: tokio::process::Command) -> ServerProcess {
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let kept = log.clone();
        // Keep draining stderr after the address is found, so the server never blocks on logging.
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            let mut tx = Some(tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if std::env::var_os("TEST_LOG").is_some() {
                    eprintln!("[server] {line}");
                }
                {
                    let mut kept = kept.lock().unwrap();
                    kept.push_str(&line);
                    kept.push('\n');
                }
                if let Some(rest) = line.split("RPC at ").nth(1)
                    && let Some((_, addr)) = rest.split_once("://")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr.split('/').next().unwrap().to_owned());
                }
            }
        });
        let addr = tokio::time::timeout(REPLY_TIMEOUT, rx)
            .await
            .expect("the server announces its address")
            .unwrap_or_else(|_| {
                panic!(
                    "server exited without announcing its address:\n{}",
                    log.lock().unwrap()
                )
            });
        ServerProcess { child, addr, log }
    }

    /// The log lines so far that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    pub async fn connect(&self) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/", self.addr))
            .await
            .unwrap();
        Client::from(ws)
    }

    /// kill -9.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}

/// The demo config as a file, with fast, always-completing simulated timings and `extra`
/// top-level keys (placed before the first table).
pub fn config_file(dir: &std::path::Path, running_secs: f64, extra: &str) -> std::path::PathBuf {
    let demo = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/demo.toml"
    ))
    .unwrap();
    let sim = "pending = 1\nrunning = [1, 4]\nexpand = { completed = 0.8, cancelled = 0.2 }\nconnect = { completed = 0.8, cancelled = 0.1, failed = 0.1 }";
    assert!(
        demo.contains(sim),
        "examples/demo.toml changed: update config_file()"
    );
    let text = demo
        .replace(
            sim,
            &format!("pending = 0.05\nrunning = [{running_secs}, {running_secs}]"),
        )
        .replacen("[[users]]", &format!("{extra}\n\n[[users]]"), 1);
    let path = dir.join("poolgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The mock's demo one-time code: today's local date as YYMMDD.
pub fn date_code() -> String {
    chrono::Local::now().format("%y%m%d").to_string()
}

impl From<WebSocketStream<MaybeTlsStream<TcpStream>>> for Client {
    fn from(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Self {
        Client { ws, next_id: 1 }
    }
}

impl<S> Client<S> {
    pub fn from_any(ws: WebSocketStream<S>) -> Self {
        Client { ws, next_id: 1 }
    }
}

pub const POOL_WIN_1: &str = "bc4f9e45-6b5a-41e6-bb85-ae91f4b8c413";
pub const POOL_WIN_2: &str = "22aaa425-6387-4767-9611-3c26ad1a6161";
pub const POOL_ASTRA_2: &str = "2378c527-64eb-48cf-817a-645b645dba54";

/// Adds the user `auditor` (user-2's password and pools, `auditor = true`).
pub fn add_auditor(config: &mut Config) {
    let mut auditor = config
        .users
        .iter()
        .find(|u| u.username == "user-2")
        .expect("the demo's user-2")
        .clone();
    auditor.username = "auditor".into();
    auditor.id = uuid::Uuid::new_v4();
    auditor.auditor = true;
    config.users.push(auditor);
}

/// The simulated provisioner with short timings and fixed weights, and no seed tasks.
pub fn fast_sim(config: &mut Config, expand: (f64, f64, f64), connect: (f64, f64, f64)) {
    let toml = format!(
        r#"kind = "simulated"
pending = 0.05
running = [0.2, 0.2]
expand = {{ completed = {}, cancelled = {}, failed = {} }}
connect = {{ completed = {}, cancelled = {}, failed = {} }}
fail_users = ["user-2"]
seed = 7"#,
        expand.0, expand.1, expand.2, connect.0, connect.1, connect.2
    );
    config
        .provisioners
        .insert("simulated".into(), toml::from_str(&toml).unwrap());
    config.seed_tasks.clear();
}

/// Always completes.
pub const OK: (f64, f64, f64) = (1.0, 0.0, 0.0);
pub const CANCEL: (f64, f64, f64) = (0.0, 1.0, 0.0);
pub const FAIL: (f64, f64, f64) = (0.0, 0.0, 1.0);

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Client<S> {
    /// The next pushed event (replies are not expected while waiting).
    pub async fn next_event(&mut self) -> Value {
        let frame = self.recv().await;
        assert_eq!(
            frame["namespace"], "events",
            "expected an event, got {frame}"
        );
        assert_eq!(frame["name"], "task");
        assert_eq!(frame["id"], "");
        frame["args"].clone()
    }

    /// Collects the statuses pushed for `task_id` until it ends; returns them and the last task.
    /// `machine` events in between (a release, a warning of a lease's end) are passed over.
    pub async fn follow(&mut self, task_id: &Value) -> (Vec<String>, Value) {
        let mut seen = Vec::new();
        loop {
            let frame = self.recv().await;
            assert_eq!(
                frame["namespace"], "events",
                "expected an event, got {frame}"
            );
            if frame["name"] == "machine" {
                continue;
            }
            assert_eq!(frame["name"], "task", "{frame}");
            let task = frame["args"].clone();
            if &task["id"] != task_id {
                continue;
            }
            let status = task["status"].as_str().unwrap().to_owned();
            if seen.last() != Some(&status) {
                seen.push(status.clone());
            }
            if !matches!(status.as_str(), "PENDING" | "RUNNING") {
                return (seen, task);
            }
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.server.stop();
        if self.cleanup {
            let _ = std::fs::remove_dir_all(&self.state.config.data_dir);
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestApp {
    /// A WebSocket from a given loopback source address (127.0.0.0/8 is all loopback), so
    /// tests can act as several clients.
    pub async fn connect_from(&self, source: [u8; 4]) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::from((source, 0)))
            .expect("bind a loopback source address");
        let stream = socket.connect(self.addr).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(self.ws_url(), MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
        Client::from(ws)
    }
}
