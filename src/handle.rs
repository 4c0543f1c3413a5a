//! The operator's handle on a breaker.
//!
//! A [`Handle`] is decoupled from the service: it can be kept in an admin endpoint, a health check
//! or a control loop, while the service itself is moved into a router or a client. Every handle
//! and every service made by one layer see and control the same breaker.

use std::fmt;
use std::sync::Arc;

use crate::config::{Builder, Config};
use crate::event::EventStream;
use crate::state::Breaker;
use crate::{ConfigError, State};

/// `builder` validated, and checked to replace `current` (see `Config::check_replaces`).
pub(crate) fn checked(builder: &Builder, current: &Config) -> Result<Config, ConfigError> {
    let mut config = builder.validate()?;
    config.check_replaces(current)?;
    Ok(config)
}

/// Reads and controls one breaker. Cheap to clone; `Send + Sync`.
///
/// Transitions are made one at a time, under a short internal lock. Their tracing events, their
/// [`Event`](crate::Event)s and the wake-ups of waiting tasks come after the lock is released, in
/// transition order: a tracing subscriber, an event consumer or a waker may call any method of a
/// handle, including from inside its callback.
///
/// ```
/// use tower_circuit_breaker::{CircuitBreakerLayer, State};
///
/// let layer = CircuitBreakerLayer::builder().build().unwrap();
/// let handle = layer.handle();
/// assert_eq!(handle.state(), State::Closed);
///
/// handle.force_open(); // e.g. during maintenance of the dependency
/// assert_eq!(handle.state(), State::ForcedOpen);
/// handle.reset();
/// assert_eq!(handle.state(), State::Closed);
/// ```
#[derive(Clone)]
pub struct Handle {
    breaker: Arc<Breaker>,
}

impl Handle {
    pub(crate) fn new(breaker: Arc<Breaker>) -> Self {
        Handle { breaker }
    }

