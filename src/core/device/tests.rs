//! Unit tests of the device: two devices wired back to back through their public API.

use super::*;
use crate::core::keys::{PresharedKey, PublicKey};
use crate::core::limits::{ring_slot_bytes, STAGED_PACKETS_PER_PEER};
use crate::core::wire;
use rand::Rng;

pub(super) const MTU: usize = 1420;
pub(super) const A_ADDR: &str = "198.18.0.1:51820";
pub(super) const B_ADDR: &str = "198.18.0.2:51820";

pub(super) fn key(n: u8) -> SecretKey {
    SecretKey::from_seed([n; 32])
}

pub(super) fn peer(public_key: PublicKey, allowed: &str, endpoint: &str) -> PeerConfig {
    PeerConfig {
        public_key,
        preshared_key: PresharedKey::default(),
        allowed_ips: vec![allowed.parse().unwrap()],
        endpoint: Some(endpoint.parse().unwrap()),
        persistent_keepalive: None,
        relay: false,
    }
}

/// A (100.64.0.1) and B (100.64.0.2), each the other's only peer.
pub(super) fn pair() -> (Device, Device) {
    let one_peer = |other: u8, allowed: &str, endpoint: &str| {
        vec![peer(key(other).public_key(), allowed, endpoint)]
    };
    (
        device(1, one_peer(2, "100.64.0.2/32", B_ADDR)),
        device(2, one_peer(1, "100.64.0.1/32", A_ADDR)),
    )
}

/// The device with secret key `own` (and rng seed from it) and these peers, at the defaults.
pub(super) fn device(own: u8, peers: Vec<PeerConfig>) -> Device {
    Device::new(DeviceConfig {
        secret_key: key(own),
        mtu: MTU,
        peers,
        wall_clock_at_zero: Duration::from_secs(1_700_000_000),
        rng_seed: [own; 32],
        serve_relay: false,
        pacing: true,
    })
}

pub(super) fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![0u8; ring_slot_bytes(MTU)];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[20..total].copy_from_slice(payload);
    p
}

pub(super) fn buf() -> Vec<u8> {
    vec![0u8; ring_slot_bytes(MTU)]
}

/// Sends A's first packet to B, carries the handshake across, and returns the transport
/// datagram A finally sent for it.
pub(super) fn handshake(a: &mut Device, b: &mut Device, now: Duration) -> Vec<u8> {
    let a_addr: SocketAddr = A_ADDR.parse().unwrap();
    let b_addr: SocketAddr = B_ADDR.parse().unwrap();
    let mut packet = ipv4([100, 64, 0, 1], [100, 64, 0, 2], b"first");
    let mut out = buf();
    assert_eq!(
        a.handle_tun_packet(&mut packet, 25, now, &mut out),
        TunAction::Staged
    );
    let init = a.poll_transmit(now, &mut out).expect("an initiation");
    assert_eq!(init.to, b_addr);
    let mut reply = buf();
    let action = b.handle_datagram(a_addr, &out[..init.len], now, &mut reply);
    let NetworkAction::WriteToNetwork { to, len } = action else {
        panic!("B did not answer the initiation: {action:?}");
    };
    assert_eq!(to, a_addr);
    let action = a.handle_datagram(b_addr, &reply[..len], now, &mut out);
    assert_eq!(action, NetworkAction::Consumed);
    let staged = a.poll_transmit(now, &mut out).expect("the staged packet");
    assert!(a.poll_transmit(now, &mut out).is_none());
    out[..staged.len].to_vec()
}

#[test]
fn handshake_then_data_both_ways() {
    let (mut a, mut b) = pair();
    let now = Duration::from_secs(1);
    let datagram = handshake(&mut a, &mut b, now);
    let mut out = buf();
    let action = b.handle_datagram(A_ADDR.parse().unwrap(), &datagram, now, &mut out);
    assert_eq!(action, NetworkAction::WriteToTun { len: 25 });
    assert_eq!(&out[20..25], b"first");
    // B's session is confirmed by that packet, so B can answer at once.
    let mut packet = ipv4([100, 64, 0, 2], [100, 64, 0, 1], b"back");
    let TunAction::WriteToNetwork { len, .. } = b.handle_tun_packet(&mut packet, 24, now, &mut out)
    else {
        panic!("B could not send on its confirmed session");
    };
    let mut inner = buf();
    let action = a.handle_datagram(B_ADDR.parse().unwrap(), &out[..len], now, &mut inner);
    assert_eq!(action, NetworkAction::WriteToTun { len: 24 });
    assert_eq!(&inner[20..24], b"back");
    assert!(a.peers()[0].last_handshake_at.is_some());
}

