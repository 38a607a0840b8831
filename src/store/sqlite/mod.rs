//! The embedded default: SQLite (bundled, nothing to install) in WAL mode with
//! `synchronous = NORMAL`, which survives a killed process (kill -9) without an fsync per
//! write. One connection behind a mutex: every statement is microseconds, and the mutex makes
//! each compare-and-set trivially atomic within the one process that may open the file.
//!
//! The reads a client makes on every request are served by the read cache in front of this
//! store (`store::cache`): the file is this process's alone (the lock file), so every write
//! goes through that cache and it cannot go stale.
//!
//! Expired rows stay until `sweep_expired`, but every read filters them out (each row carries
//! its expiry), as the store's contract wants.
//!
//! Here the connection, the schema and what the store says of itself (upkeep, the in-process
//! bus); each concern of the contract in a file of its own, in the contract's order.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::*;

mod assignments;
mod audit;
mod directory;
mod federation;
mod inventory;
mod lockout;
mod mfa;
mod revocations;
mod security_keys;
mod sessions;
mod tasks;
mod warm;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS sessions (
    hash BLOB PRIMARY KEY, user_id TEXT NOT NULL, created_ms INTEGER NOT NULL,
    last_active_ms INTEGER NOT NULL, peer TEXT NOT NULL DEFAULT '', expires_ms INTEGER);
