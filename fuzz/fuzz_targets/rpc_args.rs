//! Every method's argument parsing: the first byte picks the method, the rest is the `args`
//! JSON. Parsing succeeds or answers 400/422-style errors — never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use poolgate::rpc::{Command, METHODS};
use serde_json::value::RawValue;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let method = METHODS[pick as usize % METHODS.len()];
    let args = match std::str::from_utf8(rest).ok().and_then(|t| serde_json::from_str::<&RawValue>(t).ok()) {
        Some(raw) => raw.to_owned(),
        None => serde_json::value::to_raw_value(&String::from_utf8_lossy(rest)).expect("a string"),
    };
    if let Err(e) = Command::parse(method, &args) {
        assert_eq!(e.code(), 400, "argument errors are 400: {e}");
    }
});
