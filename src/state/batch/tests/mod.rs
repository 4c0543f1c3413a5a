//! The batch protocol's unit tests; `count.rs`: a count window's batches, attacked.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::classify::Outcome;
use crate::state::Decision;
use crate::state::clock::counts::during;
use crate::state::lane::thread_lane;
use crate::{CircuitBreakerLayer, Window};

/// A time window whose rates are defined from the first outcome and never trip on
/// successes: plain successes batch once an outcome was recorded under the lock.
fn batching() -> Arc<Breaker> {
    let builder = crate::CircuitBreakerLayer::builder()
        .sliding_window(crate::Window::time(Duration::from_secs(60)).buckets(60))
        .minimum_calls(1)
        .failure_rate_threshold(1.0);
    Arc::new(builder.breaker_for_tests())
}

fn succeed(b: &Breaker) {
    let Decision::Admit(ticket) = b.admit(&mut b.now()) else {
        panic!("rejected");
    };
    b.complete(ticket, Outcome::Success, None, None, &mut b.now());
}

fn is_open(b: &Breaker) -> bool {
    b.words.batch_epoch.load(Ordering::Relaxed) & OPEN != 0
}

#[tokio::test(start_paused = true)]
async fn a_full_lane_batch_sends_successes_to_the_lock_and_every_one_counts() {
    let b = batching();
    succeed(&b); // under the lock: opens the batch
    assert!(is_open(&b));
    // This lane's batch one short of full, as if that many successes had joined it.
    let line = b.counters.batch(thread_lane());
    line.fetch_add(COUNT_MASK - 1, Ordering::Relaxed);
    succeed(&b); // joins: the count is now full
    assert_eq!(line.load(Ordering::Relaxed) & COUNT_MASK, COUNT_MASK);
    succeed(&b); // a full count: under the lock, which folds the batch and opens another
    assert_eq!(line.load(Ordering::Relaxed) & COUNT_MASK, 0);
    assert!(is_open(&b));
    succeed(&b); // joins the new batch
    assert_eq!(b.metrics().calls(), 1 + COUNT_MASK + 2);
}

#[tokio::test(start_paused = true)]
async fn batches_count_exactly_across_the_wrap_of_the_lines_epoch_bits() {
    let b = batching();
    // Closed, a few batches before the lines' epoch wraps to zero.
    b.words.batch_epoch.store(EPOCH_MASK - 3, Ordering::Relaxed);
    for line in b.counters.batches() {
        line.store(line_of(EPOCH_MASK - 3), Ordering::Relaxed);
    }
    let mut counted = 0;
    for round in 0..4 {
        succeed(&b); // under the lock (the batch is closed): opens one
        assert!(is_open(&b), "round {round}");
        succeed(&b);
        succeed(&b);
        let line = b.counters.batch(thread_lane()).load(Ordering::Relaxed);
        assert_eq!(line & COUNT_MASK, 2, "round {round}: both batched");
        counted += 3;
        assert_eq!(b.metrics().calls(), counted, "round {round}"); // folds
    }
    assert!(b.words.batch_epoch.load(Ordering::Relaxed) > EPOCH_MASK);
}

/// DESIGN §3: every recorded outcome goes into the window and the thresholds are evaluated
/// after each one. A bucket that has counted `u32::MAX` outcomes (an hour-long bucket at 1.2
/// million calls a second, a day-long one at 50 000) must still count the failures that come
/// after: a failure storm then raises the failure rate and trips, as it would in any other
/// bucket. (The successes are filled in through the lanes' batches, 2^26 at a fold.)
#[tokio::test(start_paused = true)]
async fn failures_recorded_after_a_bucket_counted_u32_max_outcomes_still_count_and_trip() {
    let builder = crate::CircuitBreakerLayer::builder()
        .sliding_window(crate::Window::time(Duration::from_secs(3600)).buckets(1))
        .minimum_calls(1)
        // Five failures among 2^32 calls reach it.
        .failure_rate_threshold(1e-9);
    let b = Arc::new(builder.breaker_for_tests());
    while b.metrics().calls() < u64::from(u32::MAX) {
        succeed(&b); // under the lock: opens a batch
        assert!(is_open(&b));
        for line in b.counters.batches() {
            let count = line.load(Ordering::Relaxed) & COUNT_MASK;
            line.fetch_add(COUNT_MASK - count, Ordering::Relaxed); // as if that many joined
        }
        // `metrics` folds them into the bucket.
    }
    for _ in 0..10 {
        let Decision::Admit(ticket) = b.admit(&mut b.now()) else {
            break; // open: what this test wants
        };
        b.complete(ticket, Outcome::Failure, None, None, &mut b.now());
    }
    assert_eq!(
        b.stored_state(),
        crate::State::Open,
        "failed {} of {} calls",
        b.metrics().failed(),
        b.metrics().calls()
    );
}

