//! Feature `metrics`: what `metrics-exporter-prometheus`, the real exporter, renders for a breaker
//! driven through open and close; Resilience4j's names; the duration histogram; rates below the
//! minimum; and handles registered once per breaker, never per call.
//!
//! Each test builds its breaker under a recorder of its own (`metrics::with_local_recorder`): the
//! handles are registered with it, so tests running side by side do not see each other's series.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use support::exposition::{Sample, has, parse, value};
use support::*;
use tower::{Layer, ServiceExt, service_fn};
use tower_circuit_breaker::metrics::{Export, collect};
use tower_circuit_breaker::{Builder, CircuitBreakerLayer, State, Window};

/// Builds the harness with its metric handles registered with `recorder`.
fn exported(recorder: &PrometheusRecorder, builder: Builder<Classifier>) -> Harness {
    metrics::with_local_recorder(recorder, || harness(builder))
}

/// What the exporter renders now, after a collection.
fn scrape(recorder: &PrometheusRecorder) -> Vec<Sample> {
    collect();
    parse(&recorder.handle().render())
}

const DB: (&str, &str) = ("name", "db");

fn calls(samples: &[Sample], outcome: &str) -> f64 {
    value(
        samples,
        "circuit_breaker_calls_total",
        &[DB, ("key", ""), ("outcome", outcome)],
    )
}

fn transitions(samples: &[Sample], from: State, to: State) -> f64 {
    let labels = [DB, ("from", from.as_str()), ("to", to.as_str())];
    value(samples, "circuit_breaker_transitions_total", &labels)
}

/// The state whose gauge is 1; panics unless exactly one is, and the others are 0.
#[track_caller]
fn current_state(samples: &[Sample], series: &str, names: [&str; 6]) -> String {
    let on: Vec<&str> = names
        .into_iter()
        .filter(|state| {
            let v = value(samples, series, &[DB, ("state", state)]);
            assert!(v == 0.0 || v == 1.0, "{series}{{state={state}}} = {v}");
            v == 1.0
        })
        .collect();
    assert_eq!(on.len(), 1, "states at 1: {on:?}");
    on[0].to_owned()
}

fn native_states() -> [&'static str; 6] {
    State::ALL.map(State::as_str)
}

#[tokio::test(start_paused = true)]
async fn the_prometheus_exporter_renders_a_breaker_through_open_and_close() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let mut h = exported(
        &recorder,
        builder()
            .name("db")
            .failure_rate_threshold(0.5)
            .sliding_window(Window::count(4))
            .minimum_calls(4)
            .open_duration(OPEN)
            .export_metrics(Export::new()),
    );
    let before = scrape(&recorder);
    assert_eq!(
        current_state(&before, "circuit_breaker_state", native_states()),
        "closed"
    );
    assert_eq!(value(&before, "circuit_breaker_failure_rate", &[DB]), -1.0);
    assert_eq!(calls(&before, "successful"), 0.0);

    run(&mut h.svc, 2, Reply::Ok).await;
    run(&mut h.svc, 1, Reply::Ignore).await;
    run(&mut h.svc, 2, Reply::Fail).await; // 2 of 4: the rate reaches 0.5
    assert_eq!(h.handle.state(), State::Open);
    for result in run(&mut h.svc, 9, Reply::Ok).await {
        rejection(result);
    }

    let open = scrape(&recorder);
    assert_eq!(
        current_state(&open, "circuit_breaker_state", native_states()),
        "open"
    );
    assert_eq!(calls(&open, "successful"), 2.0);
    assert_eq!(calls(&open, "failed"), 2.0);
    assert_eq!(calls(&open, "ignored"), 1.0);
    assert_eq!(calls(&open, "rejected"), 9.0);
    assert_eq!(calls(&open, "fallback"), 0.0);
    assert_eq!(value(&open, "circuit_breaker_failure_rate", &[DB]), 0.5);
    assert_eq!(
        value(&open, "circuit_breaker_failure_rate_threshold", &[DB]),
        0.5
    );
    assert!(
        !has(&open, "circuit_breaker_slow_call_rate_threshold", &[DB]),
        "rule off"
    );
    let window = |outcome| {
        let labels = [DB, ("outcome", outcome)];
        value(&open, "circuit_breaker_window_calls", &labels)
    };
    assert_eq!((window("successful"), window("failed")), (2.0, 2.0));
    assert_eq!(transitions(&open, State::Closed, State::Open), 1.0);

    advance(OPEN).await;
    assert!(call(&mut h.svc, ok()).await.is_ok(), "the probe");
    assert_eq!(h.handle.state(), State::Closed);

    let closed = scrape(&recorder);
    assert_eq!(
        current_state(&closed, "circuit_breaker_state", native_states()),
        "closed"
    );
    assert_eq!(calls(&closed, "successful"), 3.0);
    assert_eq!(
        calls(&closed, "rejected"),
        9.0,
        "a lifetime count: closing keeps it"
    );
    assert_eq!(
        h.handle.metrics().not_permitted(),
        0,
        "the snapshot's count resets"
    );
    assert_eq!(transitions(&closed, State::Open, State::HalfOpen), 1.0);
    assert_eq!(transitions(&closed, State::HalfOpen, State::Closed), 1.0);
    assert_eq!(value(&closed, "circuit_breaker_failure_rate", &[DB]), -1.0);
    let every: f64 = closed
        .iter()
        .filter(|s| s.name == "circuit_breaker_transitions_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(every, 3.0, "no other transition series");
}

