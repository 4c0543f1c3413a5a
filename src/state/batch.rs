//! Batched successes: the lock-free success path of a window that holds failures.
//!
//! While the window holds a failure (or, for a time window, always: it counts every outcome),
//! a success changes the window, so each one would take the transition lock, and callers on
//! several cores would hand the lock and the window's line to each other on every call. Instead,
//! while a plain success cannot trip the breaker, each lane counts its plain successes in its own
//! line of the counters, and whoever takes the lock next folds every line into the window before
//! anything else (`Breaker::lock`). The window, the consecutive count, and every decision taken
//! under the lock then see each batched success as if it had been recorded under the lock when
//! it was counted: after every outcome recorded before, and before the one that takes the lock.
//!
//! **When successes batch.** A batch is opened under the lock, after an outcome was recorded and
//! evaluated, when: the breaker is Closed and did not trip, the rates are defined
//! (`minimum_calls` reached), and no failure-rate baseline learns from every outcome. A plain
//! success (neither failed nor slow) then only lowers the rates and ends any run of failures:
//! evaluating the thresholds after it would not trip the breaker, which is why it need not be
//! evaluated when it is counted. A time window's batch is bounded by the bucket the window is at
//! (`Window::batch_bounds`): a success read after the bucket's end could push an older bucket,
//! and its failures, out of the window, and the fold must know the bucket. A count window's is
//! bounded in number (`Window::batch_limit`): a lane's success that makes the window's size goes
//! to the lock, which folds the batch, records it, and finds the window full of plain successes
//! (see `Breaker::clean`): the healthy path takes over again.
//!
//! **The protocol.** The batch is published in the state words: `batch_start` and `batch_end`, its
//! bounds in nanoseconds, and `batch_epoch`, a number that every fold and every new batch
//! increments, with `OPEN` while successes may join. Each lane's line holds
//! `epoch << COUNT_BITS | count` (the epoch's low `EPOCH_BITS` bits). Under the lock, a new batch and a fold
//! swap every line to the next epoch first (a fold to a count of zero, a new batch to its first
//! count, `batch_limit - 1` below full), then store the bounds, then the epoch (Release); a fold
//! adds what the lines that carried the batch's epoch counted past their first count. A success
//! reads the epoch (Acquire), the bounds (Acquire), its line, and then the state word, and counts
//! itself with one compare-and-swap of its line from the value it read, if: the epoch is open, the
//! line carries it, the clock reading is within the bounds, the count is not full, and its ticket's
//! generation is the current one. Otherwise it records under the lock.
//!
//! **Why it is exact.**
//! * A count is taken at a successful compare-and-swap, which comes before any swap of that line
//!   to a later epoch (the swap would have made it fail): the fold that swaps the line next takes
//!   the count with it, into the batch's bucket.
//! * Epoch and bounds agree: bounds stored by a later batch than the epoch read come after that
//!   batch's line swaps, and reading them with Acquire makes the line read after them see the
//!   swap, whose epoch differs from the one read.
//! * The generation: a batch is opened in the generation current at the end of its critical
//!   section, after the state word of any transition in it; a success that read the batch's
//!   epoch with Acquire sees that word or a later one, so a ticket of an earlier generation is
//!   refused. A transition takes the lock, and so folds, before it changes the word: a success
//!   counted before the fold is an outcome of the old generation recorded before the transition,
//!   as the lock would have ordered them; one that tries after it fails its compare-and-swap.
//! * Nothing wraps in practice: the epoch counts folds (2^63 of them), and a line compares its low
//!   40 bits, so a success would have to be held between reading its line and its
//!   compare-and-swap for 2^40 locked sections (over a day of nothing else) for an old value to
//!   come back. A full count (2^24 - 1) sends successes to the lock, which folds it.

use super::Breaker;
use super::clock::Now;
use super::locked::Core;
use super::window::{Totals, UNBOUNDED};
use super::word::Generation;
use crate::sync::Ordering;

/// `batch_epoch`: successes may join the batch.
const OPEN: u64 = 1 << 63;
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const EPOCH_BITS: u32 = 64 - COUNT_BITS;
const EPOCH_MASK: u64 = (1 << EPOCH_BITS) - 1;

/// A line's word for `epoch` with a count of zero.
fn line_of(epoch: u64) -> u64 {
    (epoch & EPOCH_MASK) << COUNT_BITS
}

/// The count a line starts a batch at: `limit - 1` below full, so that the lane's `limit`-th
/// success goes to the lock (`Window::batch_limit`).
fn first_count(limit: u64) -> u64 {
    COUNT_MASK - limit.saturating_sub(1).min(COUNT_MASK)
}

