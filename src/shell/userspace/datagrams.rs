//! UDP through the in-daemon stack. A UDP forward keeps one flow per local client address, each
//! with a smoltcp UDP socket on an ephemeral port of ours, so the overlay service's answers find
//! their way back; a UDP expose keeps one flow per overlay client, each with a local socket
//! connected to the service. At most USERSPACE_UDP_FLOWS flows per entry: the least recently
//! used one gives way to a new client, and a flow idle for USERSPACE_UDP_IDLE is forgotten.
//!
//! UDP promises no delivery, so a full queue drops the datagram (counted); the queues are the
//! smoltcp sockets' fixed packet buffers and the kernel's socket buffers.

use super::status::Counters;
use crate::config::{Expose, Forward, Protocol};
use crate::core::limits::{
    USERSPACE_UDP_BUFFER_BYTES, USERSPACE_UDP_FLOWS, USERSPACE_UDP_IDLE, USERSPACE_UDP_PACKETS,
};
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::udp;
use smoltcp::wire::{IpAddress, IpEndpoint};
use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::task::Poll;
use std::time::Duration;
use tokio::net::UdpSocket;

/// Datagrams moved each way per entry per pass, so one busy entry cannot hold the loop.
const DATAGRAMS_PER_PASS: usize = 64;
/// Local ports of our forward flows on the overlay (a range apart from TCP's, for clarity).
const FLOW_PORTS: std::ops::RangeInclusive<u16> = 40000..=49151;

pub(crate) struct Udp {
    forwards: Vec<UdpForward>,
    exposes: Vec<UdpExpose>,
    /// A datagram's payload on its way (the largest UDP payload).
    buf: Box<[u8]>,
    next_port: u16,
}

struct UdpForward {
    index: usize,
    local: UdpSocket,
    to: IpEndpoint,
    flows: Vec<ForwardFlow>,
}

struct ForwardFlow {
    client: SocketAddr,
    handle: SocketHandle,
    last: Duration,
}

struct UdpExpose {
    index: usize,
    handle: SocketHandle,
    to: SocketAddr,
    flows: Vec<ExposeFlow>,
}

struct ExposeFlow {
    remote: IpEndpoint,
    local: UdpSocket,
    last: Duration,
}

