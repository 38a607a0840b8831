//! `rpc/task {"task_id"}` → the task; 404 when it is not the caller's.

use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use super::{Ctx, Reply, parse_args, to_reply, user};
use crate::error::Error;

#[derive(Deserialize)]
pub struct TaskLookup {
    task_id: Uuid,
}

impl TaskLookup {
    pub fn parse(args: &RawValue) -> Result<Self, Error> {
        parse_args(args)
    }

    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Result<Reply, Error> {
        // Serialized straight into the reply: no intermediate `Value`.
        to_reply(ctx.state.pools.task(user(ctx)?, self.task_id).await?)
    }
}
