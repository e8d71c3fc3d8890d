//! What `dhtun status` shows: a snapshot of one interface, serialised as the contract's JSON,
//! and the `wg show`-like text a person reads.

use crate::core::device::Device;
use crate::core::peer::Path;
use crate::shell::datapath::BusyPollStats;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub interface: String,
    pub public_key: String,
    pub listen_port: u16,
    pub addresses: Vec<String>,
    pub mtu: usize,
    pub drops: BTreeMap<String, u64>,
    pub rings: BTreeMap<String, RingStatus>,
    /// The DHT node, or null when discovery is off.
    pub dht: Option<crate::shell::dht::DhtStatus>,
    /// This node forwards packets between its peers (`[interface] relay`).
    #[serde(default)]
    pub relay: bool,
    /// Packets and bytes (of the carried datagrams) forwarded as a relay.
    #[serde(default)]
    pub relayed_packets: u64,
    #[serde(default)]
    pub relayed_bytes: u64,
    /// The UDP socket's outside IP and port as DHT nodes see it, or null while unknown.
    #[serde(default)]
    pub reflexive_address: Option<String>,
    /// Whether DHT nodes saw that socket at different ports: the NAT maps per destination.
    #[serde(default)]
    pub reflexive_port_varies: bool,
    /// Busy polling (`busy_poll_us`): its window and what its rounds found.
    #[serde(default)]
    pub busy_poll: BusyPollStatus,
    /// Where the tunnel's routes go and the mark on dhtun's sockets (`table`, `fwmark`).
    #[serde(default)]
    pub routing: RoutingStatus,
    /// "tun" or "userspace" (`[interface] mode`).
    #[serde(default = "tun_mode")]
    pub mode: String,
    /// Userspace mode: its forwards, exposes and SOCKS5 proxy with their connections and bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userspace: Option<crate::shell::userspace::UserspaceStatus>,
    pub peers: Vec<PeerStatus>,
}

fn tun_mode() -> String {
    "tun".to_string()
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BusyPollStatus {
    /// The configured window; 0 when busy polling is off.
    pub window_us: u64,
    #[serde(flatten)]
    pub counts: BusyPollStats,
}

impl RoutingStatus {
    fn to_text(&self) -> String {
        let table = match self.table {
            None => "off (no routes)".to_string(),
            Some(254) => "main".to_string(),
            Some(table) => format!("table {table}"),
        };
        let mark = match self.fwmark {
            Some(mark) => format!(", fwmark {mark}"),
            None => String::new(),
        };
        match self.rule_priority {
            Some(priority) if self.full_tunnel => {
                format!("full tunnel via {table}{mark}, rules at priority {priority}")
            }
            _ => format!("{table}{mark}"),
        }
    }
}

/// `table` and `fwmark` as in use: the table of the tunnel's routes (254, main, unless a full
/// tunnel or `table = N` put them elsewhere; null with `table = "off"`), the mark on dhtun's
/// sockets (null: unmarked), and with a full tunnel the priority of its rules.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RoutingStatus {
    pub table: Option<u32>,
    pub fwmark: Option<u32>,
    pub full_tunnel: bool,
    pub rule_priority: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RingStatus {
    pub slots: usize,
    pub queued: usize,
    /// The ring's byte cap (`ring_bytes`) and the bytes of the packets queued now.
    #[serde(default)]
    pub max_bytes: usize,
    #[serde(default)]
    pub queued_bytes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    pub public_key: String,
    pub endpoint: Option<String>,
    pub endpoint_source: Option<String>,
    /// "direct", "relay", or null while there is no usable session.
    #[serde(default)]
    pub path: Option<String>,
    /// The public key of the relay in use when `path` is "relay".
    #[serde(default)]
    pub relay: Option<String>,
    /// This peer is configured as a relay for us (`relay = true`).
    #[serde(default)]
    pub is_relay: bool,
    pub allowed_ips: Vec<String>,
    pub last_handshake_secs_ago: Option<u64>,
    pub persistent_keepalive: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Packets this peer sent that never arrived (gaps in its counters).
    #[serde(default)]
    pub rx_lost_packets: u64,
    pub drops: BTreeMap<String, u64>,
    /// How fast we send to this peer after its loss reports (see docs/design.md, Pacing).
    #[serde(default)]
    pub pacing: PacingStatus,
    /// Sequence number of the peer's DHT record we last accepted, and how long ago.
    pub dht_sequence: Option<i64>,
    pub dht_record_age_secs: Option<u64>,
}

/// Pacing toward one peer: the pace its loss reports set (null: not paced), the reports it
/// sent us, how many of them set or lowered the pace, the episodes given up because a lower
/// pace did not cure the loss, and the reports we sent it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PacingStatus {
    pub rate_bits_per_second: Option<u64>,
    pub loss_reports_received: u64,
    pub cuts: u64,
    pub unresponsive_episodes: u64,
    pub loss_reports_sent: u64,
}

