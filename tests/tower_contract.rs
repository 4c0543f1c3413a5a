//! The Tower contract (DESIGN.md §4): what `poll_ready`, `call`, `Clone` and the response future
//! promise to the middleware around the breaker (`Buffer`, balancers, `Retry`, axum) and to the
//! service inside it.
//!
//! Written in the style of tower's own tests: tower-test's mock services, driven by hand with
//! tokio-test's `assert_ready_ok!` / `assert_pending!`, on a paused clock wherever time matters.

use std::fmt::Debug;
use std::future::{Ready, ready};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};
use tower::timeout::TimeoutLayer;
use tower::timeout::error::Elapsed;
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_circuit_breaker::error::Rejected;
use tower_circuit_breaker::{CircuitBreaker, CircuitBreakerLayer, State};
use tower_test::{assert_request_eq, mock};

mod support;
use support::plain::{breaker, echo, half_open, trip};
use support::{Counted, Counts, CountsWakes, OPEN, rejected};

type Req = &'static str;
type Res = &'static str;
type Guarded<S> = mock::Spawn<CircuitBreaker<S>>;

/// A second service on the same breaker, from a clone of the first (as axum and hyper make them).
fn clone_of<S: Clone>(service: &Guarded<S>) -> Guarded<S> {
    mock::Spawn::new(service.get_ref().clone())
}

/// An inner service that must never be touched: it panics on `poll_ready` and on `call`.
#[derive(Clone, Debug)]
struct Untouchable;

impl Service<Req> for Untouchable {
    type Response = Res;
    type Error = BoxError;
    type Future = Ready<Result<Res, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        panic!("the inner service's poll_ready was called while the circuit rejects");
    }

    fn call(&mut self, _: Req) -> Self::Future {
        panic!("the inner service was called while the circuit rejects");
    }
}

// ===== an open circuit does not touch the inner service =====

#[tokio::test(start_paused = true)]
async fn open_circuit_never_polls_nor_calls_the_inner_service() {
    let layer = breaker("contract", 1);
    let (mut service, mut mock) = mock::spawn_layer::<Req, Res, _>(layer.clone());
    trip(&layer).await;

    // An inner service that is not ready would make `poll_ready` Pending if it were polled.
    mock.allow(0);
    for _ in 0..3 {
        assert_ready_ok!(service.poll_ready(), "an open circuit is ready to reject");
        let err = service.call("hello").await.unwrap_err();
        assert_eq!(rejected(&err).state(), State::Open);
    }
    assert_pending!(mock.poll_request(), "no request reached the inner service");
    assert!(!service.is_woken());
    assert_eq!(service.get_ref().handle().metrics().not_permitted(), 3);
}

#[tokio::test]
async fn forced_open_circuit_never_polls_nor_calls_the_inner_service() {
    let layer = breaker("contract", 1);
    layer.handle().force_open();
    let mut service = mock::Spawn::new(layer.layer(Untouchable));

    for _ in 0..3 {
        assert_ready_ok!(service.poll_ready());
        let err = service.call("hello").await.unwrap_err();
        assert_eq!(rejected(&err).state(), State::ForcedOpen);
    }
    // The same through `ServiceExt`, as most callers drive it.
    let err = layer.layer(Untouchable).oneshot("hello").await.unwrap_err();
    assert!(err.is::<Rejected>());
}

#[tokio::test(start_paused = true)]
async fn open_circuit_rejects_in_the_future_not_in_poll_ready() {
    let layer = breaker("contract", 1);
    let (mut service, _mock) = mock::spawn_layer::<Req, Res, _>(layer.clone());
    trip(&layer).await;
    tokio::time::advance(Duration::from_secs(4)).await;

    // `poll_ready` is `Ready(Ok)`: Buffer, balancers and tonic would discard a service whose
    // readiness failed.
    assert_ready_ok!(service.poll_ready());
    let mut response = task::spawn(service.call("hello"));
    let err = assert_ready_err!(response.poll(), "a rejection needs no waiting");
    let rejection = rejected(&err);
    assert_eq!(rejection.state(), State::Open);
    assert_eq!(rejection.retry_after(), Some(OPEN - Duration::from_secs(4)));
    assert_eq!(rejection.name(), Some("contract"));
}

#[tokio::test(start_paused = true)]
async fn half_open_without_a_permit_rejects_in_the_future_not_in_poll_ready() {
    let layer = breaker("contract", 1);
    let (mut service, mut mock) = mock::spawn_layer::<Req, Res, _>(layer.clone());
    half_open(&layer).await;

    assert_ready_ok!(service.poll_ready(), "takes the only probe permit");
    let mut other = clone_of(&service);
    assert_ready_ok!(other.poll_ready(), "no permit left: ready to reject");
    let err = other.call("late").await.unwrap_err();
    let rejection = rejected(&err);
    assert_eq!(rejection.state(), State::HalfOpen);
    assert_eq!(rejection.retry_after(), None);

    // The probe itself still goes through.
    let response = service.call("probe");
    assert_request_eq!(mock, "probe").send_response("ok");
    assert_eq!(response.await.unwrap(), "ok");
    assert_eq!(service.get_ref().handle().state(), State::Closed);
}

// ===== the decision is carried from poll_ready to call =====

