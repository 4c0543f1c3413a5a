//! Rows and scenarios shared by the criterion benches (`benches/compare.rs`,
//! `benches/compare-await.rs`), the instruction counters (`src/bin/cg.rs`, `src/bin/cg-await.rs`),
//! the allocation counter (`src/bin/mem.rs`) and, through `cg --list`, the scripts
//! (`scripts/instructions`, `scripts/bench`, `scripts/report.py`). The list of rows, with the
//! scenarios each runs, is [`ROWS`], and only there.
//!
//! Every row wraps the same inner service: a zero-sized `tower::service_fn` over the fn item
//! [`inner_call`], which bumps a thread-local counter and returns `std::future::ready`. Every row
//! says once, in [`Row::future`], how one call is made: `svc.ready().await` then
//! `svc.call(x).await` (the futures-only peers, failsafe and recloser, guard a future that does
//! both, so that an open breaker never touches the inner service). Each row runs in two modes:
//!
//! * `<row>-await`, as applications call ([`Task`]): the call's future is polled through
//!   `Pin<&mut dyn Future>` by a minimal executor ([`block_on_task`]), as an executor polls a task
//!   it holds type-erased. The async state machine really exists in memory: the response future is
//!   moved into it and polled from there, as in any `async fn` that awaits it.
//! * `<row>`, the secondary view ([`block_on`]): the same future, polled once in line, so that the
//!   compiler sees through it and can keep the whole state machine in registers. This is the
//!   least a call can cost, not what a caller pays.
//!
//! Common targets (peer-perf.md §4): trip at 50 % failures over 100 calls, or 5 consecutive
//! failures, open 30 s. Each peer gets the closest configuration it supports.

pub mod maps;

use std::cell::Cell;
use std::fmt;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tower::{Layer, Service, ServiceExt, service_fn};

pub mod http_rows;

pub const OPEN: Duration = Duration::from_secs(30);

// ===== driving a call =====

/// As applications call: polls `future` to completion through `Pin<&mut dyn Future>`, the way an
/// executor polls a task it holds type-erased. `black_box` hides which future it is, so the poll
/// is an indirect call the compiler cannot inline, and the future's state machine lives in memory
/// as it does in a spawned task. One poll with a no-op waker, then `futures::executor::block_on`
/// for a future that is not ready (tower-resilience's mutex under contention).
#[inline]
pub fn block_on_task<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut task: Pin<&mut dyn Future<Output = F::Output>> = black_box(future.as_mut());
    match task.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => futures::executor::block_on(task),
    }
}

/// The secondary view: runs a future to completion on this thread, in line: one poll with a no-op
/// waker (every future here is
/// ready at once unless a breaker makes it wait), then `futures::executor::block_on` for a future
/// that is not (tower-resilience's mutex under contention).
#[inline]
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => futures::executor::block_on(future),
    }
}

// ===== inner service =====

thread_local! {
    static INNER_CALLS: Cell<u64> = const { Cell::new(0) };
}

/// Calls of the inner service on this thread so far.
pub fn inner_calls() -> u64 {
    INNER_CALLS.with(Cell::get)
}

/// The inner service's error; `Rejected` is only made by seatbelt's `rejected_input_error`
/// (seatbelt's rejection must have the inner service's error type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InnerErr {
    Failed,
    Rejected,
}

impl fmt::Display for InnerErr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for InnerErr {}

/// The inner service's body. `#[inline]` so that every row can inline it equally.
#[inline]
pub fn inner_call(fail: bool) -> Ready<Result<u64, InnerErr>> {
    INNER_CALLS.with(|c| c.set(c.get() + 1));
    if fail {
        ready(Err(InnerErr::Failed))
    } else {
        ready(Ok(1))
    }
}

/// What one call gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Res {
    Ok,
    Failed,
    Rejected,
}

/// One breaker (or none) in front of the inner service.
pub trait Row: Clone + Send + 'static {
    /// What a call gives, as the service (or the peer's guard) gives it.
    type Output;
    /// One call as an application writes it: `svc.ready().await?.call(x).await` (for the
    /// futures-only peers, their guard around that).
    fn future(&mut self, fail: bool) -> impl Future<Output = Self::Output>;
    /// What the output of a call means.
    fn res(output: Self::Output) -> Res;
    /// One call, driven to completion on this thread: by default [`block_on`] of
    /// [`Row::future`], in line; [`Task`] drives it as an executor does.
    #[inline]
    fn call(&mut self, fail: bool) -> Res {
        Self::res(block_on(self.future(fail)))
    }
    /// The breaker's state as the crate reports it (for the checks).
    fn state(&self) -> String;
}

/// Any row, each call driven as applications drive it ([`block_on_task`]); named `<row>-await`.
#[derive(Clone)]
pub struct Task<R>(pub R);

impl<R: Row> Row for Task<R> {
    type Output = R::Output;
    #[inline]
    fn future(&mut self, fail: bool) -> impl Future<Output = R::Output> {
        self.0.future(fail)
    }
    #[inline]
    fn res(output: R::Output) -> Res {
        R::res(output)
    }
    #[inline]
    fn call(&mut self, fail: bool) -> Res {
        R::res(block_on_task(self.0.future(fail)))
    }
    fn state(&self) -> String {
        self.0.state()
    }
}

// ===== scenarios =====

/// The scenarios: A closed, all succeed; B closed, every 10th fails; C open, rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    A,
    B,
    C,
}

impl Scenario {
    pub fn parse(s: &str) -> Option<Scenario> {
        match s {
            "A" => Some(Scenario::A),
            "B" => Some(Scenario::B),
            "C" => Some(Scenario::C),
            _ => None,
        }
    }

