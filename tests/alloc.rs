//! Allocations per call, counted by a `#[global_allocator]` that exists in this test binary only.
//!
//! The closed-state path allocates nothing (DESIGN.md §4): `poll_ready`, `call` and the response
//! future are plain values, the state is atomics behind an `Arc` made when the layer was built,
//! and no event or tracing record is made while nobody listens. The same holds in `Disabled`,
//! in `MetricsOnly`, and with a time window and slow-call tracking (which only read the clock).
//!
//! What allocates on the rejection path, and why:
//!
//! * Without a fallback, a rejected call fails with `Rejected` boxed into a `tower::BoxError`:
//!   **one allocation**, the box. `Rejected` itself holds the state, the retry-after hint and the
//!   breaker's name as an `Arc<str>` (a reference count, no copy); its future is a
//!   `std::future::Ready`. Boxing is the price of tower's error convention (`err.is::<Rejected>()`
//!   through any number of layers), and `Timeout` and `LoadShed` pay it in the same way.
//! * With a fallback, nothing is boxed: the fallback answers, so **no allocation** beyond what the
//!   fallback service itself does (none, for an always-ready `service_fn` returning `ready(Ok)`).
//!
//! Each call is driven by hand with a no-op waker, so no executor allocates on our behalf. The
//! counter is per thread, so tests running in parallel do not see each other's allocations.

mod support;

use std::convert::Infallible;
use std::future::{Future, ready};
use std::pin::pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::noop_waker;
use support::alloc::{Counting, allocations};
use support::plain::echo;
use tower::{BoxError, Layer, Service, service_fn};
use tower_circuit_breaker::error::Rejected;
use tower_circuit_breaker::{CircuitBreakerLayer, State, Window};

// ===== the counting allocator =====

#[global_allocator]
static COUNTING: Counting = Counting;

// ===== driving calls by hand =====

const WARM_UP: u64 = 100;
const CALLS: u64 = 10_000;

/// One call: `poll_ready`, `call`, and the response future polled to completion, all with a
/// no-op waker. Everything here must be ready at once.
fn call_once<S: Service<u64>>(service: &mut S, request: u64) -> Result<S::Response, S::Error> {
    let waker = noop_waker();
    let mut cx = Context::from_waker(&waker);
    match service.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(_)) => panic!("poll_ready failed"),
        Poll::Pending => panic!("poll_ready was not ready at once"),
    }
    let mut future = pin!(service.call(request));
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(result) => result,
        Poll::Pending => panic!("the response future was not ready at once"),
    }
}

/// Allocations made by `CALLS` calls of `one`, after `WARM_UP` calls (lazy thread-locals and the
/// like).
fn allocations_of(mut one: impl FnMut(u64)) -> u64 {
    for i in 0..WARM_UP {
        one(i);
    }
    let before = allocations();
    for i in 0..CALLS {
        one(i);
    }
    allocations() - before
}

fn assert_closed_path_allocates_nothing(layer: &CircuitBreakerLayer, expected: State) {
    let mut service = layer.layer(echo());
    let allocated = allocations_of(|i| {
        let response = call_once(&mut service, i).expect("the call succeeds");
        assert_eq!(response, i);
    });
    assert_eq!(allocated, 0, "allocations in {CALLS} calls");
    assert_eq!(layer.handle().state(), expected);
}

// ===== tests =====

#[test]
fn the_counter_sees_allocations() {
    let before = allocations();
    let boxed = std::hint::black_box(Box::new(7u64));
    assert_eq!(allocations() - before, 1);
    drop(boxed);
}

#[test]
fn closed_success_path_allocates_nothing() {
    let layer = CircuitBreakerLayer::builder()
        .name("alloc")
        .build()
        .unwrap();
    assert_closed_path_allocates_nothing(&layer, State::Closed);
    assert_eq!(
        layer.handle().metrics().successful(),
        100,
        "a full window of successes"
    );
}

#[test]
fn closed_success_path_with_every_threshold_allocates_nothing() {
    let layer = CircuitBreakerLayer::builder()
        .name("alloc")
        .failure_rate_threshold(0.5)
        .consecutive_failures(5)
        .sliding_window(Window::count(1_000))
        .minimum_calls(10)
        .build()
        .unwrap();
    assert_closed_path_allocates_nothing(&layer, State::Closed);
}

#[test]
fn closed_path_with_a_time_window_and_slow_calls_allocates_nothing() {
    let layer = CircuitBreakerLayer::builder()
        .name("alloc")
        .sliding_window(Window::time(Duration::from_secs(10)).buckets(10))
        .slow_call_duration(Duration::from_secs(1))
        .slow_call_rate_threshold(0.5)
        .minimum_calls(10)
        .build()
        .unwrap();
    assert_closed_path_allocates_nothing(&layer, State::Closed);
    assert!(
        layer.handle().metrics().calls() > 0,
        "outcomes were recorded"
    );
}

