//! What a call gets when the circuit rejects it.
//!
//! By default a rejected call fails with [`Rejected`]. With
//! [`CircuitBreakerLayer::with_fallback`](crate::CircuitBreakerLayer::with_fallback) it goes to a
//! fallback service instead (a backup provider, a cache, a degraded answer). While the breaker
//! rejects, the fallback's `poll_ready` is polled instead of the inner service's, so a dependency
//! that is down, or never ready, cannot hold the fallback up.
//!
//! A response mode answers rejections with a response of the inner service's own type instead,
//! and keeps its error type (axum needs `Infallible`): with the `http` feature,
//! `CircuitBreakerLayer::with_http_responses` answers `503 Service Unavailable`.
//!
//! The [`Fallback`] trait is sealed: [`NoFallback`], [`WithFallback`] and the response modes are
//! its only implementations, and they appear in the type of the service. Each decides the
//! service's error type: [`tower::BoxError`] for the first two, the inner service's own error for
//! a response mode.

use std::future::{Ready, ready};
use std::task::{Context, Poll};

use tower::timeout::error::Elapsed;
use tower::{BoxError, Service};

use crate::error::Rejected;
use crate::future::FallbackFuture;

pub(crate) mod sealed {
    pub trait Sealed {}
}

/// How a rejected call is answered (sealed): [`NoFallback`], [`WithFallback`] or a response mode.
///
/// It appears in bounds only; write it as in:
///
/// ```
/// use tower::Service;
/// use tower_circuit_breaker::{CircuitBreaker, Classify, fallback::Fallback};
///
/// fn assert_service<S, C, F>(_: &CircuitBreaker<S, C, F>)
/// where
///     S: Service<u32>,
///     C: Classify<S::Response, S::Error> + Clone,
///     F: Fallback<u32, S::Response, S::Error>,
/// {
/// }
/// # let _ = assert_service::<tower::util::ServiceFn<fn(u32) -> std::future::Ready<Result<u32, std::io::Error>>>, tower_circuit_breaker::DefaultClassify, tower_circuit_breaker::fallback::NoFallback>;
/// ```
pub trait Fallback<Req, Res, E>: sealed::Sealed {
    /// The service's error type: [`tower::BoxError`], or the inner service's `E` for a response
    /// mode.
    type Error;

    /// The future of a rejected call.
    type Future: Answer<Res, E, Error = Self::Error> + Future<Output = Result<Res, Self::Error>>;

    /// Whether a rejected call can be answered now.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>>;

    /// Answers a rejected call.
    fn call(&mut self, request: Req, rejected: Rejected) -> Self::Future;

    /// Answers a rejected call whose fallback failed to get ready with `error`.
    fn call_failed(&mut self, error: BoxError, rejected: Rejected) -> Self::Future;
}

/// How the future of a rejected call also answers for the admitted ones (sealed): the inner
/// service's error, and a call timeout, in the service's error type.
pub trait Answer<T, E>: sealed::Sealed {
    /// The service's error type.
    type Error;

    /// The inner service's error.
    fn error(error: E) -> Self::Error;

    /// The answer to a call that outlived
    /// [`call_timeout`](crate::Builder::call_timeout).
    fn timed_out() -> Result<T, Self::Error>;
}

impl<T> sealed::Sealed for Ready<Result<T, BoxError>> {}

impl<T, E: Into<BoxError>> Answer<T, E> for Ready<Result<T, BoxError>> {
    type Error = BoxError;

    #[inline]
    fn error(error: E) -> BoxError {
        error.into()
    }

    fn timed_out() -> Result<T, BoxError> {
        Err(Elapsed::new().into())
    }
}

/// Rejected calls fail with [`Rejected`]. The default.
///
/// ```
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_circuit_breaker::{CircuitBreaker, CircuitBreakerLayer, DefaultClassify, error::Rejected};
/// use tower_circuit_breaker::fallback::NoFallback;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = CircuitBreakerLayer::builder().build().unwrap();
/// layer.handle().force_open();
/// let inner = service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) });
/// let svc: CircuitBreaker<_, DefaultClassify, NoFallback> = layer.layer(inner);
/// assert!(svc.oneshot(()).await.unwrap_err().is::<Rejected>());
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct NoFallback;

impl sealed::Sealed for NoFallback {}

impl<Req, Res, E: Into<BoxError>> Fallback<Req, Res, E> for NoFallback {
    type Error = BoxError;
    type Future = Ready<Result<Res, BoxError>>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, _: Req, rejected: Rejected) -> Self::Future {
        ready(Err(rejected.into()))
    }

    fn call_failed(&mut self, error: BoxError, _: Rejected) -> Self::Future {
        ready(Err(error))
    }
}

/// Rejected calls go to the service `S`; made by
/// [`CircuitBreakerLayer::with_fallback`](crate::CircuitBreakerLayer::with_fallback).
///
/// ```
/// use tower::service_fn;
/// use tower_circuit_breaker::CircuitBreakerLayer;
///
/// let stale = service_fn(|_: u32| async { Ok::<_, std::io::Error>("stale but available") });
/// let layer = CircuitBreakerLayer::builder().build().unwrap().with_fallback(stale);
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct WithFallback<S> {
    service: S,
}

impl<S> WithFallback<S> {
    pub(crate) fn new(service: S) -> Self {
        WithFallback { service }
    }

    /// The fallback service.
    pub fn get_ref(&self) -> &S {
        &self.service
    }
}

impl<S> sealed::Sealed for WithFallback<S> {}

impl<Req, Res, E, S> Fallback<Req, Res, E> for WithFallback<S>
where
    S: Service<Req, Response = Res>,
    S::Error: Into<BoxError>,
    E: Into<BoxError>,
{
    type Error = BoxError;
    type Future = FallbackFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.service.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: Req, _: Rejected) -> Self::Future {
        FallbackFuture::new(self.service.call(request))
    }

    fn call_failed(&mut self, error: BoxError, _: Rejected) -> Self::Future {
        FallbackFuture::failed(error)
    }
}
