//! `dhtun reload IFACE` and SIGHUP: read the config file again and apply it without a restart.
//! Peers that stay keep their sessions; addresses and routes follow the new file. A config that
//! does not load, or that changes what only a restart can change, is refused whole and the
//! running state is kept.

use crate::config::{Config, ConfigError};
use crate::core::device::Device;
use crate::core::limits::ROUTE_REQUESTS_IN_FLIGHT;
use crate::shell::netlink::{Netlink, NetlinkError};
use crate::shell::route_plan::{Policy, Route, Rule, Wanted, MAIN_TABLE};
use futures::StreamExt as _;
use ipnetwork::IpNetwork;
use std::collections::HashSet;

/// The kernel side of the interface the daemon manages.
pub struct Link {
    pub netlink: Netlink,
    pub index: u32,
    /// Routes we added, to remove when they are no longer wanted or when we stop.
    pub routes: Vec<Route>,
    /// Policy rules we added (a full tunnel), likewise.
    pub rules: Vec<Rule>,
    /// `table` and `fwmark` and what was picked for them.
    pub policy: Policy,
}

/// Brings the routes and rules to what `config` wants (addresses are left alone). Start-up
/// calls it; so can anything that re-applies the daemon's state: after the kernel dropped the
/// routes of a link that went down, clear `link.routes` (not `link.rules`: the rules stay, and
/// adding one that is there already fails) and call this. When the kernel holds a route or rule
/// of a freshly picked full tunnel already, other values are picked (at most [`MAX_PICKS`]).
pub async fn apply_wanted(link: &mut Link, config: &Config) -> anyhow::Result<()> {
    let allowed = allowed_ips(config);
    let mut attempts = 0;
    loop {
        link.policy.prepare(&link.netlink, &allowed).await?;
        let wanted = link.policy.wanted(&config.interface.addresses, &allowed);
        let addresses = &config.interface.addresses;
        let changes = kernel_changes(addresses, addresses, &wanted, &link.routes, &link.rules);
        match apply_all(link, &changes).await {
            // A picked table or priority that something unclaimed holds: pick again, while
            // none of the full tunnel's rules is in (a picked value stays until the stop).
            Err(e) if e.is::<Taken>() && link.rules.is_empty() && attempts < MAX_PICKS => {
                tracing::info!("{e:#}; picking another table and priority");
                link.policy.reject_pick();
                attempts += 1;
            }
            result => return result,
        }
    }
}

/// How often a daemon picks again after the kernel said its pick was taken.
const MAX_PICKS: u32 = 8;

/// A route or rule of the picked full tunnel was in the kernel already.
#[derive(Debug, thiserror::Error)]
#[error("{0} (taken by something else)")]
struct Taken(String);

/// Every peer's allowed_ips, in config order.
pub fn allowed_ips(config: &Config) -> Vec<IpNetwork> {
    config
        .peers
        .iter()
        .flat_map(|p| p.allowed_ips.iter().copied())
        .collect()
}

/// Applies `new`, the config read again from `config.path` (see shell::config_read); returns
/// the line `dhtun reload` prints.
pub async fn reload(
    config: &mut Config,
    link: &mut Link,
    device: &mut Device,
    new: Result<Config, ConfigError>,
) -> anyhow::Result<String> {
    let new = new.map_err(explain_permission)?;
    if let Some(what) = needs_restart(config, &new) {
        anyhow::bail!(
            "{}: changing {what} needs a restart (dhtun down, then up); nothing was changed",
            config.path.display()
        );
    }
    let allowed = allowed_ips(&new);
    let path = config.path.display();
    link.policy
        .prepare(&link.netlink, &allowed)
        .await
        .map_err(|e| anyhow::anyhow!("{path}: {e:#}; nothing was changed"))?;
    let wanted = link.policy.wanted(&new.interface.addresses, &allowed);
    let (old_addresses, new_addresses) = (&config.interface.addresses, &new.interface.addresses);
    let changes = kernel_changes(
        old_addresses,
        new_addresses,
        &wanted,
        &link.routes,
        &link.rules,
    );
    apply_all(link, &changes)
        .await
        .map_err(|e| anyhow::anyhow!("{path}: {e:#}"))?;
    let summary = device.reconfigure(new.peers.clone());
    device.set_serve_relay(new.interface.relay);
    device.set_pacing(new.interface.pacing);
    *config = new;
    Ok(format!(
        "reloaded {}: {} peers added, {} removed, {} changed, {} unchanged",
        config.path.display(),
        summary.added,
        summary.removed,
        summary.changed,
        summary.unchanged
    ))
}

