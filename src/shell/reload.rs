//! `dhtun reload IFACE` and SIGHUP: read the config file again and apply it without a restart.
//! Peers that stay keep their sessions; addresses and routes follow the new file. A config that
//! does not load, or that changes what only a restart can change, is refused whole and the
//! running state is kept.

use crate::config::Config;
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
    let new = Config::load(&config.path)?;
    if let Some(what) = needs_restart(config, &new) {
        anyhow::bail!(
            "{}: changing {what} needs a restart (dhtun down, then up); nothing was changed",
            config.path.display()
        );
    }
    let old_addresses = &config.interface.addresses;
    let new_addresses = &new.interface.addresses;
    for address in new_addresses.iter().filter(|a| !old_addresses.contains(a)) {
        link.netlink.add_address(link.index, *address).await?;
    }
    for address in old_addresses.iter().filter(|a| !new_addresses.contains(a)) {
        link.netlink.del_address(link.index, *address).await?;
    }
    let allowed: Vec<IpNetwork> = new
        .peers
        .iter()
        .flat_map(|p| p.allowed_ips.iter().copied())
        .collect();
    let wanted = prefixes_needing_routes(new_addresses, &allowed);
    for route in &wanted {
        if !link.routes.contains(route) {
            link.netlink.add_route(link.index, *route).await?;
            link.routes.push(*route);
        }
    }
    let stale: Vec<IpNetwork> = link
        .routes
        .iter()
        .filter(|r| !wanted.contains(r))
        .copied()
        .collect();
    for route in stale {
        link.netlink.del_route(link.index, route).await?;
        link.routes.retain(|r| *r != route);
    }
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
