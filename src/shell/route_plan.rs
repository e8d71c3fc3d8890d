//! The kernel routing state the daemon wants for its config: which routes go in which table, and
//! the policy rules of a full tunnel. One place computes it ([`wanted`]); start-up, `reload` and
//! anything that re-applies the daemon's state diff the kernel against it.
//!
//! A full tunnel (an `allowed_ips` prefix of length 0 or 1 with `table = "auto"`) is built as
//! wg-quick builds it: the default-like routes go in a table of their own, and per address
//! family three rules at one priority, in this order (the kernel keeps insertion order within a
//! priority):
//! 1. `lookup main suppress_prefixlength 0`: the main table still decides, except where its
//!    answer would be a default route, so local and more specific routes win;
//! 2. IPv4 only: `ipproto udp sport PORT lookup main` for the tunnel socket's port and the DHT
//!    socket's. The DHT socket belongs to the `mainline` crate, which neither marks it nor takes
//!    a socket from us, so its packets are picked out by their source port instead of a mark
//!    (see [`DhtExemption`]). The tunnel socket is marked, but its rule is what lets strict
//!    reverse-path filtering (`rp_filter = 1`) accept the packets that arrive for it: the kernel
//!    checks a source with the ports swapped, so the check of a packet to our port is a lookup
//!    from our port, which this rule sends to the main table instead of into the tunnel;
//! 3. `not fwmark M lookup T`: everything else that does not carry dhtun's mark uses the table.
//!
//! The tunnel socket (tunnel packets and reflexive pings) carries mark M, so it skips rule 3.
//! Every rule carries protocol [`RULE_PROTOCOL`], which is how the next `up` recognises the
//! rules of a daemon that was killed: its routes went with its interface, its rules did not.

use crate::config::TableSetting;
use crate::shell::control::run_dir;
use crate::shell::netlink::{prefixes_needing_routes, Netlink};
use crate::shell::policy_claim::{netns_id, table_claimed, Claim, PickLock};
use ipnetwork::IpNetwork;
use std::collections::BTreeSet;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// The main routing table.
pub const MAIN_TABLE: u32 = 254;
/// Where the search for a free table and mark starts: WireGuard's port, as wg-quick does.
pub const FIRST_AUTO_VALUE: u32 = 51820;
/// The routing protocol number on dhtun's rules ("dhtun" in no registry; iproute2 shows a
/// number it has no name for as is). Unused by iproute2's rt_protos and by routing daemons.
pub const RULE_PROTOCOL: u8 = 0xd7;
/// The priority of the main table's own rule: ours go before it.
const MAIN_RULE_PRIORITY: u32 = 32766;

/// A route out of the tunnel interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route {
    pub dest: IpNetwork,
    pub table: u32,
}

/// One policy rule of a full tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub v6: bool,
    pub priority: u32,
    pub what: RuleMatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleMatch {
    /// `lookup main suppress_prefixlength 0`.
    MainWithoutDefault,
    /// `ipproto udp sport PORT lookup main`: the packets of one of dhtun's sockets.
    OwnPort(u16),
    /// `not fwmark MARK lookup TABLE`.
    Unmarked { mark: u32, table: u32 },
}

/// The values a full tunnel uses, picked once and kept until the daemon stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FullTunnel {
    pub table: u32,
    pub fwmark: u32,
    pub priority: u32,
}

/// Whether the IPv4 rules can go in yet. The DHT socket must be exempt from the tunnel before
/// they do, or its bootstrap packets would go into a tunnel that needs the DHT to come up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DhtExemption {
    /// Discovery is off: no DHT socket to exempt.
    NotNeeded,
    /// The DHT socket is not bound yet: withhold the IPv4 rules.
    Pending,
    Port(u16),
}

/// What the kernel should hold for the daemon.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    pub routes: Vec<Route>,
    pub rules: Vec<Rule>,
}

/// A prefix that covers half the address space or more: a default route, or one of the /1
/// halves that OpenVPN users put in to override a default route without replacing it. Either
/// way it would carry the tunnel's own packets into the tunnel.
pub fn is_default_like(prefix: IpNetwork) -> bool {
    prefix.prefix() <= 1
}

