//! Step 1 with and without a warm set: the time from sending `rpc/pool_request` to the task's
//! `COMPLETED` event, in a pool that keeps warm machines and in one that does not, over one
//! signed-in socket. Prints each pool's p50, p99 and max.
//!
//! Rounds alternate: a request in the warm pool, then one in the cold pool, each followed by
//! `admin_release` of the machine it got, so the next request runs a new step 1. The cold
//! request (the provisioner's whole step 1) gives the warm set the time to make the
//! replacement of the machine just taken, as a steady trickle of arrivals would.
//!
//! Run against a server whose WARM pool has `warm` set and COLD pool not, as the demo user
//! `astravdi` (bench/warm.sh starts both):
//!
//!     cargo run --release --example warm_sets -- ws://127.0.0.1:8080/ 30

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The demo's pool-win-1 (with a warm set in bench/warm.sh's config) and pool-win-2.
const POOLS: [(&str, &str); 2] = [
    ("with a warm set", "bc4f9e45-6b5a-41e6-bb85-ae91f4b8c413"),
    ("without", "22aaa425-6387-4767-9611-3c26ad1a6161"),
];

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Sends a request; returns its reply, and the events that came before it.
async fn call(
    ws: &mut Ws,
    id: u64,
    name: &str,
    args: Value,
) -> anyhow::Result<(Value, Vec<Value>)> {
    let id = id.to_string();
    let frame = json!({"namespace": "rpc", "name": name, "id": id, "args": args});
    ws.send(Message::text(frame.to_string())).await?;
    let mut events = Vec::new();
    loop {
        let frame = next(ws).await?;
        if frame["id"] == id.as_str() {
            return Ok((frame, events));
        }
        events.push(frame);
    }
}

async fn next(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(120), ws.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("closed"))??;
        if let Message::Text(text) = msg {
            return Ok(serde_json::from_str(&text)?);
        }
    }
}

/// Whether `frame` says the task `id` has ended; its status then.
fn ended(frame: &Value, id: &Value) -> Option<String> {
    let task = &frame["args"];
    let status = task["status"].as_str()?;
    (frame["name"] == "task" && &task["id"] == id && !matches!(status, "PENDING" | "RUNNING"))
        .then(|| status.to_owned())
}

/// One step 1 in `pool`: how long until COMPLETED; then the machine is released.
async fn step_1(ws: &mut Ws, id: &mut u64, pool: &str) -> anyhow::Result<Duration> {
    *id += 1;
    let started = Instant::now();
    let (reply, early) = call(ws, *id, "pool_request", json!({"pool_id": pool})).await?;
    let task = reply["args"]["task"]["id"].clone();
    anyhow::ensure!(task.is_string(), "pool_request failed: {reply}");
    let mut status = early.iter().find_map(|f| ended(f, &task));
    while status.is_none() {
        status = ended(&next(ws).await?, &task);
    }
    let took = started.elapsed();
    anyhow::ensure!(
        status.as_deref() == Some("COMPLETED"),
        "step 1 ended {status:?}"
    );
    *id += 1;
    let release = json!({"username": "astravdi", "pool_id": pool});
    let (reply, _) = call(ws, *id, "admin_release", release).await?;
    anyhow::ensure!(reply["name"] == "response", "admin_release failed: {reply}");
    Ok(took)
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "ws://127.0.0.1:8080/".into());
    let rounds: usize = args.next().map_or(Ok(30), |n| n.parse())?;
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await?;
    let mut id = 1;
    let signin = json!({"username": "astravdi", "password": "Bazalt1!"});
    let (reply, _) = call(&mut ws, id, "auth", signin).await?;
    anyhow::ensure!(reply["name"] == "response", "sign-in failed: {reply}");
    let mut times = vec![Vec::new(); POOLS.len()];
    for round in 0..rounds {
        for (i, (_, pool)) in POOLS.iter().enumerate() {
            times[i].push(step_1(&mut ws, &mut id, pool).await?);
        }
        eprint!("\r{}/{rounds} rounds", round + 1);
    }
    eprintln!();
    println!("| step 1, pool_request to COMPLETED | requests | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|");
    for ((label, _), mut t) in POOLS.iter().zip(times) {
        t.sort();
        println!(
            "| {label} | {} | {:.2} | {:.2} | {:.2} |",
            t.len(),
            ms(quantile(&t, 0.5)),
            ms(quantile(&t, 0.99)),
            ms(*t.last().unwrap())
        );
    }
    Ok(())
}
