//! What the test targets with their own `main` (libtest-mimic: redis, ldap, browser, haproxy)
//! share: finding an outside program, libtest's selection rules, running an async case.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use libtest_mimic::{Arguments, Failed};

/// A case that needs nothing but a runtime.
pub type Case = fn() -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// The first executable file called `name` in the `PATH`, then in `extra` (for programs a
/// distribution installs where not every user's `PATH` looks, like Debian's `/usr/sbin`).
pub fn on_path_or(name: &str, extra: &[&str]) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|file| {
            std::fs::metadata(file)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// The first executable file called `name` in the `PATH`.
pub fn on_path(name: &str) -> Option<PathBuf> {
    on_path_or(name, &[])
}

/// libtest's selection rules (a substring filter, `--exact`, `--skip`), to print a skip line
/// only for the cases this run would have run.
pub fn selected(args: &Arguments, name: &str) -> bool {
    let matches = |pattern: &str| {
        if args.exact {
            name == pattern
        } else {
            name.contains(pattern)
        }
    };
    args.filter.as_deref().is_none_or(matches) && !args.skip.iter().any(|s| matches(s))
}

/// Runs a case on a runtime of its own (two workers, as on CI's machine).
pub fn run(case: Case) -> Result<(), Failed> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failed::from(format!("cannot build a runtime: {e}")))?
        .block_on(case());
    Ok(())
}
