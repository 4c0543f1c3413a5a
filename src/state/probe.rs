//! The half-open episode's probes: taking a permit, counting a probe's result or taking its
//! permit back, and the transition an episode's counts decide. Each is one compare-and-swap on
//! the probe word, which a transition replaces before it publishes a new state.

use super::clock::{self, Now};
use super::word::{Generation, Probes, StateWord, Ticket, TicketKind};
use super::{Breaker, State};
use crate::config::Config;
use crate::sync::Ordering;

impl Breaker {
    /// Takes one probe permit of the episode `word` is in.
    pub(super) fn take_probe(
        &self,
        word: StateWord,
        now: &mut Now<'_>,
    ) -> Result<Ticket, ProbeRefused> {
        let generation = word.generation();
        let mut probes = Probes(self.words.probes.load(Ordering::Acquire));
        loop {
            if !probes.belongs_to(generation) {
                return Err(ProbeRefused::Stale);
            }
            if probes.taken() >= self.episode_limits().0 {
                return Err(ProbeRefused::Full);
            }
            // AcqRel: the permit belongs to this episode's counters exactly; a transition
            // replaces the probe word before it publishes a new state, so this fails then.
            match self.words.probes.compare_exchange_weak(
                probes.0,
                probes.take().0,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    if !probes.started() {
                        self.start_episode_clock(generation, now);
                    }
                    return Ok(Ticket::new(generation, TicketKind::Probe));
                }
                Err(actual) => probes = Probes(actual),
            }
        }
    }

    /// Counts a probe's result (or gives its permit back) in its episode, and makes the
    /// transition it decides.
    pub(super) fn finish_probe(
        &self,
        generation: Generation,
        result: ProbeResult,
        not_before: Option<u64>,
        now: &mut Now<'_>,
    ) {
        let mut probes = Probes(self.words.probes.load(Ordering::Acquire));
        loop {
            let word = self.load();
            if word.generation() != generation || !probes.belongs_to(generation) {
                return; // stale: the episode this permit belonged to is over
            }
            if self.is_due(word, now) {
                // `half_open_max_wait` ended the episode before this result: stale, as if the
                // transition had been noticed on time.
                self.settle(now);
                return;
            }
            let next = match result {
                ProbeResult::Returned => probes.give_back(),
                ProbeResult::Succeeded => probes.succeed(),
                ProbeResult::Failed => probes.fail(),
            };
            // AcqRel/Acquire as for admission: the count lands in this episode or not at all.
            match self.words.probes.compare_exchange_weak(
                probes.0,
                next.0,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    if let Some(to) = self.decided_by(next) {
                        self.transition_from(generation, to, not_before);
                    } else if result == ProbeResult::Returned {
                        // A permit is free again: a task waiting for one may go on.
                        self.waiters.wake_all();
                    }
                    return;
                }
                Err(actual) => probes = Probes(actual),
            }
        }
    }

    /// The current episode's `(half_open_calls, half_open_successes)`.
    pub(super) fn episode_limits(&self) -> (u32, u32) {
        // Acquire: pairs with the Release store made when the episode started. A reader that
        // sees a later episode's numbers also sees that its own episode ended (the probe word
        // was replaced before), so its compare-and-swap or its transition then fails.
        let limits = self.words.half_open_limits.load(Ordering::Acquire);
        ((limits >> 32) as u32, limits as u32)
    }

    /// The state an episode's counters decide, if any.
    pub(super) fn decided_by(&self, probes: Probes) -> Option<State> {
        let (calls, successes) = self.episode_limits();
        if probes.succeeded() >= successes {
            Some(State::Closed)
        } else if probes.failed() > calls - successes {
            Some(State::Open)
        } else {
            None
        }
    }
}

/// `(half_open_calls, half_open_successes)` packed for `Words::half_open_limits`.
pub(super) fn half_open_limits(config: &Config) -> u64 {
    (u64::from(config.half_open_calls) << 32) | u64::from(config.half_open_successes)
}

/// `Words::half_open_max_wait` for `config`.
pub(super) fn half_open_max_wait(config: &Config) -> u64 {
    config
        .half_open_max_wait
        .map_or(u64::MAX, |d| clock::saturating_nanos(d).min(u64::MAX - 1))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ProbeResult {
    Succeeded,
    Failed,
    /// Ignored, dropped or never used: the permit goes back and nothing is counted.
    Returned,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ProbeRefused {
    /// Every permit of the episode is taken.
    Full,
    /// The episode ended meanwhile: decide again.
    Stale,
}
