//! Load generator for poolgate (and the echo ceiling). Modes:
//!
//! * `rpc`  — N signed-in connections send `rpc/task` lookups (an authenticated RPC that reads
//!   the state store), one at a time or `--pipeline W` in flight per connection; `--method`
//!   picks another read RPC a client makes in steady state (`pools`, `tasks`, `identify`, or
//!   `connect-info` of a finished step 2, which the run sets up first);
//! * `echo` — the same frames against `examples/echo_server`, answered by echo;
//! * `idle` — open N signed-in sockets (spread over 127.0.0.x source addresses), hold them, and
//!   report the server's RSS per socket;
//! * `fanout` — N sockets of one user; a driver socket makes tasks (`pool_request`, then
//!   `admin_release` and again; `--pipeline W` pools at once, so W > 1 makes overlapping
//!   bursts) so every status change is pushed to all N: reports the delay
//!   from the change (the task's own `created`/`started`/`finished` time) to each delivery,
//!   and deliveries per second of server CPU. `--driver-url` makes the tasks on another
//!   instance (the delay is then across instances, through the shared store's bus).
//!
//! `--logins-per-sec R` (rpc mode) adds a login storm: R password sign-ins per second on their
//! own sockets while the round trips run; their latency is reported beside.
//!
//! Prints a progress line each second and a human + JSON summary (throughput, p50/p90/p99/max
//! latency, errors, server RSS from /proc when `--server-pid` is given).
//!
//!     cargo run --release --example loadgen -- rpc --url ws://127.0.0.1:8080/ -c 256 -d 10
//!     cargo run --release --example loadgen -- echo --url ws://127.0.0.1:9001/ -c 256 -d 10
//!     cargo run --release --example loadgen -- idle --url ws://127.0.0.1:8080/ -c 15000 --server-pid PID

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Mode {
    Rpc,
    Echo,
    Idle,
    Fanout,
    /// The fan-out ceiling: `fanout`'s measurement against examples/broadcast_server.rs.
    Broadcast,
}

/// The read RPC an `rpc` run repeats.
#[derive(Clone, Copy, ValueEnum, PartialEq, Debug)]
enum Method {
    Task,
    Pools,
    Tasks,
    ConnectInfo,
    Identify,
}

impl Method {
    /// The method's name on the wire.
    fn name(self) -> &'static str {
        match self {
            Method::Task => "task",
            Method::Pools => "pools",
            Method::Tasks => "tasks",
            Method::ConnectInfo => "connect_info",
            Method::Identify => "identify",
        }
    }
}

#[derive(Parser)]
struct Args {
    mode: Mode,
    #[arg(long, default_value = "ws://127.0.0.1:8080/")]
    url: String,
    /// Connections.
    #[arg(short, long, default_value_t = 16)]
    connections: usize,
    /// Seconds of measurement (rpc/echo), or of holding the sockets (idle).
    #[arg(short, long, default_value_t = 10)]
    duration: u64,
    /// The read RPC repeated in `rpc` mode (its set-up is done before the measured window).
    #[arg(long, value_enum, default_value = "task")]
    method: Method,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    #[arg(long, default_value = "astravdi")]
    user: String,
    #[arg(long, default_value = "Bazalt1!")]
    password: String,
    /// The server's pid, to read its RSS from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Password sign-ins per second during an rpc run (the login storm).
    #[arg(long, default_value_t = 0)]
    logins_per_sec: u32,
    /// Write the JSON summary here too.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// fanout: the instance the driver makes its tasks on (default: `--url`), so that the
    /// delay measured is from one instance to the sockets on another.
    #[arg(long)]
    driver_url: Option<String>,
    /// idle/broadcast: spread the sockets round-robin over this many 127.0.0.x source
    /// addresses (default: 250 sockets per address).
    #[arg(long)]
    addresses: Option<usize>,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    cpu_split(pid).map(|(user, system)| user + system)
}

