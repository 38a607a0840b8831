//! `rpc/identify` → `{"type":"server","hostname","version"}`; answered before sign-in, as sysadm does.
//! A server on the demo dataset adds `"demo": true`, so that a client (the web portal) can say
//! which demo account to try.
//!
//! The reply is rendered once per process: it cannot change while the server runs (a host
//! renamed under a running server keeps its old name here until the restart), and asking the
//! kernel for the hostname on every call was most of the method's cost.

use std::sync::LazyLock;

use serde_json::json;

use super::{Ctx, Reply, to_reply};
use crate::error::Error;

fn render(demo: bool) -> Result<Reply, String> {
    let mut reply = json!({
        "type": "server",
        "hostname": gethostname::gethostname().to_string_lossy(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    if demo {
        reply["demo"] = json!(true);
    }
    to_reply(reply).map_err(|e| e.to_string())
}

static REPLY: LazyLock<Result<Reply, String>> = LazyLock::new(|| render(false));
static DEMO_REPLY: LazyLock<Result<Reply, String>> = LazyLock::new(|| render(true));

pub fn apply(ctx: &Ctx<'_>) -> Result<Reply, Error> {
    let reply = if ctx.state.config.demo {
        &DEMO_REPLY
    } else {
        &REPLY
    };
    (**reply)
        .clone()
        .map_err(|e| Error::internal(anyhow::anyhow!(e)))
}
