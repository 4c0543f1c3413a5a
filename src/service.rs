use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{BoxError, Service};

use crate::classify::{Classify, DefaultClassify};
use crate::error::Rejected;
use crate::fallback::{Fallback, NoFallback};
use crate::future::{Admission, Permit, ResponseFuture};
use crate::handle::Handle;
use crate::state::lane::Lanes;
use crate::state::waiters::Waiter;
use crate::state::word::Word;
use crate::state::{Decision, Rejection, Ticket};

/// A service guarded by a circuit breaker; made by [`CircuitBreakerLayer`](crate::CircuitBreakerLayer).
///
/// # Where a call is rejected
///
/// `poll_ready` decides admission first. When the call will be admitted it then polls the inner
/// service; when the call will be rejected it returns `Ready(Ok(()))` at once, without polling the
/// inner service (or polls the fallback's readiness instead), and `call` returns the rejection.
/// An open circuit is never an error from `poll_ready`: `Buffer`, balancers and tonic treat such an
/// error as a dead service and discard it, while the breaker only says "not now".
///
/// The decision, and a half-open probe permit with it, is carried from `poll_ready` to `call`, as
/// tower's `ConcurrencyLimit` carries its semaphore permit. A clone starts without one. A permit
/// that is never used (the service dropped after `poll_ready`) is given back.
///
/// ```
/// use tower::{Layer, Service, ServiceExt, service_fn};
/// use tower_circuit_breaker::{CircuitBreakerLayer, State};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower::BoxError> {
/// let layer = CircuitBreakerLayer::builder().build()?;
/// let mut svc = layer.layer(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x * 2) }));
///
/// // Clones share the breaker.
/// let other = svc.clone();
/// assert_eq!(svc.ready().await?.call(21).await?, 42);
/// assert_eq!(other.handle().metrics().calls(), 1);
/// assert_eq!(svc.get_ref().clone().oneshot(1).await?, 2); // the inner service itself
/// assert_eq!(svc.handle().state(), State::Closed);
/// # Ok(())
/// # }
/// ```
pub struct CircuitBreaker<S, C = DefaultClassify, F = NoFallback> {
    inner: S,
    breaker: Arc<Lanes>,
    classify: C,
    fallback: F,
    /// What `poll_ready` decided, for the next `call`: at most one of the three is set.
    ///
    /// A ticket that holds nothing (Closed, MetricsOnly, Disabled) is kept alone, one word, and
    /// the lane is taken in `call`: the inline part of `poll_ready` stays small. A probe permit is
    /// kept with its lane (`admitted`), so that it is given back if the service is dropped unused.
    /// Separate fields, not one enum: a larger enum is copied out with vector loads that cannot
    /// be forwarded from the narrower stores that just wrote it (a store-forwarding stall
    /// measured at about half of the closed path's time).
    ticket: Option<Ticket>,
    admitted: Option<Admission>,
    rejected: Option<Rejection>,
    /// Where this clone waits to be woken when the circuit opens while its inner service is not
    /// ready (made on first use).
    waiter: Option<Waiter>,
}

impl<S, C, F> CircuitBreaker<S, C, F> {
    pub(crate) fn new(inner: S, breaker: Arc<Lanes>, classify: C, fallback: F) -> Self {
        CircuitBreaker {
            inner,
            breaker,
            classify,
            fallback,
            ticket: None,
            admitted: None,
            rejected: None,
            waiter: None,
        }
    }

    /// A handle to read and control this service's breaker.
    pub fn handle(&self) -> Handle {
        Handle::new(self.breaker.breaker().clone())
    }

    /// Gets a reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Gets a mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service. A permit taken by `poll_ready` is given back.
    pub fn into_inner(self) -> S {
        self.inner
    }

    fn decide(&self) -> Decision {
        self.breaker.admit(&mut self.breaker.now())
    }

    /// `poll_ready` for every case but a closed breaker with a ready inner service.
    #[inline(never)]
    fn poll_ready_slow<Req>(
        &mut self,
        word: Word,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), BoxError>>
    where
        S: Service<Req>,
        S::Error: Into<BoxError>,
        F: Fallback<Req, S::Response>,
    {
        match self.breaker.admit_from(word, &mut self.breaker.now()) {
            Decision::Admit(ticket) => match self.inner.poll_ready(cx) {
                Poll::Ready(Ok(())) if ticket.is_probe() => {
                    self.admitted = Some(Admission::new(self.breaker.lane(), ticket));
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Ok(())) => {
                    self.ticket = Some(ticket);
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Err(e)) => self.not_ready(ticket, Some(e), cx),
                Poll::Pending => self.not_ready(ticket, None::<S::Error>, cx),
            },
            Decision::Reject(rejection) => {
                let ready = self.fallback.poll_ready(cx);
                if let Poll::Ready(Ok(())) = ready {
                    self.rejected = Some(rejection);
                }
                ready
            }
        }
    }

