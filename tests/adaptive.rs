//! Adaptive client-side throttling (`Builder::adaptive_throttling`): the rejection probability
//! follows Envoy's formula over the sliding window, and a throttled call goes through the same
//! rejection path as an open circuit's (error, fallback, events, metrics).

mod support;

use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_circuit_breaker::error::Rejected;
use tower_circuit_breaker::{AdaptiveThrottle, CircuitBreakerLayer, Event, State};

use support::*;

/// How far the share of rejected calls may be from the formula's probability over [`DRAWS`]
/// draws: four standard deviations of a binomial share at p = 0.5 (0.0035 each).
const TOLERANCE: f64 = 0.015;
const DRAWS: usize = 20_000;

fn throttled(throttle: AdaptiveThrottle) -> Harness {
    harness(builder().adaptive_throttling(throttle))
}

/// Records calls until the throttle's window holds `accepts` successes and then `failures`
/// failures (a throttled failure is not counted, so it is tried again).
async fn fill(h: &mut Harness, accepts: u64, failures: u64) {
    for _ in 0..accepts {
        assert_admitted(&call(&mut h.svc, ok()).await);
    }
    let mut recorded = 0;
    while recorded < failures {
        if call(&mut h.svc, fail())
            .await
            .is_err_and(|e| !e.is::<Rejected>())
        {
            recorded += 1;
        }
    }
}

/// The share of `n` calls the throttle rejects, with calls that never complete, so that the
/// window (and the probability) stays the same for every draw.
async fn rejected_share(h: &mut Harness, n: usize) -> f64 {
    let mut rejected = 0;
    for _ in 0..n {
        let future = start(&mut h.svc, ok().after(secs(3600))).await;
        match future.now_or_never() {
            Some(Err(e)) if e.is::<Rejected>() => rejected += 1,
            Some(other) => panic!("an admitted call completed: {other:?}"),
            None => {} // admitted, in flight; dropped, it records nothing
        }
    }
    rejected as f64 / n as f64
}

