//! What `poll_transmit` sends: handshake initiations, staged packets once a session exists, and
//! keepalives; plus the small helpers that queue that work and draw session indexes.

use super::{Device, Transmit};
use crate::core::handshake;
use crate::core::limits::{
    PUNCH_INTERVAL, REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER,
};
use crate::core::peer::{HandshakeAttempt, Path, Peer, PeerId};
use crate::core::wire;
use core::time::Duration;
use rand_chacha::rand_core::RngCore;

impl Device {
    /// One datagram of pending work for `id`, or None when the peer has nothing left to send.
    pub(super) fn next_for_peer(
        &mut self,
        id: PeerId,
        now: Duration,
        out: &mut [u8],
    ) -> Option<Transmit> {
        let peer = self.peers.get_mut(id)?;
        if peer.want_initiation {
            peer.want_initiation = false;
            if let Some(transmit) = self.send_initiation(id, now, out) {
                return Some(transmit);
            }
        }
        let peer = self.peers.get_mut(id)?;
        if let Some(transmit) = fan_out(peer, out) {
            return Some(transmit);
        }
        if peer.want_relay_copy {
            peer.want_relay_copy = false;
            if let Some(transmit) = self.relay_initiation_copy(id, now, out) {
                return Some(transmit);
            }
        }
        let mtu = self.mtu;
        let peer = self.peers.get_mut(id)?;
        let path = peer.path()?;
        let session = peer.current.as_mut().filter(|s| s.is_usable(now))?;
        let written = if let Some((packet, ())) = peer.staged.front() {
            let len = packet.len();
            self.scratch[..len].copy_from_slice(packet);
            peer.staged.pop_front();
            let written = session
                .encrypt(&mut self.scratch, len, mtu, now, out)
                .ok()?;
            note_sent(peer, written, now, true);
            written
        } else if let Some(report) = peer.pending_report.take() {
            let len = report.write(&mut self.scratch).ok()?;
            let written = session
                .encrypt(&mut self.scratch, len, mtu, now, out)
                .ok()?;
            note_sent(peer, written, now, false);
            peer.loss_meter.reports = peer.loss_meter.reports.saturating_add(1);
            written
        } else if peer.want_keepalive {
            peer.want_keepalive = false;
            let written = session.encrypt(&mut [], 0, mtu, now, out).ok()?;
            note_sent(peer, written, now, false);
            written
        } else {
            return None;
        };
        // Keepalives and staged packets count toward the rekey as much as packets read from
        // the TUN device: an initiator that only answers would else wait for the late rule on
        // received packets, 45 s on.
        self.rekey_if_due(id, now);
        self.send_along(id, path, out, written, now)
    }

    /// The latest initiation once more, through a relay: no direct address answered it.
    fn relay_initiation_copy(
        &mut self,
        id: PeerId,
        now: Duration,
        out: &mut [u8],
    ) -> Option<Transmit> {
        let relay = self.relay_for(id, now)?;
        let peer = self.peers.get_mut(id)?;
        out.get_mut(..wire::INITIATION_LEN)?
            .copy_from_slice(&peer.initiation_copy);
        if let Some(attempt) = peer.handshake.as_mut() {
            attempt.relayed = true;
        }
        peer.traffic.tx_bytes += wire::INITIATION_LEN as u64;
        peer.traffic.tx_packets += 1;
        self.send_along(id, Path::Relay(relay), out, wire::INITIATION_LEN, now)
    }

