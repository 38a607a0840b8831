//! A steady mixed load for a long run (`bench/soak.sh MINUTES`), sampling the server every
//! `--every` seconds: RSS, open file descriptors, the size of its data directory (the store),
//! and the p50/p99 of the round trips made in that interval. What runs, all at once, at fixed
//! rates:
//!
//! * `readers` signed-in sockets alternating `pools` and `task` (the measured round trips);
//! * one password sign-in every two seconds on a new socket, and between them a wrong one
//!   (for a made-up user, from another address) (its 401s and 429s are what the load asks for, and counted
//!   apart from errors);
//! * a driver asking for a desktop and its connection data (`pool_request`, `connect_info`),
//!   reading the task events on its socket, then giving the machine back (`admin_release`);
//! * the v2 REST shim: a login every five seconds and ten `GET /api/v2/pools/` per second with
//!   the JWT; a status socket opened every five seconds and held for ten;
//! * churn: ten sockets a second open, sign in with the saved token, ask `pools`, and close.
//!
//! Writes one CSV line per sample (`--csv`) and a JSON summary: each figure at minute 5 (or
//! the middle of a shorter run) and at the end, and whether the end is within 5 % of it.
//!
//!     cargo run --release --example soak -- --url ws://127.0.0.1:8080/ --minutes 30 \
//!         --server-pid PID --data-dir DIR --csv soak.csv

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "ws://127.0.0.1:8080/")]
    url: String,
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10)]
    every: u64,
    #[arg(long, default_value_t = 32)]
    readers: usize,
    #[arg(long)]
    server_pid: u32,
    /// The server's data directory (its size is the store's).
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long)]
    csv: Option<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long, default_value = "astravdi")]
    user: String,
    #[arg(long, default_value = "Bazalt1!")]
    password: String,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What the load did, counted by every worker.
#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    /// Refusals the load asks for: the wrong passwords' 401 and 429.
    refused_as_asked: AtomicU64,
    /// Anything else that went wrong: failed connections, unexpected error replies.
    errors: AtomicU64,
    events: AtomicU64,
    sign_ins: AtomicU64,
    rest: AtomicU64,
    desktops: AtomicU64,
    churned: AtomicU64,
}

struct Shared {
    args: Args,
    http: String,
    token: String,
    counts: Counts,
    /// Round trips of the readers since the last sample, in µs.
    latency: Mutex<Histogram<u64>>,
    /// Each kind of error (its first 80 characters) and how often it came.
    error_kinds: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Shared {
    fn error(&self, what: impl std::fmt::Display) {
        self.counts.errors.fetch_add(1, Ordering::Relaxed);
        let what: String = what.to_string().chars().take(80).collect();
        *self.error_kinds.lock().unwrap().entry(what).or_default() += 1;
    }
}

async fn connect(url: &str, source: [u8; 4]) -> anyhow::Result<Ws> {
    let uri: tokio_tungstenite::tungstenite::http::Uri = url.parse()?;
    let addr: std::net::SocketAddr = tokio::net::lookup_host((
        uri.host().unwrap_or("127.0.0.1"),
        uri.port_u16().unwrap_or(80),
    ))
    .await?
    .next()
    .ok_or_else(|| anyhow::anyhow!("cannot resolve {url}"))?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from((source, 0)))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let (ws, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await?;
    Ok(ws)
}

/// One request; events that arrive meanwhile are counted and skipped.
async fn request(ws: &mut Ws, shared: &Shared, frame: Value) -> anyhow::Result<Value> {
    ws.send(Message::Text(frame.to_string().into())).await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await? {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t)?;
                if v["namespace"] == "events" {
                    shared.counts.events.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                shared.counts.requests.fetch_add(1, Ordering::Relaxed);
                return Ok(v);
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("closed"),
        }
    }
}

fn rpc(name: &str, args: Value) -> Value {
    json!({"namespace": "rpc", "name": name, "id": name, "args": args})
}

