//! Helpers of tests/hostile/: a third namespace on B's underlay, a packet capture on a veth,
//! forged and garbage datagrams, a TCP transfer through the tunnel, and a memory watch.
//!
//! Everything here touches only the namespaces a test created and addresses in 198.18.0.0/15
//! (underlay) and 100.64.0.0/10 (overlay). Every loop is bounded in count and in time.

use std::ffi::CString;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dhtun::core::handshake::{initiate, tai64n};
use dhtun::core::keys::{PresharedKey, PublicKey, SecretKey};
use dhtun::core::wire::{INITIATION_LEN, TRANSPORT_HEADER_LEN, TYPE_INITIATION, TYPE_TRANSPORT};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::{in_netns, proc_memory, set_int_option, Lab, Node, ProcMemory};

// ---------------------------------------------------------------------------------------------
// A third namespace
// ---------------------------------------------------------------------------------------------

/// C's underlay address, on a second veth pair between B and C (198.18.1.0/24).
pub const C_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// B's address on that second veth pair.
pub const B_SIDE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);

/// Creates namespace C (a stranger: no daemon, no keys B knows) joined to B's namespace by a
/// veth pair `ul1`; returns C's namespace name. Call before B's daemon starts.
#[track_caller]
pub fn add_stranger(lab: &mut Lab, b: &Node) -> String {
    let ns_c = lab.add_ns("c");
    lab.ip_ok(
        &b.ns,
        &[
            "link", "add", "ul1", "type", "veth", "peer", "name", "ul1", "netns", &ns_c,
        ],
    );
    for (ns, addr) in [
        (&b.ns, format!("{B_SIDE_ADDR}/24")),
        (&ns_c, format!("{C_ADDR}/24")),
    ] {
        lab.ip_ok(ns, &["addr", "add", &addr, "dev", "ul1"]);
        lab.ip_ok(ns, &["link", "set", "ul1", "up"]);
    }
    ns_c
}

pub fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap_or_else(|e| panic!("bad IPv4 {s}: {e}"))
}

/// `node`'s tunnel socket on the main underlay (198.18.0.x:port).
pub fn underlay_of(node: &Node) -> SocketAddrV4 {
    SocketAddrV4::new(v4(&node.underlay), node.port)
}

// ---------------------------------------------------------------------------------------------
// Capture
// ---------------------------------------------------------------------------------------------

/// SOL_PACKET option that prefixes every packet with a `struct virtio_net_hdr`, which carries
/// the segment size of a GSO super-packet (linux/if_packet.h).
const PACKET_VNET_HDR: libc::c_int = 15;
/// sizeof(struct virtio_net_hdr): flags, gso_type, hdr_len, gso_size, csum_start, csum_offset.
const VNET_HDR_LEN: usize = 10;
const ETH_HDR_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
/// Largest frame a packet socket hands over: a GSO super-packet is at most 64 KiB.
const FRAME_BUF: usize = 70_000;

/// A running capture of the UDP payloads sent to one address:port through one interface.
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<Captured, String>>,
}

/// What a capture kept, and how it went.
#[derive(Debug, Default)]
pub struct Captured {
    /// The UDP payloads to the address captured, in order.
    pub payloads: Vec<Vec<u8>>,
    /// Frames that carried them; GSO super-packets among those.
    pub frames: usize,
    pub gso_frames: usize,
    /// Frames the kernel dropped because the capture socket's buffer was full.
    pub socket_drops: u32,
}

impl Captured {
    pub fn describe(&self) -> String {
        format!(
            "{} datagrams in {} frames ({} GSO), {} frames dropped by the capture socket",
            self.payloads.len(),
            self.frames,
            self.gso_frames,
            self.socket_drops
        )
    }
}

