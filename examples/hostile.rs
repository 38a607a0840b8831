//! A hostile client: replays the attacks of the security issue against a running server and
//! prints, for each, what it got. `bench/hostile.sh` starts a server set up for it (a command
//! provisioner that prints its environment, leaves a background child and hangs on release)
//! and passes its paths here:
//!
//!     hostile URL HTTP_ADDR OUT_DIR LOG_FILE POOL_ID
//!
//! Rows that need the server's loopback source addresses (127.0.0.x) assume it is local.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

struct Target {
    url: String,
    addr: SocketAddr,
}

impl Target {
    /// A WebSocket from a given loopback source address.
    async fn connect_from(&self, source: [u8; 4]) -> anyhow::Result<Ws> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((source, 0)))?;
        let stream = socket.connect(self.addr).await?;
        let (ws, _) =
            tokio_tungstenite::client_async(self.url.as_str(), MaybeTlsStream::Plain(stream))
                .await?;
        Ok(ws)
    }
}

async fn call(ws: &mut Ws, name: &str, args: Value) -> anyhow::Result<Value> {
    let frame = json!({"namespace": "rpc", "name": name, "id": "h", "args": args});
    ws.send(Message::text(frame.to_string())).await?;
    while let Some(msg) = ws.next().await {
        if let Message::Text(text) = msg? {
            let reply: Value = serde_json::from_str(&text)?;
            if reply["id"] == "h" {
                return Ok(reply);
            }
        }
    }
    anyhow::bail!("closed before the reply")
}

fn code(reply: &Value) -> u64 {
    reply["args"]["code"].as_u64().unwrap_or(200)
}

fn tally(codes: &[u64]) -> String {
    let mut counts = std::collections::BTreeMap::new();
    for c in codes {
        *counts.entry(*c).or_insert(0) += 1;
    }
    counts
        .iter()
        .map(|(c, n)| format!("{n} × {c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn auth(t: &Target, from: [u8; 4], user: &str, password: &str) -> anyhow::Result<Value> {
    let mut ws = t.connect_from(from).await?;
    call(
        &mut ws,
        "auth",
        json!({"username": user, "password": password}),
    )
    .await
}

/// How long the server keeps a TCP connection open that sends `prefix` then one byte a
/// second (nothing at all when `prefix` is empty), up to `cap`.
async fn lifetime(addr: SocketAddr, prefix: &[u8], drip: bool, cap: Duration) -> String {
    let started = Instant::now();
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return "connect failed".into();
    };
    if !prefix.is_empty() {
        let _ = stream.write_all(prefix).await;
    }
    let mut buf = [0u8; 512];
    loop {
        let step = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await;
        match step {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return format!(
                    "closed by the server after {:.1} s",
                    started.elapsed().as_secs_f64()
                );
            }
            Ok(Ok(n)) => {
                let head = String::from_utf8_lossy(&buf[..n.min(40)]).replace("\r\n", " ");
                return format!(
                    "answered after {:.1} s: {head}…",
                    started.elapsed().as_secs_f64()
                );
            }
            Err(_) if started.elapsed() >= cap => {
                return format!("still open after {} s (gave up)", cap.as_secs());
            }
            Err(_) => {
                if drip && stream.write_all(b"X").await.is_err() {
                    return format!(
                        "closed by the server after {:.1} s",
                        started.elapsed().as_secs_f64()
                    );
                }
            }
        }
    }
}

/// The server's resident memory in MiB (`/proc/PID/status`), if its pid is known.
fn rss_mib(pid: Option<u32>) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

fn mib(v: Option<f64>) -> String {
    v.map_or_else(|| "?".into(), |v| format!("{v:.0}"))
}

