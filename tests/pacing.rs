//! Pacing on the real kernel path: a flood from A into a receiver that cannot take it in makes
//! B send loss reports, and A paces itself so B stops losing most of what A encrypted; a link
//! that loses a share of everything is not chased down, and A ends unpaced.
//! The receiver's limit is an nftables rate limit on B's underlay port, the lossy link an
//! nftables rule dropping half the datagrams at random. What pacing is worth in goodput is for
//! `netns-scripts/bench.sh` to measure; these only check that it reacts to the right loss.
//! Same skip policy as tests/netns/: without root it prints SKIPPED, unless
//! DHTUN_REQUIRE_NETNS=1 (CI), where it fails.

mod common;

use common::{in_netns, Lab, Node};
use serde_json::Value;
use std::net::UdpSocket;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long A floods B, and when (from the start) the second half, which should show pacing
/// at work, begins.
const FLOOD: Duration = Duration::from_secs(4);
const SECOND_HALF: Duration = Duration::from_secs(2);
/// What B's underlay port lets in: 8 MB/s, far below what a flood through the tunnel offers
/// even on a slow machine, so unpaced almost everything would be lost.
const RECEIVER_BYTES_PER_SECOND: u64 = 8 * 1024 * 1024;
/// What the limit lets through at once, like a receiver's socket buffer (208 KiB by default):
/// a real receiver takes a burst in and drains it, and a limit without this room would drop
/// most of every burst at any average rate.
const RECEIVER_BURST_BYTES: u64 = 256 * 1024;
/// Inner datagrams of the flood.
const DATAGRAM: usize = 1200;
/// The port B's socket takes the flood on (a socket must be there, or B's kernel answers
/// each datagram with an ICMP error).
const FLOOD_PORT: u16 = 40_011;
/// B's loss over the second half must stay under this. Unpaced it would be about 1 minus
/// 8 MB/s over the offered rate: above 90% on any machine that can run these tests.
const PACED_LOSS_LIMIT: f64 = 0.5;

/// One flood at a time: two at once on a 2-core machine starve both receivers of CPU, and
/// what the pacer then sees is the other test's load.
static ONE_FLOOD: Mutex<()> = Mutex::new(());

#[test]
fn a_flood_into_a_slow_receiver_is_paced_down_to_what_it_takes_in() {
    if !common::netns_available("a_flood_into_a_slow_receiver_is_paced_down_to_what_it_takes_in") {
        return;
    }
    let _one = ONE_FLOOD.lock().unwrap_or_else(|e| e.into_inner());
    let limit = format!(
        "limit rate over {} kbytes/second burst {} kbytes drop",
        RECEIVER_BYTES_PER_SECOND / 1024,
        RECEIVER_BURST_BYTES / 1024
    );
    let (lab, a, b) = tunnel_with_underlay_rule("pc", 51829, &limit);

    let flood = start_flood(&a, &b);
    std::thread::sleep(SECOND_HALF);
    let half = lost_and_received(&lab, &b);
    std::thread::sleep(FLOOD - SECOND_HALF - Duration::from_millis(300));
    // Read while the flood still runs: a pace is lifted a second after the last cut.
    let end = lost_and_received(&lab, &b);
    let pacing = peer_pacing(&lab, &a);
    let sent = join_flood(&lab, flood);

    let lost = end.0.saturating_sub(half.0);
    let received = end.1.saturating_sub(half.1);
    let loss = lost as f64 / (lost + received).max(1) as f64;
    let cuts = pacing["cuts"].as_u64().unwrap_or(0);
    let reports_sent = peer_pacing(&lab, &b)["loss_reports_sent"]
        .as_u64()
        .unwrap_or(0);
    if cuts == 0 || pacing["rate_bits_per_second"].as_u64().is_none() || reports_sent < 3 {
        lab.fail(format!(
            "a flood of {sent} datagrams into a receiver limited to {RECEIVER_BYTES_PER_SECOND} \
             B/s should make B send loss reports and A pace itself; B sent {reports_sent} \
             reports, A's pacing: {pacing}"
        ));
    }
    if pacing["unresponsive_episodes"].as_u64() != Some(0) {
        lab.fail(format!(
            "loss at a rate limit goes away with a lower pace, so pacing should not give up on \
             it; A's pacing: {pacing}"
        ));
    }
    if loss >= PACED_LOSS_LIMIT {
        lab.fail(format!(
            "paced, B should lose less than {PACED_LOSS_LIMIT} of what A sends in the second \
             half of the flood; it lost {lost} and received {received} ({loss:.2}). A's pacing: \
             {pacing}"
        ));
    }
}

