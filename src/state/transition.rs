//! Transitions: the trip decision and every change of state.
//!
//! Every transition is made under the transition lock (`Breaker::core`), so each one happens
//! exactly once and its side effects (deadlines, attempt number, the window) are in place before
//! the new state word is published with `Release`. Its announcement runs after the lock is
//! released (`announce.rs`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use super::announce::{Announcement, What};
use super::window::{Sample, Totals, Window};
use super::word::{Generation, Probes, StateWord};
use super::{Breaker, State, clock::Now, clock::saturating_nanos};
use crate::adaptive::Baseline;
use crate::config::Config;
use crate::event::Event;
use crate::sync::{MutexGuard, Ordering, lock};

/// The failure and slow-call rates of a window, each `None` while undefined (below the minimum
/// number of calls).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Rates {
    pub(crate) failure: Option<f64>,
    pub(crate) slow: Option<f64>,
}

impl Rates {
    pub(crate) fn of(totals: Totals, config: &Config) -> Rates {
        if totals.calls == 0 || totals.calls < config.minimum_calls {
            return Rates::default(); // the rates are undefined below the minimum
        }
        let calls = totals.calls as f64;
        Rates {
            failure: Some(totals.failed as f64 / calls),
            slow: Some(totals.slow as f64 / calls),
        }
    }

    /// The rates that are at or above their threshold (the others `None`): `failure_threshold`
    /// is the one in force (configured or learned, `Core::failure_threshold`).
    pub(crate) fn exceeded(self, failure_threshold: Option<f64>, config: &Config) -> Rates {
        let at_least = |rate: Option<f64>, threshold: Option<f64>| {
            rate.filter(|&rate| threshold.is_some_and(|threshold| rate >= threshold))
        };
        Rates {
            failure: at_least(self.failure, failure_threshold),
            slow: at_least(self.slow, config.slow_call_rate_threshold),
        }
    }

    fn any(self) -> bool {
        self.failure.is_some() || self.slow.is_some()
    }
}

/// Whether the closed breaker trips, given its window's totals, its consecutive failures and the
/// failure-rate threshold in force (configured or learned, `Core::failure_threshold`).
#[inline]
pub(crate) fn should_trip(
    totals: Totals,
    consecutive: u32,
    failure_threshold: Option<f64>,
    config: &Config,
) -> bool {
    config
        .consecutive_failures
        .is_some_and(|k| consecutive >= k)
        || Rates::of(totals, config)
            .exceeded(failure_threshold, config)
            .any()
}

/// What the transition lock guards.
#[derive(Debug)]
pub(super) struct Core {
    window: Window,
    /// Failures in a row, since the last success or the last clearing of the window.
    consecutive: u32,
    /// Opening attempt: 1 on Closed -> Open, +1 on each HalfOpen -> Open, 0 after closing.
    attempt: u32,
    /// State of the jitter generator (splitmix64).
    rng: u64,
    /// The latest "do not come back before" of a failure since the window was last cleared.
    not_before: Option<u64>,
    /// The window as it was when the breaker stopped recording, shown by `Metrics` until it
    /// records again (an open time window would otherwise drain while nothing is recorded).
    frozen: Option<Totals>,
    /// Transitions made and not announced yet, oldest first.
    pub(super) unannounced: VecDeque<Announcement>,
    /// Lifetime transition counts, `[from][to]` by `State::index`; boxed at the first transition,
    /// since most breakers of a keyed layer never make one.
    transitions: Option<Box<[[u64; 6]; 6]>>,
    /// Whether the failure and the slow-call rate were at or above their thresholds at the last
    /// outcome recorded in MetricsOnly (so that each crossing is announced once).
    exceeded: (bool, bool),
    /// The learned failure-rate baseline, with a learned threshold (boxed: a breaker without
    /// one pays one word).
    baseline: Option<Box<Baseline>>,
    /// The failure-rate threshold in force: the configured one, or the learned one. A copy,
    /// kept with what it comes from, so that recording reads one field.
    failure_threshold: Option<f64>,
    /// The configuration in force: replaced whole by a reconfiguration, under this lock.
    config: Arc<Config>,
}