/// 150 unauthenticated sockets (from 127.0.`net`.x), each announcing a 4 MiB − 1 byte frame
/// whose header starts with `first` and writing as much of it as the server reads; prints the
/// closes seen and the server's RSS before, at its peak and 2 s after.
async fn flood_announced(t: &Target, pid: Option<u32>, what: &str, first: u8, net: u8) {
    let before = rss_mib(pid);
    let peak = std::sync::Arc::new(std::sync::Mutex::new(before.unwrap_or(0.0)));
    let sampling = tokio::spawn({
        let peak = peak.clone();
        async move {
            loop {
                if let Some(now) = rss_mib(pid) {
                    let mut p = peak.lock().unwrap();
                    *p = p.max(now);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let started = Instant::now();
    let outcomes = futures_util::future::join_all((0..150u8).map(|i| async move {
        let mut ws = t.connect_from([127, 0, net, 1 + i % 100]).await?;
        let len: u64 = (4 << 20) - 1;
        // A masked frame with a zero mask key: the payload goes out as written, from one
        // shared buffer, so the client's own memory stays small.
        let mut header = vec![first, 0x80 | 127];
        header.extend_from_slice(&len.to_be_bytes());
        header.extend_from_slice(&[0; 4]);
        let chunk = vec![b'a'; 64 * 1024];
        let raw = match ws.get_mut() {
            MaybeTlsStream::Plain(s) => s,
            _ => anyhow::bail!("plain sockets only"),
        };
        let mut sent = 0u64;
        if raw.write_all(&header).await.is_ok() {
            while sent < len {
                let n = chunk.len().min((len - sent) as usize);
                if raw.write_all(&chunk[..n]).await.is_err() {
                    break;
                }
                sent += n as u64;
            }
        }
        let mut close = None;
        while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await
        {
            if let Message::Close(frame) = msg {
                close = frame.map(|f| u16::from(f.code));
                break;
            }
        }
        anyhow::Ok((sent, close))
    }))
    .await;
    let during = *peak.lock().unwrap();
    let took = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    sampling.abort();
    let after = rss_mib(pid);
    let closes: Vec<u64> = outcomes
        .iter()
        .map(|o| match o {
            Ok((_, Some(code))) => u64::from(*code),
            _ => 0,
        })
        .collect();
    let sent = outcomes
        .iter()
        .filter_map(|o| o.as_ref().ok().map(|(s, _)| *s))
        .max()
        .unwrap_or(0);
    println!(
        "| 150 unauthenticated sockets each sending {what} | closes: {} \
         (0: none seen) in {took:.1} s (the client wrote up to {} KiB, into the kernel's socket \
         buffers); \
         server RSS {} → peak {} → {} MiB 2 s after |",
        tally(&closes),
        sent / 1024,
        mib(before),
        if pid.is_some() {
            format!("{during:.0}")
        } else {
            "?".into()
        },
        mib(after),
    );
}

/// Security round 3, transport: pre-sign-in message size (with the server's RSS before,
/// during and after, when `HOSTILE_SERVER_PID` is set), a cross-site WebSocket and sign-in,
/// the headers of `/docs`, and silent sockets on the metrics listener (`HOSTILE_METRICS_ADDR`).
async fn transport_round_3(t: &Target) -> anyhow::Result<()> {
    let pid = std::env::var("HOSTILE_SERVER_PID")
        .ok()
        .and_then(|p| p.parse().ok());

    // 1. 150 unauthenticated sockets, each sending one text message of 4 MiB − 1 byte; then
    // the same with one ping (control) frame of 4 MiB − 1 byte.
    for (what, first, net) in [
        ("one 4 MiB − 1 byte text message", 0x81u8, 80u8),
        ("one 4 MiB − 1 byte ping frame", 0x89, 81),
    ] {
        flood_announced(t, pid, what, first, net).await;
    }

    // 2. A page of another site opens the RPC socket and tries 100 sign-ins; and posts a
    // sign-in without a JSON Content-Type.
    let foreign = [("origin", "https://evil.example".to_owned())];
    let refused = browser_sign_ins(t, &foreign).await?;
    let answer = raw_login_post(
        t,
        &format!("Host: {}\r\nOrigin: https://evil.example\r\n", t.addr),
    )
    .await?;
    println!(
        "| a page of another site: 100 WebSocket sign-ins (Origin: https://evil.example), and a \
         sign-in posted without Content-Type | WebSocket: {}; the post: {} |",
        tally(&refused),
        answer.lines().next().unwrap_or("no answer")
    );

    // 2b. DNS rebinding: a page of evil.example whose name now points at the server, so its
    // Host and Origin agree; 100 WebSocket sign-ins and one JSON sign-in post.
    let port = t.addr.port();
    let rebound = [
        ("host", format!("evil.example:{port}")),
        ("origin", format!("http://evil.example:{port}")),
    ];
    let refused = browser_sign_ins(t, &rebound).await?;
    let answer = raw_login_post(
        t,
        &format!(
            "Host: evil.example:{port}\r\nOrigin: http://evil.example:{port}\r\n\
             Content-Type: application/json\r\n"
        ),
    )
    .await?;
    println!(
        "| DNS rebinding: a page of evil.example rebound to the server (Host and Origin agree): 100 \
         WebSocket sign-ins, and a JSON sign-in post | WebSocket: {}; the post: {} |",
        tally(&refused),
        answer.lines().next().unwrap_or("no answer")
    );

    // 3. /docs: its policy and framing.
    let mut tcp = tokio::net::TcpStream::connect(t.addr).await?;
    tcp.write_all(
        format!(
            "GET /docs HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            t.addr
        )
        .as_bytes(),
    )
    .await?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await?;
    let head = answer.split("\r\n\r\n").next().unwrap_or("").to_owned();
    let find = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
            .unwrap_or_else(|| "none".into())
    };
    println!(
        "| /docs: inline script, framing | CSP `{}`; X-Frame-Options {}; HSTS (this server is plain \
         HTTP, so none is sent): {} |",
        find("content-security-policy"),
        find("x-frame-options"),
        find("strict-transport-security"),
    );

    // 4. 64 silent sockets to the metrics listener from one address.
    let Some(metrics) = std::env::var("HOSTILE_METRICS_ADDR")
        .ok()
        .and_then(|a| a.parse::<SocketAddr>().ok())
    else {
        println!("| 64 silent sockets to metrics_listen | not run: HOSTILE_METRICS_ADDR not set |");
        return Ok(());
    };
    let mut silent = Vec::new();
    for _ in 0..64 {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        silent.push(socket.connect(metrics).await?);
    }
    let health = |from: [u8; 4]| async move {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((from, 0)))?;
        let mut s = socket.connect(metrics).await?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut answer)).await??;
        anyhow::Ok(answer.lines().next().unwrap_or("").to_owned())
    };
    let other = health([127, 0, 0, 2]).await?;
    let same = health([127, 0, 0, 1]).await?;
    let started = Instant::now();
    let mut closed = 0;
    for s in &mut silent {
        let mut buf = [0u8; 512];
        loop {
            match tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => continue,
                Ok(_) => closed += 1,
                Err(_) => {}
            }
            break;
        }
    }
    println!(
        "| 64 silent sockets to metrics_listen from 127.0.0.1 | /healthz from 127.0.0.2: {other}; \
         from 127.0.0.1: {same}; {closed} of 64 closed by the server within {:.0} s |",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The same script read its parent's `/proc/$PPID/environ` and tried to open its `mem`: which
/// of the broker's secrets (this program is started with the same environment) it found.
fn parent_environ_row(out: &std::path::Path) {
    let seen = std::fs::read_to_string(out.join("parent-environ.txt")).unwrap_or_default();
    let mem = std::fs::read_to_string(out.join("parent-mem.txt")).unwrap_or_default();
    let found: Vec<String> = std::env::vars()
        .filter(|(k, v)| k.starts_with("POOLGATE_") && !v.is_empty())
        .filter(|(k, v)| seen.contains(k.as_str()) || seen.contains(v.as_str()))
        .map(|(k, _)| k)
        .collect();
    let readable = if seen.contains("Permission denied") {
        "unreadable".to_owned()
    } else {
        format!(
            "{} variables",
            seen.lines().filter(|l| l.contains('=')).count()
        )
    };
    println!(
        "| the script reads /proc/$PPID/environ and opens /proc/$PPID/mem | environ {readable}; broker secrets seen: {}; mem {} |",
        if found.is_empty() {
            "none".to_owned()
        } else {
            found.join(", ")
        },
        mem.trim()
    );
}

/// Whole seconds and tenths.
/// 100 wrong sign-ins on the RPC socket as a browser sending `headers` would make them: what
/// each got (the reply's code, or the upgrade's HTTP status when refused).
async fn browser_sign_ins(
    t: &Target,
    headers: &[(&'static str, String)],
) -> anyhow::Result<Vec<u64>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut got = Vec::new();
    for _ in 0..100 {
        let mut req = t.url.as_str().into_client_request()?;
        for (name, value) in headers {
            req.headers_mut().insert(*name, value.parse()?);
        }
        got.push(match tokio_tungstenite::connect_async(req).await {
            Ok((mut ws, _)) => {
                let args = json!({"username": "user-2", "password": "wrong"});
                code(&call(&mut ws, "auth", args).await?)
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                u64::from(resp.status().as_u16())
            }
            Err(e) => anyhow::bail!(e),
        });
    }
    Ok(got)
}

/// A wrong sign-in posted to the REST login with the header lines `head` (each ending in
/// CRLF), over a raw connection: the whole answer.
async fn raw_login_post(t: &Target, head: &str) -> anyhow::Result<String> {
    let mut tcp = tokio::net::TcpStream::connect(t.addr).await?;
    let body = r#"{"username":"user-2","password":"wrong","ldap":false}"#;
    tcp.write_all(
        format!(
            "POST /api/v2/users/login/ HTTP/1.1\r\n{head}Content-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await?;
    Ok(answer)
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Bytes the server's state takes on disk (the SQLite file and its write-ahead log).
fn state_bytes(out: &std::path::Path) -> u64 {
    ["poolgate.sqlite3", "poolgate.sqlite3-wal"]
        .iter()
        .map(|f| std::fs::metadata(out.join("data").join(f)).map_or(0, |m| m.len()))
        .sum()
}

/// Security round 3, identity: who can keep whom out. The issue's attacks, each with its
/// own addresses (127.0.90–99.x) so that earlier rows' counters do not mix in.
async fn identity_round_3(t: &Target, out: &std::path::Path, log: &str) -> anyhow::Result<()> {
    let password = "Bazalt1!";
    let http = reqwest::Client::new();
    let login_url = format!("http://{}/api/v2/users/login/", t.addr);

    // 1. Strangers guess the admin's password from 16 addresses (5 each: their pairs' limit)
    //    while the admin signs in from an address they used before, and then from a new one.
    assert_eq!(
        code(&auth(t, [127, 0, 90, 1], "astravdi", password).await?),
        200
    );
    let mut strangers = tokio::task::JoinSet::new();
    for i in 1..=16u8 {
        let mut ws = t.connect_from([127, 0, 91, i]).await?;
        strangers.spawn(async move {
            for _ in 0..5 {
                let args = json!({"username": "astravdi", "password": "wrong"});
                if call(&mut ws, "auth", args).await.is_err() {
                    break;
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut codes, mut slowest) = (Vec::new(), Duration::ZERO);
    for _ in 0..25 {
        let started = Instant::now();
        let reply = tokio::time::timeout(
            Duration::from_secs(30),
            auth(t, [127, 0, 90, 1], "astravdi", password),
        )
        .await;
        slowest = slowest.max(started.elapsed());
        codes.push(match reply {
            Ok(Ok(r)) => code(&r),
            _ => 0,
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started = Instant::now();
    let new = auth(t, [127, 0, 92, 1], "astravdi", password).await?;
    let new = format!(
        "{} after {}{}",
        code(&new),
        secs(started.elapsed()),
        new["args"]["message"]
            .as_str()
            .map_or(String::new(), |m| format!(" ({m})"))
    );
    strangers.abort_all();
    println!(
        "| 16 addresses guess astravdi's password (5 each) while the admin signs in 25 times with \
         the right one from an address they used before, then once from a new address | known \
         address: {} (0 = no answer in 30 s), slowest {}; new address: {new} |",
        tally(&codes),
        secs(slowest)
    );

    // 2. A valid saved token, obtained elsewhere, from an address locked by made-up tokens.
    let mut elsewhere = t.connect_from([127, 0, 93, 1]).await?;
    let reply = call(
        &mut elsewhere,
        "auth",
        json!({"username": "user-2", "password": password}),
    )
    .await?;
    let token = reply["args"][0].as_str().unwrap_or_default().to_owned();
    let guess = format!("pgt_{}", "A".repeat(54));
    let mut locked = 0;
    for _ in 0..110 {
        let mut ws = t.connect_from([127, 0, 94, 1]).await?;
        if code(&call(&mut ws, "auth_token", json!({"token": guess})).await?) == 429 {
            locked += 1;
        }
    }
    let mut ws = t.connect_from([127, 0, 94, 1]).await?;
    let valid = code(&call(&mut ws, "auth_token", json!({"token": token})).await?);
    println!(
        "| a valid saved token sent from an address locked by others' guesses (110 made-up \
         tokens: {locked} × 429) | {valid} |"
    );

    // 3. One address sprays 95 usernames, then signs in to its own account; three times.
    let mut codes = Vec::new();
    for round in 0..3 {
        for i in 0..95 {
            let user = format!("colleague-{round}-{i}");
            codes.push(code(&auth(t, [127, 0, 95, 1], &user, "Summer2026!").await?));
        }
        auth(t, [127, 0, 95, 1], "user-2", password).await?;
    }
    println!(
        "| one address: 95 wrong guesses over as many usernames, then its own right sign-in, \
         three times | the 285 guesses: {} |",
        tally(&codes)
    );

    // 4. 8 000 password-less first steps for the OTP user from one address.
    let before = state_bytes(out);
    let local = std::net::IpAddr::from([127, 0, 96, 1]);
    let from_96 = reqwest::Client::builder().local_address(local).build()?;
    let mut codes = Vec::new();
    for _ in 0..8_000 {
        let status = from_96
            .post(&login_url)
            .json(&json!({"username": "user-4", "password": null, "ldap": false}))
            .send()
            .await?
            .status();
        codes.push(u64::from(status.as_u16()));
    }
    println!(
        "| 8 000 password-less first steps (`\"password\": null`) for the OTP user from one \
         address | {}; the state on disk grew {} KiB |",
        tally(&codes),
        state_bytes(out).saturating_sub(before) / 1024
    );

    // 5. 20 000 status-socket requests with a valid JWT and a wrong client_id. (user-2's: the
    //    admin's name is under the strangers' back-off here, for this new address.)
    let body: Value = http
        .post(&login_url)
        .json(&json!({"username": "user-2", "password": password, "ldap": false}))
        .send()
        .await?
        .json()
        .await?;
    let Some(jwt) = body["data"]["access_token"].as_str().map(str::to_owned) else {
        anyhow::bail!("no JWT for the status-socket row: {body}");
    };
    let before = std::fs::metadata(log).map_or(0, |m| m.len());
    let lines_before = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .count();
    let started = Instant::now();
    let someone_else = "00000000-0000-4000-8000-000000000000";
    let mut codes = Vec::new();
    for _ in 0..20_000 {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req =
            format!("ws://{}/api/v2/pools/ws/{someone_else}/", t.addr).into_client_request()?;
        req.headers_mut()
            .insert("cookie", format!("JWT={jwt}").parse()?);
        codes.push(match tokio_tungstenite::connect_async(req).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                u64::from(resp.status().as_u16())
            }
            Ok(_) => 101,
            Err(_) => 0,
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .count()
        - lines_before;
    println!(
        "| 20 000 status-socket requests with a valid JWT and a wrong client_id | {} in {}; \
         the log grew {lines} lines, {} bytes |",
        tally(&codes),
        secs(started.elapsed()),
        std::fs::metadata(log).map_or(0, |m| m.len()) - before
    );
    check_flood(t, password).await?;
    neighbour(t, password).await
}

/// 6. 30 addresses send 60 wrong sign-ins each, all at once, for names nobody has (each costs a
///    password check), while the admin signs in from an address they used before.
async fn check_flood(t: &Target, password: &str) -> anyhow::Result<()> {
    // The address the admin signed in from in the first identity row.
    let known = [127, 0, 90, 1];
    let started = Instant::now();
    let alone = code(&auth(t, known, "astravdi", password).await?);
    let quiet = started.elapsed();
    let mut flood = tokio::task::JoinSet::new();
    for i in 1..=30u8 {
        for j in 0..60u32 {
            let t = Target {
                url: t.url.clone(),
                addr: t.addr,
            };
            flood.spawn(async move {
                let user = format!("nobody-{i}-{j}");
                auth(&t, [127, 0, 98, i], &user, "wrong")
                    .await
                    .map_or(0, |r| code(&r))
            });
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let admin = code(&auth(t, known, "astravdi", password).await?);
    let during = started.elapsed();
    let codes: Vec<u64> = flood.join_all().await;
    println!(
        "| 30 addresses × 60 wrong sign-ins at once for names nobody has, while the admin signs \
         in from an address they used before | admin: {admin} in {} (before the flood: {alone} \
         in {}); the flood: {} |",
        secs(during),
        secs(quiet),
        tally(&codes)
    );
    Ok(())
}

/// 7. A neighbour behind the user's address guesses their password and sprays others'; the
///    user's browser (device cookie) there signs in.
async fn neighbour(t: &Target, password: &str) -> anyhow::Result<()> {
    let page = reqwest::Client::new()
        .get(format!("http://{}/", t.addr))
        .header("accept", "text/html")
        .send()
        .await?;
    let cookie = page
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or_default()
        .to_owned();
    let office = [127, 0, 99, 1];
    let browser = || async {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = t.url.as_str().into_client_request()?;
        req.headers_mut().insert("cookie", cookie.parse()?);
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((office, 0)))?;
        let stream = socket.connect(t.addr).await?;
        let (mut ws, _) =
            tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream)).await?;
        let args = json!({"username": "user-2", "password": password});
        anyhow::Ok(code(&call(&mut ws, "auth", args).await?))
    };
    let first = browser().await?;
    let mut guesses = Vec::new();
    for _ in 0..5 {
        guesses.push(code(&auth(t, office, "user-2", "wrong").await?));
    }
    for i in 0..100 {
        guesses.push(code(
            &auth(t, office, &format!("other-{i}"), "wrong").await?,
        ));
    }
    let stranger = code(&auth(t, office, "user-2", password).await?);
    let again = browser().await?;
    println!(
        "| a neighbour behind user-2's address guesses their password 5 times and sprays 100 \
         names; user-2 signs in there from the portal browser they used before (first: {first}) \
         | the neighbour: {}; the right password without the browser: {stranger}; with it: \
         {again} |",
        tally(&guesses)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [url, http, out, log, pool] = <[String; 5]>::try_from(a)
        .map_err(|_| anyhow::anyhow!("usage: hostile URL HTTP_ADDR OUT_DIR LOG_FILE POOL_ID"))?;
    let addr: SocketAddr = http.parse()?;
    let t = Target { url, addr };
    let out = std::path::PathBuf::from(out);
    let password = "Bazalt1!";

    // Slow and silent connections run in the background while the rest goes on.
    let cap = Duration::from_secs(40);
    let silent = tokio::spawn(lifetime(addr, b"", false, cap));
    let dripping = tokio::spawn(lifetime(
        addr,
        b"GET /api/v2/health/ HTTP/1.1\r\nHost: x\r\n",
        true,
        cap,
    ));

    println!("| what was tried | what happened |\n|---|---|");

    // 1. 20 wrong passwords for one user at once, from one address.
    let replies = futures_util::future::join_all(
        (0..20).map(|_| auth(&t, [127, 0, 50, 1], "user-2", "wrong")),
    )
    .await;
    let codes: Vec<u64> = replies.iter().map(|r| r.as_ref().map_or(0, code)).collect();
    println!(
        "| 20 wrong passwords for one user sent at once (limit 5) | {} |",
        tally(&codes)
    );

    // 2. 5 wrong passwords for the admin from one address, then the right one from another.
    for _ in 0..5 {
        auth(&t, [127, 0, 51, 1], "astravdi", "wrong").await?;
    }
    let same = code(&auth(&t, [127, 0, 51, 1], "astravdi", password).await?);
    let other = code(&auth(&t, [127, 0, 51, 2], "astravdi", password).await?);
    println!(
        "| 5 wrong passwords for `astravdi` from one address, then the right one from it and from another | same address: {same}; other address: {other} |"
    );

    // 3. 5 stale saved tokens, then the right password, from one address.
    let mut stale = Vec::new();
    for _ in 0..5 {
        let mut ws = t.connect_from([127, 0, 52, 9]).await?;
        let reply = call(
            &mut ws,
            "auth",
            json!({"username": "user-2", "password": password}),
        )
        .await?;
        stale.push(reply["args"][0].as_str().unwrap_or_default().to_owned());
        call(&mut ws, "auth_clear", json!({})).await?;
    }
    let mut ws = t.connect_from([127, 0, 52, 1]).await?;
    let mut codes = Vec::new();
    for token in &stale {
        codes.push(code(
            &call(&mut ws, "auth_token", json!({"token": token})).await?,
        ));
    }
    let then = code(
        &call(
            &mut ws,
            "auth",
            json!({"username": "user-2", "password": password}),
        )
        .await?,
    );
    println!(
        "| 5 stale saved tokens, then the right password, from the same address | tokens: {}; password: {then} |",
        tally(&codes)
    );

    // 4. 15 wrong passwords for an OTP user on one socket.
    let mut ws = t.connect_from([127, 0, 53, 1]).await?;
    let mut codes = Vec::new();
    for _ in 0..15 {
        codes.push(code(
            &call(
                &mut ws,
                "auth",
                json!({"username": "user-4", "password": "wrong"}),
            )
            .await?,
        ));
    }
    println!(
        "| 15 wrong passwords for an OTP user on one socket | {} |",
        tally(&codes)
    );

    // 5. Hardware-token / ADFS users with any password vs an unknown user (median of 9).
    let mut times = Vec::new();
    for (i, (user, pw)) in [("user-3", "x"), ("user-5", "x"), ("nobody", "x")]
        .iter()
        .enumerate()
    {
        let mut ms = Vec::new();
        let mut last = 0;
        for j in 0..9u8 {
            let started = Instant::now();
            last = code(&auth(&t, [127, 0, 54 + i as u8, j + 1], user, pw).await?);
            ms.push(started.elapsed().as_secs_f64() * 1e3);
        }
        ms.sort_by(f64::total_cmp);
        times.push(format!("{user}: {last} in {:.0} ms", ms[4]));
    }
    println!(
        "| user-3 / user-5 (hardware token / ADFS) with any password, and an unknown user | {} |",
        times.join("; ")
    );

    // 6. The command provisioner: its environment, and a background child at the deadline.
    let mut admin = t.connect_from([127, 0, 60, 1]).await?;
    call(
        &mut admin,
        "auth",
        json!({"username": "astravdi", "password": password}),
    )
    .await?;
    let step1 = call(&mut admin, "pool_request", json!({"pool_id": pool})).await?;
    let task = step1["args"]["task"]["id"].clone();
    let started = Instant::now();
    let mut status = String::new();
    while started.elapsed() < Duration::from_secs(20) {
        let r = call(&mut admin, "task", json!({"task_id": task})).await?;
        // `rpc/task` answers with the task itself.
        status = r["args"]["status"].as_str().unwrap_or("?").to_owned();
        if ["COMPLETED", "FAILED", "CANCELLED"].contains(&status.as_str()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let env = std::fs::read_to_string(out.join("env.txt")).unwrap_or_default();
    let secrets: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .filter(|k| k.starts_with("POOLGATE_"))
        .collect();
    println!(
        "| the command provisioner's script prints its environment | {} variables; broker secrets seen: {} |",
        env.lines().count(),
        if secrets.is_empty() {
            "none".to_owned()
        } else {
            secrets.join(", ")
        }
    );
    parent_environ_row(&out);
    let _ = call(&mut admin, "connect_info", json!({"pool_id": pool})).await?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let bg = std::fs::read_to_string(out.join("bg.pid")).unwrap_or_default();
    let alive = !bg.trim().is_empty()
        && std::process::Command::new("kill")
            .args(["-0", bg.trim()])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    println!(
        "| a background child of the script, after the step's deadline | step 1 {status}; child {} |",
        if alive { "still running" } else { "gone" }
    );

    // 7. A release step that hangs.
    let started = Instant::now();
    let reply = tokio::time::timeout(
        Duration::from_secs(15),
        call(
            &mut admin,
            "admin_release",
            json!({"username": "astravdi", "pool_id": pool}),
        ),
    )
    .await;
    let answer = match reply {
        Ok(Ok(r)) => format!(
            "answered {} in {:.1} s",
            code(&r),
            started.elapsed().as_secs_f64()
        ),
        Ok(Err(e)) => format!("failed: {e}"),
        Err(_) => "no answer in 15 s".into(),
    };
    let identify = tokio::time::timeout(
        Duration::from_secs(5),
        call(&mut admin, "identify", json!({})),
    )
    .await;
    println!(
        "| a `release` step that hangs | admin_release {answer}; the socket afterwards: {} |",
        if matches!(identify, Ok(Ok(_))) {
            "answers"
        } else {
            "dead"
        }
    );

    // 8. 50 refused sign-ins with 60 KiB usernames.
    let before = std::fs::metadata(&log).map_or(0, |m| m.len());
    let long = "u".repeat(60 * 1024);
    let mut codes = Vec::new();
    for i in 0..50u8 {
        codes.push(code(&auth(&t, [127, 0, 70, 1 + i % 5], &long, "x").await?));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grew = std::fs::metadata(&log).map_or(0, |m| m.len()) - before;
    println!(
        "| 50 refused sign-ins with 60 KiB usernames | {}; the log grew {grew} bytes |",
        tally(&codes)
    );

    transport_round_3(&t).await?;
    identity_round_3(&t, &out, &log).await?;

    println!("| a silent TCP connection | {} |", silent.await?);
    println!("| a slowly dripping HTTP request | {} |", dripping.await?);
    Ok(())
}
