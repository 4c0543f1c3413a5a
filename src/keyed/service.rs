use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::Service;

use super::future::ResponseFuture;
use super::handle::KeyedHandle;
use super::map::Breakers;
use crate::classify::DefaultClassify;
use crate::fallback::NoFallback;
use crate::service::CircuitBreaker;

/// A service guarded by one circuit breaker per key; made by
/// [`KeyedCircuitBreakerLayer`](super::KeyedCircuitBreakerLayer).
///
/// Its `poll_ready` is always ready: the key, and so the breaker that decides, is known only in
/// `call`, which drives the key's [`CircuitBreaker`] around a clone of the inner service with
/// `oneshot` (see [readiness](super#readiness-why-the-keyed-service-is-always-ready)). Its
/// response, error and future are the key's breaker's: with a fallback or a response mode, the
/// same as a plain breaker's.
///
/// ```
/// use tower::{Layer, Service, ServiceExt, service_fn};
/// use tower_circuit_breaker::KeyedCircuitBreakerLayer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower::BoxError> {
/// let layer = KeyedCircuitBreakerLayer::builder(|method: &&'static str| *method).build()?;
/// let mut svc = layer.layer(service_fn(|m: &'static str| async move {
///     Ok::<_, std::io::Error>(m.len())
/// }));
/// assert_eq!(svc.ready().await?.call("/pkg.Service/Get").await?, 16);
/// assert_eq!(svc.handle().len(), 1);
/// # Ok(())
/// # }
/// ```
pub struct KeyedCircuitBreaker<S, K, KF, C = DefaultClassify, F = NoFallback> {
    inner: S,
    breakers: Arc<Breakers<K>>,
    key_fn: KF,
    classify: C,
    fallback: F,
}

impl<S, K, KF, C, F> KeyedCircuitBreaker<S, K, KF, C, F> {
    pub(crate) fn new(
        inner: S,
        breakers: Arc<Breakers<K>>,
        key_fn: KF,
        classify: C,
        fallback: F,
    ) -> Self {
        KeyedCircuitBreaker {
            inner,
            breakers,
            key_fn,
            classify,
            fallback,
        }
    }

    /// A handle to list and control this service's breakers.
    pub fn handle(&self) -> KeyedHandle<K> {
        KeyedHandle::new(self.breakers.clone())
    }

    /// Gets a reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Gets a mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, K, KF, C, F, Req> Service<Req> for KeyedCircuitBreaker<S, K, KF, C, F>
where
    S: Clone,
    K: Hash + Eq + Clone,
    KF: Fn(&Req) -> K,
    C: Clone,
    F: Clone,
    CircuitBreaker<S, C, F>: Service<Req>,
{
    type Response = <CircuitBreaker<S, C, F> as Service<Req>>::Response;
    type Error = <CircuitBreaker<S, C, F> as Service<Req>>::Error;
    type Future = ResponseFuture<CircuitBreaker<S, C, F>, Req>;

    /// Always ready: readiness is the key's, decided in the response future.
    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        let breaker = self.breakers.lookup((self.key_fn)(&request));
        // No readiness mode: the keyed service is always ready (see the module docs).
        let service = CircuitBreaker::new(
            self.inner.clone(),
            breaker,
            self.classify.clone(),
            self.fallback.clone(),
            None,
        );
        ResponseFuture::new(service, request)
    }
}

impl<S: Clone, K, KF: Clone, C: Clone, F: Clone> Clone for KeyedCircuitBreaker<S, K, KF, C, F> {
    fn clone(&self) -> Self {
        KeyedCircuitBreaker {
            inner: self.inner.clone(),
            breakers: self.breakers.clone(),
            key_fn: self.key_fn.clone(),
            classify: self.classify.clone(),
            fallback: self.fallback.clone(),
        }
    }
}

impl<S: fmt::Debug, K, KF, C, F> fmt::Debug for KeyedCircuitBreaker<S, K, KF, C, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreaker")
            .field("inner", &self.inner)
            .field("breakers", &self.breakers)
            .finish_non_exhaustive()
    }
}
