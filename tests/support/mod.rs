//! Shared helpers for the semantics tests (`closed`, `open`, `half_open`, `always`, `config`),
//! [`Counted`], which `tower_contract` and `composition` wrap around their own services, and
//! [`await_half_open`] for the multi-thread tests (`concurrency`, `composition`).
//!
//! The inner service is [`Inner`]: each request says how the call ends ([`Req`]) and after how
//! long, so a test controls every outcome and every latency on tokio's paused clock. [`Counters`]
//! count the inner service's `poll_ready` and `call` invocations, so a test can prove that a
//! rejection never touched it. The classifier [`classify`] maps [`TestError::Ignore`] to
//! [`Outcome::Ignored`], every other error to a failure and `Ok` to a success.

#![allow(dead_code, unreachable_pub)]

pub mod alloc;
pub mod exposition;
pub mod plain;
#[cfg(feature = "redis")]
pub mod redis;
pub mod traced;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio::sync::oneshot;
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_circuit_breaker::error::Rejected;
use tower_circuit_breaker::{
    Builder, CircuitBreaker, CircuitBreakerLayer, Event, EventStream, Handle, Outcome, State,
};

// ===== requests =====

/// How a call to [`Inner`] ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `Ok("ok")`: a success.
    Ok,
    /// `Err(TestError::Fail)`: a failure.
    Fail,
    /// `Err(TestError::Ignore)`: ignored by [`classify`].
    Ignore,
}

/// One request to [`Inner`]: the reply, and when it comes.
#[derive(Debug)]
pub struct Req {
    reply: Reply,
    latency: Duration,
    gate: Option<oneshot::Receiver<Reply>>,
}

impl Req {
    /// Waits `latency` (on tokio's clock) before replying.
    pub fn after(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }
}

/// A request that succeeds at once.
pub fn ok() -> Req {
    reply(Reply::Ok)
}

/// A request that fails at once.
pub fn fail() -> Req {
    reply(Reply::Fail)
}

/// A request whose outcome [`classify`] ignores.
pub fn ignored() -> Req {
    reply(Reply::Ignore)
}

pub fn reply(reply: Reply) -> Req {
    Req {
        reply,
        latency: Duration::ZERO,
        gate: None,
    }
}

/// A request that stays pending until the test opens its [`Gate`] with a reply.
pub fn gated() -> (Req, Gate) {
    let (tx, rx) = oneshot::channel();
    let req = Req {
        reply: Reply::Fail,
        latency: Duration::ZERO,
        gate: Some(rx),
    };
    (req, Gate(tx))
}

/// Decides how a [`gated`] request ends.
#[derive(Debug)]
pub struct Gate(oneshot::Sender<Reply>);

impl Gate {
    pub fn open(self, reply: Reply) {
        self.0.send(reply).expect("the call is still in flight");
    }
}

// ===== the inner service =====

/// The error of [`Inner`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestError {
    Fail,
    Ignore,
}

impl fmt::Display for TestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TestError::Fail => f.write_str("inner failure"),
            TestError::Ignore => f.write_str("inner ignorable error"),
        }
    }
}

impl std::error::Error for TestError {}

/// The classifier of these tests: `Ok` succeeds, `TestError::Ignore` is ignored, other errors fail.
pub fn classify(result: Result<&&'static str, &TestError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Success,
        Err(TestError::Ignore) => Outcome::Ignored,
        Err(TestError::Fail) => Outcome::Failure,
    }
}

pub type Classifier = fn(Result<&&'static str, &TestError>) -> Outcome;

/// How often the inner service was touched.
#[derive(Debug, Default)]
pub struct Counters {
    polls: AtomicUsize,
    calls: AtomicUsize,
    completed: AtomicUsize,
}

impl Counters {
    /// Calls of the inner `poll_ready`.
    pub fn polls(&self) -> usize {
        self.polls.load(Ordering::SeqCst)
    }

    /// Calls of the inner `call`.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Inner futures that ran to completion.
    pub fn completed(&self) -> usize {
        self.completed.load(Ordering::SeqCst)
    }
}

/// The inner service: replies as each [`Req`] says, and counts what it was asked.
#[derive(Clone, Debug, Default)]
pub struct Inner {
    counters: Arc<Counters>,
}

impl Inner {
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }
}

