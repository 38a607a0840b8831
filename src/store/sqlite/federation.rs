//! Single sign-on: single-use values and hand-offs (rows with their expiry), and federated
//! people's records.

use super::*;

#[async_trait]
impl Federation for SqliteStore {
    async fn sso_put(&self, key: &str, value: &str, expires_ms: u64) -> StoreResult<()> {
        self.with(|c| {
            c.prepare_cached("INSERT OR REPLACE INTO sso VALUES (?1, ?2, ?3)")?
                .execute(params![key, value, expires_ms as i64])
                .map(|_| ())
        })
    }

    async fn sso_take(&self, key: &str) -> StoreResult<Option<String>> {
        self.with(|c| {
            let row: Option<(String, bool)> = c
                .query_row(
                    "DELETE FROM sso WHERE key = ?1 RETURNING value, expires_ms > ?2",
                    params![key, now_ms() as i64],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            Ok(row.filter(|(_, live)| *live).map(|(value, _)| value))
        })
    }

    async fn handoff_put(&self, key: &str, handoff: &Handoff) -> StoreResult<()> {
        self.with(|c| {
            c.prepare_cached("INSERT OR REPLACE INTO handoffs VALUES (?1, ?2, ?3, NULL)")?
                .execute(params![key, handoff.waiter, handoff.expires_ms as i64])
                .map(|_| ())
        })
    }

    async fn handoff_get(&self, key: &str) -> StoreResult<Option<Handoff>> {
        let row: Option<(String, i64, Option<String>)> = self.with(|c| {
            c.prepare_cached(
                "SELECT waiter, expires_ms, done FROM handoffs WHERE key = ?1 AND expires_ms > ?2",
            )?
            .query_row(params![key, now_ms() as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
        })?;
        let Some((waiter, expires_ms, done)) = row else {
            return Ok(None);
        };
        Ok(Some(Handoff {
            waiter,
            expires_ms: expires_ms as u64,
            done: done.map(|d| serde_json::from_str(&d)).transpose()?,
        }))
    }

    async fn handoff_complete(&self, key: &str, outcome: &SsoOutcome) -> StoreResult<bool> {
        let done = serde_json::to_string(outcome)?;
        self.with(|c| {
            let changed = c.execute(
                "UPDATE handoffs SET done = ?1 WHERE key = ?2 AND done IS NULL AND expires_ms > ?3",
                params![done, key, now_ms() as i64],
            )?;
            Ok(changed == 1)
        })
    }

    async fn handoff_take(&self, key: &str) -> StoreResult<Option<SsoOutcome>> {
        let done: Option<String> = self.with(|c| {
            c.query_row(
                "DELETE FROM handoffs WHERE key = ?1 AND done IS NOT NULL AND expires_ms > ?2
                 RETURNING done",
                params![key, now_ms() as i64],
                |r| r.get(0),
            )
            .optional()
        })?;
        Ok(done.map(|d| serde_json::from_str(&d)).transpose()?)
    }

    async fn federated_user_put(&self, user: &FederatedUser) -> StoreResult<()> {
        let body = serde_json::to_string(user)?;
        self.with(|c| {
            c.prepare_cached("INSERT OR REPLACE INTO federated_users VALUES (?1, ?2)")?
                .execute(params![user.id.to_string(), body])
                .map(|_| ())
        })
    }

    async fn federated_user_get(&self, id: Uuid) -> StoreResult<Option<FederatedUser>> {
        let body: Option<String> = self.with(|c| {
            c.prepare_cached("SELECT body FROM federated_users WHERE id = ?1")?
                .query_row(params![id.to_string()], |r| r.get(0))
                .optional()
        })?;
        Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
    }
}