impl Breaker {
    /// Counts a plain success of `generation`, read at `now`, in the calling lane's batch: false
    /// when it must be recorded under the lock.
    #[inline]
    pub(super) fn batched(&self, generation: Generation, lane: usize, now: &mut Now<'_>) -> bool {
        // Acquire: the bounds and the state word read next are at least as new as this batch.
        let epoch = self.words.batch_epoch.load(Ordering::Acquire);
        epoch & OPEN != 0 && self.join_batch(epoch, generation, lane, now)
    }

    fn join_batch(
        &self,
        epoch: u64,
        generation: Generation,
        lane: usize,
        now: &mut Now<'_>,
    ) -> bool {
        // Acquire: see the module's proof (epoch and bounds agree).
        let start = self.words.batch_start.load(Ordering::Acquire);
        let end = self.words.batch_end.load(Ordering::Acquire);
        // A count window's batch has no time bounds: its successes read no clock.
        if end != UNBOUNDED {
            let at = now.get();
            if at < start || at >= end {
                return false;
            }
        }
        let line = self.counters.batch(lane);
        let expected = line_of(epoch);
        let mut seen = line.load(Ordering::Acquire);
        if self.load().generation() != generation {
            return false; // stale, or a batch of another generation: the lock decides
        }
        loop {
            if seen & !COUNT_MASK != expected || seen & COUNT_MASK == COUNT_MASK {
                return false;
            }
            // Relaxed: the count is all a success publishes; the swap that folds it reads it.
            match line.compare_exchange_weak(seen, seen + 1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now_seen) => seen = now_seen,
            }
        }
    }

    /// Under the lock, first thing: moves the open batch's successes into the window and closes
    /// it.
    #[inline]
    pub(super) fn fold(&self, core: &mut Core) {
        // Relaxed: written only under the lock, which we hold.
        let epoch = self.words.batch_epoch.load(Ordering::Relaxed);
        if epoch & OPEN != 0 {
            self.fold_open(epoch, core);
        }
    }

    #[inline(never)]
    fn fold_open(&self, epoch: u64, core: &mut Core) {
        let next = (epoch & !OPEN) + 1;
        let first = first_count(core.window.batch_limit());
        let taken = self.swap_lines(line_of(next), line_of(epoch) | first);
        // Release: as every store of the epoch (a success that reads it reads the lines after).
        self.words.batch_epoch.store(next, Ordering::Release);
        if taken > 0 {
            let start = self.words.batch_start.load(Ordering::Relaxed);
            core.record_successes(taken, start);
        }
    }

    /// Under the lock, after an outcome was recorded and evaluated in Closed without tripping
    /// (`totals` after it): opens a batch for the window's bucket if plain successes there cannot
    /// trip the breaker (see the module's doc).
    #[inline]
    pub(super) fn open_batch(&self, core: &Core, totals: Totals) {
        if core.batches_successes(totals) {
            self.open_batch_now(core);
        }
    }

    #[inline(never)]
    fn open_batch_now(&self, core: &Core) {
        let Some((start, end)) = core.window.batch_bounds() else {
            return;
        };
        // Relaxed: written only under the lock; the lock folded (closed) any batch.
        let epoch = self.words.batch_epoch.load(Ordering::Relaxed);
        debug_assert_eq!(epoch & OPEN, 0, "folded when the lock was taken");
        let next = epoch + 1;
        let first = first_count(core.window.batch_limit());
        let left = self.swap_lines(line_of(next) | first, line_of(epoch));
        debug_assert_eq!(left, 0, "a closed batch takes no successes");
        // Release: the lines before the bounds, the bounds before the epoch.
        self.words.batch_start.store(start, Ordering::Release);
        self.words.batch_end.store(end, Ordering::Release);
        self.words.batch_epoch.store(next | OPEN, Ordering::Release);
    }

    /// Swaps every lane's line to `fresh`; returns how many successes joined the lines that
    /// carried the epoch of `of`, the line word they started at.
    fn swap_lines(&self, fresh: u64, of: u64) -> u64 {
        self.counters
            .batches()
            .map(|line| line.swap(fresh, Ordering::AcqRel))
            .filter(|old| old & !COUNT_MASK == of & !COUNT_MASK)
            .map(|old| old - of)
            .sum()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::classify::Outcome;
    use crate::state::Decision;
    use crate::state::clock::counts::during;
    use crate::state::lane::thread_lane;
    use crate::{CircuitBreakerLayer, Window};

    /// A time window whose rates are defined from the first outcome and never trip on
    /// successes: plain successes batch once an outcome was recorded under the lock.
    fn batching() -> Arc<Breaker> {
        let builder = crate::CircuitBreakerLayer::builder()
            .sliding_window(crate::Window::time(Duration::from_secs(60)).buckets(60))
            .minimum_calls(1)
            .failure_rate_threshold(1.0);
        Arc::new(Breaker::new(Arc::new(builder.validate_for_tests()), None))
    }

    fn succeed(b: &Breaker) {
        let Decision::Admit(ticket) = b.admit(&mut b.now()) else {
            panic!("rejected");
        };
        b.complete(ticket, Outcome::Success, None, None, &mut b.now());
    }

    fn is_open(b: &Breaker) -> bool {
        b.words.batch_epoch.load(Ordering::Relaxed) & OPEN != 0
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_lane_batch_sends_successes_to_the_lock_and_every_one_counts() {
        let b = batching();
        succeed(&b); // under the lock: opens the batch
        assert!(is_open(&b));
        // This lane's batch one short of full, as if that many successes had joined it.
        let line = b.counters.batch(thread_lane());
        line.fetch_add(COUNT_MASK - 1, Ordering::Relaxed);
        succeed(&b); // joins: the count is now full
        assert_eq!(line.load(Ordering::Relaxed) & COUNT_MASK, COUNT_MASK);
        succeed(&b); // a full count: under the lock, which folds the batch and opens another
        assert_eq!(line.load(Ordering::Relaxed) & COUNT_MASK, 0);
        assert!(is_open(&b));
        succeed(&b); // joins the new batch
        assert_eq!(b.metrics().calls(), 1 + COUNT_MASK + 2);
    }

    #[tokio::test(start_paused = true)]
    async fn batches_count_exactly_across_the_wrap_of_the_lines_epoch_bits() {
        let b = batching();
        // Closed, a few batches before the lines' epoch wraps to zero.
        b.words.batch_epoch.store(EPOCH_MASK - 3, Ordering::Relaxed);
        for line in b.counters.batches() {
            line.store(line_of(EPOCH_MASK - 3), Ordering::Relaxed);
        }
        let mut counted = 0;
        for round in 0..4 {
            succeed(&b); // under the lock (the batch is closed): opens one
            assert!(is_open(&b), "round {round}");
            succeed(&b);
            succeed(&b);
            let line = b.counters.batch(thread_lane()).load(Ordering::Relaxed);
            assert_eq!(line & COUNT_MASK, 2, "round {round}: both batched");
            counted += 3;
            assert_eq!(b.metrics().calls(), counted, "round {round}"); // folds
        }
        assert!(b.words.batch_epoch.load(Ordering::Relaxed) > EPOCH_MASK);
    }

    /// DESIGN §3: every recorded outcome goes into the window and the thresholds are evaluated
    /// after each one. A bucket that has counted `u32::MAX` outcomes (an hour-long bucket at 1.2
    /// million calls a second, a day-long one at 50 000) must still count the failures that come
    /// after: a failure storm then raises the failure rate and trips, as it would in any other
    /// bucket. (The successes are filled in through the lanes' batches, 2^26 at a fold.)
    #[tokio::test(start_paused = true)]
    async fn failures_recorded_after_a_bucket_counted_u32_max_outcomes_still_count_and_trip() {
        let builder = crate::CircuitBreakerLayer::builder()
            .sliding_window(crate::Window::time(Duration::from_secs(3600)).buckets(1))
            .minimum_calls(1)
            // Five failures among 2^32 calls reach it.
            .failure_rate_threshold(1e-9);
        let b = Arc::new(Breaker::new(Arc::new(builder.validate_for_tests()), None));
        while b.metrics().calls() < u64::from(u32::MAX) {
            succeed(&b); // under the lock: opens a batch
            assert!(is_open(&b));
            for line in b.counters.batches() {
                let count = line.load(Ordering::Relaxed) & COUNT_MASK;
                line.fetch_add(COUNT_MASK - count, Ordering::Relaxed); // as if that many joined
            }
            // `metrics` folds them into the bucket.
        }
        for _ in 0..10 {
            let Decision::Admit(ticket) = b.admit(&mut b.now()) else {
                break; // open: what this test wants
            };
            b.complete(ticket, Outcome::Failure, None, None, &mut b.now());
        }
        assert_eq!(
            b.stored_state(),
            crate::State::Open,
            "failed {} of {} calls",
            b.metrics().failed(),
            b.metrics().calls()
        );
    }

    /// A line is the batch's epoch above its count, and the two fields fill the word: the epoch
    /// compared is as wide as the module's argument against an old value coming back says.
    #[test]
    fn a_lines_epoch_and_count_fill_its_64_bits() {
        assert_eq!(EPOCH_BITS + COUNT_BITS, 64);
        assert_eq!(line_of(u64::MAX) | COUNT_MASK, u64::MAX);
        assert_eq!(line_of(u64::MAX) & COUNT_MASK, 0);
        assert_eq!(
            line_of(1 << (EPOCH_BITS - 1)),
            1 << 63,
            "the epoch's top bit"
        );
        assert_eq!(line_of(1 << EPOCH_BITS), 0, "wraps past its bits");
    }

    /// A success joins the batch only inside the batch's bucket: one that completes after the
    /// bucket ended (no lock was taken since) is recorded in its own bucket, and stays in the
    /// window after the batch's bucket has left it.
    #[tokio::test(start_paused = true)]
    async fn a_success_after_the_batchs_bucket_counts_in_its_own_bucket() {
        let b = batching(); // 60 buckets of 1 s
        succeed(&b); // at 0 s, under the lock: opens the batch of bucket [0 s, 1 s)
        assert!(is_open(&b));
        tokio::time::advance(Duration::from_millis(1_500)).await;
        succeed(&b); // at 1.5 s: bucket 1
        tokio::time::advance(Duration::from_secs(59)).await;
        // 60.5 s: bucket 0 has left the window, bucket 1 has not.
        assert_eq!(b.metrics().calls(), 1);
    }

    fn fail(b: &Breaker) {
        let Decision::Admit(ticket) = b.admit(&mut b.now()) else {
            panic!("rejected");
        };
        b.complete(ticket, Outcome::Failure, None, None, &mut b.now());
    }

    /// A count window of `n` that opens on `consecutive` failures only.
    fn count_window(n: u32, consecutive: u32) -> Breaker {
        let config = CircuitBreakerLayer::builder()
            .sliding_window(Window::count(n))
            .minimum_calls(1)
            .consecutive_failures(consecutive)
            .validate_for_tests();
        Breaker::new(Arc::new(config), None)
    }

    /// DESIGN §3: consecutive failures are failures in a row. A success batched between two
    /// failures breaks the row, as it would recorded under the lock.
    #[tokio::test(start_paused = true)]
    async fn a_batched_success_between_two_failures_ends_the_run_of_failures() {
        let b = count_window(100, 2);
        succeed(&b);
        fail(&b); // under the lock: the batch stays open after it
        assert!(is_open(&b));
        let (_, locks) = during(|| succeed(&b));
        assert_eq!(locks, 0, "batched");
        fail(&b);
        assert_eq!(b.stored_state(), crate::State::Closed, "not two in a row");
        fail(&b);
        assert_eq!(b.stored_state(), crate::State::Open);
    }

    /// A count window's batched successes go into the ring in the order they came: after the
    /// outcomes recorded before them, and pushing the oldest out.
    #[tokio::test(start_paused = true)]
    async fn a_count_windows_batched_successes_push_out_its_oldest_outcomes() {
        let b = count_window(4, 100);
        for _ in 0..4 {
            fail(&b);
        }
        let (_, locks) = during(|| (0..3).for_each(|_| succeed(&b)));
        assert_eq!(locks, 0, "batched");
        let m = b.metrics(); // folds
        assert_eq!((m.calls(), m.failed()), (4, 1));
        // The fourth success pushes the last failure out: the lock records it, and the window,
        // full of successes, is clean again.
        let (_, locks) = during(|| (0..2).for_each(|_| succeed(&b)));
        assert_eq!(locks, 1);
        assert_eq!(b.metrics().failed(), 0);
    }

    /// A line starts a batch `limit - 1` below full: a count window's lane takes `n - 1`
    /// successes, and one without a limit the whole count.
    #[test]
    fn a_lines_first_count_leaves_room_for_one_less_than_the_limit() {
        assert_eq!(
            first_count(1),
            COUNT_MASK,
            "a window of one: every success to the lock"
        );
        assert_eq!(COUNT_MASK - first_count(1 << 20), (1 << 20) - 1);
        assert_eq!(first_count(u64::MAX), 0);
    }

    /// What lets callers on several cores scale on a time window: once an outcome opened the
    /// batch, successes in the same bucket take no lock, and each is still counted.
    #[test]
    fn a_time_windows_successes_take_no_lock_within_a_bucket() {
        // One bucket of a minute: the loop below stays in it.
        let config = CircuitBreakerLayer::builder()
            .sliding_window(Window::time(Duration::from_secs(60)).buckets(1))
            .minimum_calls(1)
            .validate_for_tests();
        let b = Breaker::new(Arc::new(config), None);
        succeed(&b); // recorded under the lock, which opens the batch
        let (_, locks) = during(|| (0..1_000).for_each(|_| succeed(&b)));
        assert_eq!(locks, 0);
        assert_eq!(b.metrics().calls(), 1_001, "each counted, once");
        // The lock folded them and closed the batch: the next success opens it again.
        let (_, locks) = during(|| (0..2).for_each(|_| succeed(&b)));
        assert_eq!(locks, 1);
    }

    // ===== A count window's batches, attacked =====

    /// (calls, failed, consecutive failures) that `Metrics` shows, read under the lock (which
    /// folds the batch).
    fn shown(b: &Breaker) -> (u64, u64, u32) {
        let m = b.metrics();
        (m.calls(), m.failed(), m.consecutive_failures())
    }

    fn config(builder: crate::config::Builder) -> Arc<crate::config::Config> {
        Arc::new(builder.validate_for_tests())
    }

    /// A window of one has no room for a batched success: each goes to the lock until one has
    /// pushed the failure out, and the window, clean again, takes no lock.
    #[test]
    fn a_count_window_of_one_sends_each_success_to_the_lock_until_it_is_clean() {
        let b = count_window(1, 100);
        fail(&b);
        fail(&b); // under the lock: opens a batch with no room
        let (_, locks) = during(|| succeed(&b));
        assert_eq!(locks, 1, "a full line: under the lock");
        assert_eq!(shown(&b), (1, 0, 0));
        let (_, locks) = during(|| (0..5).for_each(|_| succeed(&b)));
        assert_eq!(locks, 0, "clean");
        assert_eq!(shown(&b), (1, 0, 0));
    }

    /// A window of two: a lane batches one success; its second makes the window's size, goes to
    /// the lock, and leaves the window full of successes.
    #[test]
    fn a_count_window_of_two_batches_one_success_per_lane_and_records_the_second() {
        let b = count_window(2, 100);
        fail(&b);
        fail(&b);
        let (clock_reads, locks) = during(|| succeed(&b));
        assert_eq!((clock_reads, locks), (0, 0), "batched, with no time bounds");
        let (_, locks) = during(|| succeed(&b));
        assert_eq!(locks, 1, "the lane's limit");
        assert_eq!(shown(&b), (2, 0, 0));
        let (_, locks) = during(|| (0..5).for_each(|_| succeed(&b)));
        assert_eq!(locks, 0, "clean");
    }

    /// More threads than lanes, each past the limit of its lane's line: the window ends full of
    /// successes, every failure out of it and the run ended, and the next success takes no lock.
    #[test]
    fn successes_on_more_threads_than_lanes_leave_a_count_window_clean() {
        let b = count_window(4, 1_000);
        for _ in 0..4 {
            fail(&b);
        }
        std::thread::scope(|s| {
            for _ in 0..3 * crate::state::lane::LANES {
                s.spawn(|| (0..50).for_each(|_| succeed(&b)));
            }
        });
        assert_eq!(shown(&b), (4, 0, 0));
        let (_, locks) = during(|| succeed(&b));
        assert_eq!(locks, 0, "clean");
        assert_eq!(
            b.metrics().successful(),
            4,
            "the window's successes, not the lifetime's"
        );
    }

    /// Failures and successes from many threads, then successes only: a count window shows
    /// the last `n` outcomes (all successes) and no run of failures, whatever the lanes batched.
    #[test]
    fn racing_failures_and_batched_successes_leave_a_count_window_a_sequential_order_gives() {
        let b = count_window(8, u32::MAX);
        let phase = std::sync::Barrier::new(2 * crate::state::lane::LANES);
        std::thread::scope(|s| {
            for t in 0..2 * crate::state::lane::LANES {
                let (b, phase) = (&b, &phase);
                s.spawn(move || {
                    for i in 0..200 {
                        match (i + t) % 3 {
                            0 => fail(b),
                            _ => succeed(b),
                        }
                    }
                    phase.wait();
                    (0..20).for_each(|_| succeed(b));
                });
            }
        });
        assert_eq!(shown(&b), (8, 0, 0));
        let m = b.metrics();
        assert_eq!(
            m.totals().successful() + m.totals().failed(),
            2 * crate::state::lane::LANES as u64 * 220,
            "every call counted once in the lifetime totals"
        );
    }

    /// A sequential model of a count window (its last `n` outcomes, failures in a row) against
    /// the breaker, whose successes batch and are folded by whichever read or failure comes next.
    #[test]
    fn a_count_windows_metrics_match_a_sequential_order_whenever_they_fold() {
        let mut rng: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for n in 1..=5u32 {
            let b = count_window(n, u32::MAX);
            let mut ring = std::collections::VecDeque::new();
            let mut consecutive = 0u32;
            for step in 0..400 {
                let roll = next() % 10;
                if roll < 3 {
                    fail(&b);
                    consecutive += 1;
                    ring.push_back(true);
                } else {
                    succeed(&b);
                    consecutive = 0;
                    ring.push_back(false);
                }
                if ring.len() > n as usize {
                    ring.pop_front();
                }
                if roll == 9 || step == 399 {
                    let failed = ring.iter().filter(|&&f| f).count() as u64;
                    let want = (ring.len() as u64, failed, consecutive);
                    assert_eq!(shown(&b), want, "window {n}, step {step}");
                }
            }
        }
    }

    /// Reconfigured from `count(10)` to `count(3)` while this lane has batched successes: the new
    /// window keeps the newest three outcomes, the batched successes among them, in order.
    #[test]
    fn a_count_to_count_reconfiguration_carries_the_batched_successes_in_order() {
        let b = count_window(10, 100);
        (0..3).for_each(|_| fail(&b));
        let (_, locks) = during(|| (0..2).for_each(|_| succeed(&b)));
        assert_eq!(locks, 0, "batched");
        b.reconfigure(config(
            CircuitBreakerLayer::builder()
                .sliding_window(Window::count(3))
                .minimum_calls(1)
                .consecutive_failures(100),
        ));
        assert_eq!(shown(&b), (3, 1, 0), "[F, S, S]");
        let (_, locks) = during(|| succeed(&b));
        assert_eq!(locks, 1, "the reconfiguration closed the batch");
        assert_eq!(shown(&b), (3, 0, 0));
        let (_, locks) = during(|| (0..5).for_each(|_| succeed(&b)));
        assert_eq!(locks, 0, "clean");
    }

    /// Reconfigured from a count window to a time window while a batch is open: the batched
    /// successes end the run of failures and leave with the count window; none of them (nor a
    /// line's first count) lands in the time window.
    #[tokio::test(start_paused = true)]
    async fn a_count_to_time_reconfiguration_leaves_no_batched_success_behind() {
        let b = count_window(10, 100);
        fail(&b);
        fail(&b);
        let (_, locks) = during(|| (0..2).for_each(|_| succeed(&b)));
        assert_eq!(locks, 0, "batched");
        b.reconfigure(config(
            CircuitBreakerLayer::builder()
                .sliding_window(Window::time(Duration::from_secs(60)).buckets(60))
                .minimum_calls(1)
                .consecutive_failures(100),
        ));
        assert_eq!(
            shown(&b),
            (0, 0, 0),
            "a new time window, after the run ended"
        );
        succeed(&b); // under the lock: opens a batch in the time window
        let (_, locks) = during(|| (0..3).for_each(|_| succeed(&b)));
        assert_eq!(locks, 0, "batched");
        assert_eq!(shown(&b), (4, 0, 0));
    }

    /// Reconfigured from a time window to a count window while a batch is open: the new count
    /// window starts empty, and its own batches are bounded by its size.
    #[tokio::test(start_paused = true)]
    async fn a_time_to_count_reconfiguration_starts_batches_bounded_by_the_count() {
        let time = CircuitBreakerLayer::builder()
            .sliding_window(Window::time(Duration::from_secs(60)).buckets(60))
            .minimum_calls(1)
            .consecutive_failures(100);
        let b = Breaker::new(config(time), None);
        fail(&b);
        let (_, locks) = during(|| (0..3).for_each(|_| succeed(&b)));
        assert_eq!(locks, 0, "batched");
        b.reconfigure(config(
            CircuitBreakerLayer::builder()
                .sliding_window(Window::count(3))
                .minimum_calls(1)
                .consecutive_failures(100),
        ));
        assert_eq!(shown(&b), (0, 0, 0));
        fail(&b);
        let (_, locks) = during(|| (0..2).for_each(|_| succeed(&b)));
        assert_eq!(locks, 0, "batched: two below the window's size");
        let (_, locks) = during(|| succeed(&b));
        assert_eq!(locks, 1, "the third makes the window's size");
        assert_eq!(shown(&b), (3, 0, 0));
    }

    /// Forced open while a batch is open: the window it freezes, and `Metrics` shows, holds the
    /// successes batched before.
    #[test]
    fn a_forced_open_freezes_the_window_with_the_successes_batched_before_it() {
        let b = count_window(10, 100);
        fail(&b);
        fail(&b);
        let (_, locks) = during(|| (0..3).for_each(|_| succeed(&b)));
        assert_eq!(locks, 0, "batched");
        b.force(crate::State::ForcedOpen);
        assert_eq!(shown(&b), (5, 2, 0));
    }

    /// A reset while a batch is open: the batched successes leave with the window, and a
    /// success of the new generation is recorded under the lock.
    #[test]
    fn a_reset_drops_the_batched_successes_with_the_window() {
        let b = count_window(10, 100);
        fail(&b);
        let (_, locks) = during(|| (0..3).for_each(|_| succeed(&b)));
        assert_eq!(locks, 0, "batched");
        b.force(crate::State::Closed);
        assert_eq!(shown(&b), (0, 0, 0));
        let (_, locks) = during(|| succeed(&b));
        assert_eq!(locks, 1, "the reset closed the batch");
        assert_eq!(shown(&b), (1, 0, 0));
    }

    /// MetricsOnly evaluates every outcome (it announces each crossing of a threshold): its
    /// successes never batch, even after a batch was open in Closed.
    #[test]
    fn metrics_only_successes_never_batch() {
        let b = count_window(10, 100);
        fail(&b);
        let (_, locks) = during(|| succeed(&b));
        assert_eq!(locks, 0, "batched in Closed");
        b.force(crate::State::MetricsOnly);
        fail(&b);
        let (_, locks) = during(|| (0..3).for_each(|_| succeed(&b)));
        assert_eq!(locks, 3);
        assert!(!is_open(&b));
        assert_eq!(shown(&b), (4, 1, 0));
    }

    /// A success admitted before a transition, completed after the next generation opened its
    /// own batch, is stale: it never joins the new batch.
    #[test]
    fn a_stale_success_never_joins_a_count_windows_batch_of_a_later_generation() {
        let b = count_window(10, 100);
        fail(&b);
        let Decision::Admit(old) = b.admit(&mut b.now()) else {
            panic!("rejected");
        };
        b.force(crate::State::ForcedOpen);
        b.force(crate::State::Closed);
        fail(&b); // opens a batch in the new generation
        assert!(is_open(&b));
        b.complete(old, Outcome::Success, None, None, &mut b.now());
        assert_eq!(shown(&b), (1, 1, 1), "the stale success changed nothing");
    }

    /// A learned threshold learns from every outcome: no batch opens beside a count window,
    /// and each success is recorded under the lock.
    #[test]
    fn a_learned_threshold_never_opens_a_batch_on_a_count_window() {
        let config = CircuitBreakerLayer::builder()
            .sliding_window(Window::count(10))
            .minimum_calls(1)
            .learned_failure_threshold(crate::LearnedThreshold::new())
            .validate_for_tests();
        let b = Breaker::new(Arc::new(config), None);
        (0..5).for_each(|_| succeed(&b));
        fail(&b);
        for _ in 0..3 {
            let (_, locks) = during(|| succeed(&b));
            assert_eq!(locks, 1);
            assert!(!is_open(&b));
        }
    }

    /// A slow success changes the slow-call rate: on a count window with a batch open it is
    /// recorded under the lock, as slow; the plain successes after it batch.
    #[tokio::test(start_paused = true)]
    async fn a_slow_success_on_a_count_window_never_batches() {
        let config = CircuitBreakerLayer::builder()
            .sliding_window(Window::count(10))
            .minimum_calls(1)
            .consecutive_failures(100)
            .slow_call_duration(Duration::from_secs(1))
            .validate_for_tests();
        let b = Breaker::new(Arc::new(config), None);
        fail(&b);
        assert!(is_open(&b));
        let Decision::Admit(ticket) = b.admit(&mut b.now()) else {
            panic!("rejected");
        };
        let started = b.now().get();
        tokio::time::advance(Duration::from_secs(2)).await;
        let (_, locks) = during(|| {
            b.complete(ticket, Outcome::Success, Some(started), None, &mut b.now());
        });
        assert_eq!(locks, 1, "under the lock");
        let (_, locks) = during(|| (0..2).for_each(|_| succeed(&b)));
        assert_eq!(locks, 0, "plain successes batch");
        let m = b.metrics();
        assert_eq!((m.calls(), m.failed(), m.slow()), (4, 1, 1));
    }

    /// Adaptive throttling counts every completed call: beside a count window, the successes
    /// that batch count in the throttle's window as those recorded under the lock do.
    #[tokio::test(start_paused = true)]
    async fn a_throttle_beside_a_count_window_counts_every_batched_success() {
        let throttle = crate::AdaptiveThrottle::new()
            .window(Duration::from_secs(10))
            .min_requests_per_second(1.0);
        let config = CircuitBreakerLayer::builder()
            .sliding_window(Window::count(100))
            .minimum_calls(1)
            .consecutive_failures(100)
            .adaptive_throttling(throttle)
            .validate_for_tests();
        let b = Breaker::new(Arc::new(config), None);
        // Admitted before any completes: the throttle rejects nothing yet.
        let tickets: Vec<_> = (0..20)
            .map(|_| match b.admit(&mut b.now()) {
                Decision::Admit(ticket) => ticket,
                Decision::Reject(r) => panic!("rejected: {r:?}"),
            })
            .collect();
        let mut tickets = tickets.into_iter();
        for ticket in tickets.by_ref().take(10) {
            b.complete(ticket, Outcome::Failure, None, None, &mut b.now());
        }
        assert!(is_open(&b));
        let (_, locks) = during(|| {
            for ticket in tickets {
                b.complete(ticket, Outcome::Success, None, None, &mut b.now());
            }
        });
        assert_eq!(locks, 0, "batched");
        let want = throttle.rejection_probability(20, 10);
        assert!(want > 0.0);
        assert_eq!(b.metrics().rejection_probability(), Some(want));
    }

    /// A half-open episode that closes starts a new window: the next Closed batch holds only
    /// the new generation's successes (a success admitted before the opening is stale), and a
    /// run of failures counts from the closing.
    #[tokio::test(start_paused = true)]
    async fn after_a_half_open_episode_closes_the_next_batch_holds_only_the_new_generation() {
        let config = CircuitBreakerLayer::builder()
            .sliding_window(Window::count(4))
            .minimum_calls(1)
            .consecutive_failures(2)
            .open_duration(Duration::from_secs(1))
            .half_open_calls(1)
            .validate_for_tests();
        let b = Breaker::new(Arc::new(config), None);
        succeed(&b);
        fail(&b); // the batch stays open
        let Decision::Admit(old) = b.admit(&mut b.now()) else {
            panic!("rejected");
        };
        let (_, locks) = during(|| succeed(&b));
        assert_eq!(locks, 0, "batched");
        fail(&b);
        fail(&b);
        assert_eq!(b.stored_state(), crate::State::Open, "two in a row");
        tokio::time::advance(Duration::from_secs(2)).await;
        succeed(&b); // the probe: closes
        assert_eq!(b.stored_state(), crate::State::Closed);
        fail(&b); // the new window's first outcome: opens a batch
        assert!(is_open(&b));
        b.complete(old, Outcome::Success, None, None, &mut b.now());
        assert_eq!(shown(&b), (1, 1, 1), "the old success is stale");
        let (_, locks) = during(|| succeed(&b));
        assert_eq!(locks, 1, "the read closed the batch");
        let (_, locks) = during(|| succeed(&b));
        assert_eq!(locks, 0, "batched");
        fail(&b);
        assert_eq!(
            b.stored_state(),
            crate::State::Closed,
            "the successes ended the run"
        );
        assert_eq!(shown(&b), (4, 2, 1));
    }

    /// Reconfigured to learn its failure-rate threshold while a batch is open: the batched
    /// successes are folded first, and no batch opens again (the baseline learns from each
    /// success, under the lock).
    #[test]
    fn a_reconfiguration_to_a_learned_threshold_closes_the_batch_for_good() {
        let builder = || {
            CircuitBreakerLayer::builder()
                .sliding_window(Window::count(10))
                .minimum_calls(1)
                .consecutive_failures(100)
        };
        let b = Breaker::new(config(builder()), None);
        (0..5).for_each(|_| succeed(&b));
        fail(&b);
        let (_, locks) = during(|| (0..2).for_each(|_| succeed(&b)));
        assert_eq!(locks, 0, "batched");
        b.reconfigure(config(
            builder().learned_failure_threshold(crate::LearnedThreshold::new()),
        ));
        assert_eq!(shown(&b), (8, 1, 0));
        for _ in 0..3 {
            let (_, locks) = during(|| succeed(&b));
            assert_eq!(locks, 1);
            assert!(!is_open(&b));
        }
        assert_eq!(shown(&b), (10, 1, 0));
    }

    /// DESIGN §3 on a time window: a success batched between two failures (the batch stays
    /// open after the first) breaks the run, and the window holds all three outcomes.
    #[tokio::test(start_paused = true)]
    async fn a_time_windows_batched_success_between_two_failures_ends_the_run() {
        let config = CircuitBreakerLayer::builder()
            .sliding_window(Window::time(Duration::from_secs(60)).buckets(60))
            .minimum_calls(1)
            .consecutive_failures(2)
            .validate_for_tests();
        let b = Breaker::new(Arc::new(config), None);
        succeed(&b);
        fail(&b);
        assert!(is_open(&b), "open after a failure");
        let (_, locks) = during(|| succeed(&b));
        assert_eq!(locks, 0, "batched");
        fail(&b);
        assert_eq!(b.stored_state(), crate::State::Closed, "not two in a row");
        assert_eq!(shown(&b), (4, 2, 1));
        fail(&b);
        assert_eq!(b.stored_state(), crate::State::Open);
    }
}
