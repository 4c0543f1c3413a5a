use std::fmt;
use std::sync::Arc;

use tower::Layer;

use crate::classify::DefaultClassify;
use crate::config::{Builder, Config};
use crate::fallback::{NoFallback, WithFallback};
use crate::handle::Handle;
use crate::readiness::Gate;
use crate::service::CircuitBreaker;
use crate::state::Breaker;
use crate::state::lane::Lanes;

/// Wraps services in one shared [`CircuitBreaker`].
///
/// The breaker lives in the layer, not in the services it makes: every clone of the layer and
/// every service from [`Layer::layer`] share one state, like tower's
/// `GlobalConcurrencyLimitLayer`. This matters under axum, which calls `Layer::layer` once per
/// route and method (and sometimes per request): the breaker still sees every call. For one
/// breaker per route, build one layer per route.
///
/// ```
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use tower_circuit_breaker::CircuitBreakerLayer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower::BoxError> {
/// let breaker = CircuitBreakerLayer::builder()
///     .consecutive_failures(5)
///     .open_duration(Duration::from_secs(10))
///     .build()?;
/// let handle = breaker.handle();
///
/// let service = ServiceBuilder::new()
///     .layer(breaker)
///     .service(service_fn(|name: &'static str| async move {
///         Ok::<_, std::io::Error>(format!("hello, {name}"))
///     }));
///
/// assert_eq!(service.oneshot("world").await?, "hello, world");
/// assert_eq!(handle.metrics().successful(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct CircuitBreakerLayer<C = DefaultClassify, F = NoFallback> {
    pub(crate) breaker: Arc<Lanes>,
    classify: C,
    fallback: F,
    /// The readiness mode, if on (`readiness.rs`).
    pub(crate) gate: Option<Gate>,
}

impl CircuitBreakerLayer {
    /// Starts a configuration with the defaults listed on [`Builder`].
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl<C> CircuitBreakerLayer<C> {
    pub(crate) fn from_parts(config: Config, classify: C) -> Self {
        CircuitBreakerLayer {
            breaker: Arc::new(Lanes::new(Arc::new(Breaker::new(Arc::new(config), None)))),
            classify,
            fallback: NoFallback,
            gate: None,
        }
    }

    /// A layer around an existing breaker (a registry's).
    #[cfg(feature = "keyed")]
    pub(crate) fn from_breaker(breaker: Arc<Lanes>, classify: C) -> Self {
        CircuitBreakerLayer {
            breaker,
            classify,
            fallback: NoFallback,
            gate: None,
        }
    }
}

impl<C, F> CircuitBreakerLayer<C, F> {
    /// A handle to read and control this layer's breaker.
    pub fn handle(&self) -> Handle {
        Handle::new(self.breaker.breaker().clone())
    }

    /// Sends every call the breaker rejects to `service` instead of failing it.
    ///
    /// The fallback takes the same requests and gives the same responses as the inner service.
    /// While the breaker rejects, the fallback's `poll_ready` is polled instead of the inner's.
    ///
    /// It answers the calls the breaker *rejects*, not the admitted calls that fail: those
    /// still fail (or time out) to the caller, and count toward opening the circuit. For a
    /// "stale if error" answer, put the cache around the breaker instead.
    ///
    /// ```
    /// use tower::{Layer, ServiceExt, service_fn};
    /// use tower_circuit_breaker::CircuitBreakerLayer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower::BoxError> {
    /// let cached = service_fn(|_: u32| async { Ok::<_, std::io::Error>("from cache") });
    /// let layer = CircuitBreakerLayer::builder().build()?.with_fallback(cached);
    /// layer.handle().force_open();
    ///
    /// let live = service_fn(|_: u32| async { Ok::<_, std::io::Error>("live") });
    /// assert_eq!(layer.layer(live).oneshot(7).await?, "from cache");
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_fallback<S>(self, service: S) -> CircuitBreakerLayer<C, WithFallback<S>> {
        self.answer_with(WithFallback::new(service))
    }

    /// The same breaker and classifier, with rejected calls answered by `fallback`.
    pub(crate) fn answer_with<F2>(self, fallback: F2) -> CircuitBreakerLayer<C, F2> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            classify: self.classify,
            fallback,
            gate: self.gate,
        }
    }
}

impl<S, C: Clone, F: Clone> Layer<S> for CircuitBreakerLayer<C, F> {
    type Service = CircuitBreaker<S, C, F>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(
            inner,
            self.breaker.clone(),
            self.classify.clone(),
            self.fallback.clone(),
            self.gate.clone(),
        )
    }
}

impl<C, F> fmt::Debug for CircuitBreakerLayer<C, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}
