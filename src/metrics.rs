//! Metrics through the [`metrics`] facade (feature `metrics`): calls by outcome,
//! rejections and fallbacks, transitions, the state, the failure and slow-call rates, and
//! optionally a histogram of call durations, for Prometheus or any other exporter of the facade.
//!
//! ```
//! use tower_circuit_breaker::{CircuitBreakerLayer, metrics::Export};
//!
//! // Install a recorder first (here none: the handles are no-ops), then build.
//! let layer = CircuitBreakerLayer::builder()
//!     .name("payments")
//!     .export_metrics(Export::new())
//!     .build()?;
//! // Before each scrape (in the `/metrics` handler), or on an interval:
//! tower_circuit_breaker::metrics::collect();
//! # let _ = layer;
//! # Ok::<(), tower_circuit_breaker::ConfigError>(())
//! ```
//!
//! # Why the counters are collected, not pushed
//!
//! A healthy closed call must stay cheap: it takes no lock and writes no memory that another core
//! reads. A counter of the facade incremented on every call would be one shared atomic written by
//! every core. So the breaker keeps its own lifetime counts, per thread ([`Totals`]), and
//! [`collect`] copies them into the facade's counters (as absolute values, so a counter never goes
//! back) and sets the gauges: call it where the exporter renders (the `/metrics` handler of
//! `metrics-exporter-prometheus`'s `PrometheusHandle::render`), or on an interval. Transitions
//! update the state gauge and the transition counter at once, when they are announced. Metric
//! handles are registered once per breaker, when it is made, with the recorder installed then
//! (the counter of an operator's transition, such as Closed to ForcedOpen, when the first one
//! happens).
//!
//! Call durations are the exception: the histogram is recorded per call, and timing a call reads
//! the clock twice, so it is off unless asked for ([`Export::durations`]).
//!
//! # Series
//!
//! Every series has the labels `name` (the breaker's name) and `key` (the key of a keyed
//! breaker), each the empty string when there is none. Rates are in `[0, 1]`, and `-1` while
//! undefined (fewer recorded calls in the window than the minimum), never NaN.
//!
//! | series | type | more labels | value |
//! |---|---|---|---|
//! | `circuit_breaker_calls_total` | counter | `outcome`: `successful`, `failed`, `ignored`, `rejected`, `fallback` | calls by outcome: dispatched calls by their classification; not permitted ones as `rejected`, or as `fallback` when a fallback service answered them (the outcomes partition every call) |
//! | `circuit_breaker_slow_calls_total` | counter | | successful or failed calls slower than the slow-call duration |
//! | `circuit_breaker_transitions_total` | counter | `from`, `to` (states as [`State::as_str`]: `closed`, `half-open`, ...) | transitions (`reset` in Closed counts as `closed` to `closed`); the four the breaker makes by itself are registered at zero, an operator's at its first occurrence |
//! | `circuit_breaker_state` | gauge | `state`, one series per state | 1 for the current state, 0 for the others |
//! | `circuit_breaker_failure_rate` | gauge | | failure rate of the window; `-1` below the minimum |
//! | `circuit_breaker_slow_call_rate` | gauge | | slow-call rate of the window; `-1` below the minimum |
//! | `circuit_breaker_failure_rate_threshold` | gauge | | the threshold in force (only when the rule is on): the configured one, or a [learned](crate::LearnedThreshold) one, updated by [`collect`] |
//! | `circuit_breaker_rejection_probability` | gauge | | with [adaptive throttling](crate::adaptive), the probability with which it rejects a call |
//! | `circuit_breaker_slow_call_rate_threshold` | gauge | | the configured threshold (only when the rule is on) |
//! | `circuit_breaker_window_calls` | gauge | `outcome`: `successful`, `failed` | recorded calls in the window (as [`Metrics`](crate::Metrics) shows it) |
//! | `circuit_breaker_call_duration_seconds` | histogram | `outcome`: `successful`, `failed`, `ignored` | call durations, with [`Export::durations`] |
//!
//! # Resilience4j's names
//!
//! [`Export::resilience4j`] emits the series that Resilience4j's Micrometer binding emits, with its
//! names, labels and units, so that a Grafana dashboard made for Resilience4j (its published one
//! included) works unchanged against a Rust service:
//!
//! | series | type | more labels | value |
//! |---|---|---|---|
//! | `resilience4j_circuitbreaker_state` | gauge | `state`: `closed`, `open`, `half_open`, `forced_open`, `disabled`, `metrics_only` | 1 for the current state |
//! | `resilience4j_circuitbreaker_calls_seconds` | histogram | `kind`: `successful`, `failed`, `ignored` | call durations, with [`Export::durations`]; without them, a counter `resilience4j_circuitbreaker_calls_seconds_count` of the calls |
//! | `resilience4j_circuitbreaker_not_permitted_calls_total` | counter | `kind`: `not_permitted` | calls not permitted (fallbacks included) |
//! | `resilience4j_circuitbreaker_calls_total` | counter | `kind`: `not_permitted` | the same, under the older name the published dashboard's call-rate panel reads |
//! | `resilience4j_circuitbreaker_failure_rate` | gauge | | failure rate in percent; `-1` below the minimum |
//! | `resilience4j_circuitbreaker_slow_call_rate` | gauge | | slow-call rate in percent; `-1` below the minimum |
//! | `resilience4j_circuitbreaker_buffered_calls` | gauge | `kind`: `successful`, `failed` | recorded calls in the window |
//! | `resilience4j_circuitbreaker_max_buffered_calls` | gauge | | the size of a count window |
//! | `resilience4j_circuitbreaker_transitions_total` | counter | `from`, `to` (Resilience4j's state names) | transitions (not a Resilience4j series) |
//!
//! The panels of Resilience4j's published dashboard that map: the number of closed, open and
//! half-open breakers and the states over time; the failure rate (-1 shows as N/A, as there); the
//! call rate by kind, with the not-permitted calls; the buffered calls and their maximum (count
//! windows only); and, with [`Export::durations`] and an exporter that renders histograms with
//! buckets, the call-duration percentiles and average durations. What cannot map: the
//! `application` and `instance` labels are the exporter's and Prometheus's to add (a global
//! label of the exporter, the scrape target), and `resilience4j_circuitbreaker_slow_calls`, the
//! window's slow calls split by outcome, which this breaker does not keep (only their total).
//! Without [`Export::durations`] the duration panels stay empty.

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use ::metrics::{Counter, Gauge, Histogram, Label, SharedString};

