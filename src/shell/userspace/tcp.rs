//! TCP through the in-daemon stack: each connection pairs a local socket (accepted by a forward
//! or the SOCKS5 proxy, or dialled for an expose) with a smoltcp socket on the overlay.
//!
//! Bytes move between the two without a buffer of ours in between: what smoltcp received is
//! written to the local socket straight from smoltcp's receive buffer, and the local socket is
//! read straight into smoltcp's send buffer. When the local reader is slow, smoltcp's receive
//! buffer stays full and its window closes, which slows the remote sender; when the overlay is
//! slow, the send buffer stays full and the local socket is not read, so the kernel's window
//! slows the local sender. Memory is the fixed buffers of at most USERSPACE_MAX_TCP_SOCKETS
//! sockets (see core::limits).

use super::socks5;
use super::status::Counters;
use crate::core::limits::{
    EXPOSE_BACKLOG, EXPOSE_CONNECT_TIMEOUT, USERSPACE_MAX_TCP_SOCKETS, USERSPACE_TCP_BUFFER_BYTES,
    USERSPACE_TCP_TIMEOUT,
};
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, CongestionControl, RecvError, State};
use smoltcp::wire::{IpAddress, IpEndpoint};
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::task::Poll;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Which entry a connection belongs to, for its counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Forward(usize),
    Expose(usize),
    Socks,
}

/// A local connection for the overlay, from a forward's listener or a finished SOCKS5
/// handshake.
pub(crate) struct Incoming {
    pub stream: TcpStream,
    pub to: SocketAddr,
    pub origin: Origin,
}

/// An expose's dial of its local service, finished.
pub(crate) struct Dialled {
    id: u64,
    result: io::Result<TcpStream>,
}

pub(crate) struct Tcp {
    conns: Vec<Conn>,
    /// Per exposed TCP port: its port and its listening sockets.
    listeners: Vec<(u16, Vec<SocketHandle>)>,
    /// Where each expose's connections go (indexed like `listeners`' entries' expose index).
    expose_targets: Vec<SocketAddr>,
    expose_indices: Vec<usize>,
    pub forward_stats: Vec<Counters>,
    pub expose_stats: Vec<Counters>,
    pub socks_stats: Counters,
    dialled_tx: mpsc::Sender<Dialled>,
    next_id: u64,
    next_port: u16,
}

struct Conn {
    id: u64,
    handle: SocketHandle,
    origin: Origin,
    local: Local,
    /// The local side sent its FIN, passed on as ours.
    local_eof: bool,
    /// The overlay side's FIN was passed on to the local socket.
    overlay_eof: bool,
    /// A SOCKS5 client waits for the CONNECT answer.
    socks_reply: bool,
    /// The overlay side reached ESTABLISHED once.
    established: bool,
    want_read: bool,
    want_write: bool,
}

enum Local {
    /// An expose's local service is being dialled.
    Dialling,
    Ready(TcpStream),
}

/// What one pass over a connection found.
enum Step {
    Open {
        moved: bool,
    },
    /// Ended; `refused` when the overlay side never got established (reset or timed out).
    Finished {
        refused: bool,
    },
}

const EPHEMERAL_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;

impl Tcp {
    /// One entry of counters per forward and expose; listeners for the TCP exposes given as
    /// (expose index, port, local target). The receiver brings the exposes' finished dials,
    /// for `dialled`.
    pub fn new(
        forwards: usize,
        exposes: usize,
        tcp_exposes: &[(usize, u16, SocketAddr)],
    ) -> (Self, mpsc::Receiver<Dialled>) {
        // One dial per connection at most, so this never fills.
        let (dialled_tx, dialled) = mpsc::channel(USERSPACE_MAX_TCP_SOCKETS);
        let tcp = Self {
            conns: Vec::with_capacity(USERSPACE_MAX_TCP_SOCKETS),
            listeners: tcp_exposes
                .iter()
                .map(|&(_, port, _)| (port, Vec::new()))
                .collect(),
            expose_targets: tcp_exposes.iter().map(|&(_, _, to)| to).collect(),
            expose_indices: tcp_exposes.iter().map(|&(i, _, _)| i).collect(),
            forward_stats: vec![Counters::default(); forwards],
            expose_stats: vec![Counters::default(); exposes],
            socks_stats: Counters::default(),
            dialled_tx,
            next_id: 0,
            next_port: *EPHEMERAL_PORTS.start(),
        };
        (tcp, dialled)
    }

