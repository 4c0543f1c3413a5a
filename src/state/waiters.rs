//! Tasks waiting for an inner service's readiness, woken when the circuit opens.
//!
//! A service admitted in Closed polls its inner service for readiness. If the inner service is not
//! ready (a dead host, an exhausted pool), the task waits for the inner service to wake it, which
//! may be never. Meanwhile other callers may open the circuit: from then on this call should be
//! rejected at once, not held up by the inner service (a `Buffer` worker, which serves every
//! caller of a tonic `Channel`, would otherwise stall them all). So a service that returns
//! `Pending` for its inner service leaves its waker here, and every transition into a rejecting
//! state wakes them all; their next poll decides again and rejects.
//!
//! Each service clone that ever waited owns one slot, reused across polls, so the list is bounded
//! by the number of waiting clones. Only the not-ready path and transitions touch it.

use std::sync::Arc;
use std::task::Waker;

use super::lane::Lanes;
use crate::sync::{Mutex, lock};

#[derive(Debug, Default)]
pub(crate) struct Waiters {
    slots: Mutex<Slots>,
}

#[derive(Debug, Default)]
struct Slots {
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Waiters {
    /// Leaves `waker` in the slot `key` (taking a slot on first use).
    pub(crate) fn register(&self, key: &mut Option<usize>, waker: &Waker) {
        let mut slots = lock(&self.slots);
        let index = match *key {
            Some(index) => index,
            None => {
                let index = match slots.free.pop() {
                    Some(index) => index,
                    None => {
                        slots.wakers.push(None);
                        slots.wakers.len() - 1
                    }
                };
                *key = Some(index);
                index
            }
        };
        match &mut slots.wakers[index] {
            Some(w) if w.will_wake(waker) => {}
            slot => *slot = Some(waker.clone()),
        }
    }

    /// Gives the slot `key` back.
    pub(crate) fn unregister(&self, key: usize) {
        let mut slots = lock(&self.slots);
        slots.wakers[key] = None;
        slots.free.push(key);
    }

    /// Wakes every waiting task (once: a task that waits again registers again).
    pub(crate) fn wake_all(&self) {
        let wakers: Vec<Waker> = lock(&self.slots)
            .wakers
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        // Outside the `slots` lock: a waker may run code that polls this breaker and waits again.
        for waker in wakers {
            waker.wake();
        }
    }
}

/// A service clone's slot in [`Waiters`], given back when the clone is dropped.
#[derive(Debug)]
pub(crate) struct Waiter {
    breaker: Arc<Lanes>,
    key: Option<usize>,
}

impl Waiter {
    pub(crate) fn new(breaker: Arc<Lanes>) -> Self {
        Waiter { breaker, key: None }
    }

    /// Leaves `waker` to be woken when the circuit opens. Returns whether it is open already
    /// (then the caller should wake itself: the transition may have missed this registration).
    pub(crate) fn register(&mut self, waker: &Waker) -> bool {
        self.breaker.waiters().register(&mut self.key, waker);
        // After the registration: either the transition's wake-up sees it, or this load sees
        // the transition (both take the `slots` lock; the word is published before the wake-up).
        self.breaker.is_rejecting()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.breaker.waiters().unregister(key);
        }
    }
}
