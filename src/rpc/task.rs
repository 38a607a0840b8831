//! `rpc/task {"task_id"}` → the task; 404 when it is not the caller's.

use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use super::{Ctx, Reply, parse_args, user};
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
        let task = ctx.state.pools.task(user(ctx)?, self.task_id).await?;
        // Rendered once per change of the task (`envelope::Replies`).
        ctx.state
            .task_replies
            .render(task.id, task)
            .map(Reply::from)
    }
}
