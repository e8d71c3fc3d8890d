//! Wire formats of the UDP messages peers exchange, parsed once into checked views.
//!
//! Every message starts with a one-byte type and three zero bytes, then little-endian session
//! indexes so a receiver finds the session without trial decryption (the layout WireGuard uses,
//! with our own Noise prologue, so the two never mistake each other's handshakes for valid):
//!
//! ```text
//! initiation (148 B): type=1 | 0 0 0 | sender u32 | noise msg 1 (108) | mac1 (16) | mac2 (16)
//! response    (92 B): type=2 | 0 0 0 | sender u32 | receiver u32 | noise msg 2 (48) | mac1 | mac2
//! cookie      (64 B): type=3 | 0 0 0 | receiver u32 | nonce (24) | encrypted cookie (16) | tag (16)
//! transport  (>=32 B): type=4 | 0 0 0 | receiver u32 | counter u64 | ciphertext + tag (>=16)
//! ```
//! A view's constructor checks the type, the reserved bytes and the length, so no accessor can
//! panic.

/// Message type bytes.
pub const TYPE_INITIATION: u8 = 1;
pub const TYPE_RESPONSE: u8 = 2;
pub const TYPE_COOKIE_REPLY: u8 = 3;
pub const TYPE_TRANSPORT: u8 = 4;

pub const MAC_BYTES: usize = 16;
pub const AEAD_TAG_BYTES: usize = 16;

/// Noise IKpsk2 first message: ephemeral (32) + encrypted static (32 + 16) + encrypted
/// timestamp (12 + 16).
pub const NOISE_INITIATION_BYTES: usize = 108;
/// Noise IKpsk2 second message: ephemeral (32) + encrypted empty payload (16).
pub const NOISE_RESPONSE_BYTES: usize = 48;
/// The initiation's payload: a TAI64N timestamp, so a replayed initiation is refused.
pub const TIMESTAMP_BYTES: usize = 12;

const TYPE: usize = 0;
const RESERVED: core::ops::Range<usize> = 1..4;

mod initiation {
    use super::*;
    pub const SENDER: core::ops::Range<usize> = 4..8;
    pub const NOISE: core::ops::Range<usize> = 8..8 + NOISE_INITIATION_BYTES;
    pub const MAC1: core::ops::Range<usize> = NOISE.end..NOISE.end + MAC_BYTES;
    pub const MAC2: core::ops::Range<usize> = MAC1.end..MAC1.end + MAC_BYTES;
    pub const LEN: usize = MAC2.end;
}

mod response {
    use super::*;
    pub const SENDER: core::ops::Range<usize> = 4..8;
    pub const RECEIVER: core::ops::Range<usize> = 8..12;
    pub const NOISE: core::ops::Range<usize> = 12..12 + NOISE_RESPONSE_BYTES;
    pub const MAC1: core::ops::Range<usize> = NOISE.end..NOISE.end + MAC_BYTES;
    pub const MAC2: core::ops::Range<usize> = MAC1.end..MAC1.end + MAC_BYTES;
    pub const LEN: usize = MAC2.end;
}

mod cookie_reply {
    use super::*;
    pub const RECEIVER: core::ops::Range<usize> = 4..8;
    pub const NONCE: core::ops::Range<usize> = 8..32;
    pub const COOKIE: core::ops::Range<usize> = 32..32 + MAC_BYTES;
    pub const TAG: core::ops::Range<usize> = COOKIE.end..COOKIE.end + AEAD_TAG_BYTES;
    pub const LEN: usize = TAG.end;
}

mod transport {
    pub const RECEIVER: core::ops::Range<usize> = 4..8;
    pub const COUNTER: core::ops::Range<usize> = 8..16;
    pub const HEADER_LEN: usize = 16;
}

pub const INITIATION_LEN: usize = initiation::LEN;
pub const RESPONSE_LEN: usize = response::LEN;
pub const COOKIE_REPLY_LEN: usize = cookie_reply::LEN;
pub const TRANSPORT_HEADER_LEN: usize = transport::HEADER_LEN;
/// A transport message carrying nothing (a keepalive) is just header and tag.
pub const TRANSPORT_MIN_LEN: usize = TRANSPORT_HEADER_LEN + AEAD_TAG_BYTES;

/// Why a datagram could not be read as one of our messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than its type's fixed size, longer than a fixed-size type, or empty.
    BadLength,
    /// A type byte we do not speak, or non-zero reserved bytes.
    UnknownType,
}

