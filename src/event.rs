//! Events a breaker emits, and the stream that delivers them.
//!
//! Events are for operators and integrations (logs, metrics, alerts): they report what the state
//! machine did, after it did it, in order. They cost nothing while nobody listens: a transition
//! sees that there is no subscriber and moves on. A subscriber gets a bounded buffer of the
//! newest [`EVENT_BUFFER`] events; one that does not keep up loses the oldest and is told how many
//! with [`Event::Lagged`]. The state machine never waits for a subscriber.
//!
//! A transition puts its event into every subscriber's buffer before it returns (under the
//! transition lock, so in transition order), but wakes the subscribers' tasks only after releasing
//! it: a waker is user code and may call back into the breaker. Tokio's broadcast channel would
//! wake them inside the send, so the channel is this small one.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use std::collections::VecDeque;
use std::task::Waker;

use futures::Stream;

use crate::State;
use crate::sync::{Mutex, lock};

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
    /// This subscriber did not keep up: it missed the `missed` events before the next one.
    #[non_exhaustive]
    Lagged {
        /// How many events were lost.
        missed: u64,
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
pub struct EventStream {
    channel: Arc<Channel>,
    /// This subscriber's slot in the channel.
    id: usize,
}

impl Stream for EventStream {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        // Cloned before the lock and the replaced one dropped after it: wakers are user code.
        let waker = cx.waker().clone();
        let (next, replaced) = {
            let mut ring = lock(&self.channel.ring);
            let ring = &mut *ring;
            let subscriber = &mut ring.subscribers[self.id];
            let Some(reader) = subscriber.as_mut() else {
                return Poll::Ready(None);
            };
            let oldest = ring.next_seq - ring.events.len() as u64;
            if reader.next < oldest {
                let missed = oldest - reader.next;
                reader.next = oldest;
                (Poll::Ready(Some(Event::Lagged { missed })), None)
            } else if reader.next < ring.next_seq {
                let event = ring.events[(reader.next - oldest) as usize].clone();
                reader.next += 1;
                (Poll::Ready(Some(event)), None)
            } else if ring.closed {
                (Poll::Ready(None), None)
            } else {
                (Poll::Pending, reader.waker.replace(waker))
            }
        };
        drop(replaced);
        next
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        let removed = {
            let mut ring = lock(&self.channel.ring);
            ring.free.push(self.id);
            ring.subscriber_count -= 1;
            ring.subscribers[self.id].take()
        };
        drop(removed);
    }
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream").finish_non_exhaustive()
    }
}

/// The newest events and the subscribers' positions in them.
#[derive(Debug, Default)]
struct Ring {
    /// The newest `EVENT_BUFFER` events; the last one has sequence number `next_seq - 1`.
    events: VecDeque<Event>,
    next_seq: u64,
    /// One slot per subscriber (`None`: free, listed in `free`).
    subscribers: Vec<Option<Reader>>,
    free: Vec<usize>,
    subscriber_count: usize,
    /// The breaker is gone: the streams end after the events they hold.
    closed: bool,
}

#[derive(Debug)]
struct Reader {
    /// The sequence number of the next event this subscriber reads.
    next: u64,
    waker: Option<Waker>,
}

#[derive(Debug, Default)]
struct Channel {
    ring: Mutex<Ring>,
}

/// The subscribers of one breaker.
#[derive(Debug, Default)]
pub(crate) struct Subscribers {
    channel: Arc<Channel>,
}

/// Subscribers' tasks to wake: woken after the transition lock is released.
#[derive(Debug, Default)]
pub(crate) struct Wakers(Vec<Waker>);

impl Wakers {
    pub(crate) fn wake(self) {
        crate::sync::wake_each(self.0);
    }
}

impl Subscribers {
    pub(crate) fn subscribe(&self) -> EventStream {
        let mut ring = lock(&self.channel.ring);
        let reader = Reader {
            next: ring.next_seq,
            waker: None,
        };
        let id = match ring.free.pop() {
            Some(id) => {
                ring.subscribers[id] = Some(reader);
                id
            }
            None => {
                ring.subscribers.push(Some(reader));
                ring.subscribers.len() - 1
            }
        };
        ring.subscriber_count += 1;
        EventStream {
            channel: self.channel.clone(),
            id,
        }
    }

    /// Puts an event into every subscriber's buffer (builds it only if there is a subscriber),
    /// and returns the tasks to wake. Runs no user code.
    pub(crate) fn send(&self, event: impl FnOnce() -> Event) -> Wakers {
        let mut ring = lock(&self.channel.ring);
        if ring.subscriber_count == 0 {
            return Wakers::default();
        }
        if ring.events.len() == EVENT_BUFFER {
            ring.events.pop_front();
        }
        ring.events.push_back(event());
        ring.next_seq += 1;
        Wakers(
            ring.subscribers
                .iter_mut()
                .flatten()
                .filter_map(|reader| reader.waker.take())
                .collect(),
        )
    }
}

impl Drop for Subscribers {
    /// The breaker is gone: every stream ends once it has read what it holds.
    fn drop(&mut self) {
        let wakers = {
            let mut ring = lock(&self.channel.ring);
            ring.closed = true;
            ring.subscribers
                .iter_mut()
                .flatten()
                .filter_map(|reader| reader.waker.take())
                .collect()
        };
        Wakers(wakers).wake();
    }
}
