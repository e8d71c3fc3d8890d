//! The relay envelope: a dhtun datagram carried inside a transport packet to or from a relay.
//!
//! Peer A reaches peer B through relay R by encrypting its datagram for B as usual, putting it in
//! a `Forward` envelope naming B, and sending that in its own session with R. R opens the
//! envelope (it sees only B's name and A's ciphertext), puts the datagram in a `Deliver`
//! envelope naming A, and sends it in its session with B. B opens it and handles the datagram
//! as if it had come from A. The relay never holds the keys of the A-B session.
//!
//! Envelope layout (the plaintext of a transport packet; integers little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | kind: 0x10 forward, 0x11 deliver |
//! | 1 | 1 | reserved, zero |
//! | 2 | 2 | length N of the datagram |
//! | 4 | 32 | X25519 public key of the other end: destination (forward) or source (deliver) |
//! | 36 | N | the datagram, then padding |
//!
//! A plaintext's first byte tells an envelope from an IP packet: its high nibble is 1 here,
//! 4 or 6 for an IP packet, and an empty plaintext is a keepalive.

use crate::core::limits::ENVELOPE_HEADER;
use std::ops::Range;

/// First byte of an envelope asking a relay to forward its datagram.
pub const KIND_FORWARD: u8 = 0x10;
/// First byte of an envelope in which a relay delivers a datagram from another peer.
pub const KIND_DELIVER: u8 = 0x11;

const KIND_AT: usize = 0;
const RESERVED_AT: usize = 1;
const LENGTH: core::ops::Range<usize> = 2..4;
const KEY: core::ops::Range<usize> = 4..36;
const _: () = assert!(KEY.end == ENVELOPE_HEADER);

/// Which way an envelope travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// From a peer to its relay: send this on to `other`.
    Forward,
    /// From a relay to a peer: this came from `other`.
    Deliver,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope shorter than its header")]
    Truncated,
    #[error("unknown envelope kind")]
    Kind,
    #[error("envelope length runs past the packet")]
    Length,
    #[error("output buffer too small for the envelope")]
    BufferTooSmall,
}

/// Whether a decrypted plaintext is an envelope rather than an IP packet or a keepalive.
pub fn is_envelope(plaintext: &[u8]) -> bool {
    plaintext
        .first()
        .is_some_and(|b| b >> 4 == KIND_FORWARD >> 4)
}

/// A checked envelope: every accessor is in bounds.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    bytes: &'a [u8],
    kind: Kind,
    len: usize,
}

impl<'a> Envelope<'a> {
    /// Checks a decrypted plaintext (padding included) as an envelope.
    pub fn new_checked(plaintext: &'a [u8]) -> Result<Self, EnvelopeError> {
        let header = plaintext
            .get(..ENVELOPE_HEADER)
            .ok_or(EnvelopeError::Truncated)?;
        let kind = match header[KIND_AT] {
            KIND_FORWARD => Kind::Forward,
            KIND_DELIVER => Kind::Deliver,
            _ => return Err(EnvelopeError::Kind),
        };
        if header[RESERVED_AT] != 0 {
            return Err(EnvelopeError::Kind);
        }
        let len = usize::from(u16::from_le_bytes([
            header[LENGTH.start],
            header[LENGTH.end - 1],
        ]));
        if ENVELOPE_HEADER + len > plaintext.len() {
            return Err(EnvelopeError::Length);
        }
        Ok(Self {
            bytes: plaintext,
            kind,
            len,
        })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The X25519 key of the other end.
    pub fn other(&self) -> [u8; 32] {
        let mut key = [0u8; 32];
        key.copy_from_slice(&self.bytes[KEY]);
        key
    }

    /// The carried datagram, without padding.
    pub fn datagram(&self) -> &'a [u8] {
        &self.bytes[self.datagram_range()]
    }

    /// Where the carried datagram lies in the envelope's bytes.
    pub fn datagram_range(&self) -> Range<usize> {
        ENVELOPE_HEADER..ENVELOPE_HEADER + self.len
    }
}

/// Writes an envelope of `kind` naming `other` around `datagram` into `out`; returns its length
/// (before padding, which encryption adds).
pub fn write(
    out: &mut [u8],
    kind: Kind,
    other: &[u8; 32],
    datagram: &[u8],
) -> Result<usize, EnvelopeError> {
    let len = u16::try_from(datagram.len()).map_err(|_| EnvelopeError::BufferTooSmall)?;
    let total = ENVELOPE_HEADER + datagram.len();
    let out = out.get_mut(..total).ok_or(EnvelopeError::BufferTooSmall)?;
    out[KIND_AT] = match kind {
        Kind::Forward => KIND_FORWARD,
        Kind::Deliver => KIND_DELIVER,
    };
    out[RESERVED_AT] = 0;
    out[LENGTH].copy_from_slice(&len.to_le_bytes());
    out[KEY].copy_from_slice(other);
    out[ENVELOPE_HEADER..].copy_from_slice(datagram);
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn written_envelopes_read_back_with_padding() {
        let mut buf = [0u8; 256];
        let key = [7u8; 32];
        let n = write(&mut buf, Kind::Forward, &key, b"datagram").unwrap();
        assert_eq!(n, ENVELOPE_HEADER + 8);
        // Encryption pads with zeros: the length field must still find the datagram.
        let padded = &buf[..n + 8];
        assert!(is_envelope(padded));
        let envelope = Envelope::new_checked(padded).unwrap();
        assert_eq!(envelope.kind(), Kind::Forward);
        assert_eq!(envelope.other(), key);
        assert_eq!(envelope.datagram(), b"datagram");
    }

    #[test]
    fn ip_packets_and_keepalives_are_not_envelopes() {
        assert!(!is_envelope(&[]));
        assert!(!is_envelope(&[0x45, 0, 0, 20]));
        assert!(!is_envelope(&[0x60, 0, 0, 0]));
    }

    #[test]
    fn bad_envelopes_are_refused() {
        let mut buf = [0u8; 64];
        write(&mut buf, Kind::Deliver, &[1; 32], b"abcd").unwrap();
        assert_eq!(
            Envelope::new_checked(&buf[..ENVELOPE_HEADER - 1]).unwrap_err(),
            EnvelopeError::Truncated
        );
        assert_eq!(
            Envelope::new_checked(&buf[..ENVELOPE_HEADER + 3]).unwrap_err(),
            EnvelopeError::Length
        );
        let mut odd = buf;
        odd[0] = 0x12;
        assert_eq!(
            Envelope::new_checked(&odd).unwrap_err(),
            EnvelopeError::Kind
        );
        let mut reserved = buf;
        reserved[1] = 1;
        assert!(Envelope::new_checked(&reserved).is_err());
        assert_eq!(
            write(&mut [0u8; 10], Kind::Forward, &[0; 32], b"x").unwrap_err(),
            EnvelopeError::BufferTooSmall
        );
    }

    #[test]
    fn random_bytes_never_panic_and_accepted_ones_stay_in_bounds() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let mut buf = [0u8; 128];
        for _ in 0..20_000 {
            let len = (rng.next_u32() as usize) % buf.len();
            rng.fill_bytes(&mut buf[..len]);
            if rng.next_u32() % 2 == 0 {
                buf[0] = KIND_FORWARD;
                if len > 1 {
                    buf[1] = 0;
                }
            }
            if let Ok(e) = Envelope::new_checked(&buf[..len]) {
                assert!(ENVELOPE_HEADER + e.datagram().len() <= len);
            }
        }
    }
}
