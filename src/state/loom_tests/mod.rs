//! loom models of the state machine's atomics and its lock. Run with `scripts/loom`.
//!
//! Each model races two threads over one breaker and checks, in every interleaving loom explores,
//! that the result is one a sequential order of the same operations could give: each transition
//! happens once (one generation step, one event, in order), stale results never move the state or
//! the counters, and no probe permit leaks.

use super::*;
use crate::classify::Outcome;
use crate::config::Builder;
use futures::{FutureExt, StreamExt};
use loom::sync::Arc;
use std::time::Duration;

use crate::event::{Event, EventStream};

/// loom's threads, each spawned one on a lane of its own (`lane::enter_lane`): the model's
/// thread is on lane 0, the threads it spawns take lanes 1, 2, and so on, in spawn order.
mod thread {
    use std::cell::Cell;

    loom::thread_local! {
        static SPAWNED: Cell<usize> = Cell::new(0);
    }

    pub(super) fn spawn<F, T>(f: F) -> loom::thread::JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let lane = SPAWNED.with(|spawned| {
            spawned.set(spawned.get() + 1);
            spawned.get()
        });
        loom::thread::spawn(move || {
            crate::state::lane::enter_lane(lane);
            f()
        })
    }
}

/// Far from every fixed time used below.
const T0: u64 = 1 << 50;

fn breaker(builder: Builder) -> Arc<Breaker> {
    Arc::new(builder.breaker_for_tests())
}

fn now(b: &Breaker, at: u64) -> Now<'_> {
    Now::fixed(&b.words.epoch, at)
}

fn admit(b: &Breaker, at: u64) -> Ticket {
    match b.admit(&mut now(b, at)) {
        Decision::Admit(ticket) => ticket,
        Decision::Reject(r) => panic!("rejected: {r:?}"),
    }
}

fn complete(b: &Breaker, ticket: Ticket, outcome: Outcome, at: u64) {
    b.complete(ticket, outcome, None, None, &mut now(b, at));
}

fn probes_of(b: &Breaker) -> (u32, u32, u32) {
    let p = Probes(b.words.probes.load(Ordering::Relaxed));
    (p.taken(), p.succeeded(), p.failed())
}

/// Trips the breaker at `T0` and lets its open interval end: returns the half-open instant.
fn half_open(b: &Breaker) -> u64 {
    let mut core = b.lock();
    b.transition(&mut core, b.load(), State::Open, T0);
    b.unlock(core);
    let at = b.words.open_until.load(Ordering::Relaxed);
    assert_eq!(b.state(&mut now(b, at)), State::HalfOpen);
    at
}

