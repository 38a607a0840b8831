//! Key names.
//!
//! **Key layout.** On one Redis the keys are as they always were. On a cluster every
//! multi-key operation must keep its keys in one hash slot, so the keys that scripts touch
//! together carry a *bucket* hash tag, `{bN}` with N in 0..[`BUCKETS`]: a user's bucket (a hash
//! of their id) for their tasks, latest tasks, assignments, sessions and session set, plus the
//! per-bucket indexes the sweeps read (active and ended tasks, assignments); a token digest's
//! bucket (its first bytes) for an MFA challenge and its count. A user's sessions sit in their
//! user's bucket because a session token is drawn until its digest falls in that bucket
//! ([`Sessions::token_fits`]: ~1 000 draws, 0.8 ms per sign-in), so a token
//! still names its session's slot. Tags by bucket, not by user, so that the sweeps visit a
//! fixed 1 024 index keys instead of a registry of users, while 1 024 tags still spread evenly
//! over the cluster's masters. Keys used alone (leases, counters, TOTP steps, JWT revocations,
//! directory records, inventories, warm sets) carry no tag. Users' bus channels are sharded channels
//! (`SSUBSCRIBE`/`SPUBLISH`) in their user's bucket, so a script publishes on the channel of the
//! slot it writes in; the global channel stays a plain one.

use super::*;

/// Buckets of the cluster layout (see the module docs).
pub const BUCKETS: u16 = 1024;

pub(super) fn user_bucket(user: Uuid) -> u16 {
    let digest = sha2::Sha256::digest(user.as_bytes());
    u16::from_be_bytes([digest[0], digest[1]]) % BUCKETS
}

pub(super) fn hash_bucket(hash: &TokenHash) -> u16 {
    u16::from_be_bytes([hash[0], hash[1]]) % BUCKETS
}

/// The cluster layout's rule for a session digest (see [`Sessions::token_fits`]): it falls in its
/// user's bucket.
pub fn in_users_bucket(user: Uuid, hash: &TokenHash) -> bool {
    user_bucket(user) == hash_bucket(hash)
}

/// Key names, in the layout of the deployment (see the module docs): plain on one Redis,
/// bucket-tagged on a cluster.
#[derive(Clone)]
pub(super) struct Keys {
    /// Key namespace (`state_prefix`): instances of one deployment share it.
    pub(super) prefix: String,
    pub(super) cluster: bool,
}

impl Keys {
    pub(super) fn k(&self, parts: &[&str]) -> String {
        key(&self.prefix, parts)
    }

    /// `prefix:kind[:{bN}]:rest…` — the tag on a cluster only.
    pub(super) fn tagged(&self, kind: &str, bucket: u16, rest: &[&str]) -> String {
        let mut key = self.k(&[kind]);
        if self.cluster {
            key.push_str(&format!(":{{b{bucket}}}"));
        }
        for part in rest {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    /// The buckets the sweeps visit: one (untagged) on one Redis.
    pub(super) fn buckets(&self) -> std::ops::Range<u16> {
        if self.cluster { 0..BUCKETS } else { 0..1 }
    }

    pub(super) fn session(&self, hash: &TokenHash) -> String {
        self.tagged("session", hash_bucket(hash), &[&hex::encode(hash)])
    }

    /// What a bucket's session keys begin with (scripts append the hash).
    pub(super) fn session_prefix(&self, bucket: u16) -> String {
        self.tagged("session", bucket, &[""])
    }

    pub(super) fn user_sessions(&self, user: Uuid) -> String {
        self.tagged("user_sessions", user_bucket(user), &[&user.to_string()])
    }

    pub(super) fn user_sessions_prefix(&self, bucket: u16) -> String {
        self.tagged("user_sessions", bucket, &[""])
    }

    pub(super) fn mfa(&self, hash: &TokenHash) -> String {
        self.tagged("mfa", hash_bucket(hash), &[&hex::encode(hash)])
    }

    /// The digest of a user's one pending challenge of a kind (`password_ok`), in the user's
    /// bucket.
    pub(super) fn mfa_latest(&self, user: Uuid, password_ok: bool) -> String {
        let kind = if password_ok { "ok" } else { "guess" };
        self.tagged("mfa_latest", user_bucket(user), &[&user.to_string(), kind])
    }

    /// A challenge's wrong-code count (a counter beside the record, so `mfa_fail` is one INCR).
    pub(super) fn mfa_attempts(&self, hash: &TokenHash) -> String {
        self.tagged("mfa_attempts", hash_bucket(hash), &[&hex::encode(hash)])
    }

    pub(super) fn task(&self, bucket: u16, id: &str) -> String {
        self.tagged("task", bucket, &[id])
    }

    pub(super) fn latest(&self, (user, pool, kind): TaskKey) -> String {
        self.tagged(
            "latest",
            user_bucket(user),
            &[&user.to_string(), &pool.to_string(), kind.as_str()],
        )
    }

    pub(super) fn latest_prefix(&self, bucket: u16) -> String {
        self.tagged("latest", bucket, &[""])
    }

    pub(super) fn user_tasks(&self, user: Uuid) -> String {
        self.tagged("user_tasks", user_bucket(user), &[&user.to_string()])
    }

    pub(super) fn user_tasks_prefix(&self, bucket: u16) -> String {
        self.tagged("user_tasks", bucket, &[""])
    }

    pub(super) fn active_tasks(&self, bucket: u16) -> String {
        self.tagged("active_tasks", bucket, &[])
    }

    pub(super) fn done_tasks(&self, bucket: u16) -> String {
        self.tagged("done_tasks", bucket, &[])
    }

    pub(super) fn assignment(&self, bucket: u16, member: &str) -> String {
        self.tagged("assignment", bucket, &[member])
    }

    pub(super) fn assignments(&self, bucket: u16) -> String {
        self.tagged("assignments", bucket, &[])
    }

    /// A pool's warm set: a list of machines (JSON), oldest first. One key, so every script
    /// on it stays in one slot.
    pub(super) fn warm(&self, pool: Uuid) -> String {
        self.k(&["warm", &pool.to_string()])
    }

    /// A user's channel: their tasks, releases, session revocations and the cache's
    /// announcements, heard by the instances that hold a socket of theirs. On a cluster a
    /// sharded channel in the user's bucket (a script publishes on it from that slot).
    pub(super) fn channel(&self, user: Uuid) -> String {
        if self.cluster {
            self.tagged("bus", user_bucket(user), &[&user.to_string()])
        } else {
            key(&self.prefix, &["bus", &format!("{{{user}}}")])
        }
    }

    /// The command that publishes on a user's channel.
    pub(super) fn publish_command(&self) -> &'static str {
        if self.cluster { "SPUBLISH" } else { "PUBLISH" }
    }
}

/// The global channel: what every instance hears (JWT revocations).
pub(super) fn global_channel(prefix: &str) -> String {
    key(prefix, &["bus"])
}

/// `text` as a `SCAN MATCH` pattern that matches it alone (`*`, `?`, `[`, `]`, `\` escaped).
pub(super) fn glob_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

pub(super) fn key(prefix: &str, parts: &[&str]) -> String {
    let mut key = String::from(prefix);
    for p in parts {
        key.push(':');
        key.push_str(p);
    }
    key
}

/// The user whose (cluster) channel this is: `<prefix>:bus:{bN}:<user id>`.
pub(super) fn user_of_channel(prefix: &str, channel: &str) -> Option<Uuid> {
    let rest = channel.strip_prefix(prefix)?.strip_prefix(":bus:")?;
    rest.rsplit(':').next()?.parse().ok()
}
