//! A registry of named breakers, plain and keyed, for operator control by name.
//!
//! An operator thinks in names: "payments is flapping, force it open", "reset every host of
//! `upstreams`", "loosen the threshold of `search` until the fix ships". A [`Registry`] maps
//! each name to its breaker (plain, or keyed with one breaker per key), so that an admin
//! endpoint, a CLI or a control loop can [list](Registry::list) them all with their state and
//! metrics, [control](Registry::control) one by name (and by key), and
//! [reconfigure](Registry::reconfigure) one while it runs. A registry only holds breakers; the
//! services keep working without it, and it adds nothing to a call's path.
//!
//! ```
//! use tower_circuit_breaker::registry::{Control, Registry};
//! use tower_circuit_breaker::{CircuitBreakerLayer, State};
//!
//! let registry = Registry::new();
//! // Made the first time, shared afterwards (by name).
//! let payments = registry.get_or_create(CircuitBreakerLayer::builder().name("payments"))?;
//! let again = registry.get_or_create(CircuitBreakerLayer::builder().name("payments"))?;
//!
//! registry.control("payments", None, Control::ForceOpen)?;
//! assert_eq!(again.handle().state(), State::ForcedOpen);
//! assert_eq!(registry.list()[0].state, State::ForcedOpen);
//!
//! let looser = registry.config("payments")?.failure_rate_threshold(0.8);
//! registry.reconfigure("payments", looser)?;
//! # drop(payments);
//! # Ok::<(), tower_circuit_breaker::registry::RegistryError>(())
//! ```
//!
//! With the `serde` feature, [`Snapshot`] serializes (the JSON of an admin API's listing) and
//! [`ConfigUpdate`] deserializes (its request to change a configuration); see
//! `examples/admin` in the repository.

mod snapshot;

use std::collections::BTreeMap;
use std::fmt;
use std::hash::Hash;
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};

pub use snapshot::{ConfigUpdate, Snapshot};

use crate::config::{Builder, Config};
use crate::error::ConfigError;
use crate::handle::{Handle, checked};
use crate::keyed::KeyedCircuitBreakerLayer;
use crate::keyed::OVERFLOW_KEY;
use crate::layer::CircuitBreakerLayer;
use crate::state::State;
use crate::state::lane::Lanes;

/// Named breakers, plain and keyed; see the [module](self). Cheap to clone (clones share the
/// registry); `Send + Sync`.
#[derive(Clone, Default)]
pub struct Registry {
    breakers: Arc<RwLock<BTreeMap<Arc<str>, Registered>>>,
}

#[derive(Clone)]
enum Registered {
    Plain(Arc<Lanes>),
    Keyed(Arc<dyn Keyed>),
}

