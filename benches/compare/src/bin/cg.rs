//! A fixed loop for callgrind: `cg <row> <scenario> <calls>` prepares the row for the scenario,
//! then makes `calls` calls. `scripts/instructions` runs it twice per row and scenario with
//! different call counts and divides the difference in instructions by the difference in calls,
//! so setup and teardown cancel out.
//!
//! `cg --list` prints the rows and the scenarios each runs (`ROWS`, as a TSV table), for the
//! scripts, which keep no list of their own.

use std::hint::black_box;

use tower_circuit_breaker_benches::{Scenario, prepare, rows_tsv, run, with_row};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag] = &args[..]
        && flag == "--list"
    {
        print!("{}", rows_tsv());
        return;
    }
    let [_, row, scenario, calls] = &args[..] else {
        eprintln!("usage: cg <row> <A|B|C> <calls>\n       cg --list");
        std::process::exit(2);
    };
    let scenario = Scenario::parse(scenario).expect("scenario A, B or C");
    let calls: u64 = calls.parse().expect("a number of calls");
    with_row!(row.as_str(), |r| {
        let mut r = r;
        prepare(row, &mut r, scenario);
        run(black_box(&mut r), scenario, calls);
    });
}
