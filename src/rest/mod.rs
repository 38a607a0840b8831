//! The v2 compatibility shim: the REST paths and status WebSocket of the dispatcher's v2 API,
//! shaped like the reference mock (devalv/mockapi) so its clients work unchanged. Handlers only
//! translate HTTP to the same domain calls the WebSocket RPCs make.

mod core;
mod mfa;
mod openapi;
mod pools;
mod record;
pub mod settings;
mod sso;
pub mod status_ws;
mod tasks;
mod users;
mod validate;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any, get, post};
use serde_json::{Value, json};

use crate::auth::jwt::Claims;
use crate::auth::users::User;
use crate::error::{ERR_CODE_DEFAULT, Error};
use crate::state::AppState;

/// Largest request body the shim reads.
const MAX_BODY: usize = 64 * 1024;

/// Routes under `/api/v2`, plus the docs. `status_socket` serves the status WebSocket (its
/// socket phase runs in `ws`, which the shim may not import; its checks are [`status_ws`]'s).
///
/// The routes carry their whole path rather than being nested under `/api/v2`: axum's `nest`
/// rebuilds every request's URI to strip the prefix (~2k instructions of a `GET /pools/`,
/// docs/benchmarks.md section 2). What the nest gave is kept: any other path under `/api/v2`
/// answers the shim's 404, a known path with another method its 405 (with `Allow`), and
/// bodies are limited to [`MAX_BODY`] — on these routes only, not on the rest of the server.
pub fn router(status_socket: MethodRouter<AppState>) -> Router<AppState> {
    const API: &str = "/api/v2";
    let routes: [(&str, MethodRouter<AppState>); 15] = [
        ("/users/login/", post(users::login)),
        ("/users/login/sso/{user_code}/", get(sso::poll)),
        ("/users/login/webauthn/", post(users::login_webauthn)),
        ("/users/logout/", post(users::logout)),
        ("/users/settings/", get(users::settings)),
        ("/users/adfs/", any(mfa::adfs)),
        ("/users/hardware_token/", any(mfa::hardware_token)),
        ("/pools/", get(pools::list)),
        ("/pools/{id}/connect/", get(pools::step1).post(pools::step2)),
        ("/pools/ws/{client_id}/", status_socket),
        ("/tasks/{id}/", get(tasks::get)),
        ("/tasks/{id}/is-done/", get(tasks::is_done)),
        ("/health/", get(core::health)),
        ("/version/", get(core::version)),
        ("/openapi.json", get(openapi::spec)),
    ];
    let api = routes
        .into_iter()
        .fold(Router::new(), |api, (path, route)| {
            api.route(&format!("{API}{path}"), route)
        })
        .route(API, any(not_found))
        .route(&format!("{API}/"), any(not_found))
        .route(&format!("{API}/{{*rest}}"), any(not_found))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY));
    api.route("/docs", get(openapi::docs))
        .route("/docs/{asset}", get(openapi::asset))
}

/// Logs a browser's request refused by `http::check_origin` (`what`: the status socket or the
/// sign-in), at most one line per 10 s for each kind of refusal, with the count.
fn log_foreign_browser(
    headers: &HeaderMap,
    peer: std::net::SocketAddr,
    why: crate::http::BrowserRefusal,
    what: &'static str,
) {
    let origin = crate::http::header_text(headers, header::ORIGIN);
    match why {
        crate::http::BrowserRefusal::Origin(_) => {
            crate::warn_refusal!(%peer, %origin, refused_at = what, "{what} refused: foreign Origin (at most one line per 10 s, with the count)");
        }
        crate::http::BrowserRefusal::Host => {
            let host = crate::http::header_text(headers, header::HOST);
            crate::warn_refusal!(%peer, %origin, %host, refused_at = what, "{what} refused: a browser named a Host this server does not answer on; add it to server_names if it is ours (at most one line per 10 s, with the count)");
        }
    }
}

/// An error in the mock's shape: `{"detail":[{"msg","err_code","type"}]}` with
/// `WWW-Authenticate: JWT`.
#[derive(Debug)]
pub struct RestError {
    status: StatusCode,
    detail: Vec<Value>,
}

impl RestError {
    pub fn new(status: StatusCode, msg: &str, err_code: u32, kind: &str) -> Self {
        RestError {
            status,
            detail: vec![json!({"msg": msg, "err_code": err_code, "type": kind})],
        }
    }

    /// Missing, malformed, forged, `alg: none`, expired or revoked token (the mock's 403).
    pub fn permission_denied() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "Permission denied.",
            ERR_CODE_DEFAULT,
            "default",
        )
    }

    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "Not found.",
            ERR_CODE_DEFAULT,
            "default",
        )
    }

    /// A 422 validation error item, FastAPI-style, with the mock's `err_code`.
    pub fn validation(loc: &[&str], msg: impl Into<String>, kind: &str) -> Self {
        RestError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            detail: vec![
                json!({"loc": loc, "msg": msg.into(), "type": kind, "err_code": ERR_CODE_DEFAULT}),
            ],
        }
    }
}

