//! The interface taken down and up again under a running daemon (issue 26, item 5): the kernel
//! drops its IPv6 addresses and the routes to subnets behind peers, and the daemon, watching
//! the link, puts them back.

use std::time::Duration;

use crate::common;
use crate::common::Lab;

#[test]
fn link_down_and_up_restores_ipv6_and_subnet_routes() {
    if !common::netns_available("link_down_and_up_restores_ipv6_and_subnet_routes") {
        return;
    }
    let (mut lab, a, b) = Lab::pair("lf", 51871);
    lab.up_pair(&a, &b, &["100.65.2.0/24"], &[]);
    lab.must_ping(&a, &b.v4);
    lab.must_ping(&a, &b.v6);
    let present = |lab: &Lab| -> Result<(), String> {
        let route = lab.ip_ok(&a.ns, &["route", "show", "100.65.2.0/24"]);
        if !route.contains(&format!("dev {}", a.iface)) {
            return Err(format!("no route 100.65.2.0/24 dev {}: {route:?}", a.iface));
        }
        let v6 = lab.ip_ok(&a.ns, &["-6", "addr", "show", "dev", &a.iface]);
        if !v6.contains(&format!("{}/", a.v6)) {
            return Err(format!("no address {} on {}: {v6:?}", a.v6, a.iface));
        }
        Ok(())
    };
    if let Err(e) = present(&lab) {
        lab.fail(format!("before the link went down: {e}"));
    }
    lab.ip_ok(&a.ns, &["link", "set", &a.iface, "down"]);
    lab.ip_ok(&a.ns, &["link", "set", &a.iface, "up"]);
    lab.wait_until(
        "the daemon restoring its IPv6 address and subnet route after link down and up",
        Duration::from_secs(5),
        || present(&lab),
    );
    lab.must_ping(&a, &b.v6);
    lab.must_ping(&a, &b.v4);
    if lab.daemon_exited(&a.iface).is_some() {
        lab.fail("A's daemon exited after its link went down and up");
    }
}
