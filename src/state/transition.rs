//! Transitions: the trip decision and every change of state.
//!
//! Every transition is made under the transition lock (`Breaker::core`), so each one happens
//! exactly once and its side effects (deadlines, attempt number, the window) are in place before
//! the new state word is published with `Release`. Its announcement runs after the lock is
//! released (`announce.rs`).

use std::sync::Arc;
use std::time::Duration;

use super::announce::What;
use super::lane::Count;
use super::locked::{Core, Rates, baseline_of};
use super::window::{Totals, Window};
use super::word::{Generation, Probes, StateWord};
use super::{Breaker, State, clock::Now, clock::saturating_nanos};
use crate::config::Config;
use crate::event::Event;
use crate::sync::{MutexGuard, Ordering, lock};

impl Breaker {
    pub(super) fn lock(&self) -> MutexGuard<'_, Core> {
        let mut core = lock(&self.core);
        // Whatever the lock is taken for sees the batched successes (`batch`).
        self.fold(&mut core);
        core
    }

    /// Moves from `from` (the current word) to `to`, at `at` (nanoseconds since the breaker's
    /// creation: when the transition happens, which for a transition due by time is its
    /// deadline). Called with the lock held; queues the announcement.
    pub(super) fn transition(&self, core: &mut Core, from: StateWord, to: State, at: u64) {
        self.transition_until(core, from, to, at, None);
    }

    /// `transition`, to Open until `open_until` when it is given (a deadline the fleet chose)
    /// rather than for the interval the backoff chooses.
    pub(super) fn transition_until(
        &self,
        core: &mut Core,
        from: StateWord,
        to: State,
        at: u64,
        open_until: Option<u64>,
    ) {
        let words = &self.words;
        let rates = match from.state().records() {
            true => {
                let totals = core.window.totals(at);
                Rates::of(totals, &core.config)
            }
            false => Rates::default(),
        };
        let mut open_for = None;
        // Relaxed stores: published by the Release store of the state word below.
        match to {
            State::Open => {
                core.attempt = match from.state() {
                    State::HalfOpen => core.attempt.saturating_add(1),
                    _ => 1,
                };
                let not_before = core.not_before.take();
                let until = open_until.unwrap_or_else(|| {
                    let uniform = core.next_uniform();
                    let interval = core.config.open_interval(core.attempt, uniform);
                    let until = at.saturating_add(saturating_nanos(interval));
                    // An upstream's "not before" lengthens the interval, up to the configured
                    // cap.
                    let cap = at.saturating_add(saturating_nanos(core.config.max_retry_after));
                    not_before.map_or(until, |not_before| until.max(not_before.min(cap)))
                });
                open_for = Some(Duration::from_nanos(until.saturating_sub(at)));
                words.open_until.store(until, Ordering::Relaxed);
            }
            State::HalfOpen => {
                // The episode's clock starts with its first probe.
                words.half_open_until.store(u64::MAX, Ordering::Relaxed);
                let wait = super::probe::half_open_max_wait(&core.config);
                words.half_open_max_wait.store(wait, Ordering::Relaxed);
                // Release: see `Breaker::episode_limits`.
                let limits = super::probe::half_open_limits(&core.config);
                words.half_open_limits.store(limits, Ordering::Release);
            }
            State::Closed | State::MetricsOnly => {
                core.window.clear();
                if let Some(throttle) = &self.throttle {
                    throttle.clear(); // as the window: closing starts afresh
                }
                if let Some(baseline) = &mut core.baseline {
                    // Learning resumes: the time the breaker did not record does not age it.
                    baseline.resume(at);
                }
                core.consecutive = 0;
                core.not_before = None;
                core.frozen = None;
                core.exceeded = (false, false);
                if to == State::Closed {
                    core.attempt = 0;
                    // `Metrics::not_permitted` counts from here (a rejection racing with
                    // the transition lands on either side of it).
                    core.rejected_at_close = self.counters.sum(Count::Rejected);
                }
            }
            State::ForcedOpen | State::Disabled => {}
        }
        if from.state().records() && !to.records() {
            core.frozen = Some(core.window.totals(at));
        }
        self.set_clean(core.is_clean());
        let next = from.next(to);
        // Every transition replaces the probe word: a permit or a result prepared against the
        // old episode fails its compare-and-swap. A swap, not a store: a read-modify-write comes
        // after every compare-and-swap it races with.
        words
            .probes
            .swap(Probes::fresh(next.generation()).0, Ordering::AcqRel);
        // Release: publishes the side effects above with the new word.
        words.state.store(next.0, Ordering::Release);
        let counts = core.transitions.get_or_insert_default();
        let count = &mut counts[from.state().index()][to.index()];
        *count = count.saturating_add(1);
        let count = *count;
        let what = What::Transition {
            from: from.state(),
            to,
            rates,
            open_for,
            count,
        };
        self.queue(core, what, || Event::StateTransition {
            from: from.state(),
            to,
            name: self.words.name.clone(),
            key: self.key.clone(),
        });
    }

    /// Queues the announcement of the rates in `exceeded` that are at or above their thresholds,
    /// in the window of `calls` outcomes, before the transition they cause (if any).
    pub(super) fn queue_exceeded(
        &self,
        core: &mut Core,
        exceeded: Rates,
        calls: u64,
        state: State,
    ) {
        // A clone of the `Arc`: `core` is borrowed again to queue.
        let config = core.config_arc().clone();
        if let (Some(rate), Some(threshold)) = (exceeded.failure, core.failure_threshold()) {
            self.queue(
                core,
                What::Exceeded {
                    failure_rate: Some(rate),
                    slow_call_rate: None,
                    state,
                },
                || Event::FailureRateExceeded {
                    failure_rate: rate,
                    threshold,
                    calls,
                    name: config.name.clone(),
                    key: self.key.clone(),
                },
            );
        }
        if let (Some(rate), Some(threshold)) = (exceeded.slow, config.slow_call_rate_threshold) {
            self.queue(
                core,
                What::Exceeded {
                    failure_rate: None,
                    slow_call_rate: Some(rate),
                    state,
                },
                || Event::SlowCallRateExceeded {
                    slow_call_rate: rate,
                    threshold,
                    calls,
                    name: config.name.clone(),
                    key: self.key.clone(),
                },
            );
        }
    }

    /// After an outcome recorded in MetricsOnly: announces each rate that crossed its threshold
    /// since the last outcome (once per crossing; it never opens the circuit).
    pub(super) fn watch_rates(&self, core: &mut Core, totals: Totals) {
        let config = core.config_arc().clone();
        let exceeded = Rates::of(totals, &config).exceeded(core.failure_threshold(), &config);
        let now = (exceeded.failure.is_some(), exceeded.slow.is_some());
        let crossed = Rates {
            failure: exceeded.failure.filter(|_| !core.exceeded.0),
            slow: exceeded.slow.filter(|_| !core.exceeded.1),
        };
        core.exceeded = now;
        if crossed.any() {
            self.queue_exceeded(core, crossed, totals.calls, State::MetricsOnly);
        }
    }

    /// Releases the lock, then runs the announcements it queued.
    pub(super) fn unlock(&self, core: MutexGuard<'_, Core>) {
        let queued = !core.unannounced.is_empty();
        drop(core);
        if queued {
            self.announce();
        }
    }

    /// Makes the transition to `to` if the generation is still `generation` (a probe's
    /// decision), at the current time.
    pub(super) fn transition_from(
        &self,
        generation: Generation,
        to: State,
        not_before: Option<u64>,
    ) {
        let mut core = self.lock();
        let word = self.load();
        if word.generation() == generation {
            core.note_not_before(not_before);
            // Read under the lock: the interval counts from the transition, not from before it.
            let at = self.now().get();
            self.transition(&mut core, word, to, at);
        }
        self.unlock(core);
    }

    /// Applies the transitions due by time at `now`, each at its deadline: Open -> HalfOpen at
    /// `open_until`; an expired episode -> Open at `half_open_until` (and on to HalfOpen if that
    /// interval is over too). Returns the word it leaves.
    pub(super) fn settle(&self, now: &mut Now<'_>) -> StateWord {
        let mut core = self.lock();
        let word = self.settle_locked(&mut core, now);
        self.unlock(core);
        word
    }

    /// `settle`, with the lock held.
    fn settle_locked(&self, core: &mut Core, now: &mut Now<'_>) -> StateWord {
        let mut word = self.load();
        while self.is_due(word, now) {
            let (to, at) = match word.state() {
                State::Open => (State::HalfOpen, &self.words.open_until),
                _ => (State::Open, &self.words.half_open_until),
            };
            let at = at.load(Ordering::Relaxed);
            self.transition(core, word, to, at);
            word = self.load();
        }
        word
    }

    /// Starts the episode's `half_open_max_wait` at its first probe, if it is still current.
    pub(super) fn start_episode_clock(&self, generation: Generation, now: &mut Now<'_>) {
        // Relaxed: written with the episode's limits, before its state word was published.
        let wait = self.words.half_open_max_wait.load(Ordering::Relaxed);
        if wait == u64::MAX {
            return;
        }
        let deadline = now.get().saturating_add(wait);
        let _core = self.lock();
        if self.load().generation() == generation {
            self.words
                .half_open_until
                .store(deadline, Ordering::Relaxed);
        }
    }

    /// An operator's transition: from any state to `to`. `reset` (to Closed) always clears the
    /// window and is announced, even from Closed. The transitions due by time come first, as if
    /// somebody had looked: whether anybody did changes nothing.
    pub(crate) fn force(&self, to: State) {
        let mut now = self.now();
        let mut core = self.lock();
        let word = self.settle_locked(&mut core, &mut now);
        if word.state() != to || to == State::Closed {
            let at = now.get();
            self.transition(&mut core, word, to, at);
            if to == State::Closed {
                // A reset forgets what was learned, as it empties the window.
                core.baseline = baseline_of(&core.config, at);
                core.update_threshold();
            }
        }
        self.unlock(core);
    }

    /// Puts `config` in force (validated by the caller, with the same fixed part: see
    /// `Config::check_replaces`). The state, its generation, the deadlines already set, the
    /// counters and the subscribers stay; what the window keeps is said on `Window::carry_over`.
    /// Like a transition, it happens under the lock; unlike one, it changes no state, so it
    /// announces nothing but its tracing event (after the lock is released).
    pub(crate) fn reconfigure(&self, config: Arc<Config>) {
        loop {
            let current = self.current_config();
            // A new window is made outside the lock: it can be large. It keeps slow counts if
            // the new configuration has slow calls (recording reads the configuration in force).
            let slow = config.slow_call_duration.is_some();
            let fresh = (current.window != config.window).then(|| Window::new(config.window, slow));
            let mut core = self.lock();
            if !Arc::ptr_eq(&core.config, &current) {
                continue; // another reconfiguration came first: decide again against it
            }
            if let Some(mut window) = fresh {
                // `Metrics` of a breaker that does not record keep showing the window that was
                // frozen when it stopped.
                window.carry_over(&core.window);
                core.window = window;
            }
            if core.config.learned != config.learned {
                // New learning parameters start a new baseline.
                core.baseline = baseline_of(&config, self.now().get());
            } else if let Some(baseline) = &mut core.baseline {
                // The same baseline, but the threshold it starts from or the minimum it waits
                // for may have changed.
                baseline.reconfigure(config.failure_rate_threshold, config.minimum_calls);
            }
            core.config = config;
            core.update_threshold();
            // Relaxed: each is read alone, and a call that reads the old value behaves as if it
            // had come just before the reconfiguration.
            let words = &self.words;
            let slow = super::slow_call_nanos(&core.config);
            words.slow_call_nanos.store(slow, Ordering::Relaxed);
            let needs_time = core.records_need_time();
            words.time_window.store(needs_time, Ordering::Relaxed);
            self.set_clean(core.is_clean());
            drop(core);
            let name = self.words.name.as_deref().unwrap_or("");
            tracing::info!(
                breaker = name,
                key = self.key.as_deref(),
                "circuit reconfigured"
            );
            return;
        }
    }
}
