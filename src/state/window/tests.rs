//! The windows' unit tests.

use super::*;
use std::time::Duration;

#[test]
fn a_resized_count_window_keeps_the_newest_outcomes_that_fit() {
    let fail = Sample {
        failed: true,
        slow: false,
    };
    let ok = Sample {
        failed: false,
        slow: false,
    };
    let mut old = Window::new(WindowKind::Count(4), false);
    // Wrapped: the ring holds, oldest first, ok ok fail fail.
    for sample in [fail, fail, ok, ok, fail, fail] {
        old.record(sample, 0);
    }
    let mut smaller = Window::new(WindowKind::Count(3), false);
    smaller.carry_over(&old);
    let totals = smaller.totals(0);
    assert_eq!((totals.calls, totals.failed), (3, 2));
    // The oldest carried outcome (ok) leaves first.
    smaller.record(ok, 0);
    assert_eq!(smaller.totals(0).failed, 2);
    smaller.record(ok, 0);
    assert_eq!(smaller.totals(0).failed, 1);

    let mut larger = Window::new(WindowKind::Count(10), false);
    larger.carry_over(&old);
    assert_eq!(larger.totals(0).calls, 4);
    assert!(!larger.is_full_of_successes());

    let mut time = Window::new(
        WindowKind::Time {
            duration: Duration::from_secs(10),
            buckets: Some(10),
        },
        true,
    );
    time.carry_over(&old);
    assert_eq!(
        time.totals(0).calls,
        0,
        "a count window's outcomes have no time"
    );
}

const OK: Sample = Sample {
    failed: false,
    slow: false,
};
const FAIL: Sample = Sample {
    failed: true,
    slow: false,
};
const SLOW_FAIL: Sample = Sample {
    failed: true,
    slow: true,
};

fn totals(calls: u64, failed: u64, slow: u64) -> Totals {
    Totals {
        calls,
        failed,
        slow,
    }
}

fn time(bucket_nanos: u64, k: u32) -> Window {
    let bucket_nanos = NonZeroU64::new(bucket_nanos).unwrap();
    Window::Time(TimeWindow::new(bucket_nanos, k, true))
}

/// Moves a new narrow window `w` to bucket `number` and sets that bucket's counts and the
/// totals.
fn fill(w: &mut Window, number: u64, calls: u32, failed: u32, slow: u32) {
    w.record(OK, number); // moves the window to bucket `number`
    let Window::Time(inner) = w else {
        unreachable!()
    };
    let Slots::Narrow {
        counts,
        slow: slows,
    } = &mut inner.slots
    else {
        unreachable!()
    };
    let slot = (number % counts.len() as u64) as usize;
    counts[slot] = Counts { calls, failed };
    slows[slot] = slow;
    inner.totals = totals(calls.into(), failed.into(), slow.into());
}

/// A batch of `n` successes is `n` successes recorded one by one: the same totals, and the
/// same ring for the outcomes after it (which push out the same ones), whatever the ring held.
#[test]
fn a_count_windows_batch_of_successes_is_as_many_recorded_one_by_one() {
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut sample = move || {
        let r = next();
        Sample {
            failed: r & 1 != 0,
            slow: r & 6 == 6,
        }
    };
    let ok = Sample {
        failed: false,
        slow: false,
    };
    for size in 1..=5u32 {
        for batch in 0..=3 * u64::from(size) {
            let mut batched = Window::new(WindowKind::Count(size), true);
            let mut one_by_one = Window::new(WindowKind::Count(size), true);
            let before = sample().failed as usize * 7 + batch as usize % 5;
            for _ in 0..before {
                let s = sample();
                batched.record(s, 0);
                one_by_one.record(s, 0);
            }
            batched.record_successes(batch, 0);
            (0..batch).for_each(|_| one_by_one.record(ok, 0));
            assert_eq!(batched.totals(0), one_by_one.totals(0), "{size}, {batch}");
            for after in 0..2 * size {
                let s = sample();
                batched.record(s, 0);
                one_by_one.record(s, 0);
                let why = format!("size {size}, batch {batch}, after {after}");
                assert_eq!(batched.totals(0), one_by_one.totals(0), "{why}");
            }
        }
    }
}

