//! The poolgate process's own hardening, done first thing in `main` while it is the only
//! thread: secrets given in the environment are taken out of it, and the process is made
//! non-dumpable.
//!
//! A command provisioner's program is poolgate's child: it gets a clean environment
//! (`provision::command`), but it could read its parent's from `/proc/$PPID/environ`, and
//! `POOLGATE_JWT_SECRET` there would let it forge any user's JWT. So at start-up:
//!
//! * each secret variable ([`SECRET_VARS`], and what [`take`] is given later) is read once,
//!   kept here for the code that needs it ([`var`]), removed from the environment (so nothing
//!   spawned without a clean environment inherits it), and its bytes in the kernel's copy —
//!   the block on the initial stack that `/proc/PID/environ` shows, which `unsetenv` leaves
//!   alone — are overwritten with NULs. This is what protects a child of the same user *and*
//!   one of root when poolgate runs as root;
//! * the process is made non-dumpable (`PR_SET_DUMPABLE` 0): its `/proc/PID/environ`, `mem`,
//!   `maps` and the like belong to root and another process of the same (non-root) user can
//!   neither read them nor ptrace it, so the secrets it keeps in its heap stay out of reach.
//!   A child running as root is not stopped by this: run poolgate (or its provisioners, with
//!   `run_as`) as an unprivileged user.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::sync::Mutex;

/// The secrets poolgate reads from its environment by a fixed name.
pub const SECRET_VARS: [&str; 4] = [
    "POOLGATE_JWT_SECRET",
    "POOLGATE_LDAP_PASSWORD",
    "POOLGATE_OIDC_CLIENT_SECRET",
    "POOLGATE_REDIS_PASSWORD",
];

/// The secrets taken out of the environment, by name.
static TAKEN: Mutex<BTreeMap<String, OsString>> = Mutex::new(BTreeMap::new());

/// Makes the process non-dumpable and takes [`SECRET_VARS`] out of the environment.
///
/// # Safety
/// No other thread may exist (nor read or write the environment) while this runs: call it
/// first thing in `main`, before a runtime is built.
pub unsafe fn harden() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_DUMPABLE) changes a flag of this process; it touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
    // SAFETY: the caller's promise.
    unsafe { take(&SECRET_VARS) };
    return_large_blocks();
}

/// Large allocations (argon2's 19 MiB per password check) go back to the kernel when freed.
///
/// glibc serves an allocation past its mmap threshold with a mapping of its own, but raises
/// that threshold to the size of every such block freed (up to 32 MiB): after the first
/// password check, each later one was carved from a malloc arena, and each arena a check ran
/// in kept its 19 MiB for good. Sign-ins run on tokio's blocking threads, so the RSS went up
/// in 19 MiB steps under a steady load (117 → 234 MiB in the soak, bench/soak.sh). A fixed
/// threshold turns the adjustment off.
fn return_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt sets a tuning parameter of glibc's allocator; it is thread-safe and
    // changes how later allocations are served, never memory already handed out.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Takes the variables `names` out of the environment (those set), keeping their values for
/// [`var`], and overwrites them in the kernel's copy of the initial environment.
///
/// # Safety
/// No other thread may exist while this runs (`remove_var` is only sound single-threaded,
/// and the bytes overwritten must not be read meanwhile).
pub unsafe fn take(names: &[&str]) {
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    for &name in names {
        let Some(value) = std::env::var_os(name) else {
            continue;
        };
        taken.insert(name.to_owned(), value);
        // SAFETY: the caller's promise that no other thread exists; the strings found are
        // those of the initial environment (nothing has called setenv for these names: if
        // something had, the string would be a heap copy, also ours to overwrite) and are
        // no longer in `environ` once removed, so nothing reads them afterwards.
        unsafe {
            let entries = entries_of(name);
            std::env::remove_var(name);
            for (start, len) in entries {
                std::ptr::write_bytes(start, 0, len);
            }
        }
    }
}

/// The `NAME=value` strings of `name` in `environ` (a name may appear more than once): their
/// starts and lengths.
#[cfg(unix)]
unsafe fn entries_of(name: &str) -> Vec<(*mut u8, usize)> {
    unsafe extern "C" {
        static mut environ: *const *mut libc::c_char;
    }
    let mut found = Vec::new();
    // SAFETY: `environ` is a NULL-terminated array of NUL-terminated strings, unchanged while
    // this single thread reads it.
    unsafe {
        let mut p = environ;
        if p.is_null() {
            return found;
        }
        while !(*p).is_null() {
            let entry = std::ffi::CStr::from_ptr(*p).to_bytes();
            if entry.len() > name.len()
                && entry.starts_with(name.as_bytes())
                && entry[name.len()] == b'='
            {
                found.push(((*p).cast::<u8>(), entry.len()));
            }
            p = p.add(1);
        }
    }
    found
}

#[cfg(not(unix))]
unsafe fn entries_of(_name: &str) -> Vec<(*mut u8, usize)> {
    Vec::new()
}

/// A secret variable: the value taken at start-up, else the environment's (in-process tests
/// and library users never call [`harden`]).
pub fn var_os(name: &str) -> Option<OsString> {
    let taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    match taken.get(name) {
        Some(v) => Some(v.clone()),
        None => std::env::var_os(name),
    }
}

/// [`var_os`] as UTF-8 text, like `std::env::var`.
pub fn var(name: &str) -> Result<String, std::env::VarError> {
    match var_os(name) {
        None => Err(std::env::VarError::NotPresent),
        Some(v) => v.into_string().map_err(std::env::VarError::NotUnicode),
    }
}
