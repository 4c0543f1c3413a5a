//! Sliding windows of recorded outcomes, O(1) per outcome.
//!
//! A window is plain data, kept under the breaker's transition lock: every outcome that changes it
//! and every transition that clears it are then one after the other, and a snapshot of the totals
//! is always one that a sequential order of the same outcomes gives. (A lock-free ring cannot
//! give that: a total that moves after its slot lets a racing outcome see the window half
//! written, and trip early or not at all.) The healthy closed path does not come here: see
//! `Breaker::clean`; nor does a success that cannot trip the breaker, which is batched and folded
//! in when the lock is next taken (`batch`).
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

    /// The bounds `[start, end)` in nanoseconds of a batch of plain successes (`batch`): the
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

    /// Records `n` plain successes read at `now` (a batch: see `batch`).
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
mod tests;