#[test]
fn a_forged_response_does_not_cancel_the_handshake() {
    let (mut a, mut b) = pair();
    let now = Duration::from_secs(1);
    let a_addr: SocketAddr = A_ADDR.parse().unwrap();
    let b_addr: SocketAddr = B_ADDR.parse().unwrap();
    let mut packet = ipv4([100, 64, 0, 1], [100, 64, 0, 2], b"first");
    let mut out = buf();
    a.handle_tun_packet(&mut packet, 25, now, &mut out);
    let init = a.poll_transmit(now, &mut out).expect("an initiation");
    let mut reply = buf();
    let NetworkAction::WriteToNetwork { len, .. } =
        b.handle_datagram(a_addr, &out[..init.len], now, &mut reply)
    else {
        panic!("B did not answer the initiation");
    };
    // Someone who saw the initiation answers first, from elsewhere: A's index, junk for Noise,
    // and a mac1 computed from A's public key.
    let mut forged = reply[..len].to_vec();
    let [noise, mac1, _] = wire::response_layout();
    forged[noise].fill(0x5a);
    let tag = crate::core::handshake::Mac1Key::for_receiver(&key(1).public_key())
        .compute(&forged[..mac1.start]);
    forged[mac1].copy_from_slice(&tag);
    let elsewhere: SocketAddr = "198.18.0.66:40000".parse().unwrap();
    let action = a.handle_datagram(elsewhere, &forged, now, &mut out);
    assert_eq!(action, NetworkAction::Drop(DropReason::Unauthenticated));
    // B's real response still completes the handshake, and the staged packet goes out to B.
    let action = a.handle_datagram(b_addr, &reply[..len], now, &mut out);
    assert_eq!(action, NetworkAction::Consumed);
    let staged = a.poll_transmit(now, &mut out).expect("the staged packet");
    assert_eq!(staged.to, b_addr);
}

#[test]
fn a_relay_is_never_made_the_path_to_itself() {
    let (mut a, mut b) = pair();
    let now = Duration::from_secs(1);
    handshake(&mut a, &mut b, now);
    // As if B, a relay of A's, had wrapped one of its own packets in a delivery to A.
    a.roam(0, Path::Relay(0), now + Duration::from_secs(60), true);
    assert_eq!(a.peers()[0].relay_via, None);
    assert_eq!(a.peers()[0].endpoint, Some(B_ADDR.parse().unwrap()));
}

#[test]
fn transport_finds_its_session_by_index_only() {
    let (mut a, mut b) = pair();
    let now = Duration::from_secs(1);
    let datagram = handshake(&mut a, &mut b, now);
    let mut wrong_index = datagram.clone();
    wrong_index[4] ^= 0xff;
    let mut out = buf();
    let from = A_ADDR.parse().unwrap();
    assert_eq!(
        b.handle_datagram(from, &wrong_index, now, &mut out),
        NetworkAction::Drop(DropReason::UnknownPeer)
    );
    assert_eq!(
        b.handle_datagram(from, &datagram, now, &mut out),
        NetworkAction::WriteToTun { len: 25 }
    );
    assert_eq!(
        b.handle_datagram(from, &datagram, now, &mut out),
        NetworkAction::Drop(DropReason::Replay)
    );
    assert_eq!(b.drops().get(DropReason::UnknownPeer), 1);
    assert_eq!(b.drops().get(DropReason::Replay), 1);
}

