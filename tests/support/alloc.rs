//! The counting allocator of the tests that measure the heap: `alloc` (allocations per call),
//! `events` (what a subscription keeps alive) and `chaos` (the heap of a soak, and its peak).
//!
//! [`Counting`] is a plain type here, not installed: a `#[global_allocator]` in support would be
//! installed in every test binary that includes it. A test file that measures declares it itself:
//!
//! ```ignore
//! #[global_allocator]
//! static COUNTING: Counting = Counting;
//! ```
//!
//! It counts, for the thread that allocates, the allocations made ([`allocations`]) and the bytes
//! live ([`live_bytes`]): tests that run in parallel do not see each other's. A soak runs on many
//! threads, so the process-wide bytes live and their peak are counted too ([`process_live_bytes`],
//! [`process_peak_bytes`]).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, Ordering};

/// The system allocator, counting what each thread and the whole process allocate.
#[derive(Debug)]
pub struct Counting;

thread_local! {
    /// Allocations (`alloc`, `alloc_zeroed`, `realloc`) made by this thread.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    /// Bytes allocated minus bytes freed by this thread.
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

// Relaxed: each counter is a sum read on its own, after the work it measures has been joined;
// no other memory is published through it.
static PROCESS_LIVE: AtomicIsize = AtomicIsize::new(0);
static PROCESS_PEAK: AtomicIsize = AtomicIsize::new(0);

/// Allocations made by this thread so far.
pub fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Bytes allocated minus bytes freed by this thread so far.
pub fn live_bytes() -> i64 {
    LIVE.with(Cell::get)
}

/// Bytes live in the whole process.
pub fn process_live_bytes() -> isize {
    PROCESS_LIVE.load(Ordering::Relaxed)
}

/// The most bytes that were live in the whole process at once.
pub fn process_peak_bytes() -> isize {
    PROCESS_PEAK.load(Ordering::Relaxed)
}

/// Counts one allocation of this thread (none for a `dealloc`) and a change of `bytes` live.
fn count(allocation: bool, bytes: isize) {
    // `try_with`: the allocator also runs while this thread's locals are being torn down.
    if allocation {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }
    let _ = LIVE.try_with(|live| live.set(live.get() + bytes as i64));
    let live = PROCESS_LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PROCESS_PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; counting
// touches only `const`-initialized thread-local `Cell`s and atomics, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count(true, layout.size() as isize);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            count(true, layout.size() as isize);
        }
        ptr
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` was allocated by `System` through this allocator with `layout`; the caller
        // upholds `GlobalAlloc::realloc`'s contract.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            // Grown first, then shrunk: the peak sees the old and the new block at once, as
            // `System` may hold both while it copies.
            count(true, new_size as isize);
            count(false, -(layout.size() as isize));
        }
        new
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` through this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        count(false, -(layout.size() as isize));
    }
}
