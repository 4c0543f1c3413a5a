//! Many tasks on a multi-thread runtime racing through one breaker (DESIGN.md §3 "Always":
//! transitions are linearizable; HalfOpen admits at most `half_open_calls` probes).
//!
//! Every race is set up so that all callers decide before any call completes: the inner service
//! counts its calls and then waits at a gate (a `watch` channel) that opens only once every task
//! has been admitted or rejected. Each race runs for several rounds to give the scheduler a chance
//! to interleave differently.
//!
//! A multi-thread runtime cannot pause its clock, so these tests never wait on time. They reach
//! HalfOpen with an open interval of one nanosecond (over by the time anyone looks again), and
//! keep it open afterwards with a backoff whose second interval is an hour. Nothing sleeps.

use std::future::ready;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Barrier, Notify};
use tokio::task::JoinHandle;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_circuit_breaker::error::Rejected;
use tower_circuit_breaker::{Backoff, CircuitBreakerLayer, State};

mod support;
use support::plain::{Dependency, EVERY_CALL, fail_once};
use support::{await_half_open, transitions};

const TASKS: usize = 1_000;
const ROUNDS: usize = 20;
/// Long enough never to end during a test; short enough not to look like "forever".
const HOUR: Duration = Duration::from_secs(3600);

/// The first open interval is 1 ns (HalfOpen at once); every reopening lasts an hour.
fn one_nanosecond_then_an_hour() -> Backoff {
    Backoff::exponential(Duration::from_nanos(1), 1e13, HOUR)
}

/// Spawns `TASKS` tasks that pass a barrier together and then each make one call through the
/// service `make(i)` returns. Returns once every task has been admitted or rejected (admitted
/// calls are then waiting in the inner service), with the tasks to join.
async fn race<S>(make: impl Fn(usize) -> S) -> Vec<JoinHandle<Result<(), BoxError>>>
where
    S: Service<(), Response = (), Error = BoxError> + Send + 'static,
    S::Future: Send,
{
    let barrier = Arc::new(Barrier::new(TASKS));
    let decided = Arc::new(AtomicUsize::new(0));
    let all_decided = Arc::new(Notify::new());
    let tasks = (0..TASKS)
        .map(|i| {
            let mut service = make(i);
            let (barrier, decided, all_decided) =
                (barrier.clone(), decided.clone(), all_decided.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let response = service.ready().await.map(|ready| ready.call(()));
                if decided.fetch_add(1, Ordering::SeqCst) + 1 == TASKS {
                    all_decided.notify_one();
                }
                response?.await
            })
        })
        .collect();
    // A guard against a hang, not a wait on time: every task decides at once.
    tokio::time::timeout(Duration::from_secs(60), all_decided.notified())
        .await
        .expect("every task was admitted or rejected");
    tasks
}

