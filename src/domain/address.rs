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

/// A network or an address (a network of one) as settings write them: `trusted_proxies`,
/// a pool's `allow_from`. An IPv4-mapped one (`::ffff:10.0.0.0/104`, what
/// a listener on `[::]` shows) is taken as the IPv4 network it is, as peers are.
pub fn network(s: &str) -> Result<ipnet::IpNet, String> {
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

/// Serde for a list of [`network`]s.
pub fn networks<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    use serde::Deserialize;
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| network(s).map_err(serde::de::Error::custom))
        .collect()
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
