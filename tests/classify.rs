//! Classification that comes later or with a date (DESIGN.md §3 "Always": the deferred verdict
//! and the upstream's "do not come back before"), through `Classify::complete` and `Completion`,
//! with a test-only body that carries the completion to its end.

use std::time::Duration;

use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_circuit_breaker::error::Rejected;
use tower_circuit_breaker::{Builder, CircuitBreakerLayer, Classify, Completion, Outcome, State};

/// A response whose verdict is known only at its end, like a gRPC status in trailers, with a
/// slot for the breaker's completion (a real integration wraps the inner service's body so).
#[derive(Debug)]
struct Body {
    /// The outcome its end will report.
    at_end: Outcome,
    completion: Option<Completion>,
}

impl Body {
    /// The end of the stream: the verdict is known now.
    fn finish(mut self) {
        let completion = self.completion.take().expect("a completion to carry");
        completion.record(self.at_end);
    }
}

/// Defers every verdict to the end of the body.
#[derive(Clone, Copy)]
struct AtTheEnd;

impl Classify<Body, &'static str> for AtTheEnd {
    fn classify(&self, result: Result<&Body, &&'static str>) -> Outcome {
        unreachable!("complete is overridden: {:?}", result.map(|b| b.at_end))
    }

    fn complete(&self, result: Result<&mut Body, &&'static str>, completion: Completion) {
        match result {
            Ok(body) => body.completion = Some(completion),
            Err(_) => completion.record(Outcome::Failure),
        }
    }
}

type Svc = tower_circuit_breaker::CircuitBreaker<
    tower::util::ServiceFn<fn(Outcome) -> std::future::Ready<Result<Body, &'static str>>>,
    AtTheEnd,
>;

fn streams(builder: Builder) -> (CircuitBreakerLayer<AtTheEnd>, Svc) {
    fn answer(at_end: Outcome) -> std::future::Ready<Result<Body, &'static str>> {
        std::future::ready(Ok(Body {
            at_end,
            completion: None,
        }))
    }
    let layer = builder.classify(AtTheEnd).build().unwrap();
    let svc = layer.layer(service_fn(answer as fn(Outcome) -> _));
    (layer, svc)
}

async fn body(svc: &Svc, at_end: Outcome) -> Body {
    svc.clone().oneshot(at_end).await.unwrap()
}

/// Trips a `consecutive_failures(1)` breaker with a failure at a body's end, and waits for its
/// open interval (`OPEN`) to end.
async fn half_open(svc: &Svc, layer: &CircuitBreakerLayer<AtTheEnd>) {
    body(svc, Outcome::Failure).await.finish();
    assert_eq!(layer.handle().state(), State::Open);
    tokio::time::advance(OPEN).await;
    assert_eq!(layer.handle().state(), State::HalfOpen);
}

const OPEN: Duration = Duration::from_secs(5);

fn tripping() -> Builder {
    CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(OPEN)
}

#[tokio::test(start_paused = true)]
async fn a_deferred_verdict_is_recorded_at_the_end_of_the_body() {
    let (layer, svc) = streams(tripping());
    let failing = body(&svc, Outcome::Failure).await;
    assert_eq!(
        layer.handle().metrics().calls(),
        0,
        "nothing known before the end"
    );
    assert_eq!(layer.handle().state(), State::Closed);
    failing.finish();
    assert_eq!(layer.handle().state(), State::Open);
}

/// A completion carried in a body says what it holds when debugged: whether it was timed, and
/// its deadline.
#[tokio::test(start_paused = true)]
async fn a_completion_shows_its_admission_and_timing_in_debug() {
    let (_layer, svc) = streams(tripping());
    let pending = body(&svc, Outcome::Success).await;
    let shown = format!("{:?}", pending.completion.as_ref().unwrap());
    for field in ["Completion", "admission", "started", "deadline"] {
        assert!(shown.contains(field), "{field} in {shown}");
    }
    pending.finish();
}

