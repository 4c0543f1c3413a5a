//! What a fleet of breakers (feature `redis`) may do to this one: open it until a deadline that
//! another instance chose, keep it open while another instance probes, close it when the fleet
//! closed; and what it shows the fleet: its state, its generation and its lifetime counts, read
//! without the lock.
//!
//! Each change is a transition like any other: made under the transition lock, announced after
//! it (tracing, events, waiters), so listeners and metrics see a fleet's opening as they see a
//! local one. A state an operator set (ForcedOpen, Disabled, MetricsOnly) is never changed.

use tokio::time::Instant;

use super::clock::instant_at;
use super::lane::Count;
use super::window::Totals;
use super::word::Generation;
use super::{Breaker, State, should_trip};
use crate::sync::Ordering;

/// What [`Breaker::open_until`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpenUntil {
    /// It was Closed or HalfOpen and is now Open until the deadline.
    Opened,
    /// It was Open and stays Open, now until the later deadline.
    Extended,
    /// Nothing: the deadline is past or not later than the current one, or an operator's state.
    Unchanged,
}

/// What the fleet reads of a breaker on each of its ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Observed {
    pub(crate) state: State,
    /// Changes with every transition: counts read under one generation were all recorded in
    /// `state`.
    pub(crate) generation: Generation,
    /// Lifetime counts of recorded outcomes: `calls` (successes and failures), `failed`, `slow`.
    pub(crate) calls: u64,
    pub(crate) failed: u64,
    pub(crate) slow: u64,
    /// The end of the open interval, while Open.
    pub(crate) open_until: Option<Instant>,
}

impl Breaker {
    /// Opens the breaker until `until` (from Closed or HalfOpen), or keeps it open until then if
    /// that is later than its own deadline. The transition is announced as any other.
    pub(crate) fn open_until(&self, until: Instant) -> OpenUntil {
        let mut now = self.now();
        // `u64::MAX` means "never" (no deadline): a deadline beyond the clock's range is the
        // last one it holds, so that the breaker still probes by itself one day.
        let until = self.nanos_at(until).min(u64::MAX - 1);
        loop {
            let mut core = self.lock();
            let word = self.load();
            if self.is_due(word, &mut now) {
                // The transitions due by time come first, as if somebody had looked.
                drop(core);
                self.settle(&mut now);
                continue;
            }
            let at = now.get();
            if until <= at {
                return OpenUntil::Unchanged;
            }
            let opened = match word.state() {
                State::Closed | State::HalfOpen => {
                    self.transition_until(&mut core, word, State::Open, at, Some(until));
                    OpenUntil::Opened
                }
                State::Open if until > self.words.open_until.load(Ordering::Relaxed) => {
                    // Relaxed, under the lock: a caller that reads the earlier deadline without
                    // the lock rejects (the deadline is in the future either way) or, once it is
                    // due, settles under the lock, which reads this one. Nothing else depends on
                    // it.
                    self.words.open_until.store(until, Ordering::Relaxed);
                    OpenUntil::Extended
                }
                _ => return OpenUntil::Unchanged,
            };
            self.unlock(core);
            return opened;
        }
    }

    /// Closes the breaker because the fleet closed (another instance's probes succeeded): from
    /// Open or HalfOpen to Closed, clearing the window, announced as any other transition.
    /// Returns whether it closed.
    pub(crate) fn close_from_fleet(&self) -> bool {
        let mut now = self.now();
        let mut core = self.lock();
        let word = self.load();
        let closed = matches!(word.state(), State::Open | State::HalfOpen);
        if closed {
            self.transition(&mut core, word, State::Closed, now.get());
        }
        self.unlock(core);
        closed
    }

    /// Opens a closed breaker because the fleet's window trips it, with its own open interval,
    /// as its own window would. Returns whether it opened.
    pub(crate) fn trip_from_fleet(&self) -> bool {
        let mut now = self.now();
        let mut core = self.lock();
        let word = self.load();
        let opened = word.state() == State::Closed;
        if opened {
            self.transition(&mut core, word, State::Open, now.get());
        }
        self.unlock(core);
        opened
    }

