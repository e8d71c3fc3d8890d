//! Our own outside address: the public IP and port of the tunnel's UDP socket as the DHT nodes
//! see it (its reflexive address), learnt by pinging them from that socket.
//!
//! The DHT socket's public address is not enough: a NAT maps every inner socket to an outer
//! port of its own, so only a packet from the tunnel socket itself tells which port peers must
//! send to. Every DHT node that implements BEP 42 answers a KRPC `ping` with the `ip` field that
//! says where the query came from; mainline's server (and so `dhtun dht-node`) does.
//!
//! The [`Reflector`] pings each of a fixed list of nodes (the DHT bootstrap nodes, resolved by
//! the shell) at start, retries quickly while they do not answer, and refreshes every
//! `REFLECTOR_REFRESH`: a NAT's mapping changes when the host moves, and the pings also keep the
//! mapping they measure alive; the shell also calls [`Reflector::refresh`] when the host's
//! addresses change. Only an answer from a node we pinged, carrying the transaction id
//! of the probe outstanding there, counts. When nodes disagree about our port for the same IP,
//! the NAT picks a port per destination, and a peer's packets will not reach the port we
//! publish: [`Reflector::port_varies`] says so.
//!
//! Any node can answer with any address, so one node's word is not enough: an IP is adopted
//! only once `REFLECTOR_QUORUM` nodes at different IPs report it (several ports of one host are
//! one witness). Handshakes are authenticated, so a lie would only plant an address that leads
//! nowhere, but peers would spend handshakes on it. The exception is a list with a single
//! node's IP in it (a private network with one bootstrap node): nobody could confirm it, and
//! the operator chose to trust that node, so its answer alone counts. The public IP that
//! mainline's DHT socket learns from the nodes answering its own queries (many of them, on the
//! public DHT) counts as one more witness while no answer contradicts it, so a node whose other
//! reflectors are down can still be confirmed. In a private DHT that one node may be all that
//! answers mainline too, and then confirms itself: a known limit.

pub mod krpc;

use crate::core::backoff;
use crate::core::limits::{
    MAX_REFLECTORS, REFLECTOR_ANSWER_LIFETIME, REFLECTOR_FIRST_RETRY, REFLECTOR_QUORUM,
    REFLECTOR_REFRESH,
};
use crate::core::record::is_usable_address;
use core::time::Duration;
use krpc::{KrpcError, PingResponse, NODE_ID_BYTES, TRANSACTION_ID_BYTES};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::net::{IpAddr, SocketAddr};

pub use krpc::{is_krpc, PING_BYTES};

/// What a datagram from the network did to the reflexive address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reflected {
    /// A node answered and the address we publish is now this one (new or changed).
    Learned(SocketAddr),
    /// A node answered; the address we publish stays as it was (also while too few nodes
    /// agree on one to publish any).
    Unchanged,
    /// Not an answer we were waiting for: count it and forget it.
    Drop(ReflectDrop),
}

/// Why a KRPC datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReflectDrop {
    /// Not a usable ping response.
    Malformed(KrpcError),
    /// A response from a node we did not ping, or with no probe outstanding there, or with
    /// another transaction id: a late answer, a replay or a forgery.
    Unsolicited,
    /// A response naming an address no peer could send to (unspecified, multicast, ...).
    UnusableAddress,
}

/// Learns the tunnel socket's reflexive address from a fixed set of DHT nodes.
pub struct Reflector {
    /// One per node, fixed at construction: at most `MAX_REFLECTORS`.
    slots: Vec<Slot>,
    node_id: [u8; NODE_ID_BYTES],
    rng: ChaCha20Rng,
    /// Nodes at different IPs that must report an IP before it is adopted.
    quorum: usize,
    /// The public IP mainline's DHT socket reports: one more witness (see the module doc).
    dht_public_ip: Option<IpAddr>,
    /// The last `refresh`: answers from before it say where we were, not where we are.
    refreshed_at: Option<Duration>,
    address: Option<SocketAddr>,
    port_varies: bool,
}