#[tokio::test]
async fn admission_is_carried_from_poll_ready_to_call() {
    let (mut service, mut mock) = mock::spawn_layer::<Req, Res, _>(breaker("contract", 1));
    let breaker = service.get_ref().handle();

    assert_ready_ok!(service.poll_ready());
    breaker.force_open();
    // Admitted when it was polled: `call` does not decide again.
    let response = service.call("admitted");
    assert_request_eq!(mock, "admitted").send_response("ok");
    assert_eq!(response.await.unwrap(), "ok");
    assert_eq!(breaker.state(), State::ForcedOpen);
    assert_eq!(breaker.metrics().not_permitted(), 0);
}

#[tokio::test]
async fn admitted_result_after_a_state_change_is_stale() {
    let (mut service, mut mock) = mock::spawn_layer::<Req, Res, _>(breaker("contract", 1));
    let breaker = service.get_ref().handle();

    assert_ready_ok!(service.poll_ready());
    let response = service.call("before reset");
    breaker.reset();
    assert_request_eq!(mock, "before reset").send_error("boom");
    assert!(response.await.is_err());
    // One failure would trip this breaker, but it was admitted under an older generation.
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.metrics().failed(), 0);
}

#[tokio::test]
async fn rejection_is_carried_from_poll_ready_to_call() {
    let (mut service, mut mock) = mock::spawn_layer::<Req, Res, _>(breaker("contract", 1));
    let breaker = service.get_ref().handle();
    breaker.force_open();

    assert_ready_ok!(service.poll_ready());
    breaker.reset();
    let err = service.call("rejected").await.unwrap_err();
    assert_eq!(rejected(&err).state(), State::ForcedOpen);
    assert_pending!(mock.poll_request());

    // The next readiness check decides afresh.
    assert_ready_ok!(service.poll_ready());
    let response = service.call("admitted");
    assert_request_eq!(mock, "admitted").send_response("ok");
    assert_eq!(response.await.unwrap(), "ok");
}

