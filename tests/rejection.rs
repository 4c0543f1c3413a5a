//! DESIGN §3, Open and Always: a rejection's retry-after is computed when it is asked for, from
//! the instant the open interval ends (never the stale duration `poll_ready` saw), and instants
//! at the edge of tokio's clock range (an open interval or a call timeout that ends beyond it, or
//! in its last millisecond) mean "never", without a panic.

mod support;

use std::time::Duration;

use support::*;
use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready_ok, task};
use tower::{Service, ServiceExt};
use tower_circuit_breaker::State;

/// Trips on the first failure; open for `open`.
fn tripping(open: Duration) -> Harness {
    harness(builder().consecutive_failures(1).open_duration(open))
}

// ===== retry-after is computed when asked =====

#[tokio::test(start_paused = true)]
async fn retry_after_is_the_time_left_when_asked_not_when_poll_ready_decided() {
    let Harness { mut svc, .. } = tripping(secs(10));
    trip(&mut svc).await;

    // `poll_ready` decides the rejection with 10 s left; `call` comes 6 s later.
    svc.ready()
        .await
        .expect("an open circuit is ready to reject");
    advance(secs(6)).await;
    let rejected = rejection(svc.call(ok()).await);
    assert_eq!(rejected.state(), State::Open);
    assert_eq!(rejected.retry_after(), Some(secs(4)));
    assert_eq!(rejected.to_string(), "circuit open; retry after 4s");

    // Asked again 1 s later: the same error answers with the time left now, in both forms.
    advance(secs(1)).await;
    assert_eq!(rejected.retry_after(), Some(secs(3)));
    assert_eq!(rejected.to_string(), "circuit open; retry after 3s");
    advance(Duration::from_nanos(1_500_000)).await;
    assert_eq!(
        rejected.to_string(),
        "circuit open; retry after 2999ms",
        "whole milliseconds, rounded up"
    );

    // Past the end of the interval: nothing left to wait, never a negative time.
    advance(secs(5)).await;
    assert_eq!(rejected.retry_after(), Some(Duration::ZERO));
}

// ===== the edge of the clock's range =====

#[tokio::test(start_paused = true)]
async fn an_open_interval_beyond_the_clock_range_has_no_retry_after() {
    let Harness { mut svc, .. } = tripping(Duration::MAX);
    trip(&mut svc).await;

    let rejected = rejection(call(&mut svc, ok()).await);
    assert_eq!(rejected.state(), State::Open);
    assert_eq!(
        rejected.retry_after(),
        None,
        "an interval that never ends is \"never\", not a duration of centuries"
    );
    advance(secs(86_400)).await;
    assert_eq!(rejection(call(&mut svc, ok()).await).state(), State::Open);
}

/// The longest duration that can be added to `now` on tokio's clock (`checked_add` succeeds for
/// it and fails one nanosecond later).
fn longest_from(now: Instant) -> Duration {
    fn from_nanos(n: u128) -> Duration {
        let secs = u64::try_from(n / 1_000_000_000).expect("at most Duration::MAX");
        Duration::new(secs, (n % 1_000_000_000) as u32)
    }
    let (mut fits, mut overflows) = (0u128, Duration::MAX.as_nanos());
    assert!(now.checked_add(Duration::MAX).is_none());
    while overflows - fits > 1 {
        let mid = fits + (overflows - fits) / 2;
        if now.checked_add(from_nanos(mid)).is_some() {
            fits = mid;
        } else {
            overflows = mid;
        }
    }
    from_nanos(fits)
}

#[tokio::test(start_paused = true)]
async fn a_call_timeout_in_the_last_millisecond_of_the_clock_range_never_panics_nor_fires() {
    // tokio's timer rounds a deadline up to its next millisecond (`deadline + 999_999 ns`), which
    // overflows for a deadline in the last millisecond of the clock's range although
    // `Instant::now() + timeout` itself fits.
    for below_the_end in [0, 1, 999_998] {
        let timeout = longest_from(Instant::now()) - Duration::from_nanos(below_the_end);
        assert!(Instant::now().checked_add(timeout).is_some());
        assert!(
            Instant::now()
                .checked_add(timeout + Duration::from_nanos(999_999))
                .is_none(),
            "the deadline is in the clock's last millisecond"
        );
        let Harness { mut svc, .. } = harness(builder().call_timeout(timeout));

        let (req, gate) = gated();
        let mut response = task::spawn(start(&mut svc, req).await);
        assert_pending!(response.poll(), "{timeout:?}: in flight, the timer armed");
        advance(secs(86_400)).await;
        assert_pending!(response.poll(), "{timeout:?}: never fires");
        gate.open(Reply::Ok);
        assert_eq!(assert_ready_ok!(response.poll()), "ok");
    }
    // The longest value of all: no deadline at all.
    let Harness { mut svc, .. } = harness(builder().call_timeout(Duration::MAX));
    let (req, gate) = gated();
    let mut response = task::spawn(start(&mut svc, req).await);
    assert_pending!(response.poll());
    gate.open(Reply::Ok);
    assert_eq!(assert_ready_ok!(response.poll()), "ok");
}

