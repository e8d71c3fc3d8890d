//! Discovery through the DHT, as decisions: which peer's record to look up next, and what to do
//! with a record that came back. The shell does the lookups and hands the answers in.

use super::Device;
use crate::core::backoff;
use crate::core::keys::PublicKey;
use crate::core::limits::{
    DHT_RESOLVE_FIRST_RETRY, DHT_RESOLVE_REFRESH, DHT_RESOLVE_RETRY, MAX_RECORD_TARGETS,
    RELAYED_LOOKUP_FIRST_RETRY, RELAYED_LOOKUP_INTERVAL,
};
use crate::core::peer::Peer;
use core::time::Duration;
use std::net::SocketAddr;

impl Device {
    /// The next peer whose record should be looked up now, with the newest sequence number
    /// already seen for it; marks it as asked. Call until None. Of the peers due, the one
    /// asked longest ago (never asked first) goes first: lookups run a few at a time, and
    /// unreachable peers early in the config would otherwise take every turn.
    pub fn next_lookup(&mut self, now: Duration) -> Option<(PublicKey, Option<i64>)> {
        let peer = self
            .peers
            .iter_mut()
            .filter(|p| lookup_due(p, now))
            .min_by_key(|p| p.discovery.last_lookup_at)?;
        peer.discovery.last_lookup_at = Some(now);
        Some((peer.config.public_key, peer.discovery.sequence))
    }

    /// A lookup of `peer` found no (newer) record: retry sooner than usual, then back off.
    pub fn record_missing(&mut self, peer: &PublicKey) {
        if let Some(peer) = self.peers.iter_mut().find(|p| &p.config.public_key == peer) {
            peer.discovery.empty_lookups = peer.discovery.empty_lookups.saturating_add(1);
        }
    }

    /// A verified record of `peer` arrived: remember its addresses, and if we have no working
    /// session, start a handshake to every address we know at once.
    pub fn record_found(
        &mut self,
        peer: &PublicKey,
        sequence: i64,
        candidates: &[SocketAddr],
        now: Duration,
    ) {
        let Some(id) = self.peers.iter().position(|p| &p.config.public_key == peer) else {
            return;
        };
        let peer = &mut self.peers[id];
        if peer.discovery.sequence.is_some_and(|seen| seen >= sequence) {
            return;
        }
        peer.discovery.sequence = Some(sequence);
        peer.discovery.record_at = Some(now);
        peer.discovery.empty_lookups = 0;
        peer.discovery.candidates = [None; MAX_RECORD_TARGETS];
        // An address the tunnel itself routes (a subnet behind a peer, an overlay address) is
        // no way to reach the peer: a handshake sent there would travel inside the tunnel.
        let routes = &self.routes;
        let usable = candidates
            .iter()
            .filter(|c| !tunnel_carries(routes, c.ip()));
        for (slot, address) in peer.discovery.candidates.iter_mut().zip(usable) {
            *slot = Some(*address);
        }
        let connected = peer.current.as_ref().is_some_and(|s| s.is_usable(now));
        if connected {
            if peer.relay_via.is_some() {
                // New addresses of a relayed peer: try them directly now, not at the next turn.
                peer.next_direct_try_at = Some(now);
            }
            return;
        }
        if peer.handshake.is_some() {
            // A handshake is already out: show the new addresses the same initiation now.
            peer.fanout_next = Some(0);
            self.enqueue(id);
        } else {
            self.want_initiation(id);
        }
    }
}

/// Whether our own packets to `ip` would travel inside the tunnel: a prefix of a peer in
/// `routes` covers it, other than a default route or a /1 half of one. Those make a full
/// tunnel, whose policy routing lets dhtun's own (marked) packets leave outside it.
pub(super) fn tunnel_carries<T: Copy + PartialEq>(
    routes: &crate::core::routing::PrefixTable<T>,
    ip: std::net::IpAddr,
) -> bool {
    routes.longest_prefix(ip).is_some_and(|length| length > 1)
}

/// A peer is looked up when we cannot reach it (no address at all, or a handshake that went
/// unanswered for a retry), at most every DHT_RESOLVE_RETRY, and otherwise every
/// DHT_RESOLVE_REFRESH to notice a move early.
fn lookup_due(peer: &Peer, now: Duration) -> bool {
    let since_last = peer.discovery.last_lookup_at.map(|t| now.saturating_sub(t));
    let connected = peer.current.as_ref().is_some_and(|s| s.is_usable(now));
    // A direct try of a relayed peer going unanswered is the normal case behind strict NATs,
    // not a sign of a move: relayed peers have their own pace below.
    let unanswered = peer.handshake.as_ref().is_some_and(|h| {
        !h.direct_only && now.saturating_sub(h.started_at) >= crate::core::limits::REKEY_TIMEOUT
    });
    // A session counts as working only while handshakes are answered: a peer that moved
    // leaves us a session that looks usable for up to three minutes.
    let stuck = unanswered || (!connected && !peer.reachable());
    let retry = match peer.discovery.empty_lookups {
        0 => DHT_RESOLVE_RETRY,
        n => backoff::doubling(DHT_RESOLVE_FIRST_RETRY, n - 1, DHT_RESOLVE_RETRY),
    };
    if let (Some(relayed_at), Some(elapsed), Some(last)) = (
        peer.relayed_at.filter(|_| peer.relay_via.is_some()),
        since_last,
        peer.discovery.last_lookup_at,
    ) {
        // The relay took over: the peer may have moved, so look once at once, then now and then.
        // The first look may come before a moved peer has republished, so look again soon,
        // doubling the wait up to RELAYED_LOOKUP_INTERVAL.
        let interval = last
            .saturating_sub(relayed_at)
            .clamp(RELAYED_LOOKUP_FIRST_RETRY, RELAYED_LOOKUP_INTERVAL);
        return last < relayed_at || elapsed >= interval;
    }
    match since_last {
        None => true,
        Some(elapsed) if stuck => elapsed >= retry,
        Some(elapsed) => elapsed >= DHT_RESOLVE_REFRESH,
    }
}
