//! Logging set-up: `tracing` with an env filter (`RUST_LOG`, default `poolgate=info`), as text
//! for people or JSON lines for log collectors.

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("poolgate=info,warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// A warning that a flood could repeat thousands of times a second (refused sign-ins, refused
/// connections): logged at most once a second, with how many were folded into it. The fields
/// are only the ones given (never a username or secret of the attempt).
pub struct RateLimitedLog {
    what: &'static str,
    /// Second (since the process started) of the last line, and refusals since.
    last: std::sync::Mutex<(u64, u64)>,
    started: std::time::Instant,
}

impl RateLimitedLog {
    pub fn new(what: &'static str) -> Self {
        RateLimitedLog {
            what,
            last: std::sync::Mutex::new((u64::MAX, 0)),
            started: std::time::Instant::now(),
        }
    }

    /// Counts one occurrence; writes a line if none was written this second.
    pub fn warn(&self, reason: &str, peer: impl std::fmt::Display) {
        let second = self.started.elapsed().as_secs();
        let folded = {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            if last.0 == second {
                last.1 += 1;
                return;
            }
            let folded = last.1;
            *last = (second, 0);
            folded
        };
        tracing::warn!(reason, %peer, also_refused_since_last_line = folded, "{}", self.what);
    }
}
