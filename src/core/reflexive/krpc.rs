//! The two KRPC messages (BEP 5) the tunnel socket exchanges with DHT nodes: the `ping` query
//! we send, and the checked view of its response, whose `ip` field (BEP 42) is our address as
//! the node saw it.
//!
//! Only a few top-level keys are read, so the response is walked in place by a small bencode
//! scanner rather than decoded into a tree: no allocation, nesting bounded by
//! `MAX_KRPC_NESTING`, and every index checked, so no datagram can panic it or make it recurse.

use crate::core::limits::MAX_KRPC_NESTING;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

/// Bytes of the transaction id we send. mainline reads transaction ids as exactly four bytes
/// and drops a message with any other length, so four it is.
pub const TRANSACTION_ID_BYTES: usize = 4;

/// Bytes of a DHT node id.
pub const NODE_ID_BYTES: usize = 20;

/// Bytes of an encoded ping query.
pub const PING_BYTES: usize =
    PING_HEAD.len() + NODE_ID_BYTES + PING_MIDDLE.len() + TRANSACTION_ID_BYTES + PING_TAIL.len();

/// Why a datagram is not a usable ping response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KrpcError {
    /// Not a well-formed bencoded dictionary filling the whole datagram, or nested deeper than
    /// `MAX_KRPC_NESTING`.
    Malformed,
    /// A key we read appears twice, so which one counts would be a guess.
    DuplicateKey,
    /// `y` is not `r`: a query or an error, not an answer.
    NotAResponse,
    /// No `t`, or a `t` that is not a byte string.
    NoTransaction,
    /// No `r` dictionary.
    NoBody,
    /// No `ip` field: the node does not implement BEP 42.
    NoAddress,
    /// An `ip` field that is not 6 or 18 bytes, or names port 0.
    BadAddress,
}

/// Whether a datagram on the tunnel socket is KRPC rather than one of dhtun's messages: those
/// start with a type byte of 1 to 4 (see `wire`), every bencoded dictionary with `d`.
pub fn is_krpc(datagram: &[u8]) -> bool {
    datagram.first() == Some(&b'd')
}

/// Writes a `ping` query into `out` and returns its length, or `None` when `out` is too short.
/// It says `ro=1` (BEP 43): the tunnel socket answers no DHT queries, so nodes must not list it
/// in their routing tables.
pub fn encode_ping(
    transaction_id: [u8; TRANSACTION_ID_BYTES],
    node_id: &[u8; NODE_ID_BYTES],
    out: &mut [u8],
) -> Option<usize> {
    let out = out.get_mut(..PING_BYTES)?;
    let mut at = 0;
    for part in [
        PING_HEAD,
        &node_id[..],
        PING_MIDDLE,
        &transaction_id[..],
        PING_TAIL,
    ] {
        out[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    Some(at)
}

/// A checked ping response: a bencoded dictionary with `y` = `r`, a transaction id, an `r`
/// dictionary and an `ip` field naming a socket address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingResponse<'a> {
    transaction_id: &'a [u8],
    reflexive: SocketAddr,
}

impl<'a> PingResponse<'a> {
    /// Parses `datagram`; no input panics.
    pub fn new_checked(datagram: &'a [u8]) -> Result<Self, KrpcError> {
        let mut fields = Fields::default();
        let mut at = match datagram.first() {
            Some(b'd') => 1,
            _ => return Err(KrpcError::Malformed),
        };
        loop {
            match datagram.get(at) {
                Some(b'e') => {
                    at += 1;
                    break;
                }
                Some(_) => {}
                None => return Err(KrpcError::Malformed),
            }
            let (key, value_at) = take_string(datagram, at)?;
            let value_end = skip_value(datagram, value_at)?;
            fields.set(key, &datagram[value_at..value_end])?;
            at = value_end;
        }
        if at != datagram.len() {
            return Err(KrpcError::Malformed);
        }
        fields.into_response()
    }

    pub fn transaction_id(&self) -> &'a [u8] {
        self.transaction_id
    }

    /// The address the responding node saw our packet come from.
    pub fn reflexive(&self) -> SocketAddr {
        self.reflexive
    }
}

