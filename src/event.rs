//! Events a breaker emits, and the stream that delivers them.
//!
//! Events are for operators and integrations (logs, metrics, alerts): they report what the state
//! machine did, after it did it, in order, with the breaker's name and key and the numbers behind
//! each decision. They cost nothing while nobody listens: a transition or a rejection sees that
//! there is no subscriber and no callback, and moves on. They reach two kinds of listeners:
//!
//! * a stream, [`Handle::subscribe`](crate::Handle::subscribe): each subscriber gets a bounded
//!   buffer of its newest [`EVENT_BUFFER`] events; one that does not keep up loses the oldest and
//!   is told how many with [`Event::Lagged`]. The state machine never waits for a subscriber.
//!   Rejections, one event per rejected call, come only to the streams that ask for them
//!   ([`EventStream::with_rejections`]), so that a storm of them cannot push a subscriber's
//!   transitions out of its buffer;
//! * a callback, [`Builder::on_event`](crate::Builder::on_event), which sees every event,
//!   rejections included, as it happens, on the thread that caused it.
//!
//! A transition puts its event into every subscriber's buffer before it returns (under the
//! transition lock, so in transition order), but wakes the subscribers' tasks, and runs the
//! callback, only after releasing it: a waker or a callback is user code and may call back into
//! the breaker. Tokio's broadcast channel would wake them inside the send, so the channel is this
//! small one.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use std::collections::VecDeque;
use std::task::Waker;

use futures::Stream;
use tokio::time::Instant;

use crate::State;
use crate::sync::{Mutex, Ordering, lock};

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
///         Event::FailureRateExceeded { failure_rate, threshold, .. } => {
///             format!("failure rate {failure_rate} >= {threshold}")
///         }
///         Event::Rejected { state, .. } => format!("rejected while {state}"),
///         _ => "other".to_string(),
///     }
/// }
/// # let _ = describe;
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq)]
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
        /// The key of a keyed breaker.
        key: Option<Arc<str>>,
    },
    /// The failure rate of the closed window reached its threshold: reported just before the
    /// transition to Open it causes (in MetricsOnly, which never opens, once each time the rate
    /// crosses the threshold).
    #[non_exhaustive]
    FailureRateExceeded {
        /// Failed calls over recorded calls in the window, in `[0, 1]`.
        failure_rate: f64,
        /// The configured threshold it reached.
        threshold: f64,
        /// The recorded calls in the window.
        calls: u64,
        /// The breaker's name, if it has one.
        name: Option<Arc<str>>,
        /// The key of a keyed breaker.
        key: Option<Arc<str>>,
    },
    /// The slow-call rate of the closed window reached its threshold (as for
    /// [`FailureRateExceeded`](Event::FailureRateExceeded)).
    #[non_exhaustive]
    SlowCallRateExceeded {
        /// Slow calls over recorded calls in the window, in `[0, 1]`.
        slow_call_rate: f64,
        /// The configured threshold it reached.
        threshold: f64,
        /// The recorded calls in the window.
        calls: u64,
        /// The breaker's name, if it has one.
        name: Option<Arc<str>>,
        /// The key of a keyed breaker.
        key: Option<Arc<str>>,
    },
    /// A call was not permitted. Only for the callback and for streams that asked for
    /// rejections ([`EventStream::with_rejections`]); not ordered with the transitions.
    #[non_exhaustive]
    Rejected {
        /// The state that rejected it.
        state: State,
        /// When a probe will be admitted (`None`: nobody knows), as
        /// [`Rejected::retry_at`](crate::error::Rejected::retry_at).
        retry_at: Option<Instant>,
        /// Whether a fallback service answers it.
        fallback: bool,
        /// The breaker's name, if it has one.
        name: Option<Arc<str>>,
        /// The key of a keyed breaker.
        key: Option<Arc<str>>,
    },
    /// This subscriber did not keep up: it missed the `missed` events before the next one.
    #[non_exhaustive]
    Lagged {
        /// How many events were lost.
        missed: u64,
    },
}

