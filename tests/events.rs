//! DESIGN §3 Always, and the events: no user code runs under a lock of the breaker, events come
//! once each and in transition order, a subscriber's buffer and its lag, subscriptions that free
//! their memory, and a `Debug` that never makes a transition.
//!
//! The callback tests (a tracing subscriber, an event stream's waker, a waker that is dropped)
//! run on a std thread with a bounded wait ([`within`]): a callback that re-enters a lock of the
//! breaker deadlocks, and the test fails instead of hanging the suite.
//!
//! The counting allocator (`support::alloc`, installed here) measures this thread's live heap for
//! the subscription test.

mod support;

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures::task::noop_waker;
use futures::{FutureExt, StreamExt};
use support::alloc::{Counting, live_bytes};
use support::*;
use tower::{Layer, Service};
use tower_circuit_breaker::{
    CircuitBreaker, CircuitBreakerLayer, EVENT_BUFFER, Event, EventStream, Handle, State,
};

/// How long a callback test may take before it counts as deadlocked.
const DEADLOCK: Duration = Duration::from_secs(5);

// ===== a counting allocator: this thread's live heap =====

#[global_allocator]
static COUNTING: Counting = Counting;

// ===== wakers that call back =====

/// A waker that calls every `Handle` method the first time it is woken.
struct CallsBackWhenWoken {
    handle: Handle,
    woken: AtomicUsize,
}

impl Wake for CallsBackWhenWoken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Once: with `reset()` emitting an event, a waker kept registered would loop.
        if self.woken.fetch_add(1, Ordering::SeqCst) == 0 {
            let _ = self.handle.state();
            let _ = self.handle.metrics();
            drop(self.handle.subscribe());
            self.handle.reset();
        }
    }
}

/// A waker that owns something; what it owns is dropped with the waker's last clone.
struct Owns<T: Send> {
    /// Never read: held only to be dropped with the waker.
    _owned: Mutex<Option<T>>,
}

impl<T: Send + 'static> Owns<T> {
    fn waker(owned: T) -> Waker {
        Waker::from(Arc::new(Owns {
            _owned: Mutex::new(Some(owned)),
        }))
    }
}

impl<T: Send> Wake for Owns<T> {
    fn wake(self: Arc<Self>) {}
}

/// Sets its flag when dropped, then runs its action.
struct OnDrop<F: FnMut()> {
    dropped: Arc<AtomicBool>,
    action: F,
}

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
        (self.action)();
    }
}

/// An inner service that is never ready.
#[derive(Clone, Debug)]
struct NeverReady;

impl Service<()> for NeverReady {
    type Response = ();
    type Error = Infallible;
    type Future = Ready<Result<(), Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Pending
    }

    fn call(&mut self, (): ()) -> Self::Future {
        ready(Ok(()))
    }
}

/// Polls `svc` for readiness with `waker`; it must wait (its inner service is never ready).
#[track_caller]
fn poll_pending(svc: &mut CircuitBreaker<NeverReady>, waker: &Waker) {
    let poll = svc.poll_ready(&mut Context::from_waker(waker));
    assert!(poll.is_pending(), "a never-ready inner service: {poll:?}");
}

// ===== making transitions =====

/// Transition `i` of a run: `disable()` for even `i`, `force_open()` for odd `i`, so that each
/// changes the state (from Closed or from the previous one). Returns `(from, to)`.
fn transition(handle: &Handle, i: usize) -> (State, State) {
    let from = handle.state();
    if i % 2 == 0 {
        handle.disable();
        (from, State::Disabled)
    } else {
        handle.force_open();
        (from, State::ForcedOpen)
    }
}

/// Every event already in `events`, without waiting.
fn drain(events: &mut EventStream) -> Vec<Event> {
    let mut seen = Vec::new();
    while let Some(Some(event)) = events.next().now_or_never() {
        seen.push(event);
    }
    seen
}

// ===== no user code under our locks (defects 1 and 12) =====

#[test]
fn an_event_streams_waker_may_call_the_handle_when_woken() {
    let (woken, streamed, state) = within(DEADLOCK, "reset() from an event waker", || {
        let handle = CircuitBreakerLayer::builder().build().unwrap().handle();
        let mut events = handle.subscribe();
        let calls_back = Arc::new(CallsBackWhenWoken {
            handle: handle.clone(),
            woken: AtomicUsize::new(0),
        });
        let waker = Waker::from(calls_back.clone());
        let first = events.poll_next_unpin(&mut Context::from_waker(&waker));
        assert!(first.is_pending(), "no event yet: {first:?}");
        handle.force_open();
        let woken = calls_back.woken.load(Ordering::SeqCst);
        (woken, transitions(&mut events), handle.state())
    });
    assert!(woken >= 1, "the stream's waker was woken");
    assert_eq!(
        streamed,
        [
            (State::Closed, State::ForcedOpen),
            (State::ForcedOpen, State::Closed),
        ],
        "force_open(), then the waker's reset(): once each, in order"
    );
    assert_eq!(state, State::Closed, "the waker's reset() came last");
}