#[test]
fn a_link_that_loses_a_share_of_everything_is_not_chased_down() {
    if !common::netns_available("a_link_that_loses_a_share_of_everything_is_not_chased_down") {
        return;
    }
    let _one = ONE_FLOOD.lock().unwrap_or_else(|e| e.into_inner());
    let (lab, a, b) = tunnel_with_underlay_rule("pl", 51830, "numgen random mod 2 == 0 drop");

    let flood = start_flood(&a, &b);
    std::thread::sleep(FLOOD - Duration::from_millis(300));
    let pacing = peer_pacing(&lab, &a);
    let sent = join_flood(&lab, flood);
    let reports = pacing["loss_reports_received"].as_u64().unwrap_or(0);
    if reports < 3 {
        lab.fail(format!(
            "half of a {sent}-datagram flood lost on the way should bring loss reports to A; \
             A's pacing: {pacing}"
        ));
    }
    if pacing["unresponsive_episodes"].as_u64().unwrap_or(0) == 0
        || !pacing["rate_bits_per_second"].is_null()
    {
        lab.fail(format!(
            "a lower pace cannot cure a link that drops half the datagrams, so A should give \
             up pacing and end unpaced; A's pacing: {pacing}"
        ));
    }
}

/// A and B up and pinging each other, then `rule` on the datagrams to B's tunnel port.
fn tunnel_with_underlay_rule(tag: &str, port: u16, rule: &str) -> (Lab, Node, Node) {
    let (mut lab, a, b) = Lab::pair(tag, port);
    lab.up(&a, &[(&b, &[])]);
    lab.up(&b, &[(&a, &[])]);
    lab.must_ping(&a, &b.v4);
    limit_underlay(&lab, &b, rule);
    (lab, a, b)
}

/// Adds an input rule for datagrams to B's underlay port in B's namespace.
fn limit_underlay(lab: &Lab, b: &Node, rule: &str) {
    let ruleset = format!(
        "table inet pacing_test {{\n  chain input {{\n    type filter hook input priority 0;\n    \
         udp dport {} {rule}\n  }}\n}}\n",
        b.port
    );
    let file = lab.write_file(&format!("{}.nft", b.iface), &ruleset);
    let out = lab.ns_exec(&b.ns, &["nft", "-f", &file.to_string_lossy()]);
    if !out.status.success() {
        lab.fail(format!(
            "loading the nftables rule `{rule}` in {}: {}",
            b.ns,
            common::describe(&out)
        ));
    }
}

type Flood = (
    std::thread::JoinHandle<Result<u64, String>>,
    std::thread::JoinHandle<Result<u64, String>>,
);

/// A UDP flood from A's side of the tunnel to a socket on B's, for `FLOOD`.
fn start_flood(a: &Node, b: &Node) -> Flood {
    let listen = format!("{}:{FLOOD_PORT}", b.v4);
    let receiver = in_netns(&b.ns, move || {
        let socket = UdpSocket::bind(&listen).map_err(|e| format!("bind {listen}: {e}"))?;
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + FLOOD + Duration::from_secs(2);
        let mut buf = [0u8; 2048];
        let mut got = 0u64;
        while Instant::now() < deadline {
            if socket.recv(&mut buf).is_ok() {
                got += 1;
            }
        }
        Ok(got)
    });
    let target = format!("{}:{FLOOD_PORT}", b.v4);
    let source = format!("{}:0", a.v4);
    let sender = in_netns(&a.ns, move || {
        let socket = UdpSocket::bind(&source).map_err(|e| format!("bind {source}: {e}"))?;
        let payload = [0x5au8; DATAGRAM];
        let deadline = Instant::now() + FLOOD;
        let mut sent = 0u64;
        while Instant::now() < deadline {
            // The TUN queue drops what A does not read; a full one may refuse with ENOBUFS.
            if socket.send_to(&payload, &target).is_ok() {
                sent += 1;
            }
        }
        Ok(sent)
    });
    (sender, receiver)
}

/// Waits for both ends of the flood; returns what the sender sent.
fn join_flood(lab: &Lab, (sender, receiver): Flood) -> u64 {
    let sent = match sender.join() {
        Ok(Ok(sent)) => sent,
        Ok(Err(e)) => lab.fail(format!("flood sender: {e}")),
        Err(_) => lab.fail("flood sender panicked"),
    };
    match receiver.join() {
        Ok(Ok(got)) if got > 0 => sent,
        Ok(Ok(_)) => lab.fail(format!(
            "none of the {sent} flood datagrams reached B's socket"
        )),
        Ok(Err(e)) => lab.fail(format!("flood receiver: {e}")),
        Err(_) => lab.fail("flood receiver panicked"),
    }
}

/// (lost, received) packets of B's only peer.
fn lost_and_received(lab: &Lab, b: &Node) -> (u64, u64) {
    let peer = &lab.status(&b.iface)["peers"][0];
    match (
        peer["rx_lost_packets"].as_u64(),
        peer["rx_packets"].as_u64(),
    ) {
        (Some(lost), Some(received)) => (lost, received),
        _ => lab.fail(format!(
            "B's status should count rx_lost_packets and rx_packets per peer: {peer}"
        )),
    }
}

/// The `pacing` object of a node's only peer.
fn peer_pacing(lab: &Lab, node: &Node) -> Value {
    let pacing = lab.status(&node.iface)["peers"][0]["pacing"].clone();
    if !pacing.is_object() {
        lab.fail(format!(
            "status should have a pacing object per peer; {}'s has {pacing}",
            node.iface
        ));
    }
    pacing
}
