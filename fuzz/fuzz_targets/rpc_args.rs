//! Every method's argument parsing: the first byte picks the method, the rest is the `args`
//! JSON. Parsing succeeds or answers 400/422-style errors — never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use poolgate::rpc::{Command, METHODS};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let method = METHODS[pick as usize % METHODS.len()];
    let args = match serde_json::from_slice::<serde_json::Value>(rest) {
        Ok(v) => v,
        Err(_) => serde_json::Value::String(String::from_utf8_lossy(rest).into_owned()),
    };
    if let Err(e) = Command::parse(method, args) {
        assert_eq!(e.code(), 400, "argument errors are 400: {e}");
    }
});
