//! The `poolgate` command: parse the CLI, set up logging, load the config, bind, serve.

use std::io::{IsTerminal, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use poolgate::telemetry::{self, LogFormat};
use poolgate::{AppState, Config};

#[derive(Parser)]
#[command(
    name = "poolgate",
    version,
    about = "A remote-desktop connection broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default when no subcommand is given).
    Serve(ServeArgs),
    /// Print an argon2id PHC string for the users file (password read from stdin or a prompt).
    HashPassword,
    /// Run every check `serve` runs on a config file, without serving, and exit: syntax,
    /// values, users and pools, and every file the config names. Writes nothing.
    CheckConfig {
        /// The config file to check.
        config: PathBuf,
        /// Also reach what serving needs: Redis answers (PING, with the configured password),
        /// the data directory can be written (probed with a short-lived file).
        #[arg(long)]
        connect: bool,
    },
    /// Get a desktop: sign in, run both steps with live progress, write a launcher file.
    Connect {
        /// Server WebSocket URL, e.g. wss://broker.example.com/
        #[arg(long, env = "POOLGATE_SERVER")]
        server: String,
        #[arg(long)]
        user: String,
        /// Pool name or id.
        #[arg(long)]
        pool: String,
        /// Where the token is kept for the next run (0600).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Directory for the .rdp/.vv launcher file.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Read the password (and one-time code) from stdin, one per line.
        #[arg(long)]
        password_stdin: bool,
        /// Open the launcher with the system's viewer.
        #[arg(long)]
        open: bool,
    },
    /// Run an admin method on a running server (signs in like `connect`; role admin).
    Admin {
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
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Manage users in a users file (or a config file with inline [[users]]).
    User {
        /// The TOML file holding the [[users]] tables.
        #[arg(long, short, env = "POOLGATE_USERS_FILE", default_value = "users.toml")]
        file: PathBuf,
        #[command(subcommand)]
        action: UserAction,
    },
}

#[derive(Subcommand)]
enum UserAction {
    /// Add a user (the password is read from stdin or prompted for).
    Add {
        username: String,
        /// Roles (repeatable); default: user.
        #[arg(long = "role", default_values_t = vec!["user".to_owned()])]
        roles: Vec<String>,
        #[arg(long)]
        full_name: Option<String>,
        #[arg(long)]
        email: Option<String>,
    },
    /// Set a user's password (read from stdin or prompted for).
    Passwd { username: String },
    /// Disable a user (or enable again with --enable).
    Disable {
        username: String,
        #[arg(long)]
        enable: bool,
    },
    /// List the users.
    List,
    /// Give a user a new TOTP secret; prints the otpauth:// URI and a QR code to scan.
    Totp { username: String },
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
    /// Clear failed step-1 tasks in a pool so the next request starts a new task at once.
    Reset {
        /// Pool name or id.
        pool: String,
        /// Only this user (default: every user of the pool).
        #[arg(long)]
        username: Option<String>,
    },
}

impl AdminAction {
    /// The RPC method and its arguments.
    fn request(self) -> (&'static str, serde_json::Value) {
        use serde_json::json;
        match self {
            AdminAction::Sessions => ("admin_sessions", json!({})),
            AdminAction::Tasks => ("admin_tasks", json!({})),
            AdminAction::Revoke { username } => ("admin_revoke", json!({"username": username})),
            AdminAction::Release { username, pool } => (
                "admin_release",
                json!({"username": username, "pool_id": pool}),
            ),
            AdminAction::Reset { pool, username } => {
                let mut args = json!({"pool_id": pool});
                if let Some(username) = username {
                    args["username"] = json!(username);
                }
                ("admin_reset", args)
            }
        }
    }
}

#[derive(Args, Default)]
struct ServeArgs {
    /// Config file (TOML). Without one, the embedded demo dataset is served.
    #[arg(long, env = "POOLGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Directory for poolgate's state.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Seconds of inactivity after which a token dies.
    #[arg(long, value_name = "SECS")]
    token_ttl: Option<f64>,
    /// Seconds of silence after which a connection is closed.
    #[arg(long, value_name = "SECS")]
    idle_timeout: Option<f64>,
    /// Seconds a new connection has to sign in.
    #[arg(long, value_name = "SECS")]
    auth_grace: Option<f64>,
    /// Simultaneous connections (HTTP and WebSocket alike) before new ones get 503 (default:
    /// what the open-file limit allows).
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// PEM certificate chain: serve wss:// and https:// (needs --tls-key).
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t)]
    log_format: LogFormat,
}

