//! Keyed breakers (feature `keyed`): isolation between keys, the key bound and what it never
//! evicts, idle expiry, the overflow breaker, readiness, operator control and reconfiguration
//! of every key.

#![cfg(feature = "keyed")]

mod support;

use std::future::{Ready, ready};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::noop_waker;
use support::alloc::{Counting, live_bytes};
use support::*;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_circuit_breaker::error::Rejected;
use tower_circuit_breaker::keyed::KeyedBuilder;
use tower_circuit_breaker::{
    CircuitBreakerLayer, KeyedCircuitBreaker, KeyedCircuitBreakerLayer, KeyedHandle, State,
};

#[global_allocator]
static COUNTING: Counting = Counting;

/// A request to `host`, which fails if `fail`.
#[derive(Clone, Copy, Debug)]
struct Call {
    host: u64,
    fail: bool,
}

fn to(host: u64) -> Call {
    Call { host, fail: false }
}

fn failing(host: u64) -> Call {
    Call { host, fail: true }
}

/// The error of a host that is down.
#[derive(Debug)]
struct Down;

impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("down")
    }
}

impl std::error::Error for Down {}

type Answer = Ready<Result<u64, Down>>;
type KeyFn = fn(&Call) -> u64;
type Hosts = KeyedCircuitBreaker<tower::util::ServiceFn<fn(Call) -> Answer>, u64, KeyFn>;

fn answer(call: Call) -> Answer {
    ready(if call.fail { Err(Down) } else { Ok(call.host) })
}

fn host_of(call: &Call) -> u64 {
    call.host
}

/// One breaker per host: opens on 2 consecutive failures, for 10 s.
fn per_host() -> KeyedBuilder<u64, KeyFn> {
    KeyedCircuitBreakerLayer::builder(host_of as KeyFn).breaker(
        CircuitBreakerLayer::builder()
            .name("hosts")
            .consecutive_failures(2)
            .open_duration(OPEN),
    )
}

fn hosts(builder: KeyedBuilder<u64, KeyFn>) -> (Hosts, KeyedHandle<u64>) {
    let layer = builder.build().unwrap();
    let handle = layer.handle();
    (
        layer.layer(service_fn(answer as fn(Call) -> Answer)),
        handle,
    )
}

/// One call, driven by hand: everything here is ready at once.
fn call_now(svc: &mut Hosts, call: Call) -> Result<u64, BoxError> {
    let waker = noop_waker();
    let mut cx = Context::from_waker(&waker);
    assert!(svc.poll_ready(&mut cx).is_ready());
    match pin!(svc.call(call)).poll(&mut cx) {
        Poll::Ready(result) => result,
        Poll::Pending => panic!("not ready at once"),
    }
}

fn trip_host(svc: &mut Hosts, host: u64) {
    for _ in 0..2 {
        assert_eq!(
            call_now(svc, failing(host)).unwrap_err().to_string(),
            "down"
        );
    }
}

fn state_of(handle: &KeyedHandle<u64>, host: u64) -> Option<State> {
    handle.get(&host).map(|h| h.state())
}

#[tokio::test(start_paused = true)]
async fn a_failing_host_opens_only_its_own_breaker() {
    let (mut svc, handle) = hosts(per_host());
    for host in 1..=3 {
        call_now(&mut svc, to(host)).unwrap();
    }
    trip_host(&mut svc, 2);

    assert_eq!(state_of(&handle, 2), Some(State::Open));
    assert_eq!(state_of(&handle, 1), Some(State::Closed));
    assert_eq!(state_of(&handle, 3), Some(State::Closed));
    let err = call_now(&mut svc, to(2)).unwrap_err();
    let rejected = err.downcast_ref::<Rejected>().expect("a rejection");
    assert_eq!(rejected.name(), Some("hosts"));
    assert_eq!(call_now(&mut svc, to(1)).unwrap(), 1);
    assert_eq!(
        call_now(&mut svc, to(4)).unwrap(),
        4,
        "a new host starts closed"
    );

    let h2 = handle.get(&2).unwrap();
    assert_eq!((h2.name(), h2.key()), (Some("hosts"), Some("2")));
    assert_eq!(h2.metrics().not_permitted(), 1);
    assert_eq!(handle.len(), 4);
}

