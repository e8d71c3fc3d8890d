//! The tunnel's decisions for one interface: what to do with a packet read from the TUN device,
//! with a datagram from the network, and when timers fire.
//!
//! The shell hands in bytes and `now` and gets back what to do next. Work that one event
//! triggers for later (a handshake to send, staged packets to flush, a keepalive) waits in a
//! per-peer flag and comes out of `poll_transmit`, so no queue grows with traffic.

use crate::core::cookie::CookieMaker;
use crate::core::handshake::{self, Mac1Key};
use crate::core::keys::{PublicKey, SecretKey};
use crate::core::limits::{
    ring_slot_bytes, EVENT_QUEUE, KEEPALIVE_TIMEOUT, MIN_INITIATION_INTERVAL, REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME, REKEY_TIMEOUT, SESSIONS_PER_PEER,
};
use crate::core::packet;
use crate::core::peer::{Peer, PeerConfig, PeerId, SessionSlot};
use crate::core::ratelimit::RateLimiter;
use crate::core::routing::PrefixTable;
use crate::core::session::{ReceiveError, SendError, Session};
use crate::core::stats::{DropCounters, DropReason};
use crate::core::wire::{self, Initiation, Message, Response, Transport};
use core::time::Duration;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use transmit::note_sent;

mod discovery;
mod reconfigure;
#[cfg(test)]
mod tests;
mod timers;
mod transmit;
mod under_load;

pub use reconfigure::Reconfigured;

/// Everything the device needs to start.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    pub secret_key: SecretKey,
    pub mtu: usize,
    pub peers: Vec<PeerConfig>,
    /// Wall-clock time (since the Unix epoch) at `now == 0`; handshake timestamps must keep
    /// growing across restarts, so they come from the wall clock, not from `now`.
    pub wall_clock_at_zero: Duration,
    /// Seed for session indexes, jitter and ephemeral keys. The shell passes OS randomness;
    /// tests pass a constant and get a reproducible run.
    pub rng_seed: [u8; 32],
}

/// What the shell does with a packet read from the TUN device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunAction {
    /// Send `out[..len]` to `to`.
    WriteToNetwork {
        to: SocketAddr,
        len: usize,
    },
    /// Kept until the peer's handshake completes; call `poll_transmit`.
    Staged,
    Drop(DropReason),
}

/// What the shell does with a datagram from the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkAction {
    /// Write the inner packet `out[..len]` to the TUN device.
    WriteToTun {
        len: usize,
    },
    /// Send `out[..len]` to `to` (a handshake response).
    WriteToNetwork {
        to: SocketAddr,
        len: usize,
    },
    /// Nothing to write now; call `poll_transmit`, this may have released work.
    Consumed,
    Drop(DropReason),
}

/// Something about a peer an operator wants to know; the shell logs these. Never per packet:
/// each marks a change of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEvent {
    HandshakeCompleted {
        peer: PublicKey,
    },
    EndpointChanged {
        peer: PublicKey,
        endpoint: SocketAddr,
    },
    HandshakeGaveUp {
        peer: PublicKey,
    },
    SessionExpired {
        peer: PublicKey,
    },
}

/// A datagram `poll_transmit` wrote into the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub len: usize,
}

pub struct Device {
    secret_key: SecretKey,
    own_mac1: Mac1Key,
    mtu: usize,
    peers: Vec<Peer>,
    routes: PrefixTable<PeerId>,
    by_x25519: HashMap<[u8; 32], PeerId>,
    /// Local session index -> peer. At most SESSIONS_PER_PEER + 1 entries per peer.
    indexes: HashMap<u32, PeerId>,
    /// Peers with a flag set or staged packets to flush; each peer appears at most once.
    work: VecDeque<PeerId>,
    rng: ChaCha20Rng,
    wall_clock_at_zero: Duration,
    /// Scratch for re-encrypting a staged packet (padding is written in place).
    scratch: Box<[u8]>,
    drops: DropCounters,
    /// Peer events not yet taken by the shell; bounded, newest dropped when full.
    events: VecDeque<PeerEvent>,
    limiter: RateLimiter,
    cookies: CookieMaker,
}

