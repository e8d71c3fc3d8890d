//! The record a peer publishes in the Mainline DHT: where it can be reached.
//!
//! It is the value of a BEP 44 mutable item signed by the interface identity, stored under the
//! salt [`RECORD_SALT`], so anyone holding a peer's public key can look it up and nobody else can
//! write it. mainline checks the signature and the key; this module checks the value.
//!
//! Encoding, version 1 (integers little-endian, as in the rest of dhtun's wire formats):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | format version, 1 |
//! | 1 | 2 | listen port of the tunnel's UDP socket, never 0 |
//! | 3 | 1 | flags: bit 0 set when a public address follows the list, bit 1 when a reflexive address follows that; other bits zero |
//! | 4 | 1 | address count N, at most `MAX_RECORD_CANDIDATES` |
//! | 5 | .. | N addresses, then the public address if flagged, then the reflexive one if flagged |
//!
//! Each address is a family byte (4 or 6) and its 4 or 16 bytes; the reflexive address has its
//! own port after that (2 bytes, never 0). Nothing may follow the last.
//!
//! All addresses share the one listen port: they are the interface addresses of one socket. The
//! public address is the IP that DHT nodes report seeing our DHT packets come from; the port
//! they saw belongs to the DHT socket, not to the tunnel's, so only the IP is kept, and a peer
//! tries it with the listen port (which works behind port-preserving NATs and forwarded ports).
//! The reflexive address is the tunnel socket's own outside IP and port, as DHT nodes saw its
//! pings (see `core::reflexive`): the one address that is right behind a NAT that changes ports.
//!
//! Sequence numbers are microseconds since the Unix epoch, so a newer record always wins, two
//! publishes in the same second still grow, and a restarted daemon needs no saved state.

use crate::core::limits::{MAX_RECORD_BYTES, MAX_RECORD_CANDIDATES};
use core::time::Duration;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The BEP 44 salt every dhtun record is stored under: it names the protocol and the version of
/// this encoding, so other users of the same key, and future formats, live under other targets.
pub const RECORD_SALT: &[u8] = b"dhtun/v1";

/// The format version this code writes and the only one it reads.
pub const RECORD_VERSION: u8 = 1;

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record is {0} bytes, more than the {MAX_RECORD_BYTES}-byte limit of a DHT item")]
    TooLarge(usize),
    #[error("record ends early")]
    Truncated,
    #[error("record has {0} bytes after its end")]
    TrailingBytes(usize),
    #[error("record format version {0}, expected {RECORD_VERSION}")]
    Version(u8),
    #[error("record listen port is 0")]
    ZeroPort,
    #[error("record has unknown flags {0:#04x}")]
    Flags(u8),
    #[error("record lists {0} addresses, at most {MAX_RECORD_CANDIDATES} are allowed")]
    TooManyAddresses(usize),
    #[error("record address family {0}, expected 4 or 6")]
    Family(u8),
    #[error("{0} cannot be used as an underlay address")]
    UnusableAddress(IpAddr),
    #[error("{0} is listed twice")]
    DuplicateAddress(IpAddr),
    #[error("record reflexive port is 0")]
    ZeroReflexivePort,
}

/// A checked record: every field satisfies the rules `decode` enforces, whichever way it was
/// made, so whatever holds one can use it without checking again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    listen_port: u16,
    addresses: Vec<IpAddr>,
    public_ip: Option<IpAddr>,
    reflexive: Option<SocketAddr>,
}

impl Record {
    /// A record for a tunnel socket on `listen_port` reachable at `addresses` (interface
    /// addresses usable as underlay; see [`is_usable_address`]) and maybe at `public_ip`.
    pub fn new(
        listen_port: u16,
        addresses: &[IpAddr],
        public_ip: Option<IpAddr>,
    ) -> Result<Self, RecordError> {
        if listen_port == 0 {
            return Err(RecordError::ZeroPort);
        }
        if addresses.len() > MAX_RECORD_CANDIDATES {
            return Err(RecordError::TooManyAddresses(addresses.len()));
        }
        for (i, &ip) in addresses.iter().enumerate() {
            check_usable(ip)?;
            if addresses[..i].contains(&ip) {
                return Err(RecordError::DuplicateAddress(ip));
            }
        }
        if let Some(ip) = public_ip {
            check_usable(ip)?;
        }
        Ok(Self {
            listen_port,
            addresses: addresses.to_vec(),
            public_ip,
            reflexive: None,
        })
    }

