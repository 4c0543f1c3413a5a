//! Error types.
//!
//! The service's error type is [`tower::BoxError`], as for tower's own middleware that can fail
//! (`Timeout`, `LoadShed`): layers nest, and matching on nested error enums breaks with every
//! change of order. A rejection is a [`Rejected`], found by downcasting:
//!
//! ```
//! # use tower_circuit_breaker::error::Rejected;
//! fn is_rejection(err: &tower::BoxError) -> bool {
//!     err.is::<Rejected>()
//! }
//! # let _ = is_rejection;
//! ```
//!
//! A call that outlives [`call_timeout`](crate::Builder::call_timeout) fails with tower's own
//! [`Elapsed`](tower::timeout::error::Elapsed), so code written for `tower::timeout` keeps working.
//!
//! A configuration out of range is a [`ConfigError`] from [`Builder::build`](crate::Builder::build)
//! (also exported at the crate root).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::State;

/// The circuit did not admit the call.
///
/// It carries the state that rejected it, and a hint of when a probe will be admitted: use it for a
/// `Retry-After` header, or to schedule a retry that will not be rejected again.
///
/// ```
/// # use std::time::Duration;
/// use tower_circuit_breaker::{CircuitBreakerLayer, State, error::Rejected};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = CircuitBreakerLayer::builder().name("db").build().unwrap();
/// layer.handle().force_open();
/// let svc = layer.layer(service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) }));
///
/// let err = svc.oneshot(()).await.unwrap_err();
/// let rejected = err.downcast_ref::<Rejected>().expect("a rejection");
/// assert_eq!(rejected.state(), State::ForcedOpen);
/// assert_eq!(rejected.retry_after(), None);
/// assert_eq!(rejected.name(), Some("db"));
/// assert_eq!(err.to_string(), "circuit `db` forced open");
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Rejected {
    state: State,
    /// An instant, not a duration: the error may be read long after the decision.
    retry_at: Option<Instant>,
    name: Option<Arc<str>>,
}

impl Rejected {
    pub(crate) fn new(state: State, retry_at: Option<Instant>, name: Option<Arc<str>>) -> Self {
        Rejected {
            state,
            retry_at,
            name,
        }
    }

    /// The state that rejected the call: `Open`, `HalfOpen` (every probe permit taken),
    /// `ForcedOpen`, or `Closed` when [adaptive throttling](crate::adaptive) rejected it.
    pub fn state(&self) -> State {
        self.state
    }

    /// The time left, from now, until a probe will be admitted; `None` where nobody knows
    /// (`ForcedOpen`, `HalfOpen` with every probe permit taken, or an open interval beyond the
    /// clock's range). Computed when asked, from [`retry_at`](Self::retry_at), so it is never
    /// stale: zero once that instant has passed.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_at
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// The instant from which a probe will be admitted (on tokio's clock); `None` where nobody
    /// knows, as for [`retry_after`](Self::retry_after).
    ///
    /// ```
    /// # use std::time::Duration;
    /// use tower::{Layer, ServiceExt, service_fn};
    /// use tower_circuit_breaker::{CircuitBreakerLayer, error::Rejected};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let layer = CircuitBreakerLayer::builder()
    ///     .consecutive_failures(1)
    ///     .open_duration(Duration::from_secs(10))
    ///     .build()
    ///     .unwrap();
    /// let svc = layer.layer(service_fn(|fail: bool| async move {
    ///     if fail { Err("down") } else { Ok(()) }
    /// }));
    /// let opened_at = tokio::time::Instant::now();
    /// let _ = svc.clone().oneshot(true).await; // trips
    ///
    /// let err = svc.oneshot(false).await.unwrap_err();
    /// let rejected = err.downcast_ref::<Rejected>().unwrap();
    /// assert_eq!(rejected.retry_at(), Some(opened_at + Duration::from_secs(10)));
    /// tokio::time::advance(Duration::from_secs(6)).await;
    /// assert_eq!(rejected.retry_after(), Some(Duration::from_secs(4)));
    /// # }
    /// ```
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// The name of the breaker, if it has one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("circuit ")?;
        if let Some(name) = &self.name {
            write!(f, "`{name}` ")?;
        }
        match (self.state, self.retry_after()) {
            (State::ForcedOpen, _) => f.write_str("forced open"),
            (State::HalfOpen, None) => f.write_str("half-open; no probe permit available"),
            // Whole milliseconds, rounded up: a log line, not a measurement.
            (state, Some(after)) => {
                // A closed circuit rejects only by adaptive throttling.
                let state = match state {
                    State::Closed => "throttled",
                    state => state.as_str(),
                };
                let ms = after.as_nanos().div_ceil(1_000_000);
                if ms % 1000 == 0 {
                    write!(f, "{state}; retry after {}s", ms / 1000)
                } else {
                    write!(f, "{state}; retry after {ms}ms")
                }
            }
            (State::Closed, None) => f.write_str("throttled"),
            (state, None) => write!(f, "{state}"),
        }
    }
}