/// Whether `allowed` with `table` needs policy routing.
pub fn wants_full_tunnel(table: TableSetting, allowed: &[IpNetwork]) -> bool {
    table == TableSetting::Auto && allowed.iter().any(|&p| is_default_like(p))
}

/// The routes and rules for interface `addresses` and the peers' `allowed` prefixes. With
/// `table = "auto"` and no `full` tunnel picked yet, default-like prefixes get nothing.
pub fn wanted(
    addresses: &[IpNetwork],
    allowed: &[IpNetwork],
    table: TableSetting,
    full: Option<FullTunnel>,
    ports: OwnPorts,
) -> Wanted {
    let in_table = |table: u32| move |dest: IpNetwork| Route { dest, table };
    match table {
        TableSetting::Off => Wanted::default(),
        TableSetting::Number(n) => Wanted {
            routes: prefixes_needing_routes(addresses, allowed)
                .into_iter()
                .map(in_table(n))
                .collect(),
            rules: Vec::new(),
        },
        TableSetting::Auto => {
            let (defaults, others): (Vec<IpNetwork>, Vec<IpNetwork>) =
                allowed.iter().partition(|&&p| is_default_like(p));
            let mut routes: Vec<Route> = prefixes_needing_routes(addresses, &others)
                .into_iter()
                .map(in_table(MAIN_TABLE))
                .collect();
            let mut rules = Vec::new();
            if let Some(full) = full {
                routes.extend(
                    prefixes_needing_routes(addresses, &defaults)
                        .into_iter()
                        .map(in_table(full.table)),
                );
                for v6 in [false, true] {
                    if defaults.iter().any(|p| p.is_ipv6() == v6) {
                        rules.extend(family_rules(v6, full, ports));
                    }
                }
            }
            Wanted { routes, rules }
        }
    }
}

/// The UDP ports of dhtun's sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnPorts {
    pub tunnel: u16,
    pub dht: DhtExemption,
}

/// The rules of one family, in the order they must go in.
fn family_rules(v6: bool, full: FullTunnel, ports: OwnPorts) -> Vec<Rule> {
    let rule = |what| Rule {
        v6,
        priority: full.priority,
        what,
    };
    let mut rules = vec![rule(RuleMatch::MainWithoutDefault)];
    if !v6 {
        rules.push(rule(RuleMatch::OwnPort(ports.tunnel)));
        match ports.dht {
            DhtExemption::Pending => return Vec::new(),
            DhtExemption::Port(port) => rules.push(rule(RuleMatch::OwnPort(port))),
            DhtExemption::NotNeeded => {}
        }
    }
    rules.push(rule(RuleMatch::Unmarked {
        mark: full.fwmark,
        table: full.table,
    }));
    rules
}

/// The routing settings of a running daemon and what it picked for them.
#[derive(Debug)]
pub struct Policy {
    /// `[interface] table` at start; a reload that changes it is refused.
    pub table: TableSetting,
    /// `[interface] fwmark` at start (0: auto).
    pub fwmark: u32,
    /// The table, mark and priority of the full tunnel, once one was needed.
    pub full: Option<FullTunnel>,
    pub dht: DhtExemption,
    /// The tunnel socket's port.
    pub tunnel_port: u16,
    /// The mark set on the sockets, when one is.
    pub marked: Option<u32>,
    /// A second descriptor of the tunnel socket, to mark it when a reload first needs that.
    socket: std::net::UdpSocket,
    /// Other sockets of the daemon that carry the mark too (the metrics listener).
    others: Vec<OwnedFd>,
    /// The claim on `full`'s values that other daemons see (see `shell::policy_claim`).
    claim: Option<Claim>,
    /// Values picked before and found taken by something that does not claim them.
    rejected: InUse,
}

/// What `dhtun status` shows of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyStatus {
    /// Where the routes go: None when `table = "off"`.
    pub table: Option<u32>,
    pub fwmark: Option<u32>,
    pub full_tunnel: bool,
    pub rule_priority: Option<u32>,
}

