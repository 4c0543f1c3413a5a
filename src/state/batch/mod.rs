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
use super::word::{Generation, Ticket, TicketKind};
use crate::classify::Outcome;
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
    /// Whether a plain success of `ticket`, counted by `Lane::absorbs`, joins the open batch on
    /// lane `lane`'s line: `complete`'s batch path, without the rest of `complete` (a breaker that
    /// throttles counts every call in `complete`).
    // Out of line: `Lane::absorbs` is inlined into every caller, and the healthy path before
    // this call must stay small there.
    #[inline(never)]
    pub(crate) fn joins_batch(
        &self,
        ticket: Ticket,
        outcome: Outcome,
        lane: usize,
        now: &mut Now<'_>,
    ) -> bool {
        !self.words.throttles && self.batched(ticket, outcome, lane, now)
    }

    /// Counts `outcome` of `ticket`, read at `now`, in lane `lane`'s batch if it is a plain
    /// success of a recorded call: false when it must be recorded under the lock.
    #[inline]
    pub(super) fn batched(
        &self,
        ticket: Ticket,
        outcome: Outcome,
        lane: usize,
        now: &mut Now<'_>,
    ) -> bool {
        if ticket.kind() != TicketKind::Recorded || outcome != Outcome::Success {
            return false;
        }
        // Acquire: the bounds and the state word read next are at least as new as this batch.
        let epoch = self.words.batch_epoch.load(Ordering::Acquire);
        epoch & OPEN != 0 && self.join_batch(epoch, ticket.generation(), lane, now)
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
mod tests;
