//! Fixed-size FIFO of packets with tail drop. All memory is allocated once in `new`; pushing,
//! peeking and popping only copy bytes and move indices, so a full ring costs no allocation and
//! refuses the newest packet instead of growing.
//!
//! A ring is full when its slots are taken or when the bytes queued reach its byte cap: slots
//! bound memory, the byte cap bounds the queueing delay a full ring adds (bytes drain at the
//! link's speed, slots do not). Packets also carry the time they were queued, so a caller can
//! drop those that waited too long (`drop_stale`).

use core::fmt;
use core::time::Duration;

/// Packets of at most `slot_bytes` each, oldest first, with per-packet metadata `M`.
#[derive(Debug, Clone)]
pub struct PacketRing<M> {
    /// Slot `s` occupies `buf[s * slot_bytes..(s + 1) * slot_bytes]`.
    buf: Box<[u8]>,
    lens: Box<[u32]>,
    meta: Box<[M]>,
    /// When each packet was committed, for `drop_stale`.
    queued_at: Box<[Duration]>,
    slot_bytes: usize,
    /// The ring takes packets while fewer bytes than this are queued.
    max_bytes: usize,
    /// Physical slot of the oldest packet.
    head: usize,
    len: usize,
    queued_bytes: usize,
}

/// `commit` found the ring full: no vacant slot, or the byte cap reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingFull;

/// Why `push` refused a packet. The ring is unchanged either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// Every slot is taken, or the byte cap is reached: the caller drops the new packet (tail
    /// drop).
    Full,
    /// The packet is longer than a slot and could never be queued whole.
    TooLarge,
}

impl<M: Copy + Default> PacketRing<M> {
    /// Allocates `slots * slot_bytes` bytes up front; callers bound both from `limits`.
    /// `slots` below 1 is raised to 1, and `slot_bytes` is capped at `u32::MAX` because lengths
    /// are stored as `u32`. Without `with_max_bytes` only the slots limit the ring.
    pub fn new(slots: usize, slot_bytes: usize) -> Self {
        let slots = slots.max(1);
        let slot_bytes = slot_bytes.min(u32::MAX as usize);
        Self {
            buf: vec![0u8; slots.saturating_mul(slot_bytes)].into_boxed_slice(),
            lens: vec![0u32; slots].into_boxed_slice(),
            meta: vec![M::default(); slots].into_boxed_slice(),
            queued_at: vec![Duration::ZERO; slots].into_boxed_slice(),
            slot_bytes,
            max_bytes: usize::MAX,
            head: 0,
            len: 0,
            queued_bytes: 0,
        }
    }

