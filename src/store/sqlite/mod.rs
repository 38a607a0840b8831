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
CREATE TABLE IF NOT EXISTS machines (
    inventory TEXT NOT NULL, machine_id TEXT NOT NULL, PRIMARY KEY (inventory, machine_id));
"#;

/// This backend's errors as the store's (the message kept).
impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(e.into())
    }
}

fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRecord> {
    let hash: Vec<u8> = r.get(0)?;
    Ok(SessionRecord {
        hash: hash.try_into().unwrap_or([0; 32]),
        user_id: r.get::<_, String>(1)?.parse().unwrap_or_default(),
        created_ms: r.get::<_, i64>(2)? as u64,
        last_active_ms: r.get::<_, i64>(3)? as u64,
        peer: r.get(4)?,
    })
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

/// Fixed-width RFC 3339, so text order is time order.
fn created_key(task: &Task) -> String {
    task.created
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

fn status_active(task: &Task) -> &'static str {
    if task.status.is_active() {
        "active"
    } else {
        "done"
    }
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

    fn tasks_where(&self, sql: &str, args: &[&dyn rusqlite::ToSql]) -> StoreResult<Vec<Task>> {
        let bodies: Vec<String> = self.with(|c| {
            let mut stmt = c.prepare_cached(sql)?;
            let rows = stmt.query_map(args, |r| r.get::<_, String>(0))?;
            rows.collect()
        })?;
        bodies.iter().map(|b| task_from_json(b)).collect()
    }

    /// Gives sessions from before rows carried their expiry the one `ttl` now knows (once).
    fn stamp_sessions(&self, c: &Connection, ttl: Duration) -> rusqlite::Result<()> {
        if self.unstamped_sessions.swap(false, Ordering::Relaxed) {
            let stamped = c.execute(
                "UPDATE sessions SET expires_ms = last_active_ms + ?1 WHERE expires_ms IS NULL",
                params![ttl.as_millis() as i64],
            );
            if stamped.is_err() {
                self.unstamped_sessions.store(true, Ordering::Relaxed);
            }
            stamped?;
        }
        Ok(())
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
            for table in ["sessions", "mfa"] {
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

#[async_trait]
impl Sessions for SqliteStore {
    async fn session_put(
        &self,
        rec: &SessionRecord,
        ttl: Duration,
        max_per_user: usize,
    ) -> StoreResult<Vec<TokenHash>> {
        let user = rec.user_id.to_string();
        let now = now_ms() as i64;
        // The others kept: the cap less the new one.
        let others = max_per_user.max(1) as i64 - 1;
        self.with(|c| {
            self.stamp_sessions(c, ttl)?;
            let tx = c.transaction()?;
            tx.prepare_cached(
                "INSERT OR REPLACE INTO sessions
                   (hash, user_id, created_ms, last_active_ms, peer, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                &rec.hash[..],
                user,
                rec.created_ms as i64,
                rec.last_active_ms as i64,
                rec.peer,
                (rec.last_active_ms + ttl.as_millis() as u64) as i64
            ])?;
            tx.prepare_cached(
                "DELETE FROM sessions WHERE user_id = ?1 AND hash != ?2 AND expires_ms <= ?3",
            )?
            .execute(params![user, &rec.hash[..], now])?;
            let evicted: Vec<TokenHash> = {
                let mut stmt = tx.prepare_cached(
                    "DELETE FROM sessions WHERE hash IN (
                       SELECT hash FROM sessions WHERE user_id = ?1 AND hash != ?2
                       ORDER BY last_active_ms DESC, created_ms DESC LIMIT -1 OFFSET ?3)
                     RETURNING hash",
                )?;
                let rows = stmt.query_map(params![user, &rec.hash[..], others], |r| {
                    r.get::<_, Vec<u8>>(0)
                })?;
                rows.filter_map(|h| h.ok().and_then(|h| h.try_into().ok()))
                    .collect()
            };
            tx.commit()?;
            Ok(evicted)
        })
    }

    async fn session_get(&self, hash: &TokenHash) -> StoreResult<Option<SessionRecord>> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT hash, user_id, created_ms, last_active_ms, peer FROM sessions
                 WHERE hash = ?1 AND (expires_ms IS NULL OR expires_ms > ?2)",
            )?
            .query_row(params![&hash[..], now_ms() as i64], session_row)
            .optional()
        })
    }

    async fn session_touch(
        &self,
        touches: &[(TokenHash, u64)],
        ttl: Duration,
    ) -> StoreResult<Vec<TokenHash>> {
        let now = now_ms() as i64;
        self.with(|c| {
            self.stamp_sessions(c, ttl)?;
            let tx = c.transaction()?;
            let mut missing = Vec::new();
            {
                // The right-hand sides all read the row as it was.
                let mut stmt = tx.prepare_cached(
                    "UPDATE sessions SET
                       expires_ms = CASE WHEN ?2 > last_active_ms THEN ?2 + ?3 ELSE expires_ms END,
                       last_active_ms = MAX(last_active_ms, ?2)
                     WHERE hash = ?1 AND expires_ms > ?4",
                )?;
                for (hash, at) in touches {
                    let args = params![&hash[..], *at as i64, ttl.as_millis() as i64, now];
                    if stmt.execute(args)? == 0 {
                        missing.push(*hash);
                    }
                }
            }
            tx.commit()?;
            Ok(missing)
        })
    }

    async fn session_delete(&self, hash: &TokenHash) -> StoreResult<()> {
        self.with(|c| {
            c.prepare_cached("DELETE FROM sessions WHERE hash = ?1")?
                .execute(params![&hash[..]])
                .map(drop)
        })
    }

    async fn session_delete_user(&self, user: Uuid) -> StoreResult<Vec<TokenHash>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "DELETE FROM sessions WHERE user_id = ?1
                 RETURNING hash, expires_ms IS NULL OR expires_ms > ?2",
            )?;
            let rows = stmt.query_map(params![user.to_string(), now_ms() as i64], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, bool>(1)?))
            })?;
            let mut live = Vec::new();
            for row in rows {
                let (hash, is_live) = row?;
                if let (true, Ok(hash)) = (is_live, TokenHash::try_from(hash)) {
                    live.push(hash);
                }
            }
            Ok(live)
        })
    }

    async fn sessions_all(&self) -> StoreResult<Vec<SessionRecord>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT hash, user_id, created_ms, last_active_ms, peer FROM sessions
                 WHERE expires_ms IS NULL OR expires_ms > ?1",
            )?;
            let rows = stmt.query_map(params![now_ms() as i64], session_row)?;
            rows.collect()
        })
    }
}

