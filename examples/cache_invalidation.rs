//! How long a write on one instance takes to stop being served stale by another, on one Redis.
//!
//! Two stores are opened on the same Redis and prefix exactly as two `poolgate serve` instances
//! open theirs (`store::open`, each behind its read cache). B reads a task (so its cache holds
//! it), A updates the task and then publishes a marker on the bus; the marker reaches B's
//! application sink only after B's cache has applied the write's announcement (published by
//! the write's own script, so before the write returned and so before the marker; one
//! subscription delivers in order), so the time from A's write returning to the marker's
//! arrival on B bounds the window in which B could still answer the old task. Each sample then
//! checks that B answers the update.
//!
//! Usage: cache_invalidation redis://127.0.0.1:6379/ [SAMPLES] [--json FILE]

use std::time::{Duration, Instant};

use poolgate::domain::{Task, TaskKind};
use poolgate::store::{self, BusEvent};
use tokio::sync::mpsc;
use uuid::Uuid;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).ok_or_else(|| {
        anyhow::anyhow!("usage: cache_invalidation REDIS_URL [SAMPLES] [--json FILE]")
    })?;
    let samples: usize = args.get(2).map_or(Ok(1000), |s| s.parse())?;
    let json = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1));

    let prefix = format!("bench-{}", Uuid::new_v4().simple());
    let dir = tempfile::tempdir()?;
    let state = url.parse()?;
    let (sink_a, mut bus_a) = mpsc::unbounded_channel();
    let (sink_b, mut bus_b) = mpsc::unbounded_channel();
    let a = store::open(&state, None, &prefix, dir.path(), sink_a).await?;
    let b = store::open(&state, None, &prefix, dir.path(), sink_b).await?;
    tokio::spawn(async move { while bus_a.recv().await.is_some() {} });

    let mut task = Task::new(TaskKind::PoolExpand, Uuid::new_v4(), Uuid::new_v4());
    a.task_create(None, &task).await?;
    // B hears the task's user, as an instance does while the user has a socket on it: only
    // then does its cache keep the user's records (and hear their announcements).
    let _watch = b
        .router()
        .ok_or_else(|| anyhow::anyhow!("a Redis store routes by user"))?
        .watch(task.user_id)
        .await;
    task.start();
    let mut delays = Vec::with_capacity(samples);
    for i in 0..samples {
        task.progress = Some((i % 101) as u8);
        // B holds the old value in its cache.
        b.task_get(task.user_id, task.id).await?;
        a.task_update(&task).await?;
        let written = Instant::now();
        let marker = format!("marker-{i}");
        a.publish(BusEvent::JwtRevoked {
            jti: marker.clone(),
            exp: 0,
        });
        loop {
            match tokio::time::timeout(Duration::from_secs(5), bus_b.recv()).await {
                Ok(Some(BusEvent::JwtRevoked { jti, .. })) if jti == marker => break,
                Ok(Some(_)) => {}
                _ => anyhow::bail!("the marker did not reach B within 5 s"),
            }
        }
        delays.push(written.elapsed());
        anyhow::ensure!(
            b.task_get(task.user_id, task.id).await?.as_ref() == Some(&task),
            "B answered the old task after the announcement"
        );
    }
    delays.sort();
    let us = |q: f64| delays[((delays.len() - 1) as f64 * q) as usize].as_micros();
    println!(
        "stale-read window after a write on another instance ({samples} writes): p50 {} µs, p99 {} µs, max {} µs",
        us(0.5),
        us(0.99),
        us(1.0),
    );
    if let Some(path) = json {
        let body = serde_json::json!({
            "samples": samples,
            "latency_us": {"p50": us(0.5), "p99": us(0.99), "max": us(1.0)},
        });
        std::fs::write(path, body.to_string())?;
    }
    Ok(())
}