/// What the registry needs of a keyed layer's breakers, whatever its key type.
trait Keyed: Send + Sync {
    /// Every key's handle, then the overflow breaker's.
    fn handles(&self) -> Vec<Handle>;
    fn by_key(&self, text: &str) -> Option<Handle>;
    fn force(&self, state: State);
    fn config(&self) -> Arc<Config>;
    fn reconfigure(&self, config: Arc<Config>);
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> Keyed for crate::keyed::KeyedHandle<K> {
    fn handles(&self) -> Vec<Handle> {
        let mut all: Vec<Handle> = self.handles().into_iter().map(|(_, h)| h).collect();
        all.push(self.overflow());
        all
    }

    fn by_key(&self, text: &str) -> Option<Handle> {
        self.handles()
            .into_iter()
            .map(|(_, handle)| handle)
            .find(|handle| handle.key() == Some(text))
            .or_else(|| (text == OVERFLOW_KEY).then(|| self.overflow()))
    }

    fn force(&self, state: State) {
        match state {
            State::ForcedOpen => self.force_open(),
            State::Disabled => self.disable(),
            State::MetricsOnly => self.metrics_only(),
            _ => self.reset(),
        }
    }

    fn config(&self) -> Arc<Config> {
        self.breakers().config()
    }

    fn reconfigure(&self, config: Arc<Config>) {
        self.breakers().reconfigure(config);
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// The layer of the breaker named by `builder`: made from `builder` the first time, and
    /// sharing that breaker afterwards (with `builder`'s classifier). An existing breaker keeps
    /// its configuration: change it with [`reconfigure`](Self::reconfigure).
    ///
    /// # Errors
    ///
    /// [`RegistryError::Config`] for a configuration out of range (checked every time), or a
    /// builder without a name; [`RegistryError::NameTaken`] if the name is a keyed breaker's.
    pub fn get_or_create<C: Clone>(
        &self,
        builder: Builder<C>,
    ) -> Result<CircuitBreakerLayer<C>, RegistryError> {
        builder.validate()?;
        let Some(name) = builder.name_set().cloned() else {
            return Err(unnamed().into());
        };
        if let Some(found) = self.find(&name) {
            return match found {
                Registered::Plain(lanes) => Ok(CircuitBreakerLayer::from_breaker(
                    lanes,
                    builder.into_classify(),
                )),
                Registered::Keyed(_) => Err(RegistryError::NameTaken(name.to_string())),
            };
        }
        let layer = builder.clone().build()?;
        match self.insert(name.clone(), plain(&layer.handle())) {
            Ok(()) => Ok(layer),
            // Made meanwhile by another caller: share theirs.
            Err(Registered::Plain(lanes)) => Ok(CircuitBreakerLayer::from_breaker(
                lanes,
                builder.into_classify(),
            )),
            Err(Registered::Keyed(_)) => Err(RegistryError::NameTaken(name.to_string())),
        }
    }

    /// Adds `layer`'s breaker under its name.
    ///
    /// # Errors
    ///
    /// [`RegistryError::Config`] if the breaker has no name, [`RegistryError::NameTaken`] if
    /// another breaker has it.
    pub fn register<C, F>(&self, layer: &CircuitBreakerLayer<C, F>) -> Result<(), RegistryError> {
        let handle = layer.handle();
        let name = handle.name().ok_or_else(unnamed)?;
        self.insert(name.into(), plain(&handle))
            .map_err(|_| RegistryError::NameTaken(name.to_string()))
    }

    /// Adds a keyed layer's breakers under their name: every key, the keys to come and the
    /// overflow breaker.
    ///
    /// # Errors
    ///
    /// As for [`register`](Self::register).
    pub fn register_keyed<K, KF, C, F>(
        &self,
        layer: &KeyedCircuitBreakerLayer<K, KF, C, F>,
    ) -> Result<(), RegistryError>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
    {
        let handle = layer.handle();
        let name = handle.name().ok_or_else(unnamed)?.to_string();
        self.insert(name.as_str().into(), Registered::Keyed(Arc::new(handle)))
            .map_err(|_| RegistryError::NameTaken(name))
    }

    /// The handle of the plain breaker named `name`.
    pub fn handle(&self, name: &str) -> Option<Handle> {
        match self.find(name)? {
            Registered::Plain(lanes) => Some(Handle::new(lanes.breaker().clone())),
            Registered::Keyed(_) => None,
        }
    }

    /// The names, in order.
    pub fn names(&self) -> Vec<String> {
        self.read().keys().map(|name| name.to_string()).collect()
    }

    /// Every breaker with its state and metrics, by name, and for a keyed breaker one row per
    /// key (in no particular order) then its overflow breaker's.
    pub fn list(&self) -> Vec<Snapshot> {
        let breakers: Vec<(Arc<str>, Registered)> = self
            .read()
            .iter()
            .map(|(name, registered)| (name.clone(), registered.clone()))
            .collect();
        // Outside the registry's lock: reading a state may make a transition due by time,
        // whose announcement is user code.
        let mut rows = Vec::new();
        for (name, registered) in breakers {
            match registered {
                Registered::Plain(lanes) => {
                    let handle = Handle::new(lanes.breaker().clone());
                    rows.push(Snapshot::of(&name, &handle));
                }
                Registered::Keyed(keyed) => {
                    rows.extend(keyed.handles().iter().map(|h| Snapshot::of(&name, h)));
                }
            }
        }
        rows
    }

    /// Applies `control` to the breaker named `name`: for a keyed breaker, to the key whose
    /// text is `key` (`"(overflow)"`: the overflow breaker), or with no key to every key and
    /// the keys to come.
    ///
    /// # Errors
    ///
    /// [`RegistryError::UnknownName`], [`RegistryError::UnknownKey`] (a key that has no
    /// breaker, or any key of a plain breaker); nothing is changed then.
    pub fn control(
        &self,
        name: &str,
        key: Option<&str>,
        control: Control,
    ) -> Result<(), RegistryError> {
        let registered = self.find_or_err(name)?;
        let state = control.state();
        match (registered, key) {
            (Registered::Plain(lanes), None) => lanes.breaker().force(state),
            (Registered::Keyed(keyed), None) => keyed.force(state),
            (Registered::Keyed(keyed), Some(key)) => match keyed.by_key(key) {
                Some(handle) => handle.breaker().force(state),
                None => return Err(unknown_key(name, key)),
            },
            (Registered::Plain(_), Some(key)) => return Err(unknown_key(name, key)),
        }
        Ok(())
    }

    /// The configuration in force of the breaker named `name` (every key's, for a keyed one),
    /// as a [`Builder`]; see [`Handle::config`].
    ///
    /// # Errors
    ///
    /// [`RegistryError::UnknownName`].
    pub fn config(&self, name: &str) -> Result<Builder, RegistryError> {
        let config = match self.find_or_err(name)? {
            Registered::Plain(lanes) => lanes.breaker().current_config(),
            Registered::Keyed(keyed) => keyed.config(),
        };
        Ok(Builder::from_config(&config))
    }

    /// Replaces the configuration of the breaker named `name` (of every key, for a keyed one)
    /// while it runs, as [`Handle::reconfigure`] does.
    ///
    /// # Errors
    ///
    /// [`RegistryError::UnknownName`]; [`RegistryError::Config`] for a configuration out of
    /// range or one that changes what cannot change. The old configuration stays in force.
    pub fn reconfigure(&self, name: &str, builder: Builder) -> Result<(), RegistryError> {
        match self.find_or_err(name)? {
            Registered::Plain(lanes) => {
                let config = checked(&builder, &lanes.breaker().current_config())?;
                lanes.breaker().reconfigure(Arc::new(config));
            }
            Registered::Keyed(keyed) => {
                let config = checked(&builder, &keyed.config())?;
                keyed.reconfigure(Arc::new(config));
            }
        }
        Ok(())
    }

    /// Applies `update` to the configuration of the breaker named `name`: the fields it sets
    /// replace those in force, the others stay.
    ///
    /// # Errors
    ///
    /// As for [`reconfigure`](Self::reconfigure).
    pub fn update(&self, name: &str, update: &ConfigUpdate) -> Result<(), RegistryError> {
        let builder = update.apply(self.config(name)?)?;
        self.reconfigure(name, builder)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Arc<str>, Registered>> {
        self.breakers.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn find(&self, name: &str) -> Option<Registered> {
        self.read().get(name).cloned()
    }

    fn find_or_err(&self, name: &str) -> Result<Registered, RegistryError> {
        self.find(name)
            .ok_or_else(|| RegistryError::UnknownName(name.to_string()))
    }

    /// Adds `registered` under `name`, or gives back what has the name already.
    fn insert(&self, name: Arc<str>, registered: Registered) -> Result<(), Registered> {
        let mut breakers = self
            .breakers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = breakers.get(&name) {
            return Err(existing.clone());
        }
        breakers.insert(name, registered);
        Ok(())
    }
}

fn plain(handle: &Handle) -> Registered {
    Registered::Plain(Arc::new(Lanes::new(handle.breaker().clone())))
}

fn unnamed() -> ConfigError {
    ConfigError::new(
        "name",
        None::<&str>,
        "a name: a registry finds breakers by name",
    )
}

fn unknown_key(name: &str, key: &str) -> RegistryError {
    RegistryError::UnknownKey {
        name: name.to_string(),
        key: key.to_string(),
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("names", &self.names())
            .finish()
    }
}

// ===== Control =====

/// An operator's action on a breaker ([`Registry::control`]); parsed from the words an admin
/// API uses.
///
/// ```
/// use tower_circuit_breaker::registry::Control;
///
/// assert_eq!("force-open".parse::<Control>(), Ok(Control::ForceOpen));
/// assert_eq!(Control::MetricsOnly.to_string(), "metrics-only");
/// let err = "explode".parse::<Control>().unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "unknown action `explode` (expected force-open, disable, metrics-only or reset)"
/// );
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Control {
    /// [`Handle::force_open`].
    ForceOpen,
    /// [`Handle::disable`].
    Disable,
    /// [`Handle::metrics_only`].
    MetricsOnly,
    /// [`Handle::reset`].
    Reset,
}

impl Control {
    /// Every action, in the order of the admin API's words.
    pub const ALL: [Control; 4] = [
        Control::ForceOpen,
        Control::Disable,
        Control::MetricsOnly,
        Control::Reset,
    ];

    fn state(self) -> State {
        match self {
            Control::ForceOpen => State::ForcedOpen,
            Control::Disable => State::Disabled,
            Control::MetricsOnly => State::MetricsOnly,
            Control::Reset => State::Closed,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Control::ForceOpen => "force-open",
            Control::Disable => "disable",
            Control::MetricsOnly => "metrics-only",
            Control::Reset => "reset",
        }
    }
}

impl fmt::Display for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

impl FromStr for Control {
    type Err = RegistryError;

    fn from_str(word: &str) -> Result<Self, RegistryError> {
        Control::ALL
            .into_iter()
            .find(|c| c.word() == word)
            .ok_or_else(|| RegistryError::UnknownAction(word.to_string()))
    }
}

// ===== RegistryError =====

/// Why a registry refused a request; nothing was changed.
///
/// ```
/// use tower_circuit_breaker::registry::{Control, Registry, RegistryError};
///
/// let registry = Registry::new();
/// let err = registry.control("nope", None, Control::Reset).unwrap_err();
/// assert!(matches!(err, RegistryError::UnknownName(_)));
/// assert_eq!(err.to_string(), "no breaker named `nope`");
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryError {
    /// No breaker has this name.
    UnknownName(String),
    /// The breaker has no key with this text (or is a plain breaker, which has no keys).
    UnknownKey {
        /// The breaker's name.
        name: String,
        /// The key asked for.
        key: String,
    },
    /// Not an action ([`Control`]).
    UnknownAction(String),
    /// Another breaker has this name already.
    NameTaken(String),
    /// A configuration value out of range, or one that cannot change.
    Config(ConfigError),
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryError::UnknownName(name) => write!(f, "no breaker named `{name}`"),
            RegistryError::UnknownKey { name, key } => {
                write!(f, "breaker `{name}` has no key `{key}`")
            }
            RegistryError::UnknownAction(word) => write!(
                f,
                "unknown action `{word}` (expected force-open, disable, metrics-only or reset)"
            ),
            RegistryError::NameTaken(name) => {
                write!(f, "another breaker is named `{name}` already")
            }
            RegistryError::Config(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for RegistryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RegistryError::Config(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ConfigError> for RegistryError {
    fn from(e: ConfigError) -> Self {
        RegistryError::Config(e)
    }
}
