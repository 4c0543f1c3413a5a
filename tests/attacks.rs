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