#[test]
fn a_waker_the_breaker_replaces_is_dropped_outside_its_lock() {
    // The replaced waker owns the last clone of another waiting service of the same breaker:
    // dropping it gives that service's waiting slot back.
    let (dropped, wakes) = within(DEADLOCK, "replacing a waiting task's waker", || {
        let layer = CircuitBreakerLayer::builder().build().unwrap();
        let mut waiting = layer.layer(NeverReady);
        let mut other = layer.layer(NeverReady);
        poll_pending(&mut other, &noop_waker());
        let dropped = Arc::new(AtomicBool::new(false));
        let mut other = Some(other);
        let first = Owns::waker(OnDrop {
            dropped: dropped.clone(),
            action: move || drop(other.take()),
        });
        poll_pending(&mut waiting, &first);
        drop(first); // the breaker holds the last clone now
        let (waker, counts) = CountsWakes::waker();
        poll_pending(&mut waiting, &waker);
        let dropped = dropped.load(Ordering::SeqCst);
        // The waiting list still works: the new waker is woken when the circuit opens.
        layer.handle().force_open();
        (dropped, counts.wakes())
    });
    assert!(dropped, "the breaker dropped the replaced waker");
    assert_eq!(
        wakes, 1,
        "the replacing waker is woken when the circuit opens"
    );
}

#[test]
fn a_waker_dropped_with_its_waiting_service_is_dropped_outside_the_breakers_lock() {
    // The waker's drop calls the handle (force_open, which wakes the waiting tasks) and drops
    // another waiting service of the same breaker.
    let (dropped, streamed, state) = within(DEADLOCK, "dropping a waiting service", || {
        let layer = CircuitBreakerLayer::builder().build().unwrap();
        let handle = layer.handle();
        let mut events = handle.subscribe();
        let mut waiting = layer.layer(NeverReady);
        let mut other = layer.layer(NeverReady);
        poll_pending(&mut other, &noop_waker());
        let dropped = Arc::new(AtomicBool::new(false));
        let mut other = Some(other);
        let on_drop_handle = handle.clone();
        let waker = Owns::waker(OnDrop {
            dropped: dropped.clone(),
            action: move || {
                on_drop_handle.force_open();
                drop(other.take());
            },
        });
        poll_pending(&mut waiting, &waker);
        drop(waker); // the breaker holds the last clone now
        drop(waiting);
        let dropped = dropped.load(Ordering::SeqCst);
        (dropped, transitions(&mut events), handle.state())
    });
    assert!(dropped, "the breaker dropped the waiting service's waker");
    assert_eq!(streamed, [(State::Closed, State::ForcedOpen)]);
    assert_eq!(state, State::ForcedOpen);
}

// ===== a subscriber's buffer and memory (defects 13 and 14) =====

#[test]
fn a_subscribers_buffer_holds_exactly_event_buffer_events() {
    let handle = CircuitBreakerLayer::builder().build().unwrap().handle();
    let mut early = handle.subscribe();
    let first = transition(&handle, 0);
    let mut late = handle.subscribe();
    let rest: Vec<_> = (1..=EVENT_BUFFER).map(|i| transition(&handle, i)).collect();
    assert_eq!(rest.len(), 64);

    // Exactly EVENT_BUFFER events, unread: all of them, nothing else.
    let late: Vec<_> = drain(&mut late);
    assert_eq!(late.len(), EVENT_BUFFER, "{late:?}");
    assert_eq!(
        transitions_of(&late),
        rest,
        "a full buffer keeps every event"
    );

    // One more than fits: the buffer keeps EVENT_BUFFER transitions (the newest), not 65.
    let early = transitions_of(&drain(&mut early));
    assert_eq!(
        early.len(),
        EVENT_BUFFER,
        "one more than fits: the buffer holds EVENT_BUFFER transitions"
    );
    assert_ne!(early.first(), Some(&first), "the oldest is the one dropped");
    assert_eq!(early, rest, "the newest EVENT_BUFFER transitions are kept");
}

#[test]
fn dropped_subscriptions_free_their_memory_at_once() {
    let start = live_bytes();
    let held = std::hint::black_box(vec![0u8; 100_000]);
    assert!(
        live_bytes() - start >= 100_000,
        "the counter sees the live heap"
    );
    drop(held);

    let handle = CircuitBreakerLayer::builder().build().unwrap().handle();
    for _ in 0..10 {
        drop(handle.subscribe());
    }
    let before = live_bytes();
    for _ in 0..100_000 {
        drop(handle.subscribe());
    }
    let grown = live_bytes() - before;
    assert!(
        grown < 8 * 1024,
        "100,000 dropped subscriptions grew the live heap by {grown} bytes"
    );
    assert_eq!(handle.state(), State::Closed, "no transition freed them");
}

