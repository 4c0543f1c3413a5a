//! Observability without any feature: lifetime totals that never reset, events with the numbers
//! behind each decision (rates that reached their threshold, rejections for the subscribers that
//! ask), the event callback (in order, panics caught), exactly one event per transition under
//! concurrent load, `State::ALL` and what `Metrics` shows.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use support::traced::{OnEvent, fields};
use support::*;
use tower::{BoxError, Layer, ServiceExt, service_fn};
use tower_circuit_breaker::{CircuitBreakerLayer, Event, EventStream, Handle, State, Window};

/// Every event already in `events`, without waiting.
fn drain(events: &mut EventStream) -> Vec<Event> {
    let mut seen = Vec::new();
    while let Some(Some(event)) = events.next().now_or_never() {
        seen.push(event);
    }
    seen
}

/// A callback that keeps every event, and what it kept.
fn recording() -> (
    impl Fn(&Event) + Send + Sync + 'static,
    Arc<Mutex<Vec<Event>>>,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    (
        move |event: &Event| log.lock().unwrap().push(event.clone()),
        seen,
    )
}

// ===== lifetime totals =====

#[tokio::test(start_paused = true)]
async fn lifetime_totals_never_reset_when_the_breaker_closes_or_is_reset() {
    let mut h = harness(
        builder()
            .consecutive_failures(1)
            .open_duration(OPEN)
            .half_open_calls(1),
    );
    trip(&mut h.svc).await;
    for result in run(&mut h.svc, 9, Reply::Ok).await {
        rejection(result);
    }
    assert_eq!(h.handle.metrics().not_permitted(), 9);
    advance(OPEN).await;
    assert!(call(&mut h.svc, ok()).await.is_ok());
    assert_eq!(h.handle.state(), State::Closed);

    let metrics = h.handle.metrics();
    assert_eq!(
        metrics.not_permitted(),
        0,
        "since the last transition to Closed"
    );
    let totals = metrics.totals();
    assert_eq!(totals.rejected(), 9, "nine rejections stay nine");
    assert_eq!((totals.successful(), totals.failed()), (1, 1));
    h.handle.reset();
    let totals = h.handle.metrics().totals();
    assert_eq!(
        (totals.rejected(), totals.successful(), totals.failed()),
        (9, 1, 1)
    );
    assert_eq!(totals.transitions(State::Closed, State::Open), 1);
    assert_eq!(totals.transitions(State::Open, State::HalfOpen), 1);
    assert_eq!(totals.transitions(State::HalfOpen, State::Closed), 1);
    assert_eq!(
        totals.transitions(State::Closed, State::Closed),
        1,
        "the reset"
    );
    assert_eq!(totals.transitions_total(), 4);
}

