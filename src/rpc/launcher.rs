//! `rpc/launcher {"pool_id"}` → `{"filename","content_type","content"}`: the `.rdp` or `.vv`
//! file for the desktop that step 2 connected (404 until it has; 409 without a machine). The
//! command-line client and the web portal both write what this answers.

use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use super::{Ctx, Reply, parse_args, to_reply, user};
use crate::error::Error;

#[derive(Deserialize)]
pub struct LauncherRequest {
    pool_id: Uuid,
}

impl LauncherRequest {
    pub fn parse(args: &RawValue) -> Result<Self, Error> {
        parse_args(args)
    }

    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Result<Reply, Error> {
        let launcher = ctx
            .state
            .pools
            .launcher(user(ctx)?, ctx.conn.peer.ip(), self.pool_id)
            .await?;
        to_reply(launcher)
    }
}