#[async_trait]
impl Mfa for SqliteStore {
    async fn mfa_put(&self, hash: &TokenHash, rec: &MfaRecord) -> StoreResult<()> {
        self.with(|c| {
            // One statement each, under the connection's one writer: the user's earlier
            // challenge of this kind goes with the new one's arrival.
            let tx = c.transaction()?;
            tx.prepare_cached("DELETE FROM mfa WHERE user_id = ?1 AND password_ok = ?2")?
                .execute(params![rec.user_id.to_string(), rec.password_ok])?;
            tx.prepare_cached("INSERT OR REPLACE INTO mfa VALUES (?1, ?2, ?3, ?4, ?5)")?
                .execute(params![
                    &hash[..],
                    rec.user_id.to_string(),
                    rec.password_ok,
                    rec.expires_ms as i64,
                    rec.attempts
                ])?;
            tx.commit()
        })
    }

    async fn mfa_get(&self, hash: &TokenHash) -> StoreResult<Option<MfaRecord>> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT user_id, password_ok, expires_ms, attempts FROM mfa
                 WHERE hash = ?1 AND expires_ms > ?2",
            )?
            .query_row(params![&hash[..], now_ms() as i64], |r| {
                Ok(MfaRecord {
                    user_id: r.get::<_, String>(0)?.parse().unwrap_or_default(),
                    password_ok: r.get(1)?,
                    expires_ms: r.get::<_, i64>(2)? as u64,
                    attempts: r.get(3)?,
                })
            })
            .optional()
        })
    }

    async fn mfa_take(&self, hash: &TokenHash) -> StoreResult<bool> {
        self.with(|c| {
            let live: Option<bool> = c
                .query_row(
                    "DELETE FROM mfa WHERE hash = ?1 RETURNING expires_ms > ?2",
                    params![&hash[..], now_ms() as i64],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(live == Some(true))
        })
    }

    async fn mfa_fail(&self, hash: &TokenHash) -> StoreResult<u32> {
        self.with(|c| {
            c.query_row(
                "UPDATE mfa SET attempts = attempts + 1 WHERE hash = ?1 AND expires_ms > ?2
                 RETURNING attempts",
                params![&hash[..], now_ms() as i64],
                |r| r.get(0),
            )
            .optional()
            .map(|a| a.unwrap_or(u32::MAX))
        })
    }

    async fn totp_advance(&self, user: Uuid, step: u64) -> StoreResult<bool> {
        self.with(|c| {
            // One statement: insert, or raise the step only if the new one is later.
            let changed = c.execute(
                "INSERT INTO totp VALUES (?1, ?2) ON CONFLICT(user_id) DO UPDATE
                 SET step = excluded.step WHERE excluded.step > totp.step",
                params![user.to_string(), step as i64],
            )?;
            Ok(changed == 1)
        })
    }
}