/// A line is the batch's epoch above its count, and the two fields fill the word: the epoch
/// compared is as wide as the module's argument against an old value coming back says.
#[test]
fn a_lines_epoch_and_count_fill_its_64_bits() {
    assert_eq!(EPOCH_BITS + COUNT_BITS, 64);
    assert_eq!(line_of(u64::MAX) | COUNT_MASK, u64::MAX);
    assert_eq!(line_of(u64::MAX) & COUNT_MASK, 0);
    assert_eq!(
        line_of(1 << (EPOCH_BITS - 1)),
        1 << 63,
        "the epoch's top bit"
    );
    assert_eq!(line_of(1 << EPOCH_BITS), 0, "wraps past its bits");
}

/// A success joins the batch only inside the batch's bucket: one that completes after the
/// bucket ended (no lock was taken since) is recorded in its own bucket, and stays in the
/// window after the batch's bucket has left it.
#[tokio::test(start_paused = true)]
async fn a_success_after_the_batchs_bucket_counts_in_its_own_bucket() {
    let b = batching(); // 60 buckets of 1 s
    succeed(&b); // at 0 s, under the lock: opens the batch of bucket [0 s, 1 s)
    assert!(is_open(&b));
    tokio::time::advance(Duration::from_millis(1_500)).await;
    succeed(&b); // at 1.5 s: bucket 1
    tokio::time::advance(Duration::from_secs(59)).await;
    // 60.5 s: bucket 0 has left the window, bucket 1 has not.
    assert_eq!(b.metrics().calls(), 1);
}

fn fail(b: &Breaker) {
    let Decision::Admit(ticket) = b.admit(&mut b.now()) else {
        panic!("rejected");
    };
    b.complete(ticket, Outcome::Failure, None, None, &mut b.now());
}

/// A count window of `n` that opens on `consecutive` failures only.
fn count_window(n: u32, consecutive: u32) -> Breaker {
    CircuitBreakerLayer::builder()
        .sliding_window(Window::count(n))
        .minimum_calls(1)
        .consecutive_failures(consecutive)
        .breaker_for_tests()
}

/// DESIGN §3: consecutive failures are failures in a row. A success batched between two
/// failures breaks the row, as it would recorded under the lock.
#[tokio::test(start_paused = true)]
async fn a_batched_success_between_two_failures_ends_the_run_of_failures() {
    let b = count_window(100, 2);
    succeed(&b);
    fail(&b); // under the lock: the batch stays open after it
    assert!(is_open(&b));
    let (_, locks) = during(|| succeed(&b));
    assert_eq!(locks, 0, "batched");
    fail(&b);
    assert_eq!(b.stored_state(), crate::State::Closed, "not two in a row");
    fail(&b);
    assert_eq!(b.stored_state(), crate::State::Open);
}

/// A count window's batched successes go into the ring in the order they came: after the
/// outcomes recorded before them, and pushing the oldest out.
#[tokio::test(start_paused = true)]
async fn a_count_windows_batched_successes_push_out_its_oldest_outcomes() {
    let b = count_window(4, 100);
    for _ in 0..4 {
        fail(&b);
    }
    let (_, locks) = during(|| (0..3).for_each(|_| succeed(&b)));
    assert_eq!(locks, 0, "batched");
    let m = b.metrics(); // folds
    assert_eq!((m.calls(), m.failed()), (4, 1));
    // The fourth success pushes the last failure out: the lock records it, and the window,
    // full of successes, is clean again.
    let (_, locks) = during(|| (0..2).for_each(|_| succeed(&b)));
    assert_eq!(locks, 1);
    assert_eq!(b.metrics().failed(), 0);
}

/// A line starts a batch `limit - 1` below full: a count window's lane takes `n - 1`
/// successes, and one without a limit the whole count.
#[test]
fn a_lines_first_count_leaves_room_for_one_less_than_the_limit() {
    assert_eq!(
        first_count(1),
        COUNT_MASK,
        "a window of one: every success to the lock"
    );
    assert_eq!(COUNT_MASK - first_count(1 << 20), (1 << 20) - 1);
    assert_eq!(first_count(u64::MAX), 0);
}

/// What lets callers on several cores scale on a time window: once an outcome opened the
/// batch, successes in the same bucket take no lock, and each is still counted.
#[test]
fn a_time_windows_successes_take_no_lock_within_a_bucket() {
    // One bucket of a minute: the loop below stays in it.
    let b = CircuitBreakerLayer::builder()
        .sliding_window(Window::time(Duration::from_secs(60)).buckets(1))
        .minimum_calls(1)
        .breaker_for_tests();
    succeed(&b); // recorded under the lock, which opens the batch
    let (_, locks) = during(|| (0..1_000).for_each(|_| succeed(&b)));
    assert_eq!(locks, 0);
    assert_eq!(b.metrics().calls(), 1_001, "each counted, once");
    // The lock folded them and closed the batch: the next success opens it again.
    let (_, locks) = during(|| (0..2).for_each(|_| succeed(&b)));
    assert_eq!(locks, 1);
}

mod count;
