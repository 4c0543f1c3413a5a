//! Lanes: per-thread owners of a breaker, so that concurrent calls do not all write one reference
//! count.
//!
//! The response future of every admitted call owns a reference to its breaker: it records the
//! outcome when it completes, possibly after the service that made it is gone. With one
//! `Arc<Breaker>` cloned per call, every core increments and decrements the same counter, and on
//! a healthy breaker that counter is the only shared memory a call writes: under two threads its
//! cache line moves between the cores twice per call, several times the cost of an uncontended
//! call. So the layer and its services hand out references through a few lanes,
//! each an `Arc` of its own, allocated on first use and picked by the calling thread: each core
//! bumps the counter of its own lane, and the breaker's lines stay shared read-only.
//! The lifetime counters (outcomes, rejections) are per lane for the same reason.
//!
//! A lane is picked per thread, not per service clone, because hyper and axum clone the service
//! for every request: a lane per clone would cost an allocation per request.

use std::cell::Cell;
use std::fmt;
use std::ops::Deref;
#[cfg(not(loom))]
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::Breaker;
use super::clock::Now;
use super::word::Ticket;
use crate::classify::Outcome;
use crate::sync::{AtomicU64, Ordering};
// The lifetime counters are statistics that no other memory depends on: std's atomics even in the
// loom models, which they would only make larger.
use std::sync::atomic::AtomicU64 as StatU64;

/// Lanes per breaker. Threads beyond this share lanes (round robin): more lanes would only add
/// memory (128 bytes each, once used) for machines where more threads call one breaker at once.
pub(crate) const LANES: usize = 4;

/// A breaker and its lanes: what a layer and its services hold.
pub(crate) struct Lanes {
    breaker: Arc<Breaker>,
    lanes: [OnceLock<Arc<Lane>>; LANES],
    /// Copies of the configuration values every admitted call reads, one pointer away from the
    /// service instead of three.
    pub(crate) call_timeout: Option<Duration>,
    pub(crate) tracks_duration: bool,
}

/// One lane: a reference to the breaker with a reference count of its own, on a cache line of its
/// own (the alignment puts the `Arc`'s counters and this value on separate 64-byte lines).
#[repr(align(64))]
pub(crate) struct Lane {
    breaker: Arc<Breaker>,
    /// The index of the threads that use this lane (`thread_lane`).
    lane: usize,
    /// This lane's line of the breaker's `Counters`.
    slot: usize,
}

impl Lane {
    /// Whether a plain success of `ticket` needs nothing but its count: it changes nothing
    /// (`Breaker::is_absorbed`, the healthy closed path) or joins the open batch
    /// (`Breaker::joins_batch`, while the window holds failures). It is counted in this lane's
    /// line: the line of the thread that admitted the call, found without a thread-local read.
    #[inline]
    pub(crate) fn absorbs(&self, ticket: Ticket, outcome: Outcome, now: &mut Now<'_>) -> bool {
        let absorbed = self.breaker.is_absorbed(ticket, outcome)
            || self.breaker.joins_batch(ticket, outcome, self.lane, now);
        if absorbed {
            self.breaker.counters.add_to(self.slot, Count::Successful);
        }
        absorbed
    }
}

/// The lane index of each thread, assigned on first use.
#[cfg(not(loom))]
static NEXT_LANE: AtomicUsize = AtomicUsize::new(0);

#[cfg(not(loom))]
thread_local! {
    // `const` with no destructor: always accessible, even while the thread's other
    // thread-locals are being destroyed.
    static THREAD_LANE: Cell<usize> = const { Cell::new(usize::MAX) };
}

// loom runs every thread of a model on one OS thread, which `THREAD_LANE` cannot tell apart: a
// model's threads take their lanes from loom's thread-locals (`enter_lane`) instead, so that
// successes counted on several lines meet in the models.
#[cfg(loom)]
loom::thread_local! {
    static LOOM_LANE: Cell<usize> = Cell::new(0);
}

/// Puts the calling loom thread on lane `lane % LANES` (lane 0 until then).
#[cfg(all(test, loom))]
pub(crate) fn enter_lane(lane: usize) {
    LOOM_LANE.with(|index| index.set(lane % LANES));
}

/// The calling loom thread's lane (`enter_lane`).
#[cfg(loom)]
pub(crate) fn thread_lane() -> usize {
    LOOM_LANE.with(Cell::get)
}

/// The calling thread's lane index (`0..LANES`).
#[cfg(not(loom))]
#[inline]
pub(crate) fn thread_lane() -> usize {
    let index = THREAD_LANE.get();
    if index != usize::MAX {
        return index;
    }
    first_lane()
}

/// `thread_lane` on a thread's first call: assigns its lane.
#[cfg(not(loom))]
#[cold]
#[inline(never)]
fn first_lane() -> usize {
    // Relaxed: only spreads threads over lanes; any value is correct.
    let index = NEXT_LANE.fetch_add(1, Ordering::Relaxed) % LANES;
    THREAD_LANE.set(index);
    index
}