impl Policy {
    /// The policy of `config`'s interface, whose tunnel socket is `socket` (a second descriptor
    /// of it). An explicit `fwmark` marks the socket at once; an automatic one waits until a
    /// full tunnel needs it.
    pub fn new(
        table: TableSetting,
        fwmark: u32,
        socket: std::net::UdpSocket,
        dht_enabled: bool,
    ) -> anyhow::Result<Self> {
        let tunnel_port = socket.local_addr()?.port();
        let mut policy = Self {
            tunnel_port,
            table,
            fwmark,
            full: None,
            dht: if dht_enabled {
                DhtExemption::Pending
            } else {
                DhtExemption::NotNeeded
            },
            marked: None,
            socket,
            others: Vec::new(),
            claim: None,
            rejected: InUse::default(),
        };
        if fwmark != 0 {
            policy.mark(fwmark)?;
        }
        Ok(policy)
    }

    /// What the kernel should hold for these addresses and allowed prefixes.
    pub fn wanted(&self, addresses: &[IpNetwork], allowed: &[IpNetwork]) -> Wanted {
        let ports = OwnPorts {
            tunnel: self.tunnel_port,
            dht: self.dht,
        };
        wanted(addresses, allowed, self.table, self.full, ports)
    }

    /// Picks the full tunnel's table, mark and priority when `allowed` first needs them, and
    /// marks the tunnel socket; before any rule goes in, so its packets never loop.
    pub async fn prepare(
        &mut self,
        netlink: &Netlink,
        allowed: &[IpNetwork],
    ) -> anyhow::Result<()> {
        if self.full.is_some() || !wants_full_tunnel(self.table, allowed) {
            return Ok(());
        }
        // Held from reading what is taken until the pick is claimed: two daemons starting at
        // once would otherwise see the same free values.
        let lock = PickLock::acquire()
            .await
            .map_err(|e| anyhow::anyhow!("picking a table for the full tunnel: {e}"))?;
        let (dir, netns) = (run_dir(), netns_id()?);
        let mut in_use = netlink.policy_in_use().await?;
        for taken in lock.live_claims(&dir, netns) {
            in_use.tables.insert(taken.table);
            in_use.marks.insert(taken.fwmark);
            in_use.priorities.insert(taken.priority);
        }
        in_use.tables.extend(&self.rejected.tables);
        in_use.marks.extend(&self.rejected.marks);
        in_use.priorities.extend(&self.rejected.priorities);
        let full = pick(&in_use, self.fwmark);
        let claim = lock
            .claim(&dir, netns, full)
            .map_err(|e| anyhow::anyhow!("claiming table {}: {e}", full.table))?;
        self.mark(full.fwmark)?;
        self.claim = Some(claim);
        tracing::info!(
            table = full.table,
            fwmark = full.fwmark,
            priority = full.priority,
            "full tunnel: a default route goes through the tunnel; dhtun's sockets are marked"
        );
        self.full = Some(full);
        Ok(())
    }

    /// Gives up the picked values after the kernel said one of them is taken (a route or rule
    /// of something that does not claim them, such as wg-quick); the next `prepare` picks
    /// others. Returns whether there was a pick to give up.
    pub fn reject_pick(&mut self) -> bool {
        let Some(full) = self.full.take() else {
            return false;
        };
        self.rejected.tables.insert(full.table);
        self.rejected.priorities.insert(full.priority);
        if self.fwmark == 0 {
            self.rejected.marks.insert(full.fwmark);
        }
        self.claim = None;
        true
    }

    /// The status, with `rules_in_place` when the full tunnel's rules are in the kernel (a
    /// reload may have taken the default route away again).
    pub fn status(&self, rules_in_place: bool) -> PolicyStatus {
        let full = self.full.filter(|_| rules_in_place);
        PolicyStatus {
            table: match self.table {
                TableSetting::Off => None,
                TableSetting::Number(n) => Some(n),
                TableSetting::Auto => Some(full.map_or(MAIN_TABLE, |f| f.table)),
            },
            fwmark: self.marked,
            full_tunnel: full.is_some(),
            rule_priority: full.map(|f| f.priority),
        }
    }

    /// Marks `socket` (a second descriptor of another socket of the daemon) like the tunnel
    /// socket, now and whenever that gets a mark: a metrics scraper beyond the default gateway
    /// is answered outside a full tunnel, as it asked.
    pub fn mark_also(&mut self, socket: OwnedFd) -> std::io::Result<()> {
        if let Some(mark) = self.marked {
            set_mark(socket.as_fd(), mark)?;
        }
        self.others.push(socket);
        Ok(())
    }

