//! Live reconfiguration: a new peer list replaces the old one while every peer that stays keeps
//! its sessions, handshake, staged packets, endpoint and counters.

use super::Device;
use crate::core::keys::PublicKey;
use crate::core::peer::{EndpointSource, Peer, PeerConfig};
use std::collections::{HashMap, VecDeque};

/// What a reconfiguration changed, for the reply to `dhtun reload`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconfigured {
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
    pub unchanged: usize,
}

impl Device {
    /// Replaces the peer list. Peers are matched by public key; a removed peer's sessions are
    /// forgotten at once, so its packets stop being accepted.
    pub fn reconfigure(&mut self, peers: Vec<PeerConfig>) -> Reconfigured {
        let mut summary = Reconfigured::default();
        // Paths name relays by position, which changes: remember them by key.
        let relay_keys: HashMap<PublicKey, PublicKey> = self
            .peers
            .iter()
            .filter_map(|p| {
                let relay = self.peers.get(p.relay_via?)?;
                Some((p.config.public_key, relay.config.public_key))
            })
            .collect();
        let mut old: HashMap<PublicKey, Peer> = self
            .peers
            .drain(..)
            .map(|peer| (peer.config.public_key, peer))
            .collect();
        let mut kept = Vec::with_capacity(peers.len());
        for config in peers {
            match old.remove(&config.public_key) {
                Some(mut peer) if peer.config == config => {
                    summary.unchanged += 1;
                    peer.queued = false;
                    kept.push(peer);
                }
                Some(mut peer) => {
                    summary.changed += 1;
                    apply_config(&mut peer, config);
                    peer.queued = false;
                    kept.push(peer);
                }
                None => {
                    summary.added += 1;
                    kept.push(Peer::new(config, self.mtu));
                }
            }
        }
        summary.removed = old.len();
        self.peers = kept;
        self.rebuild_lookups();
        // Peer ids moved: the one the TUN device last paused for may now be another peer.
        self.paced_peer = None;
        for id in 0..self.peers.len() {
            let relay = relay_keys
                .get(&self.peers[id].config.public_key)
                .and_then(|key| self.by_x25519.get(key.x25519_bytes()).copied())
                .filter(|&r| self.peers[r].config.relay);
            // A relay that is gone, or no longer a relay, leaves the peer without a path until
            // it is heard from again or a handshake finds one.
            self.peers[id].relay_via = relay;
        }
        summary
    }

    /// Routing table, key map, index map and work queue, derived again from `self.peers`.
    fn rebuild_lookups(&mut self) {
        let count = self.peers.len();
        self.routes = crate::core::routing::PrefixTable::new();
        self.by_x25519 = HashMap::with_capacity(count);
        self.indexes = HashMap::with_capacity(count * (crate::core::limits::SESSIONS_PER_PEER + 1));
        self.work = VecDeque::with_capacity(count);
        for (id, peer) in self.peers.iter_mut().enumerate() {
            for net in &peer.config.allowed_ips {
                self.routes.insert(*net, id);
            }
            self.by_x25519
                .insert(*peer.config.public_key.x25519_bytes(), id);
            for index in peer.local_indexes() {
                self.indexes.insert(index, id);
            }
            // Anything a peer still had to send goes back in the queue.
            if peer.want_initiation || peer.want_keepalive || !peer.staged.is_empty() {
                peer.queued = true;
                self.work.push_back(id);
            }
        }
    }
}

/// A new config for an existing peer: a newly configured endpoint replaces the current one; a
/// removed one leaves the peer where it was last heard from.
fn apply_config(peer: &mut Peer, config: PeerConfig) {
    if config.endpoint.is_some() && config.endpoint != peer.config.endpoint {
        peer.endpoint = config.endpoint;
        peer.endpoint_source = Some(EndpointSource::Static);
    }
    peer.config = config;
}
