//! The shared backend for several instances: Redis, through the `redis` crate's
//! `ConnectionManager` (reconnects by itself; RESP3 push messages carry the event bus and are
//! re-subscribed after a reconnect). Sessions and MFA challenges are keys with a TTL; tasks
//! and assignments are JSON values indexed by sets; every compare-and-set is a Lua script.
//! Ended tasks are also indexed by creation time (`done_tasks`), so the retention sweep reads
//! only what it may delete; a user's session set is trimmed (gone members, the cap) whenever
//! the user signs in, so it never holds more than `max_sessions_per_user`, and it expires with
//! the user's last session (its expiry only ever moves later, so it never lapses while one of
//! its sessions lives). Every record with an expiry is a key with a TTL, so `sweep_expired`
//! has nothing to do.

use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{AsyncCommands, PushKind, Script};
use anyhow::Context;
use async_trait::async_trait;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::*;

pub struct RedisStore {
    con: ConnectionManager,
    /// Key namespace (`state_prefix`): instances of one deployment share it.
    prefix: String,
    /// Events to publish, drained in order by one task (spawning a PUBLISH per event would
    /// let them overtake each other). Bounded: when Redis cannot keep up, events are shed
    /// (counted, logged) rather than queued without limit.
    outbox: mpsc::Sender<BusEvent>,
    /// Revocations (sessions, JWTs) wait apart and go first: a flood of task events never
    /// sheds a sign-out. Bounded too.
    revocations: mpsc::Sender<BusEvent>,
    /// Which users' channels this instance hears ([`routing`]).
    router: Arc<routing::Router>,
    /// The `origin` of those announcements (see [`Store::announced_writes_origin`]).
    origin: u64,
    task_create: Script,
    task_update: Script,
    totp_advance: Script,
    lease_acquire: Script,
    lease_release: Script,
    session_put: Script,
    session_touch: Script,
    session_delete: Script,
    session_delete_user: Script,
    mfa_fail: Script,
    jwt_revoke_user: Script,
    assignment_create: Script,
    assignment_remove: Script,
    task_sweep: Script,
    failures_add: Script,
    failures_undo: Script,
    backoff_slot: Script,
}

/// Lua: `now`, the server's clock in ms (scripts may read it: Redis >= 6.2 replicates their
/// effects, not the script).
const LUA_NOW: &str = "local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)";

/// Lua: `extend(key, until)`: makes `key` expire no earlier than `until` (ms). A key without
/// an expiry keeps none; a missing one is left missing.
const LUA_EXTEND: &str = "local function extend(key, until_ms)
    local left = redis.call('PTTL', key)
    if left >= 0 and now + left < until_ms then redis.call('PEXPIREAT', key, until_ms) end
  end";

/// Events waiting to be published, at most; past it they are shed.
pub const OUTBOX_CAPACITY: usize = 16_384;

/// Revocations waiting to be published, at most (they are rare: sign-outs, admin revokes).
pub const REVOCATIONS_CAPACITY: usize = 4_096;

/// The global channel: what every instance hears (JWT revocations).
fn global_channel(prefix: &str) -> String {
    key(prefix, &["bus"])
}

/// A user's channel: their tasks, releases, session revocations and the cache's
/// announcements, heard by the instances that hold a socket of theirs. The braces are a
/// Redis Cluster hash tag: the channel goes with the user's keys.
fn user_channel(prefix: &str, user: Uuid) -> String {
    key(prefix, &["bus", &format!("{{{user}}}")])
}

/// Carries out the router's subscription changes on the store's connection.
struct Subscriptions {
    con: ConnectionManager,
    prefix: String,
}

impl routing::Subscriber for Subscriptions {
    async fn apply(&self, subscribe: bool, users: &[Uuid]) -> bool {
        let channels: Vec<String> = users
            .iter()
            .map(|u| user_channel(&self.prefix, *u))
            .collect();
        let mut con = self.con.clone();
        let done = if subscribe {
            con.subscribe(&channels).await
        } else {
            con.unsubscribe(&channels).await
        };
        match done {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, users = users.len(), subscribe, "a change of the bus subscriptions failed; retrying");
                false
            }
        }
    }
}

/// Sessions checked per `session_touch` script call: one round trip each, short enough not to
/// hold Redis up for long.
const TOUCH_CHUNK: usize = 256;

fn key(prefix: &str, parts: &[&str]) -> String {
    let mut key = String::from(prefix);
    for p in parts {
        key.push(':');
        key.push_str(p);
    }
    key
}

