//! Future types.
//!
//! They are what [`CircuitBreaker::call`](crate::CircuitBreaker) returns; name them in a type
//! when a future must be stored:
//!
//! ```
//! use std::future::Ready;
//! use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
//! use tower_circuit_breaker::{CircuitBreakerLayer, DefaultClassify, future::ResponseFuture};
//!
//! type Inner = Ready<Result<u32, BoxError>>;
//! type Rejection = Ready<Result<u32, BoxError>>;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let layer = CircuitBreakerLayer::builder().build()?;
//! let mut svc = layer.layer(service_fn(|x: u32| std::future::ready(Ok::<_, BoxError>(x))));
//! let future: ResponseFuture<Inner, DefaultClassify, Rejection> = svc.ready().await?.call(7);
//! assert_eq!(future.await?, 7);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::BoxError;
use tower::timeout::error::Elapsed;

use crate::classify::{Classify, Completion, Outcome};
use crate::fallback::Answer;
use crate::state::lane::Lane;
use crate::state::word::Ticket;

pin_project! {
    /// Response future of [`CircuitBreaker`](crate::CircuitBreaker).
    ///
    /// It records the call's outcome when the inner future completes. Dropped before that (even
    /// unpolled), it records nothing and gives back the half-open probe permit it holds; so does a
    /// classifier that panics.
    ///
    /// When the call timeout fires, the inner future and the timer are dropped at once. When the
    /// inner future completes, it is kept (finished) with the timer until this future is dropped.
    /// Polling again after completion panics, without polling the inner future and without
    /// recording anything.
    pub struct ResponseFuture<F, C, R> {
        #[pin]
        kind: Kind<F, C, R>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C, R> {
        Called {
            #[pin]
            future: F,
            // The call timeout's timer (the deadline is the completion's), made on the first poll
            // that finds the inner future pending: a call answered at once never makes one, and
            // a future whose timer is still `None` moves without copying a `Sleep`.
            #[pin]
            timer: Option<Sleep>,
            // Taken when the outcome is recorded: `None` means done.
            recorder: Option<Recorder<C>>,
        },
        Rejected {
            #[pin]
            future: R,
        },
        Done,
    }
}

/// What a called future needs to record its outcome.
struct Recorder<C> {
    completion: Completion,
    classify: C,
}

/// The deadline of a call timeout started now, if tokio's timer can hold it: the timer rounds a
/// deadline up to the next millisecond, so one within a millisecond of the end of the clock's
/// range would overflow there. Such a timeout never fires.
pub(crate) fn deadline(timeout: Duration) -> Option<Instant> {
    let now = crate::state::clock::read();
    now.checked_add(timeout.checked_add(Duration::from_millis(1))?)?;
    Some(now + timeout)
}

impl<F, C, R> ResponseFuture<F, C, R> {
    pub(crate) fn called(future: F, completion: Completion, classify: C) -> Self {
        ResponseFuture {
            kind: Kind::Called {
                future,
                timer: None,
                recorder: Some(Recorder {
                    completion,
                    classify,
                }),
            },
        }
    }

    pub(crate) fn rejected(future: R) -> Self {
        ResponseFuture {
            kind: Kind::Rejected { future },
        }
    }
}

impl<F, C, R, T, E> Future for ResponseFuture<F, C, R>
where
    F: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
    R: Answer<T, E> + Future<Output = Result<T, R::Error>>,
{
    type Output = Result<T, R::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        let output = match kind.as_mut().project() {
            KindProj::Called {
                future,
                mut timer,
                recorder,
            } => {
                let Some(deadline) = recorder.as_ref().map(|r| r.completion.deadline()) else {
                    completed();
                };
                // The inner future first, so that a response wins a tie with the timeout.
                if let Poll::Ready(mut result) = future.poll(cx) {
                    // Taken first: if the classifier panics, the completion is dropped (a probe
                    // permit goes back) and a later poll does not poll the inner future again.
                    let Recorder {
                        completion,
                        classify,
                    } = recorder.take().expect("checked above");
                    classify.complete(result.as_mut().map_err(|e| &*e), completion);
                    // The inner future and the timer stay until this future is dropped: moving
                    // to `Done` here would drop the whole enum out of line on every call.
                    return Poll::Ready(result.map_err(R::error));
                }
                let Some(deadline) = deadline else {
                    return Poll::Pending;
                };
                if timer.is_none() {
                    timer.set(Some(tokio::time::sleep_until(deadline)));
                }
                match timer.as_pin_mut().map(|sleep| sleep.poll(cx)) {
                    Some(Poll::Ready(())) => {
                        if let Some(recorder) = recorder.take() {
                            recorder.completion.record(Outcome::Failure);
                        }
                        R::timed_out()
                    }
                    _ => return Poll::Pending,
                }
            }
            KindProj::Rejected { future } => return future.poll(cx),
            KindProj::Done => completed(),
        };
        // Timed out: drops the inner future (and the timer) now, not when the caller drops this
        // future.
        kind.set(Kind::Done);
        Poll::Ready(output)
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn completed() -> ! {
    panic!("ResponseFuture polled after completion")
}

impl<F, C, R> fmt::Debug for ResponseFuture<F, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Called { recorder: None, .. } | Kind::Done => "Done",
            Kind::Called { .. } => "Called",
            Kind::Rejected { .. } => "Rejected",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}

pin_project! {
    /// Response future of a fallback service: the fallback's future with its error boxed.
    ///
    /// ```
    /// use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
    /// use tower_circuit_breaker::CircuitBreakerLayer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), BoxError> {
    /// let fallback = service_fn(|_: u32| async { Ok::<_, std::io::Error>(0) });
    /// let layer = CircuitBreakerLayer::builder().build()?.with_fallback(fallback);
    /// layer.handle().force_open();
    /// let mut svc = layer.layer(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }));
    /// // While rejecting, the response future wraps a `FallbackFuture`.
    /// assert_eq!(svc.ready().await?.call(7).await?, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub struct FallbackFuture<F> {
        #[pin]
        inner: FallbackKind<F>,
    }
}

