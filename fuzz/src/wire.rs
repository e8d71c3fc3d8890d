//! Target `wire`: `Message::parse` on arbitrary datagrams, every accessor of the view it returns.
//!
//! Checks, besides never panicking:
//! - parse agrees with a model of the format written from the layout table: the error kinds,
//!   which type and length parse, and that fixed-size types parse at exactly their size;
//! - every accessor returns the bytes at its documented offset (same memory, same length), and
//!   the integers are little-endian;
//! - writing the header back with the `write_*_header` functions reproduces the datagram;
//! - the same bytes as a relay envelope (a decrypted plaintext): an accepted envelope's
//!   datagram lies inside it, and writing it back reproduces the envelope's prefix.

use dhtun::core::wire::{
    self, Message, WireError, AEAD_TAG_BYTES, COOKIE_REPLY_LEN, INITIATION_LEN, MAC_BYTES,
    NOISE_INITIATION_BYTES, NOISE_RESPONSE_BYTES, RESPONSE_LEN, TRANSPORT_HEADER_LEN,
    TRANSPORT_MIN_LEN,
};
use std::ops::Range;

pub fn run(data: &[u8]) {
    check(data);
    check_envelope(data);
}

/// `data` as the plaintext of a transport packet: an envelope or not, never a panic.
pub fn check_envelope(plaintext: &[u8]) {
    use dhtun::core::envelope::{self, Envelope};
    use dhtun::core::limits::ENVELOPE_HEADER;
    let Ok(parsed) = Envelope::new_checked(plaintext) else {
        return;
    };
    assert!(envelope::is_envelope(plaintext));
    let datagram = parsed.datagram();
    assert!(ENVELOPE_HEADER + datagram.len() <= plaintext.len());
    let mut rebuilt = vec![0u8; ENVELOPE_HEADER + datagram.len()];
    let n = envelope::write(&mut rebuilt, parsed.kind(), &parsed.other(), datagram)
        .expect("an accepted envelope fits its own size");
    assert_eq!(&rebuilt[..n], &plaintext[..n], "envelope round trip");
}

/// What the format says `datagram` is: its type byte, or the error.
pub fn model(datagram: &[u8]) -> Result<u8, WireError> {
    if datagram.len() < 4 {
        return Err(WireError::BadLength);
    }
    if datagram[1..4] != [0, 0, 0] {
        return Err(WireError::UnknownType);
    }
    let fits = match datagram[0] {
        wire::TYPE_INITIATION => datagram.len() == INITIATION_LEN,
        wire::TYPE_RESPONSE => datagram.len() == RESPONSE_LEN,
        wire::TYPE_COOKIE_REPLY => datagram.len() == COOKIE_REPLY_LEN,
        wire::TYPE_TRANSPORT => datagram.len() >= TRANSPORT_MIN_LEN,
        _ => return Err(WireError::UnknownType),
    };
    if fits {
        Ok(datagram[0])
    } else {
        Err(WireError::BadLength)
    }
}

/// Parses `datagram` and checks the result against the model and the layout.
pub fn check(datagram: &[u8]) {
    let parsed = Message::parse(datagram);
    let expected = model(datagram);
    match (parsed, expected) {
        (Err(got), Err(want)) => assert_eq!(got, want, "error kind of {datagram:02x?}"),
        (Ok(message), Ok(kind)) => check_message(datagram, message, kind),
        (got, want) => panic!("parse gave {got:?}, the format says {want:?}: {datagram:02x?}"),
    }
}

fn check_message(d: &[u8], message: Message<'_>, kind: u8) {
    match message {
        Message::Initiation(m) => {
            assert_eq!(kind, wire::TYPE_INITIATION);
            let [noise, mac1, mac2] = wire::initiation_layout();
            assert_eq!(noise, 8..8 + NOISE_INITIATION_BYTES);
            assert_eq!(mac1, noise.end..noise.end + MAC_BYTES);
            assert_eq!(mac2, mac1.end..mac1.end + MAC_BYTES);
            assert_eq!(mac2.end, INITIATION_LEN);
            assert_eq!(m.sender(), le32(d, 4));
            same(d, m.noise(), noise);
            same(d, m.mac1_input(), 0..mac1.start);
            same(d, m.mac1(), mac1.clone());
            same(d, m.mac2_input(), 0..mac2.start);
            same(d, m.mac2(), mac2);
            let mut again = [0u8; INITIATION_LEN];
            again.copy_from_slice(d);
            wire::write_initiation_header(&mut again, m.sender());
            assert_eq!(&again[..], d, "initiation header does not write back");
        }
        Message::Response(m) => {
            assert_eq!(kind, wire::TYPE_RESPONSE);
            let [noise, mac1, mac2] = wire::response_layout();
            assert_eq!(noise, 12..12 + NOISE_RESPONSE_BYTES);
            assert_eq!(mac1, noise.end..noise.end + MAC_BYTES);
            assert_eq!(mac2, mac1.end..mac1.end + MAC_BYTES);
            assert_eq!(mac2.end, RESPONSE_LEN);
            assert_eq!(m.sender(), le32(d, 4));
            assert_eq!(m.receiver(), le32(d, 8));
            same(d, m.noise(), noise);
            same(d, m.mac1_input(), 0..mac1.start);
            same(d, m.mac1(), mac1);
            let mut again = [0u8; RESPONSE_LEN];
            again.copy_from_slice(d);
            wire::write_response_header(&mut again, m.sender(), m.receiver());
            assert_eq!(&again[..], d, "response header does not write back");
        }
        Message::CookieReply(m) => {
            assert_eq!(kind, wire::TYPE_COOKIE_REPLY);
            let [nonce, cookie, tag] = wire::cookie_reply_layout();
            assert_eq!(nonce, 8..32);
            assert_eq!(cookie, nonce.end..nonce.end + MAC_BYTES);
            assert_eq!(tag, cookie.end..cookie.end + AEAD_TAG_BYTES);
            assert_eq!(tag.end, COOKIE_REPLY_LEN);
            assert_eq!(m.receiver(), le32(d, 4));
            same(d, m.nonce(), nonce);
            same(d, m.sealed_cookie(), cookie);
            same(d, m.tag(), tag);
            let mut again = [0u8; COOKIE_REPLY_LEN];
            again.copy_from_slice(d);
            wire::write_cookie_reply_header(&mut again, m.receiver());
            assert_eq!(&again[..], d, "cookie reply header does not write back");
        }
        Message::Transport(m) => {
            assert_eq!(kind, wire::TYPE_TRANSPORT);
            assert_eq!(m.receiver(), le32(d, 4));
            assert_eq!(
                m.counter(),
                u64::from(le32(d, 8)) | u64::from(le32(d, 12)) << 32
            );
            same(d, m.ciphertext(), TRANSPORT_HEADER_LEN..d.len());
            assert!(m.ciphertext().len() >= AEAD_TAG_BYTES);
            let mut again = d.to_vec();
            wire::write_transport_header(&mut again, m.receiver(), m.counter())
                .expect("a transport message has room for its header");
            assert_eq!(again, d, "transport header does not write back");
        }
    }
}

fn le32(d: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
}

/// `part` is exactly `whole[range]`: the same memory, not just equal bytes.
fn same(whole: &[u8], part: &[u8], range: Range<usize>) {
    let expected = &whole[range.clone()];
    assert_eq!(part.len(), expected.len(), "accessor length for {range:?}");
    assert_eq!(
        part.as_ptr(),
        expected.as_ptr(),
        "accessor offset for {range:?}"
    );
}
