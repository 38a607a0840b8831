//! Real `poolgate serve` processes: kill -9 and restart on the embedded store. (Two instances
//! sharing one Redis, and Redis restarting under load, are in tests/redis/cases.rs.)

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
