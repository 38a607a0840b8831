//! The web portal: a page a person opens in a browser to sign in, pick a pool and download
//! the launcher of their desktop. It is a client of poolgate's own WebSocket protocol (the
//! page's script speaks the envelopes of `protocol/`), so the server side is only the three
//! embedded files and the headers that lock the page down.
//!
//! A plain `GET /` whose `Accept` names `text/html` (what a browser sends) gets the page;
//! WebSocket upgrades on `/` are unaffected, and other plain requests still get the 426 that
//! points at the protocol. Nothing is fetched from elsewhere, at build or at run time.

use crate::auth::tokens::TagKey;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../assets/portal/index.html");
const APP: &str = include_str!("../assets/portal/app.js");
const STYLE: &str = include_str!("../assets/portal/style.css");

/// Whether a plain request on `/` comes from a browser that wants a page.
pub fn wants_page(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/html"))
}

/// The portal's page. A browser without a valid device cookie is given one: a random name for
/// this browser, tagged by this server, that its WebSocket upgrades carry (`SameSite=Strict`:
/// never from another site's page; `__Host-` and `Secure` under TLS, so that no sibling
/// subdomain can plant one), so that a sign-in from a browser that signed in as this user
/// before is not queued behind strangers' guesses nor locked by its neighbours' (see
/// src/auth/lockout.rs). It proves nothing by itself and opens nothing: only a right
/// password, code or token signs in.
pub fn index(headers: &HeaderMap, devices: &TagKey, tls: bool) -> Response {
    let mut page = secured(INDEX, "text/html; charset=utf-8", headers);
    if device(headers, devices).is_none() {
        let cookie = if tls {
            format!(
                "__Host-{DEVICE_COOKIE}={}; Path=/; Max-Age={DEVICE_COOKIE_MAX_AGE}; Secure; \
                 HttpOnly; SameSite=Strict",
                devices.new_device_cookie()
            )
        } else {
            format!(
                "{DEVICE_COOKIE}={}; Path=/; Max-Age={DEVICE_COOKIE_MAX_AGE}; HttpOnly; \
                 SameSite=Strict",
                devices.new_device_cookie()
            )
        };
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            page.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    page
}

/// The portal's device cookie (`__Host-pg_device` under TLS): random and tagged by the
/// server's key (src/auth/tokens.rs).
const DEVICE_COOKIE: &str = "pg_device";

/// A year, renewed by nothing: a browser that keeps it is known for the user for the
/// lockout's `lockout_known_for` after each sign-in.
const DEVICE_COOKIE_MAX_AGE: u64 = 365 * 24 * 3600;

/// The browser a request comes from, as named by the portal's device cookie (its digest;
/// `None` without one, or with one this server did not hand out).
pub fn device(headers: &HeaderMap, devices: &TagKey) -> Option<crate::auth::lockout::DeviceId> {
    use sha2::Digest;
    let host_cookie = format!("__Host-{DEVICE_COOKIE}");
    let value = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .filter(|(name, _)| *name == DEVICE_COOKIE || *name == host_cookie)
        .map(|(_, value)| value)
        .find(|value| devices.device_cookie_ok(value))?;
    let digest = sha2::Sha256::digest(value.as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    Some(id)
}

/// `GET /portal/{asset}`: the page's script and style sheet.
pub async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match name.as_str() {
        "app.js" => secured(APP, "text/javascript; charset=utf-8", &headers),
        "style.css" => secured(STYLE, "text/css; charset=utf-8", &headers),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The Content-Security-Policy of every portal response: scripts, styles and images from this
/// server only, no inline script or style, no framing, no form posts, and the WebSocket back
/// to the host the page was loaded from.
pub fn content_security_policy(headers: &HeaderMap) -> String {
    // `'self'` covers ws:/wss: to the same host in current browsers; the explicit sources are
    // for older ones. The host is the request's own, used only if it looks like a host.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        });
    let connect = match host {
        Some(h) => format!("'self' ws://{h} wss://{h}"),
        None => "'self'".to_owned(),
    };
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

fn secured(body: &'static str, content_type: &'static str, headers: &HeaderMap) -> Response {
    let csp = HeaderValue::from_str(&content_security_policy(headers))
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"));
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_SECURITY_POLICY, csp),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::HeaderName::from_static("cross-origin-opener-policy"),
                HeaderValue::from_static("same-origin"),
            ),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_nothing_inline_and_no_framing() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        let csp = content_security_policy(&headers);
        assert!(csp.contains("script-src 'self';") && csp.contains("style-src 'self';"));
        assert!(!csp.contains("unsafe-inline") && csp.contains("frame-ancestors 'none'"));
        assert!(csp.contains("connect-src 'self' ws://127.0.0.1:8080 wss://127.0.0.1:8080;"));
        headers.insert(header::HOST, HeaderValue::from_static("evil; script-src *"));
        assert!(content_security_policy(&headers).contains("connect-src 'self';"));
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        for page in [INDEX] {
            assert!(
                !page.contains("<style") && !page.contains("style="),
                "inline style"
            );
            for script in page.split("<script").skip(1) {
                let tag = &script[..script.find('>').unwrap()];
                assert!(tag.contains("src="), "inline script: <script{tag}>");
            }
            assert!(
                !page.contains(" on") || !page.contains("onclick="),
                "inline handler"
            );
        }
    }
}