impl Device {
    pub fn new(config: DeviceConfig) -> Self {
        let peer_count = config.peers.len();
        let mut routes = PrefixTable::new();
        let mut by_x25519 = HashMap::with_capacity(peer_count);
        let mut peers = Vec::with_capacity(peer_count);
        for (id, peer) in config.peers.into_iter().enumerate() {
            for net in &peer.allowed_ips {
                routes.insert(*net, id);
            }
            by_x25519.insert(*peer.public_key.x25519_bytes(), id);
            peers.push(Peer::new(peer, config.mtu));
        }
        let mut rng = ChaCha20Rng::from_seed(config.rng_seed);
        let mut limiter_key = [0u8; 16];
        rng.fill_bytes(&mut limiter_key);
        let mut cookie_secret = [0u8; 32];
        rng.fill_bytes(&mut cookie_secret);
        let limiter = RateLimiter::new(limiter_key);
        let cookies = CookieMaker::new(
            &config.secret_key.public_key(),
            cookie_secret,
            Duration::ZERO,
        );
        Self {
            own_mac1: Mac1Key::for_receiver(&config.secret_key.public_key()),
            secret_key: config.secret_key,
            mtu: config.mtu,
            peers,
            routes,
            by_x25519,
            indexes: HashMap::with_capacity(peer_count * (SESSIONS_PER_PEER + 1)),
            work: VecDeque::with_capacity(peer_count),
            rng,
            wall_clock_at_zero: config.wall_clock_at_zero,
            scratch: vec![0u8; ring_slot_bytes(config.mtu)].into_boxed_slice(),
            drops: DropCounters::default(),
            events: VecDeque::with_capacity(EVENT_QUEUE),
            limiter,
            cookies,
        }
    }

    pub fn secret_key(&self) -> &SecretKey {
        &self.secret_key
    }

    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    /// Counts a drop the shell decided on (e.g. a full ring).
    pub fn count_drop(&mut self, reason: DropReason) {
        self.drops.count(reason);
    }

