//! The breaker stacked with tower's concurrency limits and load shedding (DESIGN.md §3-§4), in
//! the orders users write: `ConcurrencyLimit` / `GlobalConcurrencyLimit` outside or inside the
//! breaker, and `LoadShed` over it or under it.
//!
//! `tower_contract.rs` covers `Buffer`, `Timeout` and `Retry`. Needs tower's `limit` and
//! `load-shed` features as dev-dependencies.
//!
//! Permits are counted on a `Semaphore` the test owns (`GlobalConcurrencyLimitLayer::
//! with_semaphore`, `ConcurrencyLimit::with_semaphore`), so that a test can take one itself (a call
//! in flight elsewhere) and read `available_permits()`.
//!
//! Everything that depends on time runs on tokio's paused clock, except the multi-thread race at
//! the end, which cannot pause its clock and never waits on time (see `tests/concurrency.rs`).

use std::future::{Future, ready};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio_test::{assert_pending, assert_ready_ok, task};
use tower::layer::layer_fn;
use tower::limit::{ConcurrencyLimit, GlobalConcurrencyLimitLayer};
use tower::load_shed::error::Overloaded;
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_circuit_breaker::error::Rejected;
use tower_circuit_breaker::{CircuitBreakerLayer, Outcome, State};
use tower_test::{assert_request_eq, mock};

mod support;
use support::plain::{Dependency, breaker, echo, fail_once, half_open, trip};
use support::{Counted, Counts, OPEN, await_half_open, rejected};

type Req = &'static str;
type Res = &'static str;

/// Answers at once, except the request `"hang"`, which never completes.
fn hang_or_echo() -> impl Service<
    Req,
    Response = Res,
    Error = BoxError,
    Future = impl Future<Output = Result<Res, BoxError>> + Send,
> + Clone {
    service_fn(|request: Req| async move {
        if request == "hang" {
            futures::future::pending::<()>().await;
        }
        Ok::<_, BoxError>(request)
    })
}

// ===== ConcurrencyLimit inside the breaker (breaker outermost) =====

#[tokio::test(start_paused = true)]
async fn open_breaker_outside_a_limit_takes_no_concurrency_permit() {
    let layer = breaker("composition", 1);
    let semaphore = Arc::new(Semaphore::new(1));
    let counts = Counts::default();
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(layer_fn(|inner| Counted {
            inner,
            counts: counts.clone(),
        }))
        .layer(GlobalConcurrencyLimitLayer::with_semaphore(
            semaphore.clone(),
        ))
        .service(echo());
    trip(&layer).await;

    let mut caller = mock::Spawn::new(service.clone());
    for _ in 0..3 {
        assert_ready_ok!(caller.poll_ready());
        assert_eq!(semaphore.available_permits(), 1, "no permit for readiness");
        let response = caller.call("x");
        assert_eq!(semaphore.available_permits(), 1, "nor for the call");
        assert_eq!(rejected(&response.await.unwrap_err()).state(), State::Open);
    }

    // Even with the limit full, a rejection does not queue behind it.
    let held = semaphore.clone().try_acquire_owned().unwrap();
    let mut caller = mock::Spawn::new(service.clone());
    assert_ready_ok!(caller.poll_ready(), "rejects without waiting for the limit");
    assert!(caller.call("x").await.unwrap_err().is::<Rejected>());
    assert_eq!(counts.ready(), 0, "the limit was never polled");
    assert_eq!(counts.calls(), 0);
    drop(held);

    // The contrast that makes the count meaningful: an admitted call does take the permit.
    layer.handle().reset();
    let mut caller = mock::Spawn::new(service);
    assert_ready_ok!(caller.poll_ready());
    assert_eq!(
        semaphore.available_permits(),
        0,
        "admitted: the limit's permit"
    );
    assert_eq!(caller.call("x").await.unwrap(), "x");
    assert_eq!(semaphore.available_permits(), 1);
}

