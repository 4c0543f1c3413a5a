//! Live reconfiguration (`Handle::reconfigure`): a new configuration is validated first, a bad
//! one changes nothing, and a good one replaces the old without losing the state, the counters
//! or the window's newest outcomes; each part applies when its documentation says.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::*;
use tower::{Layer, ServiceExt};
use tower_circuit_breaker::{Builder, CircuitBreakerLayer, State, Window};

/// A count window of 10, 50 %, at least 10 calls, open 10 s.
fn rated() -> Builder<Classifier> {
    builder()
        .failure_rate_threshold(0.5)
        .sliding_window(Window::count(10))
        .minimum_calls(10)
        .open_duration(OPEN)
}

#[tokio::test(start_paused = true)]
async fn a_bad_configuration_is_refused_and_the_old_one_stays() {
    let mut h = harness(rated());
    run(&mut h.svc, 4, Reply::Fail).await;
    let before = h.handle.config();

    let err = h
        .handle
        .reconfigure(h.handle.config().failure_rate_threshold(1.5))
        .unwrap_err();
    assert_eq!(err.field(), "failure_rate_threshold");
    let err = h
        .handle
        .reconfigure(h.handle.config().sliding_window(Window::count(0)))
        .unwrap_err();
    assert_eq!(err.field(), "sliding_window");

    assert_eq!(format!("{:?}", h.handle.config()), format!("{before:?}"));
    assert_eq!(h.handle.metrics().failed(), 4, "the window is untouched");
    // Still the old rule: 5 failures of 10 trip at 50 %.
    run(&mut h.svc, 5, Reply::Ok).await;
    assert_eq!(h.handle.state(), State::Closed);
    run(&mut h.svc, 1, Reply::Fail).await;
    assert_eq!(h.handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn the_name_the_call_timeout_and_slow_call_tracking_cannot_change() {
    let h = harness(rated().name("db"));
    let refused = |b: Builder| h.handle.reconfigure(b).unwrap_err().field();
    assert_eq!(refused(h.handle.config().name("other")), "name");
    assert_eq!(
        refused(h.handle.config().call_timeout(Duration::from_secs(1))),
        "call_timeout"
    );
    assert_eq!(
        refused(h.handle.config().slow_call_rate_threshold(0.5)),
        "slow_call_duration"
    );
    // Unset, or the same, the name is kept.
    h.handle
        .reconfigure(CircuitBreakerLayer::builder().consecutive_failures(2))
        .unwrap();
    h.handle.reconfigure(h.handle.config().name("db")).unwrap();
    assert_eq!(h.handle.name(), Some("db"));
}

#[tokio::test(start_paused = true)]
async fn config_gives_back_the_configuration_in_force() {
    let h = harness(
        rated()
            .name("db")
            .consecutive_failures(3)
            .half_open_calls(4)
            .half_open_successes(2)
            .slow_call_duration(Duration::from_secs(2))
            .sliding_window(Window::time(Duration::from_secs(20))),
    );
    let config = format!("{:?}", h.handle.config());
    for part in [
        "name: Some(\"db\")",
        "failure_rate_threshold: Some(0.5)",
        "slow_call_duration: Some(2s)",
        "sliding_window: Window::time(20s).buckets(20)",
        "consecutive_failures: Some(3)",
        "half_open_calls: 4",
        "half_open_successes: Some(2)",
    ] {
        assert!(config.contains(part), "{part} not in {config}");
    }
    // Reconfiguring with it changes nothing.
    h.handle.reconfigure(h.handle.config()).unwrap();
    assert_eq!(format!("{:?}", h.handle.config()), config);
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_stays_open_with_its_interval_and_counters() {
    let mut h = harness(rated().consecutive_failures(1));
    trip(&mut h.svc).await;
    rejection(call(&mut h.svc, ok()).await);
    let events = &mut h.handle.subscribe();

    h.handle
        .reconfigure(
            h.handle
                .config()
                .open_duration(Duration::from_secs(60))
                .sliding_window(Window::count(50)),
        )
        .unwrap();
    assert_eq!(h.handle.state(), State::Open);
    assert_eq!(h.handle.metrics().not_permitted(), 1);
    assert_eq!(
        h.handle.metrics().failed(),
        1,
        "the window that tripped it is shown"
    );
    assert!(
        transitions(events).is_empty(),
        "a reconfiguration is no transition"
    );

    // The running interval is kept (10 s) ...
    advance(OPEN).await;
    assert_eq!(h.handle.state(), State::HalfOpen);
    // ... and the new one applies from the next opening.
    trip(&mut h.svc).await;
    let rejected = rejection(call(&mut h.svc, ok()).await);
    assert_eq!(rejected.retry_after(), Some(Duration::from_secs(60)));
}

#[tokio::test(start_paused = true)]
async fn a_resized_count_window_keeps_its_newest_outcomes() {
    let mut h = harness(rated());
    run(&mut h.svc, 3, Reply::Fail).await;
    run(&mut h.svc, 5, Reply::Ok).await;

    // 8 outcomes, the newest 4 successes: a window of 4 keeps only those.
    h.handle
        .reconfigure(h.handle.config().sliding_window(Window::count(4)))
        .unwrap();
    let m = h.handle.metrics();
    assert_eq!((m.calls(), m.failed()), (4, 0));

    // Growing keeps them all.
    h.handle
        .reconfigure(h.handle.config().sliding_window(Window::count(100)))
        .unwrap();
    assert_eq!(h.handle.metrics().calls(), 4);

    // Another kind of window starts empty.
    h.handle
        .reconfigure(
            h.handle
                .config()
                .sliding_window(Window::time(Duration::from_secs(10))),
        )
        .unwrap();
    assert_eq!(h.handle.metrics().calls(), 0);
    run(&mut h.svc, 2, Reply::Fail).await;
    assert_eq!(h.handle.metrics().failed(), 2, "the new window records");
}

/// A grown count window keeps every outcome of the old one, oldest first: the oldest is the first
/// that newer outcomes push out.
#[tokio::test(start_paused = true)]
async fn a_grown_count_window_keeps_its_outcomes_in_order() {
    let mut h = harness(rated().sliding_window(Window::count(4)).minimum_calls(4));
    run(&mut h.svc, 1, Reply::Fail).await;
    run(&mut h.svc, 3, Reply::Ok).await;
    h.handle
        .reconfigure(h.handle.config().sliding_window(Window::count(5)))
        .unwrap();
    let m = h.handle.metrics();
    assert_eq!((m.calls(), m.failed()), (4, 1));
    run(&mut h.svc, 1, Reply::Ok).await;
    assert_eq!(
        h.handle.metrics().failed(),
        1,
        "the window has room for one"
    );
    run(&mut h.svc, 1, Reply::Ok).await;
    let m = h.handle.metrics();
    assert_eq!(
        (m.calls(), m.failed()),
        (5, 0),
        "the failure, the oldest, left first"
    );
}

/// A window shrunk while open to successes only (a plain success would change nothing in it)
/// still counts the next episode's probes: a probe that succeeds closes the circuit.
#[tokio::test(start_paused = true)]
async fn a_probe_counts_after_the_window_shrank_to_successes_while_open() {
    let mut h = harness(rated());
    run(&mut h.svc, 5, Reply::Fail).await;
    run(&mut h.svc, 5, Reply::Ok).await; // 50 % of 10: open, the newest 5 successes
    assert_eq!(h.handle.state(), State::Open);
    h.handle
        .reconfigure(
            h.handle
                .config()
                .sliding_window(Window::count(5))
                .minimum_calls(5),
        )
        .unwrap();
    advance(OPEN).await;
    assert_eq!(h.handle.state(), State::HalfOpen);
    call(&mut h.svc, ok()).await.unwrap();
    assert_eq!(h.handle.state(), State::Closed, "the probe counted");
}

#[tokio::test(start_paused = true)]
async fn a_new_threshold_applies_from_the_next_outcome() {
    let mut h = harness(rated());
    run(&mut h.svc, 7, Reply::Ok).await;
    run(&mut h.svc, 3, Reply::Fail).await;
    assert_eq!(h.handle.state(), State::Closed, "30 % < 50 %");

    h.handle
        .reconfigure(h.handle.config().failure_rate_threshold(0.2))
        .unwrap();
    assert_eq!(
        h.handle.state(),
        State::Closed,
        "not evaluated until an outcome"
    );
    run(&mut h.svc, 1, Reply::Ok).await;
    assert_eq!(
        h.handle.state(),
        State::Open,
        "30 % >= 20 % at the next outcome"
    );
}

#[tokio::test(start_paused = true)]
async fn new_probe_numbers_apply_from_the_next_episode() {
    let mut h = half_open(builder().consecutive_failures(1).open_duration(OPEN)).await;
    // One probe in flight under the episode's own numbers (1 call).
    let (req, gate) = gated();
    let probe = start(&mut h.svc, req).await;
    h.handle
        .reconfigure(h.handle.config().half_open_calls(3))
        .unwrap();
    rejection(call(&mut h.svc, ok()).await);

    gate.open(Reply::Fail);
    assert_admitted(&probe.await);
    assert_eq!(h.handle.state(), State::Open);
    advance(OPEN).await;
    // The next episode has 3 permits.
    let mut gates = Vec::new();
    let mut probes = Vec::new();
    for _ in 0..3 {
        let (req, gate) = gated();
        probes.push(start(&mut h.svc, req).await);
        gates.push(gate);
    }
    rejection(call(&mut h.svc, ok()).await);
    for gate in gates {
        gate.open(Reply::Ok);
    }
    for probe in probes {
        assert_admitted(&probe.await);
    }
    assert_eq!(h.handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_new_slow_call_duration_applies_to_calls_that_complete_afterwards() {
    let mut h = harness(
        rated()
            .minimum_calls(1)
            .slow_call_rate_threshold(1.0)
            .slow_call_duration(Duration::from_secs(5)),
    );
    call(&mut h.svc, ok().after(Duration::from_secs(2)))
        .await
        .unwrap();
    assert_eq!(h.handle.metrics().slow(), 0);
    h.handle
        .reconfigure(h.handle.config().slow_call_duration(Duration::from_secs(1)))
        .unwrap();
    call(&mut h.svc, ok().after(Duration::from_secs(2)))
        .await
        .unwrap();
    assert_eq!(h.handle.metrics().slow(), 1);
}

/// Many tasks on a multi-thread runtime call one breaker while another task swaps its
/// configuration back and forth: every call is answered as the state says, and the counters
/// lose none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconfiguration_under_concurrent_load_loses_no_call_and_keeps_the_state() {
    const TASKS: usize = 8;
    const CALLS: usize = 2_000;
    let layer = CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.9)
        .sliding_window(Window::count(100))
        .minimum_calls(100)
        .build()
        .unwrap();
    let handle = layer.handle();
    let answered = Arc::new(AtomicUsize::new(0));
    let svc = {
        let answered = answered.clone();
        layer.layer(tower::service_fn(move |fail: bool| {
            answered.fetch_add(1, Ordering::Relaxed);
            async move {
                if fail {
                    Err(std::io::Error::other("down"))
                } else {
                    Ok(())
                }
            }
        }))
    };
    // The swapper reconfigures until told to stop; each phase's tasks call until they have
    // made CALLS calls each and seen PER_PHASE more swaps, yielding now and then: swaps happen
    // under load in both phases.
    const PER_PHASE: usize = 100;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swaps = Arc::new(AtomicUsize::new(0));
    let swapper = {
        let (handle, stop, swaps) = (handle.clone(), stop.clone(), swaps.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = swaps.load(Ordering::Relaxed);
                let size = if n % 2 == 0 { 50 } else { 100 };
                let threshold = if n % 2 == 0 { 0.8 } else { 0.9 };
                let next = handle
                    .config()
                    .sliding_window(Window::count(size))
                    .failure_rate_threshold(threshold);
                handle.reconfigure(next).unwrap();
                swaps.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        })
    };
    // Runs TASKS tasks of `call(i)`, each until CALLS calls and PER_PHASE swaps; the calls made.
    async fn phase<F, Fut>(swaps: &Arc<AtomicUsize>, call: F) -> usize
    where
        F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let until = swaps.load(Ordering::Relaxed) + PER_PHASE;
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let (call, swaps) = (call.clone(), swaps.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0;
                while i < CALLS || swaps.load(Ordering::Relaxed) < until {
                    call(t, i).await;
                    i += 1;
                    if i % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                i
            }));
        }
        let mut calls = 0;
        for task in tasks {
            calls += task.await.unwrap();
        }
        calls
    }

    // Closed: one failure in ten, never enough to trip; every call reaches the service.
    let closed = phase(&swaps, {
        let svc = svc.clone();
        move |t, i| {
            let svc = svc.clone();
            async move {
                let result = svc.oneshot((i + t) % 10 == 0).await;
                assert_eq!(result.is_err(), (i + t) % 10 == 0, "call {i} of task {t}");
            }
        }
    })
    .await;
    assert_eq!(answered.load(Ordering::Relaxed), closed);
    assert_eq!(handle.state(), State::Closed);
    let m = handle.metrics();
    // Resized back and forth between 50 and 100, the window keeps its newest outcomes: never
    // fewer than the smaller size, once that many were recorded.
    assert!((50..=100).contains(&m.calls()), "the window kept: {m:?}");

    // Forced open: every call is rejected and counted, whatever the configuration does.
    handle.force_open();
    let rejected = phase(&swaps, {
        let svc = svc.clone();
        move |_, _| {
            let svc = svc.clone();
            async move {
                let err = svc.oneshot(false).await.unwrap_err();
                assert!(err.is::<tower_circuit_breaker::error::Rejected>());
            }
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    swapper.await.unwrap();
    assert!(swaps.load(Ordering::Relaxed) >= 2 * PER_PHASE);
    assert_eq!(handle.state(), State::ForcedOpen);
    assert_eq!(handle.metrics().not_permitted(), rejected as u64);
    assert_eq!(answered.load(Ordering::Relaxed), closed);
}
