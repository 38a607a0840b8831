//! Logging set-up: `tracing` with an env filter (`RUST_LOG`, default `poolgate=info`), as text
//! for people or JSON lines for log collectors. Text is coloured only for a person: when stderr
//! is a terminal and `NO_COLOR` is unset or empty (no-color.org), so a log file, journald or a
//! pipe never gets escape codes.

use std::ffi::OsStr;
use std::io::IsTerminal;

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
    let colour = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour && matches!(format, LogFormat::Text))
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

/// Whether text logs get ANSI colours: on a terminal, unless `NO_COLOR` is set to anything
/// but the empty string.
pub fn use_colour(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_and_never_with_no_color_set() {
        assert!(use_colour(true, None));
        assert!(
            use_colour(true, Some(OsStr::new(""))),
            "NO_COLOR empty counts as unset"
        );
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None));
        assert!(!use_colour(false, Some(OsStr::new("1"))));
    }
}
