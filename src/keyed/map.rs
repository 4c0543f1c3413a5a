//! The keyed layer's breakers: one per key, in a sharded map, bounded and expiring.
//!
//! **Lookup.** The key is hashed once; the hash picks a shard (a `std::sync::RwLock` around a
//! `HashMap`, on cache lines of its own) and is handed to that shard's map as the key's hash, so
//! nothing is hashed twice. An existing key costs a read lock of its shard, the hash, one
//! comparison, a flag read (the entry was used) and the `Arc` of its breaker cloned. The shards
//! were chosen by measurement over the well-kept concurrent maps (see `BENCHMARKS.md`).
//!
//! **Recency** is a clock-free "used" flag per entry, set by a call if it is not set already (so
//! a key in steady use is only read), and cleared by every scan that looks at it: a scan that
//! finds it set notes "not idle before now". So an entry's idle time is known to within the
//! distance between scans, and always from below: an entry is never taken for idle while it
//! is used.
//!
//! **Expiry** (`idle_timeout`): a sweep removes the entries not used for at least the idle
//! timeout whose breaker may be forgotten. Sweeps run when a new key arrives (at most every
//! quarter of the timeout), when the keys are listed, and on `KeyedHandle::evict_idle`; no
//! background task is needed, and the key bound holds either way.
//!
//! **The bound** (`max_keys`) is exact: a slot is reserved before a key is inserted. At the
//! bound, a new key makes room: the shards take turns, and a scan of one evicts its breakers
//! idle since the previous scan, closed ones before recovered ones (open past the interval, or
//! half-open with no probe admitted: they reject nobody), the least recently used first, up to
//! a sixteenth of the shard at once (so that the next new keys find room without a scan). If no
//! shard has an idle one, the least recently used closed breaker goes. A breaker is
//! never evicted while something holds it (a call in flight, a service about to call), nor when
//! it rejects calls or an operator set its state: Open within its interval, HalfOpen with probes,
//! ForcedOpen, Disabled, MetricsOnly. When no breaker may go, the new key shares the overflow
//! breaker (see the module docs). Nor is one evicted while a `Handle` of it is kept: a handle
//! of a forgotten breaker would control nothing.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Config;
use crate::state::clock::saturating_nanos;
use crate::state::lane::{Lanes, in_use};
use crate::state::{Breaker, Forgettable, State};

/// How many times a new key tries to get a breaker of its own before it takes the overflow
/// breaker: room made by one eviction can be taken by a racing new key, and a reconfiguration
/// meanwhile makes it start again.
const ATTEMPTS: usize = 8;

/// An eviction scan of a shard takes up to this part of it (at least one) among the breakers
/// idle since the previous scan.
const EVICTION_BATCH: usize = 16;

/// A key and its hash, computed once: the shard's map hashes it as that number.
struct Hashed<K> {
    hash: u64,
    key: K,
}

impl<K> Hash for Hashed<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl<K: PartialEq> PartialEq for Hashed<K> {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.key == other.key
    }
}

impl<K: Eq> Eq for Hashed<K> {}

