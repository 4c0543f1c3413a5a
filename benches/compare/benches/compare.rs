//! Criterion benches: every row through scenarios A (closed, all succeed), B (closed, every 10th
//! fails, never trips), C (open, rejected) and D (A on 2 OS threads sharing one breaker, each
//! thread with its own clone). Each sample checks every outcome and the inner call count; the
//! state is checked before and after each bench (see `prepare` and `check_state`).
//!
//! Ids: `<scenario>/<row>`, e.g. `A/ours`, `D/recloser`. D reports the wall time per call per
//! thread (from the first thread's start to the last thread's end, divided by the calls of one
//! thread); the total throughput is 2 / that.
//!
//! This bench polls each call in line (the secondary view); `compare-await` runs the same rows as
//! applications call them.

mod common;

use common::{config, selected, single, two_threads};
use criterion::{Criterion, criterion_group, criterion_main};
use tower_circuit_breaker_benches::{ROWS, with_row};

fn benches(c: &mut Criterion) {
    for row in ROWS.iter().filter(|row| selected(row.name)) {
        let name = row.name;
        for &scenario in row.scenarios {
            with_row!(name, |r| single(c, name, r, scenario));
        }
        if row.two_threads() {
            with_row!(name, |r| two_threads(c, name, r));
        }
    }
}

criterion_group! {
    name = group;
    config = config();
    targets = benches
}
criterion_main!(group);
