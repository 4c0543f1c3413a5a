use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{BoxError, Service};

use crate::classify::{Classify, Completion, DefaultClassify};
use crate::error::Rejected;
use crate::fallback::{Answer, Fallback, NoFallback};
use crate::future::{Admission, ResponseFuture};
use crate::handle::Handle;
use crate::readiness::Gate;
use crate::state::lane::Lanes;
use crate::state::waiters::Waiter;
use crate::state::word::Ticket;
use crate::state::{Decision, Rejection, State};

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
/// that is never used (the service dropped after `poll_ready`, or the inner service's
/// `poll_ready` panicked) is given back. The fallback's readiness error is answered from `call`,
/// not from `poll_ready`: a `Buffer` in front would take it for a dead service for good.
///
/// A `poll_ready` that returns `Pending` is woken by what it waited for (the inner service, or
/// the fallback while rejecting), and by every transition of the breaker, since each may change
/// what it should wait for.
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
    /// What `poll_ready` decided, for the next `call`.
    ready: Option<Readiness>,
    /// Where this clone waits for a transition while it is not ready (made on first use).
    waiter: Option<Waiter>,
    /// The readiness mode: wait, rather than reject, while the circuit rejects.
    gate: Option<Gate>,
}

/// What `poll_ready` decided.
#[derive(Debug)]
enum Readiness {
    /// Admitted: the inner service is ready. A probe permit goes back if this is dropped.
    Admitted(Admission),
    /// Rejected: the fallback is ready (or there is none).
    Rejected(Rejection),
    /// Rejected, and the fallback's `poll_ready` failed: `call` answers with the error.
    FallbackFailed(Rejection, BoxError),
}

impl<S, C, F> CircuitBreaker<S, C, F> {
    pub(crate) fn new(
        inner: S,
        breaker: Arc<Lanes>,
        classify: C,
        fallback: F,
        gate: Option<Gate>,
    ) -> Self {
        CircuitBreaker {
            inner,
            breaker,
            classify,
            fallback,
            ready: None,
            waiter: None,
            gate,
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

    /// Waits for the next transition (and, while open, for the end of the open interval).
    #[cold]
    #[inline(never)]
    fn wait(&mut self, cx: &mut Context<'_>, decided: &Decision) {
        let waiter = self
            .waiter
            .get_or_insert_with(|| Waiter::new(self.breaker.clone()));
        match decided {
            Decision::Admit(ticket) => waiter.wait(cx, ticket.generation()),
            Decision::Reject(rejection) => {
                waiter.wait(cx, rejection.generation);
                // Open: until the interval ends; Closed (throttled): until the throttle's
                // window moves on, when the next draw may admit the call.
                if let (State::Open | State::Closed, Some(at)) =
                    (rejection.state, rejection.retry_at)
                {
                    waiter.wake_at(cx, at);
                }
            }
        }
    }

    /// `poll_ready` of a call that will be rejected: the fallback's readiness decides.
    #[inline]
    fn poll_fallback<Req, Res, E>(
        &mut self,
        rejection: Rejection,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), F::Error>>
    where
        F: Fallback<Req, Res, E>,
    {
        let ready = match self.fallback.poll_ready(cx) {
            Poll::Ready(Ok(())) => Readiness::Rejected(rejection),
            // Answered from `call`: an error from `poll_ready` would poison a `Buffer` in front.
            Poll::Ready(Err(e)) => Readiness::FallbackFailed(rejection, e),
            Poll::Pending => {
                self.wait(cx, &Decision::Reject(rejection));
                return Poll::Pending;
            }
        };
        self.ready = Some(ready);
        Poll::Ready(Ok(()))
    }

    /// Counts, traces and announces a rejection (`fallback`: a fallback service answers it).
    fn rejected(&self, rejection: Rejection, fallback: bool) -> Rejected {
        self.breaker.reject(rejection, fallback);
        let name = self.breaker.name().cloned();
        Rejected::new(rejection.state, rejection.retry_at, name)
    }
}

impl<S, C, F, Req> Service<Req> for CircuitBreaker<S, C, F>
where
    S: Service<Req>,
    C: Classify<S::Response, S::Error> + Clone,
    F: Fallback<Req, S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = F::Error;
    type Future = ResponseFuture<S::Future, C, F::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), F::Error>> {
        if self.ready.is_some() {
            // Readiness is stable until `call` uses it.
            return Poll::Ready(Ok(()));
        }
        let ticket = match self.breaker.admit(&mut self.breaker.now()) {
            Decision::Admit(ticket) => ticket,
            Decision::Reject(rejection) => {
                let Some(gate) = self.gate.clone() else {
                    return self.poll_fallback::<Req, S::Response, S::Error>(rejection, cx);
                };
                // The readiness mode: wait until a probe is possible. Registered before the
                // panic group is read, so that a member's transition after the read wakes us.
                self.wait(cx, &Decision::Reject(rejection));
                if !gate.lets_through(self.breaker.breaker()) {
                    return Poll::Pending;
                }
                // The group panics: through, unrecorded.
                Ticket::unrecorded(rejection.generation)
            }
        };
        // Held from here: if the inner service panics, a probe permit goes back.
        let admission = Admission::new(self.breaker.lane(), ticket);
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                self.ready = Some(Readiness::Admitted(admission));
                Poll::Ready(Ok(()))
            }
            // The admission is dropped: a probe permit goes back.
            Poll::Ready(Err(e)) => Poll::Ready(Err(<F::Future as Answer<_, _>>::error(e))),
            Poll::Pending => {
                drop(admission);
                self.wait(cx, &Decision::Admit(ticket));
                Poll::Pending
            }
        }
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        let ready = self.ready.take().unwrap_or_else(|| {
            // `call` without `poll_ready` breaks the Service contract; decide now rather than
            // panic, and leave the inner service to enforce its own readiness.
            match self.breaker.admit(&mut self.breaker.now()) {
                Decision::Admit(ticket) => {
                    Readiness::Admitted(Admission::new(self.breaker.lane(), ticket))
                }
                Decision::Reject(rejection) => Readiness::Rejected(rejection),
            }
        });
        match ready {
            Readiness::Admitted(admission) => {
                let deadline = self.breaker.call_timeout.and_then(crate::future::deadline);
                let completion =
                    Completion::start(admission, self.breaker.tracks_duration, deadline);
                let future = self.inner.call(request);
                ResponseFuture::called(future, completion, self.classify.clone())
            }
            Readiness::Rejected(rejection) => {
                let rejected = self.rejected(rejection, F::ANSWERS);
                ResponseFuture::rejected(self.fallback.call(request, rejected))
            }
            Readiness::FallbackFailed(rejection, error) => {
                let rejected = self.rejected(rejection, false);
                ResponseFuture::rejected(self.fallback.call_failed(error, rejected))
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
            ready: None,
            waiter: None,
            gate: self.gate.clone(),
        }
    }
}