#[tokio::test(start_paused = true)]
async fn totals_count_every_recorded_outcome_whatever_the_state_and_generation() {
    let mut h = harness(builder().consecutive_failures(1).open_duration(OPEN));
    h.handle.disable();
    run(&mut h.svc, 3, Reply::Fail).await; // recorded nowhere in the window
    assert_eq!(h.handle.metrics().calls(), 0);
    h.handle.reset();
    run(&mut h.svc, 2, Reply::Ignore).await;
    let (req, gate) = gated();
    let stale = start(&mut h.svc, req).await;
    h.handle.force_open();
    gate.open(Reply::Ok);
    assert!(
        stale.await.is_ok(),
        "admitted before the state changed: stale, but it happened"
    );
    let (req, _never) = gated();
    h.handle.reset();
    drop(start(&mut h.svc, req).await); // dropped before its outcome: counts nowhere

    let totals = h.handle.metrics().totals();
    assert_eq!(totals.failed(), 3);
    assert_eq!(totals.ignored(), 2);
    assert_eq!(totals.successful(), 1);
    assert_eq!(totals.rejected(), 0);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_count_in_the_totals_beside_their_outcome() {
    let mut h = harness(builder().slow_call_duration(ms(100)).minimum_calls(100));
    call(&mut h.svc, ok().after(ms(101))).await.unwrap();
    call(&mut h.svc, fail().after(ms(101))).await.unwrap_err();
    call(&mut h.svc, ok().after(ms(100))).await.unwrap(); // not strictly longer
    call(&mut h.svc, ignored().after(ms(500)))
        .await
        .unwrap_err();
    let totals = h.handle.metrics().totals();
    assert_eq!(totals.slow(), 2, "ignored outcomes are not slow calls");
    assert_eq!(
        (totals.successful(), totals.failed(), totals.ignored()),
        (2, 1, 1)
    );
}

#[test]
fn rejections_and_successes_counted_on_many_threads_add_up() {
    let layer = CircuitBreakerLayer::builder()
        .sliding_window(Window::count(10))
        .build()
        .unwrap();
    let handle = layer.handle();
    let ok = layer.layer(service_fn(|_: ()| async { Ok::<_, BoxError>(()) }));
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let svc = ok.clone();
            std::thread::spawn(move || {
                for _ in 0..1_000 {
                    futures::executor::block_on(svc.clone().oneshot(())).unwrap();
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    handle.force_open();
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let svc = ok.clone();
            std::thread::spawn(move || {
                for _ in 0..500 {
                    assert!(futures::executor::block_on(svc.clone().oneshot(())).is_err());
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let totals = handle.metrics().totals();
    assert_eq!((totals.successful(), totals.rejected()), (6_000, 3_000));
}

// ===== what the snapshot shows =====

#[test]
fn state_all_lists_every_state_once_in_declaration_order() {
    assert_eq!(State::ALL, State::ALL);
    for (i, state) in State::ALL.iter().enumerate() {
        assert_eq!(state.as_str(), state.to_string());
        assert!(!State::ALL[..i].contains(state));
    }
}

#[test]
fn metrics_shows_the_minimum_number_of_calls_capped_at_a_count_window() {
    let minimum = |builder: tower_circuit_breaker::Builder| {
        builder.build().unwrap().handle().metrics().minimum_calls()
    };
    let b = CircuitBreakerLayer::builder;
    assert_eq!(minimum(b().minimum_calls(20)), 20);
    assert_eq!(
        minimum(b().sliding_window(Window::count(5)).minimum_calls(20)),
        5
    );
    let time = Window::time(Duration::from_secs(10));
    assert_eq!(minimum(b().sliding_window(time).minimum_calls(20)), 20);
}

// ===== events with their numbers =====

#[tokio::test(start_paused = true)]
async fn failure_rate_exceeded_comes_with_its_numbers_just_before_the_transition() {
    let mut h = harness(
        builder()
            .name("db")
            .failure_rate_threshold(0.5)
            .sliding_window(Window::count(4))
            .minimum_calls(4),
    );
    let mut events = h.handle.subscribe();
    run(&mut h.svc, 2, Reply::Ok).await;
    run(&mut h.svc, 1, Reply::Fail).await;
    assert!(
        drain(&mut events).is_empty(),
        "below the minimum: nothing to report"
    );
    run(&mut h.svc, 1, Reply::Fail).await;
    let seen = drain(&mut events);
    assert_eq!(seen.len(), 2, "{seen:?}");
    match &seen[0] {
        Event::FailureRateExceeded {
            failure_rate,
            threshold,
            calls,
            name,
            key,
            ..
        } => {
            assert_eq!((*failure_rate, *threshold, *calls), (0.5, 0.5, 4));
            assert_eq!((name.as_deref(), key.as_deref()), (Some("db"), None));
        }
        other => panic!("expected the rate first, got {other:?}"),
    }
    assert_eq!(transitions_of(&seen), [(State::Closed, State::Open)]);
    assert_eq!(seen[1].name(), Some("db"));
}

#[tokio::test(start_paused = true)]
async fn slow_call_rate_exceeded_comes_with_its_numbers() {
    let mut h = harness(
        builder()
            .slow_call_rate_threshold(0.5)
            .slow_call_duration(ms(10))
            .sliding_window(Window::count(2))
            .minimum_calls(2),
    );
    let mut events = h.handle.subscribe();
    call(&mut h.svc, ok()).await.unwrap();
    call(&mut h.svc, ok().after(ms(11))).await.unwrap();
    let seen = drain(&mut events);
    match &seen[..] {
        [
            Event::SlowCallRateExceeded {
                slow_call_rate,
                threshold,
                calls,
                ..
            },
            Event::StateTransition { from, to, .. },
        ] => {
            assert_eq!((*slow_call_rate, *threshold, *calls), (0.5, 0.5, 2));
            assert_eq!((*from, *to), (State::Closed, State::Open));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_open_without_a_rate_event() {
    let mut h = harness(builder().consecutive_failures(2));
    let mut events = h.handle.subscribe();
    run(&mut h.svc, 2, Reply::Fail).await;
    let seen = drain(&mut events);
    assert_eq!(transitions_of(&seen), [(State::Closed, State::Open)]);
    assert_eq!(seen.len(), 1, "{seen:?}");
}

/// The rates of the crossings of the `kind` ("failure" or "slow") rate in `events`; any other
/// event fails the test.
fn crossings(events: &mut EventStream, kind: &str) -> Vec<f64> {
    drain(events)
        .into_iter()
        .map(|event| match event {
            Event::FailureRateExceeded { failure_rate, .. } if kind == "failure" => failure_rate,
            Event::SlowCallRateExceeded { slow_call_rate, .. } if kind == "slow" => slow_call_rate,
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn metrics_only_reports_each_crossing_of_a_threshold_once_and_never_opens() {
    let mut h = harness(
        builder()
            .failure_rate_threshold(0.5)
            .sliding_window(Window::count(2))
            .minimum_calls(2),
    );
    h.handle.metrics_only();
    let mut events = h.handle.subscribe();
    let rates = |events: &mut EventStream| crossings(events, "failure");
    run(&mut h.svc, 2, Reply::Fail).await;
    run(&mut h.svc, 3, Reply::Fail).await;
    assert_eq!(rates(&mut events), [1.0], "once while it stays above");
    run(&mut h.svc, 2, Reply::Ok).await; // below again
    assert!(rates(&mut events).is_empty());
    run(&mut h.svc, 1, Reply::Fail).await;
    assert_eq!(rates(&mut events), [0.5], "the next crossing");
    assert_eq!(h.handle.state(), State::MetricsOnly);
}

#[tokio::test(start_paused = true)]
async fn metrics_only_reports_each_crossing_of_the_slow_call_rate_once() {
    let mut h = harness(
        builder()
            .slow_call_duration(secs(1))
            .slow_call_rate_threshold(0.5)
            .sliding_window(Window::count(2))
            .minimum_calls(2),
    );
    h.handle.metrics_only();
    let mut events = h.handle.subscribe();
    let rates = |events: &mut EventStream| crossings(events, "slow");
    for _ in 0..5 {
        call(&mut h.svc, ok().after(secs(2))).await.unwrap();
    }
    assert_eq!(rates(&mut events), [1.0], "once while it stays above");
    run(&mut h.svc, 2, Reply::Ok).await; // below again
    assert!(rates(&mut events).is_empty());
    call(&mut h.svc, ok().after(secs(2))).await.unwrap();
    assert_eq!(rates(&mut events), [0.5], "the next crossing");
    assert_eq!(h.handle.state(), State::MetricsOnly);
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_gets_rejections_only_when_it_asks_for_them() {
    let mut h = harness(
        builder()
            .name("db")
            .consecutive_failures(1)
            .open_duration(OPEN),
    );
    let mut plain = h.handle.subscribe();
    let mut all = h.handle.subscribe().with_rejections();
    trip(&mut h.svc).await;
    advance(secs(4)).await;
    rejection(call(&mut h.svc, ok()).await);

    assert_eq!(transitions(&mut plain), [(State::Closed, State::Open)]);
    let seen = drain(&mut all);
    assert_eq!(seen.len(), 2, "{seen:?}");
    match &seen[1] {
        Event::Rejected {
            state,
            retry_at,
            fallback,
            name,
            ..
        } => {
            assert_eq!((*state, *fallback), (State::Open, false));
            let left = retry_at
                .expect("an open interval ends")
                .duration_since(tokio::time::Instant::now());
            assert_eq!(left, OPEN - secs(4));
            assert_eq!(name.as_deref(), Some("db"));
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_rejection_storm_does_not_push_transitions_out_of_a_plain_subscriber() {
    let mut h = harness(builder().consecutive_failures(1).open_duration(OPEN));
    let mut plain = h.handle.subscribe();
    let mut all = h.handle.subscribe().with_rejections();
    trip(&mut h.svc).await;
    run(
        &mut h.svc,
        10 * tower_circuit_breaker::EVENT_BUFFER,
        Reply::Ok,
    )
    .await;
    assert_eq!(transitions(&mut plain), [(State::Closed, State::Open)]);
    match all.next().now_or_never() {
        Some(Some(Event::Lagged { missed, .. })) => assert!(missed > 0),
        other => panic!("the storm overflowed this one: {other:?}"),
    }
}

// ===== the callback =====

#[tokio::test(start_paused = true)]
async fn the_callback_sees_every_event_in_order_rejections_included() {
    let (callback, seen) = recording();
    let layer = CircuitBreakerLayer::builder()
        .name("db")
        .failure_rate_threshold(0.5)
        .sliding_window(Window::count(2))
        .minimum_calls(2)
        .open_duration(OPEN)
        .on_event(callback)
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|fail: bool| async move {
        if fail {
            Err::<(), BoxError>("down".into())
        } else {
            Ok(())
        }
    }));
    let _ = svc.clone().oneshot(true).await;
    let _ = svc.clone().oneshot(true).await;
    let _ = svc.clone().oneshot(false).await; // rejected
    advance(OPEN).await;
    svc.clone().oneshot(false).await.unwrap();

    let seen = seen.lock().unwrap().clone();
    let kinds: Vec<&str> = seen
        .iter()
        .map(|event| match event {
            Event::FailureRateExceeded { .. } => "rate",
            Event::StateTransition { .. } => "transition",
            Event::Rejected { .. } => "rejected",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        ["rate", "transition", "rejected", "transition", "transition"]
    );
    assert_eq!(
        transitions_of(&seen),
        [
            (State::Closed, State::Open),
            (State::Open, State::HalfOpen),
            (State::HalfOpen, State::Closed),
        ]
    );
    assert!(seen.iter().all(|event| event.name() == Some("db")));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_callback_does_not_wedge_the_breaker() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let mut h = harness(
        builder()
            .consecutive_failures(1)
            .open_duration(OPEN)
            .on_event(move |_: &Event| {
                counted.fetch_add(1, Ordering::SeqCst);
                panic!("a bug in the user's callback");
            }),
    );
    let mut events = h.handle.subscribe().with_rejections();
    // The call whose failure opens the circuit returns normally, as does the rejected one.
    trip(&mut h.svc).await;
    rejection(call(&mut h.svc, ok()).await);
    advance(OPEN).await;
    assert!(call(&mut h.svc, ok()).await.is_ok(), "the probe closes it");
    h.handle.force_open();
    h.handle.reset();

    assert_eq!(h.handle.state(), State::Closed);
    let seen = drain(&mut events);
    assert_eq!(
        transitions_of(&seen),
        [
            (State::Closed, State::Open),
            (State::Open, State::HalfOpen),
            (State::HalfOpen, State::Closed),
            (State::Closed, State::ForcedOpen),
            (State::ForcedOpen, State::Closed),
        ],
        "every announcement still runs"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        seen.len(),
        "called for each, each panicked"
    );
}

#[test]
fn a_tracing_subscriber_that_panics_does_not_stop_later_announcements() {
    let handle = CircuitBreakerLayer::builder().build().unwrap().handle();
    let mut events = handle.subscribe();
    // Panics on the first event it is given, and counts the others.
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let subscriber = OnEvent(move |_: &tracing::Event<'_>| {
        if counted.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("a bug in the user's tracing subscriber");
        }
    });
    tracing::subscriber::with_default(subscriber, || {
        // tracing caches each callsite's interest globally: one that another test's thread
        // registered while this subscriber was being set could be cached as "never" here.
        tracing::callsite::rebuild_interest_cache();
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            handle.force_open();
        }));
        assert!(
            unwound.is_err(),
            "the panic reaches the caller, as any panic of user code"
        );
        tracing::callsite::rebuild_interest_cache();
        handle.reset();
        handle.disable();
    });
    assert_eq!(handle.state(), State::Disabled);
    assert_eq!(
        transitions(&mut events),
        [
            (State::Closed, State::ForcedOpen),
            (State::ForcedOpen, State::Closed),
            (State::Closed, State::Disabled),
        ]
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "the later ones were traced"
    );
}

// ===== exactly once under load =====

/// At most this many transitions per round, so that a subscriber reading at the end has lost
/// none (its buffer holds `EVENT_BUFFER`): tasks stop making calls past `LIMIT`, and the calls in
/// flight then can add at most one transition each.
const LIMIT: u64 = 20;
const TASKS: usize = 16;

async fn answer(fail: bool) -> Result<(), std::io::Error> {
    tokio::task::yield_now().await;
    match fail {
        true => Err(std::io::Error::other("down")),
        false => Ok(()),
    }
}

async fn hammer(handle: Handle, layer: CircuitBreakerLayer, task: usize) {
    let svc = layer.layer(service_fn(answer));
    let mut i = task;
    while handle.metrics().totals().transitions_total() < LIMIT {
        let _ = svc.clone().oneshot(i % 3 == 0).await;
        i += 1;
        // A rejected call never waits: without this, tasks spinning on rejections could keep
        // every worker from the probes that would change the state.
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_sees_exactly_one_event_per_transition_under_concurrent_load() {
    for _round in 0..20 {
        let (callback, called) = recording();
        let layer = CircuitBreakerLayer::builder()
            .consecutive_failures(2)
            // HalfOpen at once, so that the breaker keeps moving.
            .open_duration(Duration::from_nanos(1))
            .half_open_calls(2)
            .half_open_successes(1)
            .on_event(callback)
            .build()
            .unwrap();
        let handle = layer.handle();
        let mut events = handle.subscribe();
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| tokio::spawn(hammer(handle.clone(), layer.clone(), task)))
            .collect();
        for task in tasks {
            task.await.unwrap();
        }

        // The snapshot first: looking may make a transition, whose event is then in the buffer.
        let metrics = handle.metrics();
        let totals = metrics.totals();
        let streamed = drain(&mut events);
        assert!(
            !streamed.iter().any(|e| matches!(e, Event::Lagged { .. })),
            "lost events: raise EVENT_BUFFER or lower LIMIT"
        );
        let seen = transitions_of(&streamed);
        assert_eq!(
            seen.len() as u64,
            totals.transitions_total(),
            "one event each"
        );
        assert!(seen.len() as u64 >= LIMIT);
        for (from, to) in State::ALL
            .iter()
            .flat_map(|f| State::ALL.iter().map(move |t| (*f, *t)))
        {
            let n = seen.iter().filter(|t| **t == (from, to)).count() as u64;
            assert_eq!(n, totals.transitions(from, to), "{from} -> {to}");
        }
        let mut state = State::Closed;
        for (from, to) in &seen {
            assert_eq!(*from, state, "in transition order: {seen:?}");
            state = *to;
        }
        assert_eq!(state, metrics.state(), "ends where the breaker is");
        let called = transitions_of(&called.lock().unwrap());
        assert_eq!(called, seen, "the callback saw the same, in the same order");
    }
}

// ===== tracing fields =====

#[tokio::test(start_paused = true)]
async fn transitions_and_rejections_are_traced_with_the_rates_and_retry_after() {
    let mut h = harness(
        builder()
            .name("db")
            .failure_rate_threshold(0.5)
            .sliding_window(Window::count(2))
            .minimum_calls(2)
            .open_duration(OPEN),
    );
    // Keeps each event's level and fields.
    let keeps = Arc::new(Mutex::new(Vec::new()));
    let kept = keeps.clone();
    let _default = tracing::subscriber::set_default(OnEvent(move |event: &tracing::Event<'_>| {
        let level = *event.metadata().level();
        kept.lock().unwrap().push((level, fields(event)));
    }));
    // See a_tracing_subscriber_that_panics_does_not_stop_later_announcements.
    tracing::callsite::rebuild_interest_cache();
    run(&mut h.svc, 1, Reply::Ok).await;
    run(&mut h.svc, 1, Reply::Fail).await;
    rejection(call(&mut h.svc, ok()).await);

    let kept = keeps.lock().unwrap().clone();
    let opened = kept
        .iter()
        .find(|(_, f)| f.get("message").map(String::as_str) == Some("circuit opened"))
        .unwrap_or_else(|| panic!("no \"circuit opened\" in {kept:?}"));
    assert_eq!(opened.0, tracing::Level::WARN);
    let field = |name: &str| opened.1.get(name).map(String::as_str);
    assert_eq!(field("breaker"), Some("db"));
    assert_eq!(field("key"), Some(""));
    assert_eq!((field("from"), field("to")), (Some("closed"), Some("open")));
    assert_eq!(field("failure_rate"), Some("0.5"));
    assert_eq!(field("slow_call_rate"), Some("0.0"));
    assert_eq!(field("retry_after"), Some("10s"));

    let rejected = kept
        .iter()
        .find(|(_, f)| f.get("message").map(String::as_str) == Some("call rejected"))
        .unwrap_or_else(|| panic!("no \"call rejected\" in {kept:?}"));
    assert_eq!(rejected.0, tracing::Level::DEBUG);
    assert_eq!(
        rejected.1.get("retry_after").map(String::as_str),
        Some("10s")
    );
    assert_eq!(
        rejected.1.get("fallback").map(String::as_str),
        Some("false")
    );
}
