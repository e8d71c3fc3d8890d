//! One peer's state: its configuration, its sessions (previous, current, next), the handshake in
//! flight, the packets staged while that handshake runs, its timers and its counters.

use crate::core::feedback::{LossMeter, LossReport};
use crate::core::handshake::PendingInitiation;
use crate::core::keys::{PresharedKey, PublicKey};
use crate::core::limits::{
    ring_slot_bytes, MAX_INITIATION_TARGETS, MAX_RECORD_TARGETS, STAGED_PACKETS_PER_PEER,
};
use crate::core::pacer::Pacer;
use crate::core::ratelimit::PeerBucket;
use crate::core::ring::PacketRing;
use crate::core::session::Session;
use crate::core::stats::{DropCounters, TrafficCounters};
use crate::core::wire::{INITIATION_LEN, TIMESTAMP_BYTES};
use core::time::Duration;
use ipnetwork::IpNetwork;
use std::net::SocketAddr;

/// Position of a peer in the device's peer list.
pub type PeerId = usize;

/// A peer as the config describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerConfig {
    pub public_key: PublicKey,
    pub preshared_key: PresharedKey,
    pub allowed_ips: Vec<IpNetwork>,
    pub endpoint: Option<SocketAddr>,
    pub persistent_keepalive: Option<Duration>,
    /// This peer may relay for us: we keep a session with it and reach others through it when
    /// no direct path answers.
    pub relay: bool,
}

/// How a datagram reaches a peer, or where one came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Straight to or from this underlay address.
    Direct(SocketAddr),
    /// Wrapped in an envelope, through the session with this relay peer.
    Relay(PeerId),
}

/// Where a peer's current endpoint came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointSource {
    /// The `endpoint` in the config.
    Static,
    /// A DHT record.
    Dht,
    /// The source address of the peer's latest authenticated packet.
    Roamed,
}

impl EndpointSource {
    pub fn name(self) -> &'static str {
        match self {
            EndpointSource::Static => "static",
            EndpointSource::Dht => "dht",
            EndpointSource::Roamed => "roamed",
        }
    }
}

/// Which of a peer's sessions a local index belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionSlot {
    Previous,
    Current,
    Next,
}

/// A handshake we started and keep retrying until it completes or the attempt times out.
pub struct HandshakeAttempt {
    /// The snow state of the latest initiation; None after a response failed to verify, until
    /// the retry timer sends a fresh initiation.
    pub pending: Option<PendingInitiation>,
    pub local_index: u32,
    pub started_at: Duration,
    pub next_retry_at: Duration,
    /// When the latest initiation goes to every direct address again (hole punching).
    pub next_punch_at: Duration,
    /// Only direct addresses may carry this attempt: it tests whether a relayed peer can now be
    /// reached directly, so an answer through the relay would prove nothing.
    pub direct_only: bool,
    /// The latest initiation also went through a relay.
    pub relayed: bool,
}

pub struct Peer {
    pub config: PeerConfig,
    pub endpoint: Option<SocketAddr>,
    pub endpoint_source: Option<EndpointSource>,
    pub previous: Option<Session>,
    pub current: Option<Session>,
    /// A session we answered, not yet confirmed by a packet from the initiator: we may not send
    /// on it until then, or a lost response would leave us talking into the void. After crossed
    /// handshakes that we win, also the peer's side of the crossing, which we receive on but
    /// never send on.
    pub next: Option<Session>,
    pub handshake: Option<HandshakeAttempt>,
    pub staged: PacketRing<()>,
    /// Greatest initiation timestamp accepted from this peer: older ones are replays.
    pub latest_timestamp: Option<[u8; TIMESTAMP_BYTES]>,
    pub last_initiation_at: Option<Duration>,
    pub last_handshake_at: Option<Duration>,
    pub last_sent_at: Option<Duration>,
    /// When we last received a packet carrying data (not a keepalive) with nothing sent since.
    pub unanswered_data_at: Option<Duration>,
    /// When we first sent data that nothing authenticated from the peer has followed: if that
    /// lasts, the peer has probably lost our session (a restart) and a new handshake is due.
    pub sent_data_unanswered_since: Option<Duration>,
    pub want_initiation: bool,
    pub want_keepalive: bool,
    /// Whether the peer is already in the device's work queue.
    pub queued: bool,
    pub traffic: TrafficCounters,
    pub drops: DropCounters,
    /// What the DHT said about this peer.
    pub discovery: Discovery,
    /// The latest initiation, resent to every other target of `initiation_targets`.
    pub initiation_copy: [u8; INITIATION_LEN],
    /// Index of the next target the latest initiation still goes to; None when all have it.
    pub fanout_next: Option<usize>,
    /// The cookie the peer gave us when it was under load; proves our address in mac2.
    pub cookie: Option<crate::core::cookie::Cookie>,
    /// The relay we reach this peer through; None when the path is direct (`endpoint`).
    pub relay_via: Option<PeerId>,
    /// When the relay in use took over.
    pub relayed_at: Option<Duration>,
    /// When an authenticated packet last came straight from the peer.
    pub direct_heard_at: Option<Duration>,
    /// When the next direct-only handshake is tried while the peer is reached through a relay.
    pub next_direct_try_at: Option<Duration>,
    /// The next handshake should be a direct-only probe (see `HandshakeAttempt::direct_only`).
    pub want_direct_probe: bool,
    /// The latest initiation should go through a relay too.
    pub want_relay_copy: bool,
    /// When data (not a keepalive) last went either way: NAT keepalives run while it is recent.
    pub last_data_at: Option<Duration>,
    /// How fast we may send to the peer, from its loss reports.
    pub pacer: Pacer,
    /// What we lost of the peer's packets, for the reports we send it.
    pub loss_meter: LossMeter,
    /// A loss report waiting for `poll_transmit`; a newer one replaces it.
    pub pending_report: Option<LossReport>,
    /// Rate limit of initiations from this peer's current endpoint (see `ratelimit`).
    pub initiation_bucket: PeerBucket,
    /// When a transport packet for a session we do not hold, from this peer's endpoint, last
    /// started a handshake (see `Device::on_unknown_session`).
    pub unknown_session_handshake_at: Option<Duration>,
    /// The initiation `next` answers came through a relay (it may be a late copy of one sent
    /// directly, so a crossing is judged over a longer window).
    pub next_relayed: bool,
}