    /// Caps the bytes queued: the ring takes a packet only while fewer than `max_bytes` are
    /// queued, so it holds at most `max_bytes + slot_bytes - 1`. Admission does not depend on the
    /// new packet's length, so a caller can refuse a packet before producing it (before
    /// encrypting it). Allocates nothing: memory stays `slots * slot_bytes`. At least 1.
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes.max(1);
        self
    }

    pub fn capacity(&self) -> usize {
        self.lens.len()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// No packet fits: every slot is taken or the byte cap is reached.
    pub fn is_full(&self) -> bool {
        self.len == self.capacity() || self.queued_bytes >= self.max_bytes
    }

    pub fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    /// The byte cap (`usize::MAX` when none was set).
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Slots still vacant (packets may still be refused by the byte cap).
    pub fn free_slots(&self) -> usize {
        self.capacity() - self.len
    }

    /// Bytes that may still be queued before the byte cap refuses packets.
    pub fn free_bytes(&self) -> usize {
        self.max_bytes.saturating_sub(self.queued_bytes)
    }

    /// The buffer the next push fills, or None when full by slots or bytes (the caller drops the
    /// new packet: tail drop). It may hold bytes of an earlier packet; nothing is queued until `commit`.
    pub fn vacant_slot(&mut self) -> Option<&mut [u8]> {
        if self.is_full() {
            return None;
        }
        let slot = self.physical(self.len);
        let start = slot * self.slot_bytes;
        self.buf.get_mut(start..start + self.slot_bytes)
    }

    /// Publishes the packet written into `vacant_slot` (len clamped to slot_bytes), queued at
    /// `now` (for `drop_stale`). Err(RingFull) if full.
    pub fn commit(&mut self, len: usize, meta: M, now: Duration) -> Result<(), RingFull> {
        if self.is_full() {
            return Err(RingFull);
        }
        let len = len.min(self.slot_bytes);
        let slot = self.physical(self.len);
        // `slot_bytes` was capped at u32::MAX in `new`, so this never saturates.
        self.lens[slot] = u32::try_from(len).unwrap_or(u32::MAX);
        self.meta[slot] = meta;
        self.queued_at[slot] = now;
        self.len += 1;
        self.queued_bytes += len;
        Ok(())
    }

    /// Copies `packet` in, queued at `now`. A packet longer than a slot is `TooLarge` even when
    /// the ring is also full, since it could never be queued; otherwise a full ring gives `Full`.
    pub fn push(&mut self, packet: &[u8], meta: M, now: Duration) -> Result<(), PushError> {
        if packet.len() > self.slot_bytes {
            return Err(PushError::TooLarge);
        }
        let slot = self.vacant_slot().ok_or(PushError::Full)?;
        slot[..packet.len()].copy_from_slice(packet);
        self.commit(packet.len(), meta, now)
            .map_err(|RingFull| PushError::Full)
    }

    /// Oldest packet, if any.
    pub fn front(&self) -> Option<(&[u8], M)> {
        self.get(0)
    }

    /// The i-th oldest packet (0 = front), for building a batched send.
    pub fn get(&self, i: usize) -> Option<(&[u8], M)> {
        if i >= self.len {
            return None;
        }
        let slot = self.physical(i);
        let start = slot * self.slot_bytes;
        let bytes = self.buf.get(start..start + self.lens[slot] as usize)?;
        Some((bytes, self.meta[slot]))
    }

    /// Removes up to n oldest packets; returns how many were removed.
    pub fn pop_front_n(&mut self, n: usize) -> usize {
        let removed = n.min(self.len);
        for i in 0..removed {
            let slot = self.physical(i);
            self.queued_bytes -= self.lens[slot] as usize;
        }
        self.head = self.physical(removed);
        self.len -= removed;
        removed
    }

    /// Removes the oldest packets while they have waited longer than `max_wait` at `now`; returns
    /// how many. Packets leave in the order they came, so the first young one ends the scan.
    pub fn drop_stale(&mut self, now: Duration, max_wait: Duration) -> usize {
        let mut stale = 0;
        while stale < self.len {
            let slot = self.physical(stale);
            if now.saturating_sub(self.queued_at[slot]) <= max_wait {
                break;
            }
            stale += 1;
        }
        self.pop_front_n(stale)
    }

    /// Removes the oldest packet; false when the ring was empty.
    pub fn pop_front(&mut self) -> bool {
        self.pop_front_n(1) == 1
    }

    pub fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
        self.queued_bytes = 0;
    }

    /// Total bytes of queued packets (kept as a running sum, O(1)).
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Physical slot of the `i`-th oldest packet, for `i <= capacity`.
    fn physical(&self, i: usize) -> usize {
        // Both terms are below capacity, so one subtraction wraps without a division.
        let slot = self.head + i;
        if slot >= self.capacity() {
            slot - self.capacity()
        } else {
            slot
        }
    }
}

impl fmt::Display for RingFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("packet ring is full")
    }
}

impl std::error::Error for RingFull {}

impl fmt::Display for PushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Full => "packet ring is full",
            Self::TooLarge => "packet is larger than a ring slot",
        })
    }
}

