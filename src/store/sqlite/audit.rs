//! The audit log: one row per event, its JSON line beside the columns a query filters on; the
//! primary key is the id, so a range of ids is a range of the table's own order.

use super::*;
use crate::domain::{AuditEvent, AuditQuery};

#[async_trait]
impl Audit for SqliteStore {
    async fn audit_append(&self, event: &AuditEvent) -> StoreResult<()> {
        let line = event.to_line();
        self.with(|c| {
            c.prepare_cached("INSERT OR REPLACE INTO audit VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![event.id, event.user, event.event, line])
                .map(drop)
        })
    }

    async fn audit_query(&self, query: &AuditQuery) -> StoreResult<Vec<AuditEvent>> {
        let (floor, ceiling) = query.id_bounds();
        let order = if query.newest_first { "DESC" } else { "ASC" };
        let sql = format!(
            "SELECT line FROM audit WHERE id >= ?1 AND id < ?2 \
             AND (?3 IS NULL OR user = ?3) AND (?4 IS NULL OR event = ?4) \
             ORDER BY id {order} LIMIT ?5"
        );
        let limit = query.limit.max(1) as i64;
        let lines: Vec<String> = self.with(|c| {
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(
                params![floor, ceiling, query.user, query.event, limit],
                |r| r.get::<_, String>(0),
            )?;
            rows.collect()
        })?;
        lines
            .iter()
            .map(|l| Ok(AuditEvent::from_line(l)?))
            .collect()
    }

    async fn audit_sweep(&self, cutoff_ms: u64) -> StoreResult<usize> {
        let floor = crate::domain::audit::id_floor(cutoff_ms);
        self.with(|c| c.execute("DELETE FROM audit WHERE id < ?1", params![floor]))
    }
}
