//! Unit tests of how a peer's sessions (previous, current, next) and its own handshake change
//! hands when handshakes cross, are retried or are answered: two devices back to back, with
//! the datagrams that matter lost on purpose.

use super::tests::{buf, handshake, ipv4, pair, A_ADDR};
use super::*;
use crate::core::wire::TYPE_INITIATION;

/// Our own initiation was lost; the peer's handshake completed and its first packet confirmed
/// the session we answered. There is then no reason to finish a second handshake: WireGuard
/// drops its own attempt. Before the fix ours was retried 5 s later and, once answered,
/// replaced the session both sides had just settled on.
#[test]
fn a_confirmed_answer_cancels_our_own_handshake() {
    let (mut a, mut b) = pair();
    let a_addr: SocketAddr = A_ADDR.parse().unwrap();
    let now = Duration::from_secs(1);
    let mut out = buf();
    let mut packet = ipv4([100, 64, 0, 2], [100, 64, 0, 1], b"from b");
    assert_eq!(
        b.handle_tun_packet(&mut packet, 26, now, &mut out),
        TunAction::Staged
    );
    let lost = b.poll_transmit(now, &mut out).expect("B's initiation");
    assert_eq!(out[0], TYPE_INITIATION, "{lost:?}");
    while b.poll_transmit(now, &mut out).is_some() {}

    let confirmation = handshake(&mut a, &mut b, now);
    let action = b.handle_datagram(a_addr, &confirmation, now, &mut out);
    assert_eq!(action, NetworkAction::WriteToTun { len: 25 });
    let settled = b.peers()[0].current.as_ref().map(|s| s.local_index);
    assert!(settled.is_some(), "the answered session was not confirmed");
    assert!(
        b.peers()[0].handshake.is_none(),
        "B still runs its own handshake after the peer confirmed one"
    );
    // B's staged packet goes out on the confirmed session; nothing else.
    while b.poll_transmit(now, &mut out).is_some() {}

    let later = now + Duration::from_secs(6);
    b.handle_timers(later);
    while let Some(t) = b.poll_transmit(later, &mut out) {
        assert_ne!(
            out[0], TYPE_INITIATION,
            "B retried a handshake it no longer needs: {t:?}"
        );
    }
    assert_eq!(
        b.peers()[0].current.as_ref().map(|s| s.local_index),
        settled
    );
}
