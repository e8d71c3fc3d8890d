//! The simulation harness: nodes, the in-memory network between them with its impairments, the
//! virtual clock, and the event loop that drives the devices.

use dhtun::core::device::{Device, DeviceConfig, NetworkAction, TunAction};
use dhtun::core::keys::{PresharedKey, PublicKey, SecretKey};
use dhtun::core::limits::{RING_SLOT_BYTES, TIMER_TICK};
use dhtun::core::peer::PeerConfig;
use dhtun::core::wire::TYPE_INITIATION;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::ms;
use crate::packets::{app_packet, host_route, key_seed, overlay, packet_id, underlay};

pub(crate) type NodeId = usize;

/// Wall-clock time at virtual time zero; restarted nodes add their start time to it.
pub(crate) const WALL_CLOCK_AT_ZERO: Duration = Duration::from_secs(1_700_000_000);
pub(crate) const MTU: usize = 1420;
/// Upper bound on loop iterations in one `run_until`, so a bug cannot hang the test.
pub(crate) const MAX_STEPS: u64 = 5_000_000;
/// Upper bound on datagrams one `poll_transmit` drain may produce.
pub(crate) const MAX_DRAIN: usize = 10_000;

/// How one direction of a link treats datagrams. Probabilities are per datagram.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Impairment {
    pub(crate) loss: f64,
    pub(crate) duplicate: f64,
    /// Chance a datagram (or copy) is held back by up to `reorder_delay` extra.
    pub(crate) reorder: f64,
    pub(crate) reorder_delay: Duration,
    pub(crate) latency_min: Duration,
    pub(crate) latency_max: Duration,
}

impl Impairment {
    pub(crate) const NONE: Impairment = Impairment {
        loss: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
        reorder_delay: ms(30),
        latency_min: ms(1),
        latency_max: ms(5),
    };
    pub(crate) const BLACKHOLE: Impairment = Impairment {
        loss: 1.0,
        ..Impairment::NONE
    };
}

/// An application sending `count` packets, one every `every` from `start`.
pub(crate) struct Stream {
    start: Duration,
    every: Duration,
    count: usize,
}

impl Stream {
    pub(crate) fn new(start: Duration, every: Duration, count: usize) -> Self {
        Self {
            start,
            every,
            count,
        }
    }
}

/// A tracked inner packet: who sent it to whom, and its sequence number on that pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct PacketId {
    pub(crate) src: NodeId,
    pub(crate) dst: NodeId,
    pub(crate) seq: u64,
}

pub(crate) struct Sent {
    pub(crate) at: Duration,
    bytes: Vec<u8>,
}

/// A packet a node's TUN device received.
pub(crate) struct Delivery {
    /// Some when the bytes equal a tracked packet addressed to this node, and the datagram came
    /// from its sender's underlay address; None is a forgery.
    pub(crate) id: Option<PacketId>,
    pub(crate) at: Duration,
    pub(crate) bytes: Vec<u8>,
}

/// A datagram as it left a node, before the link had its say.
pub(crate) struct WireRecord {
    pub(crate) at: Duration,
    pub(crate) from: NodeId,
    pub(crate) kind: u8,
    pub(crate) len: usize,
    /// The sender index of an initiation: copies of one initiation (hole punching resends it
    /// to every address each second) share it.
    pub(crate) sender: Option<u32>,
}

pub(crate) struct Node {
    pub(crate) config: DeviceConfig,
    pub(crate) device: Device,
    /// Virtual time at which this incarnation of the device started: its own `now` is zero then.
    started_at: Duration,
    underlay: SocketAddr,
    pub(crate) overlay: Ipv4Addr,
    pub(crate) public_key: PublicKey,
    pub(crate) tun: Vec<Delivery>,
}

