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

/// Bytes a relay envelope adds in front of the datagram it carries: kind, reserved byte, length
/// and the X25519 key of the other end (see `core::envelope`).
pub const ENVELOPE_HEADER: usize = 36;

/// Largest datagram we send directly: an inner packet of the MTU, padded, and framed.
pub const fn direct_datagram_bytes(mtu: usize) -> usize {
    mtu + TRANSPORT_OVERHEAD + PADDING_MULTIPLE
}

/// Largest datagram we send through a relay: a direct datagram in an envelope, padded and framed
/// again for the relay's session.
pub const fn relayed_datagram_bytes(mtu: usize) -> usize {
    direct_datagram_bytes(mtu) + ENVELOPE_HEADER + TRANSPORT_OVERHEAD + PADDING_MULTIPLE
}

/// Size of one packet-ring slot for an interface of this MTU: the largest datagram we build
/// (a relayed one), rounded up so slots stay cache-line aligned. Slots follow the configured
/// MTU, so a 1420-byte interface does not pay for jumbo frames. The relay envelope costs about
/// 8% more ring memory at the default MTU; the alternative, a smaller MTU whenever a relay may
/// be used, would cost every direct packet instead.
pub const fn ring_slot_bytes(mtu: usize) -> usize {
    (relayed_datagram_bytes(mtu) + 63) & !63
}

/// The largest slot any config can ask for.
pub const RING_SLOT_BYTES: usize = ring_slot_bytes(MAX_MTU);

// ---------------------------------------------------------------------------------------------
// Rings
// ---------------------------------------------------------------------------------------------

/// Default slots in each of the TUN->UDP and UDP->TUN rings. 256 packets of 1420 bytes is
/// 2.9 ms at 1 Gbit/s: enough to absorb one scheduling hiccup of the other side; the byte cap
/// (`DEFAULT_RING_BYTES`) keeps a full ring of large packets nearer 1-2 ms. Memory:
/// 256 x ring_slot_bytes(mtu) per ring, 400 KiB at the default MTU.
pub const DEFAULT_RING_SLOTS: usize = 256;

/// Fewest ring slots accepted from config: one full syscall batch must fit.
pub const MIN_RING_SLOTS: usize = 16;

/// Most ring slots accepted from config: 16384 slots is 25 MiB per ring at the default MTU,
/// already far more queue than any link benefits from.
pub const MAX_RING_SLOTS: usize = 16384;

/// Packets staged per peer while its handshake runs. WireGuard keeps 1024; a handshake takes one
/// round trip, so a few packets cover what an application sends before it hears back, and the
/// rest would be retransmitted by TCP anyway. Memory: this x ring_slot_bytes(mtu) per peer.
pub const STAGED_PACKETS_PER_PEER: usize = 16;

/// Default cap on the bytes queued in each ring. A ring fills only while what drains it (the UDP
/// socket, the TUN device) cannot keep up, so a full ring is a queue draining at the tunnel's
/// speed: 256 KiB waits 0.6-1 ms at the 2-3.5 Gbit/s this tunnel carries and 2.1 ms at
/// 1 Gbit/s, inside the 3 ms a ping under a TCP stream may take. Counting slots alone would
/// let 256 full-size packets (363 KB, 2.9 ms at 1 Gbit/s) queue; small packets (ACKs) still
/// stop at the slot count long before this. Costs no memory: memory is slots x slot size.
pub const DEFAULT_RING_BYTES: usize = 256 * 1024;

/// Smallest byte cap accepted: one TSO super-packet (64 KiB) cut into packets must fit.
pub const MIN_RING_BYTES: usize = 64 * 1024;

/// Largest byte cap accepted: 64 MiB is 50 ms at 10 Gbit/s, more queue than any link benefits
/// from; past the slots' own capacity a cap changes nothing anyway.
pub const MAX_RING_BYTES: usize = 64 * 1024 * 1024;

/// Default longest wait in a ring before a packet is dropped at dequeue (`ring_max_delay_ms`).
/// The byte cap bounds delay only at the speed it was sized for: behind a 10 Mbit/s uplink
/// 256 KiB is 210 ms. 5 ms (CoDel's target) never cuts in at the tunnel's own speeds, where a
/// full ring drains in 1-2 ms, and caps the ring's share of latency on slow links.
pub const DEFAULT_RING_MAX_DELAY: Duration = Duration::from_millis(5);

/// Largest `ring_max_delay_ms` accepted (0 turns the check off): past a second a packet is
/// stale for anything interactive and TCP has long retransmitted it.
pub const MAX_RING_MAX_DELAY_MS: u64 = 1000;

/// Default datagrams per batched syscall (`batch_size`): a `sendmmsg` carries up to this many
/// datagrams in up to a quarter as many messages (GSO trains), and `recvmmsg` fills one 64 KiB
/// GRO buffer per 16 of them. 128 amortises a syscall over two full GSO trains (64 datagrams
/// each) and gives 8 receive buffers (512 KiB), the batches dhtun was measured with.
pub const DEFAULT_BATCH_SIZE: usize = 128;

