//! A minimal Rust client for poolgate's WebSocket RPC: sign in, step 1, step 2, with the
//! pushed task events. Run against `cargo run -- serve`:
//!
//!     cargo run --example rpc_client -- ws://127.0.0.1:8080/ astravdi 'Bazalt1!' pool-win-1

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends a request and returns its reply, printing the events that arrive meanwhile.
async fn call(ws: &mut Ws, id: &str, name: &str, args: Value) -> anyhow::Result<Value> {
    let req = json!({"namespace": "rpc", "name": name, "id": id, "args": args});
    ws.send(Message::Text(req.to_string().into())).await?;
    loop {
        let Some(msg) = ws.next().await else {
            anyhow::bail!("connection closed")
        };
        let Message::Text(text) = msg? else { continue };
        let frame: Value = serde_json::from_str(&text)?;
        if frame["namespace"] == "events" {
            println!("event: {}", frame["args"]);
        } else if frame["id"] == id {
            if frame["name"] == "error" {
                anyhow::bail!("{name} failed: {}", frame["args"]);
            }
            return Ok(frame["args"].clone());
        }
    }
}

/// Waits for the task to end, printing its events.
async fn wait(ws: &mut Ws, task_id: &Value) -> anyhow::Result<String> {
    loop {
        let Some(msg) = ws.next().await else {
            anyhow::bail!("connection closed")
        };
        let Message::Text(text) = msg? else { continue };
        let frame: Value = serde_json::from_str(&text)?;
        if frame["namespace"] == "events" && &frame["args"]["id"] == task_id {
            let status = frame["args"]["status"].as_str().unwrap_or("").to_owned();
            println!("  {status} {}", frame["args"]["progress"]);
            if status != "PENDING" && status != "RUNNING" {
                return Ok(status);
            }
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, user, password, pool_name] = args.as_slice() else {
        anyhow::bail!("usage: rpc_client URL USER PASSWORD POOL");
    };
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    let token = call(
        &mut ws,
        "1",
        "auth",
        json!({"username": user, "password": password}),
    )
    .await?;
    println!("signed in, token lives {} s without activity", token[1]);

    let pools = call(&mut ws, "2", "pools", json!({})).await?;
    let pool = pools
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == pool_name.as_str()))
        .ok_or_else(|| anyhow::anyhow!("no pool {pool_name}"))?
        .clone();

    // Step 1: a machine. Repeat while the task is CANCELLED (the rules start a new one).
    loop {
        let reply = call(&mut ws, "3", "pool_request", json!({"pool_id": pool["id"]})).await?;
        let task = &reply["task"];
        let status = match task["status"].as_str() {
            Some("COMPLETED") => "COMPLETED".to_owned(),
            _ => wait(&mut ws, &task["id"]).await?,
        };
        match status.as_str() {
            "COMPLETED" => break,
            "CANCELLED" => continue,
            other => anyhow::bail!("step 1 ended {other}"),
        }
    }
    // Step 2: connection data.
    loop {
        let reply = call(
            &mut ws,
            "4",
            "connect_info",
            json!({"pool_id": pool["id"], "remote_protocol": 1}),
        )
        .await?;
        if let Some(conn) = reply.get("connection") {
            println!(
                "connect to {}:{} ({})",
                conn["host"], conn["port"], conn["verbose_name"]
            );
            return Ok(());
        }
        wait(&mut ws, &reply["task"]["id"]).await?;
    }
}
