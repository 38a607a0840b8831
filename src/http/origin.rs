//! `Origin` and `Host`: parsing a web origin, the names this server answers browsers on, and
//! the check every browser's WebSocket upgrade and sign-in passes (against cross-site
//! WebSocket hijacking and DNS rebinding).

/// A web origin (`scheme://host[:port]`, RFC 6454), normalised: lower case, the port always
/// known (the scheme's default when not written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

/// Why a string is not an origin.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadOrigin(&'static str);

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// `host[:port]` → (lower-case host, port if written); IPv6 literals keep their brackets.
fn split_authority(authority: &str) -> Result<(String, Option<u16>), BadOrigin> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']').ok_or(BadOrigin("unclosed IPv6 literal"))?;
        let after = &rest[end + 1..];
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or(BadOrigin("junk after the host"))?,
            ),
        };
        (&authority[..end + 2], port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty()
        || host
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '/' | '?' | '#' | '@'))
    {
        return Err(BadOrigin("not a host"));
    }
    let port = port
        .map(|p| p.parse::<u16>().map_err(|_| BadOrigin("not a port")))
        .transpose()?;
    Ok((host.to_ascii_lowercase(), port))
}

impl Origin {
    /// Parses an `Origin` header value or a configured origin (a trailing `/` is allowed).
    pub fn parse(text: &str) -> Result<Origin, BadOrigin> {
        let text = text.trim();
        let text = text.strip_suffix('/').unwrap_or(text);
        let (scheme, authority) = text.split_once("://").ok_or(BadOrigin("no scheme://"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            return Err(BadOrigin("not a scheme"));
        }
        let (host, port) = split_authority(authority)?;
        let port = port
            .or_else(|| default_port(&scheme))
            .ok_or(BadOrigin("a port is needed for this scheme"))?;
        Ok(Origin { scheme, host, port })
    }

    /// Whether this origin names the host of a request's `Host` header (a `Host` without a
    /// port means this origin scheme's default port).
    pub fn is_host(&self, host_header: &str) -> bool {
        match split_authority(host_header.trim()) {
            Ok((host, port)) => {
                host == self.host && port.or_else(|| default_port(&self.scheme)) == Some(self.port)
            }
            Err(_) => false,
        }
    }
}

/// The host names a browser may use to reach this server (the `Host` of a request that carries
/// an `Origin`), besides IP literals and `localhost`, which are always answered: lower case,
/// without port or trailing dot. Built by `Config::browser_names`, the one place that says
/// where they come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerNames(Vec<String>);

impl ServerNames {
    pub fn new(names: impl IntoIterator<Item = String>) -> ServerNames {
        let mut names: Vec<String> = names.into_iter().map(|n| normalise_name(&n)).collect();
        names.retain(|n| !n.is_empty());
        names.sort();
        names.dedup();
        ServerNames(names)
    }

    /// The names, sorted.
    pub fn names(&self) -> &[String] {
        &self.0
    }

    /// Whether a browser may address this server as `host` (a `Host` header's host part, as
    /// `split_authority` gives it): an IP literal (v4, or v6 in brackets), `localhost`, or one
    /// of the names. A DNS-rebinding page can make a browser send any name it controls, but
    /// neither an IP literal nor `localhost` (browsers resolve it to loopback themselves).
    pub fn answers(&self, host: &str) -> bool {
        let host = normalise_name(host);
        if host.parse::<std::net::Ipv4Addr>().is_ok() || host == "localhost" {
            return true;
        }
        if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            return v6.parse::<std::net::Ipv6Addr>().is_ok();
        }
        self.0.contains(&host)
    }
}

fn normalise_name(name: &str) -> String {
    let name = name.trim().to_ascii_lowercase();
    name.strip_suffix('.').map(str::to_owned).unwrap_or(name)
}

