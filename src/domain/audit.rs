//! One audit event — a sign-in, a refusal, a connection, a release, a revocation, an admin's
//! action — as it is kept in the store, written to the `poolgate::audit` log target and
//! exported as one JSON line (protocol/audit.md documents the fields), and what a query of
//! them asks for.
//!
//! An event's `id` orders events: the event's time in milliseconds, thirteen digits, then a
//! tail of sixteen hex digits (`1733580000000-3f2a…`) — the recording instance's random bits
//! and its count — so comparing ids as strings compares times first, and one instance's
//! events of one millisecond keep their order.
//! Every backend keeps events by id; a query's cursor is the id of the last event it returned.

use serde::{Deserialize, Serialize};

/// Characters of an id's time part: milliseconds since the epoch, zero-padded (enough until
/// the year 2286).
pub const ID_TIME_DIGITS: usize = 13;

/// Characters of a whole id: the time, a dash, sixteen hex digits.
pub const ID_LEN: usize = ID_TIME_DIGITS + 1 + 16;

/// One audit event. Never holds a secret: no password, one-time code, token or key material
/// (the recorders pass names and outcomes only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Orders events (see the module docs); unique.
    pub id: String,
    /// When, RFC 3339 in UTC with milliseconds (`2026-12-07T15:04:05.123Z`).
    pub ts: String,
    /// What happened: `sign_in`, `sign_in_refused`, `sign_out`, `connect`, `release`,
    /// `revoke` or `admin`.
    pub event: String,
    /// Whom it is about (the person signing in, the user whose machine or tokens it was); for
    /// a refused sign-in, the name that was typed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Who did it, when that is someone else (the admin of an admin action or a revocation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The client's address (behind a trusted proxy, the client's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The instance that recorded it.
    pub instance: String,
    /// `ws` (a thin client's socket), `portal` (a browser's socket), `rest`, or `server` (the
    /// server itself: a lease that ran out).
    pub transport: String,
    /// The RPC method (`rpc/auth`) or REST route (`POST /api/v2/users/login/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// `ok`, `refused` (the request was answered with an error) or `error` (the server
    /// failed).
    pub outcome: String,
    /// The error code of a refusal (the envelope's or REST's status: 401, 403, 429…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// The pool, where the event has one (its name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// A few words more: how a sign-in was made (`password`, `directory`, `otp`, `sso`,
    /// `security_key`, `token`), a refusal's message, the admin method's target, a release's
    /// reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl AuditEvent {
    /// The event's time in milliseconds, from its id (0 for an id that is not one).
    pub fn ts_ms(&self) -> u64 {
        self.id
            .get(..ID_TIME_DIGITS)
            .and_then(|t| t.parse().ok())
            .unwrap_or(0)
    }

    /// The JSON line: what the store keeps, the log target writes and the export prints.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("an audit event always serializes")
    }

    pub fn from_line(line: &str) -> serde_json::Result<AuditEvent> {
        serde_json::from_str(line)
    }

    /// Whether the event is one the query asks for (its time range, user and event; not its
    /// cursor or order).
    pub fn matches(&self, q: &AuditQuery) -> bool {
        let ts = self.ts_ms();
        ts >= q.since_ms
            && ts < q.until_ms
            && q.user
                .as_ref()
                .is_none_or(|u| self.user.as_ref() == Some(u))
            && q.event.as_ref().is_none_or(|e| &self.event == e)
    }
}

/// The id of an event at `ts_ms` with a random tail.
pub fn new_id(ts_ms: u64, tail: u64) -> String {
    format!("{ts_ms:0width$}-{tail:016x}", width = ID_TIME_DIGITS)
}

/// The smallest id of an event at `ts_ms` (every id of that millisecond or later is at least
/// this).
pub fn id_floor(ts_ms: u64) -> String {
    format!("{ts_ms:0width$}", width = ID_TIME_DIGITS)
}

/// Which events a query asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    /// From this time (ms, inclusive)…
    pub since_ms: u64,
    /// …to this one (ms, exclusive).
    pub until_ms: u64,
    /// Only events about this user (exact name).
    pub user: Option<String>,
    /// Only events of this kind.
    pub event: Option<String>,
    /// At most this many (at least 1).
    pub limit: usize,
    /// Only events after this id in the query's order (the cursor: the last id of the
    /// previous page).
    pub after: Option<String>,
    /// Newest first (the default of the RPC and the CLI), else oldest first.
    pub newest_first: bool,
}

impl AuditQuery {
    /// The id range the query covers, as (inclusive floor, exclusive ceiling), narrowed by
    /// the cursor: every backend ranges over ids with these two bounds. With a cursor, the
    /// floor (oldest first) is just past it, or the ceiling (newest first) is the cursor.
    pub fn id_bounds(&self) -> (String, String) {
        let mut floor = id_floor(self.since_ms);
        let mut ceiling = id_floor(self.until_ms);
        if let Some(after) = &self.after {
            if self.newest_first {
                if *after < ceiling {
                    ceiling = after.clone();
                }
            } else {
                // Every id greater than the cursor is at least the cursor followed by a
                // character past any an id holds.
                let past = format!("{after}~");
                if past > floor {
                    floor = past;
                }
            }
        }
        (floor, ceiling)
    }

    /// Whether `id` falls in [`AuditQuery::id_bounds`].
    pub fn in_bounds(&self, id: &str, bounds: &(String, String)) -> bool {
        id >= bounds.0.as_str() && id < bounds.1.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query() -> AuditQuery {
        AuditQuery {
            since_ms: 1_000,
            until_ms: 5_000,
            user: None,
            event: None,
            limit: 10,
            after: None,
            newest_first: true,
        }
    }

    #[test]
    fn ids_order_by_time_and_the_bounds_follow_the_cursor() {
        let a = new_id(1_000, u64::MAX);
        let b = new_id(1_001, 0);
        assert!(a < b);
        assert_eq!(a.len(), ID_LEN);
        let mut q = query();
        let bounds = q.id_bounds();
        assert!(q.in_bounds(&a, &bounds) && q.in_bounds(&b, &bounds));
        assert!(!q.in_bounds(&new_id(5_000, 0), &bounds));
        assert!(!q.in_bounds(&new_id(999, u64::MAX), &bounds));
        q.after = Some(b.clone());
        let bounds = q.id_bounds();
        assert!(q.in_bounds(&a, &bounds) && !q.in_bounds(&b, &bounds));
        q.newest_first = false;
        q.after = Some(a.clone());
        let bounds = q.id_bounds();
        assert!(!q.in_bounds(&a, &bounds) && q.in_bounds(&b, &bounds));
    }
}
