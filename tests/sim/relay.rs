//! Scenarios of relaying: traffic through a relay until a direct path opens, and who may
//! forward or deliver relayed packets.

use dhtun::core::device::Device;
use dhtun::core::stats::DropReason;
use std::time::Duration;

use crate::network::{Impairment, Sim, Stream};
use crate::{ms, secs, A, B, C};

/// A and B cannot reach each other directly (both behind NATs that never let the other in), but
/// both reach C, a relay: traffic flows through C both ways, end to end encrypted, and moves to
/// the direct path once it opens, and back to the relay when it closes again.
#[test]
fn relay_carries_traffic_until_a_direct_path_opens_and_after_it_closes() {
    let mut sim = Sim::mesh(3, 21, Impairment::NONE);
    sim.make_relay(C);
    sim.set_links(A, B, Impairment::BLACKHOLE);
    sim.stream(A, B, Stream::new(secs(1), ms(100), 400));
    sim.stream(B, A, Stream::new(secs(1), ms(100), 400));
    sim.run_until(secs(15));

    sim.assert_no_forgeries();
    let relay_key = sim.nodes[C].public_key;
    for (src, dst) in [(A, B), (B, A)] {
        let peer = sim.peer(src, dst);
        assert_eq!(
            peer.relay_via,
            Some(1),
            "{src}->{dst} goes through C (its peer #1)"
        );
        let audit = sim.audit(src, dst);
        assert!(
            audit.delivered > 100,
            "{src}->{dst}: {} delivered",
            audit.delivered
        );
        assert_eq!(audit.duplicates, 0);
        // The first packets wait for the relay fallback; after that nothing is lost (the
        // last few may still be in flight).
        assert_eq!(
            audit.lost_between(secs(6)..secs(15) - ms(50)),
            Vec::<u64>::new(),
            "{src}->{dst}"
        );
    }
    assert_eq!(sim.peer(A, C).config.public_key, relay_key);
    let forwarded = sim.device(C).relayed().packets;
    assert!(forwarded > 200, "C forwarded {forwarded} packets");
    // C forwards, it cannot read: it has no session with either end's inner traffic, and
    // its TUN device never saw the packets.
    assert!(
        sim.nodes[C].tun.is_empty(),
        "the relay delivered inner packets to itself"
    );

    for (x, y) in [(A, B), (B, A)] {
        let p = sim.peer(x, y);
        eprintln!(
            "S {x}->{y} prev {:?} cur {:?} next {:?}",
            p.previous
                .as_ref()
                .map(|s| (s.local_index, s.remote_index, s.established_at)),
            p.current
                .as_ref()
                .map(|s| (s.local_index, s.remote_index, s.established_at)),
            p.next
                .as_ref()
                .map(|s| (s.local_index, s.remote_index, s.established_at))
        );
    }
    // The NATs open: the periodic direct try finds the path.
    sim.set_links(A, B, Impairment::NONE);
    sim.run_until(secs(30));
    for (src, dst) in [(A, B), (B, A)] {
        assert_eq!(
            sim.peer(src, dst).relay_via,
            None,
            "{src}->{dst} went direct"
        );
        assert_eq!(
            sim.audit(src, dst)
                .lost_between(secs(15)..secs(30) - ms(50)),
            Vec::<u64>::new(),
            "{src}->{dst} lost packets while switching to the direct path"
        );
    }
    let forwarded_then = sim.device(C).relayed().packets;

    // They close again: data unanswered for 15 s (as WireGuard) brings a new handshake, which
    // only the relay carries.
    sim.set_links(A, B, Impairment::BLACKHOLE);
    sim.stream(A, B, Stream::new(secs(41), ms(100), 150));
    sim.stream(B, A, Stream::new(secs(41), ms(100), 150));
    sim.run_until(secs(56));
    assert_eq!(
        sim.peer(A, B).relay_via,
        Some(1),
        "A fell back to the relay"
    );
    assert_eq!(
        sim.peer(B, A).relay_via,
        Some(1),
        "B fell back to the relay"
    );
    assert!(sim.device(C).relayed().packets > forwarded_then);
    for (src, dst) in [(A, B), (B, A)] {
        let audit = sim.audit(src, dst);
        let lost = audit.lost_between(secs(50)..secs(56) - ms(50));
        assert_eq!(lost, Vec::<u64>::new(), "{src}->{dst}");
    }
}

/// A node that is not a relay refuses to forward, and counts it.
#[test]
fn a_node_that_is_not_a_relay_refuses_to_forward() {
    let mut sim = Sim::mesh(3, 22, Impairment::NONE);
    sim.make_relay(C);
    // C is configured as a relay by A and B, but does not serve as one.
    sim.nodes[C].config.serve_relay = false;
    sim.nodes[C].device = Device::new(sim.nodes[C].config.clone());
    sim.set_links(A, B, Impairment::BLACKHOLE);
    sim.stream(A, B, Stream::new(secs(1), ms(100), 50));
    sim.run_until(secs(10));
    assert_eq!(sim.audit(A, B).delivered, 0);
    assert!(sim.device(C).drops().get(DropReason::RelayRefused) > 0);
    assert_eq!(sim.device(C).relayed().packets, 0);
}

/// A peer accepts relayed packets only from a peer it chose as a relay: a peer that forwards
/// for others, but that A never marked `relay = true`, cannot make A talk through it.
#[test]
fn only_a_chosen_relay_may_deliver() {
    let mut sim = Sim::mesh(3, 23, Impairment::NONE);
    sim.make_relay(C);
    // B uses C as a relay; A does not.
    for peer in &mut sim.nodes[A].config.peers {
        peer.relay = false;
    }
    sim.nodes[A].device = Device::new(sim.nodes[A].config.clone());
    sim.set_links(A, B, Impairment::BLACKHOLE);
    // A talks to C directly, so C has a session with A to deliver on.
    sim.stream(A, C, Stream::new(Duration::ZERO, ms(100), 20));
    sim.stream(B, A, Stream::new(secs(1), ms(100), 50));
    sim.run_until(secs(10));
    assert_eq!(
        sim.audit(B, A).delivered,
        0,
        "A took packets from a relay it did not choose"
    );
    assert!(sim.device(A).drops().get(DropReason::RelayRefused) > 0);
    assert!(
        sim.device(C).relayed().packets > 0,
        "C did forward B's packets"
    );
}
