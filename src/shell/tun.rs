//! The TUN device: created through the `tun` crate (configuration is left to netlink), read and
//! written without blocking through tokio's readiness on its file descriptor.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use tokio::io::unix::AsyncFd;

/// An open TUN device in non-blocking mode.
pub struct TunDevice {
    fd: AsyncFd<tun::Device>,
    name: String,
}

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
        Ok(Self {
            fd,
            name: name.to_string(),
        })
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

    fn raw_fd(&self) -> RawFd {
        self.fd.get_ref().as_raw_fd()
    }
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
