//! `poolgate connect`: a command-line client over the WebSocket RPC. It signs in (saved token
//! first, then password and one-time code, prompted without echo), runs the two steps while
//! showing the pushed task events, prints the connection data and writes a launcher file:
//! `.rdp` for RDP pools, `.vv` (virt-viewer) for SPICE/GLINT-style ones.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// What `poolgate connect` was asked to do.
pub struct Options {
    pub server: String,
    pub user: String,
    pub pool: String,
    /// Where the token is saved for re-use (0600).
    pub token_file: PathBuf,
    /// Where the launcher file goes.
    pub out_dir: PathBuf,
    /// Read the password from stdin instead of prompting.
    pub password_stdin: bool,
    /// Single sign-on: `auth_sso` instead of a password.
    pub sso: bool,
    /// Launch the system's viewer on the file.
    pub open: bool,
    /// Extra trusted CA certificates (PEM) for a `wss://` server with a private CA.
    pub ca_file: Option<PathBuf>,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Session {
    ws: Ws,
    next_id: u64,
}

/// Longest wait for one step; the server ends every task within its deadline anyway.
const STEP_TIMEOUT: Duration = Duration::from_secs(180);

impl Session {
    async fn call(
        &mut self,
        name: &str,
        args: Value,
        mut on_event: impl FnMut(&Value),
    ) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id.to_string();
        let req = json!({"namespace": "rpc", "name": name, "id": id, "args": args});
        self.ws.send(Message::Text(req.to_string().into())).await?;
        loop {
            let frame = self.next().await?;
            if frame["namespace"] == "events" {
                on_event(&frame);
                continue;
            }
            if frame["id"] == json!(id) {
                return Ok(frame);
            }
        }
    }

    async fn next(&mut self) -> anyhow::Result<Value> {
        loop {
            let msg = tokio::time::timeout(STEP_TIMEOUT, self.ws.next())
                .await
                .context("the server went quiet")?
                .context("the server closed the connection")??;
            match msg {
                Message::Text(t) => return Ok(serde_json::from_str(&t)?),
                Message::Close(frame) => bail!(
                    "the server closed the connection: {}",
                    frame.map(|f| f.reason.to_string()).unwrap_or_default()
                ),
                _ => continue,
            }
        }
    }
}

/// An error reply's code and what it says: its message, and its `detail` when it has one
/// (e.g. when a refused pool may be asked again).
fn error_of(reply: &Value) -> Option<(u64, String)> {
    (reply["name"] == "error").then(|| {
        let args = &reply["args"];
        let mut said = args["message"].as_str().unwrap_or("").to_owned();
        if let Some(detail) = args["detail"].as_str().filter(|d| !said.contains(d)) {
            said = format!("{said} {detail}");
        }
        (args["code"].as_u64().unwrap_or(0), said)
    })
}

fn read_secret(prompt: &str, from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        let line = line.trim_end_matches(['\r', '\n']).to_owned();
        if line.is_empty() {
            bail!("{prompt} expected on stdin");
        }
        return Ok(line);
    }
    Ok(rpassword::prompt_password(format!("{prompt}: "))?)
}