/// A datagram, classified by type and checked for length.
#[derive(Debug, Clone, Copy)]
pub enum Message<'a> {
    Initiation(Initiation<'a>),
    Response(Response<'a>),
    CookieReply(CookieReply<'a>),
    Transport(Transport<'a>),
}

impl<'a> Message<'a> {
    pub fn parse(datagram: &'a [u8]) -> Result<Self, WireError> {
        if datagram.len() < 4 {
            return Err(WireError::BadLength);
        }
        if datagram[RESERVED] != [0, 0, 0] {
            return Err(WireError::UnknownType);
        }
        match datagram[TYPE] {
            TYPE_INITIATION if datagram.len() == INITIATION_LEN => {
                Ok(Self::Initiation(Initiation(datagram)))
            }
            TYPE_RESPONSE if datagram.len() == RESPONSE_LEN => {
                Ok(Self::Response(Response(datagram)))
            }
            TYPE_COOKIE_REPLY if datagram.len() == COOKIE_REPLY_LEN => {
                Ok(Self::CookieReply(CookieReply(datagram)))
            }
            TYPE_TRANSPORT if datagram.len() >= TRANSPORT_MIN_LEN => {
                Ok(Self::Transport(Transport(datagram)))
            }
            TYPE_INITIATION | TYPE_RESPONSE | TYPE_COOKIE_REPLY | TYPE_TRANSPORT => {
                Err(WireError::BadLength)
            }
            _ => Err(WireError::UnknownType),
        }
    }
}

/// A length-checked handshake initiation.
#[derive(Debug, Clone, Copy)]
pub struct Initiation<'a>(&'a [u8]);

impl<'a> Initiation<'a> {
    pub fn sender(&self) -> u32 {
        read_u32(self.0, initiation::SENDER)
    }
    pub fn noise(&self) -> &'a [u8] {
        &self.0[initiation::NOISE]
    }
    /// Everything mac1 covers: the message up to the mac1 field.
    pub fn mac1_input(&self) -> &'a [u8] {
        &self.0[..initiation::MAC1.start]
    }
    pub fn mac1(&self) -> &'a [u8] {
        &self.0[initiation::MAC1]
    }
    /// Everything mac2 covers: the message up to the mac2 field.
    pub fn mac2_input(&self) -> &'a [u8] {
        &self.0[..initiation::MAC2.start]
    }
    pub fn mac2(&self) -> &'a [u8] {
        &self.0[initiation::MAC2]
    }
}

/// A length-checked cookie reply.
#[derive(Debug, Clone, Copy)]
pub struct CookieReply<'a>(&'a [u8]);

impl<'a> CookieReply<'a> {
    /// The initiation's sender index this reply answers.
    pub fn receiver(&self) -> u32 {
        read_u32(self.0, cookie_reply::RECEIVER)
    }
    pub fn nonce(&self) -> &'a [u8] {
        &self.0[cookie_reply::NONCE]
    }
    pub fn sealed_cookie(&self) -> &'a [u8] {
        &self.0[cookie_reply::COOKIE]
    }
    pub fn tag(&self) -> &'a [u8] {
        &self.0[cookie_reply::TAG]
    }
}

/// A length-checked handshake response.
#[derive(Debug, Clone, Copy)]
pub struct Response<'a>(&'a [u8]);

impl<'a> Response<'a> {
    pub fn sender(&self) -> u32 {
        read_u32(self.0, response::SENDER)
    }
    pub fn receiver(&self) -> u32 {
        read_u32(self.0, response::RECEIVER)
    }
    pub fn noise(&self) -> &'a [u8] {
        &self.0[response::NOISE]
    }
    pub fn mac1_input(&self) -> &'a [u8] {
        &self.0[..response::MAC1.start]
    }
    pub fn mac1(&self) -> &'a [u8] {
        &self.0[response::MAC1]
    }
}

/// A length-checked transport message.
#[derive(Debug, Clone, Copy)]
pub struct Transport<'a>(&'a [u8]);

impl<'a> Transport<'a> {
    pub fn receiver(&self) -> u32 {
        read_u32(self.0, transport::RECEIVER)
    }
    pub fn counter(&self) -> u64 {
        read_u64(self.0, transport::COUNTER)
    }
    /// Ciphertext and tag; at least AEAD_TAG_BYTES long.
    pub fn ciphertext(&self) -> &'a [u8] {
        &self.0[transport::HEADER_LEN..]
    }
}

/// Writes an initiation's header around noise bytes the caller already placed at
/// `initiation_noise_range()`; the caller fills mac1 with `initiation_mac_ranges()`.
pub fn write_initiation_header(out: &mut [u8; INITIATION_LEN], sender: u32) {
    out[..4].copy_from_slice(&[TYPE_INITIATION, 0, 0, 0]);
    out[initiation::SENDER].copy_from_slice(&sender.to_le_bytes());
}

pub fn write_response_header(out: &mut [u8; RESPONSE_LEN], sender: u32, receiver: u32) {
    out[..4].copy_from_slice(&[TYPE_RESPONSE, 0, 0, 0]);
    out[response::SENDER].copy_from_slice(&sender.to_le_bytes());
    out[response::RECEIVER].copy_from_slice(&receiver.to_le_bytes());
}

