//! Limits on handshake work: a token bucket per source (an address, or a relay that passes
//! initiations on), in a fixed table that never grows with the number of senders, and a
//! one-second load estimate that tells the device when to demand cookies before doing any
//! Curve25519 work; and `Budget`, one bucket shared by every source, for what per-source
//! limits cannot bound: many sources at once.

use crate::core::limits::{
    INITIATIONS_PER_SECOND_PER_SOURCE, INITIATION_BURST_PER_SOURCE, RATE_LIMIT_BUCKETS,
    UNDER_LOAD_INITIATIONS_PER_SECOND,
};
use crate::core::peer::PeerId;
use blake2::digest::Mac;
use core::time::Duration;
use std::net::IpAddr;

const SECOND: Duration = Duration::from_secs(1);

/// Whose bucket an initiation takes a token from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Sent to us directly from this address.
    Address(IpAddr),
    /// Passed on by `relay` from the peer whose X25519 key it names as the sender (the relay
    /// knows it from its session with that peer). A bucket per relay and sender: anyone may
    /// send datagrams from the relay's address, and one of the relay's peers may flood it, but
    /// neither can use up what the relay's other peers need.
    Relay { relay: PeerId, sender: [u8; 32] },
}

/// Tokens are counted in thousandths so slow refill rates stay exact.
const MILLI: u64 = 1000;

pub struct RateLimiter {
    /// Secret key of the bucket hash, so a sender cannot aim at someone else's bucket.
    key: [u8; 16],
    buckets: Box<[Bucket]>,
    window_start: Duration,
    window_count: u32,
    previous_window_count: u32,
}

#[derive(Clone, Copy, Default)]
struct Bucket {
    milli_tokens: u64,
    refilled_at: Duration,
    used: bool,
}

impl Bucket {
    /// Refills at `per_second` tokens a second up to `capacity` (both in thousandths; a bucket
    /// never used starts full), then takes `cost` if that leaves at least `keep`.
    fn take_keeping(
        &mut self,
        cost: u64,
        keep: u64,
        capacity: u64,
        per_second: u64,
        now: Duration,
    ) -> bool {
        if !self.used {
            *self = Bucket {
                milli_tokens: capacity,
                refilled_at: now,
                used: true,
            };
        }
        let elapsed_ms = now
            .saturating_sub(self.refilled_at)
            .as_millis()
            .min(u128::from(u32::MAX)) as u64;
        self.milli_tokens = (self.milli_tokens + elapsed_ms * per_second).min(capacity);
        // Time only moves forward: an older `now` must not move the refill point back.
        self.refilled_at = self.refilled_at.max(now);
        if self.milli_tokens >= cost.saturating_add(keep) {
            self.milli_tokens -= cost;
            true
        } else {
            false
        }
    }

    fn take(&mut self, cost: u64, capacity: u64, per_second: u64, now: Duration) -> bool {
        self.take_keeping(cost, 0, capacity, per_second, now)
    }
}

/// A known peer's own initiation bucket (see `RateLimiter::allow_peer`).
#[derive(Clone, Copy, Default)]
pub struct PeerBucket(Bucket);

/// Work per second that all sources together may cause, as a token bucket. A part of it, the
/// reserve, only `priority` takers may spend: the peers we know, arriving from where we know
/// them to be. A flood from any number of other sources drains the bucket down to the reserve
/// and no further, so the known peers' work is always served first.
pub struct Budget {
    bucket: Bucket,
    per_second: u64,
    capacity: u64,
    reserve: u64,
}

impl Budget {
    /// `per_second` units of work a second, `burst` saved up at most, of which `reserve` only
    /// priority takers may spend. Starts full.
    pub fn new(per_second: u32, burst: u32, reserve: u32) -> Self {
        Self {
            bucket: Bucket::default(),
            per_second: u64::from(per_second),
            capacity: u64::from(burst) * MILLI,
            reserve: u64::from(reserve.min(burst)) * MILLI,
        }
    }

    /// Takes `cost` units if there are enough for this taker; says whether it did.
    pub fn take(&mut self, cost: u32, priority: bool, now: Duration) -> bool {
        let keep = if priority { 0 } else { self.reserve };
        self.bucket.take_keeping(
            u64::from(cost) * MILLI,
            keep,
            self.capacity,
            self.per_second,
            now,
        )
    }

