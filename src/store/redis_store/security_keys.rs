//! Security keys: a hash per user (credential id → the key's JSON) and an index key per
//! credential id naming its owner, claimed first with `SET NX` (so an id is registered once,
//! to one user, on one Redis and on a cluster alike: each is a key used alone). The
//! ceremonies' values are keys of their own, each expiring by itself.

use super::*;

/// Hash fields are unordered: each key's JSON carries its `created_ms`, by which a user's keys
/// are listed.
fn by_creation(mut keys: Vec<SecurityKey>) -> Vec<SecurityKey> {
    keys.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
    keys
}

#[async_trait]
impl SecurityKeys for RedisStore {
    async fn webauthn_put(&self, key: &str, value: &str, expires_ms: u64) -> StoreResult<()> {
        redis::cmd("SET")
            .arg(self.k(&["webauthn", key]))
            .arg(value)
            .arg("PXAT")
            .arg(expires_ms)
            .query_async::<()>(&mut self.con())
            .await?;
        Ok(())
    }

    async fn webauthn_get(&self, key: &str) -> StoreResult<Option<String>> {
        Ok(self.con().get(self.k(&["webauthn", key])).await?)
    }

    async fn webauthn_take(&self, key: &str) -> StoreResult<Option<String>> {
        Ok(redis::cmd("GETDEL")
            .arg(self.k(&["webauthn", key]))
            .query_async(&mut self.con())
            .await?)
    }

    async fn key_add(&self, key: &SecurityKey) -> StoreResult<bool> {
        let mut con = self.con();
        let claimed: Option<String> = redis::cmd("SET")
            .arg(self.k(&["key_owner", &key.id]))
            .arg(key.user_id.to_string())
            .arg("NX")
            .query_async(&mut con)
            .await?;
        if claimed.is_none() {
            return Ok(false);
        }
        con.hset::<_, _, _, ()>(
            self.k(&["user_keys", &key.user_id.to_string()]),
            &key.id,
            serde_json::to_string(key)?,
        )
        .await?;
        Ok(true)
    }

    async fn keys_of(&self, user: Uuid) -> StoreResult<Vec<SecurityKey>> {
        let bodies: Vec<String> = self
            .con()
            .hvals(self.k(&["user_keys", &user.to_string()]))
            .await?;
        let keys = bodies
            .iter()
            .map(|b| serde_json::from_str(b))
            .collect::<Result<_, _>>()?;
        Ok(by_creation(keys))
    }

    async fn key_owner(&self, id: &str) -> StoreResult<Option<Uuid>> {
        let owner: Option<String> = self.con().get(self.k(&["key_owner", id])).await?;
        owner
            .map(|o| Uuid::parse_str(&o).map_err(|e| StoreError(e.into())))
            .transpose()
    }

    async fn key_update(&self, key: &SecurityKey) -> StoreResult<bool> {
        let hash = self.k(&["user_keys", &key.user_id.to_string()]);
        let mut con = self.con();
        let stored: Option<String> = con.hget(&hash, &key.id).await?;
        let Some(stored) = stored else {
            return Ok(false);
        };
        let mut stored: SecurityKey = serde_json::from_str(&stored)?;
        stored.credential = key.credential.clone();
        stored.last_used_ms = key.last_used_ms;
        // Written only while the key is there (a removal in between is not undone).
        let written: bool = redis::Script::new(
            "if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then \
               redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) return 1 end return 0",
        )
        .key(&hash)
        .arg(&key.id)
        .arg(serde_json::to_string(&stored)?)
        .invoke_async(&mut con)
        .await?;
        Ok(written)
    }

    async fn key_remove(&self, user: Uuid, id: &str) -> StoreResult<bool> {
        let mut con = self.con();
        let removed: u32 = con
            .hdel(self.k(&["user_keys", &user.to_string()]), id)
            .await?;
        if removed == 0 {
            return Ok(false);
        }
        con.del::<_, ()>(self.k(&["key_owner", id])).await?;
        Ok(true)
    }

    async fn key_remove_unless_last(&self, user: Uuid, id: &str) -> StoreResult<KeyRemoval> {
        let mut con = self.con();
        // The count and the removal in one script on the user's hash (one key: a cluster too).
        let outcome: u32 = redis::Script::new(
            "if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end \
             if redis.call('HLEN', KEYS[1]) <= 1 then return 2 end \
             redis.call('HDEL', KEYS[1], ARGV[1]) return 1",
        )
        .key(self.k(&["user_keys", &user.to_string()]))
        .arg(id)
        .invoke_async(&mut con)
        .await?;
        match outcome {
            0 => Ok(KeyRemoval::NotFound),
            2 => Ok(KeyRemoval::Last),
            _ => {
                con.del::<_, ()>(self.k(&["key_owner", id])).await?;
                Ok(KeyRemoval::Removed)
            }
        }
    }
}
