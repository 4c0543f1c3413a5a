//! The concurrent maps the keyed layer's map was chosen against, behind one trait: the lookup
//! of an existing key, its value an `Arc` cloned out of the map (what the keyed layer does per
//! call). Used by the criterion bench `maps` (1 and 2 threads) and by the `maps` binary, which
//! `scripts/instructions`-style callgrind runs count instructions of.
//!
//! * `mutex-hashmap`: one `Mutex<HashMap>`, the baseline.
//! * `sharded-rwlock`: 16 `std::sync::RwLock<HashMap>` shards on lines of their own, the key
//!   hashed once (the crate's shape, `src/keyed/map.rs`).
//! * `dashmap` 6 (sharded `RwLock`s of its own), `papaya` 0.2 (lock-free reads, epoch
//!   reclamation), `scc-hashmap` 3 (per-bucket locks), `scc-hashindex` (lock-free reads), `moka`
//!   0.12 (a cache with eviction built in; a read records the access).
//!
//! Every map hashes with std's `RandomState` (SipHash), the default of all of them.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::hint::black_box;
use std::sync::{Arc, Mutex, RwLock};

pub const KEYS: u64 = 10_000;
/// A step coprime with `KEYS`, so that `i * STEP % KEYS` visits every key in a scrambled order.
const STEP: u64 = 7_919;

pub trait Map: Send + Sync + 'static {
    fn insert(&self, key: u64, value: Arc<u64>);
    fn lookup(&self, key: u64) -> Option<Arc<u64>>;
}

pub struct MutexMap(pub Mutex<HashMap<u64, Arc<u64>>>);

impl Map for MutexMap {
    fn insert(&self, key: u64, value: Arc<u64>) {
        self.0.lock().unwrap().insert(key, value);
    }
    #[inline]
    fn lookup(&self, key: u64) -> Option<Arc<u64>> {
        self.0.lock().unwrap().get(&key).cloned()
    }
}

/// The crate's shape (`src/keyed/map.rs`): the key hashed once, the hash picking the shard and
/// handed to the shard's map.
pub struct Sharded {
    shards: Box<[Padded]>,
    hasher: RandomState,
}

#[repr(align(128))]
struct Padded(RwLock<HashMap<Hashed, Arc<u64>, BuildHasherDefault<PassThrough>>>);

#[derive(PartialEq, Eq)]
struct Hashed {
    hash: u64,
    key: u64,
}

impl Hash for Hashed {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn write(&mut self, _: &[u8]) {
        unreachable!()
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl Sharded {
    pub fn new() -> Self {
        Sharded {
            shards: (0..16).map(|_| Padded(RwLock::default())).collect(),
            hasher: RandomState::new(),
        }
    }
    fn key(&self, key: u64) -> (Hashed, usize) {
        let hash = self.hasher.hash_one(key);
        (Hashed { hash, key }, (hash >> 40) as usize & 15)
    }
}

impl Map for Sharded {
    fn insert(&self, key: u64, value: Arc<u64>) {
        let (key, shard) = self.key(key);
        self.shards[shard].0.write().unwrap().insert(key, value);
    }
    #[inline]
    fn lookup(&self, key: u64) -> Option<Arc<u64>> {
        let (key, shard) = self.key(key);
        self.shards[shard].0.read().unwrap().get(&key).cloned()
    }
}

impl Map for dashmap::DashMap<u64, Arc<u64>> {
    fn insert(&self, key: u64, value: Arc<u64>) {
        dashmap::DashMap::insert(self, key, value);
    }
    #[inline]
    fn lookup(&self, key: u64) -> Option<Arc<u64>> {
        self.get(&key).map(|v| v.clone())
    }
}

impl Map for papaya::HashMap<u64, Arc<u64>> {
    fn insert(&self, key: u64, value: Arc<u64>) {
        self.pin().insert(key, value);
    }
    #[inline]
    fn lookup(&self, key: u64) -> Option<Arc<u64>> {
        self.pin().get(&key).cloned()
    }
}

impl Map for scc::HashMap<u64, Arc<u64>> {
    fn insert(&self, key: u64, value: Arc<u64>) {
        let _ = self.insert_sync(key, value);
    }
    #[inline]
    fn lookup(&self, key: u64) -> Option<Arc<u64>> {
        self.read_sync(&key, |_, v| v.clone())
    }
}

impl Map for scc::HashIndex<u64, Arc<u64>> {
    fn insert(&self, key: u64, value: Arc<u64>) {
        let _ = self.insert_sync(key, value);
    }
    #[inline]
    fn lookup(&self, key: u64) -> Option<Arc<u64>> {
        self.peek_with(&key, |_, v| v.clone())
    }
}

impl Map for moka::sync::Cache<u64, Arc<u64>> {
    fn insert(&self, key: u64, value: Arc<u64>) {
        moka::sync::Cache::insert(self, key, value);
    }
    #[inline]
    fn lookup(&self, key: u64) -> Option<Arc<u64>> {
        self.get(&key)
    }
}

pub fn filled<M: Map>(map: M) -> Arc<M> {
    for key in 0..KEYS {
        map.insert(key, Arc::new(key));
    }
    Arc::new(map)
}

/// `iters` lookups from `start`, each checked.
#[inline]
pub fn lookups<M: Map>(map: &M, start: u64, iters: u64) {
    let mut key = start % KEYS;
    for _ in 0..iters {
        let value = black_box(map.lookup(black_box(key))).expect("every key is there");
        assert_eq!(*value, key);
        key = (key + STEP) % KEYS;
    }
}

/// The maps by name, each filled with `KEYS` keys; `body` runs with `map` bound to it.
#[macro_export]
macro_rules! with_map {
    ($name:expr, |$map:ident| $body:expr) => {
        match $name {
            "mutex-hashmap" => {
                let $map = $crate::maps::filled($crate::maps::MutexMap(Default::default()));
                $body
            }
            "sharded-rwlock" => {
                let $map = $crate::maps::filled($crate::maps::Sharded::new());
                $body
            }
            "dashmap" => {
                let $map = $crate::maps::filled(dashmap::DashMap::new());
                $body
            }
            "papaya" => {
                let $map = $crate::maps::filled(papaya::HashMap::new());
                $body
            }
            "scc-hashmap" => {
                let $map = $crate::maps::filled(scc::HashMap::new());
                $body
            }
            "scc-hashindex" => {
                let $map = $crate::maps::filled(scc::HashIndex::new());
                $body
            }
            "moka" => {
                let cache = moka::sync::Cache::new(2 * $crate::maps::KEYS);
                let $map = $crate::maps::filled(cache);
                $map.run_pending_tasks();
                $body
            }
            other => panic!("unknown map {other}"),
        }
    };
}

/// The maps, in the order of the tables.
pub const MAPS: &[&str] = &[
    "mutex-hashmap",
    "sharded-rwlock",
    "dashmap",
    "papaya",
    "scc-hashmap",
    "scc-hashindex",
    "moka",
];
