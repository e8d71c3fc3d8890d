//! Where records live in the DHT, public or private, as decisions: which slots (key, salt, and
//! how the value is made) a publish writes, and which slots a lookup reads and how it opens what
//! it finds there. The shell does the puts and gets.
//!
//! - Public (the default): one slot, the identity key with the salt `dhtun/v1`; the value is
//!   the record in clear (see `core::record`). Anyone holding the peer's public key reads it.
//! - Private (`[dht] network_secret_file`): per period, a slot whose key is derived from the
//!   network secret, the peer's key and the period, and a sealed value (see
//!   `core::private_record`); near a period boundary two slots, the current and the
//!   neighbouring period.

use crate::core::keys::{PublicKey, SecretKey, KEY_BYTES};
use crate::core::private_record::{
    NetworkSecret, PeriodKeys, PrivateError, SlotSigner, NONCE_BYTES,
};
use crate::core::record::{Record, RecordError, RECORD_SALT};
use core::time::Duration;
use ed25519_dalek::{Signer as _, SigningKey};

/// How this interface's records, and its peers', are stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Privacy {
    #[default]
    Public,
    Private(NetworkSecret),
}

/// One place a publish writes: the key that signs the item, its salt, and how the value is
/// made from the record.
#[derive(Debug)]
pub struct Slot {
    signer: ItemSigner,
    sealing: Option<PeriodKeys>,
}

/// What signs a slot's items: the identity itself (public), or the identity blinded for the
/// slot (private).
#[derive(Debug)]
enum ItemSigner {
    Identity(SigningKey),
    Blinded(SlotSigner),
}

/// How a lookup of one peer reads what it finds: which keys to look up, and how to turn an
/// item's value into a record.
#[derive(Debug, Clone)]
pub enum Reader {
    Public {
        key: [u8; KEY_BYTES],
    },
    /// One or two slots (current and neighbouring period).
    Private {
        slots: Vec<PeriodKeys>,
    },
}

/// Why an item's value gave no record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreadable {
    /// Not from a key this lookup asked for.
    WrongKey,
    /// Not a record this version reads (a public record, or a sealed one signed by the peer).
    Malformed,
    /// Does not decrypt with this network's key: another network's record.
    Undecryptable,
    /// Not signed inside by the peer: someone writing in its name.
    Forged,
    /// Signed for another period: an old record replayed.
    WrongPeriod,
    /// Signed for another sequence: an old record re-wrapped.
    Replayed,
}

impl Privacy {
    pub fn is_private(&self) -> bool {
        matches!(self, Self::Private(_))
    }

    /// The slots a publish of `identity`'s record at `unix_time` writes: one, or two near a
    /// private period's boundary.
    pub fn slots(&self, identity: &SecretKey, unix_time: Duration) -> Vec<Slot> {
        match self {
            Self::Public => vec![Slot {
                signer: ItemSigner::Identity(identity.signing_key()),
                sealing: None,
            }],
            Self::Private(secret) => {
                let me = identity.public_key();
                secret
                    .periods(&me, unix_time)
                    .iter()
                    .filter_map(|period| {
                        let keys = secret.keys(&me, period);
                        // Always there: the keys are for `identity` itself.
                        let signer = keys.slot_signer(identity)?;
                        Some(Slot {
                            signer: ItemSigner::Blinded(signer),
                            sealing: Some(keys),
                        })
                    })
                    .collect()
            }
        }
    }

    /// How a lookup of `peer` at `unix_time` reads: which keys it asks for, one or two.
    pub fn reader(&self, peer: &PublicKey, unix_time: Duration) -> Reader {
        match self {
            Self::Public => Reader::Public {
                key: *peer.ed25519_bytes(),
            },
            Self::Private(secret) => Reader::Private {
                slots: secret
                    .periods(peer, unix_time)
                    .iter()
                    .map(|period| secret.keys(peer, period))
                    .collect(),
            },
        }
    }
}

impl Slot {
    /// The public key the item is stored under.
    pub fn public(&self) -> [u8; KEY_BYTES] {
        match &self.signer {
            ItemSigner::Identity(key) => key.verifying_key().to_bytes(),
            ItemSigner::Blinded(signer) => signer.public(),
        }
    }

    /// The BEP 44 signature of an item of this slot with `value` at `seq`.
    pub fn sign_item(&self, seq: i64, value: &[u8]) -> [u8; 64] {
        let signable = bep44_signable(seq, value, self.salt());
        match &self.signer {
            ItemSigner::Identity(key) => key.sign(&signable).to_bytes(),
            ItemSigner::Blinded(signer) => signer.sign(&signable),
        }
    }

    /// The BEP 44 salt: the protocol's in public mode; none in private mode, where the key alone
    /// is unique to dhtun and a constant salt would only mark the item as dhtun's.
    pub fn salt(&self) -> Option<&'static [u8]> {
        match self.sealing {
            None => Some(RECORD_SALT),
            Some(_) => None,
        }
    }

    /// The private period this slot belongs to, if private.
    pub fn period(&self) -> Option<u64> {
        self.sealing.as_ref().map(PeriodKeys::period)
    }

    /// The item's value for `record` at sequence `seq`, signed inside by `identity` when
    /// private; `nonce` is random, drawn by the shell (unused in public mode).
    pub fn value(
        &self,
        identity: &SecretKey,
        seq: i64,
        record: &Record,
        nonce: [u8; NONCE_BYTES],
    ) -> Result<Vec<u8>, RecordError> {
        match &self.sealing {
            None => record.encode(),
            Some(keys) => keys.seal(identity, seq, record, nonce),
        }
    }
}

