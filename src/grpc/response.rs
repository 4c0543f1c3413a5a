//! The UNAVAILABLE response mode: rejections and call timeouts answered with gRPC statuses.

use std::task::{Context, Poll};

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response};
use tower::BoxError;

use super::PUSHBACK;
use crate::CircuitBreakerLayer;
use crate::error::Rejected;
use crate::fallback::{Answer, Fallback, sealed};
use crate::http::HttpResponseFuture;

/// Answers rejected calls with a trailers-only `UNAVAILABLE` and timed-out calls with
/// `DEADLINE_EXCEEDED`, so that the service keeps the inner service's error type; made by
/// [`CircuitBreakerLayer::with_grpc_responses`].
///
/// The UNAVAILABLE carries `grpc-retry-pushback-ms` (milliseconds until a probe will be
/// admitted, rounded up; absent when nobody knows) and the [`Rejected`] in its extensions, which
/// marks it as a breaker's answer: a breaker further out, with
/// [`GrpcClassify`](super::GrpcClassify) or the default classifier, does not count it. tonic
/// clients see `Code::Unavailable` with the message "circuit breaker open".
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcResponses {
    _private: (),
}

impl<C, F> CircuitBreakerLayer<C, F> {
    /// Answers rejections with a trailers-only gRPC `UNAVAILABLE` (with
    /// `grpc-retry-pushback-ms`) and call timeouts with `DEADLINE_EXCEEDED`, instead of failing
    /// them: the service keeps the inner service's error type. A fallback set before is replaced.
    ///
    /// ```
    /// use tower::{Layer, ServiceExt, service_fn};
    /// use tower_circuit_breaker::{CircuitBreakerLayer, grpc::GrpcClassify};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let breaker = CircuitBreakerLayer::builder()
    ///     .classify(GrpcClassify::new())
    ///     .build()?
    ///     .with_grpc_responses();
    /// breaker.handle().force_open();
    /// let svc = breaker.with_tracked_bodies().layer(service_fn(|_: ()| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
    /// }));
    /// let response = svc.oneshot(()).await?;
    /// assert_eq!(response.headers()["grpc-status"], "14");
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_grpc_responses(self) -> CircuitBreakerLayer<C, GrpcResponses> {
        self.answer_with(GrpcResponses { _private: () })
    }
}

impl sealed::Sealed for GrpcResponses {}

impl<Req, B: Default, E> Fallback<Req, Response<B>, E> for GrpcResponses {
    type Error = E;
    type Future = HttpResponseFuture<B, E, GrpcResponses>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Req, rejected: Rejected) -> Self::Future {
        HttpResponseFuture::new(unavailable(rejected))
    }

    fn call_failed(&mut self, _: BoxError, rejected: Rejected) -> Self::Future {
        // Never happens: this mode is always ready.
        HttpResponseFuture::new(unavailable(rejected))
    }
}

/// A trailers-only response: HTTP 200, the status in the headers.
fn trailers_only<B: Default>(code: &'static str, message: &'static str) -> Response<B> {
    let mut response = Response::new(B::default());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from_static(code));
    headers.insert("grpc-message", HeaderValue::from_static(message));
    response
}

/// The UNAVAILABLE for a rejection.
fn unavailable<B: Default>(rejected: Rejected) -> Response<B> {
    // The message is percent-encoded, as gRPC's `grpc-message` is.
    let mut response = trailers_only("14", "circuit%20breaker%20open");
    if let Some(after) = rejected.retry_after() {
        // Rounded up: coming back early would be rejected again.
        let ms = u64::try_from(after.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        response
            .headers_mut()
            .insert(PUSHBACK, HeaderValue::from(ms));
    }
    response.extensions_mut().insert(rejected);
    response
}

impl<B: Default, E> Answer<Response<B>, E> for HttpResponseFuture<B, E, GrpcResponses> {
    type Error = E;

    #[inline]
    fn error(error: E) -> E {
        error
    }

    fn timed_out() -> Result<Response<B>, E> {
        Ok(trailers_only("4", "call%20timed%20out"))
    }
}
