//! The tunnel's UDP socket, batched: `recvmmsg` with UDP GRO (the kernel hands over up to 64
//! datagrams of one sender glued together) and `sendmmsg` with UDP GSO (one message carries a
//! train of equal-sized datagrams to one destination). All buffers and syscall arrays are
//! allocated once, sized from `batch_size`; where the kernel refuses GSO or GRO, we fall back to
//! one datagram each.

use crate::core::limits::{BATCH_DATAGRAMS_PER_RECV_BUFFER, BATCH_DATAGRAMS_PER_SEND_MESSAGE};
use crate::core::ring::PacketRing;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::time::Instant;
use tokio::io::Interest;
use tokio::net::UdpSocket;

mod gso_limits;
use gso_limits::{GsoPathLimits, Refusal};

/// One receive buffer: the largest UDP payload GRO can deliver.
const RECV_BUF_BYTES: usize = 65536;
/// The kernel's limit of segments in one GSO send (UDP_MAX_SEGMENTS).
const GSO_MAX_SEGMENTS: usize = 64;
/// Stay under the 64 KiB an IP packet can hold, headers included.
const GSO_MAX_BYTES: usize = 65000;
const CMSG_BYTES: usize = 64;
const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;

/// Whether a receive first asks tokio if the socket is readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiveMode {
    /// Only after epoll said readable; a receive that finds nothing clears that until epoll
    /// says so again.
    WhenReady,
    /// Always make the syscall: busy polling runs without going back to epoll, so tokio's
    /// readiness would stay cleared while datagrams arrive.
    BusyPoll,
}

pub struct UdpIo {
    socket: UdpSocket,
    v6: bool,
    gso: bool,
    recv_bufs: Box<[u8]>,
    recv_names: Box<[libc::sockaddr_storage]>,
    recv_iov: Box<[libc::iovec]>,
    recv_cmsg: Box<[[u8; CMSG_BYTES]]>,
    /// One per message a `recvmmsg` fills (with GRO, each a train of datagrams).
    recv_hdrs: Box<[libc::mmsghdr]>,
    received: usize,
    /// The kernel's running count of datagrams it dropped because our socket was full.
    kernel_drops: u32,
    send_names: Box<[libc::sockaddr_storage]>,
    /// One per datagram a `sendmmsg` carries in all.
    send_iov: Box<[libc::iovec]>,
    send_cmsg: Box<[[u8; CMSG_BYTES]]>,
    /// One per message (datagram train) a `sendmmsg` carries.
    send_hdrs: Box<[libc::mmsghdr]>,
    /// Datagrams in each message of the batch being sent.
    send_counts: Box<[usize]>,
    /// Largest datagram sent in a GSO train to anyone. The kernel refuses a GSO segment that
    /// would need IP fragmentation; relayed datagrams are larger than direct ones and may need
    /// fragments, so they go one by one.
    gso_max_segment: usize,
    /// Destinations whose path refused trains of datagrams this large.
    gso_path_limits: GsoPathLimits,
}

/// One received message: a datagram, or with GRO several of `segment_size` bytes each (the
/// last may be shorter).
pub struct Received<'a> {
    pub from: SocketAddr,
    pub data: &'a [u8],
    pub segment_size: usize,
}

/// What `send_from` achieved.
pub struct SendOutcome {
    /// Datagrams the kernel refused outright (dropped and to be counted).
    pub failed: usize,
    /// The socket is full: wait for it to become writable.
    pub would_block: bool,
}