    /// This record with the tunnel socket's reflexive address (its outside IP and port as DHT
    /// nodes see it), or without one for `None`.
    pub fn with_reflexive(mut self, reflexive: Option<SocketAddr>) -> Result<Self, RecordError> {
        if let Some(address) = reflexive {
            check_usable(address.ip())?;
            if address.port() == 0 {
                return Err(RecordError::ZeroReflexivePort);
            }
        }
        self.reflexive = reflexive;
        Ok(self)
    }

    /// Parses a record read from the DHT. Anything but a well-formed version-1 record is an
    /// error; no input panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge(bytes.len()));
        }
        let header = bytes.get(..HEADER_BYTES).ok_or(RecordError::Truncated)?;
        if header[VERSION_AT] != RECORD_VERSION {
            return Err(RecordError::Version(header[VERSION_AT]));
        }
        let listen_port = u16::from_le_bytes([header[PORT_AT], header[PORT_AT + 1]]);
        let flags = header[FLAGS_AT];
        if flags & !(FLAG_PUBLIC | FLAG_REFLEXIVE) != 0 {
            return Err(RecordError::Flags(flags));
        }
        let count = usize::from(header[COUNT_AT]);
        if count > MAX_RECORD_CANDIDATES {
            return Err(RecordError::TooManyAddresses(count));
        }
        let mut rest = &bytes[HEADER_BYTES..];
        let mut addresses = Vec::with_capacity(count);
        for _ in 0..count {
            addresses.push(take_address(&mut rest)?);
        }
        let public_ip = if flags & FLAG_PUBLIC != 0 {
            Some(take_address(&mut rest)?)
        } else {
            None
        };
        let reflexive = if flags & FLAG_REFLEXIVE != 0 {
            let ip = take_address(&mut rest)?;
            let (port, tail) = rest
                .split_first_chunk::<2>()
                .ok_or(RecordError::Truncated)?;
            rest = tail;
            Some(SocketAddr::new(ip, u16::from_le_bytes(*port)))
        } else {
            None
        };
        if !rest.is_empty() {
            return Err(RecordError::TrailingBytes(rest.len()));
        }
        Self::new(listen_port, &addresses, public_ip)?.with_reflexive(reflexive)
    }

    /// The encoded record, refused if it would not fit in a DHT item.
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(RECORD_VERSION);
        out.extend_from_slice(&self.listen_port.to_le_bytes());
        let mut flags = 0;
        if self.public_ip.is_some() {
            flags |= FLAG_PUBLIC;
        }
        if self.reflexive.is_some() {
            flags |= FLAG_REFLEXIVE;
        }
        out.push(flags);
        // `new` capped the list at MAX_RECORD_CANDIDATES, which fits in a byte.
        out.push(
            u8::try_from(self.addresses.len())
                .map_err(|_| RecordError::TooManyAddresses(self.addresses.len()))?,
        );
        for &ip in self.addresses.iter().chain(self.public_ip.iter()) {
            put_address(&mut out, ip);
        }
        if let Some(reflexive) = self.reflexive {
            put_address(&mut out, reflexive.ip());
            out.extend_from_slice(&reflexive.port().to_le_bytes());
        }
        if out.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge(out.len()));
        }
        Ok(out)
    }

    pub fn listen_port(&self) -> u16 {
        self.listen_port
    }

    /// The interface addresses, in the order the publisher listed them.
    pub fn addresses(&self) -> &[IpAddr] {
        &self.addresses
    }

    /// The IP DHT nodes saw the publisher's packets come from, if it knew it.
    pub fn public_ip(&self) -> Option<IpAddr> {
        self.public_ip
    }

    /// The tunnel socket's outside IP and port as DHT nodes saw it, if the publisher knew it.
    pub fn reflexive(&self) -> Option<SocketAddr> {
        self.reflexive
    }

    /// Every endpoint worth a handshake attempt, best first: the interface addresses (a peer on
    /// the same network reaches them directly), then the public IP unless already listed, then
    /// the reflexive address unless it is one of those with the listen port.
    pub fn candidates(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let public = self.public_ip.filter(|ip| !self.addresses.contains(ip));
        let listed = self
            .addresses
            .iter()
            .copied()
            .chain(public)
            .map(|ip| SocketAddr::new(ip, self.listen_port));
        let reflexive = self.reflexive.filter(|r| {
            r.port() != self.listen_port
                || !(self.addresses.contains(&r.ip()) || self.public_ip == Some(r.ip()))
        });
        listed.chain(reflexive)
    }

    fn encoded_len(&self) -> usize {
        HEADER_BYTES
            + self
                .addresses
                .iter()
                .chain(self.public_ip.iter())
                .map(|ip| address_len(*ip))
                .sum::<usize>()
            + self
                .reflexive
                .map_or(0, |r| address_len(r.ip()) + PORT_BYTES)
    }
}

