//! The browser's side of single sign-on (`[oidc]`): where the portal's button leads, where the
//! provider sends the browser back, and the hand-off pages a person opens for a thin client.
//!
//! - `GET /oidc/login`: the portal's sign-in, to the provider (303).
//! - `GET /oidc/callback`: back from it. For the portal, a 303 to `/?sso=1` with a one-time
//!   code in an HttpOnly cookie (256 random bits, exchanged once by the page's socket with
//!   `auth_sso_code`, whose upgrade carries the cookie; gone after 60 s): never a token, and
//!   not in a URL — the code only works from the browser that came back from the provider,
//!   so a link with someone else's sign-in cannot sign another browser in (login CSRF). For
//!   a hand-off, the page "You are signed in on your device".
//! - `GET /oidc/device[?user_code=…]`: type the code a thin client shows, or see the one its
//!   link holds with where and when the device asked; `POST /oidc/device` (the page's
//!   "Continue" button: a form with a token of this browser's, from this site only) goes on to
//!   the provider, which is asked for a fresh sign-in (`prompt=login`). A link can never
//!   sign a device in by itself (RFC 8628 §5.4): `GET /oidc/login?handoff=` leads to the
//!   confirmation page.
//! - `GET /oidc/qr?user_code=…` and `/oidc/qr.svg?user_code=…`: the link of a code as a QR
//!   code, for a phone.
//! - `GET /oidc/logout`: on to the provider's `end_session_endpoint` (RP-initiated logout),
//!   back to the portal; the portal's own sign-out ends the poolgate session first.
//! - `GET /oidc/config`: what the portal's page needs to show the button.
//!
//! Every page is plain HTML without script, under a Content-Security-Policy that allows
//! nothing but this server's style sheet and images. A provider fault is a 503 page (and
//! `/healthz` says degraded), within `oidc.timeout`. Cookies are `__Host-` and `Secure` when
//! browsers reach this server over https (`public_url`, or `tls_cert`), so that no sibling
//! subdomain can set them.

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
        .route(DEVICE_PATH, get(device).post(confirm))
        .route("/oidc/qr", get(qr_page))
        .route("/oidc/qr.svg", get(qr_svg))
        .route("/oidc/logout", get(logout))
        .route("/oidc/config", get(config))
}

#[derive(Deserialize)]
struct LoginQuery {
    handoff: Option<String>,
}

/// The portal's sign-in. A hand-off is signed in only from its confirmation page (which says
/// "continue only if your device shows this code", and where the device asked from), never
/// straight from a link someone sent.
async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<LoginQuery>,
) -> Response {
    if let Some(refused) = not_a_page_load(&headers) {
        return refused;
    }
    if let Some(typed) = &query.handoff {
        let code = user_code::normalise(typed).unwrap_or_default();
        return redirect(&format!(
            "{DEVICE_PATH}?user_code={}",
            user_code::display(&code)
        ));
    }
    to_provider(&state, None, peer).await
}

/// On to the provider for a new sign-in (a hand-off's, or the portal's), with the cookie
/// that binds its `state` to this browser.
async fn to_provider(state: &AppState, handoff: Option<&str>, peer: SocketAddr) -> Response {
    match state.auth.sso_login_url(handoff, peer.ip()).await {
        Ok((url, sign_in)) => {
            let mut response = redirect(&url);
            // The callback must come back to this browser (against login CSRF). Lax: the
            // provider's redirect back is a top-level navigation from another site.
            let max_age = crate::auth::oidc::PENDING_TTL.as_secs();
            set_cookie(&mut response, state, STATE_COOKIE, &sign_in, max_age, "Lax");
            response
        }
        Err(e) => failure(&e),
    }
}

/// A request for one of these pages that a browser did not make to show it (an image, a
/// script, a frame another site's page asked for: `Sec-Fetch-Dest` says so) is refused before
/// anything is counted: a page could otherwise spend the single sign-on count of every
/// visitor's address with a hundred `<img>` tags. Clients that send no such header (not a
/// browser, or an old one) are served.
fn not_a_page_load(headers: &HeaderMap) -> Option<Response> {
    let dest = headers.get("sec-fetch-dest")?.to_str().ok()?;
    if dest == "document" {
        return None;
    }
    Some(
        (
            StatusCode::BAD_REQUEST,
            "poolgate: open this address in the browser itself (not as an image, script or \
             frame).\n",
        )
            .into_response(),
    )
}

/// The cookie that binds a sign-in's `state` to the browser that started it.
const STATE_COOKIE: &str = "pg_sso_state";

/// The cookie of the hand-off's confirmation form: a random token the form repeats.
const CONFIRM_COOKIE: &str = "pg_sso_confirm";

