//! Attacks on the announcement of transitions: user code (wakers) that panics while a transition
//! is announced must not silence the breaker for good, nor keep other tasks asleep.

mod support;

use std::future::{Ready, ready};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::task::{Context, Wake, Waker};

use support::CountsWakes;
use tower::{Layer, Service, service_fn};
use tower_circuit_breaker::{CircuitBreaker, CircuitBreakerLayer, State};

type Echo = tower::util::ServiceFn<fn(()) -> Ready<Result<(), &'static str>>>;

/// A waker that panics when woken.
struct PanicsOnWake;

impl Wake for PanicsOnWake {
    fn wake(self: Arc<Self>) {
        panic!("a waker that panics");
    }
}

fn gated() -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .build()
        .unwrap()
        .pending_while_open()
}

fn service(layer: &CircuitBreakerLayer) -> CircuitBreaker<Echo> {
    layer.layer(service_fn(
        (|()| ready(Ok(()))) as fn(()) -> Ready<Result<(), &'static str>>,
    ))
}

/// Leaves `waker` waiting on `svc` (the circuit rejects).
fn wait(svc: &mut CircuitBreaker<Echo>, waker: &Waker) {
    assert!(svc.poll_ready(&mut Context::from_waker(waker)).is_pending());
}

#[test]
fn a_waker_that_panics_does_not_stop_the_announcements_of_later_transitions() {
    let layer = gated();
    let handle = layer.handle();
    handle.force_open();
    let mut panicking = service(&layer);
    wait(&mut panicking, &Waker::from(Arc::new(PanicsOnWake)));
    let reset = catch_unwind(AssertUnwindSafe(|| handle.reset()));
    assert!(reset.is_err(), "the waker's panic reaches the caller");
    assert_eq!(handle.state(), State::Closed, "the transition was made");

    handle.force_open();
    let mut waiting = service(&layer);
    let (waker, counts) = CountsWakes::waker();
    wait(&mut waiting, &waker);
    handle.reset();
    assert_eq!(
        counts.wakes(),
        1,
        "a later transition wakes the waiting task"
    );
}

#[test]
fn a_waker_that_panics_does_not_keep_the_other_waiting_tasks_asleep() {
    let layer = gated();
    let handle = layer.handle();
    handle.force_open();
    let mut panicking = service(&layer);
    wait(&mut panicking, &Waker::from(Arc::new(PanicsOnWake)));
    let mut waiting = service(&layer);
    let (waker, counts) = CountsWakes::waker();
    wait(&mut waiting, &waker);
    let _ = catch_unwind(AssertUnwindSafe(|| handle.reset()));
    assert_eq!(counts.wakes(), 1, "woken by the same transition");
}

// ===== the new public types: Send, Sync, Unpin where their parts are =====

#[cfg(feature = "grpc")]
#[test]
fn the_http_grpc_retry_and_readiness_types_are_send_and_sync_where_their_parts_are() {
    use std::convert::Infallible;
    use std::future::Ready;

    use bytes::Bytes;
    use http_body_util::Full;
    use tower_circuit_breaker::future::ResponseFuture;
    use tower_circuit_breaker::grpc::{GrpcClassify, GrpcHints, GrpcResponses};
    use tower_circuit_breaker::http::{
        HttpClassify, HttpHints, HttpResponseFuture, HttpResponses, TrackBody, TrackBodyFuture,
        TrackedBody,
    };
    use tower_circuit_breaker::readiness::PanicGroup;
    use tower_circuit_breaker::retry::{RespectBreaker, RetryFuture};

    fn send_sync<T: Send + Sync>() {}
    fn unpin<T: Unpin>() {}
    type Body = TrackedBody<Full<Bytes>>;
    type Answer = Ready<Result<http::Response<Body>, Infallible>>;
    send_sync::<Body>();
    unpin::<Body>();
    send_sync::<TrackBody<Echo>>();
    send_sync::<TrackBodyFuture<Answer>>();
    send_sync::<HttpClassify>();
    send_sync::<HttpClassify<tower_circuit_breaker::http::AtEndOfBody>>();
    send_sync::<HttpResponses>();
    send_sync::<HttpResponseFuture<Body, Infallible>>();
    unpin::<HttpResponseFuture<Body, Infallible>>();
    send_sync::<HttpResponseFuture<Body, Infallible, GrpcResponses>>();
    send_sync::<ResponseFuture<Answer, HttpClassify, HttpResponseFuture<Body, Infallible>>>();
    send_sync::<GrpcClassify>();
    send_sync::<GrpcHints>();
    send_sync::<HttpHints>();
    send_sync::<PanicGroup>();
    send_sync::<RespectBreaker<(), HttpHints>>();
    send_sync::<RetryFuture<Ready<()>>>();
    send_sync::<CircuitBreakerLayer<HttpClassify, HttpResponses>>();
}

/// Retries every error `.0` times, after a timer: its future is `!Unpin` (a `Sleep`).
#[derive(Clone)]
struct Twice(usize);

type Wait = futures::future::Map<tokio::time::Sleep, fn(())>;

impl tower::retry::Policy<(), (), tower::BoxError> for Twice {
    type Future = Wait;

    fn retry(&mut self, _: &mut (), result: &mut Result<(), tower::BoxError>) -> Option<Wait> {
        (result.is_err() && self.0 > 0).then(|| {
            self.0 -= 1;
            let wait = tokio::time::sleep(std::time::Duration::from_millis(1));
            futures::FutureExt::map(wait, drop as fn(()))
        })
    }

    fn clone_request(&mut self, _: &()) -> Option<()> {
        Some(())
    }
}

#[tokio::test(start_paused = true)]
async fn respect_breaker_takes_a_policy_whose_future_is_not_unpin() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tower::ServiceExt;
    use tower_circuit_breaker::retry::RespectBreaker;

    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let inner = service_fn(move |()| {
        counted.fetch_add(1, Ordering::SeqCst);
        ready(Err::<(), tower::BoxError>("down".into()))
    });
    let svc = tower::retry::Retry::new(RespectBreaker::new(Twice(2)), inner);
    assert!(svc.oneshot(()).await.is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 3, "two retries, each waited");
}
