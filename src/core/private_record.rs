//! Private DHT records: the record of [`crate::core::record`], sealed so that only the members
//! of one network (the holders of a shared [`NetworkSecret`]) can find it or read it.
//!
//! For each peer and each period of [`PRIVATE_PERIOD`], every member derives from the secret,
//! the peer's public key and the period number (keyed BLAKE2b, one label per output):
//! - a blinding factor h, and from it the *slot key*, the peer's identity key blinded as in
//!   Tor's v3 onion services (A' = h·A), that the BEP 44 item is stored under (no salt). Only
//!   the peer can sign for it (its secret scalar times h); members can compute it to look it
//!   up; without the secret it says nothing about the identity, and the slot keys of two
//!   periods are unrelated;
//! - an XChaCha20-Poly1305 key that seals the item's value.
//!
//! Inside the ciphertext the peer also signs, with its real identity, the slot key, its identity
//! key, the period, the item's sequence number and the record. The outer signature already
//! proves the item is the peer's; the inner one binds the record to its slot, period and
//! sequence even for whoever got hold of a slot key, and names what is wrong when a record is
//! refused.
//!
//! Value layout (integers little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 24 | nonce, random per publish |
//! | 24 | n + 16 | ciphertext and tag of the inner part, associated data: the slot public key |
//!
//! Inner part: version (1 byte, 1), period (8), sequence (8, equal to the item's), Ed25519
//! signature by the identity (64) over [`SIGNED_LABEL`] ‖ slot public key ‖ identity key ‖
//! period ‖ sequence ‖ record, then the record as `core::record` encodes it. 121 bytes of
//! overhead: the largest record (313 bytes) makes a 434-byte value, inside BEP 44's 1,000.
//!
//! Periods do not start at the same instant for every peer: each peer's boundaries are shifted
//! by an offset derived from the secret and its key, so the members of a network do not all
//! republish at once, and the boundary does not tell the DHT which keys belong to one network.

use crate::core::keys::{PublicKey, SecretKey, KEY_BYTES};
use crate::core::limits::MAX_RECORD_BYTES;
use crate::core::record::{Record, RecordError, MAX_ENCODED_BYTES};
use blake2::digest::consts::U32;
use blake2::digest::Mac;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use core::fmt;
use core::time::Duration;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::hazmat::{raw_sign, ExpandedSecretKey};
use ed25519_dalek::{Signature, Signer as _, VerifyingKey};

/// How long one slot key and sealing key serve. The nodes storing a slot can link the publishes
/// of one period (same key; they also see the publisher's IP), never two periods, so shorter is
/// more private; but each boundary costs a publish under two periods for `PERIOD_OVERLAP` on
/// either side, and a lookup of both. Six hours: a host that moves is linked for at most a few
/// hours, and the double publishing costs one period in six (about 4 extra publishes a period
/// at the 30-minute republish interval).
pub const PRIVATE_PERIOD: Duration = Duration::from_secs(6 * 3600);

/// How close to a period boundary a publisher writes, and a lookup reads, both periods. Covers
/// clock skew between members of up to this much (NTP keeps hosts within a second; a VM or a
/// host without NTP drifts minutes, rarely more) and a publisher that was down at the boundary.
pub const PERIOD_OVERLAP: Duration = Duration::from_secs(30 * 60);

/// Prefix of what the identity signs inside the ciphertext: no other dhtun signature (the BEP 44
/// items of public mode sign a bencoded `salt`/`seq`/`v`) can be taken for one of these.
pub const SIGNED_LABEL: &[u8] = b"dhtun private record v1\0";

/// Version of the inner part.
pub const PRIVATE_VERSION: u8 = 1;

/// Bytes a sealed value adds to the record it carries.
pub const PRIVATE_OVERHEAD: usize = NONCE_BYTES + TAG_BYTES + INNER_HEADER_BYTES;

/// The largest sealed value, which must fit in a DHT item.
pub const MAX_PRIVATE_BYTES: usize = PRIVATE_OVERHEAD + MAX_ENCODED_BYTES;
const _: () = assert!(MAX_PRIVATE_BYTES <= MAX_RECORD_BYTES);

/// The secret the members of one private network share: 32 bytes, base64 on one line, as
/// `dhtun genkey` prints them.
#[derive(Clone, PartialEq, Eq)]
pub struct NetworkSecret([u8; KEY_BYTES]);

