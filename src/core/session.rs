//! One established session: the keys of a finished handshake, our send counter, and the replay
//! window for what we receive. Encrypts into and decrypts out of caller-provided buffers.

use crate::core::limits::{PADDING_MULTIPLE, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME};
use crate::core::replay::ReplayWindow;
use crate::core::wire::{self, Transport, AEAD_TAG_BYTES, TRANSPORT_HEADER_LEN};
use core::time::Duration;
use snow::StatelessTransportState;

/// Why a transport message was not accepted on this session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiveError {
    /// Counter already seen or older than the window.
    Replay,
    /// The tag did not verify.
    Unauthenticated,
    /// The session is too old or used up.
    Expired,
}

/// Why we could not encrypt on this session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// Too old or out of nonces: a new handshake is needed.
    Expired,
    /// The output buffer cannot hold the message.
    BufferTooSmall,
}

pub struct Session {
    pub local_index: u32,
    pub remote_index: u32,
    keys: StatelessTransportState,
    next_send_counter: u64,
    replay: ReplayWindow,
    /// When the handshake finished.
    pub established_at: Duration,
    /// Whether we sent the initiation: only the initiator rekeys on age, so both sides do not
    /// start handshakes at the same moment.
    pub we_initiated: bool,
    /// When a packet last decrypted on this session: whether the peer still sends on it.
    pub last_received_at: Option<Duration>,
}

impl Session {
    pub fn new(
        local_index: u32,
        remote_index: u32,
        keys: StatelessTransportState,
        now: Duration,
        we_initiated: bool,
    ) -> Self {
        Self {
            local_index,
            remote_index,
            keys,
            next_send_counter: 0,
            replay: ReplayWindow::new(),
            established_at: now,
            we_initiated,
            last_received_at: None,
        }
    }

    /// Whether this session may still carry packets at `now`.
    pub fn is_usable(&self, now: Duration) -> bool {
        now.saturating_sub(self.established_at) < REJECT_AFTER_TIME
            && self.next_send_counter < REJECT_AFTER_MESSAGES
    }

    pub fn age(&self, now: Duration) -> Duration {
        now.saturating_sub(self.established_at)
    }

    pub fn messages_sent(&self) -> u64 {
        self.next_send_counter
    }

    /// Encrypts the inner packet `buf[..len]` into `out` as a complete transport message and
    /// returns its length. The packet is first padded with zeros to a multiple of 16 (never
    /// past `max_padded`) in place, so `buf` needs that much room beyond `len`.
    pub fn encrypt(
        &mut self,
        buf: &mut [u8],
        len: usize,
        max_padded: usize,
        now: Duration,
        out: &mut [u8],
    ) -> Result<usize, SendError> {
        if !self.is_usable(now) {
            return Err(SendError::Expired);
        }
        let padded = padded_len(len, max_padded).min(buf.len().max(len));
        let payload = buf.get_mut(..padded).ok_or(SendError::BufferTooSmall)?;
        payload[len..].fill(0);
        let total = TRANSPORT_HEADER_LEN + padded + AEAD_TAG_BYTES;
        let out = out.get_mut(..total).ok_or(SendError::BufferTooSmall)?;
        let counter = self.next_send_counter;
        wire::write_transport_header(out, self.remote_index, counter)
            .map_err(|_| SendError::BufferTooSmall)?;
        let written = self
            .keys
            .write_message(counter, payload, &mut out[TRANSPORT_HEADER_LEN..])
            .map_err(|_| SendError::BufferTooSmall)?;
        self.next_send_counter += 1;
        Ok(TRANSPORT_HEADER_LEN + written)
    }

    /// Highest counter received on this session: how far the peer's sending got.
    pub fn highest_received(&self) -> u64 {
        self.replay.highest()
    }

    /// Counters the peer sent on this session that left the replay window without arriving,
    /// since the last call.
    pub fn take_lost(&mut self) -> u64 {
        self.replay.take_lost()
    }

    /// Authenticates and decrypts `message` into `out`; returns the plaintext length (padding
    /// included). The replay window is updated only after the tag verifies, so forged packets
    /// cannot move it.
    pub fn decrypt(
        &mut self,
        message: Transport<'_>,
        now: Duration,
        out: &mut [u8],
    ) -> Result<usize, ReceiveError> {
        let counter = message.counter();
        if !self.is_usable(now) || counter >= REJECT_AFTER_MESSAGES {
            return Err(ReceiveError::Expired);
        }
        // Cheap early reject: an old counter cannot become valid by decrypting it.
        if !self.replay.check(counter) {
            return Err(ReceiveError::Replay);
        }
        let plain = self
            .keys
            .read_message(counter, message.ciphertext(), out)
            .map_err(|_| ReceiveError::Unauthenticated)?;
        if !self.replay.accept(counter) {
            return Err(ReceiveError::Replay);
        }
        self.last_received_at = Some(now);
        Ok(plain)
    }
}