impl UdpIo {
    /// `batch_size` datagrams per syscall (bounded by config): `sendmmsg` sends up to that many,
    /// `recvmmsg` fills one 64 KiB GRO buffer per BATCH_DATAGRAMS_PER_RECV_BUFFER of them.
    pub fn new(socket: UdpSocket, batch_size: usize) -> Self {
        let send_segments = batch_size.max(1);
        let send_msgs = send_segments.div_ceil(BATCH_DATAGRAMS_PER_SEND_MESSAGE);
        let recv_msgs = send_segments.div_ceil(BATCH_DATAGRAMS_PER_RECV_BUFFER);
        let v6 = socket.local_addr().is_ok_and(|a| a.is_ipv6());
        let one: libc::c_int = 1;
        // GRO is an optimisation: where the kernel says no, datagrams simply come one by one.
        let _ = setsockopt(&socket, SOL_UDP, UDP_GRO, one);
        // The kernel drops datagrams when we fall behind; this makes it tell us how many.
        let _ = setsockopt(&socket, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, one);
        let gso = getsockopt(&socket, SOL_UDP, UDP_SEGMENT).is_ok();
        // SAFETY: these are plain C structs for which all-zero bytes are a valid value.
        let zero_storage = || unsafe { zeroed::<libc::sockaddr_storage>() };
        let zero_hdr = || unsafe { zeroed::<libc::mmsghdr>() };
        let empty_iov = || libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        Self {
            socket,
            v6,
            gso,
            recv_bufs: vec![0u8; recv_msgs * RECV_BUF_BYTES].into_boxed_slice(),
            recv_names: (0..recv_msgs).map(|_| zero_storage()).collect(),
            recv_iov: (0..recv_msgs).map(|_| empty_iov()).collect(),
            recv_cmsg: vec![[0u8; CMSG_BYTES]; recv_msgs].into_boxed_slice(),
            recv_hdrs: (0..recv_msgs).map(|_| zero_hdr()).collect(),
            received: 0,
            kernel_drops: 0,
            send_names: (0..send_msgs).map(|_| zero_storage()).collect(),
            send_iov: (0..send_segments).map(|_| empty_iov()).collect(),
            send_cmsg: vec![[0u8; CMSG_BYTES]; send_msgs].into_boxed_slice(),
            send_hdrs: (0..send_msgs).map(|_| zero_hdr()).collect(),
            send_counts: vec![0; send_msgs].into_boxed_slice(),
            gso_max_segment: usize::MAX,
            gso_path_limits: GsoPathLimits::default(),
        }
    }

    /// Datagrams the kernel dropped so far because the socket's receive buffer was full.
    pub fn kernel_drops(&self) -> u32 {
        self.kernel_drops
    }

    pub fn local_port(&self) -> u16 {
        self.socket.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Datagrams larger than `bytes` are never sent in a GSO train (see `gso_max_segment`).
    pub fn limit_gso_segment(&mut self, bytes: usize) {
        self.gso_max_segment = bytes;
    }

    /// Sizes the socket's receive buffer (SO_RCVBUF semantics: the kernel doubles `bytes` for
    /// its bookkeeping) and returns what the kernel granted. SO_RCVBUFFORCE may exceed
    /// `net.core.rmem_max` but needs CAP_NET_ADMIN; without it the plain option is capped there.
    pub fn set_receive_buffer(&self, bytes: usize) -> io::Result<usize> {
        // The config bounds `bytes` to 64 MiB, well inside a c_int; saturate all the same.
        let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        if setsockopt(&self.socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, value).is_err() {
            setsockopt(&self.socket, libc::SOL_SOCKET, libc::SO_RCVBUF, value)?;
        }
        let granted = getsockopt(&self.socket, libc::SOL_SOCKET, libc::SO_RCVBUF)?;
        // The kernel never reports a negative size; 0 would read as "less than asked".
        Ok(usize::try_from(granted).unwrap_or(0))
    }

    pub fn gso_enabled(&self) -> bool {
        self.gso
    }

    pub async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
    }

    pub async fn writable(&self) -> io::Result<()> {
        self.socket.writable().await
    }

