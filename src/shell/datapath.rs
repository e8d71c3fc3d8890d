//! The packet path between the TUN device and the UDP socket: read a batch, let the core decide
//! per packet, queue what it answers in a ring, write the ring out in batches.
//!
//! Two rings sit in front of the two writes that can block: `to_network` (encrypted datagrams
//! for the UDP socket) and `to_tun` (decrypted packets for the TUN device). When a ring is full
//! the newest packet is dropped and counted before any crypto is spent on it, so overload costs
//! drops, never memory. A ring is full when its slots are taken or its byte cap is reached, and
//! packets that waited longer than the configured delay are dropped before they are written, so
//! a ring adds bounded delay whatever the speed of what drains it.

use crate::core::device::{Device, NetworkAction, TunAction};
use crate::core::limits::ring_slot_bytes;
use crate::core::offload::{self, Group, Segment, VnetHeader, MAX_SUPER_PACKET, VNET_HDR_LEN};
use crate::core::reflexive::{self, Reflected, Reflector};
use crate::core::ring::PacketRing;
use crate::core::stats::DropReason;
use crate::shell::status::RingStatus;
use crate::shell::tun::{Offloads, TunDevice};
use crate::shell::udp::{ReceiveMode, UdpIo};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod busy_poll;
use busy_poll::RoundGate;
pub use busy_poll::{Accepted, BusyPollStats, Side};

/// TUN reads per readiness wake-up: each can be a 64 KiB super-packet.
const TUN_READS_PER_WAKE: usize = 8;
/// `recvmmsg` calls per readiness wake-up.
const UDP_BATCHES_PER_WAKE: usize = 4;
/// Flush a ring when fewer slots than this are free: one super-packet's worth of segments.
const FLUSH_HEADROOM: usize = 48;
/// Flush a ring when fewer bytes than this may still be queued: one super-packet's worth.
const FLUSH_HEADROOM_BYTES: usize = MAX_SUPER_PACKET;
/// Write the TUN ring out once this many bytes of UDP wait in it, without waiting for the batch
/// to end. A UDP receiver has no flow control: the burst lands in its socket buffer, whose
/// default (208 KiB) a whole ring (256 KiB) overflows. Measured at 1.5 Gbit/s offered to
/// iperf3: 13% lost at the receiver's socket with whole-ring bursts, 2.4% with this. TCP keeps
/// whole-batch writes: its receiver's buffer grows to megabytes, and earlier writes measured
/// 0.4 ms worse ping under a TCP stream. One super-packet's worth still merges a GSO train.
const UDP_BURST_BYTES: usize = MAX_SUPER_PACKET;
/// Packets one TUN write may merge (iovecs: header, first packet's headers and payload, then
/// one payload per further packet).
const MAX_MERGE: usize = 64;

pub struct DataPath {
    pub device: Device,
    /// Learns the UDP socket's reflexive address from DHT nodes; `None` without the DHT.
    pub reflector: Option<Reflector>,
    to_network: PacketRing<Option<SocketAddr>>,
    to_tun: PacketRing<()>,
    /// A TUN read: virtio-net header and up to a 64 KiB packet.
    tun_buf: Box<[u8]>,
    /// One segment cut from a super-packet, with room for padding.
    segment_buf: Box<[u8]>,
    /// The rewritten headers of a merged packet (the ring keeps the original until written).
    merge_headers: [u8; 192],
    merge_iov: Box<[libc::iovec]>,
    /// What the TUN device accepts: which packets may be merged on write.
    offloads: Offloads,
    /// Longest a packet may wait in a ring; None: as long as it takes.
    max_delay: Option<Duration>,
    /// The last flush of each ring stopped because the socket or device would block. Only then
    /// is a ring a standing queue whose old packets are dropped: without it, a packet's age is
    /// the time we took to process the rest of its batch, which no drop would shorten.
    network_blocked: bool,
    tun_blocked: bool,
    /// Bytes of UDP packets queued in `to_tun` since it was last written out.
    udp_burst_bytes: usize,
    /// What busy polling watches move.
    accepted: Accepted,
    /// What busy polling did, for status.
    pub busy_poll_stats: BusyPollStats,
    /// Which wake-ups get a polling round: one gate for wake-ups by the TUN device, one for
    /// wake-ups by the socket.
    busy_poll_gates: [RoundGate; 2],
    /// The window the gates judged rounds by; a new one starts them afresh.
    busy_poll_window: Duration,
    started: Instant,
}

