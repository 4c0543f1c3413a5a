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
//! Rejections are counted per lane for the same reason.
//!
//! A lane is picked per thread, not per service clone, because hyper and axum clone the service
//! for every request: a lane per clone would cost an allocation per request.

use std::cell::Cell;
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::Breaker;
use crate::sync::{AtomicU64, Ordering};

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
}

/// The lane index of each thread, assigned on first use.
static NEXT_LANE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // `const` with no destructor: always accessible, even while the thread's other
    // thread-locals are being destroyed.
    static THREAD_LANE: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The calling thread's lane index (`0..LANES`).
#[inline]
pub(crate) fn thread_lane() -> usize {
    let index = THREAD_LANE.get();
    if index != usize::MAX {
        return index;
    }
    first_lane()
}

/// `thread_lane` on a thread's first call: assigns its lane.
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
        self.lanes[thread_lane()]
            .get_or_init(|| {
                Arc::new(Lane {
                    breaker: self.breaker.clone(),
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

/// Rejections since the last transition to Closed, counted per lane (the rejecting thread's), each
/// on a 64-byte line of its own: in a rejection storm on several cores, one shared counter would
/// move between them on every call. Lanes 0 and 1, the first two threads', are also 128 bytes
/// apart, out of reach of the adjacent-line prefetcher.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Rejections([Line; LANES]);

#[derive(Debug, Default)]
#[repr(align(64))]
struct Line(AtomicU64);

impl Rejections {
    #[inline]
    pub(crate) fn add(&self, lane: usize) {
        // Lanes 0, 1, 2, 3 count in lines 0, 2, 1, 3: lanes 0 and 1 on different 128-byte pairs.
        const _: () = assert!(LANES == 4);
        let slot = ((lane & 1) << 1) | ((lane >> 1) & 1);
        // Relaxed: a statistic; a count racing with `clear` lands on either side of it.
        self.0[slot].0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn sum(&self) -> u64 {
        self.0.iter().fold(0u64, |sum, line| {
            sum.wrapping_add(line.0.load(Ordering::Relaxed))
        })
    }

    pub(crate) fn clear(&self) {
        for line in &self.0 {
            line.0.store(0, Ordering::Relaxed);
        }
    }
}