/// Puts back what the kernel dropped when the interface went down and came up again: its IPv6
/// addresses and every route through it. The change plan of a reload, from an interface with
/// none of the config's addresses and routes to the config; what is still there (the IPv4
/// addresses) stays as it is. Returns how many changes were made.
pub async fn restore(config: &Config, link: &mut Link) -> anyhow::Result<usize> {
    // Routes go with the link, whatever their table; policy rules do not, so those we hold stay.
    link.routes.clear();
    let allowed = allowed_ips(config);
    let wanted = link.policy.wanted(&config.interface.addresses, &allowed);
    let addresses = &config.interface.addresses;
    let mut made = 0;
    for change in kernel_changes(&[], addresses, &wanted, &link.routes, &link.rules) {
        match apply(link, change).await {
            Ok(()) => made += 1,
            Err(e) if already_there(&e) => match change {
                KernelChange::AddRoute(route) => link.routes.push(route),
                KernelChange::AddRule(rule) => link.rules.push(rule),
                _ => {}
            },
            Err(e) => return Err(e),
        }
    }
    Ok(made)
}

/// Whether a failed change found what it was to add already in place.
fn already_there(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<crate::shell::netlink::NetlinkError>()
        .and_then(|e| e.raw_os_error())
        == Some(libc::EEXIST)
}

/// A config or key file root cannot read after start-up: the daemon dropped root's override
/// of file permissions (CAP_DAC_OVERRIDE) once it was up, so say what to change.
fn explain_permission(mut error: ConfigError) -> ConfigError {
    if error.message.contains("Permission denied") {
        error.message.push_str(
            " (after start-up dhtun reads files without root's permission override: make the \
             config and key files readable by root, e.g. owned by root, in directories root \
             may enter)",
        );
    }
    error
}

/// One change to the interface's addresses or routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KernelChange {
    AddAddress(IpNetwork),
    DelAddress(IpNetwork),
    AddRoute(Route),
    DelRoute(Route),
    AddRule(Rule),
    DelRule(Rule),
}

impl KernelChange {
    /// The change that takes this one back.
    fn inverse(self) -> Self {
        match self {
            Self::AddAddress(a) => Self::DelAddress(a),
            Self::DelAddress(a) => Self::AddAddress(a),
            Self::AddRoute(r) => Self::DelRoute(r),
            Self::DelRoute(r) => Self::AddRoute(r),
            Self::AddRule(r) => Self::DelRule(r),
            Self::DelRule(r) => Self::AddRule(r),
        }
    }
}

/// What moving from `old_addresses` to `new_addresses` and to the `wanted` routes and rules
/// changes in the kernel: new addresses, then gone ones, then new routes, new rules, rules no
/// longer wanted and routes no longer wanted (`routes` and `rules` are the ones the daemon
/// added). Routes go in before the rules that lead to them and out after, and rules keep the
/// plan's order, which the kernel keeps within one priority.
fn kernel_changes(
    old_addresses: &[IpNetwork],
    new_addresses: &[IpNetwork],
    wanted: &Wanted,
    routes: &[Route],
    rules: &[Rule],
) -> Vec<KernelChange> {
    let added = new_addresses.iter().filter(|a| !old_addresses.contains(a));
    let removed = old_addresses.iter().filter(|a| !new_addresses.contains(a));
    // Sets: with tens of thousands of routes, a search of the list per route took seconds.
    let (held_routes, wanted_routes): (HashSet<_>, HashSet<_>) =
        (routes.iter().collect(), wanted.routes.iter().collect());
    let new_routes = wanted.routes.iter().filter(|r| !held_routes.contains(r));
    let stale_routes = routes.iter().filter(|r| !wanted_routes.contains(r));
    let new_rules = wanted.rules.iter().filter(|r| !rules.contains(r));
    let stale_rules = rules.iter().rev().filter(|r| !wanted.rules.contains(r));
    added
        .map(|a| KernelChange::AddAddress(*a))
        .chain(removed.map(|a| KernelChange::DelAddress(*a)))
        .chain(new_routes.map(|r| KernelChange::AddRoute(*r)))
        .chain(new_rules.map(|r| KernelChange::AddRule(*r)))
        .chain(stale_rules.map(|r| KernelChange::DelRule(*r)))
        .chain(stale_routes.map(|r| KernelChange::DelRoute(*r)))
        .collect()
}