/// How a call to `read_tun` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunRead {
    /// The device has nothing more now: wait for epoll to say readable.
    Dry,
    /// The batch ended with packets perhaps still waiting: read again soon.
    BatchEnded,
    /// A read failed for another reason than would-block; it was logged.
    Failed,
    /// Reading stopped for a paced peer (see `tun_paused_until`): read again when it ends.
    Paused,
}

/// How the two rings are sized (from `[interface]`, bounded by the config).
#[derive(Debug, Clone, Copy)]
pub struct RingSettings {
    pub slots: usize,
    pub bytes: usize,
    pub max_delay: Option<Duration>,
}

impl DataPath {
    pub fn new(device: Device, mtu: usize, rings: RingSettings, offloads: Offloads) -> Self {
        let slot = ring_slot_bytes(mtu);
        Self {
            device,
            reflector: None,
            offloads,
            max_delay: rings.max_delay,
            network_blocked: false,
            tun_blocked: false,
            udp_burst_bytes: 0,
            accepted: Accepted::default(),
            busy_poll_stats: BusyPollStats::default(),
            busy_poll_gates: Default::default(),
            busy_poll_window: Duration::ZERO,
            to_network: PacketRing::new(rings.slots, slot).with_max_bytes(rings.bytes),
            to_tun: PacketRing::new(rings.slots, slot).with_max_bytes(rings.bytes),
            tun_buf: vec![0u8; VNET_HDR_LEN + MAX_SUPER_PACKET].into_boxed_slice(),
            segment_buf: vec![0u8; slot].into_boxed_slice(),
            merge_headers: [0u8; 192],
            merge_iov: (0..MAX_MERGE + 2)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            started: Instant::now(),
        }
    }

    /// Time since the daemon started: the core's `now`.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Occupancy of the TUN->UDP and UDP->TUN rings.
    pub fn ring_occupancy(&self) -> [RingStatus; 2] {
        fn of<M: Copy + Default>(ring: &PacketRing<M>) -> RingStatus {
            RingStatus {
                slots: ring.capacity(),
                queued: ring.len(),
                max_bytes: ring.max_bytes(),
                queued_bytes: ring.queued_bytes(),
            }
        }
        [of(&self.to_network), of(&self.to_tun)]
    }

    /// Packets read from the TUN device and datagrams the core accepted, since the start.
    pub fn accepted(&self) -> Accepted {
        self.accepted
    }

    pub fn has_network_backlog(&self) -> bool {
        !self.to_network.is_empty()
    }

    pub fn has_tun_backlog(&self) -> bool {
        !self.to_tun.is_empty()
    }

    /// Until when the TUN device is left unread because the traffic read from it goes to paced
    /// peers in debt; None: read it now. The kernel meanwhile drops the excess at its queue.
    pub fn tun_paused_until(&mut self) -> Option<Instant> {
        let now = self.now();
        let until = self.device.tun_paused_until(now)?;
        Some(self.started + until)
    }

    /// Reads packets from the TUN device until it runs dry, the batch ends, a read fails or a
    /// paced peer pauses it.
    pub fn read_tun(&mut self, tun: &TunDevice, udp: &mut UdpIo) -> TunRead {
        for _ in 0..TUN_READS_PER_WAKE {
            let now = self.now();
            if self.device.tun_paused_until(now).is_some() {
                return TunRead::Paused;
            }
            if lacks_headroom(&self.to_network) {
                self.flush_network(udp);
            }
            let n = match tun.try_read(&mut self.tun_buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return TunRead::Dry,
                Err(e) => {
                    tracing::warn!("reading from {}: {e}", tun.name());
                    return TunRead::Failed;
                }
            };
            self.accepted.from_tun += 1;
            let Self {
                device,
                to_network,
                tun_buf,
                segment_buf,
                ..
            } = self;
            let Ok(header) = VnetHeader::parse(&tun_buf[..n]) else {
                device.count_drop(DropReason::Malformed);
                continue;
            };
            let (_, rest) = tun_buf.split_at_mut(VNET_HDR_LEN);
            let len = n.saturating_sub(VNET_HDR_LEN);
            if header.gso_type == offload::GSO_NONE {
                if header.flags & offload::F_NEEDS_CSUM != 0
                    && offload::complete_checksum(&mut rest[..len], &header).is_err()
                {
                    device.count_drop(DropReason::Malformed);
                    continue;
                }
                // The read buffer has room after the packet for its padding.
                encapsulate(device, to_network, rest, len, now);
            } else {
                let (packet, _) = rest.split_at_mut(len);
                let split = offload::split(packet, &header, segment_buf, |segment, seg_len| {
                    encapsulate(device, to_network, segment, seg_len, now);
                });
                if split.is_err() {
                    device.count_drop(DropReason::Malformed);
                }
            }
        }
        TunRead::BatchEnded
    }