/// Whether `ip` can name a peer's UDP socket from another host: not unspecified, multicast or
/// broadcast, and not IPv6 link-local (the record carries no scope to say which link).
/// Loopback passes: it is how peers on one host (and the tests) reach each other.
pub fn is_usable_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast() || v6.is_unicast_link_local()),
    }
}

/// The sequence number of a record published at `unix_time` (time since the Unix epoch):
/// microseconds, which an i64 holds until the year 294247. Saturates rather than wraps.
pub fn sequence_for(unix_time: Duration) -> i64 {
    i64::try_from(unix_time.as_micros()).unwrap_or(i64::MAX)
}

/// The sequence number for our next publish: time-based, and above the last one we used even if
/// the clock stepped back or two publishes fall in the same microsecond.
pub fn next_sequence(last: Option<i64>, unix_time: Duration) -> i64 {
    let now = sequence_for(unix_time);
    match last {
        Some(last) if last >= now => last.saturating_add(1),
        _ => now,
    }
}

/// Whether a record with sequence `got` replaces one with sequence `seen` (none seen yet: any
/// record does). Equal is not newer: a replay of what we have changes nothing.
pub fn is_newer(seen: Option<i64>, got: i64) -> bool {
    seen.is_none_or(|seen| got > seen)
}

// Offsets of the fixed header.
const VERSION_AT: usize = 0;
const PORT_AT: usize = 1;
const FLAGS_AT: usize = 3;
const COUNT_AT: usize = 4;
const HEADER_BYTES: usize = 5;

/// Flags bit: a public address follows the address list.
const FLAG_PUBLIC: u8 = 1;
/// Flags bit: a reflexive address and its port follow the public address.
const FLAG_REFLEXIVE: u8 = 2;
const PORT_BYTES: usize = 2;

const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;

/// The largest record the encoding allows, which must fit in a DHT item.
pub const MAX_ENCODED_BYTES: usize =
    HEADER_BYTES + (MAX_RECORD_CANDIDATES + 2) * (1 + 16) + PORT_BYTES;
const _: () = assert!(MAX_ENCODED_BYTES <= MAX_RECORD_BYTES);

fn check_usable(ip: IpAddr) -> Result<(), RecordError> {
    if is_usable_address(ip) {
        Ok(())
    } else {
        Err(RecordError::UnusableAddress(ip))
    }
}

fn address_len(ip: IpAddr) -> usize {
    match ip {
        IpAddr::V4(_) => 1 + 4,
        IpAddr::V6(_) => 1 + 16,
    }
}

fn put_address(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            out.push(FAMILY_V4);
            out.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.push(FAMILY_V6);
            out.extend_from_slice(&v6.octets());
        }
    }
}

