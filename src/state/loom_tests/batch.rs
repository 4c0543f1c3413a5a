//! loom models of batched successes (`state/batch`): folds, generations, bucket bounds, a count
//! window's limit, and reconfiguration.

use super::*;

/// A time window of 10 one-second buckets whose rates are defined from the first outcome, and
/// which never trips on them: successes batch once an outcome was recorded.
fn batching() -> Arc<Breaker> {
    breaker(
        Builder::default()
            .sliding_window(crate::Window::time(Duration::from_secs(10)).buckets(10))
            .minimum_calls(1)
            .failure_rate_threshold(1.0),
    )
}

/// The window's totals now (calls, failed), read under the lock (which folds the batch).
fn window_at(b: &Breaker, at: u64) -> (u64, u64) {
    let totals = b.lock().totals(at);
    (totals.calls, totals.failed)
}

/// Two successes batched on their lanes race a failure recorded under the lock, which folds the
/// batch: the window counts all three, whatever the order.
#[test]
fn batched_successes_racing_a_fold_are_each_counted_once() {
    loom::model(|| {
        let b = batching();
        complete(&b, admit(&b, T0), Outcome::Success, T0); // opens the batch
        assert_ne!(b.words.batch_epoch.load(Ordering::Relaxed) & (1 << 63), 0);
        let (s1, s2, f) = (admit(&b, T0), admit(&b, T0), admit(&b, T0));

        let b2 = b.clone();
        let t = thread::spawn(move || {
            complete(&b2, s1, Outcome::Success, T0 + 1);
            complete(&b2, s2, Outcome::Success, T0 + 2);
        });
        complete(&b, f, Outcome::Failure, T0 + 3);
        t.join().unwrap();
        assert_eq!(window_at(&b, T0 + 4), (4, 1));
    });
}

/// Two lanes batch a success each (this thread on lane 0, the other on lane 1), racing a
/// failure on lane 0 that folds the batch: the fold takes every line's count.
#[test]
fn successes_batched_on_two_lanes_racing_a_fold_are_each_counted_once() {
    loom::model(|| {
        let b = batching();
        complete(&b, admit(&b, T0), Outcome::Success, T0); // opens the batch
        let (s1, s2, f) = (admit(&b, T0), admit(&b, T0), admit(&b, T0));

        let b2 = b.clone();
        let t = thread::spawn(move || complete(&b2, s2, Outcome::Success, T0 + 1));
        complete(&b, s1, Outcome::Success, T0 + 1);
        complete(&b, f, Outcome::Failure, T0 + 2);
        t.join().unwrap();
        assert_eq!(window_at(&b, T0 + 3), (4, 1));
    });
}

/// What `Completion::record` does with a plain success that is not timed: `Lane::absorbs` tries
/// the batch on the line of the lane that admitted the call (`lane`), and `complete` (the
/// completing thread's lane) takes it if the batch refuses.
fn record_inline(b: &Breaker, ticket: Ticket, lane: usize, at: u64) {
    let mut now = now(b, at);
    if !b.joins_batch(ticket, Outcome::Success, lane, &mut now) {
        b.complete(ticket, Outcome::Success, None, None, &mut now);
    }
}

/// A success admitted on lane 0 and completed on lane 1's thread (a response moved to another
/// worker) joins lane 0's line from there, racing lane 0's own success on that line and a
/// failure that folds the batch: the window counts all of them.
#[test]
fn a_success_joining_its_admitting_lanes_line_from_another_thread_is_counted_once() {
    loom::model(|| {
        let b = batching();
        complete(&b, admit(&b, T0), Outcome::Success, T0); // opens the batch
        let (s1, s2, f) = (admit(&b, T0), admit(&b, T0), admit(&b, T0));

        let b2 = b.clone();
        let t = thread::spawn(move || record_inline(&b2, s2, 0, T0 + 1));
        record_inline(&b, s1, 0, T0 + 1);
        complete(&b, f, Outcome::Failure, T0 + 2);
        t.join().unwrap();
        assert_eq!(window_at(&b, T0 + 3), (4, 1));
    });
}

