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
    pub trait Sealed {}
}

/// How a rejected call is answered (sealed): [`NoFallback`] or [`WithFallback`].
pub trait Fallback<Req, Res>: sealed::Sealed {
    /// The future of a rejected call.
    type Future: Future<Output = Result<Res, BoxError>>;

    /// Whether a rejected call can be answered now.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>>;

    /// Answers a rejected call.
    fn call(&mut self, request: Req, rejected: Rejected) -> Self::Future;
}

/// Rejected calls fail with [`Rejected`]. The default.
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

/// Rejected calls go to the service `S`.
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
