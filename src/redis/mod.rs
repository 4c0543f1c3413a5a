//! Fleet-wide breaker state through Redis (or Valkey): breakers of the same name in different
//! processes learn from each other's failures.
//!
//! # Why
//!
//! When a service runs on many instances, each breaker learning on its own that a dependency is
//! down costs every instance its own burst of failures, and each recovering breaker sends its
//! own probes to the recovering dependency. A [`Fleet`] shares, for every breaker it is given,
//! the window's counts and the transitions through one Redis server, without ever putting Redis
//! on a call's path: a closed call, a rejection and a probe admission read only the local
//! breaker, as without this feature.
//!
//! ```no_run
//! use tower_circuit_breaker::CircuitBreakerLayer;
//! use tower_circuit_breaker::redis::Fleet;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = CircuitBreakerLayer::builder().name("payments").build()?;
//! let fleet = Fleet::builder("checkout").build("redis://127.0.0.1:6379")?;
//! let shared = fleet.share(&layer.handle())?; // keep it: dropping it stops the sharing
//! // ... serve with `layer` ...
//! assert!(shared.instance().len() == 16);
//! # Ok(()) }
//! ```
//!
//! # How
//!
//! One background task per shared breaker, every [`interval`](FleetBuilder::interval):
//!
//! * **Counts**: it adds the outcomes recorded while Closed since its last tick to the current
//!   bucket of a time window in Redis (a hash per bucket, one atomic Lua script), and reads back
//!   the fleet's sum over the window in the same script. If the sum trips the breaker's rate
//!   thresholds (its own `failure_rate_threshold`, `slow_call_rate_threshold` and
//!   `minimum_calls`), the breaker opens with its own interval. The window is the breaker's own
//!   time window, or [`window`](FleetBuilder::window) for a count window, in ten buckets.
//!   Consecutive failures are a local rule.
//! * **Openings**: a local transition to Open wakes the task (the breaker's event stream), which
//!   writes `open until T` (an absolute time) and publishes it on the breaker's channel at once.
//!   Every other instance applies it when the message arrives: a closed or half-open breaker
//!   opens until `T`, an open one stays open until `T` if that is later. Two openings at once
//!   keep the later deadline.
//! * **Probes**: a little before `T` (one interval), each instance asks for the probe lease
//!   (`SET NX` with an expiry of [`probe_lease`](FleetBuilder::probe_lease)). The one that gets
//!   it goes half-open at `T` as usual and sends at most `half_open_calls` probes; the others
//!   stay open until the lease ends and ask again then. The owner's result is published: Closed
//!   closes every instance (and starts a new window of counts), Open opens them again. So the
//!   fleet sends the probes of one breaker, not one per instance.
//! * **Operators**: a `reset` of an open breaker closes the fleet; `force_open`, `disable` and
//!   `metrics_only` stay local, and the fleet never changes them.
//!
//! # Consistency
//!
//! Redis holds the fleet's state; each instance holds a copy that may be behind it:
//!
//! * **How stale**: an opening reaches the other instances in one publish (about a round trip
//!   on a local network) while they are subscribed, and in at most one `interval` plus a round
//!   trip otherwise (each tick reads the state). A closing likewise. Counts are published once
//!   per interval, so the fleet's window is at most an interval behind each instance's.
//! * **What an instance may see**: its own transitions at once, others' after that delay; a
//!   call it admits in the meantime is counted as usual. It never sees a deadline earlier than
//!   the fleet's, and never closes because of an episode older than its opening.
//! * **Time**: every time in Redis is the Redis server's clock, and every script answers with
//!   the server's time, from which each instance maps deadlines onto its own clock (to within
//!   half a round trip). Instances' wall clocks may disagree: they are never compared.
//! * **Redis down, slow or partitioned**: each command has a [`timeout`](FleetBuilder::timeout);
//!   a failure is logged once (warn) and the instance works on its local state alone: its own
//!   window, its own openings, its own probes (as without this feature). Counts of the ticks
//!   that failed are not sent later (they would land in the wrong bucket). Its transitions are
//!   published when Redis answers again, and the fleet's state is followed from then on
//!   ("rejoins"); a success is logged once (info). While unreachable, the shared view is
//!   "unknown", not "closed": nothing is assumed about the other instances.
//! * **Foreign data**: values under our keys that are not ours (another type, a different
//!   format or version, negative or non-numeric counts, an opening further ahead than this
//!   breaker ever opens: its longest interval and a probe lease, plus a minute) are ignored and
//!   logged once per shared breaker, never trusted and never a panic; a write of ours replaces
//!   them.
//!
//! # Keys
//!
//! Every key is under `tcb:1:{<namespace>:<name>}:` (percent-encoded; `1` is the format
//! version; a keyed breaker's key follows its name), and every key written expires: the state
//! record after [`key_ttl`](FleetBuilder::key_ttl) (counted from the end of an open interval,
//! and refreshed by every tick while closed: for a keyed layer's key, every tick that carries
//! it), the window's buckets after the window, the probe lease after the lease. A breaker
//! needs a name (breakers share state by name; unnamed ones would collide).
//!
//! # Keyed breakers
//!
//! Each key of a keyed breaker is a breaker of its own, shared under keys that carry its key.
//! [`Fleet::share_keyed`] shares every key of a keyed layer, the keys made later included,
//! each as [`Fleet::share`] shares a breaker (openings published at once with their deadline,
//! the fleet's window, a probe lease per key, foreign data ignored, Redis down = local), through
//! one task and one pattern subscription for the whole layer:
//!
//! ```no_run
//! use tower_circuit_breaker::{CircuitBreakerLayer, KeyedCircuitBreakerLayer};
//! use tower_circuit_breaker::redis::Fleet;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let per_host = KeyedCircuitBreakerLayer::builder(|host: &String| host.clone())
//!     .breaker(CircuitBreakerLayer::builder().name("upstreams"))
//!     .build()?;
//! let fleet = Fleet::builder("checkout").build("redis://127.0.0.1:6379")?;
//! let shared = fleet.share_keyed(&per_host.handle())?; // keep it
//! # drop(shared);
//! # Ok(()) }
//! ```
//!
//! * **Cost**: each tick sends one script for the keys that recorded outcomes since the last
//!   one (and the keys new since then), none for idle keys; a transition of a key is one script
//!   at once, as for a shared breaker. Commands per second grow with the active keys' ticks,
//!   not with the number of keys. An idle key reads the fleet's openings from the subscription
//!   alone; a tick that missed them (Redis was unreachable, or the subscription was new) reads
//!   every key's state once.
//! * **New keys**: the keyed layer tells the task of each key's breaker as it is made (not on
//!   the path of an existing key). A new key reads the fleet's state at its next tick: if the
//!   fleet holds it open, it opens then (the calls it admits meanwhile are counted as usual).
//!   A published opening of a key that has no breaker here is ignored: it makes none.
//! * **Eviction**: the task holds no key's breaker (weak references and the key's event
//!   stream), so idle keys are evicted as without sharing; an evicted key is no longer
//!   published, and its fleet state stays in Redis until it expires. The overflow breaker is
//!   not shared (it stands for many keys).
//! * [`Fleet::share`] of one key's handle (`KeyedHandle::get`) still works, with a task of its
//!   own; that key is not evicted while its [`Shared`] is kept.
//!
//! //! # Limits
//!
//! * The probe lease goes to the first instance that asks for it, whatever its traffic. An
//!   instance that holds it and receives no call sends no probe, and the others stay open until
//!   its lease ends: with sparse traffic on some instances, keep
//!   [`probe_lease`](FleetBuilder::probe_lease) short.
//! * Consecutive failures, `force_open`, `disable` and `metrics_only` are local.
//! * Each shared breaker has its own task and its own subscription (one connection): made for
//!   the breakers of a service's dependencies; share a keyed layer's keys with
//!   [`Fleet::share_keyed`] instead (one task for all).
//! * A keyed layer's tick sends one script for many keys, whose keys lie in different Redis
//!   Cluster hash slots: `share_keyed` needs one server (or a primary and its replicas).
//! * Written for one Redis or Valkey server (or a primary and its replicas). The keys of one
//!   breaker share a Redis Cluster hash slot, but a cluster is not tested.

