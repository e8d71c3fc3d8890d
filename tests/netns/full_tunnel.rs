//! A full tunnel: B is A's default route for both families while A reaches B itself only through
//! its default gateway R. The internet host behind B is reached through the tunnel, dhtun's own
//! traffic (tunnel, DHT) still leaves by R, and `down`, SIGTERM, or a kill -9 followed by `up`
//! and `down`, gives back A's rules and routes exactly as they were.

use std::time::Duration;

use serde_json::Value;

use crate::common;
use crate::common::{
    describe, run_timeout, DefaultRoute, Lab, Node, INTERNET_V4, INTERNET_V6, ROUTER_FAR_V4,
};

const EVERYTHING: &[&str] = &["0.0.0.0/0", "::/0"];

#[test]
fn full_tunnel_with_discovery_gives_back_every_rule_and_route() {
    if !common::netns_available("full_tunnel_with_discovery_gives_back_every_rule_and_route") {
        return;
    }
    let (mut lab, t) = Lab::routed("ft", 51870, DefaultRoute::Static);
    let (a, b) = (&t.a, &t.b);
    // Strict reverse-path filtering, as some distributions set it: a packet from B arriving on
    // ul0 passes only if the way back to B leaves by ul0 too.
    lab.sysctl(&a.ns, "net/ipv4/conf/all/rp_filter", "1");
    lab.sysctl(&a.ns, "net/ipv4/conf/ul0/rp_filter", "1");
    let dht = format!("{ROUTER_FAR_V4}:{}", common::DHT_PORT);
    lab.start_dht_node(&t.router, &dht);
    let before = lab.routing_state(&a.ns);
    expect_route(&lab, a, &[INTERNET_V4], "dev ul0");

    lab.up_dht(b, &[(a, &[])], &[&dht]);
    let config = lab.up_dht(a, &[(b, EVERYTHING)], &[&dht]);
    let routing = wait_full_tunnel(&lab, a);
    check_full_tunnel(&lab, a, b, &routing);
    // Found through the DHT, whose packets to R's far side take the default route.
    let status = lab.status(&a.iface);
    let peer = lab.peer_status(&status, &b.public);
    if peer["endpoint_source"] != "dht" || peer["endpoint"] != format!("{}:{}", b.underlay, b.port)
    {
        lab.fail(format!(
            "A should have found B's endpoint in the DHT: {peer}"
        ));
    }
    let dht_port = lab.dht_status(&status)["local_address"]
        .as_str()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| lab.fail(format!("no DHT port in {status}")));
    expect_route(
        &lab,
        a,
        &[
            ROUTER_FAR_V4,
            "ipproto",
            "udp",
            "sport",
            &dht_port.to_string(),
        ],
        "dev ul0",
    );
    lab.wait_published(&a.iface);
    let during = lab.routing_state(&a.ns);
    lab.stop_daemon(&a.iface);
    let after = lab.routing_state(&a.ns);
    if after != before {
        lab.fail(format!(
            "after `down` A's routing should be as before.\nbefore:\n{before}\nafter:\n{after}"
        ));
    }
    eprintln!("A before:\n{before}\nA during:\n{during}\nA after:\n{after}");

    // kill -9 leaves the rules behind; the next `up` clears them, and its `down` its own.
    lab.start_daemon(&a.ns, &a.iface, &config);
    lab.wait_ready(&a.iface, &a.v4);
    wait_full_tunnel(&lab, a);
    let pid = lab.daemon_pid(&a.iface);
    // SAFETY: kill(2) on the pid of the daemon this test started and has not reaped.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    if lab
        .wait_daemon_exit(&a.iface, Duration::from_secs(10))
        .is_none()
    {
        lab.fail("the daemon survived SIGKILL for 10 s");
    }
    let killed = lab.routing_state(&a.ns);
    if !killed.contains("suppress_prefixlength 0") {
        lab.fail(format!(
            "expected the killed daemon's rules to remain until the next up:\n{killed}"
        ));
    }
    lab.start_daemon(&a.ns, &a.iface, &config);
    lab.wait_ready(&a.iface, &a.v4);
    let routing = wait_full_tunnel(&lab, a);
    check_full_tunnel(&lab, a, b, &routing);
    let rules = lab.ip_ok(&a.ns, &["rule", "show"]);
    if rules.matches("suppress_prefixlength").count() != 1 {
        lab.fail(format!(
            "the new daemon should have replaced the dead one's IPv4 rules, not added to them:\n{rules}"
        ));
    }
    lab.stop_daemon(&a.iface);
    let after = lab.routing_state(&a.ns);
    if after != before {
        lab.fail(format!(
            "after kill -9, up and down, A's routing should be as before.\n\
             before:\n{before}\nafter:\n{after}"
        ));
    }

    // SIGTERM cleans up as `down` does.
    lab.start_daemon(&a.ns, &a.iface, &config);
    lab.wait_ready(&a.iface, &a.v4);
    wait_full_tunnel(&lab, a);
    let pid = lab.daemon_pid(&a.iface);
    // SAFETY: kill(2) on the pid of the daemon this test started and has not reaped.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    match lab.wait_daemon_exit(&a.iface, Duration::from_secs(10)) {
        Some(status) if status.success() => {}
        other => lab.fail(format!("after SIGTERM the daemon should exit 0: {other:?}")),
    }
    let after = lab.routing_state(&a.ns);
    if after != before {
        lab.fail(format!(
            "after SIGTERM A's routing should be as before.\nbefore:\n{before}\nafter:\n{after}"
        ));
    }
}

