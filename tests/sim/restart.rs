//! A peer that restarts (same key, fresh state) is reached again within a second, whichever
//! side restarts and whenever (issue 26, item 4): the side that lost the session hears the
//! other's packets on it and starts a handshake at once; the other takes the new session on
//! its first packet, also right after a handshake of its own.

use std::time::Duration;

use crate::network::{Impairment, NodeId, Sim, Stream};
use crate::{ms, secs, A, B};

/// Each side in turn restarts in the middle of a stream from the other and has nothing to
/// say itself: traffic to it flows again within a second. Before, the sender noticed only
/// when its unanswered-data timer fired, 15 s later.
#[test]
fn a_restarted_peer_that_only_listens_is_reached_within_a_second() {
    for restarted in [A, B] {
        let survivor = 1 - restarted;
        let mut sim = Sim::mesh(2, 8, Impairment::NONE);
        sim.stream(
            survivor,
            restarted,
            Stream::new(Duration::ZERO, ms(100), 300),
        );
        // The restarted side spoke once, long before: the session is not a fresh one.
        sim.stream(restarted, survivor, Stream::new(ms(50), ms(100), 5));
        let restart = secs(10);
        sim.run_until(restart);
        assert!(
            sim.audit(survivor, restarted).delivered > 90,
            "traffic never flowed"
        );
        sim.restart(restarted, 108);
        sim.run_until(secs(30));
        sim.assert_no_forgeries();
        assert_recovered(&sim, survivor, restarted, restart, secs(1));
    }
}

/// The side whose key wins crossings starts a handshake, and the other restarts 1.5 s later,
/// inside the 5 s crossing window: the restarted side's new session is taken at once, so
/// traffic flows both ways within a second, whether the restarted side sends data or not.
/// Before, the winner kept its old session for the whole window: 5.1 s of silence.
#[test]
fn a_restart_soon_after_the_winners_handshake_is_reached_within_a_second() {
    for loser_sends_data in [false, true] {
        let mut sim = Sim::mesh(2, 9, Impairment::NONE);
        let (winner, loser) = winner_and_loser(&sim);
        sim.stream(winner, loser, Stream::new(Duration::ZERO, ms(100), 300));
        let restart = ms(1500);
        sim.run_until(restart);
        sim.restart(loser, 109);
        if loser_sends_data {
            sim.stream(loser, winner, Stream::new(restart + ms(50), ms(100), 100));
        }
        sim.run_until(secs(30));
        sim.assert_no_forgeries();
        assert_recovered(&sim, winner, loser, restart, secs(1));
        if loser_sends_data {
            assert_recovered(&sim, loser, winner, restart, secs(1));
        }
    }
}

#[track_caller]
fn assert_recovered(sim: &Sim, src: NodeId, dst: NodeId, restart: Duration, limit: Duration) {
    let audit = sim.audit(src, dst);
    assert_eq!(audit.duplicates, 0, "{src}->{dst}");
    let recovered = audit.recovered_at(restart);
    assert!(
        recovered.is_some_and(|t| t - restart <= limit),
        "{src}->{dst} recovered at {recovered:?} after a restart at {restart:?}; {} of {} \
         delivered; {}",
        audit.delivered,
        audit.sent,
        sim.describe_sessions()
    );
}

/// The side whose key is lower, whose session wins a crossing, and the other.
fn winner_and_loser(sim: &Sim) -> (NodeId, NodeId) {
    let key = |n: NodeId| *sim.nodes[n].public_key.x25519_bytes();
    if key(A) < key(B) {
        (A, B)
    } else {
        (B, A)
    }
}