impl Reflector {
    /// A reflector asking `nodes` (duplicates dropped, at most `MAX_REFLECTORS` kept), starting
    /// at `now`. `rng_seed` makes the node id and the transaction ids.
    pub fn new(nodes: &[SocketAddr], rng_seed: [u8; 32], now: Duration) -> Self {
        let mut slots: Vec<Slot> = Vec::with_capacity(nodes.len().min(MAX_REFLECTORS));
        for &to in nodes {
            if slots.len() < MAX_REFLECTORS && !slots.iter().any(|s| s.to == to) {
                slots.push(Slot::new(to, now));
            }
        }
        let mut rng = ChaCha20Rng::from_seed(rng_seed);
        let mut node_id = [0u8; NODE_ID_BYTES];
        rng.fill_bytes(&mut node_id);
        let node_ips = slots
            .iter()
            .enumerate()
            .filter(|(i, s)| !slots[..*i].iter().any(|e| e.to.ip() == s.to.ip()))
            .count();
        Self {
            slots,
            node_id,
            rng,
            quorum: node_ips.clamp(1, REFLECTOR_QUORUM),
            dht_public_ip: None,
            refreshed_at: None,
            address: None,
            port_varies: false,
        }
    }

    /// The tunnel socket's reflexive address, when nodes told us recently: an IP that
    /// `REFLECTOR_QUORUM` witnesses agree on (nodes at different IPs, or the DHT's public IP
    /// when no node contradicts it; one node when only one is asked), with the port most of the
    /// nodes saw.
    pub fn address(&self) -> Option<SocketAddr> {
        self.address
    }

    /// Takes in the public IP the DHT socket currently reports, as one more witness for the IP
    /// the nodes report; the port still comes from their answers.
    pub fn set_dht_public_ip(&mut self, ip: Option<IpAddr>) {
        if ip != self.dht_public_ip {
            self.dht_public_ip = ip;
            self.elect();
        }
    }

    /// Whether two nodes saw different ports for our IP: the NAT maps per destination, so the
    /// port we publish is not the one a peer's packets would reach, and a direct path is
    /// unlikely.
    pub fn port_varies(&self) -> bool {
        self.port_varies
    }

    /// The next ping that is due: writes it into `out` and returns where it goes and its
    /// length. Call until it returns `None`. Also forgets answers too old to trust.
    pub fn poll_transmit(&mut self, now: Duration, out: &mut [u8]) -> Option<(SocketAddr, usize)> {
        self.expire(now);
        let slot = self.slots.iter_mut().find(|s| s.next_at <= now)?;
        let mut transaction_id = [0u8; TRANSACTION_ID_BYTES];
        self.rng.fill_bytes(&mut transaction_id);
        let len = krpc::encode_ping(transaction_id, &self.node_id, out)?;
        slot.pending = Some(transaction_id);
        slot.next_at = now + retry_delay(slot.unanswered);
        slot.unanswered = slot.unanswered.saturating_add(1);
        Some((slot.to, len))
    }

    /// Asks every node again now, as at start: the host's addresses changed, so the NAT in
    /// front of it, and our outside address, may have too. Answers already held stay until new
    /// ones replace them or they expire.
    pub fn refresh(&mut self, now: Duration) {
        self.refreshed_at = Some(now);
        for slot in &mut self.slots {
            slot.next_at = now;
            slot.unanswered = 0;
        }
    }

    /// Handles a KRPC datagram (see [`is_krpc`]) that came from `from`.
    pub fn handle_datagram(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now: Duration,
    ) -> Reflected {
        let response = match PingResponse::new_checked(datagram) {
            Ok(response) => response,
            Err(e) => return Reflected::Drop(ReflectDrop::Malformed(e)),
        };
        let Some(slot) = self.slots.iter_mut().find(|s| {
            s.to == from
                && s.pending
                    .is_some_and(|t| t[..] == *response.transaction_id())
        }) else {
            return Reflected::Drop(ReflectDrop::Unsolicited);
        };
        let reflexive = response.reflexive();
        if !is_usable_address(reflexive.ip()) {
            return Reflected::Drop(ReflectDrop::UnusableAddress);
        }
        slot.pending = None;
        slot.unanswered = 0;
        slot.next_at = now + REFLECTOR_REFRESH;
        slot.answer = Some((reflexive, now));
        let before = self.address;
        self.elect();
        match self.address {
            Some(address) if before != Some(address) => Reflected::Learned(address),
            _ => Reflected::Unchanged,
        }
    }

    /// Forgets answers older than `REFLECTOR_ANSWER_LIFETIME`.
    fn expire(&mut self, now: Duration) {
        let mut expired = false;
        for slot in &mut self.slots {
            if slot
                .answer
                .is_some_and(|(_, at)| now.saturating_sub(at) >= REFLECTOR_ANSWER_LIFETIME)
            {
                slot.answer = None;
                expired = true;
            }
        }
        if expired {
            self.elect();
        }
    }

