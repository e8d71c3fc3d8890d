//! An optional Prometheus endpoint (`[interface] metrics_listen`): plain HTTP, text exposition
//! format, one scrape per connection. A scrape asks the event loop for the same snapshot
//! `dhtun status` shows, through the control channel, so counters are never read half-updated.

use crate::core::limits::CONTROL_CONNECTIONS;
use crate::shell::control::{ControlCommand, ControlRequest};
use crate::shell::status::{InterfaceStatus, PeerStatus, RingStatus};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// How long a scraper may take to send its request line.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves scrapes until the task is aborted.
pub fn spawn(
    listener: TcpListener,
    commands: mpsc::Sender<ControlCommand>,
) -> tokio::task::JoinHandle<()> {
    let permits = Arc::new(Semaphore::new(CONTROL_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                continue;
            };
            let commands = commands.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let mut request = [0u8; 1024];
                let _ = tokio::time::timeout(READ_TIMEOUT, stream.read(&mut request)).await;
                let (status, body) = match scrape(&commands).await {
                    Some(body) => ("200 OK", body),
                    None => ("503 Service Unavailable", "daemon busy\n".to_string()),
                };
                let response = format!(
                    "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    })
}

async fn scrape(commands: &mpsc::Sender<ControlCommand>) -> Option<String> {
    let (reply, answer) = oneshot::channel();
    commands
        .try_send(ControlCommand {
            request: ControlRequest::Status,
            reply,
        })
        .ok()?;
    let json = answer.await.ok()?;
    let status: InterfaceStatus = serde_json::from_str(&json).ok()?;
    Some(render(&status))
}

/// A per-peer counter: metric name, help text, and how to read it from a peer's status.
/// A ring gauge: metric name, help text, and how to read it from a ring's status.
type RingGauge = (&'static str, &'static str, fn(&RingStatus) -> usize);

type PeerCounter = (&'static str, &'static str, fn(&PeerStatus) -> u64);

/// The Prometheus text form of a status snapshot.
pub fn render(status: &InterfaceStatus) -> String {
    let iface = escape(&status.interface);
    let mut out = String::new();
    let _ = writeln!(out, "# HELP dhtun_drops_total Packets dropped, by reason.");
    let _ = writeln!(out, "# TYPE dhtun_drops_total counter");
    for (reason, n) in &status.drops {
        let _ = writeln!(
            out,
            "dhtun_drops_total{{interface=\"{iface}\",reason=\"{reason}\"}} {n}"
        );
    }
    let _ = writeln!(out, "# HELP dhtun_ring_queued Packets waiting in a ring.");
    let _ = writeln!(out, "# TYPE dhtun_ring_queued gauge");
    for (ring, r) in &status.rings {
        let _ = writeln!(
            out,
            "dhtun_ring_queued{{interface=\"{iface}\",ring=\"{ring}\"}} {}",
            r.queued
        );
    }
    let _ = writeln!(
        out,
        "# HELP dhtun_ring_slots Capacity of a ring, in packets."
    );
    let _ = writeln!(out, "# TYPE dhtun_ring_slots gauge");
    for (ring, r) in &status.rings {
        let _ = writeln!(
            out,
            "dhtun_ring_slots{{interface=\"{iface}\",ring=\"{ring}\"}} {}",
            r.slots
        );
    }
    let ring_bytes: [RingGauge; 2] = [
        (
            "dhtun_ring_queued_bytes",
            "Bytes of the packets waiting in a ring.",
            |r| r.queued_bytes,
        ),
        (
            "dhtun_ring_max_bytes",
            "Byte cap of a ring (ring_bytes).",
            |r| r.max_bytes,
        ),
    ];
    for (name, help, value) in ring_bytes {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (ring, r) in &status.rings {
            let _ = writeln!(
                out,
                "{name}{{interface=\"{iface}\",ring=\"{ring}\"}} {}",
                value(r)
            );
        }
    }
    let counters: [PeerCounter; 4] = [
        (
            "dhtun_peer_rx_bytes_total",
            "Bytes received from a peer, on the wire.",
            |p| p.rx_bytes,
        ),
        (
            "dhtun_peer_tx_bytes_total",
            "Bytes sent to a peer, on the wire.",
            |p| p.tx_bytes,
        ),
        (
            "dhtun_peer_rx_packets_total",
            "Packets received from a peer.",
            |p| p.rx_packets,
        ),
        (
            "dhtun_peer_tx_packets_total",
            "Packets sent to a peer.",
            |p| p.tx_packets,
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for peer in &status.peers {
            let key = escape(&peer.public_key);
            let _ = writeln!(
                out,
                "{name}{{interface=\"{iface}\",peer=\"{key}\"}} {}",
                value(peer)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP dhtun_peer_last_handshake_seconds Seconds since the latest handshake with a peer."
    );
    let _ = writeln!(out, "# TYPE dhtun_peer_last_handshake_seconds gauge");
    for peer in &status.peers {
        if let Some(age) = peer.last_handshake_secs_ago {
            let key = escape(&peer.public_key);
            let _ = writeln!(
                out,
                "dhtun_peer_last_handshake_seconds{{interface=\"{iface}\",peer=\"{key}\"}} {age}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP dhtun_peer_relayed Whether a peer is reached through a relay (1) or not (0)."
    );
    let _ = writeln!(out, "# TYPE dhtun_peer_relayed gauge");
    for peer in &status.peers {
        let key = escape(&peer.public_key);
        let relayed = u8::from(peer.path.as_deref() == Some("relay"));
        let _ = writeln!(
            out,
            "dhtun_peer_relayed{{interface=\"{iface}\",peer=\"{key}\"}} {relayed}"
        );
    }
    if status.relay {
        let _ = writeln!(
            out,
            "# HELP dhtun_relayed_packets_total Packets this node forwarded as a relay."
        );
        let _ = writeln!(out, "# TYPE dhtun_relayed_packets_total counter");
        let _ = writeln!(
            out,
            "dhtun_relayed_packets_total{{interface=\"{iface}\"}} {}",
            status.relayed_packets
        );
    }
    if let Some(dht) = &status.dht {
        let _ = writeln!(
            out,
            "# HELP dhtun_dht_routing_table_size Nodes in the DHT routing table."
        );
        let _ = writeln!(out, "# TYPE dhtun_dht_routing_table_size gauge");
        let _ = writeln!(
            out,
            "dhtun_dht_routing_table_size{{interface=\"{iface}\"}} {}",
            dht.routing_table_size
        );
    }
    out
}

/// Label values are quoted; a backslash, quote or newline in one must be escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell::status::RingStatus;
    use std::collections::BTreeMap;

    #[test]
    fn renders_counters_with_escaped_labels() {
        let status = InterfaceStatus {
            interface: "dh\"t0".into(),
            public_key: "key".into(),
            listen_port: 51820,
            addresses: vec![],
            mtu: 1420,
            drops: BTreeMap::from([("replay".to_string(), 3)]),
            rings: BTreeMap::from([(
                "tun_to_udp".to_string(),
                RingStatus {
                    slots: 256,
                    queued: 7,
                    max_bytes: 262144,
                    queued_bytes: 9856,
                },
            )]),
            dht: None,
            relay: false,
            relayed_packets: 0,
            relayed_bytes: 0,
            reflexive_address: None,
            reflexive_port_varies: false,
            peers: vec![PeerStatus {
                public_key: "abc=".into(),
                endpoint: None,
                endpoint_source: None,
                path: None,
                relay: None,
                is_relay: false,
                allowed_ips: vec![],
                last_handshake_secs_ago: Some(4),
                persistent_keepalive: None,
                rx_bytes: 10,
                tx_bytes: 20,
                rx_packets: 1,
                tx_packets: 2,
                drops: BTreeMap::new(),
                dht_sequence: None,
                dht_record_age_secs: None,
            }],
        };
        let text = render(&status);
        assert!(
            text.contains("dhtun_drops_total{interface=\"dh\\\"t0\",reason=\"replay\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("dhtun_peer_relayed{interface=\"dh\\\"t0\",peer=\"abc=\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("dhtun_ring_queued{interface=\"dh\\\"t0\",ring=\"tun_to_udp\"} 7\n"));
        assert!(text.contains(
            "dhtun_ring_queued_bytes{interface=\"dh\\\"t0\",ring=\"tun_to_udp\"} 9856\n"
        ));
        assert!(
            text.contains("dhtun_peer_tx_bytes_total{interface=\"dh\\\"t0\",peer=\"abc=\"} 20\n")
        );
        assert!(text.contains(
            "dhtun_peer_last_handshake_seconds{interface=\"dh\\\"t0\",peer=\"abc=\"} 4\n"
        ));
    }
}
