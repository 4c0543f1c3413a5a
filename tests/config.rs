//! `Builder::build` validation: every value out of range is a `ConfigError` that names the field,
//! the value and the allowed range; every value at the edge of its range builds.

mod support;

use std::time::Duration;

use tower_circuit_breaker::{Backoff, Builder, CircuitBreakerLayer, ConfigError, Window};

fn base() -> Builder {
    CircuitBreakerLayer::builder()
}

/// Builds `builder`, expecting an error for `field` whose value shows `value` and whose allowed
/// range shows `allowed`, all three in the message.
#[track_caller]
fn rejects(builder: Builder, field: &str, value: &str, allowed: &str) -> ConfigError {
    let err = builder.build().expect_err("an invalid configuration");
    assert_eq!(err.field(), field, "{err}");
    assert!(
        err.value().to_lowercase().contains(&value.to_lowercase()),
        "value {:?} should show {value:?}",
        err.value()
    );
    assert!(
        err.allowed().contains(allowed),
        "allowed {:?} should show {allowed:?}",
        err.allowed()
    );
    let message = err.to_string();
    assert_eq!(
        message,
        format!(
            "invalid `{}`: {} (allowed: {})",
            err.field(),
            err.value(),
            err.allowed()
        )
    );
    // An error users can `?` into tower's `BoxError` (it is `Error + Send + Sync + 'static`, or
    // this does not compile) and get back by downcasting, unchanged.
    let boxed = tower::BoxError::from(err.clone());
    assert_eq!(boxed.to_string(), message);
    assert_eq!(boxed.downcast_ref::<ConfigError>(), Some(&err));
    err
}

#[track_caller]
fn builds(builder: Builder) {
    if let Err(e) = builder.build() {
        panic!("should build: {e}");
    }
}

#[test]
fn failure_rate_threshold_must_be_in_zero_exclusive_to_one() {
    for (rate, shown) in [
        (0.0, "0.0"),
        (-0.5, "-0.5"),
        (1.000_001, "1.000001"),
        (f64::NAN, "NaN"),
        (f64::INFINITY, "inf"),
    ] {
        rejects(
            base().failure_rate_threshold(rate),
            "failure_rate_threshold",
            shown,
            "(0, 1]",
        );
    }
    let err = base().failure_rate_threshold(1.5).build().unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid `failure_rate_threshold`: 1.5 (allowed: (0, 1])"
    );
    builds(base().failure_rate_threshold(1.0));
    builds(base().failure_rate_threshold(f64::MIN_POSITIVE));
}

#[test]
fn slow_call_rate_threshold_must_be_in_zero_exclusive_to_one() {
    for (rate, shown) in [(0.0, "0.0"), (1.5, "1.5"), (f64::NAN, "NaN")] {
        rejects(
            base().slow_call_rate_threshold(rate),
            "slow_call_rate_threshold",
            shown,
            "(0, 1]",
        );
    }
    builds(base().slow_call_rate_threshold(1.0));
    builds(base().slow_call_rate_threshold(0.01));
}

#[test]
fn slow_call_duration_must_be_more_than_zero() {
    rejects(
        base().slow_call_duration(Duration::ZERO),
        "slow_call_duration",
        "0ns",
        "more than 0",
    );
    builds(base().slow_call_duration(Duration::from_nanos(1)));
}

#[test]
fn count_window_must_hold_one_to_2_pow_20_calls() {
    rejects(
        base().sliding_window(Window::count(0)),
        "sliding_window",
        "count(0)",
        "1..=1048576",
    );
    rejects(
        base().sliding_window(Window::count((1 << 20) + 1)),
        "sliding_window",
        "1048577",
        "1..=1048576",
    );
    builds(base().sliding_window(Window::count(1)));
    builds(base().sliding_window(Window::count(1 << 20)));
}

