//! Machine assignments: one row per (user, pool).

use super::*;

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
