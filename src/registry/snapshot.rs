//! What a listing shows of a breaker ([`Snapshot`]), and a request to change its configuration
//! ([`ConfigUpdate`]): the two shapes an admin API speaks, serializable with the `serde` feature.

use std::time::Duration;

use crate::config::Builder;
use crate::error::ConfigError;
use crate::handle::Handle;
use crate::{State, Window};

/// One breaker (or one key of a keyed breaker) as a listing shows it: state, rates against
/// their thresholds, counts, and the time left until a probe. Made by
/// [`Registry::list`](super::Registry::list).
///
/// With the `serde` feature it serializes as a JSON object with these fields; the state as its
/// `Display` (`"half-open"`), the retry-after in milliseconds.
///
/// ```
/// use tower_circuit_breaker::CircuitBreakerLayer;
/// use tower_circuit_breaker::registry::Registry;
///
/// let registry = Registry::new();
/// registry.get_or_create(CircuitBreakerLayer::builder().name("db").minimum_calls(10))?;
/// let row = &registry.list()[0];
/// assert_eq!((row.name.as_str(), row.key.as_deref()), ("db", None));
/// assert_eq!(row.failure_rate, None); // below the minimum number of calls
/// assert_eq!(row.failure_rate_threshold, Some(0.5));
/// # Ok::<(), tower_circuit_breaker::registry::RegistryError>(())
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Snapshot {
    /// The breaker's name.
    pub name: String,
    /// The key, for a breaker of a keyed layer (`"(overflow)"` for its overflow breaker).
    pub key: Option<String>,
    /// The state, after the transitions due by time.
    #[cfg_attr(feature = "serde", serde(serialize_with = "display"))]
    pub state: State,
    /// Failed calls over calls in the window (`None` below the minimum number of calls).
    pub failure_rate: Option<f64>,
    /// Slow calls over calls in the window (`None` below the minimum number of calls).
    pub slow_call_rate: Option<f64>,
    /// The failure rate that opens the circuit (`None`: that rule is off).
    pub failure_rate_threshold: Option<f64>,
    /// The slow-call rate that opens the circuit (`None`: that rule is off).
    pub slow_call_rate_threshold: Option<f64>,
    /// Recorded outcomes in the window.
    pub calls: u64,
    /// Failed calls in the window.
    pub failed: u64,
    /// Slow calls in the window.
    pub slow: u64,
    /// Calls rejected since the breaker last closed.
    pub rejections: u64,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Milliseconds until a probe is admitted, while open (`None` otherwise, and while forced
    /// open), rounded up.
    pub retry_after_ms: Option<u64>,
}

impl Snapshot {
    pub(crate) fn of(name: &str, handle: &Handle) -> Self {
        let metrics = handle.metrics();
        let config = handle.breaker().current_config();
        let retry_after_ms = handle.retry_at().map(|at| {
            let left = at.saturating_duration_since(tokio::time::Instant::now());
            u64::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
        });
        Snapshot {
            name: name.to_string(),
            key: handle.key().map(str::to_string),
            state: metrics.state(),
            failure_rate: metrics.failure_rate(),
            slow_call_rate: metrics.slow_call_rate(),
            failure_rate_threshold: config.failure_rate_threshold,
            slow_call_rate_threshold: config.slow_call_rate_threshold,
            calls: metrics.calls(),
            failed: metrics.failed(),
            slow: metrics.slow(),
            rejections: metrics.not_permitted(),
            consecutive_failures: metrics.consecutive_failures(),
            retry_after_ms,
        }
    }
}

#[cfg(feature = "serde")]
fn display<S: serde::Serializer>(state: &State, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(state)
}

/// A change of configuration: the fields that are set replace those in force, the others stay
/// ([`Registry::update`](super::Registry::update)). Durations are in milliseconds; a window is
/// either `window_calls` (a count window) or `window_seconds` (a time window, with
/// `window_buckets`), not both.
///
/// With the `serde` feature it deserializes from a JSON object with these fields, and refuses
/// any other field (a misspelt one would otherwise change nothing, silently).
///
/// ```
/// use tower_circuit_breaker::registry::{ConfigUpdate, Registry};
/// use tower_circuit_breaker::CircuitBreakerLayer;
///
/// let registry = Registry::new();
/// registry.get_or_create(CircuitBreakerLayer::builder().name("db"))?;
///
/// let update = ConfigUpdate {
///     failure_rate_threshold: Some(0.25),
///     window_calls: Some(50),
///     ..ConfigUpdate::default()
/// };
/// registry.update("db", &update)?;
/// assert_eq!(registry.list()[0].failure_rate_threshold, Some(0.25));
///
/// let bad = ConfigUpdate { half_open_calls: Some(0), ..ConfigUpdate::default() };
/// assert!(registry.update("db", &bad).is_err());
/// # Ok::<(), tower_circuit_breaker::registry::RegistryError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(deny_unknown_fields)
)]
pub struct ConfigUpdate {
    /// [`Builder::failure_rate_threshold`].
    pub failure_rate_threshold: Option<f64>,
    /// [`Builder::slow_call_rate_threshold`].
    pub slow_call_rate_threshold: Option<f64>,
    /// [`Builder::slow_call_duration`], in milliseconds.
    pub slow_call_duration_ms: Option<u64>,
    /// A count window of this many calls ([`Window::count`]).
    pub window_calls: Option<u32>,
    /// A time window of this many seconds ([`Window::time`]).
    pub window_seconds: Option<u64>,
    /// The buckets of the time window ([`Window::buckets`]; needs `window_seconds`).
    pub window_buckets: Option<u32>,
    /// [`Builder::minimum_calls`].
    pub minimum_calls: Option<u32>,
    /// [`Builder::consecutive_failures`].
    pub consecutive_failures: Option<u32>,
    /// [`Builder::open_duration`], in milliseconds (replaces a backoff).
    pub open_duration_ms: Option<u64>,
    /// [`Builder::half_open_calls`].
    pub half_open_calls: Option<u32>,
    /// [`Builder::half_open_successes`].
    pub half_open_successes: Option<u32>,
    /// [`Builder::half_open_max_wait`], in milliseconds.
    pub half_open_max_wait_ms: Option<u64>,
    /// [`Builder::max_retry_after`], in milliseconds.
    pub max_retry_after_ms: Option<u64>,
}

