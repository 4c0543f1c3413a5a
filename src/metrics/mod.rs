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
//! every core. So the breaker keeps its own lifetime counts, per thread ([`Totals`](crate::Totals)), and
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
//! | `circuit_breaker_transitions_total` | counter | `from`, `to` (states as [`State::as_str`](crate::State::as_str): `closed`, `half-open`, ...) | transitions (`reset` in Closed counts as `closed` to `closed`); the four the breaker makes by itself are registered at zero, an operator's at its first occurrence |
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

use std::sync::{Arc, Mutex, PoisonError, Weak};

use crate::state::Breaker;

mod exported;

pub(crate) use exported::Exported;

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

    /// The clock reads and locks of 100 healthy calls, after 10 that fill a count window of 10,
    /// through a breaker exporting with `export`; and its handle.
    fn hundred_calls(export: Export) -> ((usize, usize), crate::Handle) {
        let layer = CircuitBreakerLayer::builder()
            .sliding_window(Window::count(10))
            .export_metrics(export)
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
        (during(|| calls(100)), layer.handle())
    }

    #[test]
    fn exporting_adds_no_lock_and_no_clock_read_to_a_healthy_closed_call() {
        let (counts, handle) = hundred_calls(Export::new());
        assert_eq!(counts, (0, 0));
        assert_eq!(handle.metrics().totals().successful(), 110);
    }

    #[test]
    fn exported_durations_read_the_clock_twice_per_call_and_take_no_lock() {
        let (counts, _) = hundred_calls(Export::new().durations(true));
        assert_eq!(counts, (200, 0));
    }
}
