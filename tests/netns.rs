//! End-to-end tests of `dhtun up` between two network namespaces.
//!
//! Each test builds its own namespaces (names carry a test tag and the pid), runs the real daemon
//! binary inside them with `ip netns exec`, and removes everything on drop, also when it fails.
//! Without root they print SKIPPED and pass, unless DHTUN_REQUIRE_NETNS=1 (CI), where they fail.

mod common;

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::transfer::Transfer;
use common::{describe, in_netns, run_timeout, try_run_timeout, Lab, BIN};

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap_or_else(|e| panic!("bad IPv4 {s}: {e}"))
}

#[test]
fn ping_both_ways_ipv4_and_ipv6() {
    if !common::netns_available("ping_both_ways_ipv4_and_ipv6") {
        return;
    }
    let (mut lab, a, b) = Lab::pair("pg", 51820);
    lab.up_pair(&a, &b, &[], &[]);

    let before_a = lab.status(&a.iface);
    let before_b = lab.status(&b.iface);

    lab.must_ping(&a, &b.v4);
    lab.must_ping(&b, &a.v4);
    lab.must_ping(&a, &b.v6);
    lab.must_ping(&b, &a.v6);

    let after_a = lab.status(&a.iface);
    let after_b = lab.status(&b.iface);
    for (me, peer, before, after) in [(&a, &b, &before_a, &after_a), (&b, &a, &before_b, &after_b)]
    {
        for field in ["rx_bytes", "tx_bytes", "rx_packets", "tx_packets"] {
            let x0 = lab.peer_counter(before, &peer.public, field);
            let x1 = lab.peer_counter(after, &peer.public, field);
            if x1 <= x0 {
                lab.fail(format!(
                    "{}: peer {} {field} should have grown after 4 successful pings, \
                     but went from {x0} to {x1}",
                    me.iface, peer.iface
                ));
            }
        }
        let p = lab.peer_status(after, &peer.public);
        // A few pings never leave the replay window, so this only shows the field is there.
        if !p["rx_lost_packets"].is_u64() {
            lab.fail(format!(
                "{}: peer {} status should carry rx_lost_packets as a number, got {}",
                me.iface, peer.iface, p["rx_lost_packets"]
            ));
        }
        if !p["last_handshake_secs_ago"].is_u64() {
            lab.fail(format!(
                "{}: peer {} last_handshake_secs_ago should be a number after a handshake, \
                 got {}",
                me.iface, peer.iface, p["last_handshake_secs_ago"]
            ));
        }
        if p["endpoint"] != format!("{}:{}", peer.underlay, peer.port).as_str() {
            lab.fail(format!(
                "{}: peer {} endpoint should be the static {}:{}, got {}",
                me.iface, peer.iface, peer.underlay, peer.port, p["endpoint"]
            ));
        }
    }
}

const TCP_TOTAL: usize = 64 << 20;
const TCP_SEED: u64 = 0x00d4_7f3a_61c0_ffee;
const TCP_PORT: u16 = 47001;
const TCP_OVERALL: Duration = Duration::from_secs(120);

#[test]
fn tcp_64mib_transfer_intact() {
    if !common::netns_available("tcp_64mib_transfer_intact") {
        return;
    }
    let (mut lab, a, b) = Lab::pair("tc", 51821);
    lab.up_pair(&a, &b, &[], &[]);
    // Establish the session first, so the transfer measures the data path.
    lab.must_ping(&a, &b.v4);

    let deadline = Instant::now() + TCP_OVERALL;
    let transfer = Transfer::start(&a, &b, TCP_PORT, TCP_TOTAL, TCP_SEED, deadline)
        .unwrap_or_else(|e| lab.fail(format!("transfer from A to B: {e}")));
    let start = transfer.started;
    let (sent, received) = transfer.finish();
    let secs = start.elapsed().as_secs_f64();
    let (sent, sent_hash) = sent.unwrap_or_else(|e| lab.fail(format!("sender in A failed: {e}")));
    let (got, got_hash) =
        received.unwrap_or_else(|e| lab.fail(format!("receiver in B failed: {e}")));
    eprintln!(
        "tcp_64mib_transfer_intact: {got} bytes in {secs:.1} s ({:.1} MiB/s)",
        got as f64 / secs / (1 << 20) as f64
    );
    if got != TCP_TOTAL || sent != TCP_TOTAL || got_hash != sent_hash {
        lab.fail(format!(
            "expected {TCP_TOTAL} identical bytes on both ends; sent {sent} (fnv64 {sent_hash:#x}), \
             received {got} (fnv64 {got_hash:#x})"
        ));
    }

    let st = lab.status(&a.iface);
    let tx = lab.peer_counter(&st, &b.public, "tx_bytes");
    if tx < TCP_TOTAL as u64 {
        lab.fail(format!(
            "A's tx_bytes for B is {tx}, expected at least the {TCP_TOTAL} payload bytes sent"
        ));
    }
}

