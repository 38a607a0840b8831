//! The audit log: events in one ordered map by id.

use super::*;
use crate::domain::{AuditEvent, AuditQuery};

#[async_trait]
impl Audit for MemoryStore {
    async fn audit_append(&self, event: &AuditEvent) -> StoreResult<()> {
        self.lock().audit.insert(event.id.clone(), event.clone());
        Ok(())
    }

    async fn audit_query(&self, query: &AuditQuery) -> StoreResult<Vec<AuditEvent>> {
        let inner = self.lock();
        let (floor, ceiling) = query.id_bounds();
        if floor >= ceiling {
            return Ok(Vec::new());
        }
        let range = inner.audit.range(floor..ceiling).map(|(_, e)| e);
        let pick = |e: &&AuditEvent| e.matches(query);
        let limit = query.limit.max(1);
        Ok(if query.newest_first {
            range.rev().filter(pick).take(limit).cloned().collect()
        } else {
            range.filter(pick).take(limit).cloned().collect()
        })
    }

    async fn audit_sweep(&self, cutoff_ms: u64) -> StoreResult<usize> {
        let mut inner = self.lock();
        let keep = inner
            .audit
            .split_off(&crate::domain::audit::id_floor(cutoff_ms));
        let gone = std::mem::replace(&mut inner.audit, keep);
        Ok(gone.len())
    }
}
