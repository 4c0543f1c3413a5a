//! DESIGN §3, Open: rejection without touching the inner service, retry-after, the lazy move to
//! HalfOpen at `opened_at + interval`, and the backoff of the open interval.

mod support;

use std::time::Duration;

use support::*;
use tower::{Layer, ServiceExt, service_fn};
use tower_circuit_breaker::{Backoff, State};

/// Trips on the first failure; open for `open` (fixed).
fn tripping(open: Duration) -> Harness {
    harness(
        builder()
            .name("dep")
            .consecutive_failures(1)
            .open_duration(open),
    )
}

/// Trips on the first failure; open for the backoff.
fn backing_off(backoff: Backoff) -> Harness {
    harness(
        builder()
            .consecutive_failures(1)
            .open_backoff(backoff)
            .half_open_max_wait(secs(3600)),
    )
}

/// The open interval now beginning, read from the rejection's retry-after at the instant of
/// opening.
async fn current_interval(h: &mut Harness) -> Duration {
    assert_eq!(h.handle.state(), State::Open);
    rejection(call(&mut h.svc, ok()).await)
        .retry_after()
        .expect("open rejections know when a probe is admitted")
}

/// Waits out the open interval `interval` and fails the probe, reopening the circuit.
async fn fail_probe(h: &mut Harness, interval: Duration) {
    advance(interval).await;
    assert_eq!(h.handle.state(), State::HalfOpen);
    assert_admitted(&call(&mut h.svc, fail()).await);
}

#[tokio::test(start_paused = true)]
async fn open_rejects_without_touching_the_inner_service() {
    let Harness {
        mut svc,
        handle,
        counters,
    } = tripping(secs(10));
    trip(&mut svc).await;
    assert_eq!(handle.state(), State::Open);
    let (polls, calls) = (counters.polls(), counters.calls());

    for _ in 0..5 {
        let rejected = rejection(call(&mut svc, ok()).await);
        assert_eq!(rejected.state(), State::Open);
        assert_eq!(rejected.name(), Some("dep"));
    }
    // Readiness alone does not touch it either.
    let mut probe = svc.clone();
    let _ = probe.ready().await.unwrap();
    drop(probe);

    assert_eq!(
        counters.polls(),
        polls,
        "the inner poll_ready was not called"
    );
    assert_eq!(counters.calls(), calls, "the inner call was not called");
}

#[tokio::test(start_paused = true)]
async fn open_rejections_are_counted_in_not_permitted() {
    let Harness {
        mut svc, handle, ..
    } = tripping(secs(10));
    trip(&mut svc).await;
    assert_eq!(handle.metrics().not_permitted(), 0);

    for _ in 0..3 {
        rejection(call(&mut svc, ok()).await);
    }
    assert_eq!(handle.metrics().not_permitted(), 3);

    // Counted since the last transition to Closed: HalfOpen keeps the count ...
    advance(secs(10)).await;
    assert_eq!(handle.state(), State::HalfOpen);
    assert_eq!(handle.metrics().not_permitted(), 3);
    // ... and closing clears it.
    call(&mut svc, ok()).await.unwrap();
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.metrics().not_permitted(), 0);
}

