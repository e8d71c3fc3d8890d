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
/// How long a scraper may take to read the answer: one that stops reading would otherwise hold
/// one of the few connection slots for as long as it stays connected, and a handful of them
/// would switch monitoring off.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

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
                let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                })
                .await;
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

/// A ring gauge: metric name, help text, and how to read it from a ring's status.
type RingGauge = (&'static str, &'static str, fn(&RingStatus) -> usize);

/// A per-peer counter: metric name, help text, and how to read it from a peer's status.
type PeerCounter = (&'static str, &'static str, fn(&PeerStatus) -> u64);

/// The Prometheus text form of a status snapshot.
pub fn render(status: &InterfaceStatus) -> String {
    let iface = escape(&status.interface);
    let mut out = String::new();
    let drops = status
        .drops
        .iter()
        .map(|(reason, n)| (format!("interface=\"{iface}\",reason=\"{reason}\""), *n));
    family(
        &mut out,
        "dhtun_drops_total",
        "counter",
        "Packets dropped, by reason.",
        drops,
    );

    let ring_gauges: [RingGauge; 4] = [
        ("dhtun_ring_queued", "Packets waiting in a ring.", |r| {
            r.queued
        }),
        ("dhtun_ring_slots", "Capacity of a ring, in packets.", |r| {
            r.slots
        }),
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
    for (name, help, value) in ring_gauges {
        let rings = status.rings.iter().map(|(ring, r)| {
            (
                format!("interface=\"{iface}\",ring=\"{ring}\""),
                value(r) as u64,
            )
        });
        family(&mut out, name, "gauge", help, rings);
    }

    let peer_label =
        |p: &PeerStatus| format!("interface=\"{iface}\",peer=\"{}\"", escape(&p.public_key));
    let peer_counters: [PeerCounter; 9] = [
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
        (
            "dhtun_peer_rx_lost_packets_total",
            "Packets a peer sent that never arrived (gaps in its message counters).",
            |p| p.rx_lost_packets,
        ),
        (
            "dhtun_peer_loss_reports_received_total",
            "Loss reports a peer sent us.",
            |p| p.pacing.loss_reports_received,
        ),
        (
            "dhtun_peer_pace_cuts_total",
            "Loss reports from a peer that set or lowered our pace toward it.",
            |p| p.pacing.cuts,
        ),
        (
            "dhtun_peer_pace_unresponsive_total",
            "Pacing episodes toward a peer given up because a lower pace did not cure its loss.",
            |p| p.pacing.unresponsive_episodes,
        ),
        (
            "dhtun_peer_loss_reports_sent_total",
            "Loss reports we sent a peer.",
            |p| p.pacing.loss_reports_sent,
        ),
    ];
    for (name, help, value) in peer_counters {
        let peers = status.peers.iter().map(|p| (peer_label(p), value(p)));
        family(&mut out, name, "counter", help, peers);
    }
    let handshakes = status
        .peers
        .iter()
        .filter_map(|p| p.last_handshake_secs_ago.map(|age| (peer_label(p), age)));
    family(
        &mut out,
        "dhtun_peer_last_handshake_seconds",
        "gauge",
        "Seconds since the latest handshake with a peer.",
        handshakes,
    );
    let paces = status
        .peers
        .iter()
        .filter_map(|p| p.pacing.rate_bits_per_second.map(|r| (peer_label(p), r)));
    family(
        &mut out,
        "dhtun_peer_pace_bits_per_second",
        "gauge",
        "The pace a peer's loss reports set; absent while the peer is not paced.",
        paces,
    );
    let relayed = status.peers.iter().map(|p| {
        let on_relay = p.path.as_deref() == Some("relay");
        (peer_label(p), u64::from(on_relay))
    });
    family(
        &mut out,
        "dhtun_peer_relayed",
        "gauge",
        "Whether a peer is reached through a relay (1) or not (0).",
        relayed,
    );

    let interface_label = format!("interface=\"{iface}\"");
    if status.relay {
        family(
            &mut out,
            "dhtun_relayed_packets_total",
            "counter",
            "Packets this node forwarded as a relay.",
            [(interface_label.clone(), status.relayed_packets)],
        );
    }
    let poll = &status.busy_poll;
    if poll.window_us > 0 {
        let busy_poll_counters = [
            (
                "dhtun_busy_poll_rounds_total",
                "Busy-poll rounds run after wake-ups that read packets.",
                poll.counts.rounds,
            ),
            (
                "dhtun_busy_poll_empty_rounds_total",
                "Busy-poll rounds not worth it: no answer came back and no dense stream was found.",
                poll.counts.empty_rounds,
            ),
            (
                "dhtun_busy_poll_packets_total",
                "Packets and datagrams read while busy polling.",
                poll.counts.packets,
            ),
            (
                "dhtun_busy_poll_skipped_total",
                "Wake-ups that ran no busy-poll round because earlier rounds were not worth it.",
                poll.counts.skipped,
            ),
        ];
        for (name, help, value) in busy_poll_counters {
            family(
                &mut out,
                name,
                "counter",
                help,
                [(interface_label.clone(), value)],
            );
        }
    }
    if let Some(dht) = &status.dht {
        family(
            &mut out,
            "dhtun_dht_routing_table_size",
            "gauge",
            "Nodes in the DHT routing table.",
            [(interface_label, dht.routing_table_size as u64)],
        );
    }
    out
}

/// One metric family: its HELP and TYPE lines, then a sample per (labels, value).
fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl IntoIterator<Item = (String, u64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
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
    use crate::shell::datapath::BusyPollStats;
    use crate::shell::status::{BusyPollStatus, PacingStatus, RingStatus};
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
            busy_poll: BusyPollStatus {
                window_us: 50,
                counts: BusyPollStats {
                    rounds: 9,
                    empty_rounds: 2,
                    packets: 30,
                    skipped: 5,
                },
            },
            routing: Default::default(),
            mode: "tun".into(),
            userspace: None,
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
                rx_lost_packets: 4,
                drops: BTreeMap::new(),
                pacing: PacingStatus {
                    rate_bits_per_second: Some(800_000_000),
                    loss_reports_received: 6,
                    cuts: 3,
                    unresponsive_episodes: 0,
                    loss_reports_sent: 1,
                },
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
        assert!(text.contains(
            "dhtun_peer_rx_lost_packets_total{interface=\"dh\\\"t0\",peer=\"abc=\"} 4\n"
        ));
        assert!(
            text.contains("dhtun_peer_tx_bytes_total{interface=\"dh\\\"t0\",peer=\"abc=\"} 20\n")
        );
        assert!(text.contains(
            "dhtun_peer_last_handshake_seconds{interface=\"dh\\\"t0\",peer=\"abc=\"} 4\n"
        ));
        assert!(text.contains("dhtun_busy_poll_empty_rounds_total{interface=\"dh\\\"t0\"} 2\n"));
        assert!(text.contains("dhtun_busy_poll_skipped_total{interface=\"dh\\\"t0\"} 5\n"));
        assert!(text.contains(
            "dhtun_peer_pace_bits_per_second{interface=\"dh\\\"t0\",peer=\"abc=\"} 800000000\n"
        ));
        assert!(
            text.contains("dhtun_peer_pace_cuts_total{interface=\"dh\\\"t0\",peer=\"abc=\"} 3\n")
        );
    }
}
