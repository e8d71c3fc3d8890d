//! The tunnel's decisions for one interface: what to do with a packet read from the TUN device,
//! with a datagram from the network, and when timers fire.
//!
//! The shell hands in bytes and `now` and gets back what to do next. Work that one event
//! triggers for later (a handshake to send, staged packets to flush, a keepalive) waits in a
//! per-peer flag and comes out of `poll_transmit`, so no queue grows with traffic.

use crate::core::cookie::CookieMaker;
use crate::core::handshake::Mac1Key;
use crate::core::keys::{PublicKey, SecretKey};
use crate::core::limits::{
    ring_slot_bytes, COOKIE_REPLIES_BURST, COOKIE_REPLIES_PER_SECOND, COOKIE_REPLIES_RESERVE,
    EVENT_QUEUE, HANDSHAKE_OPS_BURST, HANDSHAKE_OPS_PER_SECOND, HANDSHAKE_OPS_RESERVE,
    PACE_GATE_MAX, PACE_GATE_SHARED, REKEY_TIMEOUT, SESSIONS_PER_PEER, TRANSPORT_OVERHEAD,
};
use crate::core::packet;
use crate::core::peer::{Path, Peer, PeerConfig, PeerId};
use crate::core::ratelimit::{Budget, RateLimiter};
use crate::core::routing::PrefixTable;
use crate::core::session::SendError;
use crate::core::stats::{DropCounters, DropReason};
use crate::core::wire::Message;
use core::time::Duration;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use transmit::note_sent;

mod discovery;
mod receive;
mod reconfigure;
mod relay;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_budget;
#[cfg(test)]
mod tests_relay;
#[cfg(test)]
mod tests_sessions;
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
    /// Forward packets between two of our peers when one asks (`[interface] relay`).
    pub serve_relay: bool,
    /// Pace peers after their loss reports (`[interface] pacing`).
    pub pacing: bool,
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
    /// No direct path answered (or the direct path went silent): the peer is now reached
    /// through `relay`.
    Relayed {
        peer: PublicKey,
        relay: PublicKey,
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
    /// Our static X25519 public key, to break ties between crossed handshakes.
    own_x25519: [u8; 32],
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
    /// Curve25519 work and cookie replies that initiations from all sources may cost.
    handshake_budget: Budget,
    cookie_budget: Budget,
    cookies: CookieMaker,
    serve_relay: bool,
    pacing: bool,
    /// What this node forwarded as a relay.
    relayed: RelayCounters,
    /// Where envelopes are built: a datagram wrapped for a relay, or forwarded by one.
    relay_scratch: Box<[u8]>,
    /// Where a datagram a relay delivered waits while it is handled.
    relay_inbox: Box<[u8]>,
    /// The peer whose pace the latest TUN packet ran into, the latest peer a packet went to
    /// unpaced and when, and when the current pause of the TUN reads began: together they say
    /// whether the device may pause.
    paced_peer: Option<PeerId>,
    unpaced_sent: Option<(PeerId, Duration)>,
    pause_began: Option<Duration>,
}