    /// Picks the IP most nodes report, if at least `quorum` do, then the port most of those
    /// saw for it. Ports differ only behind a NAT that maps per destination, where no port is
    /// right for every peer and `port_varies` warns. A tie keeps the current address, so two
    /// nodes that disagree do not make it flip, else goes to the node listed first.
    fn elect(&mut self) {
        let answers = || self.slots.iter().filter_map(|s| s.answer.map(|(a, _)| a));
        // mainline takes its public IP from the nodes answering one lookup, as few as one, and
        // it changes between lookups: it only tips an IP that no answer contradicts, or the
        // address would follow it back and forth when nodes disagree. An answer from before the
        // last refresh (a move) contradicts nothing: it tells where we were.
        let since_refresh = self.refreshed_at.unwrap_or_default();
        let witness = self.dht_public_ip.filter(|&ip| {
            self.slots
                .iter()
                .filter_map(|s| s.answer)
                .filter(|&(_, at)| at >= since_refresh)
                .all(|(a, _)| a.ip() == ip)
        });
        let ip_votes = |ip: IpAddr| self.votes(|a| a.ip() == ip) + usize::from(witness == Some(ip));
        let best_ip = answers().map(|a| ip_votes(a.ip())).max().unwrap_or(0);
        let keep_ip = self
            .address
            .map(|a| a.ip())
            .filter(|&ip| ip_votes(ip) == best_ip);
        let ip = keep_ip
            .or_else(|| {
                answers()
                    .map(|a| a.ip())
                    .find(|&ip| ip_votes(ip) == best_ip)
            })
            .filter(|_| best_ip >= self.quorum);
        self.address = ip.and_then(|ip| {
            let of_ip = || answers().filter(move |a| a.ip() == ip);
            let votes = |address: SocketAddr| self.votes(|a| a == address);
            let best = of_ip().map(votes).max().unwrap_or(0);
            let keep = self.address.filter(|&a| a.ip() == ip && votes(a) == best);
            keep.or_else(|| of_ip().find(|&a| votes(a) == best))
        });
        self.port_varies =
            answers().any(|a| answers().any(|b| a.ip() == b.ip() && a.port() != b.port()));
    }

    /// How many nodes at different IPs report an address that `agrees`: a host's second port
    /// is no second witness.
    fn votes(&self, agrees: impl Fn(SocketAddr) -> bool) -> usize {
        let agreeing = |s: &Slot| s.answer.is_some_and(|(a, _)| agrees(a));
        self.slots
            .iter()
            .enumerate()
            .filter(|(i, s)| {
                agreeing(s)
                    && !self.slots[..*i]
                        .iter()
                        .any(|e| e.to.ip() == s.to.ip() && agreeing(e))
            })
            .count()
    }
}

/// The public IP mainline's DHT socket reports, unless the reflector's agreed address says
/// otherwise: the two sockets sit behind the same NAT, which gives both the same outside IP, and
/// mainline takes it from whichever nodes answered its last lookup, one of them possibly alone.
/// Without an agreed address (no reflector answers, a port forwarded by hand) it is still the
/// best candidate we have; a wrong one costs a peer one handshake to nowhere.
pub fn confirmed_public_ip(
    dht_public: Option<IpAddr>,
    reflexive: Option<SocketAddr>,
) -> Option<IpAddr> {
    match reflexive {
        Some(agreed) => dht_public.filter(|&ip| ip == agreed.ip()),
        None => dht_public,
    }
}

/// One node we ask.
struct Slot {
    to: SocketAddr,
    /// The transaction id of the probe we wait for; a new probe replaces it.
    pending: Option<[u8; TRANSACTION_ID_BYTES]>,
    /// Probes sent since the last answer.
    unanswered: u32,
    /// When to send the next probe.
    next_at: Duration,
    /// The address it last reported, and when.
    answer: Option<(SocketAddr, Duration)>,
}

impl Slot {
    fn new(to: SocketAddr, now: Duration) -> Self {
        Self {
            to,
            pending: None,
            unanswered: 0,
            next_at: now,
            answer: None,
        }
    }
}

/// How long to wait for an answer after the `unanswered`-th probe in a row (counting from 0):
/// `REFLECTOR_FIRST_RETRY`, doubling, at most `REFLECTOR_REFRESH`.
fn retry_delay(unanswered: u32) -> Duration {
    backoff::doubling(REFLECTOR_FIRST_RETRY, unanswered, REFLECTOR_REFRESH)
}

#[cfg(test)]
mod tests;
