//! The NAT topology of tests/nat.rs: a private "internet", home routers that masquerade with
//! nftables, peers on the LANs behind them, and a relay on a public address.
//!
//! ```text
//!  internet (ns "hub"): bridge br0 198.18.0.254/24, `dhtun dht-node` on 198.18.0.254:6881
//!   |-- relay R (ns "r")        198.18.0.10    [interface] relay = true
//!   |-- public peers            198.18.0.<20+i>
//!   `-- router N (ns "n<N>")    wan0 198.18.0.<100+N>; lan0 198.18.<N>.1/24
//!         `-- peer behind it    ul0 198.18.<N>.2/24, default route via 198.18.<N>.1
//! ```
//!
//! A router forwards LAN to WAN and masquerades there, either keeping the source port
//! (`masquerade`, as most home routers do) or picking a random one per flow (`masquerade
//! random`, an endpoint-dependent "symmetric" NAT). Its filter is a home router's: nothing from
//! the WAN reaches the router or the LAN unless conntrack ties it to a flow the LAN started.
//! Routers have no default route: the internet is 198.18.0.0/24, and a LAN address of another
//! peer (which records also carry) is unreachable, as a private address across the internet is.
//!
//! Peers find each other through the DHT only (no endpoint of each other). They know the relay
//! by a static endpoint: a relay is a fixed server, configured like a WireGuard hub, and that
//! keeps the relay session independent of DHT timing, so the path a test sees depends only on
//! punching and relaying. The relay knows the peers by key only (they sit behind NATs; it learns
//! their addresses from their handshakes).
//!
//! Everything stays inside the lab's namespaces, and `Lab`'s drop removes them.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{try_run_timeout, Lab, Node, DHT_PORT, HUB_ADDR};

/// UDP port of every daemon's tunnel socket (the same everywhere, as on real installations,
/// so that a port-preserving NAT keeps it and the "public IP x listen port" candidate works).
pub const PORT: u16 = 51820;
/// The relay's address on the internet and its overlay host number.
pub const RELAY_ADDR: &str = "198.18.0.10";
pub const RELAY_HOST: u8 = 10;

/// How a router maps LAN source ports to its WAN address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// `masquerade`: the source port is kept when it is free (endpoint-independent mapping).
    PortPreserving,
    /// `masquerade random`: a random port for every new flow (endpoint-dependent mapping).
    PortRandom,
}

/// A home router between the internet and one LAN.
#[derive(Clone, Debug)]
pub struct Router {
    pub ns: String,
    /// Its address on the internet: what peers behind it look like from outside.
    pub wan: String,
    /// The LAN number N: LAN 198.18.N.0/24, router 198.18.N.1, the peer 198.18.N.2.
    pub lan: u8,
    pub nat: Nat,
}

impl Router {
    pub fn lan_gateway(&self) -> String {
        format!("198.18.{}.1", self.lan)
    }

    pub fn lan_host(&self) -> String {
        format!("198.18.{}.2", self.lan)
    }
}

/// The internet of one test: hub with the DHT node; the relay is added by `add_relay`.
pub struct Internet {
    pub hub: String,
}

/// The DHT bootstrap node every daemon uses.
pub fn bootstrap() -> String {
    format!("{HUB_ADDR}:{DHT_PORT}")
}

impl Internet {
    /// The hub namespace with bridge br0 (HUB_ADDR/24) and `dhtun dht-node` on it.
    #[track_caller]
    pub fn new(lab: &mut Lab) -> Internet {
        let hub = lab.add_hub();
        lab.start_dht_node(&hub, &bootstrap());
        Internet { hub }
    }

    /// A namespace on the internet with public address `addr` (no NAT) and a node in it with
    /// overlay host number `host`.
    #[track_caller]
    pub fn add_public(&self, lab: &mut Lab, suffix: &str, addr: &str, host: u8) -> Node {
        let ns = lab.attach_to_hub(&self.hub, suffix, addr);
        let mut node = lab.node(ns, suffix, host, PORT, false);
        node.underlay = addr.to_string();
        node
    }

    /// The relay R on RELAY_ADDR (overlay 100.64.0.10).
    #[track_caller]
    pub fn add_relay(&self, lab: &mut Lab) -> Node {
        self.add_public(lab, "r", RELAY_ADDR, RELAY_HOST)
    }

