//! Proof of address ownership for handshakes under load, as WireGuard does it (whitepaper 5.4.7).
//!
//! An initiation costs the responder two Curve25519 operations. When initiations arrive faster
//! than we want to spend on them, we answer one without a valid `mac2` with a cookie reply
//! instead: a MAC of the sender's address under a secret that changes every two minutes,
//! encrypted to the initiator. Only a sender that receives at its claimed address can learn the
//! cookie, and only with it can it compute the `mac2` that gets its next initiation processed.
//! A flood from spoofed addresses costs us a MAC and a reply per packet, never a Diffie-Hellman.

use crate::core::keys::PublicKey;
use crate::core::limits::COOKIE_SECRET_LIFETIME;
use crate::core::wire::{COOKIE_REPLY_LEN, MAC_BYTES};
use blake2::digest::{Digest, Mac};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use core::time::Duration;
use std::net::SocketAddr;

const COOKIE_KEY_LABEL: &[u8] = b"dhtun v1 cookie";
pub const COOKIE_NONCE_BYTES: usize = 24;
const AEAD_TAG: usize = 16;

/// The responder's side: the rotating secret, and the key cookie replies are encrypted with.
pub struct CookieMaker {
    secret: [u8; 32],
    secret_born: Duration,
    reply_key: [u8; 32],
}

/// A cookie an initiator received, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cookie {
    pub value: [u8; MAC_BYTES],
    pub received_at: Duration,
}

impl CookieMaker {
    /// `own` is our public key; `secret` a fresh random value from the caller.
    pub fn new(own: &PublicKey, secret: [u8; 32], now: Duration) -> Self {
        Self {
            secret,
            secret_born: now,
            reply_key: cookie_key(own),
        }
    }

    /// Whether the secret is older than its lifetime and must be replaced.
    pub fn needs_rotation(&self, now: Duration) -> bool {
        now.saturating_sub(self.secret_born) >= COOKIE_SECRET_LIFETIME
    }

    /// Replaces the secret with `fresh` randomness.
    pub fn rotate(&mut self, now: Duration, fresh: [u8; 32]) {
        self.secret = fresh;
        self.secret_born = now;
    }

    /// Whether `mac2` proves that `from` received a cookie of ours.
    pub fn mac2_valid(&self, from: SocketAddr, mac2_input: &[u8], mac2: &[u8]) -> bool {
        let cookie = self.cookie_for(from);
        let mut mac = keyed_mac(&cookie);
        mac.update(mac2_input);
        mac.verify_slice(mac2).is_ok()
    }

    /// Writes a cookie reply for the initiation `sender_index` whose mac1 was `mac1`, to `from`.
    pub fn write_reply(
        &self,
        from: SocketAddr,
        sender_index: u32,
        mac1: &[u8],
        nonce: [u8; COOKIE_NONCE_BYTES],
        out: &mut [u8; COOKIE_REPLY_LEN],
    ) {
        let cookie = self.cookie_for(from);
        let [nonce_at, cookie_at, tag_at] = crate::core::wire::cookie_reply_layout();
        crate::core::wire::write_cookie_reply_header(out, sender_index);
        out[nonce_at].copy_from_slice(&nonce);
        out[cookie_at.clone()].copy_from_slice(&cookie);
        let cipher = XChaCha20Poly1305::new((&self.reply_key).into());
        // Encrypting 16 bytes into a buffer of 16 cannot fail.
        if let Ok(tag) =
            cipher.encrypt_in_place_detached(XNonce::from_slice(&nonce), mac1, &mut out[cookie_at])
        {
            out[tag_at].copy_from_slice(&tag);
        }
    }

