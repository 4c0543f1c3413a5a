//! DESIGN §3 and §4, readiness: a task waiting on the fallback's readiness is woken when the
//! circuit stops rejecting (`reset()`, a closing probe, the end of the open interval), so that a
//! `Buffer` in front never stalls; a fallback's readiness error fails one call and never
//! `poll_ready` (which would poison the `Buffer`); and a panic in user code (the inner service's
//! `poll_ready`, the classifier) leaks no probe permit and never polls a finished future again.

mod support;

use std::future::{Future, Ready, ready};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures::task::noop_waker;
use support::*;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::buffer::Buffer;
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_circuit_breaker::fallback::WithFallback;
use tower_circuit_breaker::{Outcome, State};

// ===== services =====

/// A fallback that is never ready (and so must never be called).
#[derive(Clone, Debug)]
struct NeverReady;

impl Service<Req> for NeverReady {
    type Response = &'static str;
    type Error = BoxError;
    type Future = Ready<Result<&'static str, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Pending
    }

    fn call(&mut self, _: Req) -> Self::Future {
        panic!("the never-ready fallback was called");
    }
}

/// A fallback that answers "cached", except that its `poll_ready` fails once when `broken` is set.
#[derive(Clone, Debug, Default)]
struct BreaksOnce {
    broken: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
}

impl Service<Req> for BreaksOnce {
    type Response = &'static str;
    type Error = BoxError;
    type Future = Ready<Result<&'static str, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.broken.swap(false, Ordering::SeqCst) {
            return Poll::Ready(Err("fallback broken".into()));
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Req) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        ready(Ok("cached"))
    }
}

/// [`Inner`], whose `poll_ready` panics while `armed` is set.
#[derive(Clone, Debug, Default)]
struct PanicsWhenArmed {
    inner: Inner,
    armed: Arc<AtomicBool>,
}

impl Service<Req> for PanicsWhenArmed {
    type Response = &'static str;
    type Error = TestError;
    type Future = <Inner as Service<Req>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TestError>> {
        if self.armed.load(Ordering::SeqCst) {
            panic!("the inner poll_ready panicked");
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.inner.call(req)
    }
}

/// An inner service whose future answers `Ok("ok")` at once and counts how often it is polled.
#[derive(Clone, Debug, Default)]
struct CountsPolls {
    polls: Arc<AtomicUsize>,
}

struct CountedPolls(Arc<AtomicUsize>);

impl Future for CountedPolls {
    type Output = Result<&'static str, TestError>;

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Poll::Ready(Ok("ok"))
    }
}

impl Service<()> for CountsPolls {
    type Response = &'static str;
    type Error = TestError;
    type Future = CountedPolls;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), TestError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ()) -> CountedPolls {
        CountedPolls(self.polls.clone())
    }
}

fn classifier_panics(_: Result<&&'static str, &TestError>) -> Outcome {
    panic!("the classifier panicked");
}

// ===== driving =====

/// Lets the spawned tasks (the caller, the `Buffer` worker) run, without moving the clock.
async fn let_tasks_run() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// Whether `task` finishes within 100 yields (no time passes).
async fn finishes_soon<T>(task: &JoinHandle<T>) -> bool {
    for _ in 0..100 {
        if task.is_finished() {
            return true;
        }
        tokio::task::yield_now().await;
    }
    task.is_finished()
}

/// A call through `buffered`, on a task of its own.
fn spawn_call<S>(mut buffered: S) -> JoinHandle<Result<&'static str, BoxError>>
where
    S: Service<Req, Response = &'static str, Error = BoxError> + Send + 'static,
    S::Future: Send,
{
    tokio::spawn(async move { call(&mut buffered, ok()).await })
}

/// A breaker that opens for `open` after one failure, with a fallback that is never ready.
fn behind_a_never_ready_fallback(
    open: std::time::Duration,
) -> (
    tower_circuit_breaker::Handle,
    tower_circuit_breaker::CircuitBreaker<Inner, Classifier, WithFallback<NeverReady>>,
) {
    let layer = builder()
        .consecutive_failures(1)
        .open_duration(open)
        .build()
        .expect("valid")
        .with_fallback(NeverReady);
    (layer.handle(), layer.layer(Inner::default()))
}

// ===== a task waiting on the fallback is woken when the circuit stops rejecting =====

#[tokio::test(start_paused = true)]
async fn a_buffered_call_waiting_on_the_fallback_proceeds_when_the_open_interval_ends() {
    let (handle, svc) = behind_a_never_ready_fallback(secs(1));
    let mut buffered = Buffer::new(svc, 8);
    assert_admitted(&call(&mut buffered, fail()).await);
    let tripped = Instant::now();

    // Nobody reads the state from here on: only the breaker can wake the Buffer's worker.
    let waiting = spawn_call(buffered.clone());
    let_tasks_run().await;
    advance(ms(999)).await;
    let_tasks_run().await;
    assert!(
        !waiting.is_finished(),
        "open: the fallback's readiness decides"
    );

    advance(ms(1)).await;
    let result = tokio::time::timeout(secs(60), waiting)
        .await
        .expect("still stuck 60 s after the open interval ended: the task waiting on the fallback was never woken")
        .expect("the task did not panic");
    assert_eq!(result.expect("admitted as the probe"), "ok");
    assert!(
        Instant::now() - tripped <= secs(1) + ms(10),
        "woken when the interval ended, not {:?} after the trip",
        Instant::now() - tripped
    );
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(call(&mut buffered, ok()).await.unwrap(), "ok");
}

