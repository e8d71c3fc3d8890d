//! Pacing toward one peer: the rate its loss reports allow, and a token bucket that holds our
//! sending to it.
//!
//! A receiver that cannot keep up with a flood drops at its socket what we already read from
//! the TUN device and encrypted, with CPU it needed itself. Its loss reports (core::feedback)
//! say how much it took in; heavy loss in several reports in a row sets our pace a little under
//! that. The pace then grows by a sixteenth every interval until losses cut it again, and a pace
//! no report cut for `PACE_RELEASE_AFTER` is lifted. Loss that cutting does not cure (a lossy
//! link, not an overloaded receiver) lifts the pace and is ignored for a while. A peer without a
//! pace is never held.

use crate::core::feedback::LossReport;
use crate::core::limits::{
    LOSS_REPORT_INTERVAL, LOSS_REPORT_MIN_SPAN, PACE_BACKOFF, PACE_BURST_BYTES, PACE_BURST_TIME,
    PACE_EPISODE_FLOOR, PACE_FLOORS_BEFORE_GIVING_UP, PACE_HEAVY_REPORTS_TO_START,
    PACE_IGNORE_AFTER_UNRESPONSIVE, PACE_INCREASE, PACE_INCREASE_INTERVAL, PACE_LOSS_FALL,
    PACE_LOSS_FRACTION, PACE_LOSS_FRACTION_WHILE_PACED, PACE_LOSS_RISE, PACE_MAX_DEBT_BYTES,
    PACE_MIN_BURST_BYTES, PACE_MIN_BYTES_PER_SECOND, PACE_RELEASE_AFTER, PACE_SHARE_MIN_PACKETS,
};
use core::time::Duration;

/// Increases applied at once after a long quiet stretch; past this the pace is lifted anyway.
const MAX_INCREASE_STEPS: u32 = 64;
const NANOS_PER_SECOND: u128 = 1_000_000_000;

#[derive(Debug, Clone, Copy, Default)]
pub struct Pacer {
    /// Bytes per second; None: not paced.
    rate: Option<u64>,
    /// Bytes that may go now; negative: debt to pay off before more may go.
    tokens: i64,
    refilled_at: Duration,
    increased_at: Duration,
    cut_at: Duration,
    /// Heavy-loss reports in a row, and when the latest came.
    heavy_streak: u32,
    heavy_at: Duration,
    /// A cut below this crosses a floor: half the pace at the start of the episode, or at the
    /// last interval that came without heavy loss, or at the last floor crossed.
    episode_floor: u64,
    /// Floors crossed since the episode started or the loss was last cured.
    floors_crossed: u32,
    /// The share lost (lost, of all) in the report behind the latest cut.
    cut_loss: (u64, u64),
    /// Reports are ignored until then, after loss proved unresponsive.
    ignore_until: Duration,
    /// Loss reports that came in, and those that set or lowered the pace.
    pub reports: u64,
    pub cuts: u64,
    /// Episodes given up because a lower pace did not cure the loss.
    pub unresponsive: u64,
}

impl Pacer {
    /// The pace in bytes per second; None when the peer is not paced.
    pub fn rate(&self) -> Option<u64> {
        self.rate
    }

    /// Stops pacing the peer now (pacing was turned off).
    pub fn lift(&mut self) {
        self.rate = None;
    }

