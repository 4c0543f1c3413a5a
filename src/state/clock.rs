//! The breaker's clock: tokio's, read lazily, in nanoseconds since the breaker's creation.
//!
//! Tokio's clock, so that tests on a paused clock are exact. Read at most once per operation,
//! and only if something needs it: a closed call with a count window and no slow-call or call
//! timeout reads none.

use std::time::Duration;

use tokio::time::Instant;

/// The current time in nanoseconds since the breaker's creation, read on first use.
#[derive(Debug)]
pub(crate) struct Now<'a> {
    /// Borrowed, not copied: most callers never read the clock.
    epoch: &'a Instant,
    /// The clock reading, kept so that a caller comparing instants (a rejection's deadline) does
    /// not pay for the conversion to nanoseconds, nor for a second read if it needs both.
    instant: Option<Instant>,
    value: Option<u64>,
}

impl<'a> Now<'a> {
    pub(crate) fn new(epoch: &'a Instant) -> Self {
        Now {
            epoch,
            instant: None,
            value: None,
        }
    }

    /// A time that is already known (loom models).
    #[cfg(all(test, loom))]
    pub(crate) fn fixed(epoch: &'a Instant, nanos: u64) -> Self {
        Now {
            epoch,
            instant: instant_at(*epoch, nanos),
            value: Some(nanos),
        }
    }

    /// The clock reading as an instant.
    pub(crate) fn instant(&mut self) -> Instant {
        *self.instant.get_or_insert_with(read)
    }

    pub(crate) fn get(&mut self) -> u64 {
        if let Some(value) = self.value {
            return value;
        }
        let value = saturating_nanos(self.instant().saturating_duration_since(*self.epoch));
        self.value = Some(value);
        value
    }
}

/// Reads tokio's clock: every read on a call's path goes through here.
#[inline]
pub(crate) fn read() -> Instant {
    #[cfg(all(test, not(loom)))]
    counts::CLOCK_READS.set(counts::CLOCK_READS.get() + 1);
    Instant::now()
}

/// What the call path did on this thread, for the tests of what it promises (no lock, no clock).
#[cfg(all(test, not(loom)))]
pub(crate) mod counts {
    use std::cell::Cell;

    thread_local! {
        pub(crate) static CLOCK_READS: Cell<usize> = const { Cell::new(0) };
        pub(crate) static LOCKS: Cell<usize> = const { Cell::new(0) };
    }

    /// (clock reads, locks taken) on this thread while `f` runs.
    pub(crate) fn during(f: impl FnOnce()) -> (usize, usize) {
        let before = (CLOCK_READS.get(), LOCKS.get());
        f();
        (CLOCK_READS.get() - before.0, LOCKS.get() - before.1)
    }
}

/// `d` in nanoseconds, saturating at `u64::MAX` (about 584 years, "never").
#[inline]
pub(crate) fn saturating_nanos(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

/// The instant `nanos` after `epoch`; `None` for `u64::MAX` ("never") or past the clock's range.
pub(crate) fn instant_at(epoch: Instant, nanos: u64) -> Option<Instant> {
    if nanos == u64::MAX {
        return None;
    }
    epoch.checked_add(Duration::from_nanos(nanos))
}
