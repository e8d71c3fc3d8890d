//! Unit tests of the handshake budgets: a flood of initiations from many sources, each with a
//! valid cookie, costs at most the budget's Curve25519 work and its cookie replies, and the
//! peers we know are served all the same.

use super::tests::{buf, device, key, peer, A_ADDR};
use super::*;
use crate::core::cookie::{self, Cookie};
use crate::core::handshake::{self, RECEIVE_INITIATION_OPS};
use crate::core::keys::PresharedKey;
use crate::core::limits::{
    COOKIE_REPLIES_BURST, COOKIE_REPLIES_PER_SECOND, COOKIE_REPLIES_RESERVE, HANDSHAKE_OPS_BURST,
    HANDSHAKE_OPS_PER_SECOND, HANDSHAKE_OPS_RESERVE, UNDER_LOAD_INITIATIONS_PER_SECOND,
};
use crate::core::wire::{self, INITIATION_LEN};

/// B (key 2), whose only peer is A (key 1) at A_ADDR.
fn responder() -> Device {
    device(2, vec![peer(key(1).public_key(), "100.64.0.1/32", A_ADDR)])
}

/// An initiation to B from the key `from_key`, with sender index `index`.
fn initiation(from_key: u8, index: u32, wall: Duration) -> [u8; INITIATION_LEN] {
    let mut out = [0u8; INITIATION_LEN];
    handshake::initiate(
        &key(from_key),
        &key(2).public_key(),
        &PresharedKey::default(),
        index,
        handshake::tai64n(wall),
        [index as u8; 32],
        &mut out,
    )
    .unwrap();
    out
}

/// `message` with the mac2 that B's cookie for `from` gives: what a sender that received B's
/// cookie reply at `from` sends.
fn with_cookie(b: &Device, from: SocketAddr, message: &[u8; INITIATION_LEN]) -> Vec<u8> {
    let mut m = *message;
    let [_, _, mac2] = wire::initiation_layout();
    let cookie = Cookie {
        value: b.cookies.cookie_for(from),
        received_at: Duration::ZERO,
    };
    let tag = cookie::mac2(&cookie, &m[..mac2.start]);
    m[mac2].copy_from_slice(&tag);
    m.to_vec()
}

/// Source number `i` of a flood: 198.18.16.0/20, as many addresses as the flood had.
fn source(i: usize) -> SocketAddr {
    let host = 0xc612_1000u32 + 1 + (i % 4094) as u32;
    SocketAddr::from((std::net::Ipv4Addr::from(host), 4444))
}

#[test]
fn a_many_source_flood_with_valid_cookies_is_held_to_the_budget_and_a_known_peer_is_served() {
    let mut b = responder();
    let stranger = initiation(9, 0x5e5e_0001, Duration::from_secs(1_700_000_000));
    let sources = 512;
    let flood: Vec<(SocketAddr, Vec<u8>)> = (0..sources)
        .map(|i| (source(i), with_cookie(&b, source(i), &stranger)))
        .collect();
    let mut out = buf();
    // One simulated second: 8 initiations a millisecond, each source 16 a second, under the
    // 20 a second one source may have processed, so only the budget stands in the way.
    let start = Duration::from_secs(1);
    let mut sent = 0usize;
    for ms in 0..1000u64 {
        let now = start + Duration::from_millis(ms);
        for _ in 0..8 {
            let (from, m) = &flood[sent % sources];
            b.handle_datagram(*from, m, now, &mut out);
            sent += 1;
        }
    }
    // Each initiation that got its Curve25519 work ended as an unknown peer (the stranger's
    // key), except the first ones, before B was under load.
    let worked = b.drops().get(DropReason::UnknownPeer);
    let refused = b.drops().get(DropReason::HandshakeBudget);
    let budget = (HANDSHAKE_OPS_BURST - HANDSHAKE_OPS_RESERVE + HANDSHAKE_OPS_PER_SECOND)
        / RECEIVE_INITIATION_OPS;
    assert!(
        worked <= u64::from(budget),
        "{worked} of {sent} initiations got their Curve25519 work; the budget is {budget}"
    );
    assert!(worked >= u64::from(HANDSHAKE_OPS_PER_SECOND / RECEIVE_INITIATION_OPS) / 2);
    assert!(refused > 0);
    assert_eq!(
        b.drops().get(DropReason::UnderLoad),
        0,
        "every sender had a cookie"
    );

    // In the middle of the flood, A's initiation from its endpoint is answered at once.
    let now = start + Duration::from_millis(1000);
    let a_addr: SocketAddr = A_ADDR.parse().unwrap();
    let from_a = with_cookie(
        &b,
        a_addr,
        &initiation(1, 7, Duration::from_secs(1_700_000_001)),
    );
    let drained = flood.iter().take(8).any(|(from, m)| {
        b.handle_datagram(*from, m, now, &mut out)
            == NetworkAction::Drop(DropReason::HandshakeBudget)
    });
    assert!(
        drained,
        "the flood had not drained the budget: the test proves nothing"
    );
    assert_eq!(
        b.handle_datagram(a_addr, &from_a, now, &mut out),
        NetworkAction::WriteToNetwork {
            to: a_addr,
            len: wire::RESPONSE_LEN
        }
    );
}

#[test]
fn cookie_replies_are_capped_overall_and_a_known_peer_still_gets_one() {
    let mut b = responder();
    let stranger = initiation(9, 0x5e5e_0002, Duration::from_secs(1_700_000_000));
    let mut out = buf();
    let start = Duration::from_secs(1);
    let (mut sent, mut cookies) = (0u64, 0u64);
    // Past the load threshold, then one second of 10 initiations a millisecond from 4,094
    // addresses, none with a cookie.
    for _ in 0..=UNDER_LOAD_INITIATIONS_PER_SECOND {
        b.handle_datagram(source(0), &stranger, start, &mut out);
    }
    for ms in 0..1000u64 {
        let now = start + Duration::from_millis(ms);
        for _ in 0..10 {
            let action = b.handle_datagram(source(sent as usize), &stranger, now, &mut out);
            sent += 1;
            if let NetworkAction::WriteToNetwork { len, .. } = action {
                assert_eq!(len, wire::COOKIE_REPLY_LEN);
                cookies += 1;
            }
        }
    }
    let cap = u64::from(COOKIE_REPLIES_BURST - COOKIE_REPLIES_RESERVE + COOKIE_REPLIES_PER_SECOND);
    assert!(
        cookies <= cap,
        "{cookies} cookie replies to {sent} initiations in a second; the cap is {cap}"
    );
    assert!(cookies >= u64::from(COOKIE_REPLIES_PER_SECOND) / 2);
    assert_eq!(b.drops().get(DropReason::CookieBudget), sent - cookies);
    let now = start + Duration::from_millis(1000);
    // A, at its endpoint, still gets a cookie reply to prove its address with.
    let a_addr: SocketAddr = A_ADDR.parse().unwrap();
    let drained = (0..8).any(|i| {
        b.handle_datagram(source(i), &stranger, now, &mut out)
            == NetworkAction::Drop(DropReason::CookieBudget)
    });
    assert!(
        drained,
        "the flood had not used up the replies: the test proves nothing"
    );
    let from_a = initiation(1, 7, Duration::from_secs(1_700_000_001));
    assert_eq!(
        b.handle_datagram(a_addr, &from_a, now, &mut out),
        NetworkAction::WriteToNetwork {
            to: a_addr,
            len: wire::COOKIE_REPLY_LEN
        }
    );
}