/// An event names the keyed breaker it comes from: the layer's name and the key, as its handle
/// does, so that one consumer of many keys' events can tell them apart.
/// Each key's breaker batches its own successes while its window holds a failure: calls to two
/// hosts interleaved, each host's window and totals count its own calls once.
#[tokio::test(start_paused = true)]
async fn each_keys_batched_successes_count_once_in_its_own_breaker() {
    let (mut svc, handle) = hosts(
        KeyedCircuitBreakerLayer::builder(host_of as KeyFn).breaker(
            CircuitBreakerLayer::builder()
                .sliding_window(tower_circuit_breaker::Window::time(secs(60)).buckets(1))
                .minimum_calls(1)
                .failure_rate_threshold(1.0),
        ),
    );
    for host in [1, 2] {
        call_now(&mut svc, to(host)).unwrap(); // under the lock: opens the host's batch
        call_now(&mut svc, failing(host)).unwrap_err();
    }
    for i in 0..60 {
        let host = 1 + i % 2;
        call_now(&mut svc, to(host)).unwrap();
    }
    call_now(&mut svc, to(1)).unwrap();
    for (host, successes) in [(1, 32), (2, 31)] {
        let m = handle.get(&host).unwrap().metrics();
        assert_eq!((m.calls(), m.failed()), (successes + 1, 1), "host {host}");
        let totals = m.totals();
        assert_eq!(
            (totals.successful(), totals.failed()),
            (successes, 1),
            "host {host}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_keyed_breakers_events_carry_the_layers_name_and_its_key() {
    use futures::StreamExt;
    let (mut svc, handle) = hosts(per_host());
    call_now(&mut svc, to(2)).unwrap();
    let mut events = handle.get(&2).unwrap().subscribe();
    trip_host(&mut svc, 2);
    let event = events.next().await.expect("the opening");
    assert_eq!((event.name(), event.key()), (Some("hosts"), Some("2")));
}

#[tokio::test(start_paused = true)]
async fn a_rejected_call_never_touches_the_inner_service() {
    let inner = Inner::default();
    let counters = inner.counters();
    let layer = KeyedCircuitBreakerLayer::builder(|_: &Req| "only")
        .breaker(builder().consecutive_failures(1))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(inner);
    assert_admitted(&call(&mut svc, fail()).await);
    let (polls, calls) = (counters.polls(), counters.calls());

    let err = call(&mut svc, ok()).await.unwrap_err();
    assert!(err.is::<Rejected>());
    assert_eq!((counters.polls(), counters.calls()), (polls, calls));
    assert_eq!(handle.get(&"only").unwrap().state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn the_keyed_service_is_ready_while_the_inner_service_is_not() {
    let (inner, mut mock) = tower_test::mock::pair::<u32, u32>();
    let layer = KeyedCircuitBreakerLayer::builder(|n: &u32| *n % 2)
        .breaker(CircuitBreakerLayer::builder().consecutive_failures(1))
        .build()
        .unwrap();
    let keys = layer.handle();
    let mut svc = tower_test::mock::Spawn::new(layer.layer(inner));
    mock.allow(0);
    tokio_test::assert_ready_ok!(svc.poll_ready());
    // The call waits for the inner service's readiness in its future.
    let mut response = tokio_test::task::spawn(svc.call(7));
    tokio_test::assert_pending!(response.poll());
    mock.allow(1);
    assert!(response.is_woken());
    tokio_test::assert_pending!(response.poll());
    let (request, send) = mock.next_request().await.unwrap();
    assert_eq!(request, 7);
    send.send_response(14);
    assert_eq!(response.await.unwrap(), 14);

    // An open key answers at once, without waiting for the inner service.
    keys.get(&1).unwrap().force_open();
    tokio_test::assert_ready_ok!(svc.poll_ready());
    let err = svc.call(9).await.unwrap_err();
    assert!(err.is::<Rejected>());
}

/// Live bytes of this thread after `keys` calls, each to a new host.
fn calls_to_new_hosts(svc: &mut Hosts, first: u64, keys: u64) {
    for host in first..first + keys {
        call_now(svc, to(host)).unwrap();
    }
}

#[test]
fn the_key_bound_holds_under_100_000_distinct_keys_and_memory_stops_growing() {
    const MAX: usize = 1_000;
    let (mut svc, handle) = hosts(per_host().max_keys(MAX).no_idle_timeout());
    // At the bound, a scan evicts up to a sixteenth of a shard's idle breakers at once.
    let full = |len: usize| (MAX - MAX / 16..=MAX).contains(&len);
    calls_to_new_hosts(&mut svc, 0, 10_000);
    assert!(full(handle.len()), "{}", handle.len());
    let warm = live_bytes();
    let mut checkpoints = Vec::new();
    for round in 1..10 {
        calls_to_new_hosts(&mut svc, round * 10_000, 10_000);
        let len = handle.len();
        assert!(
            full(len),
            "{len} breakers after {} keys",
            (round + 1) * 10_000
        );
        checkpoints.push(live_bytes() - warm);
    }
    // 90,000 keys later the heap holds 1,000 breakers still (1.5 MB): the evicted ones were
    // freed. What grows is the shards' hash tables, each up to the largest share of the 1,000
    // keys it ever held, in a few steps of a few KiB (a leak of 3 bytes per key would be more).
    let grown = *checkpoints.iter().max().unwrap();
    assert!(grown < 256 * 1024, "grew by {grown} B: {checkpoints:?}");
    let late = checkpoints[8] - checkpoints[4];
    assert!(
        late < 64 * 1024,
        "the last 50,000 keys grew it by {late} B: {checkpoints:?}"
    );
    assert_eq!(handle.overflow().metrics().calls(), 0, "no key overflowed");
    // The newest keys have their breakers.
    assert!(handle.get(&99_999).is_some());
}

/// An idle key (one call, then nothing) costs at most 2 KiB of heap: its breaker, its window, its
/// key and its place in the map. What only some breakers need (exported metrics' handles, the
/// lifetime transition counts) is boxed when first needed, so an idle breaker does not carry it.
#[test]
fn an_idle_key_costs_at_most_2_kib() {
    let (mut svc, handle) = hosts(per_host().max_keys(20_000).no_idle_timeout());
    calls_to_new_hosts(&mut svc, 0, 100);
    let before = live_bytes();
    calls_to_new_hosts(&mut svc, 100, 10_000);
    let per_key = (live_bytes() - before) / 10_000;
    assert_eq!(handle.len(), 10_100);
    assert!(per_key <= 2048, "{per_key} B per idle key");
}

#[tokio::test(start_paused = true)]
async fn eviction_never_drops_an_open_breaker() {
    let (mut svc, handle) = hosts(per_host().max_keys(10).no_idle_timeout());
    // 5 open, 5 closed.
    for host in 0..10 {
        call_now(&mut svc, to(host)).unwrap();
    }
    for host in 0..5 {
        trip_host(&mut svc, host);
    }
    // 100 new keys: the closed breakers make room, the open ones stay.
    calls_to_new_hosts(&mut svc, 100, 100);
    assert_eq!(handle.len(), 10);
    for host in 0..5 {
        assert_eq!(state_of(&handle, host), Some(State::Open), "host {host}");
    }
    assert!((5..10).all(|host| state_of(&handle, host).is_none()));

    // Every breaker open: a new key shares the overflow breaker, and the open ones stay.
    for host in 195..200 {
        trip_host(&mut svc, host);
    }
    assert_eq!(call_now(&mut svc, to(1_000)).unwrap(), 1_000);
    assert_eq!(handle.get(&1_000).map(|h| h.state()), None);
    assert_eq!(handle.overflow().metrics().calls(), 1);
    assert_eq!(handle.overflow().key(), Some("(overflow)"));
    for host in (0..5).chain(195..200) {
        assert_eq!(state_of(&handle, host), Some(State::Open), "host {host}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_overflow_breaker_guards_new_keys_when_every_key_is_open() {
    let (mut svc, handle) = hosts(per_host().max_keys(2).no_idle_timeout());
    trip_host(&mut svc, 1);
    trip_host(&mut svc, 2);
    // New hosts fail as well: they open the overflow breaker, which rejects them all.
    trip_host(&mut svc, 3);
    assert_eq!(handle.overflow().state(), State::Open);
    assert!(call_now(&mut svc, to(4)).unwrap_err().is::<Rejected>());

    // Once a breaker has recovered (its open interval is over, nobody probed it), it may go: a
    // new key gets a breaker of its own again.
    tokio::time::advance(OPEN).await;
    assert_eq!(call_now(&mut svc, to(5)).unwrap(), 5);
    assert_eq!(state_of(&handle, 5), Some(State::Closed));
    assert_eq!(handle.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn operator_states_are_never_evicted() {
    let (mut svc, handle) = hosts(per_host().max_keys(3).no_idle_timeout());
    for host in 1..=3 {
        call_now(&mut svc, to(host)).unwrap();
    }
    handle.get(&1).unwrap().force_open();
    handle.get(&2).unwrap().disable();
    handle.get(&3).unwrap().metrics_only();
    call_now(&mut svc, to(4)).unwrap();
    assert_eq!(handle.overflow().metrics().calls(), 1);
    assert_eq!(state_of(&handle, 1), Some(State::ForcedOpen));
    assert_eq!(state_of(&handle, 2), Some(State::Disabled));
    assert_eq!(state_of(&handle, 3), Some(State::MetricsOnly));
}

#[tokio::test(start_paused = true)]
async fn a_call_in_flight_or_a_kept_handle_keeps_its_breaker() {
    let layer = KeyedCircuitBreakerLayer::builder(|(key, _): &(u32, Req)| *key)
        .breaker(builder())
        .max_keys(1)
        .no_idle_timeout()
        .build()
        .unwrap();
    let keys = layer.handle();
    let inner = Inner::default();
    let svc = layer.layer(service_fn(move |(_, req): (u32, Req)| {
        let mut inner = inner.clone();
        inner.call(req)
    }));
    let (req, gate) = gated();
    let in_flight = tokio::spawn(svc.clone().oneshot((1, req)));
    tokio::task::yield_now().await;

    // Key 1 is in use: key 2 overflows.
    svc.clone().oneshot((2, ok())).await.unwrap();
    assert!(keys.get(&1).is_some());
    assert!(keys.get(&2).is_none());

    gate.open(Reply::Ok);
    in_flight.await.unwrap().unwrap();
    // A kept handle holds it too.
    let kept = keys.get(&1).unwrap();
    svc.clone().oneshot((3, ok())).await.unwrap();
    assert!(keys.get(&3).is_none());
    drop(kept);
    // Now it may go.
    svc.clone().oneshot((4, ok())).await.unwrap();
    assert!(keys.get(&4).is_some() && keys.get(&1).is_none());
    assert_eq!(keys.overflow().metrics().calls(), 2);
}

/// A call made but not polled yet holds its key's breaker (its service has taken no lane yet): a
/// new key overflows rather than evict it.
#[tokio::test(start_paused = true)]
async fn a_call_not_polled_yet_keeps_its_breaker() {
    let (mut svc, handle) = hosts(per_host().max_keys(1).no_idle_timeout());
    let waker = noop_waker();
    let mut cx = Context::from_waker(&waker);
    assert!(svc.poll_ready(&mut cx).is_ready());
    let unpolled = svc.call(to(1));
    call_now(&mut svc, to(2)).unwrap();
    assert!(handle.get(&1).is_some(), "key 1 is in use");
    assert!(handle.get(&2).is_none(), "key 2 overflows");
    assert_eq!(handle.overflow().metrics().calls(), 1);
    match pin!(unpolled).poll(&mut cx) {
        Poll::Ready(result) => assert_eq!(result.unwrap(), 1),
        Poll::Pending => panic!("not ready at once"),
    }
}

/// A half-open breaker that admitted no probe yet has recovered: a new key may take its place. One
/// whose episode started (a probe succeeded, one more is needed) stays: a new key overflows.
#[tokio::test(start_paused = true)]
async fn a_half_open_breaker_may_be_evicted_only_before_its_first_probe() {
    let (mut svc, handle) = hosts(
        KeyedCircuitBreakerLayer::builder(host_of as KeyFn)
            .breaker(
                CircuitBreakerLayer::builder()
                    .name("hosts")
                    .consecutive_failures(2)
                    .open_duration(OPEN)
                    .half_open_calls(2),
            )
            .max_keys(1)
            .no_idle_timeout(),
    );
    trip_host(&mut svc, 1);
    tokio::time::advance(OPEN).await;
    assert_eq!(state_of(&handle, 1), Some(State::HalfOpen));
    call_now(&mut svc, to(2)).unwrap();
    assert!(handle.get(&1).is_none(), "no probe yet: evicted");
    assert_eq!(state_of(&handle, 2), Some(State::Closed));

    trip_host(&mut svc, 2);
    tokio::time::advance(OPEN).await;
    call_now(&mut svc, to(2)).unwrap(); // a probe: 1 success of 2
    assert_eq!(state_of(&handle, 2), Some(State::HalfOpen));
    call_now(&mut svc, to(3)).unwrap();
    assert!(handle.get(&3).is_none(), "key 3 overflows");
    assert_eq!(state_of(&handle, 2), Some(State::HalfOpen));
}

#[tokio::test(start_paused = true)]
async fn an_idle_breaker_expires_and_a_used_one_stays() {
    let (mut svc, handle) = hosts(per_host().idle_timeout(Duration::from_secs(60)));
    call_now(&mut svc, to(1)).unwrap();
    call_now(&mut svc, to(2)).unwrap();
    tokio::time::advance(Duration::from_secs(20)).await;
    call_now(&mut svc, to(3)).unwrap(); // a new key: a sweep (notes that 1 and 2 were used)
    tokio::time::advance(Duration::from_secs(40)).await;
    call_now(&mut svc, to(2)).unwrap(); // 2 is used again
    tokio::time::advance(Duration::from_secs(25)).await;
    // 1 is idle since the sweep 65 s ago at least; 2 was used 25 s ago.
    assert_eq!(handle.evict_idle(), 1);
    assert!(handle.get(&1).is_none());
    assert!(handle.get(&2).is_some() && handle.get(&3).is_some());
    assert_eq!(handle.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_does_not_expire_while_it_rejects() {
    let (mut svc, handle) = hosts(
        KeyedCircuitBreakerLayer::builder(host_of as KeyFn)
            .breaker(
                CircuitBreakerLayer::builder()
                    .consecutive_failures(2)
                    .open_duration(Duration::from_secs(600)),
            )
            .idle_timeout(Duration::from_secs(60)),
    );
    trip_host(&mut svc, 1);
    for _ in 0..5 {
        tokio::time::advance(Duration::from_secs(100)).await;
        assert_eq!(handle.evict_idle(), 0);
        assert_eq!(state_of(&handle, 1), Some(State::Open));
    }
    // The open interval is over and nobody probed: it rejects nobody, and it is idle.
    tokio::time::advance(Duration::from_secs(100)).await;
    assert_eq!(handle.evict_idle(), 1);
    assert!(handle.is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_keyed_handle_controls_every_key_and_the_keys_to_come() {
    let (mut svc, handle) = hosts(per_host());
    call_now(&mut svc, to(1)).unwrap();
    handle.force_open();
    assert_eq!(state_of(&handle, 1), Some(State::ForcedOpen));
    assert!(call_now(&mut svc, to(2)).unwrap_err().is::<Rejected>());
    assert_eq!(state_of(&handle, 2), Some(State::ForcedOpen));
    assert_eq!(handle.overflow().state(), State::ForcedOpen);

    handle.reset();
    assert_eq!(call_now(&mut svc, to(3)).unwrap(), 3);
    for host in 1..=3 {
        assert_eq!(state_of(&handle, host), Some(State::Closed));
    }
    // One key alone.
    handle.get(&3).unwrap().force_open();
    assert!(call_now(&mut svc, to(3)).unwrap_err().is::<Rejected>());
    assert_eq!(call_now(&mut svc, to(1)).unwrap(), 1);
    assert!(handle.remove(&3));
    assert_eq!(
        call_now(&mut svc, to(3)).unwrap(),
        3,
        "removed: a new breaker"
    );
}

#[tokio::test(start_paused = true)]
async fn reconfiguring_a_keyed_layer_reaches_every_key_and_the_keys_to_come() {
    let (mut svc, handle) = hosts(per_host());
    call_now(&mut svc, failing(1)).unwrap_err();
    let bad = handle.config().consecutive_failures(0);
    assert_eq!(
        handle.reconfigure(bad).unwrap_err().field(),
        "consecutive_failures"
    );

    handle
        .reconfigure(handle.config().consecutive_failures(1))
        .unwrap();
    // Key 1 kept its failure count and now trips at one.
    assert_eq!(handle.get(&1).unwrap().metrics().consecutive_failures(), 1);
    call_now(&mut svc, failing(1)).unwrap_err();
    assert_eq!(state_of(&handle, 1), Some(State::Open));
    // A new key trips at one too.
    call_now(&mut svc, failing(2)).unwrap_err();
    assert_eq!(state_of(&handle, 2), Some(State::Open));
    assert!(format!("{:?}", handle.config()).contains("consecutive_failures: Some(1)"));
}

#[tokio::test(start_paused = true)]
async fn the_key_text_comes_from_the_builder() {
    let layer = KeyedCircuitBreakerLayer::builder(|req: &(Option<u8>, ())| req.0)
        .key_text(|key: &Option<u8>| match key {
            Some(n) => format!("tenant-{n}"),
            None => "anonymous".into(),
        })
        .build()
        .unwrap();
    let keys = layer.handle();
    let svc = layer.layer(service_fn(|_: (Option<u8>, ())| async {
        Ok::<_, std::io::Error>(())
    }));
    svc.clone().oneshot((Some(7), ())).await.unwrap();
    svc.clone().oneshot((None, ())).await.unwrap();
    let mut texts: Vec<String> = keys
        .handles()
        .iter()
        .map(|(_, h)| h.key().unwrap().to_string())
        .collect();
    texts.sort();
    assert_eq!(texts, ["anonymous", "tenant-7"]);
}

#[test]
fn bad_bounds_are_refused() {
    let err = per_host().max_keys(0).build().unwrap_err();
    assert_eq!((err.field(), err.allowed()), ("max_keys", "at least 1"));
    let err = per_host().idle_timeout(Duration::ZERO).build().unwrap_err();
    assert_eq!(err.field(), "idle_timeout");
    let err = KeyedCircuitBreakerLayer::builder(host_of as KeyFn)
        .breaker(CircuitBreakerLayer::builder().half_open_calls(0))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "half_open_calls");
}

#[tokio::test(start_paused = true)]
async fn a_fallback_answers_a_rejected_key() {
    let layer = per_host()
        .build()
        .unwrap()
        .with_fallback(service_fn(|_: Call| ready(Ok::<u64, Down>(0))));
    let handle = layer.handle();
    let svc = layer.layer(service_fn(answer as fn(Call) -> Answer));
    for _ in 0..2 {
        svc.clone().oneshot(failing(5)).await.unwrap_err();
    }
    assert_eq!(svc.clone().oneshot(to(5)).await.unwrap(), 0, "the fallback");
    assert_eq!(svc.clone().oneshot(to(6)).await.unwrap(), 6);
    assert_eq!(handle.get(&5).unwrap().metrics().not_permitted(), 1);
}

/// Many tasks on a multi-thread runtime, each calling many keys (new and existing) of one
/// keyed layer while the configuration of every key is swapped: no call is lost, and every
/// key's state is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keyed_reconfiguration_under_concurrent_load_loses_no_call() {
    const TASKS: u64 = 8;
    const CALLS: u64 = 2_000;
    let answered = Arc::new(AtomicUsize::new(0));
    let layer = KeyedCircuitBreakerLayer::builder(|call: &Call| call.host)
        .breaker(CircuitBreakerLayer::builder().consecutive_failures(3))
        .max_keys(64)
        .build()
        .unwrap();
    let keys = layer.handle();
    // Host 1000 is down and stays open (forced, so that no open interval ends).
    let svc = {
        let answered = answered.clone();
        layer.layer(service_fn(move |call: Call| {
            answered.fetch_add(1, Ordering::Relaxed);
            answer(call)
        }))
    };
    for _ in 0..3 {
        svc.clone().oneshot(failing(1000)).await.unwrap_err();
    }
    assert_eq!(state_of(&keys, 1000), Some(State::Open));
    keys.get(&1000).unwrap().force_open();
    let before = answered.load(Ordering::Relaxed);

    // The swapper makes SWAPS reconfigurations; every task calls until it has made CALLS calls
    // and the swapper is done, yielding now and then: the swaps all happen under load.
    const SWAPS: u32 = 200;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (keys, done) = (keys.clone(), done.clone());
        tokio::spawn(async move {
            for swap in 0..SWAPS {
                let n = 3 + swap % 2;
                keys.reconfigure(keys.config().consecutive_failures(n))
                    .unwrap();
                tokio::task::yield_now().await;
            }
            done.store(true, Ordering::Release);
        })
    };
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (svc, done) = (svc.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let (mut calls, mut rejected) = (0u64, 0u64);
            while calls < CALLS || !done.load(Ordering::Acquire) {
                // 40 hosts shared by all tasks, and the host that is down.
                let i = calls;
                let host = if i % 50 == 0 { 1000 } else { (i * 7 + t) % 40 };
                match svc.clone().oneshot(to(host)).await {
                    Ok(n) => assert_eq!(n, host),
                    Err(e) => {
                        assert!(e.is::<Rejected>() && host == 1000, "{host}: {e}");
                        rejected += 1;
                    }
                }
                calls += 1;
                if calls % 16 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            // Every call to the host that is down was rejected, and no other.
            assert_eq!(rejected, calls.div_ceil(50));
            (calls, rejected)
        }));
    }
    let (mut calls, mut rejected) = (0, 0);
    for task in tasks {
        let (c, r) = task.await.unwrap();
        calls += c;
        rejected += r;
    }
    swapper.await.unwrap();
    assert_eq!(
        answered.load(Ordering::Relaxed) - before,
        (calls - rejected) as usize
    );
    assert_eq!(state_of(&keys, 1000), Some(State::ForcedOpen));
    assert_eq!(keys.get(&1000).unwrap().metrics().not_permitted(), rejected);
    for host in 0..40 {
        assert_eq!(state_of(&keys, host), Some(State::Closed), "host {host}");
    }
}
