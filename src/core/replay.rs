//! Anti-replay window for transport counters: an RFC 6479 ring of 64-bit bitmap blocks that
//! accepts each counter at most once and refuses counters that fell behind the window. It also
//! counts the counters that left the window without ever arriving: packets the peer sent that
//! were lost on the way, wherever that was (a full socket buffer, the network, a late arrival).

use super::limits::{REPLAY_BLOCKS, REPLAY_WINDOW_BITS};

/// Counters already received on one session, remembered for the `REPLAY_WINDOW_BITS` below the
/// highest. Fixed size; no allocation.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// Block `b` (counters `64b..64b+63`) lives at index `b % REPLAY_BLOCKS`. The spare block
    /// lets the window advance by whole blocks without losing any in-window counter.
    blocks: [u64; REPLAY_BLOCKS],
    /// Highest counter accepted. Starting at 0 with an empty bitmap needs no special "nothing
    /// seen yet" case: counter 0 is still unmarked, so it is accepted once.
    highest: u64,
    /// Counters that left the ring unmarked since the last `take_lost`.
    lost: u64,
}

impl ReplayWindow {
    pub fn new() -> Self {
        Self {
            blocks: [0; REPLAY_BLOCKS],
            highest: 0,
            lost: 0,
        }
    }

    /// Counters that left the window without arriving since the last call. A counter is given
    /// up once its whole block leaves the ring, about `REPLAY_WINDOW_BITS` counters after it.
    pub fn take_lost(&mut self) -> u64 {
        std::mem::take(&mut self.lost)
    }

    /// Highest counter accepted so far (0 before any).
    pub fn highest(&self) -> u64 {
        self.highest
    }

    /// True when `counter` would be accepted (not seen, not older than the window). No change.
    pub fn check(&self, counter: u64) -> bool {
        if counter > self.highest {
            return true;
        }
        // Written as a difference so it cannot underflow near 0 or overflow near u64::MAX.
        if self.highest - counter >= REPLAY_WINDOW_BITS {
            return false;
        }
        let (index, bit) = locate(counter);
        self.blocks[index] & bit == 0
    }