/// Packets and bytes this node forwarded for its peers as a relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayCounters {
    pub packets: u64,
    pub bytes: u64,
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
            own_x25519: *config.secret_key.public_key().x25519_bytes(),
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
            handshake_budget: Budget::new(
                HANDSHAKE_OPS_PER_SECOND,
                HANDSHAKE_OPS_BURST,
                HANDSHAKE_OPS_RESERVE,
            ),
            cookie_budget: Budget::new(
                COOKIE_REPLIES_PER_SECOND,
                COOKIE_REPLIES_BURST,
                COOKIE_REPLIES_RESERVE,
            ),
            cookies,
            serve_relay: config.serve_relay,
            pacing: config.pacing,
            relayed: RelayCounters::default(),
            relay_scratch: vec![0u8; ring_slot_bytes(config.mtu)].into_boxed_slice(),
            relay_inbox: vec![0u8; ring_slot_bytes(config.mtu)].into_boxed_slice(),
            paced_peer: None,
            unpaced_sent: None,
            pause_began: None,
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

    /// Whether this node forwards packets between its peers.
    pub fn serves_relay(&self) -> bool {
        self.serve_relay
    }

    /// Starts or stops forwarding for peers (a reload changed `[interface] relay`).
    pub fn set_serve_relay(&mut self, serve: bool) {
        self.serve_relay = serve;
    }

    /// Starts or stops pacing peers after their loss reports (a reload changed `[interface]
    /// pacing`). Stopping lifts every pace at once; reports we send are not affected.
    pub fn set_pacing(&mut self, pacing: bool) {
        self.pacing = pacing;
        if !pacing {
            for peer in &mut self.peers {
                peer.pacer.lift();
            }
        }
    }

    /// What this node forwarded as a relay.
    pub fn relayed(&self) -> RelayCounters {
        self.relayed
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

    /// Until when the shell should leave the TUN device unread, or None to read it now. It
    /// pauses only while the traffic read lately all went to paced peers and the latest of them
    /// is in debt: the kernel then drops the excess at the TUN queue, before we spend anything
    /// on it. A pause lasts until that peer has paid its debt and saved up its next burst, but
    /// never more than `PACE_GATE_MAX` without a packet read in between, since every other
    /// peer's packets wait in the same queue.
    pub fn tun_paused_until(&mut self, now: Duration) -> Option<Duration> {
        let unpaced_lately = |(id, at): (PeerId, Duration)| {
            let still_unpaced = self.peers.get(id).is_some_and(|p| p.pacer.rate().is_none());
            still_unpaced && now.saturating_sub(at) < PACE_GATE_SHARED
        };
        // Checked in this order because most of the time no peer is paced at all.
        let ready = match self.paced_peer.and_then(|id| self.peers.get(id)) {
            Some(peer) if !self.unpaced_sent.is_some_and(unpaced_lately) => {
                peer.pacer.ready_at(now)
            }
            _ => None,
        };
        let Some(ready) = ready else {
            self.pause_began = None;
            return None;
        };
        let began = *self.pause_began.get_or_insert(now);
        let limit = began + PACE_GATE_MAX;
        // Past the limit, one packet is read (and clears `pause_began`) before the next pause.
        (now < limit).then_some(ready.min(limit))
    }

    /// A datagram arrived from `from`. `out` receives the inner packet or the reply.
    pub fn handle_datagram(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now: Duration,
        out: &mut [u8],
    ) -> NetworkAction {
        let result = self.dispatch(Path::Direct(from), None, datagram, now, out);
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

    /// Our own underlay address changed (the host moved, or the NAT in front of it did): the
    /// peers we talk to would only notice after 15 s of unanswered data. Start a handshake with
    /// each of them now, sent to every address we know and, if unanswered, through a relay, so
    /// they learn where we are at once.
    pub fn underlay_changed(&mut self, now: Duration) {
        for id in 0..self.peers.len() {
            let peer = &mut self.peers[id];
            let in_use = peer.sending_session(now).is_some();
            if in_use && peer.handshake.is_none() {
                peer.sent_data_unanswered_since = None;
                self.want_initiation(id);
            }
        }
    }

    /// Fires due timers: handshake retries and give-ups, keepalives, session expiry. Call at
    /// least every `limits::TIMER_TICK`; then drain `poll_transmit`.
    pub fn handle_timers(&mut self, now: Duration) {
        let relays = self.usable_relays(now);
        for id in 0..self.peers.len() {
            self.peer_timers(id, relay::relay_among(relays, id), now);
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

    /// A datagram that came along `from`, directly or delivered by a relay that names its
    /// `relayed_sender`.
    fn dispatch(
        &mut self,
        from: Path,
        relayed_sender: Option<[u8; 32]>,
        datagram: &[u8],
        now: Duration,
        out: &mut [u8],
    ) -> Result<NetworkAction, (DropReason, Option<PeerId>)> {
        match (Message::parse(datagram), from) {
            (Err(_), _) => Err((DropReason::Malformed, None)),
            (Ok(Message::Initiation(m)), _) => {
                self.on_initiation(from, relayed_sender, m, now, out)
            }
            (Ok(Message::Response(m)), _) => self.on_response(from, m, now),
            (Ok(Message::CookieReply(m)), Path::Direct(_)) => self.on_cookie_reply(m, now),
            // We never answer a relayed initiation with a cookie, so none comes back that way.
            (Ok(Message::CookieReply(_)), Path::Relay(relay)) => {
                Err((DropReason::RelayRefused, Some(relay)))
            }
            (Ok(Message::Transport(m)), _) => self.on_transport(from, m, datagram.len(), now, out),
        }
    }

    fn encapsulate(
        &mut self,
        buf: &mut [u8],
        len: usize,
        now: Duration,
        out: &mut [u8],
    ) -> Result<TunAction, DropReason> {
        // A packet was read: a pause of the TUN reads, if any, is over.
        self.pause_began = None;
        if len > self.mtu || len > buf.len() {
            return Err(DropReason::TooLarge);
        }
        let header = packet::parse(&buf[..len]).map_err(|_| DropReason::Malformed)?;
        // Link-scoped packets stay off the tunnel unless a peer's allowed_ips name them more
        // specifically than a default route (babel or OSPF over the tunnel, as WireGuard does).
        if packet::is_link_scoped(header.destination)
            && self
                .routes
                .longest_prefix(header.destination)
                .is_none_or(|length| length <= 1)
        {
            return Err(DropReason::LinkLocal);
        }
        let id = self
            .routes
            .lookup(header.destination)
            .ok_or(DropReason::NoRoute)?;
        let mtu = self.mtu;
        let peer = self.peers.get_mut(id).ok_or(DropReason::NoRoute)?;
        if let (Some(path), Some(session)) = (peer.path(), peer.current.as_mut()) {
            // Charged as it goes on the wire: the receiver's report counts wire bytes, and for
            // small packets the framing is a large share.
            if !peer.pacer.admit(len + TRANSPORT_OVERHEAD, now) {
                peer.drops.count(DropReason::Paced);
                self.paced_peer = Some(id);
                return Err(DropReason::Paced);
            }
            match peer.pacer.rate() {
                Some(_) => self.paced_peer = Some(id),
                None => self.unpaced_sent = Some((id, now)),
            }
            match session.encrypt(buf, len, mtu, now, out) {
                Ok(written) => {
                    note_sent(peer, written, now, true);
                    self.rekey_if_due(id, now);
                    let transmit = self
                        .send_along(id, path, out, written, now)
                        .ok_or(DropReason::RelayNoPath)?;
                    return Ok(TunAction::WriteToNetwork {
                        to: transmit.to,
                        len: transmit.len,
                    });
                }
                Err(SendError::BufferTooSmall) => return Err(DropReason::TooLarge),
                Err(SendError::Expired) => {}
            }
        }
        let reachable = self.can_reach(id, now);
        let peer = self.peers.get_mut(id).ok_or(DropReason::NoRoute)?;
        if !reachable && peer.next.is_none() {
            peer.drops.count(DropReason::NoEndpoint);
            return Err(DropReason::NoEndpoint);
        }
        if peer.staged.push(&buf[..len], (), now).is_err() {
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
}
