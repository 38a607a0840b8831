//! `poolgate admin`: one admin RPC method on a running server, signed in like `connect`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;

#[derive(Args)]
pub struct AdminArgs {
    /// Server WebSocket URL, e.g. wss://broker.example.com/
    #[arg(long, env = "POOLGATE_SERVER")]
    server: String,
    /// The admin's username.
    #[arg(long)]
    user: String,
    /// Where the token is kept for the next run (0600).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Read the password (and one-time code) from stdin, one per line.
    #[arg(long)]
    password_stdin: bool,
    /// Trust this CA certificate file (PEM) too, for a wss:// server with a private CA.
    #[arg(long, env = "POOLGATE_CA_FILE")]
    ca_file: Option<PathBuf>,
    #[command(subcommand)]
    action: AdminAction,
}

#[derive(Subcommand)]
enum AdminAction {
    /// Who is signed in, from where, since when.
    Sessions,
    /// Every PENDING or RUNNING task.
    Tasks,
    /// Revoke every token and JWT of a user.
    Revoke { username: String },
    /// Give a user's machine in a pool back, and clear the user's failed step 1 there.
    Release {
        username: String,
        /// Pool name or id.
        pool: String,
    },
    /// A one-time link with which a user registers a security key (printed with a terminal QR
    /// code).
    EnrollKey {
        username: String,
        /// Seconds the link stays usable (default 24 h).
        #[arg(long)]
        ttl: Option<f64>,
    },
    /// A user's security keys.
    Keys { username: String },
    /// Remove one of a user's security keys (even the last one).
    RemoveKey {
        username: String,
        /// The key's id, as `keys` lists it.
        id: String,
    },
    /// Clear failed step-1 tasks in a pool so the next request starts a new task at once.
    Reset {
        /// Pool name or id.
        pool: String,
        /// Only this user (default: every user of the pool).
        #[arg(long)]
        username: Option<String>,
    },
    /// Let the next person the sign-in provider signs in under this local user's name be them
    /// (a local `adfs_enabled` user is pinned to the first one).
    UnpinSso { username: String },
    /// The audit log: one line per event, newest first (an admin or an auditor).
    Audit(AuditArgs),
}

#[derive(Args)]
struct AuditArgs {
    /// From when: a span back from now (30m, 1h, 7d) or an RFC 3339 time.
    #[arg(long, default_value = "24h")]
    since: String,
    /// Until when (exclusive): a span back from now or an RFC 3339 time; default now.
    #[arg(long)]
    until: Option<String>,
    /// Only events about this user.
    #[arg(long = "user")]
    about: Option<String>,
    /// Only events of this kind (sign_in, sign_in_refused, sign_out, connect, release, revoke,
    /// admin).
    #[arg(long)]
    event: Option<String>,
    /// At most this many events.
    #[arg(long)]
    limit: Option<usize>,
    /// Oldest first (default: newest first).
    #[arg(long)]
    oldest_first: bool,
    /// Print each event as its JSON line (JSON Lines, for a SIEM) instead of columns.
    #[arg(long)]
    json: bool,
}

impl AuditArgs {
    fn request(&self) -> serde_json::Value {
        let mut args = json!({
            "since": self.since,
            "limit": self.limit.unwrap_or(1000).clamp(1, 1000),
            "order": if self.oldest_first { "oldest" } else { "newest" },
        });
        for (key, value) in [
            ("until", &self.until),
            ("user", &self.about),
            ("event", &self.event),
        ] {
            if let Some(value) = value {
                args[key] = json!(value);
            }
        }
        args
    }
}

/// An event in columns: time, event, outcome, user, actor, address, transport, pool, detail.
fn columns(event: &serde_json::Value) -> String {
    let field = |name: &str| match &event[name] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    let mut line = [
        "ts",
        "event",
        "outcome",
        "user",
        "actor",
        "ip",
        "transport",
        "pool",
    ]
    .map(field)
    .join(" ");
    if let Some(code) = event["code"].as_u64() {
        line.push_str(&format!(" {code}"));
    }
    if let Some(detail) = event["detail"].as_str() {
        line.push_str(&format!(" {detail:?}"));
    }
    line
}

impl AdminAction {
    /// The RPC method and its arguments.
    fn request(self) -> (&'static str, serde_json::Value) {
        match self {
            AdminAction::Sessions => ("admin_sessions", json!({})),
            AdminAction::Tasks => ("admin_tasks", json!({})),
            AdminAction::Revoke { username } => ("admin_revoke", json!({"username": username})),
            AdminAction::Release { username, pool } => (
                "admin_release",
                json!({"username": username, "pool_id": pool}),
            ),
            AdminAction::EnrollKey { username, ttl } => {
                let mut args = json!({"username": username});
                if let Some(ttl) = ttl {
                    args["ttl"] = json!(ttl);
                }
                ("admin_enroll_key", args)
            }
            AdminAction::Keys { username } => ("admin_keys", json!({"username": username})),
            AdminAction::RemoveKey { username, id } => {
                ("admin_remove_key", json!({"username": username, "id": id}))
            }
            AdminAction::Reset { pool, username } => {
                let mut args = json!({"pool_id": pool});
                if let Some(username) = username {
                    args["username"] = json!(username);
                }
                ("admin_reset", args)
            }
            AdminAction::UnpinSso { username } => {
                ("admin_unpin_sso", json!({"username": username}))
            }
            AdminAction::Audit(audit) => ("admin_audit", audit.request()),
        }
    }
}

/// Signs in, calls the method and prints its result as JSON.
pub fn run(args: AdminArgs) -> anyhow::Result<()> {
    let token_file = args
        .token_file
        .unwrap_or_else(|| super::default_token_file(&args.server, &args.user));
    let login = crate::client::Login {
        user: args.user,
        token_file,
        password_stdin: args.password_stdin,
        sso: false,
        ca_file: args.ca_file,
    };
    if let AdminAction::Audit(audit) = &args.action {
        let (json, mut left) = (audit.json, audit.limit.unwrap_or(usize::MAX));
        let request = audit.request();
        return super::runtime()?.block_on(crate::client::admin_pages(
            &args.server,
            &login,
            "admin_audit",
            request,
            |event| {
                if left == 0 {
                    return Ok(false);
                }
                left -= 1;
                if json {
                    println!("{}", serde_json::to_string(event)?);
                } else {
                    println!("{}", columns(event));
                }
                Ok(left > 0)
            },
        ));
    }
    let (method, call) = args.action.request();
    let result =
        super::runtime()?.block_on(crate::client::admin(&args.server, &login, method, call))?;
    if method == "admin_enroll_key"
        && let Some(url) = result["url"].as_str()
    {
        // The person opens the link on the device with their key: a QR code for a phone.
        let qr = qrcode::QrCode::new(url.as_bytes())?
            .render::<qrcode::render::unicode::Dense1x2>()
            .quiet_zone(true)
            .build();
        println!(
            "Enrolment link (single use, until {}):\n\n{qr}\n{url}",
            result["expires"].as_str().unwrap_or("?")
        );
        return Ok(());
    }
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}