/// A batch past the window's size fills it, whatever its number: the successes before the
/// last `n` would have left it (a lane's batch can count millions).
#[test]
fn a_count_windows_batch_costs_at_most_its_size() {
    let fail = Sample {
        failed: true,
        slow: true,
    };
    let mut w = Window::new(WindowKind::Count(4), true);
    (0..3).for_each(|_| w.record(fail, 0));
    w.record_successes(u64::MAX, 0);
    assert_eq!(
        w.totals(0),
        Totals {
            calls: 4,
            failed: 0,
            slow: 0
        }
    );
    assert!(w.is_full_of_successes());
}

#[test]
fn count_window_keeps_only_the_last_n_outcomes() {
    let mut w = Window::new(WindowKind::Count(3), false);
    w.record(FAIL, 0);
    w.record(FAIL, 0);
    assert_eq!(w.totals(0), totals(2, 2, 0));
    w.record(OK, 0);
    w.record(OK, 0);
    assert_eq!(w.totals(0), totals(3, 1, 0));
    w.record(SLOW_FAIL, 0);
    assert_eq!(w.totals(0), totals(3, 1, 1));
}

#[test]
fn count_window_is_full_of_successes_only_when_full_and_clean() {
    let mut w = Window::new(WindowKind::Count(2), false);
    assert!(!w.is_full_of_successes(), "an empty window must count");
    w.record(OK, 0);
    assert!(!w.is_full_of_successes());
    w.record(OK, 0);
    assert!(w.is_full_of_successes());
    w.record(FAIL, 0);
    w.record(OK, 0);
    assert!(!w.is_full_of_successes(), "the failure is among the last 2");
    w.record(OK, 0);
    assert!(w.is_full_of_successes());
    w.clear();
    assert!(!w.is_full_of_successes());
    assert_eq!(w.totals(0), Totals::default());
}

#[test]
fn time_window_counts_an_outcome_until_bucket_i_plus_k() {
    let mut w = time(10, 3);
    w.record(FAIL, 5); // bucket 0
    w.record(OK, 15); // bucket 1
    assert_eq!(w.totals(29), totals(2, 1, 0), "bucket 2: both inside");
    assert_eq!(
        w.totals(30),
        totals(1, 0, 0),
        "bucket 3 = 0 + k: the failure left"
    );
    assert_eq!(w.totals(39), totals(1, 0, 0));
    assert_eq!(w.totals(40), Totals::default(), "bucket 4 = 1 + k");
    w.record(OK, 45); // bucket 4 reuses bucket 1's slot
    assert_eq!(w.totals(45), totals(1, 0, 0));
}

#[test]
fn time_window_counts_a_late_clock_reading_in_its_own_bucket_while_it_is_inside() {
    let mut w = time(10, 3);
    w.record(OK, 25); // bucket 2
    w.record(FAIL, 5); // bucket 0, read earlier, recorded later: still inside
    assert_eq!(w.totals(25), totals(2, 1, 0));
    assert_eq!(w.totals(30), totals(1, 0, 0), "and it leaves on time");
    w.record(FAIL, 15); // bucket 1 at bucket 3: inside, in a slot that held nothing
    assert_eq!(w.totals(30), totals(2, 1, 0));
    w.record(FAIL, 5); // bucket 0 at bucket 3: outside
    assert_eq!(w.totals(30), totals(2, 1, 0));
}

#[test]
fn time_window_empties_after_a_silence_longer_than_the_window() {
    let mut w = time(10, 3);
    w.record(SLOW_FAIL, 1);
    assert_eq!(w.totals(1 << 40), Totals::default());
    w.record(OK, 1 << 40);
    assert_eq!(w.totals(1 << 40), totals(1, 0, 0));
}