    /// Receives datagrams until the socket runs dry or the batch ends; true when the batch
    /// ended first, so more may be waiting.
    pub fn read_udp(&mut self, udp: &mut UdpIo, tun: &TunDevice, mode: ReceiveMode) -> bool {
        for _ in 0..UDP_BATCHES_PER_WAKE {
            if !self.receive_batch(udp, tun, mode) {
                return false;
            }
        }
        true
    }

    /// One `recvmmsg` and the packets it brought; false when the socket had nothing.
    fn receive_batch(&mut self, udp: &mut UdpIo, tun: &TunDevice, mode: ReceiveMode) -> bool {
        let messages = match udp.recv_batch(mode) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) => {
                // ICMP errors surface here as ECONNREFUSED and friends; they say nothing
                // authenticated, so they are only worth a debug line.
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
            if lacks_headroom(&self.to_tun) {
                self.flush_tun(tun);
            }
            let Some(message) = udp.received(i) else {
                self.device.count_drop(DropReason::Malformed);
                continue;
            };
            for datagram in message.data.chunks(message.segment_size) {
                self.decapsulate(message.from, datagram, now);
            }
            if self.udp_burst_bytes >= UDP_BURST_BYTES {
                self.flush_tun(tun);
            }
        }
        true
    }

    /// Moves the reflector's due pings into the ring; the timer tick calls this, since pings
    /// are seconds apart.
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
            let now = self.now();
            drop_stale(&mut self.to_network, &mut self.device, self.max_delay, now);
        }
        let outcome = udp.send_from(&mut self.to_network);
        self.network_blocked = outcome.would_block;
        self.device
            .count_drops(DropReason::SendFailed, outcome.failed as u64);
        outcome.would_block
    }

    /// Writes queued packets to the TUN device, merging runs of one TCP flow into one
    /// super-packet; true when the device would block.
    pub fn flush_tun(&mut self, tun: &TunDevice) -> bool {
        if self.tun_blocked {
            let now = self.now();
            drop_stale(&mut self.to_tun, &mut self.device, self.max_delay, now);
        }
        self.tun_blocked = self.write_tun(tun);
        self.tun_blocked
    }

    fn write_tun(&mut self, tun: &TunDevice) -> bool {
        self.udp_burst_bytes = 0;
        while !self.to_tun.is_empty() {
            let count = self.plan_write();
            match tun.try_write_vectored(&self.merge_iov[..self.iov_len(count)]) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) => {
                    tracing::debug!("writing to {}: {e}", tun.name());
                    self.device
                        .count_drops(DropReason::SendFailed, count as u64);
                }
            }
            self.to_tun.pop_front_n(count);
        }
        false
    }

    fn decapsulate(&mut self, from: SocketAddr, datagram: &[u8], now: Duration) {
        // DHT nodes answering the reflector's pings share the socket with our peers.
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
        let Some(out) = self.to_tun.vacant_slot() else {
            self.device.count_drop(DropReason::RingFull);
            return;
        };
        // Only what authenticated as a peer's counts as accepted; see `Accepted`.
        match self.device.handle_datagram(from, datagram, now, out) {
            NetworkAction::WriteToTun { len } => {
                self.accepted.from_network += 1;
                if offload::carries_udp(out) {
                    self.udp_burst_bytes += len;
                }
                let _ = self.to_tun.commit(len, (), now);
            }
            NetworkAction::WriteToNetwork { to, len } => {
                // A handshake response, written into the TUN ring's free slot: move it.
                let reply = self.to_tun.vacant_slot().and_then(|s| s.get(..len));
                if reply.is_none_or(|r| self.to_network.push(r, Some(to), now).is_err()) {
                    self.device.count_drop(DropReason::RingFull);
                }
            }
            NetworkAction::Consumed => self.accepted.from_network += 1,
            NetworkAction::Drop(_) => {}
        }
    }

    /// Fills `merge_iov` for the next TUN write: the front packet and the packets after it that
    /// continue its TCP flow. Returns how many ring entries the write covers.
    fn plan_write(&mut self) -> usize {
        const ZERO_HEADER: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];
        let Some((first, ())) = self.to_tun.front() else {
            return 0;
        };
        let mergeable = |s: &Segment| match self.offloads {
            Offloads::TcpAndUdp => true,
            Offloads::Tcp => !s.is_udp(),
            Offloads::None => false,
        };
        let mut group = Segment::classify(first)
            .filter(mergeable)
            .map(|s| (s, Group::start(s, first.len())));
        let mut count = 1;
        if let Some((segment, group)) = group.as_mut() {
            while count < MAX_MERGE {
                let Some((next, ())) = self.to_tun.get(count) else {
                    break;
                };
                let Some(next_segment) = Segment::classify(next) else {
                    break;
                };
                let same_options = offload::options_equal(first, next, segment);
                if !group.try_append(&next_segment, next.len(), same_options) {
                    break;
                }
                count += 1;
            }
        }
        let iov = |bytes: &[u8]| libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        match group.filter(|_| count > 1) {
            Some((_, group)) => {
                let headers_len = group.headers_len();
                let mut vnet = [0u8; VNET_HDR_LEN];
                self.merge_headers[..headers_len].copy_from_slice(&first[..headers_len]);
                group
                    .finish(&mut self.merge_headers[..headers_len])
                    .write(&mut vnet);
                self.merge_headers[headers_len..headers_len + VNET_HDR_LEN].copy_from_slice(&vnet);
                self.merge_iov[0] =
                    iov(&self.merge_headers[headers_len..headers_len + VNET_HDR_LEN]);
                self.merge_iov[1] = iov(&self.merge_headers[..headers_len]);
                for i in 0..count {
                    if let Some((packet, ())) = self.to_tun.get(i) {
                        self.merge_iov[i + 2] = iov(&packet[headers_len.min(packet.len())..]);
                    }
                }
            }
            None => {
                self.merge_iov[0] = iov(&ZERO_HEADER);
                self.merge_iov[1] = iov(first);
            }
        }
        count
    }

    fn iov_len(&self, count: usize) -> usize {
        if count > 1 {
            count + 2
        } else {
            2
        }
    }
}