#[tokio::test(start_paused = true)]
async fn the_state_gauge_and_transition_counter_move_when_the_transition_is_announced() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let mut h = exported(
        &recorder,
        builder()
            .name("db")
            .consecutive_failures(1)
            .export_metrics(Export::new()),
    );
    let rendered = || parse(&recorder.handle().render());
    assert_eq!(
        transitions(&rendered(), State::Closed, State::Open),
        0.0,
        "registered at zero"
    );
    trip(&mut h.svc).await;
    // No collection: the announcement itself updated them.
    let samples = rendered();
    assert_eq!(
        current_state(&samples, "circuit_breaker_state", native_states()),
        "open"
    );
    assert_eq!(transitions(&samples, State::Closed, State::Open), 1.0);
}

#[tokio::test(start_paused = true)]
async fn a_fallback_answer_counts_as_fallback_not_as_rejected() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let layer = metrics::with_local_recorder(&recorder, || {
        CircuitBreakerLayer::builder()
            .name("db")
            .export_metrics(Export::new())
            .build()
            .unwrap()
    });
    layer.handle().force_open();
    let cached = service_fn(|_: ()| async { Ok::<_, std::io::Error>("cached") });
    let live = service_fn(|_: ()| async { Ok::<_, std::io::Error>("live") });
    let svc = layer.clone().with_fallback(cached).layer(live);
    for _ in 0..3 {
        assert_eq!(svc.clone().oneshot(()).await.unwrap(), "cached");
    }
    let plain = layer.layer(live);
    assert!(plain.oneshot(()).await.is_err());

    let samples = scrape(&recorder);
    assert_eq!(calls(&samples, "fallback"), 3.0);
    assert_eq!(calls(&samples, "rejected"), 1.0);
    let totals = layer.handle().metrics().totals();
    assert_eq!((totals.rejected(), totals.fallbacks()), (4, 3));
}

