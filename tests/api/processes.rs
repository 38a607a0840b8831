//! Real `poolgate serve` processes: kill -9 and restart on the embedded store, two instances
//! sharing one Redis, and Redis restarting under load.

use std::time::Duration;

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

fn redis_instance_args(config: &std::path::Path, data: &std::path::Path) -> Vec<String> {
    vec![
        "serve".into(),
        "--config".into(),
        config.to_str().unwrap().into(),
        "--data-dir".into(),
        data.to_str().unwrap().into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ]
}

#[tokio::test]
async fn two_instances_on_one_redis_act_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("two-{}", uuid::Uuid::new_v4().simple());
    let extra = format!(
        "state = \"{}\"\nstate_prefix = \"{prefix}\"\ntask_lease = 1\njwt_secret = \"{}\"",
        redis_url(),
        "k".repeat(40)
    );
    let config = config_file(dir.path(), 20.0, &extra);
    let a_args = redis_instance_args(&config, &dir.path().join("a"));
    let b_args = redis_instance_args(&config, &dir.path().join("b"));
    let a = ServerProcess::start(&a_args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let b = ServerProcess::start(&b_args.iter().map(String::as_str).collect::<Vec<_>>()).await;

    // Log in on A, resume on B.
    let mut on_a = a.connect().await;
    let token = on_a.auth("astravdi", PASSWORD).await;
    let mut on_b = b.connect().await;
    let reply = on_b.rpc("auth_token", json!({"token": token})).await;
    assert_eq!(reply["name"], "response", "{reply}");

    // Step 1 on A; its events reach B.
    let id = on_a
        .rpc("pool_request", json!({"pool_id": POOL_WIN_1}))
        .await["args"]["task"]["id"]
        .clone();
    let event = on_b.next_event().await;
    assert_eq!(event["id"], id);
    assert_eq!(event["status"], "RUNNING");
    // B sees the same task for the same key.
    let same = on_b
        .rpc("pool_request", json!({"pool_id": POOL_WIN_1}))
        .await;
    assert_eq!(same["args"]["task"]["id"], id);

    // A dies mid-task: B ends it (well within the 90 s deadline) and says why.
    a.kill().await;
    let started = std::time::Instant::now();
    let (seen, task) = on_b.follow(&id).await;
    assert_eq!(seen.last().unwrap(), "CANCELLED");
    assert!(
        task["error"]["message"]
            .as_str()
            .unwrap()
            .contains("went away"),
        "{task}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "ended in {:?}",
        started.elapsed()
    );
    let next = on_b
        .rpc("pool_request", json!({"pool_id": POOL_WIN_1}))
        .await;
    assert_ne!(next["args"]["task"]["id"], id);
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarting_under_load_costs_only_the_requests_in_flight() {
    let port = free_port();
    let redis_dir = tempfile::tempdir().unwrap();
    let persist = format!(
        "--appendonly yes --appendfsync always --save '' --dir {}",
        redis_dir.path().display()
    );
    let mut redis = spawn_redis_with(port, &persist);
    let app = TestApp::spawn_with(|c| {
        c.state = format!("redis://127.0.0.1:{port}");
        fast_sim(c, OK, OK);
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(app.login("astravdi").await.0);
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let mut load = Vec::new();
    for mut c in clients {
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let (mut ok, mut unavailable) = (0u32, 0u32);
            while !stop.is_cancelled() {
                let reply = c.rpc("tasks", json!({})).await;
                match reply["name"].as_str() {
                    Some("response") => ok += 1,
                    _ => {
                        assert_eq!(error_code(&reply), 503, "store errors are 503: {reply}");
                        unavailable += 1;
                    }
                }
            }
            // The connection itself survived: it still answers.
            assert_eq!(c.rpc("identify", json!({})).await["name"], "response");
            (ok, unavailable)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Stop redis (SIGTERM to the wrapper stops redis), wait until the port is closed.
    std::process::Command::new("kill")
        .args(["-TERM", &redis.id().to_string()])
        .status()
        .unwrap();
    let _ = redis.wait();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis = spawn_redis_with(port, &persist);
    // Give the connection manager time to reconnect, then check the service is back.
    let mut back = false;
    let (mut probe, token) = app.login_retrying("astravdi").await;
    for _ in 0..50 {
        if probe.rpc("tasks", json!({})).await["name"] == "response" {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the service resumes after redis comes back");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let (mut ok, mut unavailable) = (0, 0);
    for h in load {
        let (o, u) = h.await.unwrap();
        ok += o;
        unavailable += u;
    }
    assert!(
        ok > 0 && unavailable > 0,
        "ok {ok}, unavailable {unavailable}"
    );
    // Sessions are in redis too (persisted): the token from before the outage still works.
    let mut again = app.connect().await;
    assert_eq!(
        again.rpc("auth_token", json!({"token": token})).await["name"],
        "response"
    );
    std::process::Command::new("kill")
        .args(["-TERM", &redis.id().to_string()])
        .status()
        .unwrap();
}