    /// Whether call number `i` of the scenario fails.
    #[inline]
    pub fn fails(self, i: u64) -> bool {
        match self {
            Scenario::A => false,
            Scenario::B => i % 10 == 9,
            Scenario::C => true,
        }
    }

    /// What call number `i` must give.
    #[inline]
    pub fn expected(self, i: u64) -> Res {
        match self {
            Scenario::A => Res::Ok,
            Scenario::B if i % 10 == 9 => Res::Failed,
            Scenario::B => Res::Ok,
            Scenario::C => Res::Rejected,
        }
    }
}

/// Brings `row` into the state `scenario` claims and checks it: warm-up successes for A and B
/// (the window is full), failures until it rejects for C. Panics if the row is not there.
pub fn prepare<R: Row>(name: &str, row: &mut R, scenario: Scenario) {
    match scenario {
        Scenario::A | Scenario::B => {
            for i in 0..1_000 {
                let r = row.call(scenario.fails(i));
                assert_eq!(
                    r,
                    scenario.expected(i),
                    "{name} {scenario:?}: warm-up call {i}"
                );
            }
        }
        Scenario::C => {
            let mut failures = 0;
            while row.call(true) != Res::Rejected {
                failures += 1;
                assert!(failures <= 1_000, "{name}: does not trip");
            }
            // Three probes, rejected without reaching the inner service.
            let before = inner_calls();
            for _ in 0..3 {
                assert_eq!(row.call(true), Res::Rejected, "{name}: not open");
            }
            assert_eq!(
                inner_calls(),
                before,
                "{name}: open, but the inner service was called"
            );
        }
    }
    check_state(name, row, scenario);
}

/// Asserts the state the scenario claims, where the row reports one.
pub fn check_state<R: Row>(name: &str, row: &R, scenario: Scenario) {
    let state = row.state();
    let ok = match scenario {
        Scenario::A | Scenario::B => matches!(state.as_str(), "closed" | "n/a"),
        Scenario::C => matches!(state.as_str(), "open" | "n/a"),
    };
    assert!(ok, "{name} {scenario:?}: state is {state}");
}

/// Runs `iters` calls of `scenario` and checks every outcome and the inner call count.
#[inline]
pub fn run<R: Row>(row: &mut R, scenario: Scenario, iters: u64) {
    let before = inner_calls();
    let mut wrong = 0u64;
    for i in 0..iters {
        // black_box: every row makes every call (the raw service's loop would fold away).
        let r = black_box(row.call(black_box(scenario.fails(i))));
        wrong += u64::from(r != scenario.expected(i));
    }
    assert_eq!(wrong, 0, "{scenario:?}: {wrong} unexpected outcomes");
    let calls = inner_calls() - before;
    let expected = if scenario == Scenario::C { 0 } else { iters };
    assert_eq!(calls, expected, "{scenario:?}: inner calls");
}

// ===== baseline: the raw service =====

pub fn baseline() -> impl Row {
    #[derive(Clone)]
    struct Baseline<S>(S);
    impl<S> Row for Baseline<S>
    where
        S: Service<bool, Response = u64, Error = InnerErr> + Clone + Send + 'static,
    {
        type Output = Result<u64, InnerErr>;
        #[inline]
        fn future(&mut self, fail: bool) -> impl Future<Output = Self::Output> {
            let svc = &mut self.0;
            async move { svc.ready().await?.call(fail).await }
        }
        #[inline]
        fn res(output: Self::Output) -> Res {
            output.into_res()
        }
        fn state(&self) -> String {
            "n/a".into()
        }
    }
    Baseline(service_fn(inner_call))
}

trait IntoRes {
    fn into_res(self) -> Res;
}

impl IntoRes for Result<u64, InnerErr> {
    #[inline]
    fn into_res(self) -> Res {
        match self {
            Ok(_) => Res::Ok,
            Err(InnerErr::Failed) => Res::Failed,
            Err(InnerErr::Rejected) => Res::Rejected,
        }
    }
}

// ===== floor: one shared atomic load + one fetch_add, as a Tower middleware =====

#[repr(align(128))]
struct FloorShared {
    state: AtomicU8,
    calls: AtomicU64,
}

/// The cost floor: `poll_ready` loads a shared state byte, `call` bumps a shared counter. It does
/// not record outcomes (its future is the inner future).
pub fn floor() -> impl Row {
    #[derive(Clone)]
    struct Floor<S> {
        inner: S,
        shared: Arc<FloorShared>,
    }
    impl<S: Service<bool>> Service<bool> for Floor<S> {
        type Response = S::Response;
        type Error = S::Error;
        type Future = S::Future;
        #[inline]
        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
            if self.shared.state.load(Ordering::Acquire) != 0 {
                return Poll::Pending;
            }
            self.inner.poll_ready(cx)
        }
        #[inline]
        fn call(&mut self, req: bool) -> S::Future {
            self.shared.calls.fetch_add(1, Ordering::Relaxed);
            self.inner.call(req)
        }
    }
    impl<S> Row for Floor<S>
    where
        S: Service<bool, Response = u64, Error = InnerErr> + Clone + Send + 'static,
    {
        type Output = Result<u64, InnerErr>;
        #[inline]
        async fn future(&mut self, fail: bool) -> Self::Output {
            Service::call(self.ready().await?, fail).await
        }
        #[inline]
        fn res(output: Self::Output) -> Res {
            output.into_res()
        }
        fn state(&self) -> String {
            "closed".into()
        }
    }
    Floor {
        inner: service_fn(inner_call),
        shared: Arc::new(FloorShared {
            state: AtomicU8::new(0),
            calls: AtomicU64::new(0),
        }),
    }
}

// ===== sketch: the least an owning response future costs =====

#[repr(align(128))]
struct SketchShared {
    word: AtomicU64,
    failed: AtomicU64,
    consecutive: AtomicU64,
}