/// The process's (user, system) CPU time so far, in clock ticks.
fn cpu_split(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit(')').next()?;
    let f: Vec<&str> = after.split_whitespace().collect();
    Some((f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?))
}

async fn connect_from(url: &str, source: Option<[u8; 4]>) -> anyhow::Result<Ws> {
    let uri: tokio_tungstenite::tungstenite::http::Uri = url.parse()?;
    let host = uri.host().unwrap_or("127.0.0.1");
    let port = uri.port_u16().unwrap_or(80);
    let addr: SocketAddr = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("cannot resolve {host}"))?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    if let Some(src) = source {
        socket.bind(SocketAddr::from((src, 0)))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let (ws, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await?;
    Ok(ws)
}

/// Sends one request and returns its reply; pushed events that arrive meanwhile are skipped.
async fn request(ws: &mut Ws, frame: &str) -> anyhow::Result<Value> {
    ws.send(Message::Text(frame.into())).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t)?;
                if v["name"] == "response" || v["name"] == "error" {
                    return Ok(v);
                }
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("closed"),
        }
    }
}

/// Signs in once and returns the token every connection re-uses (`auth_token`), so the
/// benchmark measures RPCs, not argon2.
async fn token(args: &Args) -> anyhow::Result<String> {
    let mut ws = connect_from(&args.url, None).await?;
    let reply = request(
        &mut ws,
        &json!({"namespace":"rpc","name":"auth","id":"a","args":{"username":args.user,"password":args.password}}).to_string(),
    )
    .await?;
    reply["args"][0]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("sign-in failed: {reply}"))
}

async fn signed_in(args: &Args, token: &str, source: Option<[u8; 4]>) -> anyhow::Result<Ws> {
    signed_in_at(&args.url, token, source).await
}

async fn signed_in_at(url: &str, token: &str, source: Option<[u8; 4]>) -> anyhow::Result<Ws> {
    let mut ws = connect_from(url, source).await?;
    let reply = request(
        &mut ws,
        &json!({"namespace":"rpc","name":"auth_token","id":"t","args":{"token":token}}).to_string(),
    )
    .await?;
    anyhow::ensure!(reply["name"] == "response", "auth_token failed: {reply}");
    Ok(ws)
}

/// Source address for the i-th socket: 127.0.0.x spreads sockets over many addresses so one
/// address's 28k ephemeral ports are not the limit.
fn source(i: usize) -> [u8; 4] {
    [
        127,
        0,
        (1 + i / 60_000 % 250) as u8,
        (1 + i / 250 % 250) as u8,
    ]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let token = if matches!(args.mode, Mode::Echo | Mode::Broadcast) {
        String::new()
    } else {
        token(&args).await?
    };
    let summary = match args.mode {
        Mode::Idle => idle(&args, &token).await?,
        Mode::Fanout | Mode::Broadcast => fanout(&args, &token).await?,
        _ => load(&args, &token).await?,
    };
    println!("{}", serde_json::to_string_pretty(&summary)?);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&summary)?)?;
    }
    Ok(())
}

