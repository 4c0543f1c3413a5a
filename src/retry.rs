//! A `tower::retry::Policy` that never retries a breaker's rejection.
//!
//! Retrying a call the breaker rejected is rejected again at once: it costs a little, tells
//! nothing, and a retry loop turns one rejection into many. [`RespectBreaker`] wraps any retry
//! policy: it never retries a [`Rejected`] (or an error that wraps one). With
//! [`with_hints`](RespectBreaker::with_hints) (`HttpHints`, `GrpcHints`) it reads responses too:
//! it never retries a response that a breaker's response mode made, and when it does retry a
//! response that carries a "come back later" hint (HTTP `Retry-After`), it waits at least that
//! long. Without hints, a breaker's 503 is a response like any other to the wrapped policy.
//!
//! # Where to put the retry
//!
//! * **Retry outside the breaker** (`ServiceBuilder::new().retry(..).layer(breaker)`): every
//!   attempt is a call the breaker counts, so a burst of retried failures opens the circuit
//!   sooner, and once it is open the retries stop at once (with this policy). Budget the
//!   retries with `tower::retry::budget::TpsBudget` so that retries stay a fraction of the
//!   traffic. This is the order we recommend: the breaker sees the dependency as it is.
//! * **Breaker outside the retry** (`ServiceBuilder::new().layer(breaker).retry(..)`): the
//!   breaker records one outcome per logical request, a success if any attempt succeeded. The
//!   failure rate then measures what callers experience, not the dependency, and the retries
//!   themselves are never rejected.
//!
//! ```
//! use std::future::{Ready, ready};
//! use tower::retry::Policy;
//! use tower::{BoxError, Layer, ServiceBuilder, ServiceExt, service_fn};
//! use tower_circuit_breaker::{CircuitBreakerLayer, error::Rejected, retry::RespectBreaker};
//!
//! /// Retries every error up to `left` times.
//! #[derive(Clone)]
//! struct Attempts { left: usize }
//!
//! impl<Req: Clone, Res> Policy<Req, Res, BoxError> for Attempts {
//!     type Future = Ready<()>;
//!     fn retry(&mut self, _: &mut Req, result: &mut Result<Res, BoxError>) -> Option<Ready<()>> {
//!         (result.is_err() && self.left > 0).then(|| { self.left -= 1; ready(()) })
//!     }
//!     fn clone_request(&mut self, req: &Req) -> Option<Req> { Some(req.clone()) }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let breaker = CircuitBreakerLayer::builder().build().unwrap();
//! breaker.handle().force_open();
//! let svc = ServiceBuilder::new()
//!     .retry(RespectBreaker::new(Attempts { left: 3 }))
//!     .layer(breaker.clone())
//!     .service(service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) }));
//! let err = svc.oneshot(()).await.unwrap_err();
//! assert!(err.is::<Rejected>());
//! assert_eq!(breaker.handle().metrics().not_permitted(), 1, "not retried");
//! # }
//! ```

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::retry::Policy;

use crate::error::Rejected;

/// What a response says to a retry: whether a breaker made it, and how long the upstream asked
/// to wait. Implemented for every response type by [`NoHints`] (responses say nothing), and for
/// `http::Response` by `HttpHints` (feature `http`).
pub trait Hints<Res> {
    /// Whether `response` must not be retried: a breaker's answer to a rejected call, or an
    /// upstream's "do not retry" (gRPC's negative `grpc-retry-pushback-ms`).
    fn never_retry(&self, response: &Res) -> bool;

    /// How long the upstream asked callers to wait before the next attempt.
    fn retry_after(&self, response: &Res) -> Option<Duration>;
}

/// Responses say nothing to a retry: only errors are looked at.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHints;

impl<Res> Hints<Res> for NoHints {
    fn never_retry(&self, _: &Res) -> bool {
        false
    }

    fn retry_after(&self, _: &Res) -> Option<Duration> {
        None
    }
}

/// Wraps a `tower::retry::Policy`: never retries a breaker's rejection, and waits at least the
/// upstream's `Retry-After` before retrying a response that carries one (at most
/// [`max_wait`](Self::max_wait), 300 s by default). See the [module docs](self).
#[derive(Clone, Debug)]
pub struct RespectBreaker<P, H = NoHints> {
    inner: P,
    hints: H,
    max_wait: Duration,
}

impl<P> RespectBreaker<P> {
    /// Wraps `policy`; rejections are recognised in errors.
    pub fn new(policy: P) -> Self {
        RespectBreaker {
            inner: policy,
            hints: NoHints,
            max_wait: Duration::from_secs(300),
        }
    }
}

impl<P, H> RespectBreaker<P, H> {
    /// Reads responses with `hints` too (a breaker's 503, `Retry-After`).
    pub fn with_hints<H2>(self, hints: H2) -> RespectBreaker<P, H2> {
        RespectBreaker {
            inner: self.inner,
            hints,
            max_wait: self.max_wait,
        }
    }

    /// The longest wait a `Retry-After` can impose before a retry.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// The wrapped policy.
    pub fn get_ref(&self) -> &P {
        &self.inner
    }
}

impl<P, H, Req, Res, E> Policy<Req, Res, E> for RespectBreaker<P, H>
where
    P: Policy<Req, Res, E>,
    H: Hints<Res>,
    E: 'static,
{
    type Future = RetryFuture<P::Future>;

    fn retry(&mut self, request: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        let wait = match &*result {
            Err(e) if Rejected::is_in(e) => return None,
            Ok(response) if self.hints.never_retry(response) => return None,
            Ok(response) => self.hints.retry_after(response),
            Err(_) => None,
        };
        let backoff = self.inner.retry(request, result)?;
        let floor = wait.map(|wait| tokio::time::sleep(wait.min(self.max_wait)));
        Some(RetryFuture {
            backoff: Some(backoff),
            floor,
        })
    }

    fn clone_request(&mut self, request: &Req) -> Option<Req> {
        self.inner.clone_request(request)
    }
}

pin_project! {
    /// The wait before a retry: the wrapped policy's, and at least the upstream's `Retry-After`.
    #[derive(Debug)]
    pub struct RetryFuture<F> {
        // `None` once it completed.
        #[pin]
        backoff: Option<F>,
        #[pin]
        floor: Option<Sleep>,
    }
}

impl<F: Future<Output = ()>> Future for RetryFuture<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if let Some(backoff) = this.backoff.as_mut().as_pin_mut() {
            if backoff.poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.backoff.set(None);
        }
        if let Some(floor) = this.floor.as_mut().as_pin_mut() {
            if floor.poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.floor.set(None);
        }
        Poll::Ready(())
    }
}