#[async_trait]
impl Directory for SqliteStore {
    async fn directory_user_put(&self, user: &DirectoryUser) -> StoreResult<()> {
        let body = serde_json::to_string(user)?;
        self.with(|c| {
            c.execute(
                "INSERT INTO directory_users VALUES (?1, ?2)
                 ON CONFLICT(id) DO UPDATE SET body = excluded.body",
                params![user.id.to_string(), body],
            )?;
            Ok(())
        })
    }

    async fn directory_user_get(&self, id: Uuid) -> StoreResult<Option<DirectoryUser>> {
        let body: Option<String> = self.with(|c| {
            c.query_row(
                "SELECT body FROM directory_users WHERE id = ?1",
                params![id.to_string()],
                |r| r.get(0),
            )
            .optional()
        })?;
        Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
    }

    async fn directory_users(&self) -> StoreResult<Vec<DirectoryUser>> {
        let bodies: Vec<String> = self.with(|c| {
            let mut stmt = c.prepare("SELECT body FROM directory_users")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect()
        })?;
        bodies
            .iter()
            .map(|b| Ok(serde_json::from_str(b)?))
            .collect()
    }

    async fn directory_totp_put(&self, id: Uuid, secret: Option<&str>) -> StoreResult<()> {
        self.with(|c| {
            match secret {
                Some(secret) => c.execute(
                    "INSERT INTO directory_totp VALUES (?1, ?2)
                     ON CONFLICT(id) DO UPDATE SET secret = excluded.secret",
                    params![id.to_string(), secret],
                )?,
                None => c.execute(
                    "DELETE FROM directory_totp WHERE id = ?1",
                    params![id.to_string()],
                )?,
            };
            Ok(())
        })
    }

    async fn directory_totp_get(&self, id: Uuid) -> StoreResult<Option<String>> {
        self.with(|c| {
            c.query_row(
                "SELECT secret FROM directory_totp WHERE id = ?1",
                params![id.to_string()],
                |r| r.get(0),
            )
            .optional()
        })
    }