#[test]
fn reload_turns_a_full_tunnel_over_ipv6_on_and_off_with_a_dhcp_default() {
    if !common::netns_available(
        "reload_turns_a_full_tunnel_over_ipv6_on_and_off_with_a_dhcp_default",
    ) {
        return;
    }
    let (mut lab, t) = Lab::routed("fr", 51872, DefaultRoute::Dhcp);
    // The tunnel itself runs over IPv6 here, with static endpoints and no DHT.
    let mut a = t.a.clone();
    let mut b = t.b.clone();
    a.underlay = "[2001:db8:1::1]".to_string();
    b.underlay = "[2001:db8:2::2]".to_string();
    let before = lab.routing_state(&a.ns);
    lab.up(&b, &[(&a, &[])]);
    lab.up(&a, &[(&b, &[])]);
    lab.must_ping(&a, &b.v4);
    let plain = lab.routing_state(&a.ns);
    expect_route(&lab, &a, &[INTERNET_V4], "dev ul0");

    let config = lab.config_text(&a, &[(&b, EVERYTHING)]);
    lab.write_file(&format!("{}.toml", a.iface), &config);
    reload(&lab, &a);
    let routing = wait_full_tunnel(&lab, &a);
    check_full_tunnel(&lab, &a, &b, &routing);
    if routing["fwmark"] != routing["table"] {
        lab.fail(format!(
            "with fwmark = 0 the mark should be the table's free number: {routing}"
        ));
    }

    let config = lab.config_text(&a, &[(&b, &[])]);
    lab.write_file(&format!("{}.toml", a.iface), &config);
    reload(&lab, &a);
    let state = lab.routing_state(&a.ns);
    if state != plain {
        lab.fail(format!(
            "a reload without the default route should give back the routing of before.\n\
             before:\n{plain}\nnow:\n{state}"
        ));
    }
    expect_route(&lab, &a, &[INTERNET_V4], "dev ul0");
    lab.must_ping(&a, &b.v6);
    lab.stop_daemon(&a.iface);
    let after = lab.routing_state(&a.ns);
    if after != before {
        lab.fail(format!(
            "after `down` A's routing should be as before.\nbefore:\n{before}\nafter:\n{after}"
        ));
    }
}

