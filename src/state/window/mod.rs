//! Sliding windows of recorded outcomes, O(1) per outcome.
//!
//! A window is plain data, kept under the breaker's transition lock: every outcome that changes it
//! and every transition that clears it are then one after the other, and a snapshot of the totals
//! is always one that a sequential order of the same outcomes gives. (A lock-free ring cannot
//! give that: a total that moves after its slot lets a racing outcome see the window half
//! written, and trip early or not at all.) The healthy closed path does not come here: see
//! `Breaker::clean`; nor does a success that cannot trip the breaker, which is batched and folded
//! in when the lock is next taken (`batch.rs`).
//!
//! **Count window.** A ring of the last `n` outcomes and running totals of failed and slow ones.
//!
//! **Time window** of duration `d` in `k` buckets of `d / k`, numbered from the breaker's
//! creation. An outcome recorded in bucket `i` counts until the current bucket is `i + k`, so it
//! stays in the window for more than `d - d / k` and at most `d`. Running totals (64 bits) are
//! kept, and moving to a later bucket subtracts the buckets that leave. A bucket counts in 32 bits
//! until one would pass `u32::MAX` outcomes (a long bucket under heavy load): the window then
//! counts every bucket in 64 bits for the rest of its life, so that every outcome still counts
//! (a failure storm in a full bucket must still trip) and nothing wraps.

use std::num::NonZeroU64;

use crate::config::WindowKind;
use slots::{Counts, Slots};

mod slots;

/// What one call adds to the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sample {
    pub(crate) failed: bool,
    pub(crate) slow: bool,
}

/// The content of a window at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) calls: u64,
    pub(crate) failed: u64,
    pub(crate) slow: u64,
}

impl Totals {
    fn add(&mut self, sample: Sample) {
        self.calls += 1;
        self.failed += u64::from(sample.failed);
        self.slow += u64::from(sample.slow);
    }
}

#[derive(Debug)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    /// A window of `kind`; `tracks_slow`: whether outcomes can be slow (a time window keeps no
    /// slow counts otherwise).
    pub(crate) fn new(kind: WindowKind, tracks_slow: bool) -> Self {
        match kind {
            WindowKind::Count(n) => Window::Count(CountWindow::new(n)),
            WindowKind::Time { duration, buckets } => {
                let k = buckets.unwrap_or(1).max(1);
                let bucket_nanos = super::clock::saturating_nanos(duration / k);
                let bucket_nanos = NonZeroU64::new(bucket_nanos).unwrap_or(NonZeroU64::MIN);
                Window::Time(TimeWindow::new(bucket_nanos, k, tracks_slow))
            }
        }
    }

    /// Records one outcome at `now` (nanoseconds since the breaker's creation; a count window
    /// ignores it).
    pub(crate) fn record(&mut self, sample: Sample, now: u64) {
        match self {
            Window::Count(w) => w.record(sample),
            Window::Time(w) => w.record(sample, now),
        }
    }

    /// The outcomes in the window at `now`.
    pub(crate) fn totals(&mut self, now: u64) -> Totals {
        match self {
            Window::Count(w) => w.totals,
            Window::Time(w) => {
                w.advance(w.number(now));
                w.totals
            }
        }
    }

    /// The bounds `[start, end)` in nanoseconds of a batch of plain successes (`batch.rs`): the
    /// bucket a time window is at, where such a success can only lower the rates since no bucket
    /// leaves the window before `end`; any time for a count window (`UNBOUNDED`), where it can
    /// only lower them too. `None`: a time window that has not moved yet.
    pub(crate) fn batch_bounds(&self) -> Option<(u64, u64)> {
        match self {
            Window::Time(w) if w.current != NONE => {
                let start = w.current.saturating_mul(w.bucket_nanos.get());
                Some((start, start.saturating_add(w.bucket_nanos.get())))
            }
            Window::Time(_) => None,
            Window::Count(_) => Some((0, UNBOUNDED)),
        }
    }

    /// A lane's plain success that makes this many since the last fold is recorded under the
    /// lock: a count window's size (the window is then full of plain successes, which the lock
    /// notes: see `Breaker::clean`); no limit for a time window. Fixed for the window's life.
    pub(crate) fn batch_limit(&self) -> u64 {
        match self {
            Window::Count(w) => w.slots.len() as u64,
            Window::Time(_) => u64::MAX,
        }
    }

    /// Records `n` plain successes read at `now` (a batch: see `batch.rs`).
    pub(crate) fn record_successes(&mut self, n: u64, now: u64) {
        match self {
            Window::Count(w) => w.record_successes(n),
            Window::Time(w) => w.record_successes(n, now),
        }
    }

    /// Whether another plain success would leave the window as it is: a full count window of
    /// plain successes. Always false for a time window, which counts every outcome.
    pub(crate) fn is_full_of_successes(&self) -> bool {
        match self {
            Window::Count(w) => {
                w.totals.calls == w.slots.len() as u64 && w.totals.failed == 0 && w.totals.slow == 0
            }
            Window::Time(_) => false,
        }
    }

    pub(crate) fn clear(&mut self) {
        match self {
            Window::Count(w) => w.clear(),
            Window::Time(w) => w.clear(),
        }
    }

    /// Fills this new, empty window from `old`, which it replaces (a reconfiguration): a count
    /// window takes the newest outcomes of a count window, as many as fit, oldest first. Any
    /// other change (count to time, time to count, another time window) starts empty: a count
    /// window's outcomes have no time, and a time window's buckets do not split.
    pub(crate) fn carry_over(&mut self, old: &Window) {
        if let (Window::Count(new), Window::Count(old)) = (self, old) {
            let n = old.slots.len();
            let keep = (old.totals.calls as usize).min(new.slots.len());
            for i in 0..keep {
                if let Some(sample) = old.slots[(old.next + n - keep + i) % n] {
                    new.record(sample);
                }
            }
        }
    }
}