pub(crate) enum Event {
    Datagram {
        to: NodeId,
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    /// An application on `node` writes `packet` into its TUN device.
    Tun {
        node: NodeId,
        packet: Vec<u8>,
        tracked: bool,
    },
}

/// An event and when it happens; `seq` breaks ties in insertion order, so runs are exact.
pub(crate) struct Scheduled {
    at: Duration,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

pub(crate) struct Sim {
    now: Duration,
    next_tick: Duration,
    pub(crate) nodes: Vec<Node>,
    /// links[from][to]
    links: Vec<Vec<Impairment>>,
    /// Targeted losses on top of the links' random ones: (sender, message type, how many more).
    losses: Vec<(NodeId, u8, usize)>,
    /// Targeted delays on top of the links' latency: (sender, message type, extra delay), each
    /// applied once, to the next such datagram.
    delays: Vec<(NodeId, u8, Duration)>,
    queue: BinaryHeap<Reverse<Scheduled>>,
    next_event_seq: u64,
    next_packet_seq: HashMap<(NodeId, NodeId), u64>,
    /// Drives every impairment decision; seeded, so the network misbehaves reproducibly.
    rng: StdRng,
    pub(crate) sent: BTreeMap<PacketId, Sent>,
    pub(crate) wire: Vec<WireRecord>,
    /// Reused packet buffers: `buf` has room for padding, `out` for any datagram.
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl Sim {
    /// `n` nodes, each configured with every other as a peer at its static endpoint.
    pub(crate) fn mesh(n: usize, seed: u64, impairment: Impairment) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let keys: Vec<SecretKey> = (0..n).map(|i| SecretKey::from_seed(key_seed(i))).collect();
        let nodes = (0..n)
            .map(|i| {
                let peers = (0..n)
                    .filter(|&j| j != i)
                    .map(|j| PeerConfig {
                        public_key: keys[j].public_key(),
                        preshared_key: PresharedKey::default(),
                        allowed_ips: vec![host_route(overlay(j))],
                        endpoint: Some(underlay(j)),
                        persistent_keepalive: None,
                        relay: false,
                    })
                    .collect();
                let config = DeviceConfig {
                    secret_key: keys[i].clone(),
                    mtu: MTU,
                    peers,
                    wall_clock_at_zero: WALL_CLOCK_AT_ZERO,
                    rng_seed: rng.gen(),
                    serve_relay: false,
                    pacing: true,
                };
                Node {
                    device: Device::new(config.clone()),
                    config,
                    started_at: Duration::ZERO,
                    underlay: underlay(i),
                    overlay: overlay(i),
                    public_key: keys[i].public_key(),
                    tun: Vec::new(),
                }
            })
            .collect();
        Self {
            now: Duration::ZERO,
            next_tick: Duration::ZERO,
            nodes,
            links: vec![vec![impairment; n]; n],
            losses: Vec::new(),
            delays: Vec::new(),
            queue: BinaryHeap::new(),
            next_event_seq: 0,
            next_packet_seq: HashMap::new(),
            rng,
            sent: BTreeMap::new(),
            wire: Vec::new(),
            buf: vec![0; RING_SLOT_BYTES],
            out: vec![0; RING_SLOT_BYTES],
        }
    }

    pub(crate) fn set_link(&mut self, from: NodeId, to: NodeId, impairment: Impairment) {
        self.links[from][to] = impairment;
    }

    /// Both directions between `a` and `b`.
    pub(crate) fn set_links(&mut self, a: NodeId, b: NodeId, impairment: Impairment) {
        self.set_link(a, b, impairment);
        self.set_link(b, a, impairment);
    }

    /// Makes `relay` serve as a relay and every other node treat it as one. Call before any
    /// traffic: the devices start afresh.
    pub(crate) fn make_relay(&mut self, relay: NodeId) {
        let relay_key = self.nodes[relay].public_key;
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if i == relay {
                node.config.serve_relay = true;
            }
            for peer in &mut node.config.peers {
                peer.relay = peer.public_key == relay_key;
            }
            node.device = Device::new(node.config.clone());
        }
    }

    /// Loses the next `count` datagrams of message type `kind` that `from` sends.
    pub(crate) fn lose_next(&mut self, from: NodeId, kind: u8, count: usize) {
        self.losses.push((from, kind, count));
    }

    /// Ends the targeted losses still pending: an outage that ends now.
    pub(crate) fn clear_losses(&mut self) {
        self.losses.clear();
    }

    /// Holds back the next datagram of message type `kind` that `from` sends by `by`, on top of
    /// the link's latency: jitter aimed at one message, so a race goes one precise way.
    pub(crate) fn delay_next(&mut self, from: NodeId, kind: u8, by: Duration) {
        self.delays.push((from, kind, by));
    }

