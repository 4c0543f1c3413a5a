use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower::Service;

pin_project! {
    /// Response future of [`KeyedCircuitBreaker`](super::KeyedCircuitBreaker): the key's
    /// breaker `S` driven to one call, as tower's `Oneshot` does. First its readiness (the
    /// breaker's admission, then, for an admitted call only, the inner service's), then the call.
    pub struct ResponseFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: Phase<S, Req>,
    }
}

pin_project! {
    #[project = PhaseProj]
    enum Phase<S, Req>
    where
        S: Service<Req>,
    {
        NotReady {
            service: S,
            request: Option<Req>,
        },
        Called {
            #[pin]
            future: S::Future,
        },
    }
}

impl<S: Service<Req>, Req> ResponseFuture<S, Req> {
    pub(crate) fn new(service: S, request: Req) -> Self {
        ResponseFuture {
            state: Phase::NotReady {
                service,
                request: Some(request),
            },
        }
    }
}

impl<S: Service<Req>, Req> Future for ResponseFuture<S, Req> {
    type Output = Result<S::Response, S::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                PhaseProj::NotReady { service, request } => {
                    ready!(service.poll_ready(cx))?;
                    let request = request.take().expect("polled after completion");
                    let future = service.call(request);
                    // Drops the service: the call's future holds what it needs.
                    state.set(Phase::Called { future });
                }
                PhaseProj::Called { future } => return future.poll(cx),
            }
        }
    }
}

impl<S: Service<Req>, Req> fmt::Debug for ResponseFuture<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = match self.state {
            Phase::NotReady { .. } => "NotReady",
            Phase::Called { .. } => "Called",
        };
        f.debug_struct("ResponseFuture")
            .field("phase", &phase)
            .finish()
    }
}