    async fn directory_name_put(&self, name: &str, id: Uuid) -> StoreResult<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO directory_names VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET id = excluded.id",
                params![name, id.to_string()],
            )?;
            Ok(())
        })
    }

    async fn directory_name_get(&self, name: &str) -> StoreResult<Option<Uuid>> {
        let id: Option<String> = self.with(|c| {
            c.query_row(
                "SELECT id FROM directory_names WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
        })?;
        Ok(id.and_then(|id| Uuid::parse_str(&id).ok()))
    }

    async fn directory_recheck_claim(
        &self,
        user: Uuid,
        now_ms: u64,
        period: Duration,
    ) -> StoreResult<Result<(), u64>> {
        let user = user.to_string();
        self.with(|c| {
            let tx = c.transaction()?;
            let held: Option<i64> = tx
                .query_row(
                    "SELECT at_ms FROM directory_rechecks WHERE user_id = ?1 AND until_ms > ?2",
                    params![user, now_ms as i64],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(at) = held {
                return Ok(Err(at as u64));
            }
            tx.execute(
                "INSERT OR REPLACE INTO directory_rechecks VALUES (?1, ?2, ?3)",
                params![
                    user,
                    now_ms as i64,
                    (now_ms + period.as_millis() as u64) as i64
                ],
            )?;
            tx.commit()?;
            Ok(Ok(()))
        })
    }
}

#[async_trait]
impl JwtRevocations for SqliteStore {
    async fn jwt_revoke(&self, jti: &str, exp: i64) -> StoreResult<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO jwt_revoked VALUES (?1, ?2)",
                params![jti, exp],
            )
            .map(drop)
        })
    }

    async fn jwt_revocations(&self) -> StoreResult<Vec<(String, i64)>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT jti, exp FROM jwt_revoked WHERE exp + ?1 > ?2")?;
            let now_s = (now_ms() / 1000) as i64;
            let rows = stmt.query_map(params![JWT_REVOCATION_MARGIN_S, now_s], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
            rows.collect()
        })
    }

    async fn jwt_revoke_user(&self, user: Uuid, before: i64) -> StoreResult<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO jwt_users VALUES (?1, ?2) ON CONFLICT(user_id) DO UPDATE
                 SET before = MAX(before, excluded.before)",
                params![user.to_string(), before],
            )
            .map(drop)
        })
    }

    async fn jwt_user_revocations(&self) -> StoreResult<Vec<(Uuid, i64)>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT user_id, before FROM jwt_users")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            Ok(rows
                .filter_map(|r| r.ok())
                .filter_map(|(u, b)| Some((u.parse().ok()?, b)))
                .collect())
        })
    }
}

#[async_trait]
impl Tasks for SqliteStore {
    async fn task_get(&self, user: Uuid, id: Uuid) -> StoreResult<Option<Task>> {
        let body: Option<String> = self.with(|c| {
            c.prepare_cached("SELECT body FROM tasks WHERE id = ?1")?
                .query_row([id.to_string()], |r| r.get(0))
                .optional()
        })?;
        Ok(body
            .map(|b| task_from_json(&b))
            .transpose()?
            .filter(|t| t.user_id == user))
    }

    async fn task_latest(&self, (user, pool, kind): TaskKey) -> StoreResult<Option<Task>> {
        Ok(self
            .tasks_where(
                "SELECT t.body FROM latest l JOIN tasks t ON t.id = l.task_id
                 WHERE l.user_id = ?1 AND l.pool_id = ?2 AND l.kind = ?3",
                &[&user.to_string(), &pool.to_string(), &kind.as_str()],
            )?
            .pop())
    }