impl Udp {
    /// Binds every UDP forward's local port and opens every UDP expose's overlay port.
    pub async fn start(
        forwards: &[Forward],
        exposes: &[Expose],
        sockets: &mut SocketSet<'static>,
    ) -> io::Result<Self> {
        let mut udp = Self {
            forwards: Vec::new(),
            exposes: Vec::new(),
            buf: vec![0u8; 65536].into_boxed_slice(),
            next_port: *FLOW_PORTS.start(),
        };
        for (index, forward) in forwards.iter().enumerate() {
            if forward.protocol != Protocol::Udp {
                continue;
            }
            let local = UdpSocket::bind(forward.listen).await.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("[[forward]] listen = \"{}\": {e}", forward.listen),
                )
            })?;
            udp.forwards.push(UdpForward {
                index,
                local,
                to: IpEndpoint::new(IpAddress::from(forward.to.ip()), forward.to.port()),
                flows: Vec::with_capacity(USERSPACE_UDP_FLOWS),
            });
        }
        for (index, expose) in exposes.iter().enumerate() {
            if expose.protocol != Protocol::Udp {
                continue;
            }
            let mut socket = new_socket();
            socket.bind(expose.port).map_err(|e| {
                io::Error::other(format!("[[expose]] udp port {}: {e}", expose.port))
            })?;
            udp.exposes.push(UdpExpose {
                index,
                handle: sockets.add(socket),
                to: expose.to,
                flows: Vec::with_capacity(USERSPACE_UDP_FLOWS),
            });
        }
        Ok(udp)
    }

    /// Moves datagrams both ways for every entry and forgets idle flows; true when any moved.
    pub fn pump(
        &mut self,
        sockets: &mut SocketSet<'static>,
        now: Duration,
        forward_stats: &mut [Counters],
        expose_stats: &mut [Counters],
    ) -> bool {
        let mut moved = false;
        for i in 0..self.forwards.len() {
            let stats = &mut forward_stats[self.forwards[i].index];
            moved |= self.pump_forward(i, sockets, now, stats);
        }
        for expose in &mut self.exposes {
            let stats = &mut expose_stats[expose.index];
            moved |= expose.pump(sockets, now, stats, &mut self.buf);
        }
        moved
    }

    /// Waits until a local UDP socket has a datagram.
    pub async fn local_ready(&self) {
        poll_fn(|cx| {
            let forwards = self.forwards.iter().map(|f| &f.local);
            let flows = self
                .exposes
                .iter()
                .flat_map(|e| e.flows.iter().map(|f| &f.local));
            for socket in forwards.chain(flows) {
                if socket.poll_recv_ready(cx).is_ready() {
                    return Poll::Ready(());
                }
            }
            Poll::Pending
        })
        .await
    }

    fn pump_forward(
        &mut self,
        i: usize,
        sockets: &mut SocketSet<'static>,
        now: Duration,
        stats: &mut Counters,
    ) -> bool {
        let mut moved = false;
        // Local clients to the overlay.
        for _ in 0..DATAGRAMS_PER_PASS {
            let (n, client) = match self.forwards[i].local.try_recv_from(&mut self.buf) {
                Ok(received) => received,
                Err(_) => break,
            };
            moved = true;
            let handle = match self.forwards[i]
                .flows
                .iter()
                .position(|f| f.client == client)
            {
                Some(k) => self.forwards[i].flows[k].handle,
                None => {
                    let port = self.next_flow_port(sockets);
                    let forward = &mut self.forwards[i];
                    if forward.flows.len() >= USERSPACE_UDP_FLOWS {
                        let lru = least_recent(forward.flows.iter().map(|f| f.last));
                        let old = forward.flows.swap_remove(lru);
                        sockets.remove(old.handle);
                        stats.connections = stats.connections.saturating_sub(1);
                    }
                    let mut socket = new_socket();
                    if socket.bind(port).is_err() {
                        stats.refused += 1;
                        continue;
                    }
                    let handle = sockets.add(socket);
                    forward.flows.push(ForwardFlow {
                        client,
                        handle,
                        last: now,
                    });
                    stats.connections += 1;
                    stats.total_connections += 1;
                    handle
                }
            };
            let forward = &mut self.forwards[i];
            if let Some(flow) = forward.flows.iter_mut().find(|f| f.handle == handle) {
                flow.last = now;
            }
            let socket = sockets.get_mut::<udp::Socket>(handle);
            match socket.send_slice(&self.buf[..n], forward.to) {
                Ok(()) => stats.tx_bytes += n as u64,
                Err(_) => stats.dropped += 1,
            }
        }
        // The overlay's answers back to each client; idle flows forgotten.
        let forward = &mut self.forwards[i];
        let mut k = 0;
        while k < forward.flows.len() {
            let flow = &mut forward.flows[k];
            let socket = sockets.get_mut::<udp::Socket>(flow.handle);
            for _ in 0..DATAGRAMS_PER_PASS {
                let Ok((data, _)) = socket.recv() else {
                    break;
                };
                moved = true;
                flow.last = now;
                match forward.local.try_send_to(data, flow.client) {
                    Ok(n) => stats.rx_bytes += n as u64,
                    Err(_) => stats.dropped += 1,
                }
            }
            if now.saturating_sub(flow.last) >= USERSPACE_UDP_IDLE {
                let flow = forward.flows.swap_remove(k);
                sockets.remove(flow.handle);
                stats.connections = stats.connections.saturating_sub(1);
            } else {
                k += 1;
            }
        }
        moved
    }

    /// The next flow port that no forward flow of ours holds.
    fn next_flow_port(&mut self, sockets: &SocketSet<'static>) -> u16 {
        let in_use = |port: u16| {
            self.forwards
                .iter()
                .flat_map(|f| &f.flows)
                .any(|f| sockets.get::<udp::Socket>(f.handle).endpoint().port == port)
        };
        // At most MAX_FORWARDS x USERSPACE_UDP_FLOWS ports are taken, fewer than the range.
        self.next_port = super::next_free_port(self.next_port, FLOW_PORTS, in_use);
        self.next_port
    }
}

