//! Announcements: what a transition (or a rate crossing its threshold) tells the world, after
//! the transition lock is released.
//!
//! A transition's announcement (its tracing event, the wake-ups of event subscribers and of
//! waiting tasks) runs user code: a tracing subscriber, a waker. None of it runs under the lock,
//! or under any lock of ours, since that code may call back into the breaker (read its state,
//! reset it). So a transition puts its [`Event`] into the subscribers' buffers and queues its
//! announcement under the lock, in transition order, and after releasing the lock the caller runs
//! the queue. One thread runs it at a time (`Breaker::announcing`): a transition made meanwhile,
//! even from inside an announcement, is announced by that thread after the one before it, never
//! out of order and never twice.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use super::locked::{Core, Rates};
use super::{Breaker, Rejection, State};
use crate::event::{Event, Wakers};
use crate::sync::{AtomicBool, Ordering, Panic, caught, raise};

/// Something to announce after the lock is released: a transition or a rate that crossed its
/// threshold.
#[derive(Debug)]
pub(super) struct Announcement {
    what: What,
    /// The event, kept for the event callback (only when there is one).
    event: Option<Event>,
    /// The event subscribers to wake: the event itself is in their buffers already.
    subscribers: Wakers,
}

#[derive(Debug)]
pub(super) enum What {
    Transition {
        from: State,
        to: State,
        /// The rates of the window the breaker left, if it was recording and they are defined.
        rates: Rates,
        /// The open interval, for a transition to Open.
        open_for: Option<Duration>,
        /// The lifetime count of this transition (from, to), this one included.
        count: u64,
    },
    /// A rate reached its threshold (the breaker opens, or, in MetricsOnly, would have).
    Exceeded {
        failure_rate: Option<f64>,
        slow_call_rate: Option<f64>,
        state: State,
    },
}

#[cfg(feature = "redis")]
impl Core {
    /// Replaces the open interval of the transition to Open queued last: an opening from the
    /// fleet stores the fleet's deadline over the one the transition chose, and its log must say
    /// the interval in force.
    pub(super) fn correct_open_for(&mut self, open_for: Duration) {
        if let Some(Announcement {
            what:
                What::Transition {
                    open_for: queued @ Some(_),
                    ..
                },
            ..
        }) = self.unannounced.back_mut()
        {
            *queued = Some(open_for);
        }
    }
}

impl Breaker {
    /// Queues an announcement: its event goes into the subscribers' buffers now (in order, under
    /// the lock), and is kept for the callback. The event is made only if somebody listens.
    pub(super) fn queue(&self, core: &mut Core, what: What, event: impl FnOnce() -> Event) {
        let callback = self.on_event.is_some();
        let listening = self.subscribers.any();
        let event = (callback || listening).then(event);
        let subscribers = match &event {
            Some(event) if listening => self.subscribers.send(event),
            _ => Wakers::default(),
        };
        core.unannounced.push_back(Announcement {
            what,
            event: event.filter(|_| callback),
            subscribers,
        });
    }

    /// Runs the queued announcements, unless another thread is running them (it will run ours
    /// too). Called after every release of the lock that may have queued one.
    pub(super) fn announce(&self) {
        // A panic of user code (a waker, a tracing subscriber) is raised once the queue is
        // announced and `announcing` is released: unwinding from the middle would leave the
        // flag set, and every later transition unannounced, for good.
        let mut panic = None;
        loop {
            // A transition queued after the running thread's last look (under the lock) is seen
            // either by that look, or by this swap: the look follows the store below, so a
            // queue written after the look comes after that store, and this swap reads it.
            if self.announcing.swap(true, Ordering::AcqRel) {
                break;
            }
            // If user code (a tracing subscriber, a waker) panics, the flag goes down with it:
            // the next release of the lock announces the rest.
            let guard = Announcing(&self.announcing);
            loop {
                // The lock is held only to take the next one, never while it runs.
                let next = self.lock().unannounced.pop_front();
                match next {
                    Some(announcement) => self.run(announcement, &mut panic),
                    None => break,
                }
            }
            drop(guard);
            if self.lock().unannounced.is_empty() {
                break;
            }
        }
        raise(panic);
    }

