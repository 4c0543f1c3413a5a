//! The builder, its validation, and the configuration every breaker shares.
//!
//! [`Builder::build`] checks every value before a breaker exists, so no configuration can make a
//! breaker panic later: a bad value comes back as a [`ConfigError`] that names the field, the value
//! and the allowed range. The validated [`Config`] is immutable and shared behind an `Arc` by every
//! clone of the layer, so a breaker does not carry a copy of it.

mod backoff;
mod validate;
mod window;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use backoff::Backoff;
pub use window::Window;
pub(crate) use window::WindowKind;

use crate::adaptive::{AdaptiveThrottle, LearnedThreshold};
use crate::classify::DefaultClassify;
use crate::error::ConfigError;
use crate::event::Event;
use crate::layer::CircuitBreakerLayer;

/// The largest count window, and the largest number of outcomes a time-window bucket counts.
pub(crate) const MAX_WINDOW_CALLS: u32 = 1 << 20;
/// The largest number of buckets in a time window.
pub(crate) const MAX_BUCKETS: u32 = 4096;
/// The largest number of half-open probes per episode: the probe counters share the state word.
pub(crate) const MAX_HALF_OPEN_CALLS: u32 = 4095;
/// The failure-rate threshold when no rule is configured.
pub(crate) const DEFAULT_FAILURE_RATE: f64 = 0.5;
const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// The shortest interval jitter can make (unless the interval itself is shorter).
const MIN_JITTERED_INTERVAL: Duration = Duration::from_millis(1);

// ===== Config =====

/// How long the breaker stays open.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum OpenInterval {
    Fixed(Duration),
    Backoff(Backoff),
}

/// The validated, immutable configuration of a breaker.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) name: Option<Arc<str>>,
    /// `None`: the failure-rate rule is off.
    pub(crate) failure_rate_threshold: Option<f64>,
    pub(crate) slow_call_rate_threshold: Option<f64>,
    /// `Some` when slow calls are tracked (a slow-call threshold or duration was set).
    pub(crate) slow_call_duration: Option<Duration>,
    pub(crate) window: WindowKind,
    /// Minimum outcomes before rates are defined; capped at the size of a count window.
    pub(crate) minimum_calls: u64,
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) open: OpenInterval,
    pub(crate) half_open_calls: u32,
    pub(crate) half_open_successes: u32,
    pub(crate) half_open_max_wait: Option<Duration>,
    pub(crate) call_timeout: Option<Duration>,
    pub(crate) max_retry_after: Duration,
    pub(crate) on_event: Option<EventCallback>,
    /// Adaptive throttling, fixed when the breaker is built.
    pub(crate) adaptive: Option<AdaptiveThrottle>,
    /// A failure-rate threshold learned from the baseline.
    pub(crate) learned: Option<LearnedThreshold>,
    #[cfg(feature = "metrics")]
    pub(crate) export: Option<crate::metrics::Export>,
}

/// The callback of [`Builder::on_event`].
#[derive(Clone)]
pub(crate) struct EventCallback(Arc<dyn Fn(&Event) + Send + Sync>);

impl EventCallback {
    pub(crate) fn call(&self, event: &Event) {
        (self.0)(event)
    }
}

impl fmt::Debug for EventCallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EventCallback")
    }
}

// ===== Builder =====

