//! What the tests read back from a simulation: devices and peers, the handshakes on the wire,
//! settled-state assertions, and the `Audit` of one pair's tracked packets.

use dhtun::core::device::Device;
use dhtun::core::peer::Peer;
use dhtun::core::wire::TYPE_INITIATION;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::network::{NodeId, Sim};
use crate::secs;

impl Sim {
    /// The sessions nodes 0 and 1 hold of each other (local index, remote index, whether it
    /// initiated), for failure messages.
    pub(crate) fn describe_sessions(&self) -> String {
        let side = |n: NodeId| {
            let p = self.peer(n, 1 - n);
            let s = |s: &Option<dhtun::core::session::Session>| {
                s.as_ref()
                    .map(|s| (s.local_index, s.remote_index, s.we_initiated))
            };
            format!(
                "{n}: current (local, remote, we_initiated) {:?}, previous {:?}, next {:?}",
                s(&p.current),
                s(&p.previous),
                s(&p.next)
            )
        };
        format!("{}; {}", side(0), side(1))
    }

    // ---- observations -----------------------------------------------------------------------

    pub(crate) fn device(&self, node: NodeId) -> &Device {
        &self.nodes[node].device
    }

    pub(crate) fn overlay(&self, node: NodeId) -> Ipv4Addr {
        self.nodes[node].overlay
    }

    /// `of` as `at`'s device knows it.
    pub(crate) fn peer(&self, at: NodeId, of: NodeId) -> &Peer {
        let key = self.nodes[of].public_key;
        self.device(at)
            .peers()
            .iter()
            .find(|p| p.config.public_key == key)
            .unwrap_or_else(|| panic!("{at} has no peer {of}"))
    }

    /// Send times of handshake initiations put on the wire (by `from`, or by anyone) in `range`.
    pub(crate) fn initiations(
        &self,
        from: Option<NodeId>,
        range: std::ops::Range<Duration>,
    ) -> Vec<Duration> {
        let mut seen = std::collections::HashSet::new();
        self.wire
            .iter()
            .filter(|w| w.kind == TYPE_INITIATION && from.is_none_or(|f| f == w.from))
            .filter(|w| seen.insert((w.from, w.sender)))
            .filter(|w| range.contains(&w.at))
            .map(|w| w.at)
            .collect()
    }

    /// Send times of datagrams of message type `kind` put on the wire (by `from`, or by anyone)
    /// in `range`.
    pub(crate) fn sent_of_kind(
        &self,
        from: Option<NodeId>,
        kind: u8,
        range: std::ops::Range<Duration>,
    ) -> Vec<Duration> {
        self.wire
            .iter()
            .filter(|w| w.kind == kind && from.is_none_or(|f| f == w.from))
            .filter(|w| range.contains(&w.at))
            .map(|w| w.at)
            .collect()
    }

    /// Handshake initiations in `range`, by anyone, grouped into rounds: a round is every
    /// initiation within a second of the round's first.
    pub(crate) fn handshake_rounds(
        &self,
        range: std::ops::Range<Duration>,
    ) -> Vec<Vec<(NodeId, Duration)>> {
        let mut rounds: Vec<Vec<(NodeId, Duration)>> = Vec::new();
        let initiations = self
            .wire
            .iter()
            .filter(|w| w.kind == TYPE_INITIATION && range.contains(&w.at));
        for w in initiations {
            match rounds.last_mut() {
                Some(round) if w.at - round[0].1 <= secs(1) => round.push((w.from, w.at)),
                _ => rounds.push(vec![(w.from, w.at)]),
            }
        }
        rounds
    }

    /// Panics unless each of `a` and `b` sends on a session the other holds.
    pub(crate) fn assert_each_reads_the_other(&self, a: NodeId, b: NodeId) {
        for (from, to) in [(a, b), (b, a)] {
            let sending = self.peer(from, to).current.as_ref();
            let sending = sending.unwrap_or_else(|| panic!("{from} has no current session"));
            let receiver = self.peer(to, from);
            let held: Vec<u32> = [&receiver.previous, &receiver.current, &receiver.next]
                .into_iter()
                .flatten()
                .map(|s| s.local_index)
                .collect();
            assert!(
                held.contains(&sending.remote_index),
                "{from} sends on index {} that {to} does not hold ({held:?})",
                sending.remote_index
            );
        }
    }

    /// Panics unless `a` and `b` send on one and the same session, initiated by one of them.
    pub(crate) fn assert_settled(&self, a: NodeId, b: NodeId) {
        let (pa, pb) = (self.peer(a, b), self.peer(b, a));
        let (Some(sa), Some(sb)) = (&pa.current, &pb.current) else {
            panic!("{a} or {b} has no current session");
        };
        assert_eq!(
            (sa.local_index, sa.remote_index),
            (sb.remote_index, sb.local_index),
            "{a} and {b} send on different sessions"
        );
        assert_ne!(
            sa.we_initiated, sb.we_initiated,
            "exactly one side should be the session's initiator"
        );
    }

