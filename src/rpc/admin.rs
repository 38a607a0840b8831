//! Admin methods. The views — `admin_sessions`, `admin_tasks`, `admin_keys`, `admin_audit` —
//! answer an admin or an auditor; every method that changes something answers an admin only
//! (403 otherwise, an auditor told that auditors only look).
//!
//! The methods:
//! `admin_sessions` (who is signed in, from where, since when), `admin_revoke {"username"}`
//! (all of a user's tokens and JWTs), `admin_tasks` (every active task), and
//! `admin_release {"username","pool_id"}` (give a user's machine back and clear a failed step
//! 1: answered once the assignment is removed, while the provisioner's release runs in the
//! background under `release_deadline`), and `admin_reset {"username"?,"pool_id"}` (clear a
//! failed step 1 of one user, or of every user of the pool, so the next request starts a new
//! task at once). `pool_id` may also be the pool's name: operators know pools by name.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Ctx, parse_args, user};
use crate::auth::users::User;
use crate::domain::Task;
use crate::error::Error;

/// For the methods that change something: an admin.
pub(super) fn require_admin(ctx: &Ctx<'_>) -> Result<(), Error> {
    let user = user(ctx)?;
    if user.roles.iter().any(|r| r == "admin") {
        Ok(())
    } else if is_auditor(ctx, user) {
        Err(Error::AuditorReadOnly)
    } else {
        Err(Error::AdminRequired)
    }
}

/// For the views: an admin or an auditor.
pub(super) fn require_viewer(ctx: &Ctx<'_>) -> Result<(), Error> {
    let user = user(ctx)?;
    if user.roles.iter().any(|r| r == "admin") || is_auditor(ctx, user) {
        Ok(())
    } else {
        Err(Error::AdminRequired)
    }
}

/// An auditor: the role (a local user's `auditor = true`), or a group of `auditor_groups` —
/// a directory user's compared as DNs, as `admin_groups` are; a provider's exactly.
pub(super) fn is_auditor(ctx: &Ctx<'_>, user: &User) -> bool {
    user.is_auditor(&ctx.state.config.auditor_groups)
}

