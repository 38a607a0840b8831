//! The `poolgate` command's subcommands, one file per command group, each a function that
//! `main.rs` calls with the arguments clap parsed: `serve`, `check-config`, `hash-password`,
//! `user`, `connect`, `admin` and `backup`. What they share (reading a password, where a client keeps
//! its token, a runtime for one-shot commands) is here.

pub mod admin;
pub mod backup;
pub mod check;
pub mod connect;
pub mod hash_password;
pub mod serve;
pub mod user;

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::bail;

/// How a command's failure is printed: `error: WHAT`, then each cause on its own line — what
/// a person needs. `verbose` (`-v`, or `RUST_LOG` set) adds the debug form, with the backtrace
/// when `RUST_BACKTRACE` asks for one; never by default, whatever the environment holds.
pub fn error_report(error: &anyhow::Error, verbose: bool) -> String {
    if verbose {
        return format!("error: {error:?}");
    }
    let mut text = format!("error: {error}");
    let mut last = error.to_string();
    for cause in error.chain().skip(1) {
        // Wrappers often repeat their source's text ("IO error: X", then "X").
        let cause = cause.to_string();
        if !last.contains(&cause) {
            text.push_str(&format!("\n  because: {cause}"));
        }
        last = cause;
    }
    text
}

/// A single-threaded runtime for the commands that make a few requests and exit.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
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
