//! What a call gets when the circuit rejects it.
//!
//! By default a rejected call fails with [`Rejected`]. With
//! [`CircuitBreakerLayer::with_fallback`](crate::CircuitBreakerLayer::with_fallback) it goes to a
//! fallback service instead (a backup provider, a cache, a degraded answer). While the breaker
//! rejects, the fallback's `poll_ready` is polled instead of the inner service's, so a dependency
//! that is down, or never ready, cannot hold the fallback up.
//!
//! The [`Fallback`] trait is sealed: [`NoFallback`] and [`WithFallback`] are its only
//! implementations, and they appear in the type of the service.

use std::future::{Ready, ready};
use std::task::{Context, Poll};

use tower::{BoxError, Service};

use crate::error::Rejected;
use crate::future::FallbackFuture;

mod sealed {
    pub trait Sealed {
        /// Whether a fallback service answers rejected calls (counted as fallbacks).
        const ANSWERS: bool = false;
    }
}

/// How a rejected call is answered (sealed): [`NoFallback`] or [`WithFallback`].
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
///     S::Error: Into<tower::BoxError>,
///     C: Classify<S::Response, S::Error> + Clone,
///     F: Fallback<u32, S::Response>,
/// {
/// }
/// # let _ = assert_service::<tower::util::ServiceFn<fn(u32) -> std::future::Ready<Result<u32, std::io::Error>>>, tower_circuit_breaker::DefaultClassify, tower_circuit_breaker::fallback::NoFallback>;
/// ```
pub trait Fallback<Req, Res>: sealed::Sealed {
    /// The future of a rejected call.
    type Future: Future<Output = Result<Res, BoxError>>;

    /// Whether a rejected call can be answered now.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>>;

    /// Answers a rejected call.
    fn call(&mut self, request: Req, rejected: Rejected) -> Self::Future;
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

impl<Req, Res> Fallback<Req, Res> for NoFallback {
    type Future = Ready<Result<Res, BoxError>>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, _: Req, rejected: Rejected) -> Self::Future {
        ready(Err(rejected.into()))
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

impl<S> sealed::Sealed for WithFallback<S> {
    const ANSWERS: bool = true;
}

impl<Req, Res, S> Fallback<Req, Res> for WithFallback<S>
where
    S: Service<Req, Response = Res>,
    S::Error: Into<BoxError>,
{
    type Future = FallbackFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.service.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: Req, _: Rejected) -> Self::Future {
        FallbackFuture::new(self.service.call(request))
    }
}