// ===== CountWindow =====

#[derive(Debug)]
pub(crate) struct CountWindow {
    /// The last `n` outcomes; `None` where nothing was recorded yet.
    slots: Box<[Option<Sample>]>,
    /// Where the next outcome goes.
    next: usize,
    totals: Totals,
}

impl CountWindow {
    fn new(n: u32) -> Self {
        CountWindow {
            slots: vec![None; n.max(1) as usize].into_boxed_slice(),
            next: 0,
            totals: Totals::default(),
        }
    }

    fn record(&mut self, sample: Sample) {
        if let Some(old) = self.slots[self.next].replace(sample) {
            self.totals.calls -= 1;
            self.totals.failed -= u64::from(old.failed);
            self.totals.slow -= u64::from(old.slow);
        }
        self.totals.add(sample);
        self.next = (self.next + 1) % self.slots.len();
    }

    /// `n` plain successes, in O(min(n, size)): past the window's size, the older ones would
    /// have left it.
    fn record_successes(&mut self, n: u64) {
        let ok = Sample {
            failed: false,
            slow: false,
        };
        let len = self.slots.len() as u64;
        if n >= len {
            self.slots.fill(Some(ok));
            self.totals = Totals {
                calls: len,
                failed: 0,
                slow: 0,
            };
        } else {
            (0..n).for_each(|_| self.record(ok));
        }
    }

    fn clear(&mut self) {
        self.slots.fill(None);
        self.next = 0;
        self.totals = Totals::default();
    }
}

// ===== TimeWindow =====

/// A bucket number that no bucket has (the window has not moved yet).
const NONE: u64 = u64::MAX;

/// The end of a count window's batch bounds: successes batch whenever they are read.
pub(crate) const UNBOUNDED: u64 = u64::MAX;

#[derive(Debug)]
pub(crate) struct TimeWindow {
    /// Non-zero: the time divides by it, and its niche holds `Window`'s variant.
    bucket_nanos: NonZeroU64,
    slots: Slots,
    /// The latest bucket the window moved to (`NONE`: not yet).
    current: u64,
    /// The sum of the buckets `current - k + 1 ..= current`.
    totals: Totals,
}

impl TimeWindow {
    fn new(bucket_nanos: NonZeroU64, k: u32, tracks_slow: bool) -> Self {
        let k = k as usize;
        TimeWindow {
            bucket_nanos,
            slots: Slots::Narrow {
                counts: vec![Counts::default(); k].into_boxed_slice(),
                slow: vec![0; if tracks_slow { k } else { 0 }].into_boxed_slice(),
            },
            current: NONE,
            totals: Totals::default(),
        }
    }

    fn k(&self) -> u64 {
        self.slots.len() as u64
    }

    fn number(&self, now: u64) -> u64 {
        now / self.bucket_nanos
    }

    /// Whether bucket `number` is inside the window.
    fn counts(&self, number: u64) -> bool {
        self.current != NONE && number <= self.current && self.current - number < self.k()
    }

