//! One breaker's metric handles (`Exported`): registered when the breaker is made, updated by
//! [`collect`](super::collect) and at each transition and completion.

use std::fmt;
use std::sync::OnceLock;

use ::metrics::{Counter, Gauge, Histogram, Label, SharedString};

use super::{Export, Naming};
use crate::config::{Config, WindowKind};
use crate::handle::Totals;
use crate::state::lane::Count;
use crate::state::{Breaker, State};

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
