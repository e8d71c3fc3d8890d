//! The overlay's TCP/IP stack (smoltcp) and the link that feeds it from the core: the packets a
//! TUN device would have been handed (the core's `WriteToTun`) are what smoltcp receives, and
//! what smoltcp transmits goes to the core as if read from a TUN device.
//!
//! The link holds no queue of its own: receive takes from the inbound ring, transmit encrypts
//! straight into the network ring, and reports no room while that ring is full, so smoltcp
//! keeps unsent data in its sockets' fixed buffers rather than anywhere else.

use crate::core::device::{Device, TunAction};
use crate::core::ring::PacketRing;
use crate::core::stats::DropReason;
use ipnetwork::IpNetwork;
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// smoltcp's interface and sockets.
pub(crate) struct Stack {
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
}

impl Stack {
    /// An interface holding `addresses`, with a default route per family through itself: on a
    /// layer-3 link every destination is "on link", and the core routes by allowed_ips.
    pub fn new(addresses: &[IpNetwork], link: &mut Link<'_>, seed: u64) -> Self {
        let mut config = IfaceConfig::new(HardwareAddress::Ip);
        config.random_seed = seed;
        let mut iface = Interface::new(config, link, link.instant());
        iface.update_ip_addrs(|addrs| {
            for address in addresses {
                let cidr = IpCidr::new(IpAddress::from(address.ip()), address.prefix());
                if addrs.push(cidr).is_err() {
                    tracing::warn!(%address, "userspace mode holds at most 8 addresses; ignored");
                }
            }
        });
        let v4 = addresses.iter().find_map(|a| match a.ip() {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        });
        let v6 = addresses.iter().find_map(|a| match a.ip() {
            IpAddr::V6(ip) => Some(ip),
            IpAddr::V4(_) => None,
        });
        if let Some(ip) = v4 {
            let _ = iface.routes_mut().add_default_ipv4_route(ip);
        }
        if let Some(ip) = v6 {
            let _ = iface.routes_mut().add_default_ipv6_route(ip);
        }
        Self {
            iface,
            sockets: SocketSet::new(Vec::new()),
        }
    }

    /// Lets smoltcp take what arrived and send what it can; true when a socket may have changed.
    pub fn poll(&mut self, link: &mut Link<'_>) -> bool {
        let now = link.instant();
        self.iface.poll(now, link, &mut self.sockets)
            == smoltcp::iface::PollResult::SocketStateChanged
    }

    /// How long until smoltcp wants to be polled again (retransmits, delayed ACKs).
    pub fn poll_delay(&mut self, now: Duration) -> Option<Duration> {
        self.iface
            .poll_delay(instant(now), &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
    }
}

/// The stack's side of the core for one poll: borrowed parts of the userspace data path.
pub(crate) struct Link<'a> {
    pub device: &'a mut Device,
    pub to_network: &'a mut PacketRing<Option<SocketAddr>>,
    pub inbound: &'a mut PacketRing<()>,
    /// One outgoing packet with room for the core's padding after it (a ring slot).
    pub scratch: &'a mut [u8],
    pub now: Duration,
    pub mtu: usize,
}

impl Link<'_> {
    fn instant(&self) -> Instant {
        instant(self.now)
    }
}

pub(crate) fn instant(now: Duration) -> Instant {
    Instant::from_micros(i64::try_from(now.as_micros()).unwrap_or(i64::MAX))
}

impl phy::Device for Link<'_> {
    type RxToken<'b>
        = RxToken<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = TxToken<'b>
    where
        Self: 'b;

    fn receive(&mut self, _: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        if self.inbound.is_empty() {
            return None;
        }
        Some((
            RxToken { ring: self.inbound },
            TxToken {
                device: self.device,
                to_network: self.to_network,
                scratch: self.scratch,
                now: self.now,
            },
        ))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxToken<'_>> {
        // No room for the datagram: smoltcp keeps the data in its socket and tries again.
        self.to_network.vacant_slot()?;
        Some(TxToken {
            device: self.device,
            to_network: self.to_network,
            scratch: self.scratch,
            now: self.now,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        // What arrives was authenticated by the tunnel's AEAD, and a TUN peer's kernel completes
        // checksums before we encrypt: verifying them again would only cost time.
        let mut checksum = ChecksumCapabilities::default();
        checksum.ipv4 = Checksum::Tx;
        checksum.tcp = Checksum::Tx;
        checksum.udp = Checksum::Tx;
        checksum.icmpv4 = Checksum::Tx;
        checksum.icmpv6 = Checksum::Tx;
        caps.checksum = checksum;
        caps
    }
}

pub(crate) struct RxToken<'a> {
    ring: &'a mut PacketRing<()>,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let result = match self.ring.front() {
            Some((packet, ())) => f(packet),
            None => f(&[]),
        };
        self.ring.pop_front();
        result
    }
}

pub(crate) struct TxToken<'a> {
    device: &'a mut Device,
    to_network: &'a mut PacketRing<Option<SocketAddr>>,
    scratch: &'a mut [u8],
    now: Duration,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        // smoltcp never builds a packet above the MTU, and the scratch buffer is a ring slot of
        // that MTU: longer is a bug, answered by dropping rather than panicking.
        let len = len.min(self.scratch.len());
        let result = f(&mut self.scratch[..len]);
        match self.to_network.vacant_slot() {
            Some(out) => {
                if let TunAction::WriteToNetwork { to, len } =
                    self.device
                        .handle_tun_packet(self.scratch, len, self.now, out)
                {
                    let _ = self.to_network.commit(len, Some(to), self.now);
                }
            }
            None => self.device.count_drop(DropReason::RingFull),
        }
        result
    }
}