    /// Moves the window to bucket `number`, if that is later: the buckets that leave are
    /// subtracted from the totals, and their slots emptied for the buckets that enter.
    fn advance(&mut self, number: u64) {
        if self.current != NONE && number <= self.current {
            return;
        }
        let k = self.k();
        if self.current == NONE || number - self.current >= k {
            self.empty();
        } else {
            for n in self.current + 1..=number {
                // The slot holds bucket `n - k`, the oldest: it leaves.
                let left = self.slots.take((n % k) as usize);
                self.totals.calls -= left.calls;
                self.totals.failed -= left.failed;
                self.totals.slow -= left.slow;
            }
        }
        self.current = number;
    }

    fn record(&mut self, sample: Sample, now: u64) {
        let added = Totals {
            calls: 1,
            failed: sample.failed.into(),
            slow: sample.slow.into(),
        };
        self.add(added, now);
    }

    /// `record` of `n` plain successes at once.
    fn record_successes(&mut self, n: u64, now: u64) {
        let added = Totals {
            calls: n,
            failed: 0,
            slow: 0,
        };
        self.add(added, now);
    }

    /// Adds `added` in the bucket of `now`.
    fn add(&mut self, added: Totals, now: u64) {
        let number = self.number(now);
        self.advance(number);
        // A clock read just before a later one's may arrive after it: it counts in its own
        // bucket while that is still inside the window.
        if !self.counts(number) {
            return;
        }
        let added = self.slots.add((number % self.k()) as usize, added);
        self.totals.calls += added.calls;
        self.totals.failed += added.failed;
        self.totals.slow += added.slow;
    }

    fn empty(&mut self) {
        self.slots.empty();
        self.totals = Totals::default();
    }