impl std::error::Error for PushError {}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::VecDeque;

    fn random_packet(rng: &mut StdRng, max: usize) -> Vec<u8> {
        let len = rng.gen_range(0..=max);
        (0..len).map(|_| rng.gen()).collect()
    }

    /// The model: a VecDeque of (packet, meta, queued at), and the ring's two limits.
    struct Model {
        packets: VecDeque<(Vec<u8>, u32, Duration)>,
        capacity: usize,
        max_bytes: usize,
    }

    impl Model {
        fn bytes(&self) -> usize {
            self.packets.iter().map(|(p, _, _)| p.len()).sum()
        }

        fn full(&self) -> bool {
            self.packets.len() == self.capacity || self.bytes() >= self.max_bytes
        }
    }

    fn assert_same(ring: &PacketRing<u32>, model: &Model) {
        assert!(ring.len() <= model.capacity);
        assert_eq!(ring.len(), model.packets.len());
        assert_eq!(ring.is_empty(), model.packets.is_empty());
        assert_eq!(ring.is_full(), model.full());
        assert_eq!(ring.queued_bytes(), model.bytes());
        assert_eq!(ring.free_slots(), model.capacity - model.packets.len());
        assert_eq!(
            ring.free_bytes(),
            model.max_bytes.saturating_sub(model.bytes())
        );
        // Admission ignores the new packet's length, so a ring may pass its cap by one packet.
        assert!(ring.queued_bytes() < model.max_bytes.saturating_add(ring.slot_bytes()));
        for (i, (packet, meta, _)) in model.packets.iter().enumerate() {
            assert_eq!(ring.get(i), Some((packet.as_slice(), *meta)), "packet {i}");
        }
        assert_eq!(ring.get(model.packets.len()), None);
        assert_eq!(
            ring.front(),
            model.packets.front().map(|(p, m, _)| (p.as_slice(), *m))
        );
    }

    #[test]
    fn matches_model_on_random_operations() {
        const SLOT: usize = 48;
        for seed in 0..64u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let capacity = rng.gen_range(1..=9);
            // Half the rings are limited by slots only, half also by a byte cap that may be
            // below, around or above what the slots hold.
            let max_bytes = if seed % 2 == 0 {
                usize::MAX
            } else {
                rng.gen_range(1..=capacity * SLOT + SLOT)
            };
            let mut ring = PacketRing::<u32>::new(capacity, SLOT);
            if max_bytes != usize::MAX {
                ring = ring.with_max_bytes(max_bytes);
            }
            assert_eq!(ring.max_bytes(), max_bytes);
            let mut model = Model {
                packets: VecDeque::new(),
                capacity,
                max_bytes,
            };
            let base = ring.buf.as_ptr();
            let mut now = Duration::ZERO;
            for _ in 0..5_000 {
                now += Duration::from_micros(rng.gen_range(0..=3_000));
                let meta: u32 = rng.gen();
                match rng.gen_range(0..100) {
                    0..=34 => {
                        let packet = random_packet(&mut rng, SLOT + 8);
                        let expected = if packet.len() > SLOT {
                            Err(PushError::TooLarge)
                        } else if model.full() {
                            Err(PushError::Full)
                        } else {
                            model.packets.push_back((packet.clone(), meta, now));
                            Ok(())
                        };
                        // A refused push leaves the model untouched, and `assert_same` below
                        // then proves the ring kept its old contents too.
                        assert_eq!(ring.push(&packet, meta, now), expected);
                    }
                    35..=59 => {
                        let fill = random_packet(&mut rng, SLOT);
                        let claimed = rng.gen_range(0..=SLOT + 8);
                        match ring.vacant_slot() {
                            None => {
                                assert!(model.full());
                                assert_eq!(ring.commit(claimed, meta, now), Err(RingFull));
                            }
                            Some(slot) => {
                                assert!(!model.full());
                                assert_eq!(slot.len(), SLOT);
                                slot.fill(0xee);
                                slot[..fill.len()].copy_from_slice(&fill);
                                let stored = slot[..claimed.min(SLOT)].to_vec();
                                assert_eq!(ring.commit(claimed, meta, now), Ok(()));
                                model.packets.push_back((stored, meta, now));
                            }
                        }
                    }
                    60..=72 => {
                        let popped = ring.pop_front();
                        assert_eq!(popped, model.packets.pop_front().is_some());
                    }
                    73..=87 => {
                        let n = rng.gen_range(0..=capacity + 2);
                        let expected = n.min(model.packets.len());
                        model.packets.drain(..expected);
                        assert_eq!(ring.pop_front_n(n), expected);
                    }
                    88..=97 => {
                        let max_wait = Duration::from_micros(rng.gen_range(0..=10_000));
                        let stale = model
                            .packets
                            .iter()
                            .take_while(|(_, _, at)| now - *at > max_wait)
                            .count();
                        model.packets.drain(..stale);
                        assert_eq!(ring.drop_stale(now, max_wait), stale);
                    }
                    _ => {
                        ring.clear();
                        model.packets.clear();
                    }
                }
                assert_same(&ring, &model);
                assert_eq!(ring.buf.as_ptr(), base, "backing buffer moved");
            }
        }
    }

    #[test]
    fn full_ring_drops_newest() {
        let mut ring = PacketRing::<u8>::new(2, 4);
        assert_eq!(ring.push(b"a", 1, Duration::ZERO), Ok(()));
        assert_eq!(ring.push(b"bb", 2, Duration::ZERO), Ok(()));
        assert_eq!(ring.push(b"ccc", 3, Duration::ZERO), Err(PushError::Full));
        assert!(ring.vacant_slot().is_none());
        assert_eq!(ring.commit(1, 4, Duration::ZERO), Err(RingFull));
        assert_eq!(ring.get(0), Some((&b"a"[..], 1)));
        assert_eq!(ring.get(1), Some((&b"bb"[..], 2)));
        assert_eq!(ring.queued_bytes(), 3);
    }

    #[test]
    fn too_large_is_refused_not_truncated() {
        let mut ring = PacketRing::<()>::new(2, 4);
        assert_eq!(
            ring.push(b"12345", (), Duration::ZERO),
            Err(PushError::TooLarge)
        );
        assert!(ring.is_empty());
        assert_eq!(ring.push(b"1234", (), Duration::ZERO), Ok(()));
        assert_eq!(ring.front(), Some((&b"1234"[..], ())));
    }

    #[test]
    fn commit_clamps_length() {
        let mut ring = PacketRing::<()>::new(1, 4);
        ring.vacant_slot().unwrap().copy_from_slice(b"wxyz");
        assert_eq!(ring.commit(100, (), Duration::ZERO), Ok(()));
        assert_eq!(ring.front(), Some((&b"wxyz"[..], ())));
        assert_eq!(ring.queued_bytes(), 4);
    }

    #[test]
    fn zero_slots_become_one() {
        let mut ring = PacketRing::<()>::new(0, 8);
        assert_eq!(ring.capacity(), 1);
        assert_eq!(ring.push(b"x", (), Duration::ZERO), Ok(()));
        assert!(ring.is_full());
    }

    #[test]
    fn wraps_around_many_times() {
        let mut ring = PacketRing::<usize>::new(3, 8);
        let base = ring.buf.as_ptr();
        for i in 0..10_000usize {
            let bytes = i.to_le_bytes();
            assert_eq!(ring.push(&bytes, i, Duration::ZERO), Ok(()));
            if ring.is_full() {
                assert_eq!(ring.pop_front_n(2), 2);
            }
            let (front, meta) = ring.front().unwrap();
            assert_eq!(front, &meta.to_le_bytes()[..]);
        }
        assert_eq!(ring.buf.as_ptr(), base);
    }

    #[test]
    fn byte_cap_refuses_before_the_packet_is_known() {
        let mut ring = PacketRing::<u8>::new(8, 100).with_max_bytes(150);
        assert_eq!(ring.push(&[1; 100], 1, Duration::ZERO), Ok(()));
        // 100 < 150 queued: one more packet is taken whatever its length, then the cap holds.
        assert_eq!(ring.push(&[2; 100], 2, Duration::ZERO), Ok(()));
        assert!(ring.is_full());
        assert!(ring.vacant_slot().is_none());
        assert_eq!(ring.push(b"x", 3, Duration::ZERO), Err(PushError::Full));
        assert_eq!(ring.free_slots(), 6);
        assert_eq!(ring.free_bytes(), 0);
        assert!(ring.pop_front());
        assert_eq!(ring.free_bytes(), 50);
        assert_eq!(ring.push(b"x", 3, Duration::ZERO), Ok(()));
    }

    #[test]
    fn stale_packets_leave_from_the_front_only() {
        let ms = Duration::from_millis;
        let mut ring = PacketRing::<u8>::new(4, 8);
        assert_eq!(ring.push(b"a", 1, ms(10)), Ok(()));
        assert_eq!(ring.push(b"b", 2, ms(12)), Ok(()));
        assert_eq!(ring.push(b"c", 3, ms(20)), Ok(()));
        // At 17 ms with 5 ms allowed, "a" (7 ms) goes; "b" waited exactly 5 ms and stays.
        assert_eq!(ring.drop_stale(ms(17), ms(5)), 1);
        assert_eq!(ring.front(), Some((&b"b"[..], 2)));
        assert_eq!(ring.drop_stale(ms(30), ms(5)), 2);
        assert!(ring.is_empty());
        assert_eq!(ring.drop_stale(ms(30), ms(5)), 0);
    }
}
