//! Loss reports: what a receiver tells a peer about the packets it lost from it, so the peer
//! can pace itself (core::pacer) instead of sending what would be dropped after encryption.
//!
//! The receiver counts, per peer, the packets that arrived, their bytes, and how far the
//! peer's counter advanced (`LossMeter`). Counters the peer used that never arrived are lost,
//! wherever that happened: most often a flood overflowing our socket's receive buffer. Every
//! `LOSS_REPORT_INTERVAL` with losses, one report goes back in the peer's session.
//!
//! Report layout (the plaintext of a transport packet; integers little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | kind: 0x20 loss report |
//! | 1 | 3 | reserved, zero |
//! | 4 | 4 | span the counts cover, in microseconds |
//! | 8 | 4 | packets received |
//! | 12 | 4 | packets lost |
//! | 16 | 8 | bytes received (datagrams as they arrived) |
//!
//! The first byte's high nibble (2) tells a report from an IP packet (4 or 6), a relay
//! envelope (1) and a keepalive (empty).

use crate::core::limits::{LOSS_REPORT_INTERVAL, LOSS_REPORT_MAX_SPAN};
use crate::core::wire::{read_u32, read_u64};
use core::time::Duration;

/// First byte of a loss report.
pub const KIND_LOSS_REPORT: u8 = 0x20;
/// Bytes of a loss report before padding.
pub const LOSS_REPORT_LEN: usize = 24;

const KIND_AT: usize = 0;
const RESERVED: core::ops::Range<usize> = 1..4;
const SPAN_US: core::ops::Range<usize> = 4..8;
const RECEIVED: core::ops::Range<usize> = 8..12;
const LOST: core::ops::Range<usize> = 12..16;
const BYTES: core::ops::Range<usize> = 16..24;
const _: () = assert!(BYTES.end == LOSS_REPORT_LEN);

/// What a receiver saw of one peer's packets over `span`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LossReport {
    pub span: Duration,
    pub received: u32,
    pub lost: u32,
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("loss report shorter than its fields")]
    Truncated,
    #[error("not a loss report")]
    Kind,
    #[error("output buffer too small for a loss report")]
    BufferTooSmall,
}

/// Whether a decrypted plaintext is a loss report rather than an IP packet, an envelope or a
/// keepalive.
pub fn is_report(plaintext: &[u8]) -> bool {
    plaintext
        .first()
        .is_some_and(|b| b >> 4 == KIND_LOSS_REPORT >> 4)
}

impl LossReport {
    /// Reads a decrypted plaintext (padding included) as a loss report.
    pub fn parse(plaintext: &[u8]) -> Result<Self, ReportError> {
        let bytes: &[u8; LOSS_REPORT_LEN] = plaintext
            .get(..LOSS_REPORT_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(ReportError::Truncated)?;
        if bytes[KIND_AT] != KIND_LOSS_REPORT {
            return Err(ReportError::Kind);
        }
        Ok(Self {
            span: Duration::from_micros(u64::from(read_u32(bytes, SPAN_US))),
            received: read_u32(bytes, RECEIVED),
            lost: read_u32(bytes, LOST),
            bytes: read_u64(bytes, BYTES),
        })
    }

    /// Writes the report into `out`; returns its length.
    pub fn write(&self, out: &mut [u8]) -> Result<usize, ReportError> {
        let out = out
            .get_mut(..LOSS_REPORT_LEN)
            .ok_or(ReportError::BufferTooSmall)?;
        let span_us = u32::try_from(self.span.as_micros()).unwrap_or(u32::MAX);
        out[KIND_AT] = KIND_LOSS_REPORT;
        out[RESERVED].fill(0);
        out[SPAN_US].copy_from_slice(&span_us.to_le_bytes());
        out[RECEIVED].copy_from_slice(&self.received.to_le_bytes());
        out[LOST].copy_from_slice(&self.lost.to_le_bytes());
        out[BYTES].copy_from_slice(&self.bytes.to_le_bytes());
        Ok(LOSS_REPORT_LEN)
    }

    /// Bytes per second the receiver took in over the span; None for an empty span.
    pub fn delivered_bytes_per_second(&self) -> Option<u64> {
        let micros = self.span.as_micros();
        (micros > 0).then(|| {
            let rate = u128::from(self.bytes) * 1_000_000 / micros;
            u64::try_from(rate).unwrap_or(u64::MAX)
        })
    }
}

/// The receiving side: counts one peer's packets and decides when a report is due.
#[derive(Debug, Clone, Copy, Default)]
pub struct LossMeter {
    started_at: Duration,
    received: u64,
    bytes: u64,
    /// How far the peer's counters advanced; what did not arrive of that is lost.
    span: u64,
    /// Reports sent, for status (counted by the device when one goes out).
    pub reports: u64,
}

impl LossMeter {
    /// An authenticated packet of `bytes` arrived and moved the session's highest counter by
    /// `advance`. Returns a report when one is due: the interval ended with losses in it.
    pub fn note(&mut self, bytes: usize, advance: u64, now: Duration) -> Option<LossReport> {
        let elapsed = now.saturating_sub(self.started_at);
        let report = if elapsed >= LOSS_REPORT_INTERVAL {
            let report = self.report(elapsed);
            *self = Self {
                started_at: now,
                reports: self.reports,
                ..Self::default()
            };
            report
        } else {
            None
        };
        self.received = self.received.saturating_add(1);
        self.bytes = self.bytes.saturating_add(bytes as u64);
        self.span = self.span.saturating_add(advance);
        report
    }

