//! A count window's batches, attacked: reconfigurations, resets, stale tickets, slow calls,
//! learned thresholds, many lanes, and a sequential model.

use super::*;

/// (calls, failed, consecutive failures) that `Metrics` shows, read under the lock (which
/// folds the batch).
fn shown(b: &Breaker) -> (u64, u64, u32) {
    let m = b.metrics();
    (m.calls(), m.failed(), m.consecutive_failures())
}

fn config(builder: crate::config::Builder) -> Arc<crate::config::Config> {
    Arc::new(builder.validate_for_tests())
}

/// A window of one has no room for a batched success: each goes to the lock until one has
/// pushed the failure out, and the window, clean again, takes no lock.
#[test]
fn a_count_window_of_one_sends_each_success_to_the_lock_until_it_is_clean() {
    let b = count_window(1, 100);
    fail(&b);
    fail(&b); // under the lock: opens a batch with no room
    let (_, locks) = during(|| succeed(&b));
    assert_eq!(locks, 1, "a full line: under the lock");
    assert_eq!(shown(&b), (1, 0, 0));
    let (_, locks) = during(|| (0..5).for_each(|_| succeed(&b)));
    assert_eq!(locks, 0, "clean");
    assert_eq!(shown(&b), (1, 0, 0));
}

/// A window of two: a lane batches one success; its second makes the window's size, goes to
/// the lock, and leaves the window full of successes.
#[test]
fn a_count_window_of_two_batches_one_success_per_lane_and_records_the_second() {
    let b = count_window(2, 100);
    fail(&b);
    fail(&b);
    let (clock_reads, locks) = during(|| succeed(&b));
    assert_eq!((clock_reads, locks), (0, 0), "batched, with no time bounds");
    let (_, locks) = during(|| succeed(&b));
    assert_eq!(locks, 1, "the lane's limit");
    assert_eq!(shown(&b), (2, 0, 0));
    let (_, locks) = during(|| (0..5).for_each(|_| succeed(&b)));
    assert_eq!(locks, 0, "clean");
}

/// More threads than lanes, each past the limit of its lane's line: the window ends full of
/// successes, every failure out of it and the run ended, and the next success takes no lock.
#[test]
fn successes_on_more_threads_than_lanes_leave_a_count_window_clean() {
    let b = count_window(4, 1_000);
    for _ in 0..4 {
        fail(&b);
    }
    std::thread::scope(|s| {
        for _ in 0..3 * crate::state::lane::LANES {
            s.spawn(|| (0..50).for_each(|_| succeed(&b)));
        }
    });
    assert_eq!(shown(&b), (4, 0, 0));
    let (_, locks) = during(|| succeed(&b));
    assert_eq!(locks, 0, "clean");
    assert_eq!(
        b.metrics().successful(),
        4,
        "the window's successes, not the lifetime's"
    );
}

/// Failures and successes from many threads, then successes only: a count window shows
/// the last `n` outcomes (all successes) and no run of failures, whatever the lanes batched.
#[test]
fn racing_failures_and_batched_successes_leave_a_count_window_a_sequential_order_gives() {
    let b = count_window(8, u32::MAX);
    let phase = std::sync::Barrier::new(2 * crate::state::lane::LANES);
    std::thread::scope(|s| {
        for t in 0..2 * crate::state::lane::LANES {
            let (b, phase) = (&b, &phase);
            s.spawn(move || {
                for i in 0..200 {
                    match (i + t) % 3 {
                        0 => fail(b),
                        _ => succeed(b),
                    }
                }
                phase.wait();
                (0..20).for_each(|_| succeed(b));
            });
        }
    });
    assert_eq!(shown(&b), (8, 0, 0));
    let m = b.metrics();
    assert_eq!(
        m.totals().successful() + m.totals().failed(),
        2 * crate::state::lane::LANES as u64 * 220,
        "every call counted once in the lifetime totals"
    );
}

/// A sequential model of a count window (its last `n` outcomes, failures in a row) against
/// the breaker, whose successes batch and are folded by whichever read or failure comes next.
#[test]
fn a_count_windows_metrics_match_a_sequential_order_whenever_they_fold() {
    let mut rng: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for n in 1..=5u32 {
        let b = count_window(n, u32::MAX);
        let mut ring = std::collections::VecDeque::new();
        let mut consecutive = 0u32;
        for step in 0..400 {
            let roll = next() % 10;
            if roll < 3 {
                fail(&b);
                consecutive += 1;
                ring.push_back(true);
            } else {
                succeed(&b);
                consecutive = 0;
                ring.push_back(false);
            }
            if ring.len() > n as usize {
                ring.pop_front();
            }
            if roll == 9 || step == 399 {
                let failed = ring.iter().filter(|&&f| f).count() as u64;
                let want = (ring.len() as u64, failed, consecutive);
                assert_eq!(shown(&b), want, "window {n}, step {step}");
            }
        }
    }
}

