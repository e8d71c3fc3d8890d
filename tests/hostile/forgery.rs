//! Forged transport packets from a stranger's address, with a real receiver index: counted as
//! unauthenticated, never answered, never moving A's endpoint or B's replay window.

use std::net::{SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common;
use crate::common::{in_netns, loud, Lab};
use crate::hostile_support::{
    add_stranger, forged_transport, rng, transport_header, underlay_of, Capture, B_SIDE_ADDR,
    C_ADDR,
};
use crate::{drops_delta, peer_drops_delta, wait_for_status};

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
