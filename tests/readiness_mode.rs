//! The readiness mode (`pending_while_open`) and panic groups, on tokio's paused clock: while the
//! circuit rejects, `poll_ready` is `Pending` without polling the inner service, and the task is
//! woken exactly when a probe becomes possible.

mod support;

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::time::Duration;

use support::traced::OnEvent;
use support::{Counted, Counts};
use tokio_test::task::spawn;
use tokio_test::{assert_pending, assert_ready_ok};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_circuit_breaker::readiness::PanicGroup;
use tower_circuit_breaker::{CircuitBreaker, CircuitBreakerLayer, State};

const OPEN: Duration = Duration::from_secs(10);

type Answer = Ready<Result<&'static str, &'static str>>;
type Inner = Counted<tower::util::ServiceFn<fn(bool) -> Answer>>;

/// `true` fails, `false` succeeds; counts its readiness checks and calls.
fn inner() -> (Inner, Counts) {
    let counts = Counts::default();
    let svc = Counted {
        inner: service_fn(
            (|fail: bool| ready(if fail { Err("down") } else { Ok("up") })) as fn(bool) -> Answer,
        ),
        counts: counts.clone(),
    };
    (svc, counts)
}

fn gated() -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(OPEN)
        .half_open_calls(1)
        .build()
        .unwrap()
        .pending_while_open()
}

async fn trip(svc: &mut CircuitBreaker<Inner>) {
    let _ = svc.ready().await.unwrap().call(true).await;
}

