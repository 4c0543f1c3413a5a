//! Failure-rate thresholds learned from history (`Builder::learned_failure_threshold`): the
//! threshold follows a baseline that moves, stays within its bounds, and never moves while the
//! breaker is open.

mod support;

use std::time::Duration;

use tower_circuit_breaker::{CircuitBreakerLayer, Event, LearnedThreshold, State, Window};

use support::*;

/// Calls a second in these tests.
const RATE: u64 = 10;

/// A driver of calls at [`RATE`] a second whose failures follow an error rate, spread evenly (a
/// Bresenham line, so that every window of 10 s holds the rate to a call).
struct Load {
    calls: u64,
    failures: u64,
}

impl Load {
    fn new() -> Self {
        Load {
            calls: 0,
            failures: 0,
        }
    }

    /// `seconds` of calls at `error_rate`; returns how many were rejected.
    async fn run(&mut self, h: &mut Harness, seconds: u64, error_rate: f64) -> u64 {
        let mut rejected = 0;
        for _ in 0..seconds * RATE {
            self.calls += 1;
            let due = (self.calls as f64 * error_rate).round() as u64;
            let req = if due > self.failures {
                self.failures = due;
                fail()
            } else {
                ok()
            };
            if call(&mut h.svc, req)
                .await
                .is_err_and(|e| e.is::<tower_circuit_breaker::error::Rejected>())
            {
                rejected += 1;
            }
            advance(Duration::from_millis(1000 / RATE)).await;
        }
        rejected
    }
}

fn learned() -> LearnedThreshold {
    LearnedThreshold::new()
        .horizon(secs(60))
        .factor(1.0)
        .margin(0.1)
        .bounds(0.15, 0.6)
}

fn breaker(learned: LearnedThreshold) -> Harness {
    harness(
        builder()
            .sliding_window(Window::time(secs(10)))
            .minimum_calls(50)
            .open_duration(secs(30))
            .learned_failure_threshold(learned),
    )
}

fn threshold(h: &Harness) -> f64 {
    h.handle.metrics().failure_rate_threshold().unwrap()
}