/// Reconfigured from `count(10)` to `count(3)` while this lane has batched successes: the new
/// window keeps the newest three outcomes, the batched successes among them, in order.
#[test]
fn a_count_to_count_reconfiguration_carries_the_batched_successes_in_order() {
    let b = count_window(10, 100);
    (0..3).for_each(|_| fail(&b));
    let (_, locks) = during(|| (0..2).for_each(|_| succeed(&b)));
    assert_eq!(locks, 0, "batched");
    b.reconfigure(config(
        CircuitBreakerLayer::builder()
            .sliding_window(Window::count(3))
            .minimum_calls(1)
            .consecutive_failures(100),
    ));
    assert_eq!(shown(&b), (3, 1, 0), "[F, S, S]");
    let (_, locks) = during(|| succeed(&b));
    assert_eq!(locks, 1, "the reconfiguration closed the batch");
    assert_eq!(shown(&b), (3, 0, 0));
    let (_, locks) = during(|| (0..5).for_each(|_| succeed(&b)));
    assert_eq!(locks, 0, "clean");
}

/// Reconfigured from a count window to a time window while a batch is open: the batched
/// successes end the run of failures and leave with the count window; none of them (nor a
/// line's first count) lands in the time window.
#[tokio::test(start_paused = true)]
async fn a_count_to_time_reconfiguration_leaves_no_batched_success_behind() {
    let b = count_window(10, 100);
    fail(&b);
    fail(&b);
    let (_, locks) = during(|| (0..2).for_each(|_| succeed(&b)));
    assert_eq!(locks, 0, "batched");
    b.reconfigure(config(
        CircuitBreakerLayer::builder()
            .sliding_window(Window::time(Duration::from_secs(60)).buckets(60))
            .minimum_calls(1)
            .consecutive_failures(100),
    ));
    assert_eq!(
        shown(&b),
        (0, 0, 0),
        "a new time window, after the run ended"
    );
    succeed(&b); // under the lock: opens a batch in the time window
    let (_, locks) = during(|| (0..3).for_each(|_| succeed(&b)));
    assert_eq!(locks, 0, "batched");
    assert_eq!(shown(&b), (4, 0, 0));
}

/// Reconfigured from a time window to a count window while a batch is open: the new count
/// window starts empty, and its own batches are bounded by its size.
#[tokio::test(start_paused = true)]
async fn a_time_to_count_reconfiguration_starts_batches_bounded_by_the_count() {
    let time = CircuitBreakerLayer::builder()
        .sliding_window(Window::time(Duration::from_secs(60)).buckets(60))
        .minimum_calls(1)
        .consecutive_failures(100);
    let b = Breaker::new(config(time), None);
    fail(&b);
    let (_, locks) = during(|| (0..3).for_each(|_| succeed(&b)));
    assert_eq!(locks, 0, "batched");
    b.reconfigure(config(
        CircuitBreakerLayer::builder()
            .sliding_window(Window::count(3))
            .minimum_calls(1)
            .consecutive_failures(100),
    ));
    assert_eq!(shown(&b), (0, 0, 0));
    fail(&b);
    let (_, locks) = during(|| (0..2).for_each(|_| succeed(&b)));
    assert_eq!(locks, 0, "batched: two below the window's size");
    let (_, locks) = during(|| succeed(&b));
    assert_eq!(locks, 1, "the third makes the window's size");
    assert_eq!(shown(&b), (3, 0, 0));
}

/// Forced open while a batch is open: the window it freezes, and `Metrics` shows, holds the
/// successes batched before.
#[test]
fn a_forced_open_freezes_the_window_with_the_successes_batched_before_it() {
    let b = count_window(10, 100);
    fail(&b);
    fail(&b);
    let (_, locks) = during(|| (0..3).for_each(|_| succeed(&b)));
    assert_eq!(locks, 0, "batched");
    b.force(crate::State::ForcedOpen);
    assert_eq!(shown(&b), (5, 2, 0));
}

