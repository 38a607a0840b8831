//! `rpc/identify` → `{"type":"server","hostname","version"}`; answered before sign-in, as sysadm does.
//! A demo server (`demo = true`) adds `"demo": true`, so that a client (the web portal) can say
//! which demo account to try, and `"demo_code"`: the demo's one-time code at this moment (the
//! server's local date as YYMMDD), so that it can say how to make it.
//!
//! The reply is rendered once per process: it cannot change while the server runs (a host
//! renamed under a running server keeps its old name here until the restart), and asking the
//! kernel for the hostname on every call was most of the method's cost. A demo server's reply
//! carries the date, so it is rendered again each second from the cached fields.

use std::sync::{Arc, LazyLock, Mutex};

use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::{Ctx, Reply};
use crate::envelope::shared_json;
use crate::error::Error;

fn fields() -> Value {
    json!({
        "type": "server",
        "hostname": gethostname::gethostname().to_string_lossy(),
        "version": env!("CARGO_PKG_VERSION"),
    })
}

static FIELDS: LazyLock<Value> = LazyLock::new(fields);
static REPLY: LazyLock<Result<Arc<RawValue>, String>> =
    LazyLock::new(|| shared_json(&*FIELDS).map_err(|e| e.to_string()));

/// A demo server's reply and the second (Unix time) it was rendered in: rendered again in the
/// next second, so the code follows the date within a second of midnight, while asking the
/// system for the local date (a time-zone look-up) is not part of every call.
static DEMO_REPLY: Mutex<Option<(u64, Arc<RawValue>)>> = Mutex::new(None);

fn demo_reply() -> Result<Reply, Error> {
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut cached = DEMO_REPLY.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, reply)) = cached.as_ref()
        && *at == second
    {
        return Ok(reply.clone().into());
    }
    let mut fields = FIELDS.clone();
    fields["demo"] = json!(true);
    fields["demo_code"] = json!(crate::auth::otp::date_code());
    let reply = shared_json(&fields)?;
    *cached = Some((second, reply.clone()));
    Ok(reply.into())
}

pub fn apply(ctx: &Ctx<'_>) -> Result<Reply, Error> {
    if ctx.state.config.demo {
        return demo_reply();
    }
    (*REPLY)
        .clone()
        .map(Reply::from)
        .map_err(|e| Error::internal(anyhow::anyhow!(e)))
}
