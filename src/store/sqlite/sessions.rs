//! Sessions: one row each with its expiry (rows from before expiries were kept are stamped
//! by the first write that knows the TTL).

use super::*;

impl SqliteStore {
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
