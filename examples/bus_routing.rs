//! Load for `bench/routing.sh`: many users, each signed in on one of several instances (user
//! `i` on instance `i mod N`), each running step 1 and step 2 in a pool and waiting for each
//! task's pushed end. Prints one JSON line: users, tasks ended, events received, errors.
//!
//! Usage: bus_routing --urls ws://127.0.0.1:8081/,ws://127.0.0.1:8082/ --users 200
//!            --prefix bench- --password PW --pool POOL_ID [--concurrency 100]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    /// The instances' WebSocket URLs, comma-separated.
    #[arg(long, value_delimiter = ',')]
    urls: Vec<String>,
    #[arg(long)]
    users: usize,
    /// Usernames are PREFIX000, PREFIX001, …
    #[arg(long)]
    prefix: String,
    #[arg(long)]
    password: String,
    #[arg(long)]
    pool: String,
    /// Users signed in and working at once.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
}

#[derive(Default)]
struct Counts {
    tasks: AtomicU64,
    events: AtomicU64,
    errors: AtomicU64,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame, as JSON.
async fn next_json(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("closed"))??;
        if let Message::Text(text) = frame {
            return Ok(serde_json::from_str(&text)?);
        }
    }
}

/// Sends one request and returns its reply, counting the events that arrive meanwhile.
async fn call(
    ws: &mut Ws,
    id: &str,
    name: &str,
    args: Value,
    counts: &Counts,
) -> anyhow::Result<Value> {
    let request = json!({"namespace": "rpc", "name": name, "id": id, "args": args});
    ws.send(Message::Text(request.to_string().into())).await?;
    loop {
        let v = next_json(ws).await?;
        if v["id"] == id {
            return Ok(v);
        }
        counts.events.fetch_add(1, Ordering::Relaxed);
    }
}

/// Waits for the pushed event that ends task `task`.
async fn until_ended(ws: &mut Ws, task: &Value, counts: &Counts) -> anyhow::Result<()> {
    loop {
        let v = next_json(ws).await?;
        if v["namespace"] != "events" {
            continue;
        }
        counts.events.fetch_add(1, Ordering::Relaxed);
        let status = v["args"]["status"].as_str().unwrap_or("");
        if v["args"]["id"] == *task && !matches!(status, "PENDING" | "RUNNING") {
            counts.tasks.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
    }
}

async fn user(args: Arc<Args>, i: usize, counts: Arc<Counts>) -> anyhow::Result<()> {
    let url = &args.urls[i % args.urls.len()];
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let name = format!("{}{i:03}", args.prefix);
    let reply = call(
        &mut ws,
        "a",
        "auth",
        json!({"username": name, "password": args.password}),
        &counts,
    )
    .await?;
    anyhow::ensure!(reply["name"] == "response", "{name}: {reply}");
    for (id, method) in [("s1", "pool_request"), ("s2", "connect_info")] {
        let reply = call(&mut ws, id, method, json!({"pool_id": args.pool}), &counts).await?;
        let task = reply["args"]["task"]["id"].clone();
        anyhow::ensure!(task.is_string(), "{name} {method}: {reply}");
        let status = reply["args"]["task"]["status"].as_str().unwrap_or("");
        if matches!(status, "PENDING" | "RUNNING") {
            until_ended(&mut ws, &task, &counts).await?;
        } else {
            counts.tasks.fetch_add(1, Ordering::Relaxed);
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    anyhow::ensure!(!args.urls.is_empty(), "--urls is empty");
    let counts = Arc::new(Counts::default());
    let gate = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut handles = Vec::new();
    for i in 0..args.users {
        let (args, counts, gate) = (args.clone(), counts.clone(), gate.clone());
        handles.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.expect("never closed");
            if let Err(e) = user(args, i, counts.clone()).await {
                counts.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("user {i}: {e:#}");
            }
        }));
    }
    for h in handles {
        h.await?;
    }
    println!(
        "{}",
        json!({
            "users": args.users,
            "instances": args.urls.len(),
            "tasks_ended": counts.tasks.load(Ordering::Relaxed),
            "events_received": counts.events.load(Ordering::Relaxed),
            "errors": counts.errors.load(Ordering::Relaxed),
        })
    );
    Ok(())
}