/// Fewest datagrams per batch accepted: below 8 the syscall cost per packet dominates. 8 still
/// gets one 64 KiB receive buffer, since a GRO train needs one whole.
pub const MIN_BATCH_SIZE: usize = 8;

/// Most datagrams per batch accepted: 1024 is 64 receive buffers (4 MiB); beyond that a batch
/// only holds packets back from the other direction for longer.
pub const MAX_BATCH_SIZE: usize = 1024;

/// Smallest `receive_buffer_bytes` accepted for the tunnel socket (unset: the kernel's
/// `net.core.rmem_default`). The kernel doubles the value for its bookkeeping; at 32 KiB a
/// burst of GSO trains from one fast peer already finds the socket full most of the time, so
/// below it the setting could only lose packets.
pub const MIN_RECEIVE_BUFFER_BYTES: usize = 32 * 1024;

/// Largest `receive_buffer_bytes` accepted: 64 MiB is over 100 ms at 4 Gbit/s, far more queue
/// than a tunnel should hold (wireguard-go asks for 7 MiB). Kernel memory, not ours, but bounded
/// all the same.
pub const MAX_RECEIVE_BUFFER_BYTES: usize = 64 * 1024 * 1024;

/// Default `busy_poll_us`: 0, off. Polling spends CPU after every burst of traffic and keeps
/// the CPU from sleeping; a VPN should not do that unasked on a laptop. See Busy polling in
/// docs/performance.md.
pub const DEFAULT_BUSY_POLL_US: u64 = 0;

/// Largest `busy_poll_us` accepted: past a millisecond the wait being avoided (a 30-40 µs
/// wake-up) is small beside the CPU spent waiting, and the kernel's own `busy_poll` advice is
/// 50-100 µs.
pub const MAX_BUSY_POLL_US: u64 = 1000;

/// Longest one busy-poll round holds the event loop's thread. A round restarts its window
/// whenever it finds a packet, so under steady traffic only this ends it; then the loop goes
/// back to the runtime, which serves timers, signals and the control socket. 1 ms is a
/// hundredth of `TIMER_TICK`.
pub const BUSY_POLL_ROUND: Duration = Duration::from_millis(1);

/// After each busy-poll round in a row that was not worth it (no answer came back, and the
/// polls did not find a dense stream), twice as many wake-ups skip their round, up to
/// 2^6 - 1 = 63. Such rounds mean the traffic does not answer within the window (a one-way
/// stream, or an answer from across a WAN), so polling would only burn CPU; a stream then pays
/// one round in 64, and traffic that starts answering is noticed within 64 wake-ups.
pub const BUSY_POLL_MAX_SKIP_SHIFT: u32 = 6;
const _: () = assert!(BUSY_POLL_MAX_SKIP_SHIFT < u32::BITS);

/// A side that woke nothing for this long has its busy-poll skipping forgotten: traffic that
/// starts after a pause gets its rounds at once. Wake-ups this far apart cost at most one
/// window each, 0.2% of a core at 200 µs, so polling them all is cheap.
pub const BUSY_POLL_GATE_MEMORY: Duration = Duration::from_millis(100);

/// Polls in one busy-poll round that must find packets, besides at least half of all its
/// polls, for the round to count as a dense stream. Under CPU contention one `sched_yield` can
/// take milliseconds, so a round of two or three polls says nothing about density.
pub const BUSY_POLL_DENSE_MIN_POLLS: u32 = 4;

// ---------------------------------------------------------------------------------------------
// Pacing a peer from its loss reports (see core::pacer and core::feedback)
// ---------------------------------------------------------------------------------------------

/// A receiver reports its losses from a peer at most this often, and only while that peer's
/// packets arrive and some went missing. 20 ms lets a sender correct within a few of a flood's
/// tens of thousands of packets per second, and costs at most 50 small packets a second.
pub const LOSS_REPORT_INTERVAL: Duration = Duration::from_millis(20);

/// A loss count over a longer span than this says nothing about the present (traffic paused
/// in between), so it is not reported.
pub const LOSS_REPORT_MAX_SPAN: Duration = Duration::from_millis(80);

/// A report shorter than this cannot give a delivered rate worth acting on.
pub const LOSS_REPORT_MIN_SPAN: Duration = Duration::from_millis(1);

/// A sender starts pacing a peer only when its reports say at least a third of the packets were
/// lost (in `PACE_HEAVY_REPORTS_TO_START` reports in a row). Below that, loss is the network's
/// (WAN links lose a few percent) or TCP senders probing (bulk TCP loses 3-5% at the receiver's
/// socket on the bench, and four streams lose a quarter in some intervals), and TCP's own
/// congestion control is the right answer. A receiver that cannot keep up with an unpaced flood
/// loses half or more.
pub const PACE_LOSS_FRACTION: (u64, u64) = (1, 3);

