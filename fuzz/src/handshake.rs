//! Target `handshake`: initiations and responses fed to the Noise handshake.
//!
//! The first byte picks one of four modes:
//! - 0: the rest, as an initiation to our fixed local key (`receive_initiation`);
//! - 1: the rest, as the response to an initiation we just sent (`receive_response`);
//! - 2: a valid initiation from the peer, with fuzzer-chosen bytes flipped;
//! - 3: a valid response from the peer, with fuzzer-chosen bytes flipped.
//!
//! In modes 0 and 1 a flag byte can set the type and reserved bytes, the size and a correct
//! mac1, so random bytes get past the cheap checks and reach Noise. Checks, besides never
//! panicking: a message whose mac1 is wrong is refused with `BadMac`; in modes 2 and 3 (mac1
//! recomputed unless the flags say not to), a message is accepted exactly when its Noise bytes
//! are untouched (and, for a response, the preshared keys agree); an accepted initiation reports
//! the peer's key, the timestamp and the sender index it carried, and can be answered with a
//! response that completes the initiator's handshake.

use crate::input::Input;
use crate::mac::{self, fix_mac1};
use dhtun::core::handshake::{
    initiate, receive_initiation, tai64n, HandshakeError, Mac1Key, PendingInitiation,
};
use dhtun::core::keys::{PresharedKey, PublicKey, SecretKey};
use dhtun::core::wire::{self, Message, INITIATION_LEN, RESPONSE_LEN};
use std::sync::OnceLock;

/// Our side (seed 1) and the one peer (seed 2); the same keys the corpus generator uses.
pub struct Keys {
    pub local: SecretKey,
    pub peer: SecretKey,
    pub local_mac1: Mac1Key,
    pub peer_mac1: Mac1Key,
}

pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let local = SecretKey::from_seed([1; 32]);
        let peer = SecretKey::from_seed([2; 32]);
        Keys {
            local_mac1: Mac1Key::for_receiver(&local.public_key()),
            peer_mac1: Mac1Key::for_receiver(&peer.public_key()),
            local,
            peer,
        }
    })
}

const FIX_HEADER: u8 = 1;
const FIX_SIZE: u8 = 2;
const FIX_MAC1: u8 = 4;

pub fn run(data: &[u8]) {
    mac::check_matches_dhtun();
    let mut input = Input::new(data);
    match input.byte() % 4 {
        0 => raw_initiation(&mut input),
        1 => raw_response(&mut input),
        2 => mutated_initiation(&mut input),
        _ => mutated_response(&mut input),
    }
}

/// Shapes raw bytes into a message as the flags ask.
fn shape(bytes: &[u8], flags: u8, kind: u8, len: usize, mac1_at: usize, to: &PublicKey) -> Vec<u8> {
    let mut message = bytes.to_vec();
    if flags & FIX_SIZE != 0 {
        message.resize(len, 0);
    }
    if flags & FIX_HEADER != 0 && message.len() >= 4 {
        message[..4].copy_from_slice(&[kind, 0, 0, 0]);
    }
    if flags & FIX_MAC1 != 0 {
        fix_mac1(to, &mut message, mac1_at);
    }
    message
}

fn mac1_ok(to: &PublicKey, message: &[u8], mac1_at: usize) -> bool {
    message.len() >= mac1_at + wire::MAC_BYTES
        && mac::mac1(to, &message[..mac1_at])[..] == message[mac1_at..mac1_at + wire::MAC_BYTES]
}

fn raw_initiation(input: &mut Input<'_>) {
    let k = keys();
    let flags = input.byte();
    let seed = [input.byte(); 32];
    let [_, mac1_at, _] = wire::initiation_layout();
    let own = k.local.public_key();
    let message = shape(
        input.rest(),
        flags,
        wire::TYPE_INITIATION,
        INITIATION_LEN,
        mac1_at.start,
        &own,
    );
    let Ok(Message::Initiation(m)) = Message::parse(&message) else {
        return;
    };
    let result = receive_initiation(&k.local, &k.local_mac1, m, seed);
    if !mac1_ok(&own, &message, mac1_at.start) {
        assert_eq!(result.err(), Some(HandshakeError::BadMac));
        return;
    }
    if let Ok(received) = result {
        // Only a real initiator gets here; answer it to exercise respond too.
        let mut out = [0u8; RESPONSE_LEN];
        let _ = received.respond(&k.peer.public_key(), &PresharedKey::default(), 1, &mut out);
    }
}

