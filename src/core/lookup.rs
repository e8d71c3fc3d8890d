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
use crate::core::privacy::{Reader, Unreadable};
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
    /// Private mode: does not decrypt with this network's key.
    Undecryptable,
    /// Private mode: not signed by the peer (someone writing in its name).
    Forged,
    /// Private mode: signed by the peer for another period (an old record replayed).
    WrongPeriod,
    /// Private mode: signed by the peer for another sequence (an old record replayed).
    Replayed,
}

/// Picks the newest acceptable record among the items of one lookup.
pub struct RecordPicker {
    reader: Reader,
    seen: Option<i64>,
    best: Option<(i64, Record)>,
    /// When the first acceptable record came, since the lookup started.
    first_at: Option<Duration>,
}

impl RecordPicker {
    /// A lookup of `key`'s public record by a caller that already has the record with sequence
    /// `seen`.
    pub fn new(key: [u8; 32], seen: Option<i64>) -> Self {
        Self::with_reader(Reader::Public { key }, seen)
    }

    /// A lookup that reads items as `reader` says (public, or the slots of a private network).
    pub fn with_reader(reader: Reader, seen: Option<i64>) -> Self {
        Self {
            reader,
            seen,
            best: None,
            first_at: None,
        }
    }

    /// Takes in one item (its key, sequence and value), `now` after the lookup started.
    pub fn offer(&mut self, key: &[u8; 32], seq: i64, value: &[u8], now: Duration) -> Offered {
        if !self.reader.asked_for(key) {
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
        let record = match self.reader.read(key, seq, value) {
            Ok(record) => record,
            Err(Unreadable::WrongKey) => return Offered::WrongKey,
            Err(Unreadable::Malformed) => return Offered::Malformed,
            Err(Unreadable::Undecryptable) => return Offered::Undecryptable,
            Err(Unreadable::Forged) => return Offered::Forged,
            Err(Unreadable::WrongPeriod) => return Offered::WrongPeriod,
            Err(Unreadable::Replayed) => return Offered::Replayed,
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

    #[test]
    fn a_private_lookup_reads_both_periods_and_names_every_refusal() {
        use crate::core::keys::SecretKey;
        use crate::core::privacy::Privacy;
        use crate::core::private_record::{NetworkSecret, PRIVATE_PERIOD};
        let peer = SecretKey::from_seed([1; 32]);
        let member = SecretKey::from_seed([2; 32]);
        let privacy = Privacy::Private(NetworkSecret::from_bytes([7; 32]));
        // Find an instant near a boundary: two slots.
        let now = (0..1000u32)
            .map(|i| PRIVATE_PERIOD / 100 * i)
            .find(|&t| privacy.slots(&peer, t).len() == 2)
            .unwrap();
        let slots = privacy.slots(&peer, now);
        let reader = privacy.reader(&peer.public_key(), now);
        let record = Record::new(9, &["192.0.2.1".parse().unwrap()], None).unwrap();
        let mut picker = RecordPicker::with_reader(reader, None);
        let (old, new) = (&slots[0], &slots[1]);
        let sealed = |slot: &crate::core::privacy::Slot, who: &SecretKey, seq| {
            slot.value(who, seq, &record, [seq as u8; 24]).unwrap()
        };
        assert_eq!(
            picker.offer(&old.public(), 10, &sealed(old, &member, 10), ms(1)),
            Offered::Forged
        );
        assert_eq!(
            picker.offer(&old.public(), 11, &sealed(old, &peer, 10), ms(1)),
            Offered::Replayed
        );
        assert_eq!(
            picker.offer(&old.public(), 12, &sealed(new, &peer, 12), ms(1)),
            Offered::Undecryptable
        );
        assert_eq!(
            picker.offer(
                peer.public_key().ed25519_bytes(),
                13,
                &record.encode().unwrap(),
                ms(1)
            ),
            Offered::WrongKey
        );
        assert_eq!(
            picker.offer(&old.public(), 20, &sealed(old, &peer, 20), ms(2)),
            Offered::Taken { replaced: false }
        );
        assert_eq!(
            picker.offer(&new.public(), 21, &sealed(new, &peer, 21), ms(3)),
            Offered::Taken { replaced: true }
        );
        assert_eq!(picker.finish(), Some((21, record)));
    }
}