/// A success admitted before a transition races the transition (to Open, back to Closed, and an
/// outcome of the new generation that opens a new batch): it is counted in the old window, or
/// dropped as stale, never in the new generation's window.
#[test]
fn a_batched_success_never_lands_in_a_later_generation() {
    loom::model(|| {
        let b = batching();
        complete(&b, admit(&b, T0), Outcome::Success, T0); // opens the batch
        let old = admit(&b, T0);

        let b2 = b.clone();
        let t = thread::spawn(move || complete(&b2, old, Outcome::Success, T0 + 1));
        b.force(State::ForcedOpen);
        b.force(State::Closed);
        complete(&b, admit(&b, T0 + 2), Outcome::Success, T0 + 2); // a new batch
        t.join().unwrap();
        assert_eq!(
            window_at(&b, T0 + 3),
            (1, 0),
            "only the new generation's success"
        );
    });
}

/// A success whose clock reading is in the batch's bucket races an outcome of the next bucket,
/// which folds the batch and opens a new one there: the success may have read the old epoch and
/// bounds, and it counts in its own bucket (batched in the old batch, or under the lock), never
/// in the new batch's.
#[test]
fn a_success_racing_the_next_buckets_batch_counts_in_its_own_bucket() {
    loom::model(|| {
        let b = batching();
        const SECOND: u64 = 1_000_000_000;
        let start = T0 / SECOND * SECOND;
        complete(&b, admit(&b, start), Outcome::Success, start); // opens the batch there
        let (late, next) = (admit(&b, start), admit(&b, start));

        let b2 = b.clone();
        let t = thread::spawn(move || complete(&b2, late, Outcome::Success, start + 1));
        // The next bucket: under the lock (outside the batch's bounds), then a new batch there.
        complete(&b, next, Outcome::Success, start + SECOND);
        t.join().unwrap();
        assert_eq!(window_at(&b, start + SECOND).0, 3);
        assert_eq!(
            window_at(&b, start + 10 * SECOND).0,
            1,
            "the first bucket left with both its successes"
        );
    });
}

/// A count window opening on two consecutive failures holds one: a batched success races the
/// second failure. Either the success comes first (the fold ends the run: Closed, the window
/// holds all four outcomes) or the failure does (Open; the success is stale). A success that
/// had completed before the failure began must have come first.
#[test]
fn a_batched_success_racing_a_second_failure_ends_the_run_or_comes_too_late() {
    use loom::sync::atomic::AtomicBool;
    loom::model(|| {
        let b = breaker(
            Builder::default()
                .sliding_window(crate::Window::count(10))
                .minimum_calls(1)
                .consecutive_failures(2),
        );
        complete(&b, admit(&b, T0), Outcome::Success, T0);
        complete(&b, admit(&b, T0), Outcome::Failure, T0); // the batch stays open
        let (success, failure) = (admit(&b, T0), admit(&b, T0));

        let done = Arc::new(AtomicBool::new(false));
        let (b2, done2) = (b.clone(), done.clone());
        let t = thread::spawn(move || {
            complete(&b2, success, Outcome::Success, T0);
            done2.store(true, Ordering::SeqCst);
        });
        let success_first = done.load(Ordering::SeqCst);
        complete(&b, failure, Outcome::Failure, T0);
        t.join().unwrap();

        let mut core = b.lock();
        match b.load().state() {
            State::Open => assert!(!success_first, "the success ended the run"),
            State::Closed => {
                assert_eq!(core.consecutive(), 1);
                let totals = core.totals(T0);
                assert_eq!((totals.calls, totals.failed), (4, 2));
            }
            other => panic!("unexpected state {other:?}"),
        }
    });
}