/// Once a peer is paced, a report with this share lost cuts the pace again: the flood is known
/// by then, and letting the pace climb until a third is lost again would keep the receiver
/// losing a tenth to a fifth of it on average (measured in the device test).
pub const PACE_LOSS_FRACTION_WHILE_PACED: (u64, u64) = (1, 20);

/// An unpaced peer is paced only after this many heavy-loss reports in a row (each within two
/// report intervals of the one before). A flood loses heavily in every interval; TCP's losses
/// come in bursts its own congestion control already answers. Measured with four iperf3 streams:
/// with a quarter and three in a row, pacing started in one run of two and cut TCP from 4.4 to
/// 3.1 Gbit/s; with a third and four in a row, none of three runs was paced.
pub const PACE_HEAVY_REPORTS_TO_START: u32 = 4;

/// Within one pacing episode (from the first cut until the pace is lifted), while no interval
/// has yet come without heavy loss, a cut below this fraction of the first cut crosses a floor.
/// Loss that a lower pace does not cure is not ours: a lossy link drops a share of whatever we
/// send, and chasing its loss cut after cut would throttle the peer to the minimum. Once pacing
/// has cured the loss, later cuts may go lower: an overloaded receiver's capacity swings with
/// its share of the CPU (on the bench it halved within a flood).
pub const PACE_EPISODE_FLOOR: (u64, u64) = (1, 2);

/// Crossing this many floors (each half the one before) without a cure, each with about the
/// same share lost as at the cut before, lifts the pace: a link that loses a share of whatever
/// we send. Fewer are chance: under a flood on the bench, the receiver's share of the CPU (so
/// its capacity) swings by 2x from one 20 ms interval to the next, and 2 gave up in about one
/// flood in four.
pub const PACE_FLOORS_BEFORE_GIVING_UP: u32 = 3;

/// Packets a report (and the one behind the last cut) must cover before its share lost, or an
/// interval missing between reports, tells pacing anything: over fewer, a link losing a third
/// of everything shows clean intervals and falling shares by chance (seen at a 1 Mbit/s pace,
/// two or three packets per interval).
pub const PACE_SHARE_MIN_PACKETS: u64 = 32;

/// A share lost under 3/4 of the share at the last cut shows pacing works (a cure), even while
/// loss is still heavy: the floors are measured again from the pace now.
pub const PACE_LOSS_FALL: (u64, u64) = (3, 4);

/// A floor crossed with a share lost more than 5/4 of the share at the cut before is new
/// congestion, not a lossy link: the receiver's capacity fell. Seen in the netns test: 46 MB/s,
/// then 23, then 8 within 100 ms, each step losing a larger share (27%, 51%, 67%). It does not
/// count toward giving up.
pub const PACE_LOSS_RISE: (u64, u64) = (5, 4);
const _: () = assert!(PACE_FLOORS_BEFORE_GIVING_UP >= 1);

/// After loss proved unresponsive to pacing, reports are ignored for this long: the link's own
/// loss goes on, and pacing it would cost more than it saves.
pub const PACE_IGNORE_AFTER_UNRESPONSIVE: Duration = Duration::from_secs(10);

/// After a report, the pace is this fraction of what the receiver took in: a little under it,
/// so the receiver's socket drains instead of staying full.
pub const PACE_BACKOFF: (u64, u64) = (15, 16);

/// While no report cuts it, the pace grows by 1/16 every `PACE_INCREASE_INTERVAL`: from a cut
/// back to where loss starts (about 10% higher) takes two intervals, and a pace set during
/// contention that has passed doubles in 230 ms.
pub const PACE_INCREASE: (u64, u64) = (17, 16);
pub const PACE_INCREASE_INTERVAL: Duration = LOSS_REPORT_INTERVAL;

/// A pace that no report cut for this long is lifted: the receiver stopped losing, so there is
/// nothing left to correct. Fifty report intervals.
pub const PACE_RELEASE_AFTER: Duration = Duration::from_secs(1);

/// No pace goes below 1 Mbit/s: a report from a receiver that was briefly starved of CPU must
/// not shut a peer out. (Keepalives, handshakes and loss reports never wait for a pace; a ping
/// to a peer paced this low may wait for the peer's debt to be paid.)
pub const PACE_MIN_BYTES_PER_SECOND: u64 = 125_000;

/// Tokens a paced peer may save up: 32 KiB goes out as one burst. Measured on the bench (2
/// cores, flood): 32 KiB bursts kept the receiver's socket loss under 1% at 2-3 Gbit/s, where
/// 256 KiB bursts overflowed its 208 KiB buffer before it woke and delivered half as much.
pub const PACE_BURST_BYTES: u64 = 32 * 1024;

/// A pace too slow to save `PACE_BURST_BYTES` within this time releases smaller bursts, so a
/// pause of the TUN reads stays well under `PACE_GATE_MAX`: below 64 MB/s a burst is what half a
/// millisecond earns. Pauses then come more often, each a timer to arm and fire (a few µs).
pub const PACE_BURST_TIME: Duration = Duration::from_micros(500);

