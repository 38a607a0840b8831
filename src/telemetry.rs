//! Logging set-up: `tracing` with an env filter (`RUST_LOG`, default [`DEFAULT_FILTER`]), as text
//! for people or JSON lines for log collectors. Text is coloured only for a person: when stderr
//! is a terminal and `NO_COLOR` is unset or empty (no-color.org), so a log file, journald or a
//! pipe never gets escape codes.

use std::ffi::OsStr;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// poolgate's own lines from INFO up, the libraries' warnings — except the Redis client's,
/// whose reconnection attempts during a cluster failover are hundreds of lines a second per
/// instance (poolgate says what the outage costs: 503s, retried writes).
pub const DEFAULT_FILTER: &str = "poolgate=info,redis=error,warn";

pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
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

/// A warning that a flood could repeat thousands of times a second (refused connections,
/// refused sign-ins, foreign Origins): written at most once per `every`, saying how many times
/// it happened since the last line. The first occurrence is logged at once, later ones are
/// counted; `flush`, called now and then, reports the end of a flood. The caller writes the
/// line, with only the fields it chooses (never a username or secret of the attempt).
pub struct RateLimitedLog {
    every: Duration,
    last: Mutex<Option<Instant>>,
    unlogged: AtomicU64,
}

impl RateLimitedLog {
    pub fn new(every: Duration) -> Self {
        RateLimitedLog {
            every,
            last: Mutex::new(None),
            unlogged: AtomicU64::new(0),
        }
    }

    /// Counts one occurrence; returns how many to report when a line is due now.
    pub fn hit(&self) -> Option<u64> {
        self.unlogged.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < self.every) {
            return None;
        }
        *last = Some(now);
        Some(self.unlogged.swap(0, Ordering::Relaxed))
    }

    /// Occurrences not reported yet, once a period has passed since the last line: called
    /// now and then, so the end of a flood is reported too.
    pub fn flush(&self) -> Option<u64> {
        if self.unlogged.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < self.every) {
            return None;
        }
        *last = Some(now);
        Some(self.unlogged.swap(0, Ordering::Relaxed)).filter(|n| *n > 0)
    }
}

/// How often a refusal a client can repeat at will may be written by [`warn_refusal!`].
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// A WARN line for a refusal any client can provoke at will (a foreign Origin, a token used
/// on someone else's socket, …): each call site has its own [`RateLimitedLog`], so the line
/// is written at most once per [`REFUSAL_LOG_EVERY`], with `refused` saying how many times it
/// happened since the last one. Give it the fields and the message as to `tracing::warn!`.
#[macro_export]
macro_rules! warn_refusal {
    ($($arg:tt)+) => {{
        static LOG: ::std::sync::LazyLock<$crate::telemetry::RateLimitedLog> =
            ::std::sync::LazyLock::new(|| {
                $crate::telemetry::RateLimitedLog::new($crate::telemetry::REFUSAL_LOG_EVERY)
            });
        if let Some(refused) = LOG.hit() {
            ::tracing::warn!(refused, $($arg)+);
        }
    }};
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

    #[test]
    fn the_log_writes_the_first_line_then_one_per_period_with_the_count() {
        let log = RateLimitedLog::new(Duration::from_millis(200));
        assert_eq!(log.hit(), Some(1));
        for _ in 0..999 {
            assert_eq!(log.hit(), None);
        }
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(log.hit(), Some(1000));
        log.hit();
        assert_eq!(log.flush(), None, "not before the period is over");
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(log.flush(), Some(1));
        assert_eq!(log.flush(), None);
    }
}
