//! A response body that records its call's outcome at its end.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderMap, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::layer::util::Stack;
use tower::timeout::error::Elapsed;
use tower::{BoxError, Layer, Service};

use crate::{CircuitBreakerLayer, Completion, Outcome};

/// What the end of a body means.
#[derive(Clone, Copy, Debug)]
pub(crate) enum AtEnd {
    /// The head was a success, and the whole body came: a success.
    Success,
    /// The status is in the trailers (gRPC), read by this classifier.
    #[cfg(feature = "grpc")]
    Trailers(crate::grpc::GrpcClassify),
}

impl AtEnd {
    /// Records the outcome of a body that ended, with its trailers if it had any.
    fn finish(self, completion: Completion, trailers: Option<&HeaderMap>) {
        match self {
            AtEnd::Success => completion.record(Outcome::Success),
            #[cfg(feature = "grpc")]
            AtEnd::Trailers(classify) => classify.finish(completion, trailers),
        }
        #[cfg(not(feature = "grpc"))]
        let _ = trailers;
    }
}

pin_project! {
    /// A response body that records its call's outcome when it ends: a success at its end (or as
    /// its trailers say, for gRPC), a failure on an error or when the
    /// [`call_timeout`](crate::Builder::call_timeout) fires while it streams. So a slow call is
    /// timed to the end of its body, and the call timeout covers the body too. A body dropped
    /// before its end records nothing (and gives back a half-open probe permit).
    ///
    /// Put it on responses with [`track_body`] in a layer *under* the breaker, and classify with
    /// [`HttpClassify::to_end_of_body`](super::HttpClassify::to_end_of_body):
    ///
    /// ```
    /// use http_body_util::{BodyExt, Full};
    /// use tower::{ServiceBuilder, ServiceExt, service_fn};
    /// use tower_circuit_breaker::CircuitBreakerLayer;
    /// use tower_circuit_breaker::http::{HttpClassify, track_body};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower::BoxError> {
    /// let breaker = CircuitBreakerLayer::builder()
    ///     .classify(HttpClassify::new().to_end_of_body())
    ///     .build()?;
    /// let handle = breaker.handle();
    /// let client = ServiceBuilder::new()
    ///     .layer(breaker)
    ///     .map_response(track_body)
    ///     .service(service_fn(|_: ()| async {
    ///         Ok::<_, std::io::Error>(http::Response::new(Full::new(bytes::Bytes::from("hi"))))
    ///     }));
    ///
    /// let response = client.oneshot(()).await?;
    /// assert_eq!(handle.metrics().calls(), 0, "recorded at the end of the body");
    /// let body = response.into_body().collect().await?.to_bytes();
    /// assert_eq!(body, "hi");
    /// assert_eq!(handle.metrics().successful(), 1);
    /// # Ok(())
    /// # }
    /// ```
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        // The call timeout's timer, made when the body first waits. Boxed so that the body is
        // `Unpin` when `B` is (readers often need it), at the cost of one allocation per body
        // that waits under a call timeout.
        timer: Option<Pin<Box<Sleep>>>,
        // Taken when the outcome is recorded.
        pending: Option<(Completion, AtEnd)>,
    }
}

/// Wraps a response's body in a [`TrackedBody`], for `ServiceBuilder::map_response` (or
/// `ServiceExt::map_response`) under the breaker.
pub fn track_body<B>(response: Response<B>) -> Response<TrackedBody<B>> {
    response.map(TrackedBody::new)
}