#[tokio::test(start_paused = true)]
async fn a_body_dropped_before_its_end_records_nothing_and_returns_its_probe_permit() {
    let (layer, svc) = streams(tripping());
    half_open(&svc, &layer).await;

    let probe = body(&svc, Outcome::Failure).await;
    let err = svc.clone().oneshot(Outcome::Success).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<Rejected>().map(Rejected::state),
        Some(State::HalfOpen),
        "the only permit is in the body"
    );
    drop(probe);
    assert_eq!(layer.handle().state(), State::HalfOpen, "nothing recorded");

    body(&svc, Outcome::Success).await.finish();
    assert_eq!(
        layer.handle().state(),
        State::Closed,
        "the permit came back"
    );
}

#[tokio::test(start_paused = true)]
async fn a_verdict_that_arrives_after_a_transition_is_stale() {
    let (layer, svc) = streams(tripping());
    let late = body(&svc, Outcome::Failure).await;
    layer.handle().reset();
    late.finish();
    assert_eq!(
        layer.handle().state(),
        State::Closed,
        "one failure would trip"
    );
    assert_eq!(layer.handle().metrics().calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_slow_call_is_timed_to_the_end_of_its_body() {
    let (layer, svc) = streams(
        CircuitBreakerLayer::builder()
            .sliding_window(tower_circuit_breaker::Window::count(10))
            .minimum_calls(1)
            .slow_call_rate_threshold(1.0)
            .slow_call_duration(Duration::from_secs(1)),
    );
    let slow = body(&svc, Outcome::Success).await;
    tokio::time::advance(Duration::from_secs(2)).await;
    slow.finish();
    assert_eq!(layer.handle().metrics().slow(), 1);
    assert_eq!(layer.handle().state(), State::Open);
}

/// An upstream's answer when it is overloaded: come back in this many seconds.
#[derive(Debug)]
struct Overloaded(u64);

impl std::fmt::Display for Overloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "overloaded; retry in {}s", self.0)
    }
}

impl std::error::Error for Overloaded {}

/// Fails an `Overloaded` with its date.
#[derive(Clone, Copy)]
struct Pushback;

