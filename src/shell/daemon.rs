//! `dhtun up`: brings the interface up, runs the event loop that moves packets between the TUN
//! device, the packet rings, the core and the UDP socket, and tears everything down on
//! SIGINT/SIGTERM or `dhtun down`.
//!
//! The loop makes no protocol decisions: it reads, asks the core, and writes. Each ring sits in
//! front of a write that can block; when one is full, the newest packet is dropped and counted
//! before any crypto is spent on it.

use crate::config::Config;
use crate::core::device::{Device, DeviceConfig, NetworkAction, TunAction};
use crate::core::limits::{ring_slot_bytes, IO_BATCH, TIMER_TICK};
use crate::core::ring::PacketRing;
use crate::core::stats::DropReason;
use crate::shell::control::{ControlCommand, ControlRequest, ControlServer};
use crate::shell::netlink::{prefixes_needing_routes, Netlink};
use crate::shell::status::{InterfaceStatus, RingStatus, ShellFacts};
use crate::shell::tun::TunDevice;
use anyhow::Context as _;
use ipnetwork::IpNetwork;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::UdpSocket;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};

/// Runs the interface `config` describes until asked to stop; returns after cleaning up.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let name = config.interface.name.clone();
    let netlink = Netlink::open()?;
    if netlink.link_index(&name).await?.is_some() {
        anyhow::bail!(
            "interface {name} already exists; pick another [interface] name in {} or remove that interface",
            config.path.display()
        );
    }
    let control = ControlServer::bind(&name)?;
    let udp = bind_udp(config.interface.listen_port, &config)?;
    let listen_port = udp.local_addr().map(|a| a.port()).unwrap_or(0);
    let tun = TunDevice::create(&name)?;
    let index = netlink
        .link_index(&name)
        .await?
        .with_context(|| format!("interface {name} vanished right after it was created"))?;
    let mut routes = Vec::new();
    if let Err(e) = configure_link(&netlink, index, &config, &mut routes).await {
        teardown(&netlink, index, &routes).await;
        let _ = std::fs::remove_file(control.path());
        return Err(e);
    }
    tracing::info!(
        interface = %name,
        public_key = %config.interface.secret_key.public_key(),
        listen_port,
        peers = config.peers.len(),
        "interface up"
    );

    let socket_path = control.path().to_owned();
    let (commands_tx, commands) = mpsc::channel(crate::core::limits::CONTROL_CONNECTIONS);
    let control_task = control.spawn(commands_tx);
    let facts = Facts {
        interface: name.clone(),
        listen_port,
        addresses: config.interface.addresses.clone(),
        mtu: config.interface.mtu,
    };
    let outcome = event_loop(&config, &tun, &udp, commands, &facts).await;
    control_task.abort();
    teardown(&netlink, index, &routes).await;
    drop(tun);
    let _ = std::fs::remove_file(&socket_path);
    tracing::info!(interface = %name, "interface down");
    let reply = outcome?;
    if let Some(reply) = reply {
        let _ = reply.send("stopped\n".into());
    }
    Ok(())
}

/// What status reports that the config alone does not say (the port actually bound).
struct Facts {
    interface: String,
    listen_port: u16,
    addresses: Vec<IpNetwork>,
    mtu: usize,
}

/// The packet state the loop owns: the core and the two rings.
struct DataPath {
    device: Device,
    /// Encrypted datagrams waiting for the UDP socket.
    to_network: PacketRing<Option<SocketAddr>>,
    /// Decrypted packets waiting for the TUN device.
    to_tun: PacketRing<()>,
    /// Where a packet or datagram is read before the core looks at it.
    read_buf: Box<[u8]>,
    started: Instant,
}