/// Sets (a `max_age` of 0: removes) one of single sign-on's cookies: HttpOnly, Path=/,
/// `__Host-` and `Secure` over https.
fn set_cookie(
    response: &mut Response,
    state: &AppState,
    name: &str,
    value: &str,
    max_age: u64,
    same_site: &str,
) {
    let https = state.config.https_for_browsers();
    let cookie = format!(
        "{}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite={same_site}{}",
        crate::http::cookie_name(https, name),
        if https { "; Secure" } else { "" }
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// One of single sign-on's cookies as a request carries it.
fn cookie(state: &AppState, headers: &HeaderMap, name: &str) -> Option<String> {
    crate::http::cookie(headers, state.config.https_for_browsers(), name).map(str::to_owned)
}

async fn callback(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if let Some(refused) = not_a_page_load(&headers) {
        return refused;
    }
    let query = query.unwrap_or_default();
    let browser_state = cookie(&state, &headers, STATE_COOKIE);
    let mut response = match state
        .auth
        .sso_callback(&query, browser_state.as_deref(), peer.ip())
        .await
    {
        Ok(CallbackDone::Portal { code }) => {
            let mut response = redirect("/?sso=1");
            let max_age = crate::auth::sso::PORTAL_CODE_TTL.as_secs();
            // Strict: sent by this site's own page (its socket), never from another site.
            set_cookie(
                &mut response,
                &state,
                crate::auth::sso::PORTAL_CODE_COOKIE,
                &code,
                max_age,
                "Strict",
            );
            response
        }
        Ok(CallbackDone::Handoff { username, device }) => page(
            StatusCode::OK,
            "Signed in",
            &format!(
                "<h1 id=\"done\">You are signed in on your device</h1>\
                 <p>as {} (the device at {}). You may close this page.</p>",
                escape(&username),
                escape(&device)
            ),
        ),
        Err(e) => failure(&e),
    };
    // The sign-in's `state` is used (or refused): its cookie goes.
    set_cookie(&mut response, &state, STATE_COOKIE, "", 0, "Lax");
    response
}

#[derive(Deserialize)]
struct CodeQuery {
    user_code: Option<String>,
}

async fn device(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
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
    if let Some(refused) = not_a_page_load(&headers) {
        return refused;
    }
    // A code that is not a live hand-off counts against the address's single sign-ons.
    let seen = match state.auth.sso_check_code(&code, peer.ip()).await {
        Ok(seen) => seen,
        Err(e) => return failure(&e),
    };
    let shown = user_code::display(&code);
    // The form's token: this browser's cookie, repeated by the form (another site can
    // neither read nor set it).
    let token = cookie(&state, &headers, CONFIRM_COOKIE)
        .filter(|t| t.len() == 43)
        .unwrap_or_else(crate::auth::sso::new_portal_code);
    let asked = chrono::DateTime::from_timestamp_millis(seen.asked_ms as i64)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default();
    let mut response = page(
        StatusCode::OK,
        "Sign in a device",
        &format!(
            "<h1>Sign in a device</h1>\
             <p>A device asks to be signed in as you with the code</p>\
             <p class=\"code\" id=\"code\">{shown}</p>\
             <p id=\"asked\">It asked from the address <b>{}</b> at {asked}.</p>\
             <p>Continue only if you started this on your own device and it shows this code. \
             If someone sent you this link, close this page.</p>\
             <form method=\"post\" action=\"{DEVICE_PATH}\">\
             <input type=\"hidden\" name=\"user_code\" value=\"{code}\">\
             <input type=\"hidden\" name=\"token\" value=\"{token}\">\
             <button id=\"confirm\" type=\"submit\">Sign in with {}</button></form>",
            escape(&seen.from.to_string()),
            escape(&sso.settings.display_name)
        ),
    );
    let max_age = sso.settings.handoff.expires_in.as_secs();
    set_cookie(
        &mut response,
        &state,
        CONFIRM_COOKIE,
        &token,
        max_age,
        "Strict",
    );
    let headers = response.headers_mut();
    // The form's POST must carry this page's Origin (under `no-referrer` browsers send
    // `Origin: null`, which `confirm` refuses).
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    // The form's answer is a redirect to the provider, whose sign-in may pass through other
    // origins (a federated provider): browsers check `form-action` along the whole chain,
    // so this page sets none (it has no other form, and runs no script).
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DEVICE_POLICY),
    );
    response
}

#[derive(Deserialize)]
struct Confirmation {
    user_code: String,
    token: String,
}

/// `POST /oidc/device`: the person confirmed the code; on to the provider. Only from this
/// server's own confirmation page: the form's token must be this browser's cookie, and a
/// browser's request from another site is refused.
async fn confirm(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<Confirmation>,
) -> Response {
    use subtle::ConstantTimeEq;
    let cross_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "cross-site" || v == "same-site");
    let ours = cookie(&state, &headers, CONFIRM_COOKIE).is_some_and(|c| {
        !form.token.is_empty() && bool::from(c.as_bytes().ct_eq(form.token.as_bytes()))
    });
    if cross_site || !ours || state.config.check_browser(&headers).is_err() {
        crate::warn_refusal!(%peer, "a hand-off confirmation not from this server's own page was refused (at most one line per 10 s, with the count)");
        let code = user_code::normalise(&form.user_code).unwrap_or_default();
        return redirect(&format!(
            "{DEVICE_PATH}?user_code={}",
            user_code::display(&code)
        ));
    }
    to_provider(&state, Some(&form.user_code), peer).await
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

/// The pages' Content-Security-Policy: nothing but this server's style sheet and images.
const PAGE_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
                           form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The hand-off confirmation page's policy: [`PAGE_POLICY`] without `form-action` (its form
/// leads on to the provider, through whichever origins the provider's sign-in takes).
const DEVICE_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
                             base-uri 'none'; frame-ancestors 'none'";

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
            (header::CONTENT_SECURITY_POLICY, PAGE_POLICY),
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
