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
}