// The ping query around its node id and transaction id; keys in sorted order, as bencode wants.
const PING_HEAD: &[u8] = b"d1:ad2:id20:";
const PING_MIDDLE: &[u8] = b"e1:q4:ping2:roi1e1:t4:";
const PING_TAIL: &[u8] = b"1:y1:qe";

/// Longest length prefix of a byte string we accept: a UDP datagram is under 100000 bytes.
const MAX_LENGTH_DIGITS: usize = 5;
/// Longest integer we accept, sign included: an i64 has 19 digits.
const MAX_INTEGER_BYTES: usize = 20;

/// BEP 42 compact addresses: IP then big-endian port.
const COMPACT_V4_BYTES: usize = 4 + 2;
const COMPACT_V6_BYTES: usize = 16 + 2;

/// The raw values of the top-level keys we read, each an encoded bencode value.
#[derive(Default)]
struct Fields<'a> {
    t: Option<&'a [u8]>,
    y: Option<&'a [u8]>,
    r: Option<&'a [u8]>,
    ip: Option<&'a [u8]>,
}

impl<'a> Fields<'a> {
    fn set(&mut self, key: &[u8], value: &'a [u8]) -> Result<(), KrpcError> {
        let slot = match key {
            b"t" => &mut self.t,
            b"y" => &mut self.y,
            b"r" => &mut self.r,
            b"ip" => &mut self.ip,
            _ => return Ok(()),
        };
        if slot.replace(value).is_some() {
            return Err(KrpcError::DuplicateKey);
        }
        Ok(())
    }

    fn into_response(self) -> Result<PingResponse<'a>, KrpcError> {
        if self.y.and_then(as_string) != Some(b"r") {
            return Err(KrpcError::NotAResponse);
        }
        let transaction_id = self.t.and_then(as_string).ok_or(KrpcError::NoTransaction)?;
        if self.r.and_then(|r| r.first()) != Some(&b'd') {
            return Err(KrpcError::NoBody);
        }
        let ip = self.ip.ok_or(KrpcError::NoAddress)?;
        let ip = as_string(ip).ok_or(KrpcError::BadAddress)?;
        let reflexive = compact_address(ip).ok_or(KrpcError::BadAddress)?;
        Ok(PingResponse {
            transaction_id,
            reflexive,
        })
    }
}

/// The content of an encoded byte string that is exactly `value`.
fn as_string(value: &[u8]) -> Option<&[u8]> {
    match take_string(value, 0) {
        Ok((content, end)) if end == value.len() => Some(content),
        _ => None,
    }
}

fn compact_address(bytes: &[u8]) -> Option<SocketAddr> {
    let (ip, port) = match bytes.len() {
        COMPACT_V4_BYTES => {
            let (ip, port) = bytes.split_first_chunk::<4>()?;
            (Ipv4Addr::from(*ip).into(), port)
        }
        COMPACT_V6_BYTES => {
            let (ip, port) = bytes.split_first_chunk::<16>()?;
            (Ipv6Addr::from(*ip).into(), port)
        }
        _ => return None,
    };
    let port = u16::from_be_bytes(port.try_into().ok()?);
    (port != 0).then_some(SocketAddr::new(ip, port))
}

/// The byte string starting at `at`: its content and the offset after it.
fn take_string(input: &[u8], at: usize) -> Result<(&[u8], usize), KrpcError> {
    let mut len = 0usize;
    let mut pos = at;
    loop {
        match input.get(pos) {
            Some(&digit @ b'0'..=b'9') => {
                if pos - at >= MAX_LENGTH_DIGITS {
                    return Err(KrpcError::Malformed);
                }
                len = len * 10 + usize::from(digit - b'0');
                pos += 1;
            }
            Some(b':') if pos > at => break,
            _ => return Err(KrpcError::Malformed),
        }
    }
    let start = pos + 1;
    let end = start.checked_add(len).ok_or(KrpcError::Malformed)?;
    let content = input.get(start..end).ok_or(KrpcError::Malformed)?;
    Ok((content, end))
}