#[tokio::test(start_paused = true)]
async fn call_queued_at_a_limit_inside_the_breaker_holds_no_probe_permit() {
    let layer = breaker("composition", 1);
    half_open(&layer).await;
    let semaphore = Arc::new(Semaphore::new(1));
    let limited = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(GlobalConcurrencyLimitLayer::with_semaphore(
            semaphore.clone(),
        ))
        .service(echo());

    // Another call holds the limit's only permit: this one waits for it ...
    let held = semaphore.clone().try_acquire_owned().unwrap();
    let mut waiting = mock::Spawn::new(limited);
    assert_pending!(waiting.poll_ready(), "half-open, but the limit is full");

    // ... and holds no probe permit while it waits: a call by another path takes it.
    let mut other = mock::Spawn::new(layer.layer(echo()));
    assert_ready_ok!(other.poll_ready(), "the only probe permit is free");
    let probe = other.call("probe");

    drop(held);
    assert!(waiting.is_woken(), "the limit wakes the waiting call");
    assert_ready_ok!(
        waiting.poll_ready(),
        "no probe permit left: ready to reject"
    );
    let err = waiting.call("late").await.unwrap_err();
    assert_eq!(rejected(&err).state(), State::HalfOpen);

    assert_eq!(probe.await.unwrap(), "probe");
    assert_eq!(layer.handle().state(), State::Closed);
    assert_ready_ok!(
        waiting.poll_ready(),
        "closed: admitted, with the limit's permit"
    );
    assert_eq!(waiting.call("x").await.unwrap(), "x");
}

/// SURPRISING (see the report): a service that queued at a full limit keeps its place in the
/// semaphore's queue when the circuit opens, because an open breaker never polls its inner
/// service again. The next permit released goes to that queued acquire and stays there, unused,
/// until the service is admitted again or dropped: meanwhile a shared limit is short of a permit,
/// and with a limit of one every other caller starves, even after the circuit closed.
#[tokio::test(start_paused = true)]
async fn limit_inside_the_breaker_keeps_a_permit_it_queued_for_while_the_breaker_rejects() {
    let layer = breaker("composition", 1);
    let semaphore = Arc::new(Semaphore::new(1));
    let limit = GlobalConcurrencyLimitLayer::with_semaphore(semaphore.clone());
    let stack = |inner| {
        ServiceBuilder::new()
            .layer(layer.clone())
            .layer(limit.clone())
            .service(inner)
    };

    // Closed; a call in flight holds the only permit, and this service queues for it.
    let held = semaphore.clone().try_acquire_owned().unwrap();
    let mut queued = mock::Spawn::new(stack(echo()));
    assert_pending!(queued.poll_ready());
    layer.handle().force_open();
    assert!(queued.is_woken());
    assert_ready_ok!(queued.poll_ready());
    assert!(queued.call("x").await.unwrap_err().is::<Rejected>());

    // The call in flight ends: its permit goes to `queued`'s acquire, which nobody polls.
    drop(held);
    assert_eq!(
        semaphore.available_permits(),
        0,
        "the released permit sits in the rejecting service's queued acquire"
    );
    assert_ready_ok!(
        queued.poll_ready(),
        "still rejecting, without polling the limit"
    );
    assert!(queued.call("x").await.unwrap_err().is::<Rejected>());
    assert_eq!(semaphore.available_permits(), 0);

    // The circuit closes, but a fresh caller still cannot get the permit.
    layer.handle().reset();
    let mut fresh = mock::Spawn::new(stack(echo()));
    assert_pending!(fresh.poll_ready(), "starved by an idle service");

    // Only dropping (or using) the idle service frees it.
    drop(queued);
    assert!(fresh.is_woken());
    assert_ready_ok!(fresh.poll_ready());
    assert_eq!(fresh.call("x").await.unwrap(), "x");
    assert_eq!(semaphore.available_permits(), 1);
}

#[tokio::test(start_paused = true)]
async fn limit_inside_the_breaker_dropped_hanging_probe_returns_both_permits() {
    let layer = breaker("composition", 1);
    half_open(&layer).await;
    let semaphore = Arc::new(Semaphore::new(1));
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(GlobalConcurrencyLimitLayer::with_semaphore(
            semaphore.clone(),
        ))
        .service(hang_or_echo());

    let mut prober = mock::Spawn::new(service.clone());
    assert_ready_ok!(prober.poll_ready());
    let mut hanging = task::spawn(prober.call("hang"));
    assert_pending!(hanging.poll());
    assert_eq!(
        semaphore.available_permits(),
        0,
        "the probe holds the limit"
    );

    // While it hangs, others are rejected by the breaker, without queueing at the limit.
    let mut other = mock::Spawn::new(service.clone());
    assert_ready_ok!(other.poll_ready(), "no probe permit left: ready to reject");
    let err = other.call("x").await.unwrap_err();
    assert_eq!(rejected(&err).state(), State::HalfOpen);
    assert_eq!(rejected(&err).retry_after(), None);

    drop(hanging);
    assert_eq!(
        semaphore.available_permits(),
        1,
        "the limit's permit is back"
    );
    assert_eq!(layer.handle().state(), State::HalfOpen, "nothing recorded");
    let mut next = mock::Spawn::new(service);
    assert_ready_ok!(next.poll_ready(), "admitted: the probe permit is back");
    assert_eq!(next.call("probe").await.unwrap(), "probe");
    assert_eq!(layer.handle().state(), State::Closed);
    assert_eq!(semaphore.available_permits(), 1);
}

