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

/// Creates the data directory (0700), or makes an existing one 0700. Only for the data
/// directory itself: parents are created 0700 but an existing parent is never changed.
pub fn data_dir(path: &Path) -> anyhow::Result<()> {
    create_dirs(path).with_context(|| format!("cannot create data dir {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if mode != DIR_MODE {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(DIR_MODE))
                .with_context(|| {
                    format!(
                        "cannot make the data dir {} private (0700; it is {mode:o}): make \
                         poolgate's user its owner",
                        path.display()
                    )
                })?;
            tracing::info!(path = %path.display(), was = format!("{mode:o}"), "data dir made private (0700)");
        }
    }
    Ok(())
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
