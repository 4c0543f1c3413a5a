//! The criterion benches of `compare`, every row as applications call it: `<row>-await`, each
//! call `svc.ready().await` + `svc.call(x).await` in an async block polled as an executor polls a
//! task (`Task`). Ids: `<scenario>/<row>-await`, e.g. `A/ours-await`, `D/recloser-await`.
//! `BENCH_ROWS` takes the names without `-await`.

mod common;

use common::{config, scenarios, selected, single, two_threads};
use criterion::{Criterion, criterion_group, criterion_main};
use tower_circuit_breaker_benches::{ROWS, Scenario, with_task};

fn benches(c: &mut Criterion) {
    for &base in ROWS.iter().filter(|name| selected(name)) {
        let name = format!("{base}-await");
        let name = name.as_str();
        for &scenario in scenarios(base) {
            if scenario == "D" {
                with_task!(name, |row| two_threads(c, name, row));
            } else {
                let scenario = Scenario::parse(scenario).unwrap();
                with_task!(name, |row| single(c, name, row, scenario));
            }
        }
    }
}

criterion_group! {
    name = group;
    config = config();
    targets = benches
}
criterion_main!(group);
