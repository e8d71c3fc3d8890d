//! Floods from a stranger during a transfer: garbage and well-formed initiations from an unknown
//! key, paced or as fast as one thread sends; the transfer stays intact and B's memory bounded.

use std::net::{SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dhtun::core::wire::{COOKIE_REPLY_LEN, TYPE_COOKIE_REPLY};

use crate::common;
use crate::common::transfer::Transfer;
use crate::common::{in_netns, loud, Lab};
use crate::drops_delta;
use crate::hostile_support::{
    add_stranger, flood_datagram, rng, stranger_initiations, MemoryWatch, B_SIDE_ADDR, C_ADDR,
    FLOOD_KINDS,
};

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
