//! The tunnel socket's reflexive address, end to end.
//!
//! First on loopback (no root): mainline's server, as `dhtun dht-node` runs it, answers the
//! reflector's ping with the BEP 42 `ip` field naming the pinging socket.
//!
//! Then in namespaces: a peer behind an nftables masquerade NAT (a router namespace whose WAN
//! sits on the hub's bridge, the private "internet" of tests/discovery.rs, with `dhtun dht-node`
//! on 198.18.0.254:6881). The NAT maps to ports 40000-40099, never the inner port, so the
//! address the daemon reports can only have come from the NAT's mapping of the tunnel socket:
//! the test reads that mapping from the router's conntrack table and requires the daemon's
//! status, and the record a DHT client in the hub finds under the peer's key, to carry exactly
//! it. Then the peer moves behind a second NAT; its record must follow within a bound far
//! below the 5 minutes mainline's stale write tokens used to block a republish.
//!
//! Nothing here talks to the public DHT; every wait is bounded; the `Lab` cleans up on drop.

mod common;

use common::{in_netns, loud, run_timeout, Lab, Node, DHT_PORT, HUB_ADDR};
use dhtun::core::keys::PublicKey;
use dhtun::core::record::Record;
use dhtun::core::reflexive::{Reflected, Reflector};
use dhtun::shell::dht::{Dht, DhtOptions};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

/// Outer ports the test NATs map to: never the inner ones, so a port in this range in the
/// daemon's status can only be the NAT's mapping.
const NAT_PORTS: std::ops::RangeInclusive<u16> = 40000..=40099;
const TUNNEL_PORT: u16 = 51820;