fn raw_response(input: &mut Input<'_>) {
    let k = keys();
    let flags = input.byte();
    let sender = input.u32();
    let (pending, _) = start(
        &k.local,
        &k.peer.public_key(),
        sender,
        &PresharedKey::default(),
        input.byte(),
    );
    let [_, mac1_at, _] = wire::response_layout();
    let own = k.local.public_key();
    let mut message = shape(
        input.rest(),
        flags,
        wire::TYPE_RESPONSE,
        RESPONSE_LEN,
        mac1_at.start,
        &own,
    );
    if flags & 8 != 0 && message.len() >= 12 {
        // Address the response to the initiation's index, as a real one would be.
        message[8..12].copy_from_slice(&sender.to_le_bytes());
        if flags & FIX_MAC1 != 0 {
            fix_mac1(&own, &mut message, mac1_at.start);
        }
    }
    let Ok(Message::Response(m)) = Message::parse(&message) else {
        return;
    };
    let result = pending.receive_response(&k.local_mac1, m);
    if !mac1_ok(&own, &message, mac1_at.start) {
        assert_eq!(result.err().map(|(e, _)| e), Some(HandshakeError::BadMac));
    }
}

/// An initiation from `from` to `to`: the state awaiting the response, and the message.
fn start(
    from: &SecretKey,
    to: &PublicKey,
    sender: u32,
    psk: &PresharedKey,
    seed: u8,
) -> (PendingInitiation, [u8; INITIATION_LEN]) {
    let mut out = [0u8; INITIATION_LEN];
    let pending = initiate(
        from,
        to,
        psk,
        sender,
        tai64n(core::time::Duration::from_secs(1_700_000_000)),
        [seed; 32],
        &mut out,
    )
    .expect("an initiation between valid keys");
    (pending, out)
}

fn psk(choice: bool) -> PresharedKey {
    if choice {
        PresharedKey([7; 32])
    } else {
        PresharedKey::default()
    }
}

/// Flips fuzzer-chosen bits of up to seven fuzzer-chosen bytes of `message`.
fn mutate(input: &mut Input<'_>, message: &mut [u8]) {
    let count = input.byte() % 8;
    for _ in 0..count {
        let at = usize::from(input.u16()) % message.len();
        message[at] ^= input.byte();
    }
}

fn changed(original: &[u8], now: &[u8], range: std::ops::Range<usize>) -> bool {
    original[range.clone()] != now[range]
}