impl ConfigUpdate {
    /// `builder` with the fields of this update set.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a window given both ways, or buckets without a time window; the
    /// values themselves are checked when the builder is used.
    pub fn apply(&self, mut builder: Builder) -> Result<Builder, ConfigError> {
        let ms = Duration::from_millis;
        if let Some(rate) = self.failure_rate_threshold {
            builder = builder.failure_rate_threshold(rate);
        }
        if let Some(rate) = self.slow_call_rate_threshold {
            builder = builder.slow_call_rate_threshold(rate);
        }
        if let Some(d) = self.slow_call_duration_ms {
            builder = builder.slow_call_duration(ms(d));
        }
        match (self.window_calls, self.window_seconds, self.window_buckets) {
            (Some(_), Some(_), _) => {
                return Err(ConfigError::new(
                    "window_calls",
                    self.window_calls,
                    "unset when window_seconds is set (one window)",
                ));
            }
            (Some(_), None, Some(_)) | (None, None, Some(_)) => {
                return Err(ConfigError::new(
                    "window_buckets",
                    self.window_buckets,
                    "unset unless window_seconds is set (buckets of a time window)",
                ));
            }
            (Some(n), None, None) => builder = builder.sliding_window(Window::count(n)),
            (None, Some(s), buckets) => {
                let window = Window::time(Duration::from_secs(s));
                builder = builder.sliding_window(match buckets {
                    Some(k) => window.buckets(k),
                    None => window,
                });
            }
            (None, None, None) => {}
        }
        if let Some(n) = self.minimum_calls {
            builder = builder.minimum_calls(n);
        }
        if let Some(n) = self.consecutive_failures {
            builder = builder.consecutive_failures(n);
        }
        if let Some(d) = self.open_duration_ms {
            builder = builder.open_duration(ms(d)).without_backoff();
        }
        if let Some(n) = self.half_open_calls {
            builder = builder.half_open_calls(n);
        }
        if let Some(n) = self.half_open_successes {
            builder = builder.half_open_successes(n);
        }
        if let Some(d) = self.half_open_max_wait_ms {
            builder = builder.half_open_max_wait(ms(d));
        }
        if let Some(d) = self.max_retry_after_ms {
            builder = builder.max_retry_after(ms(d));
        }
        Ok(builder)
    }
}
