//! The `state` setting, parsed once — when the config is read — into the backend it names, so
//! that opening the store, `check-config` and `--connect` never look at the text again. It
//! lives with the store (not the config) so that [`super::open`] can take it without knowing
//! the config. It reads URLs with the `redis` crate's parser, not through the Redis store
//! (which uses [`redacted`] from here): the two never import each other.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::Context;
use serde::Deserialize;

/// Where state lives: `memory`, `sqlite:<path>`, `redis://…` (`rediss://…` for TLS) or
/// `redis-cluster://host:port,host:port,…` (seed nodes of a Redis Cluster or Valkey cluster).
/// Shown (`Display`, `Debug`) with any password in the URL masked.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum StateUrl {
    /// In this process only, lost on exit.
    Memory,
    /// One SQLite file, for one instance; `None` (`sqlite:`): `<data_dir>/poolgate.sqlite3`.
    Sqlite(Option<PathBuf>),
    /// A Redis shared by the instances of a deployment; the URL as written (checked to parse
    /// the way the store connects with it).
    Redis { url: String },
    /// A Redis Cluster (or Valkey cluster), reached through its seed nodes: the URL as written
    /// and one `redis://` URL per seed (user-info, if any, applied to each).
    RedisCluster { url: String, nodes: Vec<String> },
}

/// The file of `sqlite:` with an empty path, in the data directory.
pub(super) const SQLITE_FILE: &str = "poolgate.sqlite3";

impl StateUrl {
    /// The SQLite file this names, the default resolved against `data_dir`; `None` for the
    /// other backends.
    pub fn sqlite_path(&self, data_dir: &Path) -> Option<PathBuf> {
        match self {
            StateUrl::Sqlite(Some(path)) => Some(path.clone()),
            StateUrl::Sqlite(None) => Some(data_dir.join(SQLITE_FILE)),
            StateUrl::Memory | StateUrl::Redis { .. } | StateUrl::RedisCluster { .. } => None,
        }
    }
}

impl Default for StateUrl {
    fn default() -> Self {
        StateUrl::Sqlite(None)
    }
}

impl FromStr for StateUrl {
    type Err = anyhow::Error;

    fn from_str(state: &str) -> anyhow::Result<Self> {
        if state == "memory" {
            return Ok(StateUrl::Memory);
        }
        if let Some(path) = state.strip_prefix("sqlite:") {
            return Ok(StateUrl::Sqlite(
                (!path.is_empty()).then(|| PathBuf::from(path)),
            ));
        }
        if state.starts_with("redis://") || state.starts_with("rediss://") {
            check_url(state)?;
            return Ok(StateUrl::Redis {
                url: state.to_owned(),
            });
        }
        if let Some(rest) = state.strip_prefix("redis-cluster://") {
            return Ok(StateUrl::RedisCluster {
                url: state.to_owned(),
                nodes: cluster_nodes(rest)?,
            });
        }
        anyhow::bail!(
            "unknown state {:?}: use \"sqlite:<path>\", \"redis://host:port\", \"redis-cluster://host:port,host:port,…\" or \"memory\"",
            redacted(state)
        )
    }
}

impl TryFrom<String> for StateUrl {
    type Error = String;

    fn try_from(state: String) -> Result<Self, String> {
        // serde shows the message with the key's line; keep the whole cause chain in it.
        state.parse().map_err(|e: anyhow::Error| format!("{e:#}"))
    }
}

/// As written in a config file.
impl fmt::Display for StateUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateUrl::Memory => f.write_str("memory"),
            StateUrl::Sqlite(None) => f.write_str("sqlite:"),
            StateUrl::Sqlite(Some(path)) => write!(f, "sqlite:{}", path.display()),
            StateUrl::Redis { url } | StateUrl::RedisCluster { url, .. } => {
                f.write_str(&redacted(url))
            }
        }
    }
}

impl fmt::Debug for StateUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StateUrl({self})")
    }
}

/// The seed nodes of `redis-cluster://[user[:password]@]host:port,host:port,…`, each as a
/// `redis://` URL carrying the user-info.
fn cluster_nodes(rest: &str) -> anyhow::Result<Vec<String>> {
    let (userinfo, hosts) = match rest.rsplit_once('@') {
        Some((userinfo, hosts)) => (format!("{userinfo}@"), hosts),
        None => (String::new(), rest),
    };
    let hosts = hosts.trim_end_matches('/');
    if hosts.is_empty() || hosts.contains(['/', '?']) {
        anyhow::bail!(
            "a redis-cluster URL lists seed nodes only: redis-cluster://host:port,host:port,… (got {})",
            redacted(&format!("redis-cluster://{rest}"))
        );
    }
    hosts
        .split(',')
        .map(|host| {
            let host = host.trim();
            if host.is_empty() {
                anyhow::bail!("a redis-cluster URL has an empty seed node");
            }
            let node = format!("redis://{userinfo}{host}");
            check_url(&node).with_context(|| format!("invalid seed node {}", redacted(&node)))?;
            Ok(node)
        })
        .collect()
}

