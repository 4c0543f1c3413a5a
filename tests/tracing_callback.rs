//! A tracing subscriber that calls back into the breaker from inside its callback (no user code
//! runs under a lock of ours). A binary of its own: tracing caches each callsite's interest
//! process-wide, and a test in another thread of the same binary, hitting the same callsite with
//! no subscriber at the wrong moment, could make this subscriber miss the event.

mod support;

use std::fmt;
use std::future::ready;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::executor::block_on;
use support::*;
use tower::{Layer, ServiceExt, service_fn};
use tower_circuit_breaker::{CircuitBreakerLayer, Handle, State};
use tracing::field::{Field, Visit};
use tracing::span;

/// How long the test may take before it counts as deadlocked.
const DEADLOCK: Duration = Duration::from_secs(5);

// ===== a tracing subscriber that calls back =====

/// The transition a tracing event reports: `from`/`to`, or `state` for a reset to the same state.
#[derive(Default)]
struct Fields {
    message: String,
    from: Option<String>,
    to: Option<String>,
    state: Option<String>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let value = format!("{value:?}");
        match field.name() {
            "message" => self.message = value,
            "from" => self.from = Some(value),
            "to" => self.to = Some(value),
            "state" => self.state = Some(value),
            _ => {}
        }
    }
}

/// A state as the tracing events write it (its `Display`).
fn parse(shown: &str) -> State {
    ALL_STATES
        .into_iter()
        .find(|state| state.to_string() == shown)
        .unwrap_or_else(|| panic!("unknown state {shown:?}"))
}

/// Records the transitions of every tracing event it sees, and calls `on_opened` with the handle
/// the first time it sees "circuit opened", from inside its `event` callback.
struct CallsBackWhenOpened {
    handle: Handle,
    on_opened: fn(&Handle),
    acted: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(State, State)>>>,
}

impl tracing::Subscriber for CallsBackWhenOpened {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let transition = match (&fields.from, &fields.to, &fields.state) {
            (Some(from), Some(to), _) => (parse(from), parse(to)),
            (None, None, Some(state)) if fields.message != "call rejected" => {
                (parse(state), parse(state))
            }
            _ => return,
        };
        // Our own lock is released before calling back.
        self.seen.lock().unwrap().push(transition);
        if fields.message == "circuit opened" && !self.acted.swap(true, Ordering::SeqCst) {
            (self.on_opened)(&self.handle);
        }
    }

    fn enter(&self, _: &span::Id) {}

    fn exit(&self, _: &span::Id) {}
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
        let subscriber = CallsBackWhenOpened {
            handle: handle.clone(),
            on_opened: |handle| {
                let _ = handle.state();
                let _ = handle.metrics();
                handle.force_open();
            },
            acted: acted.clone(),
            seen: seen.clone(),
        };
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
