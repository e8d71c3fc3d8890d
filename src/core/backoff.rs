//! Doubling waits: the retry pace shared by DHT lookups and reflexive-address probes.

use core::time::Duration;

/// The wait before retry number `attempt` (counting from 0): `first`, doubling with each
/// attempt, never more than `max`. Saturates instead of overflowing, whatever `attempt` is.
pub fn doubling(first: Duration, attempt: u32, max: Duration) -> Duration {
    let mut wait = first.min(max);
    // Each turn at least doubles a nonzero wait, so this ends within about 100 turns (from 1 ns
    // to Duration::MAX) even when `attempt` is huge.
    for _ in 0..attempt {
        if wait.is_zero() || wait == max {
            break;
        }
        wait = wait.saturating_mul(2).min(max);
    }
    wait
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_first_up_to_max() {
        let first = Duration::from_millis(500);
        let max = Duration::from_secs(10);
        let waits: Vec<_> = (0..7)
            .map(|n| doubling(first, n, max).as_millis())
            .collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
    }

    #[test]
    fn matches_repeated_doubling_and_never_overflows() {
        let max = Duration::from_secs(3600);
        for first_ms in [1u64, 7, 500, 60_000] {
            let first = Duration::from_millis(first_ms);
            let mut model = first.min(max);
            for attempt in 0..200 {
                assert_eq!(
                    doubling(first, attempt, max),
                    model,
                    "{first:?} attempt {attempt}"
                );
                model = model.saturating_mul(2).min(max);
            }
        }
        assert_eq!(
            doubling(Duration::MAX, u32::MAX, Duration::MAX),
            Duration::MAX
        );
    }
}