fn baseline(h: &Harness) -> f64 {
    h.handle.metrics().baseline_failure_rate().unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_learned_threshold_follows_a_moving_baseline_and_stays_within_its_bounds() {
    let learned = learned();
    let mut h = breaker(learned);
    let mut load = Load::new();
    // 5 min at 5 %: the baseline settles there, the threshold at its floor (5 % + 10 % = 15 %).
    load.run(&mut h, 300, 0.05).await;
    assert!((baseline(&h) - 0.05).abs() < 0.01, "{}", baseline(&h));
    assert_eq!(threshold(&h), 0.15);
    // The error rate creeps up one point every 20 s to 55 %: the baseline follows it, so the
    // breaker, whose window never runs 10 points ahead of the baseline, stays closed.
    let mut rate = 0.05;
    while rate < 0.55 {
        rate += 0.01;
        assert_eq!(load.run(&mut h, 20, rate).await, 0, "at {rate}");
        assert_eq!(h.handle.state(), State::Closed, "at {rate}");
        let t = threshold(&h);
        assert!((0.15..=0.6).contains(&t), "{t}");
        assert_eq!(t, learned.threshold_for(baseline(&h)));
        // The baseline lags the rate by about its slope times the horizon (3 points here).
        assert!(rate - baseline(&h) < 0.05, "{rate} {}", baseline(&h));
    }
    assert_eq!(threshold(&h), 0.6, "a noisy day, capped at the ceiling");
    // Above the ceiling: 70 % opens the breaker, however long the history.
    load.run(&mut h, 10, 0.7).await;
    assert_eq!(h.handle.state(), State::Open);
    assert_eq!(threshold(&h), 0.6);
}

#[tokio::test(start_paused = true)]
async fn a_quiet_dependency_gets_a_strict_threshold_that_a_fixed_one_would_not_have() {
    let mut learned_breaker = breaker(learned());
    let mut fixed = harness(
        builder()
            .sliding_window(Window::time(secs(10)))
            .minimum_calls(50)
            .failure_rate_threshold(0.5),
    );
    let mut states = Vec::new();
    for h in [&mut learned_breaker, &mut fixed] {
        let mut load = Load::new();
        load.run(h, 300, 0.01).await;
        // A partial outage: 30 % of calls fail.
        load.run(h, 10, 0.3).await;
        states.push(h.handle.state());
    }
    assert_eq!(states, [State::Open, State::Closed], "learned, fixed");
}

#[tokio::test(start_paused = true)]
async fn the_threshold_never_moves_while_the_breaker_is_open_or_half_open() {
    let mut h = harness(
        builder()
            .sliding_window(Window::time(secs(10)))
            .minimum_calls(50)
            .open_duration(secs(30))
            .half_open_calls(5)
            .half_open_successes(3)
            .learned_failure_threshold(learned()),
    );
    let mut load = Load::new();
    load.run(&mut h, 300, 0.05).await;
    load.run(&mut h, 2, 1.0).await;
    assert_eq!(h.handle.state(), State::Open);
    let (at_open, baseline_at_open) = (threshold(&h), baseline(&h));
    // Rejected calls, time passing (longer than the horizon), probes that fail.
    assert_eq!(load.run(&mut h, 20, 0.0).await, 20 * RATE, "all rejected");
    assert_eq!(threshold(&h), at_open);
    advance(secs(600)).await;
    assert_eq!(h.handle.state(), State::HalfOpen);
    for _ in 0..2 {
        let _ = call(&mut h.svc, fail()).await;
    }
    assert_eq!(h.handle.state(), State::HalfOpen);
    assert_eq!(threshold(&h), at_open);
    assert_eq!(baseline(&h), baseline_at_open);
    // Closed again: the time spent open did not age the baseline.
    for _ in 0..3 {
        let _ = call(&mut h.svc, ok()).await;
    }
    assert_eq!(h.handle.state(), State::Closed);
    let _ = call(&mut h.svc, ok()).await;
    assert!(
        (baseline(&h) - baseline_at_open).abs() < 0.01,
        "{} {baseline_at_open}",
        baseline(&h)
    );
}

#[tokio::test(start_paused = true)]
async fn before_the_minimum_the_configured_threshold_applies_within_the_bounds() {
    let h = harness(
        builder()
            .failure_rate_threshold(0.9)
            .learned_failure_threshold(learned()),
    );
    assert_eq!(threshold(&h), 0.6, "0.9 clamped to the ceiling");
    assert_eq!(h.handle.metrics().baseline_failure_rate(), None);
    let mut h = breaker(learned());
    assert_eq!(threshold(&h), 0.5, "the default, within the bounds");
    // 49 outcomes: below `minimum_calls`, the threshold has not moved yet.
    for _ in 0..49 {
        let _ = call(&mut h.svc, ok()).await;
    }
    assert_eq!(threshold(&h), 0.5);
    let _ = call(&mut h.svc, ok()).await;
    assert_eq!(threshold(&h), 0.15);
}

#[tokio::test(start_paused = true)]
async fn a_reset_forgets_the_baseline() {
    let mut h = breaker(learned());
    Load::new().run(&mut h, 60, 0.05).await;
    assert_eq!(threshold(&h), 0.15);
    h.handle.reset();
    assert_eq!(threshold(&h), 0.5);
    assert_eq!(h.handle.metrics().baseline_failure_rate(), None);
}

#[tokio::test(start_paused = true)]
async fn the_threshold_event_carries_the_learned_threshold() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let mut h = harness(
        builder()
            .sliding_window(Window::time(secs(10)))
            .minimum_calls(50)
            .learned_failure_threshold(learned())
            .on_event(move |event: &Event| {
                if let Event::FailureRateExceeded { threshold, .. } = event {
                    log.lock().unwrap().push(*threshold);
                }
            }),
    );
    let mut load = Load::new();
    load.run(&mut h, 120, 0.0).await;
    load.run(&mut h, 10, 0.5).await;
    assert_eq!(h.handle.state(), State::Open);
    assert_eq!(*seen.lock().unwrap(), [0.15]);
}

