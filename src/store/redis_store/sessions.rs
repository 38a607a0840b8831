//! Sessions on Redis: a hash per session with its TTL, and a set per user trimmed at each
//! sign-in (see the module docs).

use super::*;
use std::sync::LazyLock;

/// KEYS: the session, the user's session set. ARGV: hash, user, created, last
/// active, peer, ttl, cap, the session key prefix. Stores the session, drops set
/// members whose session is gone, and past the cap deletes the least recently
/// active others; returns their hashes. The set then expires with its last session.
static SESSION_PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{LUA_NOW}
                  local expires = tonumber(ARGV[4]) + tonumber(ARGV[6])
                  redis.call('HSET', KEYS[1], 'user_id', ARGV[2], 'created_ms', ARGV[3],
                    'last_active_ms', ARGV[4], 'peer', ARGV[5])
                  redis.call('PEXPIREAT', KEYS[1], expires)
                  redis.call('SADD', KEYS[2], ARGV[1])
                  local others = {{}}
                  for _, m in ipairs(redis.call('SMEMBERS', KEYS[2])) do
                    if m ~= ARGV[1] then
                      local h = redis.call('HMGET', ARGV[8] .. m, 'last_active_ms', 'created_ms')
                      if h[1] then
                        others[#others + 1] = {{m, tonumber(h[1]), tonumber(h[2]) or 0}}
                      else
                        redis.call('SREM', KEYS[2], m)
                      end
                    end
                  end
                  local keep = tonumber(ARGV[7]) - 1
                  local evicted = {{}}
                  table.sort(others, function(a, b)
                    if a[2] ~= b[2] then return a[2] < b[2] end
                    return a[3] < b[3]
                  end)
                  local last = expires
                  for i, o in ipairs(others) do
                    if i <= #others - keep then
                      redis.call('DEL', ARGV[8] .. o[1])
                      redis.call('SREM', KEYS[2], o[1])
                      evicted[#evicted + 1] = o[1]
                    else
                      local left = redis.call('PTTL', ARGV[8] .. o[1])
                      if left == -1 then last = nil
                      elseif last and now + left > last then last = now + left end
                    end
                  end
                  if last then redis.call('PEXPIREAT', KEYS[2], last)
                  else redis.call('PERSIST', KEYS[2]) end
                  return evicted",
    ))
});

/// KEYS: sessions. ARGV: ttl, the session key prefix, the user set key prefix, then
/// one activity time per key. Returns the (1-based) positions of the sessions that
/// are gone. A session that moves takes its user's set along (put back if missing).
static SESSION_TOUCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{LUA_NOW}
                  {LUA_EXTEND}
                  local ttl = tonumber(ARGV[1])
                  local missing = {{}}
                  for i, key in ipairs(KEYS) do
                    local h = redis.call('HMGET', key, 'last_active_ms', 'user_id')
                    local cur = tonumber(h[1])
                    if not cur then
                      missing[#missing + 1] = i
                    else
                      local at = tonumber(ARGV[i + 3])
                      if at > cur then
                        redis.call('HSET', key, 'last_active_ms', ARGV[i + 3])
                        redis.call('PEXPIREAT', key, at + ttl)
                        local set = ARGV[3] .. h[2]
                        if redis.call('SADD', set, string.sub(key, #ARGV[2] + 1)) == 1
                          and redis.call('SCARD', set) == 1 then
                          redis.call('PEXPIREAT', set, at + ttl)
                        else
                          extend(set, at + ttl)
                        end
                      end
                    end
                  end
                  return missing",
    ))
});

/// KEYS: the session. ARGV: the hash, the user set key prefix.
static SESSION_DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local user = redis.call('HGET', KEYS[1], 'user_id')
                  redis.call('DEL', KEYS[1])
                  if user then redis.call('SREM', ARGV[2] .. user, ARGV[1]) end
                  return 0",
    )
});

/// KEYS: the user's session set. ARGV: the session key prefix. Returns the hashes
/// of the sessions that were there.
static SESSION_DELETE_USER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local live = {}
                  for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
                    if redis.call('DEL', ARGV[1] .. m) == 1 then live[#live + 1] = m end
                  end
                  redis.call('DEL', KEYS[1])
                  return live",
    )
});

#[async_trait]
impl Sessions for RedisStore {
    fn token_fits(&self, user: Uuid, hash: &TokenHash) -> bool {
        !self.keys.cluster || in_users_bucket(user, hash)
    }

