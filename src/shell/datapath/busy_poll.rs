//! Busy polling (`[interface] busy_poll_us`): after a wake-up that brought packets, keep
//! reading the TUN device and the socket for a short window before sleeping in epoll again.
//!
//! Why: waking a thread whose CPU has halted costs 30-40 µs of CPU on a virtual machine (the
//! hypervisor's halt and interrupt), more than dhtun's own work on a packet. A ping through the
//! tunnel needs several such wake-ups that a ping over the bare link does not. An answer that
//! comes back within the window (the echo reply, a TCP ACK) is read without one, and a CPU that
//! polls never halts, so a task woken on it (the application reading the reply) starts at once.
//!
//! What it costs: the window's CPU time after each burst of traffic, and a CPU that does not
//! sleep, which costs power. A round is worth it when the answer to what woke us (the echo
//! reply to the echo read from the TUN device, the ACK to the data) comes back within the
//! window, or when a stream is so dense that most polls find packets. Other rounds make later
//! wake-ups from the same side skip theirs (`RoundGate`), so a one-way stream of spaced
//! packets, or traffic whose answers come from across a WAN, stops paying for them.
//!
//! Each poll calls `sched_yield`, so another thread that is ready on the same CPU (the
//! application, the other end's daemon) runs first. Our own runtime's tasks (control socket,
//! metrics, netlink) cannot: the runtime has one thread and this holds it, for
//! `BUSY_POLL_ROUND` at most.

use super::{DataPath, TunRead};
use crate::core::limits::{
    BUSY_POLL_DENSE_MIN_POLLS, BUSY_POLL_GATE_MEMORY, BUSY_POLL_MAX_SKIP_SHIFT, BUSY_POLL_ROUND,
};
use crate::shell::tun::TunDevice;
use crate::shell::udp::{ReceiveMode, UdpIo};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// What busy polling did since the daemon started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusyPollStats {
    /// Rounds run, after wake-ups that brought packets and were not skipped.
    pub rounds: u64,
    /// Rounds not worth their window: no answer came back from the side opposite the one that
    /// woke us, and the polls did not find a dense stream.
    pub empty_rounds: u64,
    /// Packets read from the TUN device and datagrams accepted while polling.
    pub packets: u64,
    /// Wake-ups that brought packets but ran no round, because the rounds after earlier
    /// wake-ups from the same side were not worth it.
    pub skipped: u64,
}

/// The side whose packets woke the event loop. The answer a round waits for (an echo reply,
/// a TCP ACK) comes from the other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Tun,
    Network,
}

/// Packets read from the TUN device, and datagrams that authenticated as a peer's (packets
/// for the TUN device, keepalives, handshake answers), since the start. Junk, DHT datagrams,
/// cookie replies and relayed datagrams do not count, so a sender who is not a peer cannot buy
/// polling rounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Accepted {
    pub from_tun: u64,
    pub from_network: u64,
}

impl Accepted {
    /// Which side brought packets since `before`; None when neither did. One event reads one
    /// side only, so both never move at once; were they to, the TUN side would be named.
    pub fn woken_by(self, before: Accepted) -> Option<Side> {
        if self.from_tun != before.from_tun {
            Some(Side::Tun)
        } else if self.from_network != before.from_network {
            Some(Side::Network)
        } else {
            None
        }
    }

    fn total(self) -> u64 {
        self.from_tun.wrapping_add(self.from_network)
    }

    /// Packets from the side that answers one woken by `side`.
    fn answers_to(self, side: Side) -> u64 {
        match side {
            Side::Tun => self.from_network,
            Side::Network => self.from_tun,
        }
    }
}

/// Which wake-ups from one side get a polling round: all of them while rounds are worth it;
/// after `n` rounds in a row that were not, only one in `2^n` (up to
/// `2^BUSY_POLL_MAX_SKIP_SHIFT`). A pause of `BUSY_POLL_GATE_MEMORY` forgets the skipping.
#[derive(Debug, Default)]
pub(super) struct RoundGate {
    empty_in_row: u32,
    skip_left: u32,
    last_wake: Option<Instant>,
}

impl RoundGate {
    /// Whether the wake-up at `now` runs a round; when not, it counts as one skipped.
    pub fn take_turn(&mut self, now: Instant) -> bool {
        let paused = self
            .last_wake
            .is_none_or(|last| now.saturating_duration_since(last) >= BUSY_POLL_GATE_MEMORY);
        self.last_wake = Some(now);
        if paused {
            self.forget_skipping();
        }
        if self.skip_left == 0 {
            return true;
        }
        self.skip_left -= 1;
        false
    }

