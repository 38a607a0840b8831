//! JWT revocations: one key per token (expiring with it), one hash of per-user cut-offs.

use super::*;
use std::sync::LazyLock;

/// KEYS: the per-user revocations. ARGV: user, before. Only moves forward.
static JWT_REVOKE_USER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
                  if (not cur) or tonumber(ARGV[2]) > cur then
                    redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
                  return 0",
    )
});

#[async_trait]
impl JwtRevocations for RedisStore {
    async fn jwt_revoke(&self, jti: &str, exp: i64) -> StoreResult<()> {
        // One command, so the key never exists without its expiry.
        redis::cmd("SET")
            .arg(self.k(&["jwt_revoked", jti]))
            .arg(exp)
            .arg("EXAT")
            .arg((exp + JWT_REVOCATION_MARGIN_S).max(1))
            .query_async::<()>(&mut self.con())
            .await?;
        Ok(())
    }

    async fn jwt_revocations(&self) -> StoreResult<Vec<(String, i64)>> {
        let prefix = self.k(&["jwt_revoked", ""]);
        let keys = self.keys_matching(&["jwt_revoked", "*"]).await?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let exps: Vec<Option<i64>> = self.con().mget(&keys).await?;
        Ok(keys
            .into_iter()
            .zip(exps)
            .filter_map(|(key, exp)| Some((key.strip_prefix(&prefix)?.to_owned(), exp?)))
            .collect())
    }

    async fn jwt_revoke_user(&self, user: Uuid, before: i64) -> StoreResult<()> {
        JWT_REVOKE_USER
            .key(self.k(&["jwt_users"]))
            .arg(user.to_string())
            .arg(before)
            .invoke_async::<i64>(&mut self.con())
            .await?;
        Ok(())
    }

    async fn jwt_user_revocations(&self) -> StoreResult<Vec<(Uuid, i64)>> {
        let all: std::collections::HashMap<String, i64> =
            self.con().hgetall(self.k(&["jwt_users"])).await?;
        Ok(all
            .into_iter()
            .filter_map(|(u, b)| Some((u.parse().ok()?, b)))
            .collect())
    }
}
