//! The process's open-file budget, which is what really bounds how many sockets poolgate can
//! hold: every connection is a file descriptor. At start-up the soft limit is raised to the
//! hard one (the soft default of 1024 would cap a broker far below what the machine can do),
//! a reserve is kept for everything that is not a client connection (the store's files, Redis
//! connections, provisioner pipes, TLS files, logs), and what is left is the default
//! `max_connections`. Asking for more than that is refused at start-up with the numbers,
//! rather than discovered as `EMFILE` in the accept loop under load.

use anyhow::bail;

/// Descriptors kept for what is not a client connection: at most this many, and at most a
/// quarter of a small limit.
const RESERVE: u64 = 1024;

/// The open-file limit after raising the soft limit to the hard one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    /// The soft limit now in force.
    pub soft: u64,
    /// The soft limit before start-up raised it.
    pub was: u64,
    pub hard: u64,
}

impl FileLimit {
    /// Raises the soft limit to the hard one (idempotent) and reports both.
    pub fn raise() -> std::io::Result<FileLimit> {
        let (was, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
        let soft = rlimit::increase_nofile_limit(hard)?;
        Ok(FileLimit { soft, was, hard })
    }

    /// Descriptors kept for files, the store and provisioners.
    pub fn reserve(&self) -> u64 {
        RESERVE.min(self.soft / 4)
    }

    /// Connections the limit allows once the reserve is kept.
    pub fn connections(&self) -> usize {
        usize::try_from(self.soft - self.reserve()).unwrap_or(usize::MAX)
    }

    /// `max_connections`: the configured value if the limit allows it, else an error saying
    /// the numbers; without one, what the limit allows.
    pub fn max_connections(&self, configured: Option<usize>) -> anyhow::Result<usize> {
        let allowed = self.connections();
        match configured {
            None => Ok(allowed),
            Some(n) if n <= allowed => Ok(n),
            Some(n) => bail!(
                "max_connections = {n} needs {needed} open files ({n} connections + {reserve} \
                 kept for files and the store), but this process may open {soft} (hard limit \
                 {hard}): raise the limit (systemd: LimitNOFILE=, shell: ulimit -n) or set \
                 max_connections to at most {allowed}",
                needed = n as u64 + self.reserve(),
                reserve = self.reserve(),
                soft = self.soft,
                hard = self.hard,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(soft: u64) -> FileLimit {
        FileLimit {
            soft,
            was: 1024,
            hard: soft,
        }
    }

    #[test]
    fn a_20000_file_limit_allows_more_than_15000_connections() {
        assert_eq!(limit(20_000).max_connections(None).unwrap(), 18_976);
    }

    #[test]
    fn a_small_limit_keeps_a_quarter_in_reserve() {
        assert_eq!(limit(1024).max_connections(None).unwrap(), 768);
    }

    #[test]
    fn asking_for_more_than_the_limit_allows_says_the_numbers() {
        let err = limit(20_000)
            .max_connections(Some(30_000))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_connections = 30000 needs 31024"), "{err}");
        assert!(err.contains("at most 18976"), "{err}");
        assert_eq!(limit(20_000).max_connections(Some(500)).unwrap(), 500);
    }
}