// ===== ConcurrencyLimit outside the breaker =====

#[tokio::test(start_paused = true)]
async fn limit_outside_the_breaker_gets_its_permit_back_from_each_rejection() {
    let layer = breaker("composition", 1);
    let semaphore = Arc::new(Semaphore::new(1));
    let counts = Counts::default();
    let service = ServiceBuilder::new()
        .layer(GlobalConcurrencyLimitLayer::with_semaphore(
            semaphore.clone(),
        ))
        .layer(layer.clone())
        .service(Counted {
            inner: echo(),
            counts: counts.clone(),
        });
    trip(&layer).await;

    for _ in 0..3 {
        let mut caller = mock::Spawn::new(service.clone());
        assert_ready_ok!(caller.poll_ready());
        assert_eq!(semaphore.available_permits(), 0, "the limit decides first");
        let response = caller.call("x");
        assert_eq!(semaphore.available_permits(), 0, "held by the response");
        let err = response.await.unwrap_err();
        assert_eq!(rejected(&err).state(), State::Open);
        assert_eq!(semaphore.available_permits(), 1, "back after the rejection");
    }

    // A rejection dropped unpolled, and a service dropped after `poll_ready`, give it back too.
    let mut caller = mock::Spawn::new(service.clone());
    assert_ready_ok!(caller.poll_ready());
    drop(caller.call("x"));
    assert_eq!(semaphore.available_permits(), 1);
    let mut caller = mock::Spawn::new(service.clone());
    assert_ready_ok!(caller.poll_ready());
    drop(caller);
    assert_eq!(semaphore.available_permits(), 1);

    assert_eq!(counts.ready(), 0, "the inner service was never touched");
    assert_eq!(layer.handle().metrics().not_permitted(), 4);
    // And the single permit still serves an admitted call.
    layer.handle().reset();
    assert_eq!(service.oneshot("x").await.unwrap(), "x");
}

#[tokio::test(start_paused = true)]
async fn limit_outside_the_breaker_dropped_hanging_probe_returns_both_permits() {
    let layer = breaker("composition", 1);
    half_open(&layer).await;
    let semaphore = Arc::new(Semaphore::new(1));
    let service = ServiceBuilder::new()
        .layer(GlobalConcurrencyLimitLayer::with_semaphore(
            semaphore.clone(),
        ))
        .layer(layer.clone())
        .service(hang_or_echo());

    let mut prober = mock::Spawn::new(service.clone());
    assert_ready_ok!(prober.poll_ready());
    let mut hanging = task::spawn(prober.call("hang"));
    assert_pending!(hanging.poll());

    // The limit of one holds the next call back (it is not rejected: it waits).
    let mut next = mock::Spawn::new(service);
    assert_pending!(
        next.poll_ready(),
        "waits at the limit while the probe hangs"
    );

    drop(hanging);
    assert!(next.is_woken(), "the limit's permit came back");
    assert_eq!(layer.handle().state(), State::HalfOpen, "nothing recorded");
    assert_ready_ok!(
        next.poll_ready(),
        "admitted: the probe permit came back too"
    );
    assert_eq!(next.call("probe").await.unwrap(), "probe");
    assert_eq!(layer.handle().state(), State::Closed);
    assert_eq!(semaphore.available_permits(), 1);
}

// ===== LoadShed over the breaker =====

