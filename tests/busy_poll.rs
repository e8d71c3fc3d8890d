//! Busy polling (`[interface] busy_poll_us`) on the real kernel path: a daemon with a window
//! reads packets while it polls, one without never polls, junk at the port starts no polling,
//! a one-way stream makes it skip rounds, and a reload turns polling off without a restart.
//! What it is worth in latency is for `netns-scripts/bench.sh` to measure; this test only
//! checks that polling reads what arrives and stops paying where nothing answers.
//! Same skip policy as tests/netns/: without root it prints SKIPPED, unless
//! DHTUN_REQUIRE_NETNS=1 (CI), where it fails.

mod common;

use common::{describe, in_netns, run_timeout, Lab};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// Long enough that an echo reply from the other namespace comes back within the window even
/// on a busy CI machine: the round trip is about 0.2 ms here.
const WINDOW_US: u64 = 1000;
const ECHOES: u64 = 20;
/// Echo rounds that may be skipped all the same: a reply that comes late on a busy machine
/// makes its round empty, and the next wake-up skips.
const SKIPPED_ECHOES: u64 = 4;
/// Junk datagrams sent at the polling daemon's port.
const JUNK: u64 = 100;
/// Rounds (and packets) the junk may appear to add: a keepalive or handshake from the peer may
/// arrive meanwhile. Counted junk would add one packet per datagram.
const STRAY: u64 = 2;
/// Datagrams of the one-way stream from A to a socket in B, and the gap between them: longer
/// than the window, so each wakes A on its own and finds no answer.
const STREAM: u64 = 200;
const STREAM_GAP: Duration = Duration::from_millis(2);
/// The port B's socket takes the stream on. A socket must be there: without one, B's kernel
/// would answer each datagram with an ICMP error, and that answer is what polling waits for.
const STREAM_PORT: u16 = 40_007;

#[test]
fn busy_polling_reads_packets_and_reload_turns_it_off() {
    if !common::netns_available("busy_polling_reads_packets_and_reload_turns_it_off") {
        return;
    }
    let (mut lab, a, b) = Lab::pair("bp", 51827);
    lab.up_with_interface_keys(&a, &b, &format!("busy_poll_us = {WINDOW_US}\n"));
    lab.up(&b, &[(&a, &[])]);
    lab.must_ping(&a, &b.v4);
    let before = busy_poll(&lab, &a.iface);
    echoes(&lab, &a.ns, &b.v4);

    // Each echo's reply comes back within the window, so every echo's round is worth it and
    // none is skipped.
    let polled = busy_poll(&lab, &a.iface);
    if polled.window_us != WINDOW_US
        || polled.rounds < before.rounds + ECHOES / 2
        || polled.packets < before.packets + ECHOES / 2
        || polled.skipped > before.skipped + SKIPPED_ECHOES
    {
        lab.fail(format!(
            "with busy_poll_us = {WINDOW_US}, A should run a round for each of {ECHOES} echoes \
             and read the replies in them; before {before:?}, after {polled:?}"
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

    // A one-way stream brings no answer, so after a few empty rounds A skips most of them.
    let before = busy_poll(&lab, &a.iface);
    let received = one_way_stream(&lab, &a.ns, &b.ns, &b.v4);
    let after = busy_poll(&lab, &a.iface);
    if received != STREAM {
        lab.fail(format!(
            "B's socket should receive all {STREAM} datagrams of the stream, got {received}"
        ));
    }
    if after.skipped < before.skipped + STREAM / 2 {
        lab.fail(format!(
            "{STREAM} datagrams {STREAM_GAP:?} apart from A's side, none answered: A should have \
             skipped the rounds of at least half of their wake-ups; before {before:?}, after \
             {after:?}"
        ));
    }

    // Turn polling off by reload: the window goes to zero and no round runs any more.
    let text = lab.config_with_interface_keys(&a, &b, "busy_poll_us = 0\n");
    lab.write_file(&format!("{}.toml", a.iface), &text);
    let out = run_timeout(&mut a.cli(&["reload", &a.iface]), Duration::from_secs(20));
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
    skipped: u64,
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
        skipped: field("skipped"),
    }
}

/// Sends `ECHOES` pings 50 ms apart and fails the test unless all come back.
fn echoes(lab: &Lab, ns: &str, addr: &str) {
    let count = ECHOES.to_string();
    let out = lab.ns_exec(
        ns,
        &[
            "ping", "-n", "-q", "-c", &count, "-i", "0.05", "-W", "1", addr,
        ],
    );
    if !out.status.success() {
        lab.fail(format!(
            "{ECHOES} pings from {ns} to {addr} should all come back; {}",
            describe(&out)
        ));
    }
}

/// Sends `STREAM` datagrams `STREAM_GAP` apart from namespace `from` through the tunnel to a
/// socket on `to_addr` in namespace `to`; returns how many that socket received.
fn one_way_stream(lab: &Lab, from: &str, to: &str, to_addr: &str) -> u64 {
    let dst = match format!("{to_addr}:{STREAM_PORT}").parse::<SocketAddr>() {
        Ok(dst) => dst,
        Err(e) => lab.fail(format!("{to_addr}:{STREAM_PORT} does not parse: {e}")),
    };
    let (bound_tx, bound_rx) = std::sync::mpsc::sync_channel(1);
    let receiver = in_netns(to, move || {
        let sock = UdpSocket::bind(dst).map_err(|e| format!("bind {dst}: {e}"))?;
        let _ = bound_tx.send(());
        sock.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| format!("read timeout: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 2048];
        let mut received = 0;
        // Until all came or two seconds pass without one, and never past the deadline.
        while received < STREAM && Instant::now() < deadline {
            match sock.recv(&mut buf) {
                Ok(_) => received += 1,
                Err(_) => break,
            }
        }
        Ok(received)
    });
    if bound_rx.recv_timeout(Duration::from_secs(5)).is_err() {
        let why = receiver
            .join()
            .map_or_else(|_| "panicked".into(), |r| format!("{r:?}"));
        lab.fail(format!(
            "the stream's receiver in {to} did not start: {why}"
        ));
    }
    let sender = in_netns(from, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
        for i in 0..STREAM {
            sock.send_to(&i.to_be_bytes(), dst)
                .map_err(|e| format!("send to {dst}: {e}"))?;
            std::thread::sleep(STREAM_GAP);
        }
        Ok(())
    });
    match sender.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => lab.fail(format!("sending the stream from {from}: {e}")),
        Err(_) => lab.fail("the stream's sender panicked"),
    }
    match receiver.join() {
        Ok(Ok(received)) => received,
        Ok(Err(e)) => lab.fail(format!("receiving the stream in {to}: {e}")),
        Err(_) => lab.fail("the stream's receiver panicked"),
    }
}
