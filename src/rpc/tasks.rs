//! `rpc/tasks` (args ignored) → the caller's recent tasks, newest first.

use serde_json::Value;

use super::{Ctx, to_value, user};
use crate::error::Error;

pub struct Tasks;

impl Tasks {
    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Result<Value, Error> {
        to_value(ctx.state.pools.recent_tasks(user(ctx)?).await?)
    }
}