    /// The oldest peer event not yet taken.
    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        self.events.pop_front()
    }

    /// Counts `n` drops the shell decided on.
    pub fn count_drops(&mut self, reason: DropReason, n: u64) {
        self.drops.add(reason, n);
    }

    /// The inner packet `buf[..len]` was read from the TUN device. `buf` must have room for
    /// padding (a ring slot); `out` receives the datagram to send.
    pub fn handle_tun_packet(
        &mut self,
        buf: &mut [u8],
        len: usize,
        now: Duration,
        out: &mut [u8],
    ) -> TunAction {
        match self.encapsulate(buf, len, now, out) {
            Ok(action) => action,
            Err(reason) => {
                self.drops.count(reason);
                TunAction::Drop(reason)
            }
        }
    }

    /// A datagram arrived from `from`. `out` receives the inner packet or the reply.
    pub fn handle_datagram(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now: Duration,
        out: &mut [u8],
    ) -> NetworkAction {
        let result = match Message::parse(datagram) {
            Err(_) => Err((DropReason::Malformed, None)),
            Ok(Message::Initiation(m)) => self.on_initiation(from, m, now, out),
            Ok(Message::Response(m)) => self.on_response(from, m, now),
            Ok(Message::CookieReply(m)) => self.on_cookie_reply(m, now),
            Ok(Message::Transport(m)) => self.on_transport(from, m, datagram.len(), now, out),
        };
        match result {
            Ok(action) => action,
            Err((reason, peer)) => {
                self.drops.count(reason);
                if let Some(peer) = peer.and_then(|id| self.peers.get_mut(id)) {
                    peer.drops.count(reason);
                }
                NetworkAction::Drop(reason)
            }
        }
    }

    /// Fires due timers: handshake retries and give-ups, keepalives, session expiry. Call at
    /// least every `limits::TIMER_TICK`; then drain `poll_transmit`.
    pub fn handle_timers(&mut self, now: Duration) {
        for id in 0..self.peers.len() {
            self.peer_timers(id, now);
        }
    }

    /// The next datagram this device wants sent, written into `out`; None when there is none.
    pub fn poll_transmit(&mut self, now: Duration, out: &mut [u8]) -> Option<Transmit> {
        while let Some(&id) = self.work.front() {
            if let Some(transmit) = self.next_for_peer(id, now, out) {
                return Some(transmit);
            }
            self.work.pop_front();
            if let Some(peer) = self.peers.get_mut(id) {
                peer.queued = false;
            }
        }
        None
    }

    fn encapsulate(
        &mut self,
        buf: &mut [u8],
        len: usize,
        now: Duration,
        out: &mut [u8],
    ) -> Result<TunAction, DropReason> {
        if len > self.mtu || len > buf.len() {
            return Err(DropReason::TooLarge);
        }
        let header = packet::parse(&buf[..len]).map_err(|_| DropReason::Malformed)?;
        let id = self
            .routes
            .lookup(header.destination)
            .ok_or(DropReason::NoRoute)?;
        let mtu = self.mtu;
        let peer = self.peers.get_mut(id).ok_or(DropReason::NoRoute)?;
        if let (Some(to), Some(session)) = (peer.endpoint, peer.current.as_mut()) {
            match session.encrypt(buf, len, mtu, now, out) {
                Ok(written) => {
                    let rekey = needs_rekey(session, now);
                    note_sent(peer, written, now, true);
                    if rekey && peer.handshake.is_none() {
                        self.want_initiation(id);
                    }
                    return Ok(TunAction::WriteToNetwork { to, len: written });
                }
                Err(SendError::BufferTooSmall) => return Err(DropReason::TooLarge),
                Err(SendError::Expired) => {}
            }
        }
        if !peer.reachable() && peer.next.is_none() {
            peer.drops.count(DropReason::NoEndpoint);
            return Err(DropReason::NoEndpoint);
        }
        if peer.staged.push(&buf[..len], ()).is_err() {
            peer.drops.count(DropReason::RingFull);
            return Err(DropReason::RingFull);
        }
        // A fresh unconfirmed session will be confirmed by the initiator's next packet; starting
        // a competing handshake now would only race it.
        let awaiting_confirmation = peer
            .next
            .as_ref()
            .is_some_and(|s| s.age(now) < REKEY_TIMEOUT);
        if peer.handshake.is_none() && !awaiting_confirmation {
            self.want_initiation(id);
        }
        Ok(TunAction::Staged)
    }

    fn on_initiation(
        &mut self,
        from: SocketAddr,
        message: Initiation<'_>,
        now: Duration,
        out: &mut [u8],
    ) -> Result<NetworkAction, (DropReason, Option<PeerId>)> {
        // Everything before the Curve25519 work must be cheap: mac1, load, rate.
        if !self.own_mac1.verify(message.mac1_input(), message.mac1()) {
            return Err((DropReason::Unauthenticated, None));
        }
        if self.limiter.note_initiation(now) {
            if self.cookies.needs_rotation(now) {
                let fresh = self.seed();
                self.cookies.rotate(now, fresh);
            }
            if !self
                .cookies
                .mac2_valid(from, message.mac2_input(), message.mac2())
            {
                return self.send_cookie(from, message, out);
            }
        }
        if !self.limiter.allow(from.ip(), now) {
            return Err((DropReason::RateLimited, None));
        }
        let seed = self.seed();
        let received =
            handshake::receive_initiation(&self.secret_key, &self.own_mac1, message, seed)
                .map_err(|_| (DropReason::Unauthenticated, None))?;
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
        let replaced = peer.next.replace(session).map(|s| s.local_index);
        peer.traffic.tx_bytes += wire::RESPONSE_LEN as u64;
        peer.traffic.tx_packets += 1;
        if let Some(old) = replaced {
            self.indexes.remove(&old);
        }
        self.indexes.insert(local_index, id);
        self.roam(id, from);
        Ok(NetworkAction::WriteToNetwork {
            to: from,
            len: wire::RESPONSE_LEN,
        })
    }

    /// An authenticated packet of peer `id` came from `from`: replies go there from now on,
    /// unless `from` is an address the tunnel itself routes (a copy of an initiation sent
    /// into the tunnel), which as an endpoint would wrap every packet again and again.
    fn roam(&mut self, id: PeerId, from: SocketAddr) {
        let Some(peer) = self.peers.get(id) else {
            return;
        };
        if peer.endpoint == Some(from) || self.routes.lookup(from.ip()).is_some() {
            return;
        }
        let key = peer.config.public_key;
        if self.peers[id].roam_to(from) {
            self.emit(PeerEvent::EndpointChanged {
                peer: key,
                endpoint: from,
            });
        }
    }

    /// The peer holding session or handshake index `local_index`.
    fn peer_by_index(
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

    fn on_response(
        &mut self,
        from: SocketAddr,
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
        // A response that fails costs only this initiation's state: the attempt stays, and
        // the retry timer sends a fresh initiation.
        let keys = pending
            .receive_response(&own_mac1, message)
            .map_err(|_| (DropReason::Unauthenticated, Some(id)))?;
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
        self.roam(id, from);
        Ok(NetworkAction::Consumed)
    }

    fn on_transport(
        &mut self,
        from: SocketAddr,
        message: Transport<'_>,
        wire_len: usize,
        now: Duration,
        out: &mut [u8],
    ) -> Result<NetworkAction, (DropReason, Option<PeerId>)> {
        let local_index = message.receiver();
        let (id, peer) = self.peer_by_index(local_index)?;
        let slot = peer
            .slot_of(local_index)
            .ok_or((DropReason::UnknownPeer, Some(id)))?;
        let session = peer
            .session_mut(slot)
            .ok_or((DropReason::UnknownPeer, Some(id)))?;
        let plain_len = session.decrypt(message, now, out).map_err(|e| {
            let reason = match e {
                ReceiveError::Replay => DropReason::Replay,
                ReceiveError::Unauthenticated => DropReason::Unauthenticated,
                ReceiveError::Expired => DropReason::Expired,
            };
            (reason, Some(id))
        })?;
        let initiator_should_rekey = session.we_initiated
            && session.age(now) >= REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT;
        let key = peer.config.public_key;
        peer.sent_data_unanswered_since = None;
        peer.traffic.rx_bytes += wire_len as u64;
        peer.traffic.rx_packets += 1;
        // After crossed handshakes the peer may send on the session it initiated while ours,
        // completed later, is current: keep ours, or both sides would end up sending on
        // sessions they did not initiate, and neither would rekey on time.
        let ours_is_newer = |peer: &Peer| match (&peer.current, &peer.next) {
            (Some(current), Some(next)) => {
                current.we_initiated
                    && current.is_usable(now)
                    && current.established_at > next.established_at
            }
            _ => false,
        };
        if slot == SessionSlot::Next && !ours_is_newer(peer) {
            if let Some(confirmed) = peer.next.take() {
                if let Some(old) = peer.install_current(confirmed) {
                    self.indexes.remove(&old);
                }
            }
            self.enqueue(id);
            self.emit(PeerEvent::HandshakeCompleted { peer: key });
        }
        self.roam(id, from);
        if initiator_should_rekey && self.peers[id].handshake.is_none() {
            self.want_initiation(id);
        }
        if plain_len == 0 {
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
        Ok(NetworkAction::WriteToTun {
            len: header.total_len,
        })
    }
}

fn needs_rekey(session: &Session, now: Duration) -> bool {
    (session.we_initiated && session.age(now) >= REKEY_AFTER_TIME)
        || session.messages_sent() >= REKEY_AFTER_MESSAGES
}