/// The smallest burst: one full-size packet and its framing.
pub const PACE_MIN_BURST_BYTES: u64 = 2048;

/// A paced peer may run this far into debt before its packets are refused: a TUN super-packet
/// begun with tokens left is sent whole (refusing its tail would cost a TCP sender a
/// retransmission for every burst).
pub const PACE_MAX_DEBT_BYTES: u64 = 96 * 1024;

/// The TUN device is not read while the only traffic read lately goes to paced peers in debt:
/// the kernel drops the excess at the TUN queue for free, where reading it would take the CPU
/// the receiver needs. "Lately" is this long: traffic to a peer that is not paced in that time
/// keeps the device read, and the paced peers' excess is refused before encryption instead.
pub const PACE_GATE_SHARED: Duration = Duration::from_millis(2);

/// Longest pause of the TUN reads without a packet read in between: other peers' packets wait
/// in the TUN queue meanwhile. A paced peer whose next burst is further off (a slow pace, or
/// deep debt) gets pauses of this length, each followed by one read.
pub const PACE_GATE_MAX: Duration = Duration::from_millis(1);

/// Longest the event loop runs on readiness tokio already cached before it yields, so tokio
/// polls epoll and runs its timers and other tasks. Each yield costs one `epoll_wait` with no
/// timeout (1-2 µs on the bench VM), under 1% of a core at this interval; a ping reply or a
/// loss report waits at most this long behind a flood from the other side.
pub const EVENT_LOOP_YIELD_INTERVAL: Duration = Duration::from_micros(200);

/// Datagrams of `batch_size` per `sendmmsg` message: a message is one GSO train to one peer.
pub const BATCH_DATAGRAMS_PER_SEND_MESSAGE: usize = 4;

/// Destinations whose path MTU refused a UDP GSO train, remembered at once. Each is a peer's
/// endpoint (or a relay's) behind a smaller MTU than ours; a machine rarely has more than a few
/// such paths, and when more refuse, the one remembered longest is forgotten: it costs one more
/// refused train, then is remembered again.
pub const GSO_LIMITED_PATHS: usize = 16;

/// How long a refused GSO size is remembered for a destination. The kernel itself forgets a
/// path MTU it learned after `net.ipv4.route.mtu_expires`, 600 s by default; a path that grew
/// back gets its GSO trains again, and one that did not costs one refused train per period.
pub const GSO_LIMIT_LIFETIME: Duration = Duration::from_secs(600);

/// Datagrams of `batch_size` per 64 KiB receive buffer. A GRO buffer holds up to 44 full-size
/// datagrams when the kernel coalesced them, one when it did not; 16 is in between and keeps the
/// receive buffers (the largest per-batch memory) at an eighth of a megabyte per 32 datagrams.
pub const BATCH_DATAGRAMS_PER_RECV_BUFFER: usize = 16;

// ---------------------------------------------------------------------------------------------
// Peers and sessions
// ---------------------------------------------------------------------------------------------

/// Most peers one interface accepts from config. Every peer owns its staging buffer and session
/// slots, so this caps memory; 1024 peers of staging is 25 MiB at the default MTU.
pub const MAX_PEERS: usize = 1024;

/// Most `allowed_ips` prefixes over all peers: the routing table is sized from config only.
pub const MAX_ALLOWED_IPS: usize = 65536;

/// Largest config file read. The largest config there can be, MAX_PEERS peers with
/// MAX_ALLOWED_IPS prefixes in all, written longhand one prefix per line (an IPv6 /128 in full is
/// 52 bytes with quotes, comma and indent), is about 3.5 MiB; 8 MiB leaves as much again for
/// comments. Anything larger is not a config, and reading it would cost its size in memory.
pub const MAX_CONFIG_FILE_BYTES: u64 = 8 << 20;

/// Largest key file read (`private_key_file`, `preshared_key_file`): a key file is one line of
/// 44 base64 characters; a page is ample for it and its line ending, and no more is read.
pub const MAX_KEY_FILE_BYTES: u64 = 4096;

/// Route requests waiting for the kernel's answer at once when `up` adds routes and when it
/// removes them. One at a time, 65,536 routes cost a round trip each; the answers to 64 (an
/// error quotes its request: well under 200 bytes each) fit the netlink socket's buffer easily.
pub const ROUTE_REQUESTS_IN_FLIGHT: usize = 64;

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

/// An answered session established less than this after the current one we initiated is
/// taken for the peer's side of crossed handshakes, not for its next handshake. A crossing
/// initiation left before the peer saw ours, so it arrives within the network's delay of our
/// handshake finishing, or RELAY_FALLBACK_AFTER later as its copy through a relay: one retry
/// interval covers both with room to spare. A peer starts a new handshake this soon after
/// answering ours only if it restarted: once its session is this old and the peer has sent
/// nothing on ours since, it is believed, so such a restart costs our traffic to it at most
/// this long (plus the time to its next packet, a keepalive at least).
/// (This window is for an initiation that came through a relay; see CROSSED_DIRECT_WINDOW.)
pub const CROSSED_HANDSHAKE_WINDOW: Duration = REKEY_TIMEOUT;