    /// An admitted call whose inner service failed (`Some(error)`) or is not ready (`None`):
    /// gives the ticket back.
    #[cold]
    #[inline(never)]
    fn not_ready<E: Into<BoxError>>(
        &mut self,
        ticket: Ticket,
        error: Option<E>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), BoxError>> {
        self.breaker.release(ticket);
        match error {
            Some(e) => Poll::Ready(Err(e.into())),
            // Not ready: hold nothing while waiting, and decide again on the next poll. The
            // inner service wakes this task when it is ready, and the breaker when the
            // circuit opens meanwhile (the call is then rejected without waiting longer).
            None => {
                let waiter = self
                    .waiter
                    .get_or_insert_with(|| Waiter::new(self.breaker.clone()));
                if waiter.register(cx.waker()) {
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
        }
    }
}

impl<S, C, F, Req> Service<Req> for CircuitBreaker<S, C, F>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
    F: Fallback<Req, S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C, F::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.ticket.is_some() || self.admitted.is_some() || self.rejected.is_some() {
            // Readiness is stable until `call` uses it.
            return Poll::Ready(Ok(()));
        }
        // The common case inline: a closed breaker and a ready inner service. Everything else
        // (another state, an inner service that is not ready) is decided out of line.
        let ticket = match self.breaker.admit_recorded() {
            Ok(ticket) => ticket,
            Err(word) => return self.poll_ready_slow(word, cx),
        };
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                self.ticket = Some(ticket);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => self.not_ready(ticket, Some(e), cx),
            Poll::Pending => self.not_ready(ticket, None::<S::Error>, cx),
        }
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        // At most one of the three is set; the closed breaker's ticket, the common case, first.
        let decision = match self.ticket.take() {
            Some(ticket) => Ok(Admission::new(self.breaker.lane(), ticket)),
            None => match self.admitted.take() {
                Some(admission) => Ok(admission),
                None => match self.rejected.take() {
                    Some(rejection) => Err(rejection),
                    // `call` without `poll_ready` breaks the Service contract; decide now rather
                    // than panic, and leave the inner service to enforce its own readiness.
                    None => match self.decide() {
                        Decision::Admit(ticket) => Ok(Admission::new(self.breaker.lane(), ticket)),
                        Decision::Reject(rejection) => Err(rejection),
                    },
                },
            },
        };
        match decision {
            Ok(admission) => {
                let lanes = &*self.breaker;
                let permit = Permit::start(admission, lanes.tracks_duration);
                // A deadline past what the clock can represent is never reached: no timer.
                let deadline = lanes
                    .call_timeout
                    .and_then(|timeout| tokio::time::Instant::now().checked_add(timeout));
                let future = self.inner.call(request);
                ResponseFuture::called(future, deadline, permit, self.classify.clone())
            }
            Err(rejection) => {
                self.breaker.count_rejection();
                let name = self.breaker.name();
                tracing::debug!(
                    breaker = name.map_or("", |n| &**n),
                    state = %rejection.state,
                    retry_after = ?rejection.retry_after,
                    "call rejected"
                );
                let rejected = Rejected::new(rejection.state, rejection.retry_after, name.cloned());
                ResponseFuture::rejected(self.fallback.call(request, rejected))
            }
        }
    }
}

impl<S: Clone, C: Clone, F: Clone> Clone for CircuitBreaker<S, C, F> {
    /// A clone shares the breaker, but not the readiness of `self`: it must be polled itself.
    fn clone(&self) -> Self {
        CircuitBreaker {
            inner: self.inner.clone(),
            breaker: self.breaker.clone(),
            classify: self.classify.clone(),
            fallback: self.fallback.clone(),
            ticket: None,
            admitted: None,
            rejected: None,
            waiter: None,
        }
    }
}

impl<S: fmt::Debug, C, F> fmt::Debug for CircuitBreaker<S, C, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("breaker", &self.breaker)
            .field("ticket", &self.ticket)
            .field("admitted", &self.admitted)
            .field("rejected", &self.rejected)
            .finish_non_exhaustive()
    }
}
