//! `dhtun up`: brings the interface up, runs the event loop that moves packets between the TUN
//! device, the packet rings, the core and the UDP socket, and tears everything down on
//! SIGINT/SIGTERM or `dhtun down`.
//!
//! The loop makes no protocol decisions: it reads, asks the core, and writes. Each ring sits in
//! front of a write that can block; when one is full, the newest packet is dropped and counted
//! before any crypto is spent on it.

use crate::config::{Config, ConfigError, Mode};
use crate::core::device::{Device, DeviceConfig, PeerEvent};
use crate::core::limits::{EVENT_LOOP_YIELD_INTERVAL, TIMER_TICK};
use crate::core::reflexive::Reflector;
use crate::shell::config_read::{Asker, ConfigReader};
use crate::shell::control::{ControlCommand, ControlRequest, ControlServer};
use crate::shell::datapath::{DataPath, RingSettings, TunRead};
use crate::shell::dht::DhtStatus;
use crate::shell::discovery::{on_tick, Discovery, Lookup};
use crate::shell::linkwatch::{next_came_up, LinkWatch};
use crate::shell::metrics;
use crate::shell::netlink::Netlink;
use crate::shell::privileges;
use crate::shell::reload::{apply_wanted, reload, restore, Link};
use crate::shell::route_plan::{self, DhtExemption, Policy, PolicyStatus, MAIN_TABLE};
use crate::shell::status::{BusyPollStatus, InterfaceStatus, ShellFacts};
use crate::shell::timer::PreciseTimer;
use crate::shell::tun::TunDevice;
use crate::shell::udp::{self, ReceiveMode, UdpIo};
use anyhow::Context as _;
use futures::StreamExt as _;
use sd_notify::NotifyState;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::unix::AsyncFdReadyGuard;
use tokio::net::{TcpListener, UdpSocket};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};