    /// A loss report from the peer. Returns whether it set or lowered the pace.
    pub fn on_report(&mut self, report: &LossReport, now: Duration) -> bool {
        self.reports = self.reports.saturating_add(1);
        // A pace due to be lifted is lifted before the report is judged against it.
        self.advance(now);
        let paced = self.rate;
        let (num, den) = if paced.is_some() {
            PACE_LOSS_FRACTION_WHILE_PACED
        } else {
            PACE_LOSS_FRACTION
        };
        let total = u64::from(report.received) + u64::from(report.lost);
        let heavy = u64::from(report.lost) * den >= total * num;
        let delivered = report.delivered_bytes_per_second().unwrap_or(0);
        let counts = total > 0 && delivered > 0 && report.span >= LOSS_REPORT_MIN_SPAN;
        // Receivers report every interval with losses; a gap means an interval without. Shares
        // and gaps say something only over enough packets: at a slow pace an interval holds a
        // handful, and a lossy link then shows clean intervals by chance.
        let in_a_row = now.saturating_sub(self.heavy_at) <= LOSS_REPORT_INTERVAL * 2;
        let (cut_lost, cut_total) = self.cut_loss;
        let telling = total >= PACE_SHARE_MIN_PACKETS && cut_total >= PACE_SHARE_MIN_PACKETS;
        let clean = counts && !heavy && total >= PACE_SHARE_MIN_PACKETS;
        let gap = counts && heavy && !in_a_row && cut_total >= PACE_SHARE_MIN_PACKETS;
        if clean || gap {
            self.cured();
        }
        if !(counts && heavy) {
            self.heavy_streak = 0;
            return false;
        }
        self.heavy_streak = if in_a_row { self.heavy_streak + 1 } else { 1 };
        self.heavy_at = now;
        if now < self.ignore_until
            || (paced.is_none() && self.heavy_streak < PACE_HEAVY_REPORTS_TO_START)
        {
            return false;
        }
        // A share lost that fell since the last cut shows pacing works: the floors are measured
        // from here. A lossy link loses the same share at any pace.
        let share_vs_cut = |num: u64, den: u64| {
            u128::from(report.lost) * u128::from(cut_total) * u128::from(den)
                > u128::from(cut_lost) * u128::from(total) * u128::from(num)
        };
        let (num, den) = PACE_LOSS_FALL;
        if paced.is_some() && telling && !share_vs_cut(num, den) {
            self.cured();
        }
        let (num, den) = PACE_BACKOFF;
        let wanted = scale(delivered, num, den);
        let target = wanted.max(PACE_MIN_BYTES_PER_SECOND);
        match paced {
            None => {
                self.episode_floor = floor_below(target);
                self.floors_crossed = 0;
                self.tokens = 0;
                self.refilled_at = now;
            }
            // A pace held at the minimum cannot fall further: wanting less crosses a floor too.
            Some(_) if wanted < self.episode_floor.max(PACE_MIN_BYTES_PER_SECOND) => {
                // A share lost that rose since the last cut is new congestion: the receiver's
                // capacity fell. Only a share that held counts toward giving up.
                let (num, den) = PACE_LOSS_RISE;
                if !(telling && share_vs_cut(num, den)) {
                    self.floors_crossed += 1;
                }
                if self.floors_crossed >= PACE_FLOORS_BEFORE_GIVING_UP {
                    self.rate = None;
                    self.ignore_until = now + PACE_IGNORE_AFTER_UNRESPONSIVE;
                    self.unresponsive = self.unresponsive.saturating_add(1);
                    return false;
                }
                self.episode_floor = floor_below(target);
            }
            Some(_) => {}
        }
        self.cut_loss = (u64::from(report.lost), total);
        // A report written before our last cut took effect says less than that cut did.
        self.rate = Some(paced.map_or(target, |r| r.min(target)));
        self.increased_at = now;
        self.cut_at = now;
        self.cuts = self.cuts.saturating_add(1);
        true
    }

    /// Whether a packet of `len` bytes may go now; if so, it is paid for. A peer in debt
    /// beyond `PACE_MAX_DEBT_BYTES` is refused.
    pub fn admit(&mut self, len: usize, now: Duration) -> bool {
        self.advance(now);
        if self.rate.is_none() {
            return true;
        }
        if self.tokens < -(PACE_MAX_DEBT_BYTES as i64) {
            return false;
        }
        self.tokens = self.tokens.saturating_sub(len as i64);
        true
    }

    /// When a peer in debt should get packets again: once the debt is paid and a burst saved
    /// up (`burst_bytes`), so packets leave in bursts, not one per wake-up. None when the peer
    /// is not paced, not in debt, or its pace is due to be lifted.
    pub fn ready_at(&self, now: Duration) -> Option<Duration> {
        let rate = self.rate?;
        if self.tokens >= 0 || now.saturating_sub(self.cut_at) >= PACE_RELEASE_AFTER {
            return None;
        }
        let elapsed = now.saturating_sub(self.refilled_at);
        let needed = u128::from(self.tokens.unsigned_abs()) + u128::from(burst_bytes(rate));
        let saved = earned(rate, elapsed);
        if saved >= needed {
            return None;
        }
        let wait = (needed - saved) * NANOS_PER_SECOND / u128::from(rate.max(1));
        Some(now + Duration::from_nanos(u64::try_from(wait).unwrap_or(u64::MAX)))
    }

