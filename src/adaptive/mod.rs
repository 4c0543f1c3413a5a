//! Adaptive client-side throttling, and failure-rate thresholds learned from history.
//!
//! # Why throttle instead of (or before) opening the circuit
//!
//! A circuit breaker is binary: it lets every call through until a threshold is crossed, then
//! none. A dependency that is overloaded rather than down (it answers 70 % of calls) loses the
//! 70 % it could still serve, and when the breaker closes again the whole load returns at once.
//! Client-side throttling, from Google's SRE book and Envoy's admission-control filter, sheds a
//! share of the calls instead, a share that grows as the dependency's success rate falls: the
//! dependency is eased gradually, keeps serving what it can, and recovers without a stampede.
//!
//! With [`Builder::adaptive_throttling`](crate::Builder::adaptive_throttling), the breaker, while
//! Closed, rejects each call with the probability
//!
//! ```text
//! p = min(max_rejection, max(0, (requests - accepts / success_threshold) / (requests + 1)) ^ (1 / aggression))
//! ```
//!
//! where `requests` and `accepts` are the calls that completed in the sliding window and those
//! that succeeded (an [`Ignored`](crate::Outcome::Ignored) outcome counts in neither), and `p` is
//! 0 while the window holds fewer than `min_requests_per_second` times its length in seconds.
//! A throttled call is rejected exactly as an open circuit rejects one: it goes to the fallback,
//! becomes a 503 or `UNAVAILABLE` in a response mode, is counted in
//! [`Metrics::not_permitted`](crate::Metrics::not_permitted) and sent as an
//! [`Event::Rejected`](crate::Event::Rejected); its [`Rejected::state`](crate::error::Rejected::state)
//! is `Closed` (the circuit is closed; the call was throttled), and its `retry_after` is one
//! bucket of the window, the time in which the probability can change.
//!
//! As in Envoy, the rejected calls themselves are not counted: `p` follows the dependency's
//! success rate among the calls that reach it, so a dependency that stays at 80 % success keeps
//! seeing the same share of the load, and one that recovers gets all of it back within a window.
//!
//! Throttling is a policy of its own: set alone, it replaces the breaker's trip rules (the
//! circuit never opens by itself, as with Envoy's filter). A trip rule set beside it (a
//! failure-rate threshold, consecutive failures) stays on as a backstop for a dependency that is
//! down rather than struggling. Operator states work as for any breaker: `ForcedOpen` rejects,
//! `Disabled` admits everything, and `MetricsOnly` records without throttling. Closing (after a
//! backstop rule opened the circuit) and [`reset`](crate::Handle::reset) clear the throttle's
//! window, as they clear the breaker's.
//!
//! ```
//! use std::time::Duration;
//! use tower_circuit_breaker::{AdaptiveThrottle, CircuitBreakerLayer};
//!
//! let layer = CircuitBreakerLayer::builder()
//!     .name("search")
//!     .adaptive_throttling(
//!         AdaptiveThrottle::new()
//!             .window(Duration::from_secs(30))
//!             .success_threshold(0.95)
//!             .max_rejection_probability(0.8),
//!     )
//!     .build()?;
//! assert_eq!(layer.handle().metrics().rejection_probability(), Some(0.0));
//! # Ok::<(), tower_circuit_breaker::ConfigError>(())
//! ```
//!
//! # Thresholds learned from history
//!
//! [`LearnedThreshold`] sets the failure-rate threshold relative to what is normal for the
//! dependency: see its documentation.
//!
//! # Cost
//!
//! The throttle is lock-free and allocates nothing per call: admission reads the clock, sums the
//! window's buckets (at most 60 loads) and, only when `p > 0`, draws a random number; completion
//! adds to one bucket with one compare-and-swap. A breaker without throttling pays one branch on a
//! flag fixed when it is built.

mod learned;
mod rng;
mod window;

use std::time::Duration;

pub(crate) use learned::Baseline;
pub use learned::LearnedThreshold;

use crate::error::ConfigError;
use rng::Draws;
use window::{Buckets, Tally};

/// The longest throttling window.
const MAX_WINDOW: Duration = Duration::from_secs(3600);
/// The most buckets a throttling window is cut into (each admission sums them).
const MAX_BUCKETS: u64 = 60;

