//! Tasks waiting for readiness, woken on every transition.
//!
//! A service whose `poll_ready` returns `Pending` waits for whatever it polled: the inner
//! service (admitted) or the fallback (rejecting). Either may take long, or never be ready: a
//! dead host, an exhausted pool, a fallback that is down too. Meanwhile the breaker may change
//! state, and with it what `poll_ready` polls: a circuit that opens rejects at once instead of
//! waiting for the inner service, and a circuit that closes (a reset, a closing probe, the end of
//! the open interval) no longer waits for the fallback. So such a service leaves its waker here,
//! and every transition wakes them all; their next poll decides again. A `Buffer` worker, which
//! serves every caller of a tonic `Channel`, would otherwise stall them all.
//!
//! The end of an open interval is a transition that happens only when somebody looks, so a
//! service that waits while open also sets a timer for it (`Waiter::wake_at`).
//!
//! Each service clone that ever waited owns one slot, reused across polls, so the list is bounded
//! by the number of waiting clones. Wakers are cloned, woken and dropped outside the lock: a
//! waker is user code, and may call back into the breaker.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Waker};

use tokio::time::{Instant, Sleep};

use super::lane::Lanes;
use super::word::Generation;
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
        let waker = waker.clone();
        let replaced = {
            let mut slots = lock(&self.slots);
            let index = match *key {
                Some(index) => index,
                None => {
                    let index = slots.free.pop().unwrap_or_else(|| {
                        slots.wakers.push(None);
                        slots.wakers.len() - 1
                    });
                    *key = Some(index);
                    index
                }
            };
            slots.wakers[index].replace(waker)
        };
        drop(replaced);
    }

    /// Gives the slot `key` back.
    pub(crate) fn unregister(&self, key: usize) {
        let removed = {
            let mut slots = lock(&self.slots);
            slots.free.push(key);
            slots.wakers[key].take()
        };
        drop(removed);
    }

    /// Wakes every waiting task (once: a task that waits again registers again).
    pub(crate) fn wake_all(&self) {
        let wakers: Vec<Waker> = lock(&self.slots)
            .wakers
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        crate::sync::wake_each(wakers);
    }
}

/// A service clone's slot in [`Waiters`], given back when the clone is dropped, and its timer for
/// the end of an open interval.
#[derive(Debug)]
pub(crate) struct Waiter {
    breaker: Arc<Lanes>,
    key: Option<usize>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Waiter {
    pub(crate) fn new(breaker: Arc<Lanes>) -> Self {
        Waiter {
            breaker,
            key: None,
            timer: None,
        }
    }

    /// Leaves the task's waker to be woken at the next transition, and wakes it now if the state
    /// changed since the decision of generation `seen` (the transition's wake-up may have run
    /// before this registration).
    pub(crate) fn wait(&mut self, cx: &mut Context<'_>, seen: Generation) {
        self.breaker.waiters().register(&mut self.key, cx.waker());
        // After the registration: either the transition's wake-up sees it, or this load sees the
        // transition (its word is published before its wake-up runs).
        if self.breaker.generation() != seen {
            cx.waker().wake_by_ref();
        }
    }

    /// Also wakes the task at `at` (the end of an open interval), on tokio's timer. Outside a
    /// tokio runtime there is no timer: the next poll, a transition or the fallback wakes it.
    pub(crate) fn wake_at(&mut self, cx: &mut Context<'_>, at: Instant) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let timer = match &mut self.timer {
            Some(timer) => {
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
                timer
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep_until(at))),
        };
        if timer.as_mut().poll(cx).is_ready() {
            cx.waker().wake_by_ref();
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.breaker.waiters().unregister(key);
        }
    }
}
