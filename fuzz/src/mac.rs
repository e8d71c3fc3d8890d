//! mac1 as the handshake computes it (keyed BLAKE2s-128 under BLAKE2s-256 of a label and the
//! receiver's X25519 key), written here from the protocol description so the targets can give a
//! mutated message a correct mac1 and have it reach Noise. `check_matches_dhtun` proves the two
//! agree; the targets call it once, so a change of the label shows at once instead of silently
//! losing coverage.

use blake2::digest::{Digest, Mac};
use dhtun::core::handshake::{initiate, tai64n, Mac1Key};
use dhtun::core::keys::{PresharedKey, PublicKey, SecretKey};
use dhtun::core::wire::{Message, INITIATION_LEN, MAC_BYTES};
use std::sync::Once;

const MAC1_LABEL: &[u8] = b"dhtun v1 mac1";

/// mac1 of `input` for a message to `receiver`.
pub fn mac1(receiver: &PublicKey, input: &[u8]) -> [u8; MAC_BYTES] {
    let mut hasher = blake2::Blake2s256::new();
    hasher.update(MAC1_LABEL);
    hasher.update(receiver.x25519_bytes());
    let key: [u8; 32] = hasher.finalize().into();
    let mut mac = <blake2::Blake2sMac<blake2::digest::consts::U16> as Mac>::new_from_slice(&key)
        .expect("a 32-byte key is valid for BLAKE2s");
    mac.update(input);
    mac.finalize().into_bytes().into()
}

/// Writes a correct mac1 into a handshake message of `len` bytes laid out as `mac1_at..+16`.
pub fn fix_mac1(receiver: &PublicKey, message: &mut [u8], mac1_at: usize) {
    if message.len() >= mac1_at + MAC_BYTES {
        let tag = mac1(receiver, &message[..mac1_at]);
        message[mac1_at..mac1_at + MAC_BYTES].copy_from_slice(&tag);
    }
}

/// Panics unless `mac1` computes what dhtun's handshake writes and checks.
pub fn check_matches_dhtun() {
    static CHECKED: Once = Once::new();
    CHECKED.call_once(|| {
        let a = SecretKey::from_seed([0x11; 32]);
        let b = SecretKey::from_seed([0x22; 32]).public_key();
        let mut out = [0u8; INITIATION_LEN];
        initiate(
            &a,
            &b,
            &PresharedKey::default(),
            7,
            tai64n(core::time::Duration::from_secs(1)),
            [0x33; 32],
            &mut out,
        )
        .expect("an initiation to a valid key");
        let Ok(Message::Initiation(m)) = Message::parse(&out) else {
            panic!("dhtun's own initiation does not parse");
        };
        assert_eq!(
            &mac1(&b, m.mac1_input())[..],
            m.mac1(),
            "the fuzz crate's mac1 no longer matches dhtun's: update fuzz/src/mac.rs"
        );
        assert!(Mac1Key::for_receiver(&b).verify(m.mac1_input(), &mac1(&b, m.mac1_input())));
    });
}
