//! `rpc/connect_info {"pool_id","remote_protocol"?,"width"?,"height"?,"password"?}` →
//! `{"task": {...}}` while not ready, `{"connection": {...}}` when ready (step 2), with
//! `"guacamole": {"url", "expires"}` beside it when the pool has a Guacamole gateway.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use super::{Ctx, Reply, parse_args, to_reply, user};
use crate::domain::ConnectionData;
use crate::error::Error;
use crate::pools::{ConnectOutcome, ConnectParams, Discarded, GuacamoleLink};

/// The reply for a pool behind a Guacamole gateway.
#[derive(Serialize)]
struct WithLink<'a> {
    connection: &'a ConnectionData,
    guacamole: GuacamoleLink,
}

pub struct ConnectInfo {
    pool_id: Uuid,
    params: ConnectParams,
}

/// The arguments as sent: [`ConnectParams`]' fields beside `pool_id`, named here rather than
/// through `#[serde(flatten)]`, which buffers every field into a map first (~900 of a
/// request's instructions).
#[derive(Deserialize)]
struct Args {
    pool_id: Uuid,
    #[serde(default)]
    remote_protocol: Option<i64>,
    #[serde(default)]
    width: Option<i64>,
    #[serde(default)]
    height: Option<i64>,
    #[serde(default)]
    password: Option<Discarded>,
}

impl ConnectInfo {
    pub fn parse(args: &RawValue) -> Result<Self, Error> {
        // serde reads a struct from an array too (fields by position): the arguments are an
        // object, as they were when `flatten` read them (a hostile review).
        if !args.get().trim_start().starts_with('{') {
            return Err(Error::bad_request(
                "Invalid args: expected an object with `pool_id`.",
            ));
        }
        let args: Args = parse_args(args)?;
        Ok(ConnectInfo {
            pool_id: args.pool_id,
            params: ConnectParams {
                remote_protocol: args.remote_protocol,
                width: args.width,
                height: args.height,
                password: args.password,
            },
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ConnectInfo, Error> {
        ConnectInfo::parse(serde_json::from_str(text).unwrap())
    }

    #[test]
    fn the_arguments_are_read_beside_pool_id_and_bad_ones_are_400() {
        let id = "bc4f9e45-6b5a-41e6-bb85-ae91f4b8c413";
        let c = parse(&format!(
            r#"{{"pool_id":"{id}","remote_protocol":2,"width":1920,"height":1080,"password":"x","other":[1]}}"#
        ))
        .unwrap();
        assert_eq!(c.pool_id.to_string(), id);
        let p = &c.params;
        assert_eq!(
            (p.remote_protocol, p.width, p.height),
            (Some(2), Some(1920), Some(1080))
        );
        assert!(p.password.is_some());
        let c = parse(&format!(r#"{{"pool_id":"{id}"}}"#)).unwrap();
        assert!(c.params.width.is_none() && c.params.password.is_none());
        for bad in [
            format!(r#"{{"pool_id":"{id}","password":5}}"#),
            format!(r#"{{"pool_id":"{id}","width":"wide"}}"#),
            r#"{"pool_id":"nope"}"#.to_string(),
            r#"{"width":1}"#.to_string(),
            format!(r#"["{id}"]"#),
            format!(r#"["{id}",1,1920,1080,"pw"]"#),
            "[]".to_string(),
        ] {
            assert_eq!(parse(&bad).err().map(|e| e.code()), Some(400), "{bad}");
        }
    }
}