async fn event_loop(
    config: &Config,
    tun: &TunDevice,
    udp: &UdpSocket,
    mut commands: mpsc::Receiver<ControlCommand>,
    facts: &Facts,
) -> anyhow::Result<Option<oneshot::Sender<String>>> {
    let mut path = DataPath::new(config)?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = sigint.recv() => return Ok(None),
            _ = sigterm.recv() => return Ok(None),
            _ = sighup.recv() => {
                tracing::warn!("SIGHUP: live reload is not supported yet; the running config is kept");
            }
            Some(command) = commands.recv() => match command.request {
                ControlRequest::Status => {
                    let _ = command.reply.send(path.status_json(facts));
                }
                ControlRequest::Down => return Ok(Some(command.reply)),
                ControlRequest::Reload => {
                    let _ = command.reply.send(
                        "error: live reload is not supported yet; the running config is kept\n".into(),
                    );
                }
            },
            _ = tick.tick() => {
                let now = path.now();
                path.device.handle_timers(now);
            }
            ready = tun.readable() => {
                let mut guard = ready?;
                if path.read_tun(tun) {
                    guard.clear_ready();
                }
            }
            ready = udp.readable() => {
                ready?;
                path.read_udp(udp);
            }
            ready = udp.writable(), if !path.to_network.is_empty() => { ready?; }
            ready = tun.writable(), if !path.to_tun.is_empty() => {
                let mut guard = ready?;
                if path.flush_tun(tun) {
                    guard.clear_ready();
                }
            }
        }
        path.drain_transmits();
        path.flush_network(udp);
        if !path.to_tun.is_empty() {
            path.flush_tun(tun);
        }
    }
}

impl DataPath {
    fn new(config: &Config) -> anyhow::Result<Self> {
        let mut rng_seed = [0u8; 32];
        getrandom_fill(&mut rng_seed)?;
        let wall_clock_at_zero = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("the system clock is before 1970")?;
        let device = Device::new(DeviceConfig {
            secret_key: config.interface.secret_key.clone(),
            mtu: config.interface.mtu,
            peers: config.peers.clone(),
            wall_clock_at_zero,
            rng_seed,
        });
        let slots = config.interface.ring_slots;
        let slot_bytes = ring_slot_bytes(config.interface.mtu);
        Ok(Self {
            device,
            to_network: PacketRing::new(slots, slot_bytes),
            to_tun: PacketRing::new(slots, slot_bytes),
            read_buf: vec![0u8; slot_bytes].into_boxed_slice(),
            started: Instant::now(),
        })
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Reads up to a batch of packets from the TUN device; true when it ran dry.
    fn read_tun(&mut self, tun: &TunDevice) -> bool {
        for _ in 0..IO_BATCH {
            let len = match tun.try_read(&mut self.read_buf) {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) => {
                    tracing::warn!("reading from {}: {e}", tun.name());
                    return true;
                }
            };
            let now = self.now();
            // Drop before encrypting: a packet that cannot be queued is not worth the crypto.
            let Some(out) = self.to_network.vacant_slot() else {
                self.device.count_drop(DropReason::RingFull);
                continue;
            };
            if let TunAction::WriteToNetwork { to, len } =
                self.device
                    .handle_tun_packet(&mut self.read_buf, len, now, out)
            {
                let _ = self.to_network.commit(len, Some(to));
            }
        }
        false
    }

    /// Receives up to a batch of datagrams.
    fn read_udp(&mut self, udp: &UdpSocket) {
        for _ in 0..IO_BATCH {
            let (len, from) = match udp.try_recv_from(&mut self.read_buf) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // ICMP errors surface here as ECONNREFUSED and friends; they say nothing
                    // authenticated, so they are only worth a debug line.
                    tracing::debug!("receiving from the UDP socket: {e}");
                    continue;
                }
            };
            let from = unmap(from);
            let now = self.now();
            let Some(out) = self.to_tun.vacant_slot() else {
                self.device.count_drop(DropReason::RingFull);
                continue;
            };
            match self
                .device
                .handle_datagram(from, &self.read_buf[..len], now, out)
            {
                NetworkAction::WriteToTun { len } => {
                    let _ = self.to_tun.commit(len, ());
                }
                NetworkAction::WriteToNetwork { to, len } => {
                    // A handshake response, written into the TUN ring's free slot: move it.
                    let Some(reply) = self.to_tun.vacant_slot().and_then(|s| s.get(..len)) else {
                        continue;
                    };
                    if self.to_network.push(reply, Some(to)).is_err() {
                        self.device.count_drop(DropReason::RingFull);
                    }
                }
                NetworkAction::Consumed | NetworkAction::Drop(_) => {}
            }
        }
    }

    /// Moves the core's pending datagrams (handshakes, staged packets, keepalives) into the ring.
    fn drain_transmits(&mut self) {
        let now = self.now();
        while let Some(out) = self.to_network.vacant_slot() {
            let Some(transmit) = self.device.poll_transmit(now, out) else {
                break;
            };
            let _ = self.to_network.commit(transmit.len, Some(transmit.to));
        }
    }

    /// Sends queued datagrams until the socket would block.
    fn flush_network(&mut self, udp: &UdpSocket) {
        let v6_socket = udp.local_addr().is_ok_and(|a| a.is_ipv6());
        while let Some((datagram, to)) = self.to_network.front() {
            let Some(to) = to else {
                self.to_network.pop_front();
                continue;
            };
            let to = if v6_socket { map_v4(to) } else { to };
            match udp.try_send_to(datagram, to) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!("sending to {to}: {e}");
                    self.device.count_drop(DropReason::SendFailed);
                }
            }
            self.to_network.pop_front();
        }
    }

    /// Writes queued packets to the TUN device; true when it would block.
    fn flush_tun(&mut self, tun: &TunDevice) -> bool {
        while let Some((packet, ())) = self.to_tun.front() {
            match tun.try_write(packet) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) => {
                    tracing::debug!("writing to {}: {e}", tun.name());
                    self.device.count_drop(DropReason::SendFailed);
                }
            }
            self.to_tun.pop_front();
        }
        false
    }

    fn status_json(&self, facts: &Facts) -> String {
        let ring = |r: usize, q: usize| RingStatus {
            slots: r,
            queued: q,
        };
        let status = InterfaceStatus::snapshot(
            &self.device,
            ShellFacts {
                interface: &facts.interface,
                listen_port: facts.listen_port,
                addresses: &facts.addresses,
                mtu: facts.mtu,
                rings: [
                    (
                        "tun_to_udp",
                        ring(self.to_network.capacity(), self.to_network.len()),
                    ),
                    (
                        "udp_to_tun",
                        ring(self.to_tun.capacity(), self.to_tun.len()),
                    ),
                ],
            },
            self.now(),
        );
        serde_json::to_string_pretty(&status).unwrap_or_else(|e| format!("error: {e}")) + "\n"
    }
}

