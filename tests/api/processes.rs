//! Real `poolgate serve` processes: kill -9 and restart on the embedded store. (Two instances
//! sharing one Redis, and Redis restarting under load, are in tests/redis/instances.rs.)

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn after_kill_9_nothing_accepted_is_lost_and_the_rules_hold() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), 1.0, "");
    let data = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let args = [
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        &listen,
    ];
    let server = ServerProcess::start(&args).await;
    let mut c = server.connect().await;
    let token = c.auth("astravdi", PASSWORD).await;
    let done =
        c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    assert_eq!(c.follow(&done).await.0.last().unwrap(), "COMPLETED");
    let cut =
        c.rpc("pool_request", json!({"pool_id": POOL_WIN_2})).await["args"]["task"]["id"].clone();
    let jwt = {
        let resp = reqwest::Client::new()
            .post(format!("http://{}/api/v2/users/login/", server.addr))
            .json(&json!({"username": "user-2", "password": PASSWORD, "ldap": false}))
            .send()
            .await
            .unwrap();
        resp.json::<serde_json::Value>().await.unwrap()["data"]["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    server.kill().await;

    let server = ServerProcess::start(&args).await;
    let mut c = server.connect().await;
    let reply = c.rpc("auth_token", json!({"token": token})).await;
    assert_eq!(
        reply["name"], "response",
        "the session survived kill -9: {reply}"
    );
    let task = c.rpc("task", json!({"task_id": cut})).await;
    assert_eq!(
        task["args"]["status"], "CANCELLED",
        "the task cut off is ended: {task}"
    );
    assert!(
        task["args"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("restarted")
    );
    let again = c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await;
    assert_eq!(
        again["args"]["task"]["id"], done,
        "the machine is still assigned"
    );
    assert_eq!(again["args"]["task"]["status"], "COMPLETED");
    let restarted = c.rpc("pool_request", json!({"pool_id": POOL_WIN_2})).await;
    assert_ne!(
        restarted["args"]["task"]["id"], cut,
        "CANCELLED restarts per the rules"
    );
    let pools = reqwest::Client::new()
        .get(format!("http://{}/api/v2/pools/", server.addr))
        .header("Authorization", format!("JWT {jwt}"))
        .send()
        .await
        .unwrap();
    assert_eq!(pools.status(), 200, "JWTs survive too (the secret is kept)");
}

#[tokio::test]
async fn a_second_instance_on_the_same_sqlite_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let _first =
        ServerProcess::start(&["serve", "--listen", "127.0.0.1:0", "--data-dir", data]).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_poolgate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", data])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in use by another poolgate") && err.contains("redis"),
        "{err}"
    );
}

/// Sends `signal` (`TERM`, `INT`) to the server process.
fn signal(server: &ServerProcess, signal: &str) {
    let pid = server
        .child
        .id()
        .expect("the server is running")
        .to_string();
    let sent = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// Waits for the server process to exit, at most `within`; its exit status.
async fn exited(
    server: &mut ServerProcess,
    within: std::time::Duration,
) -> std::process::ExitStatus {
    tokio::time::timeout(within, server.child.wait())
        .await
        .expect("the server exits in time")
        .unwrap()
}

/// With `drain_timeout`, SIGTERM closes the sockets at once (1001) and stops accepting, but
/// the process lets its running task finish before it exits, so the task is COMPLETED, not
/// cancelled; a second SIGTERM during the drain stops at once (the task cancelled, with the
/// usual "ask again" reason).
#[tokio::test]
async fn sigterm_lets_running_tasks_finish_within_drain_timeout_and_a_second_stops_at_once() {
    let dir = tempfile::tempdir().unwrap();
    for (running, second_signal, expected) in [(1.0, false, "COMPLETED"), (30.0, true, "CANCELLED")]
    {
        let config = config_file(dir.path(), running, "drain_timeout = 30");
        let data = dir.path().join(format!("data-{expected}"));
        let listen = format!("127.0.0.1:{}", free_port());
        let args = [
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            &listen,
        ];
        let mut server = ServerProcess::start(&args).await;
        let mut c = server.connect().await;
        let token = c.auth("astravdi", PASSWORD).await;
        let id = c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"]
            .clone();
        let started = std::time::Instant::now();
        signal(&server, "TERM");
        // The socket is closed at once, long before the task could end.
        let closed = tokio::time::timeout(std::time::Duration::from_millis(800), async {
            loop {
                match futures_util::StreamExt::next(&mut c.ws).await {
                    Some(Ok(tungstenite::Message::Close(frame))) => break frame,
                    Some(Ok(_)) => continue,
                    other => panic!("a close frame, not {other:?}"),
                }
            }
        })
        .await
        .expect("the socket is closed at once");
        assert_eq!(u16::from(closed.unwrap().code), 1001);
        if second_signal {
            signal(&server, "TERM");
        }
        let status = exited(&mut server, std::time::Duration::from_secs(10)).await;
        assert!(status.success(), "{status:?}");
        if !second_signal {
            assert!(
                started.elapsed() >= std::time::Duration::from_millis(500),
                "it waited for the task: {:?}",
                started.elapsed()
            );
        }

        let server = ServerProcess::start(&args).await;
        let mut c = server.connect().await;
        c.rpc("auth_token", json!({"token": token})).await;
        let task = c.rpc("task", json!({"task_id": id})).await;
        assert_eq!(task["args"]["status"], expected, "{task}");
        if expected == "CANCELLED" {
            assert!(
                task["args"]["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("ask again")),
                "{task}"
            );
        }
    }
}

/// A task that outlasts `drain_timeout` is cancelled when it runs out (not at task_deadline).
#[tokio::test]
async fn a_task_that_outlasts_the_drain_timeout_is_cancelled_when_it_runs_out() {
    let app = TestApp::spawn_with(|c| {
        c.drain_timeout = std::time::Duration::from_millis(300);
        let slow: toml::Value =
            toml::from_str("kind = \"simulated\"\npending = 0.05\nrunning = [20, 20]").unwrap();
        c.provisioners
            .insert("simulated".into(), slow.try_into().unwrap());
    })
    .await;
    let (mut a, _) = app.login("astravdi").await;
    let id = a.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let user = app.state.auth.users.by_name("astravdi").unwrap().id;
    let started = std::time::Instant::now();
    app.server.stop();
    tokio::time::timeout(std::time::Duration::from_secs(10), app.server.stopped())
        .await
        .expect("stops in time");
    let stopped_in = started.elapsed();
    assert!(
        stopped_in >= std::time::Duration::from_millis(250)
            && stopped_in < std::time::Duration::from_secs(5),
        "stopped once the drain ran out: {stopped_in:?}"
    );
    // Read from the stopped server's own store (a memory store does not outlive it).
    let task = app.state.store.task_get(user, id).await.unwrap().unwrap();
    assert_eq!(
        task.status,
        poolgate::domain::TaskStatus::Cancelled,
        "{task:?}"
    );
}