/// The configuration of adaptive client-side throttling: see the [module docs](crate::adaptive)
/// for the formula and how it runs with the breaker.
///
/// The defaults are Envoy's admission-control defaults:
///
/// | setter | default | allowed |
/// |---|---|---|
/// | [`window`](Self::window) | 30 s | 1 s ..= 1 h |
/// | [`success_threshold`](Self::success_threshold) | 0.95 | `(0, 1]` |
/// | [`aggression`](Self::aggression) | 1.0 | more than 0, finite |
/// | [`min_requests_per_second`](Self::min_requests_per_second) | 0 | at least 0, finite |
/// | [`max_rejection_probability`](Self::max_rejection_probability) | 0.8 | `[0, 1]` |
///
/// ```
/// use tower_circuit_breaker::AdaptiveThrottle;
///
/// let throttle = AdaptiveThrottle::new();
/// // 100 calls, 95 successes: at the success threshold, nothing is rejected.
/// assert_eq!(throttle.rejection_probability(100, 95), 0.0);
/// // 100 calls, 50 successes: (100 - 50 / 0.95) / 101.
/// let p = throttle.rejection_probability(100, 50);
/// assert!((p - 0.4690).abs() < 1e-4, "{p}");
/// // Nothing succeeds: capped at the maximum.
/// assert_eq!(throttle.rejection_probability(100, 0), 0.8);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdaptiveThrottle {
    window: Duration,
    success_threshold: f64,
    aggression: f64,
    min_requests_per_second: f64,
    max_rejection_probability: f64,
    seed: Option<u64>,
}

impl Default for AdaptiveThrottle {
    fn default() -> Self {
        AdaptiveThrottle::new()
    }
}

impl AdaptiveThrottle {
    /// Envoy's defaults: a 30 s window, success threshold 0.95, aggression 1, no minimum rate,
    /// rejection probability at most 0.8.
    pub const fn new() -> Self {
        AdaptiveThrottle {
            window: Duration::from_secs(30),
            success_threshold: 0.95,
            aggression: 1.0,
            min_requests_per_second: 0.0,
            max_rejection_probability: 0.8,
            seed: None,
        }
    }

    /// The sliding window the requests and accepts are counted over (1 s ..= 1 h), in buckets of
    /// one second (at most 60 buckets: a longer window has longer buckets). It should be longer
    /// than a call takes, or the window sees too few outcomes to follow the dependency.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// The success rate at or above which nothing is rejected (`(0, 1]`).
    pub fn success_threshold(mut self, rate: f64) -> Self {
        self.success_threshold = rate;
        self
    }

    /// How fast the rejection probability grows as the success rate falls below the threshold
    /// (more than 0): 1 is linear, more rejects more at a given success rate, less rejects less.
    pub fn aggression(mut self, aggression: f64) -> Self {
        self.aggression = aggression;
        self
    }

    /// Below this average rate of completed calls in the window, nothing is rejected (at least 0;
    /// Envoy's `rps_threshold`): a handful of failures of a rarely called dependency says little.
    pub fn min_requests_per_second(mut self, rps: f64) -> Self {
        self.min_requests_per_second = rps;
        self
    }

    /// The highest rejection probability (`[0, 1]`): some calls always reach the dependency, so
    /// that the throttle sees it recover.
    pub fn max_rejection_probability(mut self, p: f64) -> Self {
        self.max_rejection_probability = p;
        self
    }

    /// Draws from one sequence seeded with `seed`, shared by the breaker's calls, instead of a
    /// generator per thread: on a single-threaded runtime the same calls are then rejected on
    /// every run (for tests and simulations). Costs one shared atomic add per draw.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The rejection probability for `requests` completed calls of which `accepts` succeeded in
    /// the window (the formula in the [module docs](crate::adaptive)).
    pub fn rejection_probability(&self, requests: u64, accepts: u64) -> f64 {
        let window_secs = self.window.as_secs_f64();
        if (requests as f64) < self.min_requests_per_second * window_secs {
            return 0.0;
        }
        let requests = requests as f64;
        let excess = requests - accepts as f64 / self.success_threshold;
        let ratio = (excess / (requests + 1.0)).max(0.0);
        if ratio == 0.0 {
            return 0.0;
        }
        ratio
            .powf(1.0 / self.aggression)
            .min(self.max_rejection_probability)
    }

