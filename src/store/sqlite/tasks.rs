//! Tasks (JSON bodies, indexed by user, status and creation; the latest per key) and task
//! leases (none to keep: one process owns every task).

use super::*;

impl SqliteStore {
    fn tasks_where(&self, sql: &str, args: &[&dyn rusqlite::ToSql]) -> StoreResult<Vec<Task>> {
        let bodies: Vec<String> = self.with(|c| {
            let mut stmt = c.prepare_cached(sql)?;
            let rows = stmt.query_map(args, |r| r.get::<_, String>(0))?;
            rows.collect()
        })?;
        bodies.iter().map(|b| task_from_json(b)).collect()
    }
}

/// Fixed-width RFC 3339, so text order is time order.
fn created_key(task: &Task) -> String {
    task.created
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

fn status_active(task: &Task) -> &'static str {
    if task.status.is_active() {
        "active"
    } else {
        "done"
    }
}

#[async_trait]
impl Tasks for SqliteStore {
    async fn task_get(&self, user: Uuid, id: Uuid) -> StoreResult<Option<Task>> {
        let body: Option<String> = self.with(|c| {
            c.prepare_cached("SELECT body FROM tasks WHERE id = ?1")?
                .query_row([id.to_string()], |r| r.get(0))
                .optional()
        })?;
        Ok(body
            .map(|b| task_from_json(&b))
            .transpose()?
            .filter(|t| t.user_id == user))
    }

    async fn task_latest(&self, (user, pool, kind): TaskKey) -> StoreResult<Option<Task>> {
        Ok(self
            .tasks_where(
                "SELECT t.body FROM latest l JOIN tasks t ON t.id = l.task_id
                 WHERE l.user_id = ?1 AND l.pool_id = ?2 AND l.kind = ?3",
                &[&user.to_string(), &pool.to_string(), &kind.as_str()],
            )?
            .pop())
    }

    async fn task_create(&self, expected: Option<Uuid>, task: &Task) -> StoreResult<bool> {
        let body = task_to_json(task);
        self.with(|c| {
            let tx = c.transaction()?;
            let (user, pool, kind) = (
                task.user_id.to_string(),
                task.pool_id.to_string(),
                task.kind.as_str(),
            );
            let current: Option<String> = tx
                .query_row(
                    "SELECT task_id FROM latest WHERE user_id = ?1 AND pool_id = ?2 AND kind = ?3",
                    params![user, pool, kind],
                    |r| r.get(0),
                )
                .optional()?;
            if current != expected.map(|e| e.to_string()) {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO tasks VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    task.id.to_string(),
                    user,
                    status_active(task),
                    created_key(task),
                    body
                ],
            )?;
            tx.execute(
                "INSERT OR REPLACE INTO latest VALUES (?1, ?2, ?3, ?4)",
                params![user, pool, kind, task.id.to_string()],
            )?;
            tx.commit()?;
            Ok(true)
        })
    }

    async fn task_update(&self, task: &Task) -> StoreResult<bool> {
        let body = task_to_json(task);
        self.with(|c| {
            let written = c
                .prepare_cached(
                    "UPDATE tasks SET status = ?2, body = ?3 WHERE id = ?1
                     AND (status = 'active' OR json_extract(body, '$.status') = ?4)",
                )?
                .execute(params![
                    task.id.to_string(),
                    status_active(task),
                    body,
                    task.status.as_str()
                ])?;
            if written == 1 {
                return Ok(true);
            }
            // Not written: refused, or not stored at all (which is not a refusal).
            let stored: Option<i64> = c
                .prepare_cached("SELECT 1 FROM tasks WHERE id = ?1")?
                .query_row(params![task.id.to_string()], |r| r.get(0))
                .optional()?;
            Ok(stored.is_none())
        })
    }

    async fn tasks_of_user(&self, user: Uuid, limit: usize) -> StoreResult<Vec<Task>> {
        self.tasks_where(
            "SELECT body FROM tasks WHERE user_id = ?1 ORDER BY created DESC LIMIT ?2",
            &[&user.to_string(), &(limit as i64)],
        )
    }

    async fn tasks_active(&self) -> StoreResult<Vec<Task>> {
        self.tasks_where("SELECT body FROM tasks WHERE status = 'active'", &[])
    }

    async fn tasks_sweep(&self, cutoff_ms: u64) -> StoreResult<usize> {
        let cutoff = chrono::DateTime::from_timestamp_millis(cutoff_ms as i64)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        self.with(|c| {
            c.prepare_cached(
                "DELETE FROM tasks WHERE status = 'done' AND created < ?1
                 AND id NOT IN (SELECT task_id FROM latest)",
            )?
            .execute(params![cutoff])
        })
    }

    /// One process owns the file, so it owns every task.
    async fn lease_acquire(&self, _task: Uuid, _owner: &str, _ttl: Duration) -> StoreResult<bool> {
        Ok(true)
    }

    async fn lease_release(&self, _task: Uuid, _owner: &str) -> StoreResult<()> {
        Ok(())
    }
}
