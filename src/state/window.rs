//! Sliding windows of recorded outcomes, lock-free and O(1) per call.
//!
//! **Count window.** A ring of `n` one-byte slots and two running totals (failed, slow). Recording
//! takes the next ring position with one `fetch_add`, swaps the outcome into its slot, and moves
//! the totals by the difference between the new and the evicted outcome. The number of outcomes is
//! `min(head, n)`. A window that is full of plain successes does not change when another success is
//! recorded (the order of equal outcomes does not matter), so that case, the common one, only
//! reads: no write touches a shared cache line on the healthy closed path.
//!
//! **Time window.** `k` buckets, each with three counters stamped with the bucket number they
//! count for. Recording adds to the current bucket's counters, or restamps a counter left from an
//! older lap with one compare-and-swap. A snapshot sums the counters whose stamp is one of the last
//! `k` bucket numbers, so an outcome leaves the window when it is older than the window.
//!
//! Under concurrency two callers may record in either order; each outcome is counted once. A total
//! may lag a slot swap for a moment (it never runs ahead of the slots), so a snapshot can read one
//! failure less than the slots hold, never one more: a race cannot trip the breaker early.

use crate::sync::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};

/// What one call added to the window.
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

#[derive(Debug)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

/// Where one recording falls in a time window: its bucket number, computed (a division) once
/// for every step of the recording. A count window has none.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tick(u64);

impl Window {
    pub(crate) fn count(n: u32) -> Self {
        Window::Count(CountWindow::new(n))
    }

    pub(crate) fn time(bucket_nanos: u64, buckets: u32) -> Self {
        Window::Time(TimeWindow::new(bucket_nanos, buckets))
    }

    /// The tick of a recording at `now` (nanoseconds since the breaker's creation), which only a
    /// time window reads.
    #[inline]
    pub(crate) fn tick(&self, now: impl FnOnce() -> u64) -> Tick {
        match self {
            Window::Count(_) => Tick(0),
            Window::Time(w) => Tick(w.number(now())),
        }
    }

    /// Whether recording `sample` would leave the totals as they are (a full count window of
    /// plain successes). Reads only.
    #[inline]
    pub(crate) fn absorbs(&self, sample: Sample) -> bool {
        match self {
            Window::Count(w) => !sample.failed && !sample.slow && w.is_full_of_successes(),
            Window::Time(_) => false,
        }
    }

    /// Records one outcome at `tick`.
    #[inline]
    pub(crate) fn record(&self, sample: Sample, tick: Tick) {
        match self {
            Window::Count(w) => w.record(sample),
            Window::Time(w) => w.record(sample, tick.0),
        }
    }

    /// Whether a count window held at least `minimum` outcomes (capped at its size) before the
    /// last one recorded: its rates were defined already, and a success that replaced an older
    /// outcome cannot have raised them. Always false for a time window, whose rates also move
    /// as old buckets expire.
    #[inline]
    pub(crate) fn was_past_minimum(&self, minimum: u64) -> bool {
        match self {
            // Relaxed: a racing outcome's position only makes `head` larger; whichever side of
            // the minimum that outcome lands, it evaluates the thresholds itself.
            Window::Count(w) => w.counters.head.load(Relaxed) > minimum.min(w.len()),
            Window::Time(_) => false,
        }
    }

    /// Whether the thresholds were evaluated with defined rates, in generation `generation`,
    /// during the bucket of `tick` (see [`mark_evaluated`](Self::mark_evaluated)). Always false
    /// for a count window.
    #[inline]
    pub(crate) fn evaluated_in_bucket(&self, generation: u32, tick: Tick) -> bool {
        match self {
            Window::Count(_) => false,
            Window::Time(w) => w.evaluated.load(Relaxed) == w.evaluation_mark(generation, tick.0),
        }
    }

    /// Notes that the thresholds were evaluated with defined rates (at least the minimum number
    /// of calls) in generation `generation` at `now`. Until the bucket changes no outcome leaves
    /// a time window, so a later success in the same bucket can only lower the rates: it need
    /// not evaluate them again (a failure or slow call still evaluates itself). The generation
    /// keeps a mark made just before a transition from applying to the window it cleared.
    pub(crate) fn mark_evaluated(&self, generation: u32, now: impl FnOnce() -> u64) {
        if let Window::Time(w) = self {
            // Relaxed: a stale or lost mark only makes a success evaluate once more.
            w.evaluated
                .store(w.evaluation_mark(generation, w.number(now())), Relaxed);
        }
    }

