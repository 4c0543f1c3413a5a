//! What a gRPC response says to a retry.

use std::time::Duration;

use http::Response;

use super::{Pushback, pushback};
use crate::error::Rejected;
use crate::retry::Hints;

/// Reads gRPC responses for [`RespectBreaker`](crate::retry::RespectBreaker): a breaker's
/// UNAVAILABLE (marked with the [`Rejected`] in its extensions) is never retried, nor is a
/// response whose `grpc-retry-pushback-ms` is negative or unreadable (gRFC A6); a pushback in
/// milliseconds is waited out before a retry. Only the headers are read: a status in the
/// trailers is the body's.
///
/// ```
/// use tower_circuit_breaker::grpc::GrpcHints;
/// use tower_circuit_breaker::retry::RespectBreaker;
///
/// # #[derive(Clone)] struct MyPolicy;
/// let policy = RespectBreaker::new(MyPolicy).with_hints(GrpcHints);
/// # let _ = policy;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcHints;

impl<B> Hints<Response<B>> for GrpcHints {
    fn never_retry(&self, response: &Response<B>) -> bool {
        response.extensions().get::<Rejected>().is_some()
            || pushback(response.headers()) == Some(Pushback::Never)
    }

    fn retry_after(&self, response: &Response<B>) -> Option<Duration> {
        match pushback(response.headers()) {
            Some(Pushback::After(wait)) => Some(wait),
            _ => None,
        }
    }
}
