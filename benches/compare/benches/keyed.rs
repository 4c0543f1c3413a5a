//! Criterion benches of the keyed layer, beside the plain breaker in the same binary: `A/ours`
//! and `A/ours-oneshot` (the plain breaker, and cloned per call as the keyed layer's calls are),
//! `A/keyed` (an existing key among 10,000), `A/keyed-101` (among 101: their breakers stay in
//! the cache), `A/keyed-new` (a new key each call, at the bound of
//! 10,000: each evicts an idle one), and the same on two threads at once (`D/...`, each thread
//! on its own keys, as in `compare`). Kept out of `compare` (see `src/lib.rs`).

mod common;

use common::{config, selected, single, two_threads};
use criterion::{Criterion, criterion_group, criterion_main};
use tower_circuit_breaker_benches::{
    Ours, Scenario, keyed, keyed_few, keyed_new, ours, ours_oneshot,
};

/// `BENCH_ROWS=keyed,keyed-new` runs some rows only.
fn benches(c: &mut Criterion) {
    if selected("ours") {
        single(c, "ours", ours(Ours::Count), Scenario::A);
        two_threads(c, "ours", ours(Ours::Count));
    }
    if selected("ours-oneshot") {
        single(c, "ours-oneshot", ours_oneshot(), Scenario::A);
        two_threads(c, "ours-oneshot", ours_oneshot());
    }
    if selected("keyed") {
        single(c, "keyed", keyed(), Scenario::A);
        two_threads(c, "keyed", keyed());
    }
    if selected("keyed-101") {
        single(c, "keyed-101", keyed_few(), Scenario::A);
        two_threads(c, "keyed-101", keyed_few());
    }
    if selected("keyed-new") {
        single(c, "keyed-new", keyed_new(), Scenario::A);
        two_threads(c, "keyed-new", keyed_new());
    }
}

criterion_group! {
    name = group;
    config = config();
    targets = benches
}
criterion_main!(group);
