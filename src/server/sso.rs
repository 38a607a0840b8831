//! The browser's side of single sign-on (`[oidc]`): where the portal's button leads, where the
//! provider sends the browser back, and the hand-off pages a person opens for a thin client.
//!
//! - `GET /oidc/login[?handoff=USER_CODE]`: to the provider (303).
//! - `GET /oidc/callback`: back from it. For the portal, a 303 to `/?sso=CODE`: a one-time
//!   code (256 random bits, exchanged once over the page's socket with `auth_sso_code`, gone
//!   after 60 s), never a token — a URL can end up in a history or a log, a code used once
//!   and useless a minute later cannot sign anyone in from there. For a hand-off, the page
//!   "You are signed in on your device".
//! - `GET /oidc/device[?user_code=…]`: type the code a thin client shows, or confirm the one
//!   its link holds, then on to the provider. `/oidc/login?handoff=` only goes on from this
//!   confirmation (a SameSite=Strict cookie it sets names the code): a link straight to the
//!   provider for someone else's code leads to the confirmation first (RFC 8628 §5.4).
//! - `GET /oidc/qr?user_code=…` and `/oidc/qr.svg?user_code=…`: the link of a code as a QR
//!   code, for a phone.
//! - `GET /oidc/logout`: on to the provider's `end_session_endpoint` (RP-initiated logout),
//!   back to the portal; the portal's own sign-out ends the poolgate session first.
//! - `GET /oidc/config`: what the portal's page needs to show the button.
//!
//! Every page is plain HTML without script, under a Content-Security-Policy that allows
//! nothing but this server's style sheet and images. A provider fault is a 503 page (and
//! `/healthz` says degraded), within `oidc.timeout`.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

use crate::auth::federated::CallbackDone;
use crate::auth::oidc::user_code;
use crate::auth::sso::DEVICE_PATH;
use crate::error::Error;
use crate::state::AppState;

/// The single sign-on routes (they answer 404 without `[oidc]`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/oidc/login", get(login))
        .route("/oidc/callback", get(callback))
        .route(DEVICE_PATH, get(device))
        .route("/oidc/qr", get(qr_page))
        .route("/oidc/qr.svg", get(qr_svg))
        .route("/oidc/logout", get(logout))
        .route("/oidc/config", get(config))
}

#[derive(Deserialize)]
struct LoginQuery {
    handoff: Option<String>,
}

async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<LoginQuery>,
) -> Response {
    // A hand-off is signed in only from its confirmation page (which says "continue only if
    // your device shows this code"), never straight from a link someone sent: that page's
    // cookie names the code.
    if let Some(typed) = &query.handoff {
        let code = user_code::normalise(typed).unwrap_or_default();
        if cookie(&headers, CONFIRM_COOKIE).as_deref() != Some(code.as_str()) || code.is_empty() {
            return redirect(&format!(
                "{DEVICE_PATH}?user_code={}",
                user_code::display(&code)
            ));
        }
    }
    match state
        .auth
        .sso_login_url(query.handoff.as_deref(), peer.ip())
        .await
    {
        Ok((url, sign_in)) => {
            let mut response = redirect(&url);
            // The callback must come back to this browser (against login CSRF). Lax: the
            // provider's redirect back is a top-level navigation from another site.
            let cookie = format!(
                "{STATE_COOKIE}={sign_in}; Path=/oidc/callback; Max-Age={}; HttpOnly; SameSite=Lax{}",
                crate::auth::oidc::PENDING_TTL.as_secs(),
                if state.config.tls_cert.is_some() {
                    "; Secure"
                } else {
                    ""
                }
            );
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().append(header::SET_COOKIE, value);
            }
            response
        }
        Err(e) => failure(&e),
    }
}

/// The cookie that binds a sign-in's `state` to the browser that started it.
const STATE_COOKIE: &str = "pg_sso_state";

/// The cookie the hand-off's confirmation page sets: the code the person confirmed.
const CONFIRM_COOKIE: &str = "pg_sso_confirm";

/// A cookie a request carries (the last one, if several).
fn cookie(headers: &HeaderMap, wanted: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .filter(|(name, _)| *name == wanted)
        .map(|(_, value)| value.to_owned())
        .next_back()
}

async fn callback(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let query = query.unwrap_or_default();
    let cookie = cookie(&headers, STATE_COOKIE);
    match state
        .auth
        .sso_callback(&query, cookie.as_deref(), peer.ip())
        .await
    {
        Ok(CallbackDone::Portal { code }) => redirect(&format!("/?sso={code}")),
        Ok(CallbackDone::Handoff { username }) => page(
            StatusCode::OK,
            "Signed in",
            &format!(
                "<h1 id=\"done\">You are signed in on your device</h1>\
                 <p>as {}. You may close this page.</p>",
                escape(&username)
            ),
        ),
        Err(e) => failure(&e),
    }
}

#[derive(Deserialize)]
struct CodeQuery {
    user_code: Option<String>,
}