    /// Whether the round just run was worth it.
    pub fn record(&mut self, worth_it: bool) {
        if worth_it {
            self.forget_skipping();
        } else {
            self.empty_in_row = (self.empty_in_row + 1).min(BUSY_POLL_MAX_SKIP_SHIFT);
            self.skip_left = (1 << self.empty_in_row) - 1;
        }
    }

    fn forget_skipping(&mut self) {
        self.empty_in_row = 0;
        self.skip_left = 0;
    }
}

impl DataPath {
    /// Polls until `window` passes with nothing new, or for `BUSY_POLL_ROUND` at most, so
    /// that under steady traffic the event loop still serves timers, signals and the control
    /// socket. Only accepted packets (see `Accepted`) extend the window. The caller runs it
    /// only after a wake-up that brought such packets from `woken_by`, and this may skip the
    /// round (see `RoundGate`).
    pub fn busy_poll(
        &mut self,
        tun: &TunDevice,
        udp: &mut UdpIo,
        window: Duration,
        woken_by: Side,
    ) {
        let start = Instant::now();
        if window != self.busy_poll_window {
            // Skips judged by another window (or before polling was off) say nothing now.
            self.busy_poll_window = window;
            self.busy_poll_gates = Default::default();
        }
        if !self.busy_poll_gate(woken_by).take_turn(start) {
            self.busy_poll_stats.skipped += 1;
            return;
        }
        let at_start = self.accepted;
        let mut last_found = start;
        let mut polls = Polls::default();
        loop {
            std::thread::yield_now();
            let before = self.accepted;
            if self.read_tun(tun, udp) == TunRead::Failed {
                // Logged once; epoll will say when the device is readable again.
                break;
            }
            let _ = self.read_udp(udp, tun, ReceiveMode::BusyPoll);
            self.drain_transmits();
            self.flush_network(udp);
            if self.has_tun_backlog() {
                self.flush_tun(tun);
            }
            let now = Instant::now();
            let found = self.accepted != before;
            polls.count(found);
            if found {
                last_found = now;
            } else if now.duration_since(last_found) >= window {
                break;
            }
            if now.duration_since(start) >= BUSY_POLL_ROUND {
                break;
            }
        }
        let answers = self
            .accepted
            .answers_to(woken_by)
            .wrapping_sub(at_start.answers_to(woken_by));
        let worth_it = worth_it(answers, polls);
        self.busy_poll_gate(woken_by).record(worth_it);
        let stats = &mut self.busy_poll_stats;
        stats.rounds += 1;
        stats.empty_rounds += u64::from(!worth_it);
        stats.packets += self.accepted.total().wrapping_sub(at_start.total());
    }

    fn busy_poll_gate(&mut self, woken_by: Side) -> &mut RoundGate {
        match woken_by {
            Side::Tun => &mut self.busy_poll_gates[0],
            Side::Network => &mut self.busy_poll_gates[1],
        }
    }
}

/// How many polls a round made, and how many of them found packets.
#[derive(Debug, Clone, Copy, Default)]
struct Polls {
    made: u32,
    found: u32,
}

impl Polls {
    fn count(&mut self, found: bool) {
        self.made = self.made.saturating_add(1);
        self.found = self.found.saturating_add(u32::from(found));
    }
}

