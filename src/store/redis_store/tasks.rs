//! Tasks (JSON values indexed per user, per bucket while active, by creation once ended) and
//! task leases.

use super::*;
use std::sync::LazyLock;

/// KEYS: the key's latest, the task, the user's tasks, the active set, the ended
/// index. ARGV: the expected latest ('' for none), id, body, created (ms), 'active'
/// or 'done', the bus channel, the announcement, the publish command. The
/// compare-and-set of a key's latest task.
static TASK_CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local cur = redis.call('GET', KEYS[1]) or ''
                  if cur ~= ARGV[1] then return 0 end
                  redis.call('SET', KEYS[2], ARGV[3])
                  redis.call('SET', KEYS[1], ARGV[2])
                  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2])
                  if ARGV[5] == 'active' then redis.call('SADD', KEYS[4], ARGV[2])
                  else redis.call('SREM', KEYS[4], ARGV[2])
                    redis.call('ZADD', KEYS[5], ARGV[4], ARGV[2]) end
                  redis.call(ARGV[8], ARGV[6], ARGV[7])
                  return 1",
    )
});

/// KEYS: the task, the active set, the ended index. ARGV: id, body, 'active' or
/// 'done', created (ms), the bus channel, the announcement, the publish command,
/// the status. Only a stored task is overwritten (0 when there is none), and not
/// one that has ended with another status (2: an end is final).
static TASK_UPDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local cur = redis.call('GET', KEYS[1])
                  if not cur then return 0 end
                  local was = cjson.decode(cur)['status']
                  if was ~= 'PENDING' and was ~= 'RUNNING' and was ~= ARGV[8] then return 2 end
                  redis.call('SET', KEYS[1], ARGV[2])
                  if ARGV[3] == 'active' then redis.call('SADD', KEYS[2], ARGV[1])
                  else redis.call('SREM', KEYS[2], ARGV[1])
                    redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1]) end
                  redis.call(ARGV[7], ARGV[5], ARGV[6])
                  return 1",
    )
});

/// KEYS: the task's lease. ARGV: the owner, the TTL (ms). 1 when the lease was free or
/// already the owner's (and is now held for the TTL), 0 while another owner holds it.
static LEASE_ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local cur = redis.call('GET', KEYS[1])
                  if (not cur) or cur == ARGV[1] then
                    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
                  return 0",
    )
});

/// KEYS: the task's lease. ARGV: the owner. Deletes the lease only if the owner holds it.
static LEASE_RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
                  return 0",
    )
});

/// KEYS: the task, the index of ended tasks. ARGV: the id, what the bucket's latest
/// and user task index keys begin with. Deletes an ended task unless it is the
/// latest of its key (then it stays indexed and is looked at again by the next
/// sweep, once a newer task replaced it).
static TASK_SWEEP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local body = redis.call('GET', KEYS[1])
                  if not body then redis.call('ZREM', KEYS[2], ARGV[1]) return 0 end
                  local t = cjson.decode(body)
                  if t.status == 'PENDING' or t.status == 'RUNNING' then
                    redis.call('ZREM', KEYS[2], ARGV[1]) return 0 end
                  local latest = ARGV[2] .. t.user_id .. ':' .. t.pool_id .. ':' .. t.kind
                  if redis.call('GET', latest) == ARGV[1] then return 0 end
                  redis.call('DEL', KEYS[1])
                  redis.call('ZREM', ARGV[3] .. t.user_id, ARGV[1])
                  redis.call('ZREM', KEYS[2], ARGV[1])
                  return 1",
    )
});

