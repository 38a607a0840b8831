//! `rpc/connect_info {"pool_id","remote_protocol"?,"width"?,"height"?,"password"?}` →
//! `{"task": {...}}` while not ready, `{"connection": {...}}` when ready (step 2), with
//! `"guacamole": {"url", "expires"}` beside it when the pool has a Guacamole gateway.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use super::{Ctx, Reply, parse_args, to_reply, user};
use crate::domain::ConnectionData;
use crate::error::Error;
use crate::pools::{ConnectOutcome, ConnectParams, GuacamoleLink};

/// The reply for a pool behind a Guacamole gateway.
#[derive(Serialize)]
struct WithLink<'a> {
    connection: &'a ConnectionData,
    guacamole: GuacamoleLink,
}

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
        let user = user(ctx)?;
        let pools = &ctx.state.pools;
        let outcome = pools
            .connect_info(user, ctx.conn.peer.ip(), self.pool_id, &self.params)
            .await?;
        match &outcome {
            ConnectOutcome::Connection(c) => {
                // A Guacamole link is single-use and expires: made afresh, never cached, and
                // each one recorded; the same machine's data asked for again is not a new
                // connection (`AuditLog::first_connect`).
                let link = pools.guacamole_link(user, self.pool_id, c)?;
                if link.is_some() || ctx.state.audit.first_connect(user.id, self.pool_id, c.id) {
                    super::record::connected(ctx, pools.pool_name(self.pool_id));
                }
                match link {
                    Some(link) => to_reply(WithLink {
                        connection: c,
                        guacamole: link,
                    }),
                    None => ctx
                        .state
                        .connect_replies
                        .render(c.id, outcome)
                        .map(Reply::from),
                }
            }
            ConnectOutcome::Task(_) => to_reply(outcome),
        }
    }
}
