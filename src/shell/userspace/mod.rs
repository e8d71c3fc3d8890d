//! `dhtun up` in userspace mode (`[interface] mode = "userspace"`): no TUN device, no routes,
//! no capabilities. The overlay's addresses live in a TCP/IP stack inside the daemon (smoltcp),
//! fed by the same core as a TUN interface: what the core would write to the device goes into
//! the stack, and what the stack sends goes to the core as if read from the device. Local
//! programs reach the overlay through `[[forward]]` ports and the SOCKS5 proxy, and overlay
//! peers reach local services through `[[expose]]` ports.
//!
//! One task runs the event loop, as in TUN mode; listeners and SOCKS5 handshakes run in small
//! tasks that hand finished connections over a bounded channel. Memory is the rings of
//! `ring_slots`/`ring_bytes` and the fixed socket buffers of core::limits.

mod datagrams;
mod path;
mod socks5;
mod stack;
mod status;
mod tcp;

pub use status::{Counters, ExposeStatus, ForwardStatus, Socks5Status, UserspaceStatus};

use crate::config::{Config, Protocol};
use crate::core::limits::{
    direct_datagram_bytes, CONTROL_CONNECTIONS, EVENT_LOOP_YIELD_INTERVAL, TIMER_TICK,
    USERSPACE_ACCEPT_QUEUE, USERSPACE_MAX_TCP_SOCKETS,
};
use crate::core::reflexive::Reflector;
use crate::shell::control::{ControlCommand, ControlRequest, ControlServer};
use crate::shell::daemon::{
    getrandom_fill, log_peer_events, new_device, next_lookup, port_error, size_receive_buffer,
    ReflexiveSeen,
};
use crate::shell::datapath::RingSettings;
use crate::shell::dht::DhtStatus;
use crate::shell::discovery::{on_tick, Discovery};
use crate::shell::metrics;
use crate::shell::netlink::Netlink;
use crate::shell::route_plan::PolicyStatus;
use crate::shell::status::{BusyPollStatus, InterfaceStatus, ShellFacts};
use crate::shell::udp::{self, UdpIo};
use anyhow::Context as _;
use datagrams::Udp;
use path::UserPath;
use sd_notify::NotifyState;
use std::time::{Duration, Instant};
use tcp::{Incoming, Origin, Tcp};
use tokio::net::{TcpListener, UdpSocket};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Rounds of (stack poll, sockets pumped, datagrams sent) per event before waiting again: each
/// round may free window space or ring room that the next one uses.
const SETTLE_ROUNDS: usize = 16;

/// Runs the userspace interface `config` describes until asked to stop.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let name = config.interface.name.clone();
    let control = ControlServer::bind(&name)?;
    let port = config.interface.listen_port;
    let socket = udp::bind(port).map_err(|e| port_error(e, port, &config))?;
    let mut udp = UdpIo::new(UdpSocket::from_std(socket)?, config.interface.batch_size);
    if let Some(bytes) = config.interface.receive_buffer_bytes {
        size_receive_buffer(&udp, bytes);
    }
    udp.limit_gso_segment(direct_datagram_bytes(config.interface.mtu));
    let listen_port = udp.local_port();

    let (incoming_tx, incoming) = mpsc::channel(USERSPACE_ACCEPT_QUEUE);
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    let listeners = start_listeners(&config, &incoming_tx, &mut tasks).await;
    if let Err(e) = listeners {
        abort_all(&tasks);
        return Err(e);
    }
    let (commands_tx, commands) = mpsc::channel(CONTROL_CONNECTIONS);
    if let Some(address) = config.interface.metrics_listen {
        match TcpListener::bind(address).await {
            Ok(listener) => tasks.push(metrics::spawn(listener, commands_tx.clone())),
            Err(e) => {
                abort_all(&tasks);
                anyhow::bail!("metrics_listen {address} in {}: {e}", config.path.display());
            }
        }
    }
    let control_task = control.spawn(commands_tx);
    let discovery = if config.dht.enabled {
        // Netlink here only lists the host's addresses for our DHT record: no privilege needed.
        let started = match Netlink::open() {
            Ok(netlink) => {
                Discovery::start(
                    &config.dht,
                    config.interface.secret_key.clone(),
                    listen_port,
                    netlink,
                    0,
                )
                .await
            }
            Err(e) => Err(e.into()),
        };
        match started {
            Ok(discovery) => Some(discovery),
            Err(e) => {
                control_task.abort();
                abort_all(&tasks);
                return Err(e.context("starting the DHT node ([dht] in the config)"));
            }
        }
    } else {
        None
    };
    tracing::info!(
        interface = %name,
        public_key = %config.interface.secret_key.public_key(),
        listen_port,
        peers = config.peers.len(),
        forwards = config.userspace.forwards.len(),
        exposes = config.userspace.exposes.len(),
        socks5 = ?config.userspace.socks5_listen,
        "userspace interface up"
    );
    let _ = sd_notify::notify(&[
        NotifyState::Ready,
        NotifyState::Status(&format!(
            "{name} up (userspace), {} peers",
            config.peers.len()
        )),
    ]);
    let mut config = config;
    let outcome = event_loop(&mut config, udp, commands, incoming, listen_port, discovery).await;
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    control_task.abort();
    abort_all(&tasks);
    tracing::info!(interface = %name, "interface down");
    if let Some(reply) = outcome? {
        let _ = reply.send("stopped\n".into());
    }
    Ok(())
}

