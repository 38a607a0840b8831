//! Admin methods (role `admin` only; 403 otherwise):
//! `admin_sessions` (who is signed in, from where, since when), `admin_revoke {"username"}`
//! (all of a user's tokens and JWTs), `admin_tasks` (every active task), and
//! `admin_release {"username","pool_id"}` (give a user's machine back: answered once the
//! assignment is removed, while the provisioner's release runs in the background).

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Ctx, parse_args, user};
use crate::auth::users::User;
use crate::error::Error;

fn require_admin(ctx: &Ctx<'_>) -> Result<(), Error> {
    if user(ctx)?.roles.iter().any(|r| r == "admin") {
        Ok(())
    } else {
        Err(Error::Forbidden {
            message: "Admin role required.".into(),
            err_code: Some(900),
        })
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
    let ttl = ctx.state.auth.tokens.ttl().as_millis() as u64;
    let now = crate::store::now_ms();
    let users = &ctx.state.auth.users;
    let mut list: Vec<Value> = ctx
        .state
        .store
        .sessions_all()
        .await?
        .into_iter()
        .filter(|s| now.saturating_sub(s.last_active_ms) < ttl)
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
        let n = ctx.state.auth.tokens.revoke_user(&target.id).await?;
        ctx.state
            .jwt
            .revoke_user(&*ctx.state.store, target.id)
            .await?;
        tracing::warn!(admin = %user(ctx)?.username, user = %target.username, sessions = n, "tokens revoked by an admin");
        Ok(json!({"username": target.username, "revoked_sessions": n}))
    }
}

pub async fn tasks(ctx: &mut Ctx<'_>) -> Result<Value, Error> {
    require_admin(ctx)?;
    let users = &ctx.state.auth.users;
    let tasks = ctx.state.pools.all_active_tasks().await?;
    Ok(Value::Array(
        tasks
            .into_iter()
            .map(|t| {
                let mut v = serde_json::to_value(&t).unwrap_or_default();
                v["user_id"] = json!(t.user_id);
                v["username"] = json!(users.by_id(&t.user_id).map(|u| u.username.clone()));
                v
            })
            .collect(),
    ))
}

#[derive(Deserialize)]
pub struct Release {
    username: String,
    pool_id: Uuid,
}

impl Release {
    pub fn parse(args: &RawValue) -> Result<Self, Error> {
        parse_args(args)
    }

    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Result<Value, Error> {
        require_admin(ctx)?;
        let target = named_user(ctx, &self.username)?.clone();
        let reason = format!("released by {}", user(ctx)?.username);
        let machine = ctx
            .state
            .pools
            .release(target.id, self.pool_id, &reason)
            .await?;
        // Answered once the assignment is gone; the provisioner's release runs in the
        // background and ends within `release_deadline` (protocol/README.md).
        Ok(match machine {
            Some(machine) => json!({
                "released": machine,
                "release_deadline": ctx.state.pools.release_deadline().as_secs_f64(),
            }),
            None => json!({"released": null}),
        })
    }
}