mod codec;
#[cfg(feature = "keyed")]
mod keyed;
mod link;
mod member;
mod script;
mod task;

use std::fmt;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo};

use crate::config::WindowKind;
use crate::{ConfigError, Handle};
use codec::Keys;
#[cfg(feature = "keyed")]
pub use keyed::SharedKeyed;
use link::{Link, Status, Window};
use member::Member;
use script::Scripts;
use task::Task;

/// The settings of a [`Fleet`], validated.
#[derive(Clone, Copy, Debug)]
struct Settings {
    interval: Duration,
    timeout: Duration,
    key_ttl: Duration,
    probe_lease: Duration,
    window: Duration,
}

/// Builds a [`Fleet`]: `Fleet::builder(namespace)`, then `build(url)`.
///
/// ```
/// use std::time::Duration;
/// use tower_circuit_breaker::redis::Fleet;
///
/// let fleet = Fleet::builder("checkout")
///     .interval(Duration::from_millis(100))
///     .build("redis://127.0.0.1:6379")?; // connects lazily, from `share`
/// # drop(fleet);
/// let err = Fleet::builder("checkout").interval(Duration::ZERO).build("redis://127.0.0.1").unwrap_err();
/// assert_eq!(err.field(), "interval");
/// # Ok::<(), tower_circuit_breaker::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct FleetBuilder {
    namespace: String,
    settings: Settings,
}

