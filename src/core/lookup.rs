//! What one DHT lookup of a peer's record answers with.
//!
//! A lookup streams the items DHT nodes hold under the peer's key, in no particular order: a
//! node that missed the peer's last publish still serves the record before it, with old
//! addresses, and may well answer first. Taking the first acceptable item would then send the
//! handshake to where the peer used to be, and only the retry after an unanswered handshake
//! (about 15 s) would look again. So a lookup keeps listening for `DHT_RESOLVE_SETTLE` after the
//! first acceptable record (or until the lookup ends, if sooner) and answers with the highest
//! sequence it saw. The items are signed by the peer, so nobody but the peer can make one win.
//!
//! [`RecordPicker`] holds one record at a time, whatever the nodes send, and decides with the
//! time since the lookup started, which the shell passes in.

use crate::core::limits::{DHT_RESOLVE_SETTLE, DHT_RESOLVE_TIMEOUT};
use crate::core::record::{is_newer, Record};
use core::time::Duration;

/// What became of one item a lookup yielded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// The newest record so far; `replaced` when it superseded an older one the lookup had
    /// taken before.
    Taken { replaced: bool },
    /// The record already held, from another node, or the one the caller had already seen.
    Same,
    /// Older than the newest this lookup found: a node that missed the peer's last publish.
    /// That is how a DHT spreads a record, nothing to count.
    Superseded,
    /// Older than the record the caller already had: worth counting.
    Older,
    /// Signed for another key than the one looked up.
    WrongKey,
    /// Validly signed, but not a record this version reads.
    Malformed,
}

/// Picks the newest acceptable record among the items of one lookup.
pub struct RecordPicker {
    key: [u8; 32],
    seen: Option<i64>,
    best: Option<(i64, Record)>,
    /// When the first acceptable record came, since the lookup started.
    first_at: Option<Duration>,
}

impl RecordPicker {
    /// A lookup of `key`'s record by a caller that already has the record with sequence `seen`.
    pub fn new(key: [u8; 32], seen: Option<i64>) -> Self {
        Self {
            key,
            seen,
            best: None,
            first_at: None,
        }
    }

    /// Takes in one item (its key, sequence and value), `now` after the lookup started.
    pub fn offer(&mut self, key: &[u8; 32], seq: i64, value: &[u8], now: Duration) -> Offered {
        if key != &self.key {
            return Offered::WrongKey;
        }
        let best = self.best.as_ref().map(|(best, _)| *best);
        if self.seen == Some(seq) || best == Some(seq) {
            return Offered::Same;
        }
        if !is_newer(self.seen, seq) {
            return Offered::Older;
        }
        if !is_newer(best, seq) {
            return Offered::Superseded;
        }
        let Ok(record) = Record::decode(value) else {
            return Offered::Malformed;
        };
        self.best = Some((seq, record));
        self.first_at.get_or_insert(now);
        Offered::Taken {
            replaced: best.is_some(),
        }
    }

    /// How long after its start the lookup may go on listening: `DHT_RESOLVE_SETTLE` after the
    /// first acceptable record, never past `DHT_RESOLVE_TIMEOUT`. Past it, the shell stops and
    /// calls [`Self::finish`].
    pub fn deadline(&self) -> Duration {
        self.first_at.map_or(DHT_RESOLVE_TIMEOUT, |first| {
            first
                .saturating_add(DHT_RESOLVE_SETTLE)
                .min(DHT_RESOLVE_TIMEOUT)
        })
    }

    /// The newest acceptable record so far, if any.
    pub fn best(&self) -> Option<&(i64, Record)> {
        self.best.as_ref()
    }

    /// The newest acceptable record the lookup found, if any.
    pub fn finish(self) -> Option<(i64, Record)> {
        self.best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    fn value(port: u16) -> Vec<u8> {
        Record::new(port, &["192.0.2.1".parse().unwrap()], None)
            .unwrap()
            .encode()
            .unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_newest_wins_whatever_the_order() {
        let mut picker = RecordPicker::new(KEY, None);
        let taken = |replaced| Offered::Taken { replaced };
        assert_eq!(picker.offer(&KEY, 100, &value(1), ms(5)), taken(false));
        assert_eq!(picker.offer(&KEY, 100, &value(1), ms(6)), Offered::Same);
        assert_eq!(picker.offer(&KEY, 300, &value(3), ms(7)), taken(true));
        assert_eq!(
            picker.offer(&KEY, 200, &value(2), ms(8)),
            Offered::Superseded
        );
        assert_eq!(
            picker.offer(&KEY, 100, &value(1), ms(9)),
            Offered::Superseded
        );
        let (seq, record) = picker.finish().unwrap();
        assert_eq!((seq, record.listen_port()), (300, 3));
    }

    #[test]
    fn what_the_caller_has_or_older_is_not_taken() {
        let mut picker = RecordPicker::new(KEY, Some(100));
        assert_eq!(picker.offer(&KEY, 100, &value(1), ms(1)), Offered::Same);
        assert_eq!(picker.offer(&KEY, 99, &value(1), ms(1)), Offered::Older);
        assert_eq!(picker.finish(), None);
    }

    #[test]
    fn wrong_keys_and_unreadable_values_are_refused() {
        let mut picker = RecordPicker::new(KEY, None);
        assert_eq!(
            picker.offer(&[8; 32], 500, &value(1), ms(1)),
            Offered::WrongKey
        );
        assert_eq!(
            picker.offer(&KEY, 500, b"\x09junk", ms(1)),
            Offered::Malformed
        );
        // Neither counts as found: the wait for more answers has not started.
        assert_eq!(picker.deadline(), DHT_RESOLVE_TIMEOUT);
        assert_eq!(
            picker.offer(&KEY, 400, &value(4), ms(2)),
            Offered::Taken { replaced: false }
        );
        assert_eq!(picker.finish().map(|(seq, _)| seq), Some(400));
    }

    #[test]
    fn listening_ends_a_settle_window_after_the_first_record() {
        let mut picker = RecordPicker::new(KEY, None);
        assert_eq!(picker.deadline(), DHT_RESOLVE_TIMEOUT);
        picker.offer(&KEY, 100, &value(1), ms(40));
        assert_eq!(picker.deadline(), ms(40) + DHT_RESOLVE_SETTLE);
        // A newer record does not extend the wait: the lookup ends in bounded time.
        picker.offer(&KEY, 200, &value(2), ms(900));
        assert_eq!(picker.deadline(), ms(40) + DHT_RESOLVE_SETTLE);
        // Near the end of the lookup's time, the window is cut short.
        let mut late = RecordPicker::new(KEY, None);
        late.offer(&KEY, 100, &value(1), DHT_RESOLVE_TIMEOUT - ms(1));
        assert_eq!(late.deadline(), DHT_RESOLVE_TIMEOUT);
    }
}