/// Builds a [`CircuitBreakerLayer`]; made by [`CircuitBreakerLayer::builder`].
///
/// Every setter takes the builder by value. Nothing is checked until [`build`](Builder::build),
/// which validates the whole configuration.
///
/// # Which rules open the circuit
///
/// Three rules can open it: the failure rate, the slow-call rate and consecutive failures. The
/// policy is what you configure: a rule you set is on, and the slow-call and consecutive rules are
/// off unless set. The failure-rate rule is on when you set its threshold or a
/// [learned threshold](Builder::learned_failure_threshold), and also when you set no policy at all
/// (then 50 % of the last 100 calls: a breaker with no rule would never open).
/// [Adaptive throttling](Builder::adaptive_throttling) is a policy too: set alone, nothing opens
/// the circuit, and the throttle sheds load instead.
/// Setting only [`consecutive_failures`](Builder::consecutive_failures), as with pybreaker's
/// `fail_max`, gives a breaker that opens on consecutive failures only.
///
/// | setter | default |
/// |---|---|
/// | [`failure_rate_threshold`](Builder::failure_rate_threshold) | 0.5 if no other rule is set, else off |
/// | [`slow_call_rate_threshold`](Builder::slow_call_rate_threshold) | off |
/// | [`slow_call_duration`](Builder::slow_call_duration) | 60 s, when slow calls are tracked |
/// | [`sliding_window`](Builder::sliding_window) | `Window::count(100)` |
/// | [`minimum_calls`](Builder::minimum_calls) | 100 |
/// | [`consecutive_failures`](Builder::consecutive_failures) | off |
/// | [`open_duration`](Builder::open_duration) | 30 s |
/// | [`half_open_calls`](Builder::half_open_calls) | 1 |
/// | [`half_open_successes`](Builder::half_open_successes) | all of `half_open_calls` |
/// | [`half_open_max_wait`](Builder::half_open_max_wait) | 60 s |
/// | [`call_timeout`](Builder::call_timeout) | off |
/// | [`max_retry_after`](Builder::max_retry_after) | 5 min |
/// | [`adaptive_throttling`](Builder::adaptive_throttling) | off |
/// | [`learned_failure_threshold`](Builder::learned_failure_threshold) | off |
///
/// ```
/// use std::time::Duration;
/// use tower_circuit_breaker::{CircuitBreakerLayer, Window};
///
/// let layer = CircuitBreakerLayer::builder()
///     .name("payments")
///     .failure_rate_threshold(0.5)
///     .sliding_window(Window::time(Duration::from_secs(30)))
///     .minimum_calls(20)
///     .consecutive_failures(5)
///     .open_duration(Duration::from_secs(10))
///     .half_open_calls(3)
///     .build()?;
/// # let _ = layer;
/// # Ok::<(), tower_circuit_breaker::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct Builder<C = DefaultClassify> {
    name: Option<Arc<str>>,
    failure_rate_threshold: Option<f64>,
    slow_call_rate_threshold: Option<f64>,
    slow_call_duration: Option<Duration>,
    window: Window,
    minimum_calls: u32,
    consecutive_failures: Option<u32>,
    open_duration: Duration,
    open_backoff: Option<Backoff>,
    half_open_calls: u32,
    half_open_successes: Option<u32>,
    half_open_max_wait: Option<Duration>,
    call_timeout: Option<Duration>,
    max_retry_after: Duration,
    on_event: Option<EventCallback>,
    adaptive: Option<AdaptiveThrottle>,
    learned: Option<LearnedThreshold>,
    #[cfg(feature = "metrics")]
    export: Option<crate::metrics::Export>,
    classify: C,
}

impl<C> fmt::Debug for Builder<C> {
    /// Every setting but the classifier (a closure has no `Debug`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut f = f.debug_struct("Builder");
        f.field("name", &self.name)
            .field("failure_rate_threshold", &self.failure_rate_threshold)
            .field("slow_call_rate_threshold", &self.slow_call_rate_threshold)
            .field("slow_call_duration", &self.slow_call_duration)
            .field("sliding_window", &self.window)
            .field("minimum_calls", &self.minimum_calls)
            .field("consecutive_failures", &self.consecutive_failures)
            .field("open_duration", &self.open_duration)
            .field("open_backoff", &self.open_backoff)
            .field("half_open_calls", &self.half_open_calls)
            .field("half_open_successes", &self.half_open_successes)
            .field("half_open_max_wait", &self.half_open_max_wait)
            .field("call_timeout", &self.call_timeout)
            .field("max_retry_after", &self.max_retry_after)
            .field("on_event", &self.on_event)
            .field("adaptive_throttling", &self.adaptive)
            .field("learned_failure_threshold", &self.learned);
        #[cfg(feature = "metrics")]
        f.field("export_metrics", &self.export);
        f.finish_non_exhaustive()
    }
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            name: None,
            failure_rate_threshold: None,
            slow_call_rate_threshold: None,
            slow_call_duration: None,
            window: Window::default(),
            minimum_calls: 100,
            consecutive_failures: None,
            open_duration: Duration::from_secs(30),
            open_backoff: None,
            half_open_calls: 1,
            half_open_successes: None,
            half_open_max_wait: Some(Duration::from_secs(60)),
            call_timeout: None,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            on_event: None,
            adaptive: None,
            learned: None,
            #[cfg(feature = "metrics")]
            export: None,
            classify: DefaultClassify,
        }
    }
}

