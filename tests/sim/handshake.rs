//! Scenarios of handshakes: simultaneous initiation, retries and giving up, restarted peers, and
//! lost handshake messages or confirmations.

use dhtun::core::limits::{
    KEEPALIVE_TIMEOUT, PUNCH_INTERVAL, REKEY_ATTEMPT_TIME, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER,
    STAGED_PACKETS_PER_PEER, TIMER_TICK,
};
use dhtun::core::stats::DropReason;
use dhtun::core::wire::{TYPE_INITIATION, TYPE_RESPONSE, TYPE_TRANSPORT};
use std::time::Duration;

use crate::network::{Impairment, Sim, Stream};
use crate::{ms, secs, A, B};

#[test]
fn simultaneous_initiation_settles() {
    let mut sim = Sim::mesh(2, 4, Impairment::NONE);
    // Both first packets at the same instant: both sides start a handshake.
    sim.stream(A, B, Stream::new(Duration::ZERO, ms(100), 150));
    sim.stream(B, A, Stream::new(Duration::ZERO, ms(100), 150));
    sim.run_until(secs(17));

    sim.assert_no_forgeries();
    let initiations = sim.initiations(None, Duration::ZERO..secs(17));
    assert!(
        initiations.len() >= 2,
        "both sides should have initiated: {initiations:?}"
    );
    let settled = sim
        .peer(A, B)
        .last_handshake_at
        .max(sim.peer(B, A).last_handshake_at)
        .expect("no handshake completed");
    assert!(
        settled < secs(1),
        "handshakes completed only at {settled:?}"
    );
    for (src, dst) in [(A, B), (B, A)] {
        let audit = sim.audit(src, dst);
        assert_eq!(audit.duplicates, 0, "{src}->{dst}");
        assert_eq!(
            audit.missing_sent_after(settled),
            Vec::<u64>::new(),
            "{src}->{dst} lost packets sent after the handshakes completed"
        );
    }
    // Converged: the race left sessions both sides keep using, not a handshake loop.
    let late = sim.initiations(None, secs(10)..secs(17));
    assert_eq!(late, Vec::<Duration>::new(), "still initiating after 10 s");
    assert!(
        initiations.len() <= 4,
        "too many handshakes: {initiations:?}"
    );
}

#[test]
fn handshake_retries_then_gives_up() {
    let mut sim = Sim::mesh(2, 5, Impairment::NONE);
    // B never hears anything, so it never answers.
    sim.set_link(A, B, Impairment::BLACKHOLE);
    let offered = STAGED_PACKETS_PER_PEER + 4;
    sim.stream(A, B, Stream::new(Duration::ZERO, ms(1), offered));

    sim.run_until(REKEY_ATTEMPT_TIME - ms(100));
    // Still retrying: nothing given up yet, the overflow was refused at once.
    let dropped = |sim: &Sim, reason| sim.device(A).drops().get(reason);
    assert_eq!(dropped(&sim, DropReason::HandshakeTimeout), 0);
    assert_eq!(dropped(&sim, DropReason::RingFull), 4);

    sim.run_until(secs(150));
    let sent = sim.initiations(Some(A), Duration::ZERO..secs(150));
    assert!(
        (17..=19).contains(&sent.len()),
        "expected 18 ± 1 initiations, got {}: {sent:?}",
        sent.len()
    );
    assert_eq!(
        sent[0],
        Duration::ZERO,
        "first initiation goes out with the first packet"
    );
    // A retry fires on the first timer tick after REKEY_TIMEOUT + jitter.
    let longest = REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER + TIMER_TICK;
    for gap in sent.windows(2).map(|w| w[1] - w[0]) {
        assert!(
            (REKEY_TIMEOUT..=longest).contains(&gap),
            "retry gap {gap:?} outside {REKEY_TIMEOUT:?}..={longest:?}: {sent:?}"
        );
    }
    assert!(*sent.last().unwrap() < REKEY_ATTEMPT_TIME, "{sent:?}");
    // Given up: every staged packet is accounted for, and the overflow stayed counted apart.
    assert_eq!(
        dropped(&sim, DropReason::HandshakeTimeout),
        STAGED_PACKETS_PER_PEER as u64
    );
    assert_eq!(dropped(&sim, DropReason::RingFull), 4);
    let peer = sim.peer(A, B);
    assert_eq!(
        peer.drops.get(DropReason::HandshakeTimeout),
        STAGED_PACKETS_PER_PEER as u64
    );
    assert!(peer.handshake.is_none());
    assert!(peer.staged.is_empty());
    assert!(peer.last_handshake_at.is_none());
    assert_eq!(sim.sent_by(B), 0, "B must not have sent anything");
}

#[test]
fn restart_of_a_peer_recovers() {
    let mut sim = Sim::mesh(2, 6, Impairment::NONE);
    sim.stream(A, B, Stream::new(Duration::ZERO, ms(100), 300));
    sim.stream(B, A, Stream::new(ms(50), ms(100), 300));
    let restart = secs(10);
    sim.run_until(restart);
    assert!(sim.audit(A, B).delivered > 90, "traffic never flowed");

    // Same identity, fresh state: a daemon restart. Its wall clock, hence its handshake
    // timestamps, moved on; A keeps the sessions of the old incarnation.
    sim.restart(B, 106);
    sim.run_until(secs(33));

    sim.assert_no_forgeries();
    for (src, dst) in [(A, B), (B, A)] {
        let audit = sim.audit(src, dst);
        assert_eq!(audit.duplicates, 0, "{src}->{dst}");
        let recovered = audit
            .recovered_at(restart)
            .unwrap_or_else(|| panic!("{src}->{dst} never recovered"));
        assert!(
            recovered - restart <= secs(2),
            "{src}->{dst} recovered only {:?} after the restart",
            recovered - restart
        );
    }
    assert!(sim.peer(A, B).last_handshake_at.unwrap() >= restart);
}