#[test]
fn time_window_needs_one_to_4096_buckets_of_at_least_a_millisecond() {
    let allowed = "1..=4096";
    for (window, shown) in [
        (Window::time(Duration::from_secs(1)).buckets(0), "buckets"),
        (Window::time(Duration::from_secs(10)).buckets(4097), "4097"),
        // d / k under 1 ms.
        (Window::time(Duration::from_secs(1)).buckets(1001), "1001"),
        (Window::time(Duration::from_micros(999)), "999"),
        (Window::time(Duration::ZERO), "0ns"),
    ] {
        let err = rejects(
            base().sliding_window(window),
            "sliding_window",
            shown,
            allowed,
        );
        assert!(err.allowed().contains("1 ms"), "{err}");
    }
    builds(base().sliding_window(Window::time(Duration::from_millis(1))));
    builds(base().sliding_window(Window::time(Duration::from_secs(1)).buckets(1000)));
    builds(base().sliding_window(Window::time(Duration::from_millis(4096)).buckets(4096)));
    // More than 4096 seconds: the default is capped at 4096 buckets.
    builds(base().sliding_window(Window::time(Duration::from_secs(7200))));
}

#[test]
fn minimum_calls_must_be_one_to_2_pow_20() {
    rejects(base().minimum_calls(0), "minimum_calls", "0", "1..=1048576");
    rejects(
        base().minimum_calls((1 << 20) + 1),
        "minimum_calls",
        "1048577",
        "1..=1048576",
    );
    builds(base().minimum_calls(1));
    builds(base().minimum_calls(1 << 20));
    // Above the size of a count window is fine: it is capped.
    builds(base().sliding_window(Window::count(10)).minimum_calls(1000));
}

#[test]
fn consecutive_failures_must_be_at_least_one() {
    rejects(
        base().consecutive_failures(0),
        "consecutive_failures",
        "0",
        "at least 1",
    );
    builds(base().consecutive_failures(1));
    builds(base().consecutive_failures(u32::MAX));
}

#[test]
fn open_duration_must_be_more_than_zero() {
    rejects(
        base().open_duration(Duration::ZERO),
        "open_duration",
        "0ns",
        "more than 0",
    );
    builds(base().open_duration(Duration::from_nanos(1)));
}

#[test]
fn open_duration_is_validated_even_when_open_backoff_is_set() {
    let backoff = Backoff::exponential(Duration::from_secs(1), 2.0, Duration::from_secs(10));
    rejects(
        base().open_duration(Duration::ZERO).open_backoff(backoff),
        "open_duration",
        "0ns",
        "more than 0",
    );
    rejects(
        base().open_backoff(backoff).open_duration(Duration::ZERO),
        "open_duration",
        "0ns",
        "more than 0",
    );
    builds(
        base()
            .open_duration(Duration::from_nanos(1))
            .open_backoff(backoff),
    );
}

#[test]
fn open_backoff_must_have_valid_initial_multiplier_max_and_jitter() {
    let secs = Duration::from_secs;
    let cases = [
        (
            Backoff::exponential(Duration::ZERO, 2.0, secs(1)),
            "initial: 0ns",
            "initial more than 0",
        ),
        (
            Backoff::exponential(secs(1), 0.5, secs(10)),
            "multiplier: 0.5",
            "multiplier finite and at least 1",
        ),
        (
            Backoff::exponential(secs(1), f64::NAN, secs(10)),
            "multiplier: NaN",
            "multiplier finite and at least 1",
        ),
        (
            Backoff::exponential(secs(1), f64::INFINITY, secs(10)),
            "multiplier: inf",
            "multiplier finite and at least 1",
        ),
        (
            Backoff::exponential(secs(10), 2.0, secs(1)),
            "max: 1s",
            "max at least initial",
        ),
        (
            Backoff::exponential(secs(1), 2.0, secs(10)).jitter(-0.1),
            "jitter: -0.1",
            "jitter in [0, 1]",
        ),
        (
            Backoff::exponential(secs(1), 2.0, secs(10)).jitter(1.5),
            "jitter: 1.5",
            "jitter in [0, 1]",
        ),
        (
            Backoff::exponential(secs(1), 2.0, secs(10)).jitter(f64::NAN),
            "jitter: NaN",
            "jitter in [0, 1]",
        ),
    ];
    for (backoff, shown, allowed) in cases {
        rejects(base().open_backoff(backoff), "open_backoff", shown, allowed);
    }
    builds(base().open_backoff(Backoff::exponential(secs(1), 1.0, secs(1))));
    builds(base().open_backoff(Backoff::exponential(secs(1), 2.0, secs(10)).jitter(0.0)));
    builds(base().open_backoff(Backoff::exponential(secs(1), 2.0, secs(10)).jitter(1.0)));
}