/// Runs the interface `config` describes until asked to stop; returns after cleaning up.
pub async fn run(config: Config) -> anyhow::Result<()> {
    if config.interface.mode == Mode::Userspace {
        return crate::shell::userspace::run(config).await;
    }
    let name = config.interface.name.clone();
    // A daemon already running for this interface is the likelier mistake: say that first.
    let control = ControlServer::bind(&name)?;
    let netlink = Netlink::open()?;
    if netlink.link_index(&name).await?.is_some() {
        anyhow::bail!(
            "interface {name} already exists; pick another [interface] name in {} or remove that interface",
            config.path.display()
        );
    }
    // A daemon that was killed left its policy rules behind (its routes went with its link).
    match route_plan::remove_stale_rules(&netlink).await {
        Ok(0) => {}
        Ok(n) => tracing::info!("removed {n} routing rules left by a dhtun daemon that is gone"),
        Err(e) => tracing::warn!("looking for routing rules a dead dhtun daemon left: {e:#}"),
    }
    let port = config.interface.listen_port;
    let socket = udp::bind(port).map_err(|e| port_error(e, port, &config))?;
    let policy = Policy::new(
        config.interface.table,
        config.interface.fwmark,
        socket.try_clone()?,
        config.dht.enabled,
    )
    .with_context(|| format!("fwmark in {}", config.path.display()))?;
    let mut udp = UdpIo::new(UdpSocket::from_std(socket)?, config.interface.batch_size);
    if let Some(bytes) = config.interface.receive_buffer_bytes {
        size_receive_buffer(&udp, bytes);
    }
    udp.limit_gso_segment(crate::core::limits::direct_datagram_bytes(
        config.interface.mtu,
    ));
    let listen_port = udp.local_port();
    let tun = TunDevice::create(&name)?;
    let index = netlink
        .link_index(&name)
        .await?
        .with_context(|| format!("interface {name} vanished right after it was created"))?;
    let mut link = Link {
        netlink,
        index,
        routes: Vec::new(),
        rules: Vec::new(),
        policy,
    };
    if let Err(e) = configure_link(&mut link, &config).await {
        teardown(&link).await;
        return Err(e);
    }
    tracing::info!(
        interface = %name,
        public_key = %config.interface.secret_key.public_key(),
        listen_port,
        peers = config.peers.len(),
        "interface up"
    );

    let (commands_tx, commands) = mpsc::channel(crate::core::limits::CONTROL_CONNECTIONS);
    let metrics_task = match config.interface.metrics_listen {
        Some(address) => match TcpListener::bind(address).await {
            Ok(listener) => {
                let marked = std::os::fd::AsFd::as_fd(&listener)
                    .try_clone_to_owned()
                    .and_then(|fd| link.policy.mark_also(fd));
                if let Err(e) = marked {
                    tracing::warn!("metrics_listen {address}: cannot mark its socket: {e}");
                }
                Some(metrics::spawn(listener, commands_tx.clone()))
            }
            Err(e) => {
                teardown(&link).await;
                anyhow::bail!("metrics_listen {address} in {}: {e}", config.path.display());
            }
        },
        None => None,
    };
    tracing::info!(tun_offloads = ?tun.offloads(), udp_gso = udp.gso_enabled(), "data path ready");
    // Before the DHT node starts its thread: a dropped capability stays with threads that
    // were already running.
    let dht_low_port = config.dht.enabled && (1..1024).contains(&config.dht.port);
    match privileges::keep_only_net_admin(dht_low_port) {
        Ok(true) => tracing::debug!("dropped every capability but CAP_NET_ADMIN"),
        Ok(false) => tracing::debug!("running without CAP_NET_ADMIN: reloads cannot change routes"),
        Err(e) => tracing::warn!("could not drop privileges: {e}"),
    }
    // After the drop: its thread keeps only what the daemon keeps.
    let control_task = control.spawn(commands_tx);
    let discovery = if config.dht.enabled {
        let secret = config.interface.secret_key.clone();
        match Discovery::start(
            &config.dht,
            secret,
            listen_port,
            link.netlink.clone(),
            index,
        )
        .await
        {
            Ok(discovery) => {
                // Now that the DHT socket's port is known, a full tunnel's IPv4 rules can go in.
                link.policy.dht = DhtExemption::Port(discovery.dht_port());
                if let Err(e) = apply_wanted(&mut link, &config).await {
                    control_task.abort();
                    teardown(&link).await;
                    return Err(e);
                }
                Some(discovery)
            }
            Err(e) => {
                control_task.abort();
                teardown(&link).await;
                return Err(e.context("starting the DHT node ([dht] in the config)"));
            }
        }
    } else {
        None
    };
    // systemd (Type=notify) learns that the interface, its addresses and routes are up.
    let _ = sd_notify::notify(&[
        NotifyState::Ready,
        NotifyState::Status(&format!("{name} up, {} peers", config.peers.len())),
    ]);
    let mut config = config;
    let outcome = event_loop(
        &mut config,
        &mut link,
        &tun,
        udp,
        commands,
        listen_port,
        discovery,
    )
    .await;
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    control_task.abort();
    if let Some(task) = metrics_task {
        task.abort();
    }
    teardown(&link).await;
    drop(tun);
    tracing::info!(interface = %name, "interface down");
    let reply = outcome?;
    if let Some(reply) = reply {
        let _ = reply.send("stopped\n".into());
    }
    Ok(())
}

