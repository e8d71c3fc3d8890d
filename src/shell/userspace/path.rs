//! The packet path of userspace mode: the tunnel's UDP socket on one side, the in-daemon stack
//! on the other, the core in between. It is the TUN data path with the device replaced: what
//! the core decrypts goes into a fixed ring the stack reads (`inbound`), and what the stack
//! sends is encrypted straight into the network ring (see `stack`).
//!
//! Both rings are `PacketRing`s sized by `ring_slots` and `ring_bytes`, as in TUN mode; when
//! `inbound` is full the stack is polled before more is taken, and when the network ring is
//! full the stack holds its data in its sockets' fixed buffers.

use super::stack::{Link, Stack};
use crate::core::device::{Device, NetworkAction};
use crate::core::limits::ring_slot_bytes;
use crate::core::reflexive::{self, Reflected, Reflector};
use crate::core::ring::PacketRing;
use crate::core::stats::DropReason;
use crate::shell::datapath::RingSettings;
use crate::shell::status::RingStatus;
use crate::shell::udp::{ReceiveMode, UdpIo};
use ipnetwork::IpNetwork;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// `recvmmsg` calls per readiness wake-up, as in TUN mode.
const UDP_BATCHES_PER_WAKE: usize = 4;

pub(crate) struct UserPath {
    pub device: Device,
    pub reflector: Option<Reflector>,
    pub stack: Stack,
    to_network: PacketRing<Option<SocketAddr>>,
    inbound: PacketRing<()>,
    scratch: Box<[u8]>,
    mtu: usize,
    max_delay: Option<Duration>,
    network_blocked: bool,
    started: Instant,
}

impl UserPath {
    pub fn new(
        mut device: Device,
        mtu: usize,
        rings: RingSettings,
        addresses: &[IpNetwork],
        seed: u64,
    ) -> Self {
        let slot = ring_slot_bytes(mtu);
        let started = Instant::now();
        let mut to_network = PacketRing::new(rings.slots, slot).with_max_bytes(rings.bytes);
        let mut inbound = PacketRing::new(rings.slots, slot).with_max_bytes(rings.bytes);
        let mut scratch = vec![0u8; slot].into_boxed_slice();
        let stack = Stack::new(
            addresses,
            &mut Link {
                device: &mut device,
                to_network: &mut to_network,
                inbound: &mut inbound,
                scratch: &mut scratch,
                now: Duration::ZERO,
                mtu,
            },
            seed,
        );
        Self {
            device,
            reflector: None,
            stack,
            to_network,
            inbound,
            scratch,
            mtu,
            max_delay: rings.max_delay,
            network_blocked: false,
            started,
        }
    }

    /// Time since the daemon started: the core's `now`.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Occupancy of the stack->UDP and UDP->stack rings.
    pub fn ring_occupancy(&self) -> [RingStatus; 2] {
        fn of<M: Copy + Default>(ring: &PacketRing<M>) -> RingStatus {
            RingStatus {
                slots: ring.capacity(),
                queued: ring.len(),
                max_bytes: ring.max_bytes(),
                queued_bytes: ring.queued_bytes(),
            }
        }
        [of(&self.to_network), of(&self.inbound)]
    }

    pub fn has_network_backlog(&self) -> bool {
        !self.to_network.is_empty()
    }

    /// Lets the stack take the packets that arrived and send what its sockets hold, as far as
    /// the network ring has room; true when a socket may have changed.
    pub fn poll_stack(&mut self) -> bool {
        let now = self.now();
        let Self {
            device,
            stack,
            to_network,
            inbound,
            scratch,
            mtu,
            ..
        } = self;
        stack.poll(&mut Link {
            device,
            to_network,
            inbound,
            scratch,
            now,
            mtu: *mtu,
        })
    }

