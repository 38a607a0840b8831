//! HTTP plumbing below the router, shared by the server (which installs it) and the handlers
//! (which recognise what it reports): the request-body deadline, the stream that carries its
//! admission slot, `Origin` parsing and the check every WebSocket upgrade makes, and the client a
//! trusted proxy forwarded a request for (`X-Forwarded-For`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A request body that did not arrive within `http_header_timeout` after its headers.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {} s", .0.as_secs_f64())]
pub struct BodyTimeout(pub Duration);

impl BodyTimeout {
    /// The timeout, if `err` (or anything in its chain of causes) is one.
    pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyTimeout> {
        let mut next = Some(err);
        while let Some(e) = next {
            if let Some(found) = e.downcast_ref::<BodyTimeout>() {
                return Some(found);
            }
            next = e.source();
        }
        None
    }
}

/// A body that fails with [`BodyTimeout`] once its deadline passes: without it, a client that
/// sends headers and then drips (or withholds) the body holds its connection for as long as
/// it likes. The timer is only created if the body is not already there when first read.
pub struct DeadlineBody<B> {
    inner: B,
    deadline: Instant,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<B> DeadlineBody<B> {
    pub fn new(inner: B, timeout: Duration) -> Self {
        DeadlineBody {
            inner,
            deadline: Instant::now() + timeout,
            timeout,
            sleep: None,
        }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A stream that holds something (the connection's admission slot) for exactly as long as
/// the stream itself lives: through the TLS layer, hyper, and an upgrade to a WebSocket,
/// which all take the stream by value.
pub struct Holding<S, H> {
    stream: S,
    _held: H,
}

impl<S, H> Holding<S, H> {
    pub fn new(stream: S, held: H) -> Self {
        Holding {
            stream,
            _held: held,
        }
    }
}

impl<S: AsyncRead + Unpin, H: Unpin> AsyncRead for Holding<S, H> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin, H: Unpin> AsyncWrite for Holding<S, H> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

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

/// The proxies whose `X-Forwarded-For` is believed (`trusted_proxies`): networks in CIDR form
/// (`10.0.0.0/8`, `fd00::/8`) or single addresses. Empty (the default): no header is believed,
/// and a client is the address its TCP connection comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<ipnet::IpNet>);

impl std::str::FromStr for TrustedProxies {
    type Err = String;

    /// One network or address (for tests and the command line); the config takes a list.
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(TrustedProxies(vec![network(s)?]))
    }
}

/// A network or address of `trusted_proxies`. An IPv4-mapped one (`::ffff:10.0.0.0/104`, what
/// a listener on `[::]` shows) is taken as the IPv4 network it is, as peers are.
fn network(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    let net = s
        .parse::<ipnet::IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is neither an address nor a network (10.0.0.0/8)"))?;
    if let ipnet::IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && v6.prefix_len() >= 96
    {
        return Ok(ipnet::IpNet::V4(
            ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).expect("a prefix of at most 32"),
        ));
    }
    Ok(net)
}

impl<'de> serde::Deserialize<'de> for TrustedProxies {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entries = Vec::<String>::deserialize(d)?;
        entries
            .iter()
            .map(|e| network(e).map_err(serde::de::Error::custom))
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }
}

impl TrustedProxies {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` (IPv4-mapped as its IPv4 address) is in one of the networks.
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The entries wider than a /24 (IPv4) or a /64 (IPv6): networks that clients are likely
    /// to share with the proxies, and every client in one is believed about its address.
    pub fn broad(&self) -> impl Iterator<Item = &ipnet::IpNet> {
        self.0.iter().filter(|n| match n {
            ipnet::IpNet::V4(n) => n.prefix_len() < 24,
            ipnet::IpNet::V6(n) => n.prefix_len() < 64,
        })
    }

    /// The client a request comes from. When the connection's peer is a trusted proxy, it is
    /// the nearest address of `X-Forwarded-For` (every such header, in order, read from the
    /// right: each proxy appends the address it was reached from) that is not a trusted proxy
    /// itself — the leftmost when all are. Anything left of it is the client's own say and is
    /// never believed. Without the header, or with an entry that is not an address where
    /// one is needed, it is the peer (the proxy): never a made-up address.
    pub fn client(&self, peer: SocketAddr, headers: &axum::http::HeaderMap) -> SocketAddr {
        if self.0.is_empty() || !self.trusts(peer.ip()) {
            return peer;
        }
        // Bytes, not text: a header the client began may hold anything, and only the entries
        // read (from the right) need to be addresses.
        let mut entries: Vec<&[u8]> = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            entries.extend(
                value
                    .as_bytes()
                    .split(|b| *b == b',')
                    .map(|e| e.trim_ascii())
                    .filter(|e| !e.is_empty()),
            );
        }
        let mut client = peer;
        for entry in entries.iter().rev() {
            let Some(addr) = std::str::from_utf8(entry).ok().and_then(forwarded_address) else {
                return peer;
            };
            client = addr;
            if !self.trusts(addr.ip()) {
                break;
            }
        }
        client
    }
}

/// An `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:5678`
/// (some proxies add the port). Without a port, port 0.
fn forwarded_address(entry: &str) -> Option<SocketAddr> {
    entry
        .parse::<SocketAddr>()
        .ok()
        .or_else(|| {
            let bare = entry.strip_prefix('[')?.strip_suffix(']')?;
            Some(SocketAddr::new(bare.parse().ok()?, 0))
        })
        .or_else(|| Some(SocketAddr::new(entry.parse().ok()?, 0)))
}

#[cfg(test)]
mod forwarded_tests {
    use super::*;

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies(list.iter().map(|s| network(s).unwrap()).collect())
    }

    fn headers(values: &[&str]) -> axum::http::HeaderMap {
        let mut h = axum::http::HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn client(trusted: &[&str], peer: &str, values: &[&str]) -> String {
        proxies(trusted)
            .client(peer.parse().unwrap(), &headers(values))
            .to_string()
    }

    #[test]
    fn only_a_trusted_peers_header_is_believed() {
        // No proxies trusted: the header is anyone's say.
        assert_eq!(
            client(&[], "10.0.0.5:4000", &["203.0.113.7"]),
            "10.0.0.5:4000"
        );
        // A peer outside the trusted networks: the same.
        assert_eq!(
            client(&["10.0.0.0/8"], "192.0.2.1:4000", &["203.0.113.7"]),
            "192.0.2.1:4000"
        );
        assert_eq!(
            client(&["10.0.0.0/8"], "10.0.0.5:4000", &["203.0.113.7"]),
            "203.0.113.7:0"
        );
        // Trusted, but no header: the proxy itself.
        assert_eq!(client(&["10.0.0.5"], "10.0.0.5:4000", &[]), "10.0.0.5:4000");
    }

    #[test]
    fn the_nearest_untrusted_hop_is_the_client_and_what_it_says_is_ignored() {
        let trusted = ["10.0.0.0/8", "fd00::/8"];
        // The client wrote "1.1.1.1" itself; the proxy appended where it came from.
        assert_eq!(
            client(&trusted, "10.0.0.5:1", &["1.1.1.1, 203.0.113.7"]),
            "203.0.113.7:0"
        );
        // Two proxies in a row, across two header lines.
        assert_eq!(
            client(
                &trusted,
                "10.0.0.5:1",
                &["1.1.1.1, 203.0.113.7", "10.1.2.3"]
            ),
            "203.0.113.7:0"
        );
        // Every hop trusted: the leftmost.
        assert_eq!(
            client(&trusted, "10.0.0.5:1", &["10.9.9.9, 10.1.2.3"]),
            "10.9.9.9:0"
        );
        // Ports and IPv6, bracketed or not.
        assert_eq!(
            client(&trusted, "10.0.0.5:1", &["203.0.113.7:5678"]),
            "203.0.113.7:5678"
        );
        assert_eq!(
            client(&trusted, "[fd00::1]:1", &["2001:db8::7"]),
            "[2001:db8::7]:0"
        );
        assert_eq!(
            client(&trusted, "10.0.0.5:1", &["[2001:db8::7]:80"]),
            "[2001:db8::7]:80"
        );
        assert_eq!(
            client(&trusted, "10.0.0.5:1", &["[2001:db8::7]"]),
            "[2001:db8::7]:0"
        );
        // An IPv4-mapped peer counts as its IPv4 address.
        assert_eq!(
            client(&trusted, "[::ffff:10.0.0.5]:1", &["203.0.113.7"]),
            "203.0.113.7:0"
        );
    }

    #[test]
    fn an_entry_that_is_not_an_address_leaves_the_proxy() {
        let trusted = ["10.0.0.0/8"];
        assert_eq!(client(&trusted, "10.0.0.5:1", &["unknown"]), "10.0.0.5:1");
        // Garbage left of the client's hop is never read.
        assert_eq!(
            client(&trusted, "10.0.0.5:1", &["not an address, 203.0.113.7"]),
            "203.0.113.7:0"
        );
        // Garbage where a hop is needed (behind a trusted one): the peer.
        assert_eq!(
            client(&trusted, "10.0.0.5:1", &["junk, 10.1.1.1"]),
            "10.0.0.5:1"
        );
        // Bytes that are not text, left of the client's hop: never read either.
        let mut h = axum::http::HeaderMap::new();
        h.append(
            "x-forwarded-for",
            axum::http::HeaderValue::from_bytes(b"\xff\xfe, 203.0.113.7").unwrap(),
        );
        assert_eq!(
            proxies(&trusted)
                .client("10.0.0.5:1".parse().unwrap(), &h)
                .to_string(),
            "203.0.113.7:0"
        );
    }

    #[test]
    fn an_ipv4_mapped_proxy_network_is_its_ipv4_network() {
        assert_eq!(
            network("::ffff:127.0.0.1").unwrap().to_string(),
            "127.0.0.1/32"
        );
        assert_eq!(
            network("::ffff:10.0.0.0/104").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            client(&["::ffff:10.0.0.0/104"], "10.1.2.3:1", &["203.0.113.7"]),
            "203.0.113.7:0"
        );
        assert_eq!(
            client(
                &["::ffff:10.0.0.5"],
                "[::ffff:10.0.0.5]:1",
                &["203.0.113.7"]
            ),
            "203.0.113.7:0"
        );
    }

    #[test]
    fn networks_wider_than_a_24_or_a_64_are_broad() {
        let list = proxies(&[
            "10.0.0.0/8",
            "10.1.2.0/24",
            "10.1.2.3",
            "192.168.0.0/23",
            "fd00::/8",
            "2001:db8:1:2::/64",
            "2001:db8::/63",
            "::ffff:10.0.0.0/104",
        ]);
        let broad: Vec<String> = list.broad().map(|n| n.to_string()).collect();
        assert_eq!(
            broad,
            [
                "10.0.0.0/8",
                "192.168.0.0/23",
                "fd00::/8",
                "2001:db8::/63",
                "10.0.0.0/8"
            ]
        );
    }

    #[test]
    fn networks_and_addresses_parse_and_bad_ones_are_named() {
        assert!(network("10.0.0.0/8").is_ok());
        assert!(network("10.1.2.3/8").is_ok(), "host bits are dropped");
        assert!(network("::1").is_ok());
        assert!(network(" 192.0.2.1 ").is_ok());
        let err = network("10.0.0.0/33").unwrap_err();
        assert!(err.contains("\"10.0.0.0/33\""), "{err}");
        assert!(network("proxy.example").is_err());
    }
}