impl Capture {
    /// Starts capturing, in namespace `ns` on interface `ifname`, every UDP datagram to `dst`
    /// (both directions of the link pass the socket; only datagrams to `dst` are kept). Returns
    /// once the socket is bound. Stops by itself after `limit` or `max` datagrams.
    pub fn start(
        ns: &str,
        ifname: &str,
        dst: SocketAddrV4,
        max: usize,
        limit: Duration,
    ) -> Result<Capture, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let ifname = ifname.to_string();
        let stop2 = Arc::clone(&stop);
        let thread = in_netns(ns, move || {
            let fd = packet_socket(&ifname)?;
            let _ = ready_tx.send(());
            let deadline = Instant::now() + limit;
            let mut frame = vec![0u8; FRAME_BUF];
            let mut kept = Captured::default();
            // Until told to stop; then, without waiting, whatever is still queued (a busy
            // machine may leave frames in the socket), so nothing that passed is missed.
            let mut draining = false;
            let mut reads = 0usize;
            while Instant::now() < deadline && kept.payloads.len() < max && reads < 20 * max {
                draining |= stop2.load(Ordering::Relaxed);
                let flags = if draining { libc::MSG_DONTWAIT } else { 0 };
                reads += 1;
                // SAFETY: recv(2) into a buffer we own, of the length we pass.
                let n = unsafe {
                    libc::recv(
                        fd.as_raw_fd(),
                        frame.as_mut_ptr().cast(),
                        frame.len(),
                        flags,
                    )
                };
                if n < 0 {
                    let e = std::io::Error::last_os_error();
                    match e.kind() {
                        ErrorKind::WouldBlock if draining => break,
                        ErrorKind::WouldBlock | ErrorKind::Interrupted => continue,
                        _ => return Err(format!("capture recv on {ifname}: {e}")),
                    }
                }
                let (payloads, gso) = udp_payloads_to(&frame[..n as usize], dst);
                if !payloads.is_empty() {
                    kept.frames += 1;
                    kept.gso_frames += usize::from(gso);
                    kept.payloads.extend(payloads);
                }
            }
            kept.socket_drops = packet_drops(&fd);
            Ok(kept)
        });
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(()) => Ok(Capture { stop, thread }),
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                Err(match thread.join() {
                    Ok(Err(e)) => e,
                    _ => "capture thread did not start".to_string(),
                })
            }
        }
    }

    /// Stops the capture and returns what it saw.
    pub fn finish(self) -> Result<Captured, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .unwrap_or_else(|_| Err("capture thread panicked".to_string()))
    }
}