/// Passes a precomputed hash through (`Hashed` writes one `u64`).
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn write(&mut self, bytes: &[u8]) {
        // Not reached (`Hashed` writes a u64); correct anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type ShardMap<K> = HashMap<Hashed<K>, Entry, BuildHasherDefault<PassThrough>>;

/// One shard, on cache lines of its own: two cores reading different shards never share a line.
#[repr(align(128))]
struct Shard<K>(RwLock<ShardMap<K>>);

impl<K> Shard<K> {
    fn read(&self) -> RwLockReadGuard<'_, ShardMap<K>> {
        // A panic under the lock (a key's `Hash` or `Eq`) leaves the map usable.
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, ShardMap<K>> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One key's breaker and its recency.
struct Entry {
    lanes: Arc<Lanes>,
    /// Set by a call (if not set), cleared by a scan.
    used: AtomicBool,
    /// Not used since this instant, at least (nanoseconds since the map's creation): the scan
    /// that last found `used` set, or the creation.
    idle_since: AtomicU64,
}

impl Entry {
    #[inline]
    fn touch(&self) {
        // Relaxed: a hint for eviction. Read first, so that a key in steady use is only read and
        // its line stays shared between cores.
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }

    /// A scan's look at the entry (under the shard's write lock): returns `idle_since`.
    fn observe(&self, now: u64) -> u64 {
        if self.used.swap(false, Ordering::Relaxed) {
            self.idle_since.store(now, Ordering::Relaxed);
        }
        self.idle_since.load(Ordering::Relaxed)
    }

    /// Why the entry may go, if it may: nothing holds it and its breaker may be forgotten.
    fn forgettable(&self) -> Option<Forgettable> {
        if in_use(&self.lanes) {
            return None;
        }
        self.lanes.forgettable(&mut self.lanes.now())
    }
}

/// What the keyed builder decided about the keys.
pub(crate) struct Settings<K> {
    pub(crate) max_keys: usize,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) display: Box<dyn Fn(&K) -> String + Send + Sync>,
}

/// What a new key's breaker gets.
struct ForNewKeys {
    config: Arc<Config>,
    /// The operator's state for every key (`None`: Closed, the default).
    forced: Option<State>,
    /// One more with every change, so that a key made against older settings is made again.
    version: u64,
    /// Told of every new key's breaker as it is made (a fleet sharing every key). A new
    /// watcher is a change: a key made before it and inserted after is made again, so that
    /// every key is either listed to the watcher or told to it.
    #[cfg(feature = "redis")]
    watchers: Vec<Watcher>,
}

/// Every key's breaker, and the overflow breaker.
pub(crate) struct Breakers<K> {
    shards: Box<[Shard<K>]>,
    hasher: RandomState,
    /// Keys in the map; never above `max_keys` (a slot is reserved before an insert).
    len: AtomicUsize,
    max_keys: usize,
    idle_timeout: Option<u64>,
    /// Sweeps run at most this often (nanoseconds).
    sweep_every: u64,
    last_sweep: AtomicU64,
    /// The shard where the next eviction starts looking.
    hand: AtomicUsize,
    /// Whether new keys are going to the overflow breaker (for one warning per episode).
    overflowing: AtomicBool,
    epoch: Instant,
    /// What new keys get: replaced by a reconfiguration or an operator.
    settings: Mutex<ForNewKeys>,
    display: Box<dyn Fn(&K) -> String + Send + Sync>,
    overflow: Arc<Lanes>,
}

/// Told of a new key's breaker (on the path of a new key only, outside every lock); answers
/// whether it wants to hear of the next ones.
#[cfg(feature = "redis")]
pub(crate) type Watcher = Arc<dyn Fn(&Arc<Breaker>) -> bool + Send + Sync>;

impl<K: Hash + Eq + Clone> Breakers<K> {
    pub(crate) fn new(config: Config, settings: Settings<K>) -> Self {
        let config = Arc::new(config);
        // As many shards as dashmap makes (4 per core, a power of two), at least 16, so that
        // two cores rarely meet on one lock and an eviction scan looks at a small part.
        let cores = std::thread::available_parallelism().map_or(4, usize::from);
        let shards = (cores * 4).next_power_of_two().clamp(16, 256);
        let idle_timeout = settings.idle_timeout.map(saturating_nanos);
        let overflow = Breaker::new(config.clone(), Some(Arc::from(super::OVERFLOW_KEY)));
        Breakers {
            shards: (0..shards).map(|_| Shard(RwLock::default())).collect(),
            hasher: RandomState::new(),
            len: AtomicUsize::new(0),
            max_keys: settings.max_keys,
            idle_timeout,
            sweep_every: idle_timeout.map_or(u64::MAX, |t| (t / 4).max(1)),
            last_sweep: AtomicU64::new(0),
            hand: AtomicUsize::new(0),
            overflowing: AtomicBool::new(false),
            epoch: Instant::now(),
            settings: Mutex::new(ForNewKeys {
                config,
                forced: None,
                version: 0,
                #[cfg(feature = "redis")]
                watchers: Vec::new(),
            }),
            display: settings.display,
            overflow: Arc::new(Lanes::new(Arc::new(overflow))),
        }
    }

    fn shard(&self, hash: u64) -> &Shard<K> {
        // Bits the shard's own table does not use for its buckets (the low ones) or its control
        // bytes (the top seven).
        &self.shards[(hash >> 40) as usize & (self.shards.len() - 1)]
    }

    fn now(&self) -> u64 {
        saturating_nanos(crate::state::clock::read().saturating_duration_since(self.epoch))
    }

    /// The breaker of `key`, made on first use (or the overflow breaker: see the module docs).
    #[inline]
    pub(crate) fn lookup(&self, key: K) -> Arc<Lanes> {
        let hashed = Hashed {
            hash: self.hasher.hash_one(&key),
            key,
        };
        if let Some(entry) = self.shard(hashed.hash).read().get(&hashed) {
            entry.touch();
            return entry.lanes.clone();
        }
        self.insert(hashed)
    }

    #[cold]
    #[inline(never)]
    fn insert(&self, hashed: Hashed<K>) -> Arc<Lanes> {
        let now = self.now();
        self.sweep_if_due(now);
        // User code: run before any lock of ours is taken.
        let text: Arc<str> = Arc::from((self.display)(&hashed.key));
        let shard = self.shard(hashed.hash);
        for _ in 0..ATTEMPTS {
            let (made, version) = self.make(&text);
            let mut map = shard.write();
            if let Some(entry) = map.get(&hashed) {
                entry.touch(); // made by a racing call meanwhile
                return entry.lanes.clone();
            }
            if lock(&self.settings).version != version {
                continue; // reconfigured or forced meanwhile: make it again
            }
            if self.reserve() {
                let entry = Entry {
                    lanes: made.clone(),
                    used: AtomicBool::new(true),
                    idle_since: AtomicU64::new(now),
                };
                map.insert(hashed, entry);
                drop(map);
                if self.overflowing.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        breaker = self.name(),
                        "new keys get breakers of their own again"
                    );
                }
                return made;
            }
            drop(map);
            if !self.make_room(now) {
                break;
            }
        }
        if !self.overflowing.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                breaker = self.name(),
                max_keys = self.max_keys,
                "every key's breaker is open or in use: new keys share the overflow breaker"
            );
        }
        self.overflow.clone()
    }

    /// A new key's breaker, made outside any lock of ours (an operator's state is a transition,
    /// announced at once), and the version of the settings it was made with.
    fn make(&self, text: &Arc<str>) -> (Arc<Lanes>, u64) {
        let settings = lock(&self.settings);
        let (config, forced, version) =
            (settings.config.clone(), settings.forced, settings.version);
        #[cfg(feature = "redis")]
        let watchers = settings.watchers.clone(); // none: no allocation
        drop(settings);
        let breaker = Breaker::new(config, Some(text.clone()));
        if let Some(state) = forced {
            breaker.force(state);
        }
        let breaker = Arc::new(breaker);
        #[cfg(feature = "redis")]
        for watcher in &watchers {
            if !watcher(&breaker) {
                let mut settings = lock(&self.settings);
                settings.watchers.retain(|w| !Arc::ptr_eq(w, watcher));
            }
        }
        (Arc::new(Lanes::new(breaker)), version)
    }

    /// Tells `watcher` of every key's breaker made from now on, and returns those there are
    /// (a breaker made meanwhile may be in both).
    #[cfg(feature = "redis")]
    pub(crate) fn watch(&self, watcher: Watcher) -> Vec<Arc<Breaker>> {
        self.change(|settings| settings.watchers.push(watcher));
        self.entries().into_iter().map(|(_, b)| b).collect()
    }

    fn name(&self) -> &str {
        self.overflow.name().map_or("", |n| &**n)
    }

    /// Takes a slot under the bound.
    fn reserve(&self) -> bool {
        // Relaxed: the count alone is the bound; the map's lock orders the inserts.
        self.len
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max_keys).then_some(n + 1)
            })
            .is_ok()
    }

    /// Evicts one breaker to make room (see the module docs); false if none may go.
    fn make_room(&self, now: u64) -> bool {
        let shards = self.shards.len();
        let start = self.hand.fetch_add(1, Ordering::Relaxed);
        // (shard, rank) of the best candidate that was used recently.
        let mut fallback: Option<(usize, Rank)> = None;
        for i in 0..shards {
            let index = (start + i) % shards;
            let mut map = self.shards[index].write();
            let mut candidates = candidates(&map, now);
            let best = candidates.iter().map(|c| c.0).min();
            // Those not used since the last look.
            candidates.retain(|(rank, _)| !rank.0);
            if !candidates.is_empty() {
                // Several at once, the least recently used first, so that the next new keys
                // find room without a scan: the scan's cost is shared.
                let batch = (map.len() / EVICTION_BATCH).max(1);
                if candidates.len() > batch {
                    candidates.select_nth_unstable_by(batch - 1, |a, b| a.0.cmp(&b.0));
                    candidates.truncate(batch);
                }
                for (_, key) in &candidates {
                    map.remove(key);
                }
                self.len.fetch_sub(candidates.len(), Ordering::Relaxed);
                return true;
            }
            if let Some(rank) = best
                && fallback.is_none_or(|(_, b)| rank < b)
            {
                fallback = Some((index, rank));
            }
        }
        // Every candidate was used since the last look: the least recently used one goes.
        let Some((index, _)) = fallback else {
            return false;
        };
        let mut map = self.shards[index].write();
        let victim = candidates(&map, now)
            .into_iter()
            .min_by(|a, b| a.0.cmp(&b.0));
        match victim {
            Some((_, key)) => {
                map.remove(&key);
                self.len.fetch_sub(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    fn sweep_if_due(&self, now: u64) {
        let last = self.last_sweep.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= self.sweep_every
            && self
                .last_sweep
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.sweep(now);
        }
    }

    /// Removes the breakers idle for at least the idle timeout that may be forgotten.
    fn sweep(&self, now: u64) -> usize {
        let Some(timeout) = self.idle_timeout else {
            return 0;
        };
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut map = shard.write();
            let before = map.len();
            map.retain(|_, entry| {
                let idle_since = entry.observe(now);
                now.saturating_sub(idle_since) < timeout || entry.forgettable().is_none()
            });
            removed += before - map.len();
        }
        self.len.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    /// Runs the idle sweep now; returns how many breakers it removed.
    pub(crate) fn evict_idle(&self) -> usize {
        let now = self.now();
        self.last_sweep.store(now, Ordering::Relaxed);
        self.sweep(now)
    }

    /// The breaker of `key`, if it has one (not marked used: looking is not using).
    pub(crate) fn get(&self, key: &K) -> Option<Arc<Lanes>> {
        let hashed = Hashed {
            hash: self.hasher.hash_one(key),
            key: key.clone(),
        };
        let map = self.shard(hashed.hash).read();
        map.get(&hashed).map(|entry| entry.lanes.clone())
    }

    /// Forgets `key`'s breaker, whatever its state; whether it had one.
    pub(crate) fn remove(&self, key: &K) -> bool {
        let hashed = Hashed {
            hash: self.hasher.hash_one(key),
            key: key.clone(),
        };
        let removed = self.shard(hashed.hash).write().remove(&hashed).is_some();
        if removed {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Every key and its breaker (after a sweep, if one is due).
    pub(crate) fn entries(&self) -> Vec<(K, Arc<Breaker>)> {
        self.sweep_if_due(self.now());
        let mut all = Vec::with_capacity(self.len());
        for shard in self.shards.iter() {
            let map = shard.read();
            all.extend(
                map.iter()
                    .map(|(k, e)| (k.key.clone(), e.lanes.breaker().clone())),
            );
        }
        all
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub(crate) fn max_keys(&self) -> usize {
        self.max_keys
    }

    pub(crate) fn overflow(&self) -> &Arc<Lanes> {
        &self.overflow
    }

    /// The configuration new keys get.
    pub(crate) fn config(&self) -> Arc<Config> {
        lock(&self.settings).config.clone()
    }

    /// Puts `config` in force for every key, the overflow breaker and the keys to come.
    pub(crate) fn reconfigure(&self, config: Arc<Config>) {
        self.change(|settings| settings.config = config.clone());
        self.overflow.reconfigure(config.clone());
        self.for_each(|lanes| lanes.reconfigure(config.clone()));
    }

    /// Puts every key, the overflow breaker and the keys to come in `state` (`Closed`: reset,
    /// and new keys start Closed again).
    pub(crate) fn force(&self, state: State) {
        self.change(|settings| settings.forced = (state != State::Closed).then_some(state));
        self.overflow.force(state);
        self.for_each(|lanes| lanes.force(state));
    }

    /// Changes what new keys get. First, before the keys are visited: a key made with the old
    /// settings was inserted before this change (under its shard's lock, after checking the
    /// version), so the visit finds it; a key made after sees the new version.
    fn change(&self, f: impl FnOnce(&mut ForNewKeys)) {
        let mut settings = lock(&self.settings);
        f(&mut settings);
        settings.version += 1;
    }

    /// Runs `f` on every key's breaker, outside the shards' locks (calls go on meanwhile, and a
    /// transition's announcement is user code).
    fn for_each(&self, f: impl Fn(&Arc<Lanes>)) {
        for shard in self.shards.iter() {
            let breakers: Vec<Arc<Lanes>> =
                shard.read().values().map(|e| e.lanes.clone()).collect();
            for lanes in &breakers {
                f(lanes);
            }
        }
    }
}

/// How an entry ranks for eviction (lower goes first): used since the last look, why it may be
/// forgotten (closed before recovered), idle since.
type Rank = (bool, Forgettable, u64);

/// The entries of `map` that may go, with their rank (clearing the used flags: see
/// `Entry::observe`).
fn candidates<K: Clone>(map: &ShardMap<K>, now: u64) -> Vec<(Rank, Hashed<K>)> {
    let mut candidates = Vec::new();
    for (key, entry) in map.iter() {
        let used = entry.used.load(Ordering::Relaxed);
        let idle_since = entry.observe(now);
        if let Some(why) = entry.forgettable() {
            candidates.push(((used, why, idle_since), key.clone_key()));
        }
    }
    candidates
}

impl<K: Clone> Hashed<K> {
    fn clone_key(&self) -> Hashed<K> {
        Hashed {
            hash: self.hash,
            key: self.key.clone(),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<K> fmt::Debug for Breakers<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breakers")
            .field("keys", &self.len.load(Ordering::Relaxed))
            .field("max_keys", &self.max_keys)
            .field("idle_timeout", &self.idle_timeout.map(Duration::from_nanos))
            .finish_non_exhaustive()
    }
}