#[tokio::test(start_paused = true)]
async fn probe_permit_is_carried_from_poll_ready_to_call() {
    let layer = breaker("contract", 1);
    let (mut service, mut mock) = mock::spawn_layer::<Req, Res, _>(layer.clone());
    half_open(&layer).await;

    assert_ready_ok!(service.poll_ready());
    // While `service` holds the permit, nobody else is admitted.
    for _ in 0..3 {
        let mut other = clone_of(&service);
        assert_ready_ok!(other.poll_ready());
        assert!(other.call("other").await.unwrap_err().is::<Rejected>());
    }
    let response = service.call("probe");
    assert_request_eq!(mock, "probe").send_response("ok");
    assert_eq!(response.await.unwrap(), "ok");
    assert_eq!(service.get_ref().handle().state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn readiness_is_stable_and_holds_one_permit() {
    let layer = breaker("contract", 2);
    let (mut service, mut mock) = mock::spawn_layer::<Req, Res, _>(layer.clone());
    half_open(&layer).await;

    for _ in 0..5 {
        assert_ready_ok!(service.poll_ready(), "ready stays ready until `call`");
    }
    let mut second = clone_of(&service);
    assert_ready_ok!(second.poll_ready());
    assert_ready_ok!(second.poll_ready());
    let mut third = clone_of(&service);
    assert_ready_ok!(third.poll_ready());
    assert!(
        third.call("third").await.unwrap_err().is::<Rejected>(),
        "two permits, two holders: repeated polls took no extra permit"
    );

    let first = service.call("first");
    let second = second.call("second");
    assert_request_eq!(mock, "first").send_response("ok");
    assert_request_eq!(mock, "second").send_response("ok");
    assert_eq!(first.await.unwrap(), "ok");
    assert_eq!(second.await.unwrap(), "ok");
    assert_eq!(service.get_ref().handle().state(), State::Closed);
}

#[tokio::test]
async fn readiness_of_a_rejection_is_stable() {
    let layer = breaker("contract", 1);
    layer.handle().force_open();
    let mut service = mock::Spawn::new(layer.layer(Untouchable));
    for _ in 0..5 {
        assert_ready_ok!(service.poll_ready());
    }
    assert!(service.call("x").await.unwrap_err().is::<Rejected>());
    assert_eq!(layer.handle().metrics().not_permitted(), 1);
}

// ===== Clone =====

#[tokio::test]
async fn clone_does_not_inherit_readiness() {
    let counts = Counts::default();
    let inner = Counted {
        inner: echo(),
        counts: counts.clone(),
    };
    let mut service = mock::Spawn::new(breaker("contract", 1).layer(inner));

    assert_ready_ok!(service.poll_ready());
    assert_eq!(counts.ready(), 1);
    let mut clone = clone_of(&service);
    assert_eq!(counts.ready(), 1, "cloning polls nothing");
    assert_ready_ok!(clone.poll_ready());
    assert_eq!(counts.ready(), 2, "the clone polled its own inner service");

    assert_eq!(clone.call("clone").await.unwrap(), "clone");
    assert_eq!(service.call("original").await.unwrap(), "original");
    assert_eq!(counts.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn clone_does_not_hold_the_original_probe_permit() {
    let layer = breaker("contract", 1);
    let (mut service, mut mock) = mock::spawn_layer::<Req, Res, _>(layer.clone());
    half_open(&layer).await;

    assert_ready_ok!(service.poll_ready(), "takes the only permit");
    let mut clone = clone_of(&service);
    assert_ready_ok!(clone.poll_ready());
    assert!(
        clone.call("clone").await.unwrap_err().is::<Rejected>(),
        "the clone has no permit of its own and may not use the original's"
    );
    assert_pending!(mock.poll_request());

    // Dropping the clone does not give back the original's permit either.
    drop(clone);
    let mut another = clone_of(&service);
    assert_ready_ok!(another.poll_ready());
    assert!(another.call("another").await.unwrap_err().is::<Rejected>());

    let response = service.call("probe");
    assert_request_eq!(mock, "probe").send_response("ok");
    assert_eq!(response.await.unwrap(), "ok");
}

#[tokio::test]
async fn clone_does_not_inherit_a_rejection() {
    let (mut service, mut mock) = mock::spawn_layer::<Req, Res, _>(breaker("contract", 1));
    let breaker = service.get_ref().handle();
    breaker.force_open();
    assert_ready_ok!(service.poll_ready(), "holds a rejection");
    breaker.reset();

    let mut clone = clone_of(&service);
    assert_ready_ok!(clone.poll_ready(), "decides for itself: admitted");
    let response = clone.call("clone");
    assert_request_eq!(mock, "clone").send_response("ok");
    assert_eq!(response.await.unwrap(), "ok");
    assert!(service.call("original").await.unwrap_err().is::<Rejected>());
}

// ===== permits come back =====

#[tokio::test(start_paused = true)]
async fn dropped_unpolled_probe_future_returns_its_permit() {
    let layer = breaker("contract", 1);
    let (mut service, mut mock) = mock::spawn_layer::<Req, Res, _>(layer.clone());
    half_open(&layer).await;
    let breaker = service.get_ref().handle();

    assert_ready_ok!(service.poll_ready());
    let response = service.call("dropped");
    let (_, _send) = mock
        .next_request()
        .await
        .expect("the probe reached the inner service");
    drop(response);
    assert_eq!(
        breaker.state(),
        State::HalfOpen,
        "a dropped probe records nothing"
    );

    assert_ready_ok!(service.poll_ready(), "the permit came back");
    let response = service.call("probe");
    assert_request_eq!(mock, "probe").send_response("ok");
    assert_eq!(response.await.unwrap(), "ok");
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn dropped_polled_probe_future_returns_its_permit() {
    let layer = breaker("contract", 1);
    let (mut service, mut mock) = mock::spawn_layer::<Req, Res, _>(layer.clone());
    half_open(&layer).await;
    let breaker = service.get_ref().handle();

    assert_ready_ok!(service.poll_ready());
    let mut response = task::spawn(service.call("dropped"));
    assert_pending!(response.poll());
    drop(response);
    assert_eq!(breaker.state(), State::HalfOpen);
    assert_eq!(
        breaker.metrics().calls(),
        1,
        "only the call that tripped it"
    );

    let mut other = clone_of(&service);
    assert_ready_ok!(other.poll_ready());
    let response = other.call("probe");
    let _ = mock.next_request().await; // the dropped one
    assert_request_eq!(mock, "probe").send_error("still down");
    assert!(!response.await.unwrap_err().is::<Rejected>());
    assert_eq!(
        breaker.state(),
        State::Open,
        "the new holder's failure counted"
    );
}

#[tokio::test(start_paused = true)]
async fn service_dropped_after_poll_ready_returns_its_probe_permit() {
    let layer = breaker("contract", 1);
    let (mut service, mut mock) = mock::spawn_layer::<Req, Res, _>(layer.clone());
    half_open(&layer).await;

    let mut holder = clone_of(&service);
    assert_ready_ok!(holder.poll_ready());
    drop(holder);

    assert_ready_ok!(service.poll_ready(), "the permit came back");
    let response = service.call("probe");
    assert_request_eq!(mock, "probe").send_response("ok");
    assert_eq!(response.await.unwrap(), "ok");
    assert_eq!(service.get_ref().handle().state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn into_inner_after_poll_ready_returns_the_probe_permit() {
    let layer = breaker("contract", 1);
    let (mut service, mut mock) = mock::spawn_layer::<Req, Res, _>(layer.clone());
    half_open(&layer).await;

    let mut holder = clone_of(&service);
    assert_ready_ok!(holder.poll_ready());
    let _inner = holder.into_inner().into_inner();

    assert_ready_ok!(service.poll_ready());
    let response = service.call("probe");
    assert_request_eq!(mock, "probe").send_response("ok");
    assert_eq!(response.await.unwrap(), "ok");
}

#[tokio::test(start_paused = true)]
async fn panicking_probe_returns_its_permit_and_the_panic_propagates() {
    let layer = breaker("contract", 1);
    let breaker = layer.handle();
    let failing = layer.layer(service_fn(|_: Req| ready(Err::<Res, _>("boom"))));
    assert!(failing.oneshot("fail").await.is_err());
    tokio::time::advance(OPEN).await;
    assert_eq!(breaker.state(), State::HalfOpen);

    let panicking = layer.layer(service_fn(|_: Req| {
        futures::future::poll_fn(|_| -> Poll<Result<Res, BoxError>> {
            panic!("the inner future panicked")
        })
    }));
    let outcome = AssertUnwindSafe(panicking.oneshot("probe"))
        .catch_unwind()
        .await;
    let payload = outcome.expect_err("the panic propagates to the caller");
    assert_eq!(
        payload.downcast_ref::<&str>(),
        Some(&"the inner future panicked")
    );
    assert_eq!(breaker.state(), State::HalfOpen, "a panic records nothing");

    let healthy = layer.layer(echo());
    assert_eq!(healthy.oneshot("probe").await.unwrap(), "probe");
    assert_eq!(breaker.state(), State::Closed, "the permit came back");
}

#[tokio::test(start_paused = true)]
async fn probe_whose_inner_call_panics_returns_its_permit() {
    let layer = breaker("contract", 1);
    let breaker = layer.handle();
    let failing = layer.layer(service_fn(|_: Req| ready(Err::<Res, _>("boom"))));
    assert!(failing.oneshot("fail").await.is_err());
    tokio::time::advance(OPEN).await;

    let mut panicking = layer.layer(service_fn(|_: Req| -> Ready<Result<Res, BoxError>> {
        panic!("the inner call panicked")
    }));
    panicking.ready().await.unwrap();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| panicking.call("probe")));
    assert!(outcome.is_err(), "the panic propagates");
    assert_eq!(breaker.state(), State::HalfOpen, "a panic records nothing");

    assert_eq!(layer.layer(echo()).oneshot("probe").await.unwrap(), "probe");
    assert_eq!(breaker.state(), State::Closed, "the permit came back");
}

#[tokio::test(start_paused = true)]
async fn timeout_outside_the_breaker_drops_the_probe_and_returns_its_permit() {
    let layer = breaker("contract", 1);
    let breaker = layer.handle();
    let failing = layer.layer(service_fn(|_: Req| ready(Err::<Res, _>("boom"))));
    assert!(failing.oneshot("fail").await.is_err());
    tokio::time::advance(OPEN).await;

    // Outside the breaker, a timeout only drops the breaker's future: nothing is recorded.
    let hanging = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_secs(1)))
        .layer(layer.clone())
        .service(service_fn(|_: Req| {
            futures::future::pending::<Result<Res, BoxError>>()
        }));
    let err = hanging.oneshot("probe").await.unwrap_err();
    assert!(err.is::<Elapsed>());
    assert_eq!(breaker.state(), State::HalfOpen);

    assert_eq!(layer.layer(echo()).oneshot("probe").await.unwrap(), "probe");
    assert_eq!(breaker.state(), State::Closed, "the permit came back");
}

// ===== readiness of the inner service =====

#[tokio::test]
async fn never_ready_inner_does_not_hold_up_rejections() {
    let layer = breaker("contract", 1);
    let (inner, mut mock) = mock::pair::<Req, Res>();
    let mut service = mock::Spawn::new(layer.layer(inner));

    mock.allow(0);
    assert_pending!(service.poll_ready(), "closed: waits for the inner service");
    layer.handle().force_open();
    assert!(
        service.is_woken(),
        "opening wakes the task waiting for the inner service"
    );
    assert_ready_ok!(service.poll_ready(), "open: rejects without waiting");
    assert!(service.call("x").await.unwrap_err().is::<Rejected>());
    assert_pending!(mock.poll_request());
}

#[tokio::test(start_paused = true)]
async fn trip_while_the_inner_is_not_ready_rejects_on_the_next_poll() {
    let layer = breaker("contract", 1);
    let (inner, mut mock) = mock::pair::<Req, Res>();
    let mut service = mock::Spawn::new(layer.layer(inner));

    mock.allow(0);
    assert_pending!(service.poll_ready());
    trip(&layer).await; // through another service of the same layer
    assert!(
        service.is_woken(),
        "the trip wakes the task waiting for the inner service"
    );
    assert_ready_ok!(service.poll_ready());
    let err = service.call("x").await.unwrap_err();
    assert_eq!(rejected(&err).state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn not_ready_inner_holds_no_probe_permit() {
    let layer = breaker("contract", 1);
    let (inner, mut mock) = mock::pair::<Req, Res>();
    let mut service = mock::Spawn::new(layer.layer(inner));
    trip(&layer).await;
    tokio::time::advance(OPEN).await;

    mock.allow(0);
    assert_pending!(
        service.poll_ready(),
        "half-open, but the inner service is not ready"
    );
    let mut other = mock::Spawn::new(layer.layer(echo()));
    assert_ready_ok!(other.poll_ready(), "the permit was not kept while waiting");
    assert_eq!(other.call("probe").await.unwrap(), "probe");
    assert_eq!(layer.handle().state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn inner_poll_ready_error_passes_through_and_returns_the_permit() {
    let layer = breaker("contract", 1);
    let (mut service, mut mock) = mock::spawn_layer::<Req, Res, _>(layer.clone());
    half_open(&layer).await;
    let breaker = service.get_ref().handle();

    mock.send_error("not ready: broken");
    let err = assert_ready_err!(service.poll_ready());
    assert!(!err.is::<Rejected>());
    assert_eq!(err.to_string(), "not ready: broken");
    assert_eq!(breaker.state(), State::HalfOpen, "nothing recorded");

    assert_ready_ok!(service.poll_ready(), "the permit came back");
    let response = service.call("probe");
    assert_request_eq!(mock, "probe").send_response("ok");
    assert_eq!(response.await.unwrap(), "ok");
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test]
async fn inner_poll_ready_error_in_closed_state_passes_through() {
    let (mut service, mut mock) = mock::spawn_layer::<Req, Res, _>(breaker("contract", 1));
    mock.send_error("not ready: broken");
    let err = assert_ready_err!(service.poll_ready());
    assert_eq!(err.to_string(), "not ready: broken");
    assert_eq!(service.get_ref().handle().state(), State::Closed);
}

// ===== fallback =====

#[tokio::test]
async fn fallback_is_called_only_while_rejecting() {
    let (fallback, mut fallback_mock) = mock::pair::<Req, Res>();
    let layer = breaker("contract", 1).with_fallback(fallback);
    let breaker = layer.handle();
    let (inner, mut mock) = mock::pair::<Req, Res>();
    let mut service = mock::Spawn::new(layer.layer(inner));

    assert_ready_ok!(service.poll_ready());
    let response = service.call("closed");
    assert_request_eq!(mock, "closed").send_response("live");
    assert_eq!(response.await.unwrap(), "live");
    assert_pending!(
        fallback_mock.poll_request(),
        "closed: the fallback is not called"
    );

    breaker.force_open();
    assert_ready_ok!(service.poll_ready());
    let response = service.call("open");
    assert_request_eq!(fallback_mock, "open").send_response("cached");
    assert_eq!(response.await.unwrap(), "cached");
    assert_pending!(mock.poll_request(), "open: the inner service is not called");
    assert_eq!(breaker.metrics().not_permitted(), 1);

    breaker.reset();
    assert_ready_ok!(service.poll_ready());
    let response = service.call("closed again");
    assert_request_eq!(mock, "closed again").send_response("live");
    assert_eq!(response.await.unwrap(), "live");
    assert_pending!(fallback_mock.poll_request());
}

#[tokio::test]
async fn fallback_readiness_is_polled_instead_of_the_inner_while_rejecting() {
    let fallback_counts = Counts::default();
    let (fallback, mut fallback_mock) = mock::pair::<Req, Res>();
    let fallback = Counted {
        inner: fallback,
        counts: fallback_counts.clone(),
    };
    let layer = breaker("contract", 1).with_fallback(fallback);
    let inner_counts = Counts::default();
    let (inner, mut mock) = mock::pair::<Req, Res>();
    let inner = Counted {
        inner,
        counts: inner_counts.clone(),
    };
    let mut service = mock::Spawn::new(layer.layer(inner));

    // Closed: a fallback that is not ready does not matter.
    fallback_mock.allow(0);
    assert_ready_ok!(service.poll_ready());
    assert_eq!((inner_counts.ready(), fallback_counts.ready()), (1, 0));
    let response = service.call("closed");
    assert_request_eq!(mock, "closed").send_response("live");
    assert_eq!(response.await.unwrap(), "live");

    // Open: an inner service that is not ready does not matter; the fallback's readiness does.
    layer.handle().force_open();
    mock.allow(0);
    assert_pending!(service.poll_ready(), "the fallback is not ready");
    assert_eq!((inner_counts.ready(), fallback_counts.ready()), (1, 1));
    fallback_mock.allow(1);
    assert!(service.is_woken(), "the fallback wakes the waiting task");
    assert_ready_ok!(service.poll_ready());
    assert_eq!((inner_counts.ready(), fallback_counts.ready()), (1, 2));
    let response = service.call("open");
    assert_request_eq!(fallback_mock, "open").send_response("cached");
    assert_eq!(response.await.unwrap(), "cached");
    assert_eq!(inner_counts.calls(), 1);
    assert_eq!(fallback_counts.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn fallback_serves_half_open_calls_without_a_permit() {
    let fallback_counts = Counts::default();
    let fallback = Counted {
        inner: service_fn(|_: Req| ready(Ok::<Res, BoxError>("cached"))),
        counts: fallback_counts.clone(),
    };
    let layer = breaker("contract", 1).with_fallback(fallback);
    let (inner, mut mock) = mock::pair::<Req, Res>();
    let inner_counts = Counts::default();
    let inner = Counted {
        inner,
        counts: inner_counts.clone(),
    };
    let mut service = mock::Spawn::new(layer.layer(inner.clone()));
    assert_ready_ok!(service.poll_ready());
    let response = service.call("fail");
    assert_request_eq!(mock, "fail").send_error("boom");
    assert!(response.await.is_err());
    tokio::time::advance(OPEN).await;
    assert_eq!(layer.handle().state(), State::HalfOpen);

    assert_ready_ok!(service.poll_ready(), "the probe");
    let mut other = mock::Spawn::new(layer.layer(inner));
    let inner_ready = inner_counts.ready();
    assert_ready_ok!(other.poll_ready());
    assert_eq!(
        inner_counts.ready(),
        inner_ready,
        "no permit: the inner is not polled"
    );
    assert_eq!(fallback_counts.ready(), 1);
    assert_eq!(other.call("other").await.unwrap(), "cached");

    let response = service.call("probe");
    assert_request_eq!(mock, "probe").send_response("live");
    assert_eq!(response.await.unwrap(), "live");
    assert_eq!(fallback_counts.calls(), 1);
    assert_eq!(layer.handle().state(), State::Closed);
}

/// §4: an open circuit never fails `poll_ready` (a `Buffer` or a balancer would discard the
/// service for good); the fallback's readiness error fails that call instead, without calling
/// the fallback, and the next call goes to the fallback again.
#[tokio::test]
async fn fallback_readiness_error_fails_that_call_not_poll_ready() {
    let (fallback, mut fallback_mock) = mock::pair::<Req, Res>();
    let layer = breaker("contract", 1).with_fallback(fallback);
    layer.handle().force_open();
    let mut service = mock::Spawn::new(layer.layer(Untouchable));

    fallback_mock.send_error("fallback broken");
    assert_ready_ok!(
        service.poll_ready(),
        "an open circuit never fails poll_ready"
    );
    let err = service.call("x").await.unwrap_err();
    assert!(!err.is::<Rejected>());
    assert_eq!(err.to_string(), "fallback broken");
    assert_pending!(
        fallback_mock.poll_request(),
        "a fallback that was not ready is not called"
    );

    assert_ready_ok!(service.poll_ready());
    let response = service.call("again");
    assert_request_eq!(fallback_mock, "again").send_response("cached");
    assert_eq!(response.await.unwrap(), "cached");
}

#[tokio::test]
async fn fallback_errors_are_boxed_and_pass_through() {
    let fallback = service_fn(|_: Req| ready(Err::<Res, _>(std::io::Error::other("no cache"))));
    let layer = breaker("contract", 1).with_fallback(fallback);
    layer.handle().force_open();
    let err = layer.layer(Untouchable).oneshot("x").await.unwrap_err();
    assert!(!err.is::<Rejected>());
    assert!(err.is::<std::io::Error>());
}

// ===== errors =====

#[tokio::test(start_paused = true)]
async fn errors_downcast_to_rejected_or_to_the_inner_error() {
    let layer = breaker("contract", 1);
    let failing = layer.layer(service_fn(|_: Req| {
        ready(Err::<Res, _>(std::io::Error::other("inner")))
    }));
    let err = failing.oneshot("x").await.unwrap_err();
    assert!(!err.is::<Rejected>());
    let io = err
        .downcast_ref::<std::io::Error>()
        .expect("the inner error, boxed as it is");
    assert_eq!(io.to_string(), "inner");

    let err = layer.layer(Untouchable).oneshot("x").await.unwrap_err();
    assert!(err.is::<Rejected>());
    let rejection = err.downcast::<Rejected>().expect("a rejection");
    assert_eq!(rejection.state(), State::Open);
    assert_eq!(rejection.name(), Some("contract"));
    assert_eq!(rejection.retry_after(), Some(OPEN));
}

// ===== types =====

fn assert_send<T: Send>(_: &T) {}
fn assert_clone_send_sync<T: Clone + Send + Sync + 'static>() {}
fn assert_debug<T: Debug>() {}

#[tokio::test]
async fn futures_are_send_and_services_are_clone_send_sync() {
    use tower_circuit_breaker::fallback::{NoFallback, WithFallback};
    use tower_circuit_breaker::future::{FallbackFuture, ResponseFuture};
    use tower_circuit_breaker::{DefaultClassify, Handle, Metrics};

    type Echo = tower::util::ServiceFn<fn(Req) -> Ready<Result<Res, BoxError>>>;
    assert_clone_send_sync::<CircuitBreakerLayer>();
    assert_clone_send_sync::<CircuitBreakerLayer<DefaultClassify, WithFallback<Echo>>>();
    assert_clone_send_sync::<CircuitBreaker<Echo>>();
    assert_clone_send_sync::<CircuitBreaker<Echo, DefaultClassify, WithFallback<Echo>>>();
    assert_clone_send_sync::<Handle>();
    assert_clone_send_sync::<Metrics>();
    assert_clone_send_sync::<Rejected>();
    assert_clone_send_sync::<NoFallback>();
    fn assert_send_static<T: Send + 'static>() {}
    assert_send_static::<tower_circuit_breaker::EventStream>();
    assert_send_static::<
        ResponseFuture<
            Ready<Result<Res, BoxError>>,
            DefaultClassify,
            FallbackFuture<Ready<Result<Res, BoxError>>>,
        >,
    >();

    // A real future from a real service, with a closure classifier and a fallback.
    let layer = CircuitBreakerLayer::builder()
        .classify(|_: Result<&Res, &BoxError>| tower_circuit_breaker::Outcome::Success)
        .call_timeout(Duration::from_secs(1))
        .build()
        .unwrap()
        .with_fallback(echo());
    let mut service = layer.layer(service_fn(|request: Req| async move {
        tokio::task::yield_now().await;
        Ok::<_, BoxError>(request)
    }));
    let future = service.ready().await.unwrap().call("x");
    assert_send(&future);
    assert_send(&service);
    assert_eq!(tokio::spawn(future).await.unwrap().unwrap(), "x");
}

#[test]
fn every_public_type_is_debug() {
    use tower_circuit_breaker::fallback::{NoFallback, WithFallback};
    use tower_circuit_breaker::future::{FallbackFuture, ResponseFuture};
    use tower_circuit_breaker::*;

    assert_debug::<CircuitBreakerLayer>();
    assert_debug::<CircuitBreakerLayer<DefaultClassify, WithFallback<Untouchable>>>();
    assert_debug::<CircuitBreaker<Untouchable>>();
    assert_debug::<ResponseFuture<Ready<Result<(), BoxError>>, DefaultClassify, Ready<()>>>();
    assert_debug::<FallbackFuture<Ready<()>>>();
    assert_debug::<NoFallback>();
    assert_debug::<WithFallback<Untouchable>>();
    assert_debug::<Builder>();
    assert_debug::<ConfigError>();
    assert_debug::<Window>();
    assert_debug::<Backoff>();
    assert_debug::<Outcome>();
    assert_debug::<DefaultClassify>();
    assert_debug::<Handle>();
    assert_debug::<Metrics>();
    assert_debug::<State>();
    assert_debug::<Event>();
    assert_debug::<EventStream>();
    assert_debug::<Rejected>();

    // And the output says what it is.
    let layer = CircuitBreakerLayer::builder().name("dbg").build().unwrap();
    assert!(format!("{layer:?}").contains("CircuitBreakerLayer"));
    let service = layer.layer(Untouchable);
    assert!(format!("{service:?}").contains("CircuitBreaker"));
    assert!(format!("{:?}", layer.handle()).contains("dbg"));
    assert!(format!("{:?}", layer.handle().metrics()).contains("Closed"));
    assert!(format!("{:?}", layer.handle().subscribe()).contains("EventStream"));
}

/// A ready service's `Debug` shows what its `poll_ready` holds: the admission and its ticket.
#[tokio::test]
async fn debug_of_a_ready_service_shows_its_admission() {
    let mut service = breaker("dbg", 1).layer(echo::<Req>());
    let idle = format!("{service:?}");
    assert!(idle.contains("ready: None"), "{idle}");
    std::future::poll_fn(|cx| service.poll_ready(cx))
        .await
        .unwrap();
    let ready = format!("{service:?}");
    assert!(
        ready.contains("Admitted") && ready.contains("kind: Recorded"),
        "{ready}"
    );
}

#[tokio::test(start_paused = true)]
async fn debug_of_a_response_future_shows_whether_it_was_called_or_rejected() {
    let layer = breaker("dbg", 1);
    let mut service = layer.layer(echo::<Req>());
    let called = service.ready().await.unwrap().call("a");
    assert!(format!("{called:?}").contains("Called"), "{called:?}");
    called.await.unwrap();
    layer.handle().force_open();
    let rejected = service.ready().await.unwrap().call("b");
    assert!(format!("{rejected:?}").contains("Rejected"), "{rejected:?}");
}

// ===== composition =====

#[tokio::test(start_paused = true)]
async fn timeout_inside_the_breaker_counts_as_a_failure() {
    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(2)
        .open_duration(OPEN)
        .build()
        .unwrap();
    let handle = breaker.handle();
    let calls = Arc::new(AtomicUsize::new(0));
    let service = ServiceBuilder::new()
        .layer(breaker)
        .layer(TimeoutLayer::new(Duration::from_secs(1)))
        .service(service_fn({
            let calls = calls.clone();
            move |request: Req| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok::<_, BoxError>(request)
                }
            }
        }));

    for _ in 0..2 {
        let err = service.clone().oneshot("slow").await.unwrap_err();
        assert!(
            err.is::<Elapsed>(),
            "the timeout's error passes through: {err:?}"
        );
    }
    assert_eq!(handle.state(), State::Open);
    assert_eq!(handle.metrics().failed(), 2);
    let err = service.clone().oneshot("slow").await.unwrap_err();
    assert!(err.is::<Rejected>());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn call_timeout_returns_elapsed_and_counts_as_a_failure() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .call_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let service = layer.layer(service_fn(|request: Req| async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, BoxError>(request)
    }));
    let err = service.oneshot("slow").await.unwrap_err();
    assert!(err.is::<Elapsed>());
    assert_eq!(layer.handle().state(), State::Open);
}

/// Retries failures, but never a rejection: retrying into an open circuit only adds load.
#[derive(Clone, Debug)]
struct RetryUnlessRejected {
    attempts_left: usize,
}

impl<Res> tower::retry::Policy<Req, Res, BoxError> for RetryUnlessRejected {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut Req, result: &mut Result<Res, BoxError>) -> Option<Ready<()>> {
        match result {
            Err(err) if !err.is::<Rejected>() && self.attempts_left > 0 => {
                self.attempts_left -= 1;
                Some(ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, request: &Req) -> Option<Req> {
        Some(*request)
    }
}

#[tokio::test]
async fn retry_outside_the_breaker_stops_at_a_rejection() {
    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(3)
        .build()
        .unwrap();
    let handle = breaker.handle();
    let calls = Arc::new(AtomicUsize::new(0));
    let service = ServiceBuilder::new()
        .retry(RetryUnlessRejected { attempts_left: 10 })
        .layer(breaker)
        .service(service_fn({
            let calls = calls.clone();
            move |_: Req| {
                calls.fetch_add(1, Ordering::SeqCst);
                ready(Err::<Res, BoxError>("down".into()))
            }
        }));

    let err = service.clone().oneshot("x").await.unwrap_err();
    assert!(
        err.is::<Rejected>(),
        "the last attempt was rejected: {err:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3, "three failures opened it");
    assert_eq!(handle.state(), State::Open);
    assert_eq!(
        handle.metrics().not_permitted(),
        1,
        "one rejection, not retried"
    );

    // Once open, a request is rejected at once and not retried at all.
    let err = service.oneshot("y").await.unwrap_err();
    assert!(err.is::<Rejected>());
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(handle.metrics().not_permitted(), 2);
}

/// `Buffer` (and so tonic's `Channel`) fails for good once its service's `poll_ready` errs. An open
/// circuit must not do that: the buffered service keeps answering, with rejections while open and
/// with responses once the breaker is reset.
#[tokio::test]
async fn buffer_in_front_of_an_open_circuit_survives_it() {
    let layer = CircuitBreakerLayer::builder().build().unwrap();
    let handle = layer.handle();
    let inner = service_fn(|x: u32| async move { Ok::<_, BoxError>(x + 1) });
    let mut buffered = tower::buffer::Buffer::new(layer.layer(inner), 8);

    handle.force_open();
    for _ in 0..3 {
        let err = buffered.ready().await.unwrap().call(1).await.unwrap_err();
        assert!(err.is::<Rejected>(), "{err}");
    }
    handle.reset();
    assert_eq!(buffered.ready().await.unwrap().call(1).await.unwrap(), 2);
}

/// An inner future that is ready at once, counting its polls and noting its drop.
struct Tracked {
    polls: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

impl Future for Tracked {
    type Output = Result<Res, BoxError>;

    fn poll(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        Poll::Ready(Ok("done"))
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn polling_after_completion_panics_without_polling_the_inner_future_or_recording_again() {
    let layer = CircuitBreakerLayer::builder()
        .call_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let breaker = layer.handle();
    let polls = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let (p, d) = (polls.clone(), dropped.clone());
    let mut svc = layer.layer(service_fn(move |_: Req| Tracked {
        polls: p.clone(),
        dropped: d.clone(),
    }));
    svc.ready().await.unwrap();
    let mut response = task::spawn(svc.call("x"));
    assert_eq!(assert_ready_ok!(response.poll()), "done");
    assert_eq!(breaker.metrics().calls(), 1);
    // The finished inner future is kept until the response future is dropped.
    assert_eq!(dropped.load(Ordering::SeqCst), 0);

    let again = std::panic::catch_unwind(AssertUnwindSafe(|| response.poll()));
    assert!(again.is_err(), "a poll after completion panics");
    assert_eq!(
        polls.load(Ordering::SeqCst),
        1,
        "the inner future is not polled again"
    );
    assert_eq!(breaker.metrics().calls(), 1, "nothing is recorded twice");
    drop(response);
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_call_drops_its_inner_future_at_once_and_panics_if_polled_again() {
    let layer = CircuitBreakerLayer::builder()
        .call_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let breaker = layer.handle();
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    let mut svc = layer.layer(service_fn(move |_: Req| {
        let guard = Tracked {
            polls: Arc::new(AtomicUsize::new(0)),
            dropped: d.clone(),
        };
        futures::future::pending::<Result<Res, BoxError>>().map(move |r| {
            let _ = &guard;
            r
        })
    }));
    svc.ready().await.unwrap();
    let mut response = task::spawn(svc.call("x"));
    assert_pending!(response.poll());
    tokio::time::advance(Duration::from_secs(1)).await;
    let err = assert_ready_err!(response.poll());
    assert!(err.is::<Elapsed>());
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "dropped when the timeout fired"
    );
    assert_eq!(breaker.metrics().calls(), 1);

    let again = std::panic::catch_unwind(AssertUnwindSafe(|| response.poll()));
    assert!(again.is_err(), "a poll after completion panics");
    assert_eq!(breaker.metrics().calls(), 1, "nothing is recorded twice");
}

/// A `Buffer` worker polls its service's readiness for every queued request: parked on an inner
/// service that is never ready (a dead host), it would hold up every caller. When the circuit
/// opens, the breaker wakes it and the queued request is rejected.
#[tokio::test(start_paused = true)]
async fn buffer_parked_on_a_never_ready_inner_is_released_when_the_circuit_opens() {
    let layer = breaker("contract", 1);
    let handle = layer.handle();
    let (inner, mut mock) = mock::pair::<Req, Res>();
    mock.allow(0);
    let mut buffered = tower::buffer::Buffer::new(layer.layer(inner), 8);

    let queued = tokio::spawn(async move { buffered.ready().await?.call("x").await });
    tokio::task::yield_now().await; // the worker takes the request and waits for readiness
    handle.force_open();
    // On the paused clock an idle runtime jumps to this deadline: a worker left parked fails here.
    let result = tokio::time::timeout(Duration::from_secs(60), queued)
        .await
        .expect("the queued request ends once the circuit opens")
        .expect("the task does not panic");
    let err = result.expect_err("rejected");
    assert_eq!(rejected(&err).state(), State::ForcedOpen);
    // The buffer (and the inner service with it) is gone: no request ever reached the mock.
    assert!(matches!(mock.poll_request(), Poll::Ready(None)));
}

/// A clone that waits leaves its waker in one slot of the breaker's waiting list, reused when it
/// is polled again and given back when it is dropped: a transition wakes only the waker of each
/// live clone's latest poll.
#[tokio::test]
async fn clones_that_waited_and_were_dropped_leave_later_waiters_working() {
    let layer = breaker("contract", 1);
    let (inner, mut mock) = mock::pair::<Req, Res>();
    mock.allow(0);
    let service = layer.layer(inner);
    let mut dropped = Vec::new();
    for _ in 0..100 {
        let mut clone = service.clone();
        let ((first, first_wakes), (second, second_wakes)) =
            (CountsWakes::waker(), CountsWakes::waker());
        assert!(
            clone
                .poll_ready(&mut Context::from_waker(&first))
                .is_pending()
        );
        assert!(
            clone
                .poll_ready(&mut Context::from_waker(&second))
                .is_pending()
        );
        dropped.extend([first_wakes, second_wakes]);
    }
    let mut waiting = service.clone();
    let ((first, first_wakes), (second, second_wakes)) =
        (CountsWakes::waker(), CountsWakes::waker());
    assert!(
        waiting
            .poll_ready(&mut Context::from_waker(&first))
            .is_pending()
    );
    assert!(
        waiting
            .poll_ready(&mut Context::from_waker(&second))
            .is_pending()
    );

    layer.handle().force_open();
    assert_eq!(second_wakes.wakes(), 1, "the waiting clone is woken");
    assert_eq!(
        first_wakes.wakes(),
        0,
        "polled twice: still one slot, the second poll's waker replaced the first's"
    );
    assert!(
        dropped.iter().all(|wakes| wakes.wakes() == 0),
        "a dropped clone gave its slot back: none of its wakers is woken"
    );
}
