//! The daemon on a hostile underlay, in network namespaces: captured tunnel packets replayed,
//! garbage and handshake floods from a stranger while a transfer runs, and forged transport
//! packets that try to move a peer's endpoint.
//!
//! Two daemons A and B as in tests/netns/ (underlay 198.18.0.1/.2, overlay 100.64.0.1/.2);
//! the flood and forgery tests add a namespace C, a stranger with no key B knows, on a second
//! veth pair to B (198.18.1.2 -> 198.18.1.1). Everything is removed on drop, also on failure.
//! Same policy as tests/netns/: without root, a loud SKIPPED; with DHTUN_REQUIRE_NETNS=1, a
//! failure instead.

mod common;
mod hostile_support;

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::transfer::Transfer;
use common::{in_netns, loud, Lab, Node};
use dhtun::core::wire::{COOKIE_REPLY_LEN, TYPE_COOKIE_REPLY};
use hostile_support::{
    add_stranger, flood_datagram, forged_transport, rng, stranger_initiations, transport_header,
    underlay_of, v4, Capture, MemoryWatch, UdpSink, B_SIDE_ADDR, C_ADDR, FLOOD_KINDS,
};
use serde_json::Value;

/// The difference of a `drops` counter of an interface between two statuses.
#[track_caller]
fn drops_delta(lab: &Lab, before: &Value, after: &Value, name: &str) -> u64 {
    lab.drop_counter(after, name)
        .saturating_sub(lab.drop_counter(before, name))
}

/// The difference of peer `key`'s `drops` counter between two statuses.
#[track_caller]
fn peer_drops_delta(lab: &Lab, before: &Value, after: &Value, key: &str, name: &str) -> u64 {
    let count = |st: &Value| {
        lab.peer_status(st, key)["drops"][name]
            .as_u64()
            .unwrap_or_else(|| lab.fail(format!("peer {key} has no numeric drops.{name}")))
    };
    count(after).saturating_sub(count(before))
}