#[test]
fn subnet_behind_peer() {
    if !common::netns_available("subnet_behind_peer") {
        return;
    }
    let (mut lab, a, b) = Lab::pair("sn", 51822);
    lab.add_stub_link(&b.ns, "lan0");
    lab.ip_ok(&b.ns, &["addr", "add", "100.65.2.1/24", "dev", "lan0"]);
    lab.up_pair(&a, &b, &["100.65.2.0/24"], &[]);

    let routes = lab.ip_ok(&a.ns, &["route", "show", "100.65.2.0/24"]);
    if !routes.contains(&format!("dev {}", a.iface)) {
        lab.fail(format!(
            "A should route 100.65.2.0/24 (allowed_ips of B) via {}; `ip route show \
             100.65.2.0/24` printed {routes:?}",
            a.iface
        ));
    }
    lab.must_ping(&a, "100.65.2.1");
}

const SPOOF_PORT: u16 = 47002;

#[test]
fn spoofed_source_dropped() {
    if !common::netns_available("spoofed_source_dropped") {
        return;
    }
    let (mut lab, a, b) = Lab::pair("sp", 51823);
    // B owns 100.99.0.1, which is not in B's allowed_ips at A.
    lab.add_stub_link(&b.ns, "spf0");
    lab.ip_ok(&b.ns, &["addr", "add", "100.99.0.1/32", "dev", "spf0"]);
    // Make sure A's kernel itself would accept the spoofed packet: only the daemon may drop it.
    lab.sysctl(&a.ns, "net/ipv4/conf/all/rp_filter", "0");
    lab.sysctl(&a.ns, "net/ipv4/conf/default/rp_filter", "0");
    lab.up_pair(&a, &b, &[], &[]);
    lab.must_ping(&b, &a.v4);

    // Listener in A reports every datagram it gets until told to stop.
    let dst = SocketAddr::V4(SocketAddrV4::new(v4(&a.v4), SPOOF_PORT));
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<(SocketAddr, Vec<u8>)>();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let stop2 = stop.clone();
    let listener = in_netns(&a.ns, move || {
        let sock = UdpSocket::bind(dst).map_err(|e| format!("bind {dst}: {e}"))?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        let _ = ready_tx.send(());
        let give_up = Instant::now() + Duration::from_secs(60);
        let mut buf = [0u8; 2048];
        while !stop2.load(Ordering::Relaxed) && Instant::now() < give_up {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let _ = tx.send((from, buf[..n].to_vec()));
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(format!("recv: {e}")),
            }
        }
        Ok(())
    });
    if ready_rx.recv_timeout(Duration::from_secs(10)).is_err() {
        let err = listener.join().expect("listener panicked").err();
        lab.fail(format!("UDP listener in A did not start: {err:?}"));
    }

    // Control: a datagram from B's legitimate overlay address arrives.
    let legit_src = SocketAddr::V4(SocketAddrV4::new(v4(&b.v4), 0));
    let mut arrived = false;
    'control: for _ in 0..5 {
        lab.send_udp(&b.ns, legit_src, dst, b"legit");
        let until = Instant::now() + Duration::from_secs(2);
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok((_, p)) if p == b"legit" => {
                    arrived = true;
                    break 'control;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    if !arrived {
        stop.store(true, Ordering::Relaxed);
        lab.fail(format!(
            "control datagram from {} to {dst} never arrived; the tunnel does not carry UDP, \
             so the spoofing check would prove nothing",
            b.v4
        ));
    }

    let before = lab.drop_counter(&lab.status(&a.iface), "bad_source");
    let spoof_src = SocketAddr::V4(SocketAddrV4::new(v4("100.99.0.1"), 0));
    for _ in 0..3 {
        lab.send_udp(&b.ns, spoof_src, dst, b"spoofed");
    }
    let mut leaked = Vec::new();
    let until = Instant::now() + Duration::from_millis(1500);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok((from, p)) if p == b"spoofed" => leaked.push(from),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    stop.store(true, Ordering::Relaxed);
    if let Err(e) = listener.join().expect("listener panicked") {
        lab.fail(format!("UDP listener in A failed: {e}"));
    }
    if !leaked.is_empty() {
        lab.fail(format!(
            "datagrams with source 100.99.0.1 (outside B's allowed_ips) were delivered in A \
             from {leaked:?}; expected the daemon to drop them"
        ));
    }

    // The drop counter is updated by the daemon's data path; give it a moment (bounded).
    let mut after = before;
    for _ in 0..30 {
        after = lab.drop_counter(&lab.status(&a.iface), "bad_source");
        if after > before {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if after <= before {
        lab.fail(format!(
            "A's drops.bad_source should have grown after 3 spoofed datagrams, \
             but stayed at {before} -> {after}"
        ));
    }
}

#[test]
fn down_removes_interface_and_routes() {
    if !common::netns_available("down_removes_interface_and_routes") {
        return;
    }
    let (mut lab, a, b) = Lab::pair("dn", 51824);
    lab.up(&a, &[(&b, &["100.65.2.0/24"])]);

    let routes = lab.ip_ok(&a.ns, &["route", "show", "100.65.2.0/24"]);
    if !routes.contains(&format!("dev {}", a.iface)) {
        lab.fail(format!(
            "before down: expected a route 100.65.2.0/24 dev {}, got {routes:?}",
            a.iface
        ));
    }
    if !a.socket().exists() {
        lab.fail(format!(
            "control socket {} should exist while the daemon runs",
            a.socket().display()
        ));
    }

    let out = run_timeout(
        Command::new(BIN).args(["down", &a.iface]),
        Duration::from_secs(20),
    );
    if !out.status.success() {
        lab.fail(format!(
            "`dhtun down {}` should exit 0; {}",
            a.iface,
            describe(&out)
        ));
    }
    match lab.wait_daemon_exit(&a.iface, Duration::from_secs(10)) {
        None => lab.fail(format!(
            "the daemon of {} still runs 10 s after `dhtun down` returned",
            a.iface
        )),
        Some(st) if !st.success() => lab.fail(format!(
            "the daemon of {} should exit 0 after `dhtun down`, exited with {st}",
            a.iface
        )),
        Some(_) => {}
    }

    let link = lab.ip(&a.ns, &["link", "show", &a.iface]);
    if link.status.success() {
        lab.fail(format!(
            "interface {} should be gone after down, but `ip link show` found it: {}",
            a.iface,
            String::from_utf8_lossy(&link.stdout)
        ));
    }
    let routes = lab.ip_ok(&a.ns, &["route", "show", "100.65.2.0/24"]);
    if !routes.trim().is_empty() {
        lab.fail(format!(
            "no route to 100.65.2.0/24 should remain after down, found {routes:?}"
        ));
    }
    let routes6 = lab.ip_ok(&a.ns, &["-6", "route", "show", "fd64::/64"]);
    if !routes6.trim().is_empty() {
        lab.fail(format!(
            "no route to fd64::/64 should remain after down, found {routes6:?}"
        ));
    }
    if a.socket().exists() {
        lab.fail(format!(
            "control socket {} should be removed after down",
            a.socket().display()
        ));
    }
}

/// Run `dhtun up CONFIG` (logging left at its default) in `ns` when given, else here; it must
/// fail within 15 s. Returns the stderr lines.
fn up_must_fail(lab: &Lab, ns: Option<&str>, config: &Path, what: &str) -> Vec<String> {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, BIN]);
            c
        }
        None => Command::new(BIN),
    };
    cmd.arg("up").arg(config).env_remove("RUST_LOG");
    let out = try_run_timeout(&mut cmd, Duration::from_secs(15)).unwrap_or_else(|e| {
        lab.fail(format!(
            "{what}: `dhtun up` should fail at once, but it kept running: {e}"
        ))
    });
    if out.status.success() {
        lab.fail(format!("{what}: `dhtun up` should fail, but it exited 0"));
    }
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<String> = stderr.trim_end().lines().map(str::to_string).collect();
    if lines.len() != 1 || lines[0].trim().is_empty() {
        lab.fail(format!(
            "{what}: expected exactly one line on stderr, got {}: {stderr:?}",
            lines.len()
        ));
    }
    lines
}