/// The crossing window for an initiation that came straight from the peer. It left before the
/// peer saw ours, so it arrives before the peer's response to ours, give or take the network's
/// jitter: half a second covers the jitter of any path a session survives on. A restarted
/// peer needs longer than that to start again and send a new initiation after answering ours,
/// so its new session is believed at once, not after a whole retry interval (5.1 s of
/// silence toward a restarted peer, issue 26).
pub const CROSSED_DIRECT_WINDOW: Duration = Duration::from_millis(500);

/// A transport packet for an unknown session from a peer's endpoint (one of us restarted)
/// starts a handshake with that peer at most this often: the handshake retries by itself
/// after that, and a forged packet must not cost more than one initiation per retry interval.
pub const UNKNOWN_SESSION_HANDSHAKE_INTERVAL: Duration = REKEY_TIMEOUT;

/// Give up on a handshake (and drop staged packets) after trying this long.
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);

/// Send an empty keepalive when we received data this long ago and sent nothing since, so the
/// sender learns its packets arrive.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Start a new handshake after this many messages on one session.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;

/// Never use a nonce at or above this: leaves room below 2^64 so the counter cannot wrap.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

/// The secret behind handshake cookies is replaced this often, so a cookie (proof that a sender
/// receives at its address) stops working two minutes after it was handed out, as in WireGuard.
pub const COOKIE_SECRET_LIFETIME: Duration = Duration::from_secs(120);

/// An initiator uses a received cookie for this long: a little less than the responder keeps
/// accepting it, so clocks a few seconds apart do not matter.
pub const COOKIE_USE_LIFETIME: Duration = Duration::from_secs(110);

/// Initiations per second we do the Curve25519 work for before demanding cookies. Each costs
/// about 0.1 ms of one core, so this caps handshake work at a few percent of a core while
/// leaving room for hundreds of peers reconnecting at once.
pub const UNDER_LOAD_INITIATIONS_PER_SECOND: u32 = 100;

/// Initiations per second one source address may have processed, and the burst it may save up:
/// a peer needs one per five seconds; a flood from one address gets a handful.
pub const INITIATIONS_PER_SECOND_PER_SOURCE: u32 = 20;
pub const INITIATION_BURST_PER_SOURCE: u32 = 5;

/// Buckets of the per-source rate limiter. Sources hash (with a secret key) into this fixed
/// table, so it never grows with the number of senders; colliding senders share a bucket.
pub const RATE_LIMIT_BUCKETS: usize = 4096;

/// Curve25519 operations per second that initiations from the network may cost us, from every
/// source together. Per-source limits cannot bound a flood from thousands of addresses (each
/// with a valid cookie): 12,000 attempts a second took 94% of the daemon's thread, about 40 µs
/// an operation. 1,000 a second is about 4% of a core at that cost, and still answers 200
/// handshakes a second (five operations each): a session lasts two minutes, so that is the
/// steady load of 24,000 peers, or hundreds of peers reconnecting within seconds.
pub const HANDSHAKE_OPS_PER_SECOND: u32 = 1_000;

/// Curve25519 operations the handshake budget may save up: half a second's worth, so peers
/// that all reconnect at once (a restart of ours) are answered in one go.
pub const HANDSHAKE_OPS_BURST: u32 = 500;

/// The part of the saved-up budget that only known peers may spend (initiations from a
/// configured peer's current endpoint, or through its relay): 50 handshakes. A flood from
/// other addresses drains the budget to here and no further, so our peers are served first.
pub const HANDSHAKE_OPS_RESERVE: u32 = 250;

/// Cookie replies per second, to every source together. A reply costs a MAC, an encryption
/// and a send; a flood with a valid mac1 from 50 addresses got one per datagram (2.8 million
/// in 15 s) and slowed a transfer beside it 20-fold. A sender needs one reply per two minutes
/// (the cookie's lifetime), so 1,000 a second serves 120,000 senders, at about 1% of a core.
pub const COOKIE_REPLIES_PER_SECOND: u32 = 1_000;

/// Cookie replies saved up (one second's worth), and the part only known peers' current
/// endpoints may have (half), as for the handshake budget.
pub const COOKIE_REPLIES_BURST: u32 = 1_000;
pub const COOKIE_REPLIES_RESERVE: u32 = 500;
const _: () = assert!(HANDSHAKE_OPS_RESERVE < HANDSHAKE_OPS_BURST);
const _: () = assert!(COOKIE_REPLIES_RESERVE < COOKIE_REPLIES_BURST);

/// Minimum gap between two initiations we accept from one peer: a replayed or flooded burst
/// of valid initiations costs at most one handshake per this interval.
pub const MIN_INITIATION_INTERVAL: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------------
// Shell
// ---------------------------------------------------------------------------------------------