#[test]
fn replayed_initiation_is_refused() {
    let (mut a, mut b) = pair();
    let now = Duration::from_secs(1);
    let mut packet = ipv4([100, 64, 0, 1], [100, 64, 0, 2], b"x");
    let mut out = buf();
    a.handle_tun_packet(&mut packet, 21, now, &mut out);
    let init = a.poll_transmit(now, &mut out).unwrap();
    let captured = out[..init.len].to_vec();
    let from = A_ADDR.parse().unwrap();
    let mut reply = buf();
    assert!(matches!(
        b.handle_datagram(from, &captured, now, &mut reply),
        NetworkAction::WriteToNetwork { .. }
    ));
    let later = now + Duration::from_secs(30);
    assert_eq!(
        b.handle_datagram(from, &captured, later, &mut reply),
        NetworkAction::Drop(DropReason::StaleInitiation)
    );
}

#[test]
fn no_route_and_oversize_are_dropped_and_counted() {
    let (mut a, _) = pair();
    let now = Duration::ZERO;
    let mut out = buf();
    let mut packet = ipv4([100, 64, 0, 1], [10, 9, 9, 9], b"nowhere");
    assert_eq!(
        a.handle_tun_packet(&mut packet, 27, now, &mut out),
        TunAction::Drop(DropReason::NoRoute)
    );
    let mut big = buf();
    assert_eq!(
        a.handle_tun_packet(&mut big, MTU + 1, now, &mut out),
        TunAction::Drop(DropReason::TooLarge)
    );
    assert_eq!(a.drops().get(DropReason::NoRoute), 1);
    assert_eq!(a.drops().get(DropReason::TooLarge), 1);
}

