//! `rpc/identify` → `{"type":"server","hostname","version"}`; answered before sign-in, as sysadm does.
//! A demo server (`demo = true`) adds `"demo": true`, so that a client (the web portal) can say
//! which demo account to try, and `"demo_code"`: the demo's one-time code at this moment (the
//! server's local date as YYMMDD), so that it can say how to make it.
//!
//! The reply is rendered once per process: it cannot change while the server runs (a host
//! renamed under a running server keeps its old name here until the restart), and asking the
//! kernel for the hostname on every call was most of the method's cost. A demo server's reply
//! carries the date, so it is rendered on every call from the cached fields.

use std::sync::LazyLock;

use serde_json::{Value, json};

use super::{Ctx, Reply, to_reply};
use crate::error::Error;

fn fields() -> Value {
    json!({
        "type": "server",
        "hostname": gethostname::gethostname().to_string_lossy(),
        "version": env!("CARGO_PKG_VERSION"),
    })
}

static FIELDS: LazyLock<Value> = LazyLock::new(fields);
static REPLY: LazyLock<Result<Reply, String>> =
    LazyLock::new(|| to_reply(&*FIELDS).map_err(|e| e.to_string()));

pub fn apply(ctx: &Ctx<'_>) -> Result<Reply, Error> {
    if ctx.state.config.demo {
        let mut reply = FIELDS.clone();
        reply["demo"] = json!(true);
        reply["demo_code"] = json!(crate::auth::otp::date_code());
        return to_reply(reply);
    }
    (*REPLY)
        .clone()
        .map_err(|e| Error::internal(anyhow::anyhow!(e)))
}
