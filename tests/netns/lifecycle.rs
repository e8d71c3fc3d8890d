//! A daemon's life: `dhtun down` removes what `up` made, a reload applies changes and refuses
//! bad configs, and the tunnel recovers when the underlay goes down, comes up or changes address.

use std::time::Duration;

use crate::common;
use crate::common::{describe, run_timeout, Lab};

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
    if !common::control_listening(&a.ns, &a.iface) {
        lab.fail(format!(
            "control socket @dhtun/{} should listen in {} while the daemon runs",
            a.iface, a.ns
        ));
    }

    let out = run_timeout(&mut a.cli(&["down", &a.iface]), Duration::from_secs(20));
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
    if common::control_listening(&a.ns, &a.iface) {
        lab.fail(format!(
            "control socket @dhtun/{} should be gone after down",
            a.iface
        ));
    }
}

#[test]
fn a_daemon_whose_interface_is_deleted_stops_with_an_error() {
    // `ip link del` under a running daemon: it must not run on without a tunnel, or a service
    // manager would never restart it.
    if !common::netns_available("a_daemon_whose_interface_is_deleted_stops_with_an_error") {
        return;
    }
    let (mut lab, a, b) = Lab::pair("ld", 51834);
    lab.up_pair(&a, &b, &[], &[]);
    lab.must_ping(&a, &b.v4);
    lab.ip_ok(&a.ns, &["link", "del", &a.iface]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = lab.daemon_exited(&a.iface) {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            lab.fail("A's daemon still runs 10 s after its interface was deleted");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let logs = lab.logs();
    if status.success() || !logs.contains("was deleted") {
        lab.fail(format!(
            "A's daemon should exit with an error saying its interface was deleted; it exited \
             with {status}"
        ));
    }
}

#[test]
fn reload_applies_changes_and_refuses_bad_configs() {
    if !common::netns_available("reload_applies_changes_and_refuses_bad_configs") {
        return;
    }
    let (mut lab, a, b) = Lab::pair("rl", 51826);
    let reload = || run_timeout(&mut a.cli(&["reload", &a.iface]), Duration::from_secs(20));
    lab.up_pair(&a, &b, &[], &[]);
    lab.must_ping(&a, &b.v4);
    let before = lab.status(&a.iface);
    let handshake_before = lab.peer_status(&before, &b.public)["last_handshake_secs_ago"].clone();

    // Widen B's allowed_ips in A's config: a route appears, the session stays.
    let text = lab.config_text(&a, &[(&b, &["100.65.7.0/24"])]);
    lab.write_file(&format!("{}.toml", a.iface), &text);
    let out = reload();
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
    let out = reload();
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

    // A config the kernel refuses halfway (a new address goes in, then its new route clashes
    // with one already there) is taken back whole: the address goes again, and once the clash
    // is gone the same file reloads.
    lab.ip_ok(&a.ns, &["route", "add", "100.65.9.0/24", "dev", "ul0"]);
    let text = lab
        .config_text(&a, &[(&b, &["100.65.7.0/24", "100.65.9.0/24"])])
        .replace("address = [", "address = [\"100.64.50.1/24\", ");
    lab.write_file(&format!("{}.toml", a.iface), &text);
    let out = reload();
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || err.lines().count() != 1 || !err.contains("nothing was changed") {
        lab.fail(format!(
            "a reload whose route clashes should be refused in one line saying nothing was \
             changed; {}",
            describe(&out)
        ));
    }
    let addresses = lab.ip_ok(&a.ns, &["-4", "addr", "show", "dev", &a.iface]);
    if addresses.contains("100.64.50.1") {
        lab.fail(format!(
            "a refused reload must take back the address it added, got {addresses:?}"
        ));
    }
    lab.must_ping(&a, &b.v4);
    lab.ip_ok(&a.ns, &["route", "del", "100.65.9.0/24", "dev", "ul0"]);
    let out = reload();
    if !out.status.success() {
        lab.fail(format!(
            "the same file should reload once the clashing route is gone; {}",
            describe(&out)
        ));
    }
    let addresses = lab.ip_ok(&a.ns, &["-4", "addr", "show", "dev", &a.iface]);
    let routes = lab.ip_ok(&a.ns, &["route", "show", "100.65.9.0/24"]);
    if !addresses.contains("100.64.50.1") || !routes.contains(&format!("dev {}", a.iface)) {
        lab.fail(format!(
            "after the second reload: expected address 100.64.50.1 and a route 100.65.9.0/24 \
             dev {}, got {addresses:?} and {routes:?}",
            a.iface
        ));
    }

    // After start-up the daemon has no override of file permissions: a config only its owner
    // may read is refused with a line that says what to change.
    let path = lab.dir.join(format!("{}.toml", a.iface));
    let chown = |owner: u32| {
        // SAFETY: chown(2) on a NUL-terminated path we own; no memory is shared.
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        unsafe { libc::chown(c_path.as_ptr(), owner, owner) }
    };
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    if chown(65534) != 0 {
        lab.fail("could not hand the config to uid 65534");
    }
    let out = reload();
    let _ = chown(0);
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || err.lines().count() != 1 || !err.contains("permission override") {
        lab.fail(format!(
            "a config root may not read after start-up should be refused in one line that \
             explains why; {}",
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

#[test]
fn the_kernels_own_packets_on_a_fresh_link_are_not_no_route() {
    // Linux sends ICMPv6 router solicitations (fe80::x to ff02::2) on every fresh interface
    // with an IPv6 link-local address. They were counted as `no_route`, so every new interface
    // showed a drop; they are link-scoped and counted apart, as `link_local`.
    if !common::netns_available("the_kernels_own_packets_on_a_fresh_link_are_not_no_route") {
        return;
    }
    let (mut lab, a, b) = Lab::pair("lk", 51835);
    lab.up_pair(&a, &b, &[], &[]);
    lab.must_ping(&a, &b.v4);
    lab.must_ping(&a, &b.v6);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = lab.status(&a.iface);
        if lab.drop_counter(&status, "link_local") > 0 || std::time::Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let link_local = lab.drop_counter(&status, "link_local");
    let no_route = lab.drop_counter(&status, "no_route");
    if no_route != 0 || link_local == 0 {
        lab.fail(format!(
            "after start and pings, expected no_route 0 and the kernel's router solicitations \
             in link_local; got no_route {no_route}, link_local {link_local}: {}",
            status["drops"]
        ));
    }
}
