//! Admin methods (role `admin` only; 403 otherwise):
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

fn require_admin(ctx: &Ctx<'_>) -> Result<(), Error> {
    if user(ctx)?.roles.iter().any(|r| r == "admin") {
        Ok(())
    } else {
        Err(Error::AdminRequired)
    }
}

fn rfc3339(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn named_user<'a>(ctx: &'a Ctx<'_>, username: &str) -> Result<&'a std::sync::Arc<User>, Error> {
    ctx.state
        .auth
        .users
        .by_name(username)
        .ok_or_else(|| Error::NotFound(format!("No user {username:?}.")))
}

pub async fn sessions(ctx: &mut Ctx<'_>) -> Result<Value, Error> {
    require_admin(ctx)?;
    let users = &ctx.state.auth.users;
    let mut list: Vec<Value> = ctx
        .state
        .auth
        .live_sessions()
        .await?
        .into_iter()
        .map(|s| {
            json!({
                "user_id": s.user_id,
                "username": users.by_id(&s.user_id).map(|u| u.username.as_str()),
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
}

impl Revoke {
    pub fn parse(args: &RawValue) -> Result<Self, Error> {
        parse_args(args)
    }

    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Result<Value, Error> {
        require_admin(ctx)?;
        let target = named_user(ctx, &self.username)?.clone();
        let n = ctx.state.auth.revoke_user(target.id).await?;
        tracing::warn!(admin = %user(ctx)?.username, user = %target.username, sessions = n, "tokens revoked by an admin");
        Ok(json!({"username": target.username, "revoked_sessions": n}))
    }
}

/// A task as admins see it: with whose it is.
fn task_view(ctx: &Ctx<'_>, task: &Task) -> Value {
    let mut v = serde_json::to_value(task).unwrap_or_default();
    v["user_id"] = json!(task.user_id);
    v["username"] = json!(
        ctx.state
            .auth
            .users
            .by_id(&task.user_id)
            .map(|u| u.username.clone())
    );
    v
}

/// A pool named by id or by name; unknown pools are 404 (admins may know what exists).
fn named_pool(ctx: &Ctx<'_>, pool: &str) -> Result<Uuid, Error> {
    ctx.state
        .pools
        .pool_id_by_name_or_id(pool)
        .ok_or_else(|| Error::NotFound(format!("No pool {pool:?}.")))
}

pub async fn tasks(ctx: &mut Ctx<'_>) -> Result<Value, Error> {
    require_admin(ctx)?;
    let tasks = ctx.state.pools.all_active_tasks().await?;
    Ok(Value::Array(
        tasks.iter().map(|t| task_view(ctx, t)).collect(),
    ))
}

#[derive(Deserialize)]
pub struct Release {
    username: String,
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
        let target = named_user(ctx, &self.username)?.clone();
        let pool_id = named_pool(ctx, &self.pool_id)?;
        let admin = user(ctx)?.username.clone();
        let reason = format!("released by {admin}");
        let pools = &ctx.state.pools;
        let machine = pools.release(target.id, pool_id, &reason).await?;
        let cleared = pools.reset(target.id, pool_id, &admin).await?;
        let cleared: Vec<Value> = cleared.iter().map(|t| task_view(ctx, t)).collect();
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
pub struct Reset {
    /// One user; absent: every user of the pool.
    #[serde(default)]
    username: Option<String>,
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
            Some(name) => vec![named_user(ctx, name)?.id],
            None => ctx.state.pools.pool_users(pool_id).unwrap_or_default(),
        };
        let admin = user(ctx)?.username.clone();
        let mut cleared = Vec::new();
        for target in targets {
            if let Some(task) = ctx.state.pools.reset(target, pool_id, &admin).await? {
                cleared.push(task_view(ctx, &task));
            }
        }
        tracing::warn!(admin = %admin, pool = %pool_id, user = self.username.as_deref().unwrap_or("*"), cleared = cleared.len(), "failed step 1 reset by an admin");
        Ok(json!({ "cleared": cleared }))
    }
}