fn secs(s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).context("a duration must be a non-negative number of seconds")
}

impl ServeArgs {
    /// The file (or the demo dataset), then the flags: flags win. Validated when the state is
    /// built from it.
    fn config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::demo(),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(s) = self.token_ttl {
            config.token_ttl = secs(s)?;
        }
        if let Some(s) = self.idle_timeout {
            config.idle_timeout = secs(s)?;
        }
        if let Some(n) = self.max_connections {
            config.max_connections = Some(n);
        }
        if let Some(f) = &self.tls_cert {
            config.tls_cert = Some(f.clone());
        }
        if let Some(f) = &self.tls_key {
            config.tls_key = Some(f.clone());
        }
        if let Some(s) = self.auth_grace {
            config.auth_grace = secs(s)?;
        }
        Ok(config)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => serve(args),
        Command::HashPassword => {
            println!(
                "{}",
                poolgate::auth::password::hash_password(&read_password()?)?
            );
            Ok(())
        }
        Command::User { file, action } => user(&file, action),
        Command::Admin {
            server,
            user,
            token_file,
            password_stdin,
            action,
        } => {
            let token_file = token_file.unwrap_or_else(|| default_token_file(&server, &user));
            let login = poolgate::client::Login {
                user,
                token_file,
                password_stdin,
            };
            let (method, args) = action.request();
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(poolgate::client::admin(&server, &login, method, args))?;
            println!("{}", serde_json::to_string_pretty(&result)?);
            Ok(())
        }
        Command::Connect {
            server,
            user,
            pool,
            token_file,
            out,
            password_stdin,
            open,
        } => {
            let token_file = token_file.unwrap_or_else(|| default_token_file(&server, &user));
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(poolgate::client::run(poolgate::client::Options {
                    server,
                    user,
                    pool,
                    token_file,
                    out_dir: out,
                    password_stdin,
                    open,
                }))
        }
        Command::CheckConfig {
            config: path,
            connect,
        } => {
            let result = check_config(&path, connect);
            if let Err(e) = &result
                && let Some(line) = locate(&path, e)
            {
                eprintln!("{}:{line}: the value named below", path.display());
            }
            result
        }
    }
}

#[tokio::main]
async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format);
    let config = args.config()?;
    if args.config.is_none() {
        tracing::warn!("no --config given: serving the embedded demo dataset (password Bazalt1!)");
    }
    // What check-config checks, before anything is bound or written.
    let problems = poolgate::preflight::files(&config);
    if !problems.is_empty() {
        let text = args
            .config
            .as_ref()
            .and_then(|p| Some((p, std::fs::read_to_string(p).ok()?)));
        let mut flags = Vec::new();
        if args.tls_cert.is_some() {
            flags.push("tls_cert");
        }
        if args.tls_key.is_some() {
            flags.push("tls_key");
        }
        let report = poolgate::preflight::render(
            &problems,
            text.as_ref().map(|(p, t)| (p.as_path(), t.as_str())),
            &flags,
        );
        bail!("the configuration cannot be served:\n{}", report.trim_end());
    }
    let app = poolgate::Application::build(config).await?;
    let addr = app.local_addr();
    if !app.tls() && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "listening on a non-loopback address WITHOUT TLS: passwords and tokens cross the network in clear text; use --tls-cert and --tls-key");
        eprintln!(
            "\n  WARNING: poolgate is listening on {addr} without TLS.\n  Passwords and tokens cross the network in clear text. Use --tls-cert/--tls-key.\n"
        );
    }
    let server = app.handle();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        server.stop();
    });
    app.run_until_stopped().await
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("cannot install the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Loads the config and runs the checks the way `serve` would: the files it names (and with
/// `connect`, what it reaches), then the state built as serving builds it but writing nothing
/// (`AppState::check`: validation, users, secrets, provisioners, pools). Lists every problem
/// of the first kind with its key and line.
fn check_config(path: &std::path::Path, connect: bool) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut problems = poolgate::preflight::files(&config);
    if connect {
        problems.extend(runtime.block_on(poolgate::preflight::connect(&config)));
    }
    if !problems.is_empty() {
        let text = std::fs::read_to_string(path)?;
        eprint!(
            "{}",
            poolgate::preflight::render(&problems, Some((path, &text)), &[])
        );
        let n = problems.len();
        bail!(
            "{n} problem{} in {}",
            if n == 1 { "" } else { "s" },
            path.display()
        );
    }
    runtime.block_on(AppState::check(config))?;
    println!("ok");
    Ok(())
}

