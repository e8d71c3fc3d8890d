use super::*;
use crate::core::limits::MAX_RECORD_CANDIDATES;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rand::{Rng, RngCore, SeedableRng};
use std::net::{IpAddr, Ipv6Addr};

fn secret(n: u8) -> NetworkSecret {
    NetworkSecret::from_bytes([n; 32])
}

fn identity(n: u8) -> SecretKey {
    SecretKey::from_seed([n; 32])
}

fn record() -> Record {
    Record::new(
        51820,
        &[
            "198.18.0.2".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
        ],
        Some("203.0.113.9".parse().unwrap()),
    )
    .unwrap()
}

fn largest() -> Record {
    let all: Vec<IpAddr> = (0..MAX_RECORD_CANDIDATES as u16)
        .map(|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i + 1)))
        .collect();
    Record::new(65535, &all, Some("2001:db8:ffff::1".parse().unwrap()))
        .unwrap()
        .with_reflexive(Some("[2001:db8:ffff::2]:65535".parse().unwrap()))
        .unwrap()
}

const PERIOD: u64 = 4242;

#[test]
fn round_trip() {
    let me = identity(1);
    let keys = secret(7).keys(&me.public_key(), PERIOD);
    for record in [record(), largest(), Record::new(1, &[], None).unwrap()] {
        let value = keys.seal(&me, 77, &record, [5; 24]).unwrap();
        assert_eq!(
            value.len(),
            record.encode().unwrap().len() + PRIVATE_OVERHEAD
        );
        assert!(value.len() <= MAX_PRIVATE_BYTES);
        assert_eq!(keys.open(77, &value), Ok(record));
    }
    assert_eq!(PRIVATE_OVERHEAD, 121);
    assert_eq!(MAX_PRIVATE_BYTES, 434);
}

#[test]
fn nothing_in_clear() {
    let me = identity(1);
    let keys = secret(7).keys(&me.public_key(), PERIOD);
    let value = keys.seal(&me, 77, &record(), [5; 24]).unwrap();
    let contains = |needle: &[u8]| value.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(&[198, 18, 0, 2]));
    assert!(!contains(&[203, 0, 113, 9]));
    assert!(!contains(&51820u16.to_le_bytes()));
    assert!(!contains(&me.public_key().ed25519_bytes()[..8]));
    assert_ne!(keys.slot_public(), me.public_key().ed25519_bytes());
}

#[test]
fn periods_have_unrelated_keys() {
    let peer = identity(1).public_key();
    let network = secret(7);
    let (a, b) = (network.keys(&peer, PERIOD), network.keys(&peer, PERIOD + 1));
    assert_ne!(a.slot_public(), b.slot_public());
    assert_ne!(a.seal, b.seal);
    // Unrelated, not merely different: about half the bits differ.
    let differ: u32 = a
        .slot_public()
        .iter()
        .zip(b.slot_public())
        .map(|(x, y)| (x ^ y).count_ones())
        .sum();
    assert!((64..192).contains(&differ), "{differ} bits differ");
    // Deterministic: every member derives the same.
    assert_eq!(network.keys(&peer, PERIOD).slot_public(), a.slot_public());
    // A record of one period does not open in the other's slot.
    let me = identity(1);
    let value = a.seal(&me, 1, &record(), [0; 24]).unwrap();
    assert_eq!(b.open(1, &value), Err(PrivateError::Undecryptable));
}

#[test]
fn another_network_cannot_read() {
    let me = identity(1);
    let x = secret(7).keys(&me.public_key(), PERIOD);
    let y = secret(8).keys(&me.public_key(), PERIOD);
    assert_ne!(x.slot_public(), y.slot_public());
    let value = y.seal(&me, 1, &record(), [0; 24]).unwrap();
    assert_eq!(x.open(1, &value), Err(PrivateError::Undecryptable));
}

