//! Heap use, with a counting global allocator (only in this binary):
//!
//! * heap per breaker: bytes (and allocations) made by constructing one row with its breaker, and
//!   the bytes still live afterwards;
//! * allocations and bytes per call in scenarios A, B and C, over 100 000 calls after the row was
//!   brought into the scenario's state.
//!
//! Prints one TSV line per row: `row heap_bytes heap_allocs live_bytes allocs_A bytes_A allocs_B
//! bytes_B allocs_C bytes_C` (`-` where the row has no such scenario).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use tower_circuit_breaker_benches::{ROWS, Row, RowSpec, Scenario, prepare, run, with_make};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicI64 = AtomicI64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size() as u64, Relaxed);
        LIVE.fetch_add(layout.size() as i64, Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(new_size as u64, Relaxed);
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CALLS: u64 = 100_000;

fn snapshot() -> (u64, u64, i64) {
    (
        ALLOCS.load(Relaxed),
        BYTES.load(Relaxed),
        LIVE.load(Relaxed),
    )
}

fn per_call<R: Row>(name: &str, make: impl Fn() -> R, scenario: Scenario) -> String {
    let mut row = make();
    prepare(name, &mut row, scenario);
    run(&mut row, scenario, 1_000);
    let (a0, b0, _) = snapshot();
    run(&mut row, scenario, CALLS);
    let (a1, b1, _) = snapshot();
    format!(
        "{}\t{}",
        fmt((a1 - a0) as f64 / CALLS as f64),
        fmt((b1 - b0) as f64 / CALLS as f64)
    )
}

fn fmt(x: f64) -> String {
    if x == x.trunc() {
        format!("{x}")
    } else {
        format!("{x:.2}")
    }
}

fn measure<R: Row>(spec: &RowSpec, make: impl Fn() -> R) {
    let name = spec.name;
    // Warm up thread-locals and lazily initialised statics with a first instance.
    drop(make());
    let (a0, b0, l0) = snapshot();
    let row = make();
    let (a1, b1, l1) = snapshot();
    let heap = (b1 - b0, a1 - a0, l1 - l0);
    drop(row);
    let mut line = format!("{name}\t{}\t{}\t{}", heap.0, heap.1, heap.2);
    for scenario in [Scenario::A, Scenario::B, Scenario::C] {
        if spec.scenarios.contains(&scenario) {
            line.push('\t');
            line.push_str(&per_call(name, &make, scenario));
        } else {
            line.push_str("\t-\t-");
        }
    }
    println!("{line}");
}

fn main() {
    println!(
        "row\theap_bytes\theap_allocs\tlive_bytes\tallocs_A\tbytes_A\tallocs_B\tbytes_B\tallocs_C\tbytes_C"
    );
    for spec in ROWS {
        with_make!(spec.name, |make| measure(spec, make));
    }
}
