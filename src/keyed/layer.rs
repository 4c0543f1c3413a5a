use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use tower::Layer;

use super::handle::KeyedHandle;
use super::map::{Breakers, Settings};
use super::service::KeyedCircuitBreaker;
use crate::classify::DefaultClassify;
use crate::config::Builder;
use crate::error::ConfigError;
use crate::fallback::{NoFallback, WithFallback};

/// The default bound on the number of keys.
const DEFAULT_MAX_KEYS: usize = 10_000;
/// The default idle timeout.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Wraps services in one circuit breaker per key of the request; see the [module](super).
///
/// Like [`CircuitBreakerLayer`](crate::CircuitBreakerLayer), the breakers live in the layer:
/// every clone of it and every service it makes share them.
pub struct KeyedCircuitBreakerLayer<K, KF, C = DefaultClassify, F = NoFallback> {
    breakers: Arc<Breakers<K>>,
    key_fn: KF,
    classify: C,
    fallback: F,
}

impl<K, KF> KeyedCircuitBreakerLayer<K, KF> {
    /// Starts a keyed layer whose breakers are selected by `key_fn`, called with each request.
    ///
    /// Annotate the closure's argument (`|req: &Request<Body>| ...`): the request type is
    /// known only where the layer is used.
    pub fn builder<Req>(key_fn: KF) -> KeyedBuilder<K, KF>
    where
        KF: Fn(&Req) -> K,
    {
        KeyedBuilder {
            key_fn,
            breaker: Builder::default(),
            max_keys: DEFAULT_MAX_KEYS,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            key_text: DisplayKey,
            _key: PhantomData,
        }
    }
}

impl<K, KF, C, F> KeyedCircuitBreakerLayer<K, KF, C, F> {
    /// A handle to list and control the breakers of this layer.
    pub fn handle(&self) -> KeyedHandle<K> {
        KeyedHandle::new(self.breakers.clone())
    }

    /// Sends every call its key's breaker rejects to `service` instead of failing it, as
    /// [`CircuitBreakerLayer::with_fallback`](crate::CircuitBreakerLayer::with_fallback) does.
    ///
    /// ```
    /// use tower::{Layer, ServiceExt, service_fn};
    /// use tower_circuit_breaker::KeyedCircuitBreakerLayer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower::BoxError> {
    /// let cached = service_fn(|_: String| async { Ok::<_, std::io::Error>("from cache") });
    /// let layer = KeyedCircuitBreakerLayer::builder(|host: &String| host.clone())
    ///     .build()?
    ///     .with_fallback(cached);
    /// layer.handle().force_open(); // every key, and the keys to come
    ///
    /// let live = service_fn(|_: String| async { Ok::<_, std::io::Error>("live") });
    /// assert_eq!(layer.layer(live).oneshot("a.example".into()).await?, "from cache");
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_fallback<S>(
        self,
        service: S,
    ) -> KeyedCircuitBreakerLayer<K, KF, C, WithFallback<S>> {
        self.answer_with(WithFallback::new(service))
    }

    /// Answers every call its key's breaker rejects with a `503 Service Unavailable` and its
    /// `Retry-After`, keeping the inner service's error type, as
    /// [`CircuitBreakerLayer::with_http_responses`](crate::CircuitBreakerLayer::with_http_responses)
    /// does (a fallback set before is replaced).
    ///
    /// ```
    /// use axum::{Router, body::Body, extract::MatchedPath, routing::get};
    /// use http::{Request, StatusCode};
    /// use tower::ServiceExt;
    /// use tower_circuit_breaker::KeyedCircuitBreakerLayer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // One breaker per route.
    /// let per_route = KeyedCircuitBreakerLayer::builder(|req: &Request<Body>| {
    ///     req.extensions().get::<MatchedPath>().map(|path| path.as_str().to_owned())
    /// })
    /// .key_text(|path: &Option<String>| path.clone().unwrap_or_default())
    /// .build()?
    /// .with_http_responses();
    /// let routes = per_route.handle();
    /// let app = Router::new()
    ///     .route("/orders", get(|| async { "orders" }))
    ///     .route("/users", get(|| async { "users" }))
    ///     .route_layer(per_route);
    ///
    /// let get = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
    /// app.clone().oneshot(get("/orders")).await?;
    /// routes.get(&Some("/orders".to_owned())).unwrap().force_open();
    /// let rejected = app.clone().oneshot(get("/orders")).await?;
    /// assert_eq!(rejected.status(), StatusCode::SERVICE_UNAVAILABLE);
    /// assert_eq!(app.oneshot(get("/users")).await?.status(), StatusCode::OK);
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    pub fn with_http_responses(
        self,
    ) -> KeyedCircuitBreakerLayer<K, KF, C, crate::http::HttpResponses> {
        self.answer_with(crate::http::HttpResponses::default())
    }

