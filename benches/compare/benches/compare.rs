//! Criterion benches: every row through scenarios A (closed, all succeed), B (closed, every 10th
//! fails, never trips), C (open, rejected) and D (A on 2 OS threads sharing one breaker, each
//! thread with its own clone). Each sample checks every outcome and the inner call count; the
//! state is checked before and after each bench (see `prepare` and `check_state`).
//!
//! Ids: `<scenario>/<row>`, e.g. `A/ours`, `D/recloser`. D reports the wall time per call per
//! thread (from the first thread's start to the last thread's end, divided by the calls of one
//! thread); the total throughput is 2 / that.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tower_circuit_breaker_benches::{ROWS, Row, Scenario, check_state, prepare, run, with_row};

/// Which scenarios each row takes part in.
fn scenarios(row: &str) -> &'static [&'static str] {
    match row {
        "baseline" | "floor" | "sketch" | "baseline-oneshot" => &["A", "B", "D"],
        "ours-time" | "ours-slow" => &["A", "B", "C", "D"],
        "ours-fallback" => &["C"],
        _ => &["A", "B", "C", "D"],
    }
}

fn single<R: Row>(c: &mut Criterion, name: &str, mut row: R, scenario: Scenario) {
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

fn two_threads<R: Row>(c: &mut Criterion, name: &str, mut row: R) {
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

fn benches(c: &mut Criterion) {
    let only: Vec<String> = std::env::var("BENCH_ROWS")
        .map(|s| s.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    for &name in ROWS {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        for &scenario in scenarios(name) {
            if scenario == "D" {
                with_row!(name, |row| two_threads(c, name, row));
            } else {
                let scenario = Scenario::parse(scenario).unwrap();
                with_row!(name, |row| single(c, name, row, scenario));
            }
        }
    }
}

criterion_group! {
    name = group;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = benches
}
criterion_main!(group);