// ===== Debug and reset (defect 6, the reset claim) =====

#[tokio::test(start_paused = true)]
async fn debug_of_a_handle_shows_the_stored_state_and_makes_no_transition() {
    let mut h = harness(builder().consecutive_failures(1).open_duration(secs(1)));
    let _ = call(&mut h.svc, fail()).await;
    assert_eq!(h.handle.state(), State::Open);
    let mut events = h.handle.subscribe();
    advance(secs(2)).await; // the open interval has ended; nobody looked

    for shown in [format!("{:?}", h.handle), format!("{:?}", h.svc)] {
        assert!(
            shown.contains("Open") && !shown.contains("HalfOpen"),
            "Debug shows the stored state: {shown}"
        );
    }
    assert_eq!(transitions(&mut events), [], "Debug made a transition");

    assert_eq!(h.handle.state(), State::HalfOpen, "state() settles it");
    assert_eq!(transitions(&mut events), [(State::Open, State::HalfOpen)]);
}

#[test]
fn reset_on_a_closed_breaker_emits_closed_to_closed() {
    let handle = CircuitBreakerLayer::builder().build().unwrap().handle();
    let mut events = handle.subscribe();
    handle.reset();
    assert_eq!(transitions(&mut events), [(State::Closed, State::Closed)]);
    assert_eq!(handle.state(), State::Closed);
}

// ===== lag (defect 13): needs `Event::Lagged`, which main does not have =====

/// The events of a subscriber that lagged: the lag marker's count, then the transitions.
fn lagged(events: &[Event]) -> (Option<u64>, Vec<(State, State)>) {
    match events.split_first() {
        Some((Event::Lagged { missed, .. }, rest)) => (Some(*missed), transitions_of(rest)),
        _ => (None, transitions_of(events)),
    }
}

#[test]
fn a_lagging_subscriber_is_told_what_it_missed_and_keeps_the_newest_events() {
    let handle = CircuitBreakerLayer::builder().build().unwrap().handle();
    let mut events = handle.subscribe();
    let made: Vec<_> = (0..101).map(|i| transition(&handle, i)).collect();
    assert_eq!(handle.state(), State::Disabled);

    let received = drain(&mut events);
    assert_eq!(received.len(), 1 + EVENT_BUFFER, "{received:?}");
    let (missed, kept) = lagged(&received);
    assert_eq!(missed, Some(37), "Lagged first, with 101 - 64 missed");
    assert_eq!(kept, made[37..], "then the newest 64 transitions");
    assert_eq!(
        kept.last(),
        Some(&(State::ForcedOpen, State::Disabled)),
        "the last event is the final state"
    );
    assert!(
        received[1..]
            .iter()
            .all(|e| matches!(e, Event::StateTransition { .. })),
        "one lag marker only: {received:?}"
    );

    // Caught up: the next transition comes alone, with no marker.
    let next = transition(&handle, 101);
    let after = drain(&mut events);
    assert_eq!(lagged(&after), (None, vec![next]), "{after:?}");
}

#[test]
fn a_subscriber_one_event_behind_missed_exactly_one() {
    let handle = CircuitBreakerLayer::builder().build().unwrap().handle();
    let mut events = handle.subscribe();
    let made: Vec<_> = (0..=EVENT_BUFFER).map(|i| transition(&handle, i)).collect();
    let received = drain(&mut events);
    assert_eq!(
        lagged(&received),
        (Some(1), made[1..].to_vec()),
        "{received:?}"
    );
}

/// A stream says what it is when debugged (and nothing of the events it holds).
#[test]
fn an_event_stream_shows_its_type_in_debug() {
    let handle = CircuitBreakerLayer::builder().build().unwrap().handle();
    assert_eq!(format!("{:?}", handle.subscribe()), "EventStream { .. }");
}

/// DESIGN §3, Always: a stream ends when its breaker is gone, once it has read what it holds;
/// a task waiting on it is woken to see the end.
#[test]
fn an_event_stream_ends_when_its_breaker_is_gone_after_what_it_holds() {
    let layer = CircuitBreakerLayer::builder().build().unwrap();
    let handle = layer.handle();
    let mut held = handle.subscribe();
    let mut waiting = handle.subscribe();
    handle.force_open();
    assert!(waiting.next().now_or_never().is_some(), "the opening");
    let mut next = tokio_test::task::spawn(waiting.next());
    assert!(next.poll().is_pending());
    drop((layer, handle));
    assert!(next.is_woken());
    assert!(matches!(next.poll(), Poll::Ready(None)));
    assert!(
        matches!(held.next().now_or_never(), Some(Some(_))),
        "what it holds first"
    );
    assert!(matches!(held.next().now_or_never(), Some(None)));
}