    fn mark(&mut self, mark: u32) -> anyhow::Result<()> {
        if self.marked == Some(mark) {
            return Ok(());
        }
        set_mark(self.socket.as_fd(), mark)
            .map_err(|e| anyhow::anyhow!("marking the tunnel socket with fwmark {mark}: {e}"))?;
        for other in &self.others {
            if let Err(e) = set_mark(other.as_fd(), mark) {
                tracing::warn!("marking the metrics socket with fwmark {mark}: {e}");
            }
        }
        self.marked = Some(mark);
        Ok(())
    }
}

/// The tables, marks and rule priorities something on the host uses already.
#[derive(Debug, Clone, Default)]
pub struct InUse {
    pub tables: BTreeSet<u32>,
    pub marks: BTreeSet<u32>,
    pub priorities: BTreeSet<u32>,
}

/// Free values for a full tunnel: the first table from [`FIRST_AUTO_VALUE`] up that holds no
/// route and no rule names, the same number as mark unless `fwmark` is set or that mark is in
/// use, and the highest free priority below the main table's rule.
pub fn pick(in_use: &InUse, fwmark: u32) -> FullTunnel {
    let free = |used: &BTreeSet<u32>, from: u32| (from..=u32::MAX).find(|v| !used.contains(v));
    let table = free(&in_use.tables, FIRST_AUTO_VALUE).unwrap_or(FIRST_AUTO_VALUE);
    let fwmark = match fwmark {
        0 => free(&in_use.marks, table).unwrap_or(table),
        mark => mark,
    };
    let priority = (1..MAIN_RULE_PRIORITY)
        .rev()
        .find(|p| !in_use.priorities.contains(p))
        .unwrap_or(1);
    FullTunnel {
        table,
        fwmark,
        priority,
    }
}

