//! `poolgate check-config`: every check `serve` runs on a config, without serving or writing,
//! each problem named with its key and line.

use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::Args;

use crate::config::Config;
use crate::preflight;
use crate::state::AppState;

#[derive(Args)]
pub struct CheckArgs {
    /// The config file to check.
    config: PathBuf,
    /// Also reach what serving needs: Redis answers (PING, with the configured password),
    /// the data directory can be written (probed with a short-lived file), the OIDC provider's
    /// discovery document and keys can be fetched (what it offers is printed). Warns (and
    /// still passes) when a Redis node keeps no append-only file.
    #[arg(long)]
    connect: bool,
}

/// Checks the file; on a failure that names a value, first prints the line it is on.
pub fn run(args: CheckArgs) -> anyhow::Result<()> {
    let path = &args.config;
    let result = check(path, args.connect);
    if let Err(e) = &result
        && let Some(line) = locate(path, e)
    {
        eprintln!("{}:{line}: the value named below", path.display());
    }
    result
}

/// Loads the config and runs the checks the way `serve` would: the files it names (and with
/// `connect`, what it reaches), then the state built as serving builds it but writing nothing
/// (`AppState::check`: validation, users, secrets, provisioners, pools). Lists every problem
/// of the first kind with its key and line.
fn check(path: &Path, connect: bool) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let runtime = super::runtime()?;
    let mut problems = preflight::files(&config);
    let mut warnings = preflight::warnings(&config);
    if connect {
        let reached = runtime.block_on(preflight::connect(&config));
        problems.extend(reached.problems);
        warnings.extend(reached.warnings);
        for line in &reached.found {
            println!("{line}");
        }
    }
    if !warnings.is_empty() {
        let text = std::fs::read_to_string(path)?;
        let shown = preflight::render(&warnings, Some((path, &text)), &[]);
        for line in shown.lines() {
            eprintln!("warning: {line}");
        }
    }
    if !problems.is_empty() {
        let text = std::fs::read_to_string(path)?;
        eprint!("{}", preflight::render(&problems, Some((path, &text)), &[]));
        let n = problems.len();
        bail!(
            "{n} problem{} in {}",
            if n == 1 { "" } else { "s" },
            path.display()
        );
    }
    let names = config.browser_names();
    runtime.block_on(AppState::check(config))?;
    println!("{}", browser_names_line(&names));
    println!("ok");
    Ok(())
}

/// The names browsers may reach this server by (`Config::browser_names`), as `check-config`
/// prints them: a browser's request naming another `Host` is refused (DNS rebinding).
fn browser_names_line(names: &crate::http::ServerNames) -> String {
    let mut shown = vec!["IP addresses".to_owned(), "localhost".to_owned()];
    shown.extend(names.names().iter().cloned());
    format!(
        "browsers may reach this server as: {} (add others to server_names)",
        shown.join(", ")
    )
}

/// The line of the last quoted name in the error that appears in the file: semantic errors
/// (an unknown user in a pool, a duplicate id) name the offending value.
fn locate(path: &Path, err: &anyhow::Error) -> Option<usize> {
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
    if let Some(line) = preflight::key_line(&text, &[first]) {
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