CREATE TABLE IF NOT EXISTS jwt_users (user_id TEXT PRIMARY KEY, before INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS sessions_user ON sessions(user_id);
CREATE TABLE IF NOT EXISTS mfa (
    hash BLOB PRIMARY KEY, user_id TEXT NOT NULL, password_ok INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL, attempts INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS mfa_user ON mfa(user_id, password_ok);
CREATE TABLE IF NOT EXISTS totp (user_id TEXT PRIMARY KEY, step INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS directory_users (id TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS directory_totp (id TEXT PRIMARY KEY, secret TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS directory_names (name TEXT PRIMARY KEY, id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS directory_rechecks (
    user_id TEXT PRIMARY KEY, at_ms INTEGER NOT NULL, until_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jwt_revoked (jti TEXT PRIMARY KEY, exp INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, user_id TEXT NOT NULL, status TEXT NOT NULL,
    created TEXT NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS tasks_user ON tasks(user_id, created);
CREATE INDEX IF NOT EXISTS tasks_status ON tasks(status);
CREATE INDEX IF NOT EXISTS tasks_done ON tasks(status, created);
CREATE TABLE IF NOT EXISTS latest (
    user_id TEXT NOT NULL, pool_id TEXT NOT NULL, kind TEXT NOT NULL, task_id TEXT NOT NULL,
    PRIMARY KEY (user_id, pool_id, kind));
CREATE TABLE IF NOT EXISTS assignments (
    user_id TEXT NOT NULL, pool_id TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (user_id, pool_id));
CREATE TABLE IF NOT EXISTS failures (
    key TEXT PRIMARY KEY, count INTEGER NOT NULL, until_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS backoff (
    key TEXT PRIMARY KEY, next_ms INTEGER NOT NULL, until_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sso (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS handoffs (
    key TEXT PRIMARY KEY, waiter TEXT NOT NULL, expires_ms INTEGER NOT NULL, done TEXT);
CREATE TABLE IF NOT EXISTS federated_users (id TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS webauthn (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS security_keys (
    id TEXT PRIMARY KEY, user_id TEXT NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS security_keys_user ON security_keys(user_id, seq);
CREATE TABLE IF NOT EXISTS audit (
    id TEXT PRIMARY KEY, user TEXT, event TEXT NOT NULL, line TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_user ON audit(user, id);
CREATE TABLE IF NOT EXISTS machines (
    inventory TEXT NOT NULL, machine_id TEXT NOT NULL, PRIMARY KEY (inventory, machine_id));
CREATE TABLE IF NOT EXISTS machine_uses (
    inventory TEXT NOT NULL, machine_id TEXT NOT NULL, uses INTEGER NOT NULL,
    PRIMARY KEY (inventory, machine_id));
CREATE TABLE IF NOT EXISTS warm (
    seq INTEGER PRIMARY KEY, pool_id TEXT NOT NULL, machine_id TEXT NOT NULL, body TEXT NOT NULL,
    UNIQUE (pool_id, machine_id));
CREATE INDEX IF NOT EXISTS warm_pool ON warm(pool_id, seq);
"#;

/// This backend's errors as the store's (the message kept).
impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(e.into())
    }
}

pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// Held for the process's life: a second poolgate on the same file is refused, since
    /// this backend's atomicity is the process's own mutex.
    _lock: std::fs::File,
    /// Sessions written before rows carried their expiry (`expires_ms` NULL) are still in the
    /// file: the first write that knows the TTL stamps them. Until then they count as live,
    /// as they did before (callers judge a token's liveness themselves).
    unstamped_sessions: AtomicBool,
    sink: mpsc::UnboundedSender<BusEvent>,
}

impl SqliteStore {
    pub fn open(path: &Path, sink: mpsc::UnboundedSender<BusEvent>) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            crate::files::create_dirs(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let lock_path = path.with_extension("lock");
        let lock = crate::files::open(&lock_path, false)
            .with_context(|| format!("cannot create {}", lock_path.display()))?;
        // A restart may overlap briefly with the process it replaces: wait a little for the lock.
        let mut locked = lock.try_lock().is_ok();
        for _ in 0..50 {
            if locked {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            locked = lock.try_lock().is_ok();
        }
        if !locked {
            anyhow::bail!(
                "{} is in use by another poolgate process; run several instances on a shared \
                 Redis (state = \"redis://…\") instead",
                path.display()
            );
        }
        // The database is created 0600 here; SQLite gives its -wal and -shm files the
        // database's mode (whatever the umask). Files from before are tightened.
        crate::files::open(path, false)
            .with_context(|| format!("cannot create the state database {}", path.display()))?;
        for suffix in ["-wal", "-shm"] {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            crate::files::tighten(Path::new(&side))
                .with_context(|| format!("cannot make {} 0600", Path::new(&side).display()))?;
        }
        let conn = Connection::open(path)
            .with_context(|| format!("cannot open the state database {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)
            .context("cannot create the state schema")?;
        let has_expiry = conn
            .prepare("SELECT 1 FROM pragma_table_info('sessions') WHERE name = 'expires_ms'")?
            .exists([])?;
        if !has_expiry {
            conn.execute_batch("ALTER TABLE sessions ADD COLUMN expires_ms INTEGER")
                .context("cannot add the sessions' expiry to the state schema")?;
        }
        let unstamped = conn
            .prepare("SELECT 1 FROM sessions WHERE expires_ms IS NULL LIMIT 1")?
            .exists([])?;
        Ok(SqliteStore {
            _lock: lock,
            conn: Mutex::new(conn),
            unstamped_sessions: AtomicBool::new(unstamped),
            sink,
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> StoreResult<T> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        Ok(f(&mut conn)?)
    }
}

#[async_trait]
impl Upkeep for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        self.with(|c| c.query_row("SELECT 1", [], |_| Ok(())))
    }

    async fn sweep_expired(&self) -> StoreResult<usize> {
        let now = now_ms() as i64;
        self.with(|c| {
            let tx = c.transaction()?;
            let mut n = 0;
            for table in ["sessions", "mfa", "sso", "handoffs", "webauthn"] {
                n += tx.execute(
                    &format!("DELETE FROM {table} WHERE expires_ms <= ?1"),
                    params![now],
                )?;
            }
            for table in ["failures", "backoff"] {
                n += tx.execute(
                    &format!("DELETE FROM {table} WHERE until_ms <= ?1"),
                    params![now],
                )?;
            }
            n += tx.execute(
                "DELETE FROM jwt_revoked WHERE exp + ?1 <= ?2",
                params![JWT_REVOCATION_MARGIN_S, now / 1000],
            )?;
            n += tx.execute(
                "DELETE FROM directory_rechecks WHERE until_ms <= ?1",
                params![now],
            )?;
            tx.commit()?;
            Ok(n)
        })
    }

    async fn counts(&self) -> StoreResult<StoreCounts> {
        self.with(|c| {
            let count = |table: &str| {
                c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
                    r.get::<_, i64>(0)
                })
                .map(|n| n as usize)
            };
            let sessions = count("sessions")?;
            Ok(StoreCounts {
                sessions,
                session_index: sessions,
                tasks: count("tasks")?,
                failure_counters: count("failures")? + count("backoff")?,
            })
        })
    }
}

impl Bus for SqliteStore {
    fn is_shared(&self) -> bool {
        false
    }

    fn publish(&self, event: BusEvent) {
        let _ = self.sink.send(event);
    }
}
