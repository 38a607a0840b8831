//! `poolgate serve`: the config (a file or the demo dataset, then the flags), the checks
//! `check-config` runs, then [`Application`] until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use crate::app::{Application, ServerHandle};
use crate::config::{Config, Sources};
use crate::preflight::Problem;
use crate::telemetry::{self, LogFormat};

#[derive(Args, Default)]
pub struct ServeArgs {
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
    /// The file (or the demo dataset), then the flags: flags win; with what reading the
    /// file found wrong and the files it was read from. Validated when the state is built
    /// from it.
    fn config(&self) -> anyhow::Result<(Config, Vec<Problem>, Sources)> {
        let (mut config, read, sources) = match &self.config {
            Some(path) => {
                let loaded = Config::read(path)?;
                (loaded.config, loaded.problems, loaded.sources)
            }
            None => (Config::demo(), Vec::new(), Sources::none()),
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
        Ok((config, read, sources))
    }

    /// The keys a flag set (their problems are not pointed at in the file).
    fn flags(&self) -> Vec<&'static str> {
        [
            ("listen", self.listen.is_some()),
            ("data_dir", self.data_dir.is_some()),
            ("token_ttl", self.token_ttl.is_some()),
            ("idle_timeout", self.idle_timeout.is_some()),
            ("auth_grace", self.auth_grace.is_some()),
            ("max_connections", self.max_connections.is_some()),
            ("tls_cert", self.tls_cert.is_some()),
            ("tls_key", self.tls_key.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect()
    }

    /// What `check-config` checks, and what serving reaches first (the directories it writes,
    /// the state store, the directory), before anything is bound or written: every problem at
    /// once, with the line and column of its key in the file (not for values given as flags).
    /// Then the warnings, logged once each.
    async fn preflight(
        &self,
        config: &Config,
        read: &[Problem],
        sources: &Sources,
    ) -> anyhow::Result<()> {
        let flags = self.flags();
        // A value the file gets wrong and a flag replaces is not a problem.
        let read: Vec<Problem> = read
            .iter()
            .filter(|p| !flags.contains(&p.key_path().as_str()))
            .cloned()
            .collect();
        let mut problems = crate::preflight::problems(config, &read, sources);
        let mut warnings = crate::preflight::warnings(config);
        if problems.is_empty() {
            let reached = crate::preflight::serving(config).await;
            problems.extend(reached.problems);
            warnings.extend(reached.warnings);
        }
        let in_files = |list: Vec<Problem>| -> Vec<Problem> {
            list.into_iter().map(|p| sources.in_files(p)).collect()
        };
        for line in sources.render(&in_files(warnings), &flags).lines() {
            tracing::warn!("{line}");
        }
        if problems.is_empty() {
            return Ok(());
        }
        let n = problems.len();
        bail!(
            "the configuration cannot be served ({n} problem{}):\n{}",
            if n == 1 { "" } else { "s" },
            sources.render(&in_files(problems), &flags).trim_end()
        );
    }

    /// An error of start-up that names a key (`listen: cannot listen on …`), at that key's
    /// place in the file.
    fn located(&self, error: anyhow::Error, sources: &Sources) -> anyhow::Error {
        let message = format!("{error:#}");
        for key in ["listen", "metrics_listen"] {
            if let Some(rest) = message.strip_prefix(&format!("{key}: ")) {
                let problem = Problem::new(&[key], rest);
                let shown = sources.render(&[problem], &self.flags());
                return anyhow::anyhow!("{}", shown.trim_end());
            }
        }
        error
    }
}

/// Serves until SIGTERM or Ctrl-C, then drains (see [`Application::run_until_stopped`]).
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format);
    let (config, read, sources) = args.config()?;
    // The variables the settings name for secrets (a Guacamole key) leave the environment
    // like the fixed ones did in `main`.
    let named: Vec<&str> = config
        .pools
        .iter()
        .filter_map(|p| p.guacamole.as_ref()?.secret_key_env.as_deref())
        .collect();
    // SAFETY: still the only thread: the runtime is built below, and neither the log set-up
    // nor loading the settings starts a thread.
    unsafe { crate::process::take(&named) };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(args, config, read, sources))
}

async fn serve(
    args: ServeArgs,
    config: Config,
    read: Vec<Problem>,
    sources: Sources,
) -> anyhow::Result<()> {
    if args.config.is_none() {
        tracing::warn!("no --config given: serving the embedded demo dataset (password Bazalt1!)");
    }
    args.preflight(&config, &read, &sources).await?;
    let demo = config.demo;
    let app = Application::build(config)
        .await
        .map_err(|e| args.located(e, &sources))?;
    let addr = app.local_addr();
    if demo && !addr.ip().is_loopback() {
        eprintln!(
            "\n  WARNING: this is a DEMO server (demo = true) listening on {addr}.\n  Its demo \
             users' passwords are published: anyone who reaches {addr} signs in, as an \
             administrator too.\n  Listen on 127.0.0.1 (--listen 127.0.0.1:8080), or serve a \
             config of your own with demo = false.\n"
        );
    }
    if !app.tls() && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "listening on a non-loopback address WITHOUT TLS: passwords and tokens cross the network in clear text; use --tls-cert and --tls-key");
        eprintln!(
            "\n  WARNING: poolgate is listening on {addr} without TLS.\n  Passwords and tokens cross the network in clear text. Use --tls-cert/--tls-key.\n"
        );
    }
    tokio::spawn(stop_on_signal(app.handle()));
    app.run_until_stopped().await
}

/// Begins the graceful shutdown on the first SIGTERM or Ctrl-C (running tasks may finish
/// within `drain_timeout`), stops at once on the second, and exits on the third (whatever is
/// still running).
async fn stop_on_signal(server: ServerHandle) {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("cannot install the SIGTERM handler");
    for nth in 1.. {
        #[cfg(unix)]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        match nth {
            1 => {
                tracing::info!("shutting down (a second signal stops at once)");
                server.stop();
            }
            2 => {
                tracing::info!(
                    "stopping at once: running tasks are cancelled (a third signal exits)"
                );
                server.stop_now();
            }
            _ => {
                tracing::warn!("exiting on a third signal");
                std::process::exit(130);
            }
        }
    }
}
