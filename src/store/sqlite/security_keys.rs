//! Security keys (a row each, its credential id the primary key: registered once, to one
//! user) and the ceremonies' values (rows with their expiry).

use super::*;

#[async_trait]
impl SecurityKeys for SqliteStore {
    async fn webauthn_put(&self, key: &str, value: &str, expires_ms: u64) -> StoreResult<()> {
        self.with(|c| {
            c.prepare_cached("INSERT OR REPLACE INTO webauthn VALUES (?1, ?2, ?3)")?
                .execute(params![key, value, expires_ms as i64])
                .map(|_| ())
        })
    }

    async fn webauthn_get(&self, key: &str) -> StoreResult<Option<String>> {
        self.with(|c| {
            c.prepare_cached("SELECT value FROM webauthn WHERE key = ?1 AND expires_ms > ?2")?
                .query_row(params![key, now_ms() as i64], |r| r.get(0))
                .optional()
        })
    }

    async fn webauthn_take(&self, key: &str) -> StoreResult<Option<String>> {
        self.with(|c| {
            let row: Option<(String, bool)> = c
                .query_row(
                    "DELETE FROM webauthn WHERE key = ?1 RETURNING value, expires_ms > ?2",
                    params![key, now_ms() as i64],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            Ok(row.filter(|(_, live)| *live).map(|(value, _)| value))
        })
    }

    async fn key_add(&self, key: &SecurityKey) -> StoreResult<bool> {
        let body = serde_json::to_string(key)?;
        self.with(|c| {
            let added = c.execute(
                "INSERT OR IGNORE INTO security_keys (id, user_id, seq, body)
                 SELECT ?1, ?2, COALESCE(MAX(seq), 0) + 1, ?3 FROM security_keys",
                params![key.id, key.user_id.to_string(), body],
            )?;
            Ok(added == 1)
        })
    }

    async fn keys_of(&self, user: Uuid) -> StoreResult<Vec<SecurityKey>> {
        let bodies: Vec<String> = self.with(|c| {
            c.prepare_cached("SELECT body FROM security_keys WHERE user_id = ?1 ORDER BY seq")?
                .query_map(params![user.to_string()], |r| r.get(0))?
                .collect()
        })?;
        Ok(bodies
            .iter()
            .map(|b| serde_json::from_str(b))
            .collect::<Result<_, _>>()?)
    }

    async fn key_owner(&self, id: &str) -> StoreResult<Option<Uuid>> {
        let owner: Option<String> = self.with(|c| {
            c.prepare_cached("SELECT user_id FROM security_keys WHERE id = ?1")?
                .query_row(params![id], |r| r.get(0))
                .optional()
        })?;
        owner
            .map(|o| Uuid::parse_str(&o).map_err(|e| StoreError(e.into())))
            .transpose()
    }

    async fn key_update(&self, key: &SecurityKey) -> StoreResult<bool> {
        self.with(|c| {
            let changed = c.execute(
                "UPDATE security_keys SET body = json_set(body, '$.credential', ?1,
                     '$.last_used_ms', ?2)
                 WHERE id = ?3 AND user_id = ?4",
                params![
                    key.credential,
                    key.last_used_ms.map(|ms| ms as i64),
                    key.id,
                    key.user_id.to_string()
                ],
            )?;
            Ok(changed == 1)
        })
    }

    async fn key_remove(&self, user: Uuid, id: &str) -> StoreResult<bool> {
        self.with(|c| {
            let removed = c.execute(
                "DELETE FROM security_keys WHERE id = ?1 AND user_id = ?2",
                params![id, user.to_string()],
            )?;
            Ok(removed == 1)
        })
    }

    async fn key_remove_unless_last(&self, user: Uuid, id: &str) -> StoreResult<KeyRemoval> {
        self.with(|c| {
            // One statement: its count and its delete see the same rows.
            let removed = c.execute(
                "DELETE FROM security_keys WHERE id = ?1 AND user_id = ?2
                   AND (SELECT COUNT(*) FROM security_keys WHERE user_id = ?2) > 1",
                params![id, user.to_string()],
            )?;
            if removed == 1 {
                return Ok(KeyRemoval::Removed);
            }
            let there: bool = c.query_row(
                "SELECT EXISTS (SELECT 1 FROM security_keys WHERE id = ?1 AND user_id = ?2)",
                params![id, user.to_string()],
                |r| r.get(0),
            )?;
            Ok(if there {
                KeyRemoval::Last
            } else {
                KeyRemoval::NotFound
            })
        })
    }
}