    /// TCP sockets in the stack now: connections and listeners.
    pub fn sockets(&self) -> usize {
        self.conns.len() + self.listeners.iter().map(|(_, l)| l.len()).sum::<usize>()
    }

    /// Opens the overlay side of a local connection, or refuses it when the cap is reached
    /// or the destination cannot be addressed.
    pub fn open(&mut self, incoming: Incoming, iface: &mut Interface, sockets: &mut SocketSet) {
        let Incoming { stream, to, origin } = incoming;
        let socks = origin == Origin::Socks;
        if self.sockets() >= USERSPACE_MAX_TCP_SOCKETS {
            self.stats(origin).refused += 1;
            tracing::debug!(%to, "userspace connection refused: {USERSPACE_MAX_TCP_SOCKETS} TCP sockets in use");
            refuse(stream, socks, socks5::REPLY_GENERAL_FAILURE);
            return;
        }
        let mut socket = new_socket();
        let local_port = self.ephemeral_port(sockets);
        let remote = IpEndpoint::new(IpAddress::from(to.ip()), to.port());
        if let Err(e) = socket.connect(iface.context(), remote, local_port) {
            self.stats(origin).refused += 1;
            tracing::debug!(%to, "userspace connection refused: {e}");
            refuse(stream, socks, socks5::REPLY_ADDRESS_UNSUPPORTED);
            return;
        }
        let handle = sockets.add(socket);
        let stats = self.stats(origin);
        stats.connections += 1;
        stats.total_connections += 1;
        let id = self.new_id();
        self.conns.push(Conn {
            id,
            handle,
            origin,
            local: Local::Ready(stream),
            local_eof: false,
            overlay_eof: false,
            socks_reply: socks,
            established: false,
            want_read: false,
            want_write: false,
        });
    }

    /// Keeps EXPOSE_BACKLOG listeners on each exposed port (as the cap allows) and turns the
    /// ones that accepted a connection into connections, dialling the local service.
    pub fn serve_exposes(&mut self, sockets: &mut SocketSet) {
        for i in 0..self.listeners.len() {
            let port = self.listeners[i].0;
            let mut k = 0;
            while k < self.listeners[i].1.len() {
                let handle = self.listeners[i].1[k];
                let state = sockets.get::<tcp::Socket>(handle).state();
                if matches!(state, State::Listen | State::SynReceived) {
                    k += 1;
                    continue;
                }
                self.listeners[i].1.swap_remove(k);
                let expose = self.expose_indices[i];
                if state == State::Closed {
                    sockets.remove(handle);
                    continue;
                }
                let id = self.new_id();
                let stats = &mut self.expose_stats[expose];
                stats.connections += 1;
                stats.total_connections += 1;
                self.conns.push(Conn {
                    id,
                    handle,
                    origin: Origin::Expose(expose),
                    local: Local::Dialling,
                    local_eof: false,
                    overlay_eof: false,
                    socks_reply: false,
                    established: true,
                    want_read: false,
                    want_write: false,
                });
                let (to, done) = (self.expose_targets[i], self.dialled_tx.clone());
                tokio::spawn(async move {
                    let result =
                        match tokio::time::timeout(EXPOSE_CONNECT_TIMEOUT, TcpStream::connect(to))
                            .await
                        {
                            Ok(result) => result,
                            Err(_) => Err(io::ErrorKind::TimedOut.into()),
                        };
                    // One answer per connection at most: the channel holds one per socket.
                    let _ = done.try_send(Dialled { id, result });
                });
            }
            while self.listeners[i].1.len() < EXPOSE_BACKLOG
                && self.sockets() < USERSPACE_MAX_TCP_SOCKETS
            {
                let mut socket = new_socket();
                if socket.listen(port).is_err() {
                    break;
                }
                let handle = sockets.add(socket);
                self.listeners[i].1.push(handle);
            }
        }
    }