impl Builder {
    /// A builder holding `config`, every rule as it is in force: the failure-rate threshold is
    /// set if that rule is on, `minimum_calls` is as capped by a count window, and a time
    /// window has its number of buckets.
    pub(crate) fn from_config(config: &Config) -> Self {
        let (open_duration, open_backoff) = match config.open {
            OpenInterval::Fixed(d) => (d, None),
            OpenInterval::Backoff(b) => (b.initial, Some(b)),
        };
        Builder {
            name: config.name.clone(),
            failure_rate_threshold: config.failure_rate_threshold,
            slow_call_rate_threshold: config.slow_call_rate_threshold,
            slow_call_duration: config.slow_call_duration,
            window: Window {
                kind: config.window,
            },
            minimum_calls: u32::try_from(config.minimum_calls).unwrap_or(MAX_WINDOW_CALLS),
            consecutive_failures: config.consecutive_failures,
            open_duration,
            open_backoff,
            half_open_calls: config.half_open_calls,
            half_open_successes: Some(config.half_open_successes),
            half_open_max_wait: config.half_open_max_wait,
            call_timeout: config.call_timeout,
            max_retry_after: config.max_retry_after,
            classify: DefaultClassify,
            #[cfg(feature = "metrics")]
            export: config.export.clone(),
            on_event: config.on_event.clone(),
            adaptive: config.adaptive,
            learned: config.learned,
        }
    }
}

impl<C> Builder<C> {
    /// Names the breaker: the name appears in rejections, events and tracing.
    pub fn name(mut self, name: impl AsRef<str>) -> Self {
        self.name = Some(Arc::from(name.as_ref()));
        self
    }

    /// Opens the circuit when the failure rate in the window is at least this (in `(0, 1]`).
    /// Setting it turns the failure-rate rule on (see [which rules](Builder#which-rules-open-the-circuit)).
    pub fn failure_rate_threshold(mut self, rate: f64) -> Self {
        self.failure_rate_threshold = Some(rate);
        self
    }

    /// Opens the circuit when the rate of slow calls in the window is at least this (in `(0, 1]`).
    /// Setting it turns slow-call tracking on.
    pub fn slow_call_rate_threshold(mut self, rate: f64) -> Self {
        self.slow_call_rate_threshold = Some(rate);
        self
    }

    /// A call is slow when it takes strictly longer than this (more than zero). Setting it turns
    /// slow-call tracking on: slow calls are counted, and a slow probe fails. An outcome the
    /// classifier ignores stays ignored, slow or not: it is not recorded, and an ignored probe
    /// gives its permit back.
    pub fn slow_call_duration(mut self, duration: Duration) -> Self {
        self.slow_call_duration = Some(duration);
        self
    }

    /// The window over which rates are computed.
    pub fn sliding_window(mut self, window: Window) -> Self {
        self.window = window;
        self
    }

    /// Rates are undefined (and cannot trip) until the window holds this many outcomes
    /// (`1..=1_048_576`; capped at the size of a count window).
    pub fn minimum_calls(mut self, n: u32) -> Self {
        self.minimum_calls = n;
        self
    }