/// A peer that restarts and has nothing to say must still get the traffic sent to it: WireGuard
/// starts a new handshake when data sent gets no reply within KEEPALIVE_TIMEOUT + REKEY_TIMEOUT
/// (whitepaper 6.4), so the sender notices the dead session without waiting for a rekey.
#[test]
fn restart_of_a_silent_peer_recovers() {
    let mut sim = Sim::mesh(2, 7, Impairment::NONE);
    sim.stream(A, B, Stream::new(Duration::ZERO, ms(100), 600));
    // B speaks only at first, then only listens (its passive keepalives answer A's data).
    sim.stream(B, A, Stream::new(ms(50), ms(100), 20));
    let restart = secs(10);
    sim.run_until(restart);
    assert!(sim.audit(A, B).delivered > 90, "traffic never flowed");

    sim.restart(B, 107);
    sim.run_until(secs(62));

    sim.assert_no_forgeries();
    let audit = sim.audit(A, B);
    assert_eq!(audit.duplicates, 0);
    let deadline = KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER + secs(1);
    let recovered = audit.recovered_at(restart);
    assert!(
        recovered.is_some_and(|t| t - restart <= deadline),
        "A->B recovered at {recovered:?}, restart at {restart:?}; {} of {} delivered",
        audit.delivered,
        audit.sent
    );
}

#[test]
fn lost_handshake_messages_are_retried() {
    for (loser, kind) in [(A, TYPE_INITIATION), (B, TYPE_RESPONSE)] {
        let mut sim = Sim::mesh(2, 10, Impairment::NONE);
        // Only A talks, so only A's retry timer can repair the handshake.
        sim.stream(A, B, Stream::new(Duration::ZERO, ms(100), 100));
        sim.lose_next(loser, kind, 1);
        sim.run_until(secs(12));

        sim.assert_no_forgeries();
        let sent = sim.initiations(Some(A), Duration::ZERO..secs(12));
        // A lost initiation is repaired by its own copy a punch interval later; a lost
        // response needs a new initiation (the responder ignores a copy of one it answered).
        let retry = if kind == TYPE_INITIATION {
            assert_eq!(sent.len(), 1, "the copy repairs it: {sent:?}");
            let copies = sim.sent_of_kind(Some(A), TYPE_INITIATION, Duration::ZERO..secs(12));
            assert_eq!(copies.len(), 2, "one lost, one copy: {copies:?}");
            assert!(
                copies[1] - copies[0] <= PUNCH_INTERVAL + TIMER_TICK,
                "{copies:?}"
            );
            copies[1]
        } else {
            assert_eq!(sent.len(), 2, "kind {kind}: one lost, one retry: {sent:?}");
            let latest = REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER + TIMER_TICK;
            assert!(
                (REKEY_TIMEOUT..=latest).contains(&sent[1]),
                "retry at {sent:?}"
            );
            sent[1]
        };
        let audit = sim.audit(A, B);
        assert_eq!(audit.duplicates, 0);
        // The first packets waited in the staging ring and went out after the retry; the ones
        // that did not fit were refused at once, and counted; everything after flowed.
        let missing = audit.missing();
        let staged = STAGED_PACKETS_PER_PEER as u64;
        let overflow: Vec<u64> = (staged..staged + missing.len() as u64).collect();
        assert_eq!(missing, overflow, "kind {kind}");
        let ring_full = sim.device(A).drops().get(DropReason::RingFull);
        assert_eq!(ring_full, missing.len() as u64, "kind {kind}");
        let completed = sim
            .peer(A, B)
            .last_handshake_at
            .expect("the retry completed");
        assert!(
            completed - retry < ms(20),
            "kind {kind}: completed at {completed:?}"
        );
        let after = audit.missing_sent_after(completed);
        assert_eq!(after, Vec::<u64>::new(), "kind {kind}");
        assert_eq!(sim.device(A).drops().get(DropReason::HandshakeTimeout), 0);
    }
}

/// The responder may not send on a session until the initiator's first packet confirms it. When
/// that packet is lost and the initiator has nothing more to say, the responder's own packets
/// must still go out (WireGuard's responder initiates a handshake of its own), not wait forever.
#[test]
fn lost_confirmation_does_not_strand_responder_packets() {
    let mut sim = Sim::mesh(2, 12, Impairment::NONE);
    // A's single packet completes the handshake and is itself the confirmation: lose it.
    sim.stream(A, B, Stream::new(Duration::ZERO, ms(1), 1));
    sim.lose_next(A, TYPE_TRANSPORT, 1);
    // B answers a little later, on the session it cannot use yet.
    sim.stream(B, A, Stream::new(secs(1), ms(1), 1));
    sim.run_until(secs(30));

    sim.assert_no_forgeries();
    let audit = sim.audit(B, A);
    let staged = sim.peer(B, A).staged.len();
    assert_eq!(
        audit.delivered,
        1,
        "B's packet never arrived; {staged} packet(s) still staged at B, B sent {} \
         initiation(s)",
        sim.initiations(Some(B), Duration::ZERO..secs(30)).len()
    );
}