    /// One announcement: user code, run with no lock of ours held. Each step runs even if one
    /// before it panicked; the first panic is kept in `panic`.
    pub(super) fn run(
        &self,
        Announcement {
            what,
            event,
            subscribers,
        }: Announcement,
        panic: &mut Option<Panic>,
    ) {
        let name = self.name.as_deref().unwrap_or("");
        let key = self.key.as_deref().unwrap_or("");
        match what {
            What::Transition {
                from,
                to,
                rates,
                open_for,
                count,
            } => {
                let retry_after = open_for.map(tracing::field::debug);
                let (failure_rate, slow_call_rate) = (rates.failure, rates.slow);
                caught(panic, || {
                    if from == to {
                        tracing::info!(breaker = name, key, state = %to, "circuit reset");
                    } else if to.is_open() {
                        tracing::warn!(
                            breaker = name,
                            key,
                            %from,
                            %to,
                            failure_rate,
                            slow_call_rate,
                            retry_after,
                            "circuit opened"
                        );
                    } else {
                        tracing::info!(
                            breaker = name,
                            key,
                            %from,
                            %to,
                            failure_rate,
                            slow_call_rate,
                            "circuit state changed"
                        );
                    }
                });
                #[cfg(feature = "metrics")]
                if let Some(exported) = &self.exported {
                    caught(panic, || exported.transitioned(from, to, count));
                }
                #[cfg(not(feature = "metrics"))]
                let _ = count;
                // Every transition may change what a waiting `poll_ready` would poll.
                caught(panic, || self.waiters.wake_all());
                if let Some(group) = self.group.get() {
                    caught(panic, || group.wake_members());
                }
            }
            What::Exceeded {
                failure_rate,
                slow_call_rate,
                state,
            } => caught(panic, || {
                tracing::info!(
                    breaker = name,
                    key,
                    %state,
                    failure_rate,
                    slow_call_rate,
                    "circuit threshold reached"
                )
            }),
        }
        caught(panic, || subscribers.wake());
        if let Some(event) = event {
            self.call_back(&event);
        }
    }

    /// Runs the event callback, if any. A panic in it is caught and traced at error: it must not
    /// leave the announcement half done, nor fail the call that made the transition.
    pub(super) fn call_back(&self, event: &Event) {
        let Some(callback) = &self.on_event else {
            return;
        };
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| callback.call(event))) {
            let message = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("a panic");
            tracing::error!(
                breaker = self.name.as_deref().unwrap_or(""),
                key = self.key.as_deref().unwrap_or(""),
                panic = message,
                "circuit breaker event callback panicked"
            );
        }
    }

    /// Sends a rejection's event to the subscribers that asked for rejections and to the
    /// callback, with no lock held. Rejections are not ordered with transitions: one may arrive
    /// after the transition that ended the state which rejected it.
    #[cold]
    #[inline(never)]
    pub(super) fn announce_rejection(&self, rejection: Rejection, fallback: bool) {
        let event = Event::Rejected {
            state: rejection.state,
            retry_at: rejection.retry_at,
            fallback,
            name: self.name.clone(),
            key: self.key.clone(),
        };
        self.subscribers.send_rejection(&event).wake();
        self.call_back(&event);
    }
}

/// Lowers the announcing flag when the announcing thread unwinds out of user code.
struct Announcing<'a>(&'a AtomicBool);

impl Drop for Announcing<'_> {
    fn drop(&mut self) {
        // A swap, not a store, so that it and the swap that raised it are read-modify-writes of
        // one location, totally ordered (loom checks this protocol; it models RMWs exactly).
        self.0.swap(false, Ordering::AcqRel);
    }
}