/// Length an inner packet is padded to before encryption.
pub fn padded_len(len: usize, max_padded: usize) -> usize {
    let rounded = len.div_ceil(PADDING_MULTIPLE) * PADDING_MULTIPLE;
    rounded.min(max_padded.max(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::handshake::{initiate, receive_initiation, tai64n, Mac1Key};
    use crate::core::keys::{PresharedKey, SecretKey};
    use crate::core::wire::{Message, INITIATION_LEN, RESPONSE_LEN};

    fn pair() -> (Session, Session) {
        let a = SecretKey::from_seed([1; 32]);
        let b = SecretKey::from_seed([2; 32]);
        let psk = PresharedKey::default();
        let mut init = [0u8; INITIATION_LEN];
        let ts = tai64n(Duration::from_secs(1));
        let pending = initiate(&a, &b.public_key(), &psk, 1, ts, [5; 32], &mut init).unwrap();
        let Ok(Message::Initiation(m)) = Message::parse(&init) else {
            panic!()
        };
        let received =
            receive_initiation(&b, &Mac1Key::for_receiver(&b.public_key()), m, [6; 32]).unwrap();
        let mut resp = [0u8; RESPONSE_LEN];
        let r = received
            .respond(&a.public_key(), &psk, 2, &mut resp)
            .unwrap();
        let Ok(Message::Response(m)) = Message::parse(&resp) else {
            panic!()
        };
        let i = pending
            .receive_response(&Mac1Key::for_receiver(&a.public_key()), m)
            .map_err(|(e, _)| e)
            .unwrap();
        (
            Session::new(1, 2, i, Duration::ZERO, true),
            Session::new(2, 1, r, Duration::ZERO, false),
        )
    }

    fn buf(bytes: &[u8]) -> [u8; 64] {
        let mut out = [0xffu8; 64];
        out[..bytes.len()].copy_from_slice(bytes);
        out
    }

    fn transport(buf: &[u8]) -> Transport<'_> {
        match Message::parse(buf) {
            Ok(Message::Transport(t)) => t,
            other => panic!("not transport: {other:?}"),
        }
    }

    #[test]
    fn round_trip_pads_and_rejects_replay() {
        let (mut a, mut b) = pair();
        let mut wire = [0u8; 256];
        let mut plain = [0u8; 256];
        let n = a
            .encrypt(&mut buf(b"abc"), 3, 1420, Duration::ZERO, &mut wire)
            .unwrap();
        assert_eq!(n, TRANSPORT_HEADER_LEN + 16 + AEAD_TAG_BYTES);
        let m = b
            .decrypt(transport(&wire[..n]), Duration::ZERO, &mut plain)
            .unwrap();
        assert_eq!(m, 16);
        assert_eq!(&plain[..16], b"abc\0\0\0\0\0\0\0\0\0\0\0\0\0");
        assert_eq!(
            b.decrypt(transport(&wire[..n]), Duration::ZERO, &mut plain),
            Err(ReceiveError::Replay)
        );
    }

    #[test]
    fn tampered_packet_does_not_move_window() {
        let (mut a, mut b) = pair();
        let mut wire = [0u8; 256];
        let mut plain = [0u8; 256];
        let n = a
            .encrypt(&mut buf(b"abcd"), 4, 1420, Duration::ZERO, &mut wire)
            .unwrap();
        let mut forged = wire;
        forged[n - 1] ^= 0x80;
        assert_eq!(
            b.decrypt(transport(&forged[..n]), Duration::ZERO, &mut plain),
            Err(ReceiveError::Unauthenticated)
        );
        assert!(b
            .decrypt(transport(&wire[..n]), Duration::ZERO, &mut plain)
            .is_ok());
    }

    #[test]
    fn expired_session_refuses_both_ways() {
        let (mut a, mut b) = pair();
        let mut wire = [0u8; 256];
        let mut plain = [0u8; 256];
        let n = a
            .encrypt(&mut buf(b"x"), 1, 1420, Duration::ZERO, &mut wire)
            .unwrap();
        let late = REJECT_AFTER_TIME;
        assert_eq!(
            a.encrypt(&mut buf(b"x"), 1, 1420, late, &mut wire),
            Err(SendError::Expired)
        );
        assert_eq!(
            b.decrypt(transport(&wire[..n]), late, &mut plain),
            Err(ReceiveError::Expired)
        );
    }

    #[test]
    fn padding_never_passes_the_mtu() {
        assert_eq!(padded_len(0, 1420), 0);
        assert_eq!(padded_len(1, 1420), 16);
        assert_eq!(padded_len(1419, 1420), 1420);
        assert_eq!(padded_len(1420, 1420), 1420);
        assert_eq!(padded_len(1500, 1420), 1500);
    }
}
