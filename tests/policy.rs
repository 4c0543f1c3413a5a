//! Which rules open the circuit: the policy is what the user configured (issue: a hidden
//! 50 %-of-100-calls rule stayed on when only `consecutive_failures` was set), and the claims the
//! docs make about the consecutive count and ignored slow probes.

use std::time::Duration;

mod support;
use support::*;
use tower_circuit_breaker::{State, Window};

/// 100 calls, 3 in 5 failing, never 3 failures in a row.
async fn sixty_percent_failures_never_three_in_a_row(h: &mut Harness) {
    for i in 0..100 {
        let req = if i % 5 < 3 && i % 5 != 1 {
            fail()
        } else {
            ok()
        };
        let _ = call(&mut h.svc, req).await;
        if i % 5 == 1 {
            let _ = call(&mut h.svc, fail()).await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn only_consecutive_failures_configured_never_trips_by_rate() {
    let mut h = harness(builder().consecutive_failures(3));
    sixty_percent_failures_never_three_in_a_row(&mut h).await;
    assert!(h.handle.metrics().failure_rate().unwrap() >= 0.5);
    assert_eq!(
        h.handle.state(),
        State::Closed,
        "no rate rule was configured"
    );
}

#[tokio::test(start_paused = true)]
async fn a_breaker_with_no_rule_configured_trips_at_half_of_100_calls() {
    let mut h = harness(builder());
    sixty_percent_failures_never_three_in_a_row(&mut h).await;
    assert_eq!(h.handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn a_failure_rate_set_with_consecutive_failures_keeps_both_rules() {
    let mut h = harness(
        builder()
            .consecutive_failures(3)
            .failure_rate_threshold(0.5)
            .sliding_window(Window::count(10))
            .minimum_calls(10),
    );
    run(&mut h.svc, 5, Reply::Ok).await;
    for _ in 0..5 {
        call(&mut h.svc, fail()).await.unwrap_err();
        if h.handle.state() == State::Open {
            break;
        }
        call(&mut h.svc, ok()).await.unwrap();
    }
    assert_eq!(
        h.handle.state(),
        State::Open,
        "5 of 10 failed, never 3 in a row"
    );
}

#[tokio::test(start_paused = true)]
async fn metrics_only_clears_the_consecutive_count_with_the_window() {
    let mut h = harness(builder().consecutive_failures(10));
    run(&mut h.svc, 3, Reply::Fail).await;
    assert_eq!(h.handle.metrics().consecutive_failures(), 3);
    h.handle.metrics_only();
    assert_eq!(h.handle.metrics().consecutive_failures(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_ignored_probe_gives_its_permit_back_even_when_slow() {
    let mut h = harness(
        builder()
            .consecutive_failures(1)
            .open_duration(secs(1))
            .slow_call_duration(Duration::from_millis(100)),
    );
    call(&mut h.svc, fail()).await.unwrap_err();
    advance(secs(1)).await;
    assert_eq!(h.handle.state(), State::HalfOpen);
    call(&mut h.svc, ignored().after(secs(1)))
        .await
        .unwrap_err();
    assert_eq!(
        h.handle.state(),
        State::HalfOpen,
        "ignored, slow or not: nothing recorded"
    );
    call(&mut h.svc, ok()).await.unwrap();
    assert_eq!(h.handle.state(), State::Closed, "the permit came back");
}