#[test]
fn closed_path_with_adaptive_throttling_and_a_learned_threshold_allocates_nothing() {
    use tower_circuit_breaker::{AdaptiveThrottle, LearnedThreshold};
    for builder in [
        CircuitBreakerLayer::builder().adaptive_throttling(AdaptiveThrottle::new()),
        CircuitBreakerLayer::builder()
            .minimum_calls(10)
            .learned_failure_threshold(LearnedThreshold::new()),
    ] {
        let layer = builder.name("alloc").build().unwrap();
        assert_closed_path_allocates_nothing(&layer, State::Closed);
    }
}

#[test]
fn closed_path_with_a_subscriber_allocates_nothing() {
    let layer = CircuitBreakerLayer::builder().build().unwrap();
    // Events are made only on transitions; a healthy call makes none.
    let _events = layer.handle().subscribe();
    assert_closed_path_allocates_nothing(&layer, State::Closed);
}

#[test]
fn disabled_path_allocates_nothing() {
    let layer = CircuitBreakerLayer::builder().build().unwrap();
    layer.handle().disable();
    assert_closed_path_allocates_nothing(&layer, State::Disabled);
}

#[test]
fn metrics_only_path_allocates_nothing() {
    let layer = CircuitBreakerLayer::builder().build().unwrap();
    layer.handle().metrics_only();
    assert_closed_path_allocates_nothing(&layer, State::MetricsOnly);
    assert_eq!(layer.handle().metrics().calls(), 100);
}

#[test]
fn metrics_only_with_failures_allocates_only_the_boxed_errors() {
    let layer = CircuitBreakerLayer::builder().build().unwrap();
    layer.handle().metrics_only();
    // An `io::Error` made from a kind is not allocated; the breaker boxes it into a `BoxError`:
    // one allocation a call, and nothing else.
    let mut service = layer.layer(service_fn(|_: u64| {
        ready(Err::<u64, _>(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )))
    }));
    let allocated = allocations_of(|i| {
        call_once(&mut service, i).expect_err("the call fails");
    });
    assert_eq!(allocated, CALLS);
    assert_eq!(layer.handle().state(), State::MetricsOnly, "never trips");
}

#[test]
fn open_rejection_allocates_the_boxed_error_only() {
    let layer = CircuitBreakerLayer::builder()
        .name("alloc")
        .consecutive_failures(1)
        .open_duration(Duration::from_secs(3600))
        .build()
        .unwrap();
    let mut failing = layer.layer(service_fn(|_: u64| ready(Err::<u64, _>("down"))));
    call_once(&mut failing, 0).expect_err("the call fails");
    assert_eq!(layer.handle().state(), State::Open);

    let mut service = layer.layer(echo());
    let allocated = allocations_of(|i| {
        let err: BoxError = call_once(&mut service, i).expect_err("rejected");
        assert!(err.is::<Rejected>());
    });
    assert_eq!(allocated, CALLS, "one allocation per rejection: the box");
    assert_eq!(layer.handle().metrics().not_permitted(), WARM_UP + CALLS);
}

#[test]
fn forced_open_rejection_allocates_the_boxed_error_only() {
    let layer = CircuitBreakerLayer::builder()
        .name("alloc")
        .build()
        .unwrap();
    layer.handle().force_open();
    let mut service = layer.layer(echo());
    let allocated = allocations_of(|i| {
        let err: BoxError = call_once(&mut service, i).expect_err("rejected");
        assert!(err.is::<Rejected>());
    });
    assert_eq!(allocated, CALLS, "one allocation per rejection: the box");
}

#[test]
fn fallback_rejection_allocates_nothing() {
    let layer = CircuitBreakerLayer::builder()
        .name("alloc")
        .build()
        .unwrap()
        .with_fallback(service_fn(|request: u64| {
            ready(Ok::<_, Infallible>(request + 1))
        }));
    layer.handle().force_open();
    let mut service = layer.layer(echo());
    let allocated = allocations_of(|i| {
        assert_eq!(
            call_once(&mut service, i).expect("the fallback answers"),
            i + 1
        );
    });
    assert_eq!(allocated, 0);
    assert_eq!(layer.handle().metrics().not_permitted(), WARM_UP + CALLS);
}

/// Pending on its first poll, then ready with the request.
struct YieldOnce(u64, bool);

impl Future for YieldOnce {
    type Output = Result<u64, Infallible>;

    fn poll(mut self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        if std::mem::replace(&mut self.1, true) {
            Poll::Ready(Ok(self.0))
        } else {
            Poll::Pending
        }
    }
}