/// Writes a transport header; the caller encrypts into `out[TRANSPORT_HEADER_LEN..]`.
pub fn write_transport_header(
    out: &mut [u8],
    receiver: u32,
    counter: u64,
) -> Result<(), WireError> {
    let header = out
        .get_mut(..TRANSPORT_HEADER_LEN)
        .ok_or(WireError::BadLength)?;
    header[..4].copy_from_slice(&[TYPE_TRANSPORT, 0, 0, 0]);
    header[transport::RECEIVER].copy_from_slice(&receiver.to_le_bytes());
    header[transport::COUNTER].copy_from_slice(&counter.to_le_bytes());
    Ok(())
}

/// Where the noise bytes and the two macs of an initiation go.
pub fn initiation_layout() -> [core::ops::Range<usize>; 3] {
    [initiation::NOISE, initiation::MAC1, initiation::MAC2]
}

pub fn write_cookie_reply_header(out: &mut [u8; COOKIE_REPLY_LEN], receiver: u32) {
    out[..4].copy_from_slice(&[TYPE_COOKIE_REPLY, 0, 0, 0]);
    out[cookie_reply::RECEIVER].copy_from_slice(&receiver.to_le_bytes());
}

/// Where a cookie reply's nonce, encrypted cookie and tag go.
pub fn cookie_reply_layout() -> [core::ops::Range<usize>; 3] {
    [cookie_reply::NONCE, cookie_reply::COOKIE, cookie_reply::TAG]
}

/// Where the noise bytes and the two macs of a response go.
pub fn response_layout() -> [core::ops::Range<usize>; 3] {
    [response::NOISE, response::MAC1, response::MAC2]
}

/// A little-endian u32 at `range` (4 bytes) of a message already checked to hold it.
pub(crate) fn read_u32(bytes: &[u8], range: core::ops::Range<usize>) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[range]);
    u32::from_le_bytes(word)
}

/// A little-endian u64 at `range` (8 bytes) of a message already checked to hold it.
pub(crate) fn read_u64(bytes: &[u8], range: core::ops::Range<usize>) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[range]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn transport_round_trip() {
        let mut buf = [0u8; 40];
        write_transport_header(&mut buf, 0xdead_beef, 7).unwrap();
        match Message::parse(&buf).unwrap() {
            Message::Transport(t) => {
                assert_eq!(t.receiver(), 0xdead_beef);
                assert_eq!(t.counter(), 7);
                assert_eq!(t.ciphertext().len(), 24);
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn fixed_sizes_are_exact() {
        let mut init = [0u8; INITIATION_LEN];
        write_initiation_header(&mut init, 1);
        assert!(matches!(Message::parse(&init), Ok(Message::Initiation(_))));
        assert_eq!(
            Message::parse(&init[..INITIATION_LEN - 1]).unwrap_err(),
            WireError::BadLength
        );
        let mut resp = [0u8; RESPONSE_LEN];
        write_response_header(&mut resp, 1, 2);
        assert!(matches!(Message::parse(&resp), Ok(Message::Response(_))));
        let mut longer = resp.to_vec();
        longer.push(0);
        assert_eq!(Message::parse(&longer).unwrap_err(), WireError::BadLength);
        assert_eq!(
            Message::parse(&[4, 0, 0, 0]).unwrap_err(),
            WireError::BadLength
        );
        assert_eq!(
            Message::parse(&[9, 0, 0, 0]).unwrap_err(),
            WireError::UnknownType
        );
        assert_eq!(
            Message::parse(&[4, 1, 0, 0]).unwrap_err(),
            WireError::UnknownType
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut buf = [0u8; 256];
        for _ in 0..100_000 {
            let len = rng.gen_range(0..buf.len());
            rng.fill(&mut buf[..len]);
            if rng.gen_bool(0.5) {
                buf[0] = rng.gen_range(0..6);
                if rng.gen_bool(0.2) {
                    buf[0] = TYPE_COOKIE_REPLY;
                }
                buf[1..4].fill(0);
            }
            if let Ok(message) = Message::parse(&buf[..len]) {
                match message {
                    Message::Initiation(m) => {
                        let _ = (m.sender(), m.noise(), m.mac1(), m.mac1_input());
                    }
                    Message::Response(m) => {
                        let _ = (m.sender(), m.receiver(), m.noise(), m.mac1());
                    }
                    Message::CookieReply(m) => {
                        let _ = (m.receiver(), m.nonce(), m.sealed_cookie(), m.tag());
                    }
                    Message::Transport(m) => {
                        let _ = (m.receiver(), m.counter(), m.ciphertext());
                    }
                }
            }
        }
    }
}
