//! `GrpcClassify`: what a gRPC status means for the dependency.

use std::error::Error;

use http::{HeaderMap, HeaderName, Response};
use tokio::time::Instant;
use tonic::{Code, Status};

use super::{Pushback, pushback};
use crate::error::Rejected;
use crate::http::TrackedBody;
use crate::http::body::AtEnd;
use crate::{Classify, Completion, Outcome};

// A `HeaderName`, not a `&str`: a lookup by string parses the name every time.
const STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// A classifier for gRPC responses: reads `grpc-status` from the response headers (a
/// trailers-only response) or, at the end of the body, from the trailers. See the
/// [module docs](super) for the default codes and why.
///
/// * A `tonic::Status` error, or a `BoxError` with one in its chain of sources, is classified by
///   its code; other errors (transport, connect, `Elapsed`) are failures; another breaker's
///   rejection, as an error or as its UNAVAILABLE answer, is ignored.
/// * A failure with `grpc-retry-pushback-ms` keeps the circuit open at least that long (capped
///   by [`max_retry_after`](crate::Builder::max_retry_after)). A negative or unreadable value
///   means "do not retry" (gRFC A6): that is the retry policy's business
///   ([`GrpcHints`](super::GrpcHints)); the breaker counts the failure with its own interval.
/// * A body that ends without a status is a failure (UNKNOWN, as tonic reports it); a body
///   dropped before its end records nothing.
///
/// The responses must carry a [`TrackedBody`]: use
/// [`with_tracked_bodies`](crate::CircuitBreakerLayer::with_tracked_bodies). The
/// [`call_timeout`](crate::Builder::call_timeout) then bounds the whole stream: a server stream
/// meant to outlive it (a watch, a subscription) is cut when it waits past the deadline, and
/// counted as a failure; give such calls a breaker without a call timeout.
///
/// ```
/// use tonic::Code;
/// use tower_circuit_breaker::{Outcome, grpc::GrpcClassify};
///
/// let classify = GrpcClassify::new().code(Code::ResourceExhausted, Outcome::Failure);
/// assert_eq!(classify.outcome(Code::Unavailable), Outcome::Failure);
/// assert_eq!(classify.outcome(Code::ResourceExhausted), Outcome::Failure);
/// assert_eq!(classify.outcome(Code::NotFound), Outcome::Success);
/// assert_eq!(GrpcClassify::new().outcome(Code::ResourceExhausted), Outcome::Ignored);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct GrpcClassify {
    /// One bit per code, `1 << code`.
    failure: u32,
    ignored: u32,
}

impl GrpcClassify {
    /// UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN and DATA_LOSS are failures,
    /// RESOURCE_EXHAUSTED is ignored, every other code is a success.
    pub fn new() -> Self {
        GrpcClassify {
            failure: 0,
            ignored: 0,
        }
        .code(Code::Unavailable, Outcome::Failure)
        .code(Code::DeadlineExceeded, Outcome::Failure)
        .code(Code::Internal, Outcome::Failure)
        .code(Code::Unknown, Outcome::Failure)
        .code(Code::DataLoss, Outcome::Failure)
        .code(Code::ResourceExhausted, Outcome::Ignored)
    }

    /// Classifies `code` as `outcome`.
    pub fn code(mut self, code: Code, outcome: Outcome) -> Self {
        let bit = 1 << code as u32;
        self.failure &= !bit;
        self.ignored &= !bit;
        match outcome {
            Outcome::Failure => self.failure |= bit,
            Outcome::Ignored => self.ignored |= bit,
            _ => {}
        }
        self
    }

    /// The outcome of a call that ended with `code`.
    pub fn outcome(&self, code: Code) -> Outcome {
        let bit = 1 << code as u32;
        if self.failure & bit != 0 {
            Outcome::Failure
        } else if self.ignored & bit != 0 {
            Outcome::Ignored
        } else {
            Outcome::Success
        }
    }

    /// The status in `headers`, if they carry one (an invalid one is UNKNOWN, as for tonic).
    fn status(headers: &HeaderMap) -> Option<Code> {
        headers
            .get(STATUS)
            .map(|value| Code::from_bytes(value.as_bytes()))
    }

    /// The outcome of an error.
    fn error_outcome<E: 'static>(&self, error: &E) -> Outcome {
        if Rejected::is_in(error) {
            return Outcome::Ignored;
        }
        let error: &dyn std::any::Any = error;
        let status = match error.downcast_ref::<tower::BoxError>() {
            Some(boxed) => find_status(&**boxed),
            None => error.downcast_ref::<Status>(),
        };
        status.map_or(Outcome::Failure, |status| self.outcome(status.code()))
    }

    /// Records the outcome of a status read from `headers` (the response's or its trailers).
    fn record(&self, code: Code, headers: &HeaderMap, completion: Completion) {
        match self.outcome(code) {
            Outcome::Failure => match pushback(headers) {
                Some(Pushback::After(wait)) => completion.fail_until(Instant::now() + wait),
                _ => completion.record(Outcome::Failure),
            },
            outcome => completion.record(outcome),
        }
    }

    /// Records the end of a body, with its trailers if it had any.
    pub(crate) fn finish(&self, completion: Completion, trailers: Option<&HeaderMap>) {
        match trailers.and_then(|t| Some((GrpcClassify::status(t)?, t))) {
            Some((code, trailers)) => self.record(code, trailers, completion),
            None => completion.record(self.outcome(Code::Unknown)),
        }
    }
}

/// A `Status` in `error` or its chain of sources.
fn find_status<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a Status> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(status) = error.downcast_ref::<Status>() {
            return Some(status);
        }
        next = error.source();
    }
    None
}

impl Default for GrpcClassify {
    fn default() -> Self {
        GrpcClassify::new()
    }
}

impl<B, E> Classify<Response<TrackedBody<B>>, E> for GrpcClassify
where
    B: http_body::Body,
    E: 'static,
{
    /// What the head says: a breaker's UNAVAILABLE is ignored, a trailers-only status is
    /// classified, and a response whose status will come in its trailers is a success so far.
    fn classify(&self, result: Result<&Response<TrackedBody<B>>, &E>) -> Outcome {
        match result {
            Ok(response) if response.extensions().get::<Rejected>().is_some() => Outcome::Ignored,
            Ok(response) => GrpcClassify::status(response.headers())
                .map_or(Outcome::Success, |code| self.outcome(code)),
            Err(e) => self.error_outcome(e),
        }
    }

    fn complete(&self, result: Result<&mut Response<TrackedBody<B>>, &E>, completion: Completion) {
        let response = match result {
            Err(e) => return completion.record(self.error_outcome(e)),
            Ok(response) => response,
        };
        if response.extensions().get::<Rejected>().is_some() {
            return completion.record(Outcome::Ignored);
        }
        match GrpcClassify::status(response.headers()) {
            Some(code) => self.record(code, response.headers(), completion),
            None => response
                .body_mut()
                .attach(completion, AtEnd::Trailers(*self)),
        }
    }
}