/// Waits until A's status shows the full tunnel in place; returns its `routing` object.
#[track_caller]
fn wait_full_tunnel(lab: &Lab, a: &Node) -> Value {
    lab.wait_until("A's full tunnel rules", Duration::from_secs(15), || {
        let status = lab.status_raw(&a.iface)?;
        let routing = status["routing"].clone();
        match routing["full_tunnel"].as_bool() {
            Some(true) => Ok(routing),
            _ => Err(format!("routing: {routing}")),
        }
    })
}

/// The internet host is reached through the tunnel on both families, while the tunnel's own
/// packets to B (they carry the mark) still leave by R.
#[track_caller]
fn check_full_tunnel(lab: &Lab, a: &Node, b: &Node, routing: &Value) {
    let dev = format!("dev {}", a.iface);
    expect_route(lab, a, &[INTERNET_V4], &dev);
    expect_route(lab, a, &[INTERNET_V6], &dev);
    let mark = routing["fwmark"]
        .as_u64()
        .unwrap_or_else(|| lab.fail(format!("no fwmark in status routing {routing}")))
        .to_string();
    let b_underlay = b.underlay.trim_matches(['[', ']']);
    expect_route(lab, a, &[b_underlay, "mark", &mark], "dev ul0");
    expect_route(lab, a, &[b_underlay], &dev);
    for target in [INTERNET_V4, INTERNET_V6] {
        if let Err(e) = lab.ping(&a.ns, target, 15) {
            lab.fail(format!(
                "A should reach the internet host {target} through B: {e}"
            ));
        }
    }
}

/// `ip route get ARGS` in A's namespace must mention `expected`.
#[track_caller]
fn expect_route(lab: &Lab, a: &Node, args: &[&str], expected: &str) {
    let mut all = vec!["route", "get"];
    all.extend_from_slice(args);
    let route = lab.ip_ok(&a.ns, &all);
    if !route.contains(expected) {
        lab.fail(format!(
            "`ip route get {}` in A should say {expected:?}, says {route:?}",
            args.join(" ")
        ));
    }
}

#[track_caller]
fn reload(lab: &Lab, a: &Node) {
    let out = run_timeout(&mut a.cli(&["reload", &a.iface]), Duration::from_secs(20));
    if !out.status.success() || String::from_utf8_lossy(&out.stdout).contains("error") {
        lab.fail(format!(
            "`dhtun reload {}` failed: {}",
            a.iface,
            describe(&out)
        ));
    }
}