    /// Also opens the circuit after `n` consecutive failures (at least 1). A success resets the
    /// count; an ignored outcome leaves it.
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive_failures = Some(n);
        self
    }

    /// How long the circuit stays open before it lets probes through (more than zero; checked
    /// even when [`open_backoff`](Self::open_backoff) replaces it). An interval beyond the
    /// clock's range never ends: the rejections' `retry_after()` is `None`.
    pub fn open_duration(mut self, duration: Duration) -> Self {
        self.open_duration = duration;
        self
    }

    /// Replaces the fixed open duration with a backoff that grows with each failed recovery.
    pub fn open_backoff(mut self, backoff: Backoff) -> Self {
        self.open_backoff = Some(backoff);
        self
    }

    /// The number of probe permits a half-open episode holds at once (`1..=4095`): at most this
    /// many probes are in flight. A probe that is ignored, dropped or never used gives its permit
    /// back, so another call can take it; a probe that completed keeps its permit until the
    /// episode ends.
    pub fn half_open_calls(mut self, n: u32) -> Self {
        self.half_open_calls = n;
        self
    }

    /// The number of successful probes that closes the circuit (`1..=half_open_calls`; default:
    /// all of them). The circuit reopens as soon as this became unreachable.
    pub fn half_open_successes(mut self, n: u32) -> Self {
        self.half_open_successes = Some(n);
        self
    }

    /// A half-open episode still undecided this long after its first probe was admitted goes back
    /// to Open, as a failed attempt (more than zero), so that a hung probe cannot keep the circuit
    /// half-open for ever. The new open interval counts from that deadline. An episode in which no
    /// probe was admitted (no traffic) has no deadline: it waits for its first call.
    pub fn half_open_max_wait(mut self, duration: Duration) -> Self {
        self.half_open_max_wait = Some(duration);
        self
    }

    /// Fails a call that takes longer than this (more than zero) with
    /// [`tower::timeout::error::Elapsed`], counted as a failure. The inner future is dropped.
    ///
    /// The time counts from `call`, which reads the clock for it (once per call). The timer is a
    /// `tokio::time::Sleep`, made (without allocating) the first time the response future finds
    /// the inner future pending, so that poll must run inside a tokio runtime with its timer
    /// enabled; a call answered on its first poll never makes one. A timeout too long for the
    /// clock (within a millisecond of the end of its range, or beyond) never fires.
    pub fn call_timeout(mut self, duration: Duration) -> Self {
        self.call_timeout = Some(duration);
        self
    }

    /// The longest an upstream's "do not come back before" may keep the circuit open (more than
    /// zero; default 5 minutes). A failure recorded with
    /// [`Completion::fail_until`](crate::Completion::fail_until) (an HTTP `Retry-After`, gRPC's
    /// `grpc-retry-pushback-ms`) that opens the circuit keeps it open until that instant if that
    /// is later than the configured interval, but at most this long.
    pub fn max_retry_after(mut self, duration: Duration) -> Self {
        self.max_retry_after = duration;
        self
    }

    /// Throttles calls adaptively while the circuit is closed: each call is rejected with a
    /// probability that grows as the dependency's success rate falls (Envoy's admission control,
    /// the SRE book's client-side throttling). See the [`adaptive`](crate::adaptive) module for
    /// the formula and the defaults.
    ///
    /// Set alone, it is the breaker's only policy: the failure-rate rule is then off unless its
    /// threshold is set too (see [which rules](Builder#which-rules-open-the-circuit)), so the
    /// circuit never opens by itself. A trip rule set beside it stays on as a backstop.
    /// Fixed when the breaker is built: a reconfiguration may not add, remove or change it.
    ///
    /// ```
    /// use tower_circuit_breaker::{AdaptiveThrottle, CircuitBreakerLayer};
    ///
    /// let layer = CircuitBreakerLayer::builder()
    ///     .adaptive_throttling(AdaptiveThrottle::new().aggression(1.5))
    ///     .build()?;
    /// let metrics = layer.handle().metrics();
    /// assert_eq!(metrics.rejection_probability(), Some(0.0));
    /// assert_eq!(metrics.failure_rate_threshold(), None, "the throttle alone");
    /// # Ok::<(), tower_circuit_breaker::ConfigError>(())
    /// ```
    pub fn adaptive_throttling(mut self, throttle: AdaptiveThrottle) -> Self {
        self.adaptive = Some(throttle);
        self
    }

    /// Sets the failure-rate threshold relative to a baseline learned from the breaker's own
    /// history, within bounds: see [`LearnedThreshold`]. It turns the failure-rate rule on; a
    /// [`failure_rate_threshold`](Self::failure_rate_threshold) set beside it is the threshold
    /// used until the baseline has seen `minimum_calls` outcomes (default 0.5).
    ///
    /// ```
    /// use tower_circuit_breaker::{CircuitBreakerLayer, LearnedThreshold};
    ///
    /// let layer = CircuitBreakerLayer::builder()
    ///     .failure_rate_threshold(0.4)
    ///     .learned_failure_threshold(LearnedThreshold::new().bounds(0.2, 0.6))
    ///     .build()?;
    /// assert_eq!(layer.handle().metrics().failure_rate_threshold(), Some(0.4));
    /// # Ok::<(), tower_circuit_breaker::ConfigError>(())
    /// ```
    pub fn learned_failure_threshold(mut self, learned: LearnedThreshold) -> Self {
        self.learned = Some(learned);
        self
    }

    /// Calls `callback` with every [`Event`] of the breaker: each transition, each rate that
    /// reached its threshold (with the rate and the threshold), and each rejected call.
    ///
    /// It runs on the thread that caused the event, after the breaker released its lock, so it
    /// may call back into the breaker through a [`Handle`](crate::Handle); transitions and
    /// threshold events come in order, once each. Keep it short: it runs on the call path (a
    /// rejection's runs before the rejected call returns). A panic in it is caught and traced at
    /// error level: the breaker goes on, and the call that caused the event is not failed.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use tower_circuit_breaker::{CircuitBreakerLayer, Event, State};
    ///
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = seen.clone();
    /// let layer = CircuitBreakerLayer::builder()
    ///     .name("db")
    ///     .on_event(move |event: &Event| {
    ///         if let Event::StateTransition { from, to, .. } = event {
    ///             log.lock().unwrap().push((*from, *to));
    ///         }
    ///     })
    ///     .build()?;
    /// layer.handle().force_open();
    /// assert_eq!(*seen.lock().unwrap(), [(State::Closed, State::ForcedOpen)]);
    /// # Ok::<(), tower_circuit_breaker::ConfigError>(())
    /// ```
    pub fn on_event(mut self, callback: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.on_event = Some(EventCallback(Arc::new(callback)));
        self
    }

    /// Exports the breaker's metrics through the [`metrics`](::metrics) facade: see the
    /// [`metrics`](crate::metrics) module for the series, their names and labels, and when they
    /// are updated. The metric handles are registered with the recorder installed when the layer
    /// is built.
    ///
    /// ```
    /// use tower_circuit_breaker::{CircuitBreakerLayer, metrics::Export};
    ///
    /// let layer = CircuitBreakerLayer::builder()
    ///     .name("payments")
    ///     .export_metrics(Export::new())
    ///     .build()?;
    /// # let _ = layer;
    /// # Ok::<(), tower_circuit_breaker::ConfigError>(())
    /// ```
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn export_metrics(mut self, export: crate::metrics::Export) -> Self {
        self.export = Some(export);
        self
    }

    /// Sets the classifier that turns each result into an [`Outcome`](crate::Outcome): a closure
    /// `Fn(Result<&Res, &E>) -> Outcome` (annotate its argument's type, or the compiler cannot
    /// infer it), or a [`Classify`](crate::Classify), which may also defer its verdict to the end
    /// of the response body ([`Classify::complete`](crate::Classify::complete)).
    ///
    /// ```
    /// use tower_circuit_breaker::{CircuitBreakerLayer, Outcome};
    ///
    /// // A 4xx-like answer is the caller's fault: do not count it against the dependency.
    /// let layer = CircuitBreakerLayer::builder()
    ///     .classify(|result: Result<&u16, &std::io::Error>| match result {
    ///         Ok(status) if *status >= 500 => Outcome::Failure,
    ///         Ok(status) if *status >= 400 => Outcome::Ignored,
    ///         Ok(_) => Outcome::Success,
    ///         Err(_) => Outcome::Failure,
    ///     })
    ///     .build()?;
    /// # let _ = layer;
    /// # Ok::<(), tower_circuit_breaker::ConfigError>(())
    /// ```
    pub fn classify<C2>(self, classify: C2) -> Builder<C2> {
        Builder {
            name: self.name,
            failure_rate_threshold: self.failure_rate_threshold,
            slow_call_rate_threshold: self.slow_call_rate_threshold,
            slow_call_duration: self.slow_call_duration,
            window: self.window,
            minimum_calls: self.minimum_calls,
            consecutive_failures: self.consecutive_failures,
            open_duration: self.open_duration,
            open_backoff: self.open_backoff,
            half_open_calls: self.half_open_calls,
            half_open_successes: self.half_open_successes,
            half_open_max_wait: self.half_open_max_wait,
            call_timeout: self.call_timeout,
            max_retry_after: self.max_retry_after,
            on_event: self.on_event,
            adaptive: self.adaptive,
            learned: self.learned,
            #[cfg(feature = "metrics")]
            export: self.export,
            classify,
        }
    }

    /// Validates the configuration and builds the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first field whose value is out of its allowed range.
    pub fn build(self) -> Result<CircuitBreakerLayer<C>, ConfigError> {
        let config = self.validate()?;
        Ok(CircuitBreakerLayer::from_parts(config, self.classify))
    }

    /// Drops the backoff, so that the open duration applies (a registry's update).
    #[cfg(feature = "keyed")]
    pub(crate) fn without_backoff(mut self) -> Self {
        self.open_backoff = None;
        self
    }

    /// The name set, if any.
    #[cfg(feature = "keyed")]
    pub(crate) fn name_set(&self) -> Option<&Arc<str>> {
        self.name.as_ref()
    }

    /// The classifier (for a layer built from this builder's parts).
    #[cfg(feature = "keyed")]
    pub(crate) fn into_classify(self) -> C {
        self.classify
    }
}