fn rfc3339(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn rfc3339_ms(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A user by name: one of the settings file or a directory user who has signed in;
/// `directory` says which when both have the name (otherwise that is refused, not guessed).
pub(super) async fn named_user(
    ctx: &Ctx<'_>,
    username: &str,
    directory: Option<bool>,
) -> Result<std::sync::Arc<User>, Error> {
    let local = ctx.state.auth.users.by_name(username).cloned();
    let remote = if directory == Some(false) {
        None
    } else {
        ctx.state.auth.directory_user_named(username).await?
    };
    match (local, remote, directory) {
        (_, Some(remote), Some(true)) => Ok(remote),
        (Some(local), _, Some(false)) => Ok(local),
        (Some(_), Some(_), None) => Err(Error::Unprocessable(format!(
            "Both a local user and a directory user are named {username:?}: add \"directory\": \
             true or false."
        ))),
        (Some(user), None, None) | (None, Some(user), None) => Ok(user),
        _ => Err(Error::NotFound(format!("No user {username:?}."))),
    }
}

/// Each of `ids`' username, for the admin listings (a directory user's from the store).
async fn usernames(
    ctx: &Ctx<'_>,
    ids: Vec<Uuid>,
) -> Result<std::collections::HashMap<Uuid, String>, Error> {
    let mut names = std::collections::HashMap::new();
    for id in ids {
        if let std::collections::hash_map::Entry::Vacant(e) = names.entry(id)
            && let Some(user) = ctx.state.auth.users.resolve(&id).await?
        {
            e.insert(user.username.clone());
        }
    }
    Ok(names)
}

pub async fn sessions(ctx: &mut Ctx<'_>) -> Result<Value, Error> {
    require_viewer(ctx)?;
    let sessions = ctx.state.auth.live_sessions().await?;
    let ids: Vec<Uuid> = sessions.iter().map(|s| s.user_id).collect();
    let names = usernames(ctx, ids).await?;
    let mut list: Vec<Value> = sessions
        .into_iter()
        .map(|s| {
            json!({
                "user_id": s.user_id,
                "username": names.get(&s.user_id),
                // Enough of the digest to tell sessions apart; never the token.
                "session": hex::encode(&s.hash[..6]),
                "peer": s.peer,
                "since": rfc3339(s.created_ms),
                "last_active": rfc3339(s.last_active_ms),
            })
        })
        .collect();
    list.sort_by(|a, b| a["since"].as_str().cmp(&b["since"].as_str()));
    Ok(Value::Array(list))
}

#[derive(Deserialize)]
pub struct Revoke {
    username: String,
    /// Which user, when a local and a directory user share the name.
    #[serde(default)]
    directory: Option<bool>,
}

impl Revoke {
    pub fn parse(args: &RawValue) -> Result<Self, Error> {
        parse_args(args)
    }

    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Result<Value, Error> {
        require_admin(ctx)?;
        let target = named_user(ctx, &self.username, self.directory).await?;
        let n = ctx.state.auth.revoke_user(target.id).await?;
        tracing::warn!(admin = %user(ctx)?.username, user = %target.username, sessions = n, "tokens revoked by an admin");
        Ok(json!({"username": target.username, "revoked_sessions": n}))
    }
}

#[derive(Deserialize)]
pub struct UnpinSso {
    username: String,
}

impl UnpinSso {
    pub fn parse(args: &RawValue) -> Result<Self, Error> {
        parse_args(args)
    }

    /// `admin_unpin_sso {username}`: a local `adfs_enabled` user is no longer pinned to the
    /// provider's person who first signed in as them; the next person the provider signs in
    /// under that name is pinned instead (e.g. the account changed hands at the provider).
    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Result<Value, Error> {
        require_admin(ctx)?;
        let unpinned = ctx.state.auth.sso_unpin(&self.username).await?;
        tracing::warn!(admin = %user(ctx)?.username, user = %self.username, unpinned, "a local user's single sign-on pin removed by an admin");
        Ok(json!({"username": self.username, "unpinned": unpinned}))
    }
}

/// Tasks as admins see them: with whose each is.
async fn task_views(ctx: &Ctx<'_>, tasks: &[Task]) -> Result<Vec<Value>, Error> {
    let ids: Vec<Uuid> = tasks.iter().map(|t| t.user_id).collect();
    let names = usernames(ctx, ids).await?;
    Ok(tasks
        .iter()
        .map(|task| {
            let mut v = serde_json::to_value(task).unwrap_or_default();
            v["user_id"] = json!(task.user_id);
            v["username"] = json!(names.get(&task.user_id));
            v["pool"] = json!(ctx.state.pools.pool_name(task.pool_id));
            v
        })
        .collect())
}

/// A pool named by id or by name; unknown pools are 404 (admins may know what exists).
fn named_pool(ctx: &Ctx<'_>, pool: &str) -> Result<Uuid, Error> {
    ctx.state
        .pools
        .pool_id_by_name_or_id(pool)
        .ok_or_else(|| Error::NotFound(format!("No pool {pool:?}.")))
}

pub async fn tasks(ctx: &mut Ctx<'_>) -> Result<Value, Error> {
    require_viewer(ctx)?;
    let tasks = ctx.state.pools.all_active_tasks().await?;
    Ok(Value::Array(task_views(ctx, &tasks).await?))
}

#[derive(Deserialize)]
pub struct Release {
    username: String,
    /// Which user, when a local and a directory user share the name.
    #[serde(default)]
    directory: Option<bool>,
    /// The pool's id or name.
    pool_id: String,
}

impl Release {
    pub fn parse(args: &RawValue) -> Result<Self, Error> {
        parse_args(args)
    }

    /// Gives the user's machine back (if any) and clears a failed step 1 that holds the pool
    /// back: after a release, the user's next request starts afresh.
    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Result<Value, Error> {
        require_admin(ctx)?;
        let target = named_user(ctx, &self.username, self.directory).await?;
        let pool_id = named_pool(ctx, &self.pool_id)?;
        let admin = user(ctx)?.username.clone();
        let reason = format!("released by {admin}");
        let pools = &ctx.state.pools;
        let machine = pools.release(target.id, pool_id, &reason).await?;
        let cleared = pools.reset(target.id, pool_id, &admin).await?;
        let cleared = task_views(ctx, cleared.as_slice()).await?;
        // Answered once the assignment is gone; the provisioner's release runs in the
        // background and ends within `release_deadline` (protocol/README.md).
        Ok(match machine {
            Some(machine) => json!({
                "released": machine,
                "release_deadline": pools.release_deadline().as_secs_f64(),
                "cleared": cleared,
            }),
            None => json!({"released": null, "cleared": cleared}),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Totp {
    /// A directory user's sign-in name (uid, sAMAccountName…)…
    #[serde(default)]
    username: Option<String>,
    /// …or the DN of their entry: exactly one of the two.
    #[serde(default)]
    dn: Option<String>,
    /// End the enrolment instead of giving a new secret.
    #[serde(default)]
    disable: bool,
}

impl Totp {
    pub fn parse(args: &RawValue) -> Result<Self, Error> {
        let totp: Totp = parse_args(args)?;
        match (&totp.username, &totp.dn) {
            (Some(name), None) | (None, Some(name)) if !name.trim().is_empty() => Ok(totp),
            _ => Err(Error::bad_request(
                "Give exactly one of \"username\" and \"dn\" (not empty).",
            )),
        }
    }

    /// Enrols a directory user in TOTP (or ends it): the reply carries the new secret and its
    /// otpauth:// URI once, for the admin to hand over; nothing logs them.
    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Result<Value, Error> {
        require_admin(ctx)?;
        let (name, by_dn) = match (&self.username, &self.dn) {
            (Some(name), _) => (name.as_str(), false),
            (None, Some(dn)) => (dn.as_str(), true),
            (None, None) => unreachable!("parse wants one"),
        };
        let (entry, secret) = ctx
            .state
            .auth
            .directory_totp(name, by_dn, !self.disable)
            .await?;
        let admin = &user(ctx)?.username;
        tracing::warn!(admin = %admin, user = %entry.username, dn = %entry.dn, enrolled = secret.is_some(), "a directory user's TOTP enrolment changed by an admin");
        let mut reply = json!({
            "username": entry.username,
            "dn": entry.dn,
            "totp": secret.is_some(),
        });
        if let Some(secret) = secret {
            let url = crate::auth::otp::TotpSecret::from_base32(&secret, &entry.username)
                .and_then(|t| t.otpauth_url())
                .map_err(Error::Internal)?;
            reply["secret"] = json!(secret);
            reply["otpauth_url"] = json!(url);
        }
        Ok(reply)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reset {
    /// One user; absent: every user of the pool.
    #[serde(default)]
    username: Option<String>,
    /// Which user, when a local and a directory user share the name.
    #[serde(default)]
    directory: Option<bool>,
    /// The pool's id or name.
    pool_id: String,
}

impl Reset {
    pub fn parse(args: &RawValue) -> Result<Self, Error> {
        parse_args(args)
    }

    /// Clears failed step-1 tasks so the next request starts a new task at once, instead of
    /// after `failed_step_retry`.
    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Result<Value, Error> {
        require_admin(ctx)?;
        let pool_id = named_pool(ctx, &self.pool_id)?;
        let targets = match &self.username {
            Some(name) => vec![named_user(ctx, name, self.directory).await?.id],
            None => ctx
                .state
                .pools
                .pool_users(pool_id)
                .await?
                .unwrap_or_default(),
        };
        let admin = user(ctx)?.username.clone();
        let mut cleared = Vec::new();
        for target in targets {
            if let Some(task) = ctx.state.pools.reset(target, pool_id, &admin).await? {
                cleared.push(task);
            }
        }
        let cleared = task_views(ctx, &cleared).await?;
        tracing::warn!(admin = %admin, pool = %pool_id, user = self.username.as_deref().unwrap_or("*"), cleared = cleared.len(), "failed step 1 reset by an admin");
        Ok(json!({ "cleared": cleared }))
    }
}

/// Most events one `admin_audit` answers with.
const AUDIT_MAX_LIMIT: usize = 1000;

/// `admin_audit {"since"?, "until"?, "user"?, "event"?, "limit"?, "cursor"?, "order"?}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// RFC 3339 or a span back from now (`1h`); default `24h`.
    #[serde(default)]
    since: Option<String>,
    /// RFC 3339 or a span back from now; default: now (exclusive).
    #[serde(default)]
    until: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    event: Option<String>,
    /// Default 100, at most 1000.
    #[serde(default)]
    limit: Option<usize>,
    /// The `cursor` of the previous page's reply.
    #[serde(default)]
    cursor: Option<String>,
    /// `newest` (default) or `oldest` first.
    #[serde(default)]
    order: Option<String>,
}

impl AuditQuery {
    pub fn parse(args: &RawValue) -> Result<Self, Error> {
        parse_args(args)
    }

    /// The audit events asked for, and the cursor of the next page (`null` when this page is
    /// the last).
    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Result<Value, Error> {
        require_viewer(ctx)?;
        let audit = &ctx.state.audit;
        let now = audit.clock.now_ms();
        let time = |text: Option<&str>, default: u64| match text {
            Some(text) => crate::audit::parse_time(text, now).map_err(Error::bad_request),
            None => Ok(default),
        };
        let since_ms = time(self.since.as_deref(), now.saturating_sub(24 * 3600 * 1000))?;
        // Now itself included.
        let until_ms = time(self.until.as_deref(), now + 1)?;
        if until_ms <= since_ms {
            return Err(Error::bad_request(format!(
                "until ({}) must be after since ({}): a span such as 2h means that long ago.",
                rfc3339_ms(until_ms),
                rfc3339_ms(since_ms)
            )));
        }
        let newest_first = match self.order.as_deref() {
            None | Some("newest") => true,
            Some("oldest") => false,
            Some(other) => {
                return Err(Error::bad_request(format!(
                    "order is \"newest\" or \"oldest\", not {other:?}."
                )));
            }
        };
        if let Some(cursor) = &self.cursor
            && (cursor.len() != crate::domain::audit::ID_LEN || !cursor.is_ascii())
        {
            return Err(Error::bad_request("Invalid cursor."));
        }
        let limit = match self.limit {
            None => 100,
            Some(n @ 1..=AUDIT_MAX_LIMIT) => n,
            Some(n) => {
                return Err(Error::bad_request(format!(
                    "limit is 1 to {AUDIT_MAX_LIMIT}, not {n}."
                )));
            }
        };
        let query = crate::domain::AuditQuery {
            since_ms,
            until_ms,
            user: self.user,
            event: self.event,
            limit,
            after: self.cursor,
            newest_first,
        };
        let events = audit.query(&query).await?;
        let cursor = match events.last() {
            Some(last) if events.len() == limit => Some(last.id.clone()),
            _ => None,
        };
        // The range as resolved, for the next pages: `1h` means the same then.
        Ok(json!({
            "events": events,
            "cursor": cursor,
            "since": rfc3339_ms(since_ms),
            "until": rfc3339_ms(until_ms),
        }))
    }
}

/// `rpc/me` → `{"username", "roles"}`: who the socket is signed in as, with the roles in force
/// — `auditor` included when a group of `auditor_groups` makes them one — so that a client
/// shows only what the user may use (the portal's Activity page).
pub fn me(ctx: &mut Ctx<'_>) -> Result<Value, Error> {
    let user = user(ctx)?;
    let mut roles = user.roles.clone();
    if !roles.iter().any(|r| r == crate::auth::users::AUDITOR) && is_auditor(ctx, user) {
        roles.push(crate::auth::users::AUDITOR.to_owned());
    }
    Ok(json!({"username": user.username, "roles": roles}))
}