impl Core {
    pub(super) fn new(window: Window, config: Arc<Config>) -> Self {
        let seed = {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        };
        Core {
            window,
            consecutive: 0,
            attempt: 0,
            rng: seed,
            not_before: None,
            frozen: None,
            unannounced: VecDeque::new(),
            transitions: None,
            exceeded: (false, false),
            baseline: baseline_of(&config, 0),
            failure_threshold: None,
            config,
        }
        .with_threshold()
    }

    /// Sets `failure_threshold` from the baseline or the configuration.
    fn with_threshold(mut self) -> Self {
        self.update_threshold();
        self
    }

    fn update_threshold(&mut self) {
        self.failure_threshold = match &self.baseline {
            Some(baseline) => Some(baseline.threshold()),
            None => self.config.failure_rate_threshold,
        };
    }

    /// The failure-rate threshold in force: the learned one, or the configured one.
    #[inline]
    pub(super) fn failure_threshold(&self) -> Option<f64> {
        self.failure_threshold
    }

    /// The learned baseline failure rate, if any was learned.
    pub(super) fn baseline_rate(&self) -> Option<f64> {
        self.baseline.as_ref().and_then(|baseline| baseline.rate())
    }

    /// Whether the failure-rate threshold is learned (recording then reads the clock).
    #[inline]
    pub(super) fn learns(&self) -> bool {
        self.baseline.is_some()
    }

    /// Learns one recorded outcome at `at` into the baseline, if there is one.
    #[cold]
    pub(super) fn learn(&mut self, at: u64, failed: bool) {
        let minimum = self.config.minimum_calls;
        if let Some(baseline) = &mut self.baseline {
            baseline.observe(at, failed, minimum);
        }
        self.update_threshold();
    }

    /// Whether recording an outcome needs the time (a time window, or a baseline to learn).
    pub(super) fn records_need_time(&self) -> bool {
        self.window_is_time() || self.baseline.is_some()
    }

    pub(super) fn transitions(&self) -> [[u64; 6]; 6] {
        self.transitions.as_deref().copied().unwrap_or_default()
    }

    pub(super) fn config(&self) -> &Config {
        &self.config
    }

    pub(super) fn config_arc(&self) -> &Arc<Config> {
        &self.config
    }

    /// Whether the window is a time window (recording needs the time).
    pub(super) fn window_is_time(&self) -> bool {
        self.config.window.is_time()
    }

    pub(super) fn record(&mut self, sample: Sample, at: u64, not_before: Option<u64>) {
        self.note_not_before(not_before);
        self.consecutive = match sample.failed {
            true => self.consecutive.saturating_add(1),
            false => 0,
        };
        self.window.record(sample, at);
    }

    /// Keeps the latest "do not come back before" a failure carried, for the next opening.
    pub(super) fn note_not_before(&mut self, not_before: Option<u64>) {
        self.not_before = self.not_before.max(not_before);
    }

    pub(super) fn totals(&mut self, at: u64) -> Totals {
        self.window.totals(at)
    }

    pub(super) fn consecutive(&self) -> u32 {
        self.consecutive
    }

    /// Whether a plain success would change nothing (see `Breaker::clean`).
    pub(super) fn is_clean(&self) -> bool {
        // A baseline learns from every outcome, successes included.
        self.consecutive == 0 && self.window.is_full_of_successes() && self.baseline.is_none()
    }

    /// The totals `Metrics` shows: the live window, or the one frozen when recording stopped.
    pub(super) fn shown_totals(&mut self, at: u64) -> Totals {
        match self.frozen {
            Some(totals) => totals,
            None => self.window.totals(at),
        }
    }

    #[cfg(all(test, loom))]
    pub(super) fn is_announced(&self) -> bool {
        self.unannounced.is_empty()
    }

