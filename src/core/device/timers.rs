//! Peer timers, after WireGuard's whitepaper (section 6): handshake retries and give-ups,
//! passive and persistent keepalives, and session expiry. Fired from `Device::handle_timers`
//! with `now`, never from a clock of their own.

use super::Device;
use crate::core::limits::{
    KEEPALIVE_TIMEOUT, REJECT_AFTER_TIME, REKEY_ATTEMPT_TIME, REKEY_TIMEOUT, SESSIONS_PER_PEER,
};
use crate::core::peer::PeerId;
use crate::core::stats::DropReason;
use core::time::Duration;

impl Device {
    pub(super) fn peer_timers(&mut self, id: PeerId, now: Duration) {
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
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
        if let Some(attempt) = &peer.handshake {
            if now >= attempt.next_retry_at {
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
        if (unanswered || stranded) && peer.handshake.is_none() && peer.reachable() {
            peer.sent_data_unanswered_since = None;
            peer.want_initiation = true;
            wake = true;
        }
        if has_session
            && peer
                .unanswered_data_at
                .is_some_and(|t| now.saturating_sub(t) >= KEEPALIVE_TIMEOUT)
        {
            peer.want_keepalive = true;
            wake = true;
        }
        if let Some(interval) = peer.config.persistent_keepalive {
            let idle = peer
                .last_sent_at
                .is_none_or(|t| now.saturating_sub(t) >= interval);
            if idle && peer.reachable() {
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