impl Service<Req> for Inner {
    type Response = &'static str;
    type Error = TestError;
    type Future = Pin<Box<dyn Future<Output = Result<&'static str, TestError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), TestError>> {
        self.counters.polls.fetch_add(1, Ordering::SeqCst);
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.counters.calls.fetch_add(1, Ordering::SeqCst);
        let counters = self.counters.clone();
        Box::pin(async move {
            if !req.latency.is_zero() {
                tokio::time::sleep(req.latency).await;
            }
            let reply = match req.gate {
                Some(gate) => gate.await.expect("the test dropped the gate"),
                None => req.reply,
            };
            counters.completed.fetch_add(1, Ordering::SeqCst);
            match reply {
                Reply::Ok => Ok("ok"),
                Reply::Fail => Err(TestError::Fail),
                Reply::Ignore => Err(TestError::Ignore),
            }
        })
    }
}

// ===== building =====

/// The breaker-wrapped service of these tests.
pub type Svc = CircuitBreaker<Inner, Classifier>;

/// A builder with the test classifier.
pub fn builder() -> Builder<Classifier> {
    CircuitBreakerLayer::builder().classify(classify as Classifier)
}

/// Everything a test needs: the service, a handle on its breaker, and the inner counters.
pub struct Harness {
    pub svc: Svc,
    pub handle: Handle,
    pub counters: Arc<Counters>,
}

/// Builds the breaker and wraps a fresh [`Inner`].
pub fn harness(builder: Builder<Classifier>) -> Harness {
    let layer = builder.build().expect("valid configuration");
    let inner = Inner::default();
    let counters = inner.counters();
    let svc = layer.layer(inner);
    Harness {
        handle: svc.handle(),
        svc,
        counters,
    }
}

// ===== driving =====

/// `svc.ready().await?.call(req).await`.
pub async fn call<S>(svc: &mut S, req: Req) -> Result<&'static str, BoxError>
where
    S: Service<Req, Response = &'static str, Error = BoxError>,
{
    svc.ready().await?.call(req).await
}

/// Waits for readiness and calls, returning the response future without polling it.
pub async fn start<S>(svc: &mut S, req: Req) -> S::Future
where
    S: Service<Req, Response = &'static str, Error = BoxError>,
{
    svc.ready()
        .await
        .expect("poll_ready never fails here")
        .call(req)
}

/// Runs `n` calls, each answered with `reply`, and returns their results.
pub async fn run<S>(svc: &mut S, n: usize, reply: Reply) -> Vec<Result<&'static str, BoxError>>
where
    S: Service<Req, Response = &'static str, Error = BoxError>,
{
    let mut results = Vec::with_capacity(n);
    for _ in 0..n {
        results.push(call(svc, self::reply(reply)).await);
    }
    results
}

/// The rejection in `result`; panics if the call was not rejected.
#[track_caller]
pub fn rejection<T: fmt::Debug>(result: Result<T, BoxError>) -> Rejected {
    match result {
        Err(e) => rejected(&e).clone(),
        Ok(v) => panic!("expected a rejection, got Ok({v:?})"),
    }
}

/// The rejection `err` is; panics if it is another error.
#[track_caller]
pub fn rejected(err: &BoxError) -> &Rejected {
    err.downcast_ref::<Rejected>()
        .unwrap_or_else(|| panic!("expected a rejection, got the error {err:?}"))
}

/// One failure through `svc`, admitted: opens a breaker that trips on the first failure.
pub async fn trip(svc: &mut Svc) {
    assert_admitted(&call(svc, fail()).await);
}