/// What the shell knows that the core does not.
pub struct ShellFacts<'a> {
    pub interface: &'a str,
    pub listen_port: u16,
    pub addresses: &'a [ipnetwork::IpNetwork],
    pub mtu: usize,
    pub rings: [(&'static str, RingStatus); 2],
    pub dht: Option<crate::shell::dht::DhtStatus>,
    pub reflexive_address: Option<std::net::SocketAddr>,
    pub reflexive_port_varies: bool,
    pub busy_poll: BusyPollStatus,
    pub routing: crate::shell::route_plan::PolicyStatus,
}

impl InterfaceStatus {
    pub fn snapshot(device: &Device, shell: ShellFacts<'_>, now: Duration) -> Self {
        let all = device.peers();
        let peers = all
            .iter()
            .map(|p| PeerStatus {
                public_key: p.config.public_key.to_base64(),
                endpoint: p.endpoint.map(|e| e.to_string()),
                endpoint_source: p.endpoint_source.map(|s| s.name().to_string()),
                path: p
                    .current
                    .as_ref()
                    .filter(|s| s.is_usable(now))
                    .and_then(|_| p.path())
                    .map(|path| match path {
                        Path::Direct(_) => "direct".to_string(),
                        Path::Relay(_) => "relay".to_string(),
                    }),
                relay: p
                    .relay_via
                    .and_then(|r| all.get(r))
                    .map(|r| r.config.public_key.to_base64()),
                is_relay: p.config.relay,
                allowed_ips: p.config.allowed_ips.iter().map(|n| n.to_string()).collect(),
                last_handshake_secs_ago: p
                    .last_handshake_at
                    .map(|t| now.saturating_sub(t).as_secs()),
                persistent_keepalive: p.config.persistent_keepalive.map(|d| d.as_secs()),
                rx_bytes: p.traffic.rx_bytes,
                tx_bytes: p.traffic.tx_bytes,
                rx_packets: p.traffic.rx_packets,
                tx_packets: p.traffic.tx_packets,
                rx_lost_packets: p.traffic.rx_lost_packets,
                drops: p.drops.iter().map(|(k, v)| (k.to_string(), v)).collect(),
                pacing: PacingStatus {
                    rate_bits_per_second: p.pacer.rate().map(|r| r.saturating_mul(8)),
                    loss_reports_received: p.pacer.reports,
                    cuts: p.pacer.cuts,
                    unresponsive_episodes: p.pacer.unresponsive,
                    loss_reports_sent: p.loss_meter.reports,
                },
                dht_sequence: p.discovery.sequence,
                dht_record_age_secs: p
                    .discovery
                    .record_at
                    .map(|t| now.saturating_sub(t).as_secs()),
            })
            .collect();
        Self {
            interface: shell.interface.to_string(),
            public_key: device.secret_key().public_key().to_base64(),
            listen_port: shell.listen_port,
            addresses: shell.addresses.iter().map(|a| a.to_string()).collect(),
            mtu: shell.mtu,
            drops: device
                .drops()
                .iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            rings: shell
                .rings
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            dht: shell.dht,
            relay: device.serves_relay(),
            relayed_packets: device.relayed().packets,
            relayed_bytes: device.relayed().bytes,
            reflexive_address: shell.reflexive_address.map(|a| a.to_string()),
            reflexive_port_varies: shell.reflexive_port_varies,
            busy_poll: shell.busy_poll,
            routing: RoutingStatus {
                table: shell.routing.table,
                fwmark: shell.routing.fwmark,
                full_tunnel: shell.routing.full_tunnel,
                rule_priority: shell.routing.rule_priority,
            },
            mode: tun_mode(),
            userspace: None,
            peers,
        }
    }

    /// The human-readable form, in the spirit of `wg show`.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "interface: {}", self.interface);
        let _ = writeln!(out, "  public key: {}", self.public_key);
        let _ = writeln!(out, "  listening port: {}", self.listen_port);
        if let Some(userspace) = &self.userspace {
            userspace.write_text(&mut out);
        }
        let _ = writeln!(
            out,
            "  addresses: {}  (mtu {})",
            self.addresses.join(", "),
            self.mtu
        );
        for (name, ring) in &self.rings {
            let _ = writeln!(
                out,
                "  ring {name}: {}/{} slots in use, {} of {} queued",
                ring.queued,
                ring.slots,
                bytes(ring.queued_bytes as u64),
                bytes(ring.max_bytes as u64)
            );
        }
        let _ = writeln!(out, "  drops: {}", drops_text(&self.drops));
        // Not a fault: the kernel's own router solicitations on the link, which no tunnel
        // carries. Shown apart so that a fresh interface reads "drops: none".
        if let Some(&n) = self.drops.get(LINK_LOCAL).filter(|&&n| n > 0) {
            let _ = writeln!(
                out,
                "  link-local packets not carried: {n} (the kernel's router solicitations \
                 and the like)"
            );
        }
        let _ = writeln!(out, "  routing: {}", self.routing.to_text());
        let poll = &self.busy_poll;
        if poll.window_us > 0 {
            let _ = writeln!(
                out,
                "  busy polling: {} µs window, {} rounds ({} not worth it), {} packets read \
                 while polling, {} wake-ups skipped",
                poll.window_us,
                poll.counts.rounds,
                poll.counts.empty_rounds,
                poll.counts.packets,
                poll.counts.skipped
            );
        }
        if self.relay {
            let _ = writeln!(
                out,
                "  relay: serving peers, {} forwarded ({} packets)",
                bytes(self.relayed_bytes),
                self.relayed_packets
            );
        }
        match &self.dht {
            Some(dht) => {
                let state = if dht.bootstrapped {
                    "bootstrapped"
                } else {
                    "not bootstrapped"
                };
                let _ = writeln!(
                    out,
                    "  dht: {state}, {} nodes known, listening on {}",
                    dht.routing_table_size, dht.local_address
                );
                if let Some(at) = dht.last_publish_unix {
                    let _ = writeln!(
                        out,
                        "  dht record{}: sequence {}, published at unix time {at}",
                        if dht.private { " (private)" } else { "" },
                        dht.last_publish_seq.unwrap_or_default()
                    );
                }
                if let Some(error) = &dht.last_error {
                    let _ = writeln!(out, "  dht last error: {error}");
                }
            }
            None => {
                let _ = writeln!(out, "  dht: off");
            }
        }
        if let Some(address) = &self.reflexive_address {
            let varies = if self.reflexive_port_varies {
                " (port differs per destination: direct path unlikely)"
            } else {
                ""
            };
            let _ = writeln!(out, "  reflexive address: {address}{varies}");
        } else if self.dht.is_some() {
            let _ = writeln!(out, "  reflexive address: (not known yet)");
        }
        for peer in &self.peers {
            let _ = writeln!(out, "\npeer: {}", peer.public_key);
            match (&peer.endpoint, &peer.endpoint_source) {
                (Some(e), Some(s)) => {
                    let _ = writeln!(out, "  endpoint: {e} ({s})");
                }
                (Some(e), None) => {
                    let _ = writeln!(out, "  endpoint: {e}");
                }
                _ => {
                    let _ = writeln!(out, "  endpoint: (none yet)");
                }
            }
            match (peer.path.as_deref(), &peer.relay) {
                (Some("relay"), Some(relay)) => {
                    let _ = writeln!(
                        out,
                        "  path: relay via {relay} (no direct path answers; retried every {} s)",
                        crate::core::limits::DIRECT_RETRY_INTERVAL.as_secs()
                    );
                }
                (Some(path), _) => {
                    let _ = writeln!(out, "  path: {path}");
                }
                (None, _) => {
                    let _ = writeln!(out, "  path: (no session)");
                }
            }
            if peer.is_relay {
                let _ = writeln!(out, "  relay: may relay for us");
            }
            let _ = writeln!(out, "  allowed ips: {}", peer.allowed_ips.join(", "));
            if let (Some(seq), Some(age)) = (peer.dht_sequence, peer.dht_record_age_secs) {
                let _ = writeln!(out, "  dht record: sequence {seq}, found {} ago", ago(age));
            }
            let handshake = peer
                .last_handshake_secs_ago
                .map_or_else(|| "never".to_string(), |s| format!("{} ago", ago(s)));
            let _ = writeln!(out, "  latest handshake: {handshake}");
            let _ = writeln!(
                out,
                "  transfer: {} received ({} packets), {} sent ({} packets)",
                bytes(peer.rx_bytes),
                peer.rx_packets,
                bytes(peer.tx_bytes),
                peer.tx_packets
            );
            if peer.rx_lost_packets > 0 {
                let _ = writeln!(
                    out,
                    "  lost on the way here: {} packets",
                    peer.rx_lost_packets
                );
            }
            let pacing = &peer.pacing;
            if let Some(rate) = pacing.rate_bits_per_second {
                let _ = writeln!(
                    out,
                    "  paced: {:.1} Mbit/s after its loss reports ({} received, {} cut the pace)",
                    rate as f64 / 1e6,
                    pacing.loss_reports_received,
                    pacing.cuts
                );
            }
            if let Some(k) = peer.persistent_keepalive {
                let _ = writeln!(out, "  persistent keepalive: every {k} seconds");
            }
            if peer.drops.values().any(|&v| v > 0) {
                let _ = writeln!(out, "  drops: {}", drops_text(&peer.drops));
            }
        }
        out
    }
}

