//! The Noise IKpsk2 handshake, through snow with ring's ChaCha20-Poly1305, framed as our wire
//! messages with a cheap mac1 in front.
//!
//! mac1 is a keyed BLAKE2s over the message, keyed by a hash of the *receiver's* static public
//! key. Anyone who knows whom they are talking to can compute it, so it is not authentication:
//! it lets a receiver throw away datagrams not meant for it before any Curve25519 work.
//! Randomness for ephemeral keys comes from a seed the caller passes in, so the core stays
//! deterministic under test.

use crate::core::keys::{PresharedKey, PublicKey, SecretKey, KEY_BYTES};
use crate::core::wire::{
    self, Initiation, Response, INITIATION_LEN, MAC_BYTES, RESPONSE_LEN, TIMESTAMP_BYTES,
};
use blake2::digest::{Digest, Mac};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use snow::params::{CipherChoice, DHChoice, HashChoice, NoiseParams};
use snow::resolvers::{CryptoResolver, DefaultResolver, RingResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use snow::{HandshakeState, StatelessTransportState};

/// The Noise protocol name; also the start of the prologue.
pub const NOISE_PROTOCOL: &str = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// Mixed into every handshake hash: a peer speaking another protocol or version cannot
/// complete a handshake with us, even with the right keys.
pub const PROLOGUE: &[u8] = b"dhtun v1 Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
const MAC1_LABEL: &[u8] = b"dhtun v1 mac1";

/// Why a handshake message was refused. None of these is answered on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    /// mac1 did not match: the sender does not know our public key.
    BadMac,
    /// Noise refused the message: wrong keys, tampered, or not for this handshake.
    Noise,
    /// The initiator's static key is not one of our peers.
    UnknownPeer,
}

/// The key mac1 is computed with, derived from the receiver's public key.
#[derive(Clone, Copy)]
pub struct Mac1Key([u8; 32]);

impl Mac1Key {
    pub fn for_receiver(receiver: &PublicKey) -> Self {
        let mut hasher = blake2::Blake2s256::new();
        hasher.update(MAC1_LABEL);
        hasher.update(receiver.x25519_bytes());
        Self(hasher.finalize().into())
    }

