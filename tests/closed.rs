//! DESIGN §3, Closed: the sliding windows, the thresholds, consecutive failures and slow calls.

mod support;

use std::time::Duration;

use support::*;
use tower::Layer;
use tower_circuit_breaker::{CircuitBreakerLayer, State, Window};

/// A count window of `n` with `minimum_calls` and a failure-rate threshold.
fn counting(n: u32, minimum: u32, threshold: f64) -> Harness {
    harness(
        builder()
            .sliding_window(Window::count(n))
            .minimum_calls(minimum)
            .failure_rate_threshold(threshold)
            .open_duration(secs(30)),
    )
}

/// Starts a gated call, lets `latency` pass on the paused clock, then answers it.
async fn timed(
    svc: &mut Svc,
    reply: Reply,
    latency: Duration,
) -> Result<&'static str, tower::BoxError> {
    let (req, gate) = gated();
    let future = start(svc, req).await;
    advance(latency).await;
    gate.open(reply);
    future.await
}

#[tokio::test(start_paused = true)]
async fn failure_rate_is_undefined_below_minimum_calls() {
    let Harness {
        mut svc, handle, ..
    } = counting(20, 10, 0.5);

    for results in run(&mut svc, 9, Reply::Fail).await {
        assert_admitted(&results);
    }
    let metrics = handle.metrics();
    assert_eq!(metrics.calls(), 9);
    assert_eq!(metrics.failed(), 9);
    assert_eq!(metrics.failure_rate(), None, "9 of 10 minimum calls");
    assert_eq!(metrics.slow_call_rate(), None);
    assert_eq!(
        handle.state(),
        State::Closed,
        "9 failures out of 9 must not trip"
    );

    call(&mut svc, fail()).await.unwrap_err();
    assert_eq!(
        handle.state(),
        State::Open,
        "the 10th outcome defines the rate"
    );
}

#[tokio::test(start_paused = true)]
async fn count_window_minimum_is_capped_at_window_size() {
    // minimum_calls 100 can never be reached by a window of 4: it is capped at 4.
    let Harness {
        mut svc, handle, ..
    } = counting(4, 100, 0.5);

    run(&mut svc, 3, Reply::Ok).await;
    assert_eq!(handle.metrics().failure_rate(), None);
    run(&mut svc, 1, Reply::Ok).await;
    assert_eq!(handle.metrics().failure_rate(), Some(0.0));

    call(&mut svc, fail()).await.unwrap_err();
    assert_eq!(handle.state(), State::Closed, "1 of 4 failed");
    call(&mut svc, fail()).await.unwrap_err();
    assert_eq!(
        handle.state(),
        State::Open,
        "2 of the last 4 failed: 0.5 >= 0.5"
    );
}

#[tokio::test(start_paused = true)]
async fn trips_when_failure_rate_reaches_threshold_exactly() {
    let Harness {
        mut svc,
        handle,
        counters,
    } = counting(10, 10, 0.5);

    run(&mut svc, 5, Reply::Ok).await;
    for result in run(&mut svc, 4, Reply::Fail).await {
        assert_admitted(&result);
    }
    assert_eq!(handle.state(), State::Closed, "4 of 9 failed");

    let tripping = call(&mut svc, fail()).await;
    assert_admitted(&tripping);
    assert_eq!(handle.metrics().failure_rate(), Some(0.5));
    assert_eq!(handle.state(), State::Open, "5 of 10 failed: 0.5 >= 0.5");

    let inner_calls = counters.calls();
    rejection(call(&mut svc, ok()).await);
    assert_eq!(counters.calls(), inner_calls);
}

#[tokio::test(start_paused = true)]
async fn does_not_trip_below_failure_rate_threshold() {
    let Harness {
        mut svc, handle, ..
    } = counting(10, 10, 0.5);

    run(&mut svc, 6, Reply::Ok).await;
    run(&mut svc, 4, Reply::Fail).await;
    assert_eq!(handle.metrics().failure_rate(), Some(0.4));
    assert_eq!(handle.state(), State::Closed, "4 of 10 failed: 0.4 < 0.5");
}

