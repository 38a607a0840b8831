//! The `poolgate` command's subcommands, one file per command group, each a function that
//! `main.rs` calls with the arguments clap parsed: `serve`, `check-config`, `hash-password`,
//! `user`, `connect` and `admin`. What they share (reading a password, where a client keeps
//! its token, a runtime for one-shot commands) is here.

pub mod admin;
pub mod check;
pub mod connect;
pub mod hash_password;
pub mod serve;
pub mod user;

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::bail;

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