    /// Receives datagrams until the socket runs dry or the batch ends; true when the batch
    /// ended first, so more may be waiting.
    pub fn read_udp(&mut self, udp: &mut UdpIo) -> bool {
        for _ in 0..UDP_BATCHES_PER_WAKE {
            if !self.receive_batch(udp) {
                return false;
            }
        }
        true
    }

    fn receive_batch(&mut self, udp: &mut UdpIo) -> bool {
        let messages = match udp.recv_batch(ReceiveMode::WhenReady) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("receiving from the UDP socket: {e}");
                return false;
            }
        };
        let now = self.now();
        let kernel_drops = u64::from(udp.kernel_drops());
        let counted = self.device.drops().get(DropReason::SocketOverflow);
        self.device.count_drops(
            DropReason::SocketOverflow,
            kernel_drops.saturating_sub(counted),
        );
        for i in 0..messages {
            let Some(message) = udp.received(i) else {
                self.device.count_drop(DropReason::Malformed);
                continue;
            };
            for datagram in message.data.chunks(message.segment_size) {
                if self.inbound.is_full() || self.inbound.free_bytes() < self.mtu {
                    // The stack takes what it can into its sockets' buffers (their windows
                    // bound it), which frees the ring.
                    self.poll_stack();
                }
                self.decapsulate(message.from, datagram, now);
            }
        }
        true
    }

    /// Moves the reflector's due pings into the ring; the timer tick calls this.
    pub fn drain_reflector(&mut self) {
        let now = self.now();
        let Some(reflector) = self.reflector.as_mut() else {
            return;
        };
        while let Some(out) = self.to_network.vacant_slot() {
            let Some((to, len)) = reflector.poll_transmit(now, out) else {
                break;
            };
            let _ = self.to_network.commit(len, Some(to), now);
        }
    }

    /// Moves the core's pending datagrams (handshakes, staged packets, keepalives) into the ring.
    pub fn drain_transmits(&mut self) {
        let now = self.now();
        while let Some(out) = self.to_network.vacant_slot() {
            let Some(transmit) = self.device.poll_transmit(now, out) else {
                break;
            };
            let _ = self.to_network.commit(transmit.len, Some(transmit.to), now);
        }
    }

    /// Sends queued datagrams; true when the socket is full.
    pub fn flush_network(&mut self, udp: &mut UdpIo) -> bool {
        if self.network_blocked {
            if let Some(max_delay) = self.max_delay {
                let now = self.now();
                let stale = self.to_network.drop_stale(now, max_delay);
                self.device.count_drops(DropReason::RingDelay, stale as u64);
            }
        }
        let outcome = udp.send_from(&mut self.to_network);
        self.network_blocked = outcome.would_block;
        self.device
            .count_drops(DropReason::SendFailed, outcome.failed as u64);
        outcome.would_block
    }

    fn decapsulate(&mut self, from: SocketAddr, datagram: &[u8], now: Duration) {
        if reflexive::is_krpc(datagram) {
            let reflected = match self.reflector.as_mut() {
                Some(reflector) => reflector.handle_datagram(from, datagram, now),
                None => Reflected::Drop(reflexive::ReflectDrop::Unsolicited),
            };
            if let Reflected::Drop(_) = reflected {
                self.device.count_drop(DropReason::Malformed);
            }
            return;
        }
        let Some(out) = self.inbound.vacant_slot() else {
            self.device.count_drop(DropReason::RingFull);
            return;
        };
        match self.device.handle_datagram(from, datagram, now, out) {
            NetworkAction::WriteToTun { len } => {
                let _ = self.inbound.commit(len, (), now);
            }
            NetworkAction::WriteToNetwork { to, len } => {
                // A handshake response, written into the inbound ring's free slot: move it.
                let reply = self.inbound.vacant_slot().and_then(|s| s.get(..len));
                if reply.is_none_or(|r| self.to_network.push(r, Some(to), now).is_err()) {
                    self.device.count_drop(DropReason::RingFull);
                }
            }
            NetworkAction::Consumed | NetworkAction::Drop(_) => {}
        }
    }
}