#[tokio::test(start_paused = true)]
async fn load_shed_over_an_open_breaker_rejects_instead_of_shedding() {
    let layer = breaker("composition", 1);
    let (inner, mut mock) = mock::pair::<Req, Res>();
    let mut service = mock::Spawn::new(
        ServiceBuilder::new()
            .load_shed()
            .layer(layer.clone())
            .service(inner),
    );

    // Closed, inner not ready: the breaker passes `Pending` on, and LoadShed sheds.
    mock.allow(0);
    assert_ready_ok!(service.poll_ready());
    let err = service.call("x").await.unwrap_err();
    assert!(err.is::<Overloaded>(), "{err:?}");
    assert_eq!(
        layer.handle().metrics().calls(),
        0,
        "a shed call is not an outcome"
    );

    // Open: the breaker is ready (to reject), so LoadShed passes the call and the caller sees
    // `Rejected`, not `Overloaded`, and when to come back.
    trip(&layer).await;
    for _ in 0..3 {
        assert_ready_ok!(service.poll_ready());
        let err = service.call("x").await.unwrap_err();
        assert!(!err.is::<Overloaded>(), "{err:?}");
        let rejection = rejected(&err);
        assert_eq!(rejection.state(), State::Open);
        assert_eq!(rejection.retry_after(), Some(OPEN));
    }
    assert_pending!(mock.poll_request(), "nothing reached the inner service");
    assert_eq!(layer.handle().metrics().not_permitted(), 3);
}

#[tokio::test(start_paused = true)]
async fn load_shed_over_a_half_open_breaker_sheds_without_spending_the_probe() {
    let layer = breaker("composition", 1);
    half_open(&layer).await;
    let (inner, mut mock) = mock::pair::<Req, Res>();
    let mut service = mock::Spawn::new(
        ServiceBuilder::new()
            .load_shed()
            .layer(layer.clone())
            .service(inner),
    );

    mock.allow(0);
    for _ in 0..3 {
        assert_ready_ok!(service.poll_ready());
        let err = service.call("x").await.unwrap_err();
        assert!(err.is::<Overloaded>(), "{err:?}");
    }
    assert_eq!(layer.handle().state(), State::HalfOpen, "nothing recorded");

    mock.allow(1);
    assert_ready_ok!(service.poll_ready());
    let response = service.call("probe");
    assert_request_eq!(mock, "probe").send_response("ok");
    assert_eq!(
        response.await.unwrap(),
        "ok",
        "the probe permit was still there"
    );
    assert_eq!(layer.handle().state(), State::Closed);
}

// ===== LoadShed under the breaker =====

/// SURPRISING (see the report): with the default classifier, `Overloaded` from a `LoadShed` under
/// the breaker is a failure like any other. A healthy dependency that is merely busy (its
/// concurrency limit full) opens the circuit, and a shed probe reopens it.
#[tokio::test(start_paused = true)]
async fn overloaded_from_load_shed_under_the_breaker_counts_as_a_failure() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(3)
        .open_duration(OPEN)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, mut mock) = mock::pair::<Req, Res>();
    let service = ServiceBuilder::new()
        .layer(layer)
        .load_shed()
        .concurrency_limit(1)
        .service(inner);

    // One slow call holds the limit's only slot.
    let mut slow = mock::Spawn::new(service.clone());
    assert_ready_ok!(slow.poll_ready());
    let in_flight = slow.call("slow");
    let (_, respond) = mock.next_request().await.expect("the slow call arrived");

    for _ in 0..3 {
        let err = service.clone().oneshot("x").await.unwrap_err();
        assert!(err.is::<Overloaded>(), "shed at once: {err:?}");
    }
    assert_eq!(
        handle.state(),
        State::Open,
        "three sheds opened the circuit, though the dependency never failed"
    );
    assert_eq!(handle.metrics().failed(), 3);

    // Half-open: the probe is shed as well (the slot is still taken), and reopens the circuit.
    tokio::time::advance(OPEN).await;
    let err = service.clone().oneshot("probe").await.unwrap_err();
    assert!(err.is::<Overloaded>(), "{err:?}");
    assert_eq!(
        handle.state(),
        State::Open,
        "a shed probe is a failed probe"
    );

    // The slow call then succeeds; its result is stale and changes nothing.
    respond.send_response("ok");
    assert_eq!(in_flight.await.unwrap(), "ok");
    assert_eq!(handle.state(), State::Open);
}

/// The way out for users: a classifier that ignores `Overloaded`.
fn ignore_overloaded(result: Result<&Res, &BoxError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Success,
        Err(err) if err.is::<Overloaded>() => Outcome::Ignored,
        Err(_) => Outcome::Failure,
    }
}

