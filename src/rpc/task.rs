//! `rpc/task {"task_id"}` → the task; 404 when it is not the caller's.

use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::{Ctx, parse_args, to_value, user};
use crate::error::Error;

#[derive(Deserialize)]
pub struct TaskLookup {
    task_id: Uuid,
}

impl TaskLookup {
    pub fn parse(args: Value) -> Result<Self, Error> {
        parse_args(args)
    }

    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Result<Value, Error> {
        to_value(ctx.state.pools.task(user(ctx)?, self.task_id).await?)
    }
}
