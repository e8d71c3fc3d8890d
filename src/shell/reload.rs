//! `dhtun reload IFACE` and SIGHUP: read the config file again and apply it without a restart.
//! Peers that stay keep their sessions; addresses and routes follow the new file. A config that
//! does not load, or that changes what only a restart can change, is refused whole and the
//! running state is kept.

use crate::config::{Config, ConfigError};
use crate::core::device::Device;
use crate::shell::netlink::{prefixes_needing_routes, Netlink};
use ipnetwork::IpNetwork;

/// The kernel side of the interface the daemon manages.
pub struct Link {
    pub netlink: Netlink,
    pub index: u32,
    /// Routes we added, to remove when they are no longer wanted or when we stop.
    pub routes: Vec<IpNetwork>,
}

/// Re-reads `config.path` and applies it; returns the line `dhtun reload` prints.
pub async fn reload(
    config: &mut Config,
    link: &mut Link,
    device: &mut Device,
) -> anyhow::Result<String> {
    let new = Config::load(&config.path).map_err(explain_permission)?;
    if let Some(what) = needs_restart(config, &new) {
        anyhow::bail!(
            "{}: changing {what} needs a restart (dhtun down, then up); nothing was changed",
            config.path.display()
        );
    }
    let changes = kernel_changes(config, &new, &link.routes);
    apply_all(link, &changes)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", config.path.display()))?;
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
    let mut bare = config.clone();
    bare.interface.addresses.clear();
    link.routes.clear();
    let mut made = 0;
    for change in kernel_changes(&bare, config, &link.routes) {
        match apply(link, change).await {
            Ok(()) => made += 1,
            Err(e) if already_there(&e) => {
                if let KernelChange::AddRoute(route) = change {
                    link.routes.push(route);
                }
            }
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
    AddRoute(IpNetwork),
    DelRoute(IpNetwork),
}

impl KernelChange {
    /// The change that takes this one back.
    fn inverse(self) -> Self {
        match self {
            Self::AddAddress(a) => Self::DelAddress(a),
            Self::DelAddress(a) => Self::AddAddress(a),
            Self::AddRoute(r) => Self::DelRoute(r),
            Self::DelRoute(r) => Self::AddRoute(r),
        }
    }
}

/// What moving from `old` to `new` changes in the kernel: new addresses, then gone ones, then
/// new routes, then routes no longer wanted (`routes` are the ones the daemon added).
fn kernel_changes(old: &Config, new: &Config, routes: &[IpNetwork]) -> Vec<KernelChange> {
    let (old_addresses, new_addresses) = (&old.interface.addresses, &new.interface.addresses);
    let allowed: Vec<IpNetwork> = new
        .peers
        .iter()
        .flat_map(|p| p.allowed_ips.iter().copied())
        .collect();
    let wanted = prefixes_needing_routes(new_addresses, &allowed);
    let added = new_addresses.iter().filter(|a| !old_addresses.contains(a));
    let removed = old_addresses.iter().filter(|a| !new_addresses.contains(a));
    let new_routes = wanted.iter().filter(|r| !routes.contains(r));
    let stale_routes = routes.iter().filter(|r| !wanted.contains(r));
    added
        .map(|a| KernelChange::AddAddress(*a))
        .chain(removed.map(|a| KernelChange::DelAddress(*a)))
        .chain(new_routes.map(|r| KernelChange::AddRoute(*r)))
        .chain(stale_routes.map(|r| KernelChange::DelRoute(*r)))
        .collect()
}

/// Applies `changes` in order. When one fails, the ones already made are taken back, newest
/// first, so a refused reload leaves the interface as it was and the next reload starts from
/// what the daemon believes is there.
async fn apply_all(link: &mut Link, changes: &[KernelChange]) -> anyhow::Result<()> {
    for (done, change) in changes.iter().enumerate() {
        let Err(error) = apply(link, *change).await else {
            continue;
        };
        let mut undo_failures = Vec::new();
        for made in changes[..done].iter().rev() {
            if let Err(e) = apply(link, made.inverse()).await {
                undo_failures.push(format!("{e:#}"));
            }
        }
        if undo_failures.is_empty() {
            anyhow::bail!("{error:#}; nothing was changed");
        }
        anyhow::bail!(
            "{error:#}; taking back the changes already made failed too: {}",
            undo_failures.join("; ")
        );
    }
    Ok(())
}

async fn apply(link: &mut Link, change: KernelChange) -> anyhow::Result<()> {
    match change {
        KernelChange::AddAddress(a) => link.netlink.add_address(link.index, a).await?,
        KernelChange::DelAddress(a) => link.netlink.del_address(link.index, a).await?,
        KernelChange::AddRoute(r) => {
            link.netlink.add_route(link.index, r).await?;
            link.routes.push(r);
        }
        KernelChange::DelRoute(r) => {
            link.netlink.del_route(link.index, r).await?;
            link.routes.retain(|x| *x != r);
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

    #[test]
    fn changes_add_before_they_remove_addresses_then_routes() {
        let old = config(r#""100.64.0.1/24""#, r#""100.64.0.2/32", "100.65.1.0/24""#);
        let new = config(r#""100.64.9.1/24""#, r#""100.64.9.2/32", "100.65.2.0/24""#);
        let routes = [net("100.65.1.0/24")];
        assert_eq!(
            kernel_changes(&old, &new, &routes),
            [
                KernelChange::AddAddress(net("100.64.9.1/24")),
                KernelChange::DelAddress(net("100.64.0.1/24")),
                KernelChange::AddRoute(net("100.65.2.0/24")),
                KernelChange::DelRoute(net("100.65.1.0/24")),
            ]
        );
    }

    #[test]
    fn the_same_config_changes_nothing() {
        let old = config(r#""100.64.0.1/24""#, r#""100.64.0.2/32", "100.65.1.0/24""#);
        assert_eq!(kernel_changes(&old, &old, &[net("100.65.1.0/24")]), []);
    }

    #[test]
    fn every_change_has_an_inverse_that_takes_it_back() {
        let a = net("100.64.0.1/24");
        for change in [
            KernelChange::AddAddress(a),
            KernelChange::DelAddress(a),
            KernelChange::AddRoute(a),
            KernelChange::DelRoute(a),
        ] {
            assert_ne!(change.inverse(), change);
            assert_eq!(change.inverse().inverse(), change);
        }
    }
}