/// A peer's DHT record as we last saw it, and when we asked.
#[derive(Debug, Clone, Copy, Default)]
pub struct Discovery {
    pub sequence: Option<i64>,
    pub record_at: Option<Duration>,
    pub candidates: [Option<SocketAddr>; MAX_RECORD_TARGETS],
    pub last_lookup_at: Option<Duration>,
    /// Lookups in a row that found no record: the retry interval doubles with each.
    pub empty_lookups: u32,
}

impl Peer {
    /// A peer with its staging buffer allocated; nothing later allocates per packet.
    pub fn new(config: PeerConfig, mtu: usize) -> Self {
        let endpoint = config.endpoint;
        Self {
            endpoint,
            endpoint_source: endpoint.map(|_| EndpointSource::Static),
            config,
            previous: None,
            current: None,
            next: None,
            handshake: None,
            staged: PacketRing::new(STAGED_PACKETS_PER_PEER, ring_slot_bytes(mtu)),
            latest_timestamp: None,
            last_initiation_at: None,
            last_handshake_at: None,
            last_sent_at: None,
            unanswered_data_at: None,
            sent_data_unanswered_since: None,
            want_initiation: false,
            want_keepalive: false,
            queued: false,
            traffic: TrafficCounters::default(),
            drops: DropCounters::default(),
            discovery: Discovery::default(),
            initiation_copy: [0; INITIATION_LEN],
            fanout_next: None,
            cookie: None,
            relay_via: None,
            relayed_at: None,
            direct_heard_at: None,
            next_direct_try_at: None,
            want_direct_probe: false,
            want_relay_copy: false,
            last_data_at: None,
            pacer: Pacer::default(),
            loss_meter: LossMeter::default(),
            pending_report: None,
            initiation_bucket: PeerBucket::default(),
            unknown_session_handshake_at: None,
            next_relayed: false,
        }
    }

    /// Where a handshake initiation goes: the current endpoint, the configured endpoint, and
    /// the DHT candidates, without repeats. The first that answers wins.
    pub fn initiation_targets(&self) -> [Option<SocketAddr>; MAX_INITIATION_TARGETS] {
        let mut targets = [None; MAX_INITIATION_TARGETS];
        let all = [self.endpoint, self.config.endpoint]
            .into_iter()
            .chain(self.discovery.candidates)
            .flatten();
        let mut n = 0;
        for address in all {
            if n < MAX_INITIATION_TARGETS && !targets[..n].contains(&Some(address)) {
                targets[n] = Some(address);
                n += 1;
            }
        }
        targets
    }

    /// Whether we know any direct address to reach this peer at.
    pub fn reachable(&self) -> bool {
        self.initiation_targets()[0].is_some()
    }

    /// Where a packet on the current session goes: through the relay in use, else directly.
    pub fn path(&self) -> Option<Path> {
        match self.relay_via {
            Some(relay) => Some(Path::Relay(relay)),
            None => self.endpoint.map(Path::Direct),
        }
    }

    /// The session holding `local_index`, if any.
    pub fn slot_of(&self, local_index: u32) -> Option<SessionSlot> {
        let holds = |s: &Option<Session>| s.as_ref().is_some_and(|s| s.local_index == local_index);
        if holds(&self.current) {
            Some(SessionSlot::Current)
        } else if holds(&self.previous) {
            Some(SessionSlot::Previous)
        } else if holds(&self.next) {
            Some(SessionSlot::Next)
        } else {
            None
        }
    }

    pub fn session_mut(&mut self, slot: SessionSlot) -> Option<&mut Session> {
        match slot {
            SessionSlot::Previous => self.previous.as_mut(),
            SessionSlot::Current => self.current.as_mut(),
            SessionSlot::Next => self.next.as_mut(),
        }
    }

    /// The session we send on, if it may still be used at `now`.
    pub fn sending_session(&mut self, now: Duration) -> Option<&mut Session> {
        self.current.as_mut().filter(|s| s.is_usable(now))
    }

    /// Makes `session` current; returns the local index of the session pushed out entirely.
    pub fn install_current(&mut self, session: Session) -> Option<u32> {
        let evicted = self.previous.take().map(|s| s.local_index);
        self.previous = self.current.replace(session);
        evicted
    }

    /// Records where an authenticated packet came from: replies go there from now on. Returns
    /// whether the endpoint changed.
    pub fn roam_to(&mut self, from: SocketAddr) -> bool {
        if self.endpoint == Some(from) {
            return false;
        }
        {
            self.endpoint = Some(from);
            self.endpoint_source = Some(if self.config.endpoint == Some(from) {
                EndpointSource::Static
            } else if self.discovery.candidates.contains(&Some(from)) {
                EndpointSource::Dht
            } else {
                EndpointSource::Roamed
            });
        }
        true
    }

    /// Local indexes of every session and handshake this peer holds.
    pub fn local_indexes(&self) -> impl Iterator<Item = u32> + '_ {
        [&self.previous, &self.current, &self.next]
            .into_iter()
            .filter_map(|s| s.as_ref().map(|s| s.local_index))
            .chain(self.handshake.as_ref().map(|h| h.local_index))
    }
}
