//! The routed topology of the full-tunnel tests, as over the internet: A reaches B only through
//! its default gateway R, and an "internet" host I sits behind B (the exit), which R cannot
//! reach. Both families on every link; documentation prefixes (2001:db8::/32) for IPv6.
//!
//! ```text
//!   A ul0 198.18.1.1 ── ra 198.18.1.254  R  rb 198.18.2.254 ── ul0 198.18.2.2  B
//!         2001:db8:1::1    2001:db8:1::fe    2001:db8:2::fe     2001:db8:2::2
//!                                                  B lan0 198.18.3.1 ── ul0 198.18.3.2  I
//!                                                     2001:db8:3::1        2001:db8:3::2
//! ```

use super::{Lab, Node};

/// How A's default routes come: typed in, or as a DHCP client installs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultRoute {
    Static,
    /// `proto dhcp metric 100` (and `proto ra metric 100` for IPv6).
    Dhcp,
}

/// The namespaces and nodes of [`Lab::routed`].
pub struct Routed {
    pub a: Node,
    pub b: Node,
    pub router: String,
    pub internet: String,
}

/// The internet host's addresses.
pub const INTERNET_V4: &str = "198.18.3.2";
pub const INTERNET_V6: &str = "2001:db8:3::2";
/// R's address on B's side, where a test runs its DHT node: A reaches it only by its default route.
pub const ROUTER_FAR_V4: &str = "198.18.2.254";

impl Lab {
    /// Builds the topology above; no daemon runs yet. A's and B's nodes listen on `port`.
    #[track_caller]
    pub fn routed(tag: &str, port: u16, default: DefaultRoute) -> (Lab, Routed) {
        let mut lab = Lab::new(tag);
        let ns_a = lab.add_ns("a");
        let router = lab.add_ns("r");
        let ns_b = lab.add_ns("b");
        let internet = lab.add_ns("i");
        lab.wire(&ns_a, "ul0", &router, "ra");
        lab.wire(&ns_b, "ul0", &router, "rb");
        lab.wire(&ns_b, "lan0", &internet, "ul0");
        for (ns, dev, v4, v6) in [
            (&ns_a, "ul0", "198.18.1.1/24", "2001:db8:1::1/64"),
            (&router, "ra", "198.18.1.254/24", "2001:db8:1::fe/64"),
            (&router, "rb", "198.18.2.254/24", "2001:db8:2::fe/64"),
            (&ns_b, "ul0", "198.18.2.2/24", "2001:db8:2::2/64"),
            (&ns_b, "lan0", "198.18.3.1/24", "2001:db8:3::1/64"),
            (&internet, "ul0", "198.18.3.2/24", "2001:db8:3::2/64"),
        ] {
            lab.ip_ok(ns, &["addr", "add", v4, "dev", dev]);
            lab.ip_ok(ns, &["addr", "add", v6, "dev", dev, "nodad"]);
        }
        for ns in [&router, &ns_b] {
            lab.sysctl(ns, "net/ipv4/ip_forward", "1");
            lab.sysctl(ns, "net/ipv6/conf/all/forwarding", "1");
        }
        let extra: &[&str] = match default {
            DefaultRoute::Static => &[],
            DefaultRoute::Dhcp => &["proto", "dhcp", "metric", "100"],
        };
        for gateway in ["198.18.1.254", "2001:db8:1::fe"] {
            let mut args = vec!["route", "add", "default", "via", gateway, "dev", "ul0"];
            args.extend_from_slice(extra);
            lab.ip_ok(&ns_a, &args);
        }
        for (ns, v4, v6) in [
            (&ns_b, "198.18.2.254", "2001:db8:2::fe"),
            (&internet, "198.18.3.1", "2001:db8:3::1"),
        ] {
            lab.ip_ok(ns, &["route", "add", "default", "via", v4]);
            lab.ip_ok(ns, &["-6", "route", "add", "default", "via", v6]);
        }
        let mut a = lab.node(ns_a, "a", 1, port, true);
        let mut b = lab.node(ns_b, "b", 2, port, false);
        a.underlay = "198.18.1.1".to_string();
        b.underlay = "198.18.2.2".to_string();
        let routed = Routed {
            a,
            b,
            router,
            internet,
        };
        (lab, routed)
    }

    /// A veth pair: `left` in `left_ns`, `right` in `right_ns`, both up.
    #[track_caller]
    fn wire(&self, left_ns: &str, left: &str, right_ns: &str, right: &str) {
        self.ip_ok(
            left_ns,
            &[
                "link", "add", left, "type", "veth", "peer", "name", right, "netns", right_ns,
            ],
        );
        self.ip_ok(left_ns, &["link", "set", left, "up"]);
        self.ip_ok(right_ns, &["link", "set", right, "up"]);
    }

    /// `ip rule` and `ip route show table all` of both families in `ns` (link-local lines left
    /// out): what a full tunnel changes and must give back.
    #[track_caller]
    pub fn routing_state(&self, ns: &str) -> String {
        let mut state = String::new();
        for family in ["-4", "-6"] {
            for what in [
                &["rule", "show"][..],
                &["route", "show", "table", "all"][..],
            ] {
                let mut args = vec![family];
                args.extend_from_slice(what);
                state.push_str(&format!("# ip {}\n", args.join(" ")));
                // Link-local addresses arrive when the kernel is done with them, whatever
                // dhtun does.
                let out = self.ip_ok(ns, &args);
                for line in out.lines().filter(|l| !l.contains("fe80:")) {
                    state.push_str(line);
                    state.push('\n');
                }
            }
        }
        state
    }
}