impl Reader {
    /// The keys and salts to look up.
    pub fn targets(&self) -> Vec<([u8; KEY_BYTES], Option<&'static [u8]>)> {
        match self {
            Self::Public { key } => vec![(*key, Some(RECORD_SALT))],
            Self::Private { slots } => slots.iter().map(|s| (*s.slot_public(), None)).collect(),
        }
    }

    /// The record in an item of `key` with sequence `seq`, or why there is none.
    pub fn read(
        &self,
        key: &[u8; KEY_BYTES],
        seq: i64,
        value: &[u8],
    ) -> Result<Record, Unreadable> {
        match self {
            Self::Public { key: ours } if ours == key => {
                Record::decode(value).map_err(|_| Unreadable::Malformed)
            }
            Self::Public { .. } => Err(Unreadable::WrongKey),
            Self::Private { slots } => {
                let slot = slots
                    .iter()
                    .find(|s| s.slot_public() == key)
                    .ok_or(Unreadable::WrongKey)?;
                slot.open(seq, value).map_err(|e| match e {
                    PrivateError::Undecryptable => Unreadable::Undecryptable,
                    PrivateError::Forged => Unreadable::Forged,
                    PrivateError::WrongPeriod { .. } => Unreadable::WrongPeriod,
                    PrivateError::Replayed { .. } => Unreadable::Replayed,
                    PrivateError::TooLarge(_)
                    | PrivateError::Truncated
                    | PrivateError::Version(_)
                    | PrivateError::Record(_) => Unreadable::Malformed,
                })
            }
        }
    }

    /// Whether `key` is one this lookup asked for.
    pub fn asked_for(&self, key: &[u8; KEY_BYTES]) -> bool {
        match self {
            Self::Public { key: ours } => ours == key,
            Self::Private { slots } => slots.iter().any(|s| s.slot_public() == key),
        }
    }
}

/// What a BEP 44 mutable item's signature covers: the bencoded salt (if any), sequence number
/// and value, without the outer dictionary.
pub fn bep44_signable(seq: i64, value: &[u8], salt: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 64);
    if let Some(salt) = salt {
        out.extend_from_slice(format!("4:salt{}:", salt.len()).as_bytes());
        out.extend_from_slice(salt);
    }
    out.extend_from_slice(format!("3:seqi{seq}e1:v{}:", value.len()).as_bytes());
    out.extend_from_slice(value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(n: u8) -> NetworkSecret {
        NetworkSecret::from_bytes([n; 32])
    }

    fn record() -> Record {
        Record::new(51820, &["198.18.0.7".parse().unwrap()], None).unwrap()
    }

    #[test]
    fn public_mode_is_todays_record() {
        let me = SecretKey::from_seed([1; 32]);
        let slots = Privacy::Public.slots(&me, Duration::ZERO);
        assert_eq!(slots.len(), 1);
        assert_eq!(&slots[0].public(), me.public_key().ed25519_bytes());
        assert_eq!(slots[0].salt(), Some(RECORD_SALT));
        let value = slots[0].value(&me, 1, &record(), [0; 24]).unwrap();
        assert_eq!(value, record().encode().unwrap());
        let reader = Privacy::Public.reader(&me.public_key(), Duration::ZERO);
        assert_eq!(reader.read(&slots[0].public(), 1, &value), Ok(record()));
        // The item is signed as mainline signs it (Ed25519 signatures are deterministic).
        let item = mainline::MutableItem::new(me.signing_key(), &value, 1, Some(RECORD_SALT));
        assert_eq!(&slots[0].sign_item(1, &value), item.signature());
        assert_eq!(reader.read(&[9; 32], 1, &value), Err(Unreadable::WrongKey));
    }

    #[test]
    fn a_member_reads_what_a_member_publishes_in_every_slot() {
        let me = SecretKey::from_seed([1; 32]);
        let privacy = Privacy::Private(secret(3));
        let period = crate::core::private_record::PRIVATE_PERIOD;
        // Across two periods, in steps that land on both sides of each boundary.
        let mut two = 0;
        for step in 0..100u32 {
            let now = Duration::from_secs(1_800_000_000) + period / 37 * step;
            let slots = privacy.slots(&me, now);
            let reader = privacy.reader(&me.public_key(), now);
            assert_eq!(reader.targets().len(), slots.len());
            two += usize::from(slots.len() == 2);
            for (seq, slot) in (1..).zip(&slots) {
                assert_eq!(slot.salt(), None);
                assert_ne!(&slot.public(), me.public_key().ed25519_bytes());
                let value = slot.value(&me, seq, &record(), [seq as u8; 24]).unwrap();
                assert_eq!(reader.read(&slot.public(), seq, &value), Ok(record()));
                // The item's signature checks out under the slot key, as DHT nodes check it.
                let signature = slot.sign_item(seq, &value);
                let item = mainline::MutableItem::new_signed_unchecked(
                    slot.public(),
                    signature,
                    &value,
                    seq,
                    slot.salt(),
                );
                let key = ed25519_dalek::VerifyingKey::from_bytes(item.key()).unwrap();
                let signable = bep44_signable(seq, &value, None);
                let signature = ed25519_dalek::Signature::from_bytes(item.signature());
                assert!(key.verify_strict(&signable, &signature).is_ok());
                // Public-mode readers, and another network's, find nothing they can use.
                let public = Privacy::Public.reader(&me.public_key(), now);
                assert_eq!(
                    public.read(&slot.public(), seq, &value),
                    Err(Unreadable::WrongKey)
                );
                let other = Privacy::Private(secret(4)).reader(&me.public_key(), now);
                assert!(!other.asked_for(&slot.public()));
            }
        }
        assert!(two > 0, "no step fell near a boundary");
    }
}
