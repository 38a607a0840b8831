//! Machines claimed by static inventories: one set per inventory.

use super::*;

#[async_trait]
impl Inventory for RedisStore {
    async fn machine_claim(&self, inventory: &str, machine: Uuid) -> StoreResult<bool> {
        let n: i64 = self
            .con()
            .sadd(self.k(&["machines", inventory]), machine.to_string())
            .await?;
        Ok(n == 1)
    }

    async fn machine_release(&self, inventory: &str, machine: Uuid) -> StoreResult<()> {
        self.con()
            .srem::<_, _, ()>(self.k(&["machines", inventory]), machine.to_string())
            .await?;
        Ok(())
    }

    async fn machines_claimed(&self, inventory: &str) -> StoreResult<Vec<Uuid>> {
        let members: Vec<String> = self
            .con()
            .smembers(self.k(&["machines", inventory]))
            .await?;
        Ok(members.iter().filter_map(|m| m.parse().ok()).collect())
    }

    async fn machine_count_use(&self, inventory: &str, machine: Uuid) -> StoreResult<u64> {
        Ok(self
            .con()
            .hincr(self.k(&["machine-uses", inventory]), machine.to_string(), 1)
            .await?)
    }

    async fn machine_uses(&self, inventory: &str) -> StoreResult<Vec<(Uuid, u64)>> {
        let all: std::collections::HashMap<String, u64> = self
            .con()
            .hgetall(self.k(&["machine-uses", inventory]))
            .await?;
        Ok(all
            .into_iter()
            .filter_map(|(k, v)| Some((k.parse().ok()?, v)))
            .collect())
    }
}