    pub(crate) fn compute(&self, input: &[u8]) -> [u8; MAC_BYTES] {
        let mut mac = new_mac(&self.0);
        mac.update(input);
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is the mac1 of `input` under this key (constant time).
    pub fn verify(&self, input: &[u8], tag: &[u8]) -> bool {
        let mut mac = new_mac(&self.0);
        mac.update(input);
        mac.verify_slice(tag).is_ok()
    }
}

/// An initiation we sent, waiting for its response. It keeps what it was made from: a response
/// that fails Noise leaves snow's state half advanced, and a forged one (anyone who saw the
/// initiation knows its index) must not cost the real response its chance. So the state is
/// made again from the same inputs; the ephemeral key comes from the seed, so it is the same.
pub struct PendingInitiation {
    state: HandshakeState,
    inputs: InitiationInputs,
}

/// Everything an initiation is made from.
struct InitiationInputs {
    local: SecretKey,
    peer: PublicKey,
    psk: PresharedKey,
    sender_index: u32,
    timestamp: [u8; TIMESTAMP_BYTES],
    rng_seed: [u8; 32],
}

/// An initiation we received and authenticated, ready to be answered.
pub struct ReceivedInitiation {
    state: HandshakeState,
    /// The initiator's X25519 static key, to look up which peer it is.
    pub remote_x25519: [u8; KEY_BYTES],
    /// When the initiator says it sent this; only a newer one than the last accepted is valid.
    pub timestamp: [u8; TIMESTAMP_BYTES],
    pub sender_index: u32,
}

/// Writes an initiation to `peer` into `out` and returns the state awaiting its response.
pub fn initiate(
    local: &SecretKey,
    peer: &PublicKey,
    psk: &PresharedKey,
    sender_index: u32,
    timestamp: [u8; TIMESTAMP_BYTES],
    rng_seed: [u8; 32],
    out: &mut [u8; INITIATION_LEN],
) -> Result<PendingInitiation, HandshakeError> {
    let inputs = InitiationInputs {
        local: local.clone(),
        peer: *peer,
        psk: *psk,
        sender_index,
        timestamp,
        rng_seed,
    };
    let state = write_initiation(&inputs, out)?;
    Ok(PendingInitiation { state, inputs })
}

/// Curve25519 operations `receive_initiation` costs once mac1 passes (es and ss), and that
/// `ReceivedInitiation::respond` costs on top (a new ephemeral key, ee and se).
pub const RECEIVE_INITIATION_OPS: u32 = 2;
pub const RESPOND_OPS: u32 = 3;

/// Checks mac1 and decrypts an initiation addressed to us. Costs two Curve25519 operations once
/// mac1 passes, so callers rate-limit before calling.
pub fn receive_initiation(
    local: &SecretKey,
    own_mac1: &Mac1Key,
    message: Initiation<'_>,
    rng_seed: [u8; 32],
) -> Result<ReceivedInitiation, HandshakeError> {
    if !own_mac1.verify(message.mac1_input(), message.mac1()) {
        return Err(HandshakeError::BadMac);
    }
    let mut state = builder(rng_seed)
        .local_private_key(local.x25519_secret())
        .and_then(|b| b.build_responder())
        .map_err(|_| HandshakeError::Noise)?;
    let mut timestamp = [0u8; TIMESTAMP_BYTES];
    let read = state
        .read_message(message.noise(), &mut timestamp)
        .map_err(|_| HandshakeError::Noise)?;
    if read != TIMESTAMP_BYTES {
        return Err(HandshakeError::Noise);
    }
    let remote_x25519 = state
        .get_remote_static()
        .and_then(|key| <[u8; KEY_BYTES]>::try_from(key).ok())
        .ok_or(HandshakeError::Noise)?;
    Ok(ReceivedInitiation {
        state,
        remote_x25519,
        timestamp,
        sender_index: message.sender(),
    })
}

impl ReceivedInitiation {
    /// Writes the response into `out` and returns the finished session keys. The caller has
    /// matched `remote_x25519` to `peer` and checked the timestamp.
    pub fn respond(
        mut self,
        peer: &PublicKey,
        psk: &PresharedKey,
        sender_index: u32,
        out: &mut [u8; RESPONSE_LEN],
    ) -> Result<StatelessTransportState, HandshakeError> {
        if &self.remote_x25519 != peer.x25519_bytes() {
            return Err(HandshakeError::UnknownPeer);
        }
        self.state
            .set_psk(2, &psk.0)
            .map_err(|_| HandshakeError::Noise)?;
        let [noise, mac1, mac2] = wire::response_layout();
        wire::write_response_header(out, sender_index, self.sender_index);
        self.state
            .write_message(&[], &mut out[noise])
            .map_err(|_| HandshakeError::Noise)?;
        let tag = Mac1Key::for_receiver(peer).compute(&out[..mac1.start]);
        out[mac1].copy_from_slice(&tag);
        out[mac2].fill(0);
        self.state
            .into_stateless_transport_mode()
            .map_err(|_| HandshakeError::Noise)
    }
}

impl PendingInitiation {
    /// Completes the handshake with the peer's response. When the response is refused, the
    /// error comes with the initiation as it was before, to wait for the real response; None
    /// only if snow cannot make it again, which the same inputs never cause.
    // The error is large because it hands the whole initiation back; that happens once per
    // refused response, never on the data path.
    #[allow(clippy::result_large_err)]
    pub fn receive_response(
        mut self,
        own_mac1: &Mac1Key,
        message: Response<'_>,
    ) -> Result<StatelessTransportState, (HandshakeError, Option<Self>)> {
        if !own_mac1.verify(message.mac1_input(), message.mac1()) {
            return Err((HandshakeError::BadMac, Some(self)));
        }
        let mut empty = [0u8; 0];
        if self
            .state
            .read_message(message.noise(), &mut empty)
            .is_err()
        {
            let mut scratch = [0u8; INITIATION_LEN];
            let again = write_initiation(&self.inputs, &mut scratch).ok();
            let inputs = self.inputs;
            let pending = again.map(|state| Self { state, inputs });
            return Err((HandshakeError::Noise, pending));
        }
        self.state
            .into_stateless_transport_mode()
            .map_err(|_| (HandshakeError::Noise, None))
    }
}

/// Writes the initiation `inputs` describe into `out` and returns the state awaiting its
/// response; the same inputs always give the same bytes and state.
fn write_initiation(
    inputs: &InitiationInputs,
    out: &mut [u8; INITIATION_LEN],
) -> Result<HandshakeState, HandshakeError> {
    let mut state = builder(inputs.rng_seed)
        .local_private_key(inputs.local.x25519_secret())
        .and_then(|b| b.remote_public_key(inputs.peer.x25519_bytes()))
        .and_then(|b| b.psk(2, &inputs.psk.0))
        .and_then(|b| b.build_initiator())
        .map_err(|_| HandshakeError::Noise)?;
    let [noise, mac1, mac2] = wire::initiation_layout();
    wire::write_initiation_header(out, inputs.sender_index);
    state
        .write_message(&inputs.timestamp, &mut out[noise])
        .map_err(|_| HandshakeError::Noise)?;
    let tag = Mac1Key::for_receiver(&inputs.peer).compute(&out[..mac1.start]);
    out[mac1].copy_from_slice(&tag);
    out[mac2].fill(0);
    Ok(state)
}

/// A TAI64N timestamp for the given wall-clock time since the Unix epoch. Big-endian, so a later
/// time compares greater byte by byte.
pub fn tai64n(since_unix_epoch: core::time::Duration) -> [u8; TIMESTAMP_BYTES] {
    const TAI64_EPOCH: u64 = 0x4000_0000_0000_000a;
    let mut out = [0u8; TIMESTAMP_BYTES];
    let seconds = TAI64_EPOCH.saturating_add(since_unix_epoch.as_secs());
    out[..8].copy_from_slice(&seconds.to_be_bytes());
    out[8..].copy_from_slice(&since_unix_epoch.subsec_nanos().to_be_bytes());
    out
}

fn builder(rng_seed: [u8; 32]) -> snow::Builder<'static> {
    // Parsing a constant protocol name cannot fail at run time; the unit tests prove it parses.
    let params: NoiseParams = match NOISE_PROTOCOL.parse() {
        Ok(params) => params,
        Err(_) => unreachable!("NOISE_PROTOCOL is a valid Noise protocol name"),
    };
    snow::Builder::with_resolver(params, Box::new(SeededResolver { seed: rng_seed }))
        .prologue(PROLOGUE)
        .unwrap_or_else(|_| unreachable!("the prologue is set once"))
}

