//! Busy polling (`[interface] busy_poll_us`) on the real kernel path: a daemon with a window
//! reads packets while it polls, one without never polls, junk at the port starts no polling,
//! and a reload turns polling off without a restart. What it is worth in latency is for `netns-scripts/bench.sh` to measure;
//! this test only checks that polling reads what arrives.
//! Same skip policy as tests/netns/: without root it prints SKIPPED, unless
//! DHTUN_REQUIRE_NETNS=1 (CI), where it fails.

mod common;

use common::{describe, run_timeout, Lab, BIN};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

/// Long enough that an echo reply from the other namespace comes back within the window even
/// on a busy CI machine: the round trip is about 0.2 ms here.
const WINDOW_US: u64 = 1000;
const ECHOES: &str = "20";
/// Junk datagrams sent at the polling daemon's port.
const JUNK: u64 = 100;
/// Rounds (and packets) the junk may appear to add: a keepalive or handshake from the peer may
/// arrive meanwhile. Counted junk would add one packet per datagram.
const STRAY: u64 = 2;

#[test]
fn busy_polling_reads_packets_and_reload_turns_it_off() {
    if !common::netns_available("busy_polling_reads_packets_and_reload_turns_it_off") {
        return;
    }
    let (mut lab, a, b) = Lab::pair("bp", 51827);
    lab.up_with_interface_keys(&a, &b, &format!("busy_poll_us = {WINDOW_US}\n"));
    lab.up(&b, &[(&a, &[])]);
    lab.must_ping(&a, &b.v4);
    echoes(&lab, &a.ns, &b.v4);

    let polled = busy_poll(&lab, &a.iface);
    if polled.window_us != WINDOW_US || polled.rounds == 0 || polled.packets == 0 {
        lab.fail(format!(
            "with busy_poll_us = {WINDOW_US}, A should have run polling rounds that read packets \
             (each echo's reply comes back within the window); status says {polled:?}"
        ));
    }
    let idle = busy_poll(&lab, &b.iface);
    if idle != BusyPoll::default() {
        lab.fail(format!(
            "B has no busy_poll_us, so it should never poll; status says {idle:?}"
        ));
    }

    // Junk is dropped before the core accepts it, so it neither starts nor extends a round.
    let status = lab.status(&a.iface);
    let malformed = lab.drop_counter(&status, "malformed");
    let before = busy_poll(&lab, &a.iface);
    let (src, dst) = match (
        format!("{}:0", b.underlay).parse::<SocketAddr>(),
        format!("{}:{}", a.underlay, a.port).parse::<SocketAddr>(),
    ) {
        (Ok(src), Ok(dst)) => (src, dst),
        _ => lab.fail("the lab's underlay addresses do not parse"),
    };
    for _ in 0..JUNK {
        lab.send_udp(&b.ns, src, dst, &[0xff; 64]);
    }
    lab.wait_until(
        "A counts every junk datagram as malformed",
        Duration::from_secs(10),
        || {
            let now = lab.drop_counter(&lab.status(&a.iface), "malformed");
            if now >= malformed + JUNK {
                Ok(())
            } else {
                Err(format!("malformed {malformed} -> {now}"))
            }
        },
    );
    let after = busy_poll(&lab, &a.iface);
    if after.rounds > before.rounds + STRAY || after.packets > before.packets + STRAY {
        lab.fail(format!(
            "{JUNK} junk datagrams should start no polling round; before {before:?}, after \
             {after:?}"
        ));
    }

    // Turn polling off by reload: the window goes to zero and no round runs any more.
    let text = lab.config_with_interface_keys(&a, &b, "busy_poll_us = 0\n");
    lab.write_file(&format!("{}.toml", a.iface), &text);
    let out = run_timeout(
        Command::new(BIN).args(["reload", &a.iface]),
        Duration::from_secs(20),
    );
    if !out.status.success() {
        lab.fail(format!(
            "reload with busy_poll_us = 0 should succeed; {}",
            describe(&out)
        ));
    }
    let before = busy_poll(&lab, &a.iface);
    echoes(&lab, &a.ns, &b.v4);
    let after = busy_poll(&lab, &a.iface);
    if after.window_us != 0 || after.rounds != before.rounds {
        lab.fail(format!(
            "after a reload to busy_poll_us = 0, A should stop polling; before the echoes \
             {before:?}, after {after:?}"
        ));
    }
}

/// The `busy_poll` object of a daemon's status.
#[derive(Debug, Default, PartialEq, Eq)]
struct BusyPoll {
    window_us: u64,
    rounds: u64,
    empty_rounds: u64,
    packets: u64,
}

fn busy_poll(lab: &Lab, iface: &str) -> BusyPoll {
    let status = lab.status(iface);
    let field = |name: &str| match status["busy_poll"][name].as_u64() {
        Some(count) => count,
        None => lab.fail(format!(
            "status of {iface}: busy_poll.{name} should be a count, found {}",
            status["busy_poll"][name]
        )),
    };
    BusyPoll {
        window_us: field("window_us"),
        rounds: field("rounds"),
        empty_rounds: field("empty_rounds"),
        packets: field("packets"),
    }
}

/// Sends `ECHOES` pings 50 ms apart and fails the test unless all come back.
fn echoes(lab: &Lab, ns: &str, addr: &str) {
    let out = lab.ns_exec(
        ns,
        &[
            "ping", "-n", "-q", "-c", ECHOES, "-i", "0.05", "-W", "1", addr,
        ],
    );
    if !out.status.success() {
        lab.fail(format!(
            "{ECHOES} pings from {ns} to {addr} should all come back; {}",
            describe(&out)
        ));
    }
}