/// The keys of one peer's slot in one period.
#[derive(Clone)]
pub struct PeriodKeys {
    peer: PublicKey,
    period: u64,
    blind: Scalar,
    slot_public: [u8; KEY_BYTES],
    seal: [u8; KEY_BYTES],
}

/// What signs the items of one slot: the peer's identity, blinded for the slot. Only the peer
/// can make one.
pub struct SlotSigner {
    expanded: ExpandedSecretKey,
    public: VerifyingKey,
}

/// Why a sealed value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrivateError {
    #[error("sealed record is {0} bytes, more than the {MAX_RECORD_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("sealed record is too short")]
    Truncated,
    /// Not sealed with this network's key for this slot: another network's record, or junk.
    #[error("sealed record does not decrypt with this network's key")]
    Undecryptable,
    #[error("sealed record version {0}, expected {PRIVATE_VERSION}")]
    Version(u8),
    /// Sealed for this slot but signed for another period: an old record replayed.
    #[error("sealed record is for period {got}, expected {expected}")]
    WrongPeriod { got: u64, expected: u64 },
    /// Signed for another sequence than the item's: an old record re-wrapped.
    #[error("sealed record was signed for sequence {inner}, the item has {outer}")]
    Replayed { inner: i64, outer: i64 },
    /// Not signed inside by the peer's identity: someone writing in the peer's name.
    #[error("sealed record is not signed by the peer")]
    Forged,
    /// Signed by the peer, but the record inside is not one this version reads.
    #[error("sealed record: {0}")]
    Record(RecordError),
}

impl NetworkSecret {
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        Self(bytes)
    }

    /// Parses the base64 form (one line of a secret file, as `dhtun genkey` prints), exactly as
    /// key files are parsed: surrounding whitespace ignored, anything but 32 bytes refused.
    pub fn from_base64(text: &str) -> Result<Self, crate::core::keys::KeyError> {
        crate::core::keys::decode_32(text).map(Self)
    }

    /// The periods of `peer`'s slot in use at `unix_time` (time since the Unix epoch): the
    /// current one, and the neighbour one when within `PERIOD_OVERLAP` of a boundary. The
    /// publisher writes each of them and a lookup reads each of them.
    pub fn periods(&self, peer: &PublicKey, unix_time: Duration) -> Periods {
        let period = PRIVATE_PERIOD.as_secs();
        let overlap = PERIOD_OVERLAP.as_secs();
        let shifted = unix_time.as_secs().saturating_add(self.offset(peer));
        let current = shifted / period;
        let into = shifted % period;
        let neighbour = if into < overlap {
            current.checked_sub(1)
        } else if period - into <= overlap {
            current.checked_add(1)
        } else {
            None
        };
        Periods { current, neighbour }
    }

    /// The keys of `peer`'s slot in `period`.
    pub fn keys(&self, peer: &PublicKey, period: u64) -> PeriodKeys {
        let mut wide = [0u8; 64];
        wide[..KEY_BYTES].copy_from_slice(&self.derive(LABEL_BLIND, peer, period));
        wide[KEY_BYTES..].copy_from_slice(&self.derive(LABEL_BLIND_WIDE, peer, period));
        let blind = Scalar::from_bytes_mod_order_wide(&wide);
        PeriodKeys {
            peer: *peer,
            period,
            blind,
            slot_public: (blind * identity_point(peer)).compress().to_bytes(),
            seal: self.derive(LABEL_SEAL, peer, period),
        }
    }

    /// How far `peer`'s period boundaries are shifted, in seconds, below one period.
    fn offset(&self, peer: &PublicKey) -> u64 {
        let bytes = self.derive(LABEL_OFFSET, peer, 0);
        let mut first = [0u8; 8];
        first.copy_from_slice(&bytes[..8]);
        u64::from_le_bytes(first) % PRIVATE_PERIOD.as_secs()
    }

    /// BLAKE2b keyed with the secret, personalised with `label`, over the peer's key and the
    /// period.
    fn derive(&self, label: &[u8], peer: &PublicKey, period: u64) -> [u8; KEY_BYTES] {
        // A 32-byte key and a label of at most 16 bytes are always accepted.
        let Ok(mut mac) =
            blake2::Blake2bMac::<U32>::new_with_salt_and_personal(&self.0, &[], label)
        else {
            unreachable!("BLAKE2b takes a 32-byte key and a 16-byte personalisation")
        };
        mac.update(peer.ed25519_bytes());
        mac.update(&period.to_le_bytes());
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for NetworkSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NetworkSecret(..)")
    }
}

