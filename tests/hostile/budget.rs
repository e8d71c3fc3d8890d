//! Floods from many sources, each able to receive at its address (issue 26, item 6): a stranger
//! in C owns 4,094 addresses (198.18.16.0/20, routed to C by B), collects a cookie from B at
//! each, and floods B with initiations whose mac2 is valid, so per-source limits do not stop
//! them; or floods B from 50 of them without a cookie, to be answered with cookie replies.
//! A transfer on the established session A -> B runs before and during the flood.
//!
//! `DHTUN_FLOOD_RATE` sets the flood's initiations per second (default FLOOD_RATE), to measure
//! at the rates with a release build, e.g.
//! `DHTUN_FLOOD_RATE=70000 cargo test --release --test hostile many_source -- --nocapture`.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use dhtun::core::cookie::{self, Cookie};
use dhtun::core::keys::PublicKey;
use dhtun::core::wire::{Message, INITIATION_LEN};

use crate::common::transfer::Transfer;
use crate::common::{self, in_netns, loud, Lab, Node};
use crate::drops_delta;
use crate::hostile_support::{add_stranger, stranger_initiations, B_SIDE_ADDR, C_ADDR};

/// The stranger's addresses: 198.18.16.1 to 198.18.31.254, as many as the flood had.
const SOURCE_NET: &str = "198.18.16.0/20";
const SOURCES: u32 = 4094;
/// Sources of the cookie flood, as in the issue.
const COOKIE_FLOOD_SOURCES: u32 = 50;
const SOURCE_PORT: u16 = 47411;
/// Initiations per second of the flood: with a release daemon the 20,000 (40 times what
/// B's budget lets through from strangers, 500 a second); with a debug daemon twice that
/// budget, about what it can read on a loaded two-core machine (more would only fill its
/// socket and prove nothing about the budget).
const FLOOD_RATE: u32 = if cfg!(debug_assertions) {
    1_000
} else {
    20_000
};
/// Initiations per second of the cookie flood: three times B's cap on cookie replies, or with
/// a release daemon 20,000, as for the other flood. (The cookie flood ran at
/// 57,000-190,000 a second; there, reading the flood itself fills B's socket and slows the
/// transfer 3-fold whatever is done with each datagram; `DHTUN_FLOOD_RATE` runs it.)
const COOKIE_FLOOD_RATE: u32 = if cfg!(debug_assertions) {
    3_000
} else {
    20_000
};
const FLOOD_BURST: u64 = 32;
/// The transfer: 64 MiB as in the issue with a release daemon. A debug daemon's budgeted
/// Curve25519 work alone (snow unoptimised) takes all of its thread on a loaded machine, so its
/// socket overflows and TCP crawls: it gets 256 KiB, to show the session still carries data.
const TRANSFER: usize = if cfg!(debug_assertions) {
    256 << 10
} else {
    64 << 20
};
const SEED: u64 = 0x0b0d_9e70_0000_0026;
/// The flood lasts at least this long, and as long as the transfer runs.
const FLOOD_MIN: Duration = Duration::from_secs(3);
/// Collecting the cookies: B hands out 1,000 a second.
const HARVEST_LIMIT: Duration = Duration::from_secs(20);
const LIMIT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// Initiations with a valid mac2 from every source.
    ValidCookies,
    /// Initiations with no mac2 from 50 sources, each answered (or not) with a cookie reply.
    CookieFlood,
}

/// Under a flood of initiations with valid cookies from 4,094 addresses, the established
/// session keeps most of its throughput, B's Curve25519 work stays within its budget, and
/// what B refused is counted (drops.handshake_budget).
#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "needs a release daemon: a debug daemon on a loaded two-core machine reads under \
              2,000 datagrams/s and its unoptimised handshake code takes 1-3 ms an initiation, \
              so a flood fills its socket whatever the budget; run with --release"
)]
fn many_source_initiation_flood_leaves_the_session_its_throughput() {
    if !common::netns_available("many_source_initiation_flood_leaves_the_session_its_throughput") {
        return;
    }
    many_source_flood("bv", 51851, Kind::ValidCookies);
}

