//! Relays and paths: which path a peer's packets take (direct or through a relay peer), moving
//! between them as authenticated packets arrive, wrapping datagrams in envelopes for a relay,
//! and, when this node serves as a relay, forwarding envelopes between two of its peers.
//!
//! A relay forwards at once or drops: it never queues, stages or starts a handshake on behalf
//! of others, so relayed traffic obeys the same fixed rings as everything else.

use super::{Device, NetworkAction, PeerEvent, Transmit};
use crate::core::envelope::{self, Envelope, Kind};
use crate::core::limits::{DIRECT_PATH_SILENCE, DIRECT_RETRY_INTERVAL};
use crate::core::peer::{Path, PeerId};
use crate::core::stats::DropReason;
use core::ops::Range;
use core::time::Duration;

type HandlerResult = Result<NetworkAction, (DropReason, Option<PeerId>)>;

impl Device {
    /// The relay that could carry packets to `id` now: a peer configured as a relay (not `id`
    /// itself) that we reach directly with a usable session.
    pub(super) fn relay_for(&self, id: PeerId, now: Duration) -> Option<PeerId> {
        relay_among(self.usable_relays(now), id)
    }

    /// The first two relays we could use now: enough to find one for any peer (a relay cannot
    /// relay to itself), computed once for a sweep over all peers instead of once per peer.
    pub(super) fn usable_relays(&self, now: Duration) -> [Option<PeerId>; 2] {
        let mut usable = self.peers.iter().enumerate().filter_map(|(r, relay)| {
            let ok = relay.config.relay
                && relay.relay_via.is_none()
                && relay.endpoint.is_some()
                && relay.current.as_ref().is_some_and(|s| s.is_usable(now));
            ok.then_some(r)
        });
        [usable.next(), usable.next()]
    }

    /// Whether a handshake with `id` can be sent anywhere: directly or through a relay.
    pub(super) fn can_reach(&self, id: PeerId, now: Duration) -> bool {
        self.peers.get(id).is_some_and(|p| p.reachable()) || self.relay_for(id, now).is_some()
    }

    /// Sends the datagram `out[..len]` meant for peer `id` along `path`: as it is when direct,
    /// else wrapped in a forward envelope for the relay, written back into `out`.
    pub(super) fn send_along(
        &mut self,
        id: PeerId,
        path: Path,
        out: &mut [u8],
        len: usize,
        now: Duration,
    ) -> Option<Transmit> {
        match path {
            Path::Direct(to) => Some(Transmit { to, len }),
            Path::Relay(relay) => {
                let other = *self.peers.get(id)?.config.public_key.x25519_bytes();
                self.wrap_for(relay, Kind::Forward, &other, out, 0..len, now)
            }
        }
    }

    /// Puts the datagram at `out[datagram]` in an envelope of `kind` naming `other` and
    /// encrypts it into `out` for peer `to_peer`, whom we must reach directly with a usable
    /// session.
    fn wrap_for(
        &mut self,
        to_peer: PeerId,
        kind: Kind,
        other: &[u8; 32],
        out: &mut [u8],
        datagram: Range<usize>,
        now: Duration,
    ) -> Option<Transmit> {
        let datagram = out.get(datagram)?;
        let plain_len = envelope::write(&mut self.relay_scratch, kind, other, datagram).ok()?;
        let peer = self.peers.get_mut(to_peer)?;
        let to = peer.endpoint.filter(|_| peer.relay_via.is_none())?;
        let session = peer.current.as_mut().filter(|s| s.is_usable(now))?;
        let max_padded = self.relay_scratch.len();
        let written = session
            .encrypt(&mut self.relay_scratch, plain_len, max_padded, now, out)
            .ok()?;
        super::transmit::note_sent(peer, written, now, false);
        Some(Transmit { to, len: written })
    }

    /// An envelope arrived from peer `id` (decrypted into `out[..plain_len]`).
    pub(super) fn on_envelope(
        &mut self,
        id: PeerId,
        from: Path,
        plain_len: usize,
        now: Duration,
        out: &mut [u8],
    ) -> HandlerResult {
        // An envelope inside an envelope would let one packet bounce between relays.
        if matches!(from, Path::Relay(_)) {
            return Err((DropReason::RelayRefused, Some(id)));
        }
        let plaintext = out
            .get(..plain_len)
            .ok_or((DropReason::Malformed, Some(id)))?;
        let envelope =
            Envelope::new_checked(plaintext).map_err(|_| (DropReason::Malformed, Some(id)))?;
        let other = envelope.other();
        let datagram = envelope.datagram_range();
        match envelope.kind() {
            Kind::Forward => self.forward(id, &other, datagram, now, out),
            Kind::Deliver => self.deliver(id, other, datagram, now, out),
        }
    }