/// The transitions reported so far (a rate that reached its threshold is reported just before
/// the transition it causes: checked, and left out).
fn drain(events: &mut EventStream) -> Vec<(State, State)> {
    let mut seen = Vec::new();
    let mut rate_reported = false;
    while let Some(Some(event)) = events.next().now_or_never() {
        match event {
            Event::StateTransition { from, to, .. } => {
                assert!(
                    !rate_reported || to == State::Open,
                    "a rate event, then {to:?}"
                );
                rate_reported = false;
                seen.push((from, to));
            }
            Event::FailureRateExceeded { .. } | Event::SlowCallRateExceeded { .. } => {
                rate_reported = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(!rate_reported, "a rate event without its transition");
    seen
}

/// How many generations `later` is after `earlier`.
fn steps(earlier: StateWord, later: StateWord) -> u64 {
    (later.0 >> 3) - (earlier.0 >> 3)
}

fn probes() -> Builder {
    Builder::default().half_open_max_wait(Duration::from_secs(60))
}

// ===== (a) racing for probe permits =====

/// Two callers race for the last probe permit: exactly one gets it.
#[test]
fn two_callers_race_the_last_probe_permit() {
    loom::model(|| {
        let b = breaker(probes().half_open_calls(1));
        let at = half_open(&b);

        let b2 = b.clone();
        let t = thread::spawn(move || b2.admit(&mut now(&b2, at)));
        let mine = b.admit(&mut now(&b, at));
        let theirs = t.join().unwrap();
        let admitted = [mine, theirs]
            .iter()
            .filter(|d| matches!(d, Decision::Admit(_)))
            .count();
        assert_eq!(admitted, 1);
        assert_eq!(probes_of(&b).0, 1);
        assert_eq!(b.load().state(), State::HalfOpen);
    });
}

/// A permit given back while another caller asks for one: the caller gets it only after it was
/// given back, and the count of permits out matches the permits held.
#[test]
fn a_returned_permit_is_taken_at_most_once() {
    loom::model(|| {
        let b = breaker(probes().half_open_calls(1));
        let at = half_open(&b);
        let held = admit(&b, at);

        let b2 = b.clone();
        let t = thread::spawn(move || b2.release(held));
        let second = b.admit(&mut now(&b, at));
        t.join().unwrap();
        assert_eq!(b.load().state(), State::HalfOpen);
        match second {
            Decision::Admit(_) => assert_eq!(probes_of(&b).0, 1),
            Decision::Reject(r) => {
                assert_eq!(r.state, State::HalfOpen);
                assert_eq!(probes_of(&b).0, 0);
            }
        }
    });
}

// ===== (b) results racing transitions =====

/// A closed-state failure (which trips on its own) races a reset. Either the failure came first
/// (Closed -> Open, then reset to Closed), or the reset did and the failure is stale. Both ways
/// the breaker ends Closed with empty metrics: a stale failure must not survive into the new
/// window, where it would count toward the next trip.
#[test]
fn a_closed_failure_racing_a_reset_leaves_empty_metrics() {
    loom::model(|| {
        let b = breaker(Builder::default().consecutive_failures(1));
        let mut events = b.subscribe();
        let start = b.load();
        let ticket = admit(&b, 0);

        let b2 = b.clone();
        let t = thread::spawn(move || complete(&b2, ticket, Outcome::Failure, 0));
        b.force(State::Closed);
        t.join().unwrap();

        let seen = drain(&mut events);
        let word = b.load();
        assert_eq!(word.state(), State::Closed);
        match seen.as_slice() {
            [(State::Closed, State::Closed)] => assert_eq!(steps(start, word), 1), // reset first
            [(State::Closed, State::Open), (State::Open, State::Closed)] => {
                assert_eq!(steps(start, word), 2)
            }
            other => panic!("unexpected transitions {other:?}"),
        }
        let mut core = b.lock();
        assert_eq!(core.totals(0), Default::default());
        assert_eq!(core.consecutive(), 0);
    });
}

/// A closed-state failure races force_open: the breaker ends ForcedOpen, never Open, with one
/// transition per operation that took effect.
#[test]
fn a_closed_failure_racing_force_open_ends_forced_open() {
    loom::model(|| {
        let b = breaker(Builder::default().consecutive_failures(1));
        let mut events = b.subscribe();
        let start = b.load();
        let ticket = admit(&b, 0);

        let b2 = b.clone();
        let t = thread::spawn(move || complete(&b2, ticket, Outcome::Failure, 0));
        b.force(State::ForcedOpen);
        t.join().unwrap();

        let seen = drain(&mut events);
        let word = b.load();
        assert_eq!(word.state(), State::ForcedOpen);
        match seen.as_slice() {
            [(State::Closed, State::ForcedOpen)] => assert_eq!(steps(start, word), 1),
            [
                (State::Closed, State::Open),
                (State::Open, State::ForcedOpen),
            ] => {
                assert_eq!(steps(start, word), 2)
            }
            other => panic!("unexpected transitions {other:?}"),
        }
    });
}

/// The deciding probe success (just before the deadline) races a state read just after
/// `half_open_max_wait`: the episode ends once, Closed or Open, and the loser changes nothing.
#[test]
fn a_probe_success_racing_half_open_expiry_decides_once() {
    loom::model(|| {
        let b = breaker(probes().half_open_calls(1));
        let at = half_open(&b);
        let probe = admit(&b, at);
        let deadline = b.words.half_open_until.load(Ordering::Relaxed);
        assert_eq!(
            deadline,
            at + 60_000_000_000,
            "counted from the first probe"
        );
        let mut events = b.subscribe();
        let start = b.load();

        let b2 = b.clone();
        let t = thread::spawn(move || complete(&b2, probe, Outcome::Success, deadline - 1));
        let read = b.state(&mut now(&b, deadline));
        t.join().unwrap();

        let seen = drain(&mut events);
        let word = b.load();
        assert_eq!(steps(start, word), 1);
        match seen.as_slice() {
            [(State::HalfOpen, State::Closed)] => assert_eq!(word.state(), State::Closed),
            [(State::HalfOpen, State::Open)] => {
                assert_eq!(word.state(), State::Open);
                assert_eq!(read, State::Open);
            }
            other => panic!("unexpected transitions {other:?}"),
        }
        assert_eq!(probes_of(&b).0, 0);
    });
}

// ===== (c) a permit returned while the episode ends =====

/// A failing probe reopens the circuit while another probe's permit is given back: the late
/// release must not touch the new episode's word, and the next episode has every permit.
#[test]
fn a_release_racing_a_reopen_leaks_no_permit() {
    loom::model(|| {
        let b = breaker(probes().half_open_calls(2).half_open_successes(2));
        let at = half_open(&b);
        let failing = admit(&b, at);
        let dropped = admit(&b, at);
        let start = b.load();

        let b2 = b.clone();
        let t = thread::spawn(move || b2.release(dropped));
        complete(&b, failing, Outcome::Failure, at);
        t.join().unwrap();

        let word = b.load();
        assert_eq!(word.state(), State::Open);
        assert_eq!(steps(start, word), 1);
        assert_eq!(
            probes_of(&b),
            (0, 0, 0),
            "{:x} {:x} {:x}",
            b.words.probes.load(Ordering::Relaxed),
            word.0,
            start.0
        );
        // The next episode admits exactly half_open_calls probes.
        let next = b.words.open_until.load(Ordering::Relaxed);
        assert_eq!(b.state(&mut now(&b, next)), State::HalfOpen);
        admit(&b, next);
        admit(&b, next);
        assert!(matches!(b.admit(&mut now(&b, next)), Decision::Reject(_)));
    });
}

/// A non-deciding probe success races another probe's release: both land in the episode.
#[test]
fn a_release_racing_a_probe_result_keeps_the_counts() {
    loom::model(|| {
        let b = breaker(probes().half_open_calls(3).half_open_successes(2));
        let at = half_open(&b);
        let succeeding = admit(&b, at);
        let dropped = admit(&b, at);

        let b2 = b.clone();
        let t = thread::spawn(move || b2.release(dropped));
        complete(&b, succeeding, Outcome::Success, at);
        t.join().unwrap();

        assert_eq!(b.load().state(), State::HalfOpen);
        assert_eq!(probes_of(&b), (1, 1, 0));
    });
}

// ===== (d) racing to trip =====

/// Two failures race to trip by the consecutive count: exactly one Closed -> Open.
#[test]
fn two_failures_racing_to_trip_open_once() {
    loom::model(|| {
        let b = breaker(Builder::default().consecutive_failures(2));
        let mut events = b.subscribe();
        let start = b.load();
        let first = admit(&b, 0);
        let second = admit(&b, 0);

        let b2 = b.clone();
        let t = thread::spawn(move || complete(&b2, first, Outcome::Failure, 0));
        complete(&b, second, Outcome::Failure, 0);
        t.join().unwrap();

        assert_eq!(b.load().state(), State::Open);
        assert_eq!(steps(start, b.load()), 1);
        assert_eq!(drain(&mut events), [(State::Closed, State::Open)]);
    });
}

/// Two failures race to trip by the failure rate (the window fills with both): exactly one
/// Closed -> Open, never none.
#[test]
fn two_failures_racing_to_trip_by_rate_open_once() {
    loom::model(|| {
        let b = breaker(
            Builder::default()
                .sliding_window(crate::Window::count(2))
                .minimum_calls(2)
                .failure_rate_threshold(1.0),
        );
        let mut events = b.subscribe();
        let start = b.load();
        let first = admit(&b, 0);
        let second = admit(&b, 0);

        let b2 = b.clone();
        let t = thread::spawn(move || complete(&b2, first, Outcome::Failure, 0));
        complete(&b, second, Outcome::Failure, 0);
        t.join().unwrap();

        assert_eq!(drain(&mut events), [(State::Closed, State::Open)]);
        assert_eq!(b.load().state(), State::Open);
        assert_eq!(steps(start, b.load()), 1);
    });
}

// ===== (e) outcomes racing at a threshold or the minimum (a snapshot of the window is always
// one that a sequential order gives) =====

/// One failure, then two successes at once reach `minimum_calls` together: every sequential
/// order opens at the first success (1 of 2 failed >= 0.3), so the race must open too.
#[test]
fn two_successes_reaching_the_minimum_together_trip_as_in_sequence() {
    loom::model(|| {
        let b = breaker(
            Builder::default()
                .sliding_window(crate::Window::count(10))
                .minimum_calls(2)
                .failure_rate_threshold(0.3),
        );
        let failure = admit(&b, 0);
        complete(&b, failure, Outcome::Failure, 0);
        let first = admit(&b, 0);
        let second = admit(&b, 0);

        let b2 = b.clone();
        let t = thread::spawn(move || complete(&b2, first, Outcome::Success, 0));
        complete(&b, second, Outcome::Success, 0);
        t.join().unwrap();

        assert_eq!(b.load().state(), State::Open);
    });
}

/// Window `[F, S]` of `count(2)`, threshold 0.6: a success (evicting the failure) races a failure
/// (evicting the success). Both orders end at 1 of 2 failed and stay Closed; so must the race.
#[test]
fn a_success_evicting_a_failure_racing_a_failure_stays_closed() {
    loom::model(|| {
        let b = breaker(
            Builder::default()
                .sliding_window(crate::Window::count(2))
                .minimum_calls(2)
                .failure_rate_threshold(0.6),
        );
        for outcome in [Outcome::Failure, Outcome::Success] {
            let ticket = admit(&b, 0);
            complete(&b, ticket, outcome, 0);
        }
        let success = admit(&b, 0);
        let failure = admit(&b, 0);

        let b2 = b.clone();
        let t = thread::spawn(move || complete(&b2, success, Outcome::Success, 0));
        complete(&b, failure, Outcome::Failure, 0);
        t.join().unwrap();

        assert_eq!(b.load().state(), State::Closed);
        let mut core = b.lock();
        assert_eq!((core.totals(0).calls, core.totals(0).failed), (2, 1));
    });
}

/// A time-window success that read the clock just before a bucket boundary races a failure that
/// read it just after: 1 of 2 failed >= 0.5 in every order, so the race must open.
#[test]
fn a_success_from_before_a_bucket_boundary_racing_a_failure_trips_as_in_sequence() {
    loom::model(|| {
        let b = breaker(
            Builder::default()
                .sliding_window(crate::Window::time(Duration::from_millis(4)).buckets(4))
                .minimum_calls(2)
                .failure_rate_threshold(0.5),
        );
        let success = admit(&b, 0);
        let failure = admit(&b, 0);

        let b2 = b.clone();
        let t = thread::spawn(move || complete(&b2, success, Outcome::Success, 999_999));
        complete(&b, failure, Outcome::Failure, 1_000_000);
        t.join().unwrap();

        assert_eq!(b.load().state(), State::Open);
    });
}

// ===== (f) announcements =====

/// Two operators' transitions race: each is announced once, in transition order, and the last
/// event names the state the breaker is in.
#[test]
fn racing_transitions_are_announced_once_each_in_order() {
    loom::model(|| {
        let b = breaker(Builder::default());
        let mut events = b.subscribe();

        let b2 = b.clone();
        let t = thread::spawn(move || b2.force(State::ForcedOpen));
        b.force(State::Disabled);
        t.join().unwrap();

        let seen = drain(&mut events);
        let last = b.load().state();
        match seen.as_slice() {
            [
                (State::Closed, State::ForcedOpen),
                (State::ForcedOpen, State::Disabled),
            ]
            | [
                (State::Closed, State::Disabled),
                (State::Disabled, State::ForcedOpen),
            ] => {
                assert_eq!(seen[1].1, last)
            }
            other => panic!("unexpected transitions {other:?}"),
        }
        assert!(b.lock().is_announced(), "nothing left unannounced");
    });
}

mod batch;