/// Joins the tasks: (admitted and answered `Ok`, admitted and failed, rejected in `state`).
async fn outcomes(tasks: Vec<JoinHandle<Result<(), BoxError>>>) -> (usize, usize, Vec<State>) {
    let (mut ok, mut failed, mut rejected) = (0, 0, Vec::new());
    for task in tasks {
        match task.await.expect("no task panicked") {
            Ok(()) => ok += 1,
            Err(err) => match err.downcast_ref::<Rejected>() {
                Some(rejection) => rejected.push(rejection.state()),
                None => failed += 1,
            },
        }
    }
    (ok, failed, rejected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_callers_get_exactly_the_probe_permits() {
    const PROBES: usize = 5;
    let layer = CircuitBreakerLayer::builder()
        .name("probes")
        .consecutive_failures(1)
        .open_backoff(one_nanosecond_then_an_hour())
        .half_open_calls(PROBES as u32)
        .half_open_max_wait(HOUR)
        .build()
        .unwrap();
    let handle = layer.handle();

    for round in 0..ROUNDS {
        fail_once(&layer).await;
        await_half_open(&handle);

        let dependency = Dependency::new();
        let service = layer.layer(dependency.service(0));
        let tasks = race(|_| service.clone()).await;
        assert_eq!(dependency.calls(), PROBES, "round {round}: probes admitted");

        dependency.open_gate();
        let (ok, failed, rejected) = outcomes(tasks).await;
        assert_eq!((ok, failed), (PROBES, 0), "round {round}");
        assert_eq!(rejected.len(), TASKS - PROBES, "round {round}");
        assert!(
            rejected.iter().all(|&s| s == State::HalfOpen),
            "round {round}"
        );
        assert_eq!(
            handle.state(),
            State::Closed,
            "round {round}: all probes succeeded"
        );
        assert_eq!(dependency.calls(), PROBES);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_probes_return_their_permits_under_a_race() {
    const PROBES: usize = 5;
    let layer = CircuitBreakerLayer::builder()
        .name("cancel")
        .consecutive_failures(1)
        .open_backoff(one_nanosecond_then_an_hour())
        .half_open_calls(PROBES as u32)
        .half_open_max_wait(HOUR)
        .build()
        .unwrap();
    let handle = layer.handle();
    fail_once(&layer).await;
    await_half_open(&handle);

    let dependency = Dependency::new();
    let service = layer.layer(dependency.service(0));
    for round in 1..=ROUNDS {
        let tasks = race(|_| service.clone()).await;
        assert_eq!(
            dependency.calls(),
            PROBES * round,
            "round {round}: every permit came back from the round before"
        );
        // Cancel every task: the probes' futures are dropped while they wait in the inner service.
        for task in &tasks {
            task.abort();
        }
        let mut cancelled = 0;
        for task in tasks {
            match task.await {
                Err(join) if join.is_cancelled() => cancelled += 1,
                Err(join) => panic!("round {round}: {join}"),
                Ok(Ok(())) => panic!("round {round}: a probe completed behind a closed gate"),
                Ok(Err(err)) => assert!(err.is::<Rejected>(), "round {round}: {err}"),
            }
        }
        assert!(
            cancelled >= PROBES,
            "round {round}: the probes were cancelled"
        );
        assert_eq!(
            handle.state(),
            State::HalfOpen,
            "round {round}: nothing recorded"
        );
    }

    // And the permits still admit probes that complete.
    let tasks = race(|_| service.clone()).await;
    dependency.open_gate();
    let (ok, _, rejected) = outcomes(tasks).await;
    assert_eq!((ok, rejected.len()), (PROBES, TASKS - PROBES));
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_failures_open_the_circuit_once() {
    let layer = CircuitBreakerLayer::builder()
        .name("trip")
        .failure_rate_threshold(0.5)
        .minimum_calls(10)
        .consecutive_failures(5)
        .open_duration(HOUR)
        .build()
        .unwrap();
    let handle = layer.handle();

    for round in 0..ROUNDS {
        handle.reset();
        let mut events = handle.subscribe();
        let dependency = Dependency::new();
        let service = layer.layer(dependency.service(EVERY_CALL));
        let tasks = race(|_| service.clone()).await;
        assert_eq!(dependency.calls(), TASKS, "closed: everyone admitted");

        // A thousand failures land together; many of them cross the thresholds.
        dependency.open_gate();
        let (ok, failed, rejected) = outcomes(tasks).await;
        assert_eq!((ok, failed, rejected.len()), (0, TASKS, 0), "round {round}");
        assert_eq!(
            transitions(&mut events),
            [(State::Closed, State::Open)],
            "round {round}: one transition, one event"
        );
        assert_eq!(handle.state(), State::Open);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_successful_probes_close_the_circuit_once() {
    const PROBES: usize = 50;
    let layer = CircuitBreakerLayer::builder()
        .name("close")
        .consecutive_failures(1)
        .open_backoff(one_nanosecond_then_an_hour())
        .half_open_calls(PROBES as u32)
        .half_open_successes(1)
        .half_open_max_wait(HOUR)
        .build()
        .unwrap();
    let handle = layer.handle();

    for round in 0..ROUNDS {
        handle.reset();
        let mut events = handle.subscribe();
        fail_once(&layer).await;

        // No waiting for HalfOpen here: the racing callers themselves end the open interval,
        // so Open -> HalfOpen is raced too.
        let dependency = Dependency::new();
        let service = layer.layer(dependency.service(0));
        let tasks = race(|_| service.clone()).await;
        assert_eq!(dependency.calls(), PROBES, "round {round}");

        // Every probe succeeds at once; any one of them is enough to close.
        dependency.open_gate();
        let (ok, failed, rejected) = outcomes(tasks).await;
        assert_eq!((ok, failed), (PROBES, 0), "round {round}");
        assert_eq!(rejected.len(), TASKS - PROBES, "round {round}");
        assert_eq!(
            transitions(&mut events),
            [
                (State::Closed, State::Open),
                (State::Open, State::HalfOpen),
                (State::HalfOpen, State::Closed),
            ],
            "round {round}: each transition once"
        );
        assert_eq!(handle.state(), State::Closed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_failing_probes_reopen_the_circuit_once() {
    const PROBES: usize = 50;
    let layer = CircuitBreakerLayer::builder()
        .name("reopen")
        .consecutive_failures(1)
        .open_backoff(one_nanosecond_then_an_hour())
        .half_open_calls(PROBES as u32)
        .half_open_max_wait(HOUR)
        .build()
        .unwrap();
    let handle = layer.handle();

    for round in 0..ROUNDS {
        handle.reset();
        let mut events = handle.subscribe();
        fail_once(&layer).await;
        await_half_open(&handle);

        let dependency = Dependency::new();
        let service = layer.layer(dependency.service(EVERY_CALL));
        let tasks = race(|_| service.clone()).await;
        assert_eq!(dependency.calls(), PROBES, "round {round}");

        dependency.open_gate();
        let (ok, failed, rejected) = outcomes(tasks).await;
        assert_eq!((ok, failed), (0, PROBES), "round {round}");
        assert_eq!(rejected.len(), TASKS - PROBES, "round {round}");
        assert_eq!(
            transitions(&mut events),
            [
                (State::Closed, State::Open),
                (State::Open, State::HalfOpen),
                (State::HalfOpen, State::Open),
            ],
            "round {round}: each transition once"
        );
        assert_eq!(
            handle.state(),
            State::Open,
            "the second interval is an hour"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clones_and_services_of_one_layer_share_one_state() {
    // Trips only when every one of the thousand outcomes is in the one shared window.
    let layer = CircuitBreakerLayer::builder()
        .name("shared")
        .failure_rate_threshold(1.0)
        .sliding_window(tower_circuit_breaker::Window::count(TASKS as u32))
        .minimum_calls(TASKS as u32)
        .open_duration(HOUR)
        .build()
        .unwrap();
    let handle = layer.handle();

    for round in 0..ROUNDS {
        handle.reset();
        let dependency = Dependency::new();
        let inner = dependency.service(EVERY_CALL);
        let cloned = layer.layer(inner.clone());
        // Half the tasks use clones of one service, half a service of their own from the layer
        // (as axum makes them).
        let tasks = race(|i| {
            if i % 2 == 0 {
                cloned.clone()
            } else {
                layer.layer(inner.clone())
            }
        })
        .await;
        assert_eq!(dependency.calls(), TASKS);
        assert_eq!(handle.metrics().calls(), 0, "nothing completed yet");

        dependency.open_gate();
        let (_, failed, _) = outcomes(tasks).await;
        assert_eq!(failed, TASKS, "round {round}");
        let metrics = handle.metrics();
        assert_eq!(
            metrics.failed(),
            TASKS as u64,
            "round {round}: no outcome lost"
        );
        assert_eq!(metrics.state(), State::Open, "round {round}");

        // Now every clone and every new service rejects, and each rejection is counted.
        let tasks = race(|i| {
            if i % 2 == 0 {
                cloned.clone()
            } else {
                layer.layer(inner.clone())
            }
        })
        .await;
        let (ok, failed, rejected) = outcomes(tasks).await;
        assert_eq!((ok, failed, rejected.len()), (0, 0, TASKS), "round {round}");
        assert_eq!(dependency.calls(), TASKS, "no call reached the inner");
        assert_eq!(handle.metrics().not_permitted(), TASKS as u64);
    }
}

#[test]
fn rejections_counted_on_many_threads_add_up_and_are_cleared_together() {
    // More threads than the breaker has lanes: some threads share a counter, each thread counts
    // in its own lane's. No runtime: a forced-open breaker rejects without reading the clock.
    const THREADS: usize = 6;
    let layer = CircuitBreakerLayer::builder().build().unwrap();
    let handle = layer.handle();
    let reject_on_every_thread = |per_thread: usize| {
        std::thread::scope(|scope| {
            for _ in 0..THREADS {
                let mut svc = layer.layer(service_fn(|_: ()| ready(Ok::<_, BoxError>(()))));
                scope.spawn(move || {
                    for _ in 0..per_thread {
                        let err = futures::executor::block_on(async {
                            svc.ready().await?.call(()).await
                        })
                        .unwrap_err();
                        assert!(err.is::<Rejected>());
                    }
                });
            }
        });
    };

    handle.force_open();
    reject_on_every_thread(1_000);
    assert_eq!(handle.metrics().not_permitted(), (THREADS * 1_000) as u64);

    handle.reset();
    assert_eq!(
        handle.metrics().not_permitted(),
        0,
        "closing clears every lane"
    );
    handle.force_open();
    reject_on_every_thread(10);
    assert_eq!(handle.metrics().not_permitted(), (THREADS * 10) as u64);
}

/// One failure, then two successes on two threads at once, in a `count(10)` window with a minimum
/// of 2 and a threshold of 0.3: every sequential order opens at the first success (1 of 2
/// failed), so every race must open too. Once, two successes that both saw the other's slot both
/// skipped the evaluation. Bounded: a fixed number of trials on two threads.
#[test]
fn two_successes_reaching_the_minimum_together_trip_as_in_sequence() {
    const TRIALS: usize = 20_000;
    type Svc = tower_circuit_breaker::CircuitBreaker<
        tower::util::ServiceFn<fn(bool) -> std::future::Ready<Result<(), &'static str>>>,
    >;
    fn answer(fail: bool) -> std::future::Ready<Result<(), &'static str>> {
        ready(if fail { Err("down") } else { Ok(()) })
    }
    let start = Arc::new(std::sync::Barrier::new(3));
    let done = Arc::new(std::sync::Barrier::new(3));
    // Counted, not asserted on the workers: a panicking worker would leave the barriers waiting.
    let failed_calls = Arc::new(AtomicUsize::new(0));
    let (senders, workers): (Vec<_>, Vec<_>) = (0..2)
        .map(|_| {
            let (send, receive) = std::sync::mpsc::channel::<Svc>();
            let (start, done) = (start.clone(), done.clone());
            let failed_calls = failed_calls.clone();
            let worker = std::thread::spawn(move || {
                while let Ok(mut svc) = receive.recv() {
                    // Admitted (in Closed) before the race starts; the results race.
                    let ready = futures::executor::block_on(svc.ready()).is_ok();
                    start.wait();
                    let answer = ready.then(|| futures::executor::block_on(svc.call(false)));
                    if !matches!(answer, Some(Ok(()))) {
                        failed_calls.fetch_add(1, Ordering::SeqCst);
                    }
                    done.wait();
                }
            });
            (send, worker)
        })
        .unzip();
    let mut closed = 0;
    for _ in 0..TRIALS {
        let layer = CircuitBreakerLayer::builder()
            .sliding_window(tower_circuit_breaker::Window::count(10))
            .minimum_calls(2)
            .failure_rate_threshold(0.3)
            .build()
            .unwrap();
        let svc: Svc = layer.layer(service_fn(answer as fn(bool) -> _));
        futures::executor::block_on(svc.clone().oneshot(true)).unwrap_err();
        for send in &senders {
            send.send(svc.clone()).unwrap();
        }
        start.wait();
        done.wait();
        if layer.handle().state() != State::Open {
            closed += 1;
        }
    }
    drop(senders);
    for worker in workers {
        worker.join().unwrap();
    }
    assert_eq!(
        failed_calls.load(Ordering::SeqCst),
        0,
        "admitted calls that failed"
    );
    assert_eq!(closed, 0, "trials that ended Closed, of {TRIALS}");
}

/// Successes, counted lock-free in each thread's lane while they cannot trip the breaker, and
/// failures, recorded under the lock (which folds those counts in), on more threads than the
/// breaker has lanes: the window holds every outcome exactly once, a time window and a count
/// window larger than the test alike. No runtime: the clock is read outside one, and nothing
/// waits on it; a minute's window outlasts the test.
#[test]
fn window_outcomes_on_many_threads_are_each_counted_once() {
    use tower_circuit_breaker::Window;
    for window in [
        Window::time(Duration::from_secs(60)),
        Window::count(1 << 20),
    ] {
        outcomes_on_many_threads_are_each_counted_once(window);
    }
}

fn outcomes_on_many_threads_are_each_counted_once(window: tower_circuit_breaker::Window) {
    const THREADS: usize = 6;
    const CALLS: usize = 5_000;
    const EVERY_NTH_FAILS: usize = 50;
    let layer = CircuitBreakerLayer::builder()
        .sliding_window(window)
        .minimum_calls(10)
        .failure_rate_threshold(0.5)
        .build()
        .unwrap();
    let handle = layer.handle();
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            let mut svc = layer.layer(service_fn(|fail: bool| {
                ready(if fail { Err("down") } else { Ok(()) })
            }));
            scope.spawn(move || {
                for i in 0..CALLS {
                    let fail = i % EVERY_NTH_FAILS == 0;
                    let answer =
                        futures::executor::block_on(async { svc.ready().await?.call(fail).await });
                    assert_eq!(answer.is_err(), fail);
                }
            });
        }
    });
    let metrics = handle.metrics();
    assert_eq!(handle.state(), State::Closed, "{window:?}");
    assert_eq!(metrics.calls(), (THREADS * CALLS) as u64, "{window:?}");
    let failed = (THREADS * CALLS / EVERY_NTH_FAILS) as u64;
    assert_eq!(metrics.failed(), failed, "{window:?}");
}

/// Successes admitted before a reset complete on several threads, racing new calls whose
/// successes batch in the new generation's time window: none of the old ones counts in it (a call
/// admitted before a transition is stale), and each new one counts once. The old calls are
/// admitted first and their response futures polled only after the reset; no runtime (see
/// `window_outcomes_on_many_threads_are_each_counted_once`).
#[test]
fn time_window_successes_admitted_before_a_reset_never_count_after_it() {
    const THREADS: usize = 4;
    const CALLS: usize = 2_000;
    let layer = CircuitBreakerLayer::builder()
        .sliding_window(tower_circuit_breaker::Window::time(Duration::from_secs(60)))
        .minimum_calls(1)
        .failure_rate_threshold(1.0)
        .build()
        .unwrap();
    let handle = layer.handle();
    let ok = || service_fn(|()| ready(Ok::<(), BoxError>(())));
    let (admitted, reset) = (
        std::sync::Barrier::new(THREADS + 1),
        std::sync::Barrier::new(2 * THREADS + 1),
    );
    let (admitted, reset) = (&admitted, &reset);
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            let mut old = layer.layer(ok());
            scope.spawn(move || {
                let futures: Vec<_> = (0..CALLS)
                    .map(|_| futures::executor::block_on(old.ready()).unwrap().call(()))
                    .collect();
                admitted.wait();
                reset.wait();
                for future in futures {
                    futures::executor::block_on(future).unwrap();
                }
            });
            let mut new = layer.layer(ok());
            scope.spawn(move || {
                reset.wait();
                for _ in 0..CALLS {
                    futures::executor::block_on(async { new.ready().await?.call(()).await })
                        .unwrap();
                }
            });
        }
        admitted.wait();
        handle.reset();
        // The new generation's first success, recorded under the lock, opens its batch.
        let mut first = layer.layer(ok());
        futures::executor::block_on(async { first.ready().await?.call(()).await }).unwrap();
        reset.wait();
    });
    let metrics = handle.metrics();
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(
        metrics.calls(),
        (THREADS * CALLS + 1) as u64,
        "the new calls only"
    );
    assert_eq!(
        metrics.totals().successful(),
        (2 * THREADS * CALLS + 1) as u64,
        "every call happened"
    );
}

/// Calls that misbehave on many tasks of a multi-thread runtime while a time window batches the
/// others' successes: a response future dropped while the inner call is pending, and a classifier
/// that panics, record nothing; every completed success counts once, in the window and in the
/// lifetime totals.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropped_and_panicking_calls_record_nothing_while_time_window_successes_batch() {
    use futures::FutureExt;
    use tower_circuit_breaker::{Classify, Outcome};

    const CALLERS: usize = 16;
    const ROUNDS: usize = 300;
    /// The response its classifier panics on.
    const PANIC: u8 = 2;

    #[derive(Clone)]
    struct PanicsOnTwo;
    impl Classify<u8, BoxError> for PanicsOnTwo {
        fn classify(&self, result: Result<&u8, &BoxError>) -> Outcome {
            match result {
                Ok(&PANIC) => panic!("a classifier that panics"),
                Ok(_) => Outcome::Success,
                Err(_) => Outcome::Failure,
            }
        }
    }

    let layer = CircuitBreakerLayer::builder()
        .sliding_window(tower_circuit_breaker::Window::time(Duration::from_secs(60)))
        .minimum_calls(1)
        .failure_rate_threshold(1.0)
        .classify(PanicsOnTwo)
        .build()
        .unwrap();
    let handle = layer.handle();
    // Quiet: this test's panics are expected; any other goes to the default hook.
    let hook = Arc::new(std::panic::take_hook());
    let others = hook.clone();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&"a classifier that panics") {
            others(info);
        }
    }));
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let mut svc = layer.layer(service_fn(|n: u8| async move {
                // Pending once: a caller can drop the call while it is in flight.
                tokio::task::yield_now().await;
                Ok::<u8, BoxError>(n)
            }));
            tokio::spawn(async move {
                for _ in 0..ROUNDS {
                    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 1);
                    let mut dropped = Box::pin(svc.ready().await.unwrap().call(1));
                    assert!(futures::poll!(dropped.as_mut()).is_pending());
                    drop(dropped);
                    let panicking = svc.ready().await.unwrap().call(PANIC);
                    assert!(
                        std::panic::AssertUnwindSafe(panicking)
                            .catch_unwind()
                            .await
                            .is_err()
                    );
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let metrics = handle.metrics();
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(
        metrics.calls(),
        (CALLERS * ROUNDS) as u64,
        "the completed successes"
    );
    assert_eq!(metrics.failed(), 0);
    assert_eq!(metrics.totals().successful(), (CALLERS * ROUNDS) as u64);
}

/// A count window's successes batch lock-free while its failures go to the lock: with tasks on
/// every worker racing failures and successes, and a reader taking snapshots throughout, each
/// snapshot is one a sequential order gives (a run of `c` failures is the newest `c` outcomes of
/// the window, so it holds at least `min(c, n)` failures), and once only successes follow, the
/// window holds nothing else and no run. Each caller waits halfway through its mixed calls until
/// the reader has taken a whole snapshot, so snapshots fall inside the race however the runtime
/// schedules the reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_count_windows_snapshots_stay_sequential_while_batched_successes_race_failures() {
    const WINDOW: u32 = 8;
    const CALLERS: usize = 64;
    let layer = CircuitBreakerLayer::builder()
        .sliding_window(tower_circuit_breaker::Window::count(WINDOW))
        .minimum_calls(1)
        .consecutive_failures(u32::MAX)
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = layer.layer(service_fn(|fail: bool| {
        ready(match fail {
            true => Err::<(), BoxError>("down".into()),
            false => Ok(()),
        })
    }));
    let done = Arc::new(AtomicUsize::new(0));
    let snapshots = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (handle, done, snapshots) = (handle.clone(), done.clone(), snapshots.clone());
        tokio::spawn(async move {
            while done.load(Ordering::SeqCst) < CALLERS {
                let m = handle.metrics();
                let run = u64::from(m.consecutive_failures().min(WINDOW));
                assert!(
                    m.failed() >= run,
                    "a run of failures outside the window: {m:?}"
                );
                assert!(m.calls() <= u64::from(WINDOW), "{m:?}");
                snapshots.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        })
    };
    let only_successes = Arc::new(Barrier::new(CALLERS));
    let callers: Vec<_> = (0..CALLERS)
        .map(|task| {
            let (mut service, only_successes, done, snapshots) = (
                service.clone(),
                only_successes.clone(),
                done.clone(),
                snapshots.clone(),
            );
            tokio::spawn(async move {
                for i in 0..100 {
                    let _ = service.ready().await?.call((i + task) % 3 == 0).await;
                    if i == 50 {
                        // The count moves twice, so one snapshot began after this point.
                        let seen = snapshots.load(Ordering::SeqCst);
                        while snapshots.load(Ordering::SeqCst) < seen + 2 {
                            tokio::task::yield_now().await;
                        }
                    } else if i % 10 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                only_successes.wait().await;
                for _ in 0..20 {
                    service.ready().await?.call(false).await?;
                }
                done.fetch_add(1, Ordering::SeqCst);
                Ok::<_, BoxError>(())
            })
        })
        .collect();
    for caller in callers {
        caller
            .await
            .expect("no caller panicked")
            .expect("closed throughout");
    }
    reader.await.expect("every snapshot was sequential");
    let m = handle.metrics();
    assert_eq!(m.state(), State::Closed);
    assert_eq!(
        (m.calls(), m.failed(), m.consecutive_failures()),
        (u64::from(WINDOW), 0, 0)
    );
    let totals = m.totals();
    assert_eq!(totals.successful() + totals.failed(), CALLERS as u64 * 120);
}

/// Calls admitted on one thread and completed on another (a response moved to another worker),
/// on more threads than the breaker has lanes: a success that joins the batch is counted in its
/// admitting lane's line while other threads count in the same line and failures fold it. The
/// window holds every outcome once, and so do the lifetime totals, for a time window and a count
/// window larger than the test. No runtime (see `window_outcomes_on_many_threads_are_each_counted_once`).
#[test]
fn batched_successes_completed_on_other_threads_than_their_admission_are_each_counted_once() {
    use tower_circuit_breaker::Window;
    for window in [
        Window::time(Duration::from_secs(60)).buckets(1),
        Window::count(1 << 20),
    ] {
        completed_elsewhere_are_each_counted_once(window);
    }
}

fn completed_elsewhere_are_each_counted_once(window: tower_circuit_breaker::Window) {
    const THREADS: usize = 8;
    const ROUNDS: usize = 100;
    const BATCH: usize = 40;
    const EVERY_NTH_FAILS: usize = 25;
    let layer = CircuitBreakerLayer::builder()
        .sliding_window(window)
        .minimum_calls(100)
        .failure_rate_threshold(0.5)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..THREADS).map(|_| std::sync::mpsc::channel()).unzip();
    std::thread::scope(|scope| {
        for (i, received) in receivers.into_iter().enumerate() {
            let mut svc = layer.layer(service_fn(|fail: bool| {
                ready(if fail { Err("down") } else { Ok(()) })
            }));
            let next = senders[(i + 1) % THREADS].clone();
            scope.spawn(move || {
                for _ in 0..ROUNDS {
                    let admitted: Vec<_> = (0..BATCH)
                        .map(|j| {
                            let fail = j % EVERY_NTH_FAILS == 0;
                            let ready = futures::executor::block_on(svc.ready()).unwrap();
                            (fail, ready.call(fail))
                        })
                        .collect();
                    next.send(admitted).unwrap();
                    for (fail, future) in received.recv().unwrap() {
                        assert_eq!(futures::executor::block_on(future).is_err(), fail);
                    }
                }
            });
        }
    });
    let calls = (THREADS * ROUNDS * BATCH) as u64;
    let failed = (THREADS * ROUNDS * BATCH.div_ceil(EVERY_NTH_FAILS)) as u64;
    let metrics = handle.metrics();
    assert_eq!(handle.state(), State::Closed, "{window:?}");
    assert_eq!(
        (metrics.calls(), metrics.failed()),
        (calls, failed),
        "{window:?}"
    );
    let totals = metrics.totals();
    assert_eq!(
        (totals.successful(), totals.failed()),
        (calls - failed, failed),
        "{window:?}"
    );
}