/// A count window reconfigured to a smaller one races a failure and a success after it: the
/// failure may open a batch between the reconfiguration's read of the configuration and its
/// lock, and the success join it. The reconfiguration folds that batch into the old window
/// before replacing it, so every order ends at `[F, S]` with no run of failures.
#[test]
fn a_count_window_reconfigured_while_a_success_joins_a_batch_keeps_a_sequential_window() {
    let builder = |n| {
        Builder::default()
            .sliding_window(crate::Window::count(n))
            .minimum_calls(1)
            .consecutive_failures(100)
    };
    loom::model(move || {
        let b = breaker(builder(4));
        complete(&b, admit(&b, T0), Outcome::Failure, T0);
        let (failure, success) = (admit(&b, T0), admit(&b, T0));

        let b2 = b.clone();
        let smaller = StdArc::new(builder(2).validate_for_tests());
        let t = thread::spawn(move || b2.reconfigure(smaller));
        complete(&b, failure, Outcome::Failure, T0);
        complete(&b, success, Outcome::Success, T0);
        t.join().unwrap();

        let mut core = b.lock();
        let totals = core.totals(T0);
        assert_eq!((totals.calls, totals.failed), (2, 1));
        assert_eq!(core.consecutive(), 0);
    });
}

/// A count window of two holds `[S, F]` and opens on two failures in a row: a lane's two
/// successes (the first batched, the second at the lane's limit, under the lock) race a second
/// failure. Every order gives a window a sequential order gives: Open if the failure came
/// first, else `[F, S]` with no run, or `[S, F]` with a run of one. And the breaker never says a
/// success changes nothing when one would.
#[test]
fn a_lanes_successes_at_a_count_windows_limit_racing_a_failure_keep_a_sequential_window() {
    loom::model(|| {
        let b = breaker(
            Builder::default()
                .sliding_window(crate::Window::count(2))
                .minimum_calls(1)
                .consecutive_failures(2),
        );
        complete(&b, admit(&b, T0), Outcome::Success, T0);
        complete(&b, admit(&b, T0), Outcome::Failure, T0); // the batch stays open
        let (s1, s2, failure) = (admit(&b, T0), admit(&b, T0), admit(&b, T0));

        let b2 = b.clone();
        let t = thread::spawn(move || {
            complete(&b2, s1, Outcome::Success, T0);
            complete(&b2, s2, Outcome::Success, T0);
        });
        complete(&b, failure, Outcome::Failure, T0);
        t.join().unwrap();

        let mut core = b.lock();
        let clean = b.words.clean.settled.load(Ordering::Relaxed);
        assert!(!clean || core.is_clean(), "clean only when it is");
        match b.load().state() {
            State::Closed => {
                let totals = core.totals(T0);
                let seen = (totals.calls, totals.failed, core.consecutive());
                assert!(seen == (2, 1, 0) || seen == (2, 1, 1), "{seen:?}");
            }
            State::Open => {
                let frozen = core.shown_totals(T0);
                assert_eq!((frozen.calls, frozen.failed), (2, 2), "opened on [F, F]");
            }
            other => panic!("unexpected state {other:?}"),
        }
    });
}

/// A count window's batch has no time bounds: only the lines' epochs and the ticket's
/// generation keep a success admitted before a transition out of the next generation's batch.
/// It is counted in the old window or dropped as stale, never in the new one.
#[test]
fn a_count_windows_batched_success_never_lands_in_a_later_generation() {
    loom::model(|| {
        let b = breaker(
            Builder::default()
                .sliding_window(crate::Window::count(10))
                .minimum_calls(1)
                .consecutive_failures(100),
        );
        complete(&b, admit(&b, T0), Outcome::Failure, T0); // opens the batch
        let old = admit(&b, T0);

        let b2 = b.clone();
        let t = thread::spawn(move || complete(&b2, old, Outcome::Success, T0));
        b.force(State::ForcedOpen);
        b.force(State::Closed);
        complete(&b, admit(&b, T0), Outcome::Failure, T0); // a new batch
        t.join().unwrap();
        let mut core = b.lock();
        let totals = core.totals(T0);
        assert_eq!(
            (totals.calls, totals.failed, core.consecutive()),
            (1, 1, 1),
            "only the new generation's failure"
        );
    });
}
