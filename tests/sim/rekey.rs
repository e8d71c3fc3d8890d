//! Scenarios of rekeying: steady traffic across rekeys, a day of them, rekeys started by both
//! sides at once, and crossed handshakes.

use dhtun::core::limits::{KEEPALIVE_TIMEOUT, REJECT_AFTER_TIME, REKEY_AFTER_TIME};
use dhtun::core::stats::DropReason;
use dhtun::core::wire::{TYPE_RESPONSE, TYPE_TRANSPORT};
use std::time::Duration;

use crate::network::{Impairment, Sim, Stream};
use crate::{ms, secs, A, B};

#[test]
fn rekey_keeps_traffic_flowing() {
    let mut sim = Sim::mesh(2, 9, Impairment::NONE);
    let minutes = 10;
    let count = (minutes * 60 * 10) as usize;
    sim.stream(A, B, Stream::new(Duration::ZERO, ms(100), count));
    sim.stream(B, A, Stream::new(ms(50), ms(100), count));
    sim.run_until(secs(minutes * 60 + 2));

    sim.assert_no_forgeries();
    for (src, dst) in [(A, B), (B, A)] {
        let audit = sim.audit(src, dst);
        assert_eq!(audit.sent, count);
        assert_eq!(
            audit.missing(),
            Vec::<u64>::new(),
            "{src}->{dst} lost packets across rekeys"
        );
        assert_eq!(audit.duplicates, 0);
    }
    // One handshake per REKEY_AFTER_TIME (120 s) over 10 minutes: about five.
    let initiations = sim.initiations(None, Duration::ZERO..secs(minutes * 60 + 2));
    assert!(
        initiations.len() >= 4,
        "sessions were not rekeyed: {initiations:?}"
    );
    // ...and no more often than that: each rekey completed at the first attempt.
    for gap in initiations.windows(2).map(|w| w[1] - w[0]) {
        assert!(gap >= REKEY_AFTER_TIME, "initiations {initiations:?}");
    }
    let last = sim.peer(A, B).last_handshake_at.unwrap();
    assert!(
        last >= secs(minutes * 60) - REKEY_AFTER_TIME - secs(10),
        "last handshake at {last:?}"
    );
    sim.assert_no_drops(A);
    sim.assert_no_drops(B);
}

/// A day of protocol time with steady traffic both ways on a clean network: the initiator
/// replaces the session every REKEY_AFTER_TIME, each rekey completes at its first attempt, and
/// not one packet is lost, duplicated or refused across the ~700 key changes.
#[test]
fn a_day_of_steady_traffic_rekeys_without_loss() {
    let day = secs(24 * 3600);
    let hour = secs(3600);
    // One packet every 2 s each way, B's halfway between A's: both directions are busy at every
    // rekey. The handshakes, not the packets, are what this test spends its time on.
    let every = secs(2);
    let per_hour = (hour.as_secs() / every.as_secs()) as usize;
    let mut sim = Sim::mesh(2, 21, Impairment::NONE);
    // Scheduled an hour at a time, so the event queue holds an hour of packets, not a day.
    for h in 0..24 {
        let start = hour * h;
        sim.stream(A, B, Stream::new(start, every, per_hour));
        sim.stream(B, A, Stream::new(start + every / 2, every, per_hour));
        sim.run_until(start + hour);
    }
    let end = day + secs(2);
    sim.run_until(end);

    sim.assert_no_forgeries();
    for (src, dst) in [(A, B), (B, A)] {
        let audit = sim.audit(src, dst);
        assert_eq!(audit.sent, 24 * per_hour, "{src}->{dst}");
        assert_eq!(
            audit.missing(),
            Vec::<u64>::new(),
            "{src}->{dst} lost packets over the day"
        );
        assert_eq!(audit.duplicates, 0, "{src}->{dst}");
    }
    // A started the first handshake, so A initiates every session: on the first packet it
    // sends once the session is REKEY_AFTER_TIME old, i.e. at most one packet interval later.
    let initiations = sim.initiations(None, Duration::ZERO..end);
    let by_a = sim.initiations(Some(A), Duration::ZERO..end);
    assert_eq!(initiations, by_a, "B should never have needed to initiate");
    let responses = sim.sent_of_kind(Some(B), TYPE_RESPONSE, Duration::ZERO..end);
    assert_eq!(
        responses.len(),
        initiations.len(),
        "every initiation should have been answered once"
    );
    let slowest = REKEY_AFTER_TIME + every + secs(1);
    let fewest = (day.as_secs() / slowest.as_secs()) as usize;
    let most = (day.as_secs() / REKEY_AFTER_TIME.as_secs()) as usize + 1;
    assert!(
        (fewest..=most).contains(&initiations.len()),
        "expected {fewest}..={most} handshakes in a day, got {}",
        initiations.len()
    );
    for gap in initiations.windows(2).map(|w| w[1] - w[0]) {
        assert!(
            (REKEY_AFTER_TIME..=slowest).contains(&gap),
            "rekey gap {gap:?} outside {REKEY_AFTER_TIME:?}..={slowest:?}"
        );
    }
    let last = sim
        .peer(A, B)
        .last_handshake_at
        .expect("no handshake at all");
    assert!(end - last <= slowest, "last handshake at {last:?}");
    for node in [A, B] {
        for reason in [
            DropReason::Expired,
            DropReason::Replay,
            DropReason::Unauthenticated,
        ] {
            assert_eq!(
                sim.device(node).drops().get(reason),
                0,
                "{node}: {reason:?}"
            );
        }
        // Nothing else either: a clean network gives no reason to drop anything.
        sim.assert_no_drops(node);
    }
    sim.assert_settled(A, B);
}

