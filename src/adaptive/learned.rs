//! Failure-rate thresholds learned from the breaker's own history: [`LearnedThreshold`].

use std::time::Duration;

use crate::error::ConfigError;

/// The shortest and the longest horizon.
const MIN_HORIZON: Duration = Duration::from_secs(1);
const MAX_HORIZON: Duration = Duration::from_secs(30 * 24 * 3600);

/// Sets the failure-rate threshold relative to the failure rate that is normal for the
/// dependency, learned while the breaker is closed; for dependencies whose normal error rate is
/// not zero, where one fixed threshold is either too strict on a bad day or too lax on a good one.
///
/// The breaker keeps an exponentially weighted failure rate, the **baseline**: every outcome it
/// records counts with a weight that halves every `horizon × ln 2` (an outcome `horizon` old
/// weighs `1/e` of a new one). The threshold is
///
/// ```text
/// threshold = clamp(baseline × factor + margin, min, max)
/// ```
///
/// and is compared with the sliding window's failure rate as a fixed threshold is (`>=`), so the
/// window is the fast signal and the baseline the slow one. Until the baseline has seen
/// `minimum_calls` outcomes, the configured [`failure_rate_threshold`](crate::Builder::failure_rate_threshold)
/// (default 0.5), clamped into the bounds, applies.
///
/// The baseline learns only while the breaker records (Closed, MetricsOnly): while it is open or
/// half-open neither the baseline nor the threshold moves, and the time spent open does not age
/// the baseline. A reset forgets it. The bounds are what keeps a slow degradation from being
/// learned as normal: the threshold never goes above `max`.
///
/// [`Metrics::failure_rate_threshold`](crate::Metrics::failure_rate_threshold) and
/// [`Metrics::baseline_failure_rate`](crate::Metrics::baseline_failure_rate) show both.
///
/// | setter | default | allowed |
/// |---|---|---|
/// | [`horizon`](Self::horizon) | 10 min | 1 s ..= 30 days |
/// | [`factor`](Self::factor) | 1.5 | at least 0, finite |
/// | [`margin`](Self::margin) | 0.1 | `[0, 1]` |
/// | [`bounds`](Self::bounds) | `(0.2, 0.9)` | `0 < min <= max <= 1` |
///
/// ```
/// use std::time::Duration;
/// use tower_circuit_breaker::{CircuitBreakerLayer, LearnedThreshold, Window};
///
/// // A dependency that fails 10 % of the time on a normal day: the threshold settles near
/// // 0.1 × 1.5 + 0.1 = 25 %; on a day at 1 % it tightens to its floor, 20 %.
/// let layer = CircuitBreakerLayer::builder()
///     .sliding_window(Window::time(Duration::from_secs(10)))
///     .minimum_calls(50)
///     .learned_failure_threshold(
///         LearnedThreshold::new()
///             .horizon(Duration::from_secs(600))
///             .factor(1.5)
///             .margin(0.1)
///             .bounds(0.2, 0.9),
///     )
///     .build()?;
/// assert_eq!(layer.handle().metrics().failure_rate_threshold(), Some(0.5));
/// # Ok::<(), tower_circuit_breaker::ConfigError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LearnedThreshold {
    horizon: Duration,
    factor: f64,
    margin: f64,
    min: f64,
    max: f64,
}

impl Default for LearnedThreshold {
    fn default() -> Self {
        LearnedThreshold::new()
    }
}

impl LearnedThreshold {
    /// A 10 min horizon, `baseline × 1.5 + 0.1`, within `[0.2, 0.9]`.
    pub const fn new() -> Self {
        LearnedThreshold {
            horizon: Duration::from_secs(600),
            factor: 1.5,
            margin: 0.1,
            min: 0.2,
            max: 0.9,
        }
    }

    /// The baseline's time constant (1 s ..= 30 days): long against the sliding window, so that
    /// an outage moves the baseline little before the window trips the breaker.
    pub fn horizon(mut self, horizon: Duration) -> Self {
        self.horizon = horizon;
        self
    }

    /// What the baseline is multiplied by (at least 0).
    pub fn factor(mut self, factor: f64) -> Self {
        self.factor = factor;
        self
    }

    /// What is added to the baseline times the factor (`[0, 1]`).
    pub fn margin(mut self, margin: f64) -> Self {
        self.margin = margin;
        self
    }

    /// The lowest and the highest threshold (`0 < min <= max <= 1`).
    pub fn bounds(mut self, min: f64, max: f64) -> Self {
        self.min = min;
        self.max = max;
        self
    }

    /// The threshold for `baseline`.
    ///
    /// ```
    /// use tower_circuit_breaker::LearnedThreshold;
    ///
    /// let learned = LearnedThreshold::new().factor(2.0).margin(0.05).bounds(0.1, 0.6);
    /// assert_eq!(learned.threshold_for(0.0), 0.1); // the floor
    /// assert!((learned.threshold_for(0.15) - 0.35).abs() < 1e-12);
    /// assert_eq!(learned.threshold_for(0.5), 0.6); // the ceiling
    /// ```
    pub fn threshold_for(&self, baseline: f64) -> f64 {
        (baseline * self.factor + self.margin).clamp(self.min, self.max)
    }

    /// The threshold before anything is learned: `configured` (default 0.5) within the bounds.
    pub(crate) fn initial(&self, configured: Option<f64>) -> f64 {
        configured
            .unwrap_or(crate::config::DEFAULT_FAILURE_RATE)
            .clamp(self.min, self.max)
    }