/// MTU, addresses, up, then routes: the kernel refuses routes on a link that is down, and IPv6
/// addresses on a link whose MTU is below 1280.
async fn configure_link(
    netlink: &Netlink,
    index: u32,
    config: &Config,
    routes: &mut Vec<IpNetwork>,
) -> anyhow::Result<()> {
    let mtu = u32::try_from(config.interface.mtu).context("mtu out of range")?;
    netlink.set_mtu(index, mtu).await?;
    for address in &config.interface.addresses {
        netlink.add_address(index, *address).await?;
    }
    netlink.set_up(index).await?;
    let allowed: Vec<IpNetwork> = config
        .peers
        .iter()
        .flat_map(|p| p.allowed_ips.iter().copied())
        .collect();
    for prefix in prefixes_needing_routes(&config.interface.addresses, &allowed) {
        netlink.add_route(index, prefix).await?;
        routes.push(prefix);
    }
    Ok(())
}

async fn teardown(netlink: &Netlink, index: u32, routes: &[IpNetwork]) {
    for route in routes {
        if let Err(e) = netlink.del_route(index, *route).await {
            tracing::warn!("removing route {route}: {e}");
        }
    }
    if let Err(e) = netlink.delete_link(index).await {
        tracing::warn!("removing the interface: {e}");
    }
}

/// One socket for both families where the kernel allows it ([::] also receives IPv4).
fn bind_udp(port: u16, config: &Config) -> anyhow::Result<UdpSocket> {
    let any_v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
    let socket = match StdUdpSocket::bind(any_v6) {
        Ok(socket) => socket,
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            StdUdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], port)))
                .map_err(|e| port_error(e, port, config))?
        }
        Err(e) => return Err(port_error(e, port, config)),
    };
    socket.set_nonblocking(true)?;
    Ok(UdpSocket::from_std(socket)?)
}

fn port_error(e: io::Error, port: u16, config: &Config) -> anyhow::Error {
    if e.kind() == io::ErrorKind::AddrInUse {
        anyhow::anyhow!(
            "UDP port {port} is already in use (listen_port in {}); choose another port, or 0 for any free one",
            config.path.display()
        )
    } else {
        anyhow::anyhow!("binding UDP port {port}: {e}")
    }
}

/// IPv4 peers reach a dual-stack socket as ::ffff:a.b.c.d; the core sees plain IPv4.
fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

fn map_v4(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        SocketAddr::V6(_) => addr,
    }
}

fn getrandom_fill(buf: &mut [u8]) -> anyhow::Result<()> {
    use rand_core::RngCore as _;
    rand_core::OsRng
        .try_fill_bytes(buf)
        .map_err(|e| anyhow::anyhow!("reading OS randomness: {e}"))
}