/// A reset while a batch is open: the batched successes leave with the window, and a
/// success of the new generation is recorded under the lock.
#[test]
fn a_reset_drops_the_batched_successes_with_the_window() {
    let b = count_window(10, 100);
    fail(&b);
    let (_, locks) = during(|| (0..3).for_each(|_| succeed(&b)));
    assert_eq!(locks, 0, "batched");
    b.force(crate::State::Closed);
    assert_eq!(shown(&b), (0, 0, 0));
    let (_, locks) = during(|| succeed(&b));
    assert_eq!(locks, 1, "the reset closed the batch");
    assert_eq!(shown(&b), (1, 0, 0));
}

/// MetricsOnly evaluates every outcome (it announces each crossing of a threshold): its
/// successes never batch, even after a batch was open in Closed.
#[test]
fn metrics_only_successes_never_batch() {
    let b = count_window(10, 100);
    fail(&b);
    let (_, locks) = during(|| succeed(&b));
    assert_eq!(locks, 0, "batched in Closed");
    b.force(crate::State::MetricsOnly);
    fail(&b);
    let (_, locks) = during(|| (0..3).for_each(|_| succeed(&b)));
    assert_eq!(locks, 3);
    assert!(!is_open(&b));
    assert_eq!(shown(&b), (4, 1, 0));
}

/// A success admitted before a transition, completed after the next generation opened its
/// own batch, is stale: it never joins the new batch.
#[test]
fn a_stale_success_never_joins_a_count_windows_batch_of_a_later_generation() {
    let b = count_window(10, 100);
    fail(&b);
    let Decision::Admit(old) = b.admit(&mut b.now()) else {
        panic!("rejected");
    };
    b.force(crate::State::ForcedOpen);
    b.force(crate::State::Closed);
    fail(&b); // opens a batch in the new generation
    assert!(is_open(&b));
    b.complete(old, Outcome::Success, None, None, &mut b.now());
    assert_eq!(shown(&b), (1, 1, 1), "the stale success changed nothing");
}

/// A learned threshold learns from every outcome: no batch opens beside a count window,
/// and each success is recorded under the lock.
#[test]
fn a_learned_threshold_never_opens_a_batch_on_a_count_window() {
    let b = CircuitBreakerLayer::builder()
        .sliding_window(Window::count(10))
        .minimum_calls(1)
        .learned_failure_threshold(crate::LearnedThreshold::new())
        .breaker_for_tests();
    (0..5).for_each(|_| succeed(&b));
    fail(&b);
    for _ in 0..3 {
        let (_, locks) = during(|| succeed(&b));
        assert_eq!(locks, 1);
        assert!(!is_open(&b));
    }
}

/// A slow success changes the slow-call rate: on a count window with a batch open it is
/// recorded under the lock, as slow; the plain successes after it batch.
#[tokio::test(start_paused = true)]
async fn a_slow_success_on_a_count_window_never_batches() {
    let b = CircuitBreakerLayer::builder()
        .sliding_window(Window::count(10))
        .minimum_calls(1)
        .consecutive_failures(100)
        .slow_call_duration(Duration::from_secs(1))
        .breaker_for_tests();
    fail(&b);
    assert!(is_open(&b));
    let Decision::Admit(ticket) = b.admit(&mut b.now()) else {
        panic!("rejected");
    };
    let started = b.now().get();
    tokio::time::advance(Duration::from_secs(2)).await;
    let (_, locks) = during(|| {
        b.complete(ticket, Outcome::Success, Some(started), None, &mut b.now());
    });
    assert_eq!(locks, 1, "under the lock");
    let (_, locks) = during(|| (0..2).for_each(|_| succeed(&b)));
    assert_eq!(locks, 0, "plain successes batch");
    let m = b.metrics();
    assert_eq!((m.calls(), m.failed(), m.slow()), (4, 1, 1));
}

/// Adaptive throttling counts every completed call: beside a count window, the successes
/// that batch count in the throttle's window as those recorded under the lock do.
#[tokio::test(start_paused = true)]
async fn a_throttle_beside_a_count_window_counts_every_batched_success() {
    let throttle = crate::AdaptiveThrottle::new()
        .window(Duration::from_secs(10))
        .min_requests_per_second(1.0);
    let b = CircuitBreakerLayer::builder()
        .sliding_window(Window::count(100))
        .minimum_calls(1)
        .consecutive_failures(100)
        .adaptive_throttling(throttle)
        .breaker_for_tests();
    // Admitted before any completes: the throttle rejects nothing yet.
    let tickets: Vec<_> = (0..20)
        .map(|_| match b.admit(&mut b.now()) {
            Decision::Admit(ticket) => ticket,
            Decision::Reject(r) => panic!("rejected: {r:?}"),
        })
        .collect();
    let mut tickets = tickets.into_iter();
    for ticket in tickets.by_ref().take(10) {
        b.complete(ticket, Outcome::Failure, None, None, &mut b.now());
    }
    assert!(is_open(&b));
    let (_, locks) = during(|| {
        for ticket in tickets {
            b.complete(ticket, Outcome::Success, None, None, &mut b.now());
        }
    });
    assert_eq!(locks, 0, "batched");
    let want = throttle.rejection_probability(20, 10);
    assert!(want > 0.0);
    assert_eq!(b.metrics().rejection_probability(), Some(want));
}

