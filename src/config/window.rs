//! The sliding window's shape: [`Window`].

use std::fmt;
use std::time::Duration;

use super::MAX_BUCKETS;

/// The sliding window over which failure and slow-call rates are computed.
///
/// * [`Window::count`]: the last `n` recorded outcomes.
/// * [`Window::time`]: the outcomes of the last `duration`, kept in `k` buckets of
///   `duration / k` (see [`Window::buckets`] for the default). An outcome recorded in bucket `i`
///   counts until the current bucket is `i + k`, so it leaves the window between
///   `duration - duration / k` and `duration` after it was recorded; buckets are measured from
///   the breaker's creation instant.
///
/// Both slide, in O(1) per call and without memory per call: a count window one outcome at a
/// time, a time window one bucket at a time.
///
/// ```
/// use std::time::Duration;
/// use tower_circuit_breaker::Window;
///
/// let last_100_calls = Window::count(100);
/// let last_minute = Window::time(Duration::from_secs(60)); // 60 buckets of 1 s
/// let last_2s = Window::time(Duration::from_secs(2)); // 10 buckets of 200 ms
/// let last_10s_fine = Window::time(Duration::from_secs(10)).buckets(100); // 100 ms buckets
/// # let _ = (last_100_calls, last_minute, last_10s_fine);
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub(crate) kind: WindowKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WindowKind {
    Count(u32),
    Time {
        duration: Duration,
        buckets: Option<u32>,
    },
}

impl WindowKind {
    /// Whether it is a time window (its recording reads the clock).
    pub(crate) fn is_time(self) -> bool {
        matches!(self, WindowKind::Time { .. })
    }
}

impl Window {
    /// A window over the last `n` recorded outcomes (`1..=1_048_576`).
    pub const fn count(n: u32) -> Self {
        Window {
            kind: WindowKind::Count(n),
        }
    }

    /// A window over the outcomes of the last `duration`, in buckets of at most a second and at
    /// least 10 of them by default (see [`buckets`](Self::buckets)).
    pub const fn time(duration: Duration) -> Self {
        Window {
            kind: WindowKind::Time {
                duration,
                buckets: None,
            },
        }
    }

    /// Sets the number of buckets of a time window (`1..=4096`, each at least 1 ms long).
    ///
    /// The default is one bucket per whole second of the window, at least 10 (so that a short
    /// window still slides in steps of a tenth) and at most 4096 (a window longer than 4096 s has
    /// buckets longer than a second), and fewer if buckets would be shorter than 1 ms. More
    /// buckets make the window slide more smoothly; each costs 32 bytes. On a count window this
    /// does nothing.
    pub const fn buckets(self, k: u32) -> Self {
        match self.kind {
            WindowKind::Count(_) => self,
            WindowKind::Time { duration, .. } => Window {
                kind: WindowKind::Time {
                    duration,
                    buckets: Some(k),
                },
            },
        }
    }
}

impl fmt::Debug for Window {
    /// Written as the expression that builds it, e.g. `Window::time(10s).buckets(100)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            WindowKind::Count(n) => write!(f, "Window::count({n})"),
            WindowKind::Time { duration, buckets } => {
                write!(f, "Window::time({duration:?})")?;
                match buckets {
                    Some(k) => write!(f, ".buckets({k})"),
                    None => Ok(()),
                }
            }
        }
    }
}

impl Default for Window {
    /// The last 100 calls.
    fn default() -> Self {
        Window::count(100)
    }
}

/// The default number of buckets of a time window of `duration` (see [`Window::buckets`]).
pub(crate) fn default_buckets(duration: Duration) -> u32 {
    let by_seconds = duration.as_secs().clamp(10, u64::from(MAX_BUCKETS));
    let by_millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    by_seconds.min(by_millis).max(1) as u32
}