/// Not a breaker: the least a breaker with DESIGN's shape can cost. `poll_ready` loads a shared
/// state word and keeps a ticket; `call` clones one shared `Arc` into the response future (the
/// future must record the outcome, possibly after the service is gone); the future checks on
/// success that nothing needs recording (two loads), adds to a shared counter otherwise, and
/// boxes the error. No generations, probe permits, timeouts, classifier, fallback or lanes: the
/// floor of an owning response future, a reference row for A, B and D.
pub fn sketch() -> impl Row {
    use std::num::NonZeroU64;
    use std::pin::Pin;
    #[derive(Clone)]
    struct Sketch<S> {
        inner: S,
        shared: Arc<SketchShared>,
        ticket: Option<NonZeroU64>,
    }
    pin_project_lite::pin_project! {
        struct SketchFuture<F> {
            #[pin]
            inner: F,
            shared: Arc<SketchShared>,
            ticket: Option<NonZeroU64>,
        }
    }
    impl<F, T, E> Future for SketchFuture<F>
    where
        F: Future<Output = Result<T, E>>,
        E: Into<tower::BoxError>,
    {
        type Output = Result<T, tower::BoxError>;
        #[inline]
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let this = self.project();
            let result = std::task::ready!(this.inner.poll(cx));
            if let Some(ticket) = this.ticket.take()
                && (result.is_err()
                    || this.shared.failed.load(Ordering::Relaxed) != 0
                    || this.shared.consecutive.load(Ordering::Relaxed) != 0)
            {
                this.shared
                    .failed
                    .fetch_add(black_box(ticket.get()), Ordering::Relaxed);
            }
            Poll::Ready(result.map_err(Into::into))
        }
    }
    impl<S: Service<bool>> Service<bool> for Sketch<S>
    where
        S::Error: Into<tower::BoxError>,
    {
        type Response = S::Response;
        type Error = tower::BoxError;
        type Future = SketchFuture<S::Future>;
        #[inline]
        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            if self.ticket.is_none() {
                let word = self.shared.word.load(Ordering::Acquire);
                if word & 7 != 0 {
                    return Poll::Pending;
                }
                std::task::ready!(self.inner.poll_ready(cx)).map_err(Into::into)?;
                self.ticket = NonZeroU64::new(word | 8);
            }
            Poll::Ready(Ok(()))
        }
        #[inline]
        fn call(&mut self, req: bool) -> Self::Future {
            SketchFuture {
                ticket: self.ticket.take(),
                shared: self.shared.clone(),
                inner: self.inner.call(req),
            }
        }
    }
    impl<S> Row for Sketch<S>
    where
        S: Service<bool, Response = u64, Error = InnerErr> + Clone + Send + 'static,
    {
        type Output = Result<u64, tower::BoxError>;
        #[inline]
        async fn future(&mut self, fail: bool) -> Self::Output {
            Service::call(self.ready().await?, fail).await
        }
        #[inline]
        fn res(output: Self::Output) -> Res {
            match output {
                Ok(_) => Res::Ok,
                Err(_) => Res::Failed,
            }
        }
        fn state(&self) -> String {
            "closed".into()
        }
    }
    Sketch {
        inner: service_fn(inner_call),
        shared: Arc::new(SketchShared {
            word: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            consecutive: AtomicU64::new(0),
        }),
        ticket: None,
    }
}

// ===== ours =====

use tower_circuit_breaker::{CircuitBreakerLayer, Window, error::Rejected, metrics::Export};

/// Installs `metrics-exporter-prometheus`'s recorder as the global recorder, once per process,
/// before a row that exports metrics is built (its handles are registered with it).
fn prometheus_recorder() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        metrics::set_global_recorder(recorder).expect("the only recorder");
    });
}

/// Our configuration variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ours {
    /// Count window of 100, 50 % or 5 consecutive, open 30 s; no slow calls (the default shape).
    Count,
    /// The same on a 30 s time window (30 one-second buckets).
    Time,
    /// The same on a 1 s time window in 1,000 buckets of 1 ms: under load the window moves to a
    /// later bucket every millisecond, and its evaluation must not read every bucket.
    Time1000,
    /// Count window plus slow-call detection (1 s, 50 %).
    Slow,
    /// The count configuration with a fallback service that answers rejected calls.
    Fallback,
    /// The count configuration exporting its metrics (`Export::new()`) to a Prometheus recorder.
    Metrics,
    /// The same with the call-duration histogram (`Export::new().durations(true)`).
    MetricsDurations,
}

fn ours_builder(variant: Ours) -> tower_circuit_breaker::Builder {
    let b = CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window(Window::count(100))
        .minimum_calls(100)
        .consecutive_failures(5)
        .open_duration(OPEN);
    match variant {
        Ours::Count | Ours::Fallback => b,
        Ours::Metrics => {
            prometheus_recorder();
            b.name("bench").export_metrics(Export::new())
        }
        Ours::MetricsDurations => {
            prometheus_recorder();
            b.name("bench")
                .export_metrics(Export::new().durations(true))
        }
        Ours::Time => b.sliding_window(Window::time(Duration::from_secs(30))),
        Ours::Time1000 => b.sliding_window(Window::time(Duration::from_secs(1)).buckets(1000)),
        Ours::Slow => b
            .slow_call_duration(Duration::from_secs(1))
            .slow_call_rate_threshold(0.5),
    }
}