/// A runtime with its timer (for a call timeout's `tokio::time::Sleep`), to enter.
fn timer_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// A breaker with a one-second call timeout.
fn with_call_timeout() -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .call_timeout(Duration::from_secs(1))
        .build()
        .unwrap()
}

#[test]
fn pending_call_with_a_call_timeout_allocates_nothing() {
    // The inner future is pending once: the response future makes and polls its timer (a
    // `tokio::time::Sleep`, registered with the runtime's timer) before the response arrives.
    let runtime = timer_runtime();
    let _context = runtime.enter();
    let layer = with_call_timeout();
    let mut service = layer.layer(service_fn(|request: u64| YieldOnce(request, false)));
    let waker = noop_waker();
    let mut cx = Context::from_waker(&waker);
    let allocated = allocations_of(|i| {
        assert!(service.poll_ready(&mut cx).is_ready());
        let mut future = pin!(service.call(i));
        assert!(future.as_mut().poll(&mut cx).is_pending(), "pending once");
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(response)) => assert_eq!(response, i),
            other => panic!("expected the response, got {other:?}"),
        }
    });
    assert_eq!(allocated, 0, "allocations in {CALLS} calls");
    assert_eq!(layer.handle().metrics().successful(), 100);
}

#[test]
fn closed_path_with_a_call_timeout_allocates_nothing() {
    // Every call here is answered on its first poll: no timer is ever made.
    let runtime = timer_runtime();
    let _context = runtime.enter();
    assert_closed_path_allocates_nothing(&with_call_timeout(), State::Closed);
}

/// The 503 response mode allocates what the response holds (its header map, the `Retry-After`
/// value, the extensions map that marks it), and nothing of the breaker's: no boxed error, no
/// string. Measured against the same response built by hand.
#[cfg(feature = "http")]
#[test]
fn a_503_rejection_allocates_only_the_response_it_answers_with() {
    use http::header::RETRY_AFTER;
    use http::{HeaderValue, Response, StatusCode};

    let runtime = timer_runtime();
    let _context = runtime.enter();
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(Duration::from_secs(60))
        .build()
        .unwrap()
        .with_http_responses();
    let mut service = layer.layer(service_fn(|fail: u64| {
        ready(if fail == 1 {
            Err("down")
        } else {
            Ok(Response::new(()))
        })
    }));
    let _ = call_once(&mut service, 1); // trips
    let marker = call_once(&mut service, 0)
        .unwrap()
        .extensions()
        .get::<Rejected>()
        .cloned()
        .expect("a breaker's 503");

    let rejected = allocations_of(|_| {
        let response = call_once(&mut service, 0).expect("answered");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    });
    let by_hand = allocations_of(|_| {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(60u64));
        response.extensions_mut().insert(marker.clone());
        std::hint::black_box(response);
    });
    assert_eq!(rejected, by_hand, "allocations in {CALLS} rejections");
    assert_eq!(
        layer.handle().metrics().not_permitted(),
        WARM_UP + CALLS + 1
    );
}

/// A regression guard for what every call moves: the response future of a breaker around an
/// immediately-ready service (the inner future and the rejection future are 24 bytes each). It
/// holds the inner future, the call timeout's timer (inline, so that a timed call allocates
/// nothing) and the completion (the admission, the start and the deadline). Growing it makes every
/// `async` caller that holds it move more; a change that must grow it updates this figure.
#[test]
fn the_response_future_of_a_ready_service_is_at_most_184_bytes() {
    use tower_circuit_breaker::DefaultClassify;
    use tower_circuit_breaker::future::ResponseFuture;

    type Ready24 = std::future::Ready<Result<u64, BoxError>>;
    assert_eq!(std::mem::size_of::<Ready24>(), 24);
    let size = std::mem::size_of::<ResponseFuture<Ready24, DefaultClassify, Ready24>>();
    assert!(size <= 184, "{size} bytes");
}

/// A regression guard for the heap of one breaker with a time window of 60 buckets (a minute in
/// seconds), the target being 2 KiB: the breaker with its window (32-bit counts per bucket, no
/// slow counts unless slow calls are tracked), its configuration, the layer's lanes, and the
/// lane of the one thread that called. A change that must grow it updates this figure.
#[test]
fn a_breaker_with_a_60_bucket_time_window_costs_at_most_1976_bytes() {
    let before = support::alloc::live_bytes();
    let layer = CircuitBreakerLayer::builder()
        .sliding_window(Window::time(Duration::from_secs(60)).buckets(60))
        .build()
        .unwrap();
    let mut service = layer.layer(echo());
    call_once(&mut service, 1).unwrap();
    let bytes = support::alloc::live_bytes() - before;
    assert!(bytes <= 1976, "{bytes} B");
    drop((service, layer));
}