    pub(crate) fn cookie_for(&self, from: SocketAddr) -> [u8; MAC_BYTES] {
        let mut mac = keyed_mac(&self.secret);
        match from {
            SocketAddr::V4(v4) => mac.update(&v4.ip().octets()),
            SocketAddr::V6(v6) => mac.update(&v6.ip().octets()),
        }
        mac.update(&from.port().to_be_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// The initiator's side: opens a cookie reply from `responder` to an initiation whose mac1 we
/// sent as `mac1`. None when it does not decrypt (forged, or for another initiation).
pub fn open_reply(
    responder: &PublicKey,
    mac1: &[u8],
    nonce: &[u8],
    sealed: &[u8],
    tag: &[u8],
    now: Duration,
) -> Option<Cookie> {
    if nonce.len() != COOKIE_NONCE_BYTES || sealed.len() != MAC_BYTES || tag.len() != AEAD_TAG {
        return None;
    }
    let key = cookie_key(responder);
    let cipher = XChaCha20Poly1305::new((&key).into());
    let mut value = [0u8; MAC_BYTES];
    value.copy_from_slice(sealed);
    cipher
        .decrypt_in_place_detached(XNonce::from_slice(nonce), mac1, &mut value, tag.into())
        .ok()?;
    Some(Cookie {
        value,
        received_at: now,
    })
}

/// mac2 over an initiation, with a cookie we hold.
pub fn mac2(cookie: &Cookie, mac2_input: &[u8]) -> [u8; MAC_BYTES] {
    let mut mac = keyed_mac(&cookie.value);
    mac.update(mac2_input);
    mac.finalize().into_bytes().into()
}

fn cookie_key(responder: &PublicKey) -> [u8; 32] {
    let mut hasher = blake2::Blake2s256::new();
    hasher.update(COOKIE_KEY_LABEL);
    hasher.update(responder.x25519_bytes());
    hasher.finalize().into()
}

fn keyed_mac(key: &[u8]) -> blake2::Blake2sMac<blake2::digest::consts::U16> {
    // BLAKE2s takes keys of 1 to 32 bytes; ours are 16 or 32.
    match <blake2::Blake2sMac<blake2::digest::consts::U16> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("cookie keys are 16 or 32 bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::keys::SecretKey;
    use crate::core::wire::{Message, COOKIE_REPLY_LEN};

    #[test]
    fn a_cookie_reply_round_trips_and_proves_the_address() {
        let responder = SecretKey::from_seed([1; 32]).public_key();
        let maker = CookieMaker::new(&responder, [7; 32], Duration::ZERO);
        let from: SocketAddr = "198.18.0.1:51820".parse().unwrap();
        let mac1 = [3u8; MAC_BYTES];
        let mut reply = [0u8; COOKIE_REPLY_LEN];
        maker.write_reply(from, 42, &mac1, [9; COOKIE_NONCE_BYTES], &mut reply);
        let Ok(Message::CookieReply(parsed)) = Message::parse(&reply) else {
            panic!("cookie reply did not parse");
        };
        assert_eq!(parsed.receiver(), 42);
        let cookie = open_reply(
            &responder,
            &mac1,
            parsed.nonce(),
            parsed.sealed_cookie(),
            parsed.tag(),
            Duration::ZERO,
        )
        .expect("the reply opens");
        let message = b"an initiation up to mac2";
        assert!(maker.mac2_valid(from, message, &mac2(&cookie, message)));
        // The same cookie proves nothing for another address.
        let elsewhere: SocketAddr = "198.18.0.9:51820".parse().unwrap();
        assert!(!maker.mac2_valid(elsewhere, message, &mac2(&cookie, message)));
        // Nor does a reply bound to another initiation's mac1 open.
        let other = [4u8; MAC_BYTES];
        assert!(open_reply(
            &responder,
            &other,
            parsed.nonce(),
            parsed.sealed_cookie(),
            parsed.tag(),
            Duration::ZERO
        )
        .is_none());
    }

    #[test]
    fn rotation_invalidates_old_cookies() {
        let responder = SecretKey::from_seed([1; 32]).public_key();
        let mut maker = CookieMaker::new(&responder, [7; 32], Duration::ZERO);
        let from: SocketAddr = "198.18.0.1:51820".parse().unwrap();
        let cookie = Cookie {
            value: maker.cookie_for(from),
            received_at: Duration::ZERO,
        };
        let message = b"initiation";
        assert!(maker.mac2_valid(from, message, &mac2(&cookie, message)));
        assert!(!maker.needs_rotation(Duration::from_secs(60)));
        assert!(maker.needs_rotation(COOKIE_SECRET_LIFETIME));
        maker.rotate(COOKIE_SECRET_LIFETIME, [8; 32]);
        assert!(!maker.mac2_valid(from, message, &mac2(&cookie, message)));
    }
}