#[tokio::test(start_paused = true)]
async fn classifier_that_ignores_overloaded_keeps_load_shedding_out_of_the_breaker() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(3)
        .open_duration(OPEN)
        .classify(ignore_overloaded as fn(Result<&Res, &BoxError>) -> Outcome)
        .build()
        .unwrap();
    let handle = layer.handle();
    let semaphore = Arc::new(Semaphore::new(1));
    let service = ServiceBuilder::new()
        .layer(layer)
        .load_shed()
        .layer(GlobalConcurrencyLimitLayer::with_semaphore(
            semaphore.clone(),
        ))
        .service(service_fn(|request: Req| {
            ready(match request {
                "fail" => Err::<Res, BoxError>("down".into()),
                _ => Ok(request),
            })
        }));

    // The limit is full (a call in flight elsewhere): every call is shed, and nothing recorded.
    let held = semaphore.clone().try_acquire_owned().unwrap();
    for _ in 0..5 {
        let err = service.clone().oneshot("x").await.unwrap_err();
        assert!(err.is::<Overloaded>(), "{err:?}");
    }
    assert_eq!(handle.state(), State::Closed, "shedding is not a failure");
    assert_eq!(handle.metrics().calls(), 0, "nor recorded at all");
    drop(held);

    // Real failures still count.
    for _ in 0..3 {
        let err = service.clone().oneshot("fail").await.unwrap_err();
        assert!(!err.is::<Rejected>() && !err.is::<Overloaded>(), "{err:?}");
    }
    assert_eq!(handle.state(), State::Open);

    // A shed probe gives its permit back: the next one is admitted and closes the circuit.
    tokio::time::advance(OPEN).await;
    let held = semaphore.clone().try_acquire_owned().unwrap();
    let err = service.clone().oneshot("probe").await.unwrap_err();
    assert!(err.is::<Overloaded>(), "{err:?}");
    assert_eq!(handle.state(), State::HalfOpen);
    drop(held);
    assert_eq!(service.oneshot("probe").await.unwrap(), "probe");
    assert_eq!(handle.state(), State::Closed);
}

// ===== many tasks, both orders, one limit and one breaker =====

const TASKS: usize = 200;
const LIMIT: usize = 4;
const PROBES: usize = 3;
const ATTEMPTS: usize = 5;
const ROUNDS: usize = 12;
const HOUR: Duration = Duration::from_secs(3600);

/// What one task saw: the state of each rejection, and the answer to its admitted call.
#[derive(Debug, Default)]
struct Seen {
    rejected_in: Vec<State>,
    answer: Option<Result<(), String>>,
}

/// Counts the tasks of a round that have started, and those that have decided.
#[derive(Debug, Default)]
struct Race {
    started: AtomicUsize,
    all_started: Notify,
    decided: AtomicUsize,
    all_decided: Notify,
}

impl Race {
    fn count(count: &AtomicUsize, all: &Notify) {
        if count.fetch_add(1, Ordering::SeqCst) + 1 == TASKS {
            all.notify_one();
        }
    }

    /// Waits for every task to count itself in `count`. A guard against a hang, not a wait on
    /// time: every task gets there at once.
    async fn wait(all: &Notify, what: &str) {
        tokio::time::timeout(Duration::from_secs(60), all.notified())
            .await
            .unwrap_or_else(|_| panic!("every task {what}"));
    }
}

/// Calls through `service` until admitted, at most `ATTEMPTS` times (a rejection is retried at
/// once). Drops the service and counts itself as decided as soon as it was admitted or gave up,
/// then waits for the admitted call's answer.
async fn caller<S>(mut service: S, race: Arc<Race>) -> Seen
where
    S: Service<(), Response = (), Error = BoxError>,
{
    let mut seen = Seen::default();
    let mut admitted = None;
    // The first readiness check runs in this same poll: once every task has started, nearly
    // all of them are queued at the full limit (or rejected).
    Race::count(&race.started, &race.all_started);
    for _ in 0..ATTEMPTS {
        let ready = service.ready().await.expect("never fails");
        // Holding readiness across a yield keeps a permit of the limit (or a probe's) busy for a
        // while, so that other callers find the limit full.
        tokio::task::yield_now().await;
        let mut response = Box::pin(ready.call(()));
        match futures::poll!(&mut response) {
            Poll::Ready(Err(err)) => seen.rejected_in.push(rejected(&err).state()),
            Poll::Ready(Ok(())) => panic!("answered behind a closed gate"),
            Poll::Pending => {
                admitted = Some(response);
                break;
            }
        }
    }
    // Before counting as decided: a service queued at the limit gives its place back.
    drop(service);
    Race::count(&race.decided, &race.all_decided);
    if let Some(response) = admitted {
        seen.answer = Some(response.await.map_err(|e| e.to_string()));
    }
    seen
}