    /// Marks `counter` seen. Returns false (and changes nothing) when it is a replay or too old.
    pub fn accept(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        if counter > self.highest {
            let top = self.highest / BLOCK_BITS;
            let new_top = counter / BLOCK_BITS;
            // Blocks above the old top still hold bits from a lap ago. Past REPLAY_BLOCKS the
            // ring would only be cleared again, so a jump of any size costs at most one lap.
            let stale = (new_top - top).min(REPLAY_BLOCKS as u64);
            for step in 1..=stale {
                // `top` is at most u64::MAX / 64, so adding a step cannot overflow.
                let slot = &mut self.blocks[ring_index(top + step)];
                // The slot held the block one lap below; before the first lap there was none.
                if top + step >= REPLAY_BLOCKS as u64 {
                    self.lost = self.lost.saturating_add(u64::from(slot.count_zeros()));
                }
                *slot = 0;
            }
            // A jump of more than a lap skips blocks that were never in the ring at all: none
            // of their counters arrived.
            let skipped = (new_top - top).saturating_sub(REPLAY_BLOCKS as u64);
            self.lost = self.lost.saturating_add(skipped.saturating_mul(BLOCK_BITS));
            self.highest = counter;
        }
        let (index, bit) = locate(counter);
        self.blocks[index] |= bit;
        true
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

const BLOCK_BITS: u64 = u64::BITS as u64;

/// Ring index and bit mask of the bitmap entry for `counter`.
fn locate(counter: u64) -> (usize, u64) {
    (
        ring_index(counter / BLOCK_BITS),
        1u64 << (counter % BLOCK_BITS),
    )
}

fn ring_index(block: u64) -> usize {
    // The remainder is below REPLAY_BLOCKS, so it fits in usize.
    (block % REPLAY_BLOCKS as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeSet;

    const W: u64 = REPLAY_WINDOW_BITS;

    /// The window rule stated directly, with unbounded memory.
    struct Model {
        seen: BTreeSet<u64>,
        highest: u64,
    }

    impl Model {
        fn new() -> Self {
            Self {
                seen: BTreeSet::new(),
                highest: 0,
            }
        }

        fn accept(&mut self, counter: u64) -> bool {
            let in_window = counter > self.highest || self.highest - counter < W;
            if !in_window || self.seen.contains(&counter) {
                return false;
            }
            self.seen.insert(counter);
            self.highest = self.highest.max(counter);
            true
        }

        /// Counters below the lowest block still in the ring that never arrived.
        fn lost(&self) -> u64 {
            let blocks = REPLAY_BLOCKS as u64;
            let top = self.highest / BLOCK_BITS;
            let floor = if top >= blocks {
                (top + 1 - blocks) * BLOCK_BITS
            } else {
                0
            };
            floor - self.seen.range(..floor).count() as u64
        }
    }

    fn next_counter(rng: &mut StdRng, highest: u64, history: &[u64]) -> u64 {
        match rng.gen_range(0..100) {
            0..=29 => highest.saturating_add(1),
            30..=54 => highest.saturating_sub(rng.gen_range(0..W)),
            55..=69 if !history.is_empty() => history[rng.gen_range(0..history.len())],
            70..=74 => highest.saturating_sub(W + rng.gen_range(0..3 * W)),
            75..=79 => highest.saturating_sub(W - rng.gen_range(0..2u64)),
            80..=89 => highest.saturating_add(rng.gen_range(1..3 * W)),
            90..=97 => highest.saturating_add(rng.gen_range(1..(1u64 << 40))),
            98 => u64::MAX - rng.gen_range(0..2 * W),
            _ => rng.gen_range(0..=highest),
        }
    }

    #[test]
    fn matches_model_on_random_sequences() {
        for seed in 0..24u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut window = ReplayWindow::new();
            let mut model = Model::new();
            let mut history: Vec<u64> = Vec::new();
            let mut lost = 0u64;
            for step in 0..20_000 {
                let counter = next_counter(&mut rng, model.highest, &history);
                let expected = model.accept(counter);
                assert_eq!(
                    window.check(counter),
                    expected,
                    "seed {seed} step {step} check"
                );
                assert_eq!(window.accept(counter), expected, "seed {seed} step {step}");
                assert_eq!(window.highest, model.highest);
                lost += window.take_lost();
                if step % 500 == 499 {
                    assert_eq!(lost, model.lost(), "seed {seed} step {step} lost");
                }
                if history.len() < 256 {
                    history.push(counter);
                } else {
                    history[rng.gen_range(0..256)] = counter;
                }
            }
        }
    }

    #[test]
    fn counters_never_received_are_counted_lost_once_they_leave_the_window() {
        let mut window = ReplayWindow::new();
        let sent = 20 * W;
        let missing_below = |limit: u64| (0..limit).filter(|c| c % 10 == 3).count() as u64;
        let mut lost = 0;
        for counter in (0..sent).filter(|c| c % 10 != 3) {
            assert!(window.accept(counter));
            lost += window.take_lost();
        }
        let highest = sent - 1;
        let floor = (highest / BLOCK_BITS + 1 - REPLAY_BLOCKS as u64) * BLOCK_BITS;
        assert_eq!(lost, missing_below(floor));
        assert_eq!(window.take_lost(), 0, "taking empties the count");
    }

    #[test]
    fn late_arrivals_within_the_window_are_not_lost() {
        let mut window = ReplayWindow::new();
        for counter in 0..10 * W {
            // Every pair arrives swapped.
            assert!(window.accept(counter ^ 1));
        }
        assert_eq!(window.take_lost(), 0);
    }

    #[test]
    fn zero_is_accepted_once() {
        let mut window = ReplayWindow::default();
        assert!(window.check(0));
        assert!(window.accept(0));
        assert!(!window.check(0));
        assert!(!window.accept(0));
        assert!(window.accept(1));
    }

    #[test]
    fn check_changes_nothing() {
        let mut window = ReplayWindow::new();
        assert!(window.check(5));
        assert!(window.check(5));
        assert!(window.accept(5));
        assert!(!window.check(5));
    }

    #[test]
    fn window_boundary_is_exact() {
        let mut window = ReplayWindow::new();
        let top = 10 * W;
        assert!(window.accept(top));
        assert!(!window.check(top - W), "exactly W behind is too old");
        assert!(window.accept(top - W + 1), "W - 1 behind is inside");
        assert!(!window.accept(top - W + 1));
        assert!(window.accept(top - 1));
    }

    #[test]
    fn out_of_order_within_window() {
        let mut window = ReplayWindow::new();
        for c in (0..W).rev() {
            assert!(window.accept(c), "{c}");
        }
        for c in 0..W {
            assert!(!window.accept(c), "{c}");
        }
    }

    #[test]
    fn huge_jump_clears_old_bits() {
        let mut window = ReplayWindow::new();
        for c in 0..W {
            assert!(window.accept(c));
        }
        let far = u64::MAX - 10_000;
        assert!(window.accept(far));
        assert!(!window.accept(0));
        for c in far - W + 1..far {
            assert!(window.accept(c), "{c} was never seen");
        }
        assert!(!window.accept(far));
    }

    #[test]
    fn jump_of_one_lap_clears_reused_blocks() {
        let mut window = ReplayWindow::new();
        assert!(window.accept(3));
        // Same ring slot and bit as 3, one lap later.
        let lap = 3 + REPLAY_BLOCKS as u64 * 64;
        assert!(window.accept(lap + 1));
        assert!(window.accept(lap));
    }

    #[test]
    fn near_u64_max() {
        let mut window = ReplayWindow::new();
        assert!(window.accept(u64::MAX));
        assert!(!window.accept(u64::MAX));
        assert!(window.accept(u64::MAX - 1));
        assert!(window.accept(u64::MAX - W + 1));
        assert!(!window.accept(u64::MAX - W));
        assert!(!window.accept(0));
    }
}
