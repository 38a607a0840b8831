//! `rpc/connect_info {"pool_id","remote_protocol"?,"width"?,"height"?,"password"?}` →
//! `{"task": {...}}` while not ready, `{"connection": {...}}` when ready (step 2).

use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use super::{Ctx, Reply, parse_args, to_reply, user};
use crate::error::Error;
use crate::pools::{ConnectOutcome, ConnectParams};

#[derive(Deserialize)]
pub struct ConnectInfo {
    pool_id: Uuid,
    #[serde(flatten)]
    params: ConnectParams,
}

impl ConnectInfo {
    pub fn parse(args: &RawValue) -> Result<Self, Error> {
        parse_args(args)
    }

    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Result<Reply, Error> {
        // Serialized straight from the outcome: `{"task": …}` or `{"connection": …}`; the
        // connection data of a finished step is rendered once per machine and change.
        let outcome = ctx
            .state
            .pools
            .connect_info(user(ctx)?, self.pool_id, &self.params)
            .await?;
        match &outcome {
            ConnectOutcome::Connection(c) => ctx.state.connect_replies.render(c.id, outcome),
            ConnectOutcome::Task(_) => to_reply(outcome),
        }
    }
}
