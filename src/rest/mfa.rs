//! `/users/adfs/` and `/users/hardware_token/`: where a 428's `next_step` sends ADFS and
//! hardware-token users. The mock points there but serves nothing (404); poolgate cannot
//! complete either sign-in method, so the paths exist and say so plainly — 501 in the mock's
//! error shape, with the method's `err_code` — instead of leaving a client at a 404.

use axum::http::StatusCode;

use super::RestError;
use crate::error::MfaKind;

/// The path a 428 names as `next_step` for a second factor.
pub fn next_step(kind: MfaKind) -> &'static str {
    match kind {
        MfaKind::Otp => "/api/v2/users/login/",
        MfaKind::Adfs => "/api/v2/users/adfs/",
        MfaKind::HardwareToken => "/api/v2/users/hardware_token/",
    }
}

fn not_available(kind: MfaKind, method: &str) -> RestError {
    RestError::new(
        StatusCode::NOT_IMPLEMENTED,
        &format!("{method} sign-in is not available on this server."),
        kind.err_code(),
        "auth",
    )
}

/// Any method on `/users/adfs/`.
pub async fn adfs() -> RestError {
    not_available(MfaKind::Adfs, "ADFS")
}

/// Any method on `/users/hardware_token/`.
pub async fn hardware_token() -> RestError {
    not_available(MfaKind::HardwareToken, "Hardware-token")
}
