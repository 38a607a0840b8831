//! `rpc/tasks` (args ignored) → the caller's recent tasks, newest first.

use super::{Ctx, Reply, to_reply, user};
use crate::error::Error;

pub struct Tasks;

impl Tasks {
    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Result<Reply, Error> {
        to_reply(ctx.state.pools.recent_tasks(user(ctx)?).await?)
    }
}