fn mutated_initiation(input: &mut Input<'_>) {
    let k = keys();
    let flags = input.byte();
    let sender = input.u32();
    let seconds = input.u64() % (1 << 40);
    let seed = input.byte();
    let (psk_i, psk_r) = (psk(flags & 16 != 0), psk(flags & 32 != 0));
    let own = k.local.public_key();
    let timestamp = tai64n(core::time::Duration::from_secs(seconds));
    let mut original = [0u8; INITIATION_LEN];
    let pending = initiate(
        &k.peer,
        &own,
        &psk_i,
        sender,
        timestamp,
        [seed; 32],
        &mut original,
    )
    .expect("an initiation between valid keys");
    let mut message = original;
    mutate(input, &mut message);
    let [noise, mac1_at, _] = wire::initiation_layout();
    if flags & 1 == 0 {
        fix_mac1(&own, &mut message, mac1_at.start);
    }
    let parsed = Message::parse(&message);
    if changed(&original, &message, 0..4) {
        // Another type may fit the size (a 148-byte transport), but never an initiation.
        assert!(
            !matches!(parsed, Ok(Message::Initiation(_))),
            "a bad type or reserved byte parsed as an initiation"
        );
        return;
    }
    let Ok(Message::Initiation(m)) = parsed else {
        panic!("an initiation with its header intact did not parse: {parsed:?}");
    };
    let result = receive_initiation(&k.local, &k.local_mac1, m, [input.byte(); 32]);
    if !mac1_ok(&own, &message, mac1_at.start) {
        assert_eq!(result.err(), Some(HandshakeError::BadMac));
        return;
    }
    let tampered = changed(&original, &message, noise);
    let received = match (result, tampered) {
        (Ok(received), false) => received,
        (Err(HandshakeError::Noise), true) => return,
        (result, tampered) => panic!(
            "initiation with noise bytes tampered={tampered} gave {:?}",
            result.err()
        ),
    };
    assert_eq!(&received.remote_x25519, k.peer.public_key().x25519_bytes());
    assert_eq!(received.timestamp, timestamp);
    assert_eq!(received.sender_index, m.sender());
    // Answered, it completes the initiator's handshake when the preshared keys agree.
    let mut response = [0u8; RESPONSE_LEN];
    let index = input.u32();
    received
        .respond(&k.peer.public_key(), &psk_r, index, &mut response)
        .expect("responding to an accepted initiation");
    let Ok(Message::Response(r)) = Message::parse(&response) else {
        panic!("our own response does not parse");
    };
    assert_eq!((r.sender(), r.receiver()), (index, m.sender()));
    let outcome = pending.receive_response(&k.peer_mac1, r);
    assert_eq!(
        outcome.is_ok(),
        psk_i == psk_r,
        "handshake outcome with psk equal={}",
        psk_i == psk_r
    );
}

fn mutated_response(input: &mut Input<'_>) {
    let k = keys();
    let flags = input.byte();
    let sender = input.u32();
    let index = input.u32();
    let (psk_i, psk_r) = (psk(flags & 16 != 0), psk(flags & 32 != 0));
    let own = k.local.public_key();
    // We initiate to the peer; the peer answers.
    let (pending, initiation) = start(&k.local, &k.peer.public_key(), sender, &psk_i, input.byte());
    let Ok(Message::Initiation(m)) = Message::parse(&initiation) else {
        panic!("our own initiation does not parse");
    };
    let received = receive_initiation(&k.peer, &k.peer_mac1, m, [input.byte(); 32])
        .expect("the peer accepts our initiation");
    let mut original = [0u8; RESPONSE_LEN];
    received
        .respond(&own, &psk_r, index, &mut original)
        .expect("the peer answers");
    let mut message = original;
    mutate(input, &mut message);
    let [noise, mac1_at, _] = wire::response_layout();
    if flags & 1 == 0 {
        fix_mac1(&own, &mut message, mac1_at.start);
    }
    let parsed = Message::parse(&message);
    if changed(&original, &message, 0..4) {
        assert!(
            !matches!(parsed, Ok(Message::Response(_))),
            "a bad type or reserved byte parsed as a response"
        );
        return;
    }
    let Ok(Message::Response(r)) = parsed else {
        panic!("a response with its header intact did not parse: {parsed:?}");
    };
    let result = pending.receive_response(&k.local_mac1, r);
    let should_work = !changed(&original, &message, noise) && psk_i == psk_r;
    let back = match result {
        Ok(_) => {
            assert!(
                mac1_ok(&own, &message, mac1_at.start) && should_work,
                "a tampered response or a wrong psk was accepted"
            );
            return;
        }
        Err((e, back)) => {
            let expected = if mac1_ok(&own, &message, mac1_at.start) {
                assert!(!should_work, "an intact response was refused: {e:?}");
                HandshakeError::Noise
            } else {
                HandshakeError::BadMac
            };
            assert_eq!(e, expected);
            back.expect("a refused response hands the initiation back")
        }
    };
    // The initiation a refused response handed back still completes with the real response.
    let Ok(Message::Response(real)) = Message::parse(&original) else {
        panic!("the original response does not parse");
    };
    assert_eq!(
        back.receive_response(&k.local_mac1, real).is_ok(),
        psk_i == psk_r,
        "the initiation handed back did not complete with the real response"
    );
}
