//! Sign-in latency with and without the directory: what an LDAP / Active Directory adds.
//!
//! Sends password sign-ins (`rpc/auth`), each on its own socket, interleaved over the kinds
//! below, and prints each kind's p50 and p99 reply time, and what the directory adds to a
//! sign-in. Local users cost one argon2id verification; directory users the same (a dummy one,
//! so that reply times do not tell the kinds of names apart) alongside a service-account search
//! on a kept connection and their own bind on a new connection (an unknown name binds too).
//!
//! Run against a server with the tests' directory (bench/directory.sh starts both):
//!
//!     cargo run --release --example directory_signin -- ws://127.0.0.1:8080/ 200

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// (label, username, password, ldap) over the demo dataset and tests/ldap/data.ldif.
const KINDS: [(&str, &str, &str, bool); 5] = [
    ("local user, right password", "astravdi", "Bazalt1!", false),
    ("local user, wrong password", "astravdi", "wrong", false),
    ("directory user, right password", "alice", "alice-pw", true),
    ("directory user, wrong password", "alice", "wrong", false),
    (
        "unknown name (asked of the directory)",
        "nobody",
        "wrong",
        false,
    ),
];

async fn attempt(
    url: &str,
    user: &str,
    password: &str,
    ldap: bool,
) -> anyhow::Result<(Duration, u64)> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let frame = json!({"namespace": "rpc", "name": "auth", "id": 1,
        "args": {"username": user, "password": password, "ldap": ldap}});
    let started = Instant::now();
    ws.send(Message::text(frame.to_string())).await?;
    loop {
        let Some(msg) = ws.next().await else {
            anyhow::bail!("closed before the reply")
        };
        if let Message::Text(text) = msg? {
            let reply: Value = serde_json::from_str(&text)?;
            if reply["id"] == 1 {
                let code = reply["args"]["code"].as_u64().unwrap_or(200);
                return Ok((started.elapsed(), code));
            }
        }
    }
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
    let rounds: usize = args.next().map_or(Ok(200), |n| n.parse())?;
    let mut times = vec![Vec::new(); KINDS.len()];
    let mut codes = vec![std::collections::BTreeSet::new(); KINDS.len()];
    // A warm-up round (the kept directory connection, the dummy hash), then the measured
    // rounds, interleaved so that drift in the machine's speed hits every kind alike.
    for round in 0..=rounds {
        for (i, (_, user, password, ldap)) in KINDS.iter().enumerate() {
            let (took, code) = attempt(&url, user, password, *ldap).await?;
            if round > 0 {
                times[i].push(took);
                codes[i].insert(code);
            }
        }
    }
    for t in &mut times {
        t.sort();
    }
    println!("{rounds} sign-ins per kind, one socket each, interleaved\n");
    println!("| attempt | answer | p50 ms | p99 ms |\n|---|---|---|---|");
    for (i, (label, ..)) in KINDS.iter().enumerate() {
        let answers: Vec<String> = codes[i].iter().map(u64::to_string).collect();
        println!(
            "| {label} | {} | {:.2} | {:.2} |",
            answers.join(", "),
            ms(quantile(&times[i], 0.5)),
            ms(quantile(&times[i], 0.99))
        );
    }
    // A directory sign-in runs the same argon2id work as a local one (so reply times tell
    // no kind of name from another) alongside the directory's round trips: what the
    // directory adds is the difference.
    let added = |q: f64| ms(quantile(&times[2], q)) - ms(quantile(&times[0], q));
    println!(
        "\nthe directory adds to a right-password sign-in: p50 {:+.2} ms, p99 {:+.2} ms",
        added(0.5),
        added(0.99)
    );
    Ok(())
}
