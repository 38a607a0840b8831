//! `WS /api/v2/pools/ws/{client_id}/`: the per-client status socket of the v2 API, its HTTP
//! side — the checks before the upgrade ([`admit`]) and the rule that keeps an open socket's
//! token valid ([`token_holds`]). The socket itself runs on the one socket loop (`ws::status`;
//! the router hands `rest::router` that route, since the shim does not import `ws`).
//!
//! Authenticated by `Cookie: JWT <token>` (the mock's form) or a cookie named `JWT`; refused
//! before the upgrade without a valid token or when `client_id` is not the token's (the mock
//! never checks). A browser sends cookies with a WebSocket opened by any site's page, so the
//! `Origin` is checked first (cross-site WebSocket hijacking): it must be one of
//! `allowed_origins`, or, when that list is empty, name the host the request was sent to; and
//! that host must be one this server answers browsers on (DNS rebinding, `http::check_origin`).
//! Requests without `Origin` come from non-browser clients, which hold the cookie themselves,
//! and are let through. Each task change of the user is sent as `{"status","id","kind",...}`; the
//! user's active tasks are sent once on connect. The server pings every 30 s; a socket that
//! answers nothing for `idle_timeout` is closed, and so is one whose token expires or is revoked.

use std::net::SocketAddr;

use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::http::{HeaderMap, StatusCode, header};

use super::{AuthUser, RestError, authenticate_jwt};
use crate::auth::jwt::Claims;
use crate::error::ERR_CODE_DEFAULT;
use crate::state::AppState;

/// The JWT from `Cookie: JWT <token>` or `Cookie: …; JWT=<token>`.
fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            if let Some(token) = v.trim().strip_prefix("JWT ") {
                return Some(token.trim());
            }
            v.split(';')
                .find_map(|kv| kv.trim().strip_prefix("JWT="))
                .map(str::trim)
        })
}

/// The status socket's checks, in the mock's order: a request that is no WebSocket handshake
/// is refused first (the mock has no HTTP route here at all), then a foreign `Origin` (403),
/// then the token (403), then `client_id` (403). `Ok`: the upgrade to complete and whose
/// socket it is; `Err`: the mock-shaped refusal. The connection caps were applied when the connection was accepted.
/// `ws` is the transport's handshake (generic: the shim does not name `ws`).
pub async fn admit<U, NotUpgrade>(
    state: &AppState,
    peer: SocketAddr,
    client_id: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    ws: Result<U, NotUpgrade>,
) -> Result<(U, AuthUser), RestError> {
    let Ok(ws) = ws else {
        return Err(RestError::new(
            StatusCode::UPGRADE_REQUIRED,
            "This endpoint is a WebSocket.",
            ERR_CODE_DEFAULT,
            "default",
        ));
    };
    if let Err(why) = state.config.check_browser(headers) {
        super::log_foreign_browser(headers, peer, why, "status socket");
        return Err(RestError::new(
            StatusCode::FORBIDDEN,
            why.message(),
            ERR_CODE_DEFAULT,
            "default",
        ));
    }
    let auth = match cookie_token(headers) {
        Some(token) => authenticate_jwt(state, token).await,
        None => None,
    };
    let Some(auth) = auth else {
        return Err(RestError::permission_denied());
    };
    let client_id = client_id
        .ok()
        .and_then(|Path(id)| id.parse::<uuid::Uuid>().ok());
    if client_id != Some(auth.user.id) {
        crate::warn_refusal!(user = %auth.user.username, %peer, "status socket refused: client_id is not the token's (at most one line per 10 s, with the count)");
        return Err(RestError::permission_denied());
    }
    Ok((ws, auth))
}

/// Whether an open status socket's token still holds: not expired, not revoked.
pub fn token_holds(state: &AppState, claims: &Claims) -> bool {
    state.auth.jwt_still_valid(claims)
}
