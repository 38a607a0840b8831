//! Lockout failure counters and back-off slots.

use super::*;

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
