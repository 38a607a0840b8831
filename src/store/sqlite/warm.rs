//! Warm sets: one row per machine, in the order they were added: `seq` is the rowid, and a
//! new row's is larger than every row's in the table.

use super::*;

#[async_trait]
impl Warm for SqliteStore {
    async fn warm_add(&self, pool: Uuid, machine: &Machine) -> StoreResult<bool> {
        let body = serde_json::to_string(machine)?;
        self.with(|c| {
            Ok(c.execute(
                "INSERT OR IGNORE INTO warm (pool_id, machine_id, body) VALUES (?1, ?2, ?3)",
                params![pool.to_string(), machine.id.to_string(), body],
            )? == 1)
        })
    }

    async fn warm_take(&self, pool: Uuid) -> StoreResult<Option<Machine>> {
        let body: Option<String> = self.with(|c| {
            c.prepare_cached(
                "DELETE FROM warm WHERE seq = \
                 (SELECT seq FROM warm WHERE pool_id = ?1 ORDER BY seq LIMIT 1) RETURNING body",
            )?
            .query_row(params![pool.to_string()], |r| r.get(0))
            .optional()
        })?;
        Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
    }

    async fn warm_list(&self, pool: Uuid) -> StoreResult<Vec<Machine>> {
        let bodies: Vec<String> = self.with(|c| {
            let mut stmt =
                c.prepare_cached("SELECT body FROM warm WHERE pool_id = ?1 ORDER BY seq")?;
            let rows = stmt.query_map(params![pool.to_string()], |r| r.get(0))?;
            rows.collect()
        })?;
        Ok(bodies
            .iter()
            .map(|b| serde_json::from_str(b))
            .collect::<Result<_, _>>()?)
    }

    async fn warm_remove(&self, pool: Uuid, machine: Uuid) -> StoreResult<bool> {
        self.with(|c| {
            Ok(c.execute(
                "DELETE FROM warm WHERE pool_id = ?1 AND machine_id = ?2",
                params![pool.to_string(), machine.to_string()],
            )? == 1)
        })
    }
}
