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
    value: Option<u64>,
}

impl<'a> Now<'a> {
    pub(crate) fn new(epoch: &'a Instant) -> Self {
        Now { epoch, value: None }
    }

    /// A time that is already known (loom models).
    #[cfg(all(test, loom))]
    pub(crate) fn fixed(epoch: &'a Instant, nanos: u64) -> Self {
        Now {
            epoch,
            value: Some(nanos),
        }
    }

    pub(crate) fn get(&mut self) -> u64 {
        let epoch = *self.epoch;
        *self.value.get_or_insert_with(|| {
            saturating_nanos(Instant::now().saturating_duration_since(epoch))
        })
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