impl From<Error> for RestError {
    fn from(err: Error) -> Self {
        let code = err.err_code().unwrap_or(ERR_CODE_DEFAULT);
        match &err {
            // The shim answers "Invalid Credentials." for every failed password login.
            Error::InvalidCredentials | Error::Disabled => Self::new(
                StatusCode::UNAUTHORIZED,
                "Invalid Credentials.",
                ERR_CODE_DEFAULT,
                "default",
            ),
            Error::InvalidOtp => {
                Self::new(StatusCode::UNAUTHORIZED, &err.to_string(), code, "auth")
            }
            Error::SsoRequired(fields) => RestError {
                status: StatusCode::PRECONDITION_REQUIRED,
                detail: vec![{
                    let mut item = json!({"msg": "MFA required.", "err_code": code, "type": "auth", "next_step": mfa::next_step(crate::error::MfaKind::Adfs)});
                    if let (Some(item), Value::Object(fields)) =
                        (item.as_object_mut(), json!(fields))
                    {
                        item.extend(fields);
                    }
                    item
                }],
            },
            // The mock's 428/102, its next step the key's challenge.
            Error::KeyRequired(challenge) => RestError {
                status: StatusCode::PRECONDITION_REQUIRED,
                detail: vec![json!({
                    "msg": "MFA required.", "err_code": code, "type": "auth",
                    "next_step": {
                        "path": "/api/v2/users/login/webauthn/",
                        "mfa_token": challenge.mfa_token,
                        "publicKey": challenge.public_key,
                    },
                })],
            },
            Error::MfaRequired { kind, .. } => {
                let next_step = mfa::next_step(*kind);
                RestError {
                    status: StatusCode::PRECONDITION_REQUIRED,
                    detail: vec![
                        json!({"msg": "MFA required.", "err_code": code, "type": "auth", "next_step": next_step}),
                    ],
                }
            }
            Error::Unauthenticated | Error::InvalidToken | Error::InvalidMfaToken => {
                Self::permission_denied()
            }
            Error::NotFound(_) => Self::not_found(),
            Error::PoolClosed { opens_at } => {
                let mut item = json!({"msg": err.to_string(), "err_code": code, "type": "default"});
                if let Some(item) = item.as_object_mut() {
                    item.extend(crate::error::closed_fields(*opens_at));
                }
                RestError {
                    status: StatusCode::FORBIDDEN,
                    detail: vec![item],
                }
            }
            Error::Unprocessable(msg) => Self::validation(&["body"], msg.clone(), "value_error"),
            Error::BadRequest(msg) => Self::validation(&["body"], msg.clone(), "value_error"),
            Error::Internal(cause) => {
                tracing::error!(error = ?cause, "internal error in the REST shim");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &err.to_string(),
                    code,
                    "default",
                )
            }
            other => Self::new(
                StatusCode::from_u16(other.code()).unwrap_or(StatusCode::BAD_REQUEST),
                &other.to_string(),
                code,
                "default",
            ),
        }
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(json!({"detail": self.detail}))).into_response();
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("JWT"));
        resp
    }
}

async fn not_found() -> RestError {
    RestError::not_found()
}

/// A known path with another method (axum adds the `Allow` header).
async fn method_not_allowed() -> RestError {
    RestError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method Not Allowed.",
        ERR_CODE_DEFAULT,
        "default",
    )
}

/// The caller, authenticated by `Authorization: JWT <token>`.
pub struct AuthUser {
    pub user: Arc<User>,
    pub claims: Arc<Claims>,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = RestError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, RestError> {
        AuthUser::from_headers(state, &parts.headers).await
    }
}

impl AuthUser {
    /// The mock's JWT dependency, for handlers that must read the body first (FastAPI decodes
    /// a JSON body before it runs dependencies).
    pub async fn from_headers(state: &AppState, headers: &HeaderMap) -> Result<Self, RestError> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("JWT "))
            .ok_or_else(RestError::permission_denied)?;
        authenticate_jwt(state, token.trim())
            .await
            .ok_or_else(RestError::permission_denied)
    }
}

/// A JWT's user, if the token is valid and the user may still sign in.
pub async fn authenticate_jwt(state: &AppState, token: &str) -> Option<AuthUser> {
    let (user, claims) = state.auth.verify_jwt(token).await?;
    Some(AuthUser { user, claims })
}

/// `{"data": …}` with a status code.
pub fn data(status: StatusCode, value: impl serde::Serialize) -> Response {
    (status, axum::Json(json!({ "data": value }))).into_response()
}