/// This machine's names as a browser on its network may write them: the host name, its first
/// label when it has dots, and that label under `.local` (mDNS). Read once.
pub fn machine_names() -> &'static [String] {
    static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        let full = normalise_name(&gethostname::gethostname().to_string_lossy());
        if full.is_empty() || full == "localhost" {
            return Vec::new();
        }
        let short = full.split('.').next().unwrap_or(&full).to_owned();
        let mut names = vec![full.clone(), format!("{short}.local")];
        if short != full {
            names.push(short);
        }
        names
    })
}

/// A header's value for a log line: at most its first 200 bytes, lossily decoded ("" when
/// absent).
pub fn header_text(headers: &axum::http::HeaderMap, name: axum::http::HeaderName) -> String {
    headers.get(name).map_or_else(String::new, |v| {
        String::from_utf8_lossy(&v.as_bytes()[..v.len().min(200)]).into_owned()
    })
}

/// Why a browser's request was refused by [`check_origin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrowserRefusal {
    /// The `Origin` is not one allowed to use this server (cross-site).
    Origin(&'static str),
    /// The `Host` is no name this server answers browsers on (DNS rebinding).
    Host,
}

impl BrowserRefusal {
    /// What the client is told.
    pub fn message(self) -> &'static str {
        match self {
            BrowserRefusal::Origin(why) => why,
            BrowserRefusal::Host => {
                "Host not allowed: browsers may reach poolgate only by an IP address, localhost, \
                 this machine's name, a name listed in server_names or the host of an \
                 allowed_origins entry (add the name this page used to server_names)."
            }
        }
    }
}

