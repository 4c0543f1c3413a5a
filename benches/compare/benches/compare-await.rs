//! The criterion benches of `compare`, every row as applications call it: `<row>-await`, each
//! call `svc.ready().await` + `svc.call(x).await` in an async block polled as an executor polls a
//! task (`Task`). Ids: `<scenario>/<row>-await`, e.g. `A/ours-await`, `D/recloser-await`.
//! `BENCH_ROWS` takes the names without `-await`.

mod common;

use common::{config, selected, single, two_threads};
use criterion::{Criterion, criterion_group, criterion_main};
use tower_circuit_breaker_benches::{ROWS, with_task};

fn benches(c: &mut Criterion) {
    for row in ROWS.iter().filter(|row| selected(row.name)) {
        let name = format!("{}-await", row.name);
        let name = name.as_str();
        for &scenario in row.scenarios {
            with_task!(name, |r| single(c, name, r, scenario));
        }
        if row.two_threads() {
            with_task!(name, |r| two_threads(c, name, r));
        }
    }
}

criterion_group! {
    name = group;
    config = config();
    targets = benches
}
criterion_main!(group);
