//! Synchronisation primitives, swapped for loom's under `--cfg loom` so that the state machine's
//! atomics can be model-checked (see `state/loom_tests/`).

#[cfg(loom)]
pub(crate) use loom::sync::{
    Mutex, MutexGuard,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

#[cfg(not(loom))]
pub(crate) use std::sync::{
    Mutex, MutexGuard,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

/// Pads and aligns a value to 128 bytes (two cache lines, for the adjacent-line prefetcher), so
/// that the state word, which every call reads, never shares a line with counters that calls write.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct CachePadded<T>(pub(crate) T);

impl<T> std::ops::Deref for CachePadded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// Locks a mutex, ignoring poisoning: no user code runs under a lock of ours, and every critical
/// section leaves the protected data consistent before anything that can panic runs, so a
/// poisoned lock holds valid data.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    #[cfg(all(test, not(loom)))]
    crate::state::clock::counts::LOCKS.set(crate::state::clock::counts::LOCKS.get() + 1);
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A panic caught from user code, raised again once our own work is done.
pub(crate) type Panic = Box<dyn std::any::Any + Send>;

/// Runs user code `f`, keeping its panic, if it is the first, in `panic` instead of unwinding
/// through our bookkeeping (an announcement half done, tasks left asleep).
pub(crate) fn caught(panic: &mut Option<Panic>, f: impl FnOnce()) {
    if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        panic.get_or_insert(payload);
    }
}

/// Raises the panic `caught` kept, if any.
pub(crate) fn raise(panic: Option<Panic>) {
    if let Some(payload) = panic {
        std::panic::resume_unwind(payload);
    }
}

/// Wakes every waker, even if one panics (a waker is user code): the other tasks must not
/// sleep for good. The first panic is raised again once all are woken.
pub(crate) fn wake_each(wakers: impl IntoIterator<Item = std::task::Waker>) {
    let mut panic = None;
    for waker in wakers {
        caught(&mut panic, move || waker.wake());
    }
    raise(panic);
}
