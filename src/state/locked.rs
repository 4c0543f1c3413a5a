//! The transition lock's state (`Core`: the window, the consecutive count, the learned threshold,
//! the queued announcements) and the trip decision, a pure function of the window's totals.

use std::collections::VecDeque;
use std::sync::Arc;

use super::announce::Announcement;
use super::window::{Sample, Totals, Window};
use crate::adaptive::Baseline;
use crate::config::Config;

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

    pub(super) fn any(self) -> bool {
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
    pub(super) window: Window,
    /// Failures in a row, since the last success or the last clearing of the window.
    pub(super) consecutive: u32,
    /// Opening attempt: 1 on Closed -> Open, +1 on each HalfOpen -> Open, 0 after closing.
    pub(super) attempt: u32,
    /// State of the jitter generator (splitmix64).
    pub(super) rng: u64,
    /// The latest "do not come back before" of a failure since the window was last cleared.
    pub(super) not_before: Option<u64>,
    /// The window as it was when the breaker stopped recording, shown by `Metrics` until it
    /// records again (an open time window would otherwise drain while nothing is recorded).
    pub(super) frozen: Option<Totals>,
    /// Transitions made and not announced yet, oldest first.
    pub(super) unannounced: VecDeque<Announcement>,
    /// Lifetime transition counts, `[from][to]` by `State::index`; boxed at the first transition,
    /// since most breakers of a keyed layer never make one.
    pub(super) transitions: Option<Box<[[u64; 6]; 6]>>,
    /// Whether the failure and the slow-call rate were at or above their thresholds at the last
    /// outcome recorded in MetricsOnly (so that each crossing is announced once).
    pub(super) exceeded: (bool, bool),
    /// The learned failure-rate baseline, with a learned threshold (boxed: a breaker without
    /// one pays one word).
    pub(super) baseline: Option<Box<Baseline>>,
    /// The failure-rate threshold in force: the configured one, or the learned one. A copy,
    /// kept with what it comes from, so that recording reads one field.
    pub(super) failure_threshold: Option<f64>,
    /// The configuration in force: replaced whole by a reconfiguration, under this lock.
    pub(super) config: Arc<Config>,
    /// The lifetime rejections counted when the breaker last closed: `Metrics::not_permitted`
    /// counts from there.
    pub(super) rejected_at_close: u64,
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
            rejected_at_close: 0,
        }
        .with_threshold()
    }

    /// Sets `failure_threshold` from the baseline or the configuration.
    fn with_threshold(mut self) -> Self {
        self.update_threshold();
        self
    }

    pub(super) fn update_threshold(&mut self) {
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

    /// Records `n` plain successes of a batch (`batch`), read at `at`: they came after every
    /// outcome recorded so far, so they end any run of failures.
    pub(super) fn record_successes(&mut self, n: u64, at: u64) {
        self.consecutive = 0;
        self.window.record_successes(n, at);
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

    /// Whether plain successes may batch (`batch`), with `totals` in the window: its rates are
    /// defined and no baseline learns from every outcome.
    #[inline]
    pub(super) fn batches_successes(&self, totals: Totals) -> bool {
        self.baseline.is_none() && totals.calls >= self.config.minimum_calls
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

    pub(super) fn next_uniform(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The baseline of `config`'s learned threshold, starting at `at`, if it has one.
pub(super) fn baseline_of(config: &Config, at: u64) -> Option<Box<Baseline>> {
    let configured = config.failure_rate_threshold;
    config
        .learned
        .map(|learned| Box::new(Baseline::new(learned, configured, at)))
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
    /// The jitter generator is splitmix64 (its published first outputs from a state of zero),
    /// so that a jittered interval is as random as its constants make it.
    #[test]
    fn the_jitter_generator_is_splitmix64() {
        let config = Arc::new(CircuitBreakerLayer::builder().validate_for_tests());
        let mut core = Core::new(
            Window::new(crate::config::WindowKind::Count(1), false),
            config,
        );
        core.rng = 0;
        for expected in [
            0xe220a8397b1dcdaf_u64,
            0x6e789e6aa1b965f4,
            0x06c45d188009454f,
        ] {
            assert_eq!(
                core.next_uniform(),
                (expected >> 11) as f64 / (1u64 << 53) as f64
            );
        }
    }

    /// The clock is read before the lock only when recording needs it: a count window that a
    /// reconfiguration kept (or made) reads none for a failure.
    #[test]
    fn a_reconfigured_count_window_records_a_failure_without_reading_the_clock() {
        use crate::state::Decision;
        use crate::state::clock::counts::during;
        let count = || CircuitBreakerLayer::builder().sliding_window(crate::Window::count(10));
        let b = count().breaker_for_tests();
        b.reconfigure(Arc::new(count().minimum_calls(5).validate_for_tests()));
        let mut now = b.now();
        let Decision::Admit(ticket) = b.admit(&mut now) else {
            panic!("closed: admitted");
        };
        let (clock_reads, locks) = during(|| {
            b.complete(ticket, crate::Outcome::Failure, None, None, &mut now);
        });
        assert_eq!((clock_reads, locks), (0, 1));
    }

    #[test]
    fn the_jitter_generator_spreads_its_draws_evenly_over_0_to_1() {
        let config = Arc::new(crate::CircuitBreakerLayer::builder().validate_for_tests());
        let mut core = Core::new(
            Window::new(crate::config::WindowKind::Count(1), false),
            config,
        );
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
}