    pub(crate) fn sent_by(&self, node: NodeId) -> usize {
        self.wire.iter().filter(|w| w.from == node).count()
    }

    /// What became of the tracked packets from `src` to `dst`.
    pub(crate) fn audit(&self, src: NodeId, dst: NodeId) -> Audit {
        let mut times: HashMap<u64, usize> = HashMap::new();
        for id in self.nodes[dst].tun.iter().filter_map(|d| d.id) {
            if id.src == src {
                *times.entry(id.seq).or_insert(0) += 1;
            }
        }
        let packets: Vec<(u64, Duration, bool)> = self
            .sent
            .iter()
            .filter(|(id, _)| id.src == src && id.dst == dst)
            .map(|(id, sent)| (id.seq, sent.at, times.contains_key(&id.seq)))
            .collect();
        Audit {
            sent: packets.len(),
            delivered: times.len(),
            duplicates: times.values().map(|n| n - 1).sum(),
            packets,
        }
    }

    /// Panics if any node's TUN received a packet that was not sent to it, byte for byte, by
    /// the peer it came from.
    pub(crate) fn assert_no_forgeries(&self) {
        for (node, n) in self.nodes.iter().enumerate() {
            if let Some(bad) = n.tun.iter().find(|d| d.id.is_none()) {
                panic!(
                    "node {node} received a forged packet at {:?}: {:02x?}",
                    bad.at, bad.bytes
                );
            }
        }
    }

    pub(crate) fn assert_no_drops(&self, node: NodeId) {
        let drops: Vec<_> = self
            .device(node)
            .drops()
            .iter()
            .filter(|(_, n)| *n > 0)
            .collect();
        assert!(drops.is_empty(), "node {node} dropped: {drops:?}");
    }

    /// A digest of everything observable, to compare two runs.
    pub(crate) fn fingerprint(&self) -> Vec<(Duration, NodeId, u8, usize)> {
        let mut all: Vec<_> = self
            .wire
            .iter()
            .map(|w| (w.at, w.from, w.kind, w.len))
            .collect();
        for (node, n) in self.nodes.iter().enumerate() {
            all.extend(
                n.tun
                    .iter()
                    .map(|d| (d.at, node, 0xff, d.id.map_or(0, |id| id.seq as usize))),
            );
        }
        all
    }
}

/// Fate of the tracked packets on one pair.
pub(crate) struct Audit {
    pub(crate) sent: usize,
    /// Distinct packets delivered.
    pub(crate) delivered: usize,
    /// Deliveries beyond the first of each packet.
    pub(crate) duplicates: usize,
    /// (seq, sent at, delivered), in send order.
    packets: Vec<(u64, Duration, bool)>,
}

impl Audit {
    pub(crate) fn missing(&self) -> Vec<u64> {
        self.missing_sent_after(Duration::ZERO)
    }

    /// Packets sent in `range` that never arrived (end the range before the last packets
    /// still in flight).
    pub(crate) fn lost_between(&self, range: std::ops::Range<Duration>) -> Vec<u64> {
        self.packets
            .iter()
            .filter(|(_, at, delivered)| range.contains(at) && !delivered)
            .map(|(seq, _, _)| *seq)
            .collect()
    }

    pub(crate) fn missing_sent_after(&self, after: Duration) -> Vec<u64> {
        self.packets
            .iter()
            .filter(|(_, at, delivered)| *at >= after && !delivered)
            .map(|(seq, _, _)| *seq)
            .collect()
    }

    /// The longest run of consecutive packets sent at or after `after` that were all lost.
    pub(crate) fn longest_loss_run(&self, after: Duration) -> Vec<u64> {
        let mut longest: Vec<u64> = Vec::new();
        let mut run: Vec<u64> = Vec::new();
        for &(seq, _, delivered) in self.packets.iter().filter(|p| p.1 >= after) {
            if delivered {
                run.clear();
            } else {
                run.push(seq);
                if run.len() > longest.len() {
                    longest = run.clone();
                }
            }
        }
        longest
    }

    /// The send time from which, at or after `after`, every packet arrived; None when the
    /// last one sent was lost.
    pub(crate) fn recovered_at(&self, after: Duration) -> Option<Duration> {
        let later: Vec<_> = self.packets.iter().filter(|p| p.1 >= after).collect();
        let last_lost = later.iter().rposition(|p| !p.2);
        match last_lost {
            None => later.first().map(|p| p.1),
            Some(i) => later.get(i + 1).map(|p| p.1),
        }
    }
}