impl<B> TrackedBody<B> {
    /// A body that records nothing until the breaker attaches its completion.
    pub fn new(inner: B) -> Self {
        TrackedBody {
            inner,
            timer: None,
            pending: None,
        }
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// Records the outcome at the end of this body (or at once, if it has already ended).
    pub(crate) fn attach(&mut self, completion: Completion, at_end: AtEnd)
    where
        B: Body,
    {
        if self.inner.is_end_stream() {
            // A reader may never poll an ended body.
            at_end.finish(completion, None);
        } else {
            self.pending = Some((completion, at_end));
        }
    }
}

impl<B: Default> Default for TrackedBody<B> {
    fn default() -> Self {
        TrackedBody::new(B::default())
    }
}

impl<B> Body for TrackedBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let mut this = self.project();
        let frame = match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                let deadline = this.pending.as_ref().and_then(|(c, _)| c.deadline());
                let Some(deadline) = deadline else {
                    return Poll::Pending;
                };
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                let fired = timer.as_mut().poll(cx).is_ready();
                if !fired {
                    return Poll::Pending;
                }
                if let Some((completion, _)) = this.pending.take() {
                    completion.record(Outcome::Failure);
                }
                return Poll::Ready(Some(Err(Elapsed::new().into())));
            }
        };
        let Some((completion, at_end)) = this.pending.take() else {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        };
        match &frame {
            Some(Err(_)) => completion.record(Outcome::Failure),
            Some(Ok(frame)) if frame.is_trailers() => {
                at_end.finish(completion, frame.trailers_ref())
            }
            None => at_end.finish(completion, None),
            // A reader may stop at `is_end_stream` without polling for the end.
            Some(Ok(_)) if this.inner.is_end_stream() => at_end.finish(completion, None),
            Some(Ok(_)) => *this.pending = Some((completion, at_end)),
        }
        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: fmt::Debug> fmt::Debug for TrackedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackedBody")
            .field("inner", &self.inner)
            .field("recording", &self.pending.is_some())
            .finish()
    }
}

// ===== TrackBodyLayer =====

/// Wraps the bodies of a service's responses in [`TrackedBody`]; put it under the breaker, or
/// use [`CircuitBreakerLayer::with_tracked_bodies`](crate::CircuitBreakerLayer::with_tracked_bodies),
/// which does it in one layer.
#[derive(Clone, Copy, Debug, Default)]
pub struct TrackBodyLayer;

impl<S> Layer<S> for TrackBodyLayer {
    type Service = TrackBody<S>;

    fn layer(&self, inner: S) -> TrackBody<S> {
        TrackBody { inner }
    }
}

/// A service whose responses' bodies are [`TrackedBody`]s; made by [`TrackBodyLayer`].
#[derive(Clone, Debug)]
pub struct TrackBody<S> {
    inner: S,
}

impl<S, Req, B> Service<Req> for TrackBody<S>
where
    S: Service<Req, Response = Response<B>>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackBodyFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        TrackBodyFuture {
            inner: self.inner.call(request),
        }
    }
}

pin_project! {
    /// The response future of [`TrackBody`].
    #[derive(Debug)]
    pub struct TrackBodyFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, B, E> Future for TrackBodyFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx).map_ok(track_body)
    }
}

impl<C, F> CircuitBreakerLayer<C, F> {
    /// This breaker, with the bodies of the inner service's responses wrapped in
    /// [`TrackedBody`] under it: one layer for a classifier that gives its verdict at the end of
    /// the body ([`HttpClassify::to_end_of_body`](super::HttpClassify::to_end_of_body), gRPC's
    /// classifier).
    ///
    /// ```
    /// use http_body_util::Full;
    /// use tower::{ServiceBuilder, ServiceExt, service_fn};
    /// use tower_circuit_breaker::CircuitBreakerLayer;
    /// use tower_circuit_breaker::http::HttpClassify;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower::BoxError> {
    /// let breaker = CircuitBreakerLayer::builder()
    ///     .classify(HttpClassify::new().to_end_of_body())
    ///     .build()?;
    /// let client = ServiceBuilder::new()
    ///     .layer(breaker.with_tracked_bodies())
    ///     .service(service_fn(|_: ()| async {
    ///         Ok::<_, std::io::Error>(http::Response::new(Full::new(bytes::Bytes::new())))
    ///     }));
    /// client.oneshot(()).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_tracked_bodies(self) -> Stack<TrackBodyLayer, Self> {
        Stack::new(TrackBodyLayer, self)
    }
}