/// The line of the last quoted name in the error that appears in the file: semantic errors
/// (an unknown user in a pool, a duplicate id) name the offending value.
fn locate(path: &std::path::Path, err: &anyhow::Error) -> Option<usize> {
    let text = std::fs::read_to_string(path).ok()?;
    let message = format!("{err:#}");
    if message.contains(" at line ") {
        return None; // TOML syntax errors say where themselves
    }
    // Rules on one key start with its name ("token_ttl must be …", "users_file: cannot …").
    let innermost = err
        .chain()
        .last()
        .map(ToString::to_string)
        .unwrap_or_default();
    let first = innermost
        .split([' ', ':', ','])
        .next()
        .unwrap_or_default()
        .to_owned();
    if let Some(line) = poolgate::preflight::key_line(&text, &[first]) {
        return Some(line);
    }
    // The offending value is named last ("pool \"p\" lists an unknown user \"ghost\"").
    let names: Vec<&str> = message.split('"').skip(1).step_by(2).collect();
    names.iter().rev().find_map(|name| {
        let quoted = format!("\"{name}\"");
        text.lines()
            .position(|l| l.contains(&quoted))
            .map(|i| i + 1)
    })
}

/// `$XDG_CONFIG_HOME/poolgate/token-<host>-<user>` (or under ~/.config).
fn default_token_file(server: &str, user: &str) -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    let host: String = server
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    base.join("poolgate").join(format!("token-{host}-{user}"))
}

fn user(file: &std::path::Path, action: UserAction) -> anyhow::Result<()> {
    use poolgate::users_file::UsersFile;
    let mut users = UsersFile::open(file)?;
    match action {
        UserAction::Add {
            username,
            roles,
            full_name,
            email,
        } => {
            let hash = poolgate::auth::password::hash_password(&read_password()?)?;
            let id = users.add(
                &username,
                &hash,
                &roles,
                full_name.as_deref(),
                email.as_deref(),
            )?;
            users.save()?;
            println!("added {username} ({id})");
        }
        UserAction::Passwd { username } => {
            let hash = poolgate::auth::password::hash_password(&read_password()?)?;
            users.set_password(&username, &hash)?;
            users.save()?;
            println!("password changed for {username}");
        }
        UserAction::Disable { username, enable } => {
            users.set_disabled(&username, !enable)?;
            users.save()?;
            println!("{username} {}", if enable { "enabled" } else { "disabled" });
        }
        UserAction::List => {
            println!(
                "{:<20} {:<36} {:<8} {:<15} roles",
                "username", "id", "status", "mfa"
            );
            for u in users.list()? {
                let status = if u.disabled { "disabled" } else { "active" };
                println!(
                    "{:<20} {:<36} {:<8} {:<15} {}",
                    u.username,
                    u.id,
                    status,
                    u.mfa,
                    u.roles.join(",")
                );
            }
        }
        UserAction::Totp { username } => {
            let secret = poolgate::auth::otp::TotpSecret::generate_base32();
            let url =
                poolgate::auth::otp::TotpSecret::from_base32(&secret, &username)?.otpauth_url()?;
            users.set_totp(&username, &secret)?;
            users.save()?;
            let qr = qrcode::QrCode::new(url.as_bytes())?;
            let art = qr
                .render::<qrcode::render::unicode::Dense1x2>()
                .quiet_zone(true)
                .build();
            println!(
                "TOTP enabled for {username}. Scan with an authenticator app:\n\n{art}\n{url}"
            );
        }
    }
    Ok(())
}

/// A password from a no-echo prompt (twice) on a terminal, else one line of stdin.
fn read_password() -> anyhow::Result<String> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let again = rpassword::prompt_password("Again: ")?;
        if first != again {
            bail!("the passwords differ");
        }
        first
    } else {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s.trim_end_matches(['\r', '\n']).to_owned()
    };
    if password.is_empty() {
        bail!("refusing to use an empty password");
    }
    Ok(password)
}