/// Applies `changes` in order. When one fails, the ones already made are taken back, newest
/// first, so a refused reload leaves the interface as it was and the next reload starts from
/// what the daemon believes is there. A run of new routes goes to the kernel
/// ROUTE_REQUESTS_IN_FLIGHT at a time: one round trip each, 65,536 routes took seconds.
async fn apply_all(link: &mut Link, changes: &[KernelChange]) -> anyhow::Result<()> {
    let mut done = 0;
    while done < changes.len() {
        let run = changes[done..]
            .iter()
            .take_while(|c| matches!(c, KernelChange::AddRoute(_)))
            .count();
        let (applied, failure) = if run > 1 {
            let (added, failure) = add_routes(link, &changes[done..done + run]).await;
            let applied: Vec<KernelChange> =
                added.into_iter().map(KernelChange::AddRoute).collect();
            let failure = failure.map(|(route, e)| (KernelChange::AddRoute(route), e));
            (applied, failure)
        } else {
            match apply(link, changes[done]).await {
                Ok(()) => (vec![changes[done]], None),
                Err(e) => (Vec::new(), Some((changes[done], e))),
            }
        };
        let Some((change, error)) = failure else {
            done += applied.len();
            continue;
        };
        let mut undo_failures = Vec::new();
        for made in changes[..done].iter().chain(&applied).rev() {
            if let Err(e) = apply(link, made.inverse()).await {
                undo_failures.push(format!("{e:#}"));
            }
        }
        if undo_failures.is_empty() {
            if is_taken(link, change, &error) {
                return Err(Taken(format!("{error:#}")).into());
            }
            anyhow::bail!("{error:#}; nothing was changed");
        }
        anyhow::bail!(
            "{error:#}; taking back the changes already made failed too: {}",
            undo_failures.join("; ")
        );
    }
    Ok(())
}

/// Adds the routes of `changes` (all AddRoute) concurrently; returns those added and the first
/// that failed, with its error.
async fn add_routes(
    link: &mut Link,
    changes: &[KernelChange],
) -> (Vec<Route>, Option<(Route, anyhow::Error)>) {
    let (netlink, index) = (&link.netlink, link.index);
    let picked_table = link.policy.full.map(|f| f.table);
    let requests = futures::stream::iter(changes.iter().filter_map(|c| match c {
        KernelChange::AddRoute(r) => Some(*r),
        _ => None,
    }))
    .map(|route| async move {
        let result = match route.table {
            MAIN_TABLE => netlink.add_route(index, route.dest).await,
            _ => {
                let picked = picked_table == Some(route.table);
                netlink.add_table_route(index, route, picked).await
            }
        };
        (route, result)
    });
    let mut added = Vec::new();
    let mut first_error = None;
    for (route, result) in in_flight(requests).await {
        match result {
            Ok(()) => added.push(route),
            Err(e) => {
                first_error.get_or_insert((route, anyhow::Error::from(e)));
            }
        }
    }
    link.routes.extend_from_slice(&added);
    (added, first_error)
}

/// Runs `requests` with up to ROUTE_REQUESTS_IN_FLIGHT of them waiting for the kernel at once.
pub(crate) async fn in_flight<T>(
    requests: impl futures::Stream<Item = impl std::future::Future<Output = T>>,
) -> Vec<T> {
    requests
        .buffer_unordered(ROUTE_REQUESTS_IN_FLIGHT)
        .collect()
        .await
}