#[test]
fn half_open_calls_must_be_one_to_4095() {
    rejects(
        base().half_open_calls(0),
        "half_open_calls",
        "0",
        "1..=4095",
    );
    rejects(
        base().half_open_calls(4096),
        "half_open_calls",
        "4096",
        "1..=4095",
    );
    builds(base().half_open_calls(1));
    builds(base().half_open_calls(4095));
}

#[test]
fn half_open_successes_must_be_one_to_half_open_calls() {
    rejects(
        base().half_open_calls(3).half_open_successes(0),
        "half_open_successes",
        "0",
        "1..=3",
    );
    let err = rejects(
        base().half_open_calls(3).half_open_successes(4),
        "half_open_successes",
        "4",
        "1..=3",
    );
    assert!(err.allowed().contains("half_open_calls"), "{err}");
    // The default half_open_calls is 1.
    rejects(
        base().half_open_successes(2),
        "half_open_successes",
        "2",
        "1..=1",
    );
    builds(base().half_open_calls(3).half_open_successes(3));
    builds(base().half_open_calls(3).half_open_successes(1));
}

#[test]
fn half_open_max_wait_must_be_more_than_zero() {
    rejects(
        base().half_open_max_wait(Duration::ZERO),
        "half_open_max_wait",
        "0ns",
        "more than 0",
    );
    builds(base().half_open_max_wait(Duration::from_nanos(1)));
}

#[test]
fn call_timeout_must_be_more_than_zero() {
    rejects(
        base().call_timeout(Duration::ZERO),
        "call_timeout",
        "0ns",
        "more than 0",
    );
    builds(base().call_timeout(Duration::from_nanos(1)));
}

#[test]
fn defaults_build() {
    builds(base());
    builds(
        base()
            .name("everything")
            .failure_rate_threshold(0.5)
            .slow_call_rate_threshold(0.5)
            .slow_call_duration(Duration::from_secs(1))
            .sliding_window(Window::time(Duration::from_secs(60)).buckets(60))
            .minimum_calls(10)
            .consecutive_failures(5)
            .open_backoff(
                Backoff::exponential(Duration::from_secs(1), 2.0, Duration::from_secs(60))
                    .jitter(0.1),
            )
            .half_open_calls(5)
            .half_open_successes(3)
            .half_open_max_wait(Duration::from_secs(30))
            .call_timeout(Duration::from_secs(5)),
    );
}

#[test]
fn classify_keeps_the_validation() {
    let err = support::builder()
        .minimum_calls(0)
        .build()
        .expect_err("invalid");
    assert_eq!(err.field(), "minimum_calls");
}

/// Jitter moves an interval by up to its whole length with `jitter(1.0)`; the result is still at
/// least 1 ms (never zero). Each rejection right after a trip (no time passed) shows the whole
/// interval; with a 1 ms base, half of the unfloored intervals would fall below 1 ms.
#[tokio::test(start_paused = true)]
async fn a_fully_jittered_open_interval_is_at_least_a_millisecond() {
    let max = Duration::from_millis(1);
    let backoff = Backoff::exponential(Duration::from_millis(1), 1.0, max).jitter(1.0);
    let support::Harness {
        mut svc, handle, ..
    } = support::harness(
        support::builder()
            .consecutive_failures(1)
            .open_backoff(backoff),
    );
    for trip in 0..64 {
        support::assert_admitted(&support::call(&mut svc, support::fail()).await);
        let rejected = support::rejection(support::call(&mut svc, support::ok()).await);
        let interval = rejected.retry_after().expect("open: a known retry-after");
        assert!(
            interval >= Duration::from_millis(1) && interval <= max,
            "trip {trip}: open for {interval:?}"
        );
        handle.reset();
    }
}

/// A builder's Debug shows every setting but the classifier; an event callback (a closure) shows
/// as its type.
#[test]
fn a_builders_debug_shows_an_event_callback_by_its_type() {
    let builder = CircuitBreakerLayer::builder().on_event(|_| {});
    let shown = format!("{builder:?}");
    assert!(shown.contains("on_event: Some(EventCallback)"), "{shown}");
}