async fn signed_in(shared: &Shared, source: [u8; 4]) -> anyhow::Result<Ws> {
    let mut ws = connect(&shared.args.url, source).await?;
    let reply = request(
        &mut ws,
        shared,
        rpc("auth_token", json!({"token": shared.token})),
    )
    .await?;
    anyhow::ensure!(reply["name"] == "response", "auth_token: {reply}");
    Ok(ws)
}

/// A task the user owns, for the readers' `task` lookups, and the user's pools.
async fn setup(shared: &Shared) -> anyhow::Result<(String, Vec<String>)> {
    let mut ws = signed_in(shared, [127, 0, 1, 1]).await?;
    let pools = request(&mut ws, shared, rpc("pools", json!({}))).await?;
    let pools: Vec<String> = pools["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["id"].as_str().map(str::to_owned))
        .collect();
    anyhow::ensure!(pools.len() >= 2, "the user needs two pools");
    let reply = request(
        &mut ws,
        shared,
        rpc("pool_request", json!({"pool_id": pools[0]})),
    )
    .await?;
    let task = reply["args"]["task"]["id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("pool_request: {reply}"))?;
    Ok((task.to_owned(), pools))
}

async fn reader(shared: Arc<Shared>, i: usize, task: String, until: Instant) {
    let mut ws = match signed_in(&shared, [127, 0, 2, 1 + i as u8 % 200]).await {
        Ok(ws) => ws,
        Err(e) => return shared.error(format!("reader: {e}")),
    };
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut n = 0u64;
    while Instant::now() < until {
        tick.tick().await;
        n += 1;
        let frame = if n.is_multiple_of(2) {
            rpc("pools", json!({}))
        } else {
            rpc("task", json!({"task_id": task}))
        };
        let started = Instant::now();
        match request(&mut ws, &shared, frame).await {
            Ok(v) if v["name"] == "response" => {
                let us = started.elapsed().as_micros() as u64;
                shared.latency.lock().await.saturating_record(us.max(1));
            }
            Ok(v) => shared.error(format!("reader: {v}")),
            Err(e) => {
                shared.error(format!("reader: {e}"));
                match signed_in(&shared, [127, 0, 2, 1 + i as u8 % 200]).await {
                    Ok(again) => ws = again,
                    Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            }
        }
    }
}

/// Password sign-ins, one a second: every other one right, the others wrong (from an address
/// of their own, so the per-address limit they meet does not touch the rest).
async fn sign_ins(shared: Arc<Shared>, until: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n = 0u64;
    while Instant::now() < until {
        tick.tick().await;
        n += 1;
        // The wrong ones name a user that does not exist, so their back-off falls on that
        // name, not on the user the rest of the load signs in as.
        let (source, username, password) = if n.is_multiple_of(2) {
            ([127, 0, 3, 2], "soak-nobody", "not-the-password")
        } else {
            (
                [127, 0, 3, 1],
                shared.args.user.as_str(),
                shared.args.password.as_str(),
            )
        };
        let attempt = async {
            let mut ws = connect(&shared.args.url, source).await?;
            let reply = request(
                &mut ws,
                &shared,
                rpc("auth", json!({"username": username, "password": password})),
            )
            .await?;
            let _ = ws.close(None).await;
            anyhow::Ok(reply)
        };
        match attempt.await {
            Ok(v) if v["name"] == "response" && password == shared.args.password => {
                shared.counts.sign_ins.fetch_add(1, Ordering::Relaxed);
            }
            Ok(v)
                if password != shared.args.password
                    && matches!(v["args"]["code"].as_u64(), Some(401 | 429)) =>
            {
                shared
                    .counts
                    .refused_as_asked
                    .fetch_add(1, Ordering::Relaxed);
            }
            Ok(v) => shared.error(format!("sign-in: {v}")),
            Err(e) => shared.error(format!("sign-in: {e}")),
        }
    }
}

/// Desktops: step 1, step 2, the events of both on the driver's socket, then the machine back.
async fn desktops(shared: Arc<Shared>, pool: String, until: Instant) {
    let mut ws = match signed_in(&shared, [127, 0, 4, 1]).await {
        Ok(ws) => ws,
        Err(e) => return shared.error(format!("desktops: {e}")),
    };
    while Instant::now() < until {
        let cycle = async {
            for step in ["pool_request", "connect_info"] {
                let give_up = Instant::now() + Duration::from_secs(30);
                loop {
                    let reply =
                        request(&mut ws, &shared, rpc(step, json!({"pool_id": pool}))).await?;
                    let status = reply["args"]["task"]["status"]
                        .as_str()
                        .or(reply["args"]["status"].as_str())
                        .unwrap_or_default()
                        .to_owned();
                    if reply["name"] == "error" {
                        anyhow::bail!("{step}: {reply}");
                    }
                    if status == "COMPLETED" || reply["args"]["connection"].is_object() {
                        break;
                    }
                    anyhow::ensure!(Instant::now() < give_up, "{step} did not complete");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            let reply = request(
                &mut ws,
                &shared,
                rpc(
                    "admin_release",
                    json!({"username": shared.args.user, "pool_id": pool}),
                ),
            )
            .await?;
            anyhow::ensure!(reply["name"] == "response", "admin_release: {reply}");
            anyhow::Ok(())
        };
        match cycle.await {
            Ok(()) => {
                shared.counts.desktops.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => shared.error(format!("desktops: {e}")),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn rest_login(shared: &Shared, client: &reqwest::Client) -> anyhow::Result<String> {
    let reply: Value = client
        .post(format!("{}/api/v2/users/login/", shared.http))
        .json(
            &json!({"username": shared.args.user, "password": shared.args.password, "ldap": false}),
        )
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    shared.counts.rest.fetch_add(1, Ordering::Relaxed);
    reply["data"]["access_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("login: {reply}"))
}

/// The v2 shim: logins, pool listings with the JWT, and status sockets.
async fn rest(shared: Arc<Shared>, until: Instant) {
    let client = reqwest::Client::new();
    let mut jwt = match rest_login(&shared, &client).await {
        Ok(jwt) => jwt,
        Err(e) => return shared.error(format!("rest: {e}")),
    };
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut n = 0u64;
    while Instant::now() < until {
        tick.tick().await;
        n += 1;
        if n.is_multiple_of(50) {
            match rest_login(&shared, &client).await {
                Ok(fresh) => jwt = fresh,
                Err(e) => shared.error(format!("rest login: {e}")),
            }
            let (shared, jwt) = (shared.clone(), jwt.clone());
            tokio::spawn(async move { status_socket(&shared, &jwt).await });
        }
        let listing = client
            .get(format!("{}/api/v2/pools/", shared.http))
            .header("Authorization", format!("JWT {jwt}"))
            .send()
            .await
            .and_then(|r| r.error_for_status());
        match listing {
            Ok(r) => {
                let _ = r.bytes().await;
                shared.counts.rest.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => shared.error(format!("rest pools: {e}")),
        }
    }
}

async fn status_socket(shared: &Shared, jwt: &str) {
    let claims = jwt
        .split('.')
        .nth(1)
        .and_then(|p| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    let Some(client_id) = claims.as_ref().and_then(|c| c["client_id"].as_str()) else {
        return shared.error("status socket: no client_id in the JWT");
    };
    let url = format!(
        "{}/api/v2/pools/ws/{client_id}/",
        shared.args.url.trim_end_matches('/')
    );
    let mut request =
        match tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            url.as_str(),
        ) {
            Ok(r) => r,
            Err(e) => return shared.error(format!("status socket: {e}")),
        };
    request
        .headers_mut()
        .insert("Cookie", format!("JWT={jwt}").parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok((mut ws, _)) => {
            let held = tokio::time::sleep(Duration::from_secs(10));
            tokio::pin!(held);
            loop {
                tokio::select! {
                    _ = &mut held => break,
                    m = ws.next() => match m {
                        Some(Ok(Message::Text(_))) => { shared.counts.events.fetch_add(1, Ordering::Relaxed); }
                        Some(Ok(_)) => {}
                        _ => { shared.error("status socket closed early"); break; }
                    }
                }
            }
            let _ = ws.close(None).await;
        }
        Err(e) => shared.error(format!("status socket: {e}")),
    }
}

/// Sockets that open, sign in with the saved token, ask once, and close: ten a second.
async fn churn(shared: Arc<Shared>, until: Instant) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut n = 0u32;
    while Instant::now() < until {
        tick.tick().await;
        n = n.wrapping_add(1);
        let shared = shared.clone();
        tokio::spawn(async move {
            let once = async {
                let mut ws = signed_in(&shared, [127, 0, 5, 1 + (n % 8) as u8]).await?;
                let reply = request(&mut ws, &shared, rpc("pools", json!({}))).await?;
                anyhow::ensure!(reply["name"] == "response", "{reply}");
                let _ = ws.close(None).await;
                anyhow::Ok(())
            };
            match once.await {
                Ok(()) => {
                    shared.counts.churned.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => shared.error(format!("churn: {e}")),
            }
        });
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

fn dir_kib(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                total += dir_kib(&e.path()) * 1024;
            } else {
                total += meta.len();
            }
        }
    }
    total / 1024
}

#[derive(Clone, Copy, Debug, serde::Serialize)]
struct Sample {
    minute: f64,
    rss_kib: u64,
    fds: u64,
    store_kib: u64,
    p50_us: u64,
    p99_us: u64,
    requests: u64,
    errors: u64,
}

/// The sample nearest `minute`, with its p99 taken as the median of the p99s in the minute
/// around it (one interval's p99 on a shared VM swings more than the 5 % asked of it).
fn at(samples: &[Sample], minute: f64) -> Sample {
    let near = |s: &&Sample| (s.minute - minute).abs() <= 0.5;
    let mut p99s: Vec<u64> = samples.iter().filter(near).map(|s| s.p99_us).collect();
    p99s.sort_unstable();
    let mut s = *samples
        .iter()
        .min_by(|a, b| {
            (a.minute - minute)
                .abs()
                .partial_cmp(&(b.minute - minute).abs())
                .unwrap()
        })
        .expect("samples");
    if !p99s.is_empty() {
        s.p99_us = p99s[p99s.len() / 2];
    }
    s
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let http = args.url.replacen("ws", "http", 1);
    let http = http.trim_end_matches('/').to_owned();
    let token = {
        let mut ws = connect(&args.url, [127, 0, 1, 1]).await?;
        ws.send(Message::Text(
            rpc(
                "auth",
                json!({"username": args.user, "password": args.password}),
            )
            .to_string()
            .into(),
        ))
        .await?;
        let reply = loop {
            if let Some(Ok(Message::Text(t))) = ws.next().await {
                break serde_json::from_str::<Value>(&t)?;
            }
        };
        reply["args"][0]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("sign-in failed: {reply}"))?
    };
    let shared = Arc::new(Shared {
        args,
        http,
        token,
        counts: Counts::default(),
        latency: Mutex::new(Histogram::new(3)?),
        error_kinds: Default::default(),
    });
    let (task, pools) = setup(&shared).await?;
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(shared.args.minutes * 60.0);
    let mut workers = Vec::new();
    for i in 0..shared.args.readers {
        workers.push(tokio::spawn(reader(shared.clone(), i, task.clone(), until)));
    }
    workers.push(tokio::spawn(sign_ins(shared.clone(), until)));
    workers.push(tokio::spawn(desktops(
        shared.clone(),
        pools[1].clone(),
        until,
    )));
    workers.push(tokio::spawn(rest(shared.clone(), until)));
    workers.push(tokio::spawn(churn(shared.clone(), until)));

    let mut csv = match &shared.args.csv {
        Some(path) => {
            let mut f = std::fs::File::create(path)?;
            use std::io::Write;
            writeln!(
                f,
                "minute,rss_kib,fds,store_kib,p50_us,p99_us,requests,errors,refused_as_asked,events,sign_ins,rest,desktops,churned"
            )?;
            Some(f)
        }
        None => None,
    };
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(shared.args.every));
    tick.tick().await;
    while Instant::now() < until {
        tick.tick().await;
        let latency = std::mem::replace(&mut *shared.latency.lock().await, Histogram::new(3)?);
        let c = &shared.counts;
        let pid = shared.args.server_pid;
        let s = Sample {
            minute: started.elapsed().as_secs_f64() / 60.0,
            rss_kib: rss_kib(pid),
            fds: open_fds(pid),
            store_kib: dir_kib(&shared.args.data_dir),
            p50_us: latency.value_at_quantile(0.5),
            p99_us: latency.value_at_quantile(0.99),
            requests: c.requests.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
        };
        let line = format!(
            "{:.2},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            s.minute,
            s.rss_kib,
            s.fds,
            s.store_kib,
            s.p50_us,
            s.p99_us,
            s.requests,
            s.errors,
            c.refused_as_asked.load(Ordering::Relaxed),
            c.events.load(Ordering::Relaxed),
            c.sign_ins.load(Ordering::Relaxed),
            c.rest.load(Ordering::Relaxed),
            c.desktops.load(Ordering::Relaxed),
            c.churned.load(Ordering::Relaxed),
        );
        if let Some(f) = csv.as_mut() {
            use std::io::Write;
            writeln!(f, "{line}")?;
        }
        eprintln!(
            "{:5.1} min  RSS {} KiB  fds {}  store {} KiB  p50 {} µs  p99 {} µs  requests {}  errors {}",
            s.minute, s.rss_kib, s.fds, s.store_kib, s.p50_us, s.p99_us, s.requests, s.errors
        );
        samples.push(s);
    }
    for w in workers {
        let _ = w.await;
    }
    anyhow::ensure!(samples.len() >= 4, "too short a run to compare");
    let end_minute = samples.last().unwrap().minute;
    let reference_minute = if end_minute >= 10.0 {
        5.0
    } else {
        end_minute / 2.0
    };
    let reference = at(&samples, reference_minute);
    let end = at(&samples, end_minute);
    let within = |a: u64, b: u64| (b as f64) <= (a as f64) * 1.05;
    let c = &shared.counts;
    let summary = json!({
        "minutes": end_minute,
        "reference_minute": reference_minute,
        "reference": reference,
        "end": end,
        "within_5_percent": {
            "rss": within(reference.rss_kib, end.rss_kib),
            "fds": within(reference.fds, end.fds),
            "store": within(reference.store_kib, end.store_kib),
            "p99": within(reference.p99_us, end.p99_us),
        },
        "counts": {
            "requests": c.requests.load(Ordering::Relaxed),
            "errors": c.errors.load(Ordering::Relaxed),
            "refused_as_asked": c.refused_as_asked.load(Ordering::Relaxed),
            "events": c.events.load(Ordering::Relaxed),
            "password_sign_ins": c.sign_ins.load(Ordering::Relaxed),
            "rest": c.rest.load(Ordering::Relaxed),
            "desktops": c.desktops.load(Ordering::Relaxed),
            "churned_sockets": c.churned.load(Ordering::Relaxed),
        },
        "errors": shared.error_kinds.lock().unwrap().clone(),
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    if let Some(path) = &shared.args.json {
        std::fs::write(path, serde_json::to_string_pretty(&summary)?)?;
    }
    Ok(())
}