fn new_mac(key: &[u8; 32]) -> blake2::Blake2sMac<blake2::digest::consts::U16> {
    // Any key up to 32 bytes is valid for BLAKE2s, so this cannot fail.
    match blake2::Blake2sMac::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("a 32-byte key is valid for BLAKE2s"),
    }
}

/// ring for the cipher (the hot path), snow's defaults for Curve25519 and BLAKE2s, and a
/// ChaCha20 stream from the caller's seed for ephemeral keys.
struct SeededResolver {
    seed: [u8; 32],
}

struct SeededRandom(rand_chacha::ChaCha20Rng);

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRandom(rand_chacha::ChaCha20Rng::from_seed(
            self.seed,
        ))))
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }
    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        RingResolver
            .resolve_cipher(choice)
            .or_else(|| DefaultResolver.resolve_cipher(choice))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::wire::Message;

    fn keys() -> (SecretKey, SecretKey) {
        (SecretKey::from_seed([1; 32]), SecretKey::from_seed([2; 32]))
    }

    fn handshake(
        initiator: &SecretKey,
        responder: &SecretKey,
        psk_i: PresharedKey,
        psk_r: PresharedKey,
    ) -> Result<(StatelessTransportState, StatelessTransportState), HandshakeError> {
        let mut init = [0u8; INITIATION_LEN];
        let pending = initiate(
            initiator,
            &responder.public_key(),
            &psk_i,
            11,
            tai64n(core::time::Duration::from_secs(5)),
            [3; 32],
            &mut init,
        )?;
        let Ok(Message::Initiation(msg)) = Message::parse(&init) else {
            panic!("initiation did not parse");
        };
        let own = Mac1Key::for_receiver(&responder.public_key());
        let received = receive_initiation(responder, &own, msg, [4; 32])?;
        assert_eq!(
            &received.remote_x25519,
            initiator.public_key().x25519_bytes()
        );
        assert_eq!(received.sender_index, 11);
        let mut resp = [0u8; RESPONSE_LEN];
        let responder_session = received.respond(&initiator.public_key(), &psk_r, 22, &mut resp)?;
        let Ok(Message::Response(msg)) = Message::parse(&resp) else {
            panic!("response did not parse");
        };
        assert_eq!((msg.sender(), msg.receiver()), (22, 11));
        let own_i = Mac1Key::for_receiver(&initiator.public_key());
        let initiator_session = pending.receive_response(&own_i, msg).map_err(|(e, _)| e)?;
        Ok((initiator_session, responder_session))
    }

    #[test]
    fn a_forged_response_leaves_the_initiation_to_the_real_one() {
        let (a, b) = keys();
        let psk = PresharedKey::default();
        let mut init = [0u8; INITIATION_LEN];
        let ts = tai64n(core::time::Duration::from_secs(5));
        let pending = initiate(&a, &b.public_key(), &psk, 11, ts, [3; 32], &mut init).unwrap();
        let Ok(Message::Initiation(msg)) = Message::parse(&init) else {
            panic!("initiation did not parse");
        };
        let own_b = Mac1Key::for_receiver(&b.public_key());
        let received = receive_initiation(&b, &own_b, msg, [4; 32]).unwrap();
        let mut resp = [0u8; RESPONSE_LEN];
        let responder = received
            .respond(&a.public_key(), &psk, 22, &mut resp)
            .unwrap();

        // What an eavesdropper on the initiation can send: our index, junk for Noise, and a
        // correct mac1 (it needs only our public key).
        let own_a = Mac1Key::for_receiver(&a.public_key());
        let mut forged = resp;
        let [noise, mac1, _] = wire::response_layout();
        forged[noise].fill(0x5a);
        let tag = own_a.compute(&forged[..mac1.start]);
        forged[mac1].copy_from_slice(&tag);
        let Ok(Message::Response(forged)) = Message::parse(&forged) else {
            panic!("forged response did not parse");
        };
        let Err((error, pending)) = pending.receive_response(&own_a, forged) else {
            panic!("a forged response must be refused");
        };
        assert_eq!(error, HandshakeError::Noise);
        let pending = pending.expect("the initiation survives a forged response");

        let Ok(Message::Response(real)) = Message::parse(&resp) else {
            panic!("response did not parse");
        };
        let Ok(initiator) = pending.receive_response(&own_a, real) else {
            panic!("the real response must complete the handshake");
        };
        let mut ct = [0u8; 64];
        let mut pt = [0u8; 64];
        let n = initiator.write_message(0, b"hello", &mut ct).unwrap();
        let m = responder.read_message(0, &ct[..n], &mut pt).unwrap();
        assert_eq!(&pt[..m], b"hello");
    }

    #[test]
    fn handshake_both_directions_carries_data() {
        let (a, b) = keys();
        for (initiator, responder) in [(&a, &b), (&b, &a)] {
            let (i, r) = handshake(
                initiator,
                responder,
                PresharedKey::default(),
                PresharedKey::default(),
            )
            .unwrap();
            let mut ct = [0u8; 64];
            let mut pt = [0u8; 64];
            let n = i.write_message(0, b"hello", &mut ct).unwrap();
            let m = r.read_message(0, &ct[..n], &mut pt).unwrap();
            assert_eq!(&pt[..m], b"hello");
            let n = r.write_message(0, b"back", &mut ct).unwrap();
            let m = i.read_message(0, &ct[..n], &mut pt).unwrap();
            assert_eq!(&pt[..m], b"back");
        }
    }

    #[test]
    fn mismatched_psk_fails() {
        let (a, b) = keys();
        let err = handshake(&a, &b, PresharedKey([9; 32]), PresharedKey([8; 32])).unwrap_err();
        assert_eq!(err, HandshakeError::Noise);
    }

    #[test]
    fn initiation_for_someone_else_fails_mac1() {
        let (a, b) = keys();
        let c = SecretKey::from_seed([3; 32]);
        let mut init = [0u8; INITIATION_LEN];
        let ts = tai64n(core::time::Duration::from_secs(1));
        initiate(
            &a,
            &b.public_key(),
            &PresharedKey::default(),
            1,
            ts,
            [0; 32],
            &mut init,
        )
        .unwrap();
        let Ok(Message::Initiation(msg)) = Message::parse(&init) else {
            panic!("initiation did not parse");
        };
        let own_c = Mac1Key::for_receiver(&c.public_key());
        let err = receive_initiation(&c, &own_c, msg, [0; 32]).err();
        assert_eq!(err, Some(HandshakeError::BadMac));
    }

    #[test]
    fn tampered_initiation_fails() {
        let (a, b) = keys();
        let mut init = [0u8; INITIATION_LEN];
        let ts = tai64n(core::time::Duration::from_secs(1));
        initiate(
            &a,
            &b.public_key(),
            &PresharedKey::default(),
            1,
            ts,
            [0; 32],
            &mut init,
        )
        .unwrap();
        init[40] ^= 1;
        // Recompute mac1 so the tamper reaches Noise.
        let [_, mac1, _] = wire::initiation_layout();
        let tag = Mac1Key::for_receiver(&b.public_key()).compute(&init[..mac1.start]);
        init[mac1].copy_from_slice(&tag);
        let Ok(Message::Initiation(msg)) = Message::parse(&init) else {
            panic!("initiation did not parse");
        };
        let own = Mac1Key::for_receiver(&b.public_key());
        assert_eq!(
            receive_initiation(&b, &own, msg, [0; 32]).err(),
            Some(HandshakeError::Noise)
        );
    }

    #[test]
    fn timestamps_order_like_time() {
        let earlier = tai64n(core::time::Duration::new(100, 999_999_999));
        let later = tai64n(core::time::Duration::new(101, 0));
        assert!(later > earlier);
    }
}