    async fn task_create(&self, expected: Option<Uuid>, task: &Task) -> StoreResult<bool> {
        let body = task_to_json(task);
        self.with(|c| {
            let tx = c.transaction()?;
            let (user, pool, kind) = (
                task.user_id.to_string(),
                task.pool_id.to_string(),
                task.kind.as_str(),
            );
            let current: Option<String> = tx
                .query_row(
                    "SELECT task_id FROM latest WHERE user_id = ?1 AND pool_id = ?2 AND kind = ?3",
                    params![user, pool, kind],
                    |r| r.get(0),
                )
                .optional()?;
            if current != expected.map(|e| e.to_string()) {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO tasks VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    task.id.to_string(),
                    user,
                    status_active(task),
                    created_key(task),
                    body
                ],
            )?;
            tx.execute(
                "INSERT OR REPLACE INTO latest VALUES (?1, ?2, ?3, ?4)",
                params![user, pool, kind, task.id.to_string()],
            )?;
            tx.commit()?;
            Ok(true)
        })
    }

    async fn task_update(&self, task: &Task) -> StoreResult<bool> {
        let body = task_to_json(task);
        self.with(|c| {
            let written = c
                .prepare_cached(
                    "UPDATE tasks SET status = ?2, body = ?3 WHERE id = ?1
                     AND (status = 'active' OR json_extract(body, '$.status') = ?4)",
                )?
                .execute(params![
                    task.id.to_string(),
                    status_active(task),
                    body,
                    task.status.as_str()
                ])?;
            if written == 1 {
                return Ok(true);
            }
            // Not written: refused, or not stored at all (which is not a refusal).
            let stored: Option<i64> = c
                .prepare_cached("SELECT 1 FROM tasks WHERE id = ?1")?
                .query_row(params![task.id.to_string()], |r| r.get(0))
                .optional()?;
            Ok(stored.is_none())
        })
    }

    async fn tasks_of_user(&self, user: Uuid, limit: usize) -> StoreResult<Vec<Task>> {
        self.tasks_where(
            "SELECT body FROM tasks WHERE user_id = ?1 ORDER BY created DESC LIMIT ?2",
            &[&user.to_string(), &(limit as i64)],
        )
    }

    async fn tasks_active(&self) -> StoreResult<Vec<Task>> {
        self.tasks_where("SELECT body FROM tasks WHERE status = 'active'", &[])
    }

    async fn tasks_sweep(&self, cutoff_ms: u64) -> StoreResult<usize> {
        let cutoff = chrono::DateTime::from_timestamp_millis(cutoff_ms as i64)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        self.with(|c| {
            c.prepare_cached(
                "DELETE FROM tasks WHERE status = 'done' AND created < ?1
                 AND id NOT IN (SELECT task_id FROM latest)",
            )?
            .execute(params![cutoff])
        })
    }

    /// One process owns the file, so it owns every task.
    async fn lease_acquire(&self, _task: Uuid, _owner: &str, _ttl: Duration) -> StoreResult<bool> {
        Ok(true)
    }

    async fn lease_release(&self, _task: Uuid, _owner: &str) -> StoreResult<()> {
        Ok(())
    }
}

#[async_trait]
impl Assignments for SqliteStore {
    async fn assignment_get(&self, user: Uuid, pool: Uuid) -> StoreResult<Option<Assignment>> {
        let body: Option<String> = self.with(|c| {
            c.prepare_cached("SELECT body FROM assignments WHERE user_id = ?1 AND pool_id = ?2")?
                .query_row(params![user.to_string(), pool.to_string()], |r| r.get(0))
                .optional()
        })?;
        Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
    }

    async fn assignment_create(&self, a: &Assignment) -> StoreResult<bool> {
        let body = serde_json::to_string(a)?;
        self.with(|c| {
            Ok(c.execute(
                "INSERT OR IGNORE INTO assignments VALUES (?1, ?2, ?3)",
                params![a.user_id.to_string(), a.pool_id.to_string(), body],
            )? == 1)
        })
    }

    async fn assignment_remove(&self, user: Uuid, pool: Uuid) -> StoreResult<Option<Assignment>> {
        let body: Option<String> = self.with(|c| {
            c.query_row(
                "DELETE FROM assignments WHERE user_id = ?1 AND pool_id = ?2 RETURNING body",
                params![user.to_string(), pool.to_string()],
                |r| r.get(0),
            )
            .optional()
        })?;
        Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
    }