/// Binds every TCP forward's port and the SOCKS5 proxy's, each served by a task of its own.
async fn start_listeners(
    config: &Config,
    incoming: &mpsc::Sender<Incoming>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> anyhow::Result<()> {
    for (i, forward) in config.userspace.forwards.iter().enumerate() {
        if forward.protocol != Protocol::Tcp {
            continue;
        }
        let listener = TcpListener::bind(forward.listen).await.with_context(|| {
            format!(
                "[[forward]] listen = \"{}\" in {}",
                forward.listen,
                config.path.display()
            )
        })?;
        tasks.push(spawn_forward(listener, forward.to, i, incoming.clone()));
    }
    if let Some(address) = config.userspace.socks5_listen {
        let listener = TcpListener::bind(address).await.with_context(|| {
            format!("socks5_listen = \"{address}\" in {}", config.path.display())
        })?;
        tasks.push(socks5::spawn(listener, incoming.clone()));
    }
    Ok(())
}

/// Accepts a forward's local connections and hands them to the event loop; when its queue is
/// full the connection is reset at once.
fn spawn_forward(
    listener: TcpListener,
    to: std::net::SocketAddr,
    index: usize,
    incoming: mpsc::Sender<Incoming>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            if let Err(e) = incoming.try_send(Incoming {
                stream,
                to,
                origin: Origin::Forward(index),
            }) {
                let Incoming { stream, .. } = e.into_inner();
                tcp::reset_on_close(&stream);
            }
        }
    })
}

fn abort_all(tasks: &[JoinHandle<()>]) {
    for task in tasks {
        task.abort();
    }
}

/// What woke the event loop; the work happens after the select!.
enum Event {
    Stop,
    Hangup,
    Command(ControlCommand),
    Tick,
    UdpReadable,
    UdpWritable,
    Incoming(Incoming),
    Dialled(tcp::Dialled),
    Local,
    StackTimer,
    Lookup(crate::shell::discovery::Lookup),
}

