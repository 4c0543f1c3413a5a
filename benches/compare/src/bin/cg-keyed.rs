//! A fixed loop for callgrind, for the keyed rows (kept out of `cg`: see `src/lib.rs`):
//! `cg-keyed <row> <calls>` with `row` one of `ours`, `ours-oneshot` (the plain breaker, beside
//! them in this binary), `keyed` (an existing key among 10,000), `keyed-101` (among 101) and `keyed-new` (a new key each
//! call, at the bound of 10,000), every call a success (scenario A). Run it twice with different
//! counts and divide the difference in instructions, as `scripts/instructions` does:
//!
//! ```sh
//! for n in 10000 60000; do valgrind --tool=callgrind --callgrind-out-file=/tmp/k.$n \
//!     target/release/cg-keyed keyed $n; done
//! ```

use std::hint::black_box;

use tower_circuit_breaker_benches::{
    Ours, Row, Scenario, keyed, keyed_few, keyed_new, ours, ours_oneshot, prepare, run,
};

fn go<R: Row>(name: &str, mut row: R, calls: u64) {
    prepare(name, &mut row, Scenario::A);
    run(black_box(&mut row), Scenario::A, calls);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, row, calls] = &args[..] else {
        eprintln!("usage: cg-keyed <ours|ours-oneshot|keyed|keyed-101|keyed-new> <calls>");
        std::process::exit(2);
    };
    let calls: u64 = calls.parse().expect("a number of calls");
    match row.as_str() {
        "ours" => go(row, ours(Ours::Count), calls),
        "ours-oneshot" => go(row, ours_oneshot(), calls),
        "keyed" => go(row, keyed(), calls),
        "keyed-101" => go(row, keyed_few(), calls),
        "keyed-new" => go(row, keyed_new(), calls),
        other => panic!("unknown row {other}"),
    }
}
