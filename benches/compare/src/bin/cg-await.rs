//! `cg` for the rows as applications call them: `cg-await <row>-await <scenario> <calls>` runs
//! the fixed loop of `cg` with each call driven by `Task` (`svc.ready().await` +
//! `svc.call(x).await` polled as an executor polls a task). A binary of its own, so that neither
//! driver's copy of a row changes what the compiler inlines into the other (see `with_task`).
//! `scripts/instructions` runs it as it runs `cg`.

use std::hint::black_box;

use tower_circuit_breaker_benches::{Scenario, prepare, run, with_task};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, row, scenario, calls] = &args[..] else {
        eprintln!("usage: cg-await <row>-await <A|B|C> <calls>");
        std::process::exit(2);
    };
    let scenario = Scenario::parse(scenario).expect("scenario A, B or C");
    let calls: u64 = calls.parse().expect("a number of calls");
    with_task!(row.as_str(), |r| {
        let mut r = r;
        prepare(row, &mut r, scenario);
        run(black_box(&mut r), scenario, calls);
    });
}
