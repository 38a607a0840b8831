//! `rpc/pools {"is_favorite"?: bool}` → the caller's pools (favourites only when true).

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Ctx, Reply, parse_args, user};
use crate::error::Error;

#[derive(Deserialize)]
pub struct Pools {
    #[serde(default)]
    is_favorite: Option<bool>,
}

impl Pools {
    pub fn parse(args: &RawValue) -> Result<Self, Error> {
        // sysadm clients often send no args, or an empty string; most send `{}`.
        if matches!(args.get(), "null" | "\"\"" | "{}") {
            return Ok(Pools { is_favorite: None });
        }
        parse_args(args)
    }

    pub fn apply(self, ctx: &mut Ctx<'_>) -> Result<Reply, Error> {
        let user = user(ctx)?;
        // Rendered once per user and flag (`Pools::list_reply`).
        ctx.state
            .pools
            .list_reply(user, ctx.conn.peer.ip(), self.is_favorite.unwrap_or(false))
            .map(Reply::from)
    }
}
