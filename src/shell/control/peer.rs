//! Who is on the other end of a control connection. The daemon serves root, holders of
//! CAP_NET_ADMIN and its own user (a rootless daemon's) only (an abstract socket has no file permissions to say so); the CLI talks
//! only to a daemon run by root or by its own user, not to whoever took the name first.
//!
//! The daemon reads the client's capabilities from /proc by the pid SO_PEERCRED gave. The
//! client could exit and its pid be reused by a privileged process in the moment between, but
//! it would have to cycle through the pid space first; pidfds would close even that gap, on
//! kernels that have SO_PEERPIDFD.

use std::os::fd::AsFd;

/// CAP_NET_ADMIN's bit in the capability sets of /proc/PID/status.
const CAP_NET_ADMIN: u32 = 12;

/// Whether the client with these credentials may use the control socket; the refusal says why.
pub(super) fn authorize(uid: u32, pid: Option<i32>) -> Result<(), String> {
    // A rootless daemon (userspace mode) serves its own user too.
    if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
        return Ok(());
    }
    let privileged = pid.filter(|&pid| pid > 0).is_some_and(has_net_admin_here);
    if privileged {
        Ok(())
    } else {
        Err(format!(
            "permission denied: the control socket serves root and CAP_NET_ADMIN only \
             (this client runs as uid {uid})"
        ))
    }
}

/// The credentials of the process at the other end of `socket`: uid and pid.
pub(super) fn credentials(socket: &impl AsFd) -> std::io::Result<(u32, i32)> {
    let cred = nix::sys::socket::getsockopt(socket, nix::sys::socket::sockopt::PeerCredentials)?;
    Ok((cred.uid(), cred.pid()))
}

/// Whether a daemon running as `uid` is one the CLI may believe: root's, or its own user's.
pub(super) fn trusted_daemon(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// CAP_NET_ADMIN in the effective set of `pid`, counted only when `pid` is in our user
/// namespace: in a user namespace of its own, an unprivileged user holds every capability
/// but none of them reach our network namespace. Two processes are in one user namespace
/// when their uid_map files read the same (each shows its mapping relative to the reader's).
fn has_net_admin_here(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    if effective & (1 << CAP_NET_ADMIN) == 0 {
        return false;
    }
    let map = |who: &str| std::fs::read_to_string(format!("/proc/{who}/uid_map")).ok();
    matches!((map(&pid.to_string()), map("self")), (Some(theirs), Some(ours)) if theirs == ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_served_and_a_vanished_or_unprivileged_client_is_not() {
        assert_eq!(authorize(0, None), Ok(()));
        assert!(authorize(65534, None).is_err());
        // A pid that cannot exist (above the kernel's pid_max limit).
        let refusal = authorize(65534, Some(i32::MAX)).unwrap_err();
        assert!(refusal.contains("uid 65534"), "{refusal}");
    }

    #[test]
    fn a_client_with_our_own_capabilities_is_served_when_it_holds_net_admin() {
        // This test process, seen by itself, is the client: served exactly when it holds
        // CAP_NET_ADMIN (as root in CI).
        let pid = std::process::id() as i32;
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let holds = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
            .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0);
        assert_eq!(authorize(1000, Some(pid)).is_ok(), holds);
    }
}