/// Bytes the control socket reads of one request: requests are single short words.
pub const CONTROL_REQUEST_BYTES: usize = 256;

/// Control requests queued for the main loop at once (and metrics scrapes served at once): the
/// main loop answers one at a time, so more would only wait; past it a request is refused busy.
pub const CONTROL_CONNECTIONS: usize = 8;

/// Control connections held at once. Each costs a task, a 256-byte request buffer and a file
/// descriptor (about 2 KiB in all), and no operator runs 64 `dhtun` commands at once. When all
/// are taken, the one that has waited longest for its request is closed to make room, so idle
/// connections cannot keep `dhtun status` out; only when none is idle is a new one refused busy.
pub const CONTROL_CLIENTS: usize = 64;

/// Peer events (handshake done, endpoint changed, ...) waiting for the shell to log them. The
/// shell drains them after every batch, so this only overflows if thousands of peers change
/// state in one batch; the rest are then not logged.
pub const EVENT_QUEUE: usize = 64;

/// How often the shell calls `Device::handle_timers`. Every timer above is seconds long, so a
/// tenth of a second is precise enough and costs ten cheap wake-ups a second.
pub const TIMER_TICK: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------------
// DHT
// ---------------------------------------------------------------------------------------------

/// Largest value a BEP 44 item may carry; nodes refuse anything longer. mainline reports an
/// oversized put as a timeout after a full lookup, so we refuse it before putting.
pub const MAX_RECORD_BYTES: usize = 1000;

/// Addresses one record may list. A host has a handful of usable underlay addresses; 16 covers
/// multi-homed machines with several IPv6 prefixes, and every candidate costs a handshake
/// attempt, so a longer list would only slow discovery down. At most 17 bytes each, the largest
/// record (16 IPv6 addresses and a public one) is 294 bytes, well inside `MAX_RECORD_BYTES`.
pub const MAX_RECORD_CANDIDATES: usize = 16;

/// Addresses one record yields to try: its listed addresses, the public address the DHT saw,
/// and the reflexive address. The last two come last and are the ones that work across NATs,
/// so a full record must not lose them.
pub const MAX_RECORD_TARGETS: usize = MAX_RECORD_CANDIDATES + 2;

/// Items one lookup examines before it gives up. Honest nodes store one item per key, and a
/// lookup visits about 20 of them; past this, someone is flooding us with junk under a valid
/// signature and looking further would only cost more work.
pub const MAX_RESOLVE_ITEMS: usize = 64;

