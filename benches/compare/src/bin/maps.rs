//! A fixed loop for callgrind: `maps <map> <lookups>` fills the map with 10,000 keys, then looks
//! up existing keys `lookups` times. Run it twice with different counts and divide the
//! difference in instructions, as `scripts/instructions` does for the rows:
//!
//! ```sh
//! for n in 10000 60000; do valgrind --tool=callgrind --callgrind-out-file=/tmp/m.$n \
//!     target/release/maps sharded-rwlock $n; done
//! ```
//!
//! `maps --list` prints the maps.

use tower_circuit_breaker_benches::maps::{MAPS, lookups};
use tower_circuit_breaker_benches::with_map;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match &args[..] {
        [_, flag] if flag == "--list" => {
            for map in MAPS {
                println!("{map}");
            }
        }
        [_, map, n] => {
            let n: u64 = n.parse().expect("a number of lookups");
            with_map!(map.as_str(), |m| lookups(&*m, 0, n));
        }
        _ => {
            eprintln!("usage: maps <map> <lookups> | maps --list");
            std::process::exit(2);
        }
    }
}
