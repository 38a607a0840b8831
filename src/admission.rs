//! Who may hold a connection: a cap on every accepted connection (plain HTTP, TLS handshakes
//! in progress, keep-alive, upgraded WebSockets alike) and a cap per client address, taken at
//! `accept` before a single byte is read, so neither a flood of silent sockets nor one busy
//! address can take the slots everybody else needs.
//!
//! Behind an L4 balancer speaking the PROXY protocol the client's address is only known once
//! its header is read: such a connection takes its place in the total at accept
//! ([`Admission::admit_unattributed`]) and is counted against its client's address when the
//! header has named it ([`Slot::attribute`]).
//!
//! IPv6 clients are counted per /64: one host is given a whole /64 and can pick any address in
//! it, so counting single addresses would not limit anyone. IPv4-mapped IPv6 addresses (a
//! dual-stack listener on `[::]`) count as the IPv4 address they are.
//!
//! Refusals are logged at a bounded rate with a count (`telemetry::RateLimitedLog`): a flood of refused
//! connections must not become a flood of log lines.

use std::collections::HashMap;
use std::net::IpAddr;

use std::sync::{Arc, Mutex};

use crate::domain::address_key;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every slot of `max_connections` is taken.
    Full { limit: usize },
    /// The client's address (or IPv6 /64) holds `max_connections_per_address` already.
    PerAddress { limit: usize },
}

impl Refusal {
    /// A short, stable label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Full { .. } => "max_connections",
            Refusal::PerAddress { .. } => "max_connections_per_address",
        }
    }

    /// A complete HTTP/1.1 response saying why, written before the request is read: 503 when
    /// the server is full (it is the server's state, try again shortly), 429 when this client
    /// holds its share (it is the client's doing).
    pub fn http_response(self) -> String {
        let (status, body) = match self {
            Refusal::Full { limit } => (
                "503 Service Unavailable",
                format!(
                    "poolgate: too many connections (max_connections = {limit}), try again \
                     shortly\n"
                ),
            ),
            Refusal::PerAddress { limit } => (
                "429 Too Many Requests",
                format!(
                    "poolgate: too many connections from your address (max_connections_per_address \
                     = {limit}); close some and try again\n"
                ),
            ),
        };
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: 5\r\n\
             connection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// The two caps and what is held against them.
pub struct Admission {
    max_total: usize,
    max_per_address: usize,
    counts: Mutex<Counts>,
}

impl Admission {
    pub fn new(max_total: usize, max_per_address: usize) -> Arc<Self> {
        Arc::new(Admission {
            max_total,
            max_per_address,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Takes a slot for a connection from `ip`; it is given back when the [`Slot`] drops.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let key = address_key(ip);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.total >= self.max_total {
            return Err(Refusal::Full {
                limit: self.max_total,
            });
        }
        let held = counts.per_address.entry(key).or_insert(0);
        if *held >= self.max_per_address {
            return Err(Refusal::PerAddress {
                limit: self.max_per_address,
            });
        }
        *held += 1;
        counts.total += 1;
        Ok(Slot {
            admission: self.clone(),
            key: Some(key),
        })
    }

    /// Takes a slot in the total only, for a connection whose client is not known yet (a
    /// balancer's, before its PROXY header); [`Slot::attribute`] counts it against its client
    /// once known.
    pub fn admit_unattributed(self: &Arc<Self>) -> Result<Slot, Refusal> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.total >= self.max_total {
            return Err(Refusal::Full {
                limit: self.max_total,
            });
        }
        counts.total += 1;
        Ok(Slot {
            admission: self.clone(),
            key: None,
        })
    }

    /// Connections held now.
    pub fn open(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// One admitted connection; dropping it frees the slot.
pub struct Slot {
    admission: Arc<Admission>,
    /// The address (or IPv6 /64) it is counted against; none while its client is unknown.
    key: Option<IpAddr>,
}

impl Slot {
    /// Counts an unattributed slot against `ip`'s share, or refuses when that share is
    /// taken (the slot is then still held in the total until dropped). A slot that is already
    /// attributed stays with its address.
    pub fn attribute(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        if self.key.is_some() {
            return Ok(());
        }
        let key = address_key(ip);
        let admission = &self.admission;
        let mut counts = admission.counts.lock().unwrap_or_else(|e| e.into_inner());
        let held = counts.per_address.entry(key).or_insert(0);
        if *held >= admission.max_per_address {
            return Err(Refusal::PerAddress {
                limit: admission.max_per_address,
            });
        }
        *held += 1;
        self.key = Some(key);
        Ok(())
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("key", &self.key).finish()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self
            .admission
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        counts.total -= 1;
        if let Some(key) = self.key
            && let Some(held) = counts.per_address.get_mut(&key)
        {
            *held -= 1;
            if *held == 0 {
                counts.per_address.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        assert_eq!(address_key(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn slots_are_capped_in_total_and_per_address_and_come_back_on_drop() {
        let admission = Admission::new(3, 2);
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let two: IpAddr = "192.0.2.2".parse().unwrap();
        let a = admission.admit(one).unwrap();
        let _b = admission.admit(one).unwrap();
        assert_eq!(
            admission.admit(one).unwrap_err(),
            Refusal::PerAddress { limit: 2 }
        );
        let _c = admission.admit(two).unwrap();
        assert_eq!(
            admission.admit(two).unwrap_err(),
            Refusal::Full { limit: 3 }
        );
        drop(a);
        assert_eq!(admission.open(), 2);
        let _d = admission.admit(one).unwrap();
        assert_eq!(admission.open(), 3);
    }

    #[test]
    fn an_unattributed_slot_counts_in_the_total_then_against_the_address_it_is_given() {
        let admission = Admission::new(3, 1);
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let mut a = admission.admit_unattributed().unwrap();
        let mut b = admission.admit_unattributed().unwrap();
        assert_eq!(admission.open(), 2);
        a.attribute(one).unwrap();
        assert_eq!(
            b.attribute(one).unwrap_err(),
            Refusal::PerAddress { limit: 1 },
            "the client's share is taken"
        );
        assert!(admission.admit(one).is_err());
        let _c = admission.admit_unattributed().unwrap();
        assert_eq!(
            admission.admit_unattributed().unwrap_err(),
            Refusal::Full { limit: 3 }
        );
        drop(b);
        drop(a);
        assert_eq!(admission.open(), 1);
        let _d = admission.admit(one).unwrap();
    }

    #[test]
    fn a_v6_64_shares_one_per_address_count() {
        let admission = Admission::new(10, 1);
        let _a = admission.admit("2001:db8::1".parse().unwrap()).unwrap();
        assert!(admission.admit("2001:db8::2".parse().unwrap()).is_err());
        assert!(admission.admit("2001:db8:0:1::2".parse().unwrap()).is_ok());
    }
}