impl UdpExpose {
    fn pump(
        &mut self,
        sockets: &mut SocketSet<'static>,
        now: Duration,
        stats: &mut Counters,
        buf: &mut [u8],
    ) -> bool {
        let mut moved = false;
        // Overlay clients to the local service, one local socket per client.
        for _ in 0..DATAGRAMS_PER_PASS {
            let socket = sockets.get_mut::<udp::Socket>(self.handle);
            let Ok((data, meta)) = socket.recv() else {
                break;
            };
            moved = true;
            let k = match self.flows.iter().position(|f| f.remote == meta.endpoint) {
                Some(k) => k,
                None => {
                    let local = match connect_local(self.to) {
                        Ok(local) => local,
                        Err(e) => {
                            tracing::debug!("udp expose: socket for {}: {e}", self.to);
                            stats.refused += 1;
                            continue;
                        }
                    };
                    if self.flows.len() >= USERSPACE_UDP_FLOWS {
                        let lru = least_recent(self.flows.iter().map(|f| f.last));
                        self.flows.swap_remove(lru);
                        stats.connections = stats.connections.saturating_sub(1);
                    }
                    self.flows.push(ExposeFlow {
                        remote: meta.endpoint,
                        local,
                        last: now,
                    });
                    stats.connections += 1;
                    stats.total_connections += 1;
                    self.flows.len() - 1
                }
            };
            let flow = &mut self.flows[k];
            flow.last = now;
            match flow.local.try_send(data) {
                Ok(n) => stats.rx_bytes += n as u64,
                Err(_) => stats.dropped += 1,
            }
        }
        // The service's answers back to each client; idle flows forgotten.
        let mut k = 0;
        while k < self.flows.len() {
            let flow = &mut self.flows[k];
            for _ in 0..DATAGRAMS_PER_PASS {
                let Ok(n) = flow.local.try_recv(buf) else {
                    break;
                };
                moved = true;
                flow.last = now;
                let socket = sockets.get_mut::<udp::Socket>(self.handle);
                match socket.send_slice(&buf[..n], flow.remote) {
                    Ok(()) => stats.tx_bytes += n as u64,
                    Err(_) => stats.dropped += 1,
                }
            }
            if now.saturating_sub(self.flows[k].last) >= USERSPACE_UDP_IDLE {
                self.flows.swap_remove(k);
                stats.connections = stats.connections.saturating_sub(1);
            } else {
                k += 1;
            }
        }
        moved
    }
}

/// A smoltcp UDP socket with the fixed queues of core::limits.
fn new_socket() -> udp::Socket<'static> {
    let buffer = || {
        udp::PacketBuffer::new(
            vec![udp::PacketMetadata::EMPTY; USERSPACE_UDP_PACKETS],
            vec![0u8; USERSPACE_UDP_BUFFER_BYTES],
        )
    };
    udp::Socket::new(buffer(), buffer())
}

/// A local socket connected to the exposed service, on an ephemeral port of the host.
fn connect_local(to: SocketAddr) -> io::Result<UdpSocket> {
    let any = match to.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let socket = std::net::UdpSocket::bind(SocketAddr::new(any, 0))?;
    socket.connect(to)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// The index of the oldest of `times` (0 when empty).
fn least_recent(times: impl Iterator<Item = Duration>) -> usize {
    times
        .enumerate()
        .min_by_key(|(_, t)| *t)
        .map_or(0, |(i, _)| i)
}
