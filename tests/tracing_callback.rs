//! A tracing subscriber that calls back into the breaker from inside its callback (no user code
//! runs under a lock of ours). A binary of its own: tracing caches each callsite's interest
//! process-wide, and a test in another thread of the same binary, hitting the same callsite with
//! no subscriber at the wrong moment, could make this subscriber miss the event.

mod support;

use std::future::ready;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::executor::block_on;
use support::traced::{OnEvent, fields};
use support::*;
use tower::{Layer, ServiceExt, service_fn};
use tower_circuit_breaker::{CircuitBreakerLayer, State};

/// How long the test may take before it counts as deadlocked.
const DEADLOCK: Duration = Duration::from_secs(5);

// ===== a tracing subscriber that calls back =====

/// The transition a tracing event reports (`from`/`to`, or `state` for a reset to the same
/// state), and its message.
fn transition_of(event: &tracing::Event<'_>) -> Option<((State, State), String)> {
    let mut fields = fields(event);
    let message = fields.remove("message").unwrap_or_default();
    let get = |name| fields.get(name).map(|shown: &String| parse(shown));
    let transition = match (get("from"), get("to"), get("state")) {
        (Some(from), Some(to), _) => (from, to),
        (None, None, Some(state)) if message != "call rejected" => (state, state),
        _ => return None,
    };
    Some((transition, message))
}

/// A state as the tracing events write it (its `Display`).
fn parse(shown: &str) -> State {
    State::ALL
        .into_iter()
        .find(|state| state.to_string() == shown)
        .unwrap_or_else(|| panic!("unknown state {shown:?}"))
}

/// Asserts that `part` is `whole` with some items left out: in order, each at most once.
#[track_caller]
fn assert_subsequence(part: &[(State, State)], whole: &[(State, State)]) {
    let mut rest = whole.iter();
    for item in part {
        assert!(
            rest.any(|w| w == item),
            "{part:?} is not in the order of {whole:?} (or repeats one)"
        );
    }
}

#[test]
fn a_tracing_subscriber_may_call_the_handle_when_the_circuit_opens() {
    let (traced, streamed, state, acted) = within(DEADLOCK, "force_open() from tracing", || {
        let layer = CircuitBreakerLayer::builder()
            .name("traced")
            .consecutive_failures(1)
            .open_duration(secs(3600))
            .build()
            .unwrap();
        let handle = layer.handle();
        let mut events = handle.subscribe();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let acted = Arc::new(AtomicBool::new(false));
        // Records the transition of every event, and calls the handle the first time it sees
        // "circuit opened", from inside its callback.
        let subscriber = OnEvent({
            let (handle, acted, seen) = (handle.clone(), acted.clone(), seen.clone());
            move |event: &tracing::Event<'_>| {
                let Some((transition, message)) = transition_of(event) else {
                    return;
                };
                // Our own lock is released before calling back.
                seen.lock().unwrap().push(transition);
                if message == "circuit opened" && !acted.swap(true, Ordering::SeqCst) {
                    let _ = handle.state();
                    let _ = handle.metrics();
                    handle.force_open();
                }
            }
        });
        tracing::subscriber::with_default(subscriber, || {
            // tracing caches each callsite's interest globally: one another test's thread
            // registered with no subscriber could be cached as "never" here.
            tracing::callsite::rebuild_interest_cache();
            let failing = layer.layer(service_fn(|()| ready(Err::<(), _>("down"))));
            block_on(failing.oneshot(())).expect_err("the inner service fails");
            handle.reset();
        });
        let traced = seen.lock().unwrap().clone();
        let acted = acted.load(Ordering::SeqCst);
        (traced, transitions(&mut events), handle.state(), acted)
    });
    assert!(
        acted,
        "the subscriber saw \"circuit opened\" and called back"
    );
    assert_eq!(state, State::Closed);
    assert_eq!(
        streamed,
        [
            (State::Closed, State::Open),
            (State::Open, State::ForcedOpen),
            (State::ForcedOpen, State::Closed),
        ],
        "the trip, the subscriber's force_open(), then reset(): once each, in order"
    );
    // tracing does not dispatch events raised inside a subscriber's own callback, so the
    // subscriber may miss the transition it made; it sees the others once each and in order.
    assert_eq!(
        traced
            .iter()
            .filter(|t| **t == (State::Closed, State::Open))
            .count(),
        1,
        "the trip is traced once: {traced:?}"
    );
    assert_subsequence(&traced, &streamed);
}