/// Under a flood of initiations without cookies from 50 addresses, B's cookie replies stay
/// within their overall cap (drops.cookie_budget counts the rest) and the session keeps most
/// of its throughput.
#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "needs a release daemon: a debug daemon on a loaded two-core machine reads fewer \
              initiations a second than the cap on cookie replies; run with --release"
)]
fn many_source_cookie_flood_gets_capped_replies() {
    if !common::netns_available("many_source_cookie_flood_gets_capped_replies") {
        return;
    }
    many_source_flood("bc", 51853, Kind::CookieFlood);
}

/// What the stranger did.
#[derive(Debug, Default)]
struct Report {
    harvested: u32,
    harvest: Duration,
    sent: u64,
    cookies: u64,
    elapsed: Duration,
}

fn many_source_flood(tag: &str, port: u16, kind: Kind) {
    let rate = std::env::var("DHTUN_FLOOD_RATE")
        .ok()
        .and_then(|r| r.parse::<u32>().ok())
        .unwrap_or(match kind {
            Kind::ValidCookies => FLOOD_RATE,
            Kind::CookieFlood => COOKIE_FLOOD_RATE,
        });
    let (mut lab, a, b) = Lab::pair(tag, port);
    let ns_c = add_stranger(&mut lab, &b);
    lab.ip_ok(&ns_c, &["route", "add", "local", SOURCE_NET, "dev", "lo"]);
    let via = C_ADDR.to_string();
    lab.ip_ok(
        &b.ns,
        &["route", "add", SOURCE_NET, "via", &via, "dev", "ul1"],
    );
    lab.up_pair(&a, &b, &[], &[]);
    lab.must_ping(&a, &b.v4);
    let deadline = Instant::now() + LIMIT;
    let quiet_secs = transfer_secs(&lab, &a, &b, port + 100, deadline);

    let b_key = PublicKey::from_base64(&b.public).unwrap_or_else(|e| lab.fail(format!("{e:?}")));
    let target = SocketAddrV4::new(B_SIDE_ADDR, b.port);
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let stop_flood = Arc::clone(&stop);
    let flood = in_netns(&ns_c, move || {
        flood_from_c(
            kind,
            b_key,
            target,
            rate,
            &stop_flood,
            deadline,
            ready_tx,
            go_rx,
        )
    });
    if ready_rx
        .recv_timeout(HARVEST_LIMIT + Duration::from_secs(5))
        .is_err()
    {
        stop.store(true, Ordering::Relaxed);
        let e = flood.join().ok().and_then(Result::err).unwrap_or_default();
        lab.fail(format!("the stranger did not get ready: {e}"));
    }
    let before = lab.status(&b.iface);
    let _ = go_tx.send(());
    // Let the flood get under way before the transfer starts.
    std::thread::sleep(Duration::from_millis(300));
    let flood_started = Instant::now();
    let transfer =
        Transfer::start(&a, &b, port + 101, TRANSFER, SEED, deadline).unwrap_or_else(|e| {
            stop.store(true, Ordering::Relaxed);
            lab.fail(e)
        });
    let mut flood_secs = None;
    while Instant::now() < deadline
        && (!transfer.is_finished() || flood_started.elapsed() < FLOOD_MIN)
    {
        if flood_secs.is_none() && transfer.is_finished() {
            flood_secs = Some(transfer.started.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let flood_secs = flood_secs.unwrap_or_else(|| transfer.started.elapsed().as_secs_f64());
    stop.store(true, Ordering::Relaxed);
    let report = match flood.join() {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => lab.fail(format!("flood from {ns_c}: {e}")),
        Err(_) => lab.fail("flood thread panicked"),
    };
    let (sent, received) = transfer.finish();
    let after = lab.status(&b.iface);
    let secs = report.elapsed.as_secs_f64().max(0.001);
    loud(&format!(
        "many-source flood ({} build, {kind:?}): stranger collected {} cookies in {:.1} s, then \
         sent {} initiations in {secs:.1} s ({:.0}/s) and got {} cookie replies back ({:.0}/s); \
         transfer of {} KiB A -> B took {quiet_secs:.2} s without the flood, {flood_secs:.2} s \
         with it; B's drops moved: {}",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        report.harvested,
        report.harvest.as_secs_f64(),
        report.sent,
        report.sent as f64 / secs,
        report.cookies,
        report.cookies as f64 / secs,
        TRANSFER >> 10,
        common::drops_moved(&before, &after)
    ));

    let (sent_n, sent_hash) = sent.unwrap_or_else(|e| lab.fail(format!("sender in A: {e}")));
    let (got_n, got_hash) = received.unwrap_or_else(|e| lab.fail(format!("receiver in B: {e}")));
    if sent_n != TRANSFER || got_n != TRANSFER || sent_hash != got_hash {
        lab.fail(format!(
            "the transfer under flood was not intact: sent {sent_n}, received {got_n}"
        ));
    }
    if report.sent < u64::from(rate) * FLOOD_MIN.as_secs() / 2 {
        lab.fail(format!(
            "the flood did not run as planned ({} initiations in {secs:.1} s)",
            report.sent
        ));
    }
    // Most of the throughput stays: the transfer takes at most twice as long (plus half a
    // second for a loaded machine's noise). Before the budget, B's thread spent itself on
    // Curve25519 work for the flood.
    if flood_secs > 2.0 * quiet_secs + 0.5 {
        lab.fail(format!(
            "the flood slowed the session down: {flood_secs:.2} s instead of {quiet_secs:.2} s"
        ));
    }
    let worked = drops_delta(&lab, &before, &after, "unknown_peer");
    match kind {
        Kind::ValidCookies => {
            // Strangers get 1,000 Curve25519 operations a second (2 an initiation) and the
            // burst above the reserve (125 initiations); a second of slack for timing.
            let bound = 500.0 * (secs + 1.0) + 125.0;
            if worked as f64 > bound {
                lab.fail(format!(
                    "B did the Curve25519 work for {worked} initiations in {secs:.1} s; the \
                     budget allows {bound:.0}"
                ));
            }
            if drops_delta(&lab, &before, &after, "handshake_budget") == 0 {
                lab.fail("B counted no initiation refused by its handshake budget");
            }
        }
        Kind::CookieFlood => {
            // 1,000 replies a second and the burst above the reserve (500); a second of slack.
            let bound = 1000.0 * (secs + 1.0) + 500.0;
            if report.cookies as f64 > bound || report.cookies == 0 {
                lab.fail(format!(
                    "the stranger got {} cookie replies in {secs:.1} s; the cap allows {bound:.0}",
                    report.cookies
                ));
            }
            if drops_delta(&lab, &before, &after, "cookie_budget") == 0 {
                lab.fail("B counted no cookie reply refused by its budget");
            }
        }
    }
    lab.must_ping(&a, &b.v4);
}

/// Seconds a transfer A -> B takes now.
fn transfer_secs(lab: &Lab, a: &Node, b: &Node, port: u16, deadline: Instant) -> f64 {
    let transfer =
        Transfer::start(a, b, port, TRANSFER, SEED, deadline).unwrap_or_else(|e| lab.fail(e));
    while !transfer.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let secs = transfer.started.elapsed().as_secs_f64();
    match transfer.finish() {
        (Ok((n, _)), Ok((m, _))) if n == TRANSFER && m == TRANSFER => secs,
        other => lab.fail(format!("the transfer without a flood failed: {other:?}")),
    }
}

/// Source address number `i` (0-based).
fn source(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 16, 1)) + i)
}