/// Whether `change` failed because a route or rule of the picked full tunnel exists already.
fn is_taken(link: &Link, change: KernelChange, error: &anyhow::Error) -> bool {
    let exists = error
        .downcast_ref::<NetlinkError>()
        .and_then(NetlinkError::raw_os_error)
        == Some(libc::EEXIST);
    let picked = |table: u32| link.policy.full.is_some_and(|f| f.table == table);
    exists
        && match change {
            KernelChange::AddRoute(r) => picked(r.table),
            KernelChange::AddRule(_) => link.policy.full.is_some(),
            _ => false,
        }
}

async fn apply(link: &mut Link, change: KernelChange) -> anyhow::Result<()> {
    match change {
        KernelChange::AddAddress(a) => link.netlink.add_address(link.index, a).await?,
        KernelChange::DelAddress(a) => link.netlink.del_address(link.index, a).await?,
        KernelChange::AddRoute(r) if r.table == MAIN_TABLE => {
            link.netlink.add_route(link.index, r.dest).await?;
            link.routes.push(r);
        }
        KernelChange::AddRoute(r) => {
            let picked = link.policy.full.is_some_and(|f| f.table == r.table);
            link.netlink.add_table_route(link.index, r, picked).await?;
            link.routes.push(r);
        }
        KernelChange::DelRoute(r) if r.table == MAIN_TABLE => {
            link.netlink.del_route(link.index, r.dest).await?;
            link.routes.retain(|x| *x != r);
        }
        KernelChange::DelRoute(r) => {
            link.netlink.del_table_route(link.index, r).await?;
            link.routes.retain(|x| *x != r);
        }
        KernelChange::AddRule(r) => {
            link.netlink.add_rule(&r).await?;
            link.rules.push(r);
        }
        KernelChange::DelRule(r) => {
            link.netlink.del_rule(&r).await?;
            link.rules.retain(|x| *x != r);
        }
    }
    Ok(())
}

