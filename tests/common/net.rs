//! Commands a test runs in a lab's namespaces: `ip`, sysctls, stub links, ping through the
//! tunnel, single UDP datagrams, and socket options.

use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::time::Duration;

use super::{describe, in_netns, run_timeout, Lab, Node};

impl Lab {
    /// Run a command inside a namespace (`ip netns exec NS ...`), bounded to 30 s.
    pub fn ns_exec(&self, ns: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).args(args);
        run_timeout(&mut cmd, Duration::from_secs(30))
    }

    /// `ip -n NS ARGS...`.
    pub fn ip(&self, ns: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", ns]).args(args);
        run_timeout(&mut cmd, Duration::from_secs(30))
    }

    /// `ip -n NS ARGS...`, which must succeed; returns stdout.
    #[track_caller]
    pub fn ip_ok(&self, ns: &str, args: &[&str]) -> String {
        let out = self.ip(ns, args);
        if !out.status.success() {
            self.fail(format!(
                "`ip -n {ns} {}` failed: {}",
                args.join(" "),
                describe(&out)
            ));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Create a local stub interface `name` in `ns`, up: a dummy link, or where the kernel has no
    /// dummy driver, a veth pair whose both ends stay in `ns` (`name` and `name`+"p").
    #[track_caller]
    pub fn add_stub_link(&self, ns: &str, name: &str) {
        let dummy = self.ip(ns, &["link", "add", name, "type", "dummy"]);
        if !dummy.status.success() {
            let peer = format!("{name}p");
            self.ip_ok(
                ns,
                &["link", "add", name, "type", "veth", "peer", "name", &peer],
            );
            self.ip_ok(ns, &["link", "set", &peer, "up"]);
        }
        self.ip_ok(ns, &["link", "set", name, "up"]);
    }

    /// The kernel's count of packets it dropped on the way out of interface `iface` in `ns`; for
    /// a TUN device, those that found its queue full because the daemon did not read in time.
    pub fn tx_dropped(&self, ns: &str, iface: &str) -> Result<u64, String> {
        let out = self.ip(ns, &["-s", "-j", "link", "show", "dev", iface]);
        if !out.status.success() {
            return Err(describe(&out));
        }
        let links: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        links[0]["stats64"]["tx"]["dropped"]
            .as_u64()
            .ok_or_else(|| format!("no tx dropped count for {iface}"))
    }

    /// Set an IPv4/IPv6 sysctl (path under /proc/sys, e.g. "net/ipv4/conf/all/rp_filter") in `ns`.
    #[track_caller]
    pub fn sysctl(&self, ns: &str, key: &str, value: &str) {
        let path = format!("/proc/sys/{key}");
        let value = value.to_string();
        let res = in_netns(ns, move || {
            fs::write(&path, value.as_bytes()).map_err(|e| format!("write {path}: {e}"))
        })
        .join()
        .expect("sysctl thread panicked");
        if let Err(e) = res {
            self.fail(format!("cannot set sysctl {key} in {ns}: {e}"));
        }
    }

    /// Ping `addr` from `ns`, one echo per attempt (1 s wait each), up to `attempts` times: the
    /// first packets may be lost while the handshake runs. Returns the number of attempts used.
    pub fn ping(&self, ns: &str, addr: &str, attempts: u32) -> Result<u32, String> {
        let mut last = String::from("no attempt made");
        for i in 1..=attempts {
            let out = self.ns_exec(ns, &["ping", "-n", "-c", "1", "-W", "1", addr]);
            if out.status.success() {
                return Ok(i);
            }
            last = describe(&out);
        }
        Err(format!(
            "ping {addr} from {ns} failed {attempts} times; last attempt: {last}"
        ))
    }

    /// Like `ping`, but a failure fails the test with the daemon logs attached.
    #[track_caller]
    pub fn must_ping(&self, from: &Node, addr: &str) {
        if let Err(e) = self.ping(&from.ns, addr, 15) {
            self.fail(format!(
                "expected {} to reach {addr} through the tunnel: {e}",
                from.ns
            ));
        }
    }

    /// Send one UDP datagram from `src` (a local address in `ns`) to `dst`.
    #[track_caller]
    pub fn send_udp(&self, ns: &str, src: SocketAddr, dst: SocketAddr, payload: &[u8]) {
        let payload = payload.to_vec();
        let res = in_netns(ns, move || {
            let sock = UdpSocket::bind(src).map_err(|e| format!("bind {src}: {e}"))?;
            sock.send_to(&payload, dst)
                .map_err(|e| format!("send {src} -> {dst}: {e}"))?;
            Ok(())
        })
        .join()
        .expect("udp sender thread panicked");
        if let Err(e) = res {
            self.fail(format!("cannot send UDP in {ns}: {e}"));
        }
    }
}

/// setsockopt(2) of an `int` option, e.g. `SO_RCVBUFFORCE`; `what` names it in the error.
pub fn set_int_option(
    fd: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
    what: &str,
) -> Result<(), String> {
    // SAFETY: setsockopt(2) with a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(format!("{what}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}