/// Builds the breaker, which must trip on the first failure and stay open for [`OPEN`], and brings
/// it to HalfOpen.
pub async fn half_open(builder: Builder<Classifier>) -> Harness {
    let mut h = harness(builder);
    trip(&mut h.svc).await;
    assert_eq!(h.handle.state(), State::Open);
    advance(OPEN).await;
    assert_eq!(h.handle.state(), State::HalfOpen);
    h
}

/// Panics unless `result` was admitted (an inner success or an inner error, not a rejection).
#[track_caller]
pub fn assert_admitted<T: fmt::Debug>(result: &Result<T, BoxError>) {
    if let Err(e) = result {
        assert!(!e.is::<Rejected>(), "expected an admitted call, got {e}");
    }
}

/// Moves tokio's paused clock forward.
pub async fn advance(d: Duration) {
    tokio::time::advance(d).await;
}

pub const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub const NS: Duration = Duration::from_nanos(1);

/// The open interval of the tests that do not vary it.
pub const OPEN: Duration = Duration::from_secs(10);

// ===== events =====

/// The transitions that are already in `events`, without waiting. The events of a rate that
/// reached its threshold, which come before the transition they cause, are skipped (checked in
/// `tests/observability.rs`).
pub fn transitions(events: &mut EventStream) -> Vec<(State, State)> {
    let mut seen = Vec::new();
    while let Some(Some(event)) = events.next().now_or_never() {
        match event {
            Event::StateTransition { from, to, .. } => seen.push((from, to)),
            Event::FailureRateExceeded { .. } | Event::SlowCallRateExceeded { .. } => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
    seen
}

/// The transitions among `events` (the other events left out).
pub fn transitions_of(events: &[Event]) -> Vec<(State, State)> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::StateTransition { from, to, .. } => Some((*from, *to)),
            _ => None,
        })
        .collect()
}

/// A waker that counts its wake-ups.
#[derive(Debug, Default)]
pub struct CountsWakes(AtomicUsize);

impl CountsWakes {
    /// A waker on a new counter, and the counter.
    pub fn waker() -> (Waker, Arc<CountsWakes>) {
        let counts = Arc::new(CountsWakes::default());
        (Waker::from(counts.clone()), counts)
    }

    /// Wake-ups so far.
    pub fn wakes(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Wake for CountsWakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

// ===== counting a service's readiness checks and calls =====

/// How often a [`Counted`] service was polled for readiness and called.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    ready: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
}

impl Counts {
    pub fn ready(&self) -> usize {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// Any service, counting its `poll_ready` and `call` invocations in `counts`.
#[derive(Clone, Debug)]
pub struct Counted<S> {
    pub inner: S,
    pub counts: Counts,
}

impl<S: Service<R>, R> Service<R> for Counted<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.counts.ready.fetch_add(1, Ordering::SeqCst);
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> S::Future {
        self.counts.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.call(request)
    }
}

// ===== real time =====

/// Waits for a 1 ns open interval to end (the multi-thread tests, which cannot pause the clock):
/// the clock moves on while we look.
pub fn await_half_open(handle: &Handle) {
    loop {
        match handle.state() {
            State::HalfOpen => return,
            State::Open => std::hint::spin_loop(),
            other => panic!("expected Open or HalfOpen, found {other:?}"),
        }
    }
}

// ===== bounded waits =====

/// Runs `f` on a new std thread and returns what it returns, or fails the test if it has not
/// returned within `limit`: a deadlock fails with `what` instead of hanging the suite (the stuck
/// thread is left behind; the test process exits without it). A panic in `f` is re-raised here.
#[track_caller]
pub fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    use std::sync::mpsc::{RecvTimeoutError, channel};
    let (sender, receiver) = channel();
    let thread = std::thread::spawn(move || {
        let _ = sender.send(f());
    });
    match receiver.recv_timeout(limit) {
        Ok(value) => {
            thread.join().expect("the thread returned");
            value
        }
        Err(RecvTimeoutError::Timeout) => {
            panic!("{what}: no answer within {limit:?}: deadlocked")
        }
        Err(RecvTimeoutError::Disconnected) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the thread ended without sending"),
        },
    }
}