    /// Whether the window may hold a failure or a slow call at `tick`, so that a success could
    /// trip it.
    #[inline]
    pub(crate) fn may_hold_bad(&self, tick: Tick) -> bool {
        match self {
            Window::Count(w) => {
                w.counters.failed.load(Relaxed) != 0 || w.counters.slow.load(Relaxed) != 0
            }
            Window::Time(w) => w.may_hold_bad(tick.0),
        }
    }

    pub(crate) fn totals(&self, now: impl FnOnce() -> u64) -> Totals {
        match self {
            Window::Count(w) => w.totals(),
            Window::Time(w) => w.totals(now()),
        }
    }

    pub(crate) fn clear(&self) {
        match self {
            Window::Count(w) => w.clear(),
            Window::Time(w) => w.clear(),
        }
    }
}

// ===== CountWindow =====

const RECORDED: u8 = 1;
const FAILED: u8 = 2;
const SLOW: u8 = 4;

fn encode(sample: Sample) -> u8 {
    RECORDED | if sample.failed { FAILED } else { 0 } | if sample.slow { SLOW } else { 0 }
}

#[derive(Debug)]
pub(crate) struct CountWindow {
    /// The counters every recording reads (the breaker keeps the window on lines of its own).
    counters: CountCounters,
    slots: Box<[AtomicU8]>,
}

#[derive(Debug)]
struct CountCounters {
    /// Ring positions taken so far; the window holds `min(head, n)` outcomes.
    head: AtomicU64,
    /// Running totals, as wrapping `i32`s: a total can dip below zero for a moment when an
    /// eviction is counted before the insertion of the same outcome.
    failed: AtomicU32,
    slow: AtomicU32,
}

impl CountWindow {
    fn new(n: u32) -> Self {
        CountWindow {
            counters: CountCounters {
                head: AtomicU64::new(0),
                failed: AtomicU32::new(0),
                slow: AtomicU32::new(0),
            },
            slots: (0..n).map(|_| AtomicU8::new(0)).collect(),
        }
    }

    fn len(&self) -> u64 {
        self.slots.len() as u64
    }

    #[inline]
    fn is_full_of_successes(&self) -> bool {
        // Relaxed: the window is a statistic; ordering with other memory does not matter, and a
        // racing failure may be counted either before or after this success.
        self.counters.failed.load(Relaxed) == 0
            && self.counters.slow.load(Relaxed) == 0
            && self.counters.head.load(Relaxed) >= self.len()
    }

    fn record(&self, sample: Sample) {
        let new = encode(sample);
        let position = self.counters.head.fetch_add(1, Relaxed);
        let old = self.slots[(position % self.len()) as usize].swap(new, Relaxed);
        let delta = |bit: u8| i32::from(new & bit != 0) - i32::from(old & bit != 0);
        let failed = delta(FAILED);
        if failed != 0 {
            self.counters.failed.fetch_add(failed as u32, Relaxed);
        }
        let slow = delta(SLOW);
        if slow != 0 {
            self.counters.slow.fetch_add(slow as u32, Relaxed);
        }
    }

    fn totals(&self) -> Totals {
        let calls = self.counters.head.load(Relaxed).min(self.len());
        let read = |total: &AtomicU32| (total.load(Relaxed) as i32).max(0) as u64;
        Totals {
            calls,
            failed: read(&self.counters.failed).min(calls),
            slow: read(&self.counters.slow).min(calls),
        }
    }

    fn clear(&self) {
        for slot in self.slots.iter() {
            slot.store(0, Relaxed);
        }
        self.counters.failed.store(0, Relaxed);
        self.counters.slow.store(0, Relaxed);
        self.counters.head.store(0, Relaxed);
    }
}

// ===== TimeWindow =====

