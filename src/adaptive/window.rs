//! The throttle's sliding window: requests and accepts per time bucket, lock-free.
//!
//! Each bucket is one `AtomicU64` that packs the bucket's number (its stamp) with its two counts,
//! so that recording is one compare-and-swap and a bucket is reset and counted into in the same
//! step: no increment can land in a bucket that a concurrent roll then clears, and no reader ever
//! sees a new stamp with the old counts.
//!
//! Layout of a bucket word: `stamp (24 bits) | requests (20 bits) | accepts (20 bits)`. A bucket
//! counts at most 2^20 - 1 requests (then it stops counting, both counts together, so the ratio
//! stays); buckets are at least a second long, so that is a million calls a second. The stamp is
//! the bucket's number modulo 2^24: a bucket is at least a second, so a stamp repeats after 194
//! days, and a bucket that no call touched for exactly a multiple of that could be read as
//! current once. The window then counts some old calls, for at most one window.

use std::sync::atomic::{AtomicU64, Ordering};

const COUNT_BITS: u32 = 20;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const STAMP_BITS: u32 = 24;
const STAMP_MASK: u64 = (1 << STAMP_BITS) - 1;

/// The requests and accepts of a window (or a bucket).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) requests: u64,
    pub(crate) accepts: u64,
}

/// A ring of `k` buckets of `width` nanoseconds each.
#[derive(Debug)]
pub(crate) struct Buckets {
    buckets: Box<[AtomicU64]>,
    width: u64,
}

fn pack(stamp: u64, tally: Tally) -> u64 {
    ((stamp & STAMP_MASK) << (2 * COUNT_BITS)) | (tally.requests << COUNT_BITS) | tally.accepts
}

fn unpack(word: u64) -> (u64, Tally) {
    (
        word >> (2 * COUNT_BITS),
        Tally {
            requests: (word >> COUNT_BITS) & COUNT_MAX,
            accepts: word & COUNT_MAX,
        },
    )
}

impl Buckets {
    /// `k` buckets (at least one) of `width` nanoseconds (at least one).
    pub(crate) fn new(k: u32, width: u64) -> Self {
        let k = k.max(1) as usize;
        Buckets {
            buckets: (0..k)
                .map(|_| AtomicU64::new(pack(STAMP_MASK, Tally::default())))
                .collect(),
            width: width.max(1),
        }
    }

    /// The bucket number of `at` (nanoseconds since the breaker's creation).
    fn number(&self, at: u64) -> u64 {
        at / self.width
    }

    /// The bucket width in nanoseconds.
    pub(crate) fn width(&self) -> u64 {
        self.width
    }

    /// Counts one request at `at`, and an accept with it if `accepted`.
    pub(crate) fn record(&self, at: u64, accepted: bool) {
        let number = self.number(at);
        let k = self.buckets.len() as u64;
        let bucket = &self.buckets[(number % k) as usize];
        // Relaxed: the counts are statistics that no other memory depends on; the bucket's own
        // updates are ordered by its compare-and-swap.
        let mut word = bucket.load(Ordering::Relaxed);
        loop {
            let (current, mut tally) = unpack(word);
            // A bucket up to one lap ahead of `at` was rolled by a caller whose clock read came
            // later than ours: count into it, or resetting it to our older lap would erase its
            // counts (with a one-bucket window, a clock read a nanosecond older suffices).
            let ahead = current.wrapping_sub(number) & STAMP_MASK;
            let stamp = match (1..=k).contains(&ahead) {
                true => current,
                false => number & STAMP_MASK,
            };
            if current != stamp {
                tally = Tally::default(); // this bucket starts a new lap: its old counts go
            }
            if tally.requests == COUNT_MAX {
                if current == stamp {
                    return; // full: stop counting both, so that the ratio stays
                }
            } else {
                tally.requests += 1;
                tally.accepts += u64::from(accepted);
            }
            match bucket.compare_exchange_weak(
                word,
                pack(stamp, tally),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => word = actual,
            }
        }
    }

    /// The requests and accepts of the buckets in the window at `at`: the current one and the
    /// `k - 1` before it. O(k) loads, no write.
    pub(crate) fn tally(&self, at: u64) -> Tally {
        let number = self.number(at);
        let k = self.buckets.len() as u64;
        let mut sum = Tally::default();
        for bucket in self.buckets.iter() {
            let (stamp, tally) = unpack(bucket.load(Ordering::Relaxed));
            // How many buckets ago this one was written (modulo the stamp's range).
            let age = number.wrapping_sub(stamp) & STAMP_MASK;
            if age < k {
                sum.requests += tally.requests;
                sum.accepts += tally.accepts;
            }
        }
        sum
    }

    /// Forgets every count (a reset of the breaker).
    pub(crate) fn clear(&self) {
        for bucket in self.buckets.iter() {
            bucket.store(pack(STAMP_MASK, Tally::default()), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_window_counts_the_current_bucket_and_the_ones_before_it_up_to_k() {
        let w = Buckets::new(3, S);
        w.record(0, true);
        w.record(S, false);
        w.record(2 * S + 1, true);
        assert_eq!(
            w.tally(2 * S),
            Tally {
                requests: 3,
                accepts: 2
            }
        );
        // At 3 s the bucket of 0 s has left the window.
        assert_eq!(
            w.tally(3 * S),
            Tally {
                requests: 2,
                accepts: 1
            }
        );
        assert_eq!(w.tally(5 * S), Tally::default());
        // A lap later, a bucket's old counts are replaced, not added to.
        w.record(3 * S, true);
        assert_eq!(
            w.tally(3 * S),
            Tally {
                requests: 3,
                accepts: 2
            }
        );
    }

    #[test]
    fn an_untouched_window_is_empty_at_time_zero() {
        let w = Buckets::new(30, S);
        assert_eq!(w.tally(0), Tally::default());
        w.record(0, true);
        w.clear();
        assert_eq!(w.tally(0), Tally::default());
    }

    #[test]
    fn a_full_bucket_stops_counting_both_so_the_ratio_stays() {
        let w = Buckets::new(1, S);
        let word = pack(
            0,
            Tally {
                requests: COUNT_MAX,
                accepts: 7,
            },
        );
        w.buckets[0].store(word, Ordering::Relaxed);
        w.record(0, true);
        assert_eq!(
            w.tally(0),
            Tally {
                requests: COUNT_MAX,
                accepts: 7
            }
        );
    }

    /// A caller reads the clock, then another thread rolls the bucket to its next lap before the
    /// first caller's compare-and-swap: the late, older record must not erase the newer lap. With
    /// a one-bucket window (a 1 s throttling window) this needs the clock only a nanosecond apart.
    #[test]
    fn a_record_with_an_older_clock_read_never_erases_a_newer_lap() {
        let w = Buckets::new(1, S);
        for _ in 0..5 {
            w.record(S, false); // the new lap
        }
        w.record(S - 1, true); // read just before the roll, recorded just after
        assert_eq!(
            w.tally(S),
            Tally {
                requests: 6,
                accepts: 1
            }
        );
    }

    #[test]
    fn concurrent_records_are_all_counted() {
        let w = std::sync::Arc::new(Buckets::new(2, S));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        // Two buckets, so that rolls race with counts.
                        w.record((i % 2) * S, t % 2 == 0);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            w.tally(S),
            Tally {
                requests: 40_000,
                accepts: 20_000
            }
        );
    }
}