    /// Replaces `node`'s device with a fresh one: same identity and peers, new random seed, and
    /// a wall clock that has moved on by the virtual time elapsed, as after a daemon restart.
    pub(crate) fn restart(&mut self, node: NodeId, rng_seed: u8) {
        let now = self.now;
        let n = &mut self.nodes[node];
        n.config.rng_seed = [rng_seed; 32];
        n.config.wall_clock_at_zero = WALL_CLOCK_AT_ZERO + now;
        n.device = Device::new(n.config.clone());
        n.started_at = now;
    }

    // ---- traffic ----------------------------------------------------------------------------

    /// Schedules tracked packets from `src` to `dst`; each has its own sequence number.
    pub(crate) fn stream(&mut self, src: NodeId, dst: NodeId, stream: Stream) {
        for i in 0..stream.count {
            let seq = self.next_packet_seq.entry((src, dst)).or_insert(0);
            let id = PacketId {
                src,
                dst,
                seq: *seq,
            };
            *seq += 1;
            let packet = app_packet(id, self.overlay(src), self.overlay(dst));
            let at = stream.start + stream.every * i as u32;
            self.schedule(
                at,
                Event::Tun {
                    node: src,
                    packet,
                    tracked: true,
                },
            );
        }
    }

    /// Schedules an untracked, arbitrary inner packet written into `node`'s TUN device.
    pub(crate) fn inject(&mut self, at: Duration, node: NodeId, packet: Vec<u8>) {
        let event = Event::Tun {
            node,
            packet,
            tracked: false,
        };
        self.schedule(at, event);
    }

    fn schedule(&mut self, at: Duration, event: Event) {
        let seq = self.next_event_seq;
        self.next_event_seq += 1;
        self.queue.push(Reverse(Scheduled { at, seq, event }));
    }

    // ---- the loop ---------------------------------------------------------------------------

    /// Runs every timer tick and event up to and including `end`.
    pub(crate) fn run_until(&mut self, end: Duration) {
        for _ in 0..MAX_STEPS {
            let next_event = self.queue.peek().map(|Reverse(s)| s.at);
            // A tick due at the same instant as an event goes first; either order would be
            // deterministic, this one matches a shell that checks timers before reading.
            if self.next_tick <= end && next_event.is_none_or(|at| self.next_tick <= at) {
                self.now = self.next_tick;
                self.next_tick += TIMER_TICK;
                for node in 0..self.nodes.len() {
                    let now = self.local_now(node);
                    self.nodes[node].device.handle_timers(now);
                    self.drain(node);
                }
            } else if next_event.is_some_and(|at| at <= end) {
                let Some(Reverse(scheduled)) = self.queue.pop() else {
                    unreachable!("peeked an event")
                };
                self.now = scheduled.at;
                self.dispatch(scheduled.event);
            } else {
                self.now = end;
                return;
            }
        }
        panic!("simulation did not reach {end:?} within {MAX_STEPS} steps");
    }

    fn dispatch(&mut self, event: Event) {
        match event {
            Event::Datagram { to, from, bytes } => self.receive(to, from, &bytes),
            Event::Tun {
                node,
                packet,
                tracked,
            } => {
                if tracked {
                    let id = packet_id(&packet).expect("tracked packets carry an id");
                    let sent = Sent {
                        at: self.now,
                        bytes: packet.clone(),
                    };
                    assert!(self.sent.insert(id, sent).is_none(), "{id:?} sent twice");
                }
                self.write_tun(node, &packet);
            }
        }
    }

    /// `packet` read from `node`'s TUN device.
    fn write_tun(&mut self, node: NodeId, packet: &[u8]) {
        let now = self.local_now(node);
        self.buf[..packet.len()].copy_from_slice(packet);
        let action = self.nodes[node].device.handle_tun_packet(
            &mut self.buf,
            packet.len(),
            now,
            &mut self.out,
        );
        match action {
            TunAction::WriteToNetwork { to, len } => {
                let datagram = self.out[..len].to_vec();
                self.transmit(node, to, datagram);
            }
            // Counted by the device; the tests read its counters.
            TunAction::Staged | TunAction::Drop(_) => {}
        }
        self.drain(node);
    }

