//! The handshake: mac1 written from the protocol description, and random or mutated
//! initiations and responses refused unless their Noise bytes are intact.

use blake2::digest::{Digest, Mac};
use dhtun::core::handshake::{
    initiate, receive_initiation, tai64n, HandshakeError, Mac1Key, PendingInitiation,
};
use dhtun::core::keys::{PresharedKey, PublicKey, SecretKey};
use dhtun::core::wire::{self, Message, INITIATION_LEN, RESPONSE_LEN};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

use crate::flip;

/// mac1 written from the protocol description: keyed BLAKE2s-128 under BLAKE2s-256 of the label
/// and the receiver's X25519 key. `our_mac1_matches_dhtun` proves it agrees with dhtun.
fn mac1(receiver: &PublicKey, input: &[u8]) -> [u8; 16] {
    let mut hasher = blake2::Blake2s256::new();
    hasher.update(b"dhtun v1 mac1");
    hasher.update(receiver.x25519_bytes());
    let key: [u8; 32] = hasher.finalize().into();
    let mut mac =
        <blake2::Blake2sMac<blake2::digest::consts::U16> as Mac>::new_from_slice(&key).unwrap();
    mac.update(input);
    mac.finalize().into_bytes().into()
}

pub(crate) fn fix_mac1(receiver: &PublicKey, message: &mut [u8], mac1_at: usize) {
    let tag = mac1(receiver, &message[..mac1_at]);
    message[mac1_at..mac1_at + 16].copy_from_slice(&tag);
}

pub(crate) fn mac1_ok(receiver: &PublicKey, message: &[u8], mac1_at: usize) -> bool {
    message.len() >= mac1_at + 16
        && mac1(receiver, &message[..mac1_at])[..] == message[mac1_at..mac1_at + 16]
}

pub(crate) fn key(n: u8) -> SecretKey {
    SecretKey::from_seed([n; 32])
}

fn start(
    from: &SecretKey,
    to: &PublicKey,
    psk: &PresharedKey,
    sender: u32,
    seed: u8,
) -> (PendingInitiation, [u8; INITIATION_LEN]) {
    let mut out = [0u8; INITIATION_LEN];
    let pending = initiate(
        from,
        to,
        psk,
        sender,
        tai64n(Duration::from_secs(1_700_000_000)),
        [seed; 32],
        &mut out,
    )
    .unwrap();
    (pending, out)
}

#[test]
fn our_mac1_matches_dhtun() {
    let (_, init) = start(
        &key(2),
        &key(1).public_key(),
        &PresharedKey::default(),
        1,
        1,
    );
    let Ok(Message::Initiation(m)) = Message::parse(&init) else {
        panic!("an initiation that does not parse");
    };
    assert_eq!(&mac1(&key(1).public_key(), m.mac1_input())[..], m.mac1());
    assert!(Mac1Key::for_receiver(&key(1).public_key())
        .verify(m.mac1_input(), &mac1(&key(1).public_key(), m.mac1_input())));
}

