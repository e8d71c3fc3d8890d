//! Identity keys: one Ed25519 identity per interface, and its X25519 form for Noise.
//!
//! The secret key is an Ed25519 seed and a peer is named by its Ed25519 public key, so the same
//! 32 bytes can later sign DHT records. The Noise static key is the birational (Edwards to
//! Montgomery) map of that identity: the X25519 secret is the clamped scalar Ed25519 derives from
//! the seed, and the X25519 public key is the Montgomery form of the Ed25519 point. A remote is
//! authenticated by comparing the X25519 key Noise reports with the map of the configured key.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use core::fmt;
use ed25519_dalek::{SigningKey, VerifyingKey};

/// Length of every key dhtun reads or prints, in bytes.
pub const KEY_BYTES: usize = 32;

/// Why a key string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not valid base64")]
    Base64,
    #[error("decodes to {0} bytes, expected 32")]
    Length(usize),
    #[error("not a valid Ed25519 public key (not a point on the curve, or a weak point)")]
    NotOnCurve,
}

/// Our own identity: the Ed25519 seed and everything derived from it.
#[derive(Clone)]
pub struct SecretKey {
    seed: [u8; KEY_BYTES],
    public: PublicKey,
    x25519_secret: [u8; KEY_BYTES],
}

/// A peer's identity: its Ed25519 public key, with the X25519 form Noise uses.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey {
    ed25519: [u8; KEY_BYTES],
    x25519: [u8; KEY_BYTES],
}

/// A preshared key mixed into the handshake (all zeros when none is configured).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct PresharedKey(pub [u8; KEY_BYTES]);

impl SecretKey {
    /// The identity whose Ed25519 seed is `seed`. Every 32-byte string is a valid seed.
    pub fn from_seed(seed: [u8; KEY_BYTES]) -> Self {
        let signing = SigningKey::from_bytes(&seed);
        let public = PublicKey::from_verifying_key(&signing.verifying_key());
        // Ed25519 derives its scalar from SHA-512(seed) and clamps it; X25519 clamps the same
        // way, so these bytes are a valid X25519 secret whose public key is `public.x25519`.
        let x25519_secret = signing.to_scalar_bytes();
        Self {
            seed,
            public,
            x25519_secret,
        }
    }

    /// Parses the standard base64 form `dhtun genkey` prints.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode_32(text).map(Self::from_seed)
    }

    pub fn to_base64(&self) -> String {
        BASE64.encode(self.seed)
    }

    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The Noise static secret.
    pub fn x25519_secret(&self) -> &[u8; KEY_BYTES] {
        &self.x25519_secret
    }

    /// The Ed25519 signing key, for signing DHT records.
    pub fn signing_key(&self) -> SigningKey {
        SigningKey::from_bytes(&self.seed)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {})", self.public)
    }
}

impl PublicKey {
    /// Parses a peer's public key; refuses anything that is not a usable Ed25519 point.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        Self::from_bytes(&decode_32(text)?)
    }

    pub fn from_bytes(bytes: &[u8; KEY_BYTES]) -> Result<Self, KeyError> {
        let verifying = VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::NotOnCurve)?;
        // A small-order point would map to an X25519 key whose shared secrets are predictable.
        if verifying.is_weak() {
            return Err(KeyError::NotOnCurve);
        }
        Ok(Self::from_verifying_key(&verifying))
    }

    pub fn to_base64(&self) -> String {
        BASE64.encode(self.ed25519)
    }

    pub fn ed25519_bytes(&self) -> &[u8; KEY_BYTES] {
        &self.ed25519
    }

    /// The Noise static public key of this identity.
    pub fn x25519_bytes(&self) -> &[u8; KEY_BYTES] {
        &self.x25519
    }

    fn from_verifying_key(verifying: &VerifyingKey) -> Self {
        Self {
            ed25519: verifying.to_bytes(),
            x25519: verifying.to_montgomery().to_bytes(),
        }
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl PresharedKey {
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode_32(text).map(Self)
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(..)")
    }
}

pub(crate) fn decode_32(text: &str) -> Result<[u8; KEY_BYTES], KeyError> {
    let bytes = BASE64
        .decode(text.trim().as_bytes())
        .map_err(|_| KeyError::Base64)?;
    <[u8; KEY_BYTES]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Length(bytes.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::montgomery::MontgomeryPoint;

    #[test]
    fn x25519_public_matches_x25519_of_mapped_secret() {
        for i in 0..32u8 {
            let key = SecretKey::from_seed([i.wrapping_mul(7).wrapping_add(1); 32]);
            let derived = MontgomeryPoint::mul_base_clamped(*key.x25519_secret());
            assert_eq!(derived.to_bytes(), *key.public_key().x25519_bytes());
        }
    }

    #[test]
    fn base64_round_trip() {
        let key = SecretKey::from_seed([42; 32]);
        let again = SecretKey::from_base64(&key.to_base64()).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        let public = PublicKey::from_base64(&key.public_key().to_base64()).unwrap();
        assert_eq!(public, key.public_key());
    }

    #[test]
    fn bad_keys_say_what_is_wrong() {
        assert_eq!(PublicKey::from_base64("***"), Err(KeyError::Base64));
        assert_eq!(
            PublicKey::from_base64(&BASE64.encode([1u8; 31])),
            Err(KeyError::Length(31))
        );
        // The identity point encodes as 1 followed by zeros: on the curve, but of small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(
            PublicKey::from_base64(&BASE64.encode(identity)),
            Err(KeyError::NotOnCurve)
        );
    }
}