    /// Checks every value, naming the first one out of range (as
    /// `adaptive_throttling.<setter>`).
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.window < Duration::from_secs(1) || self.window > MAX_WINDOW {
            return Err(ConfigError::new(
                "adaptive_throttling.window",
                self.window,
                "1s..=3600s",
            ));
        }
        let t = self.success_threshold;
        if !(t > 0.0 && t <= 1.0) {
            return Err(ConfigError::new(
                "adaptive_throttling.success_threshold",
                t,
                "(0, 1]",
            ));
        }
        let a = self.aggression;
        if !(a > 0.0 && a.is_finite()) {
            return Err(ConfigError::new(
                "adaptive_throttling.aggression",
                a,
                "more than 0 and finite",
            ));
        }
        let r = self.min_requests_per_second;
        if !(r >= 0.0 && r.is_finite()) {
            return Err(ConfigError::new(
                "adaptive_throttling.min_requests_per_second",
                r,
                "at least 0 and finite",
            ));
        }
        let m = self.max_rejection_probability;
        if !(0.0..=1.0).contains(&m) {
            return Err(ConfigError::new(
                "adaptive_throttling.max_rejection_probability",
                m,
                "[0, 1]",
            ));
        }
        Ok(())
    }
}

// ===== Throttle =====

/// A breaker's throttle: its configuration, window and random draws.
#[derive(Debug)]
pub(crate) struct Throttle {
    config: AdaptiveThrottle,
    window: Buckets,
    draws: Draws,
}

impl Throttle {
    /// The throttle of a validated `config`.
    pub(crate) fn new(config: AdaptiveThrottle) -> Self {
        let secs = config.window.as_secs().clamp(1, MAX_BUCKETS);
        let width = crate::state::clock::saturating_nanos(config.window) / secs;
        Throttle {
            window: Buckets::new(secs as u32, width),
            draws: Draws::new(config.seed),
            config,
        }
    }

    /// The rejection probability at `at` (nanoseconds since the breaker's creation).
    pub(crate) fn probability(&self, at: u64) -> f64 {
        let Tally { requests, accepts } = self.window.tally(at);
        self.config.rejection_probability(requests, accepts)
    }

    /// Whether a call at `at` passes: a draw only when the probability is above zero.
    #[inline]
    pub(crate) fn admits(&self, at: u64) -> bool {
        let p = self.probability(at);
        p <= 0.0 || self.draws.next() >= p
    }

    /// Counts a completed call at `at` (`accepted`: it succeeded).
    #[inline]
    pub(crate) fn record(&self, at: u64, accepted: bool) {
        self.window.record(at, accepted);
    }

    /// How long a throttled caller should wait before the probability can change: one bucket.
    pub(crate) fn retry_in(&self) -> u64 {
        self.window.width()
    }

    /// Forgets the window (a reset).
    pub(crate) fn clear(&self) {
        self.window.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_formula_matches_envoys_at_its_corners() {
        let t = AdaptiveThrottle::new().max_rejection_probability(1.0);
        assert_eq!(t.rejection_probability(0, 0), 0.0, "an empty window");
        assert_eq!(t.rejection_probability(10, 10), 0.0);
        // (10 - 0) / 11
        assert!((t.rejection_probability(10, 0) - 10.0 / 11.0).abs() < 1e-12);
        // Aggression 2: the square root of the linear probability.
        let t2 = t.aggression(2.0);
        let linear = t.rejection_probability(100, 40);
        assert!((t2.rejection_probability(100, 40) - linear.sqrt()).abs() < 1e-12);
        // Below the minimum rate (1/s over 30 s: 30 calls), nothing is rejected.
        let quiet = t.min_requests_per_second(1.0);
        assert_eq!(quiet.rejection_probability(29, 0), 0.0);
        assert!(quiet.rejection_probability(30, 0) > 0.9);
    }

    #[test]
    fn validation_names_the_field_and_its_range() {
        let bad = [
            AdaptiveThrottle::new().window(Duration::from_millis(999)),
            AdaptiveThrottle::new().window(Duration::from_secs(3601)),
            AdaptiveThrottle::new().success_threshold(0.0),
            AdaptiveThrottle::new().success_threshold(f64::NAN),
            AdaptiveThrottle::new().aggression(0.0),
            AdaptiveThrottle::new().aggression(f64::INFINITY),
            AdaptiveThrottle::new().min_requests_per_second(-1.0),
            AdaptiveThrottle::new().max_rejection_probability(1.5),
        ];
        for throttle in bad {
            let err = throttle.validate().unwrap_err();
            assert!(err.field().starts_with("adaptive_throttling."), "{err}");
        }
        AdaptiveThrottle::new().validate().unwrap();
    }

    #[test]
    fn a_throttle_cuts_its_window_into_one_second_buckets_up_to_sixty() {
        let t = Throttle::new(AdaptiveThrottle::new());
        assert_eq!(t.retry_in(), 1_000_000_000);
        let t = Throttle::new(AdaptiveThrottle::new().window(Duration::from_secs(600)));
        assert_eq!(t.retry_in(), 10_000_000_000);
    }
}