    /// Loss stopped for an interval: pacing works at the pace it has now, so the floors are
    /// measured from here.
    fn cured(&mut self) {
        if let Some(rate) = self.rate {
            self.episode_floor = floor_below(rate);
            self.floors_crossed = 0;
        }
    }

    /// Lifts, grows and refills the pace up to `now`.
    fn advance(&mut self, now: Duration) {
        let Some(held) = self.rate else { return };
        if now.saturating_sub(self.cut_at) >= PACE_RELEASE_AFTER {
            self.rate = None;
            return;
        }
        let steps = (now.saturating_sub(self.increased_at).as_nanos()
            / PACE_INCREASE_INTERVAL.as_nanos())
        .min(u128::from(MAX_INCREASE_STEPS)) as u32;
        let (num, den) = PACE_INCREASE;
        let mut rate = held;
        for _ in 0..steps {
            rate = scale(rate, num, den);
        }
        self.increased_at += PACE_INCREASE_INTERVAL * steps;
        // Refill at the rate that held since the last refill; a step taken now counts from now.
        let elapsed = now.saturating_sub(self.refilled_at);
        let earned = i64::try_from(earned(held, elapsed)).unwrap_or(i64::MAX);
        self.tokens = self
            .tokens
            .saturating_add(earned)
            .min(PACE_BURST_BYTES as i64);
        self.refilled_at = now;
        self.rate = Some(rate);
    }
}

/// The burst a paced peer saves up before its packets flow again: `PACE_BURST_BYTES`, or less
/// at a pace too slow to save that much within `PACE_BURST_TIME`, so a pause stays short.
fn burst_bytes(rate: u64) -> u64 {
    u64::try_from(earned(rate, PACE_BURST_TIME))
        .unwrap_or(u64::MAX)
        .clamp(PACE_MIN_BURST_BYTES, PACE_BURST_BYTES)
}

/// Bytes a pace of `rate` bytes per second earns over `time`.
fn earned(rate: u64, time: Duration) -> u128 {
    u128::from(rate) * time.as_nanos() / NANOS_PER_SECOND
}

/// The floor an episode measures cuts against, from the pace it starts or was cured at.
fn floor_below(rate: u64) -> u64 {
    let (num, den) = PACE_EPISODE_FLOOR;
    scale(rate, num, den)
}

