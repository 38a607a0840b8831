//! `events/subscribe` and `events/unsubscribe` with one event name or an array of names.
//! Task events are on by default for a signed-in socket; unsubscribing turns them off.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::{Ctx, parse_args};
use crate::error::Error;

/// Event names a socket can subscribe to.
pub const KNOWN_EVENTS: &[&str] = &["task"];

#[derive(Deserialize)]
#[serde(untagged)]
enum Names {
    One(String),
    Many(Vec<String>),
}

pub struct Subscription {
    /// As the client sent it, echoed in the reply.
    echo: Value,
    names: Vec<String>,
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
        if let Some(unknown) = names.iter().find(|n| !KNOWN_EVENTS.contains(&n.as_str())) {
            return Err(Error::bad_request(format!(
                "Unknown event {unknown:?}; known events: {}.",
                KNOWN_EVENTS.join(", ")
            )));
        }
        let echo = serde_json::from_str(args.get()).map_err(Error::internal)?;
        Ok(Subscription { echo, names })
    }

    pub fn apply(self, ctx: &mut Ctx<'_>, on: bool) -> Result<Value, Error> {
        if self.names.iter().any(|n| n == "task") {
            ctx.conn
                .events_enabled
                .store(on, std::sync::atomic::Ordering::Relaxed);
        }
        let key = if on { "subscribe" } else { "unsubscribe" };
        Ok(json!({ key: self.echo }))
    }
}
