//! `cg-http <row> <A|C> <calls>`: the HTTP rows (`http_rows`) in a fixed loop, for callgrind.
//! `cg-http --list` names them.

use tower_circuit_breaker_benches::http_rows::rows;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--list") {
        for (name, _) in rows(false) {
            println!("{name}");
        }
        return;
    }
    let [_, name, scenario, calls] = &args[..] else {
        eprintln!("usage: cg-http <row> <A|C> <calls>");
        std::process::exit(2);
    };
    let open = scenario == "C";
    let calls: u64 = calls.parse().expect("a number of calls");
    let (_, mut call) = rows(open)
        .into_iter()
        .find(|(n, _)| n == name)
        .expect("a row of `cg-http --list`");
    for x in 0..calls {
        call(x);
    }
}