/// Our count configuration, named and shared through Redis (feature `redis`) at `TCB_REDIS_URL`
/// (default `redis://127.0.0.1:6379`; unreachable is fine: the call path is the same). Its
/// background task runs on a runtime of its own, on another thread, and ticks once a minute, so
/// that what is counted is the call path with the feature on: the task's own cost per tick is
/// measured apart (BENCHMARKS.md, "Fleet-wide state").
pub fn ours_redis() -> impl Row {
    use tower_circuit_breaker::redis::Fleet;
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime")
    });
    let layer = ours_builder(Ours::Count)
        .name("bench")
        .build()
        .expect("valid configuration");
    let handle = layer.handle();
    let url = std::env::var("TCB_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let fleet = Fleet::builder(format!("bench-{}", std::process::id()))
        .interval(Duration::from_secs(60))
        .build(url.as_str())
        .expect("valid settings");
    let _entered = runtime.enter();
    // Shared for the process's life: the row never stops sharing.
    std::mem::forget(fleet.share(&handle).expect("a named breaker"));
    Our(layer.layer(service_fn(inner_call)), handle)
}

/// Our service as a row. A fallback answers rejected calls with `Ok(0)` (the inner service never
/// does), counted as a rejection.
#[derive(Clone)]
struct Our<S>(S, tower_circuit_breaker::Handle);

impl<S> Row for Our<S>
where
    S: Service<bool, Response = u64, Error = tower::BoxError> + Clone + Send + 'static,
{
    type Output = Result<u64, tower::BoxError>;
    #[inline]
    fn future(&mut self, fail: bool) -> impl Future<Output = Self::Output> {
        let svc = &mut self.0;
        async move { svc.ready().await?.call(fail).await }
    }
    #[inline(always)]
    fn res(output: Self::Output) -> Res {
        our_res(output)
    }
    fn state(&self) -> String {
        self.1.state().to_string()
    }
}

/// What one of our calls came to: a fallback's `Ok(0)` and a `Rejected` error are rejections.
/// `inline(always)`: with `#[inline]` the compiler laid the row out differently and A counted
/// 15 Ir more, all in the harness.
#[inline(always)]
fn our_res(result: Result<u64, tower::BoxError>) -> Res {
    match result {
        Ok(0) => Res::Rejected,
        Ok(_) => Res::Ok,
        Err(e) if e.is::<Rejected>() => Res::Rejected,
        Err(_) => Res::Failed,
    }
}

/// Our breaker in the count, time or slow-call variant (one type: the configuration is data).
pub fn ours(variant: Ours) -> impl Row {
    assert_ne!(variant, Ours::Fallback, "use ours_fallback()");
    let layer = ours_builder(variant).build().expect("valid configuration");
    let handle = layer.handle();
    Our(layer.layer(service_fn(inner_call)), handle)
}

/// Our count configuration with a fallback service for rejected calls.
pub fn ours_fallback() -> impl Row {
    let layer = ours_builder(Ours::Fallback)
        .build()
        .expect("valid configuration");
    let handle = layer.handle();
    let fallback = service_fn(|_: bool| ready(Ok::<u64, InnerErr>(0)));
    Our(
        layer.with_fallback(fallback).layer(service_fn(inner_call)),
        handle,
    )
}

// ===== clone per call, as hyper's `TowerToHyperService` and axum do =====

/// The raw service, cloned for every call and driven with `oneshot` (as hyper-util's
/// `TowerToHyperService` and axum's router call a service).
pub fn baseline_oneshot() -> impl Row {
    #[derive(Clone)]
    struct BaselineOneshot<S>(S);
    impl<S> Row for BaselineOneshot<S>
    where
        S: Service<bool, Response = u64, Error = InnerErr> + Clone + Send + 'static,
    {
        type Output = Result<u64, InnerErr>;
        #[inline]
        fn future(&mut self, fail: bool) -> impl Future<Output = Self::Output> {
            self.0.clone().oneshot(fail)
        }
        #[inline]
        fn res(output: Self::Output) -> Res {
            output.into_res()
        }
        fn state(&self) -> String {
            "n/a".into()
        }
    }
    BaselineOneshot(service_fn(inner_call))
}

/// Our count configuration, the service cloned for every call and driven with `oneshot`.
pub fn ours_oneshot() -> impl Row {
    #[derive(Clone)]
    struct OursOneshot<S>(S, tower_circuit_breaker::Handle);
    impl<S> Row for OursOneshot<S>
    where
        S: Service<bool, Response = u64, Error = tower::BoxError> + Clone + Send + 'static,
    {
        type Output = Result<u64, tower::BoxError>;
        #[inline]
        fn future(&mut self, fail: bool) -> impl Future<Output = Self::Output> {
            self.0.clone().oneshot(fail)
        }
        #[inline]
        fn res(output: Self::Output) -> Res {
            our_res(output)
        }
        fn state(&self) -> String {
            self.1.state().to_string()
        }
    }
    let layer = ours_builder(Ours::Count)
        .build()
        .expect("valid configuration");
    let handle = layer.handle();
    OursOneshot(layer.layer(service_fn(inner_call)), handle)
}

// ===== keyed: one breaker per key =====
//
// Not in `ROWS`: their own binaries (`benches/keyed.rs`, `src/bin/cg-keyed.rs`,
// `src/bin/mem-keyed.rs`), because a binary that holds them holds another user of the breaker's
// generic code, and the compiler then inlines less into the plain rows (`ours` A: 272 -> 315 Ir
// with the keyed rows in `cg`, the breaker unchanged). Scenario A only: with keys visited in a
// fixed order, B would make the same keys fail every time and open them.

/// Keys the keyed rows hold (the bound too, for `keyed-new`).
pub const KEYED_KEYS: u64 = 10_000;
/// A step coprime with `KEYED_KEYS`: `keyed` visits its keys in a scrambled order.
const KEYED_STEP: u64 = 7_919;
/// Each clone of a keyed row starts elsewhere (the threads of D do not walk together).
static KEYED_CLONES: AtomicU64 = AtomicU64::new(0);