fn resp3(url: &str) -> String {
    if url.contains("protocol=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    }
}

/// Parses a `redis://` URL the way [`RedisStore::connect`] does, without connecting.
pub fn check_url(url: &str) -> anyhow::Result<()> {
    use ::redis::IntoConnectionInfo;
    resp3(url)
        .as_str()
        .into_connection_info()
        .context("invalid redis URL")?;
    Ok(())
}

/// Connects once with the configured password and sends PING (`check-config --connect`).
pub async fn ping(url: &str, password: Option<&str>) -> anyhow::Result<()> {
    use ::redis::IntoConnectionInfo;
    let mut info = url.into_connection_info().context("invalid redis URL")?;
    if let Some(password) = password {
        let settings = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(settings);
    }
    let client = ::redis::Client::open(info).context("invalid redis URL")?;
    let attempt = async {
        let mut con = client.get_multiplexed_async_connection().await?;
        ::redis::cmd("PING").query_async::<String>(&mut con).await
    };
    match tokio::time::timeout(Duration::from_secs(3), attempt).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(anyhow::anyhow!(
            "cannot reach {}: {e}",
            super::url::redacted(url)
        )),
        Err(_) => Err(anyhow::anyhow!(
            "cannot reach {}: no answer within 3 s",
            super::url::redacted(url)
        )),
    }
}