pin_project! {
    #[project = FallbackProj]
    enum FallbackKind<F> {
        Running {
            #[pin]
            future: F,
        },
        // The fallback's `poll_ready` failed.
        Failed {
            error: Option<BoxError>,
        },
        Done,
    }
}

impl<F> FallbackFuture<F> {
    pub(crate) fn new(future: F) -> Self {
        FallbackFuture {
            inner: FallbackKind::Running { future },
        }
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        FallbackFuture {
            inner: FallbackKind::Failed { error: Some(error) },
        }
    }
}

impl<F> crate::fallback::sealed::Sealed for FallbackFuture<F> {}

impl<F, T, E, E2> Answer<T, E> for FallbackFuture<F>
where
    F: Future<Output = Result<T, E2>>,
    E: Into<BoxError>,
{
    type Error = BoxError;

    #[inline]
    fn error(error: E) -> BoxError {
        error.into()
    }

    fn timed_out() -> Result<T, BoxError> {
        Err(Elapsed::new().into())
    }
}

impl<F, T, E> Future for FallbackFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut inner = self.project().inner;
        let output = match inner.as_mut().project() {
            FallbackProj::Running { future } => ready!(future.poll(cx)).map_err(Into::into),
            FallbackProj::Failed { error } => Err(error.take().unwrap_or_else(|| completed())),
            FallbackProj::Done => completed(),
        };
        // Drops the fallback's future now, and never polls it again.
        inner.set(FallbackKind::Done);
        Poll::Ready(output)
    }
}

impl<F> fmt::Debug for FallbackFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackFuture").finish_non_exhaustive()
    }
}

// ===== Admission =====

/// An admitted call's claim on the breaker, from `poll_ready` to the end of the call: the
/// breaker (through the admitting thread's lane, see `state::lane`) and the ticket. A guard:
/// dropped before its outcome is recorded (unused, cancelled, or unwound by a panic), it gives
/// back the half-open probe permit it holds, like tower's `OwnedSemaphorePermit`.
pub(crate) struct Admission {
    pub(crate) breaker: Arc<Lane>,
    /// Taken when the outcome is recorded.
    pub(crate) ticket: Option<Ticket>,
}

impl Admission {
    #[inline]
    pub(crate) fn new(breaker: Arc<Lane>, ticket: Ticket) -> Self {
        Admission {
            breaker,
            ticket: Some(ticket),
        }
    }
}

impl Drop for Admission {
    #[inline]
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.release(ticket);
        }
    }
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("ticket", &self.ticket)
            .finish_non_exhaustive()
    }
}
