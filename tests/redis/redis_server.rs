//! A Redis for the cases: the one named by `POOLGATE_TEST_REDIS`, or `redis-server`s started
//! on free loopback ports and stopped with the test process. The harness (main.rs) only runs a
//! case when what it needs is there.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

/// A Redis for the tests: `POOLGATE_TEST_REDIS` if set (`.ci/run` sets it), else a
/// `redis-server` started once per test process on a free loopback port, which stops when the
/// test process ends. The harness skips the cases when there is neither.
pub fn redis_url() -> String {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("POOLGATE_TEST_REDIS") {
            return url;
        }
        static CHILD: std::sync::Mutex<Option<std::process::Child>> = std::sync::Mutex::new(None);
        let port = free_port();
        // Kept (not waited on) for the process's life; the wrapper stops redis with us.
        *CHILD.lock().unwrap() = Some(spawn_redis(port));
        format!("redis://127.0.0.1:{port}")
    })
    .clone()
}

/// Starts `redis-server` on a port, tied to this process's life; waits until it answers.
pub fn spawn_redis(port: u16) -> std::process::Child {
    spawn_redis_with(port, "--save '' --appendonly no")
}

/// Same, with other redis-server options (e.g. persistence for a restart test). Stop it with
/// SIGTERM to the returned child (the wrapper then stops redis).
pub fn spawn_redis_with(port: u16, options: &str) -> std::process::Child {
    // The shell watches its parent (this test process) and stops redis when it is gone.
    let script = format!(
        "redis-server --port {port} --bind 127.0.0.1 {options} --daemonize no & \
         pid=$!; trap 'kill $pid' TERM; while kill -0 {parent} 2>/dev/null && kill -0 $pid 2>/dev/null; \
         do sleep 0.2; done; kill $pid 2>/dev/null",
        parent = std::process::id()
    );
    let mut child = std::process::Command::new("sh")
        .args(["-c", &script])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("cannot run sh to start redis-server");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return child;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "redis-server did not start on port {port}: install it (Debian: apt-get install redis-server) \
         or set POOLGATE_TEST_REDIS=redis://host:port"
    );
}

/// Options for a `redis-server` that keeps every write in an append-only file in `dir`, fsynced
/// before it answers: one stopped and started again on them loses nothing.
pub fn persistent(dir: &std::path::Path) -> String {
    format!(
        "--appendonly yes --appendfsync always --save '' --dir {}",
        dir.display()
    )
}

/// Stops a `redis-server` started by [`spawn_redis_with`] (SIGTERM to its wrapper, which
/// stops redis) and waits until its port is closed.
pub async fn stop_redis(redis: &mut std::process::Child, port: u16) {
    std::process::Command::new("kill")
        .args(["-TERM", &redis.id().to_string()])
        .status()
        .unwrap();
    let _ = redis.wait();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("redis on {port} did not stop");
}

/// Signing in while the state store may be unavailable (503).
pub trait LoginRetrying {
    async fn login_retrying(&self, username: &str) -> (Client, String);
}

impl LoginRetrying for TestApp {
    /// Signs in, retrying while the state store is unavailable (503).
    async fn login_retrying(&self, username: &str) -> (Client, String) {
        let mut client = self.connect().await;
        for _ in 0..50 {
            let reply = client
                .rpc("auth", json!({"username": username, "password": PASSWORD}))
                .await;
            if reply["name"] == "response" {
                return (client, reply["args"][0].as_str().unwrap().to_owned());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("could not sign in");
    }
}