#[test]
fn table_off_adds_nothing_and_a_table_number_takes_the_routes_without_rules() {
    if !common::netns_available(
        "table_off_adds_nothing_and_a_table_number_takes_the_routes_without_rules",
    ) {
        return;
    }
    let (mut lab, a, b) = Lab::pair("fn", 51878);
    let before = lab.routing_state(&a.ns);
    lab.up(&b, &[(&a, &[])]);

    // table = N: every route in table N, no rule; the explicit mark is on the tunnel socket.
    let keys = "table = 1234\nfwmark = 77\nmetrics_listen = \"127.0.0.1:9586\"\n";
    start_with_keys(&mut lab, &a, &b, &["0.0.0.0/0", "100.65.2.0/24"], keys);
    let routing = lab.status(&a.iface)["routing"].clone();
    let expected = serde_json::json!({
        "table": 1234, "fwmark": 77, "full_tunnel": false, "rule_priority": null
    });
    if routing != expected {
        lab.fail(format!("status routing should be {expected}, is {routing}"));
    }
    let table = lab.ip_ok(&a.ns, &["route", "show", "table", "1234"]);
    if !table.contains(&format!("default dev {}", a.iface)) || table.contains("100.65.2.0") {
        lab.fail(format!(
            "table 1234 should hold the default route alone (it covers the /24): {table:?}"
        ));
    }
    let rules = lab.ip_ok(&a.ns, &["rule", "show"]);
    if rules.contains("1234") || rules.contains("proto 215") {
        lab.fail(format!("table = N adds no rule: {rules}"));
    }
    let sockets = lab.ns_exec(&a.ns, &["ss", "-u", "-a", "-n", "-e"]);
    let sockets = String::from_utf8_lossy(&sockets.stdout).into_owned();
    let tunnel = sockets
        .lines()
        .find(|l| l.contains(&format!(":{} ", a.port)))
        .unwrap_or_else(|| lab.fail(format!("no tunnel socket in `ss`: {sockets}")));
    if !tunnel.contains("fwmark:0x4d") {
        lab.fail(format!(
            "the tunnel socket should carry fwmark 77: {tunnel}"
        ));
    }
    let listeners = lab.ns_exec(&a.ns, &["ss", "-t", "-l", "-n", "-e"]);
    let listeners = String::from_utf8_lossy(&listeners.stdout).into_owned();
    if !listeners
        .lines()
        .any(|l| l.contains("127.0.0.1:9586") && l.contains("fwmark:0x4d"))
    {
        lab.fail(format!(
            "the metrics listener should carry fwmark 77: {listeners}"
        ));
    }
    lab.must_ping(&a, &b.v4);
    lab.stop_daemon(&a.iface);
    assert_eq!(lab.routing_state(&a.ns), before);

    // table = "off": no route at all, not even for a subnet.
    start_with_keys(
        &mut lab,
        &a,
        &b,
        &["0.0.0.0/0", "100.65.2.0/24"],
        "table = \"off\"\n",
    );
    let routing = lab.status(&a.iface)["routing"].clone();
    if !routing["table"].is_null() || !routing["fwmark"].is_null() {
        lab.fail(format!(
            "with table = \"off\" status should show no table or mark: {routing}"
        ));
    }
    let all = lab.ip_ok(&a.ns, &["route", "show", "table", "all", "dev", &a.iface]);
    if all.lines().any(|l| !l.contains("proto kernel")) {
        lab.fail(format!("table = \"off\" should add no route: {all}"));
    }
    lab.stop_daemon(&a.iface);
    assert_eq!(lab.routing_state(&a.ns), before);
}

/// Starts A with B as its only peer, `allowed` added to B's allowed_ips and `keys` added to
/// `[interface]`.
#[track_caller]
fn start_with_keys(lab: &mut Lab, a: &Node, b: &Node, allowed: &[&str], keys: &str) {
    let text = lab.config_text(a, &[(b, allowed)]);
    let Some(at) = text.find("[dht]") else {
        lab.fail("the lab config has no [dht] section");
    };
    let text = format!("{}{keys}\n{}", &text[..at], &text[at..]);
    let config = lab.write_file(&format!("{}.toml", a.iface), &text);
    lab.start_daemon(&a.ns, &a.iface, &config);
    lab.wait_ready(&a.iface, &a.v4);
}