impl<S: fmt::Debug, C, F> fmt::Debug for CircuitBreaker<S, C, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("breaker", &self.breaker)
            .field("ready", &self.ready)
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::future::{Ready, ready};
    use std::time::Duration;

    use futures::executor::block_on;
    use tower::{Layer, ServiceExt, service_fn};

    use crate::state::clock::counts::during;
    use crate::{CircuitBreakerLayer, Window};

    type Answer = Ready<Result<(), &'static str>>;

    fn answer(fail: bool) -> Answer {
        ready(if fail { Err("down") } else { Ok(()) })
    }

    fn calls(layer: &CircuitBreakerLayer, outcomes: &[bool]) {
        let svc = layer.layer(service_fn(answer as fn(bool) -> Answer));
        for &fail in outcomes {
            let _ = block_on(svc.clone().oneshot(fail));
        }
    }

    #[test]
    fn a_healthy_closed_call_takes_no_lock_and_reads_no_clock() {
        let layer = CircuitBreakerLayer::builder()
            .sliding_window(Window::count(10))
            .build()
            .unwrap();
        calls(&layer, &[false; 10]); // a full window of successes
        assert_eq!(during(|| calls(&layer, &[false; 100])), (0, 0));
    }

    #[test]
    fn a_call_timeout_reads_the_clock_once_per_call_and_takes_no_lock() {
        let layer = CircuitBreakerLayer::builder()
            .sliding_window(Window::count(10))
            .call_timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        calls(&layer, &[false; 10]);
        assert_eq!(during(|| calls(&layer, &[false; 100])), (100, 0));
    }

    #[test]
    fn a_failure_takes_the_lock_once_and_the_successes_after_it_batch() {
        let layer = CircuitBreakerLayer::builder()
            .sliding_window(Window::count(10))
            .minimum_calls(10)
            .build()
            .unwrap();
        calls(&layer, &[false; 10]);
        assert_eq!(during(|| calls(&layer, &[true])), (0, 1));
        // The window holds a failure: successes batch, without the lock, until the one that
        // pushes it out, which the lock records: the window is then full of successes.
        assert_eq!(during(|| calls(&layer, &[false; 9])), (0, 0));
        assert_eq!(during(|| calls(&layer, &[false])), (0, 1));
        assert_eq!(during(|| calls(&layer, &[false; 10])), (0, 0));
        assert_eq!(layer.handle().metrics().failure_rate(), Some(0.0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_that_finds_its_batchs_bucket_over_reads_the_clock_once() {
        let layer = CircuitBreakerLayer::builder()
            .sliding_window(Window::time(Duration::from_secs(10)).buckets(10))
            .minimum_calls(1)
            .build()
            .unwrap();
        calls(&layer, &[false; 2]); // the first success opens a batch, the second joins it
        assert_eq!(during(|| calls(&layer, &[false])), (1, 0));
        tokio::time::advance(Duration::from_secs(1)).await;
        // The batch refuses it (a later bucket): the lock records it, with the same reading.
        assert_eq!(during(|| calls(&layer, &[false])), (1, 1));
    }

    #[test]
    fn a_time_window_reads_the_clock_and_takes_the_lock_for_every_outcome() {
        let layer = CircuitBreakerLayer::builder()
            .sliding_window(Window::time(Duration::from_secs(10)))
            .build()
            .unwrap();
        assert_eq!(during(|| calls(&layer, &[false; 10])), (10, 10));
    }
}