/// Both sides start a rekey at the same virtual instant, and nothing is lost while the two
/// handshakes cross; afterwards the race has settled: no cascade of handshakes, and each side
/// sends on a session the other holds.
///
/// The set-up (`mirrored_pair`) leaves each side holding two sessions of the same age, the one
/// it initiated and the one it answered; from then on traffic both ways at the same instants, over
/// a link with one fixed latency both ways, keeps the two sides mirror images of each other, so
/// whatever timer or packet makes one side rekey makes the other rekey at the same moment.
#[test]
fn simultaneous_rekey_from_both_sides() {
    let (mut sim, setup) = mirrored_pair();
    for node in [A, B] {
        assert_eq!(
            sim.initiations(Some(node), Duration::ZERO..setup),
            vec![Duration::ZERO],
            "{node} should have initiated once, at once"
        );
        assert!(sim.peer(node, 1 - node).last_handshake_at.is_some());
    }

    let minutes = 10;
    let end = secs(minutes * 60);
    let count = ((end - setup - secs(2)).as_millis() / 100) as usize;
    sim.stream(A, B, Stream::new(setup, ms(100), count));
    sim.stream(B, A, Stream::new(setup, ms(100), count));
    sim.run_until(end);

    // The mirror breaks at the first packet: both sides settle on the session initiated by
    // the side with the lower key, so from then on that side alone rekeys, on time.
    let (rekeys_a, rekeys_b) = (
        sim.initiations(Some(A), setup..end),
        sim.initiations(Some(B), setup..end),
    );
    assert!(
        rekeys_a.is_empty() != rekeys_b.is_empty(),
        "exactly one side should rekey: A {rekeys_a:?}, B {rekeys_b:?}"
    );
    let rekey_a = rekeys_a
        .first()
        .or(rekeys_b.first())
        .copied()
        .unwrap_or(end);
    let rekey_b = rekey_a;

    sim.assert_no_forgeries();
    for (src, dst) in [(A, B), (B, A)] {
        let audit = sim.audit(src, dst);
        assert_eq!(audit.duplicates, 0, "{src}->{dst}");
        // Only the set-up packet, lost on purpose, is missing.
        assert_eq!(audit.missing(), vec![0], "{src}->{dst} lost packets");
    }
    for node in [A, B] {
        for reason in [
            DropReason::Expired,
            DropReason::Replay,
            DropReason::Unauthenticated,
            DropReason::RingFull,
            DropReason::HandshakeTimeout,
        ] {
            assert_eq!(
                sim.device(node).drops().get(reason),
                0,
                "{node}: {reason:?}"
            );
        }
    }
    // Settled: the race did not start a cascade. Handshakes come in rounds, at most one
    // initiation from each side per round, rounds at least REKEY_AFTER_TIME apart, and each
    // side sends on a session the other can read.
    let race_start = rekey_a.min(rekey_b);
    let rounds = sim.handshake_rounds(race_start..end);
    for round in &rounds {
        for node in [A, B] {
            let by_node = round.iter().filter(|&&(n, _)| n == node).count();
            assert!(
                by_node <= 1,
                "{node} initiated {by_node} times in one round: {rounds:?}"
            );
        }
    }
    for pair in rounds.windows(2) {
        let gap = pair[1][0].1 - pair[0][0].1;
        assert!(gap >= REKEY_AFTER_TIME, "handshake rounds {rounds:?}");
    }
    sim.assert_each_reads_the_other(A, B);
    for (at, of) in [(A, B), (B, A)] {
        let last = sim.peer(at, of).last_handshake_at.unwrap();
        assert!(
            end - last < REJECT_AFTER_TIME,
            "{at}: last handshake at {last:?}"
        );
    }
}