/// A half-open episode that closes starts a new window: the next Closed batch holds only
/// the new generation's successes (a success admitted before the opening is stale), and a
/// run of failures counts from the closing.
#[tokio::test(start_paused = true)]
async fn after_a_half_open_episode_closes_the_next_batch_holds_only_the_new_generation() {
    let b = CircuitBreakerLayer::builder()
        .sliding_window(Window::count(4))
        .minimum_calls(1)
        .consecutive_failures(2)
        .open_duration(Duration::from_secs(1))
        .half_open_calls(1)
        .breaker_for_tests();
    succeed(&b);
    fail(&b); // the batch stays open
    let Decision::Admit(old) = b.admit(&mut b.now()) else {
        panic!("rejected");
    };
    let (_, locks) = during(|| succeed(&b));
    assert_eq!(locks, 0, "batched");
    fail(&b);
    fail(&b);
    assert_eq!(b.stored_state(), crate::State::Open, "two in a row");
    tokio::time::advance(Duration::from_secs(2)).await;
    succeed(&b); // the probe: closes
    assert_eq!(b.stored_state(), crate::State::Closed);
    fail(&b); // the new window's first outcome: opens a batch
    assert!(is_open(&b));
    b.complete(old, Outcome::Success, None, None, &mut b.now());
    assert_eq!(shown(&b), (1, 1, 1), "the old success is stale");
    let (_, locks) = during(|| succeed(&b));
    assert_eq!(locks, 1, "the read closed the batch");
    let (_, locks) = during(|| succeed(&b));
    assert_eq!(locks, 0, "batched");
    fail(&b);
    assert_eq!(
        b.stored_state(),
        crate::State::Closed,
        "the successes ended the run"
    );
    assert_eq!(shown(&b), (4, 2, 1));
}

/// Reconfigured to learn its failure-rate threshold while a batch is open: the batched
/// successes are folded first, and no batch opens again (the baseline learns from each
/// success, under the lock).
#[test]
fn a_reconfiguration_to_a_learned_threshold_closes_the_batch_for_good() {
    let builder = || {
        CircuitBreakerLayer::builder()
            .sliding_window(Window::count(10))
            .minimum_calls(1)
            .consecutive_failures(100)
    };
    let b = Breaker::new(config(builder()), None);
    (0..5).for_each(|_| succeed(&b));
    fail(&b);
    let (_, locks) = during(|| (0..2).for_each(|_| succeed(&b)));
    assert_eq!(locks, 0, "batched");
    b.reconfigure(config(
        builder().learned_failure_threshold(crate::LearnedThreshold::new()),
    ));
    assert_eq!(shown(&b), (8, 1, 0));
    for _ in 0..3 {
        let (_, locks) = during(|| succeed(&b));
        assert_eq!(locks, 1);
        assert!(!is_open(&b));
    }
    assert_eq!(shown(&b), (10, 1, 0));
}

/// DESIGN §3 on a time window: a success batched between two failures (the batch stays
/// open after the first) breaks the run, and the window holds all three outcomes.
#[tokio::test(start_paused = true)]
async fn a_time_windows_batched_success_between_two_failures_ends_the_run() {
    let b = CircuitBreakerLayer::builder()
        .sliding_window(Window::time(Duration::from_secs(60)).buckets(60))
        .minimum_calls(1)
        .consecutive_failures(2)
        .breaker_for_tests();
    succeed(&b);
    fail(&b);
    assert!(is_open(&b), "open after a failure");
    let (_, locks) = during(|| succeed(&b));
    assert_eq!(locks, 0, "batched");
    fail(&b);
    assert_eq!(b.stored_state(), crate::State::Closed, "not two in a row");
    assert_eq!(shown(&b), (4, 2, 1));
    fail(&b);
    assert_eq!(b.stored_state(), crate::State::Open);
}
