//! The network side of the device: what an initiation, a response or a transport packet from
//! a peer (directly, or delivered by a relay) does to the peer's sessions and path.

use super::{Device, NetworkAction, PeerEvent};
use crate::core::envelope;
use crate::core::feedback::{self, LossReport};
use crate::core::handshake;
use crate::core::limits::{
    CROSSED_DIRECT_WINDOW, CROSSED_HANDSHAKE_WINDOW, KEEPALIVE_TIMEOUT, MIN_INITIATION_INTERVAL,
    REJECT_AFTER_TIME, REKEY_TIMEOUT, UNKNOWN_SESSION_HANDSHAKE_INTERVAL,
};
use crate::core::packet;
use crate::core::peer::{Path, Peer, PeerId, SessionSlot};
use crate::core::ratelimit::{RateLimiter, Source};
use crate::core::session::{ReceiveError, Session};
use crate::core::stats::DropReason;
use crate::core::wire::{self, Initiation, Response, Transport};
use core::time::Duration;
use std::net::SocketAddr;

impl Device {
    pub(super) fn on_initiation(
        &mut self,
        from: Path,
        relayed_sender: Option<[u8; 32]>,
        message: Initiation<'_>,
        now: Duration,
        out: &mut [u8],
    ) -> Result<NetworkAction, (DropReason, Option<PeerId>)> {
        // Everything before the Curve25519 work must be cheap: mac1, load, rate.
        if !self.own_mac1.verify(message.mac1_input(), message.mac1()) {
            return Err((DropReason::Unauthenticated, None));
        }
        // A relayed initiation comes in an authenticated session with our relay, so there is
        // no source address to prove with a cookie; it is rate-limited in a bucket of the relay
        // and the sender it names, which neither datagrams sent from the relay's address nor
        // another of the relay's peers can drain.
        // The sender must be one of our peers other than the relay: a relay naming made-up
        // senders would otherwise get a fresh bucket for each.
        let source = match (from, relayed_sender) {
            (Path::Direct(address), _) => Source::Address(address.ip()),
            (Path::Relay(relay), Some(sender))
                if self
                    .by_x25519
                    .get(&sender)
                    .is_some_and(|&peer| peer != relay) =>
            {
                Source::Relay { relay, sender }
            }
            (Path::Relay(relay), _) => return Err((DropReason::RelayRefused, Some(relay))),
        };
        let under_load = self.limiter.note_initiation(now);
        // Work for the peers we know, where we know them to be, is served first: it may spend
        // the reserve of the budgets that a flood from anywhere else cannot touch. A relayed
        // initiation came inside a session with one of our peers, naming another.
        let known = match from {
            Path::Direct(address) => self.peer_at(address),
            Path::Relay(_) => None,
        };
        let priority = known.is_some() || matches!(from, Path::Relay(_));
        if let (true, Path::Direct(address)) = (under_load, from) {
            if self.cookies.needs_rotation(now) {
                let fresh = self.seed();
                self.cookies.rotate(now, fresh);
            }
            if !self
                .cookies
                .mac2_valid(address, message.mac2_input(), message.mac2())
            {
                if !self.cookie_budget.take(1, priority, now) {
                    return Err((DropReason::CookieBudget, None));
                }
                return self.send_cookie(address, message, out);
            }
        }
        // A known peer's address has a bucket of its own: in the hashed table, a flood from
        // thousands of addresses would share (and drain) it.
        let allowed = match known.and_then(|id| self.peers.get_mut(id)) {
            Some(peer) => RateLimiter::allow_peer(&mut peer.initiation_bucket, now),
            None => self.limiter.allow(source, now),
        };
        if !allowed {
            return Err((DropReason::RateLimited, None));
        }
        if !self
            .handshake_budget
            .take(handshake::RECEIVE_INITIATION_OPS, priority, now)
        {
            return Err((DropReason::HandshakeBudget, None));
        }
        let seed = self.seed();
        let received =
            handshake::receive_initiation(&self.secret_key, &self.own_mac1, message, seed)
                .map_err(|_| (DropReason::Unauthenticated, None))?;
        // The bucket was the named sender's: a relay that names another than the initiator
        // would let one peer spend others' tokens.
        if let (Path::Relay(relay), Some(sender)) = (from, relayed_sender) {
            if sender != received.remote_x25519 {
                return Err((DropReason::RelayRefused, Some(relay)));
            }
        }
        let id = *self
            .by_x25519
            .get(&received.remote_x25519)
            .ok_or((DropReason::UnknownPeer, None))?;
        let local_index = self.fresh_index();
        let peer = self
            .peers
            .get_mut(id)
            .ok_or((DropReason::UnknownPeer, None))?;
        let newer = peer.latest_timestamp.is_none_or(|t| received.timestamp > t);
        let too_soon = peer
            .last_initiation_at
            .is_some_and(|t| now.saturating_sub(t) < MIN_INITIATION_INTERVAL);
        if !newer || too_soon {
            return Err((DropReason::StaleInitiation, Some(id)));
        }
        let timestamp = received.timestamp;
        let remote_index = received.sender_index;
        let response: &mut [u8; wire::RESPONSE_LEN] = out
            .get_mut(..wire::RESPONSE_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or((DropReason::TooLarge, Some(id)))?;
        // Already authenticated as our peer's: the rest of the work is charged, never refused.
        self.handshake_budget.charge(handshake::RESPOND_OPS, now);
        let keys = received
            .respond(
                &peer.config.public_key,
                &peer.config.preshared_key,
                local_index,
                response,
            )
            .map_err(|_| (DropReason::Unauthenticated, Some(id)))?;
        peer.latest_timestamp = Some(timestamp);
        peer.last_initiation_at = Some(now);
        peer.last_handshake_at = Some(now);
        let session = Session::new(local_index, remote_index, keys, now, false);
        peer.next_relayed = matches!(from, Path::Relay(_));
        // The answered session this one replaces may be the one the peer sends on after
        // crossed handshakes (we kept ours current): it takes `previous` if the peer sent on it
        // more lately than on that one, so its packets in flight still decrypt. One that never
        // carried a packet (the peer retried: our response was lost) must not push out the
        // session the peer may still be sending on. Its age cannot tell the two apart: a retry
        // comes REKEY_TIMEOUT after the try it replaces.
        let replaced = match peer.next.replace(session) {
            Some(old) if received_since(&old, &peer.previous) => {
                peer.previous.replace(old).map(|s| s.local_index)
            }
            old => old.map(|s| s.local_index),
        };
        peer.traffic.tx_bytes += wire::RESPONSE_LEN as u64;
        peer.traffic.tx_packets += 1;
        if let Some(old) = replaced {
            self.indexes.remove(&old);
        }
        self.indexes.insert(local_index, id);
        // The response goes back the way the initiation came. While a session works, the
        // path moves only once the initiator confirms the new session along it: an
        // initiation alone does not prove that our packets get back that way.
        let connected = self.peers[id]
            .current
            .as_ref()
            .is_some_and(|s| s.is_usable(now));
        if !connected {
            self.roam(id, from, now, true);
        }
        let transmit = self
            .send_along(id, from, out, wire::RESPONSE_LEN, now)
            .ok_or((DropReason::RelayNoPath, Some(id)))?;
        Ok(NetworkAction::WriteToNetwork {
            to: transmit.to,
            len: transmit.len,
        })
    }

    /// The peer whose current endpoint is `address`, if any. A scan of the peer list: it runs
    /// only for initiations whose mac1 is valid, and the list is as long as the config.
    pub(super) fn peer_at(&self, address: SocketAddr) -> Option<PeerId> {
        self.peers.iter().position(|p| p.endpoint == Some(address))
    }

    /// A transport packet for a session we do not hold came straight from a peer's current
    /// endpoint: one of us restarted and lost the session the peer still sends on (we, if we
    /// hold no session with it; else it). Waiting for its silence timer costs 15 s; a handshake
    /// now costs a round trip. Nothing else changes, and at most one handshake starts this way
    /// per UNKNOWN_SESSION_HANDSHAKE_INTERVAL, so a forged packet costs one initiation at most.
    /// A peer we heard from lately on the current session is left alone: packets still in
    /// flight on a session a rekey retired say nothing.
    fn on_unknown_session(&mut self, from: Path, now: Duration) {
        let Path::Direct(address) = from else {
            return;
        };
        let Some(id) = self.peer_at(address) else {
            return;
        };
        let peer = &mut self.peers[id];
        let heard_lately = peer
            .current
            .as_ref()
            .and_then(|s| s.last_received_at)
            .is_some_and(|t| now.saturating_sub(t) < REKEY_TIMEOUT);
        let too_soon = peer
            .unknown_session_handshake_at
            .is_some_and(|t| now.saturating_sub(t) < UNKNOWN_SESSION_HANDSHAKE_INTERVAL);
        if peer.handshake.is_some() || heard_lately || too_soon {
            return;
        }
        peer.unknown_session_handshake_at = Some(now);
        self.want_initiation(id);
    }

    /// The peer holding session or handshake index `local_index`.
    pub(super) fn peer_by_index(
        &mut self,
        local_index: u32,
    ) -> Result<(PeerId, &mut Peer), (DropReason, Option<PeerId>)> {
        let id = *self
            .indexes
            .get(&local_index)
            .ok_or((DropReason::UnknownPeer, None))?;
        let peer = self
            .peers
            .get_mut(id)
            .ok_or((DropReason::UnknownPeer, None))?;
        Ok((id, peer))
    }

    pub(super) fn on_response(
        &mut self,
        from: Path,
        message: Response<'_>,
        now: Duration,
    ) -> Result<NetworkAction, (DropReason, Option<PeerId>)> {
        let local_index = message.receiver();
        let own_mac1 = self.own_mac1;
        let (id, peer) = self.peer_by_index(local_index)?;
        let attempt = peer
            .handshake
            .as_mut()
            .filter(|h| h.local_index == local_index)
            .ok_or((DropReason::UnknownPeer, Some(id)))?;
        let pending = attempt
            .pending
            .take()
            .ok_or((DropReason::UnknownPeer, Some(id)))?;
        // A response that fails leaves the initiation waiting for the real one: anyone who saw
        // the initiation could otherwise cancel it with one forged datagram.
        let keys = match pending.receive_response(&own_mac1, message) {
            Ok(keys) => keys,
            Err((_, pending)) => {
                attempt.pending = pending;
                return Err((DropReason::Unauthenticated, Some(id)));
            }
        };
        peer.handshake = None;
        peer.last_handshake_at = Some(now);
        let key = peer.config.public_key;
        let session = Session::new(local_index, message.sender(), keys, now, true);
        let evicted = peer.install_current(session);
        // Confirm the session to the responder at once, even with nothing staged to send.
        peer.want_keepalive = true;
        if let Some(old) = evicted {
            self.indexes.remove(&old);
        }
        self.enqueue(id);
        self.emit(PeerEvent::HandshakeCompleted { peer: key });
        // A response proves the path both ways: our initiation went out along it, and the
        // answer came back the same way.
        self.roam(id, from, now, true);
        Ok(NetworkAction::Consumed)
    }

    pub(super) fn on_transport(
        &mut self,
        from: Path,
        message: Transport<'_>,
        wire_len: usize,
        now: Duration,
        out: &mut [u8],
    ) -> Result<NetworkAction, (DropReason, Option<PeerId>)> {
        let local_index = message.receiver();
        let own_x25519 = self.own_x25519;
        let (id, peer) = match self.peer_by_index(local_index) {
            Ok(found) => found,
            Err(unknown) => {
                self.on_unknown_session(from, now);
                return Err(unknown);
            }
        };
        let slot = peer
            .slot_of(local_index)
            .ok_or((DropReason::UnknownPeer, Some(id)))?;
        let session = peer
            .session_mut(slot)
            .ok_or((DropReason::UnknownPeer, Some(id)))?;
        let highest_before = session.highest_received();
        let plain_len = session.decrypt(message, now, out).map_err(|e| {
            let reason = match e {
                ReceiveError::Replay => DropReason::Replay,
                ReceiveError::Unauthenticated => DropReason::Unauthenticated,
                ReceiveError::Expired => DropReason::Expired,
            };
            (reason, Some(id))
        })?;
        let advance = session.highest_received().saturating_sub(highest_before);
        let lost = session.take_lost();
        // Only for the current session: packets still arriving on the previous one after a
        // rekey would otherwise start another handshake at once.
        let initiator_should_rekey = slot == SessionSlot::Current
            && session.we_initiated
            && session.age(now) >= REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT;
        let key = peer.config.public_key;
        peer.traffic.rx_bytes += wire_len as u64;
        peer.traffic.rx_packets += 1;
        // A peer that jumps its own counter makes a gap it chose; saturate rather than wrap.
        peer.traffic.rx_lost_packets = peer.traffic.rx_lost_packets.saturating_add(lost);
        if let Some(report) = peer.loss_meter.note(wire_len, advance, now) {
            peer.pending_report = Some(report);
            self.enqueue(id);
        }
        let peer = &mut self.peers[id];
        // After crossed handshakes each side holds a session it initiated (current) and one it
        // answered (next), and the peer sends on its own. Both must settle on one session, or
        // the next handshake would displace the one the peer still sends on and lose its
        // packets in flight, and a side left on a session it only answered would not rekey on
        // time: the session of the side with the lower key wins. The loser takes the winner's
        // session on its first packet whatever the order; the winner keeps its own against any
        // answered session not clearly newer, whichever of the two handshakes finished first
        // (jitter decides that). A clearly newer one is the peer's next handshake, not a
        // crossing, and replaces ours as any confirmed session does. So does one the peer kept
        // sending on for a window without a packet on ours since: it restarted and lost ours.
        // A crossing initiation that came directly arrives within the network's jitter of
        // our handshake; one through a relay may be a late copy.
        let own_key_wins = own_x25519 < *peer.config.public_key.x25519_bytes();
        let window = if peer.next_relayed {
            CROSSED_HANDSHAKE_WINDOW
        } else {
            CROSSED_DIRECT_WINDOW
        };
        let (won_crossing, peer_sends_on_ours) = match (&peer.current, &peer.next) {
            (Some(current), Some(next)) => (
                own_key_wins
                    && current.we_initiated
                    && current.is_usable(now)
                    && next.established_at < current.established_at + window
                    && current.established_at < next.established_at + window,
                next.age(now) < window
                    || current
                        .last_received_at
                        .is_some_and(|t| t >= next.established_at),
            ),
            _ => (false, false),
        };
        let confirms = slot == SessionSlot::Next && !(won_crossing && peer_sends_on_ours);
        // A crossing we won but give up (the peer restarted, or our packets to it were lost
        // for the whole window) leaves us on a session we only answered, and the peer may be
        // on one it only answered too: neither would rekey on age. So we start a handshake.
        let rekey_after_confirming = confirms && won_crossing;
        // A packet on a session we do not send on does not answer our data: the unanswered-data
        // rule must still see a peer that lost our session.
        if slot != SessionSlot::Next || confirms {
            peer.sent_data_unanswered_since = None;
        }
        if confirms {
            if let Some(confirmed) = peer.next.take() {
                if let Some(old) = peer.install_current(confirmed) {
                    self.indexes.remove(&old);
                }
            }
            // The peer's handshake gave us a session both sides hold: finishing ours too would
            // only replace it (WireGuard, too, stops retrying once a handshake completes), and
            // a loser of crossed handshakes would go back to its own session on a late response
            // while the winner stays on its own. A direct probe stays unless this packet came
            // directly: it tests a path, not the session.
            let probe_pending = peer.handshake.as_ref().is_some_and(|h| h.direct_only)
                && matches!(from, Path::Relay(_));
            if !probe_pending {
                // Also an initiation asked for but not sent yet (a rekey due on the session
                // this one replaces).
                peer.want_initiation = false;
                peer.want_direct_probe = false;
                peer.fanout_next = None;
                peer.want_relay_copy = false;
                if let Some(attempt) = peer.handshake.take() {
                    self.indexes.remove(&attempt.local_index);
                }
            }
            self.enqueue(id);
            self.emit(PeerEvent::HandshakeCompleted { peer: key });
            if rekey_after_confirming && self.peers[id].handshake.is_none() {
                self.want_initiation(id);
            }
        }
        self.roam(id, from, now, confirms);
        if initiator_should_rekey && self.peers[id].handshake.is_none() {
            self.want_initiation(id);
        }
        if plain_len == 0 {
            return Ok(NetworkAction::Consumed);
        }
        if envelope::is_envelope(&out[..plain_len]) {
            return self.on_envelope(id, from, plain_len, now, out);
        }
        if feedback::is_report(&out[..plain_len]) {
            let report = LossReport::parse(&out[..plain_len])
                .map_err(|_| (DropReason::Malformed, Some(id)))?;
            let pacer = &mut self.peers[id].pacer;
            if self.pacing {
                pacer.on_report(&report, now);
            } else {
                pacer.reports = pacer.reports.saturating_add(1);
            }
            return Ok(NetworkAction::Consumed);
        }
        let header =
            packet::parse(&out[..plain_len]).map_err(|_| (DropReason::Malformed, Some(id)))?;
        if self.routes.lookup(header.source) != Some(id) {
            return Err((DropReason::BadSource, Some(id)));
        }
        let peer = &mut self.peers[id];
        if peer.unanswered_data_at.is_none() {
            peer.unanswered_data_at = Some(now);
        }
        peer.last_data_at = Some(now);
        Ok(NetworkAction::WriteToTun {
            len: header.total_len,
        })
    }
}

/// Whether `session` received a packet after the last one `other` received, if any.
fn received_since(session: &Session, other: &Option<Session>) -> bool {
    let other = other.as_ref().and_then(|s| s.last_received_at);
    session
        .last_received_at
        .is_some_and(|t| other.is_none_or(|o| t > o))
}