/// The one or two periods in use at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Periods {
    pub current: u64,
    /// The previous period just after a boundary, the next one just before.
    pub neighbour: Option<u64>,
}

impl Periods {
    pub fn iter(self) -> impl Iterator<Item = u64> {
        core::iter::once(self.current).chain(self.neighbour)
    }
}

impl PeriodKeys {
    pub fn period(&self) -> u64 {
        self.period
    }

    pub fn peer(&self) -> &PublicKey {
        &self.peer
    }

    /// The public key the item is signed by and stored under.
    pub fn slot_public(&self) -> &[u8; KEY_BYTES] {
        &self.slot_public
    }

    /// What signs this slot's items, for the peer itself: `identity` blinded for the slot.
    /// `None` for any other identity, which cannot sign for the slot.
    pub fn slot_signer(&self, identity: &SecretKey) -> Option<SlotSigner> {
        if identity.public_key() != self.peer {
            return None;
        }
        let own = ExpandedSecretKey::from(identity.signing_key().as_bytes());
        // The nonce prefix must stay secret to the peer and differ per slot.
        let Ok(mut prefix) = blake2::Blake2bMac::<U32>::new_with_salt_and_personal(
            &own.hash_prefix,
            &[],
            LABEL_PREFIX,
        ) else {
            unreachable!("BLAKE2b takes a 32-byte key and a 16-byte personalisation")
        };
        prefix.update(&self.slot_public);
        let expanded = ExpandedSecretKey {
            scalar: self.blind * own.scalar,
            hash_prefix: prefix.finalize().into_bytes().into(),
        };
        Some(SlotSigner {
            public: VerifyingKey::from(self.blind * identity_point(&self.peer)),
            expanded,
        })
    }

    /// Seals `record` as the item of sequence `seq`, signed by `identity`, which must be the
    /// peer these keys are for: any other identity makes a value every member refuses as
    /// forged. `nonce` must be random (the shell draws it).
    pub fn seal(
        &self,
        identity: &SecretKey,
        seq: i64,
        record: &Record,
        nonce: [u8; NONCE_BYTES],
    ) -> Result<Vec<u8>, RecordError> {
        let record = record.encode()?;
        let signature = identity
            .signing_key()
            .sign(&self.signed_message(seq, &record));
        let mut inner = Vec::with_capacity(INNER_HEADER_BYTES + record.len());
        inner.push(PRIVATE_VERSION);
        inner.extend_from_slice(&self.period.to_le_bytes());
        inner.extend_from_slice(&seq.to_le_bytes());
        inner.extend_from_slice(&signature.to_bytes());
        inner.extend_from_slice(&record);
        Ok(self.seal_inner(inner, nonce))
    }