#[test]
fn handshake_refuses_random_initiations_and_responses() {
    let mut rng = StdRng::seed_from_u64(0x484b_5231);
    let (local, peer) = (key(1), key(2));
    let own = local.public_key();
    let own_mac1 = Mac1Key::for_receiver(&own);
    let [_, init_mac1, _] = wire::initiation_layout();
    let [_, resp_mac1, _] = wire::response_layout();
    // Most without a valid mac1 (cheap), some with one so the bytes reach Noise.
    for i in 0..20_000 {
        let mut init = [0u8; INITIATION_LEN];
        rng.fill(&mut init[4..]);
        wire::write_initiation_header(&mut init, rng.gen());
        let with_mac1 = i % 100 == 0;
        if with_mac1 {
            fix_mac1(&own, &mut init, init_mac1.start);
        }
        let Ok(Message::Initiation(m)) = Message::parse(&init) else {
            panic!("a shaped initiation does not parse");
        };
        let result = receive_initiation(&local, &own_mac1, m, [0; 32]);
        let expected = if with_mac1 {
            HandshakeError::Noise
        } else {
            HandshakeError::BadMac
        };
        assert_eq!(result.err(), Some(expected));
    }
    for i in 0..100 {
        let (pending, _) = start(
            &local,
            &peer.public_key(),
            &PresharedKey::default(),
            i,
            i as u8,
        );
        let mut resp = [0u8; RESPONSE_LEN];
        rng.fill(&mut resp[4..]);
        wire::write_response_header(&mut resp, rng.gen(), i);
        let with_mac1 = i % 2 == 0;
        if with_mac1 {
            fix_mac1(&own, &mut resp, resp_mac1.start);
        }
        let Ok(Message::Response(m)) = Message::parse(&resp) else {
            panic!("a shaped response does not parse");
        };
        let expected = if with_mac1 {
            HandshakeError::Noise
        } else {
            HandshakeError::BadMac
        };
        assert_eq!(
            pending.receive_response(&own_mac1, m).err().map(|(e, _)| e),
            Some(expected)
        );
    }
}

#[test]
fn handshake_accepts_a_mutated_message_exactly_when_its_noise_bytes_are_intact() {
    let mut rng = StdRng::seed_from_u64(0x4d55_5441);
    let (local, peer) = (key(1), key(2));
    let (own, theirs) = (local.public_key(), peer.public_key());
    let (own_mac1, their_mac1) = (Mac1Key::for_receiver(&own), Mac1Key::for_receiver(&theirs));
    let [init_noise, init_mac1, _] = wire::initiation_layout();
    let [resp_noise, resp_mac1, _] = wire::response_layout();
    for i in 0..100u32 {
        // The peer initiates to us; the initiation is mutated, mac1 made right again.
        let (psk_i, psk_r) = if i % 5 == 0 {
            (PresharedKey([7; 32]), PresharedKey::default())
        } else {
            (PresharedKey::default(), PresharedKey::default())
        };
        let (pending, original) = start(&peer, &own, &psk_i, i, i as u8);
        let mut init = original;
        flip(&mut rng, &mut init);
        if rng.gen_bool(0.8) {
            fix_mac1(&own, &mut init, init_mac1.start);
        }
        let Ok(Message::Initiation(m)) = Message::parse(&init) else {
            assert_ne!(original[..4], init[..4], "an intact header did not parse");
            continue;
        };
        let result = receive_initiation(&local, &own_mac1, m, [1; 32]);
        if !mac1_ok(&own, &init, init_mac1.start) {
            assert_eq!(result.err(), Some(HandshakeError::BadMac));
            continue;
        }
        let intact = original[init_noise.clone()] == init[init_noise.clone()];
        let received = match result {
            Ok(received) => {
                assert!(intact, "a tampered initiation was accepted");
                received
            }
            Err(e) => {
                assert!(!intact && e == HandshakeError::Noise, "{e:?}");
                continue;
            }
        };
        assert_eq!(&received.remote_x25519, theirs.x25519_bytes());
        assert_eq!(received.sender_index, m.sender());
        // Our response, mutated on its way back.
        let mut original = [0u8; RESPONSE_LEN];
        received
            .respond(&theirs, &psk_r, 99, &mut original)
            .unwrap();
        let mut resp = original;
        if rng.gen_bool(0.5) {
            flip(&mut rng, &mut resp);
            fix_mac1(&theirs, &mut resp, resp_mac1.start);
        }
        let Ok(Message::Response(r)) = Message::parse(&resp) else {
            assert_ne!(original[..4], resp[..4]);
            continue;
        };
        let should_work =
            original[resp_noise.clone()] == resp[resp_noise.clone()] && psk_i == psk_r;
        assert_eq!(
            pending.receive_response(&their_mac1, r).is_ok(),
            should_work
        );
    }
}
