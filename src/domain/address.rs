//! Client addresses as the caps count them (connections per address, the sign-in lockout).
//!
//! IPv6 clients are counted per /64: one host is given a whole /64 and can pick any address in
//! it, so counting single addresses would not limit anyone. IPv4-mapped IPv6 addresses (a
//! dual-stack listener on `[::]`) count as the IPv4 address they are.

use std::net::{IpAddr, Ipv6Addr};

/// Whether a URL's host (`scheme://host[:port]/…`) is a loopback address or `localhost`:
/// where plain-text traffic never leaves the machine.
pub fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        host_port.rsplit_once(':').map_or(host_port, |(h, _)| h)
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The key a client is counted under: its IPv4 address, or its IPv6 /64.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_are_told_apart() {
        for url in [
            "ldap://127.0.0.1:389",
            "ldap://localhost",
            "ldap://[::1]:3389/",
            "http://127.3.4.5/guacamole/",
            "http://user@localhost:8080",
        ] {
            assert!(is_loopback_url(url), "{url}");
        }
        for url in [
            "ldap://dc1.example.org",
            "ldap://10.0.0.1:389",
            "ldap://[2001:db8::1]",
            "http://127.0.0.1.example.org/",
        ] {
            assert!(!is_loopback_url(url), "{url}");
        }
    }
}