impl Lanes {
    pub(crate) fn new(breaker: Arc<Breaker>) -> Self {
        // One `Lanes` per breaker, made when its layer is: from then on, `collect` updates it.
        #[cfg(feature = "metrics")]
        crate::metrics::track(&breaker);
        Lanes {
            call_timeout: breaker.config().call_timeout,
            tracks_duration: breaker.tracks_duration(),
            breaker,
            lanes: Default::default(),
        }
    }

    /// The breaker itself (for handles).
    pub(crate) fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }

    /// A reference to the breaker for an admitted call, through the calling thread's lane.
    #[inline]
    pub(crate) fn lane(&self) -> Arc<Lane> {
        let lane = thread_lane();
        self.lanes[lane]
            .get_or_init(|| {
                Arc::new(Lane {
                    breaker: self.breaker.clone(),
                    lane,
                    slot: slot(lane),
                })
            })
            .clone()
    }
}

/// Whether anything but its owner holds `lanes` or its breaker: a service made from it (which
/// may be about to call), an admitted call's future (through a lane), or a `Handle`. For a keyed
/// layer's eviction, which looks while no new holder can appear through the map (it holds the
/// map's lock).
#[cfg(feature = "keyed")]
pub(crate) fn in_use(lanes: &Arc<Lanes>) -> bool {
    // Relaxed loads, then an Acquire fence: a holder that gave up the service after taking a
    // lane (the `Arc` decrement is a Release) is seen with that lane taken.
    if Arc::strong_count(lanes) > 1 {
        return true;
    }
    std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
    let mut made = 0;
    for lane in lanes.lanes.iter().filter_map(OnceLock::get) {
        if Arc::strong_count(lane) > 1 {
            return true;
        }
        made += 1;
    }
    // The breaker's owners: the lanes, each lane made, and any handle.
    Arc::strong_count(&lanes.breaker) > 1 + made
}

impl Deref for Lanes {
    type Target = Breaker;

    #[inline]
    fn deref(&self) -> &Breaker {
        &self.breaker
    }
}

impl Deref for Lane {
    type Target = Breaker;

    #[inline]
    fn deref(&self) -> &Breaker {
        &self.breaker
    }
}

impl fmt::Debug for Lanes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.breaker.fmt(f)
    }
}

impl fmt::Debug for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.breaker.fmt(f)
    }
}

/// What the lifetime counters count: the outcomes of dispatched calls, and the calls not permitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Count {
    Successful,
    Failed,
    Ignored,
    /// Successful or failed, and slow (counted besides its outcome).
    Slow,
    /// Rejected, with or without a fallback.
    Rejected,
    /// Rejected and answered by a fallback (counted besides the rejection).
    Fallback,
}

const COUNTS: usize = 6;

/// The line of `Counters` that lane `lane` counts in: lanes 0, 1, 2, 3 count in lines 0, 2, 1, 3,
/// so that lanes 0 and 1 are on different 128-byte pairs.
#[inline]
fn slot(lane: usize) -> usize {
    const _: () = assert!(LANES == 4);
    ((lane & 1) << 1) | ((lane >> 1) & 1)
}

/// The breaker's lifetime call counters, per lane (the counting thread's), each lane's on a
/// 64-byte line of its own: one shared counter would move between the cores on every call, which
/// a healthy closed call, and a rejection storm, must not pay for. Lanes 0 and 1, the first two
/// threads', are also 128 bytes apart, out of reach of the adjacent-line prefetcher. A count is a
/// sum over the lanes, read without stopping the writers: each lane only grows, so a later sum is
/// never smaller.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Counters {
    lines: [Line; LANES],
}

#[derive(Debug)]
#[repr(align(64))]
struct Line {
    counts: [StatU64; COUNTS],
    /// The lane's batch of plain successes (`batch`): in the room the counts leave on the line
    /// that this lane's threads write (and, through `Lane::absorbs`, the completions of the calls
    /// they admitted, wherever those complete).
    batch: AtomicU64,
}

impl Default for Line {
    fn default() -> Self {
        Line {
            counts: Default::default(),
            batch: AtomicU64::new(0),
        }
    }
}

impl Counters {
    /// Counts one in the line of lane `lane`.
    #[inline]
    pub(crate) fn add(&self, lane: usize, count: Count) {
        self.add_to(slot(lane), count);
    }

    /// Counts one in line `slot` (see `slot`).
    #[inline]
    pub(crate) fn add_to(&self, slot: usize, count: Count) {
        // Relaxed: a statistic, read as a sum that no other memory depends on.
        self.lines[slot % LANES].counts[count as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn sum(&self, count: Count) -> u64 {
        self.lines.iter().fold(0u64, |sum, line| {
            sum.wrapping_add(line.counts[count as usize].load(Ordering::Relaxed))
        })
    }

    /// The batch word of lane `lane`'s line.
    #[inline]
    pub(crate) fn batch(&self, lane: usize) -> &AtomicU64 {
        &self.lines[slot(lane)].batch
    }

    /// Every line's batch word, in line order.
    pub(crate) fn batches(&self) -> impl Iterator<Item = &AtomicU64> {
        self.lines.iter().map(|line| &line.batch)
    }
}