    /// Answers every call its key's breaker rejects with a trailers-only gRPC `UNAVAILABLE`, as
    /// [`CircuitBreakerLayer::with_grpc_responses`](crate::CircuitBreakerLayer::with_grpc_responses)
    /// does (a fallback set before is replaced): one breaker per gRPC method, say, keyed by the
    /// request's path.
    #[cfg(feature = "grpc")]
    #[cfg_attr(docsrs, doc(cfg(feature = "grpc")))]
    pub fn with_grpc_responses(
        self,
    ) -> KeyedCircuitBreakerLayer<K, KF, C, crate::grpc::GrpcResponses> {
        self.answer_with(crate::grpc::GrpcResponses::default())
    }

    fn answer_with<F2>(self, fallback: F2) -> KeyedCircuitBreakerLayer<K, KF, C, F2> {
        KeyedCircuitBreakerLayer {
            breakers: self.breakers,
            key_fn: self.key_fn,
            classify: self.classify,
            fallback,
        }
    }
}

impl<S, K, KF: Clone, C: Clone, F: Clone> Layer<S> for KeyedCircuitBreakerLayer<K, KF, C, F> {
    type Service = KeyedCircuitBreaker<S, K, KF, C, F>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedCircuitBreaker::new(
            inner,
            self.breakers.clone(),
            self.key_fn.clone(),
            self.classify.clone(),
            self.fallback.clone(),
        )
    }
}

impl<K, KF: Clone, C: Clone, F: Clone> Clone for KeyedCircuitBreakerLayer<K, KF, C, F> {
    fn clone(&self) -> Self {
        KeyedCircuitBreakerLayer {
            breakers: self.breakers.clone(),
            key_fn: self.key_fn.clone(),
            classify: self.classify.clone(),
            fallback: self.fallback.clone(),
        }
    }
}

impl<K, KF, C, F> fmt::Debug for KeyedCircuitBreakerLayer<K, KF, C, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerLayer")
            .field("breakers", &self.breakers)
            .finish_non_exhaustive()
    }
}

// ===== KeyedBuilder =====

/// Builds a [`KeyedCircuitBreakerLayer`]; made by [`KeyedCircuitBreakerLayer::builder`].
///
/// | setter | default |
/// |---|---|
/// | [`breaker`](Self::breaker) | `CircuitBreakerLayer::builder()`'s defaults |
/// | [`max_keys`](Self::max_keys) | 10,000 |
/// | [`idle_timeout`](Self::idle_timeout) | 10 min |
/// | [`key_text`](Self::key_text) | the key's `Display` |
///
/// ```
/// use std::time::Duration;
/// use tower_circuit_breaker::{CircuitBreakerLayer, KeyedCircuitBreakerLayer};
///
/// /// A request to some tenant's backend.
/// struct Request { tenant: Option<u64> }
///
/// let layer = KeyedCircuitBreakerLayer::builder(|req: &Request| req.tenant)
///     .breaker(CircuitBreakerLayer::builder().name("tenants").consecutive_failures(5))
///     .max_keys(50_000)
///     .idle_timeout(Duration::from_secs(300))
///     .key_text(|tenant: &Option<u64>| match tenant {
///         Some(id) => format!("tenant-{id}"),
///         None => "anonymous".to_string(),
///     })
///     .build()?;
/// # let _ = layer;
/// # Ok::<(), tower_circuit_breaker::ConfigError>(())
/// ```
pub struct KeyedBuilder<K, KF, C = DefaultClassify, N = DisplayKey> {
    key_fn: KF,
    breaker: Builder<C>,
    max_keys: usize,
    idle_timeout: Option<Duration>,
    key_text: N,
    _key: PhantomData<fn() -> K>,
}