/// A round was worth it when `answers` came back from the other side, or when its polls found
/// a dense stream: most of them found packets, so the round did work the loop would do anyway
/// and kept it from sleeping in epoll while its socket filled.
fn worth_it(answers: u64, polls: Polls) -> bool {
    let dense = polls.found >= BUSY_POLL_DENSE_MIN_POLLS
        && u64::from(polls.found) * 2 >= u64::from(polls.made);
    answers > 0 || dense
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wake-ups 1 µs apart, far within `BUSY_POLL_GATE_MEMORY`.
    struct Clock(Instant);

    impl Clock {
        fn tick(&mut self) -> Instant {
            self.0 += Duration::from_micros(1);
            self.0
        }
    }

    fn clock() -> Clock {
        Clock(Instant::now())
    }

    #[test]
    fn empty_rounds_skip_twice_as_many_wake_ups_each_time_up_to_the_cap() {
        let (mut gate, mut clock) = (RoundGate::default(), clock());
        let mut skipped_before_each_round = Vec::new();
        let mut skipped = 0;
        while skipped_before_each_round.len() < 9 {
            if gate.take_turn(clock.tick()) {
                skipped_before_each_round.push(skipped);
                skipped = 0;
                gate.record(false);
            } else {
                skipped += 1;
            }
        }
        assert_eq!(skipped_before_each_round, [0, 1, 3, 7, 15, 31, 63, 63, 63]);
    }

    #[test]
    fn a_round_worth_it_ends_the_skipping() {
        let (mut gate, mut clock) = (RoundGate::default(), clock());
        assert!(
            gate.take_turn(clock.tick()),
            "the first wake-up runs a round"
        );
        for _ in 0..4 {
            gate.record(false);
        }
        assert!(
            !gate.take_turn(clock.tick()),
            "after four empty rounds, wake-ups skip"
        );
        gate.record(true);
        assert!(
            (0..100).all(|_| gate.take_turn(clock.tick())),
            "no skipping after it"
        );
        // The run of empty rounds starts again from one.
        gate.record(false);
        assert!(!gate.take_turn(clock.tick()));
        assert!(
            gate.take_turn(clock.tick()),
            "one empty round skips one wake-up only"
        );
    }

    #[test]
    fn a_pause_forgets_the_skipping() {
        let (mut gate, mut clock) = (RoundGate::default(), clock());
        assert!(
            gate.take_turn(clock.tick()),
            "the first wake-up runs a round"
        );
        for _ in 0..6 {
            gate.record(false);
        }
        assert!(!gate.take_turn(clock.tick()));
        let after_pause = clock.tick() + BUSY_POLL_GATE_MEMORY;
        assert!(
            gate.take_turn(after_pause),
            "the first wake-up after a pause runs"
        );
        gate.record(false);
        let next = after_pause + Duration::from_micros(1);
        assert!(
            !gate.take_turn(next),
            "one empty round after the pause skips one wake-up"
        );
        assert!(gate.take_turn(next + Duration::from_micros(1)));
    }

    #[test]
    fn the_side_that_brought_packets_woke_us_and_answers_come_from_the_other() {
        let before = Accepted {
            from_tun: 5,
            from_network: 9,
        };
        let tun = Accepted {
            from_tun: 6,
            ..before
        };
        let network = Accepted {
            from_network: 10,
            ..before
        };
        assert_eq!(tun.woken_by(before), Some(Side::Tun));
        assert_eq!(network.woken_by(before), Some(Side::Network));
        assert_eq!(before.woken_by(before), None);
        assert_eq!(tun.answers_to(Side::Tun), 9);
        assert_eq!(tun.answers_to(Side::Network), 6);
    }

    #[test]
    fn a_round_is_worth_it_for_an_answer_or_a_dense_stream_only() {
        let polls = |made, found| Polls { made, found };
        assert!(worth_it(1, polls(200, 1)), "one answer is enough");
        assert!(
            !worth_it(0, polls(200, 3)),
            "a sparse one-way stream is not"
        );
        assert!(!worth_it(0, polls(0, 0)));
        assert!(worth_it(0, polls(300, 150)), "a dense stream is");
        assert!(!worth_it(0, polls(300, 149)));
        assert!(
            !worth_it(0, polls(3, 2)),
            "a few slow polls on a busy CPU say nothing about density"
        );
        assert!(worth_it(0, polls(u32::MAX, u32::MAX)), "no overflow");
        let mut counted = Polls::default();
        for found in [true, false, false, true] {
            counted.count(found);
        }
        assert_eq!((counted.made, counted.found), (4, 2));
    }

    /// Against a naive model (a countdown of wake-ups to skip) on random outcomes: the gate
    /// runs a round exactly when the model says, and never skips more than 63 in a row.
    #[test]
    fn matches_a_naive_model_on_random_outcomes() {
        let (mut gate, mut clock) = (RoundGate::default(), clock());
        let (mut empty_in_row, mut wait) = (0u32, 0u64);
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut skipped_in_row = 0;
        for _ in 0..100_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let model_runs = wait == 0;
            assert_eq!(gate.take_turn(clock.tick()), model_runs);
            if model_runs {
                skipped_in_row = 0;
                // Mostly empty rounds, so the cap is reached often.
                let worth_it = rng % 8 == 0;
                gate.record(worth_it);
                if worth_it {
                    empty_in_row = 0;
                    wait = 0;
                } else {
                    empty_in_row = (empty_in_row + 1).min(6);
                    wait = 2u64.pow(empty_in_row) - 1;
                }
            } else {
                wait -= 1;
                skipped_in_row += 1;
                assert!(skipped_in_row <= 63);
            }
        }
    }
}