/// Our count configuration per key (`KeyedCircuitBreakerLayer`, key = the request's first
/// field). `fresh`: every call a new key (`keyed-new`); otherwise every call an existing key
/// among `KEYED_KEYS`, made beforehand (`keyed`).
struct Keyed<S> {
    svc: S,
    handle: tower_circuit_breaker::KeyedHandle<u64>,
    next: u64,
    /// The keys called (`keyed`), `0..keys`.
    keys: u64,
    fresh: bool,
}

impl<S: Clone> Clone for Keyed<S> {
    fn clone(&self) -> Self {
        let clone = KEYED_CLONES.fetch_add(1, Ordering::Relaxed) + 1;
        Keyed {
            svc: self.svc.clone(),
            handle: self.handle.clone(),
            // `keyed`: half the keys away; `keyed-new`: keys of its own.
            next: if self.fresh {
                clone << 40
            } else {
                (self.next + self.keys / 2) % self.keys
            },
            keys: self.keys,
            fresh: self.fresh,
        }
    }
}

impl<S> Row for Keyed<S>
where
    S: Service<(u64, bool), Response = u64, Error = tower::BoxError> + Clone + Send + 'static,
{
    type Output = Result<u64, tower::BoxError>;
    #[inline]
    fn future(&mut self, fail: bool) -> impl Future<Output = Self::Output> {
        self.next = if self.fresh {
            self.next + 1
        } else {
            (self.next + KEYED_STEP) % self.keys
        };
        let (svc, key) = (&mut self.svc, self.next);
        async move { svc.ready().await?.call((key, fail)).await }
    }
    #[inline(always)]
    fn res(output: Self::Output) -> Res {
        our_res(output)
    }
    fn state(&self) -> String {
        // Every key closed, none overflowed.
        let overflowed = self.handle.overflow().metrics().calls() > 0;
        let open = self
            .handle
            .handles()
            .iter()
            .any(|(_, h)| h.state() != tower_circuit_breaker::State::Closed);
        if overflowed || open { "open" } else { "closed" }.into()
    }
}

fn keyed_row(keys: u64, fresh: bool) -> impl Row {
    let layer = tower_circuit_breaker::KeyedCircuitBreakerLayer::builder(|r: &(u64, bool)| r.0)
        .breaker(ours_builder(Ours::Count))
        .max_keys(KEYED_KEYS as usize)
        .no_idle_timeout()
        .build()
        .expect("valid configuration");
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|(_, fail): (u64, bool)| inner_call(fail)));
    // Each key's window full of successes (100 calls), as for `ours` in A: a healthy closed
    // breaker, whose successes record nothing.
    for _ in 0..100 {
        for key in 0..keys {
            let result = block_on(svc.clone().oneshot((key, false)));
            assert_eq!(result.ok(), Some(1));
        }
    }
    assert_eq!(handle.len(), keys as usize);
    Keyed {
        svc,
        handle,
        next: 0,
        keys,
        fresh,
    }
}

/// Our count configuration per key: every call to an existing key among 10,000, each key's
/// window full of successes.
pub fn keyed() -> impl Row {
    keyed_row(KEYED_KEYS, false)
}

/// The same among 101 keys: their breakers stay in the cache (among 10,000, every call finds
/// its breaker's lines cold, a few cache misses per call).
pub fn keyed_few() -> impl Row {
    keyed_row(101, false)
}

/// Our count configuration per key, at its bound of 10,000 keys: every call to a new key, which
/// evicts an idle one.
pub fn keyed_new() -> impl Row {
    keyed_row(KEYED_KEYS, true)
}

// ===== failsafe 1.3 =====

/// failsafe: EMA success rate >= 0.5 over a 30 s window with >= 100 requests, or 5 consecutive
/// failures; constant 30 s backoff. (It has no count window.) futures API around the inner call.
pub fn failsafe() -> impl Row {
    use failsafe::failure_policy::FailurePolicy as _;
    use failsafe::futures::CircuitBreaker as _;
    use failsafe::{backoff, failure_policy};

    struct Failsafe<S, P> {
        inner: S,
        cb: failsafe::StateMachine<P, ()>,
    }
    // By hand: the state machine is an `Arc` (cloned without `P: Clone`).
    impl<S: Clone, P> Clone for Failsafe<S, P> {
        fn clone(&self) -> Self {
            Failsafe {
                inner: self.inner.clone(),
                cb: self.cb.clone(),
            }
        }
    }
    impl<S, P> Row for Failsafe<S, P>
    where
        S: Service<bool, Response = u64, Error = InnerErr> + Clone + Send + 'static,
        P: failsafe::FailurePolicy + Send + Sync + 'static,
    {
        type Output = Result<u64, failsafe::Error<InnerErr>>;
        #[inline]
        fn future(&mut self, fail: bool) -> impl Future<Output = Self::Output> {
            let Failsafe { inner, cb } = self;
            // The inner service is driven inside the guarded future, so that an open breaker
            // touches neither its `poll_ready` nor its `call`.
            cb.call(async move { inner.ready().await?.call(fail).await })
        }
        #[inline]
        fn res(output: Self::Output) -> Res {
            match output {
                Ok(_) => Res::Ok,
                Err(failsafe::Error::Rejected) => Res::Rejected,
                Err(failsafe::Error::Inner(_)) => Res::Failed,
            }
        }
        fn state(&self) -> String {
            // `StateMachine { state: "open", .. }`; `is_call_permitted()` could transition.
            let debug = format!("{:?}", self.cb);
            ["half_open", "closed", "open"]
                .into_iter()
                .find(|s| debug.contains(&format!("\"{s}\"")))
                .unwrap_or("unknown")
                .replace('_', "-")
        }
    }
    let rate = failure_policy::success_rate_over_time_window(
        0.5,
        100,
        Duration::from_secs(30),
        backoff::constant(OPEN),
    );
    let consecutive = failure_policy::consecutive_failures(5, backoff::constant(OPEN));
    let cb = failsafe::Config::new()
        .failure_policy(rate.or_else(consecutive))
        .instrument(())
        .build();
    Failsafe {
        inner: service_fn(inner_call),
        cb,
    }
}