    async fn assignments(&self) -> StoreResult<Vec<Assignment>> {
        let bodies: Vec<String> = self.with(|c| {
            let mut stmt = c.prepare("SELECT body FROM assignments")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect()
        })?;
        Ok(bodies
            .iter()
            .map(|b| serde_json::from_str(b))
            .collect::<Result<_, _>>()?)
    }
}

#[async_trait]
impl Inventory for SqliteStore {
    async fn machine_claim(&self, inventory: &str, machine: Uuid) -> StoreResult<bool> {
        self.with(|c| {
            Ok(c.execute(
                "INSERT OR IGNORE INTO machines VALUES (?1, ?2)",
                params![inventory, machine.to_string()],
            )? == 1)
        })
    }

    async fn machine_release(&self, inventory: &str, machine: Uuid) -> StoreResult<()> {
        self.with(|c| {
            c.execute(
                "DELETE FROM machines WHERE inventory = ?1 AND machine_id = ?2",
                params![inventory, machine.to_string()],
            )
            .map(drop)
        })
    }

    async fn machines_claimed(&self, inventory: &str) -> StoreResult<Vec<Uuid>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT machine_id FROM machines WHERE inventory = ?1")?;
            let rows = stmt.query_map(params![inventory], |r| r.get::<_, String>(0))?;
            Ok(rows.filter_map(|r| r.ok()?.parse().ok()).collect())
        })
    }
}

#[async_trait]
impl Lockout for SqliteStore {
    async fn failures_add(&self, key: &str, window: Duration) -> StoreResult<u32> {
        let now = now_ms() as i64;
        let until = now + window.as_millis() as i64;
        self.with(|c| {
            c.query_row(
                "INSERT INTO failures VALUES (?1, 1, ?3) ON CONFLICT(key) DO UPDATE SET
                   count = CASE WHEN until_ms <= ?2 THEN 1 ELSE count + 1 END,
                   until_ms = CASE WHEN until_ms <= ?2 THEN ?3 ELSE until_ms END
                 RETURNING count",
                params![key, now, until],
                |r| r.get(0),
            )
        })
    }

    async fn failures_get(&self, key: &str) -> StoreResult<u32> {
        self.with(|c| {
            c.query_row(
                "SELECT count FROM failures WHERE key = ?1 AND until_ms > ?2",
                params![key, now_ms() as i64],
                |r| r.get(0),
            )
            .optional()
            .map(|n| n.unwrap_or(0))
        })
    }

    async fn failures_reset(&self, key: &str) -> StoreResult<()> {
        self.with(|c| {
            c.execute("DELETE FROM failures WHERE key = ?1", params![key])
                .map(drop)
        })
    }

    async fn failures_undo(&self, key: &str) -> StoreResult<()> {
        self.with(|c| {
            c.execute(
                "UPDATE failures SET count = count - 1 WHERE key = ?1 AND count > 0",
                params![key],
            )
            .map(drop)
        })
    }

    async fn backoff_slot(
        &self,
        key: &str,
        now_ms: u64,
        spacing: Duration,
        max_wait: Duration,
        window: Duration,
    ) -> StoreResult<Result<u64, u64>> {
        // Read and write under the connection's lock: atomic within this process, which is
        // the only one an SQLite store serves.
        self.with(|c| {
            let next: i64 = c
                .query_row(
                    "SELECT next_ms FROM backoff WHERE key = ?1 AND until_ms > ?2",
                    params![key, now_ms as i64],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0);
            let slot = (next as u64).max(now_ms);
            if slot - now_ms > max_wait.as_millis() as u64 {
                return Ok(Err(slot));
            }
            c.execute(
                "INSERT OR REPLACE INTO backoff VALUES (?1, ?2, ?3)",
                params![
                    key,
                    (slot + spacing.as_millis() as u64) as i64,
                    (now_ms + window.as_millis() as u64) as i64
                ],
            )?;
            Ok(Ok(slot))
        })
    }
}