impl Classify<(), Overloaded> for Pushback {
    fn classify(&self, result: Result<&(), &Overloaded>) -> Outcome {
        match result {
            Ok(()) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }

    fn complete(&self, result: Result<&mut (), &Overloaded>, completion: Completion) {
        match result {
            Err(Overloaded(secs)) => {
                completion.fail_until(Instant::now() + Duration::from_secs(*secs))
            }
            Ok(_) => completion.record(Outcome::Success),
        }
    }
}

fn answer(fail: Option<u64>) -> std::future::Ready<Result<(), Overloaded>> {
    std::future::ready(match fail {
        Some(secs) => Err(Overloaded(secs)),
        None => Ok(()),
    })
}

async fn pushed_back(builder: Builder, secs: u64) -> (CircuitBreakerLayer<Pushback>, Rejected) {
    let layer = builder.classify(Pushback).build().unwrap();
    let mut svc = layer.layer(service_fn(answer));
    svc.ready()
        .await
        .unwrap()
        .call(Some(secs))
        .await
        .unwrap_err();
    let err = svc.ready().await.unwrap().call(None).await.unwrap_err();
    let rejected = err.downcast::<Rejected>().expect("a rejection");
    (layer, *rejected)
}

#[tokio::test(start_paused = true)]
async fn an_upstream_retry_after_longer_than_the_interval_keeps_the_circuit_open_until_then() {
    let (layer, rejected) = pushed_back(tripping(), 60).await;
    assert_eq!(rejected.retry_after(), Some(Duration::from_secs(60)));
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(layer.handle().state(), State::Open);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(layer.handle().state(), State::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn an_upstream_retry_after_never_shortens_the_interval() {
    let (_, rejected) = pushed_back(tripping(), 1).await;
    assert_eq!(rejected.retry_after(), Some(OPEN));
}

#[tokio::test(start_paused = true)]
async fn an_upstream_retry_after_is_capped_by_max_retry_after() {
    let builder = tripping().max_retry_after(Duration::from_secs(30));
    let (_, rejected) = pushed_back(builder, 3600).await;
    assert_eq!(rejected.retry_after(), Some(Duration::from_secs(30)));
}

#[tokio::test(start_paused = true)]
async fn an_upstream_retry_after_on_a_failed_probe_sets_the_next_interval() {
    let layer = tripping().classify(Pushback).build().unwrap();
    let svc = layer.layer(service_fn(answer));
    svc.clone().oneshot(Some(0)).await.unwrap_err();
    tokio::time::advance(OPEN).await;
    svc.clone().oneshot(Some(120)).await.unwrap_err(); // the probe
    let err = svc.oneshot(None).await.unwrap_err();
    let rejected = err.downcast_ref::<Rejected>().expect("a rejection");
    assert_eq!(rejected.retry_after(), Some(Duration::from_secs(120)));
}

#[test]
fn outcome_and_the_classifier_traits_are_open_to_extension() {
    // `Outcome` is `#[non_exhaustive]`: a match outside the crate needs a wildcard arm.
    fn describe(outcome: Outcome) -> &'static str {
        match outcome {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Ignored => "ignored",
            _ => "other",
        }
    }
    assert_eq!(describe(Outcome::Ignored), "ignored");
}

/// Bodies admitted on this thread and finished on several others while the window holds a
/// failure: each success joins the open batch from `Completion::record` (on its admitting lane's
/// line, from whichever thread ends the body) and counts once, in the window and in the totals.
#[tokio::test(start_paused = true)]
async fn successes_at_the_end_of_bodies_finished_on_other_threads_each_count_once() {
    const THREADS: usize = 6;
    const BODIES: usize = 50;
    let (layer, svc) = streams(
        CircuitBreakerLayer::builder()
            .sliding_window(tower_circuit_breaker::Window::time(Duration::from_secs(60)).buckets(1))
            .minimum_calls(1)
            .failure_rate_threshold(1.0),
    );
    body(&svc, Outcome::Success).await.finish(); // under the lock: opens the batch
    body(&svc, Outcome::Failure).await.finish();
    let mut bodies = Vec::new();
    for _ in 0..THREADS * BODIES {
        bodies.push(body(&svc, Outcome::Success).await);
    }
    std::thread::scope(|scope| {
        let mut bodies = bodies.into_iter();
        for _ in 0..THREADS {
            let mine: Vec<Body> = bodies.by_ref().take(BODIES).collect();
            scope.spawn(move || mine.into_iter().for_each(Body::finish));
        }
    });
    let m = layer.handle().metrics();
    let successes = (THREADS * BODIES + 1) as u64;
    assert_eq!((m.calls(), m.failed()), (successes + 1, 1));
    assert_eq!(
        (m.totals().successful(), m.totals().failed()),
        (successes, 1)
    );
}

/// A failure with a date while the window's successes batch: the lock folds the batched
/// successes before it records the failure (they lower the rate), and the circuit it opens stays
/// open until the date.
#[tokio::test(start_paused = true)]
async fn a_failure_with_a_date_while_successes_batch_counts_them_and_keeps_its_date() {
    let builder = CircuitBreakerLayer::builder()
        .sliding_window(tower_circuit_breaker::Window::time(Duration::from_secs(60)).buckets(1))
        .minimum_calls(1)
        .failure_rate_threshold(0.5)
        .open_duration(OPEN);
    let layer = builder.classify(Pushback).build().unwrap();
    let mut svc = layer.layer(service_fn(answer));
    for _ in 0..4 {
        svc.ready().await.unwrap().call(None).await.unwrap(); // the first opens the batch
    }
    let mut failures = 0;
    while layer.handle().state() == State::Closed {
        svc.ready().await.unwrap().call(Some(60)).await.unwrap_err();
        failures += 1;
    }
    assert_eq!(
        failures, 4,
        "4 of 8 is the rate: the batched successes counted"
    );
    let m = layer.handle().metrics();
    assert_eq!((m.calls(), m.failed()), (8, 4));
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(layer.handle().state(), State::Open, "60 s asked");
}