/// What Linux sends on a fresh interface: an ICMPv6 router solicitation, fe80::1 to ff02::2.
fn router_solicitation() -> Vec<u8> {
    let mut p = buf();
    p[0] = 0x60;
    p[4..6].copy_from_slice(&8u16.to_be_bytes());
    p[6] = 58;
    p[7] = 255;
    p[8..24].copy_from_slice(&"fe80::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    p[24..40].copy_from_slice(&"ff02::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
    p[40] = 133;
    p
}

#[test]
fn link_scoped_packets_are_counted_apart_and_never_cross() {
    let now = Duration::ZERO;
    let mut out = buf();
    // The demo's `drops: no_route 1`: the kernel's router solicitation on a fresh link.
    let (mut a, _) = pair();
    assert_eq!(
        a.handle_tun_packet(&mut router_solicitation(), 48, now, &mut out),
        TunAction::Drop(DropReason::LinkLocal)
    );
    assert_eq!(a.drops().get(DropReason::NoRoute), 0);
    assert_eq!(a.drops().get(DropReason::LinkLocal), 1);
    // Not even to a peer that takes every address: the link is not the tunnel.
    let mut everything = device(1, vec![peer(key(2).public_key(), "::/0", B_ADDR)]);
    assert_eq!(
        everything.handle_tun_packet(&mut router_solicitation(), 48, now, &mut out),
        TunAction::Drop(DropReason::LinkLocal)
    );
    // mDNS to 224.0.0.251 is link-scoped too; a global address without a peer is no_route.
    let mut mdns = ipv4([100, 64, 0, 1], [224, 0, 0, 251], b"mdns");
    assert_eq!(
        a.handle_tun_packet(&mut mdns, 24, now, &mut out),
        TunAction::Drop(DropReason::LinkLocal)
    );
    let mut global = ipv4([100, 64, 0, 1], [224, 0, 1, 1], b"ntp");
    assert_eq!(
        a.handle_tun_packet(&mut global, 23, now, &mut out),
        TunAction::Drop(DropReason::NoRoute)
    );
}

#[test]
fn link_scoped_packets_go_to_a_peer_whose_allowed_ips_name_them() {
    let now = Duration::ZERO;
    let mut out = buf();
    // Babel over the tunnel: fe80::/64 in a peer's allowed_ips, as WireGuard carries it.
    let mut babel = device(1, vec![peer(key(2).public_key(), "fe80::/64", B_ADDR)]);
    let mut hello = router_solicitation();
    hello[24..40].copy_from_slice(&"fe80::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
    assert_eq!(
        babel.handle_tun_packet(&mut hello, 48, now, &mut out),
        TunAction::Staged
    );
    // ff02::2 is not in fe80::/64: still link-local.
    assert_eq!(
        babel.handle_tun_packet(&mut router_solicitation(), 48, now, &mut out),
        TunAction::Drop(DropReason::LinkLocal)
    );
    assert_eq!(babel.drops().get(DropReason::LinkLocal), 1);
    // OSPF's 224.0.0.5 with 224.0.0.0/24 allowed; a /1 half is default-like and does not count.
    let mut ospf = device(1, vec![peer(key(2).public_key(), "224.0.0.0/24", B_ADDR)]);
    let mut hello = ipv4([100, 64, 0, 1], [224, 0, 0, 5], b"ospf");
    assert_eq!(
        ospf.handle_tun_packet(&mut hello, 24, now, &mut out),
        TunAction::Staged
    );
    let mut half = device(1, vec![peer(key(2).public_key(), "128.0.0.0/1", B_ADDR)]);
    let mut hello = ipv4([100, 64, 0, 1], [224, 0, 0, 5], b"ospf");
    assert_eq!(
        half.handle_tun_packet(&mut hello, 24, now, &mut out),
        TunAction::Drop(DropReason::LinkLocal)
    );
}

#[test]
fn staging_queue_drops_the_newest_when_full() {
    let (mut a, _) = pair();
    let now = Duration::ZERO;
    let mut out = buf();
    let extra = 5;
    for i in 0..STAGED_PACKETS_PER_PEER + extra {
        let mut packet = ipv4([100, 64, 0, 1], [100, 64, 0, 2], &[i as u8]);
        let expected = if i < STAGED_PACKETS_PER_PEER {
            TunAction::Staged
        } else {
            TunAction::Drop(DropReason::RingFull)
        };
        assert_eq!(
            a.handle_tun_packet(&mut packet, 21, now, &mut out),
            expected
        );
    }
    assert_eq!(a.drops().get(DropReason::RingFull), extra as u64);
    // The queue kept the oldest packets: the first one is at its front.
    assert_eq!(a.peers()[0].staged.front().map(|(p, ())| p[20]), Some(0));
}

#[test]
fn garbage_is_never_answered_and_never_panics() {
    let (_, mut b) = pair();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut out = buf();
    let from = A_ADDR.parse().unwrap();
    let mut datagram = vec![0u8; 300];
    for i in 0..20_000u32 {
        let len = rng.gen_range(0..datagram.len());
        rng.fill(&mut datagram[..len]);
        if i % 2 == 0 && len >= 4 {
            // Well-formed headers with random bodies reach deeper code paths.
            datagram[0] = [1, 2, 4][(i as usize / 2) % 3];
            datagram[1..4].fill(0);
        }
        let action = b.handle_datagram(from, &datagram[..len], Duration::ZERO, &mut out);
        assert!(
            matches!(action, NetworkAction::Drop(_)),
            "garbage got {action:?}"
        );
    }
    let counted: u64 = b.drops().iter().map(|(_, n)| n).sum();
    assert_eq!(counted, 20_000);
}

#[test]
fn reconfigure_keeps_sessions_of_peers_that_stay() {
    let (mut a, mut b) = pair();
    let now = Duration::from_secs(1);
    let datagram = handshake(&mut a, &mut b, now);
    let c = key(3).public_key();
    let mut widened = peer(key(1).public_key(), "100.64.0.1/32", A_ADDR);
    widened.allowed_ips.push("100.65.1.0/24".parse().unwrap());
    let summary = b.reconfigure(vec![peer(c, "100.64.0.3/32", "198.18.0.3:51820"), widened]);
    assert_eq!((summary.added, summary.changed, summary.removed), (1, 1, 0));
    // A's session survived the reload, now at a different position in B's peer list.
    let mut out = buf();
    let from = A_ADDR.parse().unwrap();
    assert_eq!(
        b.handle_datagram(from, &datagram, now, &mut out),
        NetworkAction::WriteToTun { len: 25 }
    );
    // Removing A forgets its sessions at once.
    let summary = b.reconfigure(vec![peer(c, "100.64.0.3/32", "198.18.0.3:51820")]);
    assert_eq!(summary.removed, 1);
    let mut packet = ipv4([100, 64, 0, 1], [100, 64, 0, 2], b"late");
    let TunAction::WriteToNetwork { len, .. } = a.handle_tun_packet(&mut packet, 24, now, &mut out)
    else {
        panic!("A could not send");
    };
    let mut inner = buf();
    assert_eq!(
        b.handle_datagram(from, &out[..len], now, &mut inner),
        NetworkAction::Drop(DropReason::UnknownPeer)
    );
}

#[test]
fn a_record_from_the_dht_makes_an_unknown_endpoint_reachable() {
    // A as B's peer, without an endpoint: B cannot send to it yet.
    let mut a_cfg = peer(key(1).public_key(), "100.64.0.1/32", A_ADDR);
    a_cfg.endpoint = None;
    let mut b = device(2, vec![a_cfg]);
    let now = Duration::from_secs(1);
    let mut out = buf();
    let mut packet = ipv4([100, 64, 0, 2], [100, 64, 0, 1], b"hi");
    assert_eq!(
        b.handle_tun_packet(&mut packet, 22, now, &mut out),
        TunAction::Drop(DropReason::NoEndpoint)
    );
    // The lookup is due at once, then not again right away.
    assert_eq!(b.next_lookup(now), Some((key(1).public_key(), None)));
    assert_eq!(b.next_lookup(now), None);
    let old: SocketAddr = "198.18.9.9:51820".parse().unwrap();
    let fresh: SocketAddr = A_ADDR.parse().unwrap();
    b.record_found(&key(1).public_key(), 7, &[old, fresh], now);
    // One initiation, sent to each candidate.
    let mut targets = Vec::new();
    while let Some(t) = b.poll_transmit(now, &mut out) {
        assert_eq!(out[0], wire::TYPE_INITIATION);
        targets.push(t.to);
    }
    assert_eq!(targets, vec![old, fresh]);
    // An older record changes nothing.
    b.record_found(&key(1).public_key(), 6, &[old], now);
    assert_eq!(b.peers()[0].discovery.sequence, Some(7));
}

#[test]
fn an_exit_peers_record_is_used_unless_a_narrower_prefix_routes_it() {
    // A is B's exit: a default route and a /1 half through A, and a subnet behind A.
    let mut a_cfg = peer(key(1).public_key(), "100.64.0.1/32", A_ADDR);
    a_cfg.endpoint = None;
    for prefix in ["0.0.0.0/0", "128.0.0.0/1", "100.65.0.0/16"] {
        a_cfg.allowed_ips.push(prefix.parse().unwrap());
    }
    let mut b = device(2, vec![a_cfg]);
    let now = Duration::from_secs(1);
    let outside: SocketAddr = "198.18.9.9:51820".parse().unwrap();
    let behind: SocketAddr = "100.65.1.1:51820".parse().unwrap();
    let overlay: SocketAddr = "100.64.0.1:51820".parse().unwrap();
    b.record_found(&key(1).public_key(), 7, &[outside, behind, overlay], now);
    // Only the default routes cover 198.18.9.9: the full tunnel's policy sends our own
    // packets there outside the tunnel. The others would travel inside it.
    let mut out = buf();
    let mut targets = Vec::new();
    while let Some(t) = b.poll_transmit(now, &mut out) {
        targets.push(t.to);
    }
    assert_eq!(targets, vec![outside]);
}

#[test]
fn a_full_record_keeps_its_public_and_reflexive_addresses() {
    use crate::core::limits::MAX_RECORD_TARGETS;
    let (_, mut b) = pair();
    let now = Duration::from_secs(1);
    // As `Record::candidates` yields them: every listed address, then the public one, then
    // the reflexive one, which is the one that works behind a NAT.
    let record: Vec<SocketAddr> = (0..MAX_RECORD_TARGETS)
        .map(|i| SocketAddr::from(([198, 19, 0, i as u8 + 1], 51820)))
        .collect();
    b.record_found(&key(1).public_key(), 1, &record, now);
    let targets = b.peers()[0].initiation_targets();
    for address in &record {
        assert!(targets.contains(&Some(*address)), "{address} was dropped");
    }
}

#[test]
fn under_load_an_initiation_needs_a_cookie_first() {
    use crate::core::limits::UNDER_LOAD_INITIATIONS_PER_SECOND;
    let (mut a, mut b) = pair();
    let from: SocketAddr = A_ADDR.parse().unwrap();
    let b_addr: SocketAddr = B_ADDR.parse().unwrap();
    let mut out = buf();
    let mut reply = buf();
    // The flood comes from another address, as an attacker's would.
    let attacker: SocketAddr = "198.18.0.66:4444".parse().unwrap();
    let flood = |b: &mut Device, initiation: &[u8], now: Duration| {
        let mut scratch = buf();
        for _ in 0..=UNDER_LOAD_INITIATIONS_PER_SECOND {
            b.handle_datagram(attacker, initiation, now, &mut scratch);
        }
    };
    // A's first initiation, replayed in a flood, puts B under load.
    let t0 = Duration::from_secs(1);
    let mut packet = ipv4([100, 64, 0, 1], [100, 64, 0, 2], b"x");
    a.handle_tun_packet(&mut packet, 21, t0, &mut out);
    let init = a.poll_transmit(t0, &mut out).unwrap();
    let first = out[..init.len].to_vec();
    flood(&mut b, &first, t0);
    assert!(b.drops().get(DropReason::UnderLoad) > 0);
    // A retries; B answers with a cookie, not a handshake.
    let t1 = t0 + Duration::from_millis(5500);
    flood(&mut b, &first, t1);
    a.handle_timers(t1);
    let retry = a.poll_transmit(t1, &mut out).expect("a retry");
    let action = b.handle_datagram(from, &out[..retry.len], t1, &mut reply);
    assert_eq!(
        action,
        NetworkAction::WriteToNetwork {
            to: from,
            len: wire::COOKIE_REPLY_LEN
        }
    );
    assert_eq!(
        a.handle_datagram(b_addr, &reply[..wire::COOKIE_REPLY_LEN], t1, &mut out),
        NetworkAction::Consumed
    );
    // The next retry carries mac2 and gets a real response, load or not.
    let t2 = t1 + Duration::from_millis(5500);
    flood(&mut b, &first, t2);
    a.handle_timers(t2);
    let retry = a.poll_transmit(t2, &mut out).expect("a second retry");
    let action = b.handle_datagram(from, &out[..retry.len], t2, &mut reply);
    assert_eq!(
        action,
        NetworkAction::WriteToNetwork {
            to: from,
            len: wire::RESPONSE_LEN
        }
    );
    assert_eq!(
        a.handle_datagram(b_addr, &reply[..wire::RESPONSE_LEN], t2, &mut out),
        NetworkAction::Consumed
    );
    assert!(a.peers()[0].current.is_some());
}

#[test]
fn lookups_take_turns_among_peers_that_are_due() {
    // Three peers we cannot reach, looked up one at a time, each lookup taking 15 s (longer
    // than the 10 s retry): the first in the config must not take every turn.
    let peers = (2..5)
        .map(|n| {
            let mut p = peer(key(n).public_key(), &format!("100.64.0.{n}/32"), B_ADDR);
            p.endpoint = None;
            p
        })
        .collect();
    let mut a = device(1, peers);
    let asked: Vec<PublicKey> = (0..6)
        .filter_map(|turn| a.next_lookup(Duration::from_secs(1 + 15 * turn)))
        .map(|(key, _)| key)
        .collect();
    let expected: Vec<PublicKey> = [2, 3, 4, 2, 3, 4]
        .into_iter()
        .map(|n| key(n).public_key())
        .collect();
    assert!(asked == expected, "lookups did not take turns");
}

#[test]
fn a_relayed_peer_is_looked_up_at_once_then_at_doubling_intervals() {
    let (mut a, _) = pair();
    let secs = Duration::from_secs;
    let looked = |a: &mut Device, at: Duration| a.next_lookup(at).is_some();
    assert!(looked(&mut a, secs(100)), "first lookup");
    // The relay takes over at 101 s (the peer is its own relay here: only the path matters).
    a.peers[0].relay_via = Some(0);
    a.peers[0].relayed_at = Some(secs(101));
    let schedule: Vec<u64> = (101..300).filter(|&t| looked(&mut a, secs(t))).collect();
    assert_eq!(schedule, vec![101, 106, 111, 121, 141, 181, 241]);
}

/// A floods B at twice what B takes in (B keeps 10 datagrams a millisecond, with room for 40 in
/// its buffer): B reports its losses in its session, A paces itself from them, and
/// `tun_paused_until` holds A's reads (the shell reads only when it says None).
#[test]
fn an_overloaded_receiver_makes_the_sender_pace_and_pause() {
    let (mut a, mut b) = pair();
    let (a_addr, b_addr): (SocketAddr, SocketAddr) =
        (A_ADDR.parse().unwrap(), B_ADDR.parse().unwrap());
    let start = Duration::from_secs(1);
    let first = handshake(&mut a, &mut b, start);
    let mut out = buf();
    b.handle_datagram(a_addr, &first, start, &mut out);
    let (mut offered, mut sent, mut paused, mut delivered) = (0u64, 0u64, 0u64, 0u64);
    // B's room, in datagrams: refilled at 10 per ms, up to 40.
    let (mut room, mut lost_late, mut room_at) = (40.0f64, 0u64, start);
    let payload = [0x5au8; 1000];
    let mut now = start;
    // 400 ms, a packet offered every 50 µs (about 160 Mbit/s).
    while now < start + Duration::from_millis(400) {
        now += Duration::from_micros(50);
        offered += 1;
        if a.tun_paused_until(now).is_some() {
            paused += 1;
            continue;
        }
        let mut packet = ipv4([100, 64, 0, 1], [100, 64, 0, 2], &payload);
        let TunAction::WriteToNetwork { to, len } =
            a.handle_tun_packet(&mut packet, 1020, now, &mut out)
        else {
            continue;
        };
        assert_eq!(to, b_addr);
        sent += 1;
        room = (room + (now - room_at).as_secs_f64() * 10_000.0).min(40.0);
        room_at = now;
        if room < 1.0 {
            lost_late += u64::from(now >= start + Duration::from_millis(300));
            continue;
        }
        room -= 1.0;
        let mut inner = buf();
        if let NetworkAction::WriteToTun { .. } =
            b.handle_datagram(a_addr, &out[..len], now, &mut inner)
        {
            delivered += 1;
        }
        while let Some(report) = b.poll_transmit(now, &mut out) {
            assert_eq!(report.to, a_addr);
            let mut scratch = buf();
            let action = a.handle_datagram(b_addr, &out[..report.len], now, &mut scratch);
            assert_eq!(action, NetworkAction::Consumed, "a loss report is consumed");
        }
    }
    let pacer = &a.peers()[0].pacer;
    let reports_sent = b.peers()[0].loss_meter.reports;
    assert!(reports_sent >= 3, "B sent {reports_sent} loss reports");
    assert_eq!(
        pacer.reports, reports_sent,
        "A received every report B sent"
    );
    assert!(
        pacer.cuts >= 1 && pacer.rate().is_some(),
        "A is paced: {pacer:?}"
    );
    assert!(
        paused > 0,
        "A's reads were held while it owed its pace: {pacer:?}"
    );
    assert_eq!(
        pacer.unresponsive, 0,
        "loss from overload is cured by pacing"
    );
    // Paced, A sends far less than it is offered, and B loses little of it: over the last
    // 100 ms (2000 datagrams offered, about 1000 taken in) no more than a tenth.
    assert!(sent < offered * 3 / 4, "sent {sent} of {offered} offered");
    assert!(lost_late < 100, "B lost {lost_late} in the last 100 ms");
    assert!(delivered > 0 && b.drops().get(DropReason::Malformed) == 0);
    // `pacing = false` by reload lifts the pace at once and leaves the device read.
    a.set_pacing(false);
    assert_eq!(a.peers()[0].pacer.rate(), None);
    assert_eq!(a.tun_paused_until(now), None);
}