    /// An expose's local service answered (or did not): start carrying, or reset the overlay
    /// side.
    pub fn dialled(&mut self, dialled: Dialled, sockets: &mut SocketSet) {
        let Some(conn) = self.conns.iter_mut().find(|c| c.id == dialled.id) else {
            return;
        };
        match dialled.result {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                conn.local = Local::Ready(stream);
            }
            Err(e) => {
                tracing::debug!("exposed connection: dialling the local service: {e}");
                if let Origin::Expose(i) = conn.origin {
                    self.expose_stats[i].refused += 1;
                }
                sockets.get_mut::<tcp::Socket>(conn.handle).abort();
            }
        }
    }

    /// Moves what can move between every connection's two sockets, and drops the finished
    /// ones; true when any byte moved or a connection ended.
    pub fn pump(&mut self, sockets: &mut SocketSet) -> bool {
        let mut moved = false;
        let mut i = 0;
        while i < self.conns.len() {
            let conn = &mut self.conns[i];
            let socket = sockets.get_mut::<tcp::Socket>(conn.handle);
            let (step, to_overlay, from_overlay) = conn.pump(socket);
            let stats = stats_of(
                &mut self.forward_stats,
                &mut self.expose_stats,
                &mut self.socks_stats,
                conn.origin,
            );
            stats.tx_bytes += to_overlay;
            stats.rx_bytes += from_overlay;
            match step {
                Step::Open { moved: m } => {
                    moved |= m;
                    i += 1;
                }
                Step::Finished { refused } => {
                    stats.connections = stats.connections.saturating_sub(1);
                    stats.refused += u64::from(refused);
                    let conn = self.conns.swap_remove(i);
                    sockets.remove(conn.handle);
                    moved = true;
                }
            }
        }
        moved
    }

    /// Waits until a local socket can move what its connection waits to move.
    pub async fn local_ready(&self) {
        poll_fn(|cx| {
            for conn in &self.conns {
                let Local::Ready(stream) = &conn.local else {
                    continue;
                };
                if conn.want_read && stream.poll_read_ready(cx).is_ready() {
                    return Poll::Ready(());
                }
                if conn.want_write && stream.poll_write_ready(cx).is_ready() {
                    return Poll::Ready(());
                }
            }
            Poll::Pending
        })
        .await
    }

    fn stats(&mut self, origin: Origin) -> &mut Counters {
        stats_of(
            &mut self.forward_stats,
            &mut self.expose_stats,
            &mut self.socks_stats,
            origin,
        )
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The next ephemeral port no connection or exposed port uses.
    fn ephemeral_port(&mut self, sockets: &SocketSet) -> u16 {
        let in_use = |port: u16| {
            self.listeners.iter().any(|(p, _)| *p == port)
                || self.conns.iter().any(|c| {
                    sockets
                        .get::<tcp::Socket>(c.handle)
                        .local_endpoint()
                        .is_some_and(|e| e.port == port)
                })
        };
        // At most USERSPACE_MAX_TCP_SOCKETS + MAX_EXPOSES ports are taken, far fewer than the
        // range, so this finds one within that many steps.
        self.next_port = super::next_free_port(self.next_port, EPHEMERAL_PORTS, in_use);
        self.next_port
    }
}