impl FleetBuilder {
    /// How often each shared breaker publishes its counts and reads the fleet's (default 50 ms,
    /// 1 ms to 60 s). Openings and closings are published at once, not at the next tick; the
    /// tick bounds how stale an instance that missed a message can be.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.settings.interval = interval;
        self
    }

    /// How long a Redis command may take before the instance counts Redis as unreachable and
    /// goes on alone (default 250 ms, 1 ms to 60 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = timeout;
        self
    }

    /// How long the fleet's state record lives in Redis without being refreshed (default one
    /// hour, 1 s to 30 days; an open record lives this long after its interval ends).
    pub fn key_ttl(mut self, ttl: Duration) -> Self {
        self.settings.key_ttl = ttl;
        self
    }

    /// How long the instance that probes holds the fleet's probe lease (default 5 s, 1 ms to
    /// one hour): if it neither closes nor reopens in that time (it died, or its probes hang),
    /// another instance takes over. Longer than a probe call takes.
    pub fn probe_lease(mut self, lease: Duration) -> Self {
        self.settings.probe_lease = lease;
        self
    }

    /// The fleet's window for a breaker with a count window (default 10 s, 100 ms to one hour,
    /// in ten buckets). A breaker with a time window shares over its own window.
    pub fn window(mut self, window: Duration) -> Self {
        self.settings.window = window;
        self
    }

    /// Validates the settings and prepares a client for `url` (`redis://host:port/db`,
    /// `rediss://` is not compiled in). Connects lazily, when a breaker is first shared.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting out of range, `namespace` if it is empty or over
    /// 64 bytes, or `url` if the URL cannot be read.
    pub fn build(self, url: impl IntoConnectionInfo) -> Result<Fleet, ConfigError> {
        let s = self.settings;
        let ms = Duration::from_millis;
        check("interval", s.interval, ms(1), ms(60_000), "1ms..=60s")?;
        check("timeout", s.timeout, ms(1), ms(60_000), "1ms..=60s")?;
        let days = Duration::from_secs(30 * 24 * 3600);
        check("key_ttl", s.key_ttl, ms(1000), days, "1s..=30 days")?;
        check(
            "probe_lease",
            s.probe_lease,
            ms(1),
            ms(3_600_000),
            "1ms..=1h",
        )?;
        check("window", s.window, ms(100), ms(3_600_000), "100ms..=1h")?;
        if self.namespace.is_empty() || self.namespace.len() > 64 {
            return Err(ConfigError::new(
                "namespace",
                &self.namespace,
                "1 to 64 bytes",
            ));
        }
        let client = url
            .into_connection_info()
            .and_then(Client::open)
            .map_err(|error| ConfigError::new("url", error.to_string(), "a redis:// URL"))?;
        Ok(Fleet {
            inner: Arc::new(Inner {
                namespace: self.namespace,
                settings: s,
                client,
                connection: OnceLock::new(),
                scripts: Arc::new(Scripts::new()),
            }),
        })
    }
}

fn check(
    field: &'static str,
    value: Duration,
    min: Duration,
    max: Duration,
    allowed: &str,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::new(field, value, allowed));
    }
    Ok(())
}

/// One Redis server through which breakers share their state: see the [module](self) docs.
/// Cheap to clone (the clones share one connection).
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

struct Inner {
    namespace: String,
    settings: Settings,
    client: Client,
    /// One multiplexed connection that reconnects by itself, made on the first `share` (it
    /// needs the runtime).
    connection: OnceLock<ConnectionManager>,
    scripts: Arc<Scripts>,
}