    /// Charges `cost` units for work that must go on (it was already begun): takes what there
    /// is, down to nothing.
    pub fn charge(&mut self, cost: u32, now: Duration) {
        let cost = u64::from(cost) * MILLI;
        if !self.bucket.take(cost, self.capacity, self.per_second, now) {
            self.bucket.milli_tokens = 0;
        }
    }
}

impl RateLimiter {
    pub fn new(key: [u8; 16]) -> Self {
        Self {
            key,
            buckets: vec![Bucket::default(); RATE_LIMIT_BUCKETS].into_boxed_slice(),
            window_start: Duration::ZERO,
            window_count: 0,
            previous_window_count: 0,
        }
    }

    /// Counts one initiation toward the load estimate and says whether we are under load: more
    /// than UNDER_LOAD_INITIATIONS_PER_SECOND in this second or the last.
    pub fn note_initiation(&mut self, now: Duration) -> bool {
        let elapsed = now.saturating_sub(self.window_start);
        if elapsed >= SECOND {
            self.previous_window_count = if elapsed >= 2 * SECOND {
                0
            } else {
                self.window_count
            };
            self.window_start = now;
            self.window_count = 0;
        }
        self.window_count = self.window_count.saturating_add(1);
        self.window_count > UNDER_LOAD_INITIATIONS_PER_SECOND
            || self.previous_window_count > UNDER_LOAD_INITIATIONS_PER_SECOND
    }

    /// Whether `source` may have one more initiation processed now; takes a token if so.
    pub fn allow(&mut self, source: Source, now: Duration) -> bool {
        let index = self.bucket_of(source);
        let capacity = u64::from(INITIATION_BURST_PER_SOURCE) * MILLI;
        self.buckets[index].take(
            MILLI,
            capacity,
            u64::from(INITIATIONS_PER_SECOND_PER_SOURCE),
            now,
        )
    }

    /// Whether a known peer may have one more initiation processed now, from `bucket`, its own
    /// bucket: a known peer's address must not share a hashed bucket that a flood drains.
    pub fn allow_peer(bucket: &mut PeerBucket, now: Duration) -> bool {
        let capacity = u64::from(INITIATION_BURST_PER_SOURCE) * MILLI;
        bucket.0.take(
            MILLI,
            capacity,
            u64::from(INITIATIONS_PER_SECOND_PER_SOURCE),
            now,
        )
    }