// ===== recloser 1.4 =====

/// recloser: a ring of 100 outcomes, trip at >= 50 % once full, open 30 s (no consecutive
/// policy). futures API (`AsyncRecloser`) around the inner call.
pub fn recloser() -> impl Row<Output = Result<u64, recloser::Error<InnerErr>>> {
    Recl {
        inner: service_fn(inner_call),
        cb: recloser::AsyncRecloser::from(
            recloser::Recloser::custom()
                .error_rate(0.5)
                .closed_len(100)
                .open_wait(OPEN)
                .build(),
        ),
    }
}

#[derive(Clone)]
struct Recl<S> {
    inner: S,
    cb: recloser::AsyncRecloser,
}

impl<S> Row for Recl<S>
where
    S: Service<bool, Response = u64, Error = InnerErr> + Clone + Send + 'static,
{
    type Output = Result<u64, recloser::Error<InnerErr>>;
    #[inline]
    fn future(&mut self, fail: bool) -> impl Future<Output = Self::Output> {
        let Recl { inner, cb } = self;
        // The inner service is driven inside the guarded future, so that an open breaker
        // touches neither its `poll_ready` nor its `call`.
        cb.call(async move { inner.ready().await?.call(fail).await })
    }
    #[inline]
    fn res(output: Self::Output) -> Res {
        match output {
            Ok(_) => Res::Ok,
            Err(recloser::Error::Rejected) => Res::Rejected,
            Err(recloser::Error::Inner(_)) => Res::Failed,
        }
    }
    fn state(&self) -> String {
        // No public state getter (its Debug prints a pointer): checked by behaviour.
        "n/a".into()
    }
}

/// recloser's rejection as a boxed error (`recloser_boxed`): the state and the time left, as
/// the error of a Tower middleware carries them.
#[derive(Debug)]
pub struct RecloserRejected {
    pub state: &'static str,
    pub retry_after: Option<Duration>,
}

impl fmt::Display for RecloserRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "circuit {}", self.state)
    }
}

impl std::error::Error for RecloserRejected {}

/// recloser as above with its errors turned into a `BoxError`, as the error of a Tower
/// middleware is (a rejection boxed, an inner error boxed): recloser at the allocations of our
/// error mode, to compare rejections (scenario C) at equal allocations.
pub fn recloser_boxed() -> impl Row {
    #[derive(Clone)]
    struct Boxed<R>(R);
    impl<R> Row for Boxed<R>
    where
        R: Row<Output = Result<u64, recloser::Error<InnerErr>>>,
    {
        type Output = Result<u64, tower::BoxError>;
        #[inline]
        fn future(&mut self, fail: bool) -> impl Future<Output = Self::Output> {
            let future = self.0.future(fail);
            async move {
                future.await.map_err(|e| match e {
                    recloser::Error::Inner(e) => tower::BoxError::from(e),
                    recloser::Error::Rejected => tower::BoxError::from(RecloserRejected {
                        state: "open",
                        retry_after: None,
                    }),
                })
            }
        }
        #[inline(always)]
        fn res(output: Self::Output) -> Res {
            match output {
                Ok(_) => Res::Ok,
                Err(e) if e.is::<RecloserRejected>() => Res::Rejected,
                Err(_) => Res::Failed,
            }
        }
        fn state(&self) -> String {
            self.0.state()
        }
    }
    Boxed(recloser())
}

// ===== tower-resilience-circuitbreaker 0.14 =====

/// tower-resilience: count-based window 100, rate >= 50 % once >= 100 calls, open 30 s, rejection
/// mode, no listeners, no slow calls, default name.
pub fn tower_resilience() -> impl Row {
    use tower_resilience_circuitbreaker::{CircuitBreakerError, CircuitBreakerLayer, CircuitState};

    #[derive(Clone)]
    struct TrRow<T>(T);
    trait Gate {
        fn state_sync(&self) -> CircuitState;
    }
    impl<S, C> Gate for tower_resilience_circuitbreaker::CircuitBreaker<S, C> {
        fn state_sync(&self) -> CircuitState {
            tower_resilience_circuitbreaker::CircuitBreaker::state_sync(self)
        }
    }
    impl<T> Row for TrRow<T>
    where
        T: Service<bool, Response = u64, Error = CircuitBreakerError<InnerErr>>
            + Gate
            + Clone
            + Send
            + 'static,
    {
        type Output = Result<u64, CircuitBreakerError<InnerErr>>;
        #[inline]
        fn future(&mut self, fail: bool) -> impl Future<Output = Self::Output> {
            let svc = &mut self.0;
            async move { svc.ready().await?.call(fail).await }
        }
        #[inline]
        fn res(output: Self::Output) -> Res {
            match output {
                Ok(_) => Res::Ok,
                Err(CircuitBreakerError::OpenCircuit) => Res::Rejected,
                Err(_) => Res::Failed,
            }
        }
        fn state(&self) -> String {
            match self.0.state_sync() {
                CircuitState::Closed => "closed",
                CircuitState::Open => "open",
                CircuitState::HalfOpen => "half-open",
                #[allow(unreachable_patterns)]
                _ => "other",
            }
            .into()
        }
    }
    let layer = CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .minimum_number_of_calls(100)
        .wait_duration_in_open(OPEN)
        .permitted_calls_in_half_open(1)
        .build()
        .expect("valid configuration");
    TrRow(layer.layer(service_fn(inner_call)))
}

// ===== seatbelt 0.11 (tower-service) =====