/// Whether `line` holds `n` as a whole number (not part of a longer one).
fn has_number(line: &str, n: u32) -> bool {
    line.split(|c: char| !c.is_ascii_digit())
        .any(|tok| tok.parse::<u32>() == Ok(n))
}

#[test]
fn errors_are_one_clear_line() {
    // The config errors need no privileges. As root they run inside a scratch namespace anyway,
    // so that a daemon that wrongly accepted a config could not touch the host's network.
    let mut lab = Lab::new("er");
    let want_netns = common::is_root() || common::netns_required();
    let ns = if want_netns && common::netns_available("errors_are_one_clear_line") {
        Some(lab.add_ns("x"))
    } else {
        None
    };
    let ns = ns.as_deref();
    let iface = lab.iface_name("x");
    let secret = lab.genkey();
    let peer_public = lab.pubkey(&lab.genkey());

    // 1. Unknown key, on line 7.
    let text = format!(
        "# dhtun test config\n\
         [interface]\n\
         name = \"{iface}\"\n\
         private_key = \"{secret}\"\n\
         address = [\"100.64.0.1/24\"]\n\
         listen_port = 0\n\
         colour = \"blue\"\n\
         \n\
         [dht]\n\
         enabled = false\n"
    );
    assert_eq!(text.lines().nth(6), Some("colour = \"blue\""));
    let path = lab.write_file("unknown-key.toml", &text);
    let lines = up_must_fail(&lab, ns, &path, "unknown key `colour` on line 7");
    let file = path.file_name().unwrap().to_string_lossy().into_owned();
    if !lines[0].contains(&file) {
        lab.fail(format!(
            "unknown key: the error should name the file {file}, got {:?}",
            lines[0]
        ));
    }
    let without_path = lines[0].replace(&path.display().to_string(), "");
    if !has_number(&without_path, 7) {
        lab.fail(format!(
            "unknown key: the error should give line 7, got {:?}",
            lines[0]
        ));
    }

    // 2. Bad base64 in private_key and in a peer's public_key.
    for (field, text) in [
        (
            "private_key",
            format!(
                "[interface]\nname = \"{iface}\"\nprivate_key = \"this is not base64!\"\n\
                 address = [\"100.64.0.1/24\"]\nlisten_port = 0\n\n[dht]\nenabled = false\n"
            ),
        ),
        (
            "public_key",
            format!(
                "[interface]\nname = \"{iface}\"\nprivate_key = \"{secret}\"\n\
                 address = [\"100.64.0.1/24\"]\nlisten_port = 0\n\n[dht]\nenabled = false\n\n\
                 [[peer]]\npublic_key = \"@@not*base64@@\"\nallowed_ips = [\"100.64.0.2/32\"]\n\
                 endpoint = \"198.18.0.2:51820\"\n"
            ),
        ),
    ] {
        let path = lab.write_file(&format!("bad-{field}.toml"), &text);
        let lines = up_must_fail(&lab, ns, &path, &format!("invalid base64 in {field}"));
        let spaced = field.replace('_', " ");
        let lower = lines[0].to_lowercase();
        if !lower.contains(field) && !lower.contains(&spaced) {
            lab.fail(format!(
                "bad {field}: the error should name the field {field}, got {:?}",
                lines[0]
            ));
        }
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        if !lines[0].contains(&file) {
            lab.fail(format!(
                "bad {field}: the error should name the config file {file}, got {:?}",
                lines[0]
            ));
        }
    }

    // 3. Config file that does not exist.
    let missing = lab.dir.join("does-not-exist.toml");
    let lines = up_must_fail(&lab, ns, &missing, "missing config file");
    if !lines[0].contains(&missing.display().to_string()) {
        lab.fail(format!(
            "missing config: the error should name {}, got {:?}",
            missing.display(),
            lines[0]
        ));
    }

    // 4. The interface name is taken already (needs a namespace).
    let Some(ns) = ns else {
        common::loud(
            "SKIPPED (part): errors_are_one_clear_line: the `interface exists` case needs root",
        );
        return;
    };
    lab.add_stub_link(ns, &iface);
    let text = format!(
        "[interface]\nname = \"{iface}\"\nprivate_key = \"{secret}\"\n\
         address = [\"100.64.0.1/24\"]\nlisten_port = 0\n\n[dht]\nenabled = false\n\n\
         [[peer]]\npublic_key = \"{peer_public}\"\nallowed_ips = [\"100.64.0.2/32\"]\n\
         endpoint = \"198.18.0.2:51820\"\n"
    );
    let path = lab.write_file("taken.toml", &text);
    let lines = up_must_fail(&lab, Some(ns), &path, &format!("interface {iface} exists"));
    if !lines[0].contains(&iface) {
        lab.fail(format!(
            "interface exists: the error should name {iface}, got {:?}",
            lines[0]
        ));
    }
    let still = lab.ip(ns, &["link", "show", &iface]);
    if !still.status.success() {
        lab.fail(format!(
            "the pre-existing interface {iface} must survive a failed `dhtun up`, but it is gone"
        ));
    }
    if common::socket_path(&iface).exists() {
        lab.fail(format!(
            "a failed `dhtun up` left its control socket {} behind",
            common::socket_path(&iface).display()
        ));
    }
}