#[test]
fn a_member_cannot_write_in_anothers_name() {
    let (victim, member) = (identity(1), identity(2));
    let keys = secret(7).keys(&victim.public_key(), PERIOD);
    // The member holds the secret, so it can derive the victim's slot and seal for it; it
    // cannot sign as the victim.
    let value = keys.seal(&member, 9, &record(), [0; 24]).unwrap();
    assert_eq!(keys.open(9, &value), Err(PrivateError::Forged));
    // Nor take the victim's signed record and change the addresses in it.
    let genuine = keys.seal(&victim, 9, &record(), [0; 24]).unwrap();
    let mut inner = decrypt(&keys, &genuine);
    let last = inner.len() - 1;
    inner[last] ^= 1;
    let altered = keys.seal_inner(inner, [1; 24]);
    assert_eq!(keys.open(9, &altered), Err(PrivateError::Forged));
}

#[test]
fn replays_are_named() {
    let me = identity(1);
    let network = secret(7);
    let now = network.keys(&me.public_key(), PERIOD);
    let before = network.keys(&me.public_key(), PERIOD - 1);
    let old = before.seal(&me, 5, &record(), [0; 24]).unwrap();
    // A member moves last period's signed record into this period's slot.
    let moved = now.seal_inner(decrypt(&before, &old), [1; 24]);
    assert_eq!(
        now.open(5, &moved),
        Err(PrivateError::WrongPeriod {
            got: PERIOD - 1,
            expected: PERIOD
        })
    );
    // Or puts an old record of this period under a new sequence.
    let old = now.seal(&me, 5, &record(), [0; 24]).unwrap();
    assert_eq!(
        now.open(6, &old),
        Err(PrivateError::Replayed { inner: 5, outer: 6 })
    );
}

#[test]
fn any_tampering_is_refused() {
    let me = identity(1);
    let keys = secret(7).keys(&me.public_key(), PERIOD);
    let value = keys.seal(&me, 1, &record(), [3; 24]).unwrap();
    for at in 0..value.len() {
        let mut bad = value.clone();
        bad[at] ^= 0x40;
        assert_eq!(keys.open(1, &bad), Err(PrivateError::Undecryptable), "{at}");
    }
    for len in 0..value.len() {
        assert!(keys.open(1, &value[..len]).is_err(), "{len}");
    }
    let mut long = value.clone();
    long.resize(MAX_RECORD_BYTES + 1, 0);
    assert_eq!(
        keys.open(1, &long),
        Err(PrivateError::TooLarge(MAX_RECORD_BYTES + 1))
    );
}

#[test]
fn inner_fields_are_strict() {
    let me = identity(1);
    let keys = secret(7).keys(&me.public_key(), PERIOD);
    let genuine = decrypt(&keys, &keys.seal(&me, 1, &record(), [0; 24]).unwrap());
    let mut version = genuine.clone();
    version[VERSION_AT] = 2;
    assert_eq!(
        keys.open(1, &keys.seal_inner(version, [0; 24])),
        Err(PrivateError::Version(2))
    );
    let short = genuine[..INNER_HEADER_BYTES - 1].to_vec();
    assert_eq!(
        keys.open(1, &keys.seal_inner(short, [0; 24])),
        Err(PrivateError::Truncated)
    );
    // Signed by the peer, but not a record: a bad record inside is Malformed, not Forged.
    let junk = b"\x09junk".to_vec();
    let signature = me.signing_key().sign(&keys.signed_message(1, &junk));
    let mut inner = genuine[..SIGNATURE_AT].to_vec();
    inner.extend_from_slice(&signature.to_bytes());
    inner.extend_from_slice(&junk);
    assert_eq!(
        keys.open(1, &keys.seal_inner(inner, [0; 24])),
        Err(PrivateError::Record(RecordError::Version(9)))
    );
}

