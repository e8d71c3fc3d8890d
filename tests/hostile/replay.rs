//! Replayed tunnel packets: datagrams captured on the underlay and sent to B again, before and
//! after its replay window moved on, are all refused and change nothing.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use crate::common;
use crate::common::{in_netns, loud, Lab, Node};
use crate::hostile_support::{transport_header, underlay_of, v4, Capture, UdpSink};
use crate::{drops_delta, peer_drops_delta, wait_for_status};

const REPLAY_PROBES: usize = 200;
const REPLAY_PORT: u16 = 47301;

/// Real tunnel datagrams, captured on the underlay and sent again, are refused by the replay
/// window: counted as `replay`, none delivered, nothing else moved.
#[test]
fn replayed_tunnel_packets_are_rejected() {
    if !common::netns_available("replayed_tunnel_packets_are_rejected") {
        return;
    }
    let (mut lab, a, b) = Lab::pair("rp", 51840);
    lab.up_pair(&a, &b, &[], &[]);
    lab.must_ping(&a, &b.v4);

    // Every datagram the tunnel delivers to B, recorded; each probe is unique.
    let sink_addr = SocketAddrV4::new(v4(&b.v4), REPLAY_PORT);
    let sink =
        UdpSink::start(&b.ns, sink_addr, Duration::from_secs(30)).unwrap_or_else(|e| lab.fail(e));
    let to_b = underlay_of(&b);
    let capture = Capture::start(&a.ns, "ul0", to_b, 10_000, Duration::from_secs(20))
        .unwrap_or_else(|e| lab.fail(format!("capture in {}: {e}", a.ns)));

    let src = SocketAddr::V4(SocketAddrV4::new(v4(&a.v4), 0));
    let probes = in_netns(&a.ns, move || {
        let sock = UdpSocket::bind(src).map_err(|e| format!("bind {src}: {e}"))?;
        for i in 0..REPLAY_PROBES {
            let payload = format!("dhtun replay probe {i:05}");
            sock.send_to(payload.as_bytes(), sink_addr)
                .map_err(|e| format!("send probe {i}: {e}"))?;
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    });
    if let Err(e) = probes
        .join()
        .unwrap_or_else(|_| Err("probe thread panicked".into()))
    {
        lab.fail(format!("sending probes from {}: {e}", a.ns));
    }
    let delivered = sink.wait_for(REPLAY_PROBES, Duration::from_secs(5));
    // Let the last datagrams pass the capture too.
    std::thread::sleep(Duration::from_millis(200));
    let captured = capture
        .finish()
        .unwrap_or_else(|e| lab.fail(format!("capture: {e}")));
    if delivered != REPLAY_PROBES {
        lab.fail(format!(
            "only {delivered} of {REPLAY_PROBES} probes crossed a clean tunnel; cannot judge \
             replays"
        ));
    }
    let transports: Vec<Vec<u8>> = captured
        .payloads
        .iter()
        .filter(|d| transport_header(d).is_some())
        .cloned()
        .collect();
    let carrying_data = transports.iter().filter(|d| d.len() > 32).count();
    if carrying_data < REPLAY_PROBES {
        // Which counters of the session are missing tells a capture problem from a tunnel one.
        let mut counters: Vec<u64> = transports
            .iter()
            .filter_map(|d| transport_header(d).map(|(_, c)| c))
            .collect();
        counters.sort_unstable();
        let gaps: Vec<u64> = counters
            .windows(2)
            .flat_map(|w| w[0] + 1..w[1])
            .take(20)
            .collect();
        lab.fail(format!(
            "captured {carrying_data} data-carrying transport datagrams to {to_b}, expected at \
             least the {REPLAY_PROBES} probes; capture: {}; counters missing: {gaps:?}",
            captured.describe()
        ));
    }

    // Replayed once while their counters are inside B's replay window, and again after enough
    // newer traffic has pushed the window past them.
    let within = replay_round(&lab, &a, &b, &sink, &transports, "inside the window");
    let pushed = push_window(&lab, &a, &b, &sink);
    let behind = replay_round(&lab, &a, &b, &sink, &transports, "behind the window");
    let received = sink
        .finish()
        .unwrap_or_else(|e| lab.fail(format!("sink in {}: {e}", b.ns)));
    loud(&format!(
        "replay test: captured {} transport datagrams A -> B ({carrying_data} with data; {}); \
         replayed inside the window: {within}; then {pushed} newer datagrams delivered; \
         replayed behind the window: {behind}",
        transports.len(),
        captured.describe()
    ));

    // Each datagram the tunnel delivered, delivered once; every probe among them.
    let mut times: HashMap<&[u8], usize> = HashMap::new();
    for d in &received {
        *times.entry(d.as_slice()).or_default() += 1;
    }
    if let Some((d, n)) = times.iter().find(|(_, &n)| n != 1) {
        lab.fail(format!(
            "{:?} was delivered {n} times",
            String::from_utf8_lossy(d)
        ));
    }
    // And the real session is unharmed.
    lab.must_ping(&a, &b.v4);
    lab.must_ping(&b, &a.v4);
}

/// Newer datagrams A -> B pushed through the tunnel so B's replay window (4032 counters) moves
/// past everything captured before.
const WINDOW_PUSH: usize = 4500;

/// Sends every captured datagram in `transports` to B again, from another port of A's underlay
/// address (had B accepted one, it would also have roamed A's endpoint there), and checks that B
/// counted each as a replay, delivered none, and changed nothing else. Returns the figures.
#[track_caller]
fn replay_round(
    lab: &Lab,
    a: &Node,
    b: &Node,
    sink: &UdpSink,
    transports: &[Vec<u8>],
    when: &str,
) -> String {
    let before = lab.status(&b.iface);
    let endpoint_before = lab.peer_status(&before, &a.public)["endpoint"].clone();
    let rx_before = lab.peer_counter(&before, &a.public, "rx_packets");
    let seen_before = sink.received().len();
    let resent = transports.len() as u64;
    let to_b = underlay_of(b);
    let from = SocketAddr::V4(SocketAddrV4::new(v4(&a.underlay), 0));
    let datagrams = transports.to_vec();
    let replay = in_netns(&a.ns, move || {
        let sock = UdpSocket::bind(from).map_err(|e| format!("bind {from}: {e}"))?;
        for d in &datagrams {
            sock.send_to(d, to_b)
                .map_err(|e| format!("replay to {to_b}: {e}"))?;
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    });
    if let Err(e) = replay
        .join()
        .unwrap_or_else(|_| Err("replay thread panicked".into()))
    {
        lab.fail(format!("replaying from {}: {e}", a.ns));
    }
    let replay_before = lab.drop_counter(&before, "replay");
    wait_for_status(lab, &b.iface, Duration::from_secs(5), |st| {
        st["drops"]["replay"].as_u64().unwrap_or(0) >= replay_before + resent
    });
    // Anything wrongly let through would have been written to B's TUN device by now.
    std::thread::sleep(Duration::from_millis(300));
    let after = lab.status(&b.iface);
    let received = sink.received();

    let replayed = drops_delta(lab, &before, &after, "replay");
    let overflow = drops_delta(lab, &before, &after, "socket_overflow");
    let peer_replayed = peer_drops_delta(lab, &before, &after, &a.public, "replay");
    let rx_growth = lab
        .peer_counter(&after, &a.public, "rx_packets")
        .saturating_sub(rx_before);
    if received.len() != seen_before {
        lab.fail(format!(
            "replayed {when}: {} datagrams reached B's sink, e.g. {:?}",
            received.len() - seen_before,
            received[seen_before..]
                .iter()
                .take(5)
                .map(|d| String::from_utf8_lossy(d).into_owned())
                .collect::<Vec<_>>()
        ));
    }
    // Every replayed datagram counted as a replay; the kernel may have dropped a few at the
    // socket under the burst, and those it counts itself (socket_overflow).
    if replayed > resent || replayed + overflow < resent || replayed * 10 < resent * 9 {
        lab.fail(format!(
            "replayed {when}: B's drops.replay grew by {replayed} (socket_overflow by \
             {overflow}) after {resent} replayed datagrams; expected every one counted as a \
             replay. Drops moved: {}",
            common::drops_moved(&before, &after)
        ));
    }
    if peer_replayed != replayed {
        lab.fail(format!(
            "replayed {when}: peer A's drops.replay grew by {peer_replayed}, the interface's by \
             {replayed}"
        ));
    }
    for reason in ["unauthenticated", "unknown_peer", "malformed", "bad_source"] {
        let d = drops_delta(lab, &before, &after, reason);
        if d != 0 {
            lab.fail(format!(
                "replayed {when}: genuine datagrams moved drops.{reason} by {d}; they are \
                 replays"
            ));
        }
    }
    // A keepalive may arrive meanwhile; replays are never counted as received.
    if rx_growth >= resent / 2 {
        lab.fail(format!(
            "replayed {when}: peer A's rx_packets grew by {rx_growth} during a replay of \
             {resent} datagrams"
        ));
    }
    let endpoint_after = &lab.peer_status(&after, &a.public)["endpoint"];
    if *endpoint_after != endpoint_before {
        lab.fail(format!(
            "replayed {when}: datagrams from another port moved A's endpoint at B from \
             {endpoint_before} to {endpoint_after}"
        ));
    }
    format!(
        "drops moved {}, peer A rx_packets +{rx_growth}",
        common::drops_moved(&before, &after)
    )
}

/// Sends WINDOW_PUSH new datagrams A -> B through the tunnel; returns how many B's sink got.
#[track_caller]
fn push_window(lab: &Lab, a: &Node, b: &Node, sink: &UdpSink) -> usize {
    let seen_before = sink.received().len();
    let src = SocketAddr::V4(SocketAddrV4::new(v4(&a.v4), 0));
    let dst = SocketAddr::V4(SocketAddrV4::new(v4(&b.v4), REPLAY_PORT));
    let sender = in_netns(&a.ns, move || {
        let sock = UdpSocket::bind(src).map_err(|e| format!("bind {src}: {e}"))?;
        for i in 0..WINDOW_PUSH {
            let payload = format!("dhtun window push {i:05}");
            sock.send_to(payload.as_bytes(), dst)
                .map_err(|e| format!("send {i}: {e}"))?;
            if i % 16 == 15 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    });
    if let Err(e) = sender
        .join()
        .unwrap_or_else(|_| Err("window push thread panicked".into()))
    {
        lab.fail(format!("pushing the window from {}: {e}", a.ns));
    }
    // The window needs more than 4032 newer counters; allow a few datagrams lost to a busy
    // machine on the way.
    let want = seen_before + WINDOW_PUSH;
    let got = sink.wait_for(want, Duration::from_secs(10)) - seen_before;
    if got < 4100 {
        lab.fail(format!(
            "only {got} of {WINDOW_PUSH} datagrams crossed the tunnel; B's replay window did \
             not move far enough"
        ));
    }
    got
}