#[test]
fn reload_applies_changes_and_refuses_bad_configs() {
    if !common::netns_available("reload_applies_changes_and_refuses_bad_configs") {
        return;
    }
    let (mut lab, a, b) = Lab::pair("rl", 51826);
    lab.up_pair(&a, &b, &[], &[]);
    lab.must_ping(&a, &b.v4);
    let before = lab.status(&a.iface);
    let handshake_before = lab.peer_status(&before, &b.public)["last_handshake_secs_ago"].clone();

    // Widen B's allowed_ips in A's config: a route appears, the session stays.
    let text = lab.config_text(&a, &[(&b, &["100.65.7.0/24"])]);
    lab.write_file(&format!("{}.toml", a.iface), &text);
    let out = run_timeout(
        Command::new(BIN).args(["reload", &a.iface]),
        Duration::from_secs(20),
    );
    let said = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !said.contains("1 changed") {
        lab.fail(format!(
            "reload should succeed and report 1 changed peer; {}",
            describe(&out)
        ));
    }
    let routes = lab.ip_ok(&a.ns, &["route", "show", "100.65.7.0/24"]);
    if !routes.contains(&format!("dev {}", a.iface)) {
        lab.fail(format!(
            "after reload: expected a route 100.65.7.0/24 dev {}, got {routes:?}",
            a.iface
        ));
    }
    lab.must_ping(&a, &b.v4);
    let after = lab.status(&a.iface);
    let handshake_after = &lab.peer_status(&after, &b.public)["last_handshake_secs_ago"];
    if handshake_before.is_null() || handshake_after.is_null() {
        lab.fail(format!("the session should survive the reload: handshake ages {handshake_before} then {handshake_after}"));
    }

    // A broken config is refused with one clear line, and the running state is kept.
    lab.write_file(&format!("{}.toml", a.iface), "[interface]\nname = 3\n");
    let out = run_timeout(
        Command::new(BIN).args(["reload", &a.iface]),
        Duration::from_secs(20),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || err.lines().count() != 1 || !err.contains(".toml") {
        lab.fail(format!(
            "a broken config should be refused in one line naming the file; {}",
            describe(&out)
        ));
    }
    lab.must_ping(&a, &b.v4);
    let routes = lab.ip_ok(&a.ns, &["route", "show", "100.65.7.0/24"]);
    if !routes.contains(&format!("dev {}", a.iface)) {
        lab.fail(format!(
            "a refused reload must keep the running routes, got {routes:?}"
        ));
    }
}

#[test]
fn udp_bursts_arrive_intact() {
    if !common::netns_available("udp_bursts_arrive_intact") {
        return;
    }
    let (mut lab, a, b) = Lab::pair("ub", 51827);
    lab.up_pair(&a, &b, &[], &[]);
    lab.must_ping(&a, &b.v4);
    // Bursts of same-sized datagrams of one flow are what the receiver merges into one
    // UDP super-packet for its TUN device; every byte must come out as it went in.
    let dst = SocketAddr::V4(SocketAddrV4::new(v4(&b.v4), 5399));
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let receiver = in_netns(&b.ns, move || {
        let sock = UdpSocket::bind(dst).map_err(|e| format!("bind {dst}: {e}"))?;
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .map_err(|e| e.to_string())?;
        let _ = ready_tx.send(());
        let mut good = 0u32;
        let mut buf = [0u8; 2048];
        let give_up = Instant::now() + Duration::from_secs(30);
        while Instant::now() < give_up {
            match sock.recv(&mut buf) {
                Ok(n) => {
                    let Some(seq) = buf
                        .get(..4)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    else {
                        return Err(format!("a datagram of {n} bytes"));
                    };
                    if n != datagram_len(seq) || buf[4..n].iter().any(|&x| x != (seq as u8)) {
                        return Err(format!("datagram {seq} arrived corrupted ({n} bytes)"));
                    }
                    good += 1;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(e) => return Err(format!("recv: {e}")),
            }
        }
        Ok(good)
    });
    if ready_rx.recv_timeout(Duration::from_secs(10)).is_err() {
        lab.fail("the UDP receiver in B did not start");
    }
    let src = SocketAddr::V4(SocketAddrV4::new(v4(&a.v4), 0));
    let sender = in_netns(&a.ns, move || {
        let sock = UdpSocket::bind(src).map_err(|e| format!("bind {src}: {e}"))?;
        for seq in 0..3000u32 {
            let mut datagram = vec![seq as u8; datagram_len(seq)];
            datagram[..4].copy_from_slice(&seq.to_be_bytes());
            sock.send_to(&datagram, dst)
                .map_err(|e| format!("send: {e}"))?;
            if seq % 100 == 99 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(())
    });
    if let Err(e) = sender.join().expect("sender panicked") {
        lab.fail(format!("sending: {e}"));
    }
    match receiver.join().expect("receiver panicked") {
        Err(e) => lab.fail(e),
        // Bursts may overflow a socket now and then; what arrives must be intact, and most must.
        Ok(good) if good < 2500 => lab.fail(format!("only {good} of 3000 datagrams arrived")),
        Ok(_) => {}
    }
}

/// Runs of equal sizes with a shorter one now and then, as a merge must handle them.
fn datagram_len(seq: u32) -> usize {
    if seq % 37 == 36 {
        200 + (seq as usize % 500)
    } else {
        1200
    }
}

#[test]
fn errors_an_operator_meets() {
    if !common::netns_available("errors_an_operator_meets") {
        return;
    }
    let (mut lab, a, b) = Lab::pair("op", 51828);
    let config = |lab: &Lab, me: &common::Node, extra: &str| {
        let text = lab.config_text(me, &[(&b, &[])]) + extra;
        lab.write_file(&format!("{}-{}.toml", me.iface, extra.len()), &text)
    };
    let must_say = |lab: &Lab, lines: &[String], words: &[&str], what: &str| {
        let lower = lines[0].to_lowercase();
        if !words.iter().all(|w| lower.contains(&w.to_lowercase())) {
            lab.fail(format!(
                "{what}: the error should mention {words:?}, got {:?}",
                lines[0]
            ));
        }
    };

    // The same peer twice, and one prefix given to two peers.
    let twice = format!(
        "\n[[peer]]\npublic_key = \"{}\"\nallowed_ips = [\"100.64.0.9/32\"]\n",
        b.public
    );
    let lines = up_must_fail(
        &lab,
        Some(&a.ns),
        &config(&lab, &a, &twice),
        "a peer listed twice",
    );
    must_say(&lab, &lines, &["listed twice"], "a peer listed twice");
    let other = lab.pubkey(&lab.genkey());
    let overlap = format!(
        "\n[[peer]]\npublic_key = \"{other}\"\nallowed_ips = [\"{}/32\"]\n",
        b.v4
    );
    let lines = up_must_fail(
        &lab,
        Some(&a.ns),
        &config(&lab, &a, &overlap),
        "overlapping allowed_ips",
    );
    must_say(
        &lab,
        &lines,
        &["allowed_ips", "two peers"],
        "overlapping allowed_ips",
    );

    // A running daemon holds the interface's control socket and its port.
    lab.up(&a, &[(&b, &[])]);
    let path = config(&lab, &a, "");
    let lines = up_must_fail(&lab, Some(&a.ns), &path, "the same interface twice");
    must_say(
        &lab,
        &lines,
        &[&a.iface, "already running"],
        "the same interface twice",
    );
    let mut second = a.clone();
    second.iface = lab.iface_name("y");
    let lines = up_must_fail(
        &lab,
        Some(&a.ns),
        &config(&lab, &second, ""),
        "a port in use",
    );
    must_say(&lab, &lines, &["port", "in use"], "a port in use");

    // No privilege: an unprivileged user cannot create the interface or the control socket.
    let mut unprivileged = a.clone();
    unprivileged.iface = lab.iface_name("z");
    unprivileged.port = 51829;
    let path = config(&lab, &unprivileged, "");
    let _ = std::fs::set_permissions(
        &lab.dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    );
    let _ = std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644));
    let out = run_timeout(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &a.ns,
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                BIN,
                "up",
            ])
            .arg(&path)
            .env_remove("RUST_LOG"),
        Duration::from_secs(15),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || err.trim_end().lines().count() != 1 {
        lab.fail(format!(
            "without privilege `dhtun up` should fail in one line; {}",
            describe(&out)
        ));
    }
    let lower = err.to_lowercase();
    if !(lower.contains("permission denied")
        || lower.contains("cap_net_admin")
        || lower.contains("not permitted"))
    {
        lab.fail(format!(
            "without privilege the error should say so, got {err:?}"
        ));
    }

    // No /dev/net/tun: hide it in a private mount namespace.
    let mut no_tun = a.clone();
    no_tun.iface = lab.iface_name("w");
    no_tun.port = 51830;
    let path = config(&lab, &no_tun, "");
    let script = format!(
        "mount -t tmpfs none /dev/net && exec {BIN} up {}",
        path.display()
    );
    let out = run_timeout(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &a.ns,
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
            ])
            .env_remove("RUST_LOG"),
        Duration::from_secs(15),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || err.trim_end().lines().count() != 1 || !err.contains("/dev/net/tun")
    {
        lab.fail(format!(
            "without /dev/net/tun `dhtun up` should fail in one line naming it; {}",
            describe(&out)
        ));
    }
}

