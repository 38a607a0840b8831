//! MFA challenges (a key with its expiry, beside a counter of wrong codes) and TOTP steps.

use super::*;
use std::sync::LazyLock;

/// KEYS: the user's last step. ARGV: the step. 1 when it was later and is now the last.
static TOTP_ADVANCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local cur = redis.call('GET', KEYS[1])
                  if (not cur) or tonumber(ARGV[1]) > tonumber(cur) then
                    redis.call('SET', KEYS[1], ARGV[1]) return 1 end
                  return 0",
    )
});

/// KEYS: the challenge, its wrong-code count. The count lives and dies with the
/// challenge; -1 when there is none.
static MFA_FAIL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local left = redis.call('PTTL', KEYS[1])
                  if left == -2 then return -1 end
                  local n = redis.call('INCR', KEYS[2])
                  if left > 0 then redis.call('PEXPIRE', KEYS[2], left) end
                  return n",
    )
});

#[async_trait]
impl Mfa for RedisStore {
    async fn mfa_put(&self, hash: &TokenHash, rec: &MfaRecord) -> StoreResult<()> {
        let key = self.keys.mfa(hash);
        let mut con = self.con();
        redis::pipe()
            .atomic()
            .set(&key, serde_json::to_string(rec)?)
            .ignore()
            .pexpire_at(&key, rec.expires_ms as i64)
            .ignore()
            .del(self.keys.mfa_attempts(hash))
            .ignore()
            .query_async::<()>(&mut con)
            .await?;
        // The user's earlier challenge of this kind goes: each writer's SET … GET sees the one
        // before it, so of concurrent writers only the last one's challenge stays.
        let earlier: Option<String> = redis::cmd("SET")
            .arg(self.keys.mfa_latest(rec.user_id, rec.password_ok))
            .arg(hex::encode(hash))
            .arg("PXAT")
            .arg(rec.expires_ms)
            .arg("GET")
            .query_async(&mut con)
            .await?;
        let earlier = earlier.and_then(|h| hex::decode(h).ok());
        if let Some(earlier) = earlier.and_then(|h| TokenHash::try_from(h.as_slice()).ok())
            && earlier != *hash
        {
            redis::pipe()
                .atomic()
                .del(self.keys.mfa(&earlier))
                .ignore()
                .del(self.keys.mfa_attempts(&earlier))
                .ignore()
                .query_async::<()>(&mut con)
                .await?;
        }
        Ok(())
    }

    async fn mfa_get(&self, hash: &TokenHash) -> StoreResult<Option<MfaRecord>> {
        let (body, failed): (Option<String>, Option<u32>) = redis::pipe()
            .atomic()
            .get(self.keys.mfa(hash))
            .get(self.keys.mfa_attempts(hash))
            .query_async(&mut self.con())
            .await?;
        let Some(body) = body else {
            return Ok(None);
        };
        let mut rec: MfaRecord = serde_json::from_str(&body)?;
        rec.attempts = rec.attempts.saturating_add(failed.unwrap_or(0));
        Ok(Some(rec))
    }

    async fn mfa_take(&self, hash: &TokenHash) -> StoreResult<bool> {
        let (taken, _): (i64, i64) = redis::pipe()
            .atomic()
            .del(self.keys.mfa(hash))
            .del(self.keys.mfa_attempts(hash))
            .query_async(&mut self.con())
            .await?;
        Ok(taken == 1)
    }

    async fn mfa_fail(&self, hash: &TokenHash) -> StoreResult<u32> {
        let n: i64 = MFA_FAIL
            .key(self.keys.mfa(hash))
            .key(self.keys.mfa_attempts(hash))
            .invoke_async(&mut self.con())
            .await?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    async fn totp_advance(&self, user: Uuid, step: u64) -> StoreResult<bool> {
        let n: i64 = TOTP_ADVANCE
            .key(self.k(&["totp", &user.to_string()]))
            .arg(step)
            .invoke_async(&mut self.con())
            .await?;
        Ok(n == 1)
    }
}