#[test]
fn time_window_counts_past_2_pow_32_buckets() {
    // 1 ns buckets: bucket numbers beyond 32 bits.
    let mut w = time(1, 2);
    let late = (1u64 << 33) + 7;
    w.record(FAIL, late);
    w.record(SLOW_FAIL, late + 1);
    assert_eq!(w.totals(late + 1), totals(2, 2, 1));
    assert_eq!(w.totals(late + 2), totals(1, 1, 1), "the older bucket left");
}

#[test]
fn a_time_window_bucket_counts_past_u32_max_outcomes_and_leaves_whole() {
    let mut w = time(10, 2);
    // Fill bucket 0 to the brim: u32::MAX calls, of which 3 failed and 2 slow.
    fill(&mut w, 0, u32::MAX, 3, 2);
    // Counted, in 64 bits, rather than wrapping to 0 calls and 4 failures, or ignored.
    w.record(SLOW_FAIL, 1);
    assert_eq!(w.totals(1), totals(u64::from(u32::MAX) + 1, 4, 3));
    // The next bucket counts too.
    w.record(SLOW_FAIL, 10);
    assert_eq!(w.totals(10), totals(u64::from(u32::MAX) + 2, 5, 4));
    // The big bucket leaves whole: the totals are exactly what remains.
    assert_eq!(w.totals(20), totals(1, 1, 1));
    // Emptied by a silence, the window keeps counting in 64 bits.
    assert_eq!(w.totals(1000), Totals::default());
    w.record(SLOW_FAIL, 1000);
    assert_eq!(w.totals(1000), totals(1, 1, 1));
    let Window::Time(inner) = &w else {
        unreachable!()
    };
    assert!(matches!(inner.slots, Slots::Wide(_)));
}

/// A bucket widens only when an outcome would not fit: one that reaches `u32::MAX` exactly
/// stays in 32 bits (its 64-bit copy would double the window's memory for nothing).
#[test]
fn a_bucket_that_reaches_u32_max_outcomes_exactly_stays_narrow() {
    let mut w = time(10, 2);
    fill(&mut w, 0, u32::MAX - 1, 0, 0);
    w.record(FAIL, 1);
    assert_eq!(w.totals(1), totals(u64::from(u32::MAX), 1, 0));
    let Window::Time(inner) = &w else {
        unreachable!()
    };
    assert!(matches!(inner.slots, Slots::Narrow { .. }));
}

#[test]
fn batched_successes_past_a_buckets_u32_max_outcomes_all_count() {
    let mut w = time(10, 2);
    fill(&mut w, 0, u32::MAX - 2, 1, 0);
    // Five batched successes, room for two in 32 bits: all five count.
    w.record_successes(5, 3);
    assert_eq!(w.totals(3), totals(u64::from(u32::MAX) + 3, 1, 0));
    w.record_successes(3, 10);
    assert_eq!(w.totals(10), totals(u64::from(u32::MAX) + 6, 1, 0));
    // The big bucket leaves whole.
    assert_eq!(w.totals(20), totals(3, 0, 0));
}

#[test]
fn a_time_window_without_slow_calls_keeps_no_slow_counts() {
    let kind = WindowKind::Time {
        duration: Duration::from_secs(60),
        buckets: Some(60),
    };
    let (Window::Time(plain), Window::Time(slow)) =
        (Window::new(kind, false), Window::new(kind, true))
    else {
        unreachable!()
    };
    let columns = |w: &TimeWindow| match &w.slots {
        Slots::Narrow { counts, slow } => (counts.len(), slow.len()),
        Slots::Wide(_) => unreachable!(),
    };
    assert_eq!(columns(&plain), (60, 0));
    assert_eq!(columns(&slow), (60, 60));
}

#[test]
fn default_buckets_of_a_time_window_come_from_the_builder() {
    let w = Window::new(
        WindowKind::Time {
            duration: Duration::from_secs(2),
            buckets: Some(4),
        },
        false,
    );
    let Window::Time(w) = w else { unreachable!() };
    assert_eq!((w.bucket_nanos.get(), w.k()), (500_000_000, 4));
}