impl Conn {
    /// One pass: overlay to local, then local to overlay. Returns the outcome and the bytes
    /// moved each way.
    fn pump(&mut self, socket: &mut tcp::Socket) -> (Step, u64, u64) {
        let state = socket.state();
        self.established |= !matches!(state, State::Closed | State::SynSent | State::SynReceived);
        let ended = Step::Finished {
            refused: !self.established,
        };
        let Local::Ready(stream) = &self.local else {
            self.want_read = false;
            self.want_write = false;
            // Still dialling; an overlay side that closed meanwhile ends it.
            return match state {
                State::Closed => (ended, 0, 0),
                _ => (Step::Open { moved: false }, 0, 0),
            };
        };
        if self.socks_reply {
            match state {
                State::SynSent | State::SynReceived => {
                    self.want_read = false;
                    self.want_write = false;
                    return (Step::Open { moved: false }, 0, 0);
                }
                State::Closed => {
                    let reply = socks5::reply(socks5::REPLY_CONNECTION_REFUSED, None);
                    let _ = stream.try_write(&reply);
                    return (ended, 0, 0);
                }
                _ => {
                    let bound = socket
                        .local_endpoint()
                        .map(|e| SocketAddr::new(e.addr.into(), e.port));
                    let reply = socks5::reply(socks5::REPLY_SUCCEEDED, bound);
                    // Ten or twenty-two bytes into a fresh socket's empty buffer.
                    if stream.try_write(&reply).is_err() {
                        socket.abort();
                        return (Step::Finished { refused: false }, 0, 0);
                    }
                    self.socks_reply = false;
                }
            }
        }
        let mut moved = false;
        // Overlay to local.
        let mut from_overlay = 0u64;
        let mut local_failed = false;
        self.want_write = false;
        loop {
            let written = socket.recv(|buf| {
                if buf.is_empty() {
                    return (0, Ok(0));
                }
                match stream.try_write(buf) {
                    Ok(n) => (n, Ok(n)),
                    Err(e) => (0, Err(e)),
                }
            });
            match written {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => from_overlay += n as u64,
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.want_write = true;
                    break;
                }
                Ok(Err(_)) => {
                    local_failed = true;
                    break;
                }
                Err(RecvError::Finished) => {
                    if !self.overlay_eof {
                        self.overlay_eof = true;
                        shutdown_write(stream);
                        moved = true;
                    }
                    break;
                }
                Err(RecvError::InvalidState) => break,
            }
        }
        // Local to overlay.
        let mut to_overlay = 0u64;
        self.want_read = false;
        while !self.local_eof && !local_failed && socket.may_send() {
            if socket.send_queue() >= socket.send_capacity() {
                break;
            }
            let read = socket.send(|buf| match stream.try_read(buf) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            });
            match read {
                Ok(Ok(0)) => {
                    self.local_eof = true;
                    socket.close();
                    moved = true;
                }
                Ok(Ok(n)) => to_overlay += n as u64,
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.want_read = true;
                    break;
                }
                Ok(Err(_)) => local_failed = true,
                Err(_) => break,
            }
        }
        moved |= to_overlay > 0 || from_overlay > 0;
        if local_failed {
            socket.abort();
            return (Step::Finished { refused: false }, to_overlay, from_overlay);
        }
        // Reset, timed out, or closed both ways, and all that arrived passed on. TIME-WAIT is
        // not waited out: the port is not reused before the whole ephemeral range came round.
        let finished =
            matches!(socket.state(), State::Closed | State::TimeWait) && socket.recv_queue() == 0;
        if finished && !(self.local_eof && self.overlay_eof) {
            // The overlay side was reset: say so to the local side too.
            reset_on_close(stream);
        }
        if finished {
            // A forward's client whose connection the overlay refused sees a reset.
            if !self.established {
                reset_on_close(stream);
            }
            return (ended, to_overlay, from_overlay);
        }
        (Step::Open { moved }, to_overlay, from_overlay)
    }
}

fn stats_of<'a>(
    forwards: &'a mut [Counters],
    exposes: &'a mut [Counters],
    socks: &'a mut Counters,
    origin: Origin,
) -> &'a mut Counters {
    match origin {
        Origin::Forward(i) => &mut forwards[i],
        Origin::Expose(i) => &mut exposes[i],
        Origin::Socks => socks,
    }
}

/// A smoltcp socket with the fixed buffers of core::limits.
fn new_socket() -> tcp::Socket<'static> {
    let mut socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0u8; USERSPACE_TCP_BUFFER_BYTES]),
        tcp::SocketBuffer::new(vec![0u8; USERSPACE_TCP_BUFFER_BYTES]),
    );
    socket.set_nagle_enabled(false);
    socket.set_timeout(Some(smoltcp::time::Duration::from_millis(
        USERSPACE_TCP_TIMEOUT.as_millis() as u64,
    )));
    socket.set_congestion_control(CongestionControl::Reno);
    socket
}

/// Closes a local connection that cannot be carried: with a SOCKS5 answer for a proxy client,
/// and as a reset, so the client sees a refusal rather than an empty stream.
fn refuse(stream: TcpStream, socks: bool, reply: u8) {
    if socks {
        let _ = stream.try_write(&socks5::reply(reply, None));
    } else {
        reset_on_close(&stream);
    }
}

/// Makes closing `stream` send a reset (SO_LINGER of zero), so the local side sees a refusal
/// or an abort rather than an orderly end of stream.
#[allow(deprecated)] // tokio warns that lingering blocks on drop; a zero linger never does.
pub(crate) fn reset_on_close(stream: &TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
}

/// Passes the overlay side's FIN on: the local peer reads end of stream, and may still send.
fn shutdown_write(stream: &TcpStream) {
    // SAFETY: the descriptor belongs to `stream`, open for the duration of the call.
    unsafe {
        libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR);
    }
}