#[tokio::test(start_paused = true)]
async fn an_open_circuit_is_pending_without_polling_the_inner_service_until_the_interval_ends() {
    let layer = gated();
    let (inner, counts) = inner();
    let mut svc = layer.layer(inner);
    trip(&mut svc).await;
    assert_eq!(layer.handle().state(), State::Open);
    let polled = counts.ready();

    let mut ready = spawn(svc.ready());
    assert_pending!(ready.poll());
    assert_eq!(
        counts.ready(),
        polled,
        "the inner service is not polled while open"
    );
    tokio::time::advance(OPEN - Duration::from_millis(1)).await;
    assert!(!ready.is_woken(), "not before the interval ends");
    assert_pending!(ready.poll());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(ready.is_woken(), "woken when a probe becomes possible");
    let svc = assert_ready_ok!(ready.poll());
    assert_eq!(svc.call(false).await.unwrap(), "up", "the probe");
    assert_eq!(layer.handle().state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn half_open_with_every_permit_taken_waits_for_a_permit_to_come_back() {
    let layer = gated();
    let (inner, _) = inner();
    let mut svc = layer.layer(inner);
    trip(&mut svc).await;
    tokio::time::advance(OPEN).await;

    let mut prober = svc.clone();
    prober.ready().await.unwrap(); // holds the only probe permit
    let mut other = svc.clone();
    let mut waiting = spawn(other.ready());
    assert_pending!(waiting.poll());
    drop(prober); // the permit comes back
    assert!(waiting.is_woken());
    assert_ready_ok!(waiting.poll());
}

/// A waiting service whose circuit opens again (a probe of another clone failed) moves its timer
/// to the end of the new interval: it is not woken at the old one, over and over.
#[tokio::test(start_paused = true)]
async fn a_waiter_moves_its_timer_to_the_end_of_a_new_open_interval() {
    let layer = gated();
    let (inner, _) = inner();
    let mut svc = layer.layer(inner);
    trip(&mut svc).await;
    let mut other = svc.clone();
    let mut waiting = spawn(other.ready());
    assert_pending!(waiting.poll()); // its timer: the end of the first interval
    tokio::time::advance(OPEN).await;
    assert!(waiting.is_woken(), "a probe is possible");

    trip(&mut svc).await; // another clone's probe fails first: open for another interval
    assert_pending!(waiting.poll());
    assert!(
        !waiting.is_woken(),
        "the timer moved: not woken by the old interval's end"
    );
    tokio::time::advance(OPEN - Duration::from_millis(1)).await;
    assert!(!waiting.is_woken());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(waiting.is_woken(), "woken at the end of the new interval");
}

#[tokio::test(start_paused = true)]
async fn forced_open_waits_until_an_operator_changes_the_state() {
    let layer = gated();
    let (inner, counts) = inner();
    let mut svc = layer.layer(inner);
    layer.handle().force_open();
    let mut waiting = spawn(svc.ready());
    assert_pending!(waiting.poll());
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_pending!(waiting.poll());
    layer.handle().reset();
    assert!(waiting.is_woken());
    assert_ready_ok!(waiting.poll());
    assert_eq!(counts.ready(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_mode_is_off_by_default_an_open_circuit_is_ready_and_rejects() {
    let layer = CircuitBreakerLayer::builder().build().unwrap();
    layer.handle().force_open();
    let (inner, _) = inner();
    let mut svc = layer.layer(inner);
    let mut ready = spawn(svc.ready());
    let svc = assert_ready_ok!(ready.poll());
    assert!(svc.call(false).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn load_shed_in_front_sheds_instead_of_waiting() {
    let layer = gated();
    layer.handle().force_open();
    let (inner, counts) = inner();
    let svc = ServiceBuilder::new()
        .load_shed()
        .layer(layer.clone())
        .service(inner);
    let err = svc.oneshot(false).await.unwrap_err();
    assert!(err.is::<tower::load_shed::error::Overloaded>(), "{err}");
    assert_eq!(counts.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_buffer_in_front_waits_for_the_circuit_then_goes_on() {
    let layer = gated();
    let (inner, _) = inner();
    let mut direct = layer.layer(inner.clone());
    trip(&mut direct).await;
    let buffered = tower::buffer::Buffer::new(layer.layer(inner), 8);
    let mut call = spawn(buffered.oneshot(false));
    assert_pending!(call.poll());
    tokio::time::advance(OPEN / 2).await;
    assert_pending!(
        call.poll(),
        "head of line: the worker waits for the circuit"
    );
    tokio::time::advance(OPEN / 2).await;
    // The worker runs on its own task: let it.
    let answer = call.await.unwrap();
    assert_eq!(answer, "up");
    assert_eq!(layer.handle().state(), State::Closed);
}

// ===== panic groups =====

fn member(group: &PanicGroup) -> CircuitBreakerLayer {
    gated().in_panic_group(group)
}

#[tokio::test(start_paused = true)]
async fn a_panicking_group_lets_calls_through_and_gates_again_when_it_recovers() {
    let group = PanicGroup::default();
    let (a, b, c) = (member(&group), member(&group), member(&group));
    let (inner_a, counts_a) = inner();
    let mut svc = a.layer(inner_a);
    a.handle().force_open();
    assert!(!group.is_panicking(), "one of three");

    let mut waiting = spawn(svc.ready());
    assert_pending!(waiting.poll());
    b.handle().force_open();
    assert!(group.is_panicking(), "two of three is more than half");
    assert!(
        waiting.is_woken(),
        "a member's transition wakes the group's waiting tasks"
    );
    let ready = assert_ready_ok!(waiting.poll());
    assert_eq!(
        ready.call(false).await.unwrap(),
        "up",
        "through, while open"
    );
    assert_eq!(counts_a.calls(), 1);
    assert_eq!(a.handle().state(), State::ForcedOpen);
    assert_eq!(
        a.handle().metrics().calls(),
        0,
        "not recorded by an open member"
    );

    b.handle().reset();
    assert!(!group.is_panicking());
    let mut waiting = spawn(svc.ready());
    assert_pending!(waiting.poll(), "gated again");
    drop(c);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_member_leaves_its_group() {
    let group = PanicGroup::new(0.5).unwrap();
    let a = member(&group);
    let b = member(&group);
    a.handle().force_open();
    assert!(!group.is_panicking(), "one of two is not more than half");
    drop(b);
    assert!(group.is_panicking(), "one of one");
}

#[test]
fn a_panic_group_shows_its_threshold_and_whether_it_panics_in_debug() {
    let group = PanicGroup::new(0.25).unwrap();
    let shown = format!("{group:?}");
    assert!(shown.starts_with("PanicGroup"), "{shown}");
    assert!(shown.contains("threshold: 0.25"), "{shown}");
    assert!(shown.contains("panicking: false"), "{shown}");
}

#[test]
fn a_panic_threshold_out_of_range_is_a_config_error() {
    for bad in [0.0, -0.5, 1.5, f64::NAN] {
        let err = PanicGroup::new(bad).unwrap_err();
        assert_eq!(err.field(), "panic_threshold");
        assert_eq!(err.allowed(), "(0, 1]");
    }
    assert!(PanicGroup::new(1.0).is_ok());
}

#[test]
fn the_gated_service_is_still_clone_send_sync() {
    fn assert_bounds<T: Clone + Send + Sync + 'static>(_: &T) {}
    let layer = member(&PanicGroup::default());
    assert_bounds(&layer);
    let svc = layer.layer(service_fn(|_: ()| ready(Ok::<_, Infallible>(()))));
    assert_bounds(&svc);
}

// ===== attacks: wakers and hooks that call back, members that go away =====

/// A waker that runs `on_clone` the first time it is cloned (user code inside `Waker::clone`).
fn waker_calling_on_clone(on_clone: impl Fn() + Send + Sync + 'static) -> std::task::Waker {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{RawWaker, RawWakerVTable, Waker};

    struct Hook {
        fired: AtomicBool,
        on_clone: Box<dyn Fn() + Send + Sync>,
    }
    static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, drop_waker, wake_by_ref, drop_waker);
    unsafe fn clone(data: *const ()) -> RawWaker {
        // SAFETY: `data` is an `Arc<Hook>` made by `into_raw` below; it is not consumed here.
        let hook = std::mem::ManuallyDrop::new(unsafe { Arc::from_raw(data.cast::<Hook>()) });
        if !hook.fired.swap(true, Ordering::SeqCst) {
            (hook.on_clone)();
        }
        RawWaker::new(Arc::into_raw(Arc::clone(&hook)).cast(), &VTABLE)
    }
    unsafe fn wake_by_ref(_: *const ()) {}
    unsafe fn drop_waker(data: *const ()) {
        // SAFETY: as in `clone`; this consumes the reference.
        drop(unsafe { Arc::from_raw(data.cast::<Hook>()) });
    }
    let hook = Arc::new(Hook {
        fired: AtomicBool::new(false),
        on_clone: Box::new(on_clone),
    });
    // SAFETY: the vtable's functions treat the pointer as the `Arc<Hook>` it is.
    unsafe { Waker::from_raw(RawWaker::new(Arc::into_raw(hook).cast(), &VTABLE)) }
}

#[test]
fn a_waker_whose_clone_opens_another_member_does_not_deadlock_the_group() {
    let answer = support::within(Duration::from_secs(5), "poll_ready", || {
        let group = PanicGroup::new(0.5).unwrap();
        let (a, b) = (member(&group), member(&group));
        let (inner, _) = inner();
        let mut svc = a.layer(inner);
        a.handle().force_open();
        let other = b.handle();
        // Cloning the waker opens the other member: the group panics (two of two).
        let waker = waker_calling_on_clone(move || other.force_open());
        let ready = svc.poll_ready(&mut std::task::Context::from_waker(&waker));
        (ready.is_ready(), group.is_panicking())
    });
    assert_eq!(
        answer,
        (true, true),
        "the group panics by the time poll_ready returns: through"
    );
}

#[test]
fn the_group_keeps_no_waker_of_a_service_that_is_gone() {
    let group = PanicGroup::new(0.5).unwrap();
    let (a, _b) = (member(&group), member(&group));
    a.handle().force_open();
    let mut counters = Vec::new();
    for _ in 0..64 {
        let (inner, _) = inner();
        let mut svc = a.layer(inner);
        let (waker, counts) = support::CountsWakes::waker();
        let polled = svc.poll_ready(&mut std::task::Context::from_waker(&waker));
        assert!(polled.is_pending());
        drop((svc, waker));
        counters.push(counts);
    }
    let kept = counters
        .iter()
        .filter(|c| std::sync::Arc::strong_count(c) > 1)
        .count();
    assert_eq!(kept, 0, "wakers of dropped services still held");
}

#[test]
fn a_member_that_goes_away_wakes_the_tasks_its_departure_lets_through() {
    let group = PanicGroup::new(0.5).unwrap();
    let (a, b) = (member(&group), member(&group));
    let (inner, _) = inner();
    let mut svc = a.layer(inner);
    a.handle().force_open();
    let (waker, counts) = support::CountsWakes::waker();
    assert!(
        svc.poll_ready(&mut std::task::Context::from_waker(&waker))
            .is_pending()
    );
    drop(b);
    assert!(group.is_panicking(), "one of one is open");
    assert_eq!(counts.wakes(), 1, "the waiting task is woken to go through");
}

#[test]
fn a_member_opening_while_the_group_is_read_wakes_the_task_that_read_it() {
    let group = PanicGroup::new(0.5).unwrap();
    let (a, b) = (member(&group), member(&group));
    let (inner, _) = inner();
    let mut svc = a.layer(inner);
    a.handle().force_open();
    b.handle().force_open();
    assert!(group.is_panicking());
    b.handle().reset();
    // The next read finds the group recovered; while it says so, `b` opens again.
    let other = b.handle();
    // At the first `info` event of the readiness module (the panic group's "recovered"), once:
    // user code in the middle of `poll_ready`.
    let fired = std::sync::atomic::AtomicBool::new(false);
    let subscriber = OnEvent(move |event: &tracing::Event<'_>| {
        let metadata = event.metadata();
        if metadata.target().ends_with("readiness")
            && *metadata.level() == tracing::Level::INFO
            && !fired.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            other.force_open();
        }
    });
    let (waker, counts) = support::CountsWakes::waker();
    let polled = tracing::subscriber::with_default(subscriber, || {
        // tracing caches each callsite's interest globally (see tests/events.rs).
        tracing::callsite::rebuild_interest_cache();
        svc.poll_ready(&mut std::task::Context::from_waker(&waker))
    });
    assert!(group.is_panicking(), "both open again");
    assert!(
        polled.is_ready() || counts.wakes() > 0,
        "pending while the group panics, and never woken"
    );
}

#[tokio::test(start_paused = true)]
async fn every_layer_of_a_breaker_in_a_group_lets_calls_through_while_it_panics() {
    let (first, second) = (PanicGroup::new(0.5).unwrap(), PanicGroup::new(0.5).unwrap());
    let base = gated();
    let joined = base.clone().in_panic_group(&first);
    let late = base.in_panic_group(&second); // already in `first`: "changes nothing"
    let peer = member(&first);
    joined.handle().force_open();
    peer.handle().force_open();
    assert!(first.is_panicking());
    let (inner_joined, _) = inner();
    let (inner_late, _) = inner();
    let mut through = spawn(joined.layer(inner_joined).oneshot(false));
    assert_eq!(assert_ready_ok!(through.poll()), "up");
    let mut same_breaker = spawn(late.layer(inner_late).oneshot(false));
    assert_eq!(
        assert_ready_ok!(same_breaker.poll()),
        "up",
        "the same breaker, in the same panicking group"
    );
}

// ===== panic groups: wake-ups =====

#[test]
fn a_member_that_opens_while_another_looks_at_the_group_wakes_the_one_that_looked() {
    // `a` is forced open: its own breaker never wakes it, only the group can. `a`'s poll looks at
    // the group (one of two open: calm) and then leaves its waker with the group; `b` opens in
    // between (here from the tracing event the look emits, standing in for a preemption), which
    // makes the group panic. `a`'s task must be woken, or it waits for good.
    let group = PanicGroup::new(0.5).unwrap();
    let (a, b) = (member(&group), member(&group));
    a.handle().force_open();
    // The group last saw itself panicking: the next look reports its recovery (an event).
    b.handle().force_open();
    assert!(group.is_panicking());
    b.handle().reset();

    let (inner_a, _) = inner();
    let mut svc = a.layer(inner_a);
    let (waker, wakes) = support::CountsWakes::waker();
    let b_handle = b.handle();
    // At the first event: user code that runs in the middle of a `poll_ready`, as a preemption
    // could, made to happen at a known place. Once: it logs too.
    let fired = std::sync::atomic::AtomicBool::new(false);
    let subscriber = OnEvent(move |_: &tracing::Event<'_>| {
        if !fired.swap(true, std::sync::atomic::Ordering::SeqCst) {
            b_handle.force_open();
        }
    });
    let polled = tracing::subscriber::with_default(subscriber, || {
        // tracing caches each callsite's interest globally (see tests/events.rs).
        tracing::callsite::rebuild_interest_cache();
        svc.poll_ready(&mut std::task::Context::from_waker(&waker))
    });
    assert_eq!(
        b.handle().state(),
        State::ForcedOpen,
        "b opened during the poll"
    );
    assert!(group.is_panicking());
    assert!(
        polled.is_ready() || wakes.wakes() > 0,
        "the poll returned Pending and nothing will wake it: the group panics, but its wake-up \
         ran before the task left its waker"
    );
}

#[test]
fn a_group_holds_one_waker_per_waiting_service_and_none_once_it_is_gone() {
    // Each task that polls a gated service leaves a waker; a waker keeps its task alive. The
    // group must not collect them while a member stays open (forced open: no transition).
    let group = PanicGroup::default();
    let (a, _b, _c) = (member(&group), member(&group), member(&group));
    a.handle().force_open();
    let held = |wakes: &[std::sync::Arc<support::CountsWakes>]| {
        wakes
            .iter()
            .map(|w| std::sync::Arc::strong_count(w) - 1)
            .sum::<usize>()
    };

    // One service, polled from many tasks in turn.
    let (inner_a, _) = inner();
    let mut svc = a.layer(inner_a);
    let wakes: Vec<_> = (0..1000)
        .map(|_| {
            let (waker, wakes) = support::CountsWakes::waker();
            assert!(
                svc.poll_ready(&mut std::task::Context::from_waker(&waker))
                    .is_pending()
            );
            wakes
        })
        .collect();
    assert!(
        held(&wakes) <= 2,
        "the breaker and the group keep the last waker only, not {}",
        held(&wakes)
    );

    // Many services, each polled once from its own task, then dropped (a load shedder in front,
    // a request that gave up).
    let wakes: Vec<_> = (0..1000)
        .map(|_| {
            let (inner_a, _) = inner();
            let mut svc = a.layer(inner_a);
            let (waker, wakes) = support::CountsWakes::waker();
            assert!(
                svc.poll_ready(&mut std::task::Context::from_waker(&waker))
                    .is_pending()
            );
            wakes
        })
        .collect();
    assert_eq!(held(&wakes), 0, "a dropped service leaves no waker behind");
}

#[tokio::test(start_paused = true)]
async fn a_half_open_member_still_counts_as_open_so_the_group_does_not_flicker_at_each_probe() {
    let group = PanicGroup::default();
    let (a, b, _c) = (member(&group), member(&group), member(&group));
    let (inner_a, _) = inner();
    let mut svc = a.layer(inner_a);
    trip(&mut svc).await;
    b.handle().force_open();
    assert!(group.is_panicking());
    tokio::time::advance(OPEN).await;
    assert_eq!(a.handle().state(), State::HalfOpen);
    assert!(group.is_panicking(), "a probing member is not healthy yet");
}