impl RedisStore {
    /// `password` (from `POOLGATE_REDIS_PASSWORD` or `state_password_file`) overrides one in
    /// the URL, so the URL in the config file can stay free of secrets.
    pub async fn connect(
        url: &str,
        password: Option<&str>,
        prefix: &str,
        sink: mpsc::UnboundedSender<BusEvent>,
    ) -> anyhow::Result<Self> {
        use ::redis::IntoConnectionInfo;
        let channel = global_channel(prefix);
        let mut info = resp3(url)
            .as_str()
            .into_connection_info()
            .context("invalid redis URL")?;
        if let Some(password) = password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = ::redis::Client::open(info).context("invalid redis URL")?;
        let (push_tx, mut push_rx) = mpsc::unbounded_channel();
        let config = ConnectionManagerConfig::new()
            .set_push_sender(push_tx)
            .set_automatic_resubscription()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let mut con = client
            .get_connection_manager_with_config(config)
            .await
            .with_context(|| format!("cannot connect to {}", super::url::redacted(url)))?;
        con.subscribe(&channel)
            .await
            .context("cannot subscribe to the event bus")?;
        let router = routing::Router::new(Subscriptions {
            con: con.clone(),
            prefix: prefix.to_owned(),
        });

        let push_router = router.clone();
        let push_channel = channel.clone();
        tokio::spawn(async move {
            let router = push_router;
            while let Some(push) = push_rx.recv().await {
                // A gap in the subscription: what is published until it is back is missed.
                // (The global channel's subscription stands for the connection's; each
                // user's is confirmed by the router.)
                let gap = match push.kind {
                    PushKind::Message => None,
                    PushKind::Disconnection => {
                        router.disconnected();
                        Some(false)
                    }
                    PushKind::Subscribe
                        if push.data.first().is_some_and(|c| {
                            ::redis::from_redis_value_ref::<String>(c)
                                .is_ok_and(|c| c == push_channel)
                        }) =>
                    {
                        Some(true)
                    }
                    _ => continue,
                };
                if let Some(resumed) = gap {
                    if sink.send(BusEvent::BusGap { resumed }).is_err() {
                        return;
                    }
                    continue;
                }
                router
                    .received
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(payload) = push.data.into_iter().nth(1) else {
                    continue;
                };
                let Ok(text) = ::redis::from_redis_value::<String>(payload) else {
                    continue;
                };
                match serde_json::from_str::<BusEvent>(&text) {
                    Ok(event) => {
                        if sink.send(event).is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "unreadable event on the bus"),
                }
            }
        });

        let (outbox, mut out_rx) = mpsc::channel::<BusEvent>(OUTBOX_CAPACITY);
        let (revocations, mut rev_rx) = mpsc::channel::<BusEvent>(REVOCATIONS_CAPACITY);
        let mut pub_con = con.clone();
        let out_prefix = prefix.to_owned();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    biased;
                    Some(event) = rev_rx.recv() => event,
                    Some(event) = out_rx.recv() => event,
                    else => break,
                };
                let text = serde_json::to_string(&event).expect("events serialize");
                let out_channel = match event.user() {
                    Some(user) => user_channel(&out_prefix, user),
                    None => global_channel(&out_prefix),
                };
                // Retry briefly across a reconnect; an event lost here is a missed push, and
                // clients can always ask for the task's state.
                for attempt in 0..3 {
                    match pub_con.publish::<_, _, ()>(&out_channel, &text).await {
                        Ok(()) => break,
                        Err(e) if attempt == 2 => tracing::warn!(error = %e, "event not published"),
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            }
        });

        Ok(RedisStore {
            con,
            prefix: prefix.to_owned(),
            outbox,
            revocations,
            router,
            origin: rand::random(),
            // KEYS: the key's latest, the task, the user's tasks, the active set, the ended
            // index. ARGV: the expected latest ('' for none), id, body, created (ms), 'active'
            // or 'done', the bus channel, the announcement. The compare-and-set of a key's
            // latest task.
            task_create: Script::new(
                r"local cur = redis.call('GET', KEYS[1]) or ''
                  if cur ~= ARGV[1] then return 0 end
                  redis.call('SET', KEYS[2], ARGV[3])
                  redis.call('SET', KEYS[1], ARGV[2])
                  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2])
                  if ARGV[5] == 'active' then redis.call('SADD', KEYS[4], ARGV[2])
                  else redis.call('SREM', KEYS[4], ARGV[2])
                    redis.call('ZADD', KEYS[5], ARGV[4], ARGV[2]) end
                  redis.call('PUBLISH', ARGV[6], ARGV[7])
                  return 1",
            ),
            // KEYS: the task, the active set, the ended index. ARGV: id, body, 'active' or
            // 'done', created (ms), the bus channel, the announcement. Only a stored task is
            // overwritten.
            task_update: Script::new(
                r"if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
                  redis.call('SET', KEYS[1], ARGV[2])
                  if ARGV[3] == 'active' then redis.call('SADD', KEYS[2], ARGV[1])
                  else redis.call('SREM', KEYS[2], ARGV[1])
                    redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1]) end
                  redis.call('PUBLISH', ARGV[5], ARGV[6])
                  return 1",
            ),
            totp_advance: Script::new(
                r"local cur = redis.call('GET', KEYS[1])
                  if (not cur) or tonumber(ARGV[1]) > tonumber(cur) then
                    redis.call('SET', KEYS[1], ARGV[1]) return 1 end
                  return 0",
            ),
            lease_acquire: Script::new(
                r"local cur = redis.call('GET', KEYS[1])
                  if (not cur) or cur == ARGV[1] then
                    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
                  return 0",
            ),
            lease_release: Script::new(
                r"if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
                  return 0",
            ),
            // The window starts with the key: a count taken back to 0 keeps its window.
            failures_add: Script::new(
                r"local n = redis.call('INCR', KEYS[1])
                  if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
                  return n",
            ),
            failures_undo: Script::new(
                r"local n = tonumber(redis.call('GET', KEYS[1]))
                  if n and n > 0 then redis.call('DECR', KEYS[1]) end
                  return 0",
            ),
            backoff_slot: Script::new(
                r"local now = tonumber(ARGV[1])
                  local slot = math.max(now, tonumber(redis.call('GET', KEYS[1]) or '0'))
                  if slot - now > tonumber(ARGV[3]) then return {0, slot} end
                  redis.call('SET', KEYS[1], slot + tonumber(ARGV[2]), 'PX', ARGV[4])
                  return {1, slot}",
            ),
            // KEYS: the session, the user's session set. ARGV: hash, user, created, last
            // active, peer, ttl, cap, the session key prefix. Stores the session, drops set
            // members whose session is gone, and past the cap deletes the least recently
            // active others; returns their hashes. The set then expires with its last session.
            session_put: Script::new(&format!(
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
            )),
            // KEYS: sessions. ARGV: ttl, the session key prefix, the user set key prefix, then
            // one activity time per key. Returns the (1-based) positions of the sessions that
            // are gone. A session that moves takes its user's set along (put back if missing).
            session_touch: Script::new(&format!(
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
            )),
            // KEYS: the session. ARGV: the hash, the user set key prefix.
            session_delete: Script::new(
                r"local user = redis.call('HGET', KEYS[1], 'user_id')
                  redis.call('DEL', KEYS[1])
                  if user then redis.call('SREM', ARGV[2] .. user, ARGV[1]) end
                  return 0",
            ),
            // KEYS: the user's session set. ARGV: the session key prefix. Returns the hashes
            // of the sessions that were there.
            session_delete_user: Script::new(
                r"local live = {}
                  for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
                    if redis.call('DEL', ARGV[1] .. m) == 1 then live[#live + 1] = m end
                  end
                  redis.call('DEL', KEYS[1])
                  return live",
            ),
            // KEYS: the challenge, its wrong-code count. The count lives and dies with the
            // challenge; -1 when there is none.
            mfa_fail: Script::new(
                r"local left = redis.call('PTTL', KEYS[1])
                  if left == -2 then return -1 end
                  local n = redis.call('INCR', KEYS[2])
                  if left > 0 then redis.call('PEXPIRE', KEYS[2], left) end
                  return n",
            ),
            // KEYS: the per-user revocations. ARGV: user, before. Only moves forward.
            jwt_revoke_user: Script::new(
                r"local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
                  if (not cur) or tonumber(ARGV[2]) > cur then
                    redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
                  return 0",
            ),
            // KEYS: the assignment, the index. ARGV: body, index member, the bus channel, the
            // announcement.
            assignment_create: Script::new(
                r"if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 0 end
                  redis.call('SADD', KEYS[2], ARGV[2])
                  redis.call('PUBLISH', ARGV[3], ARGV[4])
                  return 1",
            ),
            // KEYS: the assignment, the index. ARGV: index member, the bus channel, the
            // announcement. A script, not MULTI: a transaction's EXEC reply on the connection
            // that is also subscribed to the bus could be taken for the announcement's push.
            assignment_remove: Script::new(
                r"local body = redis.call('GET', KEYS[1])
                  redis.call('DEL', KEYS[1])
                  redis.call('SREM', KEYS[2], ARGV[1])
                  redis.call('PUBLISH', ARGV[2], ARGV[3])
                  return body",
            ),
            // KEYS: the task, the index of ended tasks. ARGV: the id, the key prefix. Deletes an
            // ended task unless it is the latest of its key (then it stays indexed and is looked
            // at again by the next sweep, once a newer task replaced it).
            task_sweep: Script::new(
                r"local body = redis.call('GET', KEYS[1])
                  if not body then redis.call('ZREM', KEYS[2], ARGV[1]) return 0 end
                  local t = cjson.decode(body)
                  if t.status == 'PENDING' or t.status == 'RUNNING' then
                    redis.call('ZREM', KEYS[2], ARGV[1]) return 0 end
                  local latest = ARGV[2] .. ':latest:' .. t.user_id .. ':' .. t.pool_id .. ':' .. t.kind
                  if redis.call('GET', latest) == ARGV[1] then return 0 end
                  redis.call('DEL', KEYS[1])
                  redis.call('ZREM', ARGV[2] .. ':user_tasks:' .. t.user_id, ARGV[1])
                  redis.call('ZREM', KEYS[2], ARGV[1])
                  return 1",
            ),
        })
    }

    /// The announcement a write of `user`'s records (and of task `task`) publishes with it.
    fn announcement(&self, user: Uuid, task: Option<Uuid>) -> String {
        serde_json::to_string(&BusEvent::Invalidate {
            origin: self.origin,
            user_id: user,
            task_id: task,
        })
        .expect("events serialize")
    }

    fn k(&self, parts: &[&str]) -> String {
        key(&self.prefix, parts)
    }

    fn session_key(&self, hash: &TokenHash) -> String {
        self.k(&["session", &hex::encode(hash)])
    }

    fn mfa_key(&self, hash: &TokenHash) -> String {
        self.k(&["mfa", &hex::encode(hash)])
    }

    /// A challenge's wrong-code count (a counter beside the record, so `mfa_fail` is one INCR).
    fn mfa_attempts_key(&self, hash: &TokenHash) -> String {
        self.k(&["mfa_attempts", &hex::encode(hash)])
    }

    fn user_sessions_key(&self, user: Uuid) -> String {
        self.k(&["user_sessions", &user.to_string()])
    }

    fn con(&self) -> ConnectionManager {
        self.con.clone()
    }

    /// Every key of the namespace matching a pattern (SCAN: for sweeps and counts only).
    async fn keys_matching(&self, parts: &[&str]) -> StoreResult<Vec<String>> {
        let mut con = self.con();
        let mut iter = con.scan_match::<_, String>(self.k(parts)).await?;
        let mut keys = Vec::new();
        while let Some(key) = futures_util::StreamExt::next(&mut iter).await {
            keys.push(key?);
        }
        Ok(keys)
    }

    /// Once per store: puts the ended tasks written before the `done_tasks` index existed
    /// into it, so the retention sweep finds them too.
    async fn index_done_tasks(&self) -> StoreResult<()> {
        let flag = self.k(&["done_tasks", "indexed"]);
        let mut con = self.con();
        if con.exists(&flag).await? {
            return Ok(());
        }
        let prefix = self.k(&["task", ""]);
        let keys = self.keys_matching(&["task", "*"]).await?;
        for chunk in keys.chunks(TOUCH_CHUNK) {
            let ids = chunk
                .iter()
                .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
                .collect();
            let mut pipe = ::redis::pipe();
            for task in self.tasks_by_ids(ids).await? {
                if task.status.is_done() {
                    pipe.zadd(
                        self.k(&["done_tasks"]),
                        task.id.to_string(),
                        task.created.timestamp_millis(),
                    )
                    .ignore();
                }
            }
            pipe.query_async::<()>(&mut con).await?;
        }
        con.set::<_, _, ()>(&flag, 1).await?;
        Ok(())
    }

    async fn tasks_by_ids(&self, ids: Vec<String>) -> StoreResult<Vec<Task>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.k(&["task", id])).collect();
        let bodies: Vec<Option<String>> = self.con().mget(keys).await?;
        bodies
            .into_iter()
            .flatten()
            .map(|b| task_from_json(&b))
            .collect()
    }
}

