//! Peer timers, after WireGuard's whitepaper (section 6): handshake retries and give-ups,
//! passive and persistent keepalives, and session expiry; and for NATs: punching (resending an
//! initiation to every direct address), falling back to a relay, trying a relayed peer
//! directly again, and keepalives that hold NAT mappings open. Fired from
//! `Device::handle_timers` with `now`, never from a clock of their own.

use super::Device;
use crate::core::limits::{
    DIRECT_RETRY_INTERVAL, KEEPALIVE_TIMEOUT, NAT_KEEPALIVE, NAT_KEEPALIVE_IDLE, PUNCH_INTERVAL,
    REJECT_AFTER_TIME, REKEY_ATTEMPT_TIME, REKEY_TIMEOUT, RELAY_FALLBACK_AFTER, SESSIONS_PER_PEER,
};
use crate::core::peer::PeerId;
use crate::core::stats::DropReason;
use core::time::Duration;

impl Device {
    /// `relay` is the relay that could carry packets to this peer now, if any.
    pub(super) fn peer_timers(&mut self, id: PeerId, relay: Option<PeerId>, now: Duration) {
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        let reachable = peer.reachable() || relay.is_some();
        let key = peer.config.public_key;
        let current_expired = peer
            .current
            .as_ref()
            .is_some_and(|s| s.age(now) >= REJECT_AFTER_TIME);
        let mut gave_up = false;
        let mut dead_indexes: [Option<u32>; SESSIONS_PER_PEER + 1] = [None; SESSIONS_PER_PEER + 1];
        for (i, slot) in [&mut peer.previous, &mut peer.current, &mut peer.next]
            .into_iter()
            .enumerate()
        {
            if slot
                .as_ref()
                .is_some_and(|s| s.age(now) >= REJECT_AFTER_TIME)
            {
                dead_indexes[i] = slot.take().map(|s| s.local_index);
            }
        }
        let mut wake = false;
        if let Some(attempt) = &mut peer.handshake {
            let unanswered = attempt.pending.is_some();
            if unanswered && now >= attempt.next_punch_at && now < attempt.next_retry_at {
                attempt.next_punch_at = now + PUNCH_INTERVAL;
                peer.fanout_next = Some(0);
                wake = true;
            }
            let fallback_due = now.saturating_sub(attempt.started_at) >= RELAY_FALLBACK_AFTER;
            let relay_due = fallback_due && !attempt.direct_only && !attempt.relayed;
            if unanswered && relay_due && relay.is_some() {
                attempt.relayed = true;
                peer.want_relay_copy = true;
                wake = true;
            }
        }
        if let Some(attempt) = &peer.handshake {
            if attempt.direct_only && now >= attempt.next_retry_at {
                // The relayed peer did not answer directly: stay on the relay, try again later.
                dead_indexes[SESSIONS_PER_PEER] = Some(attempt.local_index);
                peer.handshake = None;
                peer.next_direct_try_at = Some(now + DIRECT_RETRY_INTERVAL);
            } else if now >= attempt.next_retry_at {
                if now.saturating_sub(attempt.started_at) >= REKEY_ATTEMPT_TIME {
                    dead_indexes[SESSIONS_PER_PEER] = Some(attempt.local_index);
                    peer.handshake = None;
                    let dropped = peer.staged.len() as u64;
                    peer.staged.clear();
                    peer.drops.add(DropReason::HandshakeTimeout, dropped);
                    self.drops.add(DropReason::HandshakeTimeout, dropped);
                    gave_up = true;
                } else {
                    peer.want_initiation = true;
                    wake = true;
                }
            }
        }
        let has_session = peer.current.as_ref().is_some_and(|s| s.is_usable(now));
        // Data went out and nothing came back for a keepalive interval and a retry: the peer
        // has likely lost our session (it restarted), so stop talking into the void.
        let unanswered = peer
            .sent_data_unanswered_since
            .is_some_and(|t| now.saturating_sub(t) >= KEEPALIVE_TIMEOUT + REKEY_TIMEOUT);
        // Packets staged while waiting for a responder session that was never confirmed (the
        // confirming packet was lost) would otherwise wait forever.
        let stranded = !peer.staged.is_empty()
            && !has_session
            && peer
                .next
                .as_ref()
                .is_none_or(|s| s.age(now) >= REKEY_TIMEOUT);
        if (unanswered || stranded) && peer.handshake.is_none() && reachable {
            peer.sent_data_unanswered_since = None;
            peer.want_initiation = true;
            wake = true;
        }
        let direct_try_due = peer.next_direct_try_at.is_some_and(|t| now >= t);
        if peer.relay_via.is_some() && direct_try_due && peer.handshake.is_none() {
            peer.next_direct_try_at = Some(now + DIRECT_RETRY_INTERVAL);
            if has_session && peer.reachable() {
                peer.want_direct_probe = true;
                peer.want_initiation = true;
                wake = true;
            }
        }
        if has_session
            && peer
                .unanswered_data_at
                .is_some_and(|t| now.saturating_sub(t) >= KEEPALIVE_TIMEOUT)
        {
            peer.want_keepalive = true;
            wake = true;
        }
        // NAT mappings close after about 30 s of silence: a relay must stay reachable at any
        // time, and a peer in use must not lose its path between two bursts of data.
        let in_use = peer
            .last_data_at
            .is_some_and(|t| now.saturating_sub(t) < NAT_KEEPALIVE_IDLE);
        let nat_keepalive = (peer.config.relay || (in_use && has_session)).then_some(NAT_KEEPALIVE);
        let keepalive = match (peer.config.persistent_keepalive, nat_keepalive) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(interval) = keepalive {
            let idle = peer
                .last_sent_at
                .is_none_or(|t| now.saturating_sub(t) >= interval);
            if idle && reachable {
                if has_session {
                    peer.want_keepalive = true;
                } else if peer.handshake.is_none() {
                    peer.want_initiation = true;
                }
                wake = true;
            }
        }
        for index in dead_indexes.into_iter().flatten() {
            self.indexes.remove(&index);
        }
        if wake {
            self.enqueue(id);
        }
        if current_expired {
            self.emit(super::PeerEvent::SessionExpired { peer: key });
        }
        if gave_up {
            self.emit(super::PeerEvent::HandshakeGaveUp { peer: key });
        }
    }
}