/// Opens `--connections` signed-in sockets over the 127.0.0.x source addresses, with progress
/// (plain ones, with no sign-in, in `broadcast` mode).
async fn open_signed_in(args: &Args, token: &str) -> anyhow::Result<Vec<Ws>> {
    let mut sockets = Vec::with_capacity(args.connections);
    let started = Instant::now();
    for n in 0..args.connections {
        // With `--addresses`, socket n comes from the (n mod addresses)-th address.
        let i = args.addresses.map_or(n, |a| n % a.max(1) * 250);
        sockets.push(if args.mode == Mode::Broadcast {
            connect_from(&args.url, Some(source(i))).await?
        } else {
            signed_in(args, token, Some(source(i))).await?
        });
        if n % 1000 == 999 {
            eprint!(
                "\r{} sockets open ({:.1} s)   ",
                n + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    eprintln!();
    Ok(sockets)
}

async fn idle(args: &Args, token: &str) -> anyhow::Result<Value> {
    let base = args.server_pid.and_then(rss_kib);
    let sockets = open_signed_in(args, token).await?;
    tokio::time::sleep(Duration::from_secs(args.duration.min(5))).await;
    let after = args.server_pid.and_then(rss_kib);
    // Held open until the server's RSS was read.
    drop(sockets);
    let per = match (base, after) {
        (Some(b), Some(a)) => Some((a.saturating_sub(b)) as f64 * 1024.0 / args.connections as f64),
        _ => None,
    };
    let per_kib = per.map(|p| p / 1024.0);
    eprintln!(
        "idle: {} signed-in sockets; server RSS {:?} KiB -> {:?} KiB; {:.2} KiB per socket",
        args.connections,
        base,
        after,
        per_kib.unwrap_or(f64::NAN)
    );
    Ok(json!({
        "mode": "idle", "connections": args.connections,
        "server_rss_kib_before": base, "server_rss_kib_after": after,
        "bytes_per_socket": per,
        "projected_gib_100k": per.map(|p| p * 100_000.0 / (1u64 << 30) as f64),
        "projected_gib_1m": per.map(|p| p * 1_000_000.0 / (1u64 << 30) as f64),
    }))
}

/// A task the user owns (its pool request, made or found), so the lookups read a real task;
/// and the pool it is in.
async fn own_task(args: &Args, token: &str) -> anyhow::Result<(String, String)> {
    let mut ws = signed_in(args, token, None).await?;
    let pools = request(
        &mut ws,
        &json!({"namespace":"rpc","name":"pools","id":"p","args":{}}).to_string(),
    )
    .await?;
    let pool = pools["args"][0]["id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no pool: {pools}"))?
        .to_owned();
    let reply = request(
        &mut ws,
        &json!({"namespace":"rpc","name":"pool_request","id":"r","args":{"pool_id":pool}})
            .to_string(),
    )
    .await?;
    let task = reply["args"]["task"]["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("pool_request failed: {reply}"))?;
    Ok((pool, task))
}

/// Repeats `frame` every 200 ms until `ready` accepts the reply (30 s at most); that reply.
async fn poll(
    ws: &mut Ws,
    frame: &str,
    ready: impl Fn(&Value) -> bool,
    what: &str,
) -> anyhow::Result<Value> {
    let started = Instant::now();
    loop {
        let reply = request(ws, frame).await?;
        if ready(&reply) {
            return Ok(reply);
        }
        if started.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("{what} not ready after 30 s: {reply}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The frame an `rpc` run repeats, after the set-up its method needs.
async fn rpc_frame(args: &Args, token: &str) -> anyhow::Result<String> {
    let rpc_args = match args.method {
        Method::Task => json!({"task_id": own_task(args, token).await?.1}),
        Method::Pools | Method::Tasks | Method::Identify => json!({}),
        Method::ConnectInfo => {
            // Step 1 to completion (asked again when the simulated provisioner fails or
            // cancels it, as a client would), then step 2 until it answers with the connection.
            let mut ws = signed_in(args, token, None).await?;
            let mut attempts = 0;
            let pool = loop {
                let (pool, task) = own_task(args, token).await?;
                let lookup =
                    json!({"namespace":"rpc","name":"task","id":"t","args":{"task_id":task}});
                let ended = |r: &Value| {
                    matches!(
                        r["args"]["status"].as_str(),
                        Some("COMPLETED" | "FAILED" | "CANCELLED")
                    )
                };
                let status = poll(&mut ws, &lookup.to_string(), ended, "step 1").await?;
                attempts += 1;
                if status["args"]["status"] == "COMPLETED" {
                    break pool;
                }
                if attempts == 5 {
                    anyhow::bail!("step 1 did not complete in 5 attempts: {status}");
                }
            };
            let step2 =
                json!({"namespace":"rpc","name":"connect_info","id":"c","args":{"pool_id":pool}});
            poll(
                &mut ws,
                &step2.to_string(),
                |r| r["args"]["connection"].is_object(),
                "step 2",
            )
            .await?;
            json!({"pool_id": pool})
        }
    };
    let name = args.method.name();
    Ok(json!({"namespace":"rpc","name":name,"id":1,"args":rpc_args}).to_string())
}

async fn load(args: &Args, token: &str) -> anyhow::Result<Value> {
    let frame = match args.mode {
        Mode::Rpc => rpc_frame(args, token).await?,
        // The echo is sent the frame of a `task` lookup.
        _ => json!({"namespace":"rpc","name":"task","id":1,
            "args":{"task_id":"00000000-0000-4000-8000-000000000000"}})
        .to_string(),
    };
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut sockets = Vec::new();
    for i in 0..args.connections {
        let ws = match args.mode {
            Mode::Rpc => signed_in(args, token, Some(source(i))).await?,
            _ => connect_from(&args.url, Some(source(i))).await?,
        };
        sockets.push(ws);
    }
    let cpu_before = args.server_pid.and_then(cpu_ticks);
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let started = Instant::now();
    let storm = login_storm(args, deadline);
    let mut tasks = Vec::new();
    for ws in sockets {
        let (frame, hist, done, errors, window) = (
            frame.clone(),
            hist.clone(),
            done.clone(),
            errors.clone(),
            args.pipeline,
        );
        let rpc = args.mode == Mode::Rpc;
        tasks.push(tokio::spawn(async move {
            let (mut sink, mut stream) = ws.split();
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut sent = std::collections::VecDeque::new();
            while Instant::now() < deadline {
                while sent.len() < window {
                    sink.feed(Message::Text(frame.clone().into())).await.ok();
                    sent.push_back(Instant::now());
                }
                sink.flush().await.ok();
                match stream.next().await {
                    // Pushed task events are not replies.
                    Some(Ok(Message::Text(t))) if t.starts_with("{\"namespace\":\"events\"") => {}
                    Some(Ok(Message::Text(t))) => {
                        let t0 = sent.pop_front().unwrap();
                        local.record(t0.elapsed().as_micros().max(1) as u64).ok();
                        done.fetch_add(1, Ordering::Relaxed);
                        if rpc && !t.contains("\"name\":\"response\"") {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            hist.lock().await.add(&local).ok();
        }));
    }
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = done.load(Ordering::Relaxed);
                eprint!("\r{} requests, {}/s      ", now, now - last);
                last = now;
            }
        })
    };
    for t in tasks {
        t.await?;
    }
    let logins = storm.await?;
    progress.abort();
    eprintln!();
    let secs = started.elapsed().as_secs_f64();
    let cpu_after = args.server_pid.and_then(cpu_ticks);
    let h = hist.lock().await;
    let n = done.load(Ordering::Relaxed);
    let cpu_us_per_req = match (cpu_before, cpu_after) {
        // /proc ticks are 1/100 s on Linux.
        (Some(b), Some(a)) if n > 0 => Some((a - b) as f64 * 10_000.0 / n as f64),
        _ => None,
    };
    let summary = json!({
        "mode": if args.mode == Mode::Rpc { "rpc" } else { "echo" },
        "method": (args.mode == Mode::Rpc).then(|| args.method.name()),
        "connections": args.connections, "pipeline": args.pipeline, "seconds": secs,
        "requests": n, "errors": errors.load(Ordering::Relaxed),
        "per_second": n as f64 / secs,
        "latency_us": {"p50": h.value_at_quantile(0.5), "p90": h.value_at_quantile(0.9),
                       "p99": h.value_at_quantile(0.99), "max": h.max()},
        "server_cpu_us_per_request": cpu_us_per_req,
        "server_rss_kib": args.server_pid.and_then(rss_kib),
        "logins": logins,
    });
    eprintln!(
        "{}: {} conns x{}: {:.0} req/s, p50 {} us, p99 {} us, max {} us, {} errors, server CPU {:?} us/req",
        summary["mode"],
        args.connections,
        args.pipeline,
        summary["per_second"].as_f64().unwrap_or(0.0),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max(),
        summary["errors"],
        cpu_us_per_req
    );
    Ok(summary)
}

/// R sockets, each signing in with the password once a second (staggered), until `deadline`.
/// Returns the sign-ins' count and latency, or null when R is 0.
fn login_storm(args: &Args, deadline: Instant) -> tokio::task::JoinHandle<Value> {
    let rate = args.logins_per_sec;
    let (url, user, password) = (args.url.clone(), args.user.clone(), args.password.clone());
    tokio::spawn(async move {
        if rate == 0 {
            return Value::Null;
        }
        let frame = json!({"namespace":"rpc","name":"auth","id":"l","args":{"username":user,"password":password}}).to_string();
        let mut workers = Vec::new();
        for i in 0..rate {
            let (url, frame) = (url.clone(), frame.clone());
            workers.push(tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                let mut failed = 0u64;
                let mut first_failure = None;
                let Ok(mut ws) = connect_from(&url, Some(source(100_000 + i as usize))).await
                else {
                    return (hist, 1, Some("cannot connect".to_owned()));
                };
                let mut tick = tokio::time::interval_at(
                    tokio::time::Instant::now() + Duration::from_secs(1) * i / rate,
                    Duration::from_secs(1),
                );
                while Instant::now() < deadline {
                    tick.tick().await;
                    let t0 = Instant::now();
                    match request(&mut ws, &frame).await {
                        Ok(r) if r["name"] == "response" => {
                            hist.record(t0.elapsed().as_micros().max(1) as u64).ok();
                        }
                        other => {
                            failed += 1;
                            first_failure.get_or_insert_with(|| match other {
                                Ok(reply) => reply["args"].to_string(),
                                Err(e) => e.to_string(),
                            });
                        }
                    }
                }
                (hist, failed, first_failure)
            }));
        }
        let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        let mut failed = 0;
        let mut first_failure = None;
        for w in workers {
            if let Ok((h, f, first)) = w.await {
                all.add(&h).ok();
                failed += f;
                first_failure = first_failure.or(first);
            }
        }
        json!({"per_second": rate, "count": all.len(), "failed": failed, "first_failure": first_failure,
               "latency_us": {"p50": all.value_at_quantile(0.5), "p99": all.value_at_quantile(0.99), "max": all.max()}})
    })
}

/// The parts of a pushed task event the fan-out measurement reads.
#[derive(serde::Deserialize)]
struct Event<'a> {
    name: &'a str,
    #[serde(borrow)]
    args: EventTask<'a>,
}

#[derive(serde::Deserialize)]
struct EventTask<'a> {
    #[serde(default)]
    id: Option<&'a str>,
    #[serde(default)]
    status: Option<&'a str>,
    #[serde(default)]
    created: Option<&'a str>,
    #[serde(default)]
    started: Option<&'a str>,
    #[serde(default)]
    finished: Option<&'a str>,
}

/// When the status in this event changed, by the server's clock (same machine).
fn changed_at(task: &EventTask<'_>) -> Option<chrono::DateTime<chrono::Utc>> {
    let at = match task.status? {
        "PENDING" => task.created?,
        "RUNNING" => task.started?,
        _ => task.finished?,
    };
    at.parse().ok()
}

/// `fanout`'s driver: its own socket, same user; makes a task per pool, waits for it to end,
/// gives the machine back (a `machine` event to all) and starts again. Returns the tasks made.
async fn drive_poolgate(args: &Args, token: &str, deadline: Instant) -> anyhow::Result<u64> {
    let url = args.driver_url.as_deref().unwrap_or(&args.url);
    let mut driver = signed_in_at(url, token, None).await?;
    // Replies only on the driver's socket: it polls its task instead of reading events.
    request(
        &mut driver,
        &json!({"namespace":"events","name":"unsubscribe","id":"u","args":"task"}).to_string(),
    )
    .await?;
    let pools = request(
        &mut driver,
        &json!({"namespace":"rpc","name":"pools","id":"p"}).to_string(),
    )
    .await?;
    let pools: Vec<String> = pools["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    anyhow::ensure!(!pools.is_empty(), "the user has no pools");
    let mut tasks_made = 0u64;
    while Instant::now() < deadline {
        // `--pipeline W` pools at once: with W > 1 their status changes overlap into bursts.
        let mut waiting = Vec::new();
        let round = (tasks_made as usize) % pools.len();
        let width = args.pipeline.clamp(1, pools.len());
        for pool in pools.iter().cycle().skip(round).take(width) {
            let reply = request(
                &mut driver,
                &json!({"namespace":"rpc","name":"pool_request","id":"r","args":{"pool_id":pool}})
                    .to_string(),
            )
            .await?;
            if let Some(task) = reply["args"]["task"]["id"].as_str() {
                tasks_made += 1;
                waiting.push((pool.clone(), task.to_owned()));
            }
        }
        let give_up = Instant::now() + Duration::from_secs(15);
        while !waiting.is_empty() {
            anyhow::ensure!(Instant::now() < give_up, "tasks did not end within 15 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut still = Vec::new();
            for (pool, task) in waiting {
                let reply = request(
                    &mut driver,
                    &json!({"namespace":"rpc","name":"task","id":"t","args":{"task_id":task}})
                        .to_string(),
                )
                .await?;
                if matches!(
                    reply["args"]["status"].as_str(),
                    Some("PENDING" | "RUNNING")
                ) {
                    still.push((pool, task));
                } else {
                    // Giving the machine back lets the next pool_request make a new task.
                    request(&mut driver, &json!({"namespace":"rpc","name":"admin_release","id":"x","args":{"username":args.user,"pool_id":pool}}).to_string()).await?;
                }
            }
            waiting = still;
        }
        eprint!("\r{tasks_made} tasks   ");
    }
    Ok(tasks_made)
}

/// `broadcast`'s driver: sends the ceiling server one status change at a time (`--pipeline`
/// at once), shaped and sized like poolgate's task event and stamped with the time it is
/// sent, every 500 ms — about poolgate's pace in `fanout`. Returns the changes sent.
async fn drive_broadcast(args: &Args, deadline: Instant) -> anyhow::Result<u64> {
    let (mut sink, mut stream) = connect_from(&args.url, None).await?.split();
    // The driver is a socket like the others: what the server sends it is read and dropped.
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    let pool = uuid::Uuid::new_v4();
    let mut sent = 0u64;
    while Instant::now() < deadline {
        for _ in 0..args.pipeline.max(1) {
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            let frame = json!({"namespace": "events", "name": "task", "id": "", "args": {
                "id": uuid::Uuid::new_v4(), "kind": "POOL_EXPAND", "status": "RUNNING",
                "pool_id": pool, "created": now, "started": now, "finished": null, "progress": 0}});
            sink.send(Message::text(frame.to_string())).await?;
            sent += 1;
        }
        eprint!("\r{sent} changes sent   ");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drain.abort();
    Ok(sent)
}

async fn fanout(args: &Args, token: &str) -> anyhow::Result<Value> {
    let sockets = open_signed_in(args, token).await?;
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let deliveries = Arc::new(AtomicU64::new(0));
    // (task, status) -> (change time, last delivery): the span of each burst.
    let bursts = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        (String, String),
        (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>),
    >::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut readers = Vec::new();
    for ws in sockets {
        let (hist, deliveries, bursts, stop) = (
            hist.clone(),
            deliveries.clone(),
            bursts.clone(),
            stop.clone(),
        );
        readers.push(tokio::spawn(async move {
            let (_sink, mut stream) = ws.split();
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut seen = std::collections::HashSet::new();
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => break,
                    msg = stream.next() => msg,
                };
                let Some(Ok(Message::Text(text))) = msg else {
                    break;
                };
                let now = chrono::Utc::now();
                deliveries.fetch_add(1, Ordering::Relaxed);
                let Ok(ev) = serde_json::from_str::<Event<'_>>(&text) else {
                    continue;
                };
                if ev.name != "task" {
                    continue;
                }
                let (Some(id), Some(status)) = (ev.args.id, ev.args.status) else {
                    continue;
                };
                // Progress updates repeat RUNNING: only the change itself is timed.
                if !seen.insert((id.to_owned(), status.to_owned())) {
                    continue;
                }
                if let Some(at) = changed_at(&ev.args) {
                    let us = (now - at).num_microseconds().unwrap_or(0).max(1) as u64;
                    local.record(us).ok();
                    let mut b = bursts.lock().unwrap();
                    let e = b
                        .entry((id.to_owned(), status.to_owned()))
                        .or_insert((at, now));
                    e.1 = e.1.max(now);
                }
            }
            hist.lock().await.add(&local).ok();
        }));
    }
    let split_before = args.server_pid.and_then(cpu_split);
    let cpu_before = args.server_pid.and_then(cpu_ticks);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let tasks_made = if args.mode == Mode::Broadcast {
        drive_broadcast(args, deadline).await?
    } else {
        drive_poolgate(args, token, deadline).await?
    };
    // Let the last burst land, then stop the readers.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let secs = started.elapsed().as_secs_f64();
    let split_after = args.server_pid.and_then(cpu_split);
    let cpu_after = args.server_pid.and_then(cpu_ticks);
    stop.cancel();
    for r in readers {
        r.await?;
    }
    eprintln!();
    let n = deliveries.load(Ordering::Relaxed);
    let h = hist.lock().await;
    let cpu_us_per_delivery = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) if n > 0 => Some((a - b) as f64 * 10_000.0 / n as f64),
        _ => None,
    };
    // Each burst's rate: its sockets over the span from the change to the last delivery.
    let mut rates: Vec<f64> = bursts
        .lock()
        .unwrap()
        .values()
        .filter_map(|(at, last)| {
            let us = (*last - *at).num_microseconds()? as f64;
            (us > 0.0).then(|| args.connections as f64 * 1e6 / us)
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    // How long each burst took to reach every socket, from its status change.
    let mut spans: Vec<i64> = bursts
        .lock()
        .unwrap()
        .values()
        .map(|(at, last)| (*last - *at).num_milliseconds())
        .collect();
    spans.sort_unstable();
    let median_rate = rates.get(rates.len() / 2).copied();
    let summary = json!({
        "mode": if args.mode == Mode::Broadcast { "broadcast" } else { "fanout" },
        "connections": args.connections, "seconds": secs,
        "tasks": tasks_made, "status_changes_timed": h.len(), "deliveries": n,
        "latency_us": {"p50": h.value_at_quantile(0.5), "p90": h.value_at_quantile(0.9),
                       "p99": h.value_at_quantile(0.99), "max": h.max()},
        "burst_deliveries_per_second_median": median_rate,
        "bursts": spans.len(),
        "burst_span_ms": {"min": spans.first(), "p50": spans.get(spans.len() / 2), "max": spans.last()},
        "server_cpu_us_per_delivery": cpu_us_per_delivery,
        // The share of that CPU spent in the kernel (system time): writes, wake-ups, and on
        // loopback the receiving side's TCP processing.
        "server_cpu_system_share": match (split_before, split_after) {
            (Some((u0, s0)), Some((u1, s1))) if u1 + s1 > u0 + s0 => {
                Some((s1 - s0) as f64 / ((u1 + s1) - (u0 + s0)) as f64)
            }
            _ => None,
        },
        "deliveries_per_cpu_second": cpu_us_per_delivery.map(|us| 1e6 / us),
        "server_rss_kib": args.server_pid.and_then(rss_kib),
    });
    eprintln!(
        "fanout: {} sockets, {} tasks, {} deliveries; change->delivery p50 {} us, p99 {} us, max {} us; burst rate (median) {:.0}/s; server CPU {:?} us/delivery",
        args.connections,
        tasks_made,
        n,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max(),
        median_rate.unwrap_or(0.0),
        cpu_us_per_delivery
    );
    Ok(summary)
}