impl Event {
    /// The name of the breaker that emitted it (`None` for an unnamed breaker, and for
    /// [`Lagged`](Event::Lagged)).
    ///
    /// ```
    /// use tower_circuit_breaker::{CircuitBreakerLayer, Event};
    ///
    /// let layer = CircuitBreakerLayer::builder()
    ///     .name("db")
    ///     .on_event(|event: &Event| assert_eq!(event.name(), Some("db")))
    ///     .build()?;
    /// layer.handle().force_open();
    /// # Ok::<(), tower_circuit_breaker::ConfigError>(())
    /// ```
    pub fn name(&self) -> Option<&str> {
        match self {
            Event::StateTransition { name, .. }
            | Event::FailureRateExceeded { name, .. }
            | Event::SlowCallRateExceeded { name, .. }
            | Event::Rejected { name, .. } => name.as_deref(),
            Event::Lagged { .. } => None,
        }
    }

    /// The key of the keyed breaker that emitted it.
    pub fn key(&self) -> Option<&str> {
        match self {
            Event::StateTransition { key, .. }
            | Event::FailureRateExceeded { key, .. }
            | Event::SlowCallRateExceeded { key, .. }
            | Event::Rejected { key, .. } => key.as_deref(),
            Event::Lagged { .. } => None,
        }
    }
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

impl EventStream {
    /// Also delivers an [`Event::Rejected`] for every rejected call, from now on.
    ///
    /// A rejection storm makes many events: a subscriber that does not keep up loses the oldest
    /// (transitions too) and is told how many with [`Event::Lagged`]. Subscribe twice to keep
    /// transitions apart from rejections.
    ///
    /// ```
    /// use futures::StreamExt;
    /// use tower_circuit_breaker::{CircuitBreakerLayer, Event, State};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = CircuitBreakerLayer::builder().build().unwrap();
    /// let mut rejections = layer.handle().subscribe().with_rejections();
    /// layer.handle().force_open();
    /// let svc = layer.layer(service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) }));
    /// assert!(svc.oneshot(()).await.is_err());
    /// assert!(matches!(rejections.next().await, Some(Event::StateTransition { .. })));
    /// match rejections.next().await {
    ///     Some(Event::Rejected { state, fallback, .. }) => {
    ///         assert_eq!((state, fallback), (State::ForcedOpen, false));
    ///     }
    ///     other => panic!("unexpected {other:?}"),
    /// }
    /// # }
    /// ```
    pub fn with_rejections(self) -> Self {
        let mut readers = lock(&self.channel.readers);
        if let Some(reader) = readers.slots[self.id].as_mut() {
            if !reader.rejections {
                reader.rejections = true;
                self.channel
                    .rejection_readers
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(readers);
        self
    }
}

impl Stream for EventStream {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        // Cloned before the lock and the replaced one dropped after it: wakers are user code.
        let waker = cx.waker().clone();
        let (next, replaced) = {
            let mut readers = lock(&self.channel.readers);
            let closed = readers.closed;
            let Some(reader) = readers.slots[self.id].as_mut() else {
                return Poll::Ready(None);
            };
            if reader.missed > 0 {
                let missed = std::mem::take(&mut reader.missed);
                (Poll::Ready(Some(Event::Lagged { missed })), None)
            } else if let Some(event) = reader.queue.pop_front() {
                (Poll::Ready(Some(event)), None)
            } else if closed {
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
            let mut readers = lock(&self.channel.readers);
            readers.free.push(self.id);
            let removed = readers.slots[self.id].take();
            self.channel.readers_count.fetch_sub(1, Ordering::Relaxed);
            if removed.as_ref().is_some_and(|reader| reader.rejections) {
                self.channel
                    .rejection_readers
                    .fetch_sub(1, Ordering::Relaxed);
            }
            removed
        };
        // Its events and its waker are dropped out of the lock (a waker is user code).
        drop(removed);
    }
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream").finish_non_exhaustive()
    }
}

/// The subscribers of one breaker: one slot each, with its own bounded buffer, so that what one
/// reads (or does not) never changes what another gets.
#[derive(Debug, Default)]
struct Readers {
    /// One slot per subscriber (`None`: free, listed in `free`).
    slots: Vec<Option<Reader>>,
    free: Vec<usize>,
    /// The breaker is gone: the streams end after the events they hold.
    closed: bool,
}

#[derive(Debug)]
struct Reader {
    /// The newest events not read yet, at most `EVENT_BUFFER`.
    queue: VecDeque<Event>,
    /// Events dropped from the front of `queue` since the last read.
    missed: u64,
    waker: Option<Waker>,
    /// Whether this subscriber asked for rejections.
    rejections: bool,
}

impl Reader {
    fn push(&mut self, event: &Event) {
        if self.queue.len() == EVENT_BUFFER {
            self.queue.pop_front();
            self.missed += 1;
        }
        self.queue.push_back(event.clone());
    }
}

#[derive(Debug, Default)]
struct Channel {
    readers: Mutex<Readers>,
    /// How many subscribers there are, and how many want rejections: read without the lock, so
    /// that nobody listening costs one load. Changed under the lock; a subscriber counts for the
    /// events sent after `subscribe` (or `with_rejections`) returned.
    readers_count: AtomicUsize,
    rejection_readers: AtomicUsize,
}

/// The subscribers of one breaker. The channel is made by the first subscription: most
/// breakers (a keyed layer's) never have one, and need not carry its room.
#[derive(Debug, Default)]
pub(crate) struct Subscribers {
    channel: OnceLock<Arc<Channel>>,
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
        let channel = self.channel.get_or_init(Arc::default);
        let mut readers = lock(&channel.readers);
        let reader = Reader {
            queue: VecDeque::new(),
            missed: 0,
            waker: None,
            rejections: false,
        };
        let id = match readers.free.pop() {
            Some(id) => {
                readers.slots[id] = Some(reader);
                id
            }
            None => {
                readers.slots.push(Some(reader));
                readers.slots.len() - 1
            }
        };
        channel.readers_count.fetch_add(1, Ordering::Relaxed);
        EventStream {
            channel: channel.clone(),
            id,
        }
    }

