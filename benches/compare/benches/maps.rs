//! How the keyed layer's map was chosen: the lookup of an existing key among 10,000, the value an
//! `Arc` cloned out of the map (what the keyed layer does per call), on 1 thread and on 2 threads
//! at once, for a `Mutex<HashMap>` (the baseline), sharded `std::sync::RwLock<HashMap>`s as the
//! crate has them, and the well-kept concurrent maps: dashmap (sharded `RwLock`s of its own),
//! papaya (lock-free reads, epoch reclamation), scc's `HashMap` (per-bucket locks) and
//! `HashIndex` (lock-free reads), and moka's cache (eviction built in; a read records the access).
//! Every map hashes with std's `RandomState` (SipHash), the default of all of them.
//!
//! Ids: `maps/<map>/<threads>`; for 2 threads, the wall time per lookup per thread, as in D.
//! Keys are visited in a scrambled order (a multiplicative step modulo 10,000), each thread from
//! its own start.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::hint::black_box;
use std::sync::{Arc, Barrier, Mutex, RwLock};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

const KEYS: u64 = 10_000;
/// A step coprime with `KEYS`, so that `i * STEP % KEYS` visits every key in a scrambled order.
const STEP: u64 = 7_919;

trait Map: Send + Sync + 'static {
    fn insert(&self, key: u64, value: Arc<u64>);
    fn lookup(&self, key: u64) -> Option<Arc<u64>>;
}

struct MutexMap(Mutex<HashMap<u64, Arc<u64>>>);

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
struct Sharded {
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
    fn new() -> Self {
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

fn filled<M: Map>(map: M) -> Arc<M> {
    for key in 0..KEYS {
        map.insert(key, Arc::new(key));
    }
    Arc::new(map)
}

/// `iters` lookups from `start`, each checked.
#[inline]
fn lookups<M: Map>(map: &M, start: u64, iters: u64) {
    let mut key = start % KEYS;
    for _ in 0..iters {
        let value = black_box(map.lookup(black_box(key))).expect("every key is there");
        assert_eq!(*value, key);
        key = (key + STEP) % KEYS;
    }
}

fn bench<M: Map>(c: &mut Criterion, name: &str, map: Arc<M>) {
    c.bench_function(&format!("maps/{name}/1"), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            lookups(&*map, 0, iters);
            start.elapsed()
        })
    });
    c.bench_function(&format!("maps/{name}/2"), |b| {
        b.iter_custom(|iters| {
            let barrier = Arc::new(Barrier::new(2));
            let threads: Vec<_> = (0..2u64)
                .map(|t| {
                    let (map, barrier) = (map.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        let start = Instant::now();
                        lookups(&*map, t * KEYS / 2, iters);
                        (start, Instant::now())
                    })
                })
                .collect();
            let spans: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            let start = spans.iter().map(|s| s.0).min().unwrap();
            spans.iter().map(|s| s.1).max().unwrap() - start
        })
    });
}

fn maps(c: &mut Criterion) {
    bench(c, "mutex-hashmap", filled(MutexMap(Mutex::default())));
    bench(c, "sharded-rwlock", filled(Sharded::new()));
    bench(c, "dashmap", filled(dashmap::DashMap::new()));
    bench(c, "papaya", filled(papaya::HashMap::new()));
    bench(c, "scc-hashmap", filled(scc::HashMap::new()));
    bench(c, "scc-hashindex", filled(scc::HashIndex::new()));
    let cache = moka::sync::Cache::new(2 * KEYS);
    let cache = filled(cache);
    cache.run_pending_tasks();
    bench(c, "moka", cache);
}

criterion_group! {
    name = group;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = maps
}
criterion_main!(group);
