//! Heap per idle key of a keyed layer, with a counting global allocator (only in this binary):
//! a keyed layer (our count configuration, a window of 100) is given 100 keys, then 10,000 more,
//! each called once by one thread; prints the bytes (and allocations) the 10,000 added, per key,
//! and what is still live per key. Then the same keys called from a second thread too (each
//! thread that calls a key makes that breaker a lane of its own, 128 bytes).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use tower::{Layer, ServiceExt, service_fn};
use tower_circuit_breaker::{CircuitBreakerLayer, KeyedCircuitBreakerLayer, Window};
use tower_circuit_breaker_benches::{block_on, inner_call};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicI64 = AtomicI64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
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
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const KEYS: u64 = 10_000;

fn main() {
    let layer = KeyedCircuitBreakerLayer::builder(|r: &(u64, bool)| r.0)
        .breaker(
            CircuitBreakerLayer::builder()
                .failure_rate_threshold(0.5)
                .sliding_window(Window::count(100))
                .minimum_calls(100)
                .consecutive_failures(5),
        )
        .max_keys(2 * KEYS as usize)
        .build()
        .expect("valid configuration");
    let svc = layer.layer(service_fn(|(_, fail): (u64, bool)| inner_call(fail)));
    let call = |key: u64| {
        block_on(svc.clone().oneshot((key, false))).expect("a success");
    };
    for key in 0..100 {
        call(key);
    }
    let (a0, l0) = (ALLOCS.load(Relaxed), LIVE.load(Relaxed));
    for key in 100..100 + KEYS {
        call(key);
    }
    let (a1, l1) = (ALLOCS.load(Relaxed), LIVE.load(Relaxed));
    println!(
        "per idle key, called by one thread: {} B live, {:.2} allocations",
        (l1 - l0) / KEYS as i64,
        (a1 - a0) as f64 / KEYS as f64
    );
    std::thread::scope(|s| {
        s.spawn(|| {
            for key in 100..100 + KEYS {
                call(key);
            }
        });
    });
    let l2 = LIVE.load(Relaxed);
    println!(
        "per idle key, called by two threads: {} B live",
        (l2 - l0) / KEYS as i64
    );
    assert_eq!(layer.handle().len(), 100 + KEYS as usize);
}
