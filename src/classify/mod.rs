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
/// Implemented for closures `Fn(Result<&Res, &E>) -> Outcome`:
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

/// The default classifier: `Ok` is a success, `Err` a failure.
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

impl<Res, E> Classify<Res, E> for DefaultClassify {
    #[inline]
    fn classify(&self, result: Result<&Res, &E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}