/// Encrypts one inner packet into the network ring, or drops it when the ring is full.
fn encapsulate(
    device: &mut Device,
    to_network: &mut PacketRing<Option<SocketAddr>>,
    buf: &mut [u8],
    len: usize,
    now: Duration,
) {
    // Drop before encrypting: a packet that cannot be queued is not worth the crypto.
    let Some(out) = to_network.vacant_slot() else {
        device.count_drop(DropReason::RingFull);
        return;
    };
    if let TunAction::WriteToNetwork { to, len } = device.handle_tun_packet(buf, len, now, out) {
        let _ = to_network.commit(len, Some(to), now);
    }
}

/// Drops (and counts) the packets that waited in `ring` longer than `max_delay`.
fn drop_stale<M: Copy + Default>(
    ring: &mut PacketRing<M>,
    device: &mut Device,
    max_delay: Option<Duration>,
    now: Duration,
) {
    if let Some(max_delay) = max_delay {
        let stale = ring.drop_stale(now, max_delay);
        device.count_drops(DropReason::RingDelay, stale as u64);
    }
}

/// A ring that might not take a whole super-packet's segments: flush it before reading more.
fn lacks_headroom<M: Copy + Default>(ring: &PacketRing<M>) -> bool {
    ring.free_slots() < FLUSH_HEADROOM || ring.free_bytes() < FLUSH_HEADROOM_BYTES
}