    /// Router `n<lan>` with WAN 198.18.0.<100+lan> and LAN 198.18.<lan>.0/24, forwarding and
    /// masquerading per `nat`, filtering like a home router. The LAN leg appears when a peer is
    /// put behind it (`put_behind`).
    #[track_caller]
    pub fn add_router(&self, lab: &mut Lab, lan: u8, nat: Nat) -> Router {
        assert!((1..=99).contains(&lan), "LAN number {lan} out of range");
        let suffix = format!("n{lan}");
        let ns = lab.add_ns(&suffix);
        let wan = format!("198.18.0.{}", 100 + u16::from(lan));
        let port = format!("w{lan}");
        lab.ip_ok(
            &self.hub,
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "wan0", "netns", &ns,
            ],
        );
        lab.ip_ok(&self.hub, &["link", "set", &port, "master", "br0"]);
        lab.ip_ok(&self.hub, &["link", "set", &port, "up"]);
        lab.ip_ok(&ns, &["addr", "add", &format!("{wan}/24"), "dev", "wan0"]);
        lab.ip_ok(&ns, &["link", "set", "wan0", "up"]);
        lab.sysctl(&ns, "net/ipv4/ip_forward", "1");
        let rules = lab.write_file(&format!("{suffix}.nft"), &router_ruleset(nat));
        let out = lab.ns_exec(&ns, &["nft", "-f", &rules.to_string_lossy()]);
        if !out.status.success() {
            lab.fail(format!(
                "loading the nftables ruleset of router {suffix}: {}",
                crate::common::describe(&out)
            ));
        }
        Router { ns, wan, lan, nat }
    }
}

/// Create the namespace of a peer behind `router` (veth ul0 198.18.N.2/24 to the router's lan0,
/// default route via the router) with a node of overlay host number `host`.
#[track_caller]
pub fn add_behind(lab: &mut Lab, router: &Router, suffix: &str, host: u8) -> Node {
    let ns = lab.add_ns(suffix);
    let mut node = lab.node(ns, suffix, host, PORT, false);
    put_behind(lab, &mut node, router);
    node
}

/// Connect `node`'s namespace to `router`'s LAN: a new veth (ul0 in the node, lan0 in the
/// router), the LAN address, and the default route. Updates `node.underlay`.
#[track_caller]
pub fn put_behind(lab: &Lab, node: &mut Node, router: &Router) {
    lab.ip_ok(
        &router.ns,
        &[
            "link", "add", "lan0", "type", "veth", "peer", "name", "ul0", "netns", &node.ns,
        ],
    );
    lab.ip_ok(
        &router.ns,
        &[
            "addr",
            "add",
            &format!("{}/24", router.lan_gateway()),
            "dev",
            "lan0",
        ],
    );
    lab.ip_ok(&router.ns, &["link", "set", "lan0", "up"]);
    let host = router.lan_host();
    lab.ip_ok(
        &node.ns,
        &["addr", "add", &format!("{host}/24"), "dev", "ul0"],
    );
    lab.ip_ok(&node.ns, &["link", "set", "ul0", "up"]);
    lab.ip_ok(
        &node.ns,
        &["route", "add", "default", "via", &router.lan_gateway()],
    );
    node.underlay = host;
}

/// Take `node` off its LAN (deleting its veth, which removes the router's end too) and put it
/// behind `to`: the laptop that leaves home for another network, daemon still running.
#[track_caller]
pub fn move_behind(lab: &Lab, node: &mut Node, to: &Router) {
    lab.ip_ok(&node.ns, &["link", "del", "ul0"]);
    put_behind(lab, node, to);
}

/// The nftables ruleset of a home router: WAN is wan0, LAN is lan0.
fn router_ruleset(nat: Nat) -> String {
    let masquerade = match nat {
        Nat::PortPreserving => "masquerade",
        Nat::PortRandom => "masquerade random",
    };
    format!(
        "flush ruleset\n\
         table inet home {{\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy drop;\n\
         \t\tiif lo accept\n\
         \t\tct state established,related accept\n\
         \t\t# the LAN may talk to its router (DHCP, DNS on a real one)\n\
         \t\tiifname \"lan0\" accept\n\
         \t\tcounter comment \"dropped from the WAN\"\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy drop;\n\
         \t\tiifname \"lan0\" oifname \"wan0\" accept\n\
         \t\tct state established,related accept\n\
         \t\tcounter comment \"dropped unsolicited\"\n\
         \t}}\n\
         }}\n\
         table ip nat {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\toifname \"wan0\" {masquerade}\n\
         \t}}\n\
         }}\n"
    )
}

// ----- Configs -----

/// `me`'s config: the DHT (hub bootstrap), each of `peers` by public key only, and, when
/// `relay` is given, that node as a relay peer with its static public endpoint.
pub fn peer_config(lab: &Lab, me: &Node, peers: &[&Node], relay: Option<&Node>) -> String {
    let list: Vec<(&Node, &[&str])> = peers.iter().map(|p| (*p, &[][..])).collect();
    let mut text = lab.dht_config_text(me, &list, &[&bootstrap()]);
    if let Some(r) = relay {
        text.push_str(&format!(
            "\n[[peer]]\npublic_key = \"{}\"\nallowed_ips = [\"{}/32\"]\nendpoint = \"{}:{}\"\n\
             relay = true\n",
            r.public, r.v4, r.underlay, r.port
        ));
    }
    text
}

/// The relay's config: `[interface] relay = true`, the DHT, and every peer it serves by key.
pub fn relay_config(lab: &Lab, relay: &Node, peers: &[&Node]) -> String {
    let list: Vec<(&Node, &[&str])> = peers.iter().map(|p| (*p, &[][..])).collect();
    let text = lab.dht_config_text(relay, &list, &[&bootstrap()]);
    text.replacen("[interface]\n", "[interface]\nrelay = true\n", 1)
}

