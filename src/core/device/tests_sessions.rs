//! Unit tests of how a peer's sessions (previous, current, next) and its own handshake change
//! hands when handshakes cross, are retried or are answered: two devices back to back, with
//! the datagrams that matter lost on purpose.

use super::tests::{buf, handshake, ipv4, pair, A_ADDR, B_ADDR};
use super::*;
use crate::core::limits::REKEY_AFTER_TIME;
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

/// A retried initiation replaces the session we answered for the first try, which never
/// carried a packet: it must not take the place of `previous`, the session the peer is still
/// sending on. Before the fix any answered session older than REKEY_TIMEOUT went to
/// `previous`, and a retry comes REKEY_TIMEOUT after the first try, so it always did.
#[test]
fn a_retried_initiation_keeps_the_previous_session_in_use() {
    let start = Duration::from_secs(1);
    let (mut a, mut b) = settled_pair(start);
    let a_addr: SocketAddr = A_ADDR.parse().unwrap();
    let mut out = buf();
    let mut reply = buf();

    // B starts a handshake (its address changed) and completes it; its keepalive confirming
    // the new session to A is lost, so A goes on sending on the first session, B's previous.
    let t = Duration::from_secs(100);
    b.underlay_changed(t);
    b_completes_its_handshake(&mut a, &mut b, t);
    while b.poll_transmit(t, &mut out).is_some() {}
    let in_use = b.peers()[0].previous.as_ref().map(|s| s.local_index);
    assert!(in_use.is_some());

    // A starts one too; B answers it, the response is lost, A retries.
    a.underlay_changed(t);
    let init = a.poll_transmit(t, &mut out).expect("A's initiation");
    assert!(matches!(
        b.handle_datagram(a_addr, &out[..init.len], t, &mut reply),
        NetworkAction::WriteToNetwork { .. }
    ));
    while a.poll_transmit(t, &mut out).is_some() {}
    let retry = t + Duration::from_millis(5500);
    a.handle_timers(retry);
    let init = a.poll_transmit(retry, &mut out).expect("A's retry");
    assert_eq!(out[0], TYPE_INITIATION);
    assert!(matches!(
        b.handle_datagram(a_addr, &out[..init.len], retry, &mut reply),
        NetworkAction::WriteToNetwork { .. }
    ));
    while a.poll_transmit(retry, &mut out).is_some() {}

    assert_eq!(
        b.peers()[0].previous.as_ref().map(|s| s.local_index),
        in_use,
        "the retry pushed the session A sends on out of B's previous"
    );
    let mut packet = ipv4([100, 64, 0, 1], [100, 64, 0, 2], b"still on the first");
    let TunAction::WriteToNetwork { len, .. } =
        a.handle_tun_packet(&mut packet, 38, retry, &mut out)
    else {
        panic!("A could not send on its session");
    };
    assert_eq!(
        b.handle_datagram(a_addr, &out[..len], retry, &mut reply),
        NetworkAction::WriteToTun { len: 38 },
        "B refused A's packet on the session A still sends on"
    );
}

/// Our rekey is due and asked for, but not sent yet, when the peer's own handshake completes
/// and its first packet confirms the session we answered: the rekey would only replace that
/// fresh session, so it is dropped with any attempt of ours.
#[test]
fn a_confirmed_answer_also_drops_a_rekey_not_yet_sent() {
    let start = Duration::from_secs(1);
    let (mut a, _old_b) = settled_pair(start);
    let b_addr: SocketAddr = B_ADDR.parse().unwrap();
    let mut out = buf();
    let mut reply = buf();

    // A's session is due for its rekey: sending on it asks for one.
    let t = start + REKEY_AFTER_TIME + Duration::from_secs(1);
    let mut packet = ipv4([100, 64, 0, 1], [100, 64, 0, 2], b"due");
    assert!(matches!(
        a.handle_tun_packet(&mut packet, 23, t, &mut out),
        TunAction::WriteToNetwork { .. }
    ));
    assert!(a.peers()[0].want_initiation, "the rekey was not asked for");

    // Before A sends it, B (restarted) completes a handshake of its own and confirms it.
    let (_, mut b) = pair();
    let mut packet = ipv4([100, 64, 0, 2], [100, 64, 0, 1], b"from the new b");
    assert_eq!(
        b.handle_tun_packet(&mut packet, 34, t, &mut out),
        TunAction::Staged
    );
    b_completes_its_handshake(&mut a, &mut b, t);
    let staged = b.poll_transmit(t, &mut out).expect("B's staged packet");
    assert_eq!(
        a.handle_datagram(b_addr, &out[..staged.len], t, &mut reply),
        NetworkAction::WriteToTun { len: 34 }
    );

    while let Some(sent) = a.poll_transmit(t, &mut out) {
        assert_ne!(
            out[0], TYPE_INITIATION,
            "A still sent the rekey it asked for before B's handshake: {sent:?}"
        );
    }
}

/// A and B after A's handshake at `start` and its first packet, which confirmed the session to B.
fn settled_pair(start: Duration) -> (Device, Device) {
    let (mut a, mut b) = pair();
    let a_addr: SocketAddr = A_ADDR.parse().unwrap();
    let first = handshake(&mut a, &mut b, start);
    let mut out = buf();
    let action = b.handle_datagram(a_addr, &first, start, &mut out);
    assert_eq!(action, NetworkAction::WriteToTun { len: 25 });
    (a, b)
}

/// B's initiation, due now, goes to A, and A's response back to B, which completes it.
fn b_completes_its_handshake(a: &mut Device, b: &mut Device, t: Duration) {
    let a_addr: SocketAddr = A_ADDR.parse().unwrap();
    let b_addr: SocketAddr = B_ADDR.parse().unwrap();
    let (mut out, mut reply) = (buf(), buf());
    let init = b.poll_transmit(t, &mut out).expect("B's initiation");
    let NetworkAction::WriteToNetwork { len, .. } =
        a.handle_datagram(b_addr, &out[..init.len], t, &mut reply)
    else {
        panic!("A did not answer B's initiation");
    };
    assert_eq!(
        b.handle_datagram(a_addr, &reply[..len], t, &mut out),
        NetworkAction::Consumed
    );
}