/// The one latency of both directions of `mirrored_pair`'s link.
const MIRRORED_LATENCY: Duration = ms(2);

/// Two nodes whose first handshakes both complete, neither confirmed: both start a handshake at
/// time zero over a link with one fixed latency both ways, and the first transport message of
/// each side, the one that would confirm the other's session, is lost. Returns the simulation
/// run up to the returned instant, when each side holds the session it initiated and the one
/// it answered, both of the same age, and has lost packet 0 of its stream to the other.
fn mirrored_pair() -> (Sim, Duration) {
    let symmetric = Impairment {
        latency_min: MIRRORED_LATENCY,
        latency_max: MIRRORED_LATENCY,
        ..Impairment::NONE
    };
    let mut sim = Sim::mesh(2, 22, symmetric);
    sim.stream(A, B, Stream::new(Duration::ZERO, ms(1), 1));
    sim.stream(B, A, Stream::new(Duration::ZERO, ms(1), 1));
    sim.lose_next(A, TYPE_TRANSPORT, 1);
    sim.lose_next(B, TYPE_TRANSPORT, 1);
    let setup = secs(1);
    sim.run_until(setup);
    (sim, setup)
}

/// The set-up of `simultaneous_rekey_from_both_sides`, whose handshakes complete crosswise:
/// the sessions must still be replaced every REKEY_AFTER_TIME, as any others are, so a rekey that
/// loses a message has the remaining minute before REJECT_AFTER_TIME to be retried. (Before
/// a80b6ca each side went on to send on the session it had answered, so neither was the
/// initiator of its current session and the rekey came only at 165 s, from both sides.)
#[test]
fn crossed_handshakes_still_rekey_after_120_s() {
    let (mut sim, setup) = mirrored_pair();
    let end = secs(600);
    sim.stream(A, B, Stream::new(setup, ms(100), 5900));
    sim.stream(B, A, Stream::new(setup, ms(100), 5900));
    sim.run_until(end);

    let rounds = sim.handshake_rounds(Duration::ZERO..end);
    let starts: Vec<Duration> = rounds.iter().map(|r| r[0].1).collect();
    let latest = REKEY_AFTER_TIME + secs(2);
    for gap in starts.windows(2).map(|w| w[1] - w[0]) {
        assert!(
            gap <= latest,
            "a session went {gap:?} without a rekey (expected at most {latest:?}); handshake \
             rounds {rounds:?}; {}",
            sim.describe_sessions()
        );
    }
    assert!(
        end - starts[starts.len() - 1] <= latest,
        "rounds {rounds:?}"
    );
}

/// The initiator that only receives (it sent one packet, then answers with keepalives) still
/// rekeys at REKEY_AFTER_TIME, and once per session: not 45 s later through the late rule for
/// received packets, and not again when the peer's packets in flight on the old session arrive.
#[test]
fn an_initiator_that_only_receives_rekeys_on_time_and_once() {
    let mut sim = Sim::mesh(2, 31, Impairment::NONE);
    let end = secs(400);
    sim.stream(A, B, Stream::new(Duration::ZERO, ms(100), 1));
    sim.stream(B, A, Stream::new(ms(50), ms(10), 39_990));
    sim.run_until(end);

    let by_a = sim.initiations(Some(A), Duration::ZERO..end);
    // The first starts the session; then one per session, at the first packet A sends after
    // REKEY_AFTER_TIME (120 s): A answers only with keepalives, at most KEEPALIVE_TIMEOUT
    // (10 s) apart.
    assert_eq!(by_a.len(), 4, "A's initiations {by_a:?}");
    for gap in by_a.windows(2).map(|w| w[1] - w[0]) {
        assert!(
            gap >= REKEY_AFTER_TIME && gap <= REKEY_AFTER_TIME + KEEPALIVE_TIMEOUT,
            "A's initiations {by_a:?}"
        );
    }
    let audit = sim.audit(B, A);
    assert_eq!(audit.missing(), Vec::<u64>::new(), "B->A lost packets");
}