/// A counter stamped with the bucket number it counts for: `stamp << 32 | count`, where the stamp
/// is the bucket number plus one, truncated to 32 bits (0 means never written). The stamp repeats
/// after 2^32 buckets (49.7 days of 1 ms buckets), so no counter may keep an old stamp that long:
/// the window clears each slot as time passes over it (see `TimeWindow::advance`).
#[derive(Debug, Default)]
struct Stamped(AtomicU64);

impl Stamped {
    fn add(&self, stamp: u32) {
        let mut current = self.0.load(Relaxed);
        loop {
            let age = stamp.wrapping_sub((current >> 32) as u32) as i32;
            if age <= 0 {
                // Our bucket (or a newer one, when another caller read the clock later): add.
                self.0.fetch_add(1, Relaxed);
                return;
            }
            // A counter from an older lap: restamp it, counting this outcome as its first.
            match self.0.compare_exchange_weak(
                current,
                (u64::from(stamp) << 32) | 1,
                Relaxed,
                Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// Clears the counter unless it counts for `keep` (written meanwhile by a caller in that
    /// bucket), or unconditionally when `keep` is `None`.
    fn clear_unless(&self, keep: Option<u32>) {
        let mut current = self.0.load(Relaxed);
        while current != 0 && Some((current >> 32) as u32) != keep {
            match self.0.compare_exchange_weak(current, 0, Relaxed, Relaxed) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    fn read(&self, stamp: u32, buckets: u32) -> u64 {
        let value = self.0.load(Relaxed);
        let age = stamp.wrapping_sub((value >> 32) as u32);
        if (value >> 32) != 0 && age < buckets {
            value & u64::from(u32::MAX)
        } else {
            0
        }
    }
}

#[derive(Debug, Default)]
struct Bucket {
    calls: Stamped,
    failed: Stamped,
    slow: Stamped,
}

#[derive(Debug)]
pub(crate) struct TimeWindow {
    bucket_nanos: u64,
    /// Not padded: callers share the current bucket whatever its layout, and padding would cost
    /// 104 bytes per bucket.
    buckets: Box<[Bucket]>,
    /// Stamp of the last bucket that recorded a failure or a slow call (0: none).
    last_bad: AtomicU32,
    /// `generation << 32 | stamp` of the last evaluation with defined rates (`u64::MAX`: none).
    evaluated: AtomicU64,
    /// The latest bucket number recorded, plus one (0: none), in 64 bits: it never wraps.
    latest: AtomicU64,
}

impl TimeWindow {
    fn new(bucket_nanos: u64, buckets: u32) -> Self {
        TimeWindow {
            bucket_nanos: bucket_nanos.max(1),
            buckets: (0..buckets).map(|_| Bucket::default()).collect(),
            last_bad: AtomicU32::new(0),
            evaluated: AtomicU64::new(u64::MAX),
            latest: AtomicU64::new(0),
        }
    }

    fn k(&self) -> u32 {
        self.buckets.len() as u32
    }

    /// The number of the bucket holding `now`.
    #[inline]
    fn number(&self, now: u64) -> u64 {
        now / self.bucket_nanos
    }

    /// The stamp of bucket `number`: the number plus one, truncated.
    #[inline]
    fn stamp(number: u64) -> u32 {
        (number as u32).wrapping_add(1)
    }

    /// The slot of bucket `number`.
    #[inline]
    fn slot(&self, number: u64) -> &Bucket {
        &self.buckets[(number % self.buckets.len() as u64) as usize]
    }

    /// Moves the window forward to bucket `number`, if no caller did yet: the caller that moves it
    /// clears the slots of the buckets it passed over (at most `k`), so that a slot whose bucket
    /// saw no call keeps no count for 2^32 buckets, when its stamp would come round again. After
    /// a gap of 2^31 buckets or more every counter is cleared: stamps can no longer tell old from
    /// new (an outcome recorded by another caller in that very instant may be lost with them).
    fn advance(&self, number: u64) {
        let next = number.saturating_add(1);
        // Relaxed: one caller wins each advance; the counters are cleared with compare-and-swaps
        // that let a concurrent caller's count for the new bucket stand.
        if self.latest.load(Relaxed) >= next {
            return;
        }
        let previous = self.latest.fetch_max(next, Relaxed);
        if previous >= next || previous == 0 {
            return; // another caller advanced, or nothing was ever recorded (all clear)
        }
        let k = self.buckets.len() as u64;
        let passed = next - previous; // buckets previous ..= number, previous - 1 was the last
        let long_gap = passed >= 1 << 31;
        for n in number - passed.min(k) + 1..=number {
            let bucket = &self.buckets[(n % k) as usize];
            let keep = (!long_gap).then(|| (n as u32).wrapping_add(1));
            bucket.calls.clear_unless(keep);
            bucket.failed.clear_unless(keep);
            bucket.slow.clear_unless(keep);
        }
    }

    /// Records one outcome in bucket `number`.
    #[inline]
    fn record(&self, sample: Sample, number: u64) {
        self.advance(number);
        let (stamp, bucket) = (Self::stamp(number), self.slot(number));
        bucket.calls.add(stamp);
        if sample.failed {
            bucket.failed.add(stamp);
        }
        if sample.slow {
            bucket.slow.add(stamp);
        }
        if sample.failed || sample.slow {
            self.last_bad.store(stamp, Relaxed);
        }
    }

    fn evaluation_mark(&self, generation: u32, number: u64) -> u64 {
        (u64::from(generation) << 32) | u64::from(Self::stamp(number))
    }

    fn may_hold_bad(&self, number: u64) -> bool {
        let last = self.last_bad.load(Relaxed);
        last != 0 && Self::stamp(number).wrapping_sub(last) < self.k()
    }

    fn totals(&self, now: u64) -> Totals {
        let number = self.number(now);
        let stamp = Self::stamp(number);
        let k = self.k();
        let mut totals = Totals::default();
        // Nothing recorded in the last `k` buckets: the window is empty, whatever old stamps say
        // (after a long silence they may have come round again).
        let latest = self.latest.load(Relaxed);
        if latest == 0 || number.saturating_sub(latest - 1) >= u64::from(k) {
            return totals;
        }
        // Bucket `i` of the ring holds bucket numbers congruent to `i`; read each against the
        // stamp it must carry to be inside the window.
        for bucket in self.buckets.iter() {
            totals.calls += bucket.calls.read(stamp, k);
            totals.failed += bucket.failed.read(stamp, k);
            totals.slow += bucket.slow.read(stamp, k);
        }
        totals.failed = totals.failed.min(totals.calls);
        totals.slow = totals.slow.min(totals.calls);
        totals
    }

    fn clear(&self) {
        for bucket in self.buckets.iter() {
            bucket.calls.0.store(0, Relaxed);
            bucket.failed.0.store(0, Relaxed);
            bucket.slow.0.store(0, Relaxed);
        }
        self.last_bad.store(0, Relaxed);
        self.evaluated.store(u64::MAX, Relaxed);
        self.latest.store(0, Relaxed);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

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

    #[test]
    fn count_window_keeps_only_the_last_n_outcomes() {
        let w = Window::count(3);
        w.record(FAIL, w.tick(|| 0));
        w.record(FAIL, w.tick(|| 0));
        assert_eq!(
            w.totals(|| 0),
            Totals {
                calls: 2,
                failed: 2,
                slow: 0
            }
        );
        w.record(OK, w.tick(|| 0));
        w.record(OK, w.tick(|| 0));
        assert_eq!(
            w.totals(|| 0),
            Totals {
                calls: 3,
                failed: 1,
                slow: 0
            }
        );
        w.record(SLOW_FAIL, w.tick(|| 0));
        assert_eq!(
            w.totals(|| 0),
            Totals {
                calls: 3,
                failed: 1,
                slow: 1
            }
        );
    }

    #[test]
    fn count_window_full_of_successes_absorbs_a_success() {
        let w = Window::count(2);
        assert!(!w.absorbs(OK), "an empty window must count the success");
        w.record(OK, w.tick(|| 0));
        w.record(OK, w.tick(|| 0));
        assert!(w.absorbs(OK));
        assert!(!w.absorbs(FAIL));
        w.record(FAIL, w.tick(|| 0));
        assert!(!w.absorbs(OK));
        w.record(OK, w.tick(|| 0));
        assert!(!w.absorbs(OK), "the failure is still among the last 2");
        w.record(OK, w.tick(|| 0));
        assert!(w.absorbs(OK));
    }

    #[test]
    fn count_window_is_past_its_minimum_only_after_the_outcome_that_reaches_it() {
        let w = Window::count(3);
        w.record(FAIL, w.tick(|| 0));
        w.record(OK, w.tick(|| 0));
        assert!(
            !w.was_past_minimum(2),
            "the 2nd outcome defines the rate: evaluate it"
        );
        w.record(OK, w.tick(|| 0));
        assert!(w.was_past_minimum(2));
        assert!(
            !w.was_past_minimum(3),
            "the 3rd outcome reached a minimum of 3"
        );
        w.record(OK, w.tick(|| 0));
        assert!(
            w.was_past_minimum(5),
            "a minimum above the size is capped at it"
        );
        assert!(
            !Window::time(10, 3).was_past_minimum(0),
            "time windows always evaluate"
        );
    }

    #[test]
    fn time_window_evaluation_mark_holds_for_one_bucket_of_one_generation() {
        let w = Window::time(10, 3);
        assert!(!w.evaluated_in_bucket(1, w.tick(|| 5)));
        w.mark_evaluated(1, || 5);
        assert!(w.evaluated_in_bucket(1, w.tick(|| 9)));
        assert!(
            !w.evaluated_in_bucket(1, w.tick(|| 10)),
            "a new bucket: outcomes may have left"
        );
        assert!(
            !w.evaluated_in_bucket(2, w.tick(|| 9)),
            "another generation"
        );
        w.clear();
        assert!(!w.evaluated_in_bucket(1, w.tick(|| 9)));
        assert!(!Window::count(3).evaluated_in_bucket(0, Tick(0)));
    }

    #[test]
    fn time_window_drops_a_bucket_k_buckets_later() {
        let w = Window::time(10, 3);
        w.record(FAIL, w.tick(|| 5)); // bucket 0
        w.record(OK, w.tick(|| 15)); // bucket 1
        assert_eq!(
            w.totals(|| 29),
            Totals {
                calls: 2,
                failed: 1,
                slow: 0
            }
        );
        assert_eq!(
            w.totals(|| 30),
            Totals {
                calls: 1,
                failed: 0,
                slow: 0
            }
        );
        assert!(!w.may_hold_bad(w.tick(|| 30)));
        w.record(OK, w.tick(|| 45)); // bucket 4 reuses bucket 1's slot
        assert_eq!(
            w.totals(|| 45),
            Totals {
                calls: 1,
                failed: 0,
                slow: 0
            }
        );
    }

    #[test]
    fn time_window_clear_forgets_everything() {
        let w = Window::time(10, 3);
        w.record(SLOW_FAIL, w.tick(|| 1));
        w.clear();
        assert_eq!(w.totals(|| 1), Totals::default());
        assert!(!w.may_hold_bad(w.tick(|| 1)));
    }

    #[test]
    fn time_window_forgets_a_count_whose_stamp_comes_round_again() {
        let w = Window::time(1, 3); // 1 ns buckets: stamps come round every 2^32 ns
        w.record(FAIL, w.tick(|| 5));
        let again = 5 + (1u64 << 32);
        assert_eq!(
            w.totals(|| again),
            Totals::default(),
            "read after the silence"
        );
        w.record(OK, w.tick(|| again));
        assert_eq!(
            w.totals(|| again),
            Totals {
                calls: 1,
                failed: 0,
                slow: 0
            },
            "recorded after the silence"
        );
    }

    #[test]
    fn time_window_clears_the_slots_time_passed_over() {
        let Window::Time(w) = Window::time(1, 2) else {
            unreachable!()
        };
        w.record(FAIL, 1); // slot 1
        w.record(OK, 2); // slot 0
        w.record(OK, 4); // passes over bucket 3 (slot 1): its failure from bucket 1 is cleared
        assert_eq!(w.buckets[1].failed.0.load(Relaxed), 0);
        assert_eq!(w.buckets[1].calls.0.load(Relaxed), 0);
        assert_eq!(
            w.totals(4),
            Totals {
                calls: 1,
                failed: 0,
                slow: 0
            }
        );
    }
}
