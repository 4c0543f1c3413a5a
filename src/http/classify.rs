//! `HttpClassify`: what an HTTP response or transport error means for the dependency.

use std::fmt;
use std::marker::PhantomData;
use std::ops::RangeInclusive;
use std::time::SystemTime;

use http::{Response, StatusCode};
use tokio::time::Instant;

use super::body::{AtEnd, TrackedBody};
use super::retry_after;
use crate::error::Rejected;
use crate::{Classify, Completion, Outcome};

/// The statuses a set holds: 100 to 611, one bit each (the classifier is cloned into every
/// response future, so it stays small and flat).
const FIRST: u16 = 100;
const WORDS: usize = 8;

/// A classifier for `http::Response`: `5xx` are failures, `429 Too Many Requests` is ignored,
/// everything else is a success; every error (a transport error, hyper-util's
/// `legacy::Error`, a connect error, `Elapsed`) is a failure, except another breaker's rejection.
///
/// * **429 is ignored by default.** It says that this client went over a quota, not that the
///   dependency is unhealthy: counted as a failure, one tenant's quota would open the circuit for
///   every call; counted as a success, it would hide real failures behind it. Make it a failure
///   with `.status(StatusCode::TOO_MANY_REQUESTS, Outcome::Failure)`.
/// * **Retry-After.** A failure response (a 503, or a 429 made a failure) that carries
///   `Retry-After`, in delta-seconds or as an HTTP date, keeps the circuit open at least that
///   long if it opens it, capped by [`Builder::max_retry_after`](crate::Builder::max_retry_after)
///   (300 s by default). A value that cannot be read is ignored.
/// * **Another breaker's answer is not a failure.** A [`Rejected`] error, a `BoxError` wrapping
///   one, or a 503 made by a breaker's [response mode](crate::CircuitBreakerLayer::with_http_responses)
///   (it carries the `Rejected` in its extensions) is ignored: nested breakers (one per route
///   inside one per app) do not cascade.
/// * **When the verdict is given.** By default, when the response head arrives: the call's
///   duration (slow calls) and the [`call_timeout`](crate::Builder::call_timeout) stop there,
///   because a body may stream for as long as the application wants (a download, server-sent
///   events). [`to_end_of_body`](Self::to_end_of_body) records at the end of the body instead.
///
/// Statuses from 612 up, which no standard defines, are failures.
///
/// ```
/// use http::{Response, StatusCode};
/// use tower_circuit_breaker::{Classify, Outcome, http::HttpClassify};
///
/// let classify = HttpClassify::new().status(StatusCode::NOT_IMPLEMENTED, Outcome::Ignored);
/// let response = |status: u16| Response::builder().status(status).body(()).unwrap();
/// let outcome = |status| {
///     Classify::<_, std::io::Error>::classify(&classify, Ok(&response(status)))
/// };
/// assert_eq!(outcome(200), Outcome::Success);
/// assert_eq!(outcome(404), Outcome::Success);
/// assert_eq!(outcome(429), Outcome::Ignored);
/// assert_eq!(outcome(500), Outcome::Failure);
/// assert_eq!(outcome(501), Outcome::Ignored);
///
/// let err = std::io::Error::other("connection refused");
/// assert_eq!(Classify::<Response<()>, _>::classify(&classify, Err(&err)), Outcome::Failure);
/// ```
pub struct HttpClassify<At = AtHead> {
    failure: [u64; WORDS],
    ignored: [u64; WORDS],
    at: PhantomData<fn() -> At>,
}

/// [`HttpClassify`] gives its verdict when the response head arrives (the default).
#[derive(Clone, Copy, Debug, Default)]
pub struct AtHead;

/// [`HttpClassify`] gives its verdict at the end of the body (see
/// [`to_end_of_body`](HttpClassify::to_end_of_body)).
#[derive(Clone, Copy, Debug, Default)]
pub struct AtEndOfBody;

impl HttpClassify {
    /// `5xx` are failures, `429` is ignored, everything else is a success.
    pub fn new() -> Self {
        HttpClassify {
            failure: [0; WORDS],
            ignored: [0; WORDS],
            at: PhantomData,
        }
        .status_range(500..=599, Outcome::Failure)
        .status(StatusCode::TOO_MANY_REQUESTS, Outcome::Ignored)
    }

    /// Gives the verdict at the end of the response body: a response that starts well and then
    /// breaks, or streams past the [`call_timeout`](crate::Builder::call_timeout), is a failure,
    /// and a slow call is timed to its last byte. A failure status is still recorded when the
    /// head arrives. The responses must carry a [`TrackedBody`]: put
    /// [`track_body`](super::track_body) under the breaker (see there for an example).
    pub fn to_end_of_body(self) -> HttpClassify<AtEndOfBody> {
        HttpClassify {
            failure: self.failure,
            ignored: self.ignored,
            at: PhantomData,
        }
    }
}

