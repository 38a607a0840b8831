//! `poolgate backup FILE`: a consistent copy of the SQLite state while the server runs, with
//! SQLite's online backup API (the copy restarts its pass when the server writes in between,
//! and never blocks the server for more than one small step). Restore by stopping the server
//! and putting the copy in the state file's place.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use crate::config::Config;

#[derive(Args)]
pub struct BackupArgs {
    /// Config file (TOML); without one, the embedded demo's (its data directory).
    #[arg(long, env = "POOLGATE_CONFIG")]
    config: Option<PathBuf>,
    /// The data directory, as `serve --data-dir` (overrides the config's).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where the copy goes (a new file: refused if it exists).
    file: PathBuf,
}

/// Copies the state file to `args.file` (mode 0600: it holds the sessions' digests and the
/// enrolments' secrets).
pub fn run(args: BackupArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::demo(),
    };
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    let Some(source) = config.state.sqlite_path(&config.data_dir) else {
        bail!(
            "state is {}: `poolgate backup` copies a SQLite state; back a Redis up with its own \
             persistence (an append-only file, or BGSAVE and its dump.rdb)",
            config.state
        );
    };
    if !source.exists() {
        bail!(
            "there is no state file {} (is the data directory right? give --config or \
             --data-dir as `serve` has them)",
            source.display()
        );
    }
    let pages = copy(&source, &args.file)?;
    println!(
        "backed up {} to {} ({pages} pages)",
        source.display(),
        args.file.display()
    );
    Ok(())
}

/// The online backup, into a new file made 0600; returns the pages copied.
fn copy(source: &Path, target: &Path) -> anyhow::Result<i32> {
    use rusqlite::{Connection, OpenFlags};
    let from = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open {}", source.display()))?;
    // Created first with the right mode, so the copy is never readable by others.
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(target).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::AlreadyExists => "it exists; the copy goes to a new file",
            std::io::ErrorKind::PermissionDenied => {
                "this user may not write there; choose a directory it can write, or run as root"
            }
            _ => "check the path",
        };
        anyhow::anyhow!("cannot make {}: {e}; {why}", target.display())
    })?;
    let mut to =
        Connection::open(target).with_context(|| format!("cannot open {}", target.display()))?;
    let backup = rusqlite::backup::Backup::new(&from, &mut to)?;
    backup
        .run_to_completion(256, Duration::from_millis(5), None)
        .with_context(|| format!("the copy of {} failed", source.display()))?;
    let pages = backup.progress().pagecount;
    drop(backup);
    Ok(pages)
}
