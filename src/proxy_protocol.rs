//! PROXY protocol v2: the binary header an L4 load balancer (HAProxy's `send-proxy-v2`, cloud
//! network balancers) writes first on every connection it opens to poolgate, naming the client
//! the connection carries. The header is parsed by the `ppp` crate; this module reads exactly
//! its bytes from the stream — never one past it, so the TLS handshake or HTTP request that
//! follows reaches its reader untouched — and says which client it names.
//!
//! Whom to believe is the server's business (`proxy_protocol` requires the peer to be in
//! `trusted_proxies`); so is the deadline (`http_header_timeout`).

use std::net::SocketAddr;

use ppp::v2::{Addresses, Command, Header, PROTOCOL_PREFIX, ParseError, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The fixed part of a v2 header: the 12-byte signature, version and command, family and
/// protocol, and the length of what follows.
const FIXED: usize = 16;

/// The longest address block and TLVs accepted after the fixed part. Addresses take at most
/// 216 bytes (two Unix paths); HAProxy's TLVs (ALPN, authority, unique id, SSL details) and
/// the cloud balancers' (an endpoint id) stay far below the rest. Larger is refused rather
/// than buffered: 64 KiB per connection would otherwise be the balancer's to ask for.
pub const MAX_PAYLOAD: usize = 4096;

/// Why a connection's opening bytes are not a PROXY v2 header poolgate accepts.
#[derive(Debug, thiserror::Error)]
pub enum BadHeader {
    #[error("closed before a complete PROXY header")]
    Closed,
    #[error("read failed before a complete PROXY header: {0}")]
    Io(std::io::Error),
    #[error(
        "a PROXY protocol v1 (text) header: poolgate reads v2 only (HAProxy: send-proxy-v2, not \
         send-proxy)"
    )]
    Version1,
    #[error("no PROXY header: the connection does not begin with the v2 signature")]
    Missing,
    #[error("an invalid PROXY v2 header: {0}")]
    Invalid(ParseError),
    #[error("a PROXY v2 header with {0} bytes of addresses and TLVs, more than {MAX_PAYLOAD}")]
    TooLong(usize),
    #[error("a PROXY v2 header naming a datagram (UDP) source for a TCP connection")]
    Datagram,
}

impl BadHeader {
    /// A short, stable label for logs.
    pub fn label(&self) -> &'static str {
        match self {
            BadHeader::Closed | BadHeader::Io(_) => "closed",
            BadHeader::Version1 => "v1",
            BadHeader::Missing => "missing",
            BadHeader::Invalid(_) | BadHeader::TooLong(_) | BadHeader::Datagram => "invalid",
        }
    }
}

/// Reads one PROXY v2 header from the start of `stream`, and nothing after it. Returns the
/// client it names: `Some(address)` for a proxied TCP connection over IPv4 or IPv6, `None`
/// when the connection is the balancer's own (the `LOCAL` command: its health checks) or the
/// header carries no IP address (family `UNSPEC` or a Unix socket) — then the connection's
/// peer is the client, as the protocol says.
///
/// Bytes that cannot begin a header are refused as soon as they are seen, without waiting for
/// the rest.
pub async fn read<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Option<SocketAddr>, BadHeader> {
    let mut buf = vec![0u8; FIXED];
    let mut have = 0;
    while have < FIXED {
        have += match stream.read(&mut buf[have..]).await {
            Ok(0) => return Err(BadHeader::Closed),
            Ok(n) => n,
            Err(e) => return Err(BadHeader::Io(e)),
        };
        let seen = &buf[..have.min(PROTOCOL_PREFIX.len())];
        if !PROTOCOL_PREFIX.starts_with(seen) {
            return Err(if buf[..have].starts_with(b"PROXY ") {
                BadHeader::Version1
            } else {
                BadHeader::Missing
            });
        }
    }
    match Header::try_from(&buf[..]) {
        Ok(header) => return said(&header),
        Err(ParseError::Partial(_, length)) if length > MAX_PAYLOAD => {
            return Err(BadHeader::TooLong(length));
        }
        Err(ParseError::Partial(_, length)) => buf.resize(FIXED + length, 0),
        Err(e) => return Err(BadHeader::Invalid(e)),
    }
    stream.read_exact(&mut buf[FIXED..]).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            BadHeader::Closed
        } else {
            BadHeader::Io(e)
        }
    })?;
    said(&Header::try_from(&buf[..]).map_err(BadHeader::Invalid)?)
}