impl<K, KF, C, N> KeyedBuilder<K, KF, C, N> {
    /// The configuration every key's breaker shares (one copy for all), with its classifier.
    /// Its name names them all; each breaker's [`Handle::key`](crate::Handle::key) tells them
    /// apart.
    pub fn breaker<C2>(self, breaker: Builder<C2>) -> KeyedBuilder<K, KF, C2, N> {
        KeyedBuilder {
            key_fn: self.key_fn,
            breaker,
            max_keys: self.max_keys,
            idle_timeout: self.idle_timeout,
            key_text: self.key_text,
            _key: PhantomData,
        }
    }

    /// The largest number of keys with a breaker of their own (at least 1); see
    /// [bounded memory](super#bounded-memory).
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// Removes a breaker unused for this long (more than zero) when it may be forgotten; see
    /// [bounded memory](super#bounded-memory).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Keeps idle breakers until the key bound needs their room.
    pub fn no_idle_timeout(mut self) -> Self {
        self.idle_timeout = None;
        self
    }

    /// How a key is written in handles, logs and listings ([`Handle::key`](crate::Handle::key)):
    /// a closure `Fn(&K) -> String`, called once per breaker. The default is the key's
    /// `Display`; keys without one need this.
    pub fn key_text<N2>(self, key_text: N2) -> KeyedBuilder<K, KF, C, N2>
    where
        N2: KeyText<K>,
    {
        KeyedBuilder {
            key_fn: self.key_fn,
            breaker: self.breaker,
            max_keys: self.max_keys,
            idle_timeout: self.idle_timeout,
            key_text,
            _key: PhantomData,
        }
    }

    /// Validates the configuration and builds the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first field out of its range: the breaker's settings, then
    /// `max_keys` (at least 1) and `idle_timeout` (more than zero).
    pub fn build(self) -> Result<KeyedCircuitBreakerLayer<K, KF, C>, ConfigError>
    where
        K: Hash + Eq + Clone,
        N: KeyText<K> + Send + Sync + 'static,
    {
        let config = self.breaker.validate()?;
        if self.max_keys == 0 {
            return Err(ConfigError::new("max_keys", 0usize, "at least 1"));
        }
        if let Some(timeout) = self.idle_timeout.filter(|t| t.is_zero()) {
            return Err(ConfigError::new("idle_timeout", timeout, "more than 0"));
        }
        let key_text = self.key_text;
        let settings = Settings {
            max_keys: self.max_keys,
            idle_timeout: self.idle_timeout,
            display: Box::new(move |key: &K| key_text.text(key)),
        };
        Ok(KeyedCircuitBreakerLayer {
            breakers: Arc::new(Breakers::new(config, settings)),
            key_fn: self.key_fn,
            classify: self.breaker.into_classify(),
            fallback: NoFallback,
        })
    }
}

impl<K, KF, C, N> fmt::Debug for KeyedBuilder<K, KF, C, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBuilder")
            .field("breaker", &self.breaker)
            .field("max_keys", &self.max_keys)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

// ===== key text =====

/// How a key is written: [`DisplayKey`], or a closure `Fn(&K) -> String`.
pub trait KeyText<K> {
    /// The text of `key`.
    fn text(&self, key: &K) -> String;
}

/// Writes a key with its `Display` (the default of [`KeyedBuilder::key_text`]).
///
/// ```
/// use tower_circuit_breaker::keyed::{DisplayKey, KeyText};
///
/// assert_eq!(DisplayKey.text(&"api.example:443"), "api.example:443");
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct DisplayKey;

impl<K: fmt::Display> KeyText<K> for DisplayKey {
    fn text(&self, key: &K) -> String {
        key.to_string()
    }
}

impl<K, F: Fn(&K) -> String> KeyText<K> for F {
    fn text(&self, key: &K) -> String {
        self(key)
    }
}
