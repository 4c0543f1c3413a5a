//! How the keyed layer's map was chosen (see `src/maps.rs`): the lookup of an existing key among
//! 10,000 on 1 thread and on 2 threads at once. Ids: `maps/<map>/<threads>`; for 2 threads, the
//! wall time per lookup per thread, as in D. Keys are visited in a scrambled order, each thread
//! from its own start.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tower_circuit_breaker_benches::maps::{KEYS, MAPS, Map, lookups};
use tower_circuit_breaker_benches::with_map;

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
    for &name in MAPS {
        with_map!(name, |map| bench(c, name, map));
    }
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
