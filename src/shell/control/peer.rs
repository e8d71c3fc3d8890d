//! Who is on the other end of a control connection. The daemon serves root, holders of
//! CAP_NET_ADMIN and its own user (a rootless daemon's) only (an abstract socket has no file
//! permissions to say so); the CLI talks only to a daemon run by root or by its own user, not
//! to whoever took the name first.
//!
//! The daemon reads the client's capabilities from /proc by the pid SO_PEERCRED gave, and those
//! are the process's capabilities now, not when it connected: a client may connect, send its
//! request and exec another program before the daemon looks. So a non-root client is served
//! only when, besides CAP_NET_ADMIN, every uid and gid of the process still equals the ones
//! SO_PEERCRED recorded at connect: the exec of a setuid or setgid binary changes them. What
//! remains (docs/control-socket.md): the exec of a binary with file capabilities that include
//! cap_net_admin changes no uid, and passes. A pidfd (SO_PEERPIDFD) does not close that gap
//! either: it names the same process across an exec. Pid reuse is the lesser gap: the client
//! would have to exit and the pid space cycle in the moment between.

use std::os::fd::AsFd;

/// CAP_NET_ADMIN's bit in the capability sets of /proc/PID/status.
const CAP_NET_ADMIN: u32 = 12;

/// Whether the client with these credentials (SO_PEERCRED's, taken at connect) may use the
/// control socket; the refusal says why.
pub(super) fn authorize(uid: u32, gid: u32, pid: Option<i32>) -> Result<(), String> {
    // A rootless daemon (userspace mode) serves its own user too.
    if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
        return Ok(());
    }
    let privileged = pid
        .filter(|&pid| pid > 0)
        .and_then(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .map(|s| (pid, s))
        })
        .is_some_and(|(pid, status)| {
            ids_unchanged(&status, uid, gid) && has_net_admin_here(pid, &status)
        });
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
fn has_net_admin_here(pid: i32, status: &str) -> bool {
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

/// Whether every field (real, effective, saved, filesystem) of the Uid: and Gid: lines of a
/// /proc/PID/status equals `uid` and `gid`: false after the exec of a setuid or setgid binary.
fn ids_unchanged(status: &str, uid: u32, gid: u32) -> bool {
    let all_equal = |prefix: &str, want: u32| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(prefix))
            .is_some_and(|ids| {
                let ids: Vec<Option<u32>> =
                    ids.split_whitespace().map(|id| id.parse().ok()).collect();
                ids.len() == 4 && ids.iter().all(|&id| id == Some(want))
            })
    };
    all_equal("Uid:", uid) && all_equal("Gid:", gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_served_and_a_vanished_or_unprivileged_client_is_not() {
        assert_eq!(authorize(0, 0, None), Ok(()));
        assert!(authorize(65534, 65534, None).is_err());
        // A pid that cannot exist (above the kernel's pid_max limit).
        let refusal = authorize(65534, 65534, Some(i32::MAX)).unwrap_err();
        assert!(refusal.contains("uid 65534"), "{refusal}");
    }

    fn holds_net_admin(status: &str) -> bool {
        status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
            .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
    }

    #[test]
    fn a_client_with_our_own_ids_is_served_when_it_holds_net_admin() {
        // This test process, seen by itself, is the client: served exactly when it holds
        // CAP_NET_ADMIN (as root in CI), and only under the ids it really has.
        let pid = std::process::id() as i32;
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let (uid, gid) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        if uid != 0 {
            assert_eq!(
                authorize(uid, gid, Some(pid)).is_ok(),
                holds_net_admin(&status)
            );
        }
        assert!(ids_unchanged(&status, uid, gid), "{status}");
        // A client that connected as nobody, whose pid now shows our ids and capabilities.
        assert!(authorize(65534, 65534, Some(pid)).is_err());
    }

    #[test]
    fn a_client_that_execs_a_setuid_binary_after_connecting_is_refused() {
        // The state of a process run by nobody that connected, then exec-ed a setuid-root
        // binary (passwd): real uid and gid nobody's, effective root, every capability.
        // Made here without a setuid file: real ids nobody's, the others root's. Root only,
        // skipped otherwise.
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let mut command = std::process::Command::new("sleep");
        command.arg("10");
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                if libc::setresgid(65534, 0, 0) != 0 || libc::setresuid(65534, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn();
        let Ok(mut child) = child else { return };
        let pid = child.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut status = String::new();
        // Wait for setpriv to have set the real ids and exec-ed sleep.
        while std::time::Instant::now() < deadline {
            status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            if status.contains("Name:\tsleep") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let verdict = authorize(65534, 65534, Some(pid));
        let _ = child.kill();
        let _ = child.wait();
        assert!(status.contains("Name:\tsleep"), "{status}");
        assert!(holds_net_admin(&status), "{status}");
        assert!(
            verdict.is_err(),
            "served a setuid-root process as nobody:\n{status}"
        );
    }

    #[test]
    fn every_uid_and_gid_field_must_match() {
        let status = "Uid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\n";
        assert!(ids_unchanged(status, 65534, 65534));
        assert!(!ids_unchanged(status, 65534, 0));
        let setuid = "Uid:\t65534\t0\t0\t0\nGid:\t65534\t65534\t65534\t65534\n";
        assert!(!ids_unchanged(setuid, 65534, 65534));
        let setgid = "Uid:\t65534\t65534\t65534\t65534\nGid:\t65534\t42\t42\t42\n";
        assert!(!ids_unchanged(setgid, 65534, 65534));
        assert!(!ids_unchanged("", 65534, 65534));
    }
}
