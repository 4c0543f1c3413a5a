//! Recording: a dispatched call's outcome, counted in the lifetime totals and, unless a plain
//! success changes nothing (`clean`) or joins a batch (`batch`), in the window under the
//! transition lock, where it may trip the breaker.

use super::clock::{self, Now};
use super::lane::{self, Count};
use super::probe::ProbeResult;
use super::window::Sample;
use super::word::{Generation, Ticket, TicketKind};
use super::{Breaker, Rates, State, should_trip};
use crate::classify::Outcome;
use crate::sync::Ordering;
use tokio::time::Instant;

impl Breaker {
    /// Records a dispatched call's `outcome` (`started`: when it was dispatched, if recording
    /// needs its duration; `not_before`: a failure's upstream asked not to be called again before
    /// then). Counted in the lifetime totals whatever the state and the ticket's generation: the
    /// call happened.
    pub(crate) fn complete(
        &self,
        ticket: Ticket,
        outcome: Outcome,
        started: Option<u64>,
        not_before: Option<u64>,
        now: &mut Now<'_>,
    ) {
        let elapsed = started.map(|started| now.get().saturating_sub(started));
        let slow = match (self.config().slow_call_duration, elapsed) {
            (Some(limit), Some(elapsed)) => elapsed > clock::saturating_nanos(limit),
            _ => false,
        };
        let lane = lane::thread_lane();
        let (count, sample) = match outcome {
            Outcome::Success => (
                Count::Successful,
                Sample {
                    failed: false,
                    slow,
                },
            ),
            Outcome::Failure => (Count::Failed, Sample { failed: true, slow }),
            _ => (
                Count::Ignored,
                Sample {
                    failed: false,
                    slow: false,
                },
            ),
        };
        self.counters.add(lane, count);
        if sample.slow {
            self.counters.add(lane, Count::Slow);
        }
        #[cfg(feature = "metrics")]
        if let (Some(exported), Some(elapsed)) = (&self.exported, elapsed) {
            exported.record_duration(count, elapsed);
        }
        if count == Count::Ignored {
            // Ignored (even slow): nothing is recorded, a probe permit goes back.
            return self.release(ticket);
        }
        if self.words.throttles && ticket.kind() != TicketKind::Unrecorded {
            // Every dispatched call the breaker records counts, stale or not: the throttle
            // follows the dependency, not the state. A throttling breaker's successes all come
            // here: `Lane::absorbs` never takes them (`set_clean`, `joins_batch`).
            self.throttle_record(outcome == Outcome::Success, now);
        }
        // A timely success that changes nothing takes no lock, timed or not; nor does one that
        // joins a batch.
        if !slow && self.is_settled(ticket, outcome) {
            return;
        }
        if !slow && self.batched(ticket, outcome, lane, now) {
            return;
        }
        match ticket.kind() {
            TicketKind::Unrecorded => {}
            TicketKind::Recorded => self.record(ticket.generation(), sample, not_before, now),
            TicketKind::Probe => {
                let result = if sample.failed || sample.slow {
                    ProbeResult::Failed
                } else {
                    ProbeResult::Succeeded
                };
                self.finish_probe(ticket.generation(), result, not_before, now);
            }
        }
    }

    /// `instant` in nanoseconds since the breaker's creation.
    pub(crate) fn nanos_at(&self, instant: Instant) -> u64 {
        clock::saturating_nanos(instant.saturating_duration_since(self.words.epoch))
    }

    /// Whether a plain success of `ticket` would change nothing: the healthy closed path, which
    /// then records nothing and takes no lock (`Lane::absorbs` counts it).
    #[inline]
    pub(crate) fn is_absorbed(&self, ticket: Ticket, outcome: Outcome) -> bool {
        // Relaxed: `clean` is written under the lock after each change of the window; a value
        // read here is one the window had, and a success recorded against it changes nothing.
        // A stale ticket changes nothing either way.
        ticket.kind() == TicketKind::Recorded
            && outcome == Outcome::Success
            && self.words.clean.absorbed.load(Ordering::Relaxed)
    }

    /// `is_absorbed`, for a call that went through `complete` (which has counted it in the
    /// throttle's window already).
    #[inline]
    fn is_settled(&self, ticket: Ticket, outcome: Outcome) -> bool {
        // Relaxed: as for `is_absorbed`.
        ticket.kind() == TicketKind::Recorded
            && outcome == Outcome::Success
            && self.words.clean.settled.load(Ordering::Relaxed)
    }

    /// Publishes whether a plain success would change nothing (`Core::is_clean`), under the lock.
    pub(super) fn set_clean(&self, clean: bool) {
        // Relaxed: see `is_absorbed`. A throttling breaker never absorbs a success without
        // `complete`: the throttle counts every completed call.
        let absorbed = clean && !self.words.throttles;
        let flags = &self.words.clean;
        // Stored only when it changes: every call reads this line, and a store, even of the same
        // value, would take it from the other cores' caches on every recorded outcome.
        if flags.settled.load(Ordering::Relaxed) != clean {
            flags.absorbed.store(absorbed, Ordering::Relaxed);
            flags.settled.store(clean, Ordering::Relaxed);
        }
    }

    /// Gives back what a call that will never complete holds: its probe permit, if any.
    #[inline]
    pub(crate) fn release(&self, ticket: Ticket) {
        if ticket.kind() == TicketKind::Probe {
            let returned = ProbeResult::Returned;
            self.finish_probe(ticket.generation(), returned, None, &mut self.now());
        }
    }

    fn record(
        &self,
        generation: Generation,
        sample: Sample,
        not_before: Option<u64>,
        now: &mut Now<'_>,
    ) {
        // Relaxed: a hint, so that the clock is read before the lock; the window under the lock
        // decides (a reconfiguration may have changed its kind meanwhile).
        if self.words.time_window.load(Ordering::Relaxed) {
            now.get();
        }
        let mut core = self.lock();
        let word = self.load();
        if word.generation() != generation {
            return; // stale: admitted under a state that has since changed
        }
        let at = if core.window_is_time() { now.get() } else { 0 };
        core.record(sample, at, not_before);
        if core.learns() {
            core.learn(now.get(), sample.failed);
        }
        self.set_clean(core.is_clean());
        let totals = core.totals(at);
        let threshold = core.failure_threshold();
        match word.state() {
            State::Closed if should_trip(totals, core.consecutive(), threshold, core.config()) => {
                let exceeded = Rates::of(totals, core.config()).exceeded(threshold, core.config());
                self.queue_exceeded(&mut core, exceeded, totals.calls, State::Closed);
                // The interval counts from now, read under the lock, not from before it.
                let opened_at = self.now().get();
                self.transition(&mut core, word, State::Open, opened_at);
            }
            State::Closed => self.open_batch(&core, totals),
            State::MetricsOnly => self.watch_rates(&mut core, totals),
            _ => {}
        }
        self.unlock(core);
    }
}