/// What woke the event loop. The select! only waits; the work happens after it, where the
/// loop may borrow the sockets mutably.
enum Event<'a> {
    Stop,
    Hangup,
    Command(ControlCommand),
    Tick,
    TunReadable(AsyncFdReadyGuard<'a, tun::Device>),
    TunWritable(AsyncFdReadyGuard<'a, tun::Device>),
    UdpReadable,
    UdpWritable,
    PauseOver,
    Lookup(Lookup),
    /// A config read for a reload ended (see shell::config_read).
    ConfigRead(Box<(Result<Config, ConfigError>, Asker)>),
    LinkUp,
}

async fn event_loop(
    config: &mut Config,
    link: &mut Link,
    tun: &TunDevice,
    mut udp: UdpIo,
    mut commands: mpsc::Receiver<ControlCommand>,
    listen_port: u16,
    mut discovery: Option<Discovery>,
) -> anyhow::Result<Option<oneshot::Sender<String>>> {
    let mut path = DataPath::new(
        new_device(config)?,
        config.interface.mtu,
        RingSettings {
            slots: config.interface.ring_slots,
            bytes: config.interface.ring_bytes,
            max_delay: config.interface.ring_max_delay,
        },
        tun.offloads(),
    );
    if let Some(discovery) = &discovery {
        let mut seed = [0u8; 32];
        getrandom_fill(&mut seed)?;
        path.reflector = Some(Reflector::new(&discovery.reflectors(), seed, path.now()));
    }
    let mut reflexive = ReflexiveSeen::default();
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let pause_timer = PreciseTimer::new().context("creating the pacing timer (timerfd)")?;
    let mut link_checked_at = Instant::now();
    let mut link_watch = LinkWatch::start(link.index)
        .inspect_err(|e| tracing::warn!("not watching the interface for down and up: {e}"))
        .ok();
    // Since when the loop has handled one event after another with more still waiting.
    let mut busy_since: Option<Instant> = None;
    let mut config_reader = ConfigReader::default();
    loop {
        let mut more_waiting = false;
        let network_backlog = path.has_network_backlog();
        let tun_backlog = path.has_tun_backlog();
        let accepted_before = path.accepted();
        let tun_paused = path.tun_paused_until();
        if let Some(deadline) = tun_paused {
            pause_timer.arm(deadline)?;
        }
        let event = tokio::select! {
            _ = sigint.recv() => Event::Stop,
            _ = sigterm.recv() => Event::Stop,
            _ = sighup.recv() => Event::Hangup,
            Some(command) = commands.recv() => Event::Command(command),
            _ = tick.tick() => Event::Tick,
            ready = tun.readable(), if tun_paused.is_none() => Event::TunReadable(ready?),
            done = pause_timer.expired(), if tun_paused.is_some() => { done?; Event::PauseOver }
            ready = udp.readable() => { ready?; Event::UdpReadable }
            ready = udp.writable(), if network_backlog => { ready?; Event::UdpWritable }
            ready = tun.writable(), if tun_backlog => Event::TunWritable(ready?),
            Some(lookup) = next_lookup(&mut discovery) => Event::Lookup(lookup),
            read = config_reader.finished() => Event::ConfigRead(Box::new(read)),
            Some(()) = next_came_up(&mut link_watch) => Event::LinkUp,
        };
        match event {
            Event::Stop => return Ok(None),
            // The files are read on a thread; the reload is applied when that read ends.
            Event::Hangup => {
                if let Err((asker, e)) = config_reader.start(&config.path, Asker::Signal) {
                    answer_reload(asker, Err(anyhow::anyhow!(e)));
                }
            }
            Event::ConfigRead(read) => {
                let (read, asker) = *read;
                let outcome = reload(config, link, &mut path.device, read).await;
                answer_reload(asker, outcome);
            }
            Event::Command(command) => match command.request {
                ControlRequest::Status => {
                    let dht = discovery.as_ref().map(Discovery::status);
                    let routing = link.policy.status(!link.rules.is_empty());
                    let json = status_json(&path, config, listen_port, dht, routing);
                    let _ = command.reply.send(json);
                }
                ControlRequest::Down => return Ok(Some(command.reply)),
                ControlRequest::Reload => {
                    let asker = Asker::Control(command.reply);
                    if let Err((asker, e)) = config_reader.start(&config.path, asker) {
                        answer_reload(asker, Err(anyhow::anyhow!(e)));
                    }
                }
            },
            Event::Tick => {
                // A deleted interface says nothing on the TUN descriptor that wakes us, so look:
                // without this the daemon would run on with no tunnel, and a service manager
                // would never restart it.
                if link_checked_at.elapsed() >= LINK_CHECK_INTERVAL {
                    link_checked_at = Instant::now();
                    if !link_exists(link.index) {
                        anyhow::bail!(
                            "interface {} was deleted by someone else; stopping",
                            config.interface.name
                        );
                    }
                }
                let now = path.now();
                on_tick(
                    &mut path.device,
                    path.reflector.as_mut(),
                    discovery.as_mut(),
                    now,
                );
                path.drain_reflector();
            }
            Event::LinkUp => match restore(config, link).await {
                Ok(made) => {
                    tracing::info!("interface came back up: restored {made} addresses and routes")
                }
                Err(e) => tracing::warn!(
                    "interface came back up; restoring its addresses and routes failed: {e:#}"
                ),
            },
            Event::Lookup(lookup) => {
                if let Some(discovery) = discovery.as_mut() {
                    let now = path.now();
                    discovery.apply(&mut path.device, lookup, now);
                }
            }
            Event::TunReadable(mut guard) => {
                match path.read_tun(tun, &mut udp) {
                    TunRead::Dry | TunRead::Failed => guard.clear_ready(),
                    // Packets may still wait: the device stays readable for the next turn.
                    TunRead::BatchEnded => more_waiting = true,
                    TunRead::Paused => {}
                }
            }
            Event::TunWritable(mut guard) => {
                if path.flush_tun(tun) {
                    guard.clear_ready();
                }
            }
            Event::UdpReadable => {
                more_waiting = path.read_udp(&mut udp, tun, ReceiveMode::WhenReady);
            }
            Event::UdpWritable | Event::PauseOver => {}
        }
        log_peer_events(&mut path.device);
        if reflexive.update(path.reflector.as_ref(), discovery.as_ref()) {
            // The NAT in front of us changed its mapping (or we moved behind another one).
            let now = path.now();
            path.device.underlay_changed(now);
        }
        path.drain_transmits();
        path.flush_network(&mut udp);
        if path.has_tun_backlog() {
            path.flush_tun(tun);
        }
        // Read after reload, which may change it.
        let busy_poll = config.interface.busy_poll;
        let woken_by = path.accepted().woken_by(accepted_before);
        if let Some(woken_by) = woken_by.filter(|_| !busy_poll.is_zero()) {
            path.busy_poll(tun, &mut udp, busy_poll, woken_by);
        }
        // A device or socket that stays readable (a flood, a TCP stream) answers the select! at
        // once, from readiness tokio cached, so the loop would never let tokio poll epoll: the
        // other side's new readiness, timers and the control socket would wait until it ran
        // dry. Measured: loss reports and ping replies sat unread for seconds under a flood. A
        // loop that waited in between has had epoll polled, so only a run of such turns yields.
        if more_waiting {
            let since = *busy_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= EVENT_LOOP_YIELD_INTERVAL {
                tokio::task::yield_now().await;
                busy_since = None;
            }
        } else {
            busy_since = None;
        }
    }
}

/// Logs how a reload went and tells whoever asked for it.
fn answer_reload(asker: Asker, outcome: anyhow::Result<String>) {
    let source = match asker {
        Asker::Signal => "SIGHUP: ",
        Asker::Control(_) => "",
    };
    let answer = match outcome {
        Ok(done) => {
            tracing::info!("{source}{done}");
            format!("{done}\n")
        }
        Err(e) => {
            tracing::warn!("{source}reload refused, running config kept: {e:#}");
            format!("error: {}\n", format!("{e:#}").replace('\n', " "))
        }
    };
    if let Asker::Control(reply) = asker {
        let _ = reply.send(answer);
    }
}

/// Applies `receive_buffer_bytes`. A smaller buffer than asked still works, so a refusal is a
/// warning, not a reason to stay down.
pub(crate) fn size_receive_buffer(udp: &UdpIo, bytes: usize) {
    match udp.set_receive_buffer(bytes) {
        // The kernel reports twice the size asked for: half is its bookkeeping.
        Ok(granted) if granted / 2 < bytes => tracing::warn!(
            "receive_buffer_bytes = {bytes}: the kernel granted {} (SO_RCVBUFFORCE was refused, \
             so net.core.rmem_max caps it; raise that sysctl)",
            granted / 2
        ),
        Ok(granted) => tracing::info!("tunnel socket receive buffer: {} bytes", granted / 2),
        Err(e) => {
            tracing::warn!("receive_buffer_bytes = {bytes}: {e}; the buffer's size is unknown")
        }
    }
}

pub(crate) fn new_device(config: &Config) -> anyhow::Result<Device> {
    let mut rng_seed = [0u8; 32];
    getrandom_fill(&mut rng_seed)?;
    let wall_clock_at_zero = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?;
    Ok(Device::new(DeviceConfig {
        secret_key: config.interface.secret_key.clone(),
        mtu: config.interface.mtu,
        peers: config.peers.clone(),
        wall_clock_at_zero,
        rng_seed,
        serve_relay: config.interface.relay,
        pacing: config.interface.pacing,
    }))
}

/// Peer state changes, at info: the operator's view of handshakes and roaming.
pub(crate) fn log_peer_events(device: &mut Device) {
    while let Some(event) = device.poll_event() {
        match event {
            PeerEvent::HandshakeCompleted { peer } => tracing::info!(%peer, "handshake completed"),
            PeerEvent::EndpointChanged { peer, endpoint } => {
                tracing::info!(%peer, %endpoint, "endpoint changed")
            }
            PeerEvent::HandshakeGaveUp { peer } => {
                tracing::info!(%peer, "no answer to handshakes for 90 s; staged packets dropped")
            }
            PeerEvent::SessionExpired { peer } => tracing::info!(%peer, "session expired"),
            PeerEvent::Relayed { peer, relay } => tracing::info!(
                %peer,
                %relay,
                "no direct path answers; reaching the peer through a relay (direct tried every {} s)",
                crate::core::limits::DIRECT_RETRY_INTERVAL.as_secs()
            ),
        }
    }
}

/// The tunnel socket's reflexive address as last seen, so a change is logged and published once.
#[derive(Default)]
pub(crate) struct ReflexiveSeen {
    address: Option<SocketAddr>,
    port_varies: bool,
}

impl ReflexiveSeen {
    /// Takes in the reflector's view; true when a known address changed to another one.
    pub(crate) fn update(
        &mut self,
        reflector: Option<&Reflector>,
        discovery: Option<&Discovery>,
    ) -> bool {
        let Some(reflector) = reflector else {
            return false;
        };
        let mut moved = false;
        let (address, port_varies) = (reflector.address(), reflector.port_varies());
        if address != self.address {
            match address {
                Some(address) => tracing::info!(%address, "reflexive address of the tunnel socket"),
                None => {
                    tracing::info!("reflexive address forgotten: not confirmed by enough DHT nodes")
                }
            }
            if let Some(discovery) = discovery {
                discovery.set_reflexive(address);
            }
            moved = self.address.is_some() && address.is_some();
            self.address = address;
        }
        if port_varies != self.port_varies {
            if port_varies {
                tracing::info!(
                    "DHT nodes see the tunnel socket at different ports: the NAT maps per \
                     destination, so a direct path from peers is unlikely"
                );
            }
            self.port_varies = port_varies;
        }
        moved
    }
}

/// The next finished DHT lookup; never, when discovery is off.
pub(crate) async fn next_lookup(discovery: &mut Option<Discovery>) -> Option<Lookup> {
    match discovery {
        Some(discovery) => discovery.next_result().await,
        None => std::future::pending().await,
    }
}

fn status_json(
    path: &DataPath,
    config: &Config,
    listen_port: u16,
    dht: Option<DhtStatus>,
    routing: PolicyStatus,
) -> String {
    let reflector = path.reflector.as_ref();
    let [net, tun] = path.ring_occupancy();
    let status = InterfaceStatus::snapshot(
        &path.device,
        ShellFacts {
            interface: &config.interface.name,
            listen_port,
            addresses: &config.interface.addresses,
            mtu: config.interface.mtu,
            rings: [("tun_to_udp", net), ("udp_to_tun", tun)],
            dht,
            reflexive_address: reflector.and_then(Reflector::address),
            reflexive_port_varies: reflector.is_some_and(Reflector::port_varies),
            busy_poll: BusyPollStatus {
                window_us: u64::try_from(config.interface.busy_poll.as_micros())
                    .unwrap_or(u64::MAX),
                counts: path.busy_poll_stats,
            },
            routing,
        },
        path.now(),
    );
    // Compact: the client parses it and prints it (pretty with --json); at 65,536 allowed_ips
    // the indentation alone would be a third of the bytes.
    serde_json::to_string(&status).unwrap_or_else(|e| format!("error: {e}")) + "\n"
}

/// MTU, addresses, up, then routes and rules: the kernel refuses routes on a link that is down,
/// and IPv6 addresses on a link whose MTU is below 1280.
async fn configure_link(link: &mut Link, config: &Config) -> anyhow::Result<()> {
    let (netlink, index) = (&link.netlink, link.index);
    let mtu = u32::try_from(config.interface.mtu).context("mtu out of range")?;
    netlink.set_mtu(index, mtu).await?;
    for address in &config.interface.addresses {
        netlink.add_address(index, *address).await?;
    }
    netlink.set_up(index).await?;
    apply_wanted(link, config).await
}

/// How often the event loop checks that its interface still exists.
const LINK_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Whether the interface with `index` still exists; an error other than "no such interface"
/// counts as yes, so a passing shortage of descriptors cannot stop the daemon.
fn link_exists(index: u32) -> bool {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as if_indextoname requires.
    let found = unsafe { libc::if_indextoname(index, name.as_mut_ptr()) };
    !found.is_null() || io::Error::last_os_error().raw_os_error() != Some(libc::ENXIO)
}

async fn teardown(link: &Link) {
    let (netlink, index) = (&link.netlink, link.index);
    // Rules first, so that no packet is steered to a table that is being emptied.
    for rule in link.rules.iter().rev() {
        if let Err(e) = netlink.del_rule(rule).await {
            tracing::warn!("{e}");
        }
    }
    // The kernel removes every route through a link with the link, in one request, whatever
    // its table; removing 65,536 routes one by one first kept `down` busy for seconds.
    match netlink.delete_link(index).await {
        Ok(()) => return,
        Err(e) => tracing::warn!("removing the interface: {e}"),
    }
    let removed = futures::stream::iter(&link.routes).map(|&route| async move {
        let result = match route.table {
            MAIN_TABLE => netlink.del_route(index, route.dest).await,
            _ => netlink.del_table_route(index, route).await,
        };
        (route, result)
    });
    for (route, result) in crate::shell::reload::in_flight(removed).await {
        if let Err(e) = result {
            tracing::warn!("removing route {} (table {}): {e}", route.dest, route.table);
        }
    }
}

pub(crate) fn port_error(e: io::Error, port: u16, config: &Config) -> anyhow::Error {
    if e.kind() == io::ErrorKind::AddrInUse {
        anyhow::anyhow!(
            "UDP port {port} is already in use (listen_port in {}); choose another port, or 0 for any free one",
            config.path.display()
        )
    } else {
        anyhow::anyhow!("binding UDP port {port}: {e}")
    }
}

pub(crate) fn getrandom_fill(buf: &mut [u8]) -> anyhow::Result<()> {
    use rand_core::RngCore as _;
    rand_core::OsRng
        .try_fill_bytes(buf)
        .map_err(|e| anyhow::anyhow!("reading OS randomness: {e}"))
}
