//! The HTTP pieces beside the plain breaker, in one run: the same inner service answering
//! `http::Response<()>` (200, or forced open for the rejecting path), called as applications call
//! (`svc.ready().await` + `svc.call(req).await` in a task polled through `Pin<&mut dyn Future>`).
//!
//! * `plain`: the default classifier; a rejection is a boxed `Rejected` error.
//! * `http-classify`: `HttpClassify`; a rejection is the same error.
//! * `http-503`: `HttpClassify` with `with_http_responses()`; a rejection is a 503 response.
//!
//! Ids: `A/<row>` (closed, every call a 200) and `C/<row>` (open, every call rejected). Before
//! criterion runs, the allocations per call of each are printed (a counting allocator).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use tower_circuit_breaker_benches::http_rows::rows;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocations_per_call() {
    for (scenario, open) in [("A", false), ("C", true)] {
        for (name, mut call) in rows(open) {
            for x in 0..100 {
                call(x);
            }
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            for x in 0..10_000 {
                call(x);
            }
            let per_call = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / 10_000.0;
            println!("allocations per call: {scenario}/{name} {per_call}");
        }
    }
}

fn benches(c: &mut Criterion) {
    allocations_per_call();
    for (scenario, open) in [("A", false), ("C", true)] {
        for (name, mut call) in rows(open) {
            let mut x = 0;
            c.bench_function(&format!("{scenario}/{name}"), |b| {
                b.iter(|| {
                    x += 1;
                    call(x)
                })
            });
        }
    }
}

criterion_group! {
    name = group;
    config = Criterion::default().sample_size(30).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = benches
}
criterion_main!(group);