async fn event_loop(
    config: &mut Config,
    mut udp: UdpIo,
    mut commands: mpsc::Receiver<ControlCommand>,
    mut incoming: mpsc::Receiver<Incoming>,
    listen_port: u16,
    mut discovery: Option<Discovery>,
) -> anyhow::Result<Option<oneshot::Sender<String>>> {
    let mut seed = [0u8; 8];
    getrandom_fill(&mut seed)?;
    let mut path = UserPath::new(
        new_device(config)?,
        config.interface.mtu,
        RingSettings {
            slots: config.interface.ring_slots,
            bytes: config.interface.ring_bytes,
            max_delay: config.interface.ring_max_delay,
        },
        &config.interface.addresses,
        u64::from_le_bytes(seed),
    );
    if let Some(discovery) = &discovery {
        let mut seed = [0u8; 32];
        getrandom_fill(&mut seed)?;
        path.reflector = Some(Reflector::new(&discovery.reflectors(), seed, path.now()));
    }
    let tcp_exposes: Vec<_> = config
        .userspace
        .exposes
        .iter()
        .enumerate()
        .filter(|(_, e)| e.protocol == Protocol::Tcp)
        .map(|(i, e)| (i, e.port, e.to))
        .collect();
    let (mut tcp, mut dialled) = Tcp::new(
        config.userspace.forwards.len(),
        config.userspace.exposes.len(),
        &tcp_exposes,
    );
    tcp.serve_exposes(&mut path.stack.sockets);
    let mut datagrams = Udp::start(
        &config.userspace.forwards,
        &config.userspace.exposes,
        &mut path.stack.sockets,
    )
    .await
    .with_context(|| format!("in {}", config.path.display()))?;
    let mut reflexive = ReflexiveSeen::default();
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut network_blocked = false;
    let mut busy_since: Option<Instant> = None;
    loop {
        let network_backlog = path.has_network_backlog();
        // While the socket is full, its writability wakes us; the stack's own deadline then
        // could only find the ring still full.
        let stack_delay = if network_blocked {
            None
        } else {
            let now = path.now();
            path.stack.poll_delay(now)
        };
        let event = tokio::select! {
            _ = sigint.recv() => Event::Stop,
            _ = sigterm.recv() => Event::Stop,
            _ = sighup.recv() => Event::Hangup,
            Some(command) = commands.recv() => Event::Command(command),
            _ = tick.tick() => Event::Tick,
            ready = udp.readable() => { ready?; Event::UdpReadable }
            ready = udp.writable(), if network_backlog => { ready?; Event::UdpWritable }
            Some(connection) = incoming.recv() => Event::Incoming(connection),
            Some(done) = dialled.recv() => Event::Dialled(done),
            _ = tcp.local_ready() => Event::Local,
            _ = datagrams.local_ready() => Event::Local,
            _ = sleep_for(stack_delay) => Event::StackTimer,
            Some(lookup) = next_lookup(&mut discovery) => Event::Lookup(lookup),
        };
        let mut more_waiting = false;
        match event {
            Event::Stop => return Ok(None),
            Event::Hangup => match reload(config, &mut path) {
                Ok(done) => tracing::info!("SIGHUP: {done}"),
                Err(e) => tracing::warn!("SIGHUP: reload refused, running config kept: {e:#}"),
            },
            Event::Command(command) => match command.request {
                ControlRequest::Status => {
                    let dht = discovery.as_ref().map(Discovery::status);
                    let status = status_json(&path, &tcp, config, listen_port, dht);
                    let _ = command.reply.send(status);
                }
                ControlRequest::Down => return Ok(Some(command.reply)),
                ControlRequest::Reload => {
                    let answer = match reload(config, &mut path) {
                        Ok(done) => {
                            tracing::info!("{done}");
                            format!("{done}\n")
                        }
                        Err(e) => {
                            tracing::warn!("reload refused, running config kept: {e:#}");
                            format!("error: {}\n", format!("{e:#}").replace('\n', " "))
                        }
                    };
                    let _ = command.reply.send(answer);
                }
            },
            Event::Tick => {
                let now = path.now();
                on_tick(
                    &mut path.device,
                    path.reflector.as_mut(),
                    discovery.as_mut(),
                    now,
                );
                path.drain_reflector();
            }
            Event::Lookup(lookup) => {
                if let Some(discovery) = discovery.as_mut() {
                    let now = path.now();
                    discovery.apply(&mut path.device, lookup, now);
                }
            }
            Event::UdpReadable => more_waiting = path.read_udp(&mut udp),
            Event::Incoming(connection) => {
                // A burst of clients is taken in one turn, so the short queue does not overflow.
                let mut next = Some(connection);
                while let Some(connection) = next {
                    tcp.open(connection, &mut path.stack.iface, &mut path.stack.sockets);
                    next = incoming.try_recv().ok();
                }
            }
            Event::Dialled(done) => tcp.dialled(done, &mut path.stack.sockets),
            // Local readiness comes from tokio's cache, which only a yield refreshes.
            Event::Local => more_waiting = true,
            Event::UdpWritable | Event::StackTimer => {}
        }
        log_peer_events(&mut path.device);
        if reflexive.update(path.reflector.as_ref(), discovery.as_ref()) {
            let now = path.now();
            path.device.underlay_changed(now);
        }
        path.drain_transmits();
        network_blocked = path.flush_network(&mut udp);
        for _ in 0..SETTLE_ROUNDS {
            let changed = path.poll_stack();
            tcp.serve_exposes(&mut path.stack.sockets);
            let now = path.now();
            let moved = tcp.pump(&mut path.stack.sockets)
                | datagrams.pump(
                    &mut path.stack.sockets,
                    now,
                    &mut tcp.forward_stats,
                    &mut tcp.expose_stats,
                );
            network_blocked = path.flush_network(&mut udp);
            if network_blocked || !(changed || moved) {
                break;
            }
        }
        // As in TUN mode: a run of turns on cached readiness must let tokio poll epoll.
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

/// Sleeps `delay`, or for ever when there is none.
async fn sleep_for(delay: Option<Duration>) {
    match delay {
        Some(delay) => tokio::time::sleep(delay).await,
        None => std::future::pending().await,
    }
}

/// Re-reads the config: peers change at once; what the stack and its listeners were built from
/// needs a restart.
fn reload(config: &mut Config, path: &mut UserPath) -> anyhow::Result<String> {
    let new = Config::load(&config.path)?;
    let same = new.interface.mode == config.interface.mode
        && new.interface.addresses == config.interface.addresses
        && new.interface.listen_port == config.interface.listen_port
        && new.interface.mtu == config.interface.mtu
        && new.userspace == config.userspace;
    if !same {
        anyhow::bail!(
            "{}: changing mode, address, listen_port, mtu, socks5_listen, [[forward]] or \
             [[expose]] needs a restart in userspace mode (dhtun down, then up); nothing was \
             changed",
            config.path.display()
        );
    }
    let summary = path.device.reconfigure(new.peers.clone());
    path.device.set_serve_relay(new.interface.relay);
    path.device.set_pacing(new.interface.pacing);
    *config = new;
    Ok(format!(
        "reloaded {}: {} peers added, {} removed, {} changed, {} unchanged",
        config.path.display(),
        summary.added,
        summary.removed,
        summary.changed,
        summary.unchanged
    ))
}

fn status_json(
    path: &UserPath,
    tcp: &Tcp,
    config: &Config,
    listen_port: u16,
    dht: Option<DhtStatus>,
) -> String {
    let reflector = path.reflector.as_ref();
    let [net, inbound] = path.ring_occupancy();
    let mut status = InterfaceStatus::snapshot(
        &path.device,
        ShellFacts {
            interface: &config.interface.name,
            listen_port,
            addresses: &config.interface.addresses,
            mtu: config.interface.mtu,
            rings: [("stack_to_udp", net), ("udp_to_stack", inbound)],
            dht,
            reflexive_address: reflector.and_then(Reflector::address),
            reflexive_port_varies: reflector.is_some_and(Reflector::port_varies),
            busy_poll: BusyPollStatus::default(),
            // No routes: the overlay lives inside the daemon.
            routing: PolicyStatus {
                table: None,
                fwmark: None,
                full_tunnel: false,
                rule_priority: None,
            },
        },
        path.now(),
    );
    status.mode = config.interface.mode.as_str().to_string();
    status.userspace = Some(UserspaceStatus::new(
        &config.userspace,
        &tcp.forward_stats,
        &tcp.expose_stats,
        tcp.socks_stats,
        tcp.sockets(),
        USERSPACE_MAX_TCP_SOCKETS,
    ));
    serde_json::to_string_pretty(&status).unwrap_or_else(|e| format!("error: {e}")) + "\n"
}
/// The port after `last` in `range` (wrapping) that `in_use` does not claim; the last one
/// tried when every port is taken.
fn next_free_port(
    last: u16,
    range: std::ops::RangeInclusive<u16>,
    in_use: impl Fn(u16) -> bool,
) -> u16 {
    let mut port = last;
    for _ in 0..range.len() {
        port = if port >= *range.end() {
            *range.start()
        } else {
            port + 1
        };
        if !in_use(port) {
            break;
        }
    }
    port
}
