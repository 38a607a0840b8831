//! Client addresses as the caps count them (connections per address, the sign-in lockout).
//!
//! IPv6 clients are counted per /64: one host is given a whole /64 and can pick any address in
//! it, so counting single addresses would not limit anyone. IPv4-mapped IPv6 addresses (a
//! dual-stack listener on `[::]`) count as the IPv4 address they are.

use std::net::{IpAddr, Ipv6Addr};

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