#[test]
fn mainline_answers_the_reflectors_ping_with_our_address() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let node = runtime.block_on(async {
        Dht::start(DhtOptions {
            bootstrap: Vec::new(),
            bind: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
            server_mode: true,
            request_timeout: None,
        })
        .await
        .expect("starting a DHT node on loopback")
    });
    let node_addr = SocketAddr::V4(node.local_addr());
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let ours = socket.local_addr().unwrap();
    let started = Instant::now();
    let mut reflector = Reflector::new(&[node_addr], [42; 32], Duration::ZERO);
    let mut buf = [0u8; 1500];
    let mut last = String::from("nothing received");
    while started.elapsed() < Duration::from_secs(10) {
        let now = started.elapsed();
        while let Some((to, len)) = reflector.poll_transmit(now, &mut buf) {
            socket.send_to(&buf[..len], to).unwrap();
        }
        let Ok((len, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let answer = &buf[..len];
        // What mainline 8 sends: the BEP 42 field, our IPv4 address and port, 6 bytes.
        assert!(
            answer.windows(7).any(|w| w == b"2:ip6:\x7f"),
            "no ip field: {}",
            String::from_utf8_lossy(answer)
        );
        match reflector.handle_datagram(from, answer, started.elapsed()) {
            Reflected::Learned(address) => {
                assert_eq!(address, ours, "the node saw another address");
                assert_eq!(reflector.address(), Some(ours));
                return;
            }
            other => last = format!("{other:?}: {}", String::from_utf8_lossy(answer)),
        }
    }
    panic!("mainline never answered the ping usefully within 10 s; last: {last}");
}

#[test]
fn peer_behind_a_nat_learns_and_publishes_its_reflexive_address() {
    if !common::netns_available("peer_behind_a_nat_learns_and_publishes_its_reflexive_address") {
        return;
    }
    let (mut lab, hub, _) = Lab::hub("rx", &[], TUNNEL_PORT);
    let router = nat_router(&mut lab, &hub, "r", "198.18.0.11");
    let a = natted_node(&mut lab, &router, 1);
    lab.up_dht(&a, &[], &[&hub_node()]);

    let reflexive = wait_reflexive(&lab, &a, "198.18.0.11", Duration::from_secs(20));
    let mapped = nat_mapping(&lab, &router, &a);
    if reflexive.port() != mapped {
        lab.fail(format!(
            "status says the tunnel socket is seen at {reflexive}, but the NAT maps it to port \
             {mapped}"
        ));
    }
    let status = lab.status(&a.iface);
    if status["reflexive_port_varies"] != false {
        lab.fail(format!(
            "one DHT node cannot see two ports, yet reflexive_port_varies is {}",
            status["reflexive_port_varies"]
        ));
    }
    // The DHT socket is another inner socket, so the NAT gives it another port.
    if let Some(dht_public) = status["dht"]["public_address"].as_str() {
        if dht_public == reflexive.to_string() {
            lab.fail(format!(
                "the reflexive address {reflexive} is the DHT socket's, not the tunnel's"
            ));
        }
    }
    let text = text_status(&a);
    if !text.contains(&format!("reflexive address: {reflexive}")) {
        lab.fail(format!(
            "text status lacks the reflexive address line:\n{text}"
        ));
    }

    let record = find_record(&lab, &hub, &a, move |r| r.reflexive() == Some(reflexive));
    if !record.candidates().any(|c| c == reflexive) {
        lab.fail(format!(
            "the record's candidates lack {reflexive}: {record:?}"
        ));
    }
}

#[test]
fn peer_moved_behind_another_nat_republishes_its_new_address() {
    if !common::netns_available("peer_moved_behind_another_nat_republishes_its_new_address") {
        return;
    }
    let (mut lab, hub, _) = Lab::hub("rm", &[], TUNNEL_PORT);
    let first = nat_router(&mut lab, &hub, "r", "198.18.0.11");
    let second = nat_router(&mut lab, &hub, "s", "198.18.0.12");
    let mut a = natted_node(&mut lab, &first, 1);
    lab.up_dht(&a, &[], &[&hub_node()]);
    let before = wait_reflexive(&lab, &a, "198.18.0.11", Duration::from_secs(20));
    find_record(&lab, &hub, &a, move |r| r.reflexive() == Some(before));
    // Let the publish's lookup settle, so mainline holds write tokens for the old address.
    let published = lab.status(&a.iface)["dht"]["publishes"]
        .as_u64()
        .unwrap_or(0);

    // The host is unplugged from the first network and plugged into the second.
    let pid = lab.daemon_pid(&a.iface);
    lab.ip_ok(&a.ns, &["link", "del", "ul0"]);
    connect_lan(&lab, &second, &a.ns, 2, "ul1");
    a.underlay = "198.19.2.2".to_string();
    let moved = Instant::now();

    // The daemon notices its new interface address (it looks every 10 s) and asks the DHT
    // nodes again at once, rather than at the next 25 s refresh.
    let after = wait_reflexive(&lab, &a, "198.18.0.12", Duration::from_secs(20));
    let learned = moved.elapsed();
    let mapped = nat_mapping(&lab, &second, &a);
    if after.port() != mapped {
        lab.fail(format!(
            "after the move status says {after}, but the new NAT maps the tunnel socket to port \
             {mapped}"
        ));
    }
    // And the record follows, past the write tokens mainline cached for the old address.
    let record = find_record(&lab, &hub, &a, move |r| r.reflexive() == Some(after));
    let republished = moved.elapsed();
    if !record
        .addresses()
        .contains(&"198.19.2.2".parse::<IpAddr>().unwrap())
    {
        lab.fail(format!(
            "the new record lacks the new interface address: {record:?}"
        ));
    }
    let status = lab.status(&a.iface);
    if status["dht"]["publishes"].as_u64().unwrap_or(0) <= published {
        lab.fail(format!("no new publish counted: {}", status["dht"]));
    }
    if lab.daemon_pid(&a.iface) != pid {
        lab.fail("the daemon restarted; it should have followed the move while running");
    }
    loud(&format!(
        "peer_moved_behind_another_nat_republishes_its_new_address: new reflexive address \
         {after} learnt {} ms after the move, found in the DHT after {} ms",
        learned.as_millis(),
        republished.as_millis()
    ));
}

#[test]
fn a_nat_that_maps_per_destination_is_reported() {
    if !common::netns_available("a_nat_that_maps_per_destination_is_reported") {
        return;
    }
    const SECOND: &str = "198.18.0.253";
    let (mut lab, hub, _) = Lab::hub("rv", &[], TUNNEL_PORT);
    lab.ip_ok(
        &hub,
        &["addr", "add", &format!("{SECOND}/24"), "dev", "br0"],
    );
    lab.start_dht_node(&hub, &format!("{SECOND}:6882"));
    // Like a port-randomising NAT, but deterministic: each DHT node sees another port range.
    let router = nat_router_with(
        &mut lab,
        &hub,
        "r",
        "198.18.0.11",
        &[
            (Some(HUB_ADDR), "40000-40009"),
            (Some(SECOND), "40010-40019"),
        ],
    );
    let a = natted_node(&mut lab, &router, 1);
    lab.up_dht(&a, &[], &[&hub_node(), &format!("{SECOND}:6882")]);
    let status = lab.wait_until(
        &format!("{} to report that its NAT maps per destination", a.iface),
        Duration::from_secs(20),
        || {
            let status = lab.status_raw(&a.iface)?;
            if status["reflexive_port_varies"] == true {
                Ok(status)
            } else {
                Err(format!(
                    "reflexive_address {}, reflexive_port_varies {}",
                    status["reflexive_address"], status["reflexive_port_varies"]
                ))
            }
        },
    );
    let address: SocketAddr = status["reflexive_address"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| lab.fail(format!("no reflexive address: {status}")));
    if address.ip().to_string() != "198.18.0.11" || !NAT_PORTS.contains(&address.port()) {
        lab.fail(format!("reflexive address {address} is not the NAT's"));
    }
    let text = text_status(&a);
    if !text.contains("direct path unlikely") {
        lab.fail(format!("text status does not warn:\n{text}"));
    }
}

// ----- Topology -----

fn hub_node() -> String {
    format!("{HUB_ADDR}:{DHT_PORT}")
}

/// A NAT router attached to the hub with WAN address `wan` on its `ul0`, forwarding and
/// masquerading the UDP that leaves `ul0` to ports in NAT_PORTS. Returns its namespace.
#[track_caller]
fn nat_router(lab: &mut Lab, hub: &str, suffix: &str, wan: &str) -> String {
    let ports = format!("{}-{}", NAT_PORTS.start(), NAT_PORTS.end());
    nat_router_with(lab, hub, suffix, wan, &[(None, &ports)])
}

/// As `nat_router`, with one masquerade rule per `(destination, ports)`: UDP to `destination`
/// (any, for `None`) leaves from a port in `ports` ("FIRST-LAST").
#[track_caller]
fn nat_router_with(
    lab: &mut Lab,
    hub: &str,
    suffix: &str,
    wan: &str,
    rules: &[(Option<&str>, &str)],
) -> String {
    let ns = lab.attach_to_hub(hub, suffix, wan);
    lab.sysctl(&ns, "net/ipv4/ip_forward", "1");
    let mut commands = vec![
        "add table ip nat".to_string(),
        "add chain ip nat post { type nat hook postrouting priority 100 ; }".to_string(),
    ];
    for (destination, ports) in rules {
        let to = destination.map_or(String::new(), |d| format!("ip daddr {d} "));
        commands.push(format!(
            "add rule ip nat post oifname ul0 {to}meta l4proto udp masquerade to :{ports}"
        ));
    }
    for command in commands {
        let mut args = vec!["nft"];
        args.extend(command.split(' ').filter(|a| !a.is_empty()));
        let out = lab.ns_exec(&ns, &args);
        if !out.status.success() {
            lab.fail(format!(
                "`nft {command}` in {ns} failed: {}",
                common::describe(&out)
            ));
        }
    }
    ns
}

/// A veth from `router` (`lan<net>`, 198.19.<net>.1/24) to `host` (`link`, 198.19.<net>.2/24),
/// with the host's default route through the router.
#[track_caller]
fn connect_lan(lab: &Lab, router: &str, host: &str, net: u8, link: &str) {
    let lan = format!("lan{net}");
    lab.ip_ok(
        router,
        &[
            "link", "add", &lan, "type", "veth", "peer", "name", link, "netns", host,
        ],
    );
    lab.ip_ok(
        router,
        &["addr", "add", &format!("198.19.{net}.1/24"), "dev", &lan],
    );
    lab.ip_ok(router, &["link", "set", &lan, "up"]);
    lab.ip_ok(
        host,
        &["addr", "add", &format!("198.19.{net}.2/24"), "dev", link],
    );
    lab.ip_ok(host, &["link", "set", link, "up"]);
    lab.ip_ok(
        host,
        &["route", "add", "default", "via", &format!("198.19.{net}.1")],
    );
}

/// Node `a` (overlay host `host`) in a namespace of its own behind `router`'s first LAN.
#[track_caller]
fn natted_node(lab: &mut Lab, router: &str, host: u8) -> Node {
    let ns = lab.add_ns("a");
    connect_lan(lab, router, &ns, 1, "ul0");
    let mut node = lab.node(ns, "a", host, TUNNEL_PORT, false);
    node.underlay = "198.19.1.2".to_string();
    node
}

// ----- Observations -----

/// Waits until `node`'s status reports a reflexive address on `ip` with a NAT port.
#[track_caller]
fn wait_reflexive(lab: &Lab, node: &Node, ip: &str, limit: Duration) -> SocketAddr {
    lab.wait_until(
        &format!("{} to report a reflexive address on {ip}", node.iface),
        limit,
        || {
            let status = lab.status_raw(&node.iface)?;
            let field = &status["reflexive_address"];
            let address: SocketAddr = field
                .as_str()
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| format!("reflexive_address: {field}"))?;
            if address.ip().to_string() == ip && NAT_PORTS.contains(&address.port()) {
                Ok(address)
            } else {
                Err(format!("reflexive_address: {address}"))
            }
        },
    )
}