#[test]
fn underlay_down_up_and_address_change_recover() {
    if !common::netns_available("underlay_down_up_and_address_change_recover") {
        return;
    }
    let (mut lab, a, b) = Lab::pair("ul", 51831);
    lab.up_pair(&a, &b, &[], &[]);
    lab.must_ping(&a, &b.v4);

    // The link under the tunnel goes away for a while and comes back.
    lab.ip_ok(&a.ns, &["link", "set", "ul0", "down"]);
    let _ = lab.ping(&a.ns, &b.v4, 2);
    lab.ip_ok(&a.ns, &["link", "set", "ul0", "up"]);
    if let Err(e) = lab.ping(&a.ns, &b.v4, 20) {
        lab.fail(format!(
            "after the underlay came back up, A should reach B again: {e}"
        ));
    }

    // A's underlay address changes: B must follow A's authenticated packets to the new one.
    lab.ip_ok(&a.ns, &["addr", "flush", "dev", "ul0"]);
    lab.ip_ok(&a.ns, &["addr", "add", "198.18.0.11/24", "dev", "ul0"]);
    if let Err(e) = lab.ping(&a.ns, &b.v4, 20) {
        lab.fail(format!(
            "after A's address changed, A should reach B again: {e}"
        ));
    }
    let status = lab.status(&b.iface);
    let peer = lab.peer_status(&status, &a.public);
    let endpoint = peer["endpoint"].as_str().unwrap_or_default().to_string();
    if !endpoint.starts_with("198.18.0.11:") || peer["endpoint_source"] != "roamed" {
        lab.fail(format!(
            "B should have roamed to A's new address, has {endpoint} ({})",
            peer["endpoint_source"]
        ));
    }
    if let Err(e) = lab.ping(&b.ns, &a.v4, 10) {
        lab.fail(format!("B should reach A at its new address: {e}"));
    }
}