#[test]
fn periods_overlap_at_boundaries() {
    let network = secret(7);
    let peer = identity(1).public_key();
    let offset = network.offset(&peer);
    let period = PRIVATE_PERIOD.as_secs();
    let overlap = PERIOD_OVERLAP.as_secs();
    // The instant period 1000 starts for this peer.
    let start = 1000 * period - offset;
    let at = |secs: u64| network.periods(&peer, Duration::from_secs(secs));
    assert_eq!(at(start).current, 1000);
    assert_eq!(at(start).neighbour, Some(999));
    assert_eq!(at(start - 1).current, 999);
    assert_eq!(at(start - 1).neighbour, Some(1000));
    assert_eq!(at(start + overlap - 1).neighbour, Some(999));
    assert_eq!(at(start + overlap).neighbour, None);
    assert_eq!(at(start - overlap - 1).neighbour, None);
    assert_eq!(at(start - overlap).neighbour, Some(1000));
    // Another peer's boundaries lie elsewhere.
    assert_ne!(network.offset(&identity(2).public_key()), offset);
    // Whatever a member with a clock up to PERIOD_OVERLAP off looks up first, the publisher
    // writes.
    let mut rng = rand::rngs::StdRng::seed_from_u64(24);
    for _ in 0..10_000 {
        let publisher = rng.gen_range(start - 2 * period..start + 2 * period);
        let skew = rng.gen_range(0..=2 * overlap);
        let member = publisher + skew - overlap;
        let written: Vec<u64> = at(publisher).iter().collect();
        assert!(
            written.contains(&at(member).current),
            "{publisher} {member}"
        );
    }
}

#[test]
fn secrets_parse_like_keys() {
    let text = BASE64.encode([9u8; 32]);
    assert_eq!(
        NetworkSecret::from_base64(&format!("{text}\n")),
        Ok(secret(9))
    );
    assert!(NetworkSecret::from_base64("not base64!").is_err());
    assert!(NetworkSecret::from_base64(&BASE64.encode([1u8; 31])).is_err());
    assert_eq!(format!("{:?}", secret(9)), "NetworkSecret(..)");
}

#[test]
fn random_values_never_panic() {
    let me = identity(1);
    let keys = secret(7).keys(&me.public_key(), PERIOD);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x70_72_69_76);
    let mut buf = [0u8; 600];
    for _ in 0..20_000 {
        let len = rng.gen_range(0..buf.len());
        rng.fill_bytes(&mut buf[..len]);
        // Half of them sealed, so the inner checks run on random inner bytes.
        let value = if rng.gen_bool(0.5) {
            keys.seal_inner(buf[..len].to_vec(), [0; 24])
        } else {
            buf[..len].to_vec()
        };
        assert!(keys.open(rng.gen(), &value).is_err());
    }
}

#[test]
fn only_the_peer_can_sign_for_its_slot() {
    let (peer, member) = (identity(1), identity(2));
    let network = secret(7);
    let keys = network.keys(&peer.public_key(), PERIOD);
    assert!(keys.slot_signer(&member).is_none());
    let signer = keys.slot_signer(&peer).unwrap();
    assert_eq!(&signer.public(), keys.slot_public());
    let slot = VerifyingKey::from_bytes(keys.slot_public()).unwrap();
    let signature = Signature::from_bytes(&signer.sign(b"an item"));
    assert!(slot.verify_strict(b"an item", &signature).is_ok());
    assert!(slot.verify_strict(b"another item", &signature).is_err());
    // The member's own key, or the peer's unblinded one, does not sign for the slot.
    let by_member = member.signing_key().sign(b"an item");
    assert!(slot.verify_strict(b"an item", &by_member).is_err());
    let by_identity = peer.signing_key().sign(b"an item");
    assert!(slot.verify_strict(b"an item", &by_identity).is_err());
    // Another period's signer signs for another key, with other nonces.
    let next = network.keys(&peer.public_key(), PERIOD + 1);
    let next_signer = next.slot_signer(&peer).unwrap();
    assert_ne!(next_signer.public(), signer.public());
    assert_ne!(
        next_signer.sign(b"an item")[..32],
        signer.sign(b"an item")[..32]
    );
}

/// The inner part of a value sealed with `keys`, as a member can read it.
fn decrypt(keys: &PeriodKeys, value: &[u8]) -> Vec<u8> {
    keys.decrypt(value).unwrap()
}