    fn bucket_of(&self, source: Source) -> usize {
        let mut mac =
            match blake2::Blake2sMac::<blake2::digest::consts::U8>::new_from_slice(&self.key) {
                Ok(mac) => mac,
                Err(_) => unreachable!("a 16-byte key is valid for BLAKE2s"),
            };
        // The first byte keeps the kinds apart, so no address hashes like a relay.
        match source {
            Source::Address(IpAddr::V4(v4)) => {
                mac.update(&[4]);
                mac.update(&v4.octets());
            }
            // A sender owns a whole /64 at least: limit the prefix, not each address in it.
            Source::Address(IpAddr::V6(v6)) => {
                mac.update(&[6]);
                mac.update(&v6.octets()[..8]);
            }
            Source::Relay { relay, sender } => {
                mac.update(&[0]);
                mac.update(&(relay as u64).to_le_bytes());
                mac.update(&sender);
            }
        }
        let digest: [u8; 8] = mac.finalize().into_bytes().into();
        (u64::from_le_bytes(digest) % RATE_LIMIT_BUCKETS as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let mut limiter = RateLimiter::new([1; 16]);
        let source = Source::Address("198.18.0.1".parse().unwrap());
        let now = Duration::from_secs(10);
        let allowed = (0..100).filter(|_| limiter.allow(source, now)).count();
        assert_eq!(allowed, INITIATION_BURST_PER_SOURCE as usize);
        // One second later, a second's worth of tokens (capped at the burst) is back.
        let later = now + SECOND;
        let allowed = (0..100).filter(|_| limiter.allow(source, later)).count();
        assert_eq!(allowed, INITIATION_BURST_PER_SOURCE as usize);
        // Another source is not affected by the first one's flood.
        let other = Source::Address("198.18.0.2".parse().unwrap());
        assert!(limiter.allow(other, later));
    }

    #[test]
    fn initiations_from_a_relays_address_leave_what_it_relays_alone() {
        let mut limiter = RateLimiter::new([1; 16]);
        let now = Duration::from_secs(10);
        let relay_address = Source::Address("198.18.0.254".parse().unwrap());
        while limiter.allow(relay_address, now) {}
        let relayed = Source::Relay {
            relay: 3,
            sender: [7; 32],
        };
        assert!(limiter.allow(relayed, now));
    }

    #[test]
    fn one_sender_behind_a_relay_leaves_the_relays_other_senders_alone() {
        let mut limiter = RateLimiter::new([1; 16]);
        let now = Duration::from_secs(10);
        let flooder = Source::Relay {
            relay: 3,
            sender: [7; 32],
        };
        let allowed = (0..100).filter(|_| limiter.allow(flooder, now)).count();
        assert_eq!(allowed, INITIATION_BURST_PER_SOURCE as usize);
        let other = Source::Relay {
            relay: 3,
            sender: [8; 32],
        };
        assert!(limiter.allow(other, now));
    }

    #[test]
    fn a_budget_keeps_its_reserve_for_priority_takers() {
        let mut budget = Budget::new(100, 20, 10);
        let t = Duration::from_secs(3);
        // Others get the burst less the reserve, and no more.
        let others = (0..100).filter(|_| budget.take(1, false, t)).count();
        assert_eq!(others, 10);
        // The reserve is still there for a priority taker.
        let priority = (0..100).filter(|_| budget.take(1, true, t)).count();
        assert_eq!(priority, 10);
        // 100 ms later, 10 units are back: a priority taker gets them first...
        let later = t + Duration::from_millis(100);
        assert!(budget.take(5, true, later));
        // ...and others get nothing while the bucket is below the reserve.
        assert!(!budget.take(1, false, later));
        // A second later the bucket is full again (20), and others get their 10 once more.
        let full = later + SECOND;
        let others = (0..100).filter(|_| budget.take(1, false, full)).count();
        assert_eq!(others, 10);
    }

    #[test]
    fn a_budget_holds_any_number_of_sources_to_its_rate() {
        // The naive model: a flood from many sources, each taking one unit every millisecond,
        // for ten seconds gets at most the rate times the time plus the burst.
        let (rate, burst, reserve) = (500u32, 100u32, 50u32);
        let mut budget = Budget::new(rate, burst, reserve);
        let start = Duration::from_secs(1);
        let mut taken = 0u64;
        for ms in 0..10_000u64 {
            let now = start + Duration::from_millis(ms);
            for _ in 0..7 {
                taken += u64::from(budget.take(1, false, now));
            }
        }
        let bound = u64::from(rate) * 10 + u64::from(burst - reserve);
        assert!(taken <= bound, "took {taken}, bound {bound}");
        // And the rate is actually used, not starved by the bookkeeping.
        assert!(
            taken >= u64::from(rate) * 10 - u64::from(rate) / 10,
            "took only {taken}"
        );
    }

    #[test]
    fn charged_work_can_empty_a_budget_but_not_overdraw_it() {
        let mut budget = Budget::new(10, 10, 0);
        let t = Duration::from_secs(1);
        budget.charge(25, t);
        assert!(!budget.take(1, true, t));
        // Emptied, not in debt: the next unit arrives after a tenth of a second.
        assert!(budget.take(1, true, t + Duration::from_millis(100)));
    }

    #[test]
    fn a_known_peer_has_its_own_bucket() {
        let mut limiter = RateLimiter::new([1; 16]);
        let now = Duration::from_secs(10);
        // Every hashed bucket drained by a many-source flood.
        for i in 0..(RATE_LIMIT_BUCKETS as u32 * 4) {
            let address = std::net::Ipv4Addr::from(0xc612_0000 + i);
            while limiter.allow(Source::Address(address.into()), now) {}
        }
        let mut bucket = PeerBucket::default();
        let allowed = (0..100)
            .filter(|_| RateLimiter::allow_peer(&mut bucket, now))
            .count();
        assert_eq!(allowed, INITIATION_BURST_PER_SOURCE as usize);
    }

    #[test]
    fn load_is_noticed_and_forgotten() {
        let mut limiter = RateLimiter::new([1; 16]);
        let t = Duration::from_secs(5);
        let loaded = (0..=UNDER_LOAD_INITIATIONS_PER_SECOND)
            .map(|_| limiter.note_initiation(t))
            .last();
        assert_eq!(loaded, Some(true));
        // Still under load in the next second, because the last one was loaded.
        assert!(limiter.note_initiation(t + SECOND));
        // Quiet for two seconds: no longer.
        assert!(!limiter.note_initiation(t + 3 * SECOND));
    }
}
