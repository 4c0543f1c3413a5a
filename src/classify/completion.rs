//! The breaker's claim on one dispatched call, completed with its outcome.

use std::fmt;

use tokio::time::Instant;

use crate::Outcome;
use crate::future::Admission;
use crate::state::clock::Now;
use crate::state::word::Ticket;

/// One dispatched call's claim on its breaker: completed with the call's [`Outcome`], or dropped.
///
/// [`Classify::complete`](crate::Classify::complete) gets it with the call's result. It records
/// the outcome at once, or moves the completion into the response (a body that carries it) to
/// record it at the end of the stream. It carries the generation that admitted the call (a result that
/// arrives after the state changed is stale and ignored), the half-open probe permit if the call
/// is a probe, and the call's start (so that a slow call is timed to the moment of its outcome).
///
/// Dropped without an outcome (a body dropped before its end, a panic), it records nothing and
/// gives the probe permit back. It is `Send` and `Sync`.
///
/// ```
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_circuit_breaker::{CircuitBreakerLayer, Classify, Completion, Outcome};
///
/// /// Records every call as ignored (for the example's sake), through its completion.
/// #[derive(Clone)]
/// struct IgnoreAll;
///
/// impl<Res, E> Classify<Res, E> for IgnoreAll {
///     fn classify(&self, _: Result<&Res, &E>) -> Outcome {
///         Outcome::Ignored
///     }
///
///     fn complete(&self, _: Result<&mut Res, &E>, completion: Completion) {
///         completion.record(Outcome::Ignored);
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = CircuitBreakerLayer::builder().classify(IgnoreAll).build().unwrap();
/// let svc = layer.layer(service_fn(|_: ()| async { Err::<(), _>("down") }));
/// assert!(svc.oneshot(()).await.is_err());
/// assert_eq!(layer.handle().metrics().calls(), 0);
/// # }
/// ```
pub struct Completion {
    admission: Admission,
    /// When the call was dispatched, in nanoseconds since the breaker's creation (slow calls).
    started: Option<u64>,
    /// When the call times out ([`call_timeout`](crate::Builder::call_timeout)), fixed in `call`.
    deadline: Option<Instant>,
}

impl Completion {
    /// Dispatches an admitted call, noting the time when slow calls are tracked.
    #[inline]
    pub(crate) fn start(
        admission: Admission,
        tracks_duration: bool,
        deadline: Option<Instant>,
    ) -> Self {
        let started = tracks_duration.then(|| admission.breaker.now().get());
        Completion {
            admission,
            started,
            deadline,
        }
    }

    /// When the call times out, if a call timeout is configured.
    #[inline]
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Records the call's outcome.
    #[inline]
    pub fn record(mut self, outcome: Outcome) {
        let Some(ticket) = self.admission.ticket.take() else {
            return;
        };
        // One clock, read at most once, for the batch and for `complete` after it.
        let now = &mut self.admission.breaker.now();
        // The common case, inline: a timely success in a healthy closed breaker changes nothing,
        // or joins a batch (`started` is set only when durations are needed).
        if self.started.is_none() && self.admission.breaker.absorbs(ticket, outcome, now) {
            return;
        }
        self.complete(ticket, outcome, None, now);
    }

    /// Records a failure whose upstream asked not to be called again before `not_before` (an
    /// HTTP `Retry-After`, gRPC's `grpc-retry-pushback-ms`). If this failure opens the circuit,
    /// it stays open at least until then, but no longer than
    /// [`max_retry_after`](crate::Builder::max_retry_after) allows.
    ///
    /// ```
    /// # use std::time::Duration;
    /// use tokio::time::Instant;
    /// use tower::{Layer, ServiceExt, service_fn};
    /// use tower_circuit_breaker::{CircuitBreakerLayer, Classify, Completion, Outcome, State};
    ///
    /// /// An overloaded upstream's answer: come back in this many seconds.
    /// #[derive(Debug)]
    /// struct Overloaded(u64);
    /// # impl std::fmt::Display for Overloaded {
    /// #     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "overloaded") }
    /// # }
    /// # impl std::error::Error for Overloaded {}
    ///
    /// #[derive(Clone)]
    /// struct Pushback;
    ///
    /// impl Classify<(), Overloaded> for Pushback {
    ///     fn classify(&self, result: Result<&(), &Overloaded>) -> Outcome {
    ///         if result.is_ok() { Outcome::Success } else { Outcome::Failure }
    ///     }
    ///
    ///     fn complete(&self, result: Result<&mut (), &Overloaded>, completion: Completion) {
    ///         match result {
    ///             Err(Overloaded(secs)) => {
    ///                 completion.fail_until(Instant::now() + Duration::from_secs(*secs))
    ///             }
    ///             Ok(_) => completion.record(Outcome::Success),
    ///         }
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let layer = CircuitBreakerLayer::builder()
    ///     .consecutive_failures(1)
    ///     .open_duration(Duration::from_secs(5))
    ///     .classify(Pushback)
    ///     .build()
    ///     .unwrap();
    /// let svc = layer.layer(service_fn(|secs: u64| async move { Err::<(), _>(Overloaded(secs)) }));
    /// let _ = svc.oneshot(60).await;
    /// tokio::time::advance(Duration::from_secs(30)).await;
    /// assert_eq!(layer.handle().state(), State::Open, "60 s asked, not the 5 s configured");
    /// # }
    /// ```
    pub fn fail_until(mut self, not_before: Instant) {
        if let Some(ticket) = self.admission.ticket.take() {
            let breaker = &self.admission.breaker;
            let not_before = breaker.nanos_at(not_before);
            self.complete(
                ticket,
                Outcome::Failure,
                Some(not_before),
                &mut breaker.now(),
            );
        }
    }

    #[inline(never)]
    fn complete(
        &self,
        ticket: Ticket,
        outcome: Outcome,
        not_before: Option<u64>,
        now: &mut Now<'_>,
    ) {
        let breaker = &self.admission.breaker;
        breaker.complete(ticket, outcome, self.started, not_before, now);
    }
}

impl fmt::Debug for Completion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completion")
            .field("admission", &self.admission)
            .field("started", &self.started)
            .field("deadline", &self.deadline)
            .finish()
    }
}