#[async_trait]
impl Store for RedisStore {
    fn is_shared(&self) -> bool {
        true
    }

    async fn ping(&self) -> StoreResult<()> {
        ::redis::cmd("PING")
            .query_async::<String>(&mut self.con())
            .await?;
        Ok(())
    }

    async fn session_put(
        &self,
        rec: &SessionRecord,
        ttl: Duration,
        max_per_user: usize,
    ) -> StoreResult<Vec<TokenHash>> {
        let evicted: Vec<String> = self
            .session_put
            .key(self.session_key(&rec.hash))
            .key(self.user_sessions_key(rec.user_id))
            .arg(hex::encode(rec.hash))
            .arg(rec.user_id.to_string())
            .arg(rec.created_ms)
            .arg(rec.last_active_ms)
            .arg(&rec.peer)
            .arg(ttl.as_millis() as u64)
            .arg(max_per_user.max(1))
            .arg(self.k(&["session", ""]))
            .invoke_async(&mut self.con())
            .await?;
        Ok(evicted
            .iter()
            .filter_map(|h| hex::decode(h).ok()?.try_into().ok())
            .collect())
    }

    async fn session_get(&self, hash: &TokenHash) -> StoreResult<Option<SessionRecord>> {
        let fields: std::collections::HashMap<String, String> =
            self.con().hgetall(self.session_key(hash)).await?;
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

    async fn sessions_all(&self) -> StoreResult<Vec<SessionRecord>> {
        let prefix = self.k(&["session", ""]);
        let mut keys = Vec::new();
        {
            let mut con = self.con();
            let mut iter = con.scan_match::<_, String>(format!("{prefix}*")).await?;
            while let Some(key) = futures_util::StreamExt::next(&mut iter).await {
                keys.push(key?);
            }
        }
        let mut out = Vec::new();
        for key in keys {
            let Some(hash) = key
                .strip_prefix(&prefix)
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

    async fn session_touch(
        &self,
        touches: &[(TokenHash, u64)],
        ttl: Duration,
    ) -> StoreResult<Vec<TokenHash>> {
        let mut con = self.con();
        let mut missing = Vec::new();
        for chunk in touches.chunks(TOUCH_CHUNK) {
            let mut call = self.session_touch.prepare_invoke();
            call.arg(ttl.as_millis() as u64)
                .arg(self.k(&["session", ""]))
                .arg(self.k(&["user_sessions", ""]));
            for (hash, at) in chunk {
                call.key(self.session_key(hash)).arg(*at);
            }
            let gone: Vec<usize> = call.invoke_async(&mut con).await?;
            missing.extend(
                gone.into_iter()
                    .filter_map(|i| chunk.get(i.checked_sub(1)?).map(|(h, _)| *h)),
            );
        }
        Ok(missing)
    }

    async fn session_delete(&self, hash: &TokenHash) -> StoreResult<()> {
        self.session_delete
            .key(self.session_key(hash))
            .arg(hex::encode(hash))
            .arg(self.k(&["user_sessions", ""]))
            .invoke_async::<i64>(&mut self.con())
            .await?;
        Ok(())
    }

    async fn session_delete_user(&self, user: Uuid) -> StoreResult<Vec<TokenHash>> {
        let live: Vec<String> = self
            .session_delete_user
            .key(self.user_sessions_key(user))
            .arg(self.k(&["session", ""]))
            .invoke_async(&mut self.con())
            .await?;
        Ok(live
            .iter()
            .filter_map(|m| hex::decode(m).ok()?.try_into().ok())
            .collect())
    }

    /// Every record with an expiry is a key with a TTL: nothing is left to delete.
    async fn sweep_expired(&self) -> StoreResult<usize> {
        Ok(0)
    }

    async fn mfa_put(&self, hash: &TokenHash, rec: &MfaRecord) -> StoreResult<()> {
        let key = self.mfa_key(hash);
        let mut con = self.con();
        ::redis::pipe()
            .atomic()
            .set(&key, serde_json::to_string(rec)?)
            .ignore()
            .pexpire_at(&key, rec.expires_ms as i64)
            .ignore()
            .del(self.mfa_attempts_key(hash))
            .ignore()
            .query_async::<()>(&mut con)
            .await?;
        Ok(())
    }

    async fn mfa_get(&self, hash: &TokenHash) -> StoreResult<Option<MfaRecord>> {
        let (body, failed): (Option<String>, Option<u32>) = ::redis::pipe()
            .atomic()
            .get(self.mfa_key(hash))
            .get(self.mfa_attempts_key(hash))
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
        let (taken, _): (i64, i64) = ::redis::pipe()
            .atomic()
            .del(self.mfa_key(hash))
            .del(self.mfa_attempts_key(hash))
            .query_async(&mut self.con())
            .await?;
        Ok(taken == 1)
    }

    async fn mfa_fail(&self, hash: &TokenHash) -> StoreResult<u32> {
        let n: i64 = self
            .mfa_fail
            .key(self.mfa_key(hash))
            .key(self.mfa_attempts_key(hash))
            .invoke_async(&mut self.con())
            .await?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    async fn totp_advance(&self, user: Uuid, step: u64) -> StoreResult<bool> {
        let n: i64 = self
            .totp_advance
            .key(self.k(&["totp", &user.to_string()]))
            .arg(step)
            .invoke_async(&mut self.con())
            .await?;
        Ok(n == 1)
    }

    async fn directory_user_put(&self, user: &DirectoryUser) -> StoreResult<()> {
        self.con()
            .set::<_, _, ()>(
                self.k(&["directory_user", &user.id.to_string()]),
                serde_json::to_string(user)?,
            )
            .await?;
        Ok(())
    }

    async fn directory_user_get(&self, id: Uuid) -> StoreResult<Option<DirectoryUser>> {
        let body: Option<String> = self
            .con()
            .get(self.k(&["directory_user", &id.to_string()]))
            .await?;
        Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
    }

    async fn directory_totp_put(&self, id: Uuid, secret: Option<&str>) -> StoreResult<()> {
        let key = self.k(&["directory_totp", &id.to_string()]);
        match secret {
            Some(secret) => self.con().set::<_, _, ()>(key, secret).await?,
            None => self.con().del::<_, ()>(key).await?,
        }
        Ok(())
    }

    async fn directory_totp_get(&self, id: Uuid) -> StoreResult<Option<String>> {
        Ok(self
            .con()
            .get(self.k(&["directory_totp", &id.to_string()]))
            .await?)
    }

    async fn directory_name_put(&self, name: &str, id: Uuid) -> StoreResult<()> {
        self.con()
            .set::<_, _, ()>(self.k(&["directory_name", name]), id.to_string())
            .await?;
        Ok(())
    }

    async fn directory_name_get(&self, name: &str) -> StoreResult<Option<Uuid>> {
        let id: Option<String> = self.con().get(self.k(&["directory_name", name])).await?;
        Ok(id.and_then(|id| Uuid::parse_str(&id).ok()))
    }

    async fn jwt_revoke(&self, jti: &str, exp: i64) -> StoreResult<()> {
        // One command, so the key never exists without its expiry.
        ::redis::cmd("SET")
            .arg(self.k(&["jwt_revoked", jti]))
            .arg(exp)
            .arg("EXAT")
            .arg((exp + JWT_REVOCATION_MARGIN_S).max(1))
            .query_async::<()>(&mut self.con())
            .await?;
        Ok(())
    }

    async fn jwt_revocations(&self) -> StoreResult<Vec<(String, i64)>> {
        let mut con = self.con();
        let prefix = self.k(&["jwt_revoked", ""]);
        let mut keys = Vec::new();
        {
            let mut iter = con.scan_match::<_, String>(format!("{prefix}*")).await?;
            while let Some(key) = futures_util::StreamExt::next(&mut iter).await {
                keys.push(key?);
            }
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let exps: Vec<Option<i64>> = con.mget(&keys).await?;
        Ok(keys
            .into_iter()
            .zip(exps)
            .filter_map(|(key, exp)| Some((key.strip_prefix(&prefix)?.to_owned(), exp?)))
            .collect())
    }

    async fn jwt_revoke_user(&self, user: Uuid, before: i64) -> StoreResult<()> {
        self.jwt_revoke_user
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

    async fn task_get(&self, id: Uuid) -> StoreResult<Option<Task>> {
        let body: Option<String> = self.con().get(self.k(&["task", &id.to_string()])).await?;
        body.map(|b| task_from_json(&b)).transpose()
    }

    async fn task_latest(&self, (user, pool, kind): TaskKey) -> StoreResult<Option<Task>> {
        let id: Option<String> = self
            .con()
            .get(self.k(&[
                "latest",
                &user.to_string(),
                &pool.to_string(),
                kind.as_str(),
            ]))
            .await?;
        match id {
            Some(id) => Ok(self.tasks_by_ids(vec![id]).await?.pop()),
            None => Ok(None),
        }
    }

    async fn task_create(&self, expected: Option<Uuid>, task: &Task) -> StoreResult<bool> {
        let (user, pool) = (task.user_id.to_string(), task.pool_id.to_string());
        let id = task.id.to_string();
        let n: i64 = self
            .task_create
            .key(self.k(&["latest", &user, &pool, task.kind.as_str()]))
            .key(self.k(&["task", &id]))
            .key(self.k(&["user_tasks", &user]))
            .key(self.k(&["active_tasks"]))
            .key(self.k(&["done_tasks"]))
            .arg(expected.map(|e| e.to_string()).unwrap_or_default())
            .arg(&id)
            .arg(task_to_json(task))
            .arg(task.created.timestamp_millis())
            .arg(if task.status.is_active() {
                "active"
            } else {
                "done"
            })
            .arg(user_channel(&self.prefix, task.user_id))
            .arg(self.announcement(task.user_id, None))
            .invoke_async(&mut self.con())
            .await?;
        Ok(n == 1)
    }

    async fn task_update(&self, task: &Task) -> StoreResult<()> {
        let id = task.id.to_string();
        self.task_update
            .key(self.k(&["task", &id]))
            .key(self.k(&["active_tasks"]))
            .key(self.k(&["done_tasks"]))
            .arg(&id)
            .arg(task_to_json(task))
            .arg(if task.status.is_active() {
                "active"
            } else {
                "done"
            })
            .arg(task.created.timestamp_millis())
            .arg(user_channel(&self.prefix, task.user_id))
            .arg(self.announcement(task.user_id, Some(task.id)))
            .invoke_async::<i64>(&mut self.con())
            .await?;
        Ok(())
    }

    async fn tasks_of_user(&self, user: Uuid, limit: usize) -> StoreResult<Vec<Task>> {
        let ids: Vec<String> = self
            .con()
            .zrevrange(
                self.k(&["user_tasks", &user.to_string()]),
                0,
                limit as isize - 1,
            )
            .await?;
        self.tasks_by_ids(ids).await
    }

    async fn tasks_active(&self) -> StoreResult<Vec<Task>> {
        let ids: Vec<String> = self.con().smembers(self.k(&["active_tasks"])).await?;
        self.tasks_by_ids(ids).await
    }

    async fn tasks_sweep(&self, cutoff_ms: u64) -> StoreResult<usize> {
        self.index_done_tasks().await?;
        let index = self.k(&["done_tasks"]);
        let mut con = self.con();
        // Created strictly before the cutoff.
        let ids: Vec<String> = con
            .zrangebyscore(&index, "-inf", format!("({cutoff_ms}"))
            .await?;
        let mut deleted = 0;
        for chunk in ids.chunks(TOUCH_CHUNK) {
            let mut pipe = ::redis::pipe();
            // EVALSHA in a pipeline needs the script loaded first.
            pipe.load_script(&self.task_sweep).ignore();
            for id in chunk {
                pipe.invoke_script(
                    self.task_sweep
                        .key(self.k(&["task", id]))
                        .key(&index)
                        .arg(id)
                        .arg(&self.prefix),
                );
            }
            let done: Vec<i64> = pipe.query_async(&mut con).await?;
            deleted += done.iter().filter(|n| **n == 1).count();
        }
        Ok(deleted)
    }

    async fn assignment_get(&self, user: Uuid, pool: Uuid) -> StoreResult<Option<Assignment>> {
        let body: Option<String> = self
            .con()
            .get(self.k(&["assignment", &user.to_string(), &pool.to_string()]))
            .await?;
        Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
    }

    async fn assignment_create(&self, a: &Assignment) -> StoreResult<bool> {
        let (user, pool) = (a.user_id.to_string(), a.pool_id.to_string());
        // One script: an assignment is never stored without its index entry, or the lease
        // sweep (which lists the index) would never give its machine back.
        let created: i64 = self
            .assignment_create
            .key(self.k(&["assignment", &user, &pool]))
            .key(self.k(&["assignments"]))
            .arg(serde_json::to_string(a)?)
            .arg(format!("{user}:{pool}"))
            .arg(user_channel(&self.prefix, a.user_id))
            .arg(self.announcement(a.user_id, None))
            .invoke_async(&mut self.con())
            .await?;
        Ok(created == 1)
    }

    async fn assignment_remove(&self, user: Uuid, pool: Uuid) -> StoreResult<Option<Assignment>> {
        let (u, p) = (user.to_string(), pool.to_string());
        let body: Option<String> = self
            .assignment_remove
            .key(self.k(&["assignment", &u, &p]))
            .key(self.k(&["assignments"]))
            .arg(format!("{u}:{p}"))
            .arg(user_channel(&self.prefix, user))
            .arg(self.announcement(user, None))
            .invoke_async(&mut self.con())
            .await?;
        Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
    }

    async fn assignments(&self) -> StoreResult<Vec<Assignment>> {
        let mut con = self.con();
        let members: Vec<String> = con.smembers(self.k(&["assignments"])).await?;
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = members
            .iter()
            .filter_map(|m| m.split_once(':'))
            .map(|(u, p)| self.k(&["assignment", u, p]))
            .collect();
        let bodies: Vec<Option<String>> = con.mget(keys).await?;
        Ok(bodies
            .into_iter()
            .flatten()
            .map(|b| serde_json::from_str(&b))
            .collect::<Result<_, _>>()?)
    }

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

    async fn lease_acquire(&self, task: Uuid, owner: &str, ttl: Duration) -> StoreResult<bool> {
        let n: i64 = self
            .lease_acquire
            .key(self.k(&["lease", &task.to_string()]))
            .arg(owner)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut self.con())
            .await?;
        Ok(n == 1)
    }

    async fn lease_release(&self, task: Uuid, owner: &str) -> StoreResult<()> {
        self.lease_release
            .key(self.k(&["lease", &task.to_string()]))
            .arg(owner)
            .invoke_async::<i64>(&mut self.con())
            .await?;
        Ok(())
    }

    async fn failures_add(&self, key: &str, window: Duration) -> StoreResult<u32> {
        let n: u32 = self
            .failures_add
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
        self.failures_undo
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
        let (taken, slot): (u8, u64) = self
            .backoff_slot
            .key(self.k(&["backoff", key]))
            .arg(now_ms)
            .arg(spacing.as_millis() as u64)
            .arg(max_wait.as_millis() as u64)
            .arg(window.as_millis().max(1) as u64)
            .invoke_async(&mut self.con())
            .await?;
        Ok(if taken == 1 { Ok(slot) } else { Err(slot) })
    }

    async fn counts(&self) -> StoreResult<StoreCounts> {
        let sets = self.keys_matching(&["user_sessions", "*"]).await?;
        let mut session_index = 0;
        let mut con = self.con();
        for set in &sets {
            session_index += con.scard::<_, usize>(set).await?;
        }
        Ok(StoreCounts {
            sessions: self.keys_matching(&["session", "*"]).await?.len(),
            session_index,
            tasks: self.keys_matching(&["task", "*"]).await?.len(),
            failure_counters: self.keys_matching(&["failures", "*"]).await?.len()
                + self.keys_matching(&["backoff", "*"]).await?.len(),
        })
    }

    fn announced_writes_origin(&self) -> Option<u64> {
        Some(self.origin)
    }

    fn publish(&self, event: BusEvent) {
        let lane = match event {
            BusEvent::SessionRevoked { .. }
            | BusEvent::JwtRevoked { .. }
            | BusEvent::JwtUserRevoked { .. } => &self.revocations,
            _ => &self.outbox,
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = lane.try_send(event) {
            let shed = self
                .router
                .shed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            // 1, 2, 4, 8…: the log says it happens without flooding while it does.
            if shed.is_power_of_two() {
                tracing::warn!(
                    shed,
                    "Redis is not keeping up with the events to publish: events shed (clients can ask for a task's state)"
                );
            }
        }
    }

    fn router(&self) -> Option<Arc<routing::Router>> {
        Some(self.router.clone())
    }
}
