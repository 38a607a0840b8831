//! Directory users' records, TOTP secrets, names and re-check claims.

use super::*;

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