/// Removes the rules of dhtun daemons that are gone: rules with [`RULE_PROTOCOL`] whose
/// priority's table holds no route any more (a daemon's table routes go with its interface)
/// and is claimed by no live daemon (a live one's table is empty while its link is down).
/// Returns how many rules were removed.
pub async fn remove_stale_rules(netlink: &Netlink) -> anyhow::Result<usize> {
    let (dir, netns) = (run_dir(), netns_id()?);
    // Testing a claim takes its lock for a moment: under the pick lock, so no daemon claiming
    // that table at the same time finds it held.
    let lock = PickLock::acquire().await?;
    // A live daemon adds its rules one by one after it claimed: a group read half-built (its
    // `lookup main` rules in, its own table's rule not yet) is live by its claimed priority.
    let claimed: BTreeSet<u32> = lock
        .live_claims(&dir, netns)
        .iter()
        .map(|full| full.priority)
        .collect();
    let ours = netlink.dhtun_rules().await?;
    let mut tables = netlink.tables_with_routes().await?;
    tables.extend(
        ours.iter()
            .map(|r| r.table)
            .filter(|&t| table_claimed(&dir, netns, t)),
    );
    let priorities: BTreeSet<u32> = ours.iter().map(|r| r.priority).collect();
    let mut removed = 0;
    for priority in priorities {
        let group = ours.iter().filter(|r| r.priority == priority);
        let live = claimed.contains(&priority)
            || group
                .clone()
                .any(|r| r.table != MAIN_TABLE && tables.contains(&r.table));
        if live {
            continue;
        }
        for rule in group {
            netlink.del_rule_message(rule.message.clone()).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// SO_MARK: packets the socket sends carry `mark`. Needs CAP_NET_ADMIN.
fn set_mark(socket: std::os::fd::BorrowedFd<'_>, mark: u32) -> std::io::Result<()> {
    // SAFETY: the descriptor is open for the socket's lifetime and the value's size is passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&mark as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNetwork> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    const FULL: FullTunnel = FullTunnel {
        table: 51820,
        fwmark: 51821,
        priority: 32765,
    };

    const NO_DHT: OwnPorts = OwnPorts {
        tunnel: 51820,
        dht: DhtExemption::NotNeeded,
    };

    const PORTS_PENDING: OwnPorts = OwnPorts {
        tunnel: 51820,
        dht: DhtExemption::Pending,
    };

    fn routes(wanted: &Wanted) -> Vec<String> {
        wanted
            .routes
            .iter()
            .map(|r| format!("{} {}", r.dest, r.table))
            .collect()
    }

    #[test]
    fn without_a_default_route_auto_is_todays_main_table() {
        let addrs = nets(&["100.64.0.1/24", "fd64::1/64"]);
        let allowed = nets(&["100.64.0.2/32", "100.65.2.0/24", "fd65::/64"]);
        assert!(!wants_full_tunnel(TableSetting::Auto, &allowed));
        let w = wanted(&addrs, &allowed, TableSetting::Auto, None, PORTS_PENDING);
        assert_eq!(routes(&w), ["100.65.2.0/24 254", "fd65::/64 254"]);
        assert!(w.rules.is_empty());
    }

    #[test]
    fn default_routes_go_in_their_table_with_rules_in_order() {
        let addrs = nets(&["100.64.0.1/24", "fd64::1/64"]);
        let allowed = nets(&["100.64.0.2/32", "0.0.0.0/0", "100.65.2.0/24", "::/0"]);
        assert!(wants_full_tunnel(TableSetting::Auto, &allowed));
        let w = wanted(
            &addrs,
            &allowed,
            TableSetting::Auto,
            Some(FULL),
            OwnPorts {
                tunnel: 51820,
                dht: DhtExemption::Port(6881),
            },
        );
        // The /24 stays in main although the default covers it: the main table is asked first.
        assert_eq!(
            routes(&w),
            ["100.65.2.0/24 254", "0.0.0.0/0 51820", "::/0 51820"]
        );
        let rule = |v6, what| Rule {
            v6,
            priority: 32765,
            what,
        };
        let unmarked = RuleMatch::Unmarked {
            mark: 51821,
            table: 51820,
        };
        assert_eq!(
            w.rules,
            [
                rule(false, RuleMatch::MainWithoutDefault),
                rule(false, RuleMatch::OwnPort(51820)),
                rule(false, RuleMatch::OwnPort(6881)),
                rule(false, unmarked),
                rule(true, RuleMatch::MainWithoutDefault),
                rule(true, unmarked),
            ]
        );
    }

    #[test]
    fn the_openvpn_halves_count_as_a_default_route_of_their_family_only() {
        let allowed = nets(&["0.0.0.0/1", "128.0.0.0/1"]);
        let w = wanted(
            &nets(&["100.64.0.1/24"]),
            &allowed,
            TableSetting::Auto,
            Some(FULL),
            NO_DHT,
        );
        assert_eq!(routes(&w), ["0.0.0.0/1 51820", "128.0.0.0/1 51820"]);
        assert_eq!(w.rules.len(), 3, "{:?}", w.rules);
        assert!(w.rules.iter().all(|r| !r.v6));
    }

    #[test]
    fn ipv4_rules_wait_for_the_dht_socket() {
        let allowed = nets(&["0.0.0.0/0", "::/0"]);
        let w = wanted(&[], &allowed, TableSetting::Auto, Some(FULL), PORTS_PENDING);
        assert!(w.rules.iter().all(|r| r.v6));
        assert_eq!(w.rules.len(), 2);
    }

    #[test]
    fn off_adds_nothing_and_a_number_takes_every_route_without_rules() {
        let allowed = nets(&["0.0.0.0/0", "100.65.2.0/24"]);
        let off = wanted(&[], &allowed, TableSetting::Off, None, NO_DHT);
        assert_eq!(off, Wanted::default());
        assert!(!wants_full_tunnel(TableSetting::Number(7), &allowed));
        let numbered = wanted(&[], &allowed, TableSetting::Number(7), None, NO_DHT);
        assert_eq!(routes(&numbered), ["0.0.0.0/0 7"]);
        assert!(numbered.rules.is_empty());
    }

    #[test]
    fn pick_skips_used_values() {
        let mut in_use = InUse::default();
        assert_eq!(
            pick(&in_use, 0),
            FullTunnel {
                table: 51820,
                fwmark: 51820,
                priority: 32765
            }
        );
        in_use.tables.extend([51820, 51821]);
        in_use.marks.insert(51822);
        in_use.priorities.extend([0, 32765, 32766, 32767]);
        assert_eq!(
            pick(&in_use, 0),
            FullTunnel {
                table: 51822,
                fwmark: 51823,
                priority: 32764
            }
        );
        assert_eq!(pick(&in_use, 99).fwmark, 99);
    }
}