/// Writes the token to a new 0600 file beside `path` and renames it over `path`: a file that
/// was there (say 0644, from an older version or a `touch`) is replaced, never written into,
/// so the token is never readable by others, not even for a moment.
fn save_token(path: &Path, token: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .context("the token file needs a file name")?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let written = (|| {
        let mut file = opts.open(&tmp)?;
        // The mode given at creation is narrowed by the umask only; set it exactly.
        #[cfg(unix)]
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        file.write_all(token.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.with_context(|| format!("cannot save the token to {}", path.display()))
}

/// Opens the WebSocket to `server`, first warning on stderr when a password or token would
/// cross the network in clear text (`ws://` to a host that is not this machine).
async fn open(server: &str, ca_file: Option<&Path>) -> anyhow::Result<Ws> {
    if server
        .get(..5)
        .is_some_and(|s| s.eq_ignore_ascii_case("ws://"))
        && !crate::domain::is_loopback_url(server)
    {
        eprintln!(
            "warning: {server} is not encrypted (ws://) and not on this machine: the password \
             and token are sent in clear text; use wss://"
        );
    }
    // The system's CAs and --ca-file's, with the process's one crypto provider (never the
    // one a build happens to link).
    let tls = crate::tls::client_config(ca_file)?;
    let connector = tokio_tungstenite::Connector::Rustls(std::sync::Arc::new(tls));
    let (ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(server, None, false, Some(connector))
            .await
            .with_context(|| format!("cannot connect to {server}"))?;
    Ok(ws)
}

/// Who signs in, and where the token is kept.
pub struct Login {
    pub user: String,
    pub token_file: PathBuf,
    /// Read the password (and one-time code) from stdin instead of prompting.
    pub password_stdin: bool,
    /// Single sign-on: `auth_sso` (the browser hand-off) instead of a password.
    pub sso: bool,
    /// Extra trusted CA certificates (PEM) for a `wss://` server with a private CA.
    pub ca_file: Option<PathBuf>,
}

async fn sign_in(s: &mut Session, o: &Login) -> anyhow::Result<()> {
    if let Ok(saved) = std::fs::read_to_string(&o.token_file) {
        let reply = s
            .call("auth_token", json!({"token": saved.trim()}), |_| {})
            .await?;
        if error_of(&reply).is_none() {
            eprintln!("Signed in with the saved token.");
            return Ok(());
        }
    }
    let mut reply = if o.sso {
        s.call("auth_sso", json!({}), |_| {}).await?
    } else {
        let password = read_secret("Password", o.password_stdin)?;
        s.call(
            "auth",
            json!({"username": o.user, "password": password}),
            |_| {},
        )
        .await?
    };
    // Single sign-on: the person signs in on another device; the token comes on this socket.
    if let Some((428, _)) = error_of(&reply)
        && reply["args"]["verification_uri_complete"].is_string()
    {
        reply = handoff(s, &reply["args"])?.await?;
    }
    if let Some((428, _)) = error_of(&reply) {
        match reply["args"]["err_code"].as_u64() {
            Some(100) => {
                let mfa = reply["args"]["mfa_token"].as_str().unwrap_or("").to_owned();
                let code = read_secret("One-time code", o.password_stdin)?;
                reply = s
                    .call(
                        "otp_verify",
                        json!({"mfa_token": mfa, "otp_code": code}),
                        |_| {},
                    )
                    .await?;
            }
            Some(102) => bail!(
                "{} signs in with a security key, which `poolgate connect` cannot use yet; sign \
                 in at the web portal (this server's address in a browser) instead",
                o.user
            ),
            Some(101) => bail!(
                "{} signs in through single sign-on, which this server does not offer; ask \
                 your administrator",
                o.user
            ),
            _ => bail!(
                "{}",
                reply["args"]["detail"]
                    .as_str()
                    .unwrap_or("this sign-in method is not supported here")
            ),
        }
    }
    if let Some((code, message)) = error_of(&reply) {
        bail!("sign-in failed ({code}): {message}");
    }
    let token = reply["args"][0].as_str().context("no token in the reply")?;
    save_token(&o.token_file, token)?;
    Ok(())
}

/// Shows where to sign in (the link, the code and the link as a terminal QR code) and waits
/// for the pushed `auth_sso` event. Answers in the form of an `auth` reply: the token, or the
/// error (a 428 with an `mfa_token` when a one-time code is still due).
fn handoff<'a>(
    s: &'a mut Session,
    args: &Value,
) -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<Value>> + 'a> {
    let link = args["verification_uri_complete"]
        .as_str()
        .unwrap_or_default();
    let qr = qrcode::QrCode::new(link.as_bytes())?
        .render::<qrcode::render::unicode::Dense1x2>()
        .quiet_zone(true)
        .build();
    eprintln!(
        "Sign in on another device: open {} and enter the code {}, or scan:\n\n{qr}\n{link}\n",
        args["verification_uri"].as_str().unwrap_or_default(),
        args["user_code"].as_str().unwrap_or_default(),
    );
    let wait = Duration::from_secs(args["expires_in"].as_u64().unwrap_or(600) + 10);
    Ok(async move {
        let event = tokio::time::timeout(wait, async {
            // Not `Session::next`: the person may take longer than one step's timeout.
            while let Some(msg) = s.ws.next().await {
                if let Message::Text(text) = msg? {
                    let frame: Value = serde_json::from_str(&text)?;
                    if frame["namespace"] == "events" && frame["name"] == "auth_sso" {
                        return anyhow::Ok(frame["args"].clone());
                    }
                }
            }
            bail!("the server closed the connection")
        })
        .await
        .context("nobody signed in before the code expired")??;
        Ok(match event["code"].as_u64() {
            Some(200) => json!({"name": "response", "args": [event["token"], event["ttl"]]}),
            _ => json!({"name": "error", "args": event}),
        })
    })
}

fn spinner() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// A task's state in words: "in progress (40 %)", "done", "failed" (the label says which step).
fn describe(task: &Value) -> String {
    let status = task["status"].as_str().unwrap_or("?");
    let mut s = match status {
        "PENDING" | "CREATED" => "waiting".to_owned(),
        "RUNNING" | "IN_PROGRESS" => "in progress".to_owned(),
        "COMPLETED" => "done".to_owned(),
        "FAILED" => "failed".to_owned(),
        "CANCELLED" => "cancelled".to_owned(),
        other => other.to_lowercase(),
    };
    if let Some(p) = task["progress"].as_u64()
        && status != "COMPLETED"
    {
        s.push_str(&format!(" ({p} %)"));
    }
    s
}

/// Runs one step until it yields `key` (`task` done for step 1, `connection` for step 2).
async fn step(s: &mut Session, method: &str, args: Value, label: &str) -> anyhow::Result<Value> {
    let bar = spinner();
    for attempt in 1..=3 {
        bar.set_message(format!("{label}…"));
        let reply = s.call(method, args.clone(), |_| {}).await?;
        if let Some((code, message)) = error_of(&reply) {
            bar.finish_and_clear();
            bail!("{label} refused ({code}): {message}");
        }
        if reply["args"].get("connection").is_some() {
            bar.finish_and_clear();
            return Ok(reply["args"]["connection"].clone());
        }
        let task = reply["args"]["task"].clone();
        let id = task["id"].clone();
        let mut status = task["status"].as_str().unwrap_or("").to_owned();
        // Why the task ended, if it says: printed above the spinner on a terminal, and part of
        // the error (the spinner prints nothing without a terminal).
        let mut why = String::new();
        bar.set_message(format!("{label}: {}", describe(&task)));
        while status == "PENDING" || status == "RUNNING" {
            let frame = s.next().await?;
            if frame["namespace"] == "events" && frame["args"]["id"] == id {
                status = frame["args"]["status"].as_str().unwrap_or("").to_owned();
                bar.set_message(format!("{label}: {}", describe(&frame["args"])));
                if status != "PENDING"
                    && status != "RUNNING"
                    && let Some(msg) = frame["args"]["error"]["message"].as_str()
                {
                    bar.println(format!("{label}: {status}: {msg}"));
                    why = format!(": {msg}");
                }
            }
        }
        match status.as_str() {
            "COMPLETED" if method == "pool_request" => {
                bar.finish_and_clear();
                return Ok(task);
            }
            "COMPLETED" => continue, // ask again for the connection data
            "FAILED" if method == "pool_request" => {
                bar.finish_and_clear();
                bail!("{label} failed{why}");
            }
            _ => bar.println(format!(
                "{label}: attempt {attempt} ended {status}; trying again"
            )),
        }
    }
    bar.finish_and_clear();
    bail!("{label} did not succeed after 3 attempts")
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    let ws = open(&o.server, o.ca_file.as_deref()).await?;
    let mut s = Session { ws, next_id: 0 };
    sign_in(
        &mut s,
        &Login {
            user: o.user.clone(),
            token_file: o.token_file.clone(),
            password_stdin: o.password_stdin,
            sso: o.sso,
            ca_file: o.ca_file.clone(),
        },
    )
    .await?;

    let pools = s.call("pools", json!({}), |_| {}).await?;
    if let Some((code, message)) = error_of(&pools) {
        bail!("cannot list pools ({code}): {message}");
    }
    let pool = pools["args"]
        .as_array()
        .and_then(|ps| {
            ps.iter()
                .find(|p| p["name"] == o.pool.as_str() || p["id"] == o.pool.as_str())
        })
        .cloned()
        .with_context(|| format!("{} has no pool {:?}", o.user, o.pool))?;
    let pool_id = pool["id"].clone();

    step(
        &mut s,
        "pool_request",
        json!({"pool_id": pool_id}),
        "Getting a machine",
    )
    .await?;
    let conn = step(
        &mut s,
        "connect_info",
        json!({"pool_id": pool_id, "remote_protocol": 1, "width": 1920, "height": 1080}),
        "Starting the desktop",
    )
    .await?;

    // The connection data for scripts on stdout; a line for the person on stderr.
    println!("{}", serde_json::to_string_pretty(&conn)?);
    eprintln!(
        "Desktop ready: {}:{}{}",
        conn["host"].as_str().unwrap_or("?"),
        conn["port"],
        conn["verbose_name"]
            .as_str()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default()
    );
    // The server renders the file (`rpc/launcher`), as it does for the web portal.
    let reply = s
        .call("launcher", json!({"pool_id": pool_id}), |_| {})
        .await?;
    if let Some((code, message)) = error_of(&reply) {
        bail!("cannot get the launcher file ({code}): {message}");
    }
    let (Some(file), Some(text)) = (
        reply["args"]["filename"].as_str(),
        reply["args"]["content"].as_str(),
    ) else {
        bail!("the server's launcher reply has no file: {reply}");
    };
    // The server already reduces the name to a plain file name; never leave `out_dir`.
    let file = std::path::Path::new(file)
        .file_name()
        .context("the server's launcher file name is not a file name")?;
    std::fs::create_dir_all(&o.out_dir)?;
    let path = o.out_dir.join(file);
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("Launcher written to {}", path.display());
    if o.open {
        let opener = if cfg!(target_os = "macos") {
            "open"
        } else {
            "xdg-open"
        };
        std::process::Command::new(opener)
            .arg(&path)
            .spawn()
            .with_context(|| format!("cannot run {opener}"))?;
    }
    Ok(())
}

/// `poolgate admin`: signs in like `connect` (saved token first) and runs one admin method;
/// returns its result, or an error carrying the server's message.
pub async fn admin(
    server: &str,
    login: &Login,
    method: &str,
    args: Value,
) -> anyhow::Result<Value> {
    let ws = open(server, login.ca_file.as_deref()).await?;
    let mut s = Session { ws, next_id: 0 };
    sign_in(&mut s, login).await?;
    let reply = s.call(method, args, |_| {}).await?;
    if let Some((code, message)) = error_of(&reply) {
        bail!("{method} refused ({code}): {message}");
    }
    Ok(reply["args"].clone())
}

/// Signs in and calls a paged admin method (`admin_audit`) until its last page, handing each
/// item of each page's `events` to `each`; after the first page the calls carry the range the
/// server resolved (`since`, `until`) and the page's `cursor`. Stops early when `each` says
/// so (false).
pub async fn admin_pages(
    server: &str,
    login: &Login,
    method: &str,
    mut args: Value,
    mut each: impl FnMut(&Value) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let ws = open(server, login.ca_file.as_deref()).await?;
    let mut s = Session { ws, next_id: 0 };
    sign_in(&mut s, login).await?;
    loop {
        let reply = s.call(method, args.clone(), |_| {}).await?;
        if let Some((code, message)) = error_of(&reply) {
            bail!("{method} refused ({code}): {message}");
        }
        let page = &reply["args"];
        for item in page["events"].as_array().into_iter().flatten() {
            if !each(item)? {
                return Ok(());
            }
        }
        let Some(cursor) = page["cursor"].as_str() else {
            return Ok(());
        };
        args["cursor"] = cursor.into();
        args["since"] = page["since"].clone();
        args["until"] = page["until"].clone();
    }
}
