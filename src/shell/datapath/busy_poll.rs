//! Busy polling (`[interface] busy_poll_us`): after a wake-up that brought packets, keep
//! reading the TUN device and the socket for a short window before sleeping in epoll again.
//!
//! Why: waking a thread whose CPU has halted costs 30-40 µs of CPU on a virtual machine (the
//! hypervisor's halt and interrupt), more than dhtun's own work on a packet. A ping through the
//! tunnel needs several such wake-ups that a ping over the bare link does not. An answer that
//! comes back within the window (the echo reply, a TCP ACK) is read without one, and a CPU that
//! polls never halts, so a task woken on it (the application reading the reply) starts at once.
//!
//! What it costs: the window's CPU time after each burst that brought packets, so at most one
//! wake-up's worth per packet when the window is about a wake-up long. Each poll yields the
//! CPU (`sched_yield`), so any runnable task runs first: the window spends CPU that nobody else
//! wants, but the CPU does not sleep, which costs power.

use super::DataPath;
use crate::core::limits::BUSY_POLL_ROUND;
use crate::shell::tun::TunDevice;
use crate::shell::udp::{ReceiveMode, UdpIo};
use std::time::{Duration, Instant};

/// What busy polling did since the daemon started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusyPollStats {
    /// Rounds run: one after each wake-up that brought packets.
    pub rounds: u64,
    /// Rounds that found nothing, and so cost their whole window for nothing.
    pub empty_rounds: u64,
    /// Packets and datagrams read while polling, each one a wake-up saved.
    pub packets: u64,
}

impl DataPath {
    /// Polls until `window` passes with nothing to read, or for `BUSY_POLL_ROUND` at most so
    /// that timers, signals and the control socket are served under steady traffic. The caller
    /// runs it only after a wake-up that read packets.
    pub fn busy_poll(&mut self, tun: &TunDevice, udp: &mut UdpIo, window: Duration) {
        let start = Instant::now();
        let first_read = self.packets_read;
        let mut last_found = start;
        loop {
            std::thread::yield_now();
            let before = self.packets_read;
            self.read_tun(tun, udp);
            self.read_udp(udp, tun, ReceiveMode::BusyPoll);
            self.drain_transmits();
            self.flush_network(udp);
            if self.has_tun_backlog() {
                self.flush_tun(tun);
            }
            let now = Instant::now();
            if self.packets_read != before {
                last_found = now;
            } else if now.duration_since(last_found) >= window {
                break;
            }
            if now.duration_since(start) >= BUSY_POLL_ROUND {
                break;
            }
        }
        let found = self.packets_read.saturating_sub(first_read);
        self.busy_poll.rounds += 1;
        self.busy_poll.empty_rounds += u64::from(found == 0);
        self.busy_poll.packets += found;
    }
}