    fn next_uniform(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The baseline of `config`'s learned threshold, starting at `at`, if it has one.
fn baseline_of(config: &Config, at: u64) -> Option<Box<Baseline>> {
    let configured = config.failure_rate_threshold;
    config
        .learned
        .map(|learned| Box::new(Baseline::new(learned, configured, at)))
}

impl Breaker {
    pub(super) fn lock(&self) -> MutexGuard<'_, Core> {
        lock(&self.core)
    }

    /// Moves from `from` (the current word) to `to`, at `at` (nanoseconds since the breaker's
    /// creation: when the transition happens, which for a transition due by time is its
    /// deadline). Called with the lock held; queues the announcement.
    pub(super) fn transition(&self, core: &mut Core, from: StateWord, to: State, at: u64) {
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
                let uniform = core.next_uniform();
                let interval = core.config.open_interval(core.attempt, uniform);
                let mut until = at.saturating_add(saturating_nanos(interval));
                // An upstream's "not before" lengthens the interval, up to the configured cap.
                if let Some(not_before) = core.not_before.take() {
                    let cap = at.saturating_add(saturating_nanos(core.config.max_retry_after));
                    until = until.max(not_before.min(cap));
                }
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
                    self.counters.closed();
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
            name: self.name.clone(),
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
            // A new window is made outside the lock: it can be large.
            let fresh = (current.window != config.window).then(|| Window::new(config.window));
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
            let name = self.name.as_deref().unwrap_or("");
            tracing::info!(
                breaker = name,
                key = self.key.as_deref(),
                "circuit reconfigured"
            );
            return;
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::CircuitBreakerLayer;

    fn config(builder: crate::Builder) -> Config {
        builder.validate_for_tests()
    }

    fn totals(calls: u64, failed: u64, slow: u64) -> Totals {
        Totals {
            calls,
            failed,
            slow,
        }
    }

    #[test]
    fn should_trip_at_the_failure_rate_threshold_inclusive_once_past_the_minimum() {
        let c = config(
            CircuitBreakerLayer::builder()
                .failure_rate_threshold(0.5)
                .minimum_calls(4),
        );
        assert!(
            !should_trip(totals(3, 3, 0), 0, c.failure_rate_threshold, &c),
            "below the minimum"
        );
        assert!(
            should_trip(totals(4, 2, 0), 0, c.failure_rate_threshold, &c),
            ">= is inclusive"
        );
        assert!(!should_trip(
            totals(5, 2, 0),
            0,
            c.failure_rate_threshold,
            &c
        ));
        assert!(!should_trip(
            totals(0, 0, 0),
            0,
            c.failure_rate_threshold,
            &c
        ));
    }

    #[test]
    fn the_jitter_generator_spreads_its_draws_evenly_over_0_to_1() {
        let config = Arc::new(crate::CircuitBreakerLayer::builder().validate_for_tests());
        let mut core = Core::new(Window::new(crate::config::WindowKind::Count(1)), config);
        for seed in [0, 42, u64::MAX] {
            core.rng = seed;
            let mut deciles = [0u32; 10];
            let mut pairs = [0u32; 4];
            let mut last = 0.0;
            for _ in 0..10_000 {
                let u = core.next_uniform();
                assert!((0.0..1.0).contains(&u), "{u}");
                deciles[(u * 10.0) as usize] += 1;
                // Successive draws are independent: each quadrant of (last, this) gets a quarter.
                pairs[usize::from(last >= 0.5) * 2 + usize::from(u >= 0.5)] += 1;
                last = u;
            }
            assert!(
                deciles.iter().all(|d| (850..=1150).contains(d)),
                "{deciles:?}"
            );
            assert!(pairs.iter().all(|q| (2300..=2700).contains(q)), "{pairs:?}");
        }
    }

    #[test]
    fn a_rejection_nobody_asked_for_takes_no_lock_and_reads_no_clock() {
        use crate::state::clock::counts::during;
        use crate::state::{Decision, State};
        let breaker = Breaker::new(Arc::new(config(CircuitBreakerLayer::builder())), None);
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

    #[test]
    fn should_trip_on_the_slow_call_rate_or_consecutive_failures() {
        let c = config(
            CircuitBreakerLayer::builder()
                .minimum_calls(2)
                .slow_call_rate_threshold(0.5)
                .consecutive_failures(3),
        );
        assert!(should_trip(
            totals(2, 0, 1),
            0,
            c.failure_rate_threshold,
            &c
        ));
        assert!(!should_trip(
            totals(3, 0, 1),
            0,
            c.failure_rate_threshold,
            &c
        ));
        assert!(
            should_trip(totals(0, 0, 0), 3, c.failure_rate_threshold, &c),
            "consecutive needs no minimum"
        );
        assert!(!should_trip(
            totals(1, 1, 0),
            2,
            c.failure_rate_threshold,
            &c
        ));
    }
}
