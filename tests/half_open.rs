//! DESIGN §3, HalfOpen: the probe budget of an episode, permits that come back, closing and
//! reopening, slow probes, and the maximum wait.

mod support;

use std::time::Duration;

use support::*;
use tokio_test::{assert_pending, task};
use tower::{Service, ServiceExt};
use tower_circuit_breaker::{Backoff, Builder, State, Window};

/// Trips on the first failure, open for 10 s, with `half_open_calls` probes.
fn probing(calls: u32) -> Builder<Classifier> {
    builder()
        .consecutive_failures(1)
        .open_duration(OPEN)
        .half_open_calls(calls)
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_at_most_half_open_calls_probes_per_episode() {
    let mut h = half_open(probing(3)).await;
    let calls = h.counters.calls();

    let mut gates = Vec::new();
    let mut probes = Vec::new();
    for _ in 0..3 {
        let (req, gate) = gated();
        probes.push(start(&mut h.svc, req).await);
        gates.push(gate);
    }
    assert_eq!(h.counters.calls(), calls + 3);

    let rejected = rejection(call(&mut h.svc, ok()).await);
    assert_eq!(rejected.state(), State::HalfOpen);
    assert_eq!(
        rejected.retry_after(),
        None,
        "nobody knows when a permit frees up"
    );
    assert_eq!(h.handle.metrics().not_permitted(), 1);

    // A probe that completes does not give its permit back: the budget is per episode.
    gates.remove(0).open(Reply::Ok);
    probes.remove(0).await.unwrap();
    assert_eq!(h.handle.state(), State::HalfOpen, "1 of 3 successes");
    rejection(call(&mut h.svc, ok()).await);
    assert_eq!(
        h.counters.calls(),
        calls + 3,
        "no fourth probe reached the service"
    );

    for (gate, probe) in gates.into_iter().zip(probes) {
        gate.open(Reply::Ok);
        probe.await.unwrap();
    }
    assert_eq!(h.handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn ignored_probe_returns_its_permit_and_records_nothing() {
    let mut h = half_open(probing(1)).await;

    call(&mut h.svc, ignored()).await.unwrap_err();
    assert_eq!(
        h.handle.state(),
        State::HalfOpen,
        "an ignored probe decides nothing"
    );
    call(&mut h.svc, ok()).await.unwrap();
    assert_eq!(h.handle.state(), State::Closed, "the permit came back");

    // With two probes that must both succeed, an ignored one counts neither way.
    let mut h = half_open(probing(2)).await;
    call(&mut h.svc, ok()).await.unwrap();
    call(&mut h.svc, ignored()).await.unwrap_err();
    assert_eq!(h.handle.state(), State::HalfOpen, "not a second success");
    call(&mut h.svc, ignored()).await.unwrap_err();
    assert_eq!(h.handle.state(), State::HalfOpen);
    call(&mut h.svc, ok()).await.unwrap();
    assert_eq!(h.handle.state(), State::Closed);

    // Nor is it a failure: with one failure allowed, an ignored probe does not use it.
    let mut h = half_open(probing(2).half_open_successes(1)).await;
    call(&mut h.svc, ignored()).await.unwrap_err();
    call(&mut h.svc, fail()).await.unwrap_err();
    assert_eq!(
        h.handle.state(),
        State::HalfOpen,
        "1 failure of the 1 allowed"
    );
    call(&mut h.svc, ok()).await.unwrap();
    assert_eq!(h.handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn dropped_probe_future_returns_its_permit() {
    let mut h = half_open(probing(1)).await;

    // Polled once, then dropped.
    let (req, _gate) = gated();
    let mut probe = task::spawn(start(&mut h.svc, req).await);
    assert_pending!(probe.poll());
    rejection(call(&mut h.svc, ok()).await); // the only permit is taken
    drop(probe);
    assert_eq!(
        h.handle.state(),
        State::HalfOpen,
        "a dropped probe decides nothing"
    );

    // Never polled, then dropped.
    let probe = start(&mut h.svc, ok()).await;
    rejection(call(&mut h.svc, ok()).await);
    drop(probe);

    call(&mut h.svc, ok()).await.unwrap();
    assert_eq!(h.handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn unused_permit_from_poll_ready_is_returned_when_the_service_is_dropped() {
    let mut h = half_open(probing(1)).await;

    let mut clone = h.svc.clone();
    let _ = clone.ready().await.unwrap(); // takes the only permit
    rejection(call(&mut h.svc, ok()).await);
    drop(clone);

    call(&mut h.svc, ok()).await.unwrap();
    assert_eq!(h.handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn unused_permit_from_poll_ready_is_returned_by_into_inner() {
    let mut h = half_open(probing(1)).await;

    let mut clone = h.svc.clone();
    let _ = clone.ready().await.unwrap();
    rejection(call(&mut h.svc, ok()).await);
    let _inner: Inner = clone.into_inner();

    call(&mut h.svc, ok()).await.unwrap();
    assert_eq!(h.handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_clone_does_not_share_the_permit_of_its_original() {
    let mut h = half_open(probing(1)).await;

    let _ = h.svc.ready().await.unwrap(); // h.svc holds the permit
    let mut clone = h.svc.clone();
    rejection(call(&mut clone, ok()).await);
    h.svc.call(ok()).await.unwrap();
    assert_eq!(h.handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn half_open_closes_after_half_open_successes() {
    let mut h = half_open(probing(3).half_open_successes(2)).await;
    call(&mut h.svc, ok()).await.unwrap();
    assert_eq!(h.handle.state(), State::HalfOpen);
    call(&mut h.svc, ok()).await.unwrap();
    assert_eq!(h.handle.state(), State::Closed, "2 of 2 required successes");

    // With a failure first: the failure is within the budget of 3 - 2.
    let mut h = half_open(probing(3).half_open_successes(2)).await;
    call(&mut h.svc, fail()).await.unwrap_err();
    call(&mut h.svc, ok()).await.unwrap();
    assert_eq!(h.handle.state(), State::HalfOpen);
    call(&mut h.svc, ok()).await.unwrap();
    assert_eq!(h.handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn half_open_closes_after_all_probes_succeed_by_default() {
    let mut h = half_open(probing(3)).await;
    for _ in 0..2 {
        call(&mut h.svc, ok()).await.unwrap();
        assert_eq!(h.handle.state(), State::HalfOpen);
    }
    call(&mut h.svc, ok()).await.unwrap();
    assert_eq!(h.handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn half_open_reopens_when_successes_become_unreachable() {
    // 3 probes, 2 successes needed: the second failure makes 2 unreachable.
    let mut h = half_open(probing(3).half_open_successes(2)).await;
    call(&mut h.svc, fail()).await.unwrap_err();
    assert_eq!(
        h.handle.state(),
        State::HalfOpen,
        "2 successes still reachable"
    );
    call(&mut h.svc, fail()).await.unwrap_err();
    assert_eq!(h.handle.state(), State::Open);

    // By default every probe must succeed: the first failure reopens.
    let mut h = half_open(probing(3)).await;
    call(&mut h.svc, ok()).await.unwrap();
    call(&mut h.svc, fail()).await.unwrap_err();
    assert_eq!(h.handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn half_open_reopens_as_soon_as_decided_while_other_probes_are_in_flight() {
    let mut h = half_open(probing(3)).await;
    let (req, gate) = gated();
    let in_flight = start(&mut h.svc, req).await;

    call(&mut h.svc, fail()).await.unwrap_err();
    assert_eq!(
        h.handle.state(),
        State::Open,
        "no need to wait for the other probe"
    );

    // The late probe's success arrives in the next half-open episode: it is stale, so neither
    // a success of this episode nor a permit of it (the state alone cannot tell; the generation
    // must).
    advance(OPEN).await;
    assert_eq!(h.handle.state(), State::HalfOpen);
    gate.open(Reply::Ok);
    in_flight.await.unwrap();
    assert_eq!(h.handle.state(), State::HalfOpen);
    for _ in 0..2 {
        call(&mut h.svc, ok()).await.unwrap();
    }
    assert_eq!(
        h.handle.state(),
        State::HalfOpen,
        "2 successes of this episode, not 3: the late one did not count"
    );
    call(&mut h.svc, ok()).await.unwrap();
    assert_eq!(h.handle.state(), State::Closed, "3 probes of this episode");
}

fn slow_probing() -> Builder<Classifier> {
    probing(1).slow_call_duration(secs(1))
}

/// Runs one probe that takes `latency` and ends with `reply`.
async fn timed_probe(h: &mut Harness, reply: Reply, latency: Duration) {
    let (req, gate) = gated();
    let probe = start(&mut h.svc, req).await;
    advance(latency).await;
    gate.open(reply);
    let _ = probe.await;
}

#[tokio::test(start_paused = true)]
async fn slow_probe_is_a_failure_when_slow_calls_are_configured() {
    let mut h = half_open(slow_probing()).await;
    timed_probe(&mut h, Reply::Ok, secs(1) + NS).await;
    assert_eq!(
        h.handle.state(),
        State::Open,
        "a slow success is a failed probe"
    );

    let mut h = half_open(slow_probing()).await;
    timed_probe(&mut h, Reply::Ok, secs(1)).await;
    assert_eq!(
        h.handle.state(),
        State::Closed,
        "exactly the limit is not slow"
    );

    // Also with a slow-call rate threshold (which turns slow tracking on with its default).
    let mut h = half_open(probing(1).slow_call_rate_threshold(1.0)).await;
    timed_probe(&mut h, Reply::Ok, secs(61)).await;
    assert_eq!(h.handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn slow_probe_succeeds_when_slow_calls_are_not_configured() {
    let mut h = half_open(probing(1).half_open_max_wait(secs(3600))).await;
    timed_probe(&mut h, Reply::Ok, secs(120)).await;
    assert_eq!(h.handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn closing_clears_the_window() {
    let mut h = harness(
        builder()
            .sliding_window(Window::count(10))
            .minimum_calls(4)
            .failure_rate_threshold(0.5)
            .consecutive_failures(5)
            .open_duration(OPEN),
    );
    run(&mut h.svc, 4, Reply::Fail).await;
    assert_eq!(h.handle.state(), State::Open);
    let metrics = h.handle.metrics();
    assert_eq!(
        (metrics.calls(), metrics.failed()),
        (4, 4),
        "the window that tripped"
    );

    advance(OPEN).await;
    call(&mut h.svc, ok()).await.unwrap();
    assert_eq!(h.handle.state(), State::Closed);
    let metrics = h.handle.metrics();
    assert_eq!(
        (metrics.calls(), metrics.failed(), metrics.slow()),
        (0, 0, 0)
    );
    assert_eq!(metrics.failure_rate(), None);
    assert_eq!(metrics.consecutive_failures(), 0);

    // With the old window 4 more failures would trip at once (8 of 8, 8 in a row).
    run(&mut h.svc, 3, Reply::Fail).await;
    assert_eq!(h.handle.state(), State::Closed, "3 outcomes, minimum 4");
}

#[tokio::test(start_paused = true)]
async fn closing_clears_a_time_window() {
    let mut h = harness(
        builder()
            .sliding_window(Window::time(secs(60)))
            .minimum_calls(2)
            .failure_rate_threshold(0.5)
            .open_duration(OPEN),
    );
    run(&mut h.svc, 2, Reply::Fail).await;
    assert_eq!(h.handle.state(), State::Open);
    advance(OPEN).await;
    call(&mut h.svc, ok()).await.unwrap();
    assert_eq!(h.handle.state(), State::Closed);
    assert_eq!(h.handle.metrics().calls(), 0);
    run(&mut h.svc, 1, Reply::Fail).await;
    assert_eq!(h.handle.state(), State::Closed, "1 outcome, minimum 2");
}

#[tokio::test(start_paused = true)]
async fn half_open_max_wait_sends_an_undecided_episode_back_to_open() {
    let mut h = half_open(probing(1).half_open_max_wait(secs(5))).await;
    let mut events = h.handle.subscribe();
    let (req, gate) = gated();
    let hung = start(&mut h.svc, req).await;

    advance(secs(5) - NS).await;
    assert_eq!(h.handle.state(), State::HalfOpen);
    rejection(call(&mut h.svc, ok()).await);
    advance(NS).await;
    assert_eq!(h.handle.state(), State::Open, "5 s undecided");
    assert_eq!(transitions(&mut events), [(State::HalfOpen, State::Open)]);
    let rejected = rejection(call(&mut h.svc, ok()).await);
    assert_eq!(rejected.retry_after(), Some(OPEN), "a new open interval");

    // The hung probe's late success is stale.
    gate.open(Reply::Ok);
    hung.await.unwrap();
    assert_eq!(h.handle.state(), State::Open);

    // The next episode works as usual.
    advance(OPEN).await;
    call(&mut h.svc, ok()).await.unwrap();
    assert_eq!(h.handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn half_open_max_wait_is_checked_on_the_next_call() {
    let mut h = half_open(probing(1).half_open_max_wait(secs(5))).await;
    let (req, _gate) = gated();
    let _hung = start(&mut h.svc, req).await;
    let calls = h.counters.calls();

    advance(secs(5)).await;
    let rejected = rejection(call(&mut h.svc, ok()).await);
    assert_eq!(rejected.state(), State::Open);
    assert_eq!(h.counters.calls(), calls);
}

#[tokio::test(start_paused = true)]
async fn probe_completing_after_max_wait_is_stale_even_if_nobody_looked() {
    // Nobody reads the state between the deadline and the probe's result: the result still
    // arrives after the episode ended, and must not close the circuit.
    let mut h = half_open(probing(1).half_open_max_wait(secs(5))).await;
    let (req, gate) = gated();
    let hung = start(&mut h.svc, req).await;

    advance(secs(6)).await;
    gate.open(Reply::Ok);
    hung.await.unwrap();
    assert_eq!(h.handle.state(), State::Open, "the episode ended at 5 s");
}

#[tokio::test(start_paused = true)]
async fn half_open_max_wait_counts_as_a_failed_attempt_for_backoff() {
    let backoff = Backoff::exponential(secs(1), 2.0, secs(60));
    let mut h = harness(
        builder()
            .consecutive_failures(1)
            .open_backoff(backoff)
            .half_open_max_wait(secs(5)),
    );
    call(&mut h.svc, fail()).await.unwrap_err(); // attempt 1: 1 s
    advance(secs(1)).await;
    let (req, _gate) = gated();
    let _hung = start(&mut h.svc, req).await;
    advance(secs(5)).await; // HalfOpen -> Open: attempt 2
    let rejected = rejection(call(&mut h.svc, ok()).await);
    assert_eq!(rejected.retry_after(), Some(secs(2)));
}

/// Exponential backoff from 1 s, doubling, with a 5 s max wait: open intervals 1 s, 2 s, 4 s ...
fn backing_off() -> Builder<Classifier> {
    builder()
        .consecutive_failures(1)
        .open_backoff(Backoff::exponential(secs(1), 2.0, secs(60)))
        .half_open_max_wait(secs(5))
}

/// Issue 8, defect 17: an episode in which no probe was admitted never expires, and so is no
/// failed attempt: the interval after a later failed probe is attempt 2's (2 s), not attempt 3's.
#[tokio::test(start_paused = true)]
async fn half_open_without_a_probe_never_expires_and_is_not_a_failed_attempt() {
    let mut h = harness(backing_off());
    let mut events = h.handle.subscribe();
    call(&mut h.svc, fail()).await.unwrap_err(); // attempt 1: 1 s
    advance(secs(1)).await;
    assert_eq!(h.handle.state(), State::HalfOpen);
    for _ in 0..30 {
        advance(secs(1)).await; // 6 times the max wait, looking every second
        assert_eq!(h.handle.state(), State::HalfOpen, "no probe: no expiry");
    }
    assert_eq!(
        transitions(&mut events),
        [(State::Closed, State::Open), (State::Open, State::HalfOpen)]
    );

    assert_admitted(&call(&mut h.svc, fail()).await); // HalfOpen -> Open: attempt 2
    assert_eq!(h.handle.state(), State::Open);
    let rejected = rejection(call(&mut h.svc, ok()).await);
    assert_eq!(
        rejected.retry_after(),
        Some(secs(2)),
        "attempt 2's interval"
    );
}

/// Issue 8, defect 17: `half_open_max_wait` counts from the first probe admitted, not from the
/// start of the episode nor from whoever looked first.
#[tokio::test(start_paused = true)]
async fn half_open_max_wait_counts_from_the_first_probe() {
    let mut h = half_open(probing(2).half_open_max_wait(secs(5))).await; // t = 10 s, looked at
    advance(secs(3)).await;
    let (req, _first) = gated();
    let _first_probe = start(&mut h.svc, req).await; // t = 13 s: the max wait starts
    let calls = h.counters.calls();

    advance(secs(5) - NS).await; // 8 s after the look, 5 s - 1 ns after the probe
    assert_eq!(h.handle.state(), State::HalfOpen);
    let (req, _second) = gated();
    let _second_probe = start(&mut h.svc, req).await;
    assert_eq!(
        h.counters.calls(),
        calls + 1,
        "the second probe of the episode was admitted"
    );

    advance(NS).await; // 5 s after the first probe
    assert_eq!(h.handle.state(), State::Open, "5 s after the first probe");
    let rejected = rejection(call(&mut h.svc, ok()).await);
    assert_eq!(rejected.retry_after(), Some(OPEN), "reopened at the expiry");
}

/// Every probe after the first leaves the episode started: none of them, the third included,
/// starts the max wait again.
#[tokio::test(start_paused = true)]
async fn half_open_max_wait_is_not_restarted_by_a_later_probe() {
    let mut h = half_open(probing(3).half_open_max_wait(secs(5))).await;
    let mut probes = Vec::new();
    for _ in 0..2 {
        let (req, gate) = gated();
        probes.push((start(&mut h.svc, req).await, gate)); // the max wait starts here
    }
    advance(secs(4)).await;
    let (req, gate) = gated();
    probes.push((start(&mut h.svc, req).await, gate)); // the third, 4 s later
    advance(secs(1)).await;
    assert_eq!(
        h.handle.state(),
        State::Open,
        "5 s after the first probe, whatever the third"
    );
}

/// Issue 8, defect 17: an expired episode reopens at its expiry instant (first probe + max wait),
/// not when somebody next looks: a call long after the expiry is a probe once the new open
/// interval has passed, and one in between is told the time left from the expiry.
#[tokio::test(start_paused = true)]
async fn expired_half_open_reopens_from_the_expiry_instant() {
    let probing = || probing(1).half_open_max_wait(secs(5));

    // Nobody looks between the hung probe (t = 10 s) and a call at t = 40 s: the episode expired
    // at 15 s, reopened until 25 s, and the call is a probe of the next episode.
    let mut h = half_open(probing()).await;
    let (req, _hung) = gated();
    let _hung_probe = start(&mut h.svc, req).await; // t = 10 s
    advance(secs(30)).await; // t = 40 s
    call(&mut h.svc, ok())
        .await
        .expect("a probe: the open interval from the expiry (15 s) ended at 25 s");
    assert_eq!(h.handle.state(), State::Closed);

    // A call at t = 20 s is rejected with 5 s left (open from 15 s to 25 s), and one at 25 s is
    // a probe.
    let mut h = half_open(probing()).await;
    let (req, _hung) = gated();
    let _hung_probe = start(&mut h.svc, req).await; // t = 10 s
    advance(secs(10)).await; // t = 20 s
    let rejected = rejection(call(&mut h.svc, ok()).await);
    assert_eq!(rejected.state(), State::Open);
    assert_eq!(rejected.retry_after(), Some(secs(5)), "open since 15 s");
    advance(secs(5)).await; // t = 25 s
    call(&mut h.svc, ok()).await.expect("a probe at 25 s");
    assert_eq!(h.handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn slow_failed_probe_counts_as_one_failure() {
    // 3 probes, 2 successes needed: one failure is allowed.
    let mut h = half_open(slow_probing().half_open_calls(3).half_open_successes(2)).await;
    timed_probe(&mut h, Reply::Fail, secs(2)).await;
    assert_eq!(
        h.handle.state(),
        State::HalfOpen,
        "slow and failed, but one probe"
    );
    call(&mut h.svc, ok()).await.unwrap();
    call(&mut h.svc, ok()).await.unwrap();
    assert_eq!(h.handle.state(), State::Closed);
}