/// Polls B's status (bounded) until `done` says the daemon has counted what was sent.
fn wait_for_status(
    lab: &Lab,
    iface: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let st = lab.status(iface);
        if done(&st) || Instant::now() >= deadline {
            return st;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// =============================================================================================
// Replay
// =============================================================================================

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

// =============================================================================================
// Flood
// =============================================================================================

const FLOOD_TRANSFER: usize = 32 << 20;
const FLOOD_SEED: u64 = 0x0f10_0d5e_ed00_0001;
const FLOOD_TCP_PORT: u16 = 47401;
const FLOOD_SRC_PORT: u16 = 47402;
/// The flood lasts at least this long, and as long as the transfer runs.
const FLOOD_MIN: Duration = Duration::from_secs(4);
/// Everything (flood, transfer) ends by then, pass or fail.
const FLOOD_LIMIT: Duration = Duration::from_secs(25);
/// Initiations in the stranger's pool; each is sent many times.
const STRANGER_INITIATIONS: u32 = 16;
/// Datagrams per second of the paced flood: a quarter of them initiations, 2,500 a second, far
/// past the 100 a second that put B under load and the 20 a second one source may have
/// processed; the rest garbage. A debug daemon on a two-core machine reads most of them (a few
/// percent overflow its socket); a faster flood is `unpaced_flood_leaves_a_transfer_intact`.
const FLOOD_RATE: u32 = 10_000;
/// The paced flood sends bursts of this many datagrams back to back.
const FLOOD_BURST: u64 = 32;
/// Upper bound on datagrams one flood sends, on top of the time limit.
const FLOOD_MAX_DATAGRAMS: u64 = 50_000_000;

/// What the stranger sent and what came back to it.
#[derive(Debug, Default)]
struct FloodReport {
    sent: [u64; 4],
    refused: u64,
    cookies: u64,
    /// Anything else that came back, hex of the first few bytes, at most five.
    unexpected: Vec<String>,
    unexpected_count: u64,
    elapsed: Duration,
}

/// While a TCP transfer runs A -> B through the tunnel, a stranger floods B's tunnel port with
/// garbage and with well-formed initiations from a key B does not know, at FLOOD_RATE: 50 times
/// the initiation rate that puts B under load, 100 times what one source may have processed.
/// The transfer completes intact, B counts what it dropped and why, its memory stays within the
/// bound, and the stranger hears nothing back but cookie replies.
#[test]
fn garbage_and_initiation_flood_leave_a_transfer_intact() {
    if !common::netns_available("garbage_and_initiation_flood_leave_a_transfer_intact") {
        return;
    }
    flood_during_transfer("fl", 51841, Some(FLOOD_RATE));
}

/// The same, with the stranger sending as fast as one thread can, whatever the daemon can take.
#[test]
#[ignore = "limitation: a flood faster than B's single-threaded receive path (a debug daemon \
            reads 12k-18k datagrams/s on a two-core machine) overflows B's one UDP socket; the \
            tunnel's datagrams are dropped with the flood's (socket_overflow) and TCP stalls. \
            Passes with a release daemon"]
fn unpaced_flood_leaves_a_transfer_intact() {
    if !common::netns_available("unpaced_flood_leaves_a_transfer_intact") {
        return;
    }
    flood_during_transfer("fu", 51843, None);
}

/// The flood test, with the stranger sending `rate` datagrams per second, or as fast as it can.
fn flood_during_transfer(tag: &str, port: u16, rate: Option<u32>) {
    let (mut lab, a, b) = Lab::pair(tag, port);
    let ns_c = add_stranger(&mut lab, &b);
    lab.up_pair(&a, &b, &[], &[]);
    lab.must_ping(&a, &b.v4);
    let b_pid = lab.daemon_pid(&b.iface);
    let mut watch = MemoryWatch::default();
    watch.sample(b_pid).unwrap_or_else(|e| lab.fail(e));
    let before = lab.status(&b.iface);

    let (initiations, indexes) = stranger_initiations(&b.public, STRANGER_INITIATIONS);
    let target = SocketAddrV4::new(B_SIDE_ADDR, b.port);
    let deadline = Instant::now() + FLOOD_LIMIT;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_flood = Arc::clone(&stop);
    let flood = in_netns(&ns_c, move || {
        let sock = UdpSocket::bind(SocketAddrV4::new(C_ADDR, FLOOD_SRC_PORT))
            .map_err(|e| format!("bind {C_ADDR}:{FLOOD_SRC_PORT}: {e}"))?;
        let replies = sock.try_clone().map_err(|e| e.to_string())?;
        replies
            .set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(|e| e.to_string())?;
        // The socket lives in C's namespace whichever thread reads it.
        let listening = Arc::new(AtomicBool::new(true));
        let listening2 = Arc::clone(&listening);
        let reader = std::thread::spawn(move || {
            let mut report = FloodReport::default();
            let mut buf = [0u8; 2048];
            while listening2.load(Ordering::Relaxed) && Instant::now() < deadline {
                let n = match replies.recv(&mut buf) {
                    Ok(n) => n,
                    Err(_) => continue,
                };
                let d = &buf[..n];
                let index = d
                    .get(4..8)
                    .map(|i| u32::from_le_bytes([i[0], i[1], i[2], i[3]]));
                let cookie = n == COOKIE_REPLY_LEN
                    && d[..4] == [TYPE_COOKIE_REPLY, 0, 0, 0]
                    && index.is_some_and(|i| indexes.contains(&i));
                if cookie {
                    report.cookies += 1;
                } else {
                    report.unexpected_count += 1;
                    if report.unexpected.len() < 5 {
                        report
                            .unexpected
                            .push(format!("{n} bytes: {:02x?}", &d[..n.min(16)]));
                    }
                }
            }
            report
        });
        let mut rng = rng(FLOOD_SEED);
        let (mut sent, mut refused) = ([0u64; 4], 0u64);
        let start = Instant::now();
        let mut i = 0u64;
        while !stop_flood.load(Ordering::Relaxed)
            && Instant::now() < deadline
            && i < FLOOD_MAX_DATAGRAMS
        {
            if let Some(rate) = rate.filter(|_| i % FLOOD_BURST == 0) {
                let due = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            let d = flood_datagram(i, &mut rng, &initiations);
            match sock.send_to(&d, target) {
                Ok(_) => sent[(i % 4) as usize] += 1,
                Err(_) => refused += 1,
            }
            i += 1;
        }
        let elapsed = start.elapsed();
        // Answers still in flight.
        std::thread::sleep(Duration::from_millis(300));
        listening.store(false, Ordering::Relaxed);
        let mut report = reader.join().map_err(|_| "reply reader panicked")?;
        report.sent = sent;
        report.refused = refused;
        report.elapsed = elapsed;
        Ok(report)
    });

    // Let the flood get under way (and B under load) before the transfer starts.
    std::thread::sleep(Duration::from_millis(300));
    let flood_started = Instant::now();
    let transfer = Transfer::start(&a, &b, FLOOD_TCP_PORT, FLOOD_TRANSFER, FLOOD_SEED, deadline)
        .unwrap_or_else(|e| {
            stop.store(true, Ordering::Relaxed);
            lab.fail(e)
        });
    let mut transfer_secs = None;
    while Instant::now() < deadline
        && (!transfer.is_finished() || flood_started.elapsed() < FLOOD_MIN)
    {
        if transfer_secs.is_none() && transfer.is_finished() {
            transfer_secs = Some(transfer.started.elapsed().as_secs_f64());
        }
        if let Err(e) = watch.sample(b_pid) {
            stop.store(true, Ordering::Relaxed);
            lab.fail(format!("B's daemon: {e}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let transfer_secs = transfer_secs.unwrap_or_else(|| transfer.started.elapsed().as_secs_f64());
    stop.store(true, Ordering::Relaxed);
    let report = match flood.join() {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => lab.fail(format!("flood from {ns_c}: {e}")),
        Err(_) => lab.fail("flood thread panicked"),
    };
    let (sent, received) = transfer.finish();
    if let Some(st) = lab.daemon_exited(&b.iface) {
        lab.fail(format!("B's daemon exited during the flood with {st}"));
    }
    watch.sample(b_pid).unwrap_or_else(|e| lab.fail(e));
    let after = lab.status(&b.iface);

    let total: u64 = report.sent.iter().sum();
    let achieved = total as f64 / report.elapsed.as_secs_f64().max(0.001);
    loud(&format!(
        "flood test ({} build, {}): stranger sent {total} datagrams in {:.1} s ({achieved:.0}/s; {}), \
         {} refused by its kernel; got back {} cookie replies and {} other datagrams; transfer of \
         {} MiB A -> B took {transfer_secs:.1} s; B's drops moved: {}; B's daemon: {}",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        rate.map_or("unpaced".to_string(), |r| format!("{r} datagrams/s")),
        report.elapsed.as_secs_f64(),
        FLOOD_KINDS
            .iter()
            .zip(report.sent)
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", "),
        report.refused,
        report.cookies,
        report.unexpected_count,
        FLOOD_TRANSFER >> 20,
        common::drops_moved(&before, &after),
        watch.describe()
    ));

    let (sent_n, sent_hash) = sent.unwrap_or_else(|e| lab.fail(format!("sender in A: {e}")));
    let (got_n, got_hash) = received.unwrap_or_else(|e| lab.fail(format!("receiver in B: {e}")));
    if sent_n != FLOOD_TRANSFER || got_n != FLOOD_TRANSFER || sent_hash != got_hash {
        lab.fail(format!(
            "the transfer under flood was not intact: sent {sent_n} bytes (fnv64 \
             {sent_hash:#x}), received {got_n} (fnv64 {got_hash:#x}), expected {FLOOD_TRANSFER}"
        ));
    }
    if report.sent.contains(&0) || report.elapsed < FLOOD_MIN - Duration::from_millis(500) {
        lab.fail(format!(
            "the flood did not run as planned ({:?} for {:?}); the test proves nothing",
            report.sent, report.elapsed
        ));
    }
    // B dropped each kind for its reason. Some of the flood dies in B's socket buffer
    // (socket_overflow); of what B reads, each kind leaves its own trace.
    for reason in ["malformed", "unauthenticated", "unknown_peer"] {
        if drops_delta(&lab, &before, &after, reason) == 0 {
            lab.fail(format!(
                "B's drops.{reason} did not move under the flood; drops moved: {}",
                common::drops_moved(&before, &after)
            ));
        }
    }
    let under_load = drops_delta(&lab, &before, &after, "under_load");
    let rate_limited = drops_delta(&lab, &before, &after, "rate_limited");
    if under_load == 0 {
        lab.fail(format!(
            "B answered no initiation with a cookie while {} initiations per second arrived \
             (drops.under_load +0, rate_limited +{rate_limited}); drops moved: {}",
            report.sent[3] as f64 / report.elapsed.as_secs_f64().max(0.001),
            common::drops_moved(&before, &after)
        ));
    }
    if report.unexpected_count > 0 {
        lab.fail(format!(
            "the stranger got {} answers that are not cookie replies to its own initiations, \
             e.g. {:?}",
            report.unexpected_count, report.unexpected
        ));
    }
    if report.cookies == 0 || report.cookies > under_load {
        lab.fail(format!(
            "the stranger got {} cookie replies; B counted {under_load} initiations answered \
             with one",
            report.cookies
        ));
    }
    if let Some(why) = watch.over_bound() {
        lab.fail(format!(
            "B's daemon broke the memory bound under the flood: {why}. {}",
            watch.describe()
        ));
    }
    // The flood did not touch A's place at B, and the tunnel still works.
    let endpoint = &lab.peer_status(&after, &a.public)["endpoint"];
    if *endpoint != format!("{}:{}", a.underlay, a.port).as_str() {
        lab.fail(format!(
            "A's endpoint at B moved to {endpoint} during the flood"
        ));
    }
    lab.must_ping(&a, &b.v4);
}

// =============================================================================================
// Forged transport packets
// =============================================================================================

const FORGERIES: u64 = 50;

/// Transport datagrams with a real receiver index but made-up ciphertext, from a stranger's
/// address: B counts them as `unauthenticated`, keeps A's endpoint, answers nothing, and its
/// replay window does not move (their counters are far ahead of the real ones).
#[test]
fn spoofed_unauthenticated_packet_never_moves_the_endpoint() {
    if !common::netns_available("spoofed_unauthenticated_packet_never_moves_the_endpoint") {
        return;
    }
    let (mut lab, a, b) = Lab::pair("sf", 51842);
    let ns_c = add_stranger(&mut lab, &b);
    lab.up_pair(&a, &b, &[], &[]);
    lab.must_ping(&a, &b.v4);

    // A real datagram of the session, for its receiver index and counter.
    let to_b = underlay_of(&b);
    let capture = Capture::start(&a.ns, "ul0", to_b, 1000, Duration::from_secs(20))
        .unwrap_or_else(|e| lab.fail(format!("capture in {}: {e}", a.ns)));
    lab.must_ping(&a, &b.v4);
    std::thread::sleep(Duration::from_millis(100));
    let captured = capture
        .finish()
        .unwrap_or_else(|e| lab.fail(format!("capture: {e}")));
    let found = captured
        .payloads
        .iter()
        .rev()
        .find_map(|d| transport_header(d));
    let Some((index, counter)) = found else {
        lab.fail(format!(
            "no transport datagram A -> B captured during a ping: {}",
            captured.describe()
        ));
    };

    let before = lab.status(&b.iface);
    let endpoint = format!("{}:{}", a.underlay, a.port);
    let peer = lab.peer_status(&before, &a.public);
    if peer["endpoint"] != endpoint.as_str() || peer["endpoint_source"] != "static" {
        lab.fail(format!(
            "before the forgeries, A's endpoint at B should be the static {endpoint}: {peer}"
        ));
    }

    // From C: forged datagrams far ahead of the real counter, then listen for any answer.
    let target = SocketAddrV4::new(B_SIDE_ADDR, b.port);
    let forger = in_netns(&ns_c, move || {
        let sock = UdpSocket::bind(SocketAddrV4::new(C_ADDR, 0))
            .map_err(|e| format!("bind {C_ADDR}: {e}"))?;
        let mut rng = rng(0x5f00f);
        for i in 0..FORGERIES {
            let d = forged_transport(index, counter + 1_000_000 + i, &mut rng);
            sock.send_to(&d, target)
                .map_err(|e| format!("send to {target}: {e}"))?;
            std::thread::sleep(Duration::from_millis(1));
        }
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        let mut answers = Vec::new();
        let until = Instant::now() + Duration::from_secs(1);
        let mut buf = [0u8; 2048];
        while Instant::now() < until {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                answers.push(format!("{n} bytes from {from}"));
            }
        }
        Ok(answers)
    });
    let answers = match forger.join() {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => lab.fail(format!("forging from {ns_c}: {e}")),
        Err(_) => lab.fail("forger thread panicked"),
    };
    let unauth_before = lab.drop_counter(&before, "unauthenticated");
    let after = wait_for_status(&lab, &b.iface, Duration::from_secs(5), |st| {
        st["drops"]["unauthenticated"].as_u64().unwrap_or(0) >= unauth_before + FORGERIES
    });
    let unauthenticated = drops_delta(&lab, &before, &after, "unauthenticated");
    let peer_unauthenticated =
        peer_drops_delta(&lab, &before, &after, &a.public, "unauthenticated");
    loud(&format!(
        "forgery test: {FORGERIES} forged datagrams for session index {index:#010x} (real \
         counter {counter}) from {C_ADDR}; B's drops moved: {}; answers to the forger: {}",
        common::drops_moved(&before, &after),
        answers.len()
    ));

    if unauthenticated != FORGERIES || peer_unauthenticated != FORGERIES {
        lab.fail(format!(
            "B's drops.unauthenticated grew by {unauthenticated} (peer A's by \
             {peer_unauthenticated}) after {FORGERIES} forged datagrams; drops moved: {}",
            common::drops_moved(&before, &after)
        ));
    }
    if !answers.is_empty() {
        lab.fail(format!("B answered the forger: {answers:?}"));
    }
    let check_endpoint = |st: &Value, when: &str| {
        let peer = lab.peer_status(st, &a.public);
        if peer["endpoint"] != endpoint.as_str() || peer["endpoint_source"] != "static" {
            lab.fail(format!(
                "{when}, A's endpoint at B is {} ({}), expected the static {endpoint}: forged \
                 datagrams from {C_ADDR} must never move it",
                peer["endpoint"], peer["endpoint_source"]
            ));
        }
    };
    check_endpoint(&after, "after the forgeries");

    // Genuine traffic, whose counters are far behind the forged ones, still passes: forgeries
    // did not move the replay window. Both directions, so B also sends to A's endpoint.
    lab.must_ping(&a, &b.v4);
    lab.must_ping(&b, &a.v4);
    let end = lab.status(&b.iface);
    check_endpoint(&end, "after pinging both ways");
    let replays = drops_delta(&lab, &before, &end, "replay");
    if replays != 0 {
        lab.fail(format!(
            "genuine packets after the forgeries were refused as replays ({replays}): forged \
             counters moved B's replay window"
        ));
    }
}