use crate::config::{Config, WindowKind};
use crate::handle::Totals;
use crate::state::lane::Count;
use crate::state::{Breaker, State};

/// What a breaker exports, and under which names: for
/// [`Builder::export_metrics`](crate::Builder::export_metrics).
///
/// ```
/// use tower_circuit_breaker::metrics::Export;
///
/// let ours = Export::new();
/// let timed = Export::new().durations(true);
/// let for_a_resilience4j_dashboard = Export::resilience4j().durations(true);
/// # let _ = (ours, timed, for_a_resilience4j_dashboard);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Export {
    naming: Naming,
    durations: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Naming {
    /// `circuit_breaker_*`, rates in `[0, 1]`.
    #[default]
    Native,
    /// Resilience4j's Micrometer names, rates in percent.
    Resilience4j,
}

impl Export {
    /// This crate's series (`circuit_breaker_*`), without call durations.
    pub fn new() -> Self {
        Export::default()
    }

    /// Resilience4j's series (`resilience4j_circuitbreaker_*`, see the
    /// [module docs](self#resilience4js-names)), without call durations.
    pub fn resilience4j() -> Self {
        Export {
            naming: Naming::Resilience4j,
            durations: false,
        }
    }

    /// Whether to record every call's duration in a histogram (default: no). It costs two clock
    /// reads and a histogram record per call, where a healthy closed call otherwise reads no
    /// clock; a breaker that tracks slow calls reads the clock for them already.
    pub fn durations(mut self, on: bool) -> Self {
        self.durations = on;
        self
    }
}

