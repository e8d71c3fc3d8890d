//! The TUN device: created through the `tun` crate (configuration is left to netlink), read and
//! written without blocking through tokio's readiness on its file descriptor.
//!
//! Every packet crosses the device behind a virtio-net header (IFF_VNET_HDR). We then ask the
//! kernel for offloads (TUNSETOFFLOAD, which the tun crate lacks): with TSO it hands us TCP
//! super-packets of up to 64 KiB and accepts them back, so one read or write moves what would
//! otherwise take dozens. Where the kernel refuses, packets simply come one at a time.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use tokio::io::unix::AsyncFd;

/// An open TUN device in non-blocking mode.
pub struct TunDevice {
    fd: AsyncFd<tun::Device>,
    name: String,
    offloads: Offloads,
}

/// What the kernel agreed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offloads {
    /// TCP segmentation and checksum offload, and UDP segmentation.
    TcpAndUdp,
    /// TCP segmentation and checksum offload.
    Tcp,
    /// None: one packet per read, though still behind a (zero) virtio-net header.
    None,
}

const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_USO4: libc::c_uint = 0x20;
const TUN_F_USO6: libc::c_uint = 0x40;

/// Why the TUN device could not be created, worded for the person running dhtun.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error("/dev/net/tun is missing: load the tun kernel module (modprobe tun) or, in a container, pass the device in")]
    NoTunDevice,
    #[error("creating TUN device {0}: permission denied; dhtun needs CAP_NET_ADMIN (run it as root or grant it that capability)")]
    NotPermitted(String),
    #[error("creating TUN device {0}: the interface name is already in use")]
    Busy(String),
    #[error("creating TUN device {name}: {source}")]
    Other { name: String, source: io::Error },
}

impl TunDevice {
    /// Creates the TUN interface `name` (layer 3, no packet information header).
    pub fn create(name: &str) -> Result<Self, TunError> {
        let mut config = tun::Configuration::default();
        config.tun_name(name).layer(tun::Layer::L3);
        config.platform_config(|p| {
            // Addresses, MTU and link state are set over netlink, IPv6 included.
            p.ensure_root_privileges(false);
            p.vnet_hdr(true);
        });
        let device = tun::create(&config).map_err(|e| classify(name, e))?;
        device.set_nonblock().map_err(|source| TunError::Other {
            name: name.into(),
            source,
        })?;
        // SAFETY: the tun::Device owns its descriptor and keeps it open, unchanged, until it is
        // dropped, which happens only when this AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register(device) }.map_err(|e| TunError::Other {
            name: name.into(),
            source: io::Error::other(e.to_string()),
        })?;
        let offloads = negotiate_offloads(fd.get_ref().as_raw_fd());
        Ok(Self {
            fd,
            name: name.to_string(),
            offloads,
        })
    }

    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits until a packet can be read.
    pub async fn readable(
        &self,
    ) -> io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, tun::Device>> {
        self.fd.readable().await
    }

    /// Waits until a packet can be written.
    pub async fn writable(
        &self,
    ) -> io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, tun::Device>> {
        self.fd.writable().await
    }

    /// Reads one packet; `WouldBlock` when none is waiting.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is a valid writable region of buf.len() bytes for the duration of the call.
        let n = unsafe { libc::read(self.raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes one packet; `WouldBlock` when the device cannot take it now.
    pub fn try_write(&self, packet: &[u8]) -> io::Result<usize> {
        // SAFETY: packet is a valid readable region of packet.len() bytes.
        let n = unsafe { libc::write(self.raw_fd(), packet.as_ptr().cast(), packet.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes one packet gathered from `parts` (virtio-net header first); `WouldBlock` when the
    /// device cannot take it now.
    pub fn try_write_vectored(&self, parts: &[libc::iovec]) -> io::Result<usize> {
        // SAFETY: every iovec points at memory the caller keeps alive and unchanged for the call.
        let n = unsafe { libc::writev(self.raw_fd(), parts.as_ptr(), parts.len() as libc::c_int) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn raw_fd(&self) -> RawFd {
        self.fd.get_ref().as_raw_fd()
    }
}

/// Asks for the richest set of offloads the kernel accepts (UDP segmentation needs 6.2).
fn negotiate_offloads(fd: RawFd) -> Offloads {
    let tcp = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
    let attempts = [
        (tcp | TUN_F_USO4 | TUN_F_USO6, Offloads::TcpAndUdp),
        (tcp, Offloads::Tcp),
    ];
    for (flags, offloads) in attempts {
        // SAFETY: TUNSETOFFLOAD takes its flags by value; fd is our open TUN descriptor.
        if unsafe { libc::ioctl(fd, TUNSETOFFLOAD, libc::c_ulong::from(flags)) } == 0 {
            return offloads;
        }
    }
    tracing::info!("the kernel refused TUN offloads; packets will cross one at a time");
    Offloads::None
}

fn classify(name: &str, error: tun::Error) -> TunError {
    match error {
        tun::Error::Io(io) => match io.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => TunError::NoTunDevice,
            Some(libc::EPERM) | Some(libc::EACCES) => TunError::NotPermitted(name.into()),
            Some(libc::EBUSY) | Some(libc::EEXIST) | Some(libc::EINVAL) => {
                TunError::Busy(name.into())
            }
            _ => TunError::Other {
                name: name.into(),
                source: io,
            },
        },
        other => TunError::Other {
            name: name.into(),
            source: io::Error::other(other.to_string()),
        },
    }
}
