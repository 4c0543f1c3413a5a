//! The readiness mode (`pending_while_open`) and panic groups, on tokio's paused clock: while the
//! circuit rejects, `poll_ready` is `Pending` without polling the inner service, and the task is
//! woken exactly when a probe becomes possible.

mod support;

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::time::Duration;

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

// ===== panic groups: wake-ups =====

/// A tracing subscriber that runs `hook` at the first event it sees: user code that runs in the
/// middle of a `poll_ready`, as a preemption could, made to happen at a known place.
struct AtFirstEvent<F> {
    hook: std::sync::Mutex<Option<F>>,
}

impl<F: FnOnce() + Send + 'static> tracing::Subscriber for AtFirstEvent<F> {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {
        // Taken out of the lock before it runs: it logs too.
        let hook = self.hook.lock().unwrap().take();
        if let Some(hook) = hook {
            hook();
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

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
    let subscriber = AtFirstEvent {
        hook: std::sync::Mutex::new(Some(move || b_handle.force_open())),
    };
    let polled = tracing::subscriber::with_default(subscriber, || {
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