    fn report(&self, elapsed: Duration) -> Option<LossReport> {
        // Late arrivals from an earlier interval count as received without advancing the
        // counter, so `received` may pass `span`: then nothing was lost.
        let lost = self.span.saturating_sub(self.received);
        if lost == 0 || elapsed > LOSS_REPORT_MAX_SPAN {
            return None;
        }
        Some(LossReport {
            span: elapsed,
            received: u32::try_from(self.received).unwrap_or(u32::MAX),
            lost: u32::try_from(lost).unwrap_or(u32::MAX),
            bytes: self.bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn report_round_trips_and_survives_padding() {
        let report = LossReport {
            span: Duration::from_micros(20_345),
            received: 1234,
            lost: 567,
            bytes: 9_876_543_210,
        };
        let mut buf = [0xffu8; 32];
        assert_eq!(report.write(&mut buf), Ok(LOSS_REPORT_LEN));
        buf[LOSS_REPORT_LEN..].fill(0);
        assert!(is_report(&buf));
        assert_eq!(LossReport::parse(&buf), Ok(report));
        assert_eq!(buf[1..4], [0, 0, 0]);
    }

    #[test]
    fn parse_refuses_short_and_foreign_plaintexts() {
        let mut buf = [0u8; LOSS_REPORT_LEN];
        buf[0] = KIND_LOSS_REPORT;
        for len in 0..LOSS_REPORT_LEN {
            assert_eq!(LossReport::parse(&buf[..len]), Err(ReportError::Truncated));
        }
        buf[0] = 0x21;
        assert_eq!(LossReport::parse(&buf), Err(ReportError::Kind));
        assert!(!is_report(&[0x45, 0, 0]));
        assert!(!is_report(&[0x10]));
        assert!(!is_report(&[]));
        assert_eq!(
            LossReport {
                span: ms(1),
                received: 0,
                lost: 0,
                bytes: 0
            }
            .write(&mut [0u8; LOSS_REPORT_LEN - 1]),
            Err(ReportError::BufferTooSmall)
        );
    }

    #[test]
    fn delivered_rate_is_bytes_over_the_span() {
        let report = LossReport {
            span: ms(20),
            received: 100,
            lost: 100,
            bytes: 2_000_000,
        };
        assert_eq!(report.delivered_bytes_per_second(), Some(100_000_000));
        let empty = LossReport {
            span: Duration::ZERO,
            ..report
        };
        assert_eq!(empty.delivered_bytes_per_second(), None);
    }

    #[test]
    fn meter_reports_the_gaps_of_an_interval_once_it_ends() {
        let mut meter = LossMeter::default();
        // Every other counter arrives: each arrival advances the counter by 2.
        let mut now = ms(100);
        assert_eq!(meter.note(1000, 1, now), None);
        let mut reports = Vec::new();
        for _ in 0..30 {
            now += ms(1);
            reports.extend(meter.note(1000, 2, now));
        }
        assert_eq!(reports.len(), 1, "one interval of 20 ms ended");
        let report = reports[0];
        assert_eq!(report.span, LOSS_REPORT_INTERVAL);
        assert_eq!(report.received, 20);
        // The first arrival advanced by 1, the 19 after it by 2 each.
        assert_eq!(report.lost, (1 + 19 * 2) - 20);
        assert_eq!(report.bytes, 20_000);
    }

    #[test]
    fn meter_stays_silent_without_losses_or_after_a_pause() {
        let mut meter = LossMeter::default();
        let mut now = ms(0);
        for _ in 0..100 {
            now += ms(1);
            assert_eq!(meter.note(1000, 1, now), None, "nothing lost");
        }
        // Late arrivals (no advance) make received pass the span: still nothing lost.
        for _ in 0..30 {
            now += ms(1);
            assert_eq!(meter.note(1000, 0, now), None);
        }
        // Losses, then a pause longer than a report may cover.
        meter.note(1000, 50, now + ms(1));
        assert_eq!(meter.note(1000, 1, now + ms(200)), None);
    }
}
