//! Lockout failure counters and back-off slots: keys with the window as their expiry.

use super::*;
use std::sync::LazyLock;

/// KEYS: the counter. ARGV: the window (ms). Returns the count. The window starts with the
/// key: a count taken back to 0 keeps its window.
static FAILURES_ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local n = redis.call('INCR', KEYS[1])
                  if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
                  return n",
    )
});

/// KEYS: the counter. Takes one back, never below zero, the expiry unchanged.
static FAILURES_UNDO: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local n = tonumber(redis.call('GET', KEYS[1]))
                  if n and n > 0 then redis.call('DECR', KEYS[1]) end
                  return 0",
    )
});

/// KEYS: the key's next free time. ARGV: now (ms), spacing, max wait, window (ms). Returns
/// {1, slot} when the slot was taken, {0, slot} when it is too far away.
static BACKOFF_SLOT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local now = tonumber(ARGV[1])
                  local slot = math.max(now, tonumber(redis.call('GET', KEYS[1]) or '0'))
                  if slot - now > tonumber(ARGV[3]) then return {0, slot} end
                  redis.call('SET', KEYS[1], slot + tonumber(ARGV[2]), 'PX', ARGV[4])
                  return {1, slot}",
    )
});

#[async_trait]
impl Lockout for RedisStore {
    async fn failures_add(&self, key: &str, window: Duration) -> StoreResult<u32> {
        let n: u32 = FAILURES_ADD
            .key(self.k(&["failures", key]))
            .arg(window.as_millis() as u64)
            .invoke_async(&mut self.con())
            .await?;
        Ok(n)
    }

    async fn failures_get(&self, key: &str) -> StoreResult<u32> {
        let n: Option<u32> = self.con().get(self.k(&["failures", key])).await?;
        Ok(n.unwrap_or(0))
    }

    async fn failures_reset(&self, key: &str) -> StoreResult<()> {
        self.con().del::<_, ()>(self.k(&["failures", key])).await?;
        Ok(())
    }

    async fn failures_undo(&self, key: &str) -> StoreResult<()> {
        FAILURES_UNDO
            .key(self.k(&["failures", key]))
            .invoke_async::<i64>(&mut self.con())
            .await?;
        Ok(())
    }

    async fn backoff_slot(
        &self,
        key: &str,
        now_ms: u64,
        spacing: Duration,
        max_wait: Duration,
        window: Duration,
    ) -> StoreResult<Result<u64, u64>> {
        let (taken, slot): (u8, u64) = BACKOFF_SLOT
            .key(self.k(&["backoff", key]))
            .arg(now_ms)
            .arg(spacing.as_millis() as u64)
            .arg(max_wait.as_millis() as u64)
            .arg(window.as_millis().max(1) as u64)
            .invoke_async(&mut self.con())
            .await?;
        Ok(if taken == 1 { Ok(slot) } else { Err(slot) })
    }
}