/// seatbelt: failure rate >= 50 % over a 30 s sampling window once >= 100 calls, break 30 s (no
/// count window, no consecutive policy). Tower `Service` impl (feature `tower-service`); the
/// clock is tick's system clock, no driver (the breaker never waits on a timer).
pub fn seatbelt() -> impl Row {
    use layered::Layer as _;
    use seatbelt::breaker::Breaker;
    use seatbelt::{RecoveryInfo, ResilienceContext};

    #[derive(Clone)]
    struct Seat<S> {
        svc: S,
        opened: Arc<AtomicBool>,
    }
    impl<S> Row for Seat<S>
    where
        S: Service<bool, Response = u64, Error = InnerErr> + Clone + Send + 'static,
    {
        type Output = Result<u64, InnerErr>;
        #[inline]
        fn future(&mut self, fail: bool) -> impl Future<Output = Self::Output> {
            let svc = &mut self.svc;
            async move { svc.ready().await?.call(fail).await }
        }
        #[inline]
        fn res(output: Self::Output) -> Res {
            output.into_res()
        }
        fn state(&self) -> String {
            // No public state getter: `on_opened` / `on_closed` callbacks keep a flag.
            if self.opened.load(Ordering::SeqCst) {
                "open"
            } else {
                "closed"
            }
            .into()
        }
    }
    let (clock, _driver) =
        tick::runtime::InactiveClock::default().activate(std::task::Waker::noop().clone());
    let context: ResilienceContext<bool, Result<u64, InnerErr>> = ResilienceContext::new(&clock);
    let opened = Arc::new(AtomicBool::new(false));
    let (on_open, on_close) = (opened.clone(), opened.clone());
    let layer = Breaker::layer("bench", &context)
        .recovery_with(|r: &Result<u64, InnerErr>, _| match r {
            Ok(_) => RecoveryInfo::never(),
            Err(_) => RecoveryInfo::retry(),
        })
        .rejected_input_error(|_, _| InnerErr::Rejected)
        .failure_threshold(0.5)
        .min_throughput(100)
        .sampling_duration(Duration::from_secs(30))
        .break_duration(OPEN)
        .on_opened(move |_, _| on_open.store(true, Ordering::SeqCst))
        .on_closed(move |_, _| on_close.store(false, Ordering::SeqCst));
    Seat {
        svc: layer.layer(service_fn(inner_call)),
        opened,
    }
}

// ===== the list =====

/// One row of the benchmark tables: what every bench, binary and script of `benches/compare`
/// reads (the scripts through `cg --list`, see [`rows_tsv`]). Its constructor is the arm of the
/// same name in [`with_make`].
#[derive(Debug, Clone, Copy)]
pub struct RowSpec {
    /// The row's name, as `cg`, `mem`, criterion's ids and `BENCH_ROWS` know it; `<name>-await`
    /// is the same row as applications call it ([`Task`]).
    pub name: &'static str,
    /// What the table in BENCHMARKS.md calls it.
    pub label: &'static str,
    /// The scenarios it runs on one thread (criterion, callgrind, allocations). D, which is A on
    /// two threads sharing one breaker (criterion only), runs wherever A runs.
    pub scenarios: &'static [Scenario],
}

impl RowSpec {
    /// Whether the row runs D (A on two threads sharing one breaker).
    pub fn two_threads(&self) -> bool {
        self.scenarios.contains(&Scenario::A)
    }
}

/// Rows without a breaker that could open: closed scenarios only.
const CLOSED: &[Scenario] = &[Scenario::A, Scenario::B];
/// Rows with a breaker: closed and open.
const EVERY: &[Scenario] = &[Scenario::A, Scenario::B, Scenario::C];

/// Every row, in table order. Each is measured both ways: as applications call it,
/// `<name>-await` (the rows that lead), and polled in line, `<name>` (the secondary view).
pub const ROWS: &[RowSpec] = &[
    RowSpec {
        name: "baseline",
        label: "raw service (no breaker)",
        scenarios: CLOSED,
    },
    RowSpec {
        name: "floor",
        label: "floor: 1 shared load + 1 fetch_add",
        scenarios: CLOSED,
    },
    RowSpec {
        name: "sketch",
        label: "sketch: floor + a response future owning an `Arc`",
        scenarios: CLOSED,
    },
    RowSpec {
        name: "ours",
        label: "**tower-circuit-breaker** (count window)",
        scenarios: EVERY,
    },
    RowSpec {
        name: "ours-time",
        label: "tower-circuit-breaker, time window 30 s",
        scenarios: EVERY,
    },
    RowSpec {
        name: "ours-time-1000",
        label: "tower-circuit-breaker, time window 1 s in 1,000 buckets",
        scenarios: EVERY,
    },
    RowSpec {
        name: "ours-slow",
        label: "tower-circuit-breaker, + slow calls",
        scenarios: EVERY,
    },
    RowSpec {
        name: "ours-metrics",
        label: "tower-circuit-breaker, exporting metrics (`metrics` feature)",
        scenarios: EVERY,
    },
    RowSpec {
        name: "ours-metrics-durations",
        label: "tower-circuit-breaker, exporting metrics + duration histogram",
        scenarios: CLOSED,
    },
    RowSpec {
        name: "ours-redis",
        label: "tower-circuit-breaker, shared through Redis (`redis` feature)",
        scenarios: CLOSED,
    },
    RowSpec {
        name: "ours-fallback",
        label: "tower-circuit-breaker, fallback (C)",
        scenarios: &[Scenario::C],
    },
    RowSpec {
        name: "baseline-oneshot",
        label: "raw service, cloned per call (`oneshot`, as hyper and axum call it)",
        scenarios: CLOSED,
    },
    RowSpec {
        name: "ours-oneshot",
        label: "tower-circuit-breaker, cloned per call (`oneshot`)",
        scenarios: EVERY,
    },
    RowSpec {
        name: "failsafe",
        label: "failsafe 1.3",
        scenarios: EVERY,
    },
    RowSpec {
        name: "recloser",
        label: "recloser 1.4",
        scenarios: EVERY,
    },
    RowSpec {
        name: "recloser-boxed",
        label: "recloser 1.4, its errors boxed (`BoxError`, as a Tower middleware's)",
        scenarios: EVERY,
    },
    RowSpec {
        name: "tower-resilience",
        label: "tower-resilience-circuitbreaker 0.14",
        scenarios: EVERY,
    },
    RowSpec {
        name: "seatbelt",
        label: "seatbelt 0.11 (tower-service)",
        scenarios: EVERY,
    },
];

