//! Limits on handshake work: a token bucket per source (an address, or a relay that passes
//! initiations on), in a fixed table that never grows with the number of senders, and a
//! one-second load estimate that tells the device when to demand cookies before doing any
//! Curve25519 work.

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
        let bucket = &mut self.buckets[index];
        let capacity = u64::from(INITIATION_BURST_PER_SOURCE) * MILLI;
        if !bucket.used {
            *bucket = Bucket {
                milli_tokens: capacity,
                refilled_at: now,
                used: true,
            };
        }
        let elapsed_ms = now
            .saturating_sub(bucket.refilled_at)
            .as_millis()
            .min(u128::from(u32::MAX)) as u64;
        let refill = elapsed_ms * u64::from(INITIATIONS_PER_SECOND_PER_SOURCE);
        bucket.milli_tokens = (bucket.milli_tokens + refill).min(capacity);
        bucket.refilled_at = now;
        if bucket.milli_tokens >= MILLI {
            bucket.milli_tokens -= MILLI;
            true
        } else {
            false
        }
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