/// The client a parsed header names (see [`read`]).
fn said(header: &Header<'_>) -> Result<Option<SocketAddr>, BadHeader> {
    if header.command == Command::Local {
        return Ok(None);
    }
    let client = match header.addresses {
        Addresses::IPv4(a) => SocketAddr::from((a.source_address, a.source_port)),
        Addresses::IPv6(a) => SocketAddr::from((a.source_address, a.source_port)),
        Addresses::Unspecified | Addresses::Unix(_) => return Ok(None),
    };
    if header.protocol == Protocol::Datagram {
        return Err(BadHeader::Datagram);
    }
    Ok(Some(client))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v2 header written out byte by byte (not with the crate that parses it).
    fn header(command: u8, family_protocol: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.push(0x20 | command);
        h.push(family_protocol);
        h.extend((payload.len() as u16).to_be_bytes());
        h.extend(payload);
        h
    }

    fn ipv4(src: [u8; 4], src_port: u16) -> Vec<u8> {
        let mut p = src.to_vec();
        p.extend([127, 0, 0, 1]);
        p.extend(src_port.to_be_bytes());
        p.extend(8080u16.to_be_bytes());
        p
    }

    /// Reads a header from `bytes` followed by `rest`, and what is left to read after it.
    async fn parse(bytes: &[u8]) -> (Result<Option<SocketAddr>, BadHeader>, Vec<u8>) {
        let mut stream = bytes;
        let said = read(&mut stream).await;
        (said, stream.to_vec())
    }

    #[tokio::test]
    async fn a_proxied_tcp4_or_tcp6_connection_names_its_client_and_leaves_the_rest() {
        let mut bytes = header(1, 0x11, &ipv4([203, 0, 113, 7], 5555));
        bytes.extend(b"GET / HTTP/1.1\r\n");
        let (said, rest) = parse(&bytes).await;
        assert_eq!(said.unwrap(), Some("203.0.113.7:5555".parse().unwrap()));
        assert_eq!(
            rest, b"GET / HTTP/1.1\r\n",
            "not a byte past the header is read"
        );

        let mut v6 = "2001:db8::7"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec();
        v6.extend(std::net::Ipv6Addr::LOCALHOST.octets());
        v6.extend(443u16.to_be_bytes());
        v6.extend(8080u16.to_be_bytes());
        let (said, _) = parse(&header(1, 0x21, &v6)).await;
        assert_eq!(said.unwrap(), Some("[2001:db8::7]:443".parse().unwrap()));
    }

    #[tokio::test]
    async fn tlvs_are_read_past_and_local_unspec_and_unix_name_the_peer() {
        // HAProxy's unique-id TLV (0x05) and a NOOP (0x04) after the addresses.
        let mut payload = ipv4([198, 51, 100, 1], 1);
        payload.extend([0x05, 0, 3, b'a', b'b', b'c', 0x04, 0, 0]);
        let mut bytes = header(1, 0x11, &payload);
        bytes.push(0x16); // a TLS ClientHello follows
        let (said, rest) = parse(&bytes).await;
        assert_eq!(said.unwrap(), Some("198.51.100.1:1".parse().unwrap()));
        assert_eq!(rest, [0x16]);
        // LOCAL (a health check): addresses, if any, are ignored.
        let (said, _) = parse(&header(0, 0x11, &ipv4([203, 0, 113, 7], 1))).await;
        assert_eq!(said.unwrap(), None);
        let (said, _) = parse(&header(0, 0x00, &[])).await;
        assert_eq!(said.unwrap(), None);
        // PROXY over UNSPEC or a Unix socket: no IP to believe.
        let (said, _) = parse(&header(1, 0x00, &[])).await;
        assert_eq!(said.unwrap(), None);
        let (said, _) = parse(&header(1, 0x31, &[0; 216])).await;
        assert_eq!(said.unwrap(), None);
    }

    #[tokio::test]
    async fn what_is_not_a_v2_header_is_refused_as_soon_as_it_is_seen() {
        // A plain request, a TLS ClientHello, a v1 text header: each shorter than the fixed
        // part would block a reader that waited for 16 bytes.
        for (bytes, label) in [
            (&b"GET /"[..], "missing"),
            (&[0x16, 0x03, 0x01][..], "missing"),
            (&b"PROXY UNKNOWN\r\n"[..], "v1"),
            (&b"PROXY TCP4 203.0.113.7 127.0.0.1 1 2\r\n"[..], "v1"),
            (&b"\r\n\r\n\0\r\nQUIX\n"[..], "missing"),
        ] {
            let (said, _) = parse(bytes).await;
            assert_eq!(said.unwrap_err().label(), label, "{bytes:?}");
        }
    }

    #[tokio::test]
    async fn truncated_malformed_and_oversized_headers_are_refused() {
        let whole = header(1, 0x11, &ipv4([203, 0, 113, 7], 1));
        for cut in [0, 5, 12, 15, 16, 20] {
            let (said, _) = parse(&whole[..cut]).await;
            assert_eq!(said.unwrap_err().label(), "closed", "cut at {cut}");
        }
        // Version 1 in the binary form, an unknown command, family and protocol.
        let mut bad = whole.clone();
        bad[12] = 0x11;
        assert_eq!(parse(&bad).await.0.unwrap_err().label(), "invalid");
        bad[12] = 0x22;
        assert_eq!(parse(&bad).await.0.unwrap_err().label(), "invalid");
        let mut bad = whole.clone();
        bad[13] = 0x41;
        assert_eq!(parse(&bad).await.0.unwrap_err().label(), "invalid");
        bad[13] = 0x13;
        assert_eq!(parse(&bad).await.0.unwrap_err().label(), "invalid");
        // A length too short for the family's addresses.
        let (said, _) = parse(&header(1, 0x11, &[0; 8])).await;
        assert!(matches!(said, Err(BadHeader::Invalid(_))), "{said:?}");
        // UDP over a TCP connection.
        let (said, _) = parse(&header(1, 0x12, &ipv4([203, 0, 113, 7], 1))).await;
        assert!(matches!(said, Err(BadHeader::Datagram)), "{said:?}");
        // More than MAX_PAYLOAD: refused from the length alone, nothing more read.
        let mut big = header(1, 0x11, &[]);
        big[14..16].copy_from_slice(&((MAX_PAYLOAD + 1) as u16).to_be_bytes());
        let (said, _) = parse(&big).await;
        assert!(matches!(said, Err(BadHeader::TooLong(n)) if n == MAX_PAYLOAD + 1));
        let (said, _) = parse(&header(1, 0x11, &vec![0; MAX_PAYLOAD])).await;
        assert_eq!(said.unwrap(), Some("0.0.0.0:0".parse().unwrap()));
    }

    proptest::proptest! {
        /// Whatever a connection opens with, the reader neither panics nor reads past the
        /// header it accepts: what follows is left for TLS or HTTP, byte for byte.
        #[test]
        fn any_bytes_are_refused_or_read_to_the_headers_end_and_no_further(
            family in proptest::sample::select(vec![0x00u8, 0x11, 0x21, 0x31, 0x12, 0x41]),
            command in 0u8..3,
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
            cut in proptest::option::of(0usize..400),
        ) {
            let mut bytes = header(command, family, &payload);
            let whole = bytes.len();
            if let Some(cut) = cut {
                bytes.truncate(cut);
            }
            bytes.extend(&tail);
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let (said, rest) = runtime.block_on(parse(&bytes));
            if said.is_ok() && cut.is_none_or(|c| c >= whole) {
                proptest::prop_assert_eq!(&rest[..], &bytes[whole..]);
            }
        }
    }

    #[tokio::test]
    async fn a_header_dripped_a_byte_at_a_time_is_read_whole() {
        let whole = header(1, 0x11, &ipv4([203, 0, 113, 7], 9));
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for b in whole {
                client.write_all(&[b]).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let said = read(&mut server).await.unwrap();
        assert_eq!(said, Some("203.0.113.7:9".parse().unwrap()));
        drop(writer.await.unwrap());
    }
}
