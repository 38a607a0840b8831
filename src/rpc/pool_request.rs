//! `rpc/pool_request {"pool_id"}` → `{"task": {...}}`: step 1, a machine in the pool.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Ctx, parse_args, user};
use crate::error::Error;

#[derive(Deserialize)]
pub struct PoolRequest {
    pool_id: Uuid,
}

impl PoolRequest {
    pub fn parse(args: &RawValue) -> Result<Self, Error> {
        parse_args(args)
    }

    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Result<Value, Error> {
        let task = ctx
            .state
            .pools
            .request_machine(user(ctx)?, ctx.conn.peer.ip(), self.pool_id)
            .await?;
        Ok(json!({ "task": task }))
    }
}
