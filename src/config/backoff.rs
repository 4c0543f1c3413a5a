//! The growing open interval: [`Backoff`].

use std::time::Duration;

use super::MIN_JITTERED_INTERVAL;

/// An open interval that grows with each failed recovery attempt.
///
/// Attempt 1 is the first opening after Closed; each reopening from HalfOpen adds one, and closing
/// resets it. The interval is `min(max, initial * multiplier^(attempt - 1))`; jitter then moves it
/// by at most that fraction either way, never above `max`.
///
/// ```
/// use std::time::Duration;
/// use tower_circuit_breaker::Backoff;
///
/// // 1 s, 2 s, 4 s, ... up to 1 min, each moved by up to 10 %.
/// let backoff = Backoff::exponential(Duration::from_secs(1), 2.0, Duration::from_secs(60)).jitter(0.1);
/// # let _ = backoff;
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub(crate) initial: Duration,
    pub(crate) multiplier: f64,
    pub(crate) max: Duration,
    pub(crate) jitter: f64,
}

impl Backoff {
    /// Exponential backoff from `initial`, multiplied by `multiplier` (at least 1) per attempt and
    /// capped at `max` (at least `initial`).
    pub const fn exponential(initial: Duration, multiplier: f64, max: Duration) -> Self {
        Backoff {
            initial,
            multiplier,
            max,
            jitter: 0.0,
        }
    }

    /// Moves each interval at random by at most `fraction` (in `[0, 1]`) of itself, never above
    /// `max` and never below 1 ms. Jitter keeps a fleet of clients from probing a recovering dependency in lockstep.
    pub const fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction;
        self
    }

    /// The interval for `attempt` (1-based) before jitter.
    pub(crate) fn base_interval(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(i32::MAX as u32) as i32;
        let secs = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        match Duration::try_from_secs_f64(secs) {
            Ok(d) => d.min(self.max),
            Err(_) => self.max,
        }
    }

    /// The interval for `attempt` with jitter, given a uniform random number in `[0, 1)`.
    pub(crate) fn interval(&self, attempt: u32, uniform: f64) -> Duration {
        let base = self.base_interval(attempt);
        if self.jitter == 0.0 {
            return base;
        }
        let factor = 1.0 + self.jitter * (2.0 * uniform - 1.0);
        match Duration::try_from_secs_f64(base.as_secs_f64() * factor) {
            // Never zero: an interval of nothing would let every caller probe at once.
            Ok(d) => d.min(self.max).max(MIN_JITTERED_INTERVAL.min(base)),
            Err(_) => base,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// Jitter maps the uniform number onto `[base × (1 - jitter), base × (1 + jitter)]` in order,
    /// so that a seeded source gives the same intervals from one version to the next.
    #[test]
    fn jitter_maps_the_uniform_number_low_to_high_around_the_interval() {
        let ms = Duration::from_millis;
        let backoff = Backoff::exponential(ms(1_000), 2.0, ms(60_000)).jitter(0.1);
        assert_eq!(backoff.interval(1, 0.0), ms(900));
        assert_eq!(backoff.interval(1, 0.5), ms(1_000));
        assert_eq!(backoff.interval(2, 0.75), ms(2_100));
    }
}
