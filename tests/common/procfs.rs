//! Figures read from /proc: a process's resident memory, and a namespace's UDP counters and
//! bound ports.

use std::fs;

use super::in_netns;

/// Resident memory of a process, in KiB, from /proc/PID/status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcMemory {
    /// VmRSS: resident now.
    pub rss_kib: u64,
    /// VmHWM: the most that was ever resident (the kernel's own peak, not sampled by us).
    pub hwm_kib: u64,
    /// RssFile: the resident part that maps files, mostly the program's and libraries' code.
    /// It depends on the build (a debug binary keeps far more code pages), not on the load.
    pub file_kib: u64,
}

impl ProcMemory {
    /// Resident memory that the process itself allocated (heap, stacks, buffers): VmRSS less the
    /// file-backed pages.
    pub fn private_kib(&self) -> u64 {
        self.rss_kib.saturating_sub(self.file_kib)
    }
}

/// Read VmRSS, VmHWM and RssFile of `pid`.
pub fn proc_memory(pid: u32) -> Result<ProcMemory, String> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"))?;
    let field = |name: &str| -> Result<u64, String> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{path} has no {name} line"))
    };
    Ok(ProcMemory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
        file_kib: field("RssFile:")?,
    })
}

/// A counter of the `Udp:` lines of namespace `ns`'s /proc/net/snmp, e.g. "RcvbufErrors" (datagrams
/// dropped because a socket's receive buffer was full).
pub fn netns_udp_counter(ns: &str, name: &str) -> Result<u64, String> {
    let name = name.to_string();
    in_netns(ns, move || {
        // thread-self, not self: only this thread has joined the namespace.
        let text = fs::read_to_string("/proc/thread-self/net/snmp")
            .map_err(|e| format!("read /proc/thread-self/net/snmp: {e}"))?;
        let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
        let (Some(head), Some(values)) = (udp.next(), udp.next()) else {
            return Err("no Udp: lines in /proc/net/snmp".to_string());
        };
        head.split_whitespace()
            .zip(values.split_whitespace())
            .find(|(h, _)| *h == name)
            .and_then(|(_, v)| v.parse().ok())
            .ok_or_else(|| format!("no Udp {name} counter in /proc/net/snmp"))
    })
    .join()
    .unwrap_or_else(|_| Err("snmp reader thread panicked".to_string()))
}

/// Whether a UDP socket in namespace `ns` is bound to local port `port` (IPv4).
pub fn udp_port_bound(ns: &str, port: u16) -> Result<bool, String> {
    in_netns(ns, move || {
        // thread-self, not self: only this thread has joined the namespace.
        let text = fs::read_to_string("/proc/thread-self/net/udp")
            .map_err(|e| format!("read /proc/thread-self/net/udp: {e}"))?;
        Ok(text.lines().skip(1).any(|line| {
            line.split_whitespace()
                .nth(1)
                .and_then(|local| local.rsplit(':').next())
                .and_then(|hex| u16::from_str_radix(hex, 16).ok())
                == Some(port)
        }))
    })
    .join()
    .unwrap_or_else(|_| Err("/proc/net/udp reader thread panicked".to_string()))
}
