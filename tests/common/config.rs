//! The daemon configs a lab writes: static endpoints for the veth pair, DHT bootstrap for the
//! hub, and extra `[interface]` keys.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use super::{Lab, Node};

impl Lab {
    /// Render the config of `me`, with one `[[peer]]` per entry of `peers`: the peer's overlay
    /// /32 and /128 plus `extra` allowed_ips, and its static endpoint.
    pub fn config_text(&self, me: &Node, peers: &[(&Node, &[&str])]) -> String {
        let mut s = self.interface_section(me);
        s.push_str("\n[dht]\nenabled = false\n");
        for (peer, extra) in peers {
            s.push_str(&peer_section(peer, extra, true));
        }
        s
    }

    /// Render the config of `me` for discovery through the DHT: `[dht] bootstrap` (each
    /// `IP:PORT`) with `server_mode = true`, as on a private network, and one `[[peer]]` per entry
    /// of `peers` with its public key and allowed_ips (overlay /32 and /128 plus `extra`) but no
    /// endpoint: the daemon has to find it in the DHT.
    pub fn dht_config_text(
        &self,
        me: &Node,
        peers: &[(&Node, &[&str])],
        bootstrap: &[&str],
    ) -> String {
        let mut s = self.interface_section(me);
        let nodes: Vec<String> = bootstrap.iter().map(|b| format!("\"{b}\"")).collect();
        s.push_str(&format!(
            "\n[dht]\nbootstrap = [{}]\nserver_mode = true\n",
            nodes.join(", ")
        ));
        for (peer, extra) in peers {
            s.push_str(&peer_section(peer, extra, false));
        }
        s
    }

    /// The lab config of `me` with `peer` as its only peer and `keys` added to `[interface]`.
    #[track_caller]
    pub fn config_with_interface_keys(&self, me: &Node, peer: &Node, keys: &str) -> String {
        let text = self.config_text(me, &[(peer, &[])]);
        // The lab config ends [interface] where [dht] begins.
        let Some(at) = text.find("[dht]") else {
            self.fail("the lab config has no [dht] section to put interface keys before");
        };
        format!("{}{keys}\n{}", &text[..at], &text[at..])
    }

    /// The `[interface]` section of `me`'s config (writes the key file when `key_in_file`).
    fn interface_section(&self, me: &Node) -> String {
        let mut s = String::new();
        s.push_str("[interface]\n");
        s.push_str(&format!("name = \"{}\"\n", me.iface));
        if me.key_in_file {
            let key_path = self.dir.join(format!("{}.key", me.iface));
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&key_path)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", key_path.display()));
            writeln!(f, "{}", me.secret).expect("write key file");
            s.push_str(&format!("private_key_file = \"{}\"\n", key_path.display()));
        } else {
            s.push_str(&format!("private_key = \"{}\"\n", me.secret));
        }
        s.push_str(&format!("address = [\"{}/24\", \"{}/64\"]\n", me.v4, me.v6));
        s.push_str(&format!("listen_port = {}\n", me.port));
        s.push_str("mtu = 1420\n");
        s
    }
}

/// One `[[peer]]` section: public key, allowed_ips (overlay /32 and /128 plus `extra`) and, when
/// `with_endpoint`, the peer's static endpoint.
fn peer_section(peer: &Node, extra: &[&str], with_endpoint: bool) -> String {
    let mut allowed = vec![
        format!("\"{}/32\"", peer.v4),
        format!("\"{}/128\"", peer.v6),
    ];
    allowed.extend(extra.iter().map(|a| format!("\"{a}\"")));
    let mut s = String::from("\n[[peer]]\n");
    s.push_str(&format!("public_key = \"{}\"\n", peer.public));
    s.push_str(&format!("allowed_ips = [{}]\n", allowed.join(", ")));
    if with_endpoint {
        s.push_str(&format!("endpoint = \"{}:{}\"\n", peer.underlay, peer.port));
    }
    s
}
