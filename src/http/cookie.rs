//! Cookies this server sets for browsers, and reads back.

use axum::http::{HeaderMap, header};

/// A cookie's name as this server sets it: `__Host-NAME` when browsers reach it over https
/// (such a cookie is `Secure`, `Path=/`, and no sibling subdomain can set it), else `NAME`.
pub fn cookie_name(https: bool, name: &str) -> String {
    if https {
        format!("__Host-{name}")
    } else {
        name.to_owned()
    }
}

/// The value of the cookie `name` (as [`cookie_name`] names it: over https only its
/// `__Host-` form counts) a request carries; the last one, if several.
pub fn cookie<'h>(headers: &'h HeaderMap, https: bool, name: &str) -> Option<&'h str> {
    let wanted = cookie_name(https, name);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .filter(|(name, _)| *name == wanted)
        .map(|(_, value)| value)
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_https_only_the_host_prefixed_cookie_counts() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "pg_x=planted; __Host-pg_x=ours; other=1".parse().unwrap(),
        );
        assert_eq!(cookie(&headers, true, "pg_x"), Some("ours"));
        assert_eq!(cookie(&headers, false, "pg_x"), Some("planted"));
        assert_eq!(cookie(&headers, true, "nothing"), None);
    }
}
