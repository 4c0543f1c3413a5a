//! The 503 response mode: rejections and call timeouts answered with HTTP responses.

use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::RETRY_AFTER;
use http::{HeaderValue, Response, StatusCode};
use tower::BoxError;

use crate::CircuitBreakerLayer;
use crate::error::Rejected;
use crate::fallback::{Answer, Fallback, sealed};

/// Answers rejected calls with `503 Service Unavailable` and timed-out calls with
/// `504 Gateway Timeout`, so that the service keeps the inner service's error type (axum needs
/// `Infallible`); made by [`CircuitBreakerLayer::with_http_responses`].
///
/// A 503 carries `Retry-After` (whole seconds until a probe will be admitted, rounded up,
/// computed when the response is built; absent when nobody knows, as while forced open), an
/// empty body (`B::default()`), and the [`Rejected`] itself in its extensions: that marks it as a
/// breaker's answer, so that a breaker further out (with [`HttpClassify`](super::HttpClassify) or
/// the default classifier) does not count it as a failure of the dependency.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpResponses {
    _private: (),
}

impl<C, F> CircuitBreakerLayer<C, F> {
    /// Answers rejections with `503 Service Unavailable` (with `Retry-After`) and call timeouts
    /// with `504 Gateway Timeout`, instead of failing them (a call timeout that fires while a
    /// [`TrackedBody`](super::TrackedBody) streams ends that body with an error instead: its
    /// head is sent): the service keeps the inner service's
    /// error type, so `Router::route_layer` and `Router::layer` take it as it is. A fallback set
    /// before is replaced.
    ///
    /// ```
    /// use axum::{Router, body::Body, routing::get};
    /// use http::{Request, StatusCode};
    /// use tower::ServiceExt;
    /// use tower_circuit_breaker::{CircuitBreakerLayer, http::HttpClassify};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let breaker = CircuitBreakerLayer::builder()
    ///     .classify(HttpClassify::new())
    ///     .build()?
    ///     .with_http_responses();
    /// let handle = breaker.handle();
    /// let app = Router::new().route("/", get(|| async { "hello" })).route_layer(breaker);
    ///
    /// handle.force_open();
    /// let response = app.oneshot(Request::new(Body::empty())).await?;
    /// assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_http_responses(self) -> CircuitBreakerLayer<C, HttpResponses> {
        self.answer_with(HttpResponses { _private: () })
    }
}

impl sealed::Sealed for HttpResponses {}

impl<Req, B: Default, E> Fallback<Req, Response<B>, E> for HttpResponses {
    type Error = E;
    type Future = HttpResponseFuture<B, E>;

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

/// The 503 for a rejection.
fn unavailable<B: Default>(rejected: Rejected) -> Response<B> {
    let mut response = Response::new(B::default());
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    if let Some(after) = rejected.retry_after() {
        // Whole seconds, rounded up: coming back early would be rejected again.
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    response.extensions_mut().insert(rejected);
    response
}

/// The future of a call answered by a response mode `M` ([`HttpResponses`], or gRPC's
/// `GrpcResponses`): the response is ready at once.
pub struct HttpResponseFuture<B, E, M = HttpResponses> {
    answer: Option<Result<Response<B>, E>>,
    mode: PhantomData<fn() -> M>,
}

impl<B, E, M> HttpResponseFuture<B, E, M> {
    pub(crate) fn new(response: Response<B>) -> Self {
        HttpResponseFuture {
            answer: Some(Ok(response)),
            mode: PhantomData,
        }
    }
}

// Holds no pinned data.
impl<B, E, M> Unpin for HttpResponseFuture<B, E, M> {}

impl<B, E, M> Future for HttpResponseFuture<B, E, M> {
    type Output = Result<Response<B>, E>;

    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(
            self.answer
                .take()
                .expect("HttpResponseFuture polled after completion"),
        )
    }
}

impl<B, E, M> sealed::Sealed for HttpResponseFuture<B, E, M> {}

impl<B: Default, E> Answer<Response<B>, E> for HttpResponseFuture<B, E, HttpResponses> {
    type Error = E;

    #[inline]
    fn error(error: E) -> E {
        error
    }

    fn timed_out() -> Result<Response<B>, E> {
        let mut response = Response::new(B::default());
        *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
        Ok(response)
    }
}

impl<B, E, M> fmt::Debug for HttpResponseFuture<B, E, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpResponseFuture")
            .field("done", &self.answer.is_none())
            .finish()
    }
}