/// Two full-tunnel daemons in one namespace started at the same instant (as two units at boot)
/// each get a table, mark and priority of their own, and stopping one leaves the other's rules
/// in place. Then a live daemon whose link went down (the kernel flushed its table) keeps its
/// rules when another daemon starts and sweeps the rules of dead ones.
#[test]
fn simultaneous_full_tunnels_pick_apart_and_keep_each_others_rules() {
    if !common::netns_available("simultaneous_full_tunnels_pick_apart_and_keep_each_others_rules") {
        return;
    }
    let (mut lab, a1, b1) = Lab::pair("fs", 51882);
    let a2 = lab.node(a1.ns.clone(), "a2", 3, 51883, false);
    let b2 = lab.node(b1.ns.clone(), "b2", 4, 51883, false);
    let before = lab.routing_state(&a1.ns);
    let mut configs = Vec::new();
    for (me, peer) in [(&a1, &b1), (&a2, &b2)] {
        let text = lab.config_text(me, &[(peer, EVERYTHING)]);
        configs.push(lab.write_file(&format!("{}.toml", me.iface), &text));
    }
    // The old code collided about once in 20 such rounds (measured: round 18 of 40).
    const ROUNDS: usize = 20;
    for round in 0..ROUNDS {
        lab.start_daemon(&a1.ns, &a1.iface, &configs[0]);
        lab.start_daemon(&a2.ns, &a2.iface, &configs[1]);
        lab.wait_ready(&a1.iface, &a1.v4);
        lab.wait_ready(&a2.iface, &a2.v4);
        let (r1, r2) = (wait_full_tunnel(&lab, &a1), wait_full_tunnel(&lab, &a2));
        for key in ["table", "fwmark", "rule_priority"] {
            if r1[key] == r2[key] {
                lab.fail(format!(
                    "round {round}: both daemons picked {key} {}: {r1} and {r2}",
                    r1[key]
                ));
            }
        }
        if table_rules(&lab, &a1.ns, &r1) != 1 || table_rules(&lab, &a1.ns, &r2) != 1 {
            let rules = lab.ip_ok(&a1.ns, &["rule", "show"]);
            lab.fail(format!(
                "round {round}: one IPv4 table rule per daemon expected:\n{rules}"
            ));
        }
        // Stop them in either order: the one left keeps its rules and its default route.
        let (first, second, left) = if round % 2 == 0 {
            (&a1, &a2, &r2)
        } else {
            (&a2, &a1, &r1)
        };
        lab.stop_daemon(&first.iface);
        let table = left["table"].to_string();
        let rules = lab.ip_ok(&a1.ns, &["rule", "show"]);
        if table_rules(&lab, &a1.ns, left) != 1 || !rules.contains("suppress_prefixlength 0") {
            lab.fail(format!(
                "round {round}: stopping {} took the rules of {} (table {table}):\n{rules}",
                first.iface, second.iface
            ));
        }
        expect_route(
            &lab,
            second,
            &["198.18.3.2", "mark", "0"],
            &format!("dev {}", second.iface),
        );
        lab.stop_daemon(&second.iface);
        let after = lab.routing_state(&a1.ns);
        if after != before {
            lab.fail(format!(
                "round {round}: after both stopped the routing should be as before.\n\
                 before:\n{before}\nafter:\n{after}"
            ));
        }
    }

    // A live daemon whose link is down has an empty table; its rules are not a dead daemon's.
    lab.start_daemon(&a1.ns, &a1.iface, &configs[0]);
    lab.wait_ready(&a1.iface, &a1.v4);
    let r1 = wait_full_tunnel(&lab, &a1);
    lab.ip_ok(&a1.ns, &["link", "set", "dev", &a1.iface, "down"]);
    let table = r1["table"].to_string();
    let emptied = lab.ip_ok(&a1.ns, &["route", "show", "table", &table]);
    if !emptied.trim().is_empty() {
        lab.fail(format!(
            "the kernel should have flushed table {table}: {emptied}"
        ));
    }
    let held = lab.ip_ok(&a1.ns, &["rule", "show"]);
    lab.start_daemon(&a2.ns, &a2.iface, &configs[1]);
    lab.wait_ready(&a2.iface, &a2.v4);
    wait_full_tunnel(&lab, &a2);
    let rules = lab.ip_ok(&a1.ns, &["rule", "show"]);
    for line in held.lines().filter(|l| l.contains("proto 215")) {
        if !rules.lines().any(|l| l == line) {
            lab.fail(format!(
                "starting {} removed the live {}'s rule {line:?}:\n{rules}",
                a2.iface, a1.iface
            ));
        }
    }
    lab.stop_daemon(&a2.iface);
    lab.stop_daemon(&a1.iface);
}

/// How many IPv4 rules send to the table of `routing` (a status's routing object).
fn table_rules(lab: &Lab, ns: &str, routing: &Value) -> usize {
    let table = routing["table"].as_u64().unwrap_or(0);
    let rules = lab.ip_ok(ns, &["-4", "rule", "show"]);
    let lookup = format!("lookup {table}");
    rules
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| w.join(" ") == lookup)
        })
        .count()
}