#[tokio::test(start_paused = true)]
async fn the_rejection_probability_matches_the_formula_over_many_seeded_draws() {
    // (successes, failures, aggression, max rejection)
    let cases = [
        (50, 50, 1.0, 0.8),
        (80, 20, 1.0, 0.8),
        (90, 10, 1.0, 0.8),
        (60, 40, 2.0, 0.8),
        (70, 30, 0.5, 0.8),
        (10, 90, 1.0, 0.5),
    ];
    for (seed, (accepts, failures, aggression, max)) in cases.into_iter().enumerate() {
        let throttle = AdaptiveThrottle::new()
            .aggression(aggression)
            .max_rejection_probability(max)
            .seed(seed as u64);
        let mut h = throttled(throttle);
        fill(&mut h, accepts, failures).await;
        let expected = throttle.rejection_probability(accepts + failures, accepts);
        assert_eq!(h.handle.metrics().rejection_probability(), Some(expected));
        assert!(expected > 0.05, "a case that rejects: {expected}");
        let share = rejected_share(&mut h, DRAWS).await;
        assert!(
            (share - expected).abs() < TOLERANCE,
            "{accepts} ok, {failures} failed, aggression {aggression}: rejected {share}, formula {expected}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn nothing_is_rejected_at_or_above_the_success_threshold() {
    let mut h = throttled(AdaptiveThrottle::new().success_threshold(0.9).seed(1));
    fill(&mut h, 90, 10).await;
    assert_eq!(h.handle.metrics().rejection_probability(), Some(0.0));
    assert_eq!(rejected_share(&mut h, 1000).await, 0.0);
}

/// A disabled breaker records nothing, its throttle included: calls made while disabled leave the
/// rejection probability as it was.
#[tokio::test(start_paused = true)]
async fn calls_made_while_disabled_do_not_move_the_throttle() {
    let mut h = throttled(AdaptiveThrottle::new().success_threshold(0.9).seed(1));
    fill(&mut h, 90, 10).await;
    h.handle.disable();
    run(&mut h.svc, 50, Reply::Fail).await;
    assert_eq!(h.handle.metrics().rejection_probability(), Some(0.0));
}

#[tokio::test(start_paused = true)]
async fn a_throttled_call_is_rejected_like_an_open_circuits_with_state_closed() {
    let layer = builder()
        .name("search")
        .adaptive_throttling(
            AdaptiveThrottle::new()
                .max_rejection_probability(1.0)
                .seed(3),
        )
        .build()
        .unwrap();
    let inner = Inner::default();
    let counters = inner.counters();
    let mut svc = layer.layer(inner);
    let handle = svc.handle();
    let mut rejections = handle.subscribe().with_rejections();
    // 20 failures in a row: p = 20/21 after them; find a rejection.
    let mut seen = None;
    for _ in 0..200 {
        let polls = counters.polls();
        match call(&mut svc, fail()).await {
            Err(e) if e.is::<Rejected>() => {
                assert_eq!(counters.polls(), polls, "the inner service was not polled");
                seen = Some(rejected(&e).clone());
                break;
            }
            _ => {}
        }
    }
    let rejected = seen.expect("a failing dependency is throttled");
    assert_eq!(rejected.state(), State::Closed);
    assert_eq!(
        rejected.retry_after(),
        Some(Duration::from_secs(1)),
        "one bucket"
    );
    assert_eq!(rejected.name(), Some("search"));
    assert_eq!(
        rejected.to_string(),
        "circuit `search` throttled; retry after 1s"
    );
    let metrics = handle.metrics();
    assert_eq!(metrics.state(), State::Closed);
    assert_eq!(metrics.not_permitted(), 1);
    assert_eq!(metrics.totals().rejected(), 1);
    let event = rejections.next().now_or_never().flatten();
    assert!(
        matches!(
            event,
            Some(Event::Rejected {
                state: State::Closed,
                fallback: false,
                ..
            })
        ),
        "{event:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_throttled_call_goes_to_the_fallback() {
    let fallback = service_fn(|_: Req| async { Ok::<_, TestError>("cached") });
    let layer = builder()
        .adaptive_throttling(
            AdaptiveThrottle::new()
                .max_rejection_probability(1.0)
                .seed(5),
        )
        .build()
        .unwrap()
        .with_fallback(fallback);
    let mut svc = layer.layer(Inner::default());
    let handle = svc.handle();
    let mut answers = Vec::new();
    for _ in 0..100 {
        let answer = svc.ready().await.unwrap().call(fail()).await;
        answers.push(answer);
    }
    let cached = answers.iter().filter(|a| matches!(a, Ok("cached"))).count();
    assert!(cached > 50, "most calls of a failing dependency: {cached}");
    assert_eq!(handle.metrics().totals().fallbacks(), cached as u64);
}

#[tokio::test(start_paused = true)]
async fn the_window_slides_and_a_recovered_dependency_gets_all_calls_back() {
    let mut h = throttled(AdaptiveThrottle::new().window(secs(10)).seed(7));
    fill(&mut h, 0, 20).await;
    assert!(h.handle.metrics().rejection_probability().unwrap() > 0.5);
    advance(secs(9)).await;
    assert!(
        h.handle.metrics().rejection_probability().unwrap() > 0.5,
        "still in the window"
    );
    advance(secs(1)).await;
    assert_eq!(h.handle.metrics().rejection_probability(), Some(0.0));
    assert_eq!(rejected_share(&mut h, 1000).await, 0.0);
}

#[tokio::test(start_paused = true)]
async fn ignored_outcomes_count_in_neither_requests_nor_accepts() {
    let throttle = AdaptiveThrottle::new().seed(9);
    let mut h = throttled(throttle);
    fill(&mut h, 10, 10).await;
    let before = h.handle.metrics().rejection_probability();
    for _ in 0..50 {
        let _ = call(&mut h.svc, ignored()).await;
    }
    assert_eq!(h.handle.metrics().rejection_probability(), before);
    assert_eq!(before, Some(throttle.rejection_probability(20, 10)));
}

#[tokio::test(start_paused = true)]
async fn below_the_minimum_rate_nothing_is_rejected() {
    // 1 call a second over 10 s: 10 calls before anything is rejected.
    let throttle = AdaptiveThrottle::new()
        .window(secs(10))
        .min_requests_per_second(1.0)
        .seed(11);
    let mut h = throttled(throttle);
    for _ in 0..9 {
        assert_admitted(&call(&mut h.svc, fail()).await);
    }
    assert_eq!(h.handle.metrics().rejection_probability(), Some(0.0));
    assert_admitted(&call(&mut h.svc, fail()).await);
    assert!(h.handle.metrics().rejection_probability().unwrap() > 0.5);
}

#[tokio::test(start_paused = true)]
async fn throttling_alone_never_opens_the_circuit_and_a_trip_rule_beside_it_does() {
    let mut alone = throttled(AdaptiveThrottle::new().seed(13));
    run(&mut alone.svc, 1000, Reply::Fail).await;
    assert_eq!(alone.handle.state(), State::Closed);
    assert_eq!(alone.handle.metrics().failure_rate_threshold(), None);

    let mut backstop = harness(
        builder()
            .adaptive_throttling(AdaptiveThrottle::new().seed(13))
            .consecutive_failures(5),
    );
    run(&mut backstop.svc, 1000, Reply::Fail).await;
    assert_eq!(backstop.handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn metrics_only_records_without_throttling_and_a_reset_forgets_the_window() {
    let mut h = throttled(
        AdaptiveThrottle::new()
            .max_rejection_probability(1.0)
            .seed(17),
    );
    h.handle.metrics_only();
    let results = run(&mut h.svc, 100, Reply::Fail).await;
    assert!(
        results
            .iter()
            .all(|r| !r.as_ref().is_err_and(|e| e.is::<Rejected>()))
    );
    assert!(h.handle.metrics().rejection_probability().unwrap() > 0.9);
    h.handle.reset();
    assert_eq!(h.handle.metrics().rejection_probability(), Some(0.0));
}

#[tokio::test(start_paused = true)]
async fn a_seeded_throttle_rejects_the_same_calls_on_every_run() {
    async fn pattern() -> Vec<bool> {
        let mut h = throttled(AdaptiveThrottle::new().seed(42));
        let mut rejected = Vec::new();
        for i in 0..300 {
            let req = if i % 3 == 0 { ok() } else { fail() };
            rejected.push(
                call(&mut h.svc, req)
                    .await
                    .is_err_and(|e| e.is::<Rejected>()),
            );
        }
        rejected
    }
    let first = pattern().await;
    assert!(first.iter().any(|&r| r));
    assert_eq!(first, pattern().await);
}

#[test]
fn each_setting_out_of_range_is_a_config_error_naming_it() {
    let cases = [
        (
            AdaptiveThrottle::new().success_threshold(1.5),
            "adaptive_throttling.success_threshold",
        ),
        (
            AdaptiveThrottle::new().window(Duration::ZERO),
            "adaptive_throttling.window",
        ),
        (
            AdaptiveThrottle::new().aggression(-1.0),
            "adaptive_throttling.aggression",
        ),
        (
            AdaptiveThrottle::new().min_requests_per_second(f64::NAN),
            "adaptive_throttling.min_requests_per_second",
        ),
        (
            AdaptiveThrottle::new().max_rejection_probability(-0.1),
            "adaptive_throttling.max_rejection_probability",
        ),
    ];
    for (throttle, field) in cases {
        let err = CircuitBreakerLayer::builder()
            .adaptive_throttling(throttle)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), field);
        assert!(!err.allowed().is_empty());
    }
}

#[test]
fn a_reconfiguration_keeps_the_throttle_it_was_built_with() {
    let layer = CircuitBreakerLayer::builder()
        .adaptive_throttling(AdaptiveThrottle::new())
        .build()
        .unwrap();
    let handle = layer.handle();
    let changed = handle
        .config()
        .adaptive_throttling(AdaptiveThrottle::new().aggression(2.0));
    assert_eq!(
        handle.reconfigure(changed).unwrap_err().field(),
        "adaptive_throttling"
    );
    handle
        .reconfigure(handle.config().minimum_calls(10))
        .expect("another setting changes");
}

#[test]
fn concurrent_calls_are_all_counted_in_the_throttles_window() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    let throttle = AdaptiveThrottle::new()
        .window(secs(3600))
        .max_rejection_probability(0.5);
    let layer = CircuitBreakerLayer::builder()
        .adaptive_throttling(throttle)
        .build()
        .unwrap();
    let handle = layer.handle();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let svc = layer.layer(service_fn(move |i: u32| async move {
                    if (i + t) % 4 == 0 {
                        Err(std::io::Error::other("down"))
                    } else {
                        Ok(())
                    }
                }));
                tokio::spawn(async move {
                    for i in 0..2000 {
                        let _ = svc.clone().oneshot(i).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    let totals = handle.metrics().totals();
    let (requests, accepts) = (totals.successful() + totals.failed(), totals.successful());
    assert_eq!(requests + totals.rejected(), 16_000);
    assert!(totals.rejected() > 0, "a 25 % error rate is throttled");
    assert_eq!(
        handle.metrics().rejection_probability(),
        Some(throttle.rejection_probability(requests, accepts)),
        "no count was lost"
    );
}

#[tokio::test(start_paused = true)]
async fn successes_that_change_no_window_are_counted_too() {
    // A count window of 10 full of successes absorbs the next ones without its lock: the
    // throttle must count them all the same.
    let throttle = AdaptiveThrottle::new().seed(19);
    let mut h = harness(
        builder()
            .sliding_window(tower_circuit_breaker::Window::count(10))
            .adaptive_throttling(throttle),
    );
    fill(&mut h, 50, 20).await;
    assert_eq!(
        h.handle.metrics().rejection_probability(),
        Some(throttle.rejection_probability(70, 50))
    );
}

#[tokio::test(start_paused = true)]
async fn successes_while_the_window_holds_failures_are_counted_too() {
    // The window holds failures, so a success would join the open batch from the completion's
    // inline path: a throttling breaker's must go through `complete`, which counts them all.
    let throttle = AdaptiveThrottle::new().seed(23);
    let mut h = harness(
        builder()
            .sliding_window(tower_circuit_breaker::Window::count(1_000))
            .minimum_calls(1)
            .failure_rate_threshold(1.0)
            .adaptive_throttling(throttle),
    );
    fill(&mut h, 1, 20).await;
    let mut accepts = 0;
    while accepts < 50 {
        if call(&mut h.svc, ok()).await.is_ok() {
            accepts += 1;
        }
    }
    let m = h.handle.metrics();
    assert_eq!((m.calls(), m.failed()), (71, 20), "a window that batched");
    assert_eq!(
        m.rejection_probability(),
        Some(throttle.rejection_probability(71, 51))
    );
}

#[tokio::test(start_paused = true)]
async fn in_the_readiness_mode_a_throttled_call_waits_a_bucket_and_draws_again() {
    let layer = builder()
        .adaptive_throttling(AdaptiveThrottle::new().window(secs(60)).seed(23))
        .build()
        .unwrap()
        .pending_while_open();
    let mut svc = layer.layer(Inner::default());
    let started = tokio::time::Instant::now();
    // Every call is eventually admitted: a throttled `poll_ready` is woken one bucket later.
    for _ in 0..50 {
        let result = tokio::time::timeout(secs(3600), call(&mut svc, fail()))
            .await
            .expect("never stuck while throttled");
        assert_admitted(&result);
    }
    let waited = started.elapsed();
    assert!(
        waited >= secs(1),
        "some calls waited for a draw: {waited:?}"
    );
    assert!(svc.handle().metrics().rejection_probability().unwrap() > 0.5);
}

/// A `Buffer` in front of a throttling breaker in the readiness mode: the worker waits on the
/// throttled `poll_ready` and is woken a bucket later, so every caller's request is eventually
/// served (none wedged behind a throttled one), and a throttled poll does not spin.
#[tokio::test(start_paused = true)]
async fn a_buffer_in_front_of_a_throttled_readiness_mode_breaker_never_wedges() {
    let layer = builder()
        .adaptive_throttling(AdaptiveThrottle::new().window(secs(10)).seed(5))
        .build()
        .unwrap()
        .pending_while_open();
    let counts = Counts::default();
    let counted = Counted {
        inner: layer.layer(Inner::default()),
        counts: counts.clone(),
    };
    let svc = tower::buffer::Buffer::new(counted, 8);
    // Eight callers at once (joined on this task: the paused clock advances when all wait).
    let callers = (0..8).map(|_| {
        let mut svc = svc.clone();
        async move {
            for _ in 0..25 {
                let result = tokio::time::timeout(secs(3600), call(&mut svc, fail()))
                    .await
                    .expect("never wedged behind a throttled call");
                assert_admitted(&result);
            }
        }
    });
    let started = tokio::time::Instant::now();
    futures::future::join_all(callers).await;
    assert!(started.elapsed() >= secs(1), "some calls were throttled");
    // At most a few polls per call: each throttled poll waits a bucket (a spin would be
    // thousands).
    let (ready, calls) = (counts.ready(), counts.calls());
    assert_eq!(calls, 200);
    assert!(ready < 10 * calls, "{ready} polls for {calls} calls");
}

/// User code that panics, and an event callback that reads and resets the breaker from inside a
/// throttled rejection, while the throttle and a learned threshold both update: nothing is
/// wedged or poisoned, every call returns (or unwinds) and the breaker keeps working.
#[tokio::test(start_paused = true)]
async fn panicking_user_hooks_while_throttling_and_learning_wedge_nothing() {
    use std::panic::AssertUnwindSafe;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, OnceLock};
    use tower_circuit_breaker::{Handle, LearnedThreshold};

    let cell: Arc<OnceLock<Handle>> = Arc::new(OnceLock::new());
    let seen = Arc::new(AtomicUsize::new(0));
    let (in_callback, counted) = (cell.clone(), seen.clone());
    let layer = CircuitBreakerLayer::builder()
        .classify(|result: Result<&&'static str, &TestError>| match result {
            Err(TestError::Ignore) => panic!("a bug in the user's classifier"),
            other => classify(other),
        })
        .minimum_calls(10)
        .learned_failure_threshold(LearnedThreshold::new().bounds(0.2, 0.99))
        .adaptive_throttling(AdaptiveThrottle::new().seed(9))
        .on_event(move |event: &Event| {
            if let Event::Rejected { state, .. } = event {
                let handle = in_callback.get().expect("set");
                let _ = (handle.state(), handle.metrics());
                if *state == State::Closed && counted.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
                    handle.reset();
                    panic!("a bug in the user's callback");
                }
            }
        })
        .build()
        .unwrap();
    let mut svc = layer.layer(Inner::default());
    cell.set(svc.handle()).unwrap();
    for i in 0..300 {
        let req = match i % 7 {
            0 => ignored(), // the classifier panics
            1 | 2 => ok(),
            _ => fail(),
        };
        let _ = tokio::time::timeout(
            secs(60),
            AssertUnwindSafe(call(&mut svc, req)).catch_unwind(),
        )
        .await
        .expect("no call is wedged");
        if i % 10 == 0 {
            advance(Duration::from_millis(300)).await;
        }
    }
    assert!(seen.load(Ordering::SeqCst) > 0, "some calls were throttled");
    let handle = svc.handle();
    let metrics = handle.metrics();
    let p = metrics.rejection_probability().unwrap();
    assert!((0.0..=0.8).contains(&p), "{p}");
    let threshold = metrics.failure_rate_threshold().unwrap();
    assert!((0.2..=0.99).contains(&threshold), "{threshold}");
    handle.reset();
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.metrics().rejection_probability(), Some(0.0));
    assert_admitted(&call(&mut svc, ok()).await);
}
