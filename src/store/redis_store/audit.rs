//! The audit log: one sorted set whose members all score 0, each `id<TAB>line`, so the set's
//! lexical order is the ids' (time) order and a range of ids is one `ZRANGEBYLEX`. One key,
//! used alone: on a cluster it sits in one slot (no tag needed), so every instance's events
//! are appended to, and read from, one master. Members never expire by themselves:
//! `audit_sweep` trims the set's start.

use super::*;
use crate::domain::{AuditEvent, AuditQuery};

/// Members read per round trip while a query filters by user or event.
const PAGE: usize = 500;

impl RedisStore {
    fn audit_key(&self) -> String {
        self.k(&["audit"])
    }
}

#[async_trait]
impl Audit for RedisStore {
    async fn audit_append(&self, event: &AuditEvent) -> StoreResult<()> {
        let member = format!("{}\t{}", event.id, event.to_line());
        self.con()
            .zadd::<_, _, _, ()>(self.audit_key(), member, 0)
            .await?;
        Ok(())
    }

    async fn audit_query(&self, query: &AuditQuery) -> StoreResult<Vec<AuditEvent>> {
        let (floor, ceiling) = query.id_bounds();
        let limit = query.limit.max(1);
        let mut found = Vec::new();
        if floor >= ceiling {
            return Ok(found);
        }
        let (mut low, mut high) = (format!("[{floor}"), format!("({ceiling}"));
        let page = if query.user.is_none() && query.event.is_none() {
            limit
        } else {
            PAGE.max(limit)
        };
        loop {
            let members: Vec<String> = if query.newest_first {
                self.con()
                    .zrevrangebylex_limit(self.audit_key(), &high, &low, 0, page as isize)
                    .await?
            } else {
                self.con()
                    .zrangebylex_limit(self.audit_key(), &low, &high, 0, page as isize)
                    .await?
            };
            for member in &members {
                let Some((_, line)) = member.split_once('\t') else {
                    continue;
                };
                let event = AuditEvent::from_line(line)?;
                if event.matches(query) {
                    found.push(event);
                    if found.len() == limit {
                        return Ok(found);
                    }
                }
            }
            match members.last() {
                Some(last) if members.len() == page => {
                    // The next page starts just past the last member read.
                    if query.newest_first {
                        high = format!("({last}");
                    } else {
                        low = format!("({last}");
                    }
                }
                _ => return Ok(found),
            }
        }
    }

    async fn audit_sweep(&self, cutoff_ms: u64) -> StoreResult<usize> {
        let floor = crate::domain::audit::id_floor(cutoff_ms);
        let n: usize = self
            .con()
            .zrembylex(self.audit_key(), "-", format!("({floor}"))
            .await?;
        Ok(n)
    }
}
