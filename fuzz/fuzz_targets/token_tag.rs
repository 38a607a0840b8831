//! Session and MFA token tags: a presented token is checked for this deployment's tag before
//! any store look-up (an expired token of ours is not a guess; anything else is). Arbitrary
//! input never panics and never passes: a tag is 64 bits of HMAC under a key derived from the
//! server's secret.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use poolgate::auth::tokens::TagKey;

fuzz_target!(|data: &[u8]| {
    static KEY: OnceLock<TagKey> = OnceLock::new();
    let key = KEY.get_or_init(|| TagKey::derive(b"fuzzing-secret-fuzzing-secret-0123456789"));
    let Ok(token) = std::str::from_utf8(data) else { return };
    for prefix in ["pgs_", "pgm_", ""] {
        assert!(!key.issued_here(prefix, token));
    }
});