    /// Receives a batch; returns how many messages `received(i)` now holds (0 when none waited).
    pub fn recv_batch(&mut self, mode: ReceiveMode) -> io::Result<usize> {
        self.received = 0;
        for i in 0..self.recv_hdrs.len() {
            self.recv_iov[i] = libc::iovec {
                iov_base: self.recv_bufs[i * RECV_BUF_BYTES..].as_mut_ptr().cast(),
                iov_len: RECV_BUF_BYTES,
            };
            let hdr = &mut self.recv_hdrs[i].msg_hdr;
            hdr.msg_name = (&mut self.recv_names[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &mut self.recv_iov[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = self.recv_cmsg[i].as_mut_ptr().cast();
            hdr.msg_controllen = CMSG_BYTES as _;
            hdr.msg_flags = 0;
            self.recv_hdrs[i].msg_len = 0;
        }
        let fd = self.socket.as_raw_fd();
        let hdrs = self.recv_hdrs.as_mut_ptr();
        let count = self.recv_hdrs.len() as libc::c_uint;
        let receive = || {
            // SAFETY: every header points at buffers owned by self that outlive the call, with
            // their true lengths; the kernel writes only within them.
            let n = unsafe {
                libc::recvmmsg(fd, hdrs, count, libc::MSG_DONTWAIT, std::ptr::null_mut())
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        };
        let result = match mode {
            ReceiveMode::WhenReady => self.socket.try_io(Interest::READABLE, receive),
            ReceiveMode::BusyPoll => receive(),
        };
        match result {
            Ok(n) => {
                self.received = n;
                for i in 0..n {
                    if let Some(count) = cmsg_u32(
                        &self.recv_hdrs[i].msg_hdr,
                        libc::SOL_SOCKET,
                        libc::SO_RXQ_OVFL,
                    ) {
                        self.kernel_drops = self.kernel_drops.max(count);
                    }
                }
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// The i-th message of the last batch; None for a truncated or unreadable one.
    pub fn received(&self, i: usize) -> Option<Received<'_>> {
        if i >= self.received {
            return None;
        }
        let mmsg = &self.recv_hdrs[i];
        if mmsg.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        let len = (mmsg.msg_len as usize).min(RECV_BUF_BYTES);
        let data = &self.recv_bufs[i * RECV_BUF_BYTES..i * RECV_BUF_BYTES + len];
        let from = unmap(from_storage(&self.recv_names[i])?);
        let segment_size = cmsg_u32(&mmsg.msg_hdr, SOL_UDP, UDP_GRO)
            .map_or(len, |size| size as usize)
            .max(1);
        Some(Received {
            from,
            data,
            segment_size,
        })
    }

    /// Sends datagrams from the front of `ring` until it is empty or the socket is full,
    /// popping what was sent. Equal-sized datagrams to one destination travel as one GSO train.
    pub fn send_from(&mut self, ring: &mut PacketRing<Option<SocketAddr>>) -> SendOutcome {
        let mut outcome = SendOutcome {
            failed: 0,
            would_block: false,
        };
        let now = Instant::now();
        while !ring.is_empty() {
            let messages = self.build_batch(ring, now);
            if messages == 0 {
                // Datagrams without a destination: nothing can be done with them.
                ring.pop_front();
                outcome.failed += 1;
                continue;
            }
            let fd = self.socket.as_raw_fd();
            let hdrs = self.send_hdrs.as_mut_ptr();
            let result = self.socket.try_io(Interest::WRITABLE, || {
                // SAFETY: headers, names, iovecs and control buffers are owned by self; the
                // iovecs point into ring slots that stay untouched until this call returns.
                let n = unsafe {
                    libc::sendmmsg(fd, hdrs, messages as libc::c_uint, libc::MSG_DONTWAIT)
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match result {
                Ok(sent) => {
                    let datagrams: usize =
                        self.send_counts[..sent.max(1).min(messages)].iter().sum();
                    ring.pop_front_n(datagrams);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    outcome.would_block = true;
                    return outcome;
                }
                Err(e) if self.send_counts[0] > 1 && gso_refused(&e) => {
                    // A train the kernel would not take. Its destination may be the cause (one
                    // bad peer's address must not cost every other peer its trains), so only
                    // that destination gets single datagrams; a send error that is not about
                    // the train then fails its single datagram alone and is dropped below.
                    let to = ring.front().and_then(|(_, to)| to);
                    self.refused_gso(to, now, &e);
                }
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) && self.send_counts[0] > 1 => {
                    // A GSO train whose segments exceed the path MTU (an underlay below
                    // mtu + 60, or an ICMP "fragmentation needed"): the kernel cannot cut it
                    // into fragments. Datagrams this large go one by one to that destination
                    // for a while, which the kernel may fragment; dropping the train would
                    // starve TCP for good.
                    let (size, to) = ring
                        .front()
                        .map_or((0, None), |(datagram, to)| (datagram.len(), to));
                    self.refused_train(to, size, now, &e);
                }
                Err(e) => {
                    // The first message failed (no route, firewall, ...): drop it, go on.
                    tracing::debug!("sending UDP: {e}");
                    let dropped = ring.pop_front_n(self.send_counts[0]);
                    outcome.failed += dropped;
                }
            }
        }
        outcome
    }

    /// Remembers, and says once per destination, that the kernel refused a GSO train to `to`
    /// for a reason other than its size: `to` gets no trains for a while.
    fn refused_gso(&mut self, to: Option<SocketAddr>, now: Instant, e: &io::Error) {
        let Some(to) = to else {
            // Trains always have a destination; should one not, no train is safe.
            self.gso_max_segment = 0;
            return;
        };
        // A limit below every datagram's size: each goes alone.
        match self.gso_path_limits.refused(to, 1, now) {
            Refusal::NewPath => tracing::info!(
                "the kernel refused a UDP GSO train to {to} ({e}); sending to it one datagram \
                 at a time for {} s",
                crate::core::limits::GSO_LIMIT_LIFETIME.as_secs()
            ),
            Refusal::KnownPath => {
                tracing::debug!("the kernel refused a UDP GSO train to {to} again ({e})")
            }
        }
    }

    /// Remembers, and says once per path, that `to` refused a train of `size`-byte datagrams.
    fn refused_train(&mut self, to: Option<SocketAddr>, size: usize, now: Instant, e: &io::Error) {
        let Some(to) = to else {
            // Trains always have a destination; should one not, no train is safe.
            self.gso_max_segment = self.gso_max_segment.min(size.saturating_sub(1));
            return;
        };
        match self.gso_path_limits.refused(to, size, now) {
            Refusal::NewPath => tracing::warn!(
                "the path MTU to {to} is below {size}-byte datagrams ({e}); sending those one \
                 by one, without UDP GSO, and trying again in {} s (lower [interface] mtu to \
                 avoid fragments)",
                crate::core::limits::GSO_LIMIT_LIFETIME.as_secs()
            ),
            Refusal::KnownPath => {
                tracing::debug!("the path MTU to {to} is still below {size}-byte datagrams ({e})")
            }
        }
    }

    /// Fills the send arrays from the ring's front; returns how many messages.
    fn build_batch(&mut self, ring: &PacketRing<Option<SocketAddr>>, now: Instant) -> usize {
        let mut messages = 0;
        let mut segments = 0;
        let mut i = 0;
        while messages < self.send_hdrs.len() && segments < self.send_iov.len() {
            let Some((first, Some(to))) = ring.get(i) else {
                break;
            };
            let size = first.len();
            let max_segment = self
                .gso_max_segment
                .min(self.gso_path_limits.max_segment(to, now));
            let iov_start = segments;
            let mut count = 0;
            let mut bytes = 0;
            while let Some((datagram, dest)) = ring.get(i) {
                let joins = count == 0
                    || (self.gso
                        && size <= max_segment
                        && dest == Some(to)
                        && datagram.len() <= size
                        && count < GSO_MAX_SEGMENTS
                        && bytes + datagram.len() <= GSO_MAX_BYTES);
                if !joins || segments >= self.send_iov.len() {
                    break;
                }
                self.send_iov[segments] = libc::iovec {
                    iov_base: datagram.as_ptr() as *mut libc::c_void,
                    iov_len: datagram.len(),
                };
                segments += 1;
                count += 1;
                bytes += datagram.len();
                i += 1;
                // A shorter datagram ends a train: GSO cuts every segment at the first's size.
                if datagram.len() < size {
                    break;
                }
            }
            let name_len = to_storage(self.mapped(to), &mut self.send_names[messages]);
            let hdr = &mut self.send_hdrs[messages].msg_hdr;
            hdr.msg_name = (&mut self.send_names[messages] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = name_len;
            hdr.msg_iov = &mut self.send_iov[iov_start];
            hdr.msg_iovlen = count as _;
            hdr.msg_flags = 0;
            if count > 1 {
                hdr.msg_control = self.send_cmsg[messages].as_mut_ptr().cast();
                hdr.msg_controllen =
                    write_segment_cmsg(&mut self.send_cmsg[messages], size as u16) as _;
            } else {
                hdr.msg_control = std::ptr::null_mut();
                hdr.msg_controllen = 0;
            }
            self.send_counts[messages] = count;
            messages += 1;
        }
        messages
    }

    fn mapped(&self, addr: SocketAddr) -> SocketAddr {
        match addr {
            SocketAddr::V4(v4) if self.v6 => {
                SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            _ => addr,
        }
    }
}

/// Binds the tunnel socket: `[::]:port` receives both families where the kernel allows it.
pub fn bind(port: u16) -> io::Result<std::net::UdpSocket> {
    let any_v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
    let socket = match std::net::UdpSocket::bind(any_v6) {
        Ok(socket) => socket,
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            std::net::UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))?
        }
        Err(e) => return Err(e),
    };
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn gso_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)
    )
}

fn setsockopt(
    socket: &UdpSocket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: value is a live c_int and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn getsockopt(
    socket: &UdpSocket,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len are live and sized as passed.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The 32-bit value of the control message `level`/`kind`, if the kernel attached one (UDP_GRO's
/// segment size, SO_RXQ_OVFL's drop count).
fn cmsg_u32(hdr: &libc::msghdr, level: libc::c_int, kind: libc::c_int) -> Option<u32> {
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, within
    // msg_controllen; a data pointer is read only when its header says it holds 4 bytes.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            let wanted = (*cmsg).cmsg_level == level && (*cmsg).cmsg_type == kind;
            if wanted && (*cmsg).cmsg_len as usize >= libc::CMSG_LEN(4) as usize {
                return Some(libc::CMSG_DATA(cmsg).cast::<u32>().read_unaligned());
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    None
}

/// Writes a UDP_SEGMENT control message into `buf`; returns its length.
fn write_segment_cmsg(buf: &mut [u8; CMSG_BYTES], segment_size: u16) -> usize {
    buf.fill(0);
    // SAFETY: the buffer is CMSG_BYTES long, more than CMSG_SPACE(2); the msghdr is local and
    // only used to let the macros find the first header inside buf.
    unsafe {
        let space = libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
        let mut hdr: libc::msghdr = zeroed();
        hdr.msg_control = buf.as_mut_ptr().cast();
        hdr.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&hdr);
        (*cmsg).cmsg_level = SOL_UDP;
        (*cmsg).cmsg_type = UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
        libc::CMSG_DATA(cmsg)
            .cast::<u16>()
            .write_unaligned(segment_size);
        space
    }
}

fn to_storage(addr: SocketAddr, storage: &mut libc::sockaddr_storage) -> libc::socklen_t {
    // SAFETY: sockaddr_storage is large and aligned enough for either address type.
    unsafe {
        match addr {
            SocketAddr::V4(v4) => {
                let sin = (storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                sin.write(libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(v4.ip().octets()),
                    },
                    sin_zero: [0; 8],
                });
                size_of::<libc::sockaddr_in>() as libc::socklen_t
            }
            SocketAddr::V6(v6) => {
                let sin6 = (storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                sin6.write(libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: v6.port().to_be(),
                    sin6_flowinfo: v6.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: v6.ip().octets(),
                    },
                    sin6_scope_id: v6.scope_id(),
                });
                size_of::<libc::sockaddr_in6>() as libc::socklen_t
            }
        }
    }
}

fn from_storage(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    // SAFETY: the family field says which struct the kernel wrote.
    unsafe {
        match i32::from(storage.ss_family) {
            libc::AF_INET => {
                let sin = &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
                Some(SocketAddr::V4(SocketAddrV4::new(
                    ip,
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 => {
                let sin6 =
                    &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                Some(SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

/// IPv4 peers reach a dual-stack socket as ::ffff:a.b.c.d; the core sees plain IPv4.
pub fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

#[cfg(test)]
mod tests;