/// The drop key the text status shows on a line of its own.
const LINK_LOCAL: &str = "link_local";

fn drops_text(drops: &BTreeMap<String, u64>) -> String {
    let nonzero: Vec<String> = drops
        .iter()
        .filter(|(k, &v)| v > 0 && k.as_str() != LINK_LOCAL)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    if nonzero.is_empty() {
        "none".to_string()
    } else {
        nonzero.join(", ")
    }
}

fn ago(secs: u64) -> String {
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    match secs {
        s if s < 60 => plural(s, "second"),
        s if s < 3600 => format!("{}, {}", plural(s / 60, "minute"), plural(s % 60, "second")),
        s => format!(
            "{}, {}",
            plural(s / 3600, "hour"),
            plural(s % 3600 / 60, "minute")
        ),
    }
}

/// `n` bytes in B, KiB, MiB... with two decimals.
pub(crate) fn human_bytes(n: u64) -> String {
    bytes(n)
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_reads_as_one_line() {
        let full = RoutingStatus {
            table: Some(51820),
            fwmark: Some(51820),
            full_tunnel: true,
            rule_priority: Some(32765),
        };
        assert_eq!(
            full.to_text(),
            "full tunnel via table 51820, fwmark 51820, rules at priority 32765"
        );
        let main = RoutingStatus {
            table: Some(254),
            ..RoutingStatus::default()
        };
        assert_eq!(main.to_text(), "main");
        assert_eq!(RoutingStatus::default().to_text(), "off (no routes)");
    }

    #[test]
    fn human_units() {
        assert_eq!(ago(1), "1 second");
        assert_eq!(ago(125), "2 minutes, 5 seconds");
        assert_eq!(ago(3661), "1 hour, 1 minute");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.50 KiB");
    }

    #[test]
    fn link_local_packets_are_not_listed_as_drops() {
        let drops: BTreeMap<String, u64> = [("link_local", 2), ("no_route", 0), ("replay", 1)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(drops_text(&drops), "replay 1");
        let fresh: BTreeMap<String, u64> = [("link_local".to_string(), 1)].into();
        assert_eq!(drops_text(&fresh), "none");
    }
}
