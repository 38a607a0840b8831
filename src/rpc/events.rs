//! `events/subscribe` and `events/unsubscribe` with one event name or an array of names: every
//! event the server pushes (`task`, `machine`) is on by default for a signed-in socket, and
//! each can be turned off and on again.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::{Ctx, parse_args};
use crate::error::Error;
use crate::events::EventName;

#[derive(Deserialize)]
#[serde(untagged)]
enum Names {
    One(String),
    Many(Vec<String>),
}

pub struct Subscription {
    /// As the client sent it, echoed in the reply.
    echo: Value,
    names: Vec<EventName>,
}

impl Subscription {
    pub fn parse(args: &RawValue) -> Result<Self, Error> {
        let names = match parse_args::<Names>(args) {
            Ok(Names::One(name)) => vec![name],
            Ok(Names::Many(names)) => names,
            Err(_) => {
                return Err(Error::bad_request(
                    "Invalid args: expected an event name or an array of event names.",
                ));
            }
        };
        let names = names
            .iter()
            .map(|n| {
                EventName::parse(n).ok_or_else(|| {
                    let known: Vec<&str> = EventName::ALL.iter().map(|e| e.as_str()).collect();
                    Error::bad_request(format!(
                        "Unknown event {n:?}; known events: {}.",
                        known.join(", ")
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let echo = serde_json::from_str(args.get()).map_err(Error::internal)?;
        Ok(Subscription { echo, names })
    }

    pub fn apply(self, ctx: &mut Ctx<'_>, on: bool) -> Result<Value, Error> {
        for &name in &self.names {
            ctx.conn.outbound.subscriptions().set(name, on);
        }
        let key = if on { "subscribe" } else { "unsubscribe" };
        Ok(json!({ key: self.echo }))
    }
}
