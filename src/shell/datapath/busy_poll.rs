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
//! sleep, which costs power. Each poll calls `sched_yield`, so another thread that is ready on
//! the same CPU (the application, the other end's daemon) runs first. Our own runtime's tasks
//! (control socket, metrics, netlink) cannot: the runtime has one thread and this holds it, for
//! `BUSY_POLL_ROUND` at most.

use super::{DataPath, TunRead};
use crate::core::limits::BUSY_POLL_ROUND;
use crate::shell::tun::TunDevice;
use crate::shell::udp::{ReceiveMode, UdpIo};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// What busy polling did since the daemon started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusyPollStats {
    /// Rounds run: one after each wake-up that brought packets.
    pub rounds: u64,
    /// Rounds that found nothing, and so spent their whole window for nothing.
    pub empty_rounds: u64,
    /// Packets read from the TUN device and datagrams accepted while polling.
    pub packets: u64,
}

impl DataPath {
    /// Polls until `window` passes with nothing new, or for `BUSY_POLL_ROUND` at most, so
    /// that under steady traffic the event loop still serves timers, signals and the control
    /// socket. Only packets the core accepted extend the window: junk sent at the port cannot
    /// keep a CPU busy. The caller runs it only after a wake-up that brought such packets.
    pub fn busy_poll(&mut self, tun: &TunDevice, udp: &mut UdpIo, window: Duration) {
        let start = Instant::now();
        let accepted_at_start = self.packets_accepted;
        let mut last_found = start;
        loop {
            std::thread::yield_now();
            let before = self.packets_accepted;
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
            if self.packets_accepted != before {
                last_found = now;
            } else if now.duration_since(last_found) >= window {
                break;
            }
            if now.duration_since(start) >= BUSY_POLL_ROUND {
                break;
            }
        }
        let found = self.packets_accepted.saturating_sub(accepted_at_start);
        let stats = &mut self.busy_poll_stats;
        stats.rounds += 1;
        stats.empty_rounds += u64::from(found == 0);
        stats.packets += found;
    }
}