/// 200 tasks race through one `ConcurrencyLimit` semaphore and one breaker, half of them with the
/// limit outside the breaker and half with it inside, retrying each rejection, while a flaky
/// dependency answers the probes. In every round exactly `half_open_calls` probes reach it (never
/// more; and none of the permits of earlier rounds was lost), the limit's permits are all held by
/// the probes or free, and every permit is back once the round is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_through_a_limit_and_the_breaker_lose_no_permits_and_never_exceed_the_probes() {
    let layer = CircuitBreakerLayer::builder()
        .name("stack")
        .consecutive_failures(1)
        .open_duration(Duration::from_nanos(1))
        .half_open_calls(PROBES as u32)
        .half_open_max_wait(HOUR)
        .build()
        .unwrap();
    let handle = layer.handle();
    let semaphore = Arc::new(Semaphore::new(LIMIT));

    let mut closed_rounds = 0;
    for round in 0..ROUNDS {
        if handle.state() == State::Closed {
            fail_once(&layer).await;
        }
        await_half_open(&handle);

        // Round by round: every probe succeeds, one fails, or all fail.
        let failures = [0, 1, PROBES][round % 3];
        let dependency = Dependency::new();
        let inner = dependency.service(failures);
        // The limit starts full (calls in flight elsewhere), so that the callers queue at it
        // first: those with the breaker outside are admitted, find the limit full and must give
        // their probe permit back while they wait.
        let full = semaphore
            .clone()
            .acquire_many_owned(LIMIT as u32)
            .await
            .unwrap();
        let race = Arc::new(Race::default());
        let tasks: Vec<_> = (0..TASKS)
            .map(|i| {
                let race = race.clone();
                if i % 2 == 0 {
                    let outside = ConcurrencyLimit::with_semaphore(
                        layer.layer(inner.clone()),
                        semaphore.clone(),
                    );
                    tokio::spawn(caller(outside, race))
                } else {
                    let inside = layer.layer(ConcurrencyLimit::with_semaphore(
                        inner.clone(),
                        semaphore.clone(),
                    ));
                    tokio::spawn(caller(inside, race))
                }
            })
            .collect();
        Race::wait(&race.all_started, "started").await;
        drop(full);
        Race::wait(&race.all_decided, "was admitted or gave up").await;

        assert_eq!(
            dependency.calls(),
            PROBES,
            "round {round}: probes that reached the dependency"
        );
        assert_eq!(
            semaphore.available_permits(),
            LIMIT - PROBES,
            "round {round}: the probes hold their limit permits, every rejection gave its back"
        );

        dependency.open_gate();
        let (mut ok, mut failed, mut rejections) = (0, 0, 0);
        for task in tasks {
            let seen = task.await.expect("no task panicked");
            assert!(
                seen.rejected_in.iter().all(|&s| s == State::HalfOpen),
                "round {round}: {seen:?}"
            );
            rejections += seen.rejected_in.len();
            match seen.answer {
                Some(Ok(())) => ok += 1,
                Some(Err(_)) => failed += 1,
                None => assert_eq!(seen.rejected_in.len(), ATTEMPTS),
            }
        }
        assert_eq!((ok, failed), (PROBES - failures, failures), "round {round}");
        assert!(rejections >= (TASKS - PROBES) * ATTEMPTS, "round {round}");
        assert_eq!(dependency.max_in_flight(), PROBES, "round {round}");
        assert_eq!(
            semaphore.available_permits(),
            LIMIT,
            "round {round}: every limit permit is back"
        );
        if failures == 0 {
            assert_eq!(handle.state(), State::Closed, "round {round}");
            closed_rounds += 1;
        } else {
            assert_ne!(handle.state(), State::Closed, "round {round}: reopened");
        }
    }
    assert_eq!(closed_rounds, ROUNDS / 3);
}
