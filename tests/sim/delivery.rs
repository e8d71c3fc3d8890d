//! Scenarios of delivery: meshes on clean and impaired networks, spoofed inner sources, losses
//! counted by the receiver, and one seed giving one run.

use dhtun::core::limits::{
    REJECT_AFTER_TIME, REKEY_AFTER_TIME, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER,
};
use dhtun::core::stats::DropReason;
use dhtun::core::wire::{TYPE_RESPONSE, TYPE_TRANSPORT};
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::network::{Impairment, Sim, Stream};
use crate::packets::ipv4_packet;
use crate::{ms, secs, A, B, C};

#[test]
fn two_nodes_exchange_both_ways() {
    let mut sim = Sim::mesh(2, 1, Impairment::NONE);
    sim.stream(A, B, Stream::new(Duration::ZERO, ms(50), 200));
    // B starts later, so A alone initiates and B's first packets go out on a confirmed session.
    sim.stream(B, A, Stream::new(secs(1), ms(50), 200));
    sim.run_until(secs(12));

    sim.assert_no_forgeries();
    for (src, dst) in [(A, B), (B, A)] {
        let audit = sim.audit(src, dst);
        assert_eq!(audit.sent, 200, "{src}->{dst}");
        assert_eq!(
            audit.missing(),
            Vec::<u64>::new(),
            "{src}->{dst} lost packets"
        );
        assert_eq!(audit.duplicates, 0, "{src}->{dst}");
    }
    for (at, of) in [(A, B), (B, A)] {
        let peer = sim.peer(at, of);
        assert!(peer.last_handshake_at.is_some(), "{at} never shook hands");
        assert!(peer.traffic.tx_packets >= 200, "{at}: {:?}", peer.traffic);
        assert!(peer.traffic.rx_packets >= 200, "{at}: {:?}", peer.traffic);
    }
    // A clean network gives no reason to drop anything.
    sim.assert_no_drops(A);
    sim.assert_no_drops(B);
}

#[test]
fn three_nodes_full_mesh() {
    let mut sim = Sim::mesh(3, 2, Impairment::NONE);
    let pairs = [(A, B), (A, C), (B, A), (B, C), (C, A), (C, B)];
    for (i, &(src, dst)) in pairs.iter().enumerate() {
        // Staggered by a few ms, so some pairs start while another handshake is in flight.
        sim.stream(src, dst, Stream::new(ms(7 * i as u64), ms(40), 150));
    }
    sim.run_until(secs(8));

    sim.assert_no_forgeries();
    for (src, dst) in pairs {
        let audit = sim.audit(src, dst);
        assert_eq!(audit.sent, 150, "{src}->{dst}");
        assert_eq!(
            audit.missing(),
            Vec::<u64>::new(),
            "{src}->{dst} lost packets"
        );
        assert_eq!(audit.duplicates, 0, "{src}->{dst}");
        assert!(sim.peer(src, dst).last_handshake_at.is_some());
    }
}

#[test]
fn impaired_network_delivers_only_unique_authentic_packets() {
    let impairment = Impairment {
        loss: 0.10,
        duplicate: 0.10,
        reorder: 0.10,
        ..Impairment::NONE
    };
    for seed in 1..=5 {
        let mut sim = Sim::mesh(2, seed, impairment);
        sim.stream(A, B, Stream::new(Duration::ZERO, ms(20), 3000));
        sim.stream(B, A, Stream::new(ms(10), ms(20), 3000));
        sim.run_until(secs(62));

        sim.assert_no_forgeries();
        for (src, dst) in [(A, B), (B, A)] {
            let audit = sim.audit(src, dst);
            assert_eq!(audit.sent, 3000, "seed {seed} {src}->{dst}");
            assert_eq!(
                audit.duplicates, 0,
                "seed {seed} {src}->{dst}: duplicate delivered"
            );
            // 10% loss alone costs ~10%; a lost handshake message costs a retry interval.
            let ratio = audit.delivered as f64 / audit.sent as f64;
            assert!(
                ratio > 0.80,
                "seed {seed} {src}->{dst}: only {:.1}% delivered",
                ratio * 100.0
            );
            // Duplicated transport packets reached the receiver's session and were refused.
            let replays = sim.device(dst).drops().get(DropReason::Replay);
            assert!(replays > 0, "seed {seed}: {dst} rejected no replay");
        }
    }
}

/// Packets lost on the way are counted by the receiver from the gaps in the sender's counters,
/// exactly, once they leave the replay window.
#[test]
fn receiver_counts_packets_lost_on_the_way() {
    let mut sim = Sim::mesh(2, 17, Impairment::NONE);
    // 6000 packets in 60 s: one session, and far more counters than the replay window holds.
    sim.stream(A, B, Stream::new(Duration::ZERO, ms(10), 6000));
    // B starts once A's packets have confirmed the session, so none of B's wait in staging.
    sim.stream(B, A, Stream::new(secs(1), ms(10), 5900));
    sim.lose_next(A, TYPE_TRANSPORT, 25);
    sim.run_until(secs(62));

    sim.assert_no_forgeries();
    assert_eq!(sim.audit(A, B).missing().len(), 25, "A->B");
    assert_eq!(sim.peer(B, A).traffic.rx_lost_packets, 25, "seen by B");
    assert_eq!(sim.audit(B, A).missing(), Vec::<u64>::new(), "B->A");
    assert_eq!(sim.peer(A, B).traffic.rx_lost_packets, 0, "seen by A");
}