/// Copies the lifetime counts of every breaker that exports metrics into its counters, and sets
/// its gauges (state, rates, window). Call it before the exporter renders (in the `/metrics`
/// handler), or on an interval; it takes each breaker's lock once, briefly.
///
/// A breaker is collected from the moment its layer is built until it is dropped.
///
/// ```
/// # #[cfg(any())] {
/// async fn metrics(handle: PrometheusHandle) -> String {
///     tower_circuit_breaker::metrics::collect();
///     handle.render()
/// }
/// # }
/// tower_circuit_breaker::metrics::collect(); // with no breaker: nothing to do
/// ```
pub fn collect() {
    // The breakers are taken out of the list first: the recorder is user code, and runs with no
    // lock of ours held.
    let breakers: Vec<Arc<Breaker>> = {
        let mut tracked = tracked();
        tracked.retain(|weak| weak.strong_count() > 0);
        tracked.iter().filter_map(Weak::upgrade).collect()
    };
    for breaker in breakers {
        if let Some(exported) = &breaker.exported {
            exported.update(&breaker);
        }
    }
}

/// The breakers that export metrics, for [`collect`].
static TRACKED: Mutex<Vec<Weak<Breaker>>> = Mutex::new(Vec::new());

fn tracked() -> std::sync::MutexGuard<'static, Vec<Weak<Breaker>>> {
    // A panic while the list was held cannot leave it inconsistent (pushes and retains).
    TRACKED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Adds a breaker that exports metrics to those [`collect`] updates (once per breaker: by the
/// layer that holds it).
pub(crate) fn track(breaker: &Arc<Breaker>) {
    if breaker.exported.is_some() {
        tracked().push(Arc::downgrade(breaker));
    }
}

// ===== one breaker's handles =====

/// A lifetime count, as a counter shows it.
#[derive(Clone, Copy, Debug)]
enum Total {
    Count(Count),
    /// Not permitted, and no fallback answered.
    RejectedAlone,
}

/// What a gauge shows.
#[derive(Clone, Copy, Debug)]
enum Reading {
    FailureRate,
    SlowCallRate,
    WindowSuccessful,
    WindowFailed,
    /// The learned failure-rate threshold (a configured one is set once, at registration).
    FailureRateThreshold,
    /// Adaptive throttling's rejection probability.
    RejectionProbability,
}

/// The metric handles of one breaker, registered when it is made.
pub(crate) struct Exported {
    naming: Naming,
    labels: Vec<Label>,
    counters: Vec<(Total, Counter)>,
    gauges: Vec<(Reading, Gauge)>,
    /// One per state, by `State::index`.
    states: Vec<Gauge>,
    /// `[from][to]`, registered at the first transition of that kind.
    transitions: [[OnceLock<Counter>; 6]; 6],
    /// Successful, failed and ignored calls' durations (with `Export::durations`).
    durations: Option<[Histogram; 3]>,
    /// 1 for rates in `[0, 1]`, 100 for percent.
    rate_scale: f64,
}

impl fmt::Debug for Exported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exported")
            .field("naming", &self.naming)
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

/// A name the facade takes (`&'static str`).
fn name(s: &'static str) -> SharedString {
    SharedString::const_str(s)
}

impl Exported {
    /// Registers the handles of a breaker configured with `config` and `key`, with the recorder
    /// installed now.
    pub(crate) fn register(export: &Export, config: &Config, key: Option<&str>) -> Exported {
        let labels = vec![
            Label::new("name", config.name.as_deref().unwrap_or("").to_owned()),
            Label::new("key", key.unwrap_or("").to_owned()),
        ];
        let with = |label: &'static str, value: &'static str| {
            let mut labels = labels.clone();
            labels.push(Label::from_static_parts(label, value));
            labels
        };
        let counter = |n: &'static str, labels: Vec<Label>| ::metrics::counter!(name(n), labels);
        let gauge = |n: &'static str, labels: Vec<Label>| ::metrics::gauge!(name(n), labels);
        let histogram =
            |n: &'static str, labels: Vec<Label>| ::metrics::histogram!(name(n), labels);
        let outcomes = [
            (Count::Successful, "successful"),
            (Count::Failed, "failed"),
            (Count::Ignored, "ignored"),
        ];
        let naming = export.naming;
        let mut counters = Vec::new();
        let mut gauges = Vec::new();
        let durations;
        let rate_scale;
        let states: Vec<Gauge>;
        match naming {
            Naming::Native => {
                rate_scale = 1.0;
                describe();
                for (count, outcome) in outcomes {
                    let c = counter("circuit_breaker_calls_total", with("outcome", outcome));
                    counters.push((Total::Count(count), c));
                }
                let rejected = with("outcome", "rejected");
                let rejected = counter("circuit_breaker_calls_total", rejected);
                counters.push((Total::RejectedAlone, rejected));
                let fallback = with("outcome", "fallback");
                let fallback = counter("circuit_breaker_calls_total", fallback);
                counters.push((Total::Count(Count::Fallback), fallback));
                let slow = counter("circuit_breaker_slow_calls_total", labels.clone());
                counters.push((Total::Count(Count::Slow), slow));
                states = State::ALL
                    .iter()
                    .map(|s| gauge("circuit_breaker_state", with("state", s.as_str())))
                    .collect();
                let rate = gauge("circuit_breaker_failure_rate", labels.clone());
                gauges.push((Reading::FailureRate, rate));
                let rate = gauge("circuit_breaker_slow_call_rate", labels.clone());
                gauges.push((Reading::SlowCallRate, rate));
                let window = "circuit_breaker_window_calls";
                let successful = gauge(window, with("outcome", "successful"));
                gauges.push((Reading::WindowSuccessful, successful));
                let failed = gauge(window, with("outcome", "failed"));
                gauges.push((Reading::WindowFailed, failed));
                // Read at each collection, configured or learned: a reconfiguration can change
                // either, and turn learning on.
                if config.learned.is_some() || config.failure_rate_threshold.is_some() {
                    let threshold = gauge("circuit_breaker_failure_rate_threshold", labels.clone());
                    gauges.push((Reading::FailureRateThreshold, threshold));
                }
                if config.adaptive.is_some() {
                    let p = gauge("circuit_breaker_rejection_probability", labels.clone());
                    gauges.push((Reading::RejectionProbability, p));
                }
                if let Some(threshold) = config.slow_call_rate_threshold {
                    let g = gauge("circuit_breaker_slow_call_rate_threshold", labels.clone());
                    g.set(threshold);
                }
                durations = export.durations.then(|| {
                    outcomes.map(|(_, outcome)| {
                        let labels = with("outcome", outcome);
                        histogram("circuit_breaker_call_duration_seconds", labels)
                    })
                });
            }
            Naming::Resilience4j => {
                rate_scale = 100.0;
                let calls = "resilience4j_circuitbreaker_calls_seconds";
                durations = export
                    .durations
                    .then(|| outcomes.map(|(_, kind)| histogram(calls, with("kind", kind))));
                if durations.is_none() {
                    // The count a Timer would have rendered, without the durations.
                    for (count, kind) in outcomes {
                        let c = counter("resilience4j_circuitbreaker_calls_seconds_count", {
                            with("kind", kind)
                        });
                        counters.push((Total::Count(count), c));
                    }
                }
                for n in [
                    "resilience4j_circuitbreaker_not_permitted_calls_total",
                    "resilience4j_circuitbreaker_calls_total",
                ] {
                    let c = counter(n, with("kind", "not_permitted"));
                    counters.push((Total::Count(Count::Rejected), c));
                }
                states = State::ALL
                    .iter()
                    .map(|s| {
                        let labels = with("state", resilience4j_state(*s));
                        gauge("resilience4j_circuitbreaker_state", labels)
                    })
                    .collect();
                let rate = gauge("resilience4j_circuitbreaker_failure_rate", labels.clone());
                gauges.push((Reading::FailureRate, rate));
                let rate = gauge("resilience4j_circuitbreaker_slow_call_rate", labels.clone());
                gauges.push((Reading::SlowCallRate, rate));
                let buffered = "resilience4j_circuitbreaker_buffered_calls";
                let successful = gauge(buffered, with("kind", "successful"));
                gauges.push((Reading::WindowSuccessful, successful));
                let failed = gauge(buffered, with("kind", "failed"));
                gauges.push((Reading::WindowFailed, failed));
                if let WindowKind::Count(n) = config.window {
                    let max = gauge(
                        "resilience4j_circuitbreaker_max_buffered_calls",
                        labels.clone(),
                    );
                    max.set(f64::from(n));
                }
            }
        }
        let exported = Exported {
            naming,
            labels,
            counters,
            gauges,
            states,
            transitions: Default::default(),
            durations,
            rate_scale,
        };
        // The transitions the breaker makes by itself, registered (at zero) with the others, so
        // that `increase()` sees their first one; an operator's, at their first occurrence.
        for (from, to) in [
            (State::Closed, State::Open),
            (State::Open, State::HalfOpen),
            (State::HalfOpen, State::Closed),
            (State::HalfOpen, State::Open),
        ] {
            exported.transition_counter(from, to);
        }
        exported.show_state(State::Closed);
        let threshold = match config.learned {
            Some(learned) => Some(learned.initial(config.failure_rate_threshold)),
            None => config.failure_rate_threshold,
        };
        let rejection_probability = config.adaptive.map(|_| 0.0);
        exported.update_gauges(&crate::Metrics::empty(threshold, rejection_probability));
        exported
    }

    /// Whether every call's duration is recorded.
    #[inline]
    pub(crate) fn durations(&self) -> bool {
        self.durations.is_some()
    }

    /// Records a call's duration (`count`: its outcome), when durations are exported.
    pub(crate) fn record_duration(&self, count: Count, nanos: u64) {
        let Some(histograms) = &self.durations else {
            return;
        };
        let histogram = match count {
            Count::Successful => &histograms[0],
            Count::Failed => &histograms[1],
            _ => &histograms[2],
        };
        histogram.record(nanos as f64 / 1e9);
    }

    /// A transition was announced: `count` is its lifetime count (this one included).
    pub(crate) fn transitioned(&self, from: State, to: State, count: u64) {
        self.transition_counter(from, to).absolute(count);
        self.show_state(to);
    }

    fn transition_counter(&self, from: State, to: State) -> &Counter {
        self.transitions[from.index()][to.index()].get_or_init(|| {
            let (n, from, to) = match self.naming {
                Naming::Native => (
                    "circuit_breaker_transitions_total",
                    from.as_str(),
                    to.as_str(),
                ),
                Naming::Resilience4j => (
                    "resilience4j_circuitbreaker_transitions_total",
                    resilience4j_state(from),
                    resilience4j_state(to),
                ),
            };
            let mut labels = self.labels.clone();
            labels.push(Label::from_static_parts("from", from));
            labels.push(Label::from_static_parts("to", to));
            ::metrics::counter!(name(n), labels)
        })
    }

    fn show_state(&self, current: State) {
        for (state, gauge) in State::ALL.iter().zip(&self.states) {
            gauge.set(if *state == current { 1.0 } else { 0.0 });
        }
    }

    fn update_gauges(&self, metrics: &crate::Metrics) {
        // -1 while a rate is undefined, as Resilience4j exports it: never NaN.
        let rate = |rate: Option<f64>| rate.map_or(-1.0, |rate| rate * self.rate_scale);
        for (reading, gauge) in &self.gauges {
            gauge.set(match reading {
                Reading::FailureRate => rate(metrics.failure_rate()),
                Reading::SlowCallRate => rate(metrics.slow_call_rate()),
                Reading::WindowSuccessful => metrics.successful() as f64,
                Reading::WindowFailed => metrics.failed() as f64,
                Reading::FailureRateThreshold => rate(metrics.failure_rate_threshold()),
                Reading::RejectionProbability => metrics.rejection_probability().unwrap_or(0.0),
            });
        }
    }

    /// Copies `breaker`'s lifetime counts and current readings into the handles.
    pub(crate) fn update(&self, breaker: &Breaker) {
        let metrics = breaker.metrics();
        let totals = metrics.totals();
        for (total, counter) in &self.counters {
            counter.absolute(value(&totals, *total));
        }
        for from in State::ALL {
            for to in State::ALL {
                let count = totals.transitions(from, to);
                if count > 0 {
                    self.transition_counter(from, to).absolute(count);
                }
            }
        }
        self.show_state(metrics.state());
        self.update_gauges(&metrics);
    }
}

fn value(totals: &Totals, total: Total) -> u64 {
    match total {
        Total::Count(Count::Successful) => totals.successful(),
        Total::Count(Count::Failed) => totals.failed(),
        Total::Count(Count::Ignored) => totals.ignored(),
        Total::Count(Count::Slow) => totals.slow(),
        Total::Count(Count::Rejected) => totals.rejected(),
        Total::Count(Count::Fallback) => totals.fallbacks(),
        Total::RejectedAlone => totals.rejected() - totals.fallbacks(),
    }
}

/// A state as Resilience4j's Micrometer binding names it.
fn resilience4j_state(state: State) -> &'static str {
    match state {
        State::Closed => "closed",
        State::Open => "open",
        State::HalfOpen => "half_open",
        State::ForcedOpen => "forced_open",
        State::Disabled => "disabled",
        State::MetricsOnly => "metrics_only",
    }
}