fn scale(value: u64, num: u64, den: u64) -> u64 {
    u64::try_from(u128::from(value) * u128::from(num) / u128::from(den)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn report(span: Duration, received: u32, lost: u32, bytes: u64) -> LossReport {
        LossReport {
            span,
            received,
            lost,
            bytes,
        }
    }

    /// A receiver took in 100 MB/s over 20 ms and lost as much again.
    fn heavy_loss() -> LossReport {
        report(ms(20), 1000, 1000, 2_000_000)
    }

    /// Heavy reports in a row, 20 ms apart, ending at `end`: enough to start pacing.
    fn start_pacing(pacer: &mut Pacer, report: &LossReport, end: Duration) {
        for i in (0..PACE_HEAVY_REPORTS_TO_START).rev() {
            pacer.on_report(report, end.saturating_sub(LOSS_REPORT_INTERVAL * i));
        }
        assert!(pacer.rate().is_some(), "pacing started");
    }

    #[test]
    fn an_unpaced_peer_is_never_held() {
        let mut pacer = Pacer::default();
        for i in 0..10_000 {
            assert!(pacer.admit(65_535, Duration::from_micros(i)));
        }
        assert_eq!(pacer.ready_at(ms(10)), None);
        assert_eq!(pacer.rate(), None);
    }

    #[test]
    fn light_loss_and_empty_reports_set_no_pace() {
        let mut pacer = Pacer::default();
        for at in 0..10 {
            let now = ms(20 * at);
            assert!(!pacer.on_report(&report(ms(20), 1000, 333, 1_000_000), now));
            assert!(!pacer.on_report(&report(ms(20), 0, 0, 0), now));
            assert!(!pacer.on_report(&report(Duration::ZERO, 10, 10, 1000), now));
            assert!(!pacer.on_report(&report(Duration::from_micros(500), 10, 10, 1000), now));
        }
        assert_eq!(pacer.rate(), None);
        assert_eq!(pacer.reports, 40);
        assert_eq!(pacer.cuts, 0);
    }

    #[test]
    fn pacing_starts_only_after_heavy_reports_in_a_row() {
        let mut pacer = Pacer::default();
        // Isolated heavy bursts, as a TCP stream makes them: never in a row.
        for at in 0..20 {
            let now = ms(60 * at);
            assert!(!pacer.on_report(&heavy_loss(), now));
            assert!(!pacer.on_report(&report(ms(20), 1000, 10, 1_000_000), now + ms(20)));
        }
        // Heavy reports too far apart are not in a row either.
        assert!(!pacer.on_report(&heavy_loss(), ms(2000)));
        assert!(!pacer.on_report(&heavy_loss(), ms(2100)));
        assert_eq!(pacer.rate(), None);
        let mut started = None;
        for i in 0..PACE_HEAVY_REPORTS_TO_START {
            if pacer.on_report(&heavy_loss(), ms(3000) + LOSS_REPORT_INTERVAL * i) {
                started = Some(i + 1);
            }
        }
        assert_eq!(started, Some(PACE_HEAVY_REPORTS_TO_START));
    }

    #[test]
    fn heavy_loss_paces_a_little_under_what_was_delivered() {
        let mut pacer = Pacer::default();
        start_pacing(&mut pacer, &report(ms(20), 1000, 500, 2_000_000), ms(100));
        assert_eq!(pacer.rate(), Some(100_000_000 * 15 / 16));
        // A stale report that says more got through does not raise the pace.
        assert!(pacer.on_report(&report(ms(20), 1000, 1000, 4_000_000), ms(101)));
        assert_eq!(pacer.rate(), Some(100_000_000 * 15 / 16));
        assert_eq!(pacer.cuts, 2);
    }

    #[test]
    fn a_starved_receiver_cannot_shut_a_peer_out() {
        let mut pacer = Pacer::default();
        start_pacing(&mut pacer, &report(ms(20), 1, 1000, 10), ms(100));
        assert_eq!(pacer.rate(), Some(PACE_MIN_BYTES_PER_SECOND));
    }

    #[test]
    fn loss_a_lower_pace_does_not_cure_lifts_the_pace_for_a_while() {
        let mut pacer = Pacer::default();
        start_pacing(&mut pacer, &heavy_loss(), ms(100));
        // The receiver's intake keeps falling with our pace, loss as heavy as ever.
        assert!(pacer.on_report(&report(ms(20), 600, 600, 1_200_000), ms(120)));
        assert!(
            pacer.on_report(&report(ms(20), 400, 400, 800_000), ms(140)),
            "one floor crossed may be chance: followed"
        );
        assert!(pacer.on_report(&report(ms(20), 150, 150, 300_000), ms(160)));
        assert!(!pacer.on_report(&report(ms(20), 50, 50, 100_000), ms(180)));
        assert_eq!(pacer.rate(), None, "lifted at the third floor");
        assert_eq!(pacer.unresponsive, 1);
        // Ignored for a while, then heard again.
        let later = ms(180) + PACE_IGNORE_AFTER_UNRESPONSIVE;
        for i in 0..5 {
            assert!(!pacer.on_report(&heavy_loss(), later - ms(100) + LOSS_REPORT_INTERVAL * i));
        }
        start_pacing(&mut pacer, &heavy_loss(), later + ms(100));
    }

    #[test]
    fn a_receiver_whose_capacity_falls_in_steps_is_followed_when_each_step_is_cured() {
        let mut pacer = Pacer::default();
        start_pacing(&mut pacer, &heavy_loss(), ms(100));
        // The receiver's intake falls to a tenth, then halves twice; after each fall, an
        // interval without heavy loss shows the new pace cures it. Each fall measures its
        // floor from the pace that cured, so none of them counts against the link.
        let mut now = ms(100);
        for bytes in [200_000u64, 100_000, 50_000] {
            now += LOSS_REPORT_INTERVAL;
            assert!(pacer.on_report(&report(ms(20), 100, 900, bytes), now));
            now += LOSS_REPORT_INTERVAL;
            assert!(!pacer.on_report(&report(ms(20), 1000, 10, bytes), now));
        }
        // The last cut, grown by one step by the clean report 20 ms later.
        assert_eq!(pacer.rate(), Some(scale(2_500_000 * 15 / 16, 17, 16)));
        assert_eq!(pacer.unresponsive, 0);
    }

    /// The sequence the netns test saw (a rate limit whose early allowance ran out): the
    /// receiver's intake fell from 46 to 23 to 8 MB/s within 100 ms, each step losing a larger
    /// share. Two floors crossed, neither counted against the link.
    #[test]
    fn a_capacity_falling_in_steps_with_rising_loss_is_followed() {
        let mut pacer = Pacer::default();
        start_pacing(&mut pacer, &report(ms(20), 800, 400, 1_000_000), ms(400));
        assert!(pacer.on_report(&report(ms(20), 385, 404, 486_640), ms(420)));
        assert!(pacer.on_report(&report(ms(20), 137, 277, 173_168), ms(440)));
        assert!(pacer.on_report(&report(ms(20), 124, 1640, 156_736), ms(460)));
        assert_eq!(pacer.unresponsive, 0);
        assert_eq!(pacer.rate(), Some(156_736 * 50 * 15 / 16));
    }

    #[test]
    fn a_report_after_the_pace_was_due_to_be_lifted_is_judged_unpaced() {
        let mut pacer = Pacer::default();
        start_pacing(&mut pacer, &heavy_loss(), ms(0));
        // A twentieth lost would cut a paced peer, but the pace was due to be lifted.
        let light = report(ms(20), 1000, 60, 2_000_000);
        assert!(!pacer.on_report(&light, PACE_RELEASE_AFTER));
        assert_eq!(pacer.rate(), None);
        assert_eq!(pacer.ready_at(PACE_RELEASE_AFTER), None);
    }

    #[test]
    fn a_paced_peer_sends_its_rate_in_bursts_and_waits_out_its_debt() {
        let mut pacer = Pacer::default();
        start_pacing(&mut pacer, &heavy_loss(), ms(0));
        let rate = pacer.rate().unwrap_or_default();
        // Offer 1400-byte packets as fast as the clock ticks; send only when `ready_at` allows,
        // the way the shell holds the TUN device. Over 10 ms (less than one increase interval)
        // what went out is the rate's share, give or take one burst and one packet, and it
        // went out in bursts: one pause per burst, not one per packet.
        let (mut sent, mut pauses, mut paused) = (0u64, 0u64, false);
        let mut now = ms(0);
        while now < ms(10) {
            let ready = pacer.ready_at(now).is_none();
            if ready && pacer.admit(1400, now) {
                sent += 1400;
            }
            pauses += u64::from(!ready && !paused);
            paused = !ready;
            now += Duration::from_micros(1);
        }
        let budget = rate / 100;
        assert!(
            sent <= budget + PACE_BURST_BYTES + 1400,
            "{sent} > {budget}"
        );
        // At the end up to one burst may still be saving up.
        assert!(
            sent + PACE_BURST_BYTES + 1400 >= budget,
            "{sent} < {budget}"
        );
        assert!(pauses <= sent / PACE_BURST_BYTES + 1, "{pauses} pauses");
    }

    #[test]
    fn debt_is_paid_off_at_the_rate_and_deep_debt_is_refused() {
        let mut pacer = Pacer::default();
        start_pacing(&mut pacer, &report(ms(20), 1000, 1000, 20_000), ms(0));
        let rate = pacer.rate().unwrap_or_default();
        assert_eq!(rate, 1_000_000 * 15 / 16);
        assert!(
            pacer.admit(65_535, ms(0)),
            "a super-packet begun at zero goes"
        );
        let ready = pacer.ready_at(ms(0)).unwrap_or_default();
        // Paid off, plus a burst saved up: at this slow pace, the smallest.
        assert_eq!(burst_bytes(rate), PACE_MIN_BURST_BYTES);
        let expected = Duration::from_nanos((65_535 + PACE_MIN_BURST_BYTES) * 1_000_000_000 / rate);
        assert!(
            ready.abs_diff(expected) < Duration::from_micros(2),
            "{ready:?}"
        );
        assert!(pacer.admit(40_000, ms(0)), "debt still within the limit");
        assert!(!pacer.admit(1400, ms(0)), "debt past the limit is refused");
        assert!(pacer.ready_at(ready).is_some());
    }

    #[test]
    fn the_pace_grows_without_cuts_and_is_lifted_after_a_quiet_second() {
        let mut pacer = Pacer::default();
        start_pacing(&mut pacer, &heavy_loss(), ms(0));
        let start = pacer.rate().unwrap_or_default();
        pacer.admit(1, PACE_INCREASE_INTERVAL * 3);
        let grown = pacer.rate().unwrap_or_default();
        assert_eq!(grown, scale(scale(scale(start, 17, 16), 17, 16), 17, 16));
        pacer.admit(1, PACE_RELEASE_AFTER - ms(1));
        assert!(pacer.rate().is_some());
        assert!(pacer.admit(1, PACE_RELEASE_AFTER));
        assert_eq!(pacer.rate(), None);
        assert_eq!(pacer.ready_at(PACE_RELEASE_AFTER), None);
    }

    /// What a sender offering 1 GB/s gets through a receiver over two seconds, with the pacer
    /// in the loop: `keep(taken, allowance)` says whether the receiver keeps the next packet.
    /// Returns the average sent after the first half second, and the pacer.
    fn closed_loop(mut keep: impl FnMut(u64, u128) -> bool) -> (u64, Pacer) {
        let mut pacer = Pacer::default();
        let mut now = Duration::ZERO;
        let (mut taken, mut lost, mut sent_after) = (0u64, 0u64, 0u64);
        let mut interval_start = now;
        let settled = ms(500);
        while now < ms(2000) {
            // 5 KB per 5 µs, in 1250-byte packets.
            for _ in 0..4 {
                if pacer.ready_at(now).is_none() && pacer.admit(1250, now) {
                    if now >= settled {
                        sent_after += 1250;
                    }
                    let allowance = (now - interval_start).as_nanos().max(1);
                    if keep(taken, allowance) {
                        taken += 1250;
                    } else {
                        lost += 1;
                    }
                }
            }
            now += Duration::from_micros(5);
            if now - interval_start >= LOSS_REPORT_INTERVAL {
                let packets = (taken / 1250) as u32;
                let span = now - interval_start;
                pacer.on_report(&report(span, packets, lost as u32, taken), now);
                (taken, lost) = (0, 0);
                interval_start = now;
            }
        }
        let average = u128::from(sent_after) * NANOS_PER_SECOND / (now - settled).as_nanos();
        (average as u64, pacer)
    }

    /// A receiver that takes in at most `capacity` bytes per second and loses the rest: from
    /// an unpaced flood, the pace settles near the capacity.
    #[test]
    fn a_flood_into_a_slow_receiver_settles_near_its_capacity() {
        let capacity: u64 = 250_000_000;
        let (average, pacer) = closed_loop(|taken, elapsed_ns| {
            u128::from(taken) <= u128::from(capacity) * elapsed_ns / NANOS_PER_SECOND
        });
        assert!(pacer.rate().is_some(), "still paced");
        assert_eq!(pacer.unresponsive, 0);
        assert!(
            average <= capacity * 6 / 5 && average >= capacity * 4 / 5,
            "sent {average} B/s against a capacity of {capacity}"
        );
    }

    /// A link that loses every other packet whatever we send: pacing would not help, so after
    /// one short episode the sender runs unpaced.
    #[test]
    fn a_lossy_link_is_not_chased_down_to_the_floor() {
        let mut n = 0u64;
        let (average, pacer) = closed_loop(|_, _| {
            n += 1;
            n % 2 != 0
        });
        assert_eq!(pacer.rate(), None);
        assert_eq!(pacer.unresponsive, 1);
        assert!(
            average > 900_000_000,
            "sent {average} B/s of 1 GB/s offered"
        );
    }
}
