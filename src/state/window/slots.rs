//! A time window's buckets: 32-bit counts, or 64-bit ones once a bucket would pass `u32::MAX`
//! outcomes.

use super::Totals;

/// One bucket's calls and failures in 32 bits (`Slots::Narrow`).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Counts {
    pub(super) calls: u32,
    pub(super) failed: u32,
}

/// The buckets' counts, bucket `i` in slot `i % k`. A slot is emptied when its bucket enters the
/// window, so each slot holds the one bucket of the window that maps to it: no bucket number is
/// stored.
#[derive(Debug)]
pub(super) enum Slots {
    /// 32-bit counts, and the slow calls in a column of their own, empty when the breaker does
    /// not track slow calls (none is ever slow), so that such a window carries no zeros.
    Narrow {
        counts: Box<[Counts]>,
        slow: Box<[u32]>,
    },
    /// 64-bit counts: from when a bucket would pass `u32::MAX` outcomes (a long bucket under
    /// heavy load), for the rest of the window's life, so that every outcome counts (a failure
    /// storm in a full bucket still trips) and nothing wraps.
    Wide(Box<[Totals]>),
}

impl Slots {
    pub(super) fn len(&self) -> usize {
        match self {
            Slots::Narrow { counts, .. } => counts.len(),
            Slots::Wide(totals) => totals.len(),
        }
    }

    /// Empties `slot`, returning what it held.
    pub(super) fn take(&mut self, slot: usize) -> Totals {
        match self {
            Slots::Narrow { counts, slow } => {
                let Counts { calls, failed } = std::mem::take(&mut counts[slot]);
                let slow = slow.get_mut(slot).map_or(0, std::mem::take);
                Totals {
                    calls: calls.into(),
                    failed: failed.into(),
                    slow: slow.into(),
                }
            }
            Slots::Wide(totals) => std::mem::take(&mut totals[slot]),
        }
    }

    /// Adds `added` to `slot`; returns what it added (no slow calls where they are not
    /// tracked).
    pub(super) fn add(&mut self, slot: usize, added: Totals) -> Totals {
        if let Slots::Narrow { counts, .. } = self {
            // Failures and slow calls are at most the calls: only the calls can overflow first.
            if u64::from(counts[slot].calls) + added.calls > u64::from(u32::MAX) {
                self.widen();
            }
        }
        match self {
            Slots::Narrow { counts, slow } => {
                // Each fits: checked above.
                counts[slot].calls += added.calls as u32;
                counts[slot].failed += added.failed as u32;
                match slow.get_mut(slot) {
                    Some(slow) => *slow += added.slow as u32,
                    None => return Totals { slow: 0, ..added },
                }
            }
            Slots::Wide(totals) => {
                totals[slot].calls += added.calls;
                totals[slot].failed += added.failed;
                totals[slot].slow += added.slow;
            }
        }
        added
    }

    /// Moves every slot to 64-bit counts. Cold: it allocates, under the lock, once in the life
    /// of a window that had a bucket of more than `u32::MAX` outcomes.
    #[cold]
    fn widen(&mut self) {
        let wide = (0..self.len()).map(|slot| self.take(slot)).collect();
        *self = Slots::Wide(wide);
    }

    pub(super) fn empty(&mut self) {
        match self {
            Slots::Narrow { counts, slow } => {
                counts.fill(Counts::default());
                slow.fill(0);
            }
            Slots::Wide(totals) => totals.fill(Totals::default()),
        }
    }
}
