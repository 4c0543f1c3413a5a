//! What a breaker shows: rejections reported, metrics, listings and event streams. Reading
//! never changes what the breaker does, beyond the transitions already due by time.

use super::clock;
use super::lane::{self, Count};
use super::waiters::Waiters;
use super::word::Generation;
use super::{Breaker, Rejection};
use crate::event::EventStream;
use crate::handle::{Metrics, Totals};

// What a keyed layer's listings and eviction read.
#[cfg(feature = "keyed")]
use {
    super::State,
    super::clock::{Now, instant_at},
    super::word::Probes,
    crate::sync::Ordering,
    tokio::time::Instant,
};

impl Breaker {
    /// Reports one rejected call (`fallback`: a fallback service answers it): counts it, traces it
    /// at debug, and sends its [`Event::Rejected`](crate::Event::Rejected) to the subscribers that
    /// asked for rejections and to the event callback. Called with no lock held.
    #[inline]
    pub(crate) fn reject(&self, rejection: Rejection, fallback: bool) {
        let lane = lane::thread_lane();
        self.counters.add(lane, Count::Rejected);
        if fallback {
            self.counters.add(lane, Count::Fallback);
        }
        tracing::debug!(
            breaker = self.name().map_or("", |n| &**n),
            key = self.key().map_or("", |k| &**k),
            state = %rejection.state,
            retry_after = rejection
                .retry_at
                .map(|at| tracing::field::debug(at.saturating_duration_since(clock::read()))),
            fallback,
            "call rejected"
        );
        if self.on_event.is_some() || self.subscribers.wants_rejections() {
            self.announce_rejection(rejection, fallback);
        }
    }

    // ===== observation =====

    pub(crate) fn waiters(&self) -> &Waiters {
        &self.waiters
    }

    /// The generation of the stored state (for waiters: a change means readiness may differ).
    pub(crate) fn generation(&self) -> Generation {
        self.load().generation()
    }

    pub(crate) fn metrics(&self) -> Metrics {
        let mut now = self.now();
        self.state(&mut now);
        let at = now.get();
        let mut core = self.lock();
        let state = self.load().state();
        let totals = core.shown_totals(at);
        let consecutive_failures = core.consecutive();
        let transitions = core.transitions();
        let minimum_calls = core.config().minimum_calls;
        let rejected_at_close = core.rejected_at_close;
        let failure_rate_threshold = core.failure_threshold();
        let baseline_failure_rate = core.baseline_rate();
        drop(core);
        Metrics {
            failure_rate_threshold,
            baseline_failure_rate,
            rejection_probability: self.rejection_probability(at),
            state,
            calls: totals.calls,
            failed: totals.failed,
            slow: totals.slow,
            not_permitted: self
                .counters
                .sum(Count::Rejected)
                .saturating_sub(rejected_at_close),
            consecutive_failures,
            minimum_calls,
            totals: self.lifetime(transitions),
        }
    }

    /// The lifetime totals, with the transition counts read under the lock.
    fn lifetime(&self, transitions: [[u64; 6]; 6]) -> Totals {
        let c = &self.counters;
        Totals {
            successful: c.sum(Count::Successful),
            failed: c.sum(Count::Failed),
            ignored: c.sum(Count::Ignored),
            slow: c.sum(Count::Slow),
            rejected: c.sum(Count::Rejected),
            fallbacks: c.sum(Count::Fallback),
            transitions,
        }
    }

    /// The end of the open interval, while Open and before it (for listings; no transition).
    #[cfg(feature = "keyed")]
    pub(crate) fn retry_at(&self, now: &mut Now<'_>) -> Option<Instant> {
        let word = self.load();
        if word.state() != State::Open || self.is_due(word, now) {
            return None;
        }
        instant_at(
            self.words.epoch,
            self.words.open_until.load(Ordering::Relaxed),
        )
    }

    /// Whether forgetting this breaker loses nothing but its window (a keyed layer's eviction):
    /// it is Closed, or it has recovered (open past its interval, or half-open with no probe
    /// admitted in the episode), so that it would admit the next call as a new breaker does.
    /// Looks only: no transition, no lock, no user code.
    #[cfg(feature = "keyed")]
    pub(crate) fn forgettable(&self, now: &mut Now<'_>) -> Option<Forgettable> {
        let word = self.load();
        match word.state() {
            State::Closed => Some(Forgettable::Closed),
            State::Open if self.is_due(word, now) => Some(Forgettable::Recovered),
            State::HalfOpen => {
                let probes = Probes(self.words.probes.load(Ordering::Acquire));
                (probes.belongs_to(word.generation()) && !probes.started())
                    .then_some(Forgettable::Recovered)
            }
            _ => None,
        }
    }

    pub(crate) fn subscribe(&self) -> EventStream {
        self.subscribers.subscribe()
    }
}

/// Why a breaker may be forgotten (see `Breaker::forgettable`).
#[cfg(feature = "keyed")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Forgettable {
    Closed,
    /// Its open interval is over and no probe was admitted since: it rejects nobody.
    Recovered,
}

#[cfg(all(test, not(loom)))]
mod tests {
    use crate::CircuitBreakerLayer;

    #[test]
    fn a_rejection_nobody_asked_for_takes_no_lock_and_reads_no_clock() {
        use crate::state::clock::counts::during;
        use crate::state::{Decision, State};
        let breaker = CircuitBreakerLayer::builder().breaker_for_tests();
        breaker.force(State::ForcedOpen);
        let Decision::Reject(rejection) = breaker.admit(&mut breaker.now()) else {
            panic!("forced open: rejected");
        };
        assert_eq!(during(|| breaker.reject(rejection, false)), (0, 0));
        let _transitions = breaker.subscribe();
        assert_eq!(
            during(|| breaker.reject(rejection, false)),
            (0, 0),
            "a subscriber that did not ask for rejections"
        );
        let _rejections = breaker.subscribe().with_rejections();
        assert_eq!(during(|| breaker.reject(rejection, true)), (0, 1));
        let totals = breaker.metrics().totals();
        assert_eq!((totals.rejected(), totals.fallbacks()), (3, 1));
    }
}
