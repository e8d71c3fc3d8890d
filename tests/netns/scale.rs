//! The most allowed_ips one interface supports (MAX_ALLOWED_IPS, 65,536 prefixes): `up` routes
//! them all in bounded time and `status` answers quickly. (One more is refused at its line: a
//! config test.)

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common;
use crate::common::{describe, run, run_timeout, Lab};

const MOST_ALLOWED_IPS: usize = 65_536;
/// Loose bounds for a debug build on a machine shared with other builds; the figures of a release
/// build are in docs/hardening.md. Before the fix, `up` alone took minutes in a debug build.
const UP_WITHIN: Duration = Duration::from_secs(120);
const STATUS_WITHIN: Duration = Duration::from_secs(10);

#[test]
fn the_most_allowed_ips_come_up_and_status_answers_in_bounded_time() {
    if !common::netns_available("the_most_allowed_ips_come_up_and_status_answers_in_bounded_time") {
        return;
    }
    let mut lab = Lab::new("sc");
    let ns = lab.add_ns("x");
    let me = lab.node(ns.clone(), "x", 1, 51854, false);
    let peer = lab.node(ns.clone(), "y", 2, 51854, false);
    // The lab gives the peer its /32 and /128 (inside our own networks: no route); the rest are
    // host routes in 100.96.0.0/15.
    let extra: Vec<String> = (0..MOST_ALLOWED_IPS - 2)
        .map(|i| format!("100.{}.{}.{}/32", 96 + (i >> 16), (i >> 8) & 255, i & 255))
        .collect();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let text = lab.config_text(&me, &[(&peer, &extra)]);
    let config = lab.write_file(&format!("{}.toml", me.iface), &text);

    let start = Instant::now();
    lab.start_daemon(&ns, &me.iface, &config);
    loop {
        if let Some(status) = lab.daemon_exited(&me.iface) {
            lab.fail(format!("the daemon exited during start-up with {status}"));
        }
        if lab.status_raw(&me.iface).is_ok() {
            break;
        }
        if start.elapsed() > UP_WITHIN {
            lab.fail(format!(
                "`dhtun up` with {MOST_ALLOWED_IPS} allowed_ips not answering after {UP_WITHIN:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let up_took = start.elapsed();
    let routes = run(Command::new("ip").args(["-n", &ns, "-4", "route", "show", "dev", &me.iface]));
    let host_routes = String::from_utf8_lossy(&routes.stdout)
        .lines()
        .filter(|l| l.starts_with("100.9"))
        .count();
    if host_routes != MOST_ALLOWED_IPS - 2 {
        lab.fail(format!(
            "expected {} host routes in 100.96.0.0/15 on {}, found {host_routes}",
            MOST_ALLOWED_IPS - 2,
            me.iface
        ));
    }

    let start = Instant::now();
    let out = run_timeout(
        &mut me.cli(&["status", &me.iface, "--json"]),
        Duration::from_secs(60),
    );
    let status_took = start.elapsed();
    if !out.status.success() {
        lab.fail(format!("`dhtun status --json` failed: {}", describe(&out)));
    }
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| lab.fail(format!("status printed invalid JSON: {e}")));
    let listed = status["peers"][0]["allowed_ips"]
        .as_array()
        .map_or(0, Vec::len);
    if listed != MOST_ALLOWED_IPS {
        lab.fail(format!(
            "status lists {listed} allowed_ips of the peer, not {MOST_ALLOWED_IPS}"
        ));
    }
    eprintln!(
        "{MOST_ALLOWED_IPS} allowed_ips: up (until status answered) {up_took:?}, status --json \
         {status_took:?}"
    );
    if status_took > STATUS_WITHIN {
        lab.fail(format!(
            "`dhtun status --json` took {status_took:?}; at most {STATUS_WITHIN:?}"
        ));
    }
}