/// An AF_PACKET socket that sees every frame through `ifname`, in and out, with a virtio-net
/// header in front and a 50 ms receive timeout.
fn packet_socket(ifname: &str) -> Result<OwnedFd, String> {
    let all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket(2) with constant arguments; the fd is owned right away.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            all.into(),
        )
    };
    if raw < 0 {
        return Err(format!(
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    set_int_option(&fd, libc::SOL_PACKET, PACKET_VNET_HDR, 1, "PACKET_VNET_HDR")?;
    // A burst must not overflow the capture; as root the limit can be raised past rmem_max.
    set_int_option(
        &fd,
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        8 << 20,
        "SO_RCVBUFFORCE",
    )?;
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: setsockopt(2) with a pointer to a live timeval and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(format!("SO_RCVTIMEO: {}", std::io::Error::last_os_error()));
    }
    let name = CString::new(ifname).map_err(|e| e.to_string())?;
    // SAFETY: if_nametoindex(3) reads a NUL-terminated string we own.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(format!(
            "no interface {ifname}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = all;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: bind(2) with a pointer to a live sockaddr_ll and its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(format!(
            "bind AF_PACKET to {ifname}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(fd)
}

/// Frames the kernel dropped at a packet socket (PACKET_STATISTICS: tp_packets, tp_drops).
fn packet_drops(fd: &OwnedFd) -> u32 {
    const PACKET_STATISTICS: libc::c_int = 6;
    let mut stats = [0u32; 2];
    let mut len = std::mem::size_of_val(&stats) as libc::socklen_t;
    // SAFETY: getsockopt(2) into a buffer we own, with its size.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            PACKET_STATISTICS,
            stats.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc == 0 {
        stats[1]
    } else {
        0
    }
}

/// The UDP payloads to `dst` that one captured frame (virtio-net header, Ethernet, IPv4, UDP)
/// carries: one, or for a UDP GSO super-packet, one per segment of the header's gso_size.
fn udp_payloads_to(frame: &[u8], dst: SocketAddrV4) -> (Vec<Vec<u8>>, bool) {
    let none = (Vec::new(), false);
    let Some(vnet) = frame.get(..VNET_HDR_LEN) else {
        return none;
    };
    let gso_type = vnet[1];
    // struct virtio_net_hdr: flags, gso_type, hdr_len (u16), gso_size (u16), csum_start,
    // csum_offset; in the host's byte order for a packet socket.
    let gso_size = u16::from_ne_bytes([vnet[4], vnet[5]]) as usize;
    let eth = &frame[VNET_HDR_LEN..];
    if eth.len() < ETH_HDR_LEN || u16::from_be_bytes([eth[12], eth[13]]) != ETHERTYPE_IPV4 {
        return none;
    }
    let ip = &eth[ETH_HDR_LEN..];
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != libc::IPPROTO_UDP as u8 {
        return none;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    if ip[16..20] != dst.ip().octets() || total < ihl + 8 {
        return none;
    }
    let udp = &ip[ihl..total];
    if u16::from_be_bytes([udp[2], udp[3]]) != dst.port() {
        return none;
    }
    let payload = &udp[8..];
    if gso_type != 0 && gso_size > 0 {
        (payload.chunks(gso_size).map(<[u8]>::to_vec).collect(), true)
    } else {
        (vec![payload.to_vec()], false)
    }
}

/// The receiver index and counter of a transport message, if `datagram` is one.
pub fn transport_header(datagram: &[u8]) -> Option<(u32, u64)> {
    if datagram.len() < TRANSPORT_HEADER_LEN || datagram[..4] != [TYPE_TRANSPORT, 0, 0, 0] {
        return None;
    }
    let index = u32::from_le_bytes(datagram[4..8].try_into().ok()?);
    let counter = u64::from_le_bytes(datagram[8..16].try_into().ok()?);
    Some((index, counter))
}

// ---------------------------------------------------------------------------------------------
// Forged and garbage datagrams
// ---------------------------------------------------------------------------------------------

/// A transport message for session `index` with counter `counter`: a real header, random
/// bytes where the ciphertext and tag belong.
pub fn forged_transport(index: u32, counter: u64, rng: &mut StdRng) -> Vec<u8> {
    let mut d = vec![0u8; TRANSPORT_HEADER_LEN + 64 + 16];
    d[0] = TYPE_TRANSPORT;
    d[4..8].copy_from_slice(&index.to_le_bytes());
    d[8..16].copy_from_slice(&counter.to_le_bytes());
    rng.fill(&mut d[TRANSPORT_HEADER_LEN..]);
    d
}

/// Well-formed initiations to `responder` from a key it does not know: mac1 is valid (anyone
/// who knows the responder's public key can compute it), the Noise payload is genuine, and each
/// has its own sender index. Returns the messages and their sender indexes.
pub fn stranger_initiations(responder: &str, count: u32) -> (Vec<Vec<u8>>, Vec<u32>) {
    let responder =
        PublicKey::from_base64(responder).unwrap_or_else(|e| panic!("peer key {responder}: {e:?}"));
    let stranger = SecretKey::from_seed([0x5e; 32]);
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut messages = Vec::new();
    let mut indexes = Vec::new();
    for i in 0..count {
        let index = 0x5e5e_0000 | i;
        let mut out = [0u8; INITIATION_LEN];
        initiate(
            &stranger,
            &responder,
            &PresharedKey::default(),
            index,
            tai64n(wall + Duration::from_millis(u64::from(i))),
            [i as u8; 32],
            &mut out,
        )
        .unwrap_or_else(|e| panic!("building an initiation: {e:?}"));
        messages.push(out.to_vec());
        indexes.push(index);
    }
    (messages, indexes)
}

/// The kinds of datagram the flood sends, in turn.
pub const FLOOD_KINDS: [&str; 4] = [
    "random bytes",
    "initiation with a bad mac1",
    "transport for an unknown index",
    "stranger's initiation with a valid mac1",
];

/// Datagram number `i` of the flood: the kind `i % 4` of FLOOD_KINDS.
pub fn flood_datagram(i: u64, rng: &mut StdRng, initiations: &[Vec<u8>]) -> Vec<u8> {
    match i % 4 {
        0 => {
            let len = rng.gen_range(1..=1400);
            let mut d = vec![0u8; len];
            rng.fill(&mut d[..]);
            d
        }
        1 => {
            let mut d = vec![0u8; INITIATION_LEN];
            rng.fill(&mut d[4..]);
            d[0] = TYPE_INITIATION;
            d
        }
        2 => {
            let index: u32 = rng.gen();
            let counter: u64 = rng.gen();
            let mut d = forged_transport(index, counter, rng);
            d.truncate(TRANSPORT_HEADER_LEN + 16 * rng.gen_range(1..=60));
            d
        }
        _ => initiations[(i / 4) as usize % initiations.len()].clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------------

/// The memory bound of issue 5 for one daemon with one peer at default settings: VmHWM at most
/// 16 MiB for the release binary; in every build (a debug binary keeps some 8 MiB more code
/// resident), the daemon's own memory, VmHWM less the file-backed pages, at most 10 MiB. The
/// same figures and reasoning as tests/memory.rs.
pub const PEAK_RSS_BOUND_KIB: u64 = 16 * 1024;
pub const PEAK_PRIVATE_BOUND_KIB: u64 = 10 * 1024;

/// Samples of one process's resident memory.
#[derive(Clone, Copy, Default, Debug)]
pub struct MemoryWatch {
    pub first: ProcMemory,
    pub last: ProcMemory,
    pub max_private_kib: u64,
}

impl MemoryWatch {
    pub fn sample(&mut self, pid: u32) -> Result<(), String> {
        let m = proc_memory(pid)?;
        if self.first == ProcMemory::default() {
            self.first = m;
        }
        self.last = m;
        self.max_private_kib = self.max_private_kib.max(m.private_kib());
        Ok(())
    }

    /// The peak of the daemon's own memory: the largest sample, or the kernel's peak (VmHWM)
    /// less the file-backed pages, whichever is larger, so a spike between samples counts.
    pub fn peak_private_kib(&self) -> u64 {
        self.max_private_kib
            .max(self.last.hwm_kib.saturating_sub(self.last.file_kib))
    }

    /// What is wrong with these figures, if anything, for this build.
    pub fn over_bound(&self) -> Option<String> {
        let peak = self.peak_private_kib();
        if peak > PEAK_PRIVATE_BOUND_KIB {
            return Some(format!(
                "own memory (resident, not file-backed) peaked at {peak} KiB, bound \
                 {PEAK_PRIVATE_BOUND_KIB} KiB"
            ));
        }
        if !cfg!(debug_assertions) && self.last.hwm_kib > PEAK_RSS_BOUND_KIB {
            return Some(format!(
                "VmHWM {} KiB, bound {PEAK_RSS_BOUND_KIB} KiB",
                self.last.hwm_kib
            ));
        }
        None
    }

    pub fn describe(&self) -> String {
        format!(
            "VmRSS {} -> {} KiB, VmHWM {} KiB, own memory {} -> peak {} KiB",
            self.first.rss_kib,
            self.last.rss_kib,
            self.last.hwm_kib,
            self.first.private_kib(),
            self.peak_private_kib()
        )
    }
}

/// A seeded generator for forged bytes, so a failing run can be repeated.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

// ---------------------------------------------------------------------------------------------
// A UDP sink
// ---------------------------------------------------------------------------------------------

/// A UDP socket in a namespace that records every datagram it receives, until stopped.
pub struct UdpSink {
    stop: Arc<AtomicBool>,
    received: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    thread: JoinHandle<Result<(), String>>,
}

impl UdpSink {
    /// Binds `addr` in `ns` and starts recording; gives up by itself after `limit`.
    pub fn start(ns: &str, addr: SocketAddrV4, limit: Duration) -> Result<UdpSink, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let (stop2, received2) = (Arc::clone(&stop), Arc::clone(&received));
        let thread = in_netns(ns, move || {
            let sock =
                std::net::UdpSocket::bind(addr).map_err(|e| format!("bind sink {addr}: {e}"))?;
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .map_err(|e| e.to_string())?;
            let _ = ready_tx.send(());
            let deadline = Instant::now() + limit;
            let mut buf = [0u8; 2048];
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                match sock.recv(&mut buf) {
                    Ok(n) => received2
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(buf[..n].to_vec()),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(e) => return Err(format!("sink recv: {e}")),
                }
            }
            Ok(())
        });
        if ready_rx.recv_timeout(Duration::from_secs(10)).is_err() {
            stop.store(true, Ordering::Relaxed);
            let err = thread.join().ok().and_then(Result::err);
            return Err(format!("the UDP sink did not start: {err:?}"));
        }
        Ok(UdpSink {
            stop,
            received,
            thread,
        })
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits (bounded) until at least `n` datagrams arrived; returns how many did.
    pub fn wait_for(&self, n: usize, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.received().len();
            if got >= n || Instant::now() >= deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn finish(self) -> Result<Vec<Vec<u8>>, String> {
        self.stop.store(true, Ordering::Relaxed);
        let received = Arc::clone(&self.received);
        self.thread
            .join()
            .unwrap_or_else(|_| Err("sink thread panicked".into()))?;
        let received = received.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(received)
    }
}
