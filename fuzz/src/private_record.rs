//! Target `private_record`: `PeriodKeys::open` on arbitrary DHT item values, on arbitrary inner
//! parts sealed with the right key (what a dishonest member can write), and on genuine sealed
//! records with one byte changed.
//!
//! The first byte picks the mode, the next eight are the item's sequence number. Checks, besides
//! never panicking: a value nobody sealed with the network's key is refused; an inner part
//! opens only when it is a genuine one (the peer's signature over this slot, period and
//! sequence, then a record that re-encodes to the same bytes); a genuine sealed record opens to
//! what was sealed, and any changed byte makes it `Undecryptable`; over the size limit is
//! `TooLarge`.

use crate::input::Input;
use dhtun::core::keys::SecretKey;
use dhtun::core::limits::MAX_RECORD_BYTES;
use dhtun::core::private_record::{NetworkSecret, PeriodKeys, PrivateError};
use dhtun::core::record::Record;

/// The identity that publishes, and the period every mode uses.
pub const PEER_SEED: [u8; 32] = [1; 32];
pub const NETWORK: [u8; 32] = [7; 32];
pub const PERIOD: u64 = 42;

pub fn keys() -> (SecretKey, PeriodKeys) {
    let peer = SecretKey::from_seed(PEER_SEED);
    let keys = NetworkSecret::from_bytes(NETWORK).keys(&peer.public_key(), PERIOD);
    (peer, keys)
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte();
    let seq = input.u64() as i64;
    let rest = input.rest();
    let (peer, keys) = keys();
    match mode % 3 {
        0 => {
            // Nobody without the secret can produce a value that opens.
            match keys.open(seq, rest) {
                Ok(record) => panic!("random bytes opened as {record:?}"),
                Err(PrivateError::TooLarge(n)) => assert!(n > MAX_RECORD_BYTES),
                Err(_) => assert!(rest.len() <= MAX_RECORD_BYTES),
            }
        }
        1 => {
            let sealed = keys.seal_inner(rest.to_vec(), [9; 24]);
            if let Ok(record) = keys.open(seq, &sealed) {
                // Only the peer's own inner part opens: sealing it again as the peer gives the
                // same bytes (Ed25519 signatures are deterministic).
                let again = keys.seal(&peer, seq, &record, [9; 24]).expect("seals");
                assert_eq!(again, sealed, "an inner part opened that the peer never made");
            }
        }
        _ => {
            let Ok(record) = Record::decode(rest) else {
                return;
            };
            let sealed = keys.seal(&peer, seq, &record, [3; 24]).expect("a record seals");
            assert_eq!(keys.open(seq, &sealed).as_ref(), Ok(&record));
            let flip = usize::from(mode) % sealed.len();
            let mut changed = sealed.clone();
            changed[flip] ^= 0x80;
            assert_eq!(keys.open(seq, &changed), Err(PrivateError::Undecryptable));
        }
    }
}
