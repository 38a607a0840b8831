//! `rpc/identify` → `{"type":"server","hostname","version"}`; answered before sign-in, as sysadm does.
//!
//! The reply is rendered once per process: it cannot change while the server runs (a host
//! renamed under a running server keeps its old name here until the restart), and asking the
//! kernel for the hostname on every call was most of the method's cost.

use std::sync::LazyLock;

use serde_json::json;

use super::{Reply, to_reply};
use crate::error::Error;

static REPLY: LazyLock<Result<Reply, String>> = LazyLock::new(|| {
    to_reply(json!({
        "type": "server",
        "hostname": gethostname::gethostname().to_string_lossy(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .map_err(|e| e.to_string())
});

pub fn apply() -> Result<Reply, Error> {
    REPLY
        .clone()
        .map_err(|e| Error::internal(anyhow::anyhow!(e)))
}
