//! Which destinations may not get UDP GSO trains of full-size datagrams, and until when.
//!
//! The kernel refuses (EMSGSIZE) a GSO train whose segments exceed the path MTU to its
//! destination, since it cannot fragment them. The refusal is a property of one path, so it is
//! kept per destination: a peer behind a PPPoE link must not cost every other peer its trains.
//! Entries expire as the kernel's own path-MTU cache does, and the table is fixed-size.

use crate::core::limits::{GSO_LIMITED_PATHS, GSO_LIMIT_LIFETIME};
use std::net::SocketAddr;
use std::time::Instant;

pub struct GsoPathLimits {
    entries: [Option<Limit>; GSO_LIMITED_PATHS],
}

/// What `refused` learnt, for the log line the caller writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A destination we had no limit for: worth a warning.
    NewPath,
    /// A limit that had expired, or a smaller size on a known path: worth a debug line.
    KnownPath,
}

#[derive(Debug, Clone, Copy)]
struct Limit {
    to: SocketAddr,
    /// Largest datagram that may still join a GSO train to `to`.
    max_segment: usize,
    since: Instant,
}

impl Default for GsoPathLimits {
    fn default() -> Self {
        Self {
            entries: [None; GSO_LIMITED_PATHS],
        }
    }
}

impl GsoPathLimits {
    /// Largest datagram that may join a GSO train to `to` at `now`: unlimited unless a train
    /// to it was refused within `GSO_LIMIT_LIFETIME`.
    pub fn max_segment(&self, to: SocketAddr, now: Instant) -> usize {
        self.entries
            .iter()
            .flatten()
            .find(|limit| limit.to == to && is_live(limit, now))
            .map_or(usize::MAX, |limit| limit.max_segment)
    }

    /// The kernel refused a train of `size`-byte datagrams to `to`: from now on, datagrams of
    /// that size go to it one by one (which the kernel may fragment).
    pub fn refused(&mut self, to: SocketAddr, size: usize, now: Instant) -> Refusal {
        let max_segment = size.saturating_sub(1);
        if let Some(limit) = self.entries.iter_mut().flatten().find(|l| l.to == to) {
            if is_live(limit, now) {
                limit.max_segment = limit.max_segment.min(max_segment);
            } else {
                limit.max_segment = max_segment;
                limit.since = now;
            }
            return Refusal::KnownPath;
        }
        let slot = match self.entries.iter().position(Option::is_none) {
            Some(free) => free,
            None => self.oldest(),
        };
        self.entries[slot] = Some(Limit {
            to,
            max_segment,
            since: now,
        });
        Refusal::NewPath
    }

    fn oldest(&self) -> usize {
        self.entries
            .iter()
            .enumerate()
            .min_by_key(|(_, entry)| entry.map(|limit| limit.since))
            .map_or(0, |(slot, _)| slot)
    }
}

fn is_live(limit: &Limit, now: Instant) -> bool {
    now.saturating_duration_since(limit.since) < GSO_LIMIT_LIFETIME
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn addr(n: u16) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, 2], 50000 + n))
    }

    #[test]
    fn a_refusal_limits_only_its_own_destination() {
        let now = Instant::now();
        let mut limits = GsoPathLimits::default();
        assert_eq!(limits.refused(addr(1), 1500, now), Refusal::NewPath);
        assert_eq!(limits.max_segment(addr(1), now), 1499);
        assert_eq!(limits.max_segment(addr(2), now), usize::MAX);
    }

    #[test]
    fn a_limit_expires_and_a_later_refusal_is_a_known_path() {
        let now = Instant::now();
        let mut limits = GsoPathLimits::default();
        limits.refused(addr(1), 1500, now);
        let almost = now + GSO_LIMIT_LIFETIME - Duration::from_millis(1);
        assert_eq!(limits.max_segment(addr(1), almost), 1499);
        let later = now + GSO_LIMIT_LIFETIME;
        assert_eq!(limits.max_segment(addr(1), later), usize::MAX);
        assert_eq!(limits.refused(addr(1), 1400, later), Refusal::KnownPath);
        assert_eq!(limits.max_segment(addr(1), later), 1399);
    }

    #[test]
    fn a_smaller_refusal_lowers_a_live_limit_and_a_larger_one_does_not_raise_it() {
        let now = Instant::now();
        let mut limits = GsoPathLimits::default();
        limits.refused(addr(1), 1400, now);
        limits.refused(addr(1), 1500, now);
        assert_eq!(limits.max_segment(addr(1), now), 1399);
        limits.refused(addr(1), 1300, now);
        assert_eq!(limits.max_segment(addr(1), now), 1299);
    }

    #[test]
    fn a_full_table_forgets_the_oldest_limit() {
        let start = Instant::now();
        let mut limits = GsoPathLimits::default();
        for n in 0..GSO_LIMITED_PATHS as u16 {
            limits.refused(addr(n), 1500, start + Duration::from_secs(u64::from(n)));
        }
        let now = start + Duration::from_secs(100);
        assert_eq!(limits.refused(addr(999), 1500, now), Refusal::NewPath);
        assert_eq!(limits.max_segment(addr(999), now), 1499);
        assert_eq!(
            limits.max_segment(addr(0), now),
            usize::MAX,
            "the oldest went"
        );
        assert_eq!(limits.max_segment(addr(1), now), 1499, "the others stay");
    }
}
