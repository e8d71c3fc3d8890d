//! Every bound dhtun keeps, in one place, each with the reason for its value.
//!
//! Memory is fixed by these numbers and by the configured peer count: nothing here grows with
//! traffic or with unauthenticated input. Timers follow WireGuard's whitepaper (section 6), so an
//! operator who knows `wg` knows what to expect.

use core::time::Duration;

// ---------------------------------------------------------------------------------------------
// Packet sizes
// ---------------------------------------------------------------------------------------------

/// Largest inner IP packet we carry. The TUN MTU is at most this; 65535 would cost 44x more ring
/// memory for jumbo frames almost nobody routes through a VPN, so standard Ethernet-class sizes
/// plus headroom for a 9000-byte jumbo underlay are the ceiling.
pub const MAX_MTU: usize = 8920;

/// Smallest MTU we accept: IPv6 requires links of at least 1280 bytes.
pub const MIN_MTU: usize = 1280;

/// Default TUN MTU: 1500-byte underlay minus IPv6 (40) + UDP (8) + our transport header (16)
/// + AEAD tag (16), the same figure WireGuard uses.
pub const DEFAULT_MTU: usize = 1420;

/// Bytes our transport framing adds to an inner packet: 16 header + 16 tag.
pub const TRANSPORT_OVERHEAD: usize = 32;

/// Inner packets are padded to a multiple of this before encryption, so packet lengths leak
/// less about their content (WireGuard pads to 16 as well).
pub const PADDING_MULTIPLE: usize = 16;

/// Size of one packet-ring slot for an interface of this MTU: the largest inner packet plus
/// everything we wrap around it, rounded up so slots stay cache-line aligned. Slots follow the
/// configured MTU, so a 1420-byte interface does not pay for jumbo frames.
pub const fn ring_slot_bytes(mtu: usize) -> usize {
    (mtu + TRANSPORT_OVERHEAD + PADDING_MULTIPLE + 63) & !63
}

/// The largest slot any config can ask for.
pub const RING_SLOT_BYTES: usize = ring_slot_bytes(MAX_MTU);

// ---------------------------------------------------------------------------------------------
// Rings
// ---------------------------------------------------------------------------------------------

/// Default slots in each of the TUN->UDP and UDP->TUN rings. 256 packets of 1420 bytes is
/// 2.9 ms at 1 Gbit/s: enough to absorb one scheduling hiccup of the other side, small enough
/// that a full ring adds under 3 ms of queueing delay. Memory: 256 x ring_slot_bytes(mtu) per
/// ring, 368 KiB at the default MTU.
pub const DEFAULT_RING_SLOTS: usize = 256;

/// Fewest ring slots accepted from config: one full syscall batch must fit.
pub const MIN_RING_SLOTS: usize = 16;

/// Most ring slots accepted from config: 16384 slots is 23 MiB per ring at the default MTU,
/// already far more queue than any link benefits from.
pub const MAX_RING_SLOTS: usize = 16384;

/// Packets staged per peer while its handshake runs. WireGuard keeps 1024; a handshake takes one
/// round trip, so a few packets cover what an application sends before it hears back, and the
/// rest would be retransmitted by TCP anyway. Memory: this x ring_slot_bytes(mtu) per peer.
pub const STAGED_PACKETS_PER_PEER: usize = 16;

/// Datagrams moved per batched read or write: enough to amortise a syscall over a burst,
/// small enough that one batch is a fraction of a ring.
pub const IO_BATCH: usize = 32;

// ---------------------------------------------------------------------------------------------
// Peers and sessions
// ---------------------------------------------------------------------------------------------

/// Most peers one interface accepts from config. Every peer owns its staging buffer and session
/// slots, so this caps memory; 1024 peers of staging is 23 MiB at the default MTU.
pub const MAX_PEERS: usize = 1024;

/// Most `allowed_ips` prefixes over all peers: the routing table is sized from config only.
pub const MAX_ALLOWED_IPS: usize = 65536;

/// Sessions a peer holds at once: previous (for packets still in flight), current, and next
/// (a responder's session waiting for its first packet to confirm it).
pub const SESSIONS_PER_PEER: usize = 3;

/// Bits in the anti-replay window (RFC 6479 bitmap of 64-bit blocks, one block kept spare so
/// the window slides by whole blocks). 4032 packets is 46 ms at 1 Gbit/s of 1420-byte packets:
/// reordering across multiple cores or paths stays inside it.
pub const REPLAY_BLOCKS: usize = 64;
pub const REPLAY_WINDOW_BITS: u64 = ((REPLAY_BLOCKS - 1) * 64) as u64;

// ---------------------------------------------------------------------------------------------
// Timers (WireGuard whitepaper, section 6.1)
// ---------------------------------------------------------------------------------------------

/// Start a new handshake when the current session is this old and we send on it.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);

/// A session this old is never used again, in either direction.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);

/// Resend an unanswered handshake initiation after this long (plus jitter).
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);

/// Up to this much random jitter is added to each retry, so two peers that start together do
/// not keep colliding.
pub const REKEY_TIMEOUT_JITTER: Duration = Duration::from_millis(333);

/// Give up on a handshake (and drop staged packets) after trying this long.
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);

/// Send an empty keepalive when we received data this long ago and sent nothing since, so the
/// sender learns its packets arrive.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Start a new handshake after this many messages on one session.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;

/// Never use a nonce at or above this: leaves room below 2^64 so the counter cannot wrap.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

/// Minimum gap between two initiations we accept from one peer: a replayed or flooded burst
/// of valid initiations costs at most one handshake per this interval.
pub const MIN_INITIATION_INTERVAL: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------------
// Shell
// ---------------------------------------------------------------------------------------------

/// Bytes the control socket reads of one request: requests are single short words.
pub const CONTROL_REQUEST_BYTES: usize = 256;

/// Control connections served at once; more wait in the kernel's listen backlog.
pub const CONTROL_CONNECTIONS: usize = 8;

/// How often the shell calls `Device::handle_timers`. Every timer above is seconds long, so a
/// tenth of a second is precise enough and costs ten cheap wake-ups a second.
pub const TIMER_TICK: Duration = Duration::from_millis(100);
