//! Machine assignments: a JSON value per (user, pool) and a per-bucket index the lease sweep
//! lists.

use super::*;
use std::sync::LazyLock;

/// KEYS: the assignment, the index. ARGV: body, index member, the bus channel, the
/// announcement, the publish command.
static ASSIGNMENT_CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 0 end
                  redis.call('SADD', KEYS[2], ARGV[2])
                  redis.call(ARGV[5], ARGV[3], ARGV[4])
                  return 1",
    )
});

/// KEYS: the assignment, the index. ARGV: index member, the bus channel, the
/// announcement, the publish command. A script, not MULTI: a transaction's EXEC reply on the connection
/// that is also subscribed to the bus could be taken for the announcement's push.
static ASSIGNMENT_REMOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local body = redis.call('GET', KEYS[1])
                  redis.call('DEL', KEYS[1])
                  redis.call('SREM', KEYS[2], ARGV[1])
                  redis.call(ARGV[4], ARGV[2], ARGV[3])
                  return body",
    )
});

#[async_trait]
impl Assignments for RedisStore {
    async fn assignment_get(&self, user: Uuid, pool: Uuid) -> StoreResult<Option<Assignment>> {
        let body: Option<String> = self
            .con()
            .get(
                self.keys
                    .assignment(user_bucket(user), &format!("{user}:{pool}")),
            )
            .await?;
        Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
    }

    async fn assignment_create(&self, a: &Assignment) -> StoreResult<bool> {
        let member = format!("{}:{}", a.user_id, a.pool_id);
        let bucket = user_bucket(a.user_id);
        // One script: an assignment is never stored without its index entry, or the lease
        // sweep (which lists the index) would never give its machine back.
        let created: i64 = ASSIGNMENT_CREATE
            .key(self.keys.assignment(bucket, &member))
            .key(self.keys.assignments(bucket))
            .arg(serde_json::to_string(a)?)
            .arg(&member)
            .arg(self.keys.channel(a.user_id))
            .arg(self.announcement(a.user_id, None))
            .arg(self.keys.publish_command())
            .invoke_async(&mut self.con())
            .await?;
        Ok(created == 1)
    }

    async fn assignment_remove(&self, user: Uuid, pool: Uuid) -> StoreResult<Option<Assignment>> {
        let member = format!("{user}:{pool}");
        let bucket = user_bucket(user);
        let body: Option<String> = ASSIGNMENT_REMOVE
            .key(self.keys.assignment(bucket, &member))
            .key(self.keys.assignments(bucket))
            .arg(&member)
            .arg(self.keys.channel(user))
            .arg(self.announcement(user, None))
            .arg(self.keys.publish_command())
            .invoke_async(&mut self.con())
            .await?;
        Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
    }

    async fn assignments(&self) -> StoreResult<Vec<Assignment>> {
        self.each_bucket(|bucket| async move {
            let mut con = self.con();
            let members: Vec<String> = con.smembers(self.keys.assignments(bucket)).await?;
            if members.is_empty() {
                return Ok(Vec::new());
            }
            let keys: Vec<String> = members
                .iter()
                .map(|m| self.keys.assignment(bucket, m))
                .collect();
            let bodies: Vec<Option<String>> = con.mget(keys).await?;
            Ok(bodies
                .into_iter()
                .flatten()
                .map(|b| serde_json::from_str(&b))
                .collect::<Result<_, _>>()?)
        })
        .await
    }
}