    /// Whether anybody subscribed (Relaxed: see `Channel`).
    #[inline]
    pub(crate) fn any(&self) -> bool {
        (self.channel.get()).is_some_and(|c| c.readers_count.load(Ordering::Relaxed) > 0)
    }

    /// Whether a subscriber asked for rejections (Relaxed: see `Channel`).
    #[inline]
    pub(crate) fn wants_rejections(&self) -> bool {
        (self.channel.get()).is_some_and(|c| c.rejection_readers.load(Ordering::Relaxed) > 0)
    }

    /// Puts an event into every subscriber's buffer and returns the tasks to wake. Runs no user
    /// code (cloning an event clones `Arc`s).
    pub(crate) fn send(&self, event: &Event) -> Wakers {
        self.deliver(event, false)
    }

    /// Puts a rejection's event into the buffers of the subscribers that asked for rejections.
    pub(crate) fn send_rejection(&self, event: &Event) -> Wakers {
        self.deliver(event, true)
    }

    fn deliver(&self, event: &Event, rejection: bool) -> Wakers {
        let Some(channel) = self.channel.get() else {
            return Wakers::default();
        };
        let mut readers = lock(&channel.readers);
        Wakers(
            readers
                .slots
                .iter_mut()
                .flatten()
                .filter(|reader| !rejection || reader.rejections)
                .filter_map(|reader| {
                    reader.push(event);
                    reader.waker.take()
                })
                .collect(),
        )
    }
}

impl Drop for Subscribers {
    /// The breaker is gone: every stream ends once it has read what it holds.
    fn drop(&mut self) {
        let Some(channel) = self.channel.get() else {
            return;
        };
        let wakers = {
            let mut readers = lock(&channel.readers);
            readers.closed = true;
            readers
                .slots
                .iter_mut()
                .flatten()
                .filter_map(|reader| reader.waker.take())
                .collect()
        };
        Wakers(wakers).wake();
    }
}