/// How long one lookup may take. Each hop of a Mainline lookup waits at most the 2 s request
/// timeout and a lookup on the public DHT takes a few hops; past this the DHT is not answering
/// and the caller is better served trying again later than waiting.
pub const DHT_RESOLVE_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a lookup keeps listening after the first acceptable record, for a newer one (see
/// `core::lookup`). The nodes that store a key are its closest, asked in a lookup's last round or
/// two, so their answers come within a round trip or two of each other: well under a second on
/// the Internet, a few milliseconds on a LAN, where the lookup usually ends first anyway. A
/// stale record that answered first costs an unanswered handshake and a lookup ~15 s later;
/// this costs at most a second, and only on lookups that found something.
pub const DHT_RESOLVE_SETTLE: Duration = Duration::from_secs(1);

/// How long one publish may take: a lookup to find the closest nodes (as above) plus the puts to
/// them. mainline bounds both itself; this only guards against it never answering.
pub const DHT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the host names of the bootstrap nodes may take to resolve at start: a slow or
/// absent resolver must not hold the daemon's start-up longer than one DNS retry.
pub const DHT_BOOTSTRAP_DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// Most time between two lookups of one peer's record while we cannot reach it: a lookup
/// costs dozens of DHT messages, and a record changes only when the peer moves.
pub const DHT_RESOLVE_RETRY: Duration = Duration::from_secs(10);

/// First retry after a lookup found no record. Two peers that start together each look the
/// other up before either has published; the retry doubles from here up to DHT_RESOLVE_RETRY,
/// so they meet within a second or two.
pub const DHT_RESOLVE_FIRST_RETRY: Duration = Duration::from_millis(500);

/// How often a peer's record is looked up even while its session works, so a peer that moved
/// is found before the old path dies.
pub const DHT_RESOLVE_REFRESH: Duration = Duration::from_secs(5 * 60);

/// Lookups running at once; more peers wait their turn.
pub const DHT_RESOLVES_IN_FLIGHT: usize = 8;

/// Addresses one handshake initiation is sent to at once: the current endpoint, the configured
/// one, and every address of the peer's record.
pub const MAX_INITIATION_TARGETS: usize = MAX_RECORD_TARGETS + 2;

/// How often the DHT status (routing table size, public address) is refreshed from the node.
/// Each refresh is two messages to mainline's actor thread, so once a second costs nothing and
/// keeps `dhtun status` current.
pub const DHT_STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// How long the DHT routing table may stay empty before a node that had joined counts as not
/// bootstrapped again. mainline empties it when it takes a new node id for our public IP (BEP
/// 42) and refills it within seconds; a minute without a node is a real loss of the network.
pub const DHT_TABLE_RESET_GRACE: Duration = Duration::from_secs(60);

/// The first refresh after start waits this long, and each later one twice as long up to
/// DHT_STATUS_INTERVAL: bootstrapping takes tens of milliseconds on a LAN, and a status asked
/// for in the first second (the demo's, a script's after `dhtun up`) should not say "not
/// bootstrapped" about a node that already found its peers.
pub const DHT_STATUS_FIRST_INTERVAL: Duration = Duration::from_millis(100);

/// How often a record should be republished when nothing changed. Nodes drop BEP 44 items after
/// about two hours (libtorrent's default), and Kademlia churn moves a key's closest nodes; every
/// 30 minutes keeps the record alive with margin for a failed attempt or two.
pub const DHT_REPUBLISH_INTERVAL: Duration = Duration::from_secs(30 * 60);

/// How often the host's addresses are read (one netlink dump) to notice a move: a host that
/// moved must tell its peers at once (they would otherwise wait 15 s of silence) and republish
/// its record, and a dump every 2 s costs nothing.
pub const ADDRESS_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// How often the publisher retries while the first publish has not succeeded.
pub const FIRST_PUBLISH_RETRY: Duration = Duration::from_secs(2);

/// How long mainline's actor thread may take to answer a status question. It answers between
/// two steps of its loop (about 50 ms each), so seconds of silence mean it has stopped.
pub const DHT_ACTOR_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// NAT traversal and relays
// ---------------------------------------------------------------------------------------------

/// How often an unanswered initiation is sent again to every direct address while a handshake
/// runs. Hole punching needs both sides' packets to cross while each NAT still holds the
/// mapping the other opened; a second apart, a few seconds of trying is a handful of 148-byte
/// packets per address.
pub const PUNCH_INTERVAL: Duration = Duration::from_secs(1);

/// How long an initiation waits for a direct answer before the same initiation also goes
/// through a relay. Two punches (two round trips through any NAT pair) are enough for a direct
/// path that can work at all; waiting longer only delays the first packet.
pub const RELAY_FALLBACK_AFTER: Duration = Duration::from_secs(2);

/// How often a peer reached through a relay is tried directly again (a handshake sent only to
/// its direct addresses). NATs and addresses change; a relay is a detour, not a home. Each try
/// is one initiation per address, so every 10 s costs almost nothing.
pub const DIRECT_RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// How often a peer reached through a relay is looked up in the DHT (once at once when the
/// relay takes over, then at this interval): a moved peer publishes its new addresses there, and
/// a direct try needs them. Once a minute, not at the 10 s retry pace of an unreachable peer,
/// since traffic already flows and a lookup costs dozens of DHT messages.
pub const RELAYED_LOOKUP_INTERVAL: Duration = Duration::from_secs(60);

/// The second lookup of a newly relayed peer, 5 s after the first; the wait then doubles up to
/// RELAYED_LOOKUP_INTERVAL. A peer that moved learns its new outside address within about 10 s
/// (REFLECTOR_FIRST_RETRY backing off on the new path) and republishes at once, so looks at 5, 10
/// and 20 s find it without polling the DHT every few seconds for long.
pub const RELAYED_LOOKUP_FIRST_RETRY: Duration = Duration::from_secs(5);

/// How long a direct path may stay silent before packets arriving through a relay move the
/// peer back onto the relay: the same time WireGuard gives a session to show it is alive
/// (a keepalive interval plus a handshake retry). Shorter would flap between paths while the
/// other side is still switching.
pub const DIRECT_PATH_SILENCE: Duration = Duration::from_secs(15);

/// Keepalive interval that holds NAT mappings open: below the 30 s that Linux conntrack and
/// many home routers give an unanswered UDP flow. Relay peers always get it (others must reach
/// us through them at any time); other peers while a session is in use.
pub const NAT_KEEPALIVE: Duration = Duration::from_secs(25);

/// How long after the last data a session counts as "in use" for NAT keepalives: one session
/// lifetime, so an idle tunnel stops sending after three minutes, as WireGuard's sessions expire.
pub const NAT_KEEPALIVE_IDLE: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------------------
// Reflexive address (the tunnel socket as DHT nodes see it)
// ---------------------------------------------------------------------------------------------

/// DHT nodes asked for our reflexive address. Two that agree already outvote one that is wrong,
/// and the public bootstrap list resolves to a handful of addresses; each costs one small ping
/// per REFLECTOR_REFRESH, so more would only add traffic.
pub const MAX_REFLECTORS: usize = 8;

/// Nodes at different IPs that must report the same outside IP before it is adopted and
/// published. One node may lie or be wrong, and nothing proves which answer is true; two
/// independent nodes agreeing is the smallest check that a single one cannot pass alone. A node
/// list with fewer IPs than this needs all of them: with one bootstrap node (a private network),
/// its answer alone, since nobody else could confirm it and the operator already trusts it.
pub const REFLECTOR_QUORUM: usize = 2;
const _: () = assert!(REFLECTOR_QUORUM >= 1);

/// Wait this long for a node's answer before asking again, doubling each time up to
/// REFLECTOR_REFRESH: a node on the same continent answers in tens of milliseconds, and a lost
/// first ping should not leave us without an address for long.
pub const REFLECTOR_FIRST_RETRY: Duration = Duration::from_millis(500);

/// How often each node is asked again once it answered. A NAT's mapping changes when the host
/// moves to another network, and common NATs forget an idle UDP mapping after 30 s: asking every
/// 25 s (WireGuard's persistent-keepalive figure) notices a move within half a minute and keeps
/// the mapping we publish alive even while no peer sends to it.
pub const REFLECTOR_REFRESH: Duration = Duration::from_secs(25);

/// An answer not confirmed for this long is forgotten: three refreshes (with their retries) got
/// no answer, so the node is gone or the path to it changed, and an address we cannot confirm
/// would cost peers handshakes to nowhere.
pub const REFLECTOR_ANSWER_LIFETIME: Duration = Duration::from_secs(90);

/// Deepest nesting of lists and dictionaries inside a KRPC message that the scanner walks past.
/// BEP 5 answers nest two deep below the message (a `values` list in the `r` dictionary), so 8
/// leaves room for extensions while no datagram can make the walk deep.
pub const MAX_KRPC_NESTING: usize = 8;

// ---------------------------------------------------------------------------------------------
// Userspace mode (the overlay's TCP/IP stack inside the daemon; see shell::userspace)
// ---------------------------------------------------------------------------------------------

/// `[[forward]]` and `[[expose]]` entries a config may hold: each forward owns a listening
/// socket, each UDP entry its flow table, so the count is bounded from config alone.
pub const MAX_FORWARDS: usize = 64;
pub const MAX_EXPOSES: usize = 64;

/// Bytes of each in-daemon TCP socket's receive buffer and of its send buffer, allocated when
/// the connection opens and freed when it closes. The receive buffer is the window the remote
/// sender may have in flight: 128 KiB fills a 1 Gbit/s path of 1 ms round trip, and the
/// loopback and LAN paths userspace mode serves are shorter. Nothing else in the stack buffers
/// a stream: bytes move between these buffers and the local socket without another copy held.
pub const USERSPACE_TCP_BUFFER_BYTES: usize = 128 * 1024;

/// TCP sockets of the in-daemon stack at once: connections through forwards, exposes and the
/// SOCKS5 proxy, and the listening sockets of exposed ports. With both buffers this caps their
/// memory at 128 x 256 KiB = 32 MiB. A connection beyond it is refused at once: a local one is
/// closed (a SOCKS5 client gets "general failure"), an overlay one gets a TCP reset.
pub const USERSPACE_MAX_TCP_SOCKETS: usize = 128;

/// Listening sockets kept open per exposed TCP port: smoltcp's listening socket becomes the
/// connection itself, so this many SYNs arriving together can be taken before the next ones
/// are reset; a new listener replaces each one that turned into a connection. Measured: with 4,
/// a burst of 16 connections through a forward saw some reset. A listener's buffers are
/// allocated but untouched until it carries data, so they cost address space, not memory.
pub const EXPOSE_BACKLOG: usize = 16;

/// Local connections accepted (forwards, finished SOCKS5 handshakes) waiting for the event loop.
/// The loop takes them within one turn; when full, a new one is closed at once.
pub const USERSPACE_ACCEPT_QUEUE: usize = 16;

/// SOCKS5 handshakes in progress at once, each a small task with a 262-byte buffer; a client
/// beyond this is closed, and one that does not finish in SOCKS5_HANDSHAKE_TIMEOUT too.
pub const SOCKS5_HANDSHAKES: usize = 16;
pub const SOCKS5_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an exposed connection waits for the local service to accept it before the overlay
/// side is reset.
pub const EXPOSE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An overlay connection whose sent data (or SYN) stays unacknowledged this long is reset: the
/// peer is gone. Connections to an unreachable address fail after this too.
pub const USERSPACE_TCP_TIMEOUT: Duration = Duration::from_secs(60);

/// UDP flows (distinct local clients of a UDP forward, or overlay clients of a UDP expose)
/// tracked per entry. Each flow holds one smoltcp UDP socket (forward) or one local socket
/// (expose); a flow idle for USERSPACE_UDP_IDLE is forgotten, and when all are busy the
/// least recently used one is replaced.
pub const USERSPACE_UDP_FLOWS: usize = 32;
pub const USERSPACE_UDP_IDLE: Duration = Duration::from_secs(60);

/// Datagrams each in-daemon UDP socket queues each way, and their bytes: one burst of a DNS or
/// game-like exchange. More are dropped (UDP promises nothing more).
pub const USERSPACE_UDP_PACKETS: usize = 32;
pub const USERSPACE_UDP_BUFFER_BYTES: usize = 64 * 1024;