/// Reads one family-tagged address off the front of `rest`.
fn take_address(rest: &mut &[u8]) -> Result<IpAddr, RecordError> {
    let (&family, tail) = rest.split_first().ok_or(RecordError::Truncated)?;
    let ip = match family {
        FAMILY_V4 => {
            let (octets, tail) = tail
                .split_first_chunk::<4>()
                .ok_or(RecordError::Truncated)?;
            *rest = tail;
            IpAddr::V4(Ipv4Addr::from(*octets))
        }
        FAMILY_V6 => {
            let (octets, tail) = tail
                .split_first_chunk::<16>()
                .ok_or(RecordError::Truncated)?;
            *rest = tail;
            IpAddr::V6(Ipv6Addr::from(*octets))
        }
        other => return Err(RecordError::Family(other)),
    };
    Ok(ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, RngCore, SeedableRng};

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn sample() -> Record {
        Record::new(
            51820,
            &[ip("198.18.0.2"), ip("2001:db8::2"), ip("10.0.0.7")],
            Some(ip("203.0.113.9")),
        )
        .unwrap()
        .with_reflexive(Some("203.0.113.9:40001".parse().unwrap()))
        .unwrap()
    }

    #[test]
    fn round_trip() {
        let empty = Record::new(1, &[], None).unwrap();
        let full: Vec<IpAddr> = (0..MAX_RECORD_CANDIDATES as u16)
            .map(|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i + 1)))
            .collect();
        let full = Record::new(65535, &full, Some(ip("2001:db8:ffff::1")))
            .unwrap()
            .with_reflexive(Some("[2001:db8:ffff::2]:65535".parse().unwrap()))
            .unwrap();
        let only_reflexive = Record::new(9, &[], None)
            .unwrap()
            .with_reflexive(Some("192.0.2.1:1".parse().unwrap()))
            .unwrap();
        for record in [sample(), empty, full, only_reflexive] {
            let bytes = record.encode().unwrap();
            assert_eq!(bytes.len(), record.encoded_len());
            assert!(bytes.len() <= MAX_ENCODED_BYTES);
            assert_eq!(Record::decode(&bytes), Ok(record));
        }
    }

    #[test]
    fn layout_is_as_documented() {
        let record = Record::new(0x1234, &[ip("1.2.3.4")], Some(ip("::1"))).unwrap();
        let mut expected = vec![1, 0x34, 0x12, FLAG_PUBLIC, 1, 4, 1, 2, 3, 4, 6];
        expected.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        assert_eq!(record.encode().unwrap(), expected);
        let record = record
            .with_reflexive(Some("5.6.7.8:39612".parse().unwrap()))
            .unwrap();
        expected[FLAGS_AT] = FLAG_PUBLIC | FLAG_REFLEXIVE;
        expected.extend_from_slice(&[4, 5, 6, 7, 8, 0xbc, 0x9a]);
        assert_eq!(record.encode().unwrap(), expected);
        assert_eq!(record.reflexive(), Some("5.6.7.8:39612".parse().unwrap()));
    }

    #[test]
    fn candidates_use_the_listen_port_and_skip_a_repeated_public_ip() {
        let record = Record::new(7, &[ip("1.1.1.1"), ip("::2")], Some(ip("1.1.1.1"))).unwrap();
        let got: Vec<SocketAddr> = record.candidates().collect();
        assert_eq!(
            got,
            ["1.1.1.1:7".parse().unwrap(), "[::2]:7".parse().unwrap()]
        );
        let got: Vec<SocketAddr> = sample().candidates().collect();
        assert_eq!(got.len(), 5);
        assert_eq!(got[3], "203.0.113.9:51820".parse().unwrap());
        assert_eq!(got[4], "203.0.113.9:40001".parse().unwrap());
        // A reflexive address that only repeats a listed one (a port-preserving NAT) adds none.
        for repeated in ["1.1.1.1:7", "9.9.9.9:7"] {
            let record = Record::new(7, &[ip("1.1.1.1")], Some(ip("9.9.9.9")))
                .unwrap()
                .with_reflexive(Some(repeated.parse().unwrap()))
                .unwrap();
            assert_eq!(record.candidates().count(), 2, "{repeated}");
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        let bytes = sample().encode().unwrap();
        for len in 0..bytes.len() {
            assert_eq!(
                Record::decode(&bytes[..len]),
                Err(RecordError::Truncated),
                "{len}"
            );
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = sample().encode().unwrap();
        bytes.push(0);
        assert_eq!(Record::decode(&bytes), Err(RecordError::TrailingBytes(1)));
    }

    #[test]
    fn other_versions_are_refused() {
        let mut bytes = sample().encode().unwrap();
        for version in [0, 2, 255] {
            bytes[VERSION_AT] = version;
            assert_eq!(Record::decode(&bytes), Err(RecordError::Version(version)));
        }
    }

    #[test]
    fn oversized_is_refused() {
        let mut bytes = sample().encode().unwrap();
        bytes.resize(MAX_RECORD_BYTES + 1, 0);
        assert_eq!(
            Record::decode(&bytes),
            Err(RecordError::TooLarge(MAX_RECORD_BYTES + 1))
        );
        let many = vec![ip("1.2.3.4"); MAX_RECORD_CANDIDATES + 1];
        assert_eq!(
            Record::new(1, &many, None),
            Err(RecordError::TooManyAddresses(MAX_RECORD_CANDIDATES + 1))
        );
    }

    #[test]
    fn bad_fields_are_refused() {
        let good = Record::new(9, &[ip("1.2.3.4")], None)
            .unwrap()
            .encode()
            .unwrap();
        let with = |at: usize, value: u8| {
            let mut bytes = good.clone();
            bytes[at] = value;
            Record::decode(&bytes)
        };
        let mut zero_port = good.clone();
        zero_port[PORT_AT..PORT_AT + 2].fill(0);
        assert_eq!(Record::decode(&zero_port), Err(RecordError::ZeroPort));
        assert_eq!(with(FLAGS_AT, 4), Err(RecordError::Flags(4)));
        let mut zero_reflexive = good.clone();
        zero_reflexive[FLAGS_AT] = FLAG_REFLEXIVE;
        zero_reflexive.extend_from_slice(&[4, 1, 2, 3, 4, 0, 0]);
        assert_eq!(
            Record::decode(&zero_reflexive),
            Err(RecordError::ZeroReflexivePort)
        );
        let one = Record::new(1, &[], None).unwrap();
        assert_eq!(
            one.clone()
                .with_reflexive(Some("1.2.3.4:0".parse().unwrap())),
            Err(RecordError::ZeroReflexivePort)
        );
        assert_eq!(
            one.with_reflexive(Some("[ff02::1]:5".parse().unwrap())),
            Err(RecordError::UnusableAddress(ip("ff02::1")))
        );
        assert_eq!(with(COUNT_AT, 17), Err(RecordError::TooManyAddresses(17)));
        assert_eq!(with(HEADER_BYTES, 5), Err(RecordError::Family(5)));
        let mut unspecified = good.clone();
        unspecified[HEADER_BYTES + 1..].fill(0);
        assert_eq!(
            Record::decode(&unspecified),
            Err(RecordError::UnusableAddress(ip("0.0.0.0")))
        );
        assert_eq!(
            Record::new(1, &[ip("0.0.0.0")], None),
            Err(RecordError::UnusableAddress(ip("0.0.0.0")))
        );
        for bad in ["224.0.0.1", "255.255.255.255", "::", "ff02::1", "fe80::1"] {
            assert_eq!(
                Record::new(1, &[], Some(ip(bad))),
                Err(RecordError::UnusableAddress(ip(bad)))
            );
        }
        assert_eq!(
            Record::new(1, &[ip("::1"), ip("::1")], None),
            Err(RecordError::DuplicateAddress(ip("::1")))
        );
        assert_eq!(Record::new(0, &[], None), Err(RecordError::ZeroPort));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x64_68_74_75_6e);
        let mut buf = [0u8; 400];
        let mut accepted = 0;
        for _ in 0..50_000 {
            let len = rng.gen_range(0..buf.len());
            rng.fill_bytes(&mut buf[..len]);
            // Steer half the inputs past the version check so the deeper paths run too.
            if len > 0 && rng.gen_bool(0.5) {
                buf[VERSION_AT] = RECORD_VERSION;
                if len > COUNT_AT {
                    buf[FLAGS_AT] &= FLAG_PUBLIC | FLAG_REFLEXIVE;
                    buf[COUNT_AT] %= 4;
                }
            }
            if let Ok(record) = Record::decode(&buf[..len]) {
                accepted += 1;
                assert_eq!(record.encode().unwrap(), &buf[..len]);
            }
        }
        assert!(accepted > 0, "the fuzzer never produced a valid record");
    }

    #[test]
    fn sequence_numbers_grow() {
        let second = Duration::from_secs(1_700_000_000);
        assert_eq!(sequence_for(second), 1_700_000_000_000_000);
        assert!(sequence_for(second + Duration::from_millis(1)) > sequence_for(second));
        assert_eq!(sequence_for(Duration::MAX), i64::MAX);
        // Same instant, or a clock that stepped back: still above the last one.
        let first = next_sequence(None, second);
        assert_eq!(next_sequence(Some(first), second), first + 1);
        assert_eq!(next_sequence(Some(first), second / 2), first + 1);
        assert_eq!(next_sequence(Some(5), second), sequence_for(second));
    }

    #[test]
    fn only_newer_records_are_accepted() {
        assert!(is_newer(None, i64::MIN));
        assert!(is_newer(Some(10), 11));
        assert!(!is_newer(Some(10), 10));
        assert!(!is_newer(Some(10), 9));
    }
}
