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
//! packets, or traffic whose answers come from across a WAN, stops paying for them. Each poll calls `sched_yield`, so another thread that is ready on
//! the same CPU (the application, the other end's daemon) runs first. Our own runtime's tasks
//! (control socket, metrics, netlink) cannot: the runtime has one thread and this holds it, for
//! `BUSY_POLL_ROUND` at most.

use super::{DataPath, TunRead};
use crate::core::limits::{BUSY_POLL_MAX_SKIP_SHIFT, BUSY_POLL_ROUND};
use crate::shell::tun::TunDevice;
use crate::shell::udp::{ReceiveMode, UdpIo};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// What busy polling did since the daemon started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusyPollStats {
    /// Rounds run: one after each wake-up that brought packets.
    pub rounds: u64,
    /// Rounds not worth their window: no answer came back from the other side than the one
    /// that woke us, and most polls found nothing.
    pub empty_rounds: u64,
    /// Packets read from the TUN device and datagrams accepted while polling.
    pub packets: u64,
    /// Wake-ups that brought packets but ran no round, because the rounds before them (after
    /// wake-ups from the same side) were empty.
    pub skipped: u64,
}

/// Which wake-ups from one side get a polling round: all of them while rounds are worth it
/// (they bring answers, or most of their polls find packets); after `n` empty rounds in a
/// row, only one in `2^n` (up to `2^BUSY_POLL_MAX_SKIP_SHIFT`).
#[derive(Debug, Default)]
pub struct RoundGate {
    empty_in_row: u32,
    skip_left: u32,
}

impl RoundGate {
    /// Whether this wake-up runs a round; when not, it counts as one skipped.
    pub fn take_turn(&mut self) -> bool {
        if self.skip_left == 0 {
            return true;
        }
        self.skip_left -= 1;
        false
    }

    /// Whether the round just run was worth it.
    pub fn record(&mut self, worth_it: bool) {
        if worth_it {
            *self = Self::default();
        } else {
            self.empty_in_row = (self.empty_in_row + 1).min(BUSY_POLL_MAX_SKIP_SHIFT);
            self.skip_left = (1 << self.empty_in_row) - 1;
        }
    }
}

/// Packets read from the TUN device and datagrams the core accepted, since the start. Junk
/// and DHT datagrams do not count, so they cannot buy polling rounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Accepted {
    pub from_tun: u64,
    pub from_network: u64,
}

/// The side whose packets woke the event loop. The answer a round waits for (an echo reply,
/// a TCP ACK) comes from the other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Tun,
    Network,
}

impl Accepted {
    /// Which side brought packets since `before`; None when neither did.
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

impl DataPath {
    /// Polls until `window` passes with nothing new, or for `BUSY_POLL_ROUND` at most, so
    /// that under steady traffic the event loop still serves timers, signals and the control
    /// socket. Only packets the core accepted extend the window: junk sent at the port cannot
    /// keep a CPU busy. The caller runs it only after a wake-up that brought such packets
    /// from `woken_by`. A round that brings no answer from the other side makes later wake-ups
    /// from that side skip their rounds (`RoundGate`): a one-way stream does not pay for them.
    pub fn busy_poll(
        &mut self,
        tun: &TunDevice,
        udp: &mut UdpIo,
        window: Duration,
        woken_by: Side,
    ) {
        if !self.busy_poll_gate(woken_by).take_turn() {
            self.busy_poll_stats.skipped += 1;
            return;
        }
        let start = Instant::now();
        let at_start = self.accepted;
        let mut last_found = start;
        let (mut polls, mut polls_that_found) = (0u32, 0u32);
        loop {
            std::thread::yield_now();
            polls += 1;
            let before = self.accepted;
            if self.read_tun(tun, udp) == TunRead::Failed {
                // Logged once; epoll will say when the device is readable again.
                break;
            }
            self.read_udp(udp, tun, ReceiveMode::BusyPoll);
            self.drain_transmits();
            self.flush_network(udp);
            if self.has_tun_backlog() {
                self.flush_tun(tun);
            }
            let now = Instant::now();
            if self.accepted != before {
                last_found = now;
                polls_that_found += 1;
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
        // Under a dense stream most polls find packets: the round then does work the loop would
        // do anyway, and keeps it from sleeping in epoll while its socket fills.
        let worth_it = answers > 0 || polls_that_found * 2 >= polls;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_rounds_skip_twice_as_many_wake_ups_each_time_up_to_the_cap() {
        let mut gate = RoundGate::default();
        let mut skipped_before_each_round = Vec::new();
        let mut skipped = 0;
        while skipped_before_each_round.len() < 9 {
            if gate.take_turn() {
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
    fn a_round_that_finds_packets_ends_the_skipping() {
        let mut gate = RoundGate::default();
        for _ in 0..4 {
            gate.record(false);
            while !gate.take_turn() {}
        }
        gate.record(true);
        assert!(
            (0..100).all(|_| gate.take_turn()),
            "rounds that find packets never skip"
        );
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

    /// Against a naive model (a list of decisions) on random outcomes: the gate runs a round
    /// exactly when the model says, and never skips more than 63 wake-ups in a row.
    #[test]
    fn matches_a_naive_model_on_random_outcomes() {
        let mut gate = RoundGate::default();
        let (mut empty_in_row, mut wait) = (0u32, 0u64);
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut skipped_in_row = 0;
        for _ in 0..100_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let model_runs = wait == 0;
            assert_eq!(gate.take_turn(), model_runs);
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
