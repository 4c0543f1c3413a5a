//! Classification: what each result of the inner service means to the breaker.
//!
//! A breaker needs to know, per call, whether the dependency worked. That is not always `Ok` versus
//! `Err`: an HTTP client returns a 503 as `Ok(response)`, and a caller's own mistake (a 404, an
//! invalid argument) says nothing about the dependency's health. A [`Classify`] turns each result
//! into an [`Outcome`]: a success, a failure, or an outcome to ignore. Ignored outcomes are not
//! recorded at all: they leave the window and the consecutive-failure count as they were, and an
//! ignored probe gives its permit back.
//!
//! Slowness is not the classifier's business: the breaker measures each call's duration itself
//! (see [`Builder::slow_call_duration`](crate::Builder::slow_call_duration)).
//!
//! The classifier is cloned into each response future (as tower-http's classifiers are), so keep
//! it cheap to clone: a closure, a unit struct, or an `Arc` around anything larger.
//!
//! # When the verdict comes later, or with a date
//!
//! [`Classify::classify`] answers when the response arrives. Some answers come later: a gRPC
//! status sent in the trailers after the data, a failure found while streaming a body. And some
//! failures say when to come back (an upstream `Retry-After`, `grpc-retry-pushback-ms`). For
//! these, a classifier overrides [`Classify::complete`]: it gets the result (the response by
//! `&mut`) together with the call's [`Completion`], and either records the outcome at once, with
//! a date if it has one, or moves the completion into the response (a body that carries it) to
//! record it at the end of the stream. A completion dropped without an outcome (a body dropped
//! before its end) records nothing and gives back the probe permit it holds.
//!
//! The response keeps its type: a body that can carry a completion is the inner service's own
//! (a layer under the breaker wraps it, as `tower_http::map_response_body` does).

mod completion;

use crate::error::Rejected;

pub use completion::Completion;

/// What a call's result means for the health of the dependency.
///
/// ```
/// use tower_circuit_breaker::Outcome;
///
/// fn classify_status(status: u16) -> Outcome {
///     match status {
///         500.. => Outcome::Failure,
///         400..=499 => Outcome::Ignored, // the caller's mistake, not the dependency's
///         _ => Outcome::Success,
///     }
/// }
/// assert_eq!(classify_status(503), Outcome::Failure);
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The dependency worked.
    Success,
    /// The dependency failed: counts toward opening the circuit.
    Failure,
    /// Says nothing about the dependency: not recorded.
    Ignored,
}

/// Turns a result of the inner service into an [`Outcome`].
///
/// Implemented for closures `Fn(Result<&Res, &E>) -> Outcome`. Annotate the closure's argument
/// (`|result: Result<&Res, &E>|`): without it the compiler cannot infer the types (`E0282`).
///
/// ```
/// use tower_circuit_breaker::{Classify, Outcome};
///
/// let timeouts_only = |result: Result<&(), &std::io::Error>| match result {
///     Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Outcome::Failure,
///     Err(_) => Outcome::Ignored,
///     Ok(()) => Outcome::Success,
/// };
/// let err = std::io::Error::from(std::io::ErrorKind::TimedOut);
/// assert_eq!(timeouts_only.classify(Err(&err)), Outcome::Failure);
/// ```
pub trait Classify<Res, E> {
    /// Classifies one result.
    fn classify(&self, result: Result<&Res, &E>) -> Outcome;

    /// Completes one call: records the outcome of `result` on `completion`. The default records
    /// [`classify`](Self::classify)'s answer at once.
    ///
    /// Override it to record later, at the end of the response body (move `completion` into a
    /// response that carries it), or to record a failure with the upstream's "do not come back
    /// before" ([`Completion::fail_until`]). Dropping `completion` records nothing (and gives
    /// back a half-open probe permit).
    ///
    /// A response whose verdict is known at its end, like gRPC's trailers, with a test-only
    /// body that carries the completion:
    ///
    /// ```
    /// use tower::{Layer, ServiceExt, service_fn};
    /// use tower_circuit_breaker::{CircuitBreakerLayer, Classify, Completion, Outcome, State};
    ///
    /// /// A response whose status comes at its end, and a slot for the breaker's completion.
    /// struct Stream { ok_at_end: bool, completion: Option<Completion> }
    ///
    /// impl Stream {
    ///     fn finish(mut self) {
    ///         if let Some(completion) = self.completion.take() {
    ///             completion.record(if self.ok_at_end { Outcome::Success } else { Outcome::Failure });
    ///         }
    ///     }
    /// }
    ///
    /// #[derive(Clone)]
    /// struct AtTheEnd;
    ///
    /// impl Classify<Stream, std::io::Error> for AtTheEnd {
    ///     fn classify(&self, result: Result<&Stream, &std::io::Error>) -> Outcome {
    ///         match result {
    ///             Ok(_) => Outcome::Success,
    ///             Err(_) => Outcome::Failure,
    ///         }
    ///     }
    ///
    ///     fn complete(&self, result: Result<&mut Stream, &std::io::Error>, completion: Completion) {
    ///         match result {
    ///             Ok(stream) => stream.completion = Some(completion), // decided at the end
    ///             Err(_) => completion.record(Outcome::Failure),
    ///         }
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = CircuitBreakerLayer::builder().consecutive_failures(1).classify(AtTheEnd).build().unwrap();
    /// let svc = layer.layer(service_fn(|ok: bool| async move {
    ///     Ok::<_, std::io::Error>(Stream { ok_at_end: ok, completion: None })
    /// }));
    /// let response = svc.oneshot(false).await.unwrap();
    /// assert_eq!(layer.handle().state(), State::Closed, "nothing is known before the end");
    /// response.finish();
    /// assert_eq!(layer.handle().state(), State::Open);
    /// # }
    /// ```
    #[inline]
    fn complete(&self, result: Result<&mut Res, &E>, completion: Completion) {
        completion.record(self.classify(result.map(|response| &*response)));
    }
}

impl<F, Res, E> Classify<Res, E> for F
where
    F: Fn(Result<&Res, &E>) -> Outcome,
{
    #[inline]
    fn classify(&self, result: Result<&Res, &E>) -> Outcome {
        self(result)
    }
}

/// The default classifier: `Ok` is a success, `Err` a failure, except another breaker's
/// rejection ([`Rejected`](crate::error::Rejected), or a `BoxError` that wraps one), which is
/// ignored: a breaker nested inside another says nothing of the dependency's health when it
/// rejects, so the outer one does not open because the inner one is open.
///
/// ```
/// use tower_circuit_breaker::{Classify, DefaultClassify, Outcome};
///
/// let ok: Result<&u8, &()> = Ok(&1);
/// assert_eq!(DefaultClassify.classify(ok), Outcome::Success);
/// assert_eq!(Classify::<u8, ()>::classify(&DefaultClassify, Err(&())), Outcome::Failure);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DefaultClassify;

impl<Res, E: 'static> Classify<Res, E> for DefaultClassify {
    #[inline]
    fn classify(&self, result: Result<&Res, &E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(e) if Rejected::is_in(e) => Outcome::Ignored,
            Err(_) => Outcome::Failure,
        }
    }
}