#[test]
fn spoofed_inner_source_is_dropped() {
    let mut sim = Sim::mesh(3, 8, Impairment::NONE);
    sim.stream(B, A, Stream::new(Duration::ZERO, ms(100), 10));
    // B claims an address nobody owns, then one that belongs to C.
    let spoofs = [Ipv4Addr::new(100, 64, 0, 99), sim.overlay(C)];
    for (i, source) in spoofs.into_iter().enumerate() {
        let packet = ipv4_packet(source, sim.overlay(A), b"spoofed by B");
        sim.inject(ms(250 + 200 * i as u64), B, packet);
    }
    sim.run_until(secs(3));

    // The spoofed packets were encrypted and authenticated fine; A refused them after
    // decryption, because B may only speak for its own allowed_ips.
    assert_eq!(sim.device(A).drops().get(DropReason::BadSource), 2);
    assert_eq!(sim.peer(A, B).drops.get(DropReason::BadSource), 2);
    assert_eq!(sim.device(A).drops().get(DropReason::Unauthenticated), 0);
    sim.assert_no_forgeries();
    // B's genuine packets around them all arrived.
    let audit = sim.audit(B, A);
    assert_eq!(audit.sent, 10);
    assert_eq!(audit.missing(), Vec::<u64>::new());
}

#[test]
fn same_seed_gives_the_same_run() {
    let run = |seed| {
        let impairment = Impairment {
            loss: 0.2,
            duplicate: 0.2,
            reorder: 0.2,
            ..Impairment::NONE
        };
        let mut sim = Sim::mesh(3, seed, impairment);
        sim.stream(A, B, Stream::new(Duration::ZERO, ms(30), 300));
        sim.stream(B, C, Stream::new(ms(5), ms(30), 300));
        sim.stream(C, A, Stream::new(ms(9), ms(30), 300));
        sim.run_until(secs(12));
        sim.fingerprint()
    };
    assert_eq!(run(11), run(11));
    assert_ne!(run(11), run(12), "the seed should matter");
}

/// An hour of protocol time on a link that loses, duplicates and reorders 10% of datagrams
/// each, handshakes included, across some thirty rekeys: nothing delivered twice, nothing
/// delivered that was not sent, most delivered, and no outage at any rekey.
#[test]
fn loss_reorder_duplication_at_ten_percent_for_an_hour() {
    let impairment = Impairment {
        loss: 0.10,
        duplicate: 0.10,
        reorder: 0.10,
        ..Impairment::NONE
    };
    let hour = secs(3600);
    let every = ms(200);
    let count = (hour.as_millis() / every.as_millis()) as usize;
    let mut sim = Sim::mesh(2, 23, impairment);
    sim.stream(A, B, Stream::new(Duration::ZERO, every, count));
    sim.stream(B, A, Stream::new(every / 2, every, count));
    let end = hour + secs(2);
    sim.run_until(end);

    sim.assert_no_forgeries();
    // The first handshake may lose a message and wait a retry; after that, every session is
    // replaced while the old one still works, so only the link's own losses remain.
    let warmed_up = REKEY_TIMEOUT * 2 + REKEY_TIMEOUT_JITTER;
    for (src, dst) in [(A, B), (B, A)] {
        let audit = sim.audit(src, dst);
        assert_eq!(audit.sent, count, "{src}->{dst}");
        assert_eq!(audit.duplicates, 0, "{src}->{dst}: duplicate delivered");
        let ratio = audit.delivered as f64 / audit.sent as f64;
        assert!(
            ratio > 0.85,
            "{src}->{dst}: only {:.1}% delivered",
            ratio * 100.0
        );
        // Ten losses in a row at 10% each is a one-in-ten-billion event: a longer run is an
        // outage (a session dead before its successor worked), not the link.
        let run = audit.longest_loss_run(warmed_up);
        assert!(
            run.len() < 10,
            "{src}->{dst}: {} consecutive packets lost, sent {:?}..={:?}",
            run.len(),
            run.first(),
            run.last()
        );
        // Duplicated transport packets reached the receiver's session and were refused.
        assert!(sim.device(dst).drops().get(DropReason::Replay) > 0, "{dst}");
    }
    for node in [A, B] {
        // The link corrupts nothing and every rekey completed in time.
        for reason in [
            DropReason::Unauthenticated,
            DropReason::Expired,
            DropReason::HandshakeTimeout,
        ] {
            assert_eq!(
                sim.device(node).drops().get(reason),
                0,
                "{node}: {reason:?}"
            );
        }
    }
    // Sessions were replaced all along: about one handshake per REKEY_AFTER_TIME completed.
    let completed = sim
        .sent_of_kind(None, TYPE_RESPONSE, Duration::ZERO..end)
        .len();
    let expected = (hour.as_secs() / REKEY_AFTER_TIME.as_secs()) as usize;
    assert!(
        completed >= expected - 2,
        "only {completed} handshakes answered in an hour, expected about {expected}"
    );
    let initiations = sim.initiations(None, Duration::ZERO..end);
    assert!(
        initiations.len() <= 2 * expected,
        "{} initiations for ~{expected} rekeys",
        initiations.len()
    );
    for (at, of) in [(A, B), (B, A)] {
        let last = sim.peer(at, of).last_handshake_at.unwrap();
        assert!(
            end - last <= REJECT_AFTER_TIME,
            "{at}: last handshake at {last:?}"
        );
    }
}