/// The HELP lines of this crate's series (idempotent; the recorder keeps one per name).
fn describe() {
    use ::metrics::Unit;
    ::metrics::describe_counter!(
        "circuit_breaker_calls_total",
        "Calls through a circuit breaker, by outcome"
    );
    ::metrics::describe_counter!(
        "circuit_breaker_slow_calls_total",
        "Calls slower than the slow-call duration"
    );
    ::metrics::describe_counter!(
        "circuit_breaker_transitions_total",
        "Transitions of a circuit breaker, by state left and entered"
    );
    ::metrics::describe_gauge!(
        "circuit_breaker_state",
        "1 for the state a circuit breaker is in, 0 for the others"
    );
    ::metrics::describe_gauge!(
        "circuit_breaker_failure_rate",
        "Failure rate of the sliding window (-1 below the minimum number of calls)"
    );
    ::metrics::describe_gauge!(
        "circuit_breaker_slow_call_rate",
        "Slow-call rate of the sliding window (-1 below the minimum number of calls)"
    );
    ::metrics::describe_gauge!(
        "circuit_breaker_failure_rate_threshold",
        "Failure rate at which the circuit opens"
    );
    ::metrics::describe_gauge!(
        "circuit_breaker_rejection_probability",
        "Probability with which adaptive throttling rejects a call"
    );
    ::metrics::describe_gauge!(
        "circuit_breaker_slow_call_rate_threshold",
        "Slow-call rate at which the circuit opens"
    );
    ::metrics::describe_gauge!(
        "circuit_breaker_window_calls",
        "Recorded calls in the sliding window, by outcome"
    );
    ::metrics::describe_histogram!(
        "circuit_breaker_call_duration_seconds",
        Unit::Seconds,
        "Duration of calls through a circuit breaker, by outcome"
    );
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::future::{Ready, ready};

    use futures::executor::block_on;
    use tower::{Layer, ServiceExt, service_fn};

    use super::Export;
    use crate::state::clock::counts::during;
    use crate::{CircuitBreakerLayer, Window};

    fn answer(_: ()) -> Ready<Result<(), &'static str>> {
        ready(Ok(()))
    }

    #[test]
    fn exporting_adds_no_lock_and_no_clock_read_to_a_healthy_closed_call() {
        let layer = CircuitBreakerLayer::builder()
            .sliding_window(Window::count(10))
            .export_metrics(Export::new())
            .build()
            .unwrap();
        let svc = layer.layer(service_fn(
            answer as fn(()) -> Ready<Result<(), &'static str>>,
        ));
        let calls = |n| {
            for _ in 0..n {
                block_on(svc.clone().oneshot(())).unwrap();
            }
        };
        calls(10); // a full window of successes
        assert_eq!(during(|| calls(100)), (0, 0));
        assert_eq!(layer.handle().metrics().totals().successful(), 110);
    }

    #[test]
    fn exported_durations_read_the_clock_twice_per_call_and_take_no_lock() {
        let layer = CircuitBreakerLayer::builder()
            .sliding_window(Window::count(10))
            .export_metrics(Export::new().durations(true))
            .build()
            .unwrap();
        let svc = layer.layer(service_fn(
            answer as fn(()) -> Ready<Result<(), &'static str>>,
        ));
        let calls = |n| {
            for _ in 0..n {
                block_on(svc.clone().oneshot(())).unwrap();
            }
        };
        calls(10);
        assert_eq!(during(|| calls(100)), (200, 0));
    }
}