    /// The state, its generation and the lifetime counts, read without the lock and without
    /// making a transition (an Open past its deadline is still Open here).
    pub(crate) fn observe(&self) -> Observed {
        let word = self.load();
        let c = &self.counters;
        let failed = c.sum(Count::Failed);
        let open_until = match word.state() {
            State::Open => instant_at(
                self.words.epoch,
                self.words.open_until.load(Ordering::Relaxed),
            ),
            _ => None,
        };
        Observed {
            state: word.state(),
            generation: word.generation(),
            calls: c.sum(Count::Successful).saturating_add(failed),
            failed,
            slow: c.sum(Count::Slow),
            open_until,
        }
    }

    /// The longest this breaker ever stays open by itself: its longest open interval (the
    /// backoff's maximum), or an upstream's "not before" up to `max_retry_after`. An opening
    /// from the fleet much further ahead than this is not one of this breaker's kind.
    pub(crate) fn longest_open(&self) -> std::time::Duration {
        let config = self.current_config();
        config
            .open_interval(u32::MAX, 1.0)
            .max(config.max_retry_after)
    }

    /// Whether the fleet's window (`calls`, `failed`, `slow`) trips this breaker's thresholds
    /// (rates only: consecutive failures are a local rule), with the failure-rate threshold in
    /// force here (configured, or learned from this instance's history).
    pub(crate) fn trips_on(&self, calls: u64, failed: u64, slow: u64) -> bool {
        let totals = Totals {
            calls,
            failed: failed.min(calls),
            slow: slow.min(calls),
        };
        let core = self.lock();
        should_trip(totals, 0, core.failure_threshold(), core.config())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::CircuitBreakerLayer;
    use crate::classify::Outcome;
    use crate::state::Decision;
    use crate::state::word::Ticket;

    fn breaker(builder: crate::Builder) -> Arc<Breaker> {
        Arc::new(builder.breaker_for_tests())
    }

    #[tokio::test(start_paused = true)]
    async fn open_until_opens_a_closed_breaker_until_exactly_the_fleet_deadline() {
        let b = breaker(CircuitBreakerLayer::builder().open_duration(Duration::from_secs(30)));
        let mut events = b.subscribe();
        let until = Instant::now() + Duration::from_secs(5);
        assert_eq!(b.open_until(until), OpenUntil::Opened);
        assert_eq!(b.observe().open_until, Some(until), "shorter than its own");
        let Decision::Reject(rejection) = b.admit(&mut b.now()) else {
            panic!("open");
        };
        assert_eq!(rejection.retry_at, Some(until));
        use futures::StreamExt;
        let event = events.next().await.unwrap();
        assert!(matches!(
            event,
            crate::Event::StateTransition {
                from: State::Closed,
                to: State::Open,
                ..
            }
        ));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.state(&mut b.now()), State::HalfOpen, "at the deadline");
    }

