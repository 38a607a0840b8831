//! State files are private: the data directory is 0700 and every file poolgate writes in it is
//! 0600, whatever the umask. The store holds token digests, TOTP steps and who uses which
//! machine; the data directory may hold the JWT signing secret. A umask of 0022 (the usual
//! default) would leave all of it world-readable, so modes are set explicitly after creation
//! (the umask only applies at `open`), and files left looser by an older version are tightened
//! at start-up.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

use anyhow::Context;

/// Mode of the data directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file poolgate writes.
pub const FILE_MODE: u32 = 0o600;

/// Creates the data directory (0700), or makes an existing one 0700, and checks that this user
/// can create files in it. Only for the data directory itself: parents are created 0700 but an
/// existing parent is never changed. The errors name the directory at fault, its owner and
/// what to run (see [`writable`]).
pub fn data_dir(path: &Path) -> anyhow::Result<()> {
    if let Err(e) = create_dirs(path) {
        let blocked = existing_ancestor(path);
        anyhow::bail!(
            "cannot create the data directory {}: {}",
            path.display(),
            not_writable(&blocked, path, &e)
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if mode != DIR_MODE {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(DIR_MODE))
                .with_context(|| {
                    format!(
                        "cannot make the data dir {} private (0700; it is {mode:o}): {}",
                        path.display(),
                        owner_fix(path, path)
                    )
                })?;
            tracing::info!(path = %path.display(), was = format!("{mode:o}"), "data dir made private (0700)");
        }
    }
    writable(path).map_err(|message| anyhow::anyhow!(message))
}

/// Whether this user can create files in `dir` (or create `dir`, in the deepest part of its
/// path that exists): probed with a file created and removed at once, since permissions alone
/// do not tell (ACLs, read-only mounts). The error says which directory this user cannot write,
/// who owns it and what to run.
pub fn writable(dir: &Path) -> Result<(), String> {
    let existing = existing_ancestor(dir);
    if !existing.is_dir() {
        return Err(format!(
            "{} is not a directory; remove it, or choose another path",
            existing.display()
        ));
    }
    let probe = existing.join(format!(".poolgate-check-{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) if existing == dir => Err(not_writable(&existing, dir, &e)),
        Err(e) => Err(format!(
            "cannot create {}: {}",
            dir.display(),
            not_writable(&existing, dir, &e)
        )),
    }
}

/// The deepest part of `path` that exists (`.` for a relative path none of which does).
fn existing_ancestor(path: &Path) -> std::path::PathBuf {
    path.ancestors()
        .find(|a| !a.as_os_str().is_empty() && a.exists())
        .unwrap_or(Path::new("."))
        .to_owned()
}

/// Why this user cannot write in `dir` (the existing part of the path to `wanted`), and what to
/// do: whose the directory is, and the command that gives it to this user.
fn not_writable(dir: &Path, wanted: &Path, e: &io::Error) -> String {
    if e.raw_os_error() == Some(libc::EROFS) {
        return format!(
            "{} is on a read-only file system; choose a writable directory (data_dir, or \
             --data-dir)",
            dir.display()
        );
    }
    if e.kind() == io::ErrorKind::PermissionDenied {
        return owner_fix(dir, wanted);
    }
    format!("cannot write in {}: {e}", dir.display())
}

/// `dir` is not writable by this user: who owns it, and what to run.
fn owner_fix(dir: &Path, wanted: &Path) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        let me_name = user_name(me);
        let Ok(meta) = std::fs::metadata(dir) else {
            return format!(
                "{} cannot be reached by this user ({me_name}, uid {me}); give this user \
                 access to its parent directories",
                dir.display()
            );
        };
        let mode = meta.mode() & 0o7777;
        let fix = if dir == wanted {
            format!("sudo chown -R {me_name}: {}", dir.display())
        } else {
            format!("sudo install -d -o {me_name} -m 700 {}", wanted.display())
        };
        let what = if dir == wanted {
            "give it to this user"
        } else {
            "create it for this user"
        };
        if meta.uid() != me {
            return format!(
                "{} is not writable by this user ({me_name}, uid {me}): it belongs to {} \
                 (uid {}), mode {mode:04o}; {what} ({fix}), or set data_dir (--data-dir) to a \
                 directory this user owns",
                dir.display(),
                user_name(meta.uid()),
                meta.uid()
            );
        }
        format!(
            "{} is not writable by this user ({me_name}), its owner: mode {mode:04o}; chmod 700 {}",
            dir.display(),
            dir.display()
        )
    }
    #[cfg(not(unix))]
    {
        let _ = wanted;
        format!("{} is not writable by this user", dir.display())
    }
}

/// A user's name, or `uid N` when the system has none for it.
#[cfg(unix)]
pub fn user_name(uid: u32) -> String {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: getpwuid_r writes only into `pwd` and `buf` (of the length given); `found` is
    // NULL or points at `pwd`, whose `pw_name` points into `buf`, which outlives its use.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found);
        if rc == 0 && !found.is_null() {
            return std::ffi::CStr::from_ptr((*found).pw_name)
                .to_string_lossy()
                .into_owned();
        }
    }
    format!("uid {uid}")
}

/// Creates missing directories with mode 0700; existing ones are left as they are.
pub fn create_dirs(path: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    builder.create(path)
}

/// Opens `path` for writing, created if missing, never truncated, mode 0600 whatever the umask
/// (an existing file is tightened too).
pub fn open(path: &Path, truncate: bool) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(truncate);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, FILE_MODE);
    let file = opts.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if file.metadata()?.permissions().mode() & 0o777 != FILE_MODE {
            file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
        }
    }
    Ok(file)
}

/// Makes `path` 0600 if it exists (files an older version, or a looser umask, left behind).
pub fn tighten(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o777 != FILE_MODE => {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(FILE_MODE))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_data_dir_and_files_are_private_and_loose_ones_are_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/data");
        data_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700, "created parents too");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        data_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);

        let file = dir.join("f");
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        open(&file, false).unwrap();
        assert_eq!(mode(&file), 0o600);
        assert_eq!(std::fs::read(&file).unwrap(), b"x", "not truncated");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        tighten(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        tighten(&dir.join("missing")).unwrap();
    }
}
