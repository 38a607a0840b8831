//! Sign-in timings by kind of attempt: the check behind docs/security.md's "no enumeration" claim.
//!
//! Sends password sign-ins (`rpc/auth`), each on its own socket, round-robin over the kinds
//! below, and prints per kind the median and p90 of the reply time and the ratio of the
//! median to the unknown-user median. An attacker could tell kinds apart if a median stood
//! out; the answers themselves (401, 428) are the ones the issue allows.
//!
//! Run against a server whose lockout is raised out of the way (bench/signin-timing.sh does
//! that), or the lockout's refusals will be measured instead:
//!
//!     cargo run --release --example signin_timing -- ws://127.0.0.1:8080/ 40

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// (label, username, password) over the demo dataset; `Bazalt1!` is every demo password.
const KINDS: [(&str, &str, &str); 9] = [
    ("unknown user", "nobody", "Bazalt1!"),
    ("wrong password", "astravdi", "wrong"),
    ("disabled user, wrong password", "user-1", "wrong"),
    ("TOTP user, wrong password", "user-4", "wrong"),
    ("TOTP user, right password", "user-4", "Bazalt1!"),
    ("hardware-token user, wrong password", "user-3", "wrong"),
    ("hardware-token user, right password", "user-3", "Bazalt1!"),
    ("ADFS user, wrong password", "user-5", "wrong"),
    ("ADFS user, right password", "user-5", "Bazalt1!"),
];

async fn attempt(url: &str, user: &str, password: &str) -> anyhow::Result<(Duration, u64)> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let frame = json!({"namespace": "rpc", "name": "auth", "id": 1,
        "args": {"username": user, "password": password}});
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "ws://127.0.0.1:8080/".into());
    let rounds: usize = args.next().map_or(Ok(40), |n| n.parse())?;
    let mut times = vec![Vec::new(); KINDS.len()];
    let mut codes = vec![std::collections::BTreeSet::new(); KINDS.len()];
    // One warm-up round (the dummy hash is made on first use), then the measured rounds,
    // interleaved so that drift in the machine's speed hits every kind alike.
    for round in 0..=rounds {
        for (i, (_, user, password)) in KINDS.iter().enumerate() {
            let (took, code) = attempt(&url, user, password).await?;
            if round > 0 {
                times[i].push(took);
                codes[i].insert(code);
            }
        }
    }
    let median = |i: usize| {
        let mut t = times[i].clone();
        t.sort();
        (quantile(&t, 0.5), quantile(&t, 0.9))
    };
    let base = median(0).0.as_secs_f64();
    println!("{rounds} sign-ins per kind, one socket each, interleaved\n");
    println!(
        "| attempt | answer | median ms | p90 ms | median / unknown user's |\n|---|---|---|---|---|"
    );
    let mut worst: f64 = 1.0;
    for (i, (label, _, _)) in KINDS.iter().enumerate() {
        let (p50, p90) = median(i);
        let ratio = p50.as_secs_f64() / base;
        worst = worst.max(ratio).max(1.0 / ratio);
        let answers: Vec<String> = codes[i].iter().map(u64::to_string).collect();
        println!(
            "| {label} | {} | {:.1} | {:.1} | {ratio:.2} |",
            answers.join(", "),
            p50.as_secs_f64() * 1e3,
            p90.as_secs_f64() * 1e3
        );
    }
    println!("\nlargest median ratio between any kind and the unknown user: {worst:.2}");
    Ok(())
}