/// Whether a browser's request may use the socket or sign-in it was sent to (the RPC socket at
/// `/`, the status socket, the REST sign-in). Requests without `Origin` come from clients that
/// are no browser (thin clients, wscat, the CLI, curl) and are let through. A browser's request
/// must pass two checks:
///
/// * its `Host` must be a name this server answers browsers on (`names`, see
///   [`ServerNames::answers`]): a page of `evil.example` whose name was rebound to this server's
///   address sends `Host: evil.example` and `Origin: http://evil.example`, which agree, so the
///   Origin check alone lets it in;
/// * its `Origin` must be one of `allowed` (`allowed_origins`), or, when that list is empty,
///   name the host the request was sent to (cross-site WebSocket hijacking: a browser opens a
///   WebSocket for any site's page, with the visitor's cookies and from the visitor's network).
///   On a plain listener (`tls` false) an `https://` Origin for that host and port is allowed
///   too: a TLS-terminating proxy in front forwards the browser's `https://` page's requests
///   over plain HTTP, and the page is still this server's own. With `tls` the Origin must be
///   `https://`: an `http://` page of the same name could have been rewritten by anyone on the
///   network path.
pub fn check_origin(
    headers: &axum::http::HeaderMap,
    allowed: &[String],
    names: &ServerNames,
    tls: bool,
) -> Result<(), BrowserRefusal> {
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else {
        return Ok(());
    };
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok());
    let host_ok = host
        .and_then(|h| split_authority(h.trim()).ok())
        .is_some_and(|(name, _)| names.answers(&name));
    if !host_ok {
        return Err(BrowserRefusal::Host);
    }
    let origin = origin
        .to_str()
        .ok()
        .and_then(|o| Origin::parse(o).ok())
        .ok_or(BrowserRefusal::Origin(
            "Origin not allowed: it is not a web origin (opaque or malformed).",
        ))?;
    let ok = if allowed.is_empty() {
        (!tls || origin.scheme == "https") && host.is_some_and(|host| origin.is_host(host))
    } else {
        allowed
            .iter()
            .filter_map(|a| Origin::parse(a).ok())
            .any(|a| a == origin)
    };
    if ok {
        Ok(())
    } else if allowed.is_empty() {
        Err(BrowserRefusal::Origin(
            "Origin not allowed: pages of another site may not open this socket \
             (allowed_origins lists the sites that may).",
        ))
    } else {
        Err(BrowserRefusal::Origin(
            "Origin not allowed: it is not in allowed_origins.",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalised_with_their_default_ports() {
        let o = Origin::parse("HTTPS://Desktops.Example.com/").unwrap();
        assert_eq!(
            o,
            Origin {
                scheme: "https".into(),
                host: "desktops.example.com".into(),
                port: 443
            }
        );
        assert_eq!(Origin::parse("http://[::1]:8080").unwrap().host, "[::1]");
        assert_eq!(Origin::parse("http://[::1]:8080").unwrap().port, 8080);
        for bad in [
            "null",
            "example.com",
            "https://",
            "https://a.example/path",
            "https://u@a.example",
            "https://a.example:99999",
            "chrome-extension://abc",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
    }

    fn browser(origin: &str, host: &str) -> axum::http::HeaderMap {
        let mut h = axum::http::HeaderMap::new();
        h.insert("origin", origin.parse().unwrap());
        h.insert("host", host.parse().unwrap());
        h
    }

    #[test]
    fn a_browser_may_name_only_an_ip_localhost_or_a_listed_name_as_host() {
        let names = ServerNames::new(["Desktops.Example.com.".to_owned()]);
        assert_eq!(names.names(), ["desktops.example.com"]);
        for host in [
            "127.0.0.1:8080",
            "10.1.2.3",
            "[::1]:8080",
            "[fe80::1]",
            "localhost:8080",
            "LOCALHOST.",
            "desktops.example.com",
            "DESKTOPS.example.com.:443",
        ] {
            let (name, _) = split_authority(host).unwrap();
            assert!(names.answers(&name), "{host}");
        }
        for host in [
            "evil.example",
            "127.0.0.1.evil.example",
            "[nope]",
            "localhost.evil",
        ] {
            let (name, _) = split_authority(host).unwrap();
            assert!(!names.answers(&name), "{host}");
        }
        // A rebound page: its Origin and Host agree, and it is still refused.
        let rebound = browser("http://evil.example:8080", "evil.example:8080");
        assert_eq!(
            check_origin(&rebound, &[], &names, false),
            Err(BrowserRefusal::Host)
        );
        let own = browser(
            "http://desktops.example.com:8080",
            "desktops.example.com:8080",
        );
        assert_eq!(check_origin(&own, &[], &names, false), Ok(()));
        // No Origin: no browser, no check.
        let mut curl = axum::http::HeaderMap::new();
        curl.insert("host", "evil.example".parse().unwrap());
        assert_eq!(check_origin(&curl, &[], &names, false), Ok(()));
    }

    #[test]
    fn an_https_page_may_use_a_plain_listener_but_an_http_page_not_a_tls_one() {
        let names = ServerNames::default();
        let behind_proxy = browser("https://10.0.0.5", "10.0.0.5");
        assert_eq!(check_origin(&behind_proxy, &[], &names, false), Ok(()));
        assert_eq!(check_origin(&behind_proxy, &[], &names, true), Ok(()));
        let plain_page = browser("http://10.0.0.5", "10.0.0.5");
        assert_eq!(check_origin(&plain_page, &[], &names, false), Ok(()));
        assert!(matches!(
            check_origin(&plain_page, &[], &names, true),
            Err(BrowserRefusal::Origin(_))
        ));
    }

    #[test]
    fn an_origin_matches_its_own_host_header_only() {
        let o = Origin::parse("https://broker.example").unwrap();
        assert!(o.is_host("broker.example"));
        assert!(o.is_host("Broker.Example:443"));
        assert!(!o.is_host("broker.example:8443"));
        assert!(!o.is_host("evil.example"));
        let local = Origin::parse("http://127.0.0.1:8080").unwrap();
        assert!(local.is_host("127.0.0.1:8080"));
        assert!(!local.is_host("127.0.0.1"));
        assert!(
            Origin::parse("http://[::1]:8080")
                .unwrap()
                .is_host("[::1]:8080")
        );
    }
}