impl fmt::Debug for Fleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field("namespace", &self.inner.namespace)
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// A builder for a fleet whose keys are under `namespace` (an application's name: two
    /// applications with breakers of the same name use two namespaces).
    pub fn builder(namespace: impl Into<String>) -> FleetBuilder {
        FleetBuilder {
            namespace: namespace.into(),
            settings: Settings {
                interval: Duration::from_millis(50),
                timeout: Duration::from_millis(250),
                key_ttl: Duration::from_secs(3600),
                probe_lease: Duration::from_secs(5),
                window: Duration::from_secs(10),
            },
        }
    }

    /// Shares the breaker of `handle` with every other instance's breaker of the same name
    /// (and key) in this namespace, until the returned [`Shared`] is dropped. Starts the
    /// breaker's background task on the current tokio runtime; returns at once (Redis may be
    /// down: the task connects when it can).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for `name` if the breaker has none, or `runtime` if called outside a
    /// tokio runtime.
    pub fn share(&self, handle: &Handle) -> Result<Shared, ConfigError> {
        let name = named(handle.name())?;
        let (runtime, link) = self.link(name)?;
        let breaker = handle.breaker().clone();
        let window = self.window(&breaker.current_config());
        let keys = Keys::new(&self.inner.namespace, name, handle.key());
        let status = link.status.clone();
        let origin = link.origin.clone();
        let task = Task {
            breaker,
            link,
            window,
            member: Member::new(keys),
        };
        let task = runtime.spawn(task.run());
        Ok(Shared {
            task,
            status,
            origin,
        })
    }

    /// The runtime to spawn on and a new line to Redis for a task (the fleet's connection,
    /// made on first use: it needs the runtime).
    fn link(&self, name: &str) -> Result<(tokio::runtime::Handle, Link), ConfigError> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(ConfigError::new(
                "runtime",
                "none",
                "called from within a tokio runtime",
            ));
        };
        let inner = &self.inner;
        let connection = match inner.connection.get() {
            Some(connection) => connection.clone(),
            None => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(inner.settings.timeout))
                    .set_response_timeout(Some(inner.settings.timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(inner.settings.interval.max(Duration::from_millis(100)));
                let _entered = runtime.enter();
                let made = ConnectionManager::new_lazy_with_config(inner.client.clone(), config)
                    .map_err(|error| {
                        ConfigError::new("url", error.to_string(), "a redis:// URL")
                    })?;
                inner.connection.get_or_init(|| made).clone()
            }
        };
        let link = Link::new(
            Arc::from(name),
            inner.client.clone(),
            connection,
            inner.settings,
            instance_id().into(),
            Arc::new(Status::default()),
            inner.scripts.clone(),
        );
        Ok((runtime, link))
    }

    /// The fleet window of breakers configured as `config`, in ten buckets.
    fn window(&self, config: &crate::config::Config) -> Window {
        let window = match config.window {
            WindowKind::Time { duration, .. } => duration,
            WindowKind::Count(_) => self.inner.settings.window,
        };
        let buckets = 10;
        let bucket_ms = (u64::try_from(window.as_millis()).unwrap_or(u64::MAX) / buckets).max(1);
        Window { bucket_ms, buckets }
    }
}

/// The breaker's name, or the error that it needs one.
fn named(name: Option<&str>) -> Result<&str, ConfigError> {
    name.filter(|name| !name.is_empty()).ok_or_else(|| {
        ConfigError::new(
            "name",
            name,
            "a name (`Builder::name`): breakers share their state by name",
        )
    })
}

/// A breaker shared through a [`Fleet`]: dropping it stops the sharing (the breaker goes on
/// alone, as it is).
///
/// ```no_run
/// # use tower_circuit_breaker::{CircuitBreakerLayer, redis::Fleet};
/// # async fn run() -> Result<(), tower_circuit_breaker::ConfigError> {
/// # let handle = CircuitBreakerLayer::builder().name("db").build()?.handle();
/// let shared = Fleet::builder("app").build("redis://127.0.0.1")?.share(&handle)?;
/// if !shared.is_reachable() {
///     // Redis has not answered yet, or not lately: this instance works alone.
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Shared {
    task: tokio::task::JoinHandle<()>,
    status: Arc<Status>,
    origin: Arc<str>,
}

impl Shared {
    /// Whether Redis answered the last command (`false` until it first has).
    pub fn is_reachable(&self) -> bool {
        self.status.reachable.load(Ordering::Relaxed)
    }

    /// This instance's id in Redis (in the state records it writes and the probe lease).
    pub fn instance(&self) -> &str {
        &self.origin
    }

    /// How many Redis commands (scripts and subscriptions) the task has sent.
    pub fn commands_sent(&self) -> u64 {
        self.status.commands.load(Ordering::Relaxed)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An id for this sharing: 16 hex digits from the process's random hasher keys, its id and the
/// time, distinct per call.
fn instance_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::AtomicU64;
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u64(SEQUENCE.fetch_add(1, Ordering::Relaxed));
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    format!("{:016x}", hasher.finish())
}