impl RedisStore {
    /// Once per store on one Redis: puts the ended tasks written before the `done_tasks`
    /// index existed into it, so the retention sweep finds them too. (A cluster's layout is
    /// newer than the index.)
    pub(super) async fn index_done_tasks(&self) -> StoreResult<()> {
        if self.keys.cluster {
            return Ok(());
        }
        let flag = self.k(&["done_tasks", "indexed"]);
        let mut con = self.con();
        if con.exists(&flag).await? {
            return Ok(());
        }
        let keys = self.keys_matching(&["task", "*"]).await?;
        for chunk in keys.chunks(TOUCH_CHUNK) {
            let mut pipe = redis::pipe();
            for task in self.tasks_at(chunk.to_vec()).await? {
                if task.status.is_done() {
                    pipe.zadd(
                        self.keys.done_tasks(0),
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

    /// The tasks stored at these keys (missing ones skipped).
    pub(super) async fn tasks_at(&self, keys: Vec<String>) -> StoreResult<Vec<Task>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let bodies: Vec<Option<String>> = self.con().mget(keys).await?;
        bodies
            .into_iter()
            .flatten()
            .map(|b| task_from_json(&b))
            .collect()
    }

    /// The tasks of a bucket with these ids.
    pub(super) async fn tasks_by_ids(&self, bucket: u16, ids: &[String]) -> StoreResult<Vec<Task>> {
        self.tasks_at(ids.iter().map(|id| self.keys.task(bucket, id)).collect())
            .await
    }
}

#[async_trait]
impl Tasks for RedisStore {
    async fn task_get(&self, user: Uuid, id: Uuid) -> StoreResult<Option<Task>> {
        let body: Option<String> = self
            .con()
            .get(self.keys.task(user_bucket(user), &id.to_string()))
            .await?;
        Ok(body
            .map(|b| task_from_json(&b))
            .transpose()?
            .filter(|t| t.user_id == user))
    }

    async fn task_latest(&self, key: TaskKey) -> StoreResult<Option<Task>> {
        let id: Option<String> = self.con().get(self.keys.latest(key)).await?;
        match id {
            Some(id) => Ok(self.tasks_by_ids(user_bucket(key.0), &[id]).await?.pop()),
            None => Ok(None),
        }
    }

    async fn task_create(&self, expected: Option<Uuid>, task: &Task) -> StoreResult<bool> {
        let id = task.id.to_string();
        let bucket = user_bucket(task.user_id);
        let n: i64 = TASK_CREATE
            .key(self.keys.latest((task.user_id, task.pool_id, task.kind)))
            .key(self.keys.task(bucket, &id))
            .key(self.keys.user_tasks(task.user_id))
            .key(self.keys.active_tasks(bucket))
            .key(self.keys.done_tasks(bucket))
            .arg(expected.map(|e| e.to_string()).unwrap_or_default())
            .arg(&id)
            .arg(task_to_json(task))
            .arg(task.created.timestamp_millis())
            .arg(if task.status.is_active() {
                "active"
            } else {
                "done"
            })
            .arg(self.keys.channel(task.user_id))
            .arg(self.announcement(task.user_id, None))
            .arg(self.keys.publish_command())
            .invoke_async(&mut self.con())
            .await?;
        Ok(n == 1)
    }

    async fn task_update(&self, task: &Task) -> StoreResult<bool> {
        let id = task.id.to_string();
        let bucket = user_bucket(task.user_id);
        let written = TASK_UPDATE
            .key(self.keys.task(bucket, &id))
            .key(self.keys.active_tasks(bucket))
            .key(self.keys.done_tasks(bucket))
            .arg(&id)
            .arg(task_to_json(task))
            .arg(if task.status.is_active() {
                "active"
            } else {
                "done"
            })
            .arg(task.created.timestamp_millis())
            .arg(self.keys.channel(task.user_id))
            .arg(self.announcement(task.user_id, Some(task.id)))
            .arg(self.keys.publish_command())
            .arg(task.status.as_str())
            .invoke_async::<i64>(&mut self.con())
            .await?;
        Ok(written != 2)
    }

    async fn tasks_of_user(&self, user: Uuid, limit: usize) -> StoreResult<Vec<Task>> {
        let ids: Vec<String> = self
            .con()
            .zrevrange(self.keys.user_tasks(user), 0, limit as isize - 1)
            .await?;
        self.tasks_by_ids(user_bucket(user), &ids).await
    }

    async fn tasks_active(&self) -> StoreResult<Vec<Task>> {
        self.each_bucket(|bucket| async move {
            let ids: Vec<String> = self.con().smembers(self.keys.active_tasks(bucket)).await?;
            self.tasks_by_ids(bucket, &ids).await
        })
        .await
    }

    async fn tasks_sweep(&self, cutoff_ms: u64) -> StoreResult<usize> {
        self.index_done_tasks().await?;
        let deleted = self
            .each_bucket(|bucket| async move {
                let index = self.keys.done_tasks(bucket);
                let mut con = self.con();
                // Created strictly before the cutoff.
                let ids: Vec<String> = con
                    .zrangebyscore(&index, "-inf", format!("({cutoff_ms}"))
                    .await?;
                let mut deleted = Vec::new();
                for chunk in ids.chunks(TOUCH_CHUNK) {
                    let mut pipe = redis::pipe();
                    // EVALSHA in a pipeline needs the script loaded first.
                    pipe.load_script(&TASK_SWEEP).ignore();
                    for id in chunk {
                        pipe.invoke_script(
                            TASK_SWEEP
                                .key(self.keys.task(bucket, id))
                                .key(&index)
                                .arg(id)
                                .arg(self.keys.latest_prefix(bucket))
                                .arg(self.keys.user_tasks_prefix(bucket)),
                        );
                    }
                    let done: Vec<i64> = pipe.query_async(&mut con).await?;
                    deleted.extend(done.into_iter().filter(|n| *n == 1));
                }
                Ok(deleted)
            })
            .await?;
        Ok(deleted.len())
    }

    async fn lease_acquire(&self, task: Uuid, owner: &str, ttl: Duration) -> StoreResult<bool> {
        let n: i64 = LEASE_ACQUIRE
            .key(self.k(&["lease", &task.to_string()]))
            .arg(owner)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut self.con())
            .await?;
        Ok(n == 1)
    }

    async fn lease_release(&self, task: Uuid, owner: &str) -> StoreResult<()> {
        LEASE_RELEASE
            .key(self.k(&["lease", &task.to_string()]))
            .arg(owner)
            .invoke_async::<i64>(&mut self.con())
            .await?;
        Ok(())
    }
}
