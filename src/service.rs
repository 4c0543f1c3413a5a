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
    use tower::{Layer, Service, ServiceExt, service_fn};

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

    /// A time window of one minute (one bucket) that batches from its first outcome and never
    /// trips: its successes after a failure join the batch from `Completion::record`.
    fn batching_minute() -> CircuitBreakerLayer {
        CircuitBreakerLayer::builder()
            .sliding_window(Window::time(Duration::from_secs(60)).buckets(1))
            .minimum_calls(1)
            .failure_rate_threshold(1.0)
            .build()
            .unwrap()
    }

    /// A success that joins the batch inline is counted once: once in the window (not again by
    /// the lock or the batch after it) and once in the lifetime totals.
    #[tokio::test(start_paused = true)]
    async fn a_success_that_joins_the_batch_inline_counts_once_in_the_window_and_the_totals() {
        let layer = batching_minute();
        calls(&layer, &[false, true]); // under the lock: the batch stays open after the failure
        assert_eq!(during(|| calls(&layer, &[false; 50])), (50, 0), "batched");
        let m = layer.handle().metrics();
        assert_eq!((m.calls(), m.failed()), (52, 1));
        assert_eq!((m.totals().successful(), m.totals().failed()), (51, 1));
    }

    /// A call admitted before a reset and completed after it, while the new generation's batch
    /// is open, is stale: counted in the lifetime totals, never in the new window.
    #[tokio::test(start_paused = true)]
    async fn a_success_admitted_before_a_reset_never_joins_the_next_generations_batch() {
        let layer = batching_minute();
        calls(&layer, &[false, true]);
        let mut svc = layer.layer(service_fn(answer as fn(bool) -> Answer));
        let old = block_on(svc.ready()).unwrap().call(false); // admitted, not yet polled
        layer.handle().reset();
        calls(&layer, &[false, false]); // the first opens the new batch, the second joins it
        // Refused by the batch (another generation); the lock finds it stale.
        assert_eq!(during(|| block_on(old).unwrap()), (1, 1));
        let m = layer.handle().metrics();
        assert_eq!(m.calls(), 2, "the new generation's successes only");
        assert_eq!(m.totals().successful(), 4, "every call happened");
    }

    /// A success completed after its batch's bucket ended is recorded in its own bucket (the
    /// lock's), with the same clock reading: it is still in the window once the batch's bucket
    /// has left it.
    #[tokio::test(start_paused = true)]
    async fn a_success_after_its_batchs_bucket_counts_in_its_own_bucket_through_the_service() {
        let layer = CircuitBreakerLayer::builder()
            .sliding_window(Window::time(Duration::from_secs(60)).buckets(60))
            .minimum_calls(1)
            .failure_rate_threshold(1.0)
            .build()
            .unwrap();
        calls(&layer, &[false, false]); // at 0 s: the batch of bucket [0 s, 1 s), joined
        tokio::time::advance(Duration::from_millis(1_500)).await;
        calls(&layer, &[false]); // at 1.5 s: bucket 1
        tokio::time::advance(Duration::from_secs(59)).await;
        // 60.5 s: bucket 0 has left the window, bucket 1 has not.
        assert_eq!(layer.handle().metrics().calls(), 1);
    }

    /// Slow calls are timed (`started` is set), so a slow success never joins the batch from
    /// the inline path: it counts as slow in the window and in the totals.
    #[tokio::test(start_paused = true)]
    async fn a_slow_success_while_a_batch_is_open_counts_as_slow() {
        let layer = CircuitBreakerLayer::builder()
            .sliding_window(Window::time(Duration::from_secs(60)).buckets(1))
            .minimum_calls(1)
            .failure_rate_threshold(1.0)
            .slow_call_duration(Duration::from_secs(1))
            .slow_call_rate_threshold(1.0)
            .build()
            .unwrap();
        let svc = layer.layer(service_fn(|delay: u64| async move {
            tokio::time::sleep(Duration::from_secs(delay)).await;
            Ok::<(), &'static str>(())
        }));
        for delay in [0, 0, 2, 0, 2] {
            svc.clone().oneshot(delay).await.unwrap();
        }
        let m = layer.handle().metrics();
        assert_eq!((m.calls(), m.slow()), (5, 2));
        assert_eq!(m.totals().slow(), 2);
    }

    /// A reconfiguration from a count window to a time window while a batch is open: the
    /// batched successes are folded into the old window, which is replaced, and the new window
    /// counts only the successes after it, each once.
    #[tokio::test(start_paused = true)]
    async fn a_reconfiguration_to_a_time_window_while_a_batch_is_open_counts_each_success_once() {
        let layer = CircuitBreakerLayer::builder()
            .sliding_window(Window::count(10))
            .minimum_calls(1)
            .failure_rate_threshold(1.0)
            .build()
            .unwrap();
        let handle = layer.handle();
        calls(&layer, &[false, true]);
        assert_eq!(during(|| calls(&layer, &[false; 3])), (0, 0), "batched");
        let time = handle
            .config()
            .sliding_window(Window::time(Duration::from_secs(60)).buckets(1));
        handle.reconfigure(time).unwrap();
        assert_eq!(handle.metrics().calls(), 0, "a new window starts empty");
        calls(&layer, &[false; 4]); // the first to the lock, which opens a batch; 3 join it
        let m = handle.metrics();
        assert_eq!((m.calls(), m.failed()), (4, 0));
        assert_eq!(m.totals().successful(), 8);
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