impl<At> HttpClassify<At> {
    /// Classifies `status` as `outcome`.
    pub fn status(self, status: StatusCode, outcome: Outcome) -> Self {
        let status = status.as_u16();
        self.status_range(status..=status, outcome)
    }

    /// Classifies every status in `range` as `outcome`; statuses outside 100 to 611 are left as
    /// they are.
    ///
    /// ```
    /// use tower_circuit_breaker::{Outcome, http::HttpClassify};
    ///
    /// // Count 408 Request Timeout as a failure, and ignore the whole 4xx class otherwise.
    /// let classify = HttpClassify::new()
    ///     .status_range(400..=499, Outcome::Ignored)
    ///     .status(http::StatusCode::REQUEST_TIMEOUT, tower_circuit_breaker::Outcome::Failure);
    /// # let _ = classify;
    /// ```
    pub fn status_range(mut self, range: RangeInclusive<u16>, outcome: Outcome) -> Self {
        let last = FIRST + (WORDS * 64) as u16 - 1;
        for status in (*range.start()).max(FIRST)..=(*range.end()).min(last) {
            let (word, bit) = index(status);
            self.failure[word] &= !bit;
            self.ignored[word] &= !bit;
            match outcome {
                Outcome::Failure => self.failure[word] |= bit,
                Outcome::Ignored => self.ignored[word] |= bit,
                _ => {}
            }
        }
        self
    }

    /// The outcome of a response with `status`.
    pub fn outcome(&self, status: StatusCode) -> Outcome {
        let status = status.as_u16();
        if status >= FIRST + (WORDS * 64) as u16 {
            return Outcome::Failure;
        }
        let (word, bit) = index(status);
        if self.failure[word] & bit != 0 {
            Outcome::Failure
        } else if self.ignored[word] & bit != 0 {
            Outcome::Ignored
        } else {
            Outcome::Success
        }
    }

    fn classify_result<B, E: 'static>(&self, result: Result<&Response<B>, &E>) -> Outcome {
        match result {
            // A breaker's own 503.
            Ok(response) if response.extensions().get::<Rejected>().is_some() => Outcome::Ignored,
            Ok(response) => self.outcome(response.status()),
            Err(e) if Rejected::is_in(e) => Outcome::Ignored,
            Err(_) => Outcome::Failure,
        }
    }
}

/// Records a failure, with the upstream's `Retry-After` if the response carries one.
#[cold]
fn fail<B>(response: Option<&Response<B>>, completion: Completion) {
    let wait = response.and_then(|r| retry_after::parse(r.headers(), SystemTime::now()));
    match wait {
        Some(wait) => completion.fail_until(Instant::now() + wait),
        None => completion.record(Outcome::Failure),
    }
}

fn index(status: u16) -> (usize, u64) {
    let i = usize::from(status - FIRST);
    (i / 64, 1 << (i % 64))
}

impl<B, E: 'static> Classify<Response<B>, E> for HttpClassify<AtHead> {
    fn classify(&self, result: Result<&Response<B>, &E>) -> Outcome {
        self.classify_result(result)
    }

    #[inline]
    fn complete(&self, result: Result<&mut Response<B>, &E>, completion: Completion) {
        let result = result.map(|response| &*response);
        match self.classify_result(result) {
            Outcome::Failure => fail(result.ok(), completion),
            outcome => completion.record(outcome),
        }
    }
}

impl<B, E> Classify<Response<TrackedBody<B>>, E> for HttpClassify<AtEndOfBody>
where
    B: http_body::Body,
    E: 'static,
{
    fn classify(&self, result: Result<&Response<TrackedBody<B>>, &E>) -> Outcome {
        self.classify_result(result)
    }

    fn complete(&self, result: Result<&mut Response<TrackedBody<B>>, &E>, completion: Completion) {
        let outcome =
            self.classify_result(result.as_ref().map(|response| &**response).map_err(|e| *e));
        match (outcome, result) {
            // The body decides: a success at its end, a failure if it breaks or times out.
            (Outcome::Success, Ok(response)) => {
                response.body_mut().attach(completion, AtEnd::Success)
            }
            (Outcome::Failure, result) => fail(result.ok().map(|r| &*r), completion),
            (outcome, _) => completion.record(outcome),
        }
    }
}

impl Default for HttpClassify {
    fn default() -> Self {
        HttpClassify::new()
    }
}

impl<At> Clone for HttpClassify<At> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<At> Copy for HttpClassify<At> {}

impl<At> fmt::Debug for HttpClassify<At> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failures: Vec<u16> = (FIRST..FIRST + (WORDS * 64) as u16)
            .filter(|&s| StatusCode::from_u16(s).is_ok_and(|s| self.outcome(s) == Outcome::Failure))
            .collect();
        f.debug_struct("HttpClassify")
            .field("failures", &failures.len())
            .field("at", &std::any::type_name::<At>())
            .finish_non_exhaustive()
    }
}