impl std::error::Error for Rejected {}

impl Rejected {
    /// Finds a rejection in `error` or its chain of sources: a `Rejected` wrapped by another
    /// layer (a `Buffer`'s `ServiceError`, a tonic `Status`) is still a rejection.
    ///
    /// ```
    /// use tower::{Layer, ServiceExt, service_fn};
    /// use tower_circuit_breaker::{CircuitBreakerLayer, error::Rejected};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = CircuitBreakerLayer::builder().build().unwrap();
    /// layer.handle().force_open();
    /// let svc = layer.layer(service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) }));
    /// let err = svc.oneshot(()).await.unwrap_err();
    /// assert!(Rejected::find(&*err).is_some());
    ///
    /// let other = std::io::Error::other("refused");
    /// assert!(Rejected::find(&other).is_none());
    /// # }
    /// ```
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Rejected> {
        let mut next = Some(error);
        while let Some(error) = next {
            if let Some(rejected) = error.downcast_ref::<Rejected>() {
                return Some(rejected);
            }
            next = error.source();
        }
        None
    }

    /// Whether an error of any type is, or wraps, a rejection: a `Rejected`, or a
    /// [`BoxError`](tower::BoxError) with one in its chain. Other error types are not looked
    /// into (their type is not known to be an error).
    pub(crate) fn is_in<E: 'static>(error: &E) -> bool {
        let error: &dyn std::any::Any = error;
        if error.is::<Rejected>() {
            return true;
        }
        match error.downcast_ref::<tower::BoxError>() {
            Some(boxed) => Rejected::find(&**boxed).is_some(),
            None => false,
        }
    }
}

// ===== ConfigError =====

/// A configuration value out of its allowed range, returned by [`Builder::build`](crate::Builder::build).
///
/// ```
/// use tower_circuit_breaker::CircuitBreakerLayer;
///
/// let err = CircuitBreakerLayer::builder().failure_rate_threshold(1.5).build().unwrap_err();
/// assert_eq!(err.field(), "failure_rate_threshold");
/// assert_eq!(err.to_string(), "invalid `failure_rate_threshold`: 1.5 (allowed: (0, 1])");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
    value: String,
    allowed: String,
}

impl ConfigError {
    pub(crate) fn new(
        field: &'static str,
        value: impl fmt::Debug,
        allowed: impl Into<String>,
    ) -> Self {
        ConfigError {
            field,
            value: format!("{value:?}"),
            allowed: allowed.into(),
        }
    }

    /// The name of the builder setter whose value is out of range.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// The rejected value, as written with `Debug`.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The allowed range.
    pub fn allowed(&self) -> &str {
        &self.allowed
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid `{}`: {} (allowed: {})",
            self.field, self.value, self.allowed
        )
    }
}

impl std::error::Error for ConfigError {}
