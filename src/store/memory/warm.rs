//! Warm sets: a queue per pool in the one lock's map.

use super::*;

#[async_trait]
impl Warm for MemoryStore {
    async fn warm_add(&self, pool: Uuid, machine: &Machine) -> StoreResult<bool> {
        let mut inner = self.lock();
        let set = inner.warm.entry(pool).or_default();
        if set.iter().any(|m| m.id == machine.id) {
            return Ok(false);
        }
        set.push_back(machine.clone());
        Ok(true)
    }

    async fn warm_take(&self, pool: Uuid) -> StoreResult<Option<Machine>> {
        Ok(self
            .lock()
            .warm
            .get_mut(&pool)
            .and_then(|set| set.pop_front()))
    }

    async fn warm_list(&self, pool: Uuid) -> StoreResult<Vec<Machine>> {
        Ok(self
            .lock()
            .warm
            .get(&pool)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn warm_remove(&self, pool: Uuid, machine: Uuid) -> StoreResult<bool> {
        let mut inner = self.lock();
        let Some(set) = inner.warm.get_mut(&pool) else {
            return Ok(false);
        };
        let before = set.len();
        set.retain(|m| m.id != machine);
        Ok(set.len() < before)
    }
}