    /// Checks every value, naming the first one out of range (as
    /// `learned_failure_threshold.<setter>`).
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.horizon < MIN_HORIZON || self.horizon > MAX_HORIZON {
            return Err(ConfigError::new(
                "learned_failure_threshold.horizon",
                self.horizon,
                "1s..=30 days",
            ));
        }
        if !(self.factor >= 0.0 && self.factor.is_finite()) {
            return Err(ConfigError::new(
                "learned_failure_threshold.factor",
                self.factor,
                "at least 0 and finite",
            ));
        }
        if !(0.0..=1.0).contains(&self.margin) {
            return Err(ConfigError::new(
                "learned_failure_threshold.margin",
                self.margin,
                "[0, 1]",
            ));
        }
        if !(self.min > 0.0 && self.min <= self.max && self.max <= 1.0) {
            return Err(ConfigError::new(
                "learned_failure_threshold.bounds",
                (self.min, self.max),
                "(min, max) with 0 < min <= max <= 1",
            ));
        }
        Ok(())
    }
}

/// The learned baseline of one breaker, kept under its transition lock.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Baseline {
    learned: LearnedThreshold,
    /// The decayed sums of failures and of outcomes.
    failed: f64,
    weight: f64,
    /// When the sums were last decayed (nanoseconds since the breaker's creation).
    at: u64,
    /// Outcomes seen since the last reset (saturating).
    seen: u64,
    /// The threshold in force.
    threshold: f64,
}

impl Baseline {
    /// A baseline with nothing learned: the `configured` threshold (clamped into the bounds)
    /// applies.
    pub(crate) fn new(learned: LearnedThreshold, configured: Option<f64>, at: u64) -> Self {
        Baseline {
            learned,
            failed: 0.0,
            weight: 0.0,
            at,
            seen: 0,
            threshold: learned.initial(configured),
        }
    }

    /// Learns one outcome at `at`; the threshold follows once `minimum` outcomes were seen.
    pub(crate) fn observe(&mut self, at: u64, failed: bool, minimum: u64) {
        let elapsed = at.saturating_sub(self.at) as f64;
        if elapsed > 0.0 {
            let decay = (-elapsed / self.learned.horizon.as_nanos() as f64).exp();
            self.failed *= decay;
            self.weight *= decay;
            self.at = at;
        }
        self.weight += 1.0;
        self.failed += f64::from(u8::from(failed));
        self.seen = self.seen.saturating_add(1);
        if self.seen >= minimum {
            self.threshold = self.learned.threshold_for(self.failed / self.weight);
        }
    }

    /// Applies a reconfiguration that kept the learning parameters (so the baseline stays): the
    /// threshold follows the new `configured` one before the new `minimum`, the learned one past it.
    pub(crate) fn reconfigure(&mut self, configured: Option<f64>, minimum: u64) {
        self.threshold = match (self.seen >= minimum, self.rate()) {
            (true, Some(rate)) => self.learned.threshold_for(rate),
            _ => self.learned.initial(configured),
        };
    }

    /// Starts recording again at `at` after a pause (open, half-open, forced): the pause does not
    /// age what was learned.
    pub(crate) fn resume(&mut self, at: u64) {
        self.at = self.at.max(at);
    }

    /// The baseline failure rate, once anything was learned.
    pub(crate) fn rate(&self) -> Option<f64> {
        (self.weight > 0.0).then(|| self.failed / self.weight)
    }

    /// The failure-rate threshold in force.
    pub(crate) fn threshold(&self) -> f64 {
        self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn the_baseline_weighs_an_outcome_a_horizon_old_by_one_over_e() {
        let learned = LearnedThreshold::new().horizon(Duration::from_secs(100));
        let mut b = Baseline::new(learned, Some(0.5), 0);
        b.observe(0, true, 1);
        b.observe(100 * S, false, 1);
        let e = std::f64::consts::E.recip();
        let expected = e / (e + 1.0);
        assert!((b.rate().unwrap() - expected).abs() < 1e-9);
        assert_eq!(b.threshold(), learned.threshold_for(expected));
    }

    #[test]
    fn the_initial_threshold_holds_until_the_minimum_and_stays_within_bounds() {
        let learned = LearnedThreshold::new().bounds(0.3, 0.6);
        let mut b = Baseline::new(learned, Some(0.9), 0);
        assert_eq!(b.threshold(), 0.6, "the initial threshold is clamped");
        for i in 0..9 {
            b.observe(i * S, false, 10);
            assert_eq!(b.threshold(), 0.6);
        }
        b.observe(9 * S, false, 10);
        assert_eq!(b.threshold(), 0.3, "all successes: the floor");
    }

    #[test]
    fn a_pause_does_not_age_the_baseline() {
        let learned = LearnedThreshold::new().horizon(Duration::from_secs(10));
        let mut b = Baseline::new(learned, Some(0.5), 0);
        b.observe(0, true, 1);
        b.resume(1000 * S);
        b.observe(1000 * S, false, 1);
        assert!((b.rate().unwrap() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn validation_names_the_field_and_its_range() {
        let bad = [
            LearnedThreshold::new().horizon(Duration::from_millis(10)),
            LearnedThreshold::new().factor(-1.0),
            LearnedThreshold::new().factor(f64::NAN),
            LearnedThreshold::new().margin(1.5),
            LearnedThreshold::new().bounds(0.0, 0.5),
            LearnedThreshold::new().bounds(0.6, 0.5),
            LearnedThreshold::new().bounds(0.1, 1.5),
        ];
        for learned in bad {
            let err = learned.validate().unwrap_err();
            assert!(
                err.field().starts_with("learned_failure_threshold."),
                "{err}"
            );
        }
        LearnedThreshold::new().validate().unwrap();
    }
}