    #[cfg(any(feature = "keyed", feature = "redis"))]
    pub(crate) fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }

    /// When a probe will be admitted, while the breaker is open (`None` otherwise, and while
    /// forced open): the `retry_at` its rejections carry. Looking makes no transition.
    #[cfg(feature = "keyed")]
    pub(crate) fn retry_at(&self) -> Option<tokio::time::Instant> {
        self.breaker.retry_at(&mut self.breaker.now())
    }

    /// The current state. An open interval that has ended turns into HalfOpen here, as it would on
    /// the next call, at the same instant: looking never changes what the breaker does.
    pub fn state(&self) -> State {
        self.breaker.state(&mut self.breaker.now())
    }

    /// A snapshot of the breaker's counters.
    pub fn metrics(&self) -> Metrics {
        self.breaker.metrics()
    }

    /// The breaker's name, if it has one.
    pub fn name(&self) -> Option<&str> {
        self.breaker.name().map(|n| &**n)
    }

    /// The key of a keyed breaker (one breaker per key of the keyed layer, feature `keyed`), as
    /// a string; `None` for a plain breaker.
    ///
    /// ```
    /// let handle = tower_circuit_breaker::CircuitBreakerLayer::builder().build().unwrap().handle();
    /// assert_eq!(handle.key(), None);
    /// ```
    pub fn key(&self) -> Option<&str> {
        self.breaker.key().map(|k| &**k)
    }

    /// The configuration in force, as a [`Builder`] to change and pass to
    /// [`reconfigure`](Self::reconfigure). Every rule is as it is in force: the failure-rate
    /// threshold is set if that rule is on (even by default), `minimum_calls` is as capped by a
    /// count window, a time window has its number of buckets, and the builder has the breaker's
    /// name. Its classifier is the default one (a breaker's classifier is part of its service's
    /// type, and cannot change).
    ///
    /// ```
    /// use tower_circuit_breaker::CircuitBreakerLayer;
    ///
    /// let handle = CircuitBreakerLayer::builder().minimum_calls(20).build()?.handle();
    /// let stricter = handle.config().failure_rate_threshold(0.25);
    /// handle.reconfigure(stricter)?;
    /// # Ok::<(), tower_circuit_breaker::ConfigError>(())
    /// ```
    pub fn config(&self) -> Builder {
        Builder::from_config(&self.breaker.current_config())
    }

    /// Replaces the breaker's configuration while it runs, without losing its state: thresholds,
    /// window, minimum calls, consecutive failures, open interval or backoff, probes and their
    /// wait, slow-call duration, `max_retry_after`.
    ///
    /// The new configuration is validated first; a bad one is refused with a [`ConfigError`] and
    /// the old one stays in force. Refused as well: a different name (unset keeps the breaker's),
    /// a different [`call_timeout`](Builder::call_timeout), and turning slow-call tracking on or
    /// off: these decide what every call does on its path (its timer, its clock reads), fixed
    /// when the breaker is built. Start from [`config`](Self::config), which has them right.
    ///
    /// What stays: the state and its generation, the open interval already running and the
    /// deadline of a half-open episode already started, the counters (rejections, consecutive
    /// failures), the subscribers and the handles. What changes:
    ///
    /// * **Thresholds and minimum calls** apply from the next recorded outcome (thresholds are
    ///   evaluated after each outcome).
    /// * **The window**: a count window resized keeps its newest outcomes, as many as fit; any
    ///   other change of window (count to time, time to count, another duration or number of
    ///   buckets) starts the new window empty, since a count window's outcomes carry no time and
    ///   a time window's buckets do not split. While the breaker does not record (open), its
    ///   [`Metrics`] still show the window that tripped it.
    /// * **The open interval** and backoff apply from the next opening.
    /// * **Probes** (`half_open_calls`, `half_open_successes`, `half_open_max_wait`) apply from
    ///   the next half-open episode: an episode finishes under the numbers it started with.
    /// * **The slow-call duration** applies to the calls that complete afterwards.
    ///
    /// Callers are not blocked: it takes the breaker's short internal lock, as a transition
    /// does, which the healthy closed path never takes.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first field that is out of range or cannot change.
    ///
    /// ```
    /// use tower_circuit_breaker::{CircuitBreakerLayer, Window};
    ///
    /// let handle = CircuitBreakerLayer::builder().name("db").build()?.handle();
    /// handle.reconfigure(handle.config().sliding_window(Window::count(20)).minimum_calls(10))?;
    /// assert_eq!(handle.metrics().failure_rate(), None); // still below 10 calls
    ///
    /// let bad = handle.config().failure_rate_threshold(2.0);
    /// assert_eq!(handle.reconfigure(bad).unwrap_err().field(), "failure_rate_threshold");
    /// # Ok::<(), tower_circuit_breaker::ConfigError>(())
    /// ```
    pub fn reconfigure(&self, builder: Builder) -> Result<(), ConfigError> {
        let config = checked(&builder, &self.breaker.current_config())?;
        self.breaker.reconfigure(Arc::new(config));
        Ok(())
    }

    /// Rejects every call until the state is changed again.
    pub fn force_open(&self) {
        self.breaker.force(State::ForcedOpen);
    }

    /// Admits every call and records nothing until the state is changed again.
    pub fn disable(&self) {
        self.breaker.force(State::Disabled);
    }

    /// Admits every call and records outcomes, but never opens, until the state is changed again.
    /// The window starts empty.
    pub fn metrics_only(&self) {
        self.breaker.force(State::MetricsOnly);
    }

    /// Returns to Closed with empty metrics, from any state. Always a transition, with its
    /// event: from Closed it is `Closed -> Closed` (the window is cleared).
    pub fn reset(&self) {
        self.breaker.force(State::Closed);
    }

    /// A stream of the breaker's events, from now on: transitions and rates that reached their
    /// thresholds, and, with [`EventStream::with_rejections`], every rejected call.
    ///
    /// ```
    /// use futures::StreamExt;
    /// use tower_circuit_breaker::{CircuitBreakerLayer, Event, State};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let handle = CircuitBreakerLayer::builder().build().unwrap().handle();
    /// let mut events = handle.subscribe();
    /// handle.force_open();
    /// match events.next().await {
    ///     Some(Event::StateTransition { from, to, .. }) => {
    ///         assert_eq!((from, to), (State::Closed, State::ForcedOpen));
    ///     }
    ///     other => panic!("unexpected {other:?}"),
    /// }
    /// # }
    /// ```
    pub fn subscribe(&self) -> EventStream {
        self.breaker.subscribe()
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("name", &self.name())
            .field("key", &self.key())
            // The stored state: formatting never makes a transition.
            .field("state", &self.breaker.stored_state())
            .finish()
    }
}