/// The row named `name`, with or without the `-await` suffix.
pub fn row_spec(name: &str) -> Option<&'static RowSpec> {
    let base = name.strip_suffix("-await").unwrap_or(name);
    ROWS.iter().find(|row| row.name == base)
}

/// [`ROWS`] as the scripts read it (`cg --list`): a TSV table `row scenarios label`, every
/// `<row>-await` first (they lead), then the rows polled in line; scenarios space-separated,
/// with `D` where the row runs on two threads.
pub fn rows_tsv() -> String {
    let mut out = String::from("row\tscenarios\tlabel\n");
    for suffix in ["-await", ""] {
        for row in ROWS {
            let mut scenarios: Vec<String> =
                row.scenarios.iter().map(|s| format!("{s:?}")).collect();
            if row.two_threads() {
                scenarios.push("D".into());
            }
            out.push_str(&format!(
                "{}{suffix}\t{}\t{}\n",
                row.name,
                scenarios.join(" "),
                row.label
            ));
        }
    }
    out
}

/// Evaluates `body` with `make` bound to the constructor of the row named `name` (a row of
/// [`ROWS`], polled in line). One arm per row of [`ROWS`] (the test `every_row_has_a_constructor`
/// checks it); the constructors' types differ, so they cannot sit in the table itself.
#[macro_export]
macro_rules! with_make {
    ($name:expr, |$make:ident| $body:expr) => {
        match $name {
            "baseline" => {
                let $make = $crate::baseline;
                $body
            }
            "floor" => {
                let $make = $crate::floor;
                $body
            }
            "sketch" => {
                let $make = $crate::sketch;
                $body
            }
            "baseline-oneshot" => {
                let $make = $crate::baseline_oneshot;
                $body
            }
            "ours-oneshot" => {
                let $make = $crate::ours_oneshot;
                $body
            }
            "ours" => {
                let $make = || $crate::ours($crate::Ours::Count);
                $body
            }
            "ours-time" => {
                let $make = || $crate::ours($crate::Ours::Time);
                $body
            }
            "ours-time-1000" => {
                let $make = || $crate::ours($crate::Ours::Time1000);
                $body
            }
            "ours-slow" => {
                let $make = || $crate::ours($crate::Ours::Slow);
                $body
            }
            "ours-fallback" => {
                let $make = $crate::ours_fallback;
                $body
            }
            "ours-metrics" => {
                let $make = || $crate::ours($crate::Ours::Metrics);
                $body
            }
            "ours-redis" => {
                let $make = $crate::ours_redis;
                $body
            }
            "ours-metrics-durations" => {
                let $make = || $crate::ours($crate::Ours::MetricsDurations);
                $body
            }
            "failsafe" => {
                let $make = $crate::failsafe;
                $body
            }
            "recloser" => {
                let $make = $crate::recloser;
                $body
            }
            "recloser-boxed" => {
                let $make = $crate::recloser_boxed;
                $body
            }
            "tower-resilience" => {
                let $make = $crate::tower_resilience;
                $body
            }
            "seatbelt" => {
                let $make = $crate::seatbelt;
                $body
            }
            other => panic!("unknown row {other}"),
        }
    };
}

/// Evaluates `body` with `row` bound to a new row named `name`.
#[macro_export]
macro_rules! with_row {
    ($name:expr, |$row:ident| $body:expr) => {
        $crate::with_make!($name, |make| {
            let $row = make();
            $body
        })
    };
}

/// Evaluates `body` with `row` bound to a new row named `name`, which ends in `-await`: the row
/// without the suffix, wrapped in [`Task`] (driven as applications call).
///
/// A binary uses either this or [`with_row`], not both: one that held both drivers of a row held
/// two copies of its calls, and the compiler inlined less into either (ours A, in line: 268 ->
/// 329-341 Ir; as applications call: 336-419 Ir, depending on how the copies were shared). An
/// application calls a service from one place.
#[macro_export]
macro_rules! with_task {
    ($name:expr, |$row:ident| $body:expr) => {{
        let name: &str = $name;
        let base = name
            .strip_suffix("-await")
            .unwrap_or_else(|| panic!("{name}: not a -await row"));
        $crate::with_make!(base, |make| {
            let $row = $crate::Task(make());
            $body
        })
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_has_a_constructor() {
        for row in ROWS {
            with_make!(row.name, |make| drop(make()));
        }
    }

    #[test]
    fn row_names_are_unique() {
        for (i, row) in ROWS.iter().enumerate() {
            assert!(
                ROWS[..i].iter().all(|other| other.name != row.name),
                "{} twice",
                row.name
            );
        }
    }

    #[test]
    fn the_list_leads_with_the_await_rows() {
        let tsv = rows_tsv();
        let names: Vec<&str> = tsv
            .lines()
            .skip(1)
            .map(|line| line.split('\t').next().unwrap())
            .collect();
        assert_eq!(names.len(), 2 * ROWS.len());
        assert_eq!(names[0], "baseline-await");
        assert_eq!(names[ROWS.len()], "baseline");
        assert!(tsv.contains("ours-fallback-await\tC\t"));
        assert!(tsv.contains("\nbaseline\tA B D\t"));
    }
}