    /// We are the relay: peer `id` asks us to send `out[datagram]` on to the peer keyed
    /// `other`.
    fn forward(
        &mut self,
        id: PeerId,
        other: &[u8; 32],
        datagram: Range<usize>,
        now: Duration,
        out: &mut [u8],
    ) -> HandlerResult {
        if !self.serve_relay {
            return Err((DropReason::RelayRefused, Some(id)));
        }
        let target = *self
            .by_x25519
            .get(other)
            .filter(|&&t| t != id)
            .ok_or((DropReason::RelayNoPath, Some(id)))?;
        let sender = *self.peers[id].config.public_key.x25519_bytes();
        let len = datagram.len();
        let transmit = self
            .wrap_for(target, Kind::Deliver, &sender, out, datagram, now)
            .ok_or((DropReason::RelayNoPath, Some(id)))?;
        self.relayed.packets += 1;
        self.relayed.bytes += len as u64;
        Ok(NetworkAction::WriteToNetwork {
            to: transmit.to,
            len: transmit.len,
        })
    }

    /// Our relay `relay` delivers `out[datagram]` from the peer it names `sender`: handle it as
    /// a datagram that came along the relay path.
    fn deliver(
        &mut self,
        relay: PeerId,
        sender: [u8; 32],
        datagram: Range<usize>,
        now: Duration,
        out: &mut [u8],
    ) -> HandlerResult {
        if !self.peers[relay].config.relay {
            return Err((DropReason::RelayRefused, Some(relay)));
        }
        // The inbox, not the scratch: answering a relayed initiation wraps the response in
        // an envelope, which needs the scratch while this datagram is still being read.
        let mut inner = core::mem::take(&mut self.relay_inbox);
        let len = datagram.len();
        let result = match (inner.get_mut(..len), out.get(datagram)) {
            (Some(dst), Some(src)) => {
                dst.copy_from_slice(src);
                self.dispatch(Path::Relay(relay), Some(sender), &inner[..len], now, out)
            }
            _ => Err((DropReason::Malformed, Some(relay))),
        };
        self.relay_inbox = inner;
        result
    }

    /// An authenticated packet of peer `id` came along `from`. Direct packets always win: a
    /// relay is a detour. A relayed packet moves the peer onto the relay only when the direct
    /// path has been silent for a while, or when `confirmed` (a handshake just completed along
    /// it, so the other side chose that path).
    pub(super) fn roam(&mut self, id: PeerId, from: Path, now: Duration, confirmed: bool) {
        let Some(peer) = self.peers.get(id) else {
            return;
        };
        let key = peer.config.public_key;
        match from {
            Path::Direct(address) => {
                // An address the tunnel itself routes would wrap every packet again and again.
                let looping = peer.endpoint != Some(address)
                    && super::discovery::tunnel_carries(&self.routes, address.ip());
                if looping {
                    return;
                }
                let peer = &mut self.peers[id];
                peer.direct_heard_at = Some(now);
                let left_relay = peer.relay_via.take().is_some();
                if peer.roam_to(address) || left_relay {
                    self.emit(PeerEvent::EndpointChanged {
                        peer: key,
                        endpoint: address,
                    });
                }
            }
            Path::Relay(relay) => {
                // A relay that delivers its own packets to us is not a path to itself: taking it
                // as one would cut us off from it and from every peer we reach through it.
                if relay == id || peer.relay_via == Some(relay) {
                    return;
                }
                let direct_alive = peer.endpoint.is_some()
                    && peer
                        .direct_heard_at
                        .is_some_and(|t| now.saturating_sub(t) < DIRECT_PATH_SILENCE);
                if direct_alive && !confirmed {
                    return;
                }
                let relay_key = self.peers[relay].config.public_key;
                let peer = &mut self.peers[id];
                peer.relay_via = Some(relay);
                peer.relayed_at = Some(now);
                peer.next_direct_try_at = Some(now + DIRECT_RETRY_INTERVAL);
                self.emit(PeerEvent::Relayed {
                    peer: key,
                    relay: relay_key,
                });
            }
        }
    }
}

/// The relay of `relays` (see `Device::usable_relays`) that can carry packets to `id`.
pub(super) fn relay_among(relays: [Option<PeerId>; 2], id: PeerId) -> Option<PeerId> {
    relays.into_iter().flatten().find(|&r| r != id)
}
