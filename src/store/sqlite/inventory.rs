//! Machines claimed by static inventories.

use super::*;

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

    async fn machine_count_use(&self, inventory: &str, machine: Uuid) -> StoreResult<u64> {
        self.with(|c| {
            c.query_row(
                "INSERT INTO machine_uses VALUES (?1, ?2, 1) ON CONFLICT (inventory, machine_id) \
                 DO UPDATE SET uses = uses + 1 RETURNING uses",
                params![inventory, machine.to_string()],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
        })
    }

    async fn machine_uses(&self, inventory: &str) -> StoreResult<Vec<(Uuid, u64)>> {
        self.with(|c| {
            let mut stmt =
                c.prepare("SELECT machine_id, uses FROM machine_uses WHERE inventory = ?1")?;
            let rows = stmt.query_map(params![inventory], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })?;
            Ok(rows
                .filter_map(|r| {
                    let (id, n) = r.ok()?;
                    Some((id.parse().ok()?, n as u64))
                })
                .collect())
        })
    }
}