    fn send_initiation(&mut self, id: PeerId, now: Duration, out: &mut [u8]) -> Option<Transmit> {
        let local_index = self.fresh_index();
        let seed = self.seed();
        let jitter = Duration::from_millis(
            self.rng.next_u64() % (REKEY_TIMEOUT_JITTER.as_millis() as u64 + 1),
        );
        let timestamp = handshake::tai64n(self.wall_clock_at_zero + now);
        let peer = self.peers.get_mut(id)?;
        let direct_only = core::mem::take(&mut peer.want_direct_probe);
        // Directly when we know an address; through a relay only when we know none.
        let first = match peer.initiation_targets()[0] {
            Some(address) => Path::Direct(address),
            None if direct_only => return None,
            None => Path::Relay(self.relay_for(id, now)?),
        };
        let peer = self.peers.get_mut(id)?;
        let buf: &mut [u8; wire::INITIATION_LEN] =
            out.get_mut(..wire::INITIATION_LEN)?.try_into().ok()?;
        let pending = handshake::initiate(
            &self.secret_key,
            &peer.config.public_key,
            &peer.config.preshared_key,
            local_index,
            timestamp,
            seed,
            buf,
        )
        .ok()?;
        super::under_load::stamp_mac2(peer, buf, now);
        let started_at = peer.handshake.as_ref().map_or(now, |h| h.started_at);
        let old = peer.handshake.replace(HandshakeAttempt {
            pending: Some(pending),
            local_index,
            started_at,
            next_retry_at: now + REKEY_TIMEOUT + jitter,
            next_punch_at: now + PUNCH_INTERVAL,
            direct_only,
            relayed: matches!(first, Path::Relay(_)),
        });
        peer.traffic.tx_bytes += wire::INITIATION_LEN as u64;
        peer.traffic.tx_packets += 1;
        // The same bytes go to every other address we know; whichever answers wins.
        peer.initiation_copy.copy_from_slice(buf);
        peer.fanout_next = matches!(first, Path::Direct(_)).then_some(1);
        if let Some(old) = old {
            self.indexes.remove(&old.local_index);
        }
        self.indexes.insert(local_index, id);
        self.send_along(id, first, out, wire::INITIATION_LEN, now)
    }

    /// Queues a peer event for the shell; when the queue is full the event is dropped, since
    /// events only feed the log.
    pub(super) fn emit(&mut self, event: super::PeerEvent) {
        if self.events.len() < crate::core::limits::EVENT_QUEUE {
            self.events.push_back(event);
        }
    }

    /// Starts a handshake when the current session is due for a rekey (by age, for its
    /// initiator, or by messages sent) and none is under way; called after each datagram sent.
    pub(super) fn rekey_if_due(&mut self, id: PeerId, now: Duration) {
        let Some(peer) = self.peers.get(id) else {
            return;
        };
        let due = peer.current.as_ref().is_some_and(|s| {
            (s.we_initiated && s.age(now) >= REKEY_AFTER_TIME)
                || s.messages_sent() >= REKEY_AFTER_MESSAGES
        });
        if due && peer.handshake.is_none() {
            self.want_initiation(id);
        }
    }

    pub(super) fn want_initiation(&mut self, id: PeerId) {
        if let Some(peer) = self.peers.get_mut(id) {
            peer.want_initiation = true;
        }
        self.enqueue(id);
    }

    pub(super) fn enqueue(&mut self, id: PeerId) {
        if let Some(peer) = self.peers.get_mut(id) {
            if !peer.queued {
                peer.queued = true;
                self.work.push_back(id);
            }
        }
    }

    /// A random local index not in use. The table holds at most a few entries per peer, so a
    /// collision among 2^32 values is rare and a handful of draws always suffices.
    pub(super) fn fresh_index(&mut self) -> u32 {
        loop {
            let index = self.rng.next_u32();
            if !self.indexes.contains_key(&index) {
                return index;
            }
        }
    }

    pub(super) fn seed(&mut self) -> [u8; 32] {
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        seed
    }
}

/// The latest initiation, to the next address that has not had it yet.
fn fan_out(peer: &mut Peer, out: &mut [u8]) -> Option<Transmit> {
    let next = peer.fanout_next?;
    let targets = peer.initiation_targets();
    let Some(Some(to)) = targets.get(next).copied() else {
        peer.fanout_next = None;
        return None;
    };
    peer.fanout_next = Some(next + 1);
    out.get_mut(..wire::INITIATION_LEN)?
        .copy_from_slice(&peer.initiation_copy);
    peer.traffic.tx_bytes += wire::INITIATION_LEN as u64;
    peer.traffic.tx_packets += 1;
    Some(Transmit {
        to,
        len: wire::INITIATION_LEN,
    })
}

pub(super) fn note_sent(peer: &mut Peer, written: usize, now: Duration, carries_data: bool) {
    if carries_data {
        peer.last_data_at = Some(now);
        if peer.sent_data_unanswered_since.is_none() {
            peer.sent_data_unanswered_since = Some(now);
        }
    }
    peer.traffic.tx_bytes += written as u64;
    peer.traffic.tx_packets += 1;
    peer.last_sent_at = Some(now);
    peer.unanswered_data_at = None;
    peer.want_keepalive = false;
}
