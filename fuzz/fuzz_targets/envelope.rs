//! The envelope parser: any text frame gives a request or a 400 whose id is null, a string or
//! a number — never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use poolgate::envelope;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match envelope::parse(text) {
        Ok(req) => {
            let id: Value = serde_json::from_str(req.id.get()).expect("the id is JSON");
            assert!(id.is_string() || id.is_number());
        }
        Err(bad) => {
            let id: Value = serde_json::from_str(bad.id.get()).expect("the id is JSON");
            assert!(matches!(id, Value::Null | Value::String(_) | Value::Number(_)));
            assert_eq!(bad.error.code(), 400);
            // The reply always renders.
            let _ = envelope::error(bad.namespace.as_deref(), bad.id, &bad.error);
        }
    }
});
