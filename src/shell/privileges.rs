//! What the daemon keeps of its privileges once the interface is up. Creating the TUN device,
//! binding a low port and configuring addresses and routes need root's capabilities; afterwards
//! only CAP_NET_ADMIN is needed, for live reloads that change addresses and routes. Everything
//! else is dropped for good, and no exec can win privileges back (no_new_privs).

use std::io;

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words of each capability set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_ADMIN: u32 = 12;
/// Highest capability number the kernel may know; dropping past it is harmless.
const CAP_LAST: u32 = 63;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Keeps CAP_NET_ADMIN only (when we had it), and CAP_NET_BIND_SERVICE too when
/// `bind_low_port` (the DHT node, started next, binds a port below 1024); removes every other
/// capability from the bounding set as well, and sets no_new_privs. Returns whether
/// CAP_NET_ADMIN is still held.
///
/// All of this applies to the calling thread and to threads it starts afterwards, never to
/// threads already running: call it before any other thread exists.
pub fn keep_only_net_admin(bind_low_port: bool) -> io::Result<bool> {
    // SAFETY: prctl with these options takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let permitted = current()?[0].permitted;
    let had_net_admin = permitted & (1 << CAP_NET_ADMIN) != 0;
    let mut wanted = 1u32 << CAP_NET_ADMIN;
    if bind_low_port {
        wanted |= 1 << CAP_NET_BIND_SERVICE;
    }
    for cap in 0..=CAP_LAST {
        if cap >= 32 || wanted & (1 << cap) == 0 {
            // EINVAL past the kernel's last capability, EPERM without CAP_SETPCAP: either way
            // that capability is not ours to keep.
            // SAFETY: integer arguments only.
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        }
    }
    let keep = permitted & wanted;
    let data = [
        CapData {
            effective: keep,
            permitted: keep,
            inheritable: 0,
        },
        CapData::default(),
    ];
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: header and the two data words match the kernel's v3 layout and outlive the call.
    if unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(had_net_admin)
}

fn current() -> io::Result<[CapData; 2]> {
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: as for capset; the kernel fills the two data words.
    if unsafe {
        libc::syscall(
            libc::SYS_capget,
            &header as *const CapHeader,
            data.as_mut_ptr(),
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(data)
}
