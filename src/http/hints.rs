//! What an HTTP response says to a retry.

use std::time::{Duration, SystemTime};

use http::Response;

use super::retry_after;
use crate::error::Rejected;
use crate::retry::Hints;

/// Reads HTTP responses for [`RespectBreaker`](crate::retry::RespectBreaker): a breaker's 503
/// (marked with the [`Rejected`] in its extensions) is never retried, and a `Retry-After`
/// (delta-seconds or an HTTP date) is waited out before a retry.
///
/// ```
/// use tower_circuit_breaker::http::HttpHints;
/// use tower_circuit_breaker::retry::RespectBreaker;
///
/// # #[derive(Clone)] struct MyPolicy;
/// let policy = RespectBreaker::new(MyPolicy).with_hints(HttpHints);
/// # let _ = policy;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpHints;

impl<B> Hints<Response<B>> for HttpHints {
    fn never_retry(&self, response: &Response<B>) -> bool {
        response.extensions().get::<Rejected>().is_some()
    }

    fn retry_after(&self, response: &Response<B>) -> Option<Duration> {
        retry_after::parse(response.headers(), SystemTime::now())
    }
}