#[tokio::test(start_paused = true)]
async fn resilience4j_names_render_with_its_labels_and_percent() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let mut h = exported(
        &recorder,
        builder()
            .name("db")
            .failure_rate_threshold(0.5)
            .sliding_window(Window::count(4))
            .minimum_calls(4)
            .open_duration(OPEN)
            .export_metrics(Export::resilience4j()),
    );
    run(&mut h.svc, 3, Reply::Ok).await;
    let below = scrape(&recorder);
    let rate = value(&below, "resilience4j_circuitbreaker_failure_rate", &[DB]);
    assert_eq!(rate, -1.0, "below the minimum, as Resilience4j exports it");

    run(&mut h.svc, 1, Reply::Fail).await;
    run(&mut h.svc, 1, Reply::Fail).await; // 2 of the last 4
    assert_eq!(h.handle.state(), State::Open);
    rejection(call(&mut h.svc, ok()).await);

    let samples = scrape(&recorder);
    let r4j_states = [
        "closed",
        "open",
        "half_open",
        "forced_open",
        "disabled",
        "metrics_only",
    ];
    let state = current_state(&samples, "resilience4j_circuitbreaker_state", r4j_states);
    assert_eq!(state, "open");
    let rate = value(&samples, "resilience4j_circuitbreaker_failure_rate", &[DB]);
    assert_eq!(rate, 50.0, "percent");
    let kind = |name: &str, kind| value(&samples, name, &[DB, ("kind", kind)]);
    let count = "resilience4j_circuitbreaker_calls_seconds_count";
    assert_eq!(
        (kind(count, "successful"), kind(count, "failed")),
        (3.0, 2.0)
    );
    let not_permitted = "resilience4j_circuitbreaker_not_permitted_calls_total";
    assert_eq!(kind(not_permitted, "not_permitted"), 1.0);
    let legacy = "resilience4j_circuitbreaker_calls_total";
    assert_eq!(kind(legacy, "not_permitted"), 1.0);
    let buffered = "resilience4j_circuitbreaker_buffered_calls";
    assert_eq!(
        (kind(buffered, "successful"), kind(buffered, "failed")),
        (2.0, 2.0)
    );
    let max = value(
        &samples,
        "resilience4j_circuitbreaker_max_buffered_calls",
        &[DB],
    );
    assert_eq!(max, 4.0);
    assert!(
        !samples
            .iter()
            .any(|s| s.name.starts_with("circuit_breaker_")),
        "only Resilience4j's names"
    );
}

#[tokio::test(start_paused = true)]
async fn durations_are_a_histogram_by_outcome_when_asked_for() {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[0.1, 1.0, 10.0])
        .unwrap()
        .build_recorder();
    let mut h = exported(
        &recorder,
        builder()
            .name("db")
            .export_metrics(Export::new().durations(true)),
    );
    call(&mut h.svc, ok().after(ms(50))).await.unwrap();
    call(&mut h.svc, ok().after(secs(5))).await.unwrap();
    call(&mut h.svc, fail().after(ms(500))).await.unwrap_err();

    let samples = scrape(&recorder);
    let bucket = |outcome, le| {
        let labels = [DB, ("outcome", outcome), ("le", le)];
        value(
            &samples,
            "circuit_breaker_call_duration_seconds_bucket",
            &labels,
        )
    };
    assert_eq!(bucket("successful", "0.1"), 1.0);
    assert_eq!(bucket("successful", "1"), 1.0);
    assert_eq!(bucket("successful", "10"), 2.0);
    assert_eq!(bucket("failed", "0.1"), 0.0);
    assert_eq!(bucket("failed", "1"), 1.0);
    let sum = value(
        &samples,
        "circuit_breaker_call_duration_seconds_sum",
        &[DB, ("outcome", "successful")],
    );
    assert!((sum - 5.05).abs() < 1e-6, "sum {sum}");
    // The durations do not move the breaker: no slow-call rule is set.
    assert_eq!(h.handle.metrics().slow(), 0);
}