#[tokio::test(start_paused = true)]
async fn trips_when_failure_rate_reaches_a_threshold_of_one() {
    let Harness {
        mut svc, handle, ..
    } = counting(4, 4, 1.0);

    run(&mut svc, 1, Reply::Ok).await;
    run(&mut svc, 3, Reply::Fail).await;
    assert_eq!(handle.state(), State::Closed, "3 of 4 failed");
    run(&mut svc, 1, Reply::Fail).await;
    assert_eq!(
        handle.state(),
        State::Open,
        "4 of the last 4 failed: 1.0 >= 1.0"
    );
}

fn slow_tracking(threshold: f64) -> Harness {
    harness(
        builder()
            .sliding_window(Window::count(10))
            .minimum_calls(10)
            .failure_rate_threshold(1.0)
            .slow_call_duration(secs(1))
            .slow_call_rate_threshold(threshold),
    )
}

#[tokio::test(start_paused = true)]
async fn trips_when_slow_call_rate_reaches_threshold_exactly() {
    let Harness {
        mut svc, handle, ..
    } = slow_tracking(0.5);

    run(&mut svc, 5, Reply::Ok).await;
    for _ in 0..4 {
        timed(&mut svc, Reply::Ok, secs(2)).await.unwrap();
    }
    assert_eq!(handle.state(), State::Closed, "4 of 9 slow");
    timed(&mut svc, Reply::Ok, secs(2)).await.unwrap();
    let metrics = handle.metrics();
    assert_eq!(metrics.slow(), 5);
    assert_eq!(metrics.failed(), 0);
    assert_eq!(metrics.slow_call_rate(), Some(0.5));
    assert_eq!(handle.state(), State::Open, "5 of 10 slow: 0.5 >= 0.5");
}

#[tokio::test(start_paused = true)]
async fn does_not_trip_below_slow_call_rate_threshold() {
    let Harness {
        mut svc, handle, ..
    } = slow_tracking(0.5);

    run(&mut svc, 6, Reply::Ok).await;
    for _ in 0..4 {
        timed(&mut svc, Reply::Ok, secs(2)).await.unwrap();
    }
    assert_eq!(handle.metrics().slow_call_rate(), Some(0.4));
    assert_eq!(handle.state(), State::Closed, "4 of 10 slow: 0.4 < 0.5");
}

#[tokio::test(start_paused = true)]
async fn success_trips_when_it_brings_the_window_to_the_minimum() {
    let Harness {
        mut svc, handle, ..
    } = counting(10, 10, 0.5);

    run(&mut svc, 5, Reply::Fail).await;
    run(&mut svc, 4, Reply::Ok).await;
    assert_eq!(handle.state(), State::Closed, "9 outcomes: rate undefined");

    let result = call(&mut svc, ok()).await;
    assert_eq!(
        result.unwrap(),
        "ok",
        "the tripping call keeps its own result"
    );
    assert_eq!(
        handle.state(),
        State::Open,
        "the 10th outcome, a success, makes 5/10"
    );
}

#[tokio::test(start_paused = true)]
async fn success_trips_a_time_window_when_it_brings_the_window_to_the_minimum() {
    let Harness {
        mut svc, handle, ..
    } = harness(
        builder()
            .sliding_window(Window::time(secs(10)))
            .minimum_calls(4)
            .failure_rate_threshold(0.5),
    );

    run(&mut svc, 2, Reply::Fail).await;
    advance(secs(1)).await;
    run(&mut svc, 1, Reply::Ok).await;
    assert_eq!(handle.state(), State::Closed);
    run(&mut svc, 1, Reply::Ok).await;
    assert_eq!(handle.state(), State::Open, "2 of 4 failed");
}

