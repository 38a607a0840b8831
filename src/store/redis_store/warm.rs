//! Warm sets: one list per pool (`Keys::warm`), the machines as JSON, oldest first. A take is
//! one `LPOP`; adding and removing by id are scripts on that one key, so each is atomic on one
//! Redis and stays in one slot on a cluster. A set holds at most a pool's `warm` target (at
//! most 1 000), so a script's scan of it is short.

use super::*;
use std::sync::LazyLock;

/// KEYS: the set. ARGV: the machine's id, its JSON. Adds at the end unless a machine of that
/// id is in the set; 1 when added.
static WARM_ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"for _, body in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
                    if cjson.decode(body)['id'] == ARGV[1] then return 0 end
                  end
                  redis.call('RPUSH', KEYS[1], ARGV[2])
                  return 1",
    )
});

/// KEYS: the set. ARGV: the machine's id. Removes that machine; 1 when it was there.
static WARM_REMOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"for _, body in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
                    if cjson.decode(body)['id'] == ARGV[1] then
                      redis.call('LREM', KEYS[1], 1, body)
                      return 1
                    end
                  end
                  return 0",
    )
});

#[async_trait]
impl Warm for RedisStore {
    async fn warm_add(&self, pool: Uuid, machine: &Machine) -> StoreResult<bool> {
        let added: i64 = WARM_ADD
            .key(self.keys.warm(pool))
            .arg(machine.id.to_string())
            .arg(serde_json::to_string(machine)?)
            .invoke_async(&mut self.con())
            .await?;
        Ok(added == 1)
    }

    async fn warm_take(&self, pool: Uuid) -> StoreResult<Option<Machine>> {
        let body: Option<String> = self.con().lpop(self.keys.warm(pool), None).await?;
        Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
    }

    async fn warm_list(&self, pool: Uuid) -> StoreResult<Vec<Machine>> {
        let bodies: Vec<String> = self.con().lrange(self.keys.warm(pool), 0, -1).await?;
        Ok(bodies
            .iter()
            .map(|b| serde_json::from_str(b))
            .collect::<Result<_, _>>()?)
    }

    async fn warm_remove(&self, pool: Uuid, machine: Uuid) -> StoreResult<bool> {
        let removed: i64 = WARM_REMOVE
            .key(self.keys.warm(pool))
            .arg(machine.to_string())
            .invoke_async(&mut self.con())
            .await?;
        Ok(removed == 1)
    }
}