/// The first setting that differs and can only change with a restart.
fn needs_restart(old: &Config, new: &Config) -> Option<&'static str> {
    let (o, n) = (&old.interface, &new.interface);
    if o.name != n.name {
        Some("[interface] name")
    } else if o.secret_key.public_key() != n.secret_key.public_key() {
        Some("the private key")
    } else if o.listen_port != n.listen_port {
        Some("[interface] listen_port")
    } else if o.mtu != n.mtu {
        Some("[interface] mtu")
    } else if o.ring_slots != n.ring_slots {
        Some("[interface] ring_slots")
    } else if o.ring_bytes != n.ring_bytes {
        Some("[interface] ring_bytes")
    } else if o.ring_max_delay != n.ring_max_delay {
        Some("[interface] ring_max_delay_ms")
    } else if o.batch_size != n.batch_size {
        Some("[interface] batch_size")
    } else if o.receive_buffer_bytes != n.receive_buffer_bytes {
        Some("[interface] receive_buffer_bytes")
    } else if o.log_level != n.log_level {
        Some("[interface] log_level")
    } else if o.metrics_listen != n.metrics_listen {
        Some("[interface] metrics_listen")
    } else if o.table != n.table {
        Some("[interface] table")
    } else if o.fwmark != n.fwmark {
        Some("[interface] fwmark")
    } else if old.dht != new.dht {
        Some("the [dht] section")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::keys::SecretKey;
    use crate::shell::route_plan::{wanted, DhtExemption, FullTunnel, OwnPorts, RuleMatch};
    use std::path::Path;

    fn config(addresses: &str, allowed_ips: &str) -> Config {
        let text = format!(
            "[interface]\nprivate_key = \"{}\"\naddress = [{addresses}]\n\n[dht]\nenabled = false\n\n\
             [[peer]]\npublic_key = \"{}\"\nallowed_ips = [{allowed_ips}]\n",
            SecretKey::from_seed([1; 32]).to_base64(),
            SecretKey::from_seed([2; 32]).public_key().to_base64()
        );
        Config::parse(Path::new("/etc/dhtun/t.toml"), &text).unwrap()
    }

    fn net(text: &str) -> IpNetwork {
        text.parse().unwrap()
    }

    fn main(text: &str) -> Route {
        Route {
            dest: net(text),
            table: MAIN_TABLE,
        }
    }

    /// The changes from `old` with `routes` and `rules` in place to `new`, planned with `full`.
    fn changes(
        old: &Config,
        new: &Config,
        full: Option<FullTunnel>,
        routes: &[Route],
        rules: &[Rule],
    ) -> Vec<KernelChange> {
        let wanted = wanted(
            &new.interface.addresses,
            &allowed_ips(new),
            new.interface.table,
            full,
            OwnPorts {
                tunnel: 51820,
                dht: DhtExemption::NotNeeded,
            },
        );
        let (old_a, new_a) = (&old.interface.addresses, &new.interface.addresses);
        kernel_changes(old_a, new_a, &wanted, routes, rules)
    }

    #[test]
    fn changes_add_before_they_remove_addresses_then_routes() {
        let old = config(r#""100.64.0.1/24""#, r#""100.64.0.2/32", "100.65.1.0/24""#);
        let new = config(r#""100.64.9.1/24""#, r#""100.64.9.2/32", "100.65.2.0/24""#);
        let routes = [main("100.65.1.0/24")];
        assert_eq!(
            changes(&old, &new, None, &routes, &[]),
            [
                KernelChange::AddAddress(net("100.64.9.1/24")),
                KernelChange::DelAddress(net("100.64.0.1/24")),
                KernelChange::AddRoute(main("100.65.2.0/24")),
                KernelChange::DelRoute(main("100.65.1.0/24")),
            ]
        );
    }

    #[test]
    fn the_same_config_changes_nothing() {
        let old = config(r#""100.64.0.1/24""#, r#""100.64.0.2/32", "100.65.1.0/24""#);
        assert_eq!(changes(&old, &old, None, &[main("100.65.1.0/24")], &[]), []);
    }

    #[test]
    fn a_default_route_peer_comes_and_goes_with_routes_inside_its_rules() {
        let full = FullTunnel {
            table: 51820,
            fwmark: 51820,
            priority: 32765,
        };
        let plain = config(r#""100.64.0.1/24""#, r#""100.64.0.2/32""#);
        let exit = config(r#""100.64.0.1/24""#, r#""100.64.0.2/32", "0.0.0.0/0""#);
        let default = Route {
            dest: net("0.0.0.0/0"),
            table: 51820,
        };
        let rule = |what| Rule {
            v6: false,
            priority: 32765,
            what,
        };
        let rules = [
            rule(RuleMatch::MainWithoutDefault),
            rule(RuleMatch::OwnPort(51820)),
            rule(RuleMatch::Unmarked {
                mark: 51820,
                table: 51820,
            }),
        ];
        assert_eq!(
            changes(&plain, &exit, Some(full), &[], &[]),
            [
                KernelChange::AddRoute(default),
                KernelChange::AddRule(rules[0]),
                KernelChange::AddRule(rules[1]),
                KernelChange::AddRule(rules[2]),
            ]
        );
        assert_eq!(
            changes(&exit, &plain, Some(full), &[default], &rules),
            [
                KernelChange::DelRule(rules[2]),
                KernelChange::DelRule(rules[1]),
                KernelChange::DelRule(rules[0]),
                KernelChange::DelRoute(default),
            ]
        );
    }

    #[test]
    fn table_and_fwmark_need_a_restart() {
        let old = config(r#""100.64.0.1/24""#, r#""0.0.0.0/0""#);
        let mut new = old.clone();
        new.interface.table = crate::config::TableSetting::Off;
        assert_eq!(needs_restart(&old, &new), Some("[interface] table"));
        let mut new = old.clone();
        new.interface.fwmark = 7;
        assert_eq!(needs_restart(&old, &new), Some("[interface] fwmark"));
    }

    #[test]
    fn every_change_has_an_inverse_that_takes_it_back() {
        let a = net("100.64.0.1/24");
        let rule = Rule {
            v6: true,
            priority: 7,
            what: RuleMatch::MainWithoutDefault,
        };
        for change in [
            KernelChange::AddAddress(a),
            KernelChange::DelAddress(a),
            KernelChange::AddRoute(main("100.64.0.1/24")),
            KernelChange::DelRoute(main("100.64.0.1/24")),
            KernelChange::AddRule(rule),
            KernelChange::DelRule(rule),
        ] {
            assert_ne!(change.inverse(), change);
            assert_eq!(change.inverse().inverse(), change);
        }
    }
}