#[tokio::test(start_paused = true)]
async fn open_sends_calls_to_the_fallback_without_touching_the_inner_service() {
    let layer = builder()
        .consecutive_failures(1)
        .open_duration(secs(10))
        .build()
        .unwrap()
        .with_fallback(service_fn(|_: Req| async {
            Ok::<_, TestError>("fallback")
        }));
    let handle = layer.handle();
    let inner = Inner::default();
    let counters = inner.counters();
    let mut svc = layer.layer(inner);

    call(&mut svc, fail()).await.unwrap_err();
    assert_eq!(handle.state(), State::Open);
    let (polls, calls) = (counters.polls(), counters.calls());

    assert_eq!(call(&mut svc, ok()).await.unwrap(), "fallback");
    assert_eq!(call(&mut svc, fail()).await.unwrap(), "fallback");
    assert_eq!((counters.polls(), counters.calls()), (polls, calls));
    assert_eq!(
        handle.metrics().not_permitted(),
        2,
        "fallback calls are rejections"
    );
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_the_exact_time_left_until_a_probe() {
    let Harness {
        mut svc, handle, ..
    } = tripping(secs(10));
    trip(&mut svc).await;

    let rejected = rejection(call(&mut svc, ok()).await);
    assert_eq!(rejected.retry_after(), Some(secs(10)));

    advance(ms(3_250)).await;
    let rejected = rejection(call(&mut svc, ok()).await);
    assert_eq!(rejected.retry_after(), Some(ms(6_750)));

    advance(ms(6_750) - NS).await;
    let rejected = rejection(call(&mut svc, ok()).await);
    assert_eq!(rejected.retry_after(), Some(NS));
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn half_open_begins_at_opened_at_plus_interval_inclusive() {
    for before in [NS, ms(1)] {
        let Harness {
            mut svc,
            handle,
            counters,
        } = tripping(secs(10));
        advance(ms(123)).await; // opened_at is not on a second boundary
        trip(&mut svc).await;

        advance(secs(10) - before).await;
        assert_eq!(handle.state(), State::Open, "{before:?} before the end");
        rejection(call(&mut svc, ok()).await);

        advance(before).await;
        assert_eq!(handle.state(), State::HalfOpen, "at opened_at + interval");
        let calls = counters.calls();
        call(&mut svc, ok()).await.unwrap();
        assert_eq!(
            counters.calls(),
            calls + 1,
            "the probe reached the inner service"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn half_open_begins_lazily_on_the_next_call() {
    let Harness {
        mut svc,
        handle,
        counters,
    } = tripping(secs(10));
    let mut events = handle.subscribe();
    trip(&mut svc).await;
    assert_eq!(transitions(&mut events), [(State::Closed, State::Open)]);

    advance(secs(60)).await;
    assert_eq!(
        transitions(&mut events),
        [],
        "no background task moved the state"
    );

    let (req, gate) = gated();
    let probe = start(&mut svc, req).await;
    assert_eq!(counters.calls(), 2, "the call was admitted as a probe");
    assert_eq!(transitions(&mut events), [(State::Open, State::HalfOpen)]);
    gate.open(Reply::Ok);
    probe.await.unwrap();
    assert_eq!(transitions(&mut events), [(State::HalfOpen, State::Closed)]);
}

#[tokio::test(start_paused = true)]
async fn half_open_begins_lazily_on_poll_ready() {
    let Harness {
        mut svc,
        handle,
        counters,
    } = tripping(secs(10));
    let mut events = handle.subscribe();
    trip(&mut svc).await;
    transitions(&mut events);
    let polls = counters.polls();

    advance(secs(10)).await;
    assert_eq!(transitions(&mut events), []);
    let _ = svc.ready().await.unwrap();
    assert_eq!(transitions(&mut events), [(State::Open, State::HalfOpen)]);
    assert_eq!(
        counters.polls(),
        polls + 1,
        "admitted: the inner service is polled"
    );
}

#[tokio::test(start_paused = true)]
async fn half_open_begins_lazily_on_a_state_read() {
    let Harness {
        mut svc, handle, ..
    } = tripping(secs(10));
    let mut events = handle.subscribe();
    trip(&mut svc).await;
    transitions(&mut events);

    advance(secs(10)).await;
    assert_eq!(transitions(&mut events), []);
    assert_eq!(handle.state(), State::HalfOpen);
    assert_eq!(transitions(&mut events), [(State::Open, State::HalfOpen)]);
    assert_eq!(handle.state(), State::HalfOpen);
    assert_eq!(handle.metrics().state(), State::HalfOpen);
    assert_eq!(transitions(&mut events), [], "the transition happened once");
}

#[tokio::test(start_paused = true)]
async fn half_open_begins_lazily_on_a_metrics_read() {
    let Harness {
        mut svc, handle, ..
    } = tripping(secs(10));
    let mut events = handle.subscribe();
    trip(&mut svc).await;
    assert_eq!(transitions(&mut events), [(State::Closed, State::Open)]);

    advance(secs(10)).await;
    // Let any other task run (a timer that would make the transition without a read).
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        transitions(&mut events),
        [],
        "nothing moved the state before the read"
    );
    assert_eq!(handle.metrics().state(), State::HalfOpen);
    assert_eq!(
        transitions(&mut events),
        [(State::Open, State::HalfOpen)],
        "the read made the transition"
    );
}

/// Issue 8, defect 17: a metrics scraper that reads `state()` every 100 ms while no traffic flows
/// must not change what the next call sees. Open -> HalfOpen happens at 1 s whoever looks, and an
/// episode with no probe never expires, so the call at 60 s is a probe either way.
#[tokio::test(start_paused = true)]
async fn reading_the_state_never_changes_what_a_call_sees() {
    let scraped = || {
        harness(
            builder()
                .consecutive_failures(1)
                .open_backoff(Backoff::exponential(secs(1), 2.0, secs(60)))
                .half_open_max_wait(secs(5)),
        )
    };
    let mut read = scraped();
    let mut unread = scraped();
    trip(&mut read.svc).await; // t = 0
    trip(&mut unread.svc).await;

    for _ in 0..600 {
        advance(ms(100)).await;
        read.handle.state();
    }
    // t = 60 s: the same call on both breakers.
    let with_reader = call(&mut read.svc, ok()).await;
    let without_reader = call(&mut unread.svc, ok()).await;
    assert_eq!(
        without_reader.as_ref().map_err(ToString::to_string),
        Ok(&"ok"),
        "admitted as a probe when nobody read the state"
    );
    assert_eq!(
        with_reader.as_ref().map_err(ToString::to_string),
        Ok(&"ok"),
        "admitted as a probe although a reader read the state every 100 ms"
    );
    assert_eq!(read.handle.state(), State::Closed);
    assert_eq!(unread.handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn fixed_open_duration_applies_to_every_attempt() {
    let mut h = tripping(secs(7));
    trip(&mut h.svc).await;
    for _ in 0..4 {
        assert_eq!(current_interval(&mut h).await, secs(7));
        fail_probe(&mut h, secs(7)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn backoff_attempts_count_reopenings_and_reset_on_close() {
    let mut h = backing_off(Backoff::exponential(secs(1), 2.0, secs(10)));

    trip(&mut h.svc).await; // Closed -> Open: attempt 1
    let expected = [1, 2, 4, 8, 10, 10, 10].map(secs);
    for (attempt, &interval) in expected.iter().enumerate() {
        assert_eq!(
            current_interval(&mut h).await,
            interval,
            "attempt {}",
            attempt + 1
        );
        // Still open one nanosecond before the end of exactly this interval.
        advance(interval - NS).await;
        assert_eq!(h.handle.state(), State::Open);
        advance(NS).await;
        assert_eq!(h.handle.state(), State::HalfOpen);
        if attempt + 1 < expected.len() {
            assert_admitted(&call(&mut h.svc, fail()).await); // HalfOpen -> Open: +1
        }
    }

    // Closing resets the attempt: the next opening is attempt 1 again.
    call(&mut h.svc, ok()).await.unwrap();
    assert_eq!(h.handle.state(), State::Closed);
    trip(&mut h.svc).await;
    assert_eq!(current_interval(&mut h).await, secs(1));
    fail_probe(&mut h, secs(1)).await;
    assert_eq!(current_interval(&mut h).await, secs(2));
}

#[tokio::test(start_paused = true)]
async fn backoff_interval_is_exact_for_durations_that_are_not_binary_fractions() {
    let mut h = backing_off(Backoff::exponential(ms(700), 3.0, secs(3600)));
    trip(&mut h.svc).await;
    for interval in [ms(700), ms(2_100), ms(6_300), ms(18_900), ms(56_700)] {
        assert_eq!(current_interval(&mut h).await, interval);
        fail_probe(&mut h, interval).await;
    }

    let mut h = backing_off(Backoff::exponential(ms(100), 1.5, secs(1)));
    trip(&mut h.svc).await;
    for interval in [
        Duration::from_micros(100_000),
        Duration::from_micros(150_000),
        Duration::from_micros(225_000),
        Duration::from_micros(337_500),
        Duration::from_micros(506_250),
        Duration::from_nanos(759_375_000),
        secs(1),
        secs(1),
    ] {
        assert_eq!(current_interval(&mut h).await, interval);
        fail_probe(&mut h, interval).await;
    }
}

#[tokio::test(start_paused = true)]
async fn backoff_with_a_multiplier_of_one_is_constant() {
    let mut h = backing_off(Backoff::exponential(secs(3), 1.0, secs(3)));
    trip(&mut h.svc).await;
    for _ in 0..5 {
        assert_eq!(current_interval(&mut h).await, secs(3));
        fail_probe(&mut h, secs(3)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn backoff_jitter_stays_within_the_fraction_and_never_above_max() {
    let max = secs(5);
    let jitter = 0.5;
    let mut h = backing_off(Backoff::exponential(secs(1), 2.0, max).jitter(jitter));
    let bases = [1, 2, 4, 5, 5].map(secs);
    let mut seen = std::collections::BTreeSet::new();

    for episode in 0..200 {
        h.handle.reset();
        trip(&mut h.svc).await;
        for (attempt, base) in bases.iter().enumerate() {
            let interval = current_interval(&mut h).await;
            let low = base.mul_f64(1.0 - jitter);
            let high = base.mul_f64(1.0 + jitter).min(max);
            assert!(
                low <= interval && interval <= high,
                "episode {episode}, attempt {}: {interval:?} outside [{low:?}, {high:?}]",
                attempt + 1
            );
            assert!(interval <= max, "never above max");
            seen.insert(interval);
            // The circuit half-opens exactly at the jittered interval.
            advance(interval - NS).await;
            assert_eq!(h.handle.state(), State::Open);
            advance(NS).await;
            assert_eq!(h.handle.state(), State::HalfOpen);
            assert_admitted(&call(&mut h.svc, fail()).await);
        }
    }
    assert!(
        seen.len() > 100,
        "jitter varies: {} distinct intervals",
        seen.len()
    );
}

#[tokio::test(start_paused = true)]
async fn backoff_jitter_of_one_stays_between_zero_and_max() {
    let max = secs(8);
    let mut h = backing_off(Backoff::exponential(secs(1), 4.0, max).jitter(1.0));
    for _ in 0..200 {
        h.handle.reset();
        trip(&mut h.svc).await;
        for base in [1, 4, 8].map(secs) {
            let interval = current_interval(&mut h).await;
            assert!(interval <= base * 2 && interval <= max, "{interval:?}");
            fail_probe(&mut h, interval).await;
        }
    }
}