/// Parses a `redis://` URL the way the Redis store connects with it, without connecting.
fn check_url(url: &str) -> anyhow::Result<()> {
    use redis::IntoConnectionInfo;
    resp3(url)
        .as_str()
        .into_connection_info()
        .context("invalid redis URL")?;
    Ok(())
}

/// `url` asking for RESP3 (pushes carry the event bus), unless it names a protocol itself.
pub(super) fn resp3(url: &str) -> String {
    if url.contains("protocol=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    }
}

/// `url` with the password of its user-info (`redis://user:secret@host`) replaced by `***`,
/// for messages and logs.
pub fn redacted(url: &str) -> std::borrow::Cow<'_, str> {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.into();
    };
    let rest = &url[scheme_end..];
    // A password may hold '/' or '?' (unencoded base64 does): the user-info ends at the last
    // '@', wherever it is.
    let authority = match rest.rfind('@') {
        Some(at) => &rest[..at + 1],
        None => &rest[..rest.find(['/', '?']).unwrap_or(rest.len())],
    };
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..scheme_end],
            &authority[..colon],
            &url[scheme_end + at..]
        )
        .into(),
        _ => url.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_in_the_url_is_never_shown() {
        let url: StateUrl = "redis://user:s3cr3t@10.0.0.5:6379/0".parse().unwrap();
        for shown in [url.to_string(), format!("{url:?}")] {
            assert!(!shown.contains("s3cr3t"), "{shown}");
            assert!(
                shown.contains("redis://user:***@10.0.0.5:6379/0"),
                "{shown}"
            );
        }
        assert_eq!(redacted("redis://:pw@h:1"), "redis://:***@h:1");
        assert_eq!(redacted("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(redacted("rediss://u@h:1"), "rediss://u@h:1");
        assert_eq!(
            redacted("redis-cluster://app:Zm9v/YmFy?x@a:1,b:2"),
            "redis-cluster://app:***@a:1,b:2"
        );
    }

    #[test]
    fn each_backend_is_named_by_its_scheme_and_anything_else_is_refused() {
        assert_eq!("memory".parse::<StateUrl>().unwrap(), StateUrl::Memory);
        assert_eq!(
            "sqlite:".parse::<StateUrl>().unwrap(),
            StateUrl::Sqlite(None)
        );
        assert_eq!(
            "sqlite:/var/lib/p.db".parse::<StateUrl>().unwrap(),
            StateUrl::Sqlite(Some("/var/lib/p.db".into()))
        );
        assert_eq!(
            "redis://10.0.0.5:6379".parse::<StateUrl>().unwrap(),
            StateUrl::Redis {
                url: "redis://10.0.0.5:6379".into()
            }
        );
        assert_eq!(
            "redis-cluster://10.0.0.5:7000,10.0.0.6:7000"
                .parse::<StateUrl>()
                .unwrap(),
            StateUrl::RedisCluster {
                url: "redis-cluster://10.0.0.5:7000,10.0.0.6:7000".into(),
                nodes: vec![
                    "redis://10.0.0.5:7000".into(),
                    "redis://10.0.0.6:7000".into()
                ],
            }
        );
        let with_user: StateUrl = "redis-cluster://app:s3cr3t@a:1,b:2".parse().unwrap();
        assert!(matches!(&with_user, StateUrl::RedisCluster { nodes, .. }
            if nodes == &["redis://app:s3cr3t@a:1", "redis://app:s3cr3t@b:2"]));
        assert_eq!(with_user.to_string(), "redis-cluster://app:***@a:1,b:2");
        for bad in [
            "",
            "Memory",
            "postgres://x",
            "sqlite",
            "redis://:x:y:z@",
            "redis-cluster://",
            "redis-cluster://a:1,,b:2",
            "redis-cluster://a:1/0",
            "redis-cluster://a:1?protocol=2",
        ] {
            assert!(bad.parse::<StateUrl>().is_err(), "{bad:?} is refused");
        }
        let err = "mysql://db".parse::<StateUrl>().unwrap_err().to_string();
        assert!(err.contains("unknown state \"mysql://db\""), "{err}");
    }

    #[test]
    fn the_default_sqlite_file_is_in_the_data_directory() {
        let dir = Path::new("/data");
        assert_eq!(
            StateUrl::Sqlite(None).sqlite_path(dir),
            Some(dir.join("poolgate.sqlite3"))
        );
        assert_eq!(StateUrl::Memory.sqlite_path(dir), None);
        for text in [
            "memory",
            "sqlite:",
            "sqlite:x/y.db",
            "redis://h:1",
            "redis-cluster://h:1,i:2",
        ] {
            assert_eq!(text.parse::<StateUrl>().unwrap().to_string(), text);
        }
    }
}
