//! The client a trusted proxy forwarded a request for (`X-Forwarded-For`), and the proxies
//! that are believed (`trusted_proxies`).

use std::net::SocketAddr;

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

use crate::domain::address::network;

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
