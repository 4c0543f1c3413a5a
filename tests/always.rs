//! DESIGN §3, Always: generations and stale results, the operator states, events and tracing on
//! transitions, call timeouts, and tokio's clock.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::traced::{OnEvent, fields};
use support::*;
use tower::timeout::error::Elapsed;
use tower::{Layer, ServiceExt};
use tower_circuit_breaker::{CircuitBreakerLayer, Event, Handle, State, Window};

fn tripping() -> Harness {
    harness(
        builder()
            .name("dep")
            .consecutive_failures(1)
            .open_duration(OPEN),
    )
}

// ===== generations and stale results =====

#[tokio::test(start_paused = true)]
async fn stale_result_from_closed_never_changes_the_state() {
    let mut h = harness(
        builder()
            .consecutive_failures(1)
            .open_duration(OPEN)
            .half_open_calls(1),
    );
    let mut events = h.handle.subscribe();
    let (mut late, mut gates) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let (req, gate) = gated();
        late.push(start(&mut h.svc, req).await);
        gates.push(gate);
    }

    call(&mut h.svc, fail()).await.unwrap_err();
    assert_eq!(transitions(&mut events), [(State::Closed, State::Open)]);

    // A late failure in Open: no second opening, no new open interval.
    advance(secs(4)).await;
    gates.remove(0).open(Reply::Fail);
    late.remove(0).await.unwrap_err();
    assert_eq!(h.handle.state(), State::Open);
    let rejected = rejection(call(&mut h.svc, ok()).await);
    assert_eq!(
        rejected.retry_after(),
        Some(secs(6)),
        "the open interval did not restart"
    );

    // A late success in HalfOpen is not a probe: it neither closes nor uses the only permit.
    advance(secs(6)).await;
    assert_eq!(h.handle.state(), State::HalfOpen);
    gates.remove(0).open(Reply::Ok);
    late.remove(0).await.unwrap();
    assert_eq!(h.handle.state(), State::HalfOpen);

    // A late failure in HalfOpen does not reopen.
    let (req, probe_gate) = gated();
    let probe = start(&mut h.svc, req).await;
    gates.remove(0).open(Reply::Fail);
    late.remove(0).await.unwrap_err();
    assert_eq!(h.handle.state(), State::HalfOpen);

    probe_gate.open(Reply::Ok);
    probe.await.unwrap();
    assert_eq!(h.handle.state(), State::Closed);
    assert_eq!(
        transitions(&mut events),
        [
            (State::Open, State::HalfOpen),
            (State::HalfOpen, State::Closed)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn stale_result_is_not_recorded_in_a_later_closed_state() {
    // One failure trips: a stale failure recorded after recovery would trip again.
    let mut h = tripping();
    let (req, gate) = gated();
    let late = start(&mut h.svc, req).await;

    call(&mut h.svc, fail()).await.unwrap_err();
    advance(OPEN).await;
    call(&mut h.svc, ok()).await.unwrap();
    assert_eq!(h.handle.state(), State::Closed);

    gate.open(Reply::Fail);
    late.await.unwrap_err();
    assert_eq!(h.handle.state(), State::Closed);
    let metrics = h.handle.metrics();
    assert_eq!((metrics.calls(), metrics.failed()), (0, 0));
    assert_eq!(metrics.consecutive_failures(), 0);
}

#[tokio::test(start_paused = true)]
async fn stale_probe_result_never_takes_a_probe_place() {
    let mut h = harness(
        builder()
            .consecutive_failures(1)
            .open_duration(OPEN)
            .half_open_calls(2)
            .half_open_max_wait(secs(5)),
    );
    call(&mut h.svc, fail()).await.unwrap_err();
    advance(OPEN).await;

    // Episode 1: two probes hang until max wait sends the circuit back to Open.
    let (req_a, gate_a) = gated();
    let stale_a = start(&mut h.svc, req_a).await;
    let (req_b, _gate_b) = gated();
    let stale_b = start(&mut h.svc, req_b).await;
    advance(secs(5)).await;
    assert_eq!(h.handle.state(), State::Open);

    // Episode 2: both permits taken by new probes.
    advance(OPEN).await;
    let (req_c, gate_c) = gated();
    let probe_c = start(&mut h.svc, req_c).await;
    let (req_d, gate_d) = gated();
    let probe_d = start(&mut h.svc, req_d).await;
    rejection(call(&mut h.svc, ok()).await);

    // The stale probes end: ignored (which would return a permit) and dropped.
    gate_a.open(Reply::Ignore);
    stale_a.await.unwrap_err();
    drop(stale_b);
    let rejected = rejection(call(&mut h.svc, ok()).await);
    assert_eq!(
        rejected.state(),
        State::HalfOpen,
        "no permit came back from a stale probe"
    );

    gate_c.open(Reply::Ok);
    probe_c.await.unwrap();
    assert_eq!(h.handle.state(), State::HalfOpen, "1 of 2 successes");
    gate_d.open(Reply::Ok);
    probe_d.await.unwrap();
    assert_eq!(h.handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn stale_probe_success_does_not_count_toward_the_next_episode() {
    let mut h = harness(
        builder()
            .consecutive_failures(1)
            .open_duration(OPEN)
            .half_open_calls(2)
            .half_open_max_wait(secs(5)),
    );
    call(&mut h.svc, fail()).await.unwrap_err();
    advance(OPEN).await;
    let (req, gate) = gated();
    let stale = start(&mut h.svc, req).await;
    advance(secs(5)).await;
    assert_eq!(h.handle.state(), State::Open);
    advance(OPEN).await;

    call(&mut h.svc, ok()).await.unwrap(); // episode 2: 1 of 2
    gate.open(Reply::Ok);
    stale.await.unwrap();
    assert_eq!(
        h.handle.state(),
        State::HalfOpen,
        "the stale success is not the second"
    );
    call(&mut h.svc, ok()).await.unwrap();
    assert_eq!(h.handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn many_failures_in_flight_open_the_circuit_once() {
    let mut h = tripping();
    let mut events = h.handle.subscribe();
    let (mut futures, mut gates) = (Vec::new(), Vec::new());
    for _ in 0..50 {
        let (req, gate) = gated();
        futures.push(start(&mut h.svc, req).await);
        gates.push(gate);
    }
    for gate in gates {
        gate.open(Reply::Fail);
    }
    for result in futures::future::join_all(futures).await {
        assert_admitted(&result);
    }
    assert_eq!(transitions(&mut events), [(State::Closed, State::Open)]);
    let rejected = rejection(call(&mut h.svc, ok()).await);
    assert_eq!(rejected.retry_after(), Some(OPEN));
}

/// A failure admitted before `transitions` completes after them: it is stale and records nothing.
async fn failure_admitted_before(transitions: impl FnOnce(&Handle)) {
    let mut h = tripping();
    let (req, gate) = gated();
    let late = start(&mut h.svc, req).await;
    transitions(&h.handle);
    gate.open(Reply::Fail);
    late.await.unwrap_err();
    assert_eq!(
        h.handle.state(),
        State::Closed,
        "one failure would trip if recorded"
    );
    assert_eq!(h.handle.metrics().calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn result_admitted_before_a_reset_is_stale() {
    failure_admitted_before(Handle::reset).await;
}

#[tokio::test(start_paused = true)]
async fn a_result_stays_stale_across_2_pow_25_transitions() {
    // 2^25 transitions once brought a 25-bit generation round again, and this failure counted.
    failure_admitted_before(|handle| {
        for _ in 0..(1 << 24) - 1 {
            handle.force_open();
            handle.disable();
        }
        handle.force_open();
        handle.reset(); // the 2^25th transition since the call was admitted
    })
    .await;
}

// ===== operator states =====

#[tokio::test(start_paused = true)]
async fn forced_open_rejects_everything_until_changed() {
    let mut h = tripping();
    h.handle.force_open();
    assert_eq!(h.handle.state(), State::ForcedOpen);
    let (polls, calls) = (h.counters.polls(), h.counters.calls());

    for _ in 0..3 {
        let rejected = rejection(call(&mut h.svc, ok()).await);
        assert_eq!(rejected.state(), State::ForcedOpen);
        assert_eq!(
            rejected.retry_after(),
            None,
            "nobody knows when an operator acts"
        );
        assert_eq!(rejected.to_string(), "circuit `dep` forced open");
    }
    assert_eq!((h.counters.polls(), h.counters.calls()), (polls, calls));
    assert_eq!(h.handle.metrics().not_permitted(), 3);

    advance(secs(86_400)).await;
    assert_eq!(h.handle.state(), State::ForcedOpen, "time does not end it");
    rejection(call(&mut h.svc, ok()).await);

    h.handle.reset();
    call(&mut h.svc, ok()).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn forced_open_overrides_an_open_interval() {
    let mut h = tripping();
    call(&mut h.svc, fail()).await.unwrap_err();
    assert_eq!(h.handle.state(), State::Open);
    h.handle.force_open();
    advance(OPEN * 3).await;
    assert_eq!(h.handle.state(), State::ForcedOpen);
    let rejected = rejection(call(&mut h.svc, ok()).await);
    assert_eq!(rejected.retry_after(), None);
}

#[tokio::test(start_paused = true)]
async fn disabled_admits_everything_and_records_nothing() {
    let mut h = tripping();
    call(&mut h.svc, fail()).await.unwrap_err();
    assert_eq!(h.handle.state(), State::Open);

    let before = h.handle.metrics();

    h.handle.disable();
    let calls = h.counters.calls();
    for result in run(&mut h.svc, 20, Reply::Fail).await {
        assert_admitted(&result);
    }
    run(&mut h.svc, 5, Reply::Ok).await;
    assert_eq!(h.counters.calls(), calls + 25);
    assert_eq!(h.handle.state(), State::Disabled);
    let after = h.handle.metrics();
    assert_eq!(
        (after.calls(), after.failed(), after.consecutive_failures()),
        (
            before.calls(),
            before.failed(),
            before.consecutive_failures()
        ),
        "nothing recorded: the window still holds only the failure that tripped"
    );
    assert_eq!(after.not_permitted(), before.not_permitted());

    advance(OPEN * 10).await;
    assert_eq!(h.handle.state(), State::Disabled);

    // From an empty closed window too: one failure would trip if it were recorded.
    h.handle.reset();
    h.handle.disable();
    run(&mut h.svc, 3, Reply::Fail).await;
    assert_eq!(h.handle.state(), State::Disabled);
    assert_eq!(h.handle.metrics().calls(), 0);
    assert_eq!(h.handle.metrics().consecutive_failures(), 0);
}

#[tokio::test(start_paused = true)]
async fn metrics_only_records_but_never_trips() {
    let mut h = harness(
        builder()
            .consecutive_failures(1)
            .sliding_window(Window::count(10))
            .minimum_calls(1)
            .open_duration(OPEN),
    );
    run(&mut h.svc, 3, Reply::Ok).await;
    h.handle.metrics_only();
    assert_eq!(h.handle.metrics().calls(), 0, "the window starts empty");

    for result in run(&mut h.svc, 20, Reply::Fail).await {
        assert_admitted(&result);
    }
    run(&mut h.svc, 2, Reply::Ignore).await;
    assert_eq!(h.handle.state(), State::MetricsOnly);
    let metrics = h.handle.metrics();
    assert_eq!((metrics.calls(), metrics.failed()), (10, 10));
    assert_eq!(metrics.failure_rate(), Some(1.0));
    assert_eq!(metrics.consecutive_failures(), 20);
    assert_eq!(metrics.not_permitted(), 0);

    advance(OPEN * 10).await;
    assert_eq!(h.handle.state(), State::MetricsOnly);
}

#[tokio::test(start_paused = true)]
async fn metrics_only_admits_calls_while_the_circuit_was_open() {
    let mut h = tripping();
    call(&mut h.svc, fail()).await.unwrap_err();
    h.handle.metrics_only();
    call(&mut h.svc, ok()).await.unwrap();
    call(&mut h.svc, fail()).await.unwrap_err();
    assert_eq!(h.handle.state(), State::MetricsOnly);
    assert_eq!(h.handle.metrics().calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn reset_returns_to_closed_with_empty_metrics() {
    for from in State::ALL {
        let mut h = harness(
            builder()
                .sliding_window(Window::count(10))
                .minimum_calls(2)
                .failure_rate_threshold(0.5)
                .consecutive_failures(3)
                .open_backoff(tower_circuit_breaker::Backoff::exponential(
                    secs(1),
                    2.0,
                    secs(60),
                )),
        );
        run(&mut h.svc, 1, Reply::Ok).await;
        run(&mut h.svc, 1, Reply::Fail).await; // 1 of 2: Open, attempt 1
        assert_eq!(h.handle.state(), State::Open);
        rejection(call(&mut h.svc, ok()).await);
        advance(secs(1)).await;
        call(&mut h.svc, fail()).await.unwrap_err(); // attempt 2
        rejection(call(&mut h.svc, ok()).await);
        match from {
            State::Closed => {
                h.handle.reset();
                run(&mut h.svc, 1, Reply::Fail).await;
            }
            State::Open => {}
            State::HalfOpen => {
                advance(secs(2)).await;
                assert_eq!(h.handle.state(), State::HalfOpen);
            }
            State::ForcedOpen => h.handle.force_open(),
            State::Disabled => h.handle.disable(),
            State::MetricsOnly => {
                h.handle.metrics_only();
                run(&mut h.svc, 2, Reply::Fail).await;
            }
        }
        assert_eq!(h.handle.state(), from);

        h.handle.reset();
        assert_eq!(h.handle.state(), State::Closed, "from {from:?}");
        let metrics = h.handle.metrics();
        assert_eq!(metrics.state(), State::Closed);
        assert_eq!(
            (metrics.calls(), metrics.failed(), metrics.slow()),
            (0, 0, 0),
            "from {from:?}"
        );
        assert_eq!(metrics.not_permitted(), 0, "from {from:?}");
        assert_eq!(metrics.consecutive_failures(), 0, "from {from:?}");
        assert_eq!(metrics.failure_rate(), None, "from {from:?}");

        // The backoff starts over at attempt 1.
        run(&mut h.svc, 1, Reply::Ok).await;
        run(&mut h.svc, 1, Reply::Fail).await;
        let rejected = rejection(call(&mut h.svc, ok()).await);
        assert_eq!(rejected.retry_after(), Some(secs(1)), "from {from:?}");
    }
}

// ===== events =====

#[tokio::test(start_paused = true)]
async fn each_transition_emits_one_state_transition_event() {
    let mut h = tripping();
    let mut events = h.handle.subscribe();

    run(&mut h.svc, 10, Reply::Ok).await;
    assert_eq!(transitions(&mut events), [], "no transition, no event");

    call(&mut h.svc, fail()).await.unwrap_err();
    rejection(call(&mut h.svc, ok()).await);
    assert_eq!(transitions(&mut events), [(State::Closed, State::Open)]);

    advance(OPEN).await;
    for _ in 0..3 {
        assert_eq!(h.handle.state(), State::HalfOpen);
    }
    assert_eq!(transitions(&mut events), [(State::Open, State::HalfOpen)]);

    call(&mut h.svc, fail()).await.unwrap_err();
    advance(OPEN).await;
    call(&mut h.svc, ok()).await.unwrap();
    assert_eq!(
        transitions(&mut events),
        [
            (State::HalfOpen, State::Open),
            (State::Open, State::HalfOpen),
            (State::HalfOpen, State::Closed)
        ]
    );

    h.handle.force_open();
    h.handle.force_open();
    h.handle.disable();
    h.handle.disable();
    h.handle.metrics_only();
    h.handle.metrics_only();
    h.handle.reset();
    assert_eq!(
        transitions(&mut events),
        [
            (State::Closed, State::ForcedOpen),
            (State::ForcedOpen, State::Disabled),
            (State::Disabled, State::MetricsOnly),
            (State::MetricsOnly, State::Closed)
        ],
        "setting the state it is already in is not a transition"
    );
    h.handle.reset();
    assert_eq!(
        transitions(&mut events),
        [(State::Closed, State::Closed)],
        "a reset clears the window even from Closed, and says so"
    );
}

#[tokio::test(start_paused = true)]
async fn every_subscriber_gets_each_event_with_the_breaker_name() {
    let mut h = tripping();
    let mut first = h.handle.subscribe();
    let mut second = h.svc.handle().subscribe();
    call(&mut h.svc, fail()).await.unwrap_err();

    use futures::StreamExt;
    for events in [&mut first, &mut second] {
        match events.next().await {
            Some(Event::StateTransition { from, to, name, .. }) => {
                assert_eq!((from, to), (State::Closed, State::Open));
                assert_eq!(name.as_deref(), Some("dep"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

// ===== tracing =====

/// One tracing event, with its fields as strings.
#[derive(Clone, Debug)]
struct Traced {
    level: tracing::Level,
    fields: BTreeMap<String, String>,
}

impl Traced {
    fn field(&self, name: &str) -> &str {
        self.fields.get(name).map_or("", String::as_str)
    }
}

/// A global subscriber that keeps this crate's events in a buffer per thread.
///
/// Global, not scoped with `set_default`: tracing caches each callsite's interest across threads,
/// and a callsite first reached on another test's thread (with no subscriber) could be cached as
/// uninteresting while this test runs. The tests run on a current-thread runtime, so a call's
/// events land in the buffer of the test's own thread.
struct Recorder;

thread_local! {
    static TRACED: std::cell::RefCell<Vec<Traced>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Whether this thread's test installed the recorder: only its events are kept (another
    /// test's millions of transitions would fill memory).
    static RECORDING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Recorder {
    fn install() {
        static INSTALLED: std::sync::Once = std::sync::Once::new();
        INSTALLED.call_once(|| {
            tracing::subscriber::set_global_default(OnEvent(keep))
                .expect("no other global subscriber");
        });
        RECORDING.set(true);
        Recorder::take();
    }

    /// The events traced on this thread since the last call.
    fn take() -> Vec<Traced> {
        TRACED.with(|traced| std::mem::take(&mut *traced.borrow_mut()))
    }
}

/// What the recorder does with an event: keeps this crate's, on a thread that records.
fn keep(event: &tracing::Event<'_>) {
    if !RECORDING.get()
        || !event
            .metadata()
            .target()
            .starts_with("tower_circuit_breaker")
    {
        return;
    }
    let level = *event.metadata().level();
    let fields = fields(event);
    TRACED.with(|traced| traced.borrow_mut().push(Traced { level, fields }));
}

#[tokio::test(start_paused = true)]
async fn transitions_emit_one_tracing_event_each_warn_on_open_info_otherwise() {
    use tracing::Level;

    Recorder::install();
    let mut h = tripping();

    run(&mut h.svc, 5, Reply::Ok).await;
    assert!(
        Recorder::take().is_empty(),
        "the closed path traces nothing"
    );

    call(&mut h.svc, fail()).await.unwrap_err();
    let traced = Recorder::take();
    assert_eq!(traced.len(), 1, "{traced:?}");
    assert_eq!(traced[0].level, Level::WARN);
    assert_eq!(traced[0].field("breaker"), "dep");
    assert_eq!(traced[0].field("from"), "closed");
    assert_eq!(traced[0].field("to"), "open");

    for _ in 0..2 {
        rejection(call(&mut h.svc, ok()).await);
    }
    let traced = Recorder::take();
    assert_eq!(traced.len(), 2, "one debug event per rejection: {traced:?}");
    for event in &traced {
        assert_eq!(event.level, Level::DEBUG);
        assert_eq!(event.field("breaker"), "dep");
    }

    advance(OPEN).await;
    assert_eq!(h.handle.state(), State::HalfOpen);
    let traced = Recorder::take();
    assert_eq!(traced.len(), 1, "{traced:?}");
    assert_eq!(traced[0].level, Level::INFO);
    assert_eq!(traced[0].field("breaker"), "dep");
    assert_eq!(
        (traced[0].field("from"), traced[0].field("to")),
        ("open", "half-open")
    );

    call(&mut h.svc, ok()).await.unwrap();
    let traced = Recorder::take();
    assert_eq!(traced.len(), 1, "{traced:?}");
    assert_eq!(traced[0].level, Level::INFO);
    assert_eq!(
        (traced[0].field("from"), traced[0].field("to")),
        ("half-open", "closed")
    );

    h.handle.force_open();
    let traced = Recorder::take();
    assert_eq!(traced.len(), 1, "{traced:?}");
    assert_eq!(traced[0].level, Level::WARN, "forced open is open");
    assert_eq!(traced[0].field("breaker"), "dep");
}

// ===== call timeout =====

#[tokio::test(start_paused = true)]
async fn call_timeout_returns_elapsed_and_counts_as_failure() {
    let mut h = harness(
        builder()
            .sliding_window(Window::count(10))
            .minimum_calls(10)
            .consecutive_failures(2)
            .call_timeout(secs(1)),
    );

    call(&mut h.svc, ok().after(ms(999))).await.unwrap();
    let err = call(&mut h.svc, ok().after(secs(5))).await.unwrap_err();
    assert!(err.is::<Elapsed>(), "{err}");
    assert_eq!(
        h.counters.completed(),
        1,
        "the slow inner future was dropped"
    );
    let metrics = h.handle.metrics();
    assert_eq!((metrics.calls(), metrics.failed()), (2, 1));
    assert_eq!(metrics.consecutive_failures(), 1);

    call(&mut h.svc, ok().after(secs(5)))
        .await
        .unwrap_err()
        .downcast::<Elapsed>()
        .unwrap();
    assert_eq!(h.handle.state(), State::Open, "two timeouts in a row");
}

#[tokio::test(start_paused = true)]
async fn call_timeout_fails_a_probe() {
    let mut h = harness(
        builder()
            .consecutive_failures(1)
            .open_duration(OPEN)
            .call_timeout(secs(1)),
    );
    call(&mut h.svc, fail()).await.unwrap_err();
    advance(OPEN).await;
    let err = call(&mut h.svc, ok().after(secs(2))).await.unwrap_err();
    assert!(err.is::<Elapsed>());
    assert_eq!(h.handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn call_timeout_with_the_default_classifier() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .call_timeout(ms(10))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(Inner::default());
    let err = svc.oneshot(ok().after(secs(1))).await.unwrap_err();
    assert!(err.is::<Elapsed>());
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn call_timeout_counts_from_call_not_from_the_first_poll() {
    let mut h = harness(builder().call_timeout(secs(1)));
    let called = tokio::time::Instant::now();
    // Called now, first polled 600 ms later; the inner future then takes 800 ms more.
    let future = start(&mut h.svc, ok().after(ms(800))).await;
    advance(ms(600)).await;
    let err = future.await.unwrap_err();
    assert!(err.is::<Elapsed>(), "{err}");
    assert_eq!(called.elapsed(), secs(1), "the deadline is `call` + 1 s");
}

#[tokio::test(start_paused = true)]
async fn call_timeout_beyond_the_clocks_range_never_fires() {
    // `Instant::now() + Duration::MAX` overflows: such a deadline is never reached.
    let mut h = harness(
        builder()
            .consecutive_failures(1)
            .call_timeout(Duration::MAX),
    );
    call(&mut h.svc, ok().after(secs(3600))).await.unwrap();
    assert_eq!(h.handle.metrics().successful(), 1);
}

// ===== clock =====

#[tokio::test(start_paused = true)]
async fn time_is_read_from_tokios_clock() {
    // No real time passes: only tokio's paused clock moves.
    let mut h = harness(builder().consecutive_failures(1).open_duration(secs(3600)));
    call(&mut h.svc, fail()).await.unwrap_err();
    advance(secs(3600) - NS).await;
    assert_eq!(h.handle.state(), State::Open);
    advance(NS).await;
    assert_eq!(h.handle.state(), State::HalfOpen);
}
