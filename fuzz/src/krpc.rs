//! Target `krpc`: datagrams on the tunnel socket that look like KRPC, through
//! `PingResponse::new_checked` and a `Reflector` waiting for one node's answer.
//!
//! Checks, besides never panicking: a KRPC datagram is never one of dhtun's own messages; a
//! parsed response's transaction id lies inside the datagram and its address has a port; the
//! reflector learns an address exactly when the datagram parses, carries the outstanding
//! transaction id (seeds write it as `TXID`, replaced here by the real one) and names a usable
//! address, and then reports that address; it never learns from a node it did not ping.

use dhtun::core::record::is_usable_address;
use dhtun::core::reflexive::krpc::PingResponse;
use dhtun::core::reflexive::{is_krpc, Reflected, Reflector, PING_BYTES};
use dhtun::core::wire::Message;
use std::net::SocketAddr;
use std::time::Duration;

/// What seeds write where the outstanding transaction id goes.
pub const TXID_PLACEHOLDER: &[u8; 4] = b"TXID";

pub fn run(data: &[u8]) {
    if is_krpc(data) {
        assert!(
            Message::parse(data).is_err(),
            "KRPC taken for a dhtun message"
        );
    }
    let node: SocketAddr = "198.18.0.254:6881".parse().expect("a socket address");
    let stranger: SocketAddr = "198.18.0.253:6881".parse().expect("a socket address");
    let mut reflector = Reflector::new(&[node], [3; 32], Duration::ZERO);
    let mut ping = [0u8; PING_BYTES];
    let (to, len) = reflector
        .poll_transmit(Duration::ZERO, &mut ping)
        .expect("a ping is due at start");
    assert_eq!((to, len), (node, PING_BYTES));
    let at = ping
        .windows(5)
        .position(|w| w == b"1:t4:")
        .expect("the ping has a transaction id")
        + 5;
    let txid = &ping[at..at + 4];

    let mut datagram = data.to_vec();
    for i in 0..datagram.len().saturating_sub(3) {
        if &datagram[i..i + 4] == TXID_PLACEHOLDER {
            datagram[i..i + 4].copy_from_slice(txid);
        }
    }
    let parsed = PingResponse::new_checked(&datagram);
    if let Ok(response) = &parsed {
        let t = response.transaction_id();
        let inside = datagram.as_ptr_range();
        assert!(inside.contains(&t.as_ptr()) || t.is_empty());
        assert_ne!(response.reflexive().port(), 0);
    }
    let now = Duration::from_millis(1);
    assert!(
        !matches!(
            reflector.handle_datagram(stranger, &datagram, now),
            Reflected::Learned(_)
        ),
        "learnt from a node never pinged"
    );
    let expected = parsed
        .ok()
        .filter(|r| r.transaction_id() == txid && is_usable_address(r.reflexive().ip()))
        .map(|r| r.reflexive());
    match reflector.handle_datagram(node, &datagram, now) {
        Reflected::Learned(address) => {
            assert_eq!(Some(address), expected);
            assert_eq!(reflector.address(), Some(address));
        }
        other => {
            assert_eq!(expected, None, "a good answer was not learnt: {other:?}");
            assert_eq!(reflector.address(), None);
        }
    }
}