/// In C: binds the sources, collects their cookies (ValidCookies), says it is ready, waits for
/// the go, and floods until `stop`.
#[allow(clippy::too_many_arguments)]
fn flood_from_c(
    kind: Kind,
    b_key: PublicKey,
    target: SocketAddrV4,
    rate: u32,
    stop: &AtomicBool,
    deadline: Instant,
    ready: mpsc::Sender<()>,
    go: mpsc::Receiver<()>,
) -> Result<Report, String> {
    let count = match kind {
        Kind::ValidCookies => SOURCES,
        Kind::CookieFlood => COOKIE_FLOOD_SOURCES,
    };
    let sockets = (0..count)
        .map(|i| {
            let s = UdpSocket::bind(SocketAddrV4::new(source(i), SOURCE_PORT))
                .map_err(|e| format!("bind {}: {e}", source(i)))?;
            s.set_nonblocking(true).map_err(|e| e.to_string())?;
            Ok(s)
        })
        .collect::<Result<Vec<_>, String>>()?;
    let (messages, _) = stranger_initiations(&b_key.to_base64(), 1);
    let plain: [u8; INITIATION_LEN] = messages[0]
        .as_slice()
        .try_into()
        .map_err(|_| "initiation length")?;
    let mut report = Report::default();
    let harvest_start = Instant::now();
    let floods: Vec<(usize, Vec<u8>)> = if kind == Kind::ValidCookies {
        let mut stamped: Vec<Option<Vec<u8>>> = vec![None; sockets.len()];
        let harvest_end = harvest_start + HARVEST_LIMIT;
        while stamped.iter().any(Option::is_none) && Instant::now() < harvest_end {
            // B answers 1,000 a second: ask for a few hundred at a time, then read.
            for (i, s) in sockets.iter().enumerate() {
                if stamped[i].is_none() {
                    let _ = s.send_to(&plain, target);
                }
                if i % 300 == 299 {
                    std::thread::sleep(Duration::from_millis(150));
                }
            }
            std::thread::sleep(Duration::from_millis(300));
            for (i, s) in sockets.iter().enumerate() {
                let mut buf = [0u8; 256];
                while let Ok(n) = s.recv(&mut buf) {
                    if let Some(m) = stamp(&b_key, &plain, &buf[..n]) {
                        stamped[i] = Some(m);
                    }
                }
            }
        }
        let floods: Vec<(usize, Vec<u8>)> = stamped
            .into_iter()
            .enumerate()
            .filter_map(|(i, m)| m.map(|m| (i, m)))
            .collect();
        if floods.len() < sockets.len() / 2 {
            return Err(format!(
                "collected only {} of {} cookies",
                floods.len(),
                sockets.len()
            ));
        }
        floods
    } else {
        (0..sockets.len()).map(|i| (i, plain.to_vec())).collect()
    };
    report.harvested = if kind == Kind::ValidCookies {
        floods.len() as u32
    } else {
        0
    };
    report.harvest = harvest_start.elapsed();
    // Replies to the harvest still in flight are not the flood's.
    std::thread::sleep(Duration::from_millis(200));
    for s in &sockets {
        let mut buf = [0u8; 256];
        while s.recv(&mut buf).is_ok() {}
    }
    let _ = ready.send(());
    go.recv_timeout(Duration::from_secs(30))
        .map_err(|_| "no go from the test")?;
    let start = Instant::now();
    let mut i = 0u64;
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        if i % FLOOD_BURST == 0 {
            let due = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if kind == Kind::CookieFlood {
                for s in &sockets {
                    while let Ok(n) = s.recv(&mut buf) {
                        report.cookies += u64::from(stamp(&b_key, &plain, &buf[..n]).is_some());
                    }
                }
            }
        }
        let (socket, message) = &floods[i as usize % floods.len()];
        if sockets[*socket].send_to(message, target).is_ok() {
            report.sent += 1;
        }
        i += 1;
    }
    report.elapsed = start.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    for s in &sockets {
        while let Ok(n) = s.recv(&mut buf) {
            report.cookies += u64::from(stamp(&b_key, &plain, &buf[..n]).is_some());
        }
    }
    Ok(report)
}

/// `plain` with the mac2 that the cookie reply `reply` gives, if it is one for `plain`.
fn stamp(b_key: &PublicKey, plain: &[u8; INITIATION_LEN], reply: &[u8]) -> Option<Vec<u8>> {
    let Ok(Message::CookieReply(r)) = Message::parse(reply) else {
        return None;
    };
    let [_, mac1, mac2] = dhtun::core::wire::initiation_layout();
    let cookie: Cookie = cookie::open_reply(
        b_key,
        &plain[mac1],
        r.nonce(),
        r.sealed_cookie(),
        r.tag(),
        Duration::ZERO,
    )?;
    let mut m = *plain;
    let tag = cookie::mac2(&cookie, &m[..mac2.start]);
    m[mac2].copy_from_slice(&tag);
    Some(m.to_vec())
}
