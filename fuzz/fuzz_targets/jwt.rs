//! JWT verification: arbitrary tokens are refused (none can be valid without the secret) and
//! never panic.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use poolgate::auth::jwt::JwtKeys;

fuzz_target!(|data: &[u8]| {
    static KEYS: OnceLock<JwtKeys> = OnceLock::new();
    let keys = KEYS.get_or_init(|| JwtKeys::new(b"fuzzing-secret-fuzzing-secret-0123456789", Duration::from_secs(60)));
    let Ok(token) = std::str::from_utf8(data) else { return };
    assert!(keys.verify(token).is_none());
});
