use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use super::map::Breakers;
use crate::config::Builder;
use crate::error::ConfigError;
use crate::handle::{Handle, checked};
use crate::state::State;

/// Lists and controls the breakers of a keyed layer. Cheap to clone; `Send + Sync` when the key
/// is.
///
/// Each key's breaker has its own [`Handle`] ([`get`](Self::get), [`handles`](Self::handles)).
/// The operator's methods of this handle ([`force_open`](Self::force_open),
/// [`disable`](Self::disable), [`metrics_only`](Self::metrics_only), [`reset`](Self::reset))
/// apply to every key, to the overflow breaker and to the keys to come, until the next one;
/// [`reconfigure`](Self::reconfigure) likewise.
///
/// ```
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_circuit_breaker::{KeyedCircuitBreakerLayer, State};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower::BoxError> {
/// let layer = KeyedCircuitBreakerLayer::builder(|host: &&'static str| *host).build()?;
/// let hosts = layer.handle();
/// let svc = layer.layer(service_fn(|_: &'static str| async { Ok::<_, std::io::Error>(()) }));
/// svc.clone().oneshot("a.example").await?;
/// svc.clone().oneshot("b.example").await?;
///
/// let mut keys: Vec<_> = hosts.handles().into_iter().map(|(key, _)| key).collect();
/// keys.sort();
/// assert_eq!(keys, ["a.example", "b.example"]);
///
/// hosts.get(&"a.example").unwrap().force_open(); // one key
/// hosts.reset(); // every key
/// assert_eq!(hosts.get(&"a.example").unwrap().state(), State::Closed);
/// # Ok(())
/// # }
/// ```
pub struct KeyedHandle<K> {
    breakers: Arc<Breakers<K>>,
}

impl<K> KeyedHandle<K> {
    pub(crate) fn new(breakers: Arc<Breakers<K>>) -> Self {
        KeyedHandle { breakers }
    }

    pub(crate) fn breakers(&self) -> &Breakers<K> {
        &self.breakers
    }
}

impl<K: Hash + Eq + Clone> KeyedHandle<K> {
    /// The breakers' name (the shared configuration's), if they have one.
    pub fn name(&self) -> Option<&str> {
        self.breakers.overflow().name().map(|n| &**n)
    }

    /// The handle of `key`'s breaker, if it has one. Looking does not make one, and does not
    /// count as a use. While the handle is kept, the breaker is not evicted.
    pub fn get(&self, key: &K) -> Option<Handle> {
        self.breakers
            .get(key)
            .map(|lanes| Handle::new(lanes.breaker().clone()))
    }

    /// Every key with a breaker of its own, with its handle (in no particular order). Runs the
    /// idle sweep first if one is due.
    pub fn handles(&self) -> Vec<(K, Handle)> {
        self.breakers
            .entries()
            .into_iter()
            .map(|(key, breaker)| (key, Handle::new(breaker)))
            .collect()
    }

    /// The breaker that new keys share when every breaker is open and the key bound is hit (see
    /// [bounded memory](super#bounded-memory)). Its key is `"(overflow)"`.
    pub fn overflow(&self) -> Handle {
        Handle::new(self.breakers.overflow().breaker().clone())
    }

    /// How many keys have a breaker of their own (at most [`max_keys`](Self::max_keys)).
    pub fn len(&self) -> usize {
        self.breakers.len()
    }

    /// Whether no key has a breaker yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bound on the number of keys.
    pub fn max_keys(&self) -> usize {
        self.breakers.max_keys()
    }

    /// Removes the breakers that have been idle for the idle timeout and may be forgotten, now
    /// rather than at the next sweep; returns how many it removed.
    pub fn evict_idle(&self) -> usize {
        self.breakers.evict_idle()
    }

    /// Forgets `key`'s breaker whatever its state (an operator's decision: the next call of
    /// the key makes a new, closed one); whether it had one. Calls in flight record into the
    /// forgotten breaker.
    pub fn remove(&self, key: &K) -> bool {
        self.breakers.remove(key)
    }

    /// Rejects every call of every key (and of keys to come) until changed again.
    pub fn force_open(&self) {
        self.breakers.force(State::ForcedOpen);
    }

    /// Admits every call of every key (and of keys to come), recording nothing, until changed
    /// again.
    pub fn disable(&self) {
        self.breakers.force(State::Disabled);
    }

    /// Records every key's outcomes (and those of keys to come) without ever opening, until
    /// changed again.
    pub fn metrics_only(&self) {
        self.breakers.force(State::MetricsOnly);
    }

    /// Returns every key's breaker to Closed with empty metrics; keys to come start Closed.
    pub fn reset(&self) {
        self.breakers.force(State::Closed);
    }

    /// The configuration every key shares, as a [`Builder`] (see [`Handle::config`]).
    pub fn config(&self) -> Builder {
        Builder::from_config(&self.breakers.config())
    }

    /// Replaces the configuration of every key's breaker, of the overflow breaker and of the
    /// keys to come, as [`Handle::reconfigure`] does for one breaker: validated first (a bad
    /// one is refused and the old one stays in force), without losing any breaker's state. One
    /// configuration is shared by all the keys again afterwards (a key reconfigured alone
    /// through its own handle gets it too).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first field that is out of range or cannot change.
    ///
    /// ```
    /// use tower_circuit_breaker::KeyedCircuitBreakerLayer;
    ///
    /// let layer = KeyedCircuitBreakerLayer::builder(|host: &String| host.clone()).build()?;
    /// let hosts = layer.handle();
    /// hosts.reconfigure(hosts.config().consecutive_failures(3))?;
    /// assert!(hosts.reconfigure(hosts.config().half_open_calls(0)).is_err());
    /// # Ok::<(), tower_circuit_breaker::ConfigError>(())
    /// ```
    pub fn reconfigure(&self, builder: Builder) -> Result<(), ConfigError> {
        let config = checked(&builder, &self.breakers.config())?;
        self.breakers.reconfigure(Arc::new(config));
        Ok(())
    }
}

impl<K> Clone for KeyedHandle<K> {
    fn clone(&self) -> Self {
        KeyedHandle {
            breakers: self.breakers.clone(),
        }
    }
}

impl<K> fmt::Debug for KeyedHandle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedHandle")
            .field("breakers", &self.breakers)
            .finish()
    }
}