#[tokio::test(start_paused = true)]
async fn a_buffered_call_waiting_on_the_fallback_proceeds_on_reset() {
    let (handle, svc) = behind_a_never_ready_fallback(secs(60));
    let mut buffered = Buffer::new(svc, 8);
    assert_admitted(&call(&mut buffered, fail()).await);

    let waiting = spawn_call(buffered.clone());
    let_tasks_run().await;
    assert!(
        !waiting.is_finished(),
        "open: the fallback's readiness decides"
    );

    let before = Instant::now();
    handle.reset();
    assert!(
        finishes_soon(&waiting).await,
        "reset() did not wake the task waiting on the fallback"
    );
    assert_eq!(Instant::now(), before, "no time passed: reset() woke it");
    assert_eq!(waiting.await.unwrap().expect("admitted"), "ok");
    assert_eq!(call(&mut buffered, ok()).await.unwrap(), "ok");
}

#[tokio::test(start_paused = true)]
async fn a_buffered_call_waiting_on_the_fallback_proceeds_when_a_probe_closes_the_circuit() {
    let (handle, svc) = behind_a_never_ready_fallback(secs(1)); // one probe permit
    let mut prober = svc.clone();
    let mut buffered = Buffer::new(svc, 8);
    assert_admitted(&call(&mut buffered, fail()).await);
    advance(secs(1)).await;

    // The only probe permit, taken beside the Buffer: its worker's call is rejected (HalfOpen)
    // and waits on the fallback.
    let (req, gate) = gated();
    let probe = start(&mut prober, req).await;
    let waiting = spawn_call(buffered.clone());
    let_tasks_run().await;
    assert!(!waiting.is_finished(), "every probe permit is taken");

    gate.open(Reply::Ok);
    assert_eq!(probe.await.unwrap(), "ok");
    let closed_at = Instant::now();
    assert!(
        finishes_soon(&waiting).await,
        "the closing probe did not wake the task waiting on the fallback"
    );
    assert_eq!(Instant::now(), closed_at);
    assert_eq!(waiting.await.unwrap().expect("admitted"), "ok");
    assert_eq!(handle.state(), State::Closed);
}

// ===== a fallback's readiness error fails one call, never poll_ready =====

#[tokio::test(start_paused = true)]
async fn a_fallback_readiness_error_fails_one_call_and_leaves_a_buffer_working() {
    let fallback = BreaksOnce::default();
    let layer = builder()
        .build()
        .expect("valid")
        .with_fallback(fallback.clone());
    let handle = layer.handle();
    let mut buffered = Buffer::new(layer.layer(Inner::default()), 8);
    handle.force_open();

    fallback.broken.store(true, Ordering::SeqCst);
    let err = call(&mut buffered, ok()).await.unwrap_err();
    assert_eq!(err.to_string(), "fallback broken", "that call fails, alone");
    assert_eq!(
        fallback.calls.load(Ordering::SeqCst),
        0,
        "a fallback that was not ready is not called"
    );

    // Still rejecting: the fallback answers again, through the same Buffer.
    assert_eq!(call(&mut buffered, ok()).await.unwrap(), "cached");
    assert_eq!(fallback.calls.load(Ordering::SeqCst), 1);

    // Closed again: the inner service answers, through the same Buffer.
    handle.reset();
    assert_eq!(call(&mut buffered, ok()).await.unwrap(), "ok");
    assert_eq!(call(&mut buffered, ok()).await.unwrap(), "ok");
}

// ===== a panic in user code leaks nothing =====

#[tokio::test(start_paused = true)]
async fn a_probe_permit_is_given_back_when_the_inner_poll_ready_panics() {
    let layer = builder()
        .consecutive_failures(1)
        .open_duration(secs(1))
        .half_open_calls(1)
        .build()
        .expect("valid");
    let handle = layer.handle();
    let inner = PanicsWhenArmed::default();
    let armed = inner.armed.clone();
    let mut svc = layer.layer(inner);
    assert_admitted(&call(&mut svc, fail()).await);
    advance(secs(1)).await;
    assert_eq!(handle.state(), State::HalfOpen);

    // The probe's readiness check panics in the inner service; the caller survives it and drops
    // the service.
    armed.store(true, Ordering::SeqCst);
    let mut doomed = svc.clone();
    let waker = noop_waker();
    let mut cx = Context::from_waker(&waker);
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        Service::<Req>::poll_ready(&mut doomed, &mut cx)
    }));
    assert!(panicked.is_err(), "the inner poll_ready panicked");
    drop(doomed);
    armed.store(false, Ordering::SeqCst);

    let result = call(&mut svc.clone(), ok()).await;
    assert_eq!(
        result.expect("admitted as the probe, not rejected as HalfOpen"),
        "ok"
    );
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test]
async fn a_response_future_never_polls_its_inner_future_again_after_the_classifier_panicked() {
    let inner = CountsPolls::default();
    let polls = inner.polls.clone();
    let layer = builder()
        .classify(classifier_panics as Classifier)
        .build()
        .expect("valid");
    let mut svc = layer.layer(inner);
    svc.ready().await.expect("closed");
    let mut response = pin!(svc.call(()));

    let waker = noop_waker();
    let mut cx = Context::from_waker(&waker);
    let first = catch_unwind(AssertUnwindSafe(|| response.as_mut().poll(&mut cx)));
    assert!(first.is_err(), "the classifier panicked");
    assert_eq!(polls.load(Ordering::SeqCst), 1);

    // Polled again (a panic here, "polled after completion", is allowed): the inner future has
    // finished and must not be polled again.
    let _ = catch_unwind(AssertUnwindSafe(|| response.as_mut().poll(&mut cx)));
    assert_eq!(
        polls.load(Ordering::SeqCst),
        1,
        "the finished inner future was polled again"
    );
}