/// While the window holds a failure, successes batch without the lock: with durations exported,
/// each success is still timed and lands in the histogram, and the exported calls count it once.
#[tokio::test(start_paused = true)]
async fn successes_that_batch_after_a_failure_are_each_in_the_duration_histogram() {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[0.1, 1.0, 10.0])
        .unwrap()
        .build_recorder();
    let mut h = exported(
        &recorder,
        builder()
            .name("db")
            .sliding_window(Window::time(secs(60)).buckets(1))
            .minimum_calls(1)
            .failure_rate_threshold(1.0)
            .export_metrics(Export::new().durations(true)),
    );
    call(&mut h.svc, ok()).await.unwrap();
    call(&mut h.svc, fail()).await.unwrap_err();
    for _ in 0..20 {
        call(&mut h.svc, ok().after(ms(50))).await.unwrap();
    }
    let samples = scrape(&recorder);
    let count = value(
        &samples,
        "circuit_breaker_call_duration_seconds_count",
        &[DB, ("outcome", "successful")],
    );
    assert_eq!(count, 21.0);
    assert_eq!(calls(&samples, "successful"), 21.0);
    assert_eq!(h.handle.metrics().calls(), 22);
}

#[tokio::test(start_paused = true)]
async fn without_durations_no_histogram_is_registered() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let mut h = exported(
        &recorder,
        builder().name("db").export_metrics(Export::new()),
    );
    call(&mut h.svc, ok().after(ms(50))).await.unwrap();
    let rendered = {
        collect();
        recorder.handle().render()
    };
    assert!(
        !rendered.contains("circuit_breaker_call_duration_seconds"),
        "{rendered}"
    );
}

#[tokio::test(start_paused = true)]
async fn rates_below_the_minimum_are_minus_one_and_never_nan() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let mut h = exported(
        &recorder,
        builder()
            .name("db")
            .slow_call_rate_threshold(0.9)
            .slow_call_duration(ms(10))
            .minimum_calls(3)
            .export_metrics(Export::new()),
    );
    let rates = |samples: &[Sample]| {
        (
            value(samples, "circuit_breaker_failure_rate", &[DB]),
            value(samples, "circuit_breaker_slow_call_rate", &[DB]),
        )
    };
    assert_eq!(
        rates(&scrape(&recorder)),
        (-1.0, -1.0),
        "no call yet: 0 / 0"
    );
    run(&mut h.svc, 2, Reply::Fail).await;
    assert_eq!(
        rates(&scrape(&recorder)),
        (-1.0, -1.0),
        "2 of a minimum of 3"
    );
    call(&mut h.svc, ok().after(ms(20))).await.unwrap();
    let (failure, slow) = rates(&scrape(&recorder));
    assert!((failure - 2.0 / 3.0).abs() < 1e-9 && (slow - 1.0 / 3.0).abs() < 1e-9);
    let slow_total = value(
        &scrape(&recorder),
        "circuit_breaker_slow_calls_total",
        &[DB],
    );
    assert_eq!(slow_total, 1.0);
}

// ===== handles registered once per breaker =====

/// A recorder that counts registrations (and hands out no-op handles).
#[derive(Default)]
struct CountsRegistrations(AtomicUsize);

impl Recorder for CountsRegistrations {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        self.0.fetch_add(1, Ordering::SeqCst);
        Counter::noop()
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        self.0.fetch_add(1, Ordering::SeqCst);
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        self.0.fetch_add(1, Ordering::SeqCst);
        Histogram::noop()
    }
}

#[tokio::test(start_paused = true)]
async fn handles_are_registered_when_the_breaker_is_made_never_per_call() {
    let recorder = Arc::new(CountsRegistrations::default());
    let mut h = metrics::with_local_recorder(&*recorder, || {
        harness(
            builder()
                .name("db")
                .consecutive_failures(1)
                .open_duration(OPEN)
                .export_metrics(Export::new().durations(true)),
        )
    });
    let at_creation = recorder.0.load(Ordering::SeqCst);
    assert!(at_creation > 0);

    run(&mut h.svc, 1_000, Reply::Ok).await;
    collect();
    collect();
    assert_eq!(
        recorder.0.load(Ordering::SeqCst),
        at_creation,
        "calls and collections"
    );

    trip(&mut h.svc).await; // registered with the breaker
    assert_eq!(recorder.0.load(Ordering::SeqCst), at_creation);
    // An operator's Open -> Closed: registered at the first one (with the recorder of then).
    metrics::with_local_recorder(&*recorder, || h.handle.reset());
    assert_eq!(recorder.0.load(Ordering::SeqCst), at_creation + 1);
    trip(&mut h.svc).await;
    metrics::with_local_recorder(&*recorder, || {
        h.handle.reset();
        collect();
    });
    assert_eq!(
        recorder.0.load(Ordering::SeqCst),
        at_creation + 1,
        "once per kind"
    );
}