/// The outer port `router`'s NAT gave `node`'s tunnel socket for its packets to the hub's DHT
/// node, from the router's conntrack table.
#[track_caller]
fn nat_mapping(lab: &Lab, router: &str, node: &Node) -> u16 {
    let out = lab.ns_exec(
        router,
        &[
            "conntrack",
            "-L",
            "-p",
            "udp",
            "--orig-src",
            &node.underlay,
            "--orig-port-src",
            &TUNNEL_PORT.to_string(),
            "--orig-dst",
            HUB_ADDR,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // "udp 17 29 src=IN dst=HUB sport=51820 dport=6881 src=HUB dst=WAN sport=6881 dport=OUT ..."
    let port = text.lines().find_map(|line| {
        line.split_whitespace()
            .filter_map(|field| field.strip_prefix("dport="))
            .nth(1)
            .and_then(|p| p.parse().ok())
    });
    port.unwrap_or_else(|| {
        lab.fail(format!(
            "no conntrack entry for {}:{TUNNEL_PORT} -> {HUB_ADDR} in {router}: {}",
            node.underlay,
            common::describe(&out)
        ))
    })
}

/// `dhtun status IFACE`, the text a person reads.
fn text_status(node: &Node) -> String {
    let out = run_timeout(
        &mut node.cli(&["status", &node.iface]),
        Duration::from_secs(10),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Looks `node`'s record up from a DHT client in the hub until `wanted` accepts one (bounded).
#[track_caller]
fn find_record(
    lab: &Lab,
    hub: &str,
    node: &Node,
    wanted: impl Fn(&Record) -> bool + Send + 'static,
) -> Record {
    const LIMIT: Duration = Duration::from_secs(30);
    let key = PublicKey::from_base64(&node.public).expect("a valid public key");
    let bootstrap = hub_node();
    let found = in_netns(hub, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let client = Dht::start(DhtOptions {
                bootstrap: vec![bootstrap],
                bind: SocketAddrV4::new(HUB_ADDR.parse().expect("hub address"), 0),
                server_mode: false,
                request_timeout: Some(Duration::from_millis(500)),
            })
            .await
            .map_err(|e| format!("{e:#}"))?;
            let started = Instant::now();
            let mut last = None;
            while started.elapsed() < LIMIT {
                if let Ok(Some((_, record))) = client.resolve(&key, None).await {
                    if wanted(&record) {
                        return Ok(record);
                    }
                    last = Some(record);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(format!("the last record found was {last:?}"))
        })
    })
    .join()
    .unwrap_or_else(|_| Err("the lookup thread panicked".to_string()));
    found.unwrap_or_else(|e| {
        lab.fail(format!(
            "no record of {} as wanted in the DHT within {LIMIT:?}: {e}",
            node.iface
        ))
    })
}
