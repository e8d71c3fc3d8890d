//! Unit tests of how initiations a relay delivers are rate-limited: B reaches X and Y only
//! through relay R, and the datagrams R delivers are handed to B as they come out of R's
//! envelopes.

use super::tests::{buf, device, ipv4, key, peer};
use super::*;
use crate::core::limits::INITIATION_BURST_PER_SOURCE;

const R: u8 = 10;
const X: u8 = 11;
const Y: u8 = 12;
/// B's peer numbers: the order of its config.
const R_AT_B: PeerId = 0;
const X_AT_B: PeerId = 1;
const Y_AT_B: PeerId = 2;

/// X and Y are both peers of B behind relay R. X sends initiations (here, its one initiation
/// again and again, as any peer of R can) until its bucket at B is empty: Y's initiation must
/// still be processed. Before, all initiations R delivered shared one bucket, so one peer of
/// the relay locked every other one out of handshakes with B.
#[test]
fn one_peer_behind_a_relay_cannot_use_up_the_others_handshakes() {
    let mut b = device_b();
    let now = Duration::from_secs(1);
    let from_x = initiation_to_b(X, now);
    let from_y = initiation_to_b(Y, now);
    let x_key = *key(X).public_key().x25519_bytes();
    let y_key = *key(Y).public_key().x25519_bytes();
    let mut out = buf();

    let mut refused = 0;
    for _ in 0..(INITIATION_BURST_PER_SOURCE * 4) {
        let result = b.dispatch(Path::Relay(R_AT_B), Some(x_key), &from_x, now, &mut out);
        if matches!(result, Err((DropReason::RateLimited, _))) {
            refused += 1;
        }
    }
    assert_eq!(
        refused,
        INITIATION_BURST_PER_SOURCE * 3,
        "X gets its burst and no more"
    );

    let result = b.dispatch(Path::Relay(R_AT_B), Some(y_key), &from_y, now, &mut out);
    assert!(
        !matches!(result, Err((DropReason::RateLimited, _))),
        "Y's initiation was refused for X's flood: {result:?}"
    );
    assert_eq!(
        b.peers()[Y_AT_B].last_initiation_at,
        Some(now),
        "B did not take Y's initiation: {result:?}"
    );
}

/// The bucket is the sender's the relay names, so the initiation must be that sender's: a
/// relay naming another peer would let one peer spend the tokens of others.
#[test]
fn a_relayed_initiation_from_another_than_the_named_sender_is_refused() {
    let mut b = device_b();
    let now = Duration::from_secs(1);
    let from_y = initiation_to_b(Y, now);
    let x_key = *key(X).public_key().x25519_bytes();
    let mut out = buf();
    let result = b.dispatch(Path::Relay(R_AT_B), Some(x_key), &from_y, now, &mut out);
    assert_eq!(result, Err((DropReason::RelayRefused, Some(R_AT_B))));
    assert_eq!(b.peers()[Y_AT_B].last_initiation_at, None);
}

/// B (key 2): R is its relay; X and Y have no endpoint, so they are reached through R.
fn device_b() -> Device {
    let mut relay = peer(key(R).public_key(), "100.64.0.10/32", "198.18.0.10:51820");
    relay.relay = true;
    let behind_relay = |n: u8| PeerConfig {
        endpoint: None,
        ..peer(
            key(n).public_key(),
            &format!("100.64.0.{n}/32"),
            "0.0.0.0:1",
        )
    };
    device(2, vec![relay, behind_relay(X), behind_relay(Y)])
}

/// The initiation peer `n` sends B for its first packet.
fn initiation_to_b(n: u8, now: Duration) -> Vec<u8> {
    let to_b = peer(key(2).public_key(), "100.64.0.2/32", "198.18.0.2:51820");
    let mut device = device(n, vec![to_b]);
    let mut packet = ipv4([100, 64, 0, n], [100, 64, 0, 2], b"hello");
    let mut out = buf();
    assert_eq!(
        device.handle_tun_packet(&mut packet, 25, now, &mut out),
        TunAction::Staged
    );
    let initiation = device.poll_transmit(now, &mut out).expect("an initiation");
    out[..initiation.len].to_vec()
}

/// A relay that names senders who are not our peers (or itself) would get a fresh bucket for
/// each made-up name: such initiations are refused before any Curve25519 work.
#[test]
fn a_relayed_initiation_naming_no_peer_of_ours_is_refused_before_the_handshake_work() {
    let mut b = device_b();
    let now = Duration::from_secs(1);
    let from_x = initiation_to_b(X, now);
    let relay_key = *key(R).public_key().x25519_bytes();
    let mut out = buf();
    // Junk for Noise with a valid mac1: had it reached the Curve25519 work, it would fail there
    // as unauthenticated.
    let mut junk = from_x.clone();
    let [noise, mac1, _] = crate::core::wire::initiation_layout();
    junk[noise].fill(0x5a);
    let tag = crate::core::handshake::Mac1Key::for_receiver(&key(2).public_key())
        .compute(&junk[..mac1.start]);
    junk[mac1].copy_from_slice(&tag);
    for n in 0..100u8 {
        let made_up = [n; 32];
        let result = b.dispatch(Path::Relay(R_AT_B), Some(made_up), &junk, now, &mut out);
        assert_eq!(result, Err((DropReason::RelayRefused, Some(R_AT_B))));
    }
    let result = b.dispatch(Path::Relay(R_AT_B), Some(relay_key), &from_x, now, &mut out);
    assert_eq!(result, Err((DropReason::RelayRefused, Some(R_AT_B))));
    // X's own bucket was never touched: its initiation still goes through.
    let x_key = *key(X).public_key().x25519_bytes();
    let _ = b.dispatch(Path::Relay(R_AT_B), Some(x_key), &from_x, now, &mut out);
    assert_eq!(b.peers()[X_AT_B].last_initiation_at, Some(now));
}