    fn clear(&mut self) {
        self.empty();
        self.current = NONE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_resized_count_window_keeps_the_newest_outcomes_that_fit() {
        let fail = Sample {
            failed: true,
            slow: false,
        };
        let ok = Sample {
            failed: false,
            slow: false,
        };
        let mut old = Window::new(WindowKind::Count(4), false);
        // Wrapped: the ring holds, oldest first, ok ok fail fail.
        for sample in [fail, fail, ok, ok, fail, fail] {
            old.record(sample, 0);
        }
        let mut smaller = Window::new(WindowKind::Count(3), false);
        smaller.carry_over(&old);
        let totals = smaller.totals(0);
        assert_eq!((totals.calls, totals.failed), (3, 2));
        // The oldest carried outcome (ok) leaves first.
        smaller.record(ok, 0);
        assert_eq!(smaller.totals(0).failed, 2);
        smaller.record(ok, 0);
        assert_eq!(smaller.totals(0).failed, 1);

        let mut larger = Window::new(WindowKind::Count(10), false);
        larger.carry_over(&old);
        assert_eq!(larger.totals(0).calls, 4);
        assert!(!larger.is_full_of_successes());

        let mut time = Window::new(
            WindowKind::Time {
                duration: Duration::from_secs(10),
                buckets: Some(10),
            },
            true,
        );
        time.carry_over(&old);
        assert_eq!(
            time.totals(0).calls,
            0,
            "a count window's outcomes have no time"
        );
    }

    const OK: Sample = Sample {
        failed: false,
        slow: false,
    };
    const FAIL: Sample = Sample {
        failed: true,
        slow: false,
    };
    const SLOW_FAIL: Sample = Sample {
        failed: true,
        slow: true,
    };

    fn totals(calls: u64, failed: u64, slow: u64) -> Totals {
        Totals {
            calls,
            failed,
            slow,
        }
    }

    fn time(bucket_nanos: u64, k: u32) -> Window {
        let bucket_nanos = NonZeroU64::new(bucket_nanos).unwrap();
        Window::Time(TimeWindow::new(bucket_nanos, k, true))
    }

    /// Moves a new narrow window `w` to bucket `number` and sets that bucket's counts and the
    /// totals.
    fn fill(w: &mut Window, number: u64, calls: u32, failed: u32, slow: u32) {
        w.record(OK, number); // moves the window to bucket `number`
        let Window::Time(inner) = w else {
            unreachable!()
        };
        let Slots::Narrow {
            counts,
            slow: slows,
        } = &mut inner.slots
        else {
            unreachable!()
        };
        let slot = (number % counts.len() as u64) as usize;
        counts[slot] = Counts { calls, failed };
        slows[slot] = slow;
        inner.totals = totals(calls.into(), failed.into(), slow.into());
    }

    /// A batch of `n` successes is `n` successes recorded one by one: the same totals, and the
    /// same ring for the outcomes after it (which push out the same ones), whatever the ring held.
    #[test]
    fn a_count_windows_batch_of_successes_is_as_many_recorded_one_by_one() {
        let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut sample = move || {
            let r = next();
            Sample {
                failed: r & 1 != 0,
                slow: r & 6 == 6,
            }
        };
        let ok = Sample {
            failed: false,
            slow: false,
        };
        for size in 1..=5u32 {
            for batch in 0..=3 * u64::from(size) {
                let mut batched = Window::new(WindowKind::Count(size), true);
                let mut one_by_one = Window::new(WindowKind::Count(size), true);
                let before = sample().failed as usize * 7 + batch as usize % 5;
                for _ in 0..before {
                    let s = sample();
                    batched.record(s, 0);
                    one_by_one.record(s, 0);
                }
                batched.record_successes(batch, 0);
                (0..batch).for_each(|_| one_by_one.record(ok, 0));
                assert_eq!(batched.totals(0), one_by_one.totals(0), "{size}, {batch}");
                for after in 0..2 * size {
                    let s = sample();
                    batched.record(s, 0);
                    one_by_one.record(s, 0);
                    let why = format!("size {size}, batch {batch}, after {after}");
                    assert_eq!(batched.totals(0), one_by_one.totals(0), "{why}");
                }
            }
        }
    }

    /// A batch past the window's size fills it, whatever its number: the successes before the
    /// last `n` would have left it (a lane's batch can count millions).
    #[test]
    fn a_count_windows_batch_costs_at_most_its_size() {
        let fail = Sample {
            failed: true,
            slow: true,
        };
        let mut w = Window::new(WindowKind::Count(4), true);
        (0..3).for_each(|_| w.record(fail, 0));
        w.record_successes(u64::MAX, 0);
        assert_eq!(
            w.totals(0),
            Totals {
                calls: 4,
                failed: 0,
                slow: 0
            }
        );
        assert!(w.is_full_of_successes());
    }

    #[test]
    fn count_window_keeps_only_the_last_n_outcomes() {
        let mut w = Window::new(WindowKind::Count(3), false);
        w.record(FAIL, 0);
        w.record(FAIL, 0);
        assert_eq!(w.totals(0), totals(2, 2, 0));
        w.record(OK, 0);
        w.record(OK, 0);
        assert_eq!(w.totals(0), totals(3, 1, 0));
        w.record(SLOW_FAIL, 0);
        assert_eq!(w.totals(0), totals(3, 1, 1));
    }

    #[test]
    fn count_window_is_full_of_successes_only_when_full_and_clean() {
        let mut w = Window::new(WindowKind::Count(2), false);
        assert!(!w.is_full_of_successes(), "an empty window must count");
        w.record(OK, 0);
        assert!(!w.is_full_of_successes());
        w.record(OK, 0);
        assert!(w.is_full_of_successes());
        w.record(FAIL, 0);
        w.record(OK, 0);
        assert!(!w.is_full_of_successes(), "the failure is among the last 2");
        w.record(OK, 0);
        assert!(w.is_full_of_successes());
        w.clear();
        assert!(!w.is_full_of_successes());
        assert_eq!(w.totals(0), Totals::default());
    }

    #[test]
    fn time_window_counts_an_outcome_until_bucket_i_plus_k() {
        let mut w = time(10, 3);
        w.record(FAIL, 5); // bucket 0
        w.record(OK, 15); // bucket 1
        assert_eq!(w.totals(29), totals(2, 1, 0), "bucket 2: both inside");
        assert_eq!(
            w.totals(30),
            totals(1, 0, 0),
            "bucket 3 = 0 + k: the failure left"
        );
        assert_eq!(w.totals(39), totals(1, 0, 0));
        assert_eq!(w.totals(40), Totals::default(), "bucket 4 = 1 + k");
        w.record(OK, 45); // bucket 4 reuses bucket 1's slot
        assert_eq!(w.totals(45), totals(1, 0, 0));
    }

    #[test]
    fn time_window_counts_a_late_clock_reading_in_its_own_bucket_while_it_is_inside() {
        let mut w = time(10, 3);
        w.record(OK, 25); // bucket 2
        w.record(FAIL, 5); // bucket 0, read earlier, recorded later: still inside
        assert_eq!(w.totals(25), totals(2, 1, 0));
        assert_eq!(w.totals(30), totals(1, 0, 0), "and it leaves on time");
        w.record(FAIL, 15); // bucket 1 at bucket 3: inside, in a slot that held nothing
        assert_eq!(w.totals(30), totals(2, 1, 0));
        w.record(FAIL, 5); // bucket 0 at bucket 3: outside
        assert_eq!(w.totals(30), totals(2, 1, 0));
    }

    #[test]
    fn time_window_empties_after_a_silence_longer_than_the_window() {
        let mut w = time(10, 3);
        w.record(SLOW_FAIL, 1);
        assert_eq!(w.totals(1 << 40), Totals::default());
        w.record(OK, 1 << 40);
        assert_eq!(w.totals(1 << 40), totals(1, 0, 0));
    }

    #[test]
    fn time_window_counts_past_2_pow_32_buckets() {
        // 1 ns buckets: bucket numbers beyond 32 bits.
        let mut w = time(1, 2);
        let late = (1u64 << 33) + 7;
        w.record(FAIL, late);
        w.record(SLOW_FAIL, late + 1);
        assert_eq!(w.totals(late + 1), totals(2, 2, 1));
        assert_eq!(w.totals(late + 2), totals(1, 1, 1), "the older bucket left");
    }

    #[test]
    fn a_time_window_bucket_counts_past_u32_max_outcomes_and_leaves_whole() {
        let mut w = time(10, 2);
        // Fill bucket 0 to the brim: u32::MAX calls, of which 3 failed and 2 slow.
        fill(&mut w, 0, u32::MAX, 3, 2);
        // Counted, in 64 bits, rather than wrapping to 0 calls and 4 failures, or ignored.
        w.record(SLOW_FAIL, 1);
        assert_eq!(w.totals(1), totals(u64::from(u32::MAX) + 1, 4, 3));
        // The next bucket counts too.
        w.record(SLOW_FAIL, 10);
        assert_eq!(w.totals(10), totals(u64::from(u32::MAX) + 2, 5, 4));
        // The big bucket leaves whole: the totals are exactly what remains.
        assert_eq!(w.totals(20), totals(1, 1, 1));
        // Emptied by a silence, the window keeps counting in 64 bits.
        assert_eq!(w.totals(1000), Totals::default());
        w.record(SLOW_FAIL, 1000);
        assert_eq!(w.totals(1000), totals(1, 1, 1));
        let Window::Time(inner) = &w else {
            unreachable!()
        };
        assert!(matches!(inner.slots, Slots::Wide(_)));
    }

    /// A bucket widens only when an outcome would not fit: one that reaches `u32::MAX` exactly
    /// stays in 32 bits (its 64-bit copy would double the window's memory for nothing).
    #[test]
    fn a_bucket_that_reaches_u32_max_outcomes_exactly_stays_narrow() {
        let mut w = time(10, 2);
        fill(&mut w, 0, u32::MAX - 1, 0, 0);
        w.record(FAIL, 1);
        assert_eq!(w.totals(1), totals(u64::from(u32::MAX), 1, 0));
        let Window::Time(inner) = &w else {
            unreachable!()
        };
        assert!(matches!(inner.slots, Slots::Narrow { .. }));
    }

    #[test]
    fn batched_successes_past_a_buckets_u32_max_outcomes_all_count() {
        let mut w = time(10, 2);
        fill(&mut w, 0, u32::MAX - 2, 1, 0);
        // Five batched successes, room for two in 32 bits: all five count.
        w.record_successes(5, 3);
        assert_eq!(w.totals(3), totals(u64::from(u32::MAX) + 3, 1, 0));
        w.record_successes(3, 10);
        assert_eq!(w.totals(10), totals(u64::from(u32::MAX) + 6, 1, 0));
        // The big bucket leaves whole.
        assert_eq!(w.totals(20), totals(3, 0, 0));
    }

    #[test]
    fn a_time_window_without_slow_calls_keeps_no_slow_counts() {
        let kind = WindowKind::Time {
            duration: Duration::from_secs(60),
            buckets: Some(60),
        };
        let (Window::Time(plain), Window::Time(slow)) =
            (Window::new(kind, false), Window::new(kind, true))
        else {
            unreachable!()
        };
        let columns = |w: &TimeWindow| match &w.slots {
            Slots::Narrow { counts, slow } => (counts.len(), slow.len()),
            Slots::Wide(_) => unreachable!(),
        };
        assert_eq!(columns(&plain), (60, 0));
        assert_eq!(columns(&slow), (60, 60));
    }

    #[test]
    fn default_buckets_of_a_time_window_come_from_the_builder() {
        let w = Window::new(
            WindowKind::Time {
                duration: Duration::from_secs(2),
                buckets: Some(4),
            },
            false,
        );
        let Window::Time(w) = w else { unreachable!() };
        assert_eq!((w.bucket_nanos.get(), w.k()), (500_000_000, 4));
    }
}