#[tokio::test(start_paused = true)]
async fn a_breaker_without_export_registers_nothing() {
    let recorder = Arc::new(CountsRegistrations::default());
    let mut h = metrics::with_local_recorder(&*recorder, || harness(builder().name("db")));
    run(&mut h.svc, 10, Reply::Fail).await;
    collect();
    assert_eq!(recorder.0.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_learned_threshold_and_the_rejection_probability_are_exported_as_they_move() {
    use tower_circuit_breaker::{AdaptiveThrottle, LearnedThreshold};
    let recorder = PrometheusBuilder::new().build_recorder();
    let mut learned = exported(
        &recorder,
        builder()
            .name("db")
            .minimum_calls(10)
            .learned_failure_threshold(LearnedThreshold::new().bounds(0.2, 0.9))
            .export_metrics(Export::new()),
    );
    let threshold =
        |samples: &[Sample]| value(samples, "circuit_breaker_failure_rate_threshold", &[DB]);
    assert_eq!(
        threshold(&scrape(&recorder)),
        0.5,
        "before anything is learned"
    );
    run(&mut learned.svc, 20, Reply::Ok).await;
    assert_eq!(
        threshold(&scrape(&recorder)),
        0.2,
        "learned: all successes, the floor"
    );

    let recorder = PrometheusBuilder::new().build_recorder();
    let mut throttled = exported(
        &recorder,
        builder()
            .name("db")
            .adaptive_throttling(AdaptiveThrottle::new().seed(1))
            .export_metrics(Export::new()),
    );
    let p = |samples: &[Sample]| value(samples, "circuit_breaker_rejection_probability", &[DB]);
    assert_eq!(p(&scrape(&recorder)), 0.0);
    run(&mut throttled.svc, 10, Reply::Fail).await;
    let exported = p(&scrape(&recorder));
    assert_eq!(
        Some(exported),
        throttled.handle.metrics().rejection_probability()
    );
    assert!(exported > 0.5, "{exported}");
    assert!(!has(
        &scrape(&recorder),
        "circuit_breaker_failure_rate_threshold",
        &[DB]
    ));
}

/// A reconfiguration that turns a learned threshold on (or changes the configured one) shows in
/// the exported threshold at the next collection, as the threshold in force moves.
#[tokio::test(start_paused = true)]
async fn the_exported_threshold_follows_a_reconfiguration() {
    use tower_circuit_breaker::LearnedThreshold;
    let recorder = PrometheusBuilder::new().build_recorder();
    let mut h = exported(
        &recorder,
        builder()
            .name("db")
            .minimum_calls(10)
            .failure_rate_threshold(0.5)
            .export_metrics(Export::new()),
    );
    let threshold =
        |samples: &[Sample]| value(samples, "circuit_breaker_failure_rate_threshold", &[DB]);
    assert_eq!(threshold(&scrape(&recorder)), 0.5);
    let handle = h.handle.clone();
    handle
        .reconfigure(handle.config().failure_rate_threshold(0.4))
        .unwrap();
    assert_eq!(threshold(&scrape(&recorder)), 0.4, "the new configured one");
    handle
        .reconfigure(
            handle
                .config()
                .learned_failure_threshold(LearnedThreshold::new().bounds(0.2, 0.9)),
        )
        .unwrap();
    run(&mut h.svc, 20, Reply::Ok).await;
    assert_eq!(h.handle.metrics().failure_rate_threshold(), Some(0.2));
    assert_eq!(threshold(&scrape(&recorder)), 0.2, "the learned one");
}
