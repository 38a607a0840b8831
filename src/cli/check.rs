//! `poolgate check-config`: every check `serve` runs on a config, without serving or writing,
//! each problem named with its key and line.

use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::Args;

use crate::config::Config;
use crate::preflight::{self, Problem};
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

/// Checks the file: every problem at once, a line each, or `ok`.
pub fn run(args: CheckArgs) -> anyhow::Result<()> {
    check(&args.config, args.connect)
}

/// Reads the config and runs the checks the way `serve` would: every rule, reference and file
/// (and with `connect`, what it reaches), then, when all of them pass, the state built as
/// serving builds it but writing nothing (`AppState::check`). Lists every problem found, each
/// with its key, line and column, in the order of the file.
fn check(path: &Path, connect: bool) -> anyhow::Result<()> {
    let loaded = Config::read(path)?;
    let runtime = super::runtime()?;
    let _entered = runtime.enter();
    let (config, sources) = (loaded.config, loaded.sources);
    let mut problems = preflight::problems(&config, &loaded.problems, &sources);
    let mut warnings: Vec<Problem> = preflight::warnings(&config);
    if connect {
        let reached = runtime.block_on(preflight::connect(&config));
        problems.extend(reached.problems.into_iter().map(|p| sources.in_files(p)));
        warnings.extend(reached.warnings);
        for line in &reached.found {
            println!("{line}");
        }
    }
    let warnings: Vec<Problem> = warnings.into_iter().map(|p| sources.in_files(p)).collect();
    for line in sources.render(&warnings, &[]).lines() {
        eprintln!("warning: {line}");
    }
    let names = config.browser_names();
    if problems.is_empty()
        && let Err(e) = runtime.block_on(AppState::check(config))
    {
        problems.push(Problem::new(&[], format!("{e:#}")));
    }
    if !problems.is_empty() {
        eprint!("{}", sources.render(&problems, &[]));
        let n = problems.len();
        bail!(
            "{n} problem{} in {}",
            if n == 1 { "" } else { "s" },
            path.display()
        );
    }
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