/// The offset after the integer starting at `at` (`i`, optional `-`, digits, `e`).
fn skip_integer(input: &[u8], at: usize) -> Result<usize, KrpcError> {
    let body = at + 1;
    let mut pos = body;
    if input.get(pos) == Some(&b'-') {
        pos += 1;
    }
    let digits = pos;
    while input.get(pos).is_some_and(u8::is_ascii_digit) {
        pos += 1;
        if pos - body > MAX_INTEGER_BYTES {
            return Err(KrpcError::Malformed);
        }
    }
    if pos == digits || input.get(pos) != Some(&b'e') {
        return Err(KrpcError::Malformed);
    }
    Ok(pos + 1)
}

/// The offset after the value starting at `at`, walking lists and dictionaries with a depth
/// counter instead of recursion. Inside containers it checks structure only (dictionary keys
/// may be any value): what is skipped is never read.
fn skip_value(input: &[u8], mut at: usize) -> Result<usize, KrpcError> {
    let mut open = 0usize;
    loop {
        match input.get(at) {
            Some(b'i') => at = skip_integer(input, at)?,
            Some(b'0'..=b'9') => at = take_string(input, at)?.1,
            Some(b'l' | b'd') => {
                open += 1;
                if open > MAX_KRPC_NESTING {
                    return Err(KrpcError::Malformed);
                }
                at += 1;
                continue;
            }
            Some(b'e') if open > 0 => {
                open -= 1;
                at += 1;
            }
            _ => return Err(KrpcError::Malformed),
        }
        if open == 0 {
            return Ok(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, RngCore, SeedableRng};

    /// A response as mainline 8's server writes it for a ping: sorted keys, `ip` (BEP 42), `ro`
    /// and `v` at the top, the responder id in `r`.
    fn mainline_response(tid: &[u8], ip: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(format!("d2:ip{}:", ip.len()).as_bytes());
        out.extend_from_slice(ip);
        out.extend_from_slice(b"1:rd2:id20:");
        out.extend_from_slice(&[7; 20]);
        out.extend_from_slice(b"e2:roi0e1:t");
        out.extend_from_slice(format!("{}:", tid.len()).as_bytes());
        out.extend_from_slice(tid);
        out.extend_from_slice(b"1:v4:RS\x05\x001:y1:re");
        out
    }

    #[test]
    fn ping_is_the_bencode_mainline_expects() {
        let mut out = [0u8; 100];
        let len = encode_ping([1, 2, 3, 4], &[b'x'; 20], &mut out).unwrap();
        assert_eq!(len, PING_BYTES);
        let want: &[u8] =
            b"d1:ad2:id20:xxxxxxxxxxxxxxxxxxxxe1:q4:ping2:roi1e1:t4:\x01\x02\x03\x041:y1:qe";
        assert_eq!(&out[..len], want);
        assert!(is_krpc(&out[..len]));
        assert_eq!(
            encode_ping([0; 4], &[0; 20], &mut [0u8; PING_BYTES - 1]),
            None
        );
    }

    #[test]
    fn mainline_responses_parse() {
        let v4 = mainline_response(b"\0\0\0\x09", &[198, 18, 0, 1, 0xca, 0x6c]);
        let response = PingResponse::new_checked(&v4).unwrap();
        assert_eq!(response.transaction_id(), b"\0\0\0\x09");
        assert_eq!(response.reflexive(), "198.18.0.1:51820".parse().unwrap());

        let mut ip = [0u8; 18];
        ip[..16].copy_from_slice(&"2001:db8::5".parse::<Ipv6Addr>().unwrap().octets());
        ip[16..].copy_from_slice(&443u16.to_be_bytes());
        let v6 = mainline_response(b"ab", &ip);
        let response = PingResponse::new_checked(&v6).unwrap();
        assert_eq!(response.reflexive(), "[2001:db8::5]:443".parse().unwrap());
    }

    #[test]
    fn unusable_responses_are_refused() {
        let ok_ip = [1, 2, 3, 4, 0, 80];
        let cases: [(Vec<u8>, KrpcError); 10] = [
            (b"".to_vec(), KrpcError::Malformed),
            (b"l1:ae".to_vec(), KrpcError::Malformed),
            (b"d1:t2:abe".to_vec(), KrpcError::NotAResponse),
            (b"d1:t2:ab1:y1:qe".to_vec(), KrpcError::NotAResponse),
            (b"d1:rde1:y1:re".to_vec(), KrpcError::NoTransaction),
            (b"d1:t2:ab1:y1:re".to_vec(), KrpcError::NoBody),
            (b"d1:rde1:t2:ab1:y1:re".to_vec(), KrpcError::NoAddress),
            (
                mainline_response(b"ab", &[1, 2, 3, 4, 0, 0]),
                KrpcError::BadAddress,
            ),
            (
                mainline_response(b"ab", &[1, 2, 3, 4, 0]),
                KrpcError::BadAddress,
            ),
            (b"d1:y1:r1:y1:re".to_vec(), KrpcError::DuplicateKey),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                PingResponse::new_checked(&bytes),
                Err(want),
                "{}",
                String::from_utf8_lossy(&bytes)
            );
        }
        let mut trailing = mainline_response(b"ab", &ok_ip);
        assert!(PingResponse::new_checked(&trailing).is_ok());
        trailing.push(b'e');
        assert_eq!(
            PingResponse::new_checked(&trailing),
            Err(KrpcError::Malformed)
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = |n: usize| {
            let mut out = b"d1:x".to_vec();
            out.extend(std::iter::repeat_n(b'l', n));
            out.extend(std::iter::repeat_n(b'e', n));
            out.extend_from_slice(b"e");
            out
        };
        assert_eq!(
            PingResponse::new_checked(&deep(MAX_KRPC_NESTING)),
            Err(KrpcError::NotAResponse)
        );
        assert_eq!(
            PingResponse::new_checked(&deep(MAX_KRPC_NESTING + 1)),
            Err(KrpcError::Malformed)
        );
        // Far past any stack: refused without recursing.
        assert_eq!(
            PingResponse::new_checked(&deep(60_000)),
            Err(KrpcError::Malformed)
        );
    }

    #[test]
    fn scanner_edge_cases() {
        assert_eq!(skip_value(b"i-12e", 0), Ok(5));
        assert_eq!(skip_value(b"i-e", 0), Err(KrpcError::Malformed));
        assert_eq!(skip_value(b"ie", 0), Err(KrpcError::Malformed));
        assert_eq!(skip_value(b"i123", 0), Err(KrpcError::Malformed));
        assert_eq!(
            skip_value(b"i123456789012345678901e", 0),
            Err(KrpcError::Malformed)
        );
        assert_eq!(skip_value(b"0:", 0), Ok(2));
        assert_eq!(skip_value(b":", 0), Err(KrpcError::Malformed));
        assert_eq!(skip_value(b"99999:ab", 0), Err(KrpcError::Malformed));
        assert_eq!(skip_value(b"123456:", 0), Err(KrpcError::Malformed));
        assert_eq!(skip_value(b"le", 0), Ok(2));
        assert_eq!(skip_value(b"ld1:ai1eee", 0), Ok(10));
        assert_eq!(skip_value(b"e", 0), Err(KrpcError::Malformed));
        assert_eq!(skip_value(b"l", 0), Err(KrpcError::Malformed));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x6b72_7063);
        let good = mainline_response(b"abcd", &[9, 8, 7, 6, 0, 1]);
        let mut buf = [0u8; 300];
        let mut parsed = 0;
        for round in 0..100_000 {
            let len = if round % 2 == 0 {
                // Mutations of a good response reach the deeper checks.
                let len = good.len();
                buf[..len].copy_from_slice(&good);
                for _ in 0..rng.gen_range(1..4) {
                    let at = rng.gen_range(0..len);
                    buf[at] = match rng.gen_range(0..3) {
                        0 => rng.gen(),
                        1 => b"deil:0123456789"[rng.gen_range(0..15)],
                        _ => buf[rng.gen_range(0..len)],
                    };
                }
                rng.gen_range(0..=len)
            } else {
                let len = rng.gen_range(0..buf.len());
                rng.fill_bytes(&mut buf[..len]);
                len
            };
            if PingResponse::new_checked(&buf[..len]).is_ok() {
                parsed += 1;
            }
        }
        assert!(parsed > 0, "no mutation survived");
    }
}