// ===== Rejected::retry_at (a public method that main does not have yet) =====

#[tokio::test(start_paused = true)]
async fn retry_at_is_the_instant_the_open_interval_ends() {
    let Harness { mut svc, .. } = tripping(secs(10));
    trip(&mut svc).await;
    let opened_at = Instant::now();

    svc.ready()
        .await
        .expect("an open circuit is ready to reject");
    advance(secs(6)).await;
    let rejected = rejection(svc.call(ok()).await);
    assert_eq!(rejected.retry_at(), Some(opened_at + secs(10)));
    advance(secs(1)).await;
    assert_eq!(rejected.retry_at(), Some(opened_at + secs(10)), "fixed");
    assert_eq!(
        rejected.retry_after(),
        Some(opened_at + secs(10) - Instant::now())
    );
}

#[tokio::test(start_paused = true)]
async fn retry_at_is_none_where_nobody_knows() {
    // An interval beyond the clock's range never ends.
    let Harness { mut svc, .. } = tripping(Duration::MAX);
    trip(&mut svc).await;
    assert_eq!(rejection(call(&mut svc, ok()).await).retry_at(), None);

    // Forced open: until an operator acts.
    let Harness {
        mut svc, handle, ..
    } = tripping(secs(10));
    handle.force_open();
    let rejected = rejection(call(&mut svc, ok()).await);
    assert_eq!(rejected.state(), State::ForcedOpen);
    assert_eq!(rejected.retry_at(), None);

    // Half-open with its only probe permit taken: until the probe ends.
    handle.reset();
    trip(&mut svc).await;
    advance(secs(10)).await;
    let (probe, gate) = gated();
    let probe = start(&mut svc, probe).await;
    let rejected = rejection(call(&mut svc, ok()).await);
    assert_eq!(rejected.state(), State::HalfOpen);
    assert_eq!(rejected.retry_at(), None);
    gate.open(Reply::Ok);
    assert_eq!(probe.await.unwrap(), "ok");
}

// ===== a rejection seen by another breaker =====

/// DESIGN §3, Always: an outer breaker's default classifier ignores an inner breaker's
/// rejection, whether it arrives boxed (the inner breaker's own error type) or as the `Rejected`
/// itself (a service that maps its errors): a dependency one breaker stopped calling is not one
/// more failure for the other, so breakers stacked on one path do not open each other.
#[tokio::test(start_paused = true)]
async fn an_outer_breaker_ignores_an_inner_breakers_rejection_boxed_or_plain() {
    use tower::{Layer, service_fn};
    use tower_circuit_breaker::CircuitBreakerLayer;
    use tower_circuit_breaker::error::Rejected;

    let inner = CircuitBreakerLayer::builder().build().unwrap();
    inner.handle().force_open();
    let up = service_fn(|()| async { Ok::<_, tower::BoxError>("up") });
    let inner = inner.layer(up);
    let outer = || {
        CircuitBreakerLayer::builder()
            .consecutive_failures(1)
            .build()
            .unwrap()
    };

    let boxed = outer();
    let err = boxed.layer(inner.clone()).oneshot(()).await.unwrap_err();
    assert!(Rejected::find(&*err).is_some(), "{err:?}");

    let plain = outer();
    let refused = rejection(inner.oneshot(()).await);
    let maps = service_fn(move |()| std::future::ready(Err::<&str, _>(refused.clone())));
    plain.layer(maps).oneshot(()).await.unwrap_err();

    for (layer, what) in [(boxed, "boxed"), (plain, "plain")] {
        assert_eq!(layer.handle().state(), State::Closed, "{what}");
        assert_eq!(layer.handle().metrics().calls(), 0, "{what}: not recorded");
    }
}