    /// A datagram from `from` arrives at `node`.
    fn receive(&mut self, node: NodeId, from: SocketAddr, datagram: &[u8]) {
        let now = self.local_now(node);
        let action = self.nodes[node]
            .device
            .handle_datagram(from, datagram, now, &mut self.out);
        match action {
            NetworkAction::WriteToTun { len } => {
                let bytes = self.out[..len].to_vec();
                let id = self.authenticate(node, from, &bytes);
                let at = self.now;
                self.nodes[node].tun.push(Delivery { id, at, bytes });
            }
            NetworkAction::WriteToNetwork { to, len } => {
                let reply = self.out[..len].to_vec();
                self.transmit(node, to, reply);
            }
            NetworkAction::Consumed | NetworkAction::Drop(_) => {}
        }
        self.drain(node);
    }

    /// Sends everything the device has pending, as the shell does after every event.
    fn drain(&mut self, node: NodeId) {
        let now = self.local_now(node);
        for _ in 0..MAX_DRAIN {
            let Some(transmit) = self.nodes[node].device.poll_transmit(now, &mut self.out) else {
                return;
            };
            let datagram = self.out[..transmit.len].to_vec();
            self.transmit(node, transmit.to, datagram);
        }
        panic!("node {node}: poll_transmit still had work after {MAX_DRAIN} datagrams");
    }

    /// Puts a datagram on the wire: logged as sent, then lost, duplicated or delayed.
    fn transmit(&mut self, from: NodeId, to: SocketAddr, datagram: Vec<u8>) {
        let kind = datagram.first().copied().unwrap_or(0);
        let sender = datagram
            .get(4..8)
            .filter(|_| kind == TYPE_INITIATION)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        self.wire.push(WireRecord {
            at: self.now,
            from,
            kind,
            len: datagram.len(),
            sender,
        });
        if let Some(rule) = self
            .losses
            .iter_mut()
            .find(|(node, k, left)| *node == from && *k == kind && *left > 0)
        {
            rule.2 -= 1;
            return;
        }
        let extra = match self
            .delays
            .iter()
            .position(|&(node, k, _)| node == from && k == kind)
        {
            Some(i) => self.delays.remove(i).2,
            None => Duration::ZERO,
        };
        let Some(dst) = self.nodes.iter().position(|n| n.underlay == to) else {
            return;
        };
        let link = self.links[from][dst];
        // Every decision draws from the rng whatever the outcome, so the sequence of draws
        // depends only on the sequence of datagrams.
        let lost = self.rng.gen_bool(link.loss);
        let copies = if self.rng.gen_bool(link.duplicate) {
            2
        } else {
            1
        };
        let source = self.nodes[from].underlay;
        for _ in 0..copies {
            let mut delay = extra + self.rng.gen_range(link.latency_min..=link.latency_max);
            if self.rng.gen_bool(link.reorder) {
                delay += self.rng.gen_range(Duration::ZERO..=link.reorder_delay);
            }
            if !lost {
                let event = Event::Datagram {
                    to: dst,
                    from: source,
                    bytes: datagram.clone(),
                };
                self.schedule(self.now + delay, event);
            }
        }
    }

    /// The device's own clock: time since its current incarnation started.
    fn local_now(&self, node: NodeId) -> Duration {
        self.now - self.nodes[node].started_at
    }

    /// The id of the tracked packet `bytes` is, if it is exactly that packet, addressed to
    /// `node`, and came from its sender's underlay address.
    fn authenticate(&self, node: NodeId, from: SocketAddr, bytes: &[u8]) -> Option<PacketId> {
        let id = packet_id(bytes)?;
        let sent = self.sent.get(&id)?;
        // Straight from its sender, or through a relay (which cannot have made it: it holds
        // no keys of the sender's session with us).
        let via_relay = self
            .nodes
            .iter()
            .any(|n| n.config.serve_relay && n.underlay == from);
        let genuine = id.dst == node
            && sent.bytes == bytes
            && (self.nodes.get(id.src)?.underlay == from || via_relay);
        genuine.then_some(id)
    }
}