    async fn session_put(
        &self,
        rec: &SessionRecord,
        ttl: Duration,
        max_per_user: usize,
    ) -> StoreResult<Vec<TokenHash>> {
        if !self.token_fits(rec.user_id, &rec.hash) {
            return Err(StoreError(anyhow::anyhow!(
                "a session token outside its user's bucket (see Store::token_fits)"
            )));
        }
        let evicted: Vec<String> = SESSION_PUT
            .key(self.keys.session(&rec.hash))
            .key(self.keys.user_sessions(rec.user_id))
            .arg(hex::encode(rec.hash))
            .arg(rec.user_id.to_string())
            .arg(rec.created_ms)
            .arg(rec.last_active_ms)
            .arg(&rec.peer)
            .arg(ttl.as_millis() as u64)
            .arg(max_per_user.max(1))
            .arg(self.keys.session_prefix(user_bucket(rec.user_id)))
            .invoke_async(&mut self.con())
            .await?;
        Ok(evicted
            .iter()
            .filter_map(|h| hex::decode(h).ok()?.try_into().ok())
            .collect())
    }

    async fn session_get(&self, hash: &TokenHash) -> StoreResult<Option<SessionRecord>> {
        let fields: std::collections::HashMap<String, String> =
            self.con().hgetall(self.keys.session(hash)).await?;
        let get = |f: &str| fields.get(f).and_then(|v| v.parse::<u64>().ok());
        Ok(
            match (
                fields.get("user_id"),
                get("created_ms"),
                get("last_active_ms"),
            ) {
                (Some(user), Some(created_ms), Some(last_active_ms)) => Some(SessionRecord {
                    hash: *hash,
                    user_id: user.parse().map_err(anyhow::Error::from)?,
                    created_ms,
                    last_active_ms,
                    peer: fields.get("peer").cloned().unwrap_or_default(),
                }),
                _ => None,
            },
        )
    }

    async fn session_touch(
        &self,
        touches: &[(TokenHash, u64)],
        ttl: Duration,
    ) -> StoreResult<Vec<TokenHash>> {
        let mut con = self.con();
        let mut missing = Vec::new();
        // One script call touches the sessions of one bucket (one slot on a cluster).
        let mut by_bucket: std::collections::BTreeMap<u16, Vec<(TokenHash, u64)>> =
            std::collections::BTreeMap::new();
        for touch in touches {
            let bucket = if self.keys.cluster {
                hash_bucket(&touch.0)
            } else {
                0
            };
            by_bucket.entry(bucket).or_default().push(*touch);
        }
        for (bucket, touches) in by_bucket {
            for chunk in touches.chunks(TOUCH_CHUNK) {
                let mut call = SESSION_TOUCH.prepare_invoke();
                call.arg(ttl.as_millis() as u64)
                    .arg(self.keys.session_prefix(bucket))
                    .arg(self.keys.user_sessions_prefix(bucket));
                for (hash, at) in chunk {
                    call.key(self.keys.session(hash)).arg(*at);
                }
                let gone: Vec<usize> = call.invoke_async(&mut con).await?;
                missing.extend(
                    gone.into_iter()
                        .filter_map(|i| chunk.get(i.checked_sub(1)?).map(|(h, _)| *h)),
                );
            }
        }
        Ok(missing)
    }

    async fn session_delete(&self, hash: &TokenHash) -> StoreResult<()> {
        SESSION_DELETE
            .key(self.keys.session(hash))
            .arg(hex::encode(hash))
            .arg(self.keys.user_sessions_prefix(hash_bucket(hash)))
            .invoke_async::<i64>(&mut self.con())
            .await?;
        Ok(())
    }

    async fn session_delete_user(&self, user: Uuid) -> StoreResult<Vec<TokenHash>> {
        let live: Vec<String> = SESSION_DELETE_USER
            .key(self.keys.user_sessions(user))
            .arg(self.keys.session_prefix(user_bucket(user)))
            .invoke_async(&mut self.con())
            .await?;
        Ok(live
            .iter()
            .filter_map(|m| hex::decode(m).ok()?.try_into().ok())
            .collect())
    }

    async fn sessions_all(&self) -> StoreResult<Vec<SessionRecord>> {
        let keys = self.keys_matching(&["session", "*"]).await?;
        let mut out = Vec::new();
        for key in keys {
            let Some(hash) = key
                .rsplit(':')
                .next()
                .and_then(|h| hex::decode(h).ok())
                .and_then(|h| TokenHash::try_from(h).ok())
            else {
                continue;
            };
            if let Some(rec) = self.session_get(&hash).await? {
                out.push(rec);
            }
        }
        Ok(out)
    }
}