/// A snapshot of a breaker's counters, from [`Handle::metrics`].
///
/// The call counts describe the sliding window of the closed state. While the breaker does not
/// record (Open, HalfOpen, ForcedOpen, Disabled) they are the window as it was when it stopped
/// recording: the window that tripped it, for an open breaker. [`totals`](Metrics::totals) are
/// the lifetime counts, which never reset.
///
/// ```
/// use tower_circuit_breaker::{CircuitBreakerLayer, State};
///
/// let metrics = CircuitBreakerLayer::builder().build().unwrap().handle().metrics();
/// assert_eq!(metrics.state(), State::Closed);
/// assert_eq!(metrics.calls(), 0);
/// assert_eq!(metrics.failure_rate(), None); // below the minimum number of calls
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Metrics {
    pub(crate) state: State,
    pub(crate) calls: u64,
    pub(crate) failed: u64,
    pub(crate) slow: u64,
    pub(crate) not_permitted: u64,
    pub(crate) consecutive_failures: u32,
    pub(crate) minimum_calls: u64,
    pub(crate) totals: Totals,
    /// The failure-rate threshold in force (`None`: the failure-rate rule is off).
    pub(crate) failure_rate_threshold: Option<f64>,
    /// The learned baseline, with a learned threshold.
    pub(crate) baseline_failure_rate: Option<f64>,
    /// The throttle's rejection probability now, with adaptive throttling.
    pub(crate) rejection_probability: Option<f64>,
}

impl Metrics {
    /// The snapshot of a breaker that has seen nothing, with its threshold and rejection
    /// probability (for gauges registered before the breaker exists).
    #[cfg(feature = "metrics")]
    pub(crate) fn empty(
        failure_rate_threshold: Option<f64>,
        rejection_probability: Option<f64>,
    ) -> Metrics {
        Metrics {
            state: State::Closed,
            calls: 0,
            failed: 0,
            slow: 0,
            not_permitted: 0,
            consecutive_failures: 0,
            minimum_calls: 1,
            totals: Totals::default(),
            failure_rate_threshold,
            baseline_failure_rate: None,
            rejection_probability,
        }
    }

    /// The state when the snapshot was taken.
    pub fn state(&self) -> State {
        self.state
    }

    /// Failed calls over recorded calls in the window; `None` below the minimum number of calls.
    pub fn failure_rate(&self) -> Option<f64> {
        self.rate(self.failed)
    }

    /// Slow calls over recorded calls in the window; `None` below the minimum number of calls.
    pub fn slow_call_rate(&self) -> Option<f64> {
        self.rate(self.slow)
    }

    fn rate(&self, count: u64) -> Option<f64> {
        (self.calls > 0 && self.calls >= self.minimum_calls)
            .then(|| count as f64 / self.calls as f64)
    }

    /// Recorded outcomes in the window (successes and failures; ignored ones are not recorded).
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// Failed calls in the window.
    pub fn failed(&self) -> u64 {
        self.failed
    }

    /// Successful calls in the window.
    pub fn successful(&self) -> u64 {
        self.calls - self.failed
    }

    /// Slow calls in the window (failed or not).
    pub fn slow(&self) -> u64 {
        self.slow
    }

    /// Calls rejected since the last transition to Closed (including those sent to a fallback).
    pub fn not_permitted(&self) -> u64 {
        self.not_permitted
    }

    /// Failures recorded in a row, since the last success or the last clearing of the window
    /// (closing, `reset`, `metrics_only`).
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// The number of recorded calls below which the rates are undefined
    /// ([`Builder::minimum_calls`](crate::Builder::minimum_calls), capped at the size of a count
    /// window).
    pub fn minimum_calls(&self) -> u64 {
        self.minimum_calls
    }

