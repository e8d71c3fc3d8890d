//! The hub topology for discovery through the DHT: a bridge namespace running `dhtun dht-node`,
//! peer namespaces attached to it, subnets behind peers and moving a peer's underlay.

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{daemon_log_level, udp_port_bound, Helper, Lab, Node, BIN, READY_TIMEOUT};

/// The address and port of the hub's DHT node.
pub const HUB_ADDR: &str = "198.18.0.254";
pub const DHT_PORT: u16 = 6881;

impl Lab {
    // ----- The hub topology: a private "internet" for discovery through the DHT -----
    //
    // The same layout as netns-scripts/lab.sh: a hub namespace whose bridge br0 carries
    // 198.18.0.254/24 and runs `dhtun dht-node` on 198.18.0.254:6881; each peer namespace joined
    // to the bridge by a veth (`ul0` inside it, `p<suffix>` on the bridge) with underlay
    // 198.18.0.<host>/24; overlay 100.64.0.<host> and fd64::<host>; subnet 100.65.<host>.0/24.

    /// Create the hub namespace (suffix `hub`) with bridge br0 carrying HUB_ADDR/24.
    #[track_caller]
    pub fn add_hub(&mut self) -> String {
        let hub = self.add_ns("hub");
        self.ip_ok(&hub, &["link", "add", "br0", "type", "bridge"]);
        self.ip_ok(
            &hub,
            &["addr", "add", &format!("{HUB_ADDR}/24"), "dev", "br0"],
        );
        self.ip_ok(&hub, &["link", "set", "br0", "up"]);
        hub
    }

    /// Create namespace `suffix` and join it to the bridge of `hub`: veth `ul0` in it carrying
    /// `underlay`/24, its other end `p<suffix>` on br0.
    #[track_caller]
    pub fn attach_to_hub(&mut self, hub: &str, suffix: &str, underlay: &str) -> String {
        let ns = self.add_ns(suffix);
        let port = format!("p{suffix}");
        self.ip_ok(
            hub,
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "ul0", "netns", &ns,
            ],
        );
        self.ip_ok(hub, &["link", "set", &port, "master", "br0"]);
        self.ip_ok(hub, &["link", "set", &port, "up"]);
        self.ip_ok(
            &ns,
            &["addr", "add", &format!("{underlay}/24"), "dev", "ul0"],
        );
        self.ip_ok(&ns, &["link", "set", "ul0", "up"]);
        ns
    }

    /// A hub running `dhtun dht-node` on HUB_ADDR:DHT_PORT, and one namespace per entry of
    /// `hosts` (suffixes a, b, c, ...) attached to it with underlay 198.18.0.<host>, each with a
    /// node (fresh keys, UDP port `port`; the first keeps its key in a file, the others inline).
    /// No `dhtun up` is started yet. Returns the lab, the hub's namespace and the nodes.
    pub fn hub(tag: &str, hosts: &[u8], port: u16) -> (Lab, String, Vec<Node>) {
        let mut lab = Lab::new(tag);
        let hub = lab.add_hub();
        lab.start_dht_node(&hub, &format!("{HUB_ADDR}:{DHT_PORT}"));
        let mut nodes = Vec::new();
        for (i, &host) in hosts.iter().enumerate() {
            let suffix = char::from(b'a' + u8::try_from(i).expect("at most 26 hosts")).to_string();
            let ns = lab.attach_to_hub(&hub, &suffix, &format!("198.18.0.{host}"));
            nodes.push(lab.node(ns, &suffix, host, port, i == 0));
        }
        (lab, hub, nodes)
    }

    /// The subnet behind `node`: interface lan0 carrying 100.65.<host>.1/24 in its namespace.
    /// Returns that address.
    #[track_caller]
    pub fn add_subnet(&self, node: &Node, host: u8) -> String {
        self.add_stub_link(&node.ns, "lan0");
        let addr = format!("100.65.{host}.1");
        self.ip_ok(
            &node.ns,
            &["addr", "add", &format!("{addr}/24"), "dev", "lan0"],
        );
        addr
    }

    /// Move `node`'s underlay on ul0 to `new` (an address of 198.18.0.0/24, without prefix) and
    /// update `node.underlay`.
    #[track_caller]
    pub fn move_underlay(&self, node: &mut Node, new: &str) {
        let old = format!("{}/24", node.underlay);
        self.ip_ok(&node.ns, &["addr", "del", &old, "dev", "ul0"]);
        self.ip_ok(
            &node.ns,
            &["addr", "add", &format!("{new}/24"), "dev", "ul0"],
        );
        node.underlay = new.to_string();
    }

    /// Start `dhtun dht-node --listen LISTEN` in `ns` (stopped on drop, after the daemons) and
    /// wait until its UDP socket is bound.
    #[track_caller]
    pub fn start_dht_node(&mut self, ns: &str, listen: &str) {
        let port: u16 = listen
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("dht-node listen address {listen} has no port"));
        let name = format!("dht-node {listen}");
        let log = self
            .dir
            .join(format!("dht-node-{}.log", self.helpers.len()));
        let file = fs::File::create(&log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let file2 = file.try_clone().expect("clone log file handle");
        let child = Command::new("ip")
            .args(["netns", "exec", ns, BIN, "dht-node", "--listen", listen])
            .env("RUST_LOG", daemon_log_level())
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn `ip netns exec {ns} {BIN} dht-node`: {e}"));
        self.helpers.push(Helper {
            name: name.clone(),
            ns: ns.to_string(),
            log,
            child: Some(child),
        });
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let exited = self
                .helpers
                .last_mut()
                .and_then(|h| h.child.as_mut())
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(st) = exited {
                self.fail(format!("{name} in {ns} exited during startup with {st}"));
            }
            match udp_port_bound(ns, port) {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => self.fail(format!("cannot tell whether {name} listens: {e}")),
            }
            if Instant::now() >= deadline {
                self.fail(format!(
                    "{name} in {ns} did not bind UDP port {port} within {READY_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
