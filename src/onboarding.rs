//! Onboarding: the `[[peer]]` block another node adds to its config to reach this one, as
//! `dhtun showpeer CONFIG` prints it. Read from the config file alone, so no daemon need run.

use crate::config::Config;
use ipnetwork::IpNetwork;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

/// Where other nodes can send to this one, as `showpeer --endpoint` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// A full `IP:PORT`, e.g. a NAT's forwarded port.
    Full(SocketAddr),
    /// An IP alone: the port is the interface's `listen_port`.
    Ip(IpAddr),
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Endpoint::Full(addr));
        }
        text.trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
            .map(Endpoint::Ip)
            .map_err(|_| {
                format!(
                    "expected IP or IP:PORT, e.g. 203.0.113.7 or 203.0.113.7:51820, not {text:?}"
                )
            })
    }
}

/// The `[[peer]]` block for `config`'s interface: its public key, its addresses as host routes,
/// and `endpoint` when given. Fails only when the endpoint needs the listen port and it is 0.
pub fn peer_block(config: &Config, endpoint: Option<Endpoint>) -> Result<String, String> {
    let interface = &config.interface;
    let endpoint = match endpoint {
        None => None,
        Some(Endpoint::Full(addr)) => Some(addr),
        Some(Endpoint::Ip(_)) if interface.listen_port == 0 => {
            return Err(format!(
                "{} has listen_port = 0 (any free port), so the endpoint needs its port: \
                 --endpoint IP:PORT",
                config.path.display()
            ))
        }
        Some(Endpoint::Ip(ip)) => Some(SocketAddr::new(ip, interface.listen_port)),
    };
    // Each address as a single host: the other node's own interface network already covers
    // the rest of the subnet, and two peers may not share a prefix.
    let hosts: Vec<String> = interface
        .addresses
        .iter()
        .map(|a| format!("\"{}\"", IpNetwork::from(a.ip())))
        .collect();
    let mut block = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(block, "# {} ({})", interface.name, config.path.display());
    let _ = writeln!(block, "[[peer]]");
    let _ = writeln!(
        block,
        "public_key = \"{}\"",
        interface.secret_key.public_key().to_base64()
    );
    let _ = writeln!(block, "allowed_ips = [{}]", hosts.join(", "));
    match endpoint {
        Some(addr) => {
            let _ = writeln!(block, "endpoint = \"{addr}\"");
        }
        None if config.dht.enabled => {
            let _ = writeln!(block, "# no endpoint: found in the DHT by its public key");
        }
        None => {
            let _ = writeln!(
                block,
                "# no endpoint, and this node's [dht] is off: it must contact you first \
                 (or run showpeer with --endpoint)"
            );
        }
    }
    if interface.relay {
        let _ = writeln!(
            block,
            "relay = true                 # this node relays for its peers"
        );
    }
    Ok(block)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::keys::SecretKey;
    use std::path::Path;

    fn config(extra: &str) -> Config {
        let key = SecretKey::from_seed([7; 32]).to_base64();
        let text = format!(
            "[interface]\nprivate_key = \"{key}\"\naddress = [\"100.64.0.1/24\", \"fd64::1/64\"]\n{extra}"
        );
        Config::parse(Path::new("/etc/dhtun/a.toml"), &text).unwrap()
    }

    /// B's config with `block` pasted in: what the block is for.
    fn pasted(block: &str) -> Config {
        let key = SecretKey::from_seed([8; 32]).to_base64();
        let text = format!(
            "[interface]\nprivate_key = \"{key}\"\naddress = [\"100.64.0.2/24\"]\n\n{block}"
        );
        Config::parse(Path::new("/etc/dhtun/b.toml"), &text).unwrap()
    }

    #[test]
    fn the_block_parses_in_the_other_nodes_config_as_this_node() {
        let a = config("");
        let b = pasted(&peer_block(&a, None).unwrap());
        let peer = &b.peers[0];
        assert_eq!(peer.public_key, a.interface.secret_key.public_key());
        let hosts: Vec<String> = peer.allowed_ips.iter().map(|n| n.to_string()).collect();
        assert_eq!(hosts, ["100.64.0.1/32", "fd64::1/128"]);
        assert_eq!(peer.endpoint, None);
        assert!(!peer.relay);
    }

    #[test]
    fn an_endpoint_ip_takes_the_listen_port() {
        let a = config("listen_port = 51999\n");
        let ip = Some("203.0.113.7".parse().unwrap());
        let b = pasted(&peer_block(&a, ip).unwrap());
        assert_eq!(
            b.peers[0].endpoint,
            Some("203.0.113.7:51999".parse().unwrap())
        );
        let full = Some("[2001:db8::7]:4000".parse().unwrap());
        let b = pasted(&peer_block(&a, full).unwrap());
        assert_eq!(
            b.peers[0].endpoint,
            Some("[2001:db8::7]:4000".parse().unwrap())
        );
    }

    #[test]
    fn an_endpoint_ip_with_any_free_port_is_refused() {
        let a = config("listen_port = 0\n");
        let err = peer_block(&a, Some("203.0.113.7".parse().unwrap())).unwrap_err();
        assert!(err.contains("IP:PORT"), "{err}");
        assert!("nonsense".parse::<Endpoint>().is_err());
    }

    #[test]
    fn a_relay_is_marked_as_one() {
        let a = config("relay = true\n");
        let b = pasted(&peer_block(&a, None).unwrap());
        assert!(b.peers[0].relay);
    }
}