#[test]
fn each_setting_out_of_range_is_a_config_error_naming_it() {
    let cases = [
        (
            LearnedThreshold::new().horizon(Duration::ZERO),
            "learned_failure_threshold.horizon",
        ),
        (
            LearnedThreshold::new().factor(-0.5),
            "learned_failure_threshold.factor",
        ),
        (
            LearnedThreshold::new().margin(2.0),
            "learned_failure_threshold.margin",
        ),
        (
            LearnedThreshold::new().bounds(0.5, 0.4),
            "learned_failure_threshold.bounds",
        ),
    ];
    for (learned, field) in cases {
        let err = CircuitBreakerLayer::builder()
            .learned_failure_threshold(learned)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), field, "{err}");
    }
}

#[test]
fn a_learned_threshold_turns_the_failure_rate_rule_on_beside_another_rule() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(5)
        .learned_failure_threshold(LearnedThreshold::new())
        .build()
        .unwrap();
    assert_eq!(layer.handle().metrics().failure_rate_threshold(), Some(0.5));
}

/// A reconfiguration that changes the configured threshold or the minimum, and not the learning
/// parameters, keeps the baseline; the threshold in force follows the new settings at once:
/// before the minimum, the new configured threshold (within the bounds), past it the learned one.
#[tokio::test(start_paused = true)]
async fn a_reconfigured_threshold_or_minimum_applies_at_once_to_the_learned_threshold() {
    let mut h = breaker(learned());
    Load::new().run(&mut h, 1, 0.0).await; // 10 successes, below the minimum of 50
    assert_eq!(threshold(&h), 0.5);
    let handle = h.handle.clone();
    handle
        .reconfigure(handle.config().failure_rate_threshold(0.3))
        .unwrap();
    assert_eq!(threshold(&h), 0.3, "the new configured threshold");
    handle
        .reconfigure(handle.config().failure_rate_threshold(0.9))
        .unwrap();
    assert_eq!(threshold(&h), 0.6, "within the bounds");
    handle
        .reconfigure(handle.config().minimum_calls(10))
        .unwrap();
    assert_eq!(
        threshold(&h),
        0.15,
        "past the minimum: learned (all successes: the floor)"
    );
}

/// Many tasks on a multi-thread runtime record outcomes while others read the metrics: no
/// outcome is lost from the lifetime counts, and every threshold and baseline read is a number
/// within its range (never NaN, never outside the bounds), however the updates interleave.
#[test]
fn concurrent_outcomes_and_readers_see_the_learned_threshold_within_its_bounds() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let layer = builder()
            .minimum_calls(20)
            // Never opens (only a failure rate of 1 would), so that every call is recorded.
            .learned_failure_threshold(learned().bounds(1.0, 1.0).factor(0.0))
            .build()
            .unwrap();
        let handle = layer.handle();
        let writers: Vec<_> = (0..8)
            .map(|t| {
                let layer = layer.clone();
                tokio::spawn(async move {
                    use tower::{Layer, Service, ServiceExt};
                    let mut svc = layer.layer(Inner::default());
                    for i in 0..500u32 {
                        let req = if (i + t) % 3 == 0 { fail() } else { ok() };
                        let _ = svc.ready().await.unwrap().call(req).await;
                    }
                })
            })
            .collect();
        let reader = {
            let handle = handle.clone();
            tokio::spawn(async move {
                for _ in 0..2_000 {
                    let m = handle.metrics();
                    assert_eq!(m.failure_rate_threshold(), Some(1.0));
                    if let Some(b) = m.baseline_failure_rate() {
                        assert!((0.0..=1.0).contains(&b), "{b}");
                    }
                    tokio::task::yield_now().await;
                }
            })
        };
        for writer in writers {
            writer.await.unwrap();
        }
        reader.await.unwrap();
        let m = handle.metrics();
        assert_eq!(m.state(), State::Closed);
        assert_eq!(m.totals().successful() + m.totals().failed(), 4_000);
        let baseline = m.baseline_failure_rate().unwrap();
        assert!((baseline - 1.0 / 3.0).abs() < 0.01, "{baseline}");
    });
}
