//! `rpc/identify` → `{"type":"server","hostname","version"}`; answered before sign-in, as sysadm does.

use serde_json::{Value, json};

pub fn apply() -> Value {
    json!({
        "type": "server",
        "hostname": gethostname::gethostname().to_string_lossy(),
        "version": env!("CARGO_PKG_VERSION"),
    })
}
