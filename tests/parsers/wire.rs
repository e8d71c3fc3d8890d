//! Wire messages: the parser against the layout table on random bytes, and headers written
//! then parsed back.

use dhtun::core::wire::{
    self, Message, WireError, COOKIE_REPLY_LEN, INITIATION_LEN, RESPONSE_LEN, TRANSPORT_MIN_LEN,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What the layout table says `datagram` is: its type byte, or the error.
fn wire_model(d: &[u8]) -> Result<u8, WireError> {
    if d.len() < 4 {
        return Err(WireError::BadLength);
    }
    if d[1..4] != [0, 0, 0] {
        return Err(WireError::UnknownType);
    }
    let fits = match d[0] {
        1 => d.len() == INITIATION_LEN,
        2 => d.len() == RESPONSE_LEN,
        3 => d.len() == COOKIE_REPLY_LEN,
        4 => d.len() >= TRANSPORT_MIN_LEN,
        _ => return Err(WireError::UnknownType),
    };
    if fits {
        Ok(d[0])
    } else {
        Err(WireError::BadLength)
    }
}

fn le32(d: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(d[at..at + 4].try_into().unwrap())
}

/// Parses `d`, compares with the model, and reads every accessor against the layout.
fn check_wire(d: &[u8]) {
    let message = match (Message::parse(d), wire_model(d)) {
        (Err(got), Err(want)) => {
            assert_eq!(got, want, "{d:02x?}");
            return;
        }
        (Ok(message), Ok(_)) => message,
        (got, want) => panic!("parse gave {got:?}, the format says {want:?}: {d:02x?}"),
    };
    match message {
        Message::Initiation(m) => {
            let [noise, mac1, mac2] = wire::initiation_layout();
            assert_eq!(m.sender(), le32(d, 4));
            assert_eq!(m.noise(), &d[noise]);
            assert_eq!(m.mac1_input(), &d[..mac1.start]);
            assert_eq!(m.mac1(), &d[mac1]);
            assert_eq!(m.mac2_input(), &d[..mac2.start]);
            assert_eq!(m.mac2(), &d[mac2]);
        }
        Message::Response(m) => {
            let [noise, mac1, _] = wire::response_layout();
            assert_eq!((m.sender(), m.receiver()), (le32(d, 4), le32(d, 8)));
            assert_eq!(m.noise(), &d[noise]);
            assert_eq!(m.mac1_input(), &d[..mac1.start]);
            assert_eq!(m.mac1(), &d[mac1]);
        }
        Message::CookieReply(m) => {
            let [nonce, cookie, tag] = wire::cookie_reply_layout();
            assert_eq!(m.receiver(), le32(d, 4));
            assert_eq!(m.nonce(), &d[nonce]);
            assert_eq!(m.sealed_cookie(), &d[cookie]);
            assert_eq!(m.tag(), &d[tag]);
        }
        Message::Transport(m) => {
            assert_eq!(m.receiver(), le32(d, 4));
            assert_eq!(
                m.counter(),
                u64::from_le_bytes(d[8..16].try_into().unwrap())
            );
            assert_eq!(m.ciphertext(), &d[16..]);
        }
    }
}

#[test]
fn wire_parse_agrees_with_the_layout_on_random_bytes() {
    let mut rng = StdRng::seed_from_u64(0x5749_5245);
    let mut buf = vec![0u8; 1600];
    for i in 0..40_000 {
        let len = match i % 4 {
            0 => rng.gen_range(0..200),
            1 => [0, 3, 4, 31, 32, 63, 64, 65, 91, 92, 93, 147, 148, 149][rng.gen_range(0..14)],
            _ => rng.gen_range(0..buf.len()),
        };
        rng.fill(&mut buf[..len]);
        if len >= 4 && rng.gen_bool(0.7) {
            buf[0] = rng.gen_range(0..6);
            buf[1..4].fill(0);
            if rng.gen_bool(0.1) {
                buf[rng.gen_range(1..4)] = rng.gen_range(1..=255);
            }
        }
        check_wire(&buf[..len]);
    }
}

#[test]
fn wire_headers_write_then_parse() {
    let mut rng = StdRng::seed_from_u64(0x4844_5253);
    for _ in 0..20_000 {
        let (sender, receiver, counter) = (rng.gen::<u32>(), rng.gen::<u32>(), rng.gen::<u64>());
        let mut init = [0u8; INITIATION_LEN];
        rng.fill(&mut init[..]);
        wire::write_initiation_header(&mut init, sender);
        match Message::parse(&init) {
            Ok(Message::Initiation(m)) => assert_eq!(m.sender(), sender),
            other => panic!("{other:?}"),
        }
        let mut resp = [0u8; RESPONSE_LEN];
        rng.fill(&mut resp[..]);
        wire::write_response_header(&mut resp, sender, receiver);
        match Message::parse(&resp) {
            Ok(Message::Response(m)) => assert_eq!((m.sender(), m.receiver()), (sender, receiver)),
            other => panic!("{other:?}"),
        }
        let mut cookie = [0u8; COOKIE_REPLY_LEN];
        rng.fill(&mut cookie[..]);
        wire::write_cookie_reply_header(&mut cookie, receiver);
        match Message::parse(&cookie) {
            Ok(Message::CookieReply(m)) => assert_eq!(m.receiver(), receiver),
            other => panic!("{other:?}"),
        }
        let len = rng.gen_range(0..200);
        let mut transport = vec![0u8; len];
        rng.fill(&mut transport[..]);
        let written = wire::write_transport_header(&mut transport, receiver, counter);
        if len < wire::TRANSPORT_HEADER_LEN {
            assert_eq!(written, Err(WireError::BadLength));
            continue;
        }
        written.unwrap();
        match Message::parse(&transport) {
            Ok(Message::Transport(m)) => {
                assert!(len >= TRANSPORT_MIN_LEN);
                assert_eq!((m.receiver(), m.counter()), (receiver, counter));
                assert_eq!(m.ciphertext().len(), len - wire::TRANSPORT_HEADER_LEN);
            }
            Err(WireError::BadLength) => assert!(len < TRANSPORT_MIN_LEN),
            other => panic!("{other:?}"),
        }
    }
}
