//! loom models of the state machine's atomics. Run with `scripts/loom`.
//!
//! Each model races two threads over one breaker and checks, in every interleaving loom explores,
//! that the result is one a sequential order of the same operations could give: each transition
//! happens once (one generation step, one event), stale results never move the state or the
//! counters, and no probe permit leaks.

use super::*;
use crate::config::Builder;
use futures::{FutureExt, StreamExt};
use loom::sync::Arc;
use loom::thread;

/// Far from every fixed time used below: the real clock (read by `release`) stays below it.
const T0: u64 = 1 << 50;

fn breaker(builder: Builder) -> Arc<Breaker> {
    let layer_config = builder.validate_for_tests();
    Arc::new(Breaker::new(StdArc::new(layer_config)))
}

fn admit(b: &Breaker, at: u64) -> Ticket {
    match b.admit(&mut Now::fixed(at)) {
        Decision::Admit(ticket) => ticket,
        Decision::Reject(r) => panic!("rejected: {r:?}"),
    }
}

/// Trips the breaker at `T0` and lets its open interval end: returns the half-open instant.
fn half_open(b: &Breaker) -> u64 {
    assert!(
        b.transition_if(b.load().generation(), &mut Now::fixed(T0), |_| {
            Some(State::Open)
        })
    );
    let at = b.open_until.load(Ordering::Relaxed);
    assert_eq!(b.state(&mut Now::fixed(at)), State::HalfOpen);
    at
}

/// The transitions reported so far.
fn drain(events: &mut EventStream) -> Vec<(State, State)> {
    let mut seen = Vec::new();
    while let Some(Some(event)) = events.next().now_or_never() {
        match event {
            Event::StateTransition { from, to, .. } => seen.push((from, to)),
        }
    }
    seen
}

/// How many generations `later` is after `earlier`.
fn steps(earlier: Word, later: Word) -> u32 {
    let mut word = earlier;
    for n in 0..8 {
        if word.generation() == later.generation() {
            return n;
        }
        word = word.next(State::Closed);
    }
    panic!("generation moved too far");
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
        let t = thread::spawn(move || b2.admit(&mut Now::fixed(at)));
        let mine = b.admit(&mut Now::fixed(at));
        let theirs = t.join().unwrap();
        let admitted = [mine, theirs]
            .iter()
            .filter(|d| matches!(d, Decision::Admit(_)))
            .count();
        assert_eq!(admitted, 1);
        assert_eq!(b.load().taken(), 1);
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
        let second = b.admit(&mut Now::fixed(at));
        t.join().unwrap();
        let word = b.load();
        assert_eq!(word.state(), State::HalfOpen);
        match second {
            Decision::Admit(_) => assert_eq!(word.taken(), 1),
            Decision::Reject(r) => {
                assert_eq!(r.state, State::HalfOpen);
                assert_eq!(word.taken(), 0);
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
        let t =
            thread::spawn(move || b2.complete(ticket, Outcome::Failure, false, &mut Now::fixed(0)));
        b.force(State::Closed);
        t.join().unwrap();

        let seen = drain(&mut events);
        let word = b.load();
        assert_eq!(word.state(), State::Closed);
        match seen.as_slice() {
            [] => assert_eq!(steps(start, word), 1), // reset first: Closed -> Closed, no event
            [(State::Closed, State::Open), (State::Open, State::Closed)] => {
                assert_eq!(steps(start, word), 2)
            }
            other => panic!("unexpected transitions {other:?}"),
        }
        let m = b.metrics();
        assert_eq!((m.calls, m.failed, m.consecutive_failures), (0, 0, 0));
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
        let t =
            thread::spawn(move || b2.complete(ticket, Outcome::Failure, false, &mut Now::fixed(0)));
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
        let deadline = b.half_open_until.load(Ordering::Relaxed);
        let probe = admit(&b, at);
        let mut events = b.subscribe();
        let start = b.load();

        let b2 = b.clone();
        let t = thread::spawn(move || {
            b2.complete(
                probe,
                Outcome::Success,
                false,
                &mut Now::fixed(deadline - 1),
            )
        });
        let read = b.state(&mut Now::fixed(deadline));
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
        assert_eq!(word.taken(), 0);
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
        b.complete(failing, Outcome::Failure, false, &mut Now::fixed(at));
        t.join().unwrap();

        let word = b.load();
        assert_eq!(word.state(), State::Open);
        assert_eq!(steps(start, word), 1);
        assert_eq!((word.taken(), word.succeeded(), word.failed()), (0, 0, 0));
        // The next episode admits exactly half_open_calls probes.
        let next = b.open_until.load(Ordering::Relaxed);
        assert_eq!(b.state(&mut Now::fixed(next)), State::HalfOpen);
        admit(&b, next);
        admit(&b, next);
        assert!(matches!(
            b.admit(&mut Now::fixed(next)),
            Decision::Reject(_)
        ));
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
        b.complete(succeeding, Outcome::Success, false, &mut Now::fixed(at));
        t.join().unwrap();

        let word = b.load();
        assert_eq!(word.state(), State::HalfOpen);
        assert_eq!((word.taken(), word.succeeded(), word.failed()), (1, 1, 0));
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
        let t =
            thread::spawn(move || b2.complete(first, Outcome::Failure, false, &mut Now::fixed(0)));
        b.complete(second, Outcome::Failure, false, &mut Now::fixed(0));
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
        let t =
            thread::spawn(move || b2.complete(first, Outcome::Failure, false, &mut Now::fixed(0)));
        b.complete(second, Outcome::Failure, false, &mut Now::fixed(0));
        t.join().unwrap();

        assert_eq!(drain(&mut events), [(State::Closed, State::Open)]);
        assert_eq!(b.load().state(), State::Open);
        assert_eq!(steps(start, b.load()), 1);
    });
}