    /// The lifetime counts of the breaker's calls and transitions.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// The failure-rate threshold in force: the configured one, or the one learned from the
    /// baseline with a [`LearnedThreshold`](crate::LearnedThreshold); `None` when the
    /// failure-rate rule is off.
    ///
    /// ```
    /// use tower_circuit_breaker::CircuitBreakerLayer;
    ///
    /// let layer = CircuitBreakerLayer::builder().failure_rate_threshold(0.3).build()?;
    /// assert_eq!(layer.handle().metrics().failure_rate_threshold(), Some(0.3));
    /// let only_consecutive = CircuitBreakerLayer::builder().consecutive_failures(5).build()?;
    /// assert_eq!(only_consecutive.handle().metrics().failure_rate_threshold(), None);
    /// # Ok::<(), tower_circuit_breaker::ConfigError>(())
    /// ```
    pub fn failure_rate_threshold(&self) -> Option<f64> {
        self.failure_rate_threshold
    }

    /// The learned baseline failure rate of a [`LearnedThreshold`](crate::LearnedThreshold)
    /// (`None` without one, or before any outcome was learned).
    pub fn baseline_failure_rate(&self) -> Option<f64> {
        self.baseline_failure_rate
    }

    /// The probability with which adaptive throttling rejects a call now
    /// ([`Builder::adaptive_throttling`](crate::Builder::adaptive_throttling); `None` without
    /// it). Computed from the throttle's window when the snapshot is taken, whatever the state:
    /// the throttle rejects only while the breaker is Closed.
    pub fn rejection_probability(&self) -> Option<f64> {
        self.rejection_probability
    }
}

/// Lifetime counts of a breaker, from [`Metrics::totals`]: they start at zero when the breaker is
/// made and never reset (not by closing, not by [`Handle::reset`]), so they are what a monitoring
/// system should scrape as counters.
///
/// Every dispatched call whose outcome was recorded counts once, as successful, failed or ignored,
/// whatever the state and even when its result was stale (it arrived after the state changed) or
/// the breaker was disabled: the call happened. A call that was dropped before its outcome counts
/// nowhere. Every call that was not permitted counts as rejected, and also as a fallback when a
/// fallback service answered it.
///
/// The counts are kept per thread and summed when read, so a healthy call does not write memory
/// that other cores read; a count racing with the read may land on either side of it.
///
/// ```
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_circuit_breaker::{CircuitBreakerLayer, State};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = CircuitBreakerLayer::builder().build().unwrap();
/// let handle = layer.handle();
/// let svc = layer.layer(service_fn(|ok: bool| async move { if ok { Ok(()) } else { Err("down") } }));
/// let _ = svc.clone().oneshot(true).await;
/// let _ = svc.clone().oneshot(false).await;
/// handle.force_open();
/// let _ = svc.clone().oneshot(true).await;
/// handle.reset();
///
/// let totals = handle.metrics().totals();
/// assert_eq!((totals.successful(), totals.failed(), totals.rejected()), (1, 1, 1));
/// assert_eq!(totals.transitions(State::Closed, State::ForcedOpen), 1);
/// assert_eq!(totals.transitions_total(), 2);
/// assert_eq!(handle.metrics().not_permitted(), 0, "since the breaker closed");
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub(crate) successful: u64,
    pub(crate) failed: u64,
    pub(crate) ignored: u64,
    pub(crate) slow: u64,
    pub(crate) rejected: u64,
    pub(crate) fallbacks: u64,
    /// `[from][to]`, by position in `State::ALL`.
    pub(crate) transitions: [[u64; 6]; 6],
}

impl Totals {
    /// Calls classified as successes.
    pub fn successful(&self) -> u64 {
        self.successful
    }

    /// Calls classified as failures (timeouts included).
    pub fn failed(&self) -> u64 {
        self.failed
    }

    /// Calls whose outcome the classifier ignored.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// Successful or failed calls that took longer than the slow-call duration (counted only
    /// while slow calls are tracked).
    pub fn slow(&self) -> u64 {
        self.slow
    }

    /// Calls not permitted, whether a fallback answered them or not.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Calls not permitted that a fallback service answered (a part of
    /// [`rejected`](Totals::rejected)).
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks
    }

    /// Transitions from `from` to `to` (`reset` from Closed counts as Closed to Closed).
    pub fn transitions(&self, from: State, to: State) -> u64 {
        self.transitions[from.index()][to.index()]
    }

    /// Every transition.
    pub fn transitions_total(&self) -> u64 {
        self.transitions.iter().flatten().sum()
    }
}
