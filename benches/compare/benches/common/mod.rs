//! What the two criterion benches share: `compare` (the rows polled in line) and `compare-await`
//! (the same rows as applications call them, `<row>-await`). Two bench binaries, so that neither
//! driver's copy of a row changes what the compiler inlines into the other (see `with_task`).

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::Criterion;
use tower_circuit_breaker_benches::{Row, Scenario, check_state, prepare, run};

pub fn single<R: Row>(c: &mut Criterion, name: &str, mut row: R, scenario: Scenario) {
    prepare(name, &mut row, scenario);
    let id = format!("{scenario:?}/{name}");
    c.bench_function(&id, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            run(black_box(&mut row), scenario, iters);
            start.elapsed()
        })
    });
    check_state(name, &row, scenario);
}

pub fn two_threads<R: Row>(c: &mut Criterion, name: &str, mut row: R) {
    prepare(name, &mut row, Scenario::A);
    let id = format!("D/{name}");
    c.bench_function(&id, |b| {
        b.iter_custom(|iters| {
            let barrier = Arc::new(Barrier::new(2));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let mut row = row.clone();
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        barrier.wait();
                        let start = Instant::now();
                        run(&mut row, Scenario::A, iters);
                        (start, Instant::now())
                    })
                })
                .collect();
            let spans: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            let start = spans.iter().map(|s| s.0).min().unwrap();
            let end = spans.iter().map(|s| s.1).max().unwrap();
            end - start
        })
    });
    check_state(name, &row, Scenario::A);
}

/// The rows to run: `BENCH_ROWS=ours,recloser` (names without `-await`), or all of them.
pub fn selected(name: &str) -> bool {
    std::env::var("BENCH_ROWS").map_or(true, |only| only.split(',').any(|o| o == name))
}

/// Criterion's settings for every bench.
pub fn config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}