    /// Seals arbitrary inner bytes: what any member can seal (though only the peer can sign the
    /// item). For tests and the fuzz target, which need values that decrypt but are wrong
    /// inside.
    pub fn seal_inner(&self, mut inner: Vec<u8>, nonce: [u8; NONCE_BYTES]) -> Vec<u8> {
        let cipher = XChaCha20Poly1305::new((&self.seal).into());
        // Encrypting in memory cannot fail below the cipher's 256 GiB message limit.
        let tag = cipher
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), &self.slot_public, &mut inner)
            .unwrap_or_default();
        let mut value = Vec::with_capacity(NONCE_BYTES + inner.len() + TAG_BYTES);
        value.extend_from_slice(&nonce);
        value.extend_from_slice(&inner);
        value.extend_from_slice(&tag);
        value
    }

    /// Opens the value of an item of sequence `seq` found in this slot: the record, if it was
    /// sealed with this network's key, for this period and sequence, and signed by the peer.
    /// No input panics; the work is bounded by `MAX_RECORD_BYTES`.
    pub fn open(&self, seq: i64, value: &[u8]) -> Result<Record, PrivateError> {
        if value.len() > MAX_RECORD_BYTES {
            return Err(PrivateError::TooLarge(value.len()));
        }
        if value.len() < NONCE_BYTES + TAG_BYTES + INNER_HEADER_BYTES {
            return Err(PrivateError::Truncated);
        }
        let inner = self.decrypt(value).ok_or(PrivateError::Undecryptable)?;
        self.read_inner(seq, &inner)
    }

    /// The inner part of a value sealed with these keys, unchecked: what any member can read.
    /// `open` is the way to get a record; this is for tests, which play dishonest members.
    pub fn decrypt(&self, value: &[u8]) -> Option<Vec<u8>> {
        let rest = value.get(NONCE_BYTES..)?;
        let ciphertext = rest.get(..rest.len().checked_sub(TAG_BYTES)?)?;
        let mut inner = ciphertext.to_vec();
        XChaCha20Poly1305::new((&self.seal).into())
            .decrypt_in_place_detached(
                XNonce::from_slice(&value[..NONCE_BYTES]),
                &self.slot_public,
                &mut inner,
                Tag::from_slice(&rest[ciphertext.len()..]),
            )
            .ok()?;
        Some(inner)
    }

    /// Checks the decrypted inner part, in the order that names what went wrong.
    fn read_inner(&self, seq: i64, inner: &[u8]) -> Result<Record, PrivateError> {
        let (header, record) = inner
            .split_first_chunk::<INNER_HEADER_BYTES>()
            .ok_or(PrivateError::Truncated)?;
        if header[VERSION_AT] != PRIVATE_VERSION {
            return Err(PrivateError::Version(header[VERSION_AT]));
        }
        let period = u64::from_le_bytes(field(header, PERIOD_AT));
        if period != self.period {
            return Err(PrivateError::WrongPeriod {
                got: period,
                expected: self.period,
            });
        }
        let inner_seq = i64::from_le_bytes(field(header, SEQ_AT));
        if inner_seq != seq {
            return Err(PrivateError::Replayed {
                inner: inner_seq,
                outer: seq,
            });
        }
        let signature = Signature::from_bytes(&field(header, SIGNATURE_AT));
        let identity = VerifyingKey::from_bytes(self.peer.ed25519_bytes())
            .map_err(|_| PrivateError::Forged)?;
        identity
            .verify_strict(&self.signed_message(seq, record), &signature)
            .map_err(|_| PrivateError::Forged)?;
        Record::decode(record).map_err(PrivateError::Record)
    }

    fn signed_message(&self, seq: i64, record: &[u8]) -> Vec<u8> {
        let mut message =
            Vec::with_capacity(SIGNED_LABEL.len() + 2 * KEY_BYTES + 16 + record.len());
        message.extend_from_slice(SIGNED_LABEL);
        message.extend_from_slice(&self.slot_public);
        message.extend_from_slice(self.peer.ed25519_bytes());
        message.extend_from_slice(&self.period.to_le_bytes());
        message.extend_from_slice(&seq.to_le_bytes());
        message.extend_from_slice(record);
        message
    }
}

impl SlotSigner {
    /// The slot's public key (equal to `PeriodKeys::slot_public`).
    pub fn public(&self) -> [u8; KEY_BYTES] {
        self.public.to_bytes()
    }

    /// An Ed25519 signature of `message` by the slot key.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        raw_sign::<sha2::Sha512>(&self.expanded, message, &self.public).to_bytes()
    }
}

impl fmt::Debug for SlotSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SlotSigner({:?})", self.public)
    }
}

impl fmt::Debug for PeriodKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeriodKeys({}, period {})", self.peer, self.period)
    }
}

/// Size of the random nonce at the front of a sealed value.
pub const NONCE_BYTES: usize = 24;
const TAG_BYTES: usize = 16;

// Offsets of the inner header.
const VERSION_AT: usize = 0;
const PERIOD_AT: usize = 1;
const SEQ_AT: usize = 9;
const SIGNATURE_AT: usize = 17;
const INNER_HEADER_BYTES: usize = 81;

// BLAKE2b personalisations (at most 16 bytes), one per derived value.
const LABEL_BLIND: &[u8] = b"dhtun blind v1";
const LABEL_BLIND_WIDE: &[u8] = b"dhtun blind2 v1";
const LABEL_PREFIX: &[u8] = b"dhtun prefix v1";
const LABEL_SEAL: &[u8] = b"dhtun seal v1";
const LABEL_OFFSET: &[u8] = b"dhtun offset v1";

/// The Edwards point of `peer`'s identity key. A `PublicKey` holds only keys that decompress
/// (checked when it was parsed), so the fallback, the identity point, is never used.
fn identity_point(peer: &PublicKey) -> EdwardsPoint {
    CompressedEdwardsY(*peer.ed25519_bytes())
        .decompress()
        .unwrap_or_default()
}

/// The `N` bytes of `header` from `at`.
fn field<const N: usize>(header: &[u8; INNER_HEADER_BYTES], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&header[at..at + N]);
    out
}

#[cfg(test)]
mod tests;
