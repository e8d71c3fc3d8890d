//! Counters: drops by reason, for the whole interface and per peer. Counted, never logged,
//! because a flood must cost an increment, not a line of output.

/// Why a packet was dropped. The names are the keys of `drops` in `dhtun status --json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// A packet ring was full: the newest packet was dropped (tail drop).
    RingFull,
    /// A transport packet whose counter was already seen or is older than the window.
    Replay,
    /// A message for a session index or from a static key we do not know.
    UnknownPeer,
    /// A decrypted packet whose inner source is outside the sending peer's allowed_ips.
    BadSource,
    /// Bytes that are not one of our messages, or not an IP packet.
    Malformed,
    /// An outbound packet whose destination no peer's allowed_ips covers.
    NoRoute,
    /// A message whose MAC or AEAD tag did not verify.
    Unauthenticated,
    /// An initiation whose timestamp is not newer than the last accepted one from that peer,
    /// or one that came too soon after the last.
    StaleInitiation,
    /// An outbound packet for a peer with no known endpoint.
    NoEndpoint,
    /// A packet staged for a handshake that never completed, or pushed out of the staging queue.
    HandshakeTimeout,
    /// A transport packet on a session past its lifetime.
    Expired,
    /// A packet larger than the interface MTU.
    TooLarge,
    /// The kernel refused to send a datagram or write a packet (no route, firewall, ...).
    SendFailed,
    /// Datagrams the kernel dropped before we could read them: our socket's receive buffer
    /// was full (the kernel's count, reported as it reports it).
    SocketOverflow,
    /// An initiation answered with a cookie reply instead of a handshake: we are under load
    /// and the sender has not yet proven it receives at its address.
    UnderLoad,
    /// An initiation over its source address's rate limit.
    RateLimited,
    /// A packet that waited in a ring longer than `ring_max_delay_ms` (dropped at dequeue).
    RingDelay,
    /// A relay envelope we may not act on: asked to forward while not serving as a relay, a
    /// delivery from a peer not configured as our relay, or an envelope inside an envelope.
    RelayRefused,
    /// A relayed packet with nowhere to go: the other end is not our peer, or has no session
    /// with us (a relay only forwards, it never queues or starts handshakes for others).
    RelayNoPath,
    /// An outbound packet for a peer paced after it reported heavy loss, refused before
    /// encryption because the peer is too far in debt (see docs/design.md, Pacing).
    Paced,
    /// An outbound packet for the link itself (an IPv6 link-local or link-scope multicast
    /// destination, or IPv4 224.0.0.0/24), which a tunnel between hosts does not carry: above
    /// all the router solicitations the kernel sends to ff02::2 on a fresh interface.
    LinkLocal,
    /// An initiation refused because the handshake work of all sources together is over its
    /// budget (`limits::HANDSHAKE_OPS_PER_SECOND`); known peers' share is kept for them.
    HandshakeBudget,
    /// An initiation that would have been answered with a cookie reply, dropped because the
    /// replies to all sources together are over their budget.
    CookieBudget,
}

impl DropReason {
    pub const ALL: [DropReason; 23] = [
        DropReason::RingFull,
        DropReason::Replay,
        DropReason::UnknownPeer,
        DropReason::BadSource,
        DropReason::Malformed,
        DropReason::NoRoute,
        DropReason::Unauthenticated,
        DropReason::StaleInitiation,
        DropReason::NoEndpoint,
        DropReason::HandshakeTimeout,
        DropReason::Expired,
        DropReason::TooLarge,
        DropReason::SendFailed,
        DropReason::SocketOverflow,
        DropReason::UnderLoad,
        DropReason::RateLimited,
        DropReason::RingDelay,
        DropReason::RelayRefused,
        DropReason::RelayNoPath,
        DropReason::Paced,
        DropReason::LinkLocal,
        DropReason::HandshakeBudget,
        DropReason::CookieBudget,
    ];

    /// The status key for this reason.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::RingFull => "ring_full",
            DropReason::Replay => "replay",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::BadSource => "bad_source",
            DropReason::Malformed => "malformed",
            DropReason::NoRoute => "no_route",
            DropReason::Unauthenticated => "unauthenticated",
            DropReason::StaleInitiation => "stale_initiation",
            DropReason::NoEndpoint => "no_endpoint",
            DropReason::HandshakeTimeout => "handshake_timeout",
            DropReason::Expired => "expired",
            DropReason::TooLarge => "too_large",
            DropReason::SendFailed => "send_failed",
            DropReason::SocketOverflow => "socket_overflow",
            DropReason::UnderLoad => "under_load",
            DropReason::RateLimited => "rate_limited",
            DropReason::RingDelay => "ring_delay",
            DropReason::RelayRefused => "relay_refused",
            DropReason::RelayNoPath => "relay_no_path",
            DropReason::Paced => "paced",
            DropReason::LinkLocal => "link_local",
            DropReason::HandshakeBudget => "handshake_budget",
            DropReason::CookieBudget => "cookie_budget",
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

/// One counter per drop reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounters([u64; DropReason::ALL.len()]);

impl DropCounters {
    pub fn count(&mut self, reason: DropReason) {
        self.add(reason, 1);
    }

    pub fn add(&mut self, reason: DropReason, n: u64) {
        let slot = &mut self.0[reason.slot()];
        *slot = slot.saturating_add(n);
    }

    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.slot()]
    }

    /// (name, count) for every reason, in a stable order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        DropReason::ALL.iter().map(|r| (r.name(), self.get(*r)))
    }
}

/// Traffic a peer moved, counted after authentication (rx) or encryption (tx).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Packets the peer sent that never arrived: gaps in its counters that left the replay
    /// window unfilled. Unlike the socket's overflow count (one per dropped GRO batch), it
    /// counts each datagram, whatever dropped it, including drops already counted elsewhere
    /// (our receive ring, the sender's own after encryption, late arrivals refused as replays).
    /// Gaps in a session's last ~4000 counters are never counted: the session is replaced first.
    pub rx_lost_packets: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_slot_and_name() {
        let mut counters = DropCounters::default();
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            counters.add(*reason, i as u64 + 1);
        }
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(counters.get(*reason), i as u64 + 1);
        }
        let names: std::collections::HashSet<_> = counters.iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), DropReason::ALL.len());
    }
}