#[tokio::test(start_paused = true)]
async fn slow_success_trips_when_it_brings_the_window_to_the_minimum() {
    let Harness {
        mut svc, handle, ..
    } = slow_tracking(0.5);

    for _ in 0..5 {
        timed(&mut svc, Reply::Ok, secs(2)).await.unwrap();
    }
    run(&mut svc, 4, Reply::Ok).await;
    assert_eq!(handle.state(), State::Closed, "9 outcomes: rate undefined");
    run(&mut svc, 1, Reply::Ok).await;
    assert_eq!(
        handle.state(),
        State::Open,
        "a fast success makes 5 slow of 10"
    );
}

fn consecutive(n: u32) -> Harness {
    // The default window (100 calls, minimum 100) never trips in these tests.
    harness(builder().consecutive_failures(n))
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_trip() {
    let Harness {
        mut svc, handle, ..
    } = consecutive(3);

    run(&mut svc, 2, Reply::Fail).await;
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.metrics().consecutive_failures(), 2);
    assert_admitted(&call(&mut svc, fail()).await);
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn success_resets_the_consecutive_failure_count() {
    let Harness {
        mut svc, handle, ..
    } = consecutive(3);

    run(&mut svc, 2, Reply::Fail).await;
    run(&mut svc, 1, Reply::Ok).await;
    assert_eq!(handle.metrics().consecutive_failures(), 0);
    run(&mut svc, 2, Reply::Fail).await;
    assert_eq!(
        handle.state(),
        State::Closed,
        "only 2 in a row since the success"
    );
    run(&mut svc, 1, Reply::Fail).await;
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn ignored_outcome_leaves_the_consecutive_failure_count() {
    let Harness {
        mut svc, handle, ..
    } = consecutive(3);

    run(&mut svc, 2, Reply::Fail).await;
    run(&mut svc, 3, Reply::Ignore).await;
    assert_eq!(handle.metrics().consecutive_failures(), 2);
    assert_eq!(handle.state(), State::Closed);
    run(&mut svc, 1, Reply::Fail).await;
    assert_eq!(
        handle.state(),
        State::Open,
        "ignored outcomes neither reset nor count"
    );
}

#[tokio::test(start_paused = true)]
async fn call_is_slow_only_when_strictly_longer_than_slow_call_duration() {
    let Harness {
        mut svc, handle, ..
    } = harness(
        builder()
            .sliding_window(Window::count(10))
            .minimum_calls(10)
            .slow_call_duration(secs(1)),
    );

    timed(&mut svc, Reply::Ok, secs(1)).await.unwrap();
    assert_eq!(
        handle.metrics().slow(),
        0,
        "exactly the slow-call duration is not slow"
    );
    timed(&mut svc, Reply::Ok, secs(1) + NS).await.unwrap();
    assert_eq!(handle.metrics().slow(), 1, "one nanosecond more is slow");
    timed(&mut svc, Reply::Ok, secs(1) - NS).await.unwrap();
    assert_eq!(handle.metrics().slow(), 1);
    assert_eq!(handle.metrics().calls(), 3);
}

/// A slow call that leaves the window takes its slow count with it: from a count window when
/// newer calls push it out, from a time window when its bucket leaves (one bucket at a time).
#[tokio::test(start_paused = true)]
async fn a_slow_call_leaving_the_window_takes_its_slow_count_with_it() {
    for window in [Window::count(2), Window::time(secs(10)).buckets(10)] {
        let Harness {
            mut svc, handle, ..
        } = harness(
            builder()
                .sliding_window(window)
                .minimum_calls(2)
                .slow_call_duration(secs(1)),
        );
        timed(&mut svc, Reply::Ok, secs(2)).await.unwrap();
        assert_eq!(handle.metrics().slow(), 1, "{window:?}");
        advance(secs(9)).await;
        assert_eq!(handle.metrics().slow(), 1, "{window:?}: 9 s later, inside");
        advance(secs(1)).await;
        run(&mut svc, 2, Reply::Ok).await;
        let metrics = handle.metrics();
        assert_eq!(
            (metrics.calls(), metrics.slow()),
            (2, 0),
            "{window:?}: the slow call left"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn slow_failure_counts_as_both_failure_and_slow() {
    let Harness {
        mut svc, handle, ..
    } = harness(
        builder()
            .sliding_window(Window::count(2))
            .minimum_calls(2)
            .failure_rate_threshold(1.0)
            .slow_call_duration(secs(1))
            .slow_call_rate_threshold(0.5),
    );

    run(&mut svc, 1, Reply::Ok).await;
    timed(&mut svc, Reply::Fail, secs(2)).await.unwrap_err();
    let metrics = handle.metrics();
    assert_eq!(
        (metrics.calls(), metrics.failed(), metrics.slow()),
        (2, 1, 1)
    );
    assert_eq!(metrics.successful(), 1);
    assert_eq!(metrics.failure_rate(), Some(0.5));
    assert_eq!(metrics.slow_call_rate(), Some(0.5));
    assert_eq!(
        handle.state(),
        State::Open,
        "the slow failure tripped the slow-call rate"
    );
}

#[tokio::test(start_paused = true)]
async fn slow_failure_trips_the_failure_rate() {
    let Harness {
        mut svc, handle, ..
    } = harness(
        builder()
            .sliding_window(Window::count(2))
            .minimum_calls(2)
            .failure_rate_threshold(0.5)
            .slow_call_duration(secs(1))
            .slow_call_rate_threshold(1.0),
    );

    run(&mut svc, 1, Reply::Ok).await;
    timed(&mut svc, Reply::Fail, secs(2)).await.unwrap_err();
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn count_window_keeps_only_the_last_n_outcomes() {
    let Harness {
        mut svc, handle, ..
    } = counting(4, 4, 1.0);

    run(&mut svc, 1, Reply::Fail).await;
    run(&mut svc, 3, Reply::Ok).await;
    let metrics = handle.metrics();
    assert_eq!(
        (metrics.calls(), metrics.failed()),
        (4, 1),
        "3 later outcomes"
    );

    run(&mut svc, 1, Reply::Ok).await;
    let metrics = handle.metrics();
    assert_eq!(
        (metrics.calls(), metrics.failed()),
        (4, 0),
        "the failure is evicted by the 4th later outcome"
    );

    // And the evicted failures no longer count toward a trip.
    let Harness {
        mut svc, handle, ..
    } = counting(4, 4, 0.75);
    run(&mut svc, 2, Reply::Fail).await;
    run(&mut svc, 3, Reply::Ok).await; // [F O O O]
    run(&mut svc, 2, Reply::Fail).await; // [O O F F]
    assert_eq!(
        handle.state(),
        State::Closed,
        "2 of the last 4, though 4 of 7 overall"
    );
    run(&mut svc, 1, Reply::Fail).await; // [O F F F]
    assert_eq!(handle.state(), State::Open);
}

fn timed_window(window: Window) -> Harness {
    // minimum_calls is high: these tests only read the window.
    harness(
        builder()
            .sliding_window(window)
            .minimum_calls(1000)
            .failure_rate_threshold(1.0),
    )
}

#[tokio::test(start_paused = true)]
async fn time_window_outcome_counts_until_current_bucket_is_i_plus_k() {
    // 10 buckets of 1 s.
    let Harness {
        mut svc, handle, ..
    } = timed_window(Window::time(secs(10)));

    advance(ms(300)).await; // bucket 0
    run(&mut svc, 1, Reply::Fail).await;
    advance(secs(2)).await; // bucket 2
    run(&mut svc, 1, Reply::Ok).await;

    advance(secs(10) - ms(2300) - NS).await; // last instant of bucket 9
    let metrics = handle.metrics();
    assert_eq!((metrics.calls(), metrics.failed()), (2, 1));

    advance(NS).await; // bucket 10 = 0 + k
    let metrics = handle.metrics();
    assert_eq!((metrics.calls(), metrics.failed()), (1, 0), "bucket 0 left");

    advance(secs(2) - NS).await; // last instant of bucket 11
    assert_eq!(handle.metrics().calls(), 1);
    advance(NS).await; // bucket 12 = 2 + k
    assert_eq!(handle.metrics().calls(), 0, "bucket 2 left");
}

#[tokio::test(start_paused = true)]
async fn time_window_with_explicit_buckets_slides_per_bucket() {
    // 4 buckets of 250 ms.
    let Harness {
        mut svc, handle, ..
    } = timed_window(Window::time(secs(1)).buckets(4));

    advance(ms(300)).await; // bucket 1
    run(&mut svc, 1, Reply::Fail).await;
    advance(ms(1250) - ms(300) - NS).await; // last instant of bucket 4
    assert_eq!(handle.metrics().failed(), 1);
    advance(NS).await; // bucket 5 = 1 + k
    assert_eq!(handle.metrics().failed(), 0);
    assert_eq!(handle.metrics().calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn time_window_defaults_to_at_least_ten_buckets_of_at_least_one_millisecond() {
    // k = clamp(whole seconds of d, 10, 4096), lowered so that each bucket is at least 1 ms;
    // an outcome recorded in bucket i counts until the current bucket is i + k.
    for (window, bucket, k) in [
        (ms(5), ms(1), 5),     // lowered: 5 buckets of 1 ms
        (ms(500), ms(50), 10), // under 10 s: 10 buckets
        (ms(2500), ms(250), 10),
        (secs(30), secs(1), 30), // 10 s to 4096 s: one per second
    ] {
        let Harness {
            mut svc, handle, ..
        } = timed_window(Window::time(window));
        advance(bucket + bucket / 2).await; // the middle of bucket 1
        run(&mut svc, 1, Reply::Ok).await;
        advance(bucket * k - bucket / 2 - NS).await; // the last instant of bucket k
        assert_eq!(
            handle.metrics().calls(),
            1,
            "{window:?}: bucket k = 1 + k - 1"
        );
        advance(NS).await; // bucket 1 + k
        assert_eq!(handle.metrics().calls(), 0, "{window:?}: bucket 1 + k");
    }
}

/// Issue 8, "truly sliding": a 1.5 s window by default has 10 buckets of 150 ms, not one bucket
/// that tumbles. 4 failures within 200 ms that straddle a bucket boundary all count.
#[tokio::test(start_paused = true)]
async fn default_time_window_slides_across_a_bucket_boundary() {
    let Harness {
        mut svc, handle, ..
    } = harness(
        builder()
            .sliding_window(Window::time(ms(1500)))
            .minimum_calls(4)
            .failure_rate_threshold(0.5),
    );
    advance(ms(1400)).await;
    run(&mut svc, 2, Reply::Fail).await; // t = 1.4 s, before the boundary at 1.5 s
    advance(ms(200)).await;
    run(&mut svc, 2, Reply::Fail).await; // t = 1.6 s, after it
    assert_eq!(
        handle.state(),
        State::Open,
        "4 failures of 4 within 200 ms of a 1.5 s window"
    );
}

/// Issue 8, "truly sliding": an outcome stays counted until exactly bucket i + k, no earlier
/// (it lives between d - d/k and d): 10 buckets of 150 ms for a 1.5 s window.
#[tokio::test(start_paused = true)]
async fn default_time_window_counts_an_outcome_until_bucket_i_plus_k_exactly() {
    let Harness {
        mut svc, handle, ..
    } = timed_window(Window::time(ms(1500)));
    advance(ms(200)).await; // bucket 1: [150 ms, 300 ms)
    run(&mut svc, 1, Reply::Fail).await;

    advance(ms(1300)).await; // t = 1.5 s: the window's length after the failure's bucket began
    assert_eq!(handle.metrics().failed(), 1, "at 1.5 s (bucket 10)");
    advance(ms(150) - NS).await; // the last instant of bucket 10 = 1 + k - 1
    assert_eq!(handle.metrics().failed(), 1, "not less than bucket i + k");
    advance(NS).await; // t = 1.65 s: bucket 11 = 1 + k
    assert_eq!(handle.metrics().failed(), 0, "left at bucket i + k");
}

/// Issue 8, "one bucket per second": above 4096 s the default is capped at 4096 buckets, so each
/// bucket is d / 4096 long (1.220703125 s for 5000 s), not 1 s. Checked: an outcome in bucket 1
/// counts until bucket 4097 begins, at 4097 * 1.220703125 s, not at 5002 s (1-s buckets).
#[tokio::test(start_paused = true)]
async fn default_time_window_above_4096_seconds_has_4096_longer_buckets() {
    let bucket = Duration::from_nanos(1_220_703_125); // 5000 s / 4096, exactly
    let Harness {
        mut svc, handle, ..
    } = timed_window(Window::time(secs(5000)));
    advance(secs(2)).await; // bucket 1: [1.22 s, 2.44 s)
    run(&mut svc, 1, Reply::Ok).await;

    advance(bucket * 4097 - secs(2) - NS).await; // the last instant of bucket 4096
    assert_eq!(handle.metrics().calls(), 1);
    advance(NS).await; // bucket 4097 = 1 + 4096
    assert_eq!(handle.metrics().calls(), 0, "4096 buckets of 5000 s / 4096");
}

/// Issue 8, defect 2: a time window keeps counting after 2^31 buckets (1 ms buckets: day 24.8 of
/// uptime). Two failures, minimum 2, threshold 1.0 and no consecutive rule: only the window can
/// trip it, and it must.
#[tokio::test(start_paused = true)]
async fn time_window_counts_after_two_to_the_31_buckets() {
    let Harness {
        mut svc, handle, ..
    } = harness(
        builder()
            .sliding_window(Window::time(ms(4096)).buckets(4096)) // 1 ms buckets
            .minimum_calls(2)
            .failure_rate_threshold(1.0),
    );
    tokio::time::advance(Duration::from_millis(1 << 31)).await;

    run(&mut svc, 1, Reply::Fail).await;
    assert_eq!(
        (handle.metrics().calls(), handle.metrics().failed()),
        (1, 1),
        "the first failure is counted"
    );
    run(&mut svc, 1, Reply::Fail).await;
    assert_eq!(handle.state(), State::Open, "2 failures of 2");
}

/// Issue 8, "the window that tripped the breaker": while Open, a time window does not drain;
/// once closed it starts empty.
#[tokio::test(start_paused = true)]
async fn metrics_while_open_show_the_window_that_tripped_it() {
    let tripped = || {
        harness(
            builder()
                .sliding_window(Window::time(secs(10)))
                .minimum_calls(4)
                .failure_rate_threshold(0.5)
                .open_duration(secs(60)),
        )
    };
    let Harness {
        mut svc, handle, ..
    } = tripped();
    run(&mut svc, 2, Reply::Ok).await;
    run(&mut svc, 2, Reply::Fail).await;
    assert_eq!(handle.state(), State::Open);

    advance(secs(30)).await; // 3 window lengths later
    let metrics = handle.metrics();
    assert_eq!(metrics.state(), State::Open);
    assert_eq!(
        (metrics.calls(), metrics.failed(), metrics.successful()),
        (4, 2, 2),
        "the window of the trip, 30 s later"
    );
    assert_eq!(metrics.failure_rate(), Some(0.5));

    handle.reset();
    let metrics = handle.metrics();
    assert_eq!((metrics.calls(), metrics.failed()), (0, 0), "after reset");

    // Closing through a probe also starts an empty window.
    let Harness {
        mut svc, handle, ..
    } = tripped();
    run(&mut svc, 4, Reply::Fail).await;
    advance(secs(60)).await;
    call(&mut svc, ok()).await.unwrap();
    assert_eq!(handle.state(), State::Closed);
    let metrics = handle.metrics();
    assert_eq!((metrics.calls(), metrics.failed()), (0, 0), "after closing");
}

#[tokio::test(start_paused = true)]
async fn time_window_buckets_are_measured_from_breaker_creation() {
    // 3 buckets of 1 s, counted from `build`, not from the first call.
    let Harness {
        mut svc, handle, ..
    } = timed_window(Window::time(secs(3)).buckets(3));

    advance(ms(500)).await;
    run(&mut svc, 1, Reply::Fail).await; // bucket 0: [0.5 s, 1 s) after creation
    advance(ms(2500) - NS).await;
    assert_eq!(handle.metrics().failed(), 1);
    advance(NS).await; // 3 s after creation, 2.5 s after the call
    assert_eq!(handle.metrics().failed(), 0);
}

#[tokio::test(start_paused = true)]
async fn time_window_trips_on_failures_within_the_window_only() {
    let Harness {
        mut svc, handle, ..
    } = harness(
        builder()
            .sliding_window(Window::time(secs(2)))
            .minimum_calls(2)
            .failure_rate_threshold(0.5),
    );

    run(&mut svc, 1, Reply::Fail).await;
    run(&mut svc, 1, Reply::Ok).await;
    assert_eq!(handle.state(), State::Open, "1 of 2 failed");

    let Harness {
        mut svc, handle, ..
    } = harness(
        builder()
            .sliding_window(Window::time(secs(2)))
            .minimum_calls(2)
            .failure_rate_threshold(0.5),
    );
    run(&mut svc, 1, Reply::Fail).await;
    advance(secs(2)).await; // the failure's bucket left the window
    run(&mut svc, 2, Reply::Ok).await;
    assert_eq!(handle.metrics().failed(), 0);
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn ignored_outcomes_are_never_recorded() {
    let Harness {
        mut svc, handle, ..
    } = counting(2, 1, 0.5);

    run(&mut svc, 5, Reply::Ignore).await;
    let metrics = handle.metrics();
    assert_eq!(metrics.calls(), 0);
    assert_eq!(metrics.failure_rate(), None);
    assert_eq!(handle.state(), State::Closed);

    // Nor do they evict anything from a count window.
    let Harness {
        mut svc, handle, ..
    } = counting(2, 2, 1.0);
    run(&mut svc, 1, Reply::Fail).await;
    run(&mut svc, 4, Reply::Ignore).await;
    run(&mut svc, 1, Reply::Fail).await;
    assert_eq!(
        handle.state(),
        State::Open,
        "the first failure is still in the window"
    );
}

#[tokio::test(start_paused = true)]
async fn default_classifier_counts_ok_as_success_and_err_as_failure() {
    let layer = CircuitBreakerLayer::builder()
        .sliding_window(Window::count(10))
        .minimum_calls(10)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Inner::default());

    call(&mut svc, ok()).await.unwrap();
    call(&mut svc, fail()).await.unwrap_err();
    call(&mut svc, ignored()).await.unwrap_err(); // an Err: a failure for the default
    let metrics = handle.metrics();
    assert_eq!(
        (metrics.calls(), metrics.failed(), metrics.successful()),
        (3, 2, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn failure_rate_threshold_is_inclusive_for_every_tenth() {
    const THRESHOLDS: [f64; 10] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
    for (i, threshold) in THRESHOLDS.into_iter().enumerate() {
        let failures = i + 1;

        let Harness {
            mut svc, handle, ..
        } = counting(10, 10, threshold);
        run(&mut svc, 10 - failures, Reply::Ok).await;
        run(&mut svc, failures, Reply::Fail).await;
        assert_eq!(
            handle.state(),
            State::Open,
            "{failures}/10 with threshold {threshold}"
        );

        let Harness {
            mut svc, handle, ..
        } = counting(10, 10, threshold);
        run(&mut svc, 11 - failures, Reply::Ok).await;
        run(&mut svc, failures - 1, Reply::Fail).await;
        assert_eq!(
            handle.state(),
            State::Closed,
            "{}/10 with threshold {threshold}",
            failures - 1
        );
    }
}

#[tokio::test(start_paused = true)]
async fn time_window_reuses_bucket_slots_across_laps() {
    // 3 buckets of 1 s: bucket 3 reuses the slot of bucket 0.
    let Harness {
        mut svc, handle, ..
    } = timed_window(Window::time(secs(3)).buckets(3));

    run(&mut svc, 2, Reply::Fail).await; // bucket 0
    advance(secs(3)).await; // bucket 3
    run(&mut svc, 1, Reply::Ok).await;
    let metrics = handle.metrics();
    assert_eq!(
        (metrics.calls(), metrics.failed()),
        (1, 0),
        "the old lap is gone"
    );

    advance(secs(3) - NS).await; // last instant of bucket 5
    assert_eq!(handle.metrics().calls(), 1);
    advance(NS).await; // bucket 6 = 3 + k
    assert_eq!(handle.metrics().calls(), 0);

    // After a long idle time, old laps do not come back.
    run(&mut svc, 1, Reply::Fail).await; // bucket 6
    advance(secs(1_000_002)).await; // bucket 1_000_008, the same slot
    assert_eq!(handle.metrics().calls(), 0);
    run(&mut svc, 1, Reply::Ok).await;
    let metrics = handle.metrics();
    assert_eq!((metrics.calls(), metrics.failed()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn time_window_is_evaluated_as_of_each_outcome() {
    // Successes that leave the window raise the failure rate: the next outcome, even a success,
    // is judged against the window as it is then.
    let Harness {
        mut svc, handle, ..
    } = harness(
        builder()
            .sliding_window(Window::time(secs(2)))
            .minimum_calls(2)
            .failure_rate_threshold(0.5),
    );

    run(&mut svc, 3, Reply::Ok).await; // bucket 0
    advance(secs(1)).await;
    run(&mut svc, 1, Reply::Fail).await; // bucket 1: 1 of 4
    assert_eq!(handle.state(), State::Closed);
    advance(secs(1)).await; // bucket 2: bucket 0 left
    assert_eq!(
        handle.metrics().failure_rate(),
        None,
        "1 outcome, minimum 2"
    );
    run(&mut svc, 1, Reply::Ok).await; // 1 of 2
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn slow_call_duration_defaults_to_sixty_seconds_with_a_slow_rate_threshold() {
    let Harness {
        mut svc, handle, ..
    } = harness(
        builder()
            .sliding_window(Window::count(10))
            .minimum_calls(10)
            .slow_call_rate_threshold(0.5),
    );
    timed(&mut svc, Reply::Ok, secs(60)).await.unwrap();
    assert_eq!(handle.metrics().slow(), 0);
    timed(&mut svc, Reply::Ok, secs(60) + NS).await.unwrap();
    assert_eq!(handle.metrics().slow(), 1);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_without_a_slow_rate_threshold_are_counted_but_never_trip() {
    let Harness {
        mut svc, handle, ..
    } = harness(
        builder()
            .sliding_window(Window::count(10))
            .minimum_calls(10)
            .slow_call_duration(secs(1)),
    );
    for _ in 0..10 {
        timed(&mut svc, Reply::Ok, secs(2)).await.unwrap();
    }
    assert_eq!(handle.metrics().slow_call_rate(), Some(1.0));
    assert_eq!(handle.state(), State::Closed);
}