    #[tokio::test(start_paused = true)]
    async fn open_until_extends_an_open_breaker_but_never_shortens_it() {
        let b = breaker(CircuitBreakerLayer::builder().open_duration(Duration::from_secs(10)));
        let start = Instant::now();
        assert_eq!(
            b.open_until(start + Duration::from_secs(10)),
            OpenUntil::Opened
        );
        let generation = b.observe().generation;
        assert_eq!(
            b.open_until(start + Duration::from_secs(4)),
            OpenUntil::Unchanged
        );
        assert_eq!(
            b.open_until(start + Duration::from_secs(20)),
            OpenUntil::Extended
        );
        assert_eq!(b.observe().generation, generation, "no transition");
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(b.state(&mut b.now()), State::Open);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.state(&mut b.now()), State::HalfOpen);
    }

    /// Opens `b` from the fleet for a second, lets that second pass, and takes the probe of the
    /// half-open episode.
    async fn probe_after_a_fleet_opening(b: &Breaker) -> Ticket {
        assert_eq!(
            b.open_until(Instant::now() + Duration::from_secs(1)),
            OpenUntil::Opened
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        let Decision::Admit(probe) = b.admit(&mut b.now()) else {
            panic!("a probe");
        };
        probe
    }

    #[tokio::test(start_paused = true)]
    async fn open_until_reopens_a_half_open_breaker_and_makes_its_probes_stale() {
        let b = breaker(
            CircuitBreakerLayer::builder()
                .open_duration(Duration::from_secs(1))
                .half_open_calls(1),
        );
        b.force(State::Closed);
        let probe = probe_after_a_fleet_opening(&b).await;
        let until = Instant::now() + Duration::from_secs(3);
        assert_eq!(b.open_until(until), OpenUntil::Opened);
        b.complete(probe, Outcome::Success, None, None, &mut b.now());
        assert_eq!(b.state(&mut b.now()), State::Open, "the probe is stale");
    }

    #[tokio::test(start_paused = true)]
    async fn the_fleet_never_changes_an_operators_state_nor_a_past_deadline() {
        let b = breaker(CircuitBreakerLayer::builder());
        let later = Instant::now() + Duration::from_secs(1);
        assert_eq!(b.open_until(Instant::now()), OpenUntil::Unchanged);
        for state in [State::ForcedOpen, State::Disabled, State::MetricsOnly] {
            b.force(state);
            assert_eq!(b.open_until(later), OpenUntil::Unchanged);
            assert!(!b.close_from_fleet());
            assert_eq!(b.stored_state(), state);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn close_from_fleet_closes_an_open_breaker_and_clears_its_window() {
        let b = breaker(CircuitBreakerLayer::builder().consecutive_failures(1));
        let Decision::Admit(ticket) = b.admit(&mut b.now()) else {
            panic!("closed");
        };
        b.complete(ticket, Outcome::Failure, None, None, &mut b.now());
        assert_eq!(b.stored_state(), State::Open);
        let seen = b.observe();
        assert_eq!((seen.calls, seen.failed), (1, 1));
        assert!(b.close_from_fleet());
        assert_eq!(b.stored_state(), State::Closed);
        assert_eq!(b.metrics().calls(), 0);
        assert!(!b.close_from_fleet(), "closed already");
    }

    /// A fleet deadline past what the clock's nanoseconds hold (a deadline centuries ahead) must
    /// not become `u64::MAX`, which means "never": the breaker would stay open with no deadline,
    /// invisible to `observe`, and never probe again by itself.
    #[tokio::test(start_paused = true)]
    async fn open_until_a_deadline_beyond_the_clocks_range_still_has_a_deadline() {
        let b = breaker(CircuitBreakerLayer::builder());
        let centuries = Duration::from_secs(600 * 365 * 24 * 3600);
        assert_eq!(b.open_until(Instant::now() + centuries), OpenUntil::Opened);
        assert!(b.observe().open_until.is_some(), "an Open with a deadline");
    }

    /// The fleet closes while this instance's probe is in flight: the probe's late failure was
    /// admitted under the half-open episode, so it is stale and must not reopen the circuit.
    #[tokio::test(start_paused = true)]
    async fn close_from_fleet_makes_a_probe_in_flight_stale() {
        let b = breaker(
            CircuitBreakerLayer::builder()
                .open_duration(Duration::from_secs(1))
                .half_open_calls(1)
                .consecutive_failures(1),
        );
        let probe = probe_after_a_fleet_opening(&b).await;
        assert!(b.close_from_fleet());
        b.complete(probe, Outcome::Failure, None, None, &mut b.now());
        assert_eq!(b.state(&mut b.now()), State::Closed, "the probe is stale");
        assert_eq!(
            b.observe().failed,
            1,
            "yet the call is counted in the lifetime totals"
        );
    }

    /// Keeps the `retry_after` field of each "circuit opened" tracing event.
    #[derive(Default)]
    struct OpenedLogs(std::sync::Mutex<Vec<String>>);

    struct RetryAfter<'a>(&'a mut Option<String>);

    impl tracing::field::Visit for RetryAfter<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "retry_after" {
                *self.0 = Some(format!("{value:?}"));
            }
        }
    }

    impl tracing::Subscriber for OpenedLogs {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let mut retry_after = None;
            event.record(&mut RetryAfter(&mut retry_after));
            if let Some(retry_after) = retry_after {
                self.0.lock().unwrap().push(retry_after);
            }
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    /// The "circuit opened" log of an opening from the fleet says how long the breaker is open:
    /// until the fleet's deadline, not for the interval this breaker would have chosen.
    #[tokio::test(start_paused = true)]
    async fn an_opening_from_the_fleet_logs_the_fleets_interval() {
        let logs = Arc::new(OpenedLogs::default());
        let _default = tracing::subscriber::set_default(logs.clone());
        let b = breaker(CircuitBreakerLayer::builder().open_duration(Duration::from_secs(30)));
        b.open_until(Instant::now() + Duration::from_secs(5));
        b.force(State::Closed);
        let longer = Duration::from_secs(30 * 24 * 3600);
        b.open_until(Instant::now() + longer);
        assert_eq!(
            *logs.0.lock().unwrap(),
            [
                format!("{:?}", Duration::from_secs(5)),
                format!("{longer:?}")
            ]
        );
    }

    /// The fleet's opening races with this instance's probes finishing, on several threads:
    /// whichever comes first, the breaker ends Open until exactly the fleet's deadline (probes
    /// that close it first are overruled; probes that finish after are stale).
    #[test]
    fn open_until_racing_with_probes_finishing_always_ends_open_until_the_deadline() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            for _ in 0..100 {
                let b = breaker(CircuitBreakerLayer::builder().half_open_calls(4));
                let opened = Instant::now() + Duration::from_millis(1);
                assert_eq!(b.open_until(opened), OpenUntil::Opened);
                while b.state(&mut b.now()) != State::HalfOpen {
                    assert!(opened.elapsed() < Duration::from_secs(5), "half-open");
                    std::thread::yield_now();
                }
                let probes: Vec<_> = (0..4)
                    .map(|_| match b.admit(&mut b.now()) {
                        Decision::Admit(probe) => probe,
                        Decision::Reject(r) => panic!("a probe: {r:?}"),
                    })
                    .collect();
                let finishing: Vec<_> = probes
                    .into_iter()
                    .map(|probe| {
                        let b = b.clone();
                        tokio::spawn(async move {
                            b.complete(probe, Outcome::Success, None, None, &mut b.now());
                        })
                    })
                    .collect();
                let until = Instant::now() + Duration::from_secs(60);
                assert_eq!(b.open_until(until), OpenUntil::Opened);
                for task in finishing {
                    task.await.unwrap();
                }
                assert_eq!(b.stored_state(), State::Open);
                assert_eq!(b.observe().open_until, Some(until));
            }
        });
    }

    /// Counts the fleet reports inconsistently (more failures than calls) are clamped: a rate
    /// above 1 never trips a breaker below its minimum, and no count trips on nothing.
    #[test]
    fn trips_on_clamps_inconsistent_fleet_counts() {
        let b = breaker(
            CircuitBreakerLayer::builder()
                .failure_rate_threshold(0.5)
                .minimum_calls(10),
        );
        assert!(!b.trips_on(0, 100, 100));
        assert!(!b.trips_on(9, u64::MAX, 0), "below the minimum");
        assert!(b.trips_on(10, u64::MAX, 0));
    }

    #[test]
    fn trips_on_applies_the_rate_thresholds_to_the_fleets_window() {
        let b = breaker(
            CircuitBreakerLayer::builder()
                .failure_rate_threshold(0.5)
                .minimum_calls(10)
                .consecutive_failures(1),
        );
        assert!(!b.trips_on(9, 9, 0), "below the minimum");
        assert!(b.trips_on(10, 5, 0));
        assert!(!b.trips_on(10, 4, 0));
    }

    /// Many callers against the fleet's extensions: once a deadline is extended, no caller is
    /// admitted before it, and every rejection's retry-after is one of the deadlines set.
    #[test]
    fn concurrent_callers_never_get_in_while_the_fleet_extends_the_open_interval() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let b = breaker(CircuitBreakerLayer::builder().open_duration(Duration::from_secs(60)));
            let start = Instant::now();
            let deadlines: Vec<Instant> = (1..=200)
                .map(|i| start + Duration::from_secs(60) + Duration::from_millis(i))
                .collect();
            assert_eq!(b.open_until(deadlines[0]), OpenUntil::Opened);
            let callers: Vec<_> = (0..8)
                .map(|_| {
                    let b = b.clone();
                    let deadlines = deadlines.clone();
                    tokio::spawn(async move {
                        for _ in 0..2_000 {
                            match b.admit(&mut b.now()) {
                                Decision::Admit(_) => panic!("admitted while open"),
                                Decision::Reject(r) => {
                                    assert!(deadlines.contains(&r.retry_at.unwrap()))
                                }
                            }
                            tokio::task::yield_now().await;
                        }
                    })
                })
                .collect();
            for &deadline in &deadlines[1..] {
                assert_eq!(b.open_until(deadline), OpenUntil::Extended);
                tokio::task::yield_now().await;
            }
            for caller in callers {
                caller.await.unwrap();
            }
            assert_eq!(b.observe().open_until, deadlines.last().copied());
        });
    }
}