async fn device(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<CodeQuery>,
) -> Response {
    let Ok(sso) = state.auth.sso() else {
        return failure(&Error::NotFound(String::new()));
    };
    let Some(code) = query.user_code.as_deref().and_then(user_code::normalise) else {
        let again = match query.user_code {
            Some(_) => {
                "<p class=\"error\">That is not a code of this server: 8 letters, as your device shows them.</p>"
            }
            None => "",
        };
        return page(
            StatusCode::OK,
            "Sign in a device",
            &format!(
                "<h1>Sign in a device</h1>{again}\
                 <form method=\"get\" action=\"{DEVICE_PATH}\">\
                 <label>Code shown on your device <input id=\"user_code\" name=\"user_code\" \
                 autocomplete=\"off\" autocapitalize=\"characters\" autofocus></label> \
                 <button id=\"continue\" type=\"submit\">Continue</button></form>"
            ),
        );
    };
    // A code that is not a live hand-off counts against the address as a made-up token.
    if let Err(e) = state.auth.sso_check_code(&code, peer.ip()).await {
        return failure(&e);
    }
    let shown = user_code::display(&code);
    let mut response = page(
        StatusCode::OK,
        "Sign in a device",
        &format!(
            "<h1>Sign in a device</h1>\
             <p>A device asks to be signed in as you with the code</p>\
             <p class=\"code\" id=\"code\">{shown}</p>\
             <p>Continue only if your device shows this code.</p>\
             <p><a id=\"confirm\" class=\"button\" href=\"/oidc/login?handoff={code}\">Sign in with {}</a></p>",
            escape(&sso.settings.display_name)
        ),
    );
    // Strict: set by this page, sent only from this site's own link to /oidc/login.
    let confirmed = format!(
        "{CONFIRM_COOKIE}={code}; Path=/oidc/login; Max-Age={}; HttpOnly; SameSite=Strict{}",
        sso.settings.handoff.expires_in.as_secs(),
        if state.config.tls_cert.is_some() {
            "; Secure"
        } else {
            ""
        }
    );
    if let Ok(value) = HeaderValue::from_str(&confirmed) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// The link of a code as a QR code, with the code beside it.
async fn qr_page(State(state): State<AppState>, Query(query): Query<CodeQuery>) -> Response {
    let (Ok(sso), Some(code)) = (
        state.auth.sso(),
        query.user_code.as_deref().and_then(user_code::normalise),
    ) else {
        return failure(&Error::NotFound(String::new()));
    };
    let fields = sso.handoff_fields(&code);
    page(
        StatusCode::OK,
        "Sign in a device",
        &format!(
            "<h1>Sign in your device</h1>\
             <p>Scan this with your phone, or open <b>{}</b> and type the code</p>\
             <p class=\"code\">{}</p>\
             <p><img id=\"qr\" alt=\"QR code of the sign-in link\" src=\"/oidc/qr.svg?user_code={code}\" width=\"256\" height=\"256\"></p>",
            escape(&fields.verification_uri),
            fields.user_code
        ),
    )
}

async fn qr_svg(State(state): State<AppState>, Query(query): Query<CodeQuery>) -> Response {
    let (Ok(sso), Some(code)) = (
        state.auth.sso(),
        query.user_code.as_deref().and_then(user_code::normalise),
    ) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let link = sso.handoff_fields(&code).verification_uri_complete;
    let Ok(qr) = qrcode::QrCode::new(link.as_bytes()) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let svg = qr
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(256, 256)
        .build();
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        svg,
    )
        .into_response()
}

/// RP-initiated logout: to the provider's `end_session_endpoint` when it has one, back to the
/// portal; otherwise straight back.
async fn logout(State(state): State<AppState>) -> Response {
    let Ok(sso) = state.auth.sso() else {
        return redirect("/");
    };
    let back = format!("{}/", sso.public_url);
    match sso.client().await {
        Ok(client) => match client.end_session_url(None, Some(&back), None) {
            Some(url) => redirect(&url),
            None => redirect("/"),
        },
        Err(_) => failure(&Error::SsoUnavailable),
    }
}

/// What the portal's page shows: the button, and whether signing out at the provider is
/// offered (discovered lazily: false until the provider was reached once).
async fn config(State(state): State<AppState>) -> Response {
    let Ok(sso) = state.auth.sso() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    axum::Json(json!({
        "display_name": sso.settings.display_name,
        "login": "/oidc/login",
        "logout": "/oidc/logout",
    }))
    .into_response()
}

fn redirect(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// A refused or failed step, as a page: its status and message (never a secret).
fn failure(error: &Error) -> Response {
    let status = match error {
        Error::Unprocessable(_) => StatusCode::BAD_REQUEST,
        other => StatusCode::from_u16(other.code()).unwrap_or(StatusCode::BAD_REQUEST),
    };
    let message = match error {
        Error::NotFound(_) => "Single sign-on is not configured on this server.".to_owned(),
        Error::Disabled => "This account is disabled.".to_owned(),
        other => other.to_string(),
    };
    page(
        status,
        "Sign-in failed",
        &format!(
            "<h1>Sign-in failed</h1><p id=\"message\">{}</p><p><a href=\"/\">Back to the portal</a></p>",
            escape(&message)
        ),
    )
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} — poolgate</title><link rel=\"stylesheet\" href=\"/portal/style.css\">\
         </head><body><main class=\"sso\">{body}</main></body></html>"
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                 base-uri 'none'; frame-ancestors 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

/// Text for HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}