/// Write `text` as `me`'s config and start its daemon (not waiting for it).
pub fn start(lab: &mut Lab, me: &Node, text: &str) {
    let config = lab.write_file(&format!("{}.toml", me.iface), text);
    lab.start_daemon(&me.ns, &me.iface, &config);
}

// ----- Observations -----

/// What `me`'s status says of the path to `peer`: ("direct" | "relay" | "null", relay key or
/// "null"), with the peer's whole entry.
#[track_caller]
pub fn path_of(lab: &Lab, me: &Node, peer: &Node) -> (String, String, Value) {
    let status = lab.status(&me.iface);
    let view = lab.peer_status(&status, &peer.public).clone();
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    (text(&view["path"]), text(&view["relay"]), view)
}

/// Whether `me` reports `want` ("direct" or "relay") as its path to `peer`, and, for "relay",
/// `relay` as the relay in use; Err with the peer's entry otherwise.
pub fn check_path(
    lab: &Lab,
    me: &Node,
    peer: &Node,
    want: &str,
    relay: Option<&Node>,
) -> Result<(), String> {
    let status = lab.status_raw(&me.iface)?;
    let view = status["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["public_key"] == peer.public.as_str()))
        .cloned()
        .unwrap_or(Value::Null);
    let relay_ok = match relay {
        Some(r) => view["relay"] == r.public.as_str(),
        None => view["relay"].is_null(),
    };
    if view["path"] == want && relay_ok {
        Ok(())
    } else {
        Err(format!(
            "{} reports path {} via {} to {}",
            me.iface, view["path"], view["relay"], peer.iface
        ))
    }
}

/// The relay's top-level `relayed_packets` counter.
#[track_caller]
pub fn relayed_packets(lab: &Lab, relay: &Node) -> u64 {
    let status = lab.status(&relay.iface);
    status["relayed_packets"].as_u64().unwrap_or_else(|| {
        lab.fail(format!(
            "the relay's status has no numeric \"relayed_packets\" (nat-spec: top-level \
             counter of packets forwarded for others); status: {status}"
        ))
    })
}

/// Ping `target` from `from` until the first echo reply, every 20 ms, for at most `limit`
/// counted from `since`; returns the time from `since` to that reply.
pub fn first_reply(
    lab: &mut Lab,
    from: &Node,
    target: &str,
    since: Instant,
    limit: Duration,
) -> Duration {
    let mut last = String::new();
    let mut tries = 0u32;
    loop {
        if since.elapsed() >= limit {
            lab.fail(format!(
                "no echo reply from {target} to {} within {limit:?} ({tries} ping runs): {last}",
                from.ns
            ));
        }
        if let Some(st) = lab.daemon_exited(&from.iface) {
            lab.fail(format!("{}'s daemon exited with {st}", from.iface));
        }
        tries += 1;
        // One echo every 20 ms until the first reply, for at most 2 s; before the interface and
        // its route exist, ping fails at once and the loop starts it again.
        let out = try_run_timeout(
            Command::new("ip").args([
                "netns", "exec", &from.ns, "ping", "-n", "-q", "-c", "1", "-i", "0.02", "-w", "2",
                target,
            ]),
            Duration::from_secs(5),
        );
        match out {
            Ok(o) if o.status.success() => return since.elapsed(),
            Ok(o) => last = crate::common::describe(&o),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One line per peer of a status, the fields NAT traversal is about, and the non-zero drops,
/// for failure messages (the full JSON follows them there).
pub fn summary(status: &Value) -> String {
    let mut s = format!(
        "{}: dht resolves {} publishes {} public_address {} reflexive_address {} relayed_packets {}",
        status["interface"],
        status["dht"]["resolves"],
        status["dht"]["publishes"],
        status["dht"]["public_address"],
        status["reflexive_address"],
        status["relayed_packets"]
    );
    if let Some(drops) = status["drops"].as_object() {
        let nonzero: Vec<String> = drops
            .iter()
            .filter(|(_, v)| v.as_u64().unwrap_or(0) != 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        s.push_str(&format!(", drops: {}", nonzero.join(" ")));
    }
    for p in status["peers"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "\n    peer {}: path {} relay {} endpoint {} ({}) dht_sequence {} handshake {} s ago, \
             rx/tx packets {}/{}",
            p["public_key"],
            p["path"],
            p["relay"],
            p["endpoint"],
            p["endpoint_source"],
            p["dht_sequence"],
            p["last_handshake_secs_ago"],
            p["rx_packets"],
            p["tx_packets"]
        ));
    }
    s
}

/// The nftables drop counters of a router (`dropped from the WAN`, `dropped unsolicited`), for
/// failure messages and reports.
pub fn router_drops(lab: &Lab, router: &Router) -> String {
    let out = lab.ns_exec(&router.ns, &["nft", "list", "ruleset"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("counter"))
        .map(|l| l.trim().to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The conntrack table of a router, for failure messages.
pub fn conntrack(lab: &Lab, router: &Router) -> String {
    let out = lab.ns_exec(&router.ns, &["conntrack", "-L", "-p", "udp"]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
