//! `rpc/pools {"is_favorite"?: bool}` → the caller's pools (favourites only when true).

use serde::Deserialize;
use serde_json::Value;

use super::{Ctx, parse_args, to_value, user};
use crate::error::Error;

#[derive(Deserialize)]
pub struct Pools {
    #[serde(default)]
    is_favorite: Option<bool>,
}

impl Pools {
    pub fn parse(args: Value) -> Result<Self, Error> {
        // sysadm clients often send no args, or an empty string.
        if args.is_null() || args == Value::String(String::new()) {
            return Ok(Pools { is_favorite: None });
        }
        parse_args(args)
    }

    pub fn apply(self, ctx: &mut Ctx<'_>) -> Result<Value, Error> {
        let user = user(ctx)?;
        to_value(
            ctx.state
                .pools
                .list(user, self.is_favorite.unwrap_or(false)),
        )
    }
}
