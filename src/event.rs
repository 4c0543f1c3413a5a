//! Events a breaker emits, and the stream that delivers them.
//!
//! Events are for operators and integrations (logs, metrics, alerts): they report what the state
//! machine did, after it did it. They cost nothing while nobody listens: a transition checks one
//! counter and moves on. A subscriber gets a bounded buffer ([`EVENT_BUFFER`] events); a
//! subscriber that does not keep up misses the events that do not fit, and the state machine never
//! waits for it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use futures::channel::mpsc;

use crate::State;
use crate::sync::{AtomicUsize, Mutex, Ordering, lock};

/// How many events a subscriber's buffer holds.
///
/// ```
/// assert_eq!(tower_circuit_breaker::EVENT_BUFFER, 64);
/// ```
pub const EVENT_BUFFER: usize = 64;

/// Something a breaker did.
///
/// ```
/// use tower_circuit_breaker::{Event, State};
///
/// fn describe(event: &Event) -> String {
///     match event {
///         Event::StateTransition { from, to, .. } => format!("{from} -> {to}"),
///         _ => "other".to_string(),
///     }
/// }
/// # let _ = describe;
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The breaker moved from one state to another. Each transition is reported exactly once.
    #[non_exhaustive]
    StateTransition {
        /// The state left.
        from: State,
        /// The state entered.
        to: State,
        /// The breaker's name, if it has one.
        name: Option<Arc<str>>,
    },
}

/// A stream of a breaker's [`Event`]s, from [`Handle::subscribe`](crate::Handle::subscribe).
///
/// It ends when the breaker is gone.
///
/// ```
/// use futures::StreamExt;
/// use tower_circuit_breaker::{CircuitBreakerLayer, Event};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let handle = CircuitBreakerLayer::builder().name("db").build().unwrap().handle();
/// let events = handle.subscribe();
/// tokio::spawn(events.for_each(|event| async move {
///     if let Event::StateTransition { from, to, name, .. } = event {
///         println!("{name:?}: {from} -> {to}");
///     }
/// }));
/// # }
/// ```
#[derive(Debug)]
pub struct EventStream {
    receiver: mpsc::Receiver<Event>,
}

impl Stream for EventStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        Pin::new(&mut self.receiver).poll_next(cx)
    }
}

/// The subscribers of one breaker.
#[derive(Debug, Default)]
pub(crate) struct Subscribers {
    /// The number of subscribers, read without the lock on every transition.
    count: AtomicUsize,
    senders: Mutex<Vec<mpsc::Sender<Event>>>,
}

impl Subscribers {
    pub(crate) fn subscribe(&self) -> EventStream {
        let (sender, receiver) = mpsc::channel(EVENT_BUFFER);
        let mut senders = lock(&self.senders);
        senders.push(sender);
        // Relaxed: the count only lets `emit` skip the lock; the lock orders the list itself.
        self.count.store(senders.len(), Ordering::Relaxed);
        EventStream { receiver }
    }

    pub(crate) fn emit(&self, event: impl FnOnce() -> Event) {
        if self.count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let event = event();
        let mut senders = lock(&self.senders);
        // A full buffer drops this event for that subscriber; a closed one is forgotten.
        senders.retain_mut(|s| match s.try_send(event.clone()) {
            Ok(()) => true,
            Err(e) => !e.is_disconnected(),
        });
        self.count.store(senders.len(), Ordering::Relaxed);
    }
}
