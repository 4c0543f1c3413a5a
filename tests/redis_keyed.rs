//! Every key of a keyed layer shared through a real Redis server on loopback (features `redis`
//! and `keyed`): two keyed layers of one name stand for two instances, each with its own
//! `Fleet`. Real time: the bounds are waited for by events, with a timeout, never by sleeps.

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use support::redis::{namespace, shared_server, transition_to, until};
use tokio::time::Instant;
use tower::{BoxError, Layer, ServiceExt};
use tower_circuit_breaker::redis::{Fleet, FleetBuilder, SharedKeyed};
use tower_circuit_breaker::{Builder, CircuitBreakerLayer, KeyedHandle, State};

/// The stated bound for a follower: one interval plus a round trip; with the slack of a loaded
/// test machine.
const FOLLOW: Duration = Duration::from_millis(50 + 450);
/// The open interval of the probe test, and its fleet's interval (see tests/redis.rs: each
/// instance claims a key's probe lease one fleet interval before the key's open interval ends).
const PROBES_OPEN: Duration = Duration::from_secs(2);
const PROBES_INTERVAL: Duration = Duration::from_millis(1500);
/// A bound on a wait for something that a test's rule says happens, where the rule is not how
/// fast (a guard against a hang, generous for a loaded machine).
const EVENTUALLY: Duration = Duration::from_secs(5);
/// The fleet's command timeout: none of these tests is about a slow or absent Redis (see
/// tests/redis.rs). A loaded test machine can keep the server from answering within the default
/// 250 ms, and an instance that counts Redis unreachable goes on alone (its own probes, and a
/// read of every key's state once it is back).
const PATIENT: Duration = Duration::from_secs(5);

/// The dependency: each key answers as its mode says; counts the calls that reach it per key.
#[derive(Clone, Default)]
struct Dependency {
    failing: Arc<Mutex<HashSet<String>>>,
    hanging: Arc<Mutex<HashSet<String>>>,
    calls: Arc<Mutex<Vec<String>>>,
}

impl Dependency {
    fn fail(&self, key: &str, on: bool) {
        set(&self.failing, key, on);
    }

    fn hang(&self, key: &str, on: bool) {
        set(&self.hanging, key, on);
    }

    fn calls(&self, key: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|k| *k == key)
            .count()
    }
}

fn set(set: &Mutex<HashSet<String>>, key: &str, on: bool) {
    let mut set = set.lock().unwrap();
    if on {
        set.insert(key.to_owned());
    } else {
        set.remove(key);
    }
}

type Call = tower::util::BoxCloneSyncService<String, (), BoxError>;

/// One instance: a keyed layer named "hosts" over `dependency`, shared through its own fleet.
struct Instance {
    hosts: KeyedHandle<String>,
    call: Call,
    shared: SharedKeyed,
}

impl Instance {
    /// An instance whose fleet waits [`PATIENT`] for each Redis command.
    async fn new(url: &str, ns: &str, builder: Builder, max_keys: usize, d: &Dependency) -> Self {
        let fleet = Fleet::builder(ns).timeout(PATIENT);
        Instance::sharing(fleet, url, builder, max_keys, d).await
    }

    /// An instance sharing through `fleet`.
    async fn sharing(
        fleet: FleetBuilder,
        url: &str,
        builder: Builder,
        max_keys: usize,
        d: &Dependency,
    ) -> Self {
        let layer =
            tower_circuit_breaker::KeyedCircuitBreakerLayer::builder(|k: &String| k.clone())
                .breaker(builder.name("hosts"))
                .max_keys(max_keys)
                .build()
                .unwrap();
        let hosts = layer.handle();
        let shared = fleet.build(url).unwrap().share_keyed(&hosts).unwrap();
        let d = d.clone();
        let service = tower::service_fn(move |key: String| {
            let d = d.clone();
            async move {
                d.calls.lock().unwrap().push(key.clone());
                loop {
                    if d.failing.lock().unwrap().contains(&key) {
                        return Err(BoxError::from("down"));
                    }
                    if !d.hanging.lock().unwrap().contains(&key) {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        let call = Call::new(layer.layer(service));
        until(Duration::from_secs(5), "never reached Redis", || {
            shared.is_reachable()
        })
        .await;
        Instance {
            hosts,
            call,
            shared,
        }
    }

    async fn call(&self, key: &str) -> Result<(), BoxError> {
        self.call.clone().oneshot(key.to_owned()).await
    }

    fn state(&self, key: &str) -> State {
        self.hosts
            .get(&key.to_owned())
            .expect("the key has a breaker")
            .state()
    }
}

/// Two instances in `ns`, each with keys "a" and "b" (made after the sharing started).
async fn pair(url: &str, ns: &str, d: &Dependency) -> (Instance, Instance) {
    let one = Instance::new(url, ns, builder(), 100, d).await;
    let two = Instance::new(url, ns, builder(), 100, d).await;
    for key in ["a", "b"] {
        one.call(key).await.unwrap();
        two.call(key).await.unwrap();
    }
    // Once a tick carried both keys, they are idle: only the subscription tells them more.
    for instance in [&one, &two] {
        let synced = || instance.shared.keys_synced() >= 2;
        until(Duration::from_secs(5), "the new keys never synced", synced).await;
    }
    (one, two)
}

fn builder() -> Builder {
    CircuitBreakerLayer::builder()
        .consecutive_failures(3)
        .open_duration(Duration::from_secs(5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_opening_reaches_that_key_on_the_other_instance_and_no_other_key() {
    let (url, _server) = shared_server();
    let ns = namespace("keyed-follow");
    let d = Dependency::default();
    // Keys made after the sharing started are shared too.
    let (one, two) = pair(&url, &ns, &d).await;
    let mut two_a = two.hosts.get(&"a".to_owned()).unwrap().subscribe();
    d.fail("a", true);
    for _ in 0..3 {
        let _ = one.call("a").await;
    }
    assert_eq!(one.state("a"), State::Open);
    let followed = transition_to(&mut two_a, State::Open, Duration::from_secs(2)).await;
    let followed = followed.expect("a never opened on instance two");
    assert!(
        followed < FOLLOW,
        "a opened {followed:?} after instance one"
    );
    assert_eq!(
        d.calls("a"),
        5,
        "instance two sent no failing call of its own"
    );
    assert!(two.call("a").await.is_err());
    assert_eq!(
        (one.state("b"), two.state("b")),
        (State::Closed, State::Closed)
    );
    two.call("b").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_after_the_fleet_opened_it_follows_at_its_first_tick() {
    let (url, _server) = shared_server();
    let ns = namespace("keyed-late");
    let d = Dependency::default();
    let one = Instance::new(&url, &ns, builder(), 100, &d).await;
    let two = Instance::new(&url, &ns, builder(), 100, &d).await;
    d.fail("c", true);
    for _ in 0..3 {
        let _ = one.call("c").await;
    }
    assert_eq!(one.state("c"), State::Open);
    // Instance two has no breaker for "c": the published opening makes none.
    assert!(two.hosts.get(&"c".to_owned()).is_none());
    d.fail("c", false);
    let _ = two.call("c").await; // made by this call, which it admits
    let mut events = two.hosts.get(&"c".to_owned()).unwrap().subscribe();
    if two.state("c") != State::Open {
        let followed = transition_to(&mut events, State::Open, FOLLOW).await;
        assert!(
            followed.is_some(),
            "the new key never read the fleet's state"
        );
    }
    assert!(two.call("c").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_probes_each_key_for_the_fleet() {
    let (url, _server) = shared_server();
    let ns = namespace("keyed-probes");
    let builder = || {
        CircuitBreakerLayer::builder()
            .consecutive_failures(1)
            .open_duration(PROBES_OPEN)
            .half_open_calls(2)
    };
    let d = Dependency::default();
    let mut instances = Vec::new();
    for _ in 0..3 {
        let fleet = Fleet::builder(&ns)
            .timeout(PATIENT)
            .interval(PROBES_INTERVAL);
        let instance = Instance::sharing(fleet, &url, builder(), 100, &d).await;
        instance.call("a").await.unwrap();
        instances.push(Arc::new(instance));
    }
    let mut events: Vec<_> = instances
        .iter()
        .map(|i| i.hosts.get(&"a".to_owned()).unwrap().subscribe())
        .collect();
    d.fail("a", true);
    let opened = Instant::now();
    let _ = instances[0].call("a").await;
    for e in &mut events[1..] {
        assert!(transition_to(e, State::Open, EVENTUALLY).await.is_some());
    }
    // Key "a" hangs: probes stay in flight, and every instance keeps calling.
    d.hang("a", true);
    d.fail("a", false);
    let before = d.calls("a");
    let mut calls = Vec::new();
    let deadline = opened + PROBES_OPEN + Duration::from_millis(600);
    while Instant::now() < deadline {
        for instance in &instances {
            let instance = instance.clone();
            calls.push(tokio::spawn(async move { instance.call("a").await }));
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    assert_eq!(
        d.calls("a") - before,
        2,
        "half_open_calls over the fleet, per key"
    );
    let probing = instances
        .iter()
        .filter(|i| i.state("a") == State::HalfOpen)
        .count();
    assert_eq!(probing, 1);
    d.hang("a", false);
    for e in &mut events {
        assert!(transition_to(e, State::Closed, EVENTUALLY).await.is_some());
    }
    for call in calls {
        let _ = call.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_shared_key_is_still_evicted() {
    let (url, _server) = shared_server();
    let ns = namespace("keyed-evict");
    let d = Dependency::default();
    let one = Instance::new(&url, &ns, builder(), 1, &d).await;
    one.call("a").await.unwrap();
    // The stream of a's events ends when a's breaker is dropped: nothing else keeps it.
    let mut a_events = one.hosts.get(&"a".to_owned()).unwrap().subscribe();
    // Once the task has seen "a" (its first tick synced it), a new key takes its place.
    until(Duration::from_secs(5), "no tick", || {
        one.shared.commands_sent() >= 3
    })
    .await;
    let start = Instant::now();
    while one.hosts.get(&"a".to_owned()).is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "a is never evicted"
        );
        one.call("b").await.unwrap();
    }
    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        while a_events.next().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "a's breaker is still alive");
    assert_eq!(one.hosts.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keys_cost_no_redis_commands() {
    let (url, _server) = shared_server();
    let ns = namespace("keyed-idle");
    // The 1,000 keys are made, and their one call each recorded, before the sharing starts: the
    // task then holds them all from its start, and syncs each exactly twice (its first tick, and
    // again once subscribed). Keys made after the sharing started reach the task one by one
    // while it ticks, and a key synced before its call was recorded is synced again when it
    // is: on a loaded machine, those syncs spill into any window measured after a fixed
    // number of ticks.
    let layer = tower_circuit_breaker::KeyedCircuitBreakerLayer::builder(|k: &String| k.clone())
        .breaker(builder().name("hosts"))
        .max_keys(10_000)
        .build()
        .unwrap();
    let hosts = layer.handle();
    let svc = layer.layer(tower::service_fn(|_: String| async {
        Ok::<_, BoxError>(())
    }));
    for i in 0..1_000 {
        svc.clone().oneshot(format!("k{i}")).await.unwrap();
    }
    assert_eq!(hosts.len(), 1_000);
    let fleet = Fleet::builder(&ns).timeout(PATIENT).build(url.as_str());
    let shared = fleet.unwrap().share_keyed(&hosts).unwrap();
    until(EVENTUALLY, "the keys were never synced twice", || {
        shared.keys_synced() >= 2_000
    })
    .await;
    // One key stays in use: one script per tick for it, none for the 999 idle ones.
    let (shared, svc) = (&shared, &svc);
    let wait_for = |n: u64| async move {
        let start = Instant::now();
        while shared.commands_sent() < n {
            assert!(start.elapsed() < Duration::from_secs(10), "no tick");
            svc.clone().oneshot("k0".to_owned()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    let (from, keys) = (shared.commands_sent(), shared.keys_synced());
    wait_for(from + 20).await;
    let (commands, keys) = (shared.commands_sent() - from, shared.keys_synced() - keys);
    // One script per tick, carrying the one key in use.
    assert!(
        keys <= commands,
        "{keys} keys in {commands} scripts: idle keys are sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_data_under_a_keys_record_is_ignored_and_replaced() {
    let (url, _server) = shared_server();
    let ns = namespace("keyed-garbage");
    let prefix = format!("tcb:1:{{{ns}:hosts:a}}:");
    let client = ::redis::Client::open(url.as_str()).unwrap();
    // Not the client's default 500 ms response timeout: a loaded machine can exceed it.
    let patient = ::redis::AsyncConnectionConfig::new().set_response_timeout(Some(PATIENT));
    let connection = client.get_multiplexed_async_connection_with_config(&patient);
    let mut c = connection.await.unwrap();
    let mut pipe = ::redis::pipe();
    pipe.cmd("HSET")
        .arg(format!("{prefix}state"))
        .arg("x")
        .arg("y");
    pipe.cmd("SET").arg(format!("{prefix}w:0:1")).arg("garbage");
    let _: () = pipe.query_async(&mut c).await.unwrap();
    let d = Dependency::default();
    let (one, two) = pair(&url, &ns, &d).await;
    let mut two_a = two.hosts.get(&"a".to_owned()).unwrap().subscribe();
    // Well formed, but a thousand years ahead: not an opening of this breaker's kind.
    let far = "1 open 33000000000000 abcdef";
    let mut pipe = ::redis::pipe();
    pipe.cmd("PUBLISH")
        .arg(format!("{prefix}events"))
        .arg("1 open 99 not:ours!\u{1}");
    pipe.cmd("PUBLISH").arg(format!("{prefix}events")).arg(far);
    pipe.cmd("SET").arg(format!("{prefix}state")).arg(far);
    let _: () = pipe.query_async(&mut c).await.unwrap();
    // The keys keep being called, so their ticks read the garbage.
    let from = two.shared.commands_sent();
    while two.shared.commands_sent() < from + 3 {
        one.call("a").await.unwrap();
        two.call("a").await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(two.state("a"), State::Closed, "the garbage opened nothing");
    d.fail("a", true);
    for _ in 0..3 {
        let _ = one.call("a").await;
    }
    let followed = transition_to(&mut two_a, State::Open, EVENTUALLY).await;
    assert!(
        followed.is_some(),
        "one's opening replaced the garbage state"
    );
    let state: String = ::redis::cmd("GET")
        .arg(format!("{prefix}state"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(state.starts_with("1 open "), "{state}");
    assert_eq!(two.state("b"), State::Closed);
}

#[tokio::test]
async fn share_keyed_refuses_an_unnamed_keyed_layer() {
    let layer = tower_circuit_breaker::KeyedCircuitBreakerLayer::builder(|k: &String| k.clone())
        .build()
        .unwrap();
    let fleet = Fleet::builder("app").build("redis://127.0.0.1:1").unwrap();
    let err = fleet.share_keyed(&layer.handle()).unwrap_err();
    assert_eq!(err.field(), "name");
}

/// One script per tick for a whole keyed layer, whatever its keys: an instance whose layer has
/// 1,000 keys of which 10 are called (1,000 calls per second each) sends about 20 Redis
/// commands a second. It also prints the figure of BENCHMARKS.md; `TCB_FIGURE_SECONDS`
/// lengthens the run (1 s by default):
/// `TCB_FIGURE_SECONDS=3 cargo test --features redis,keyed --test redis_keyed commands_per_keyed -- --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_per_keyed_layer_stay_at_one_per_tick_with_1_000_keys() {
    let (url, _server) = shared_server();
    let d = Dependency::default();
    let one = Instance::new(&url, &namespace("keyed-rate"), builder(), 10_000, &d).await;
    for i in 0..1_000 {
        one.call(&format!("k{i}")).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // the new keys' first ticks
    let sent = one.shared.commands_sent();
    let start = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(1));
    let mut calls = 0u64;
    let seconds = std::env::var("TCB_FIGURE_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    while start.elapsed() < Duration::from_secs(seconds) {
        ticks.tick().await;
        for i in 0..10 {
            one.call(&format!("k{i}")).await.unwrap();
            calls += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let commands = (one.shared.commands_sent() - sent) as f64 / elapsed;
    let rate = calls as f64 / elapsed;
    println!("figures: 1000 keys, 10 active, {rate:.0} calls/s, {commands:.1} Redis commands/s");
    // A tick that runs late sends fewer, never more; the first may come early.
    assert!(
        commands <= 22.0,
        "{commands:.1} commands/s at {rate:.0} calls/s"
    );
    assert!(rate > 1_000.0, "the calls did not run: {rate:.0}/s");
}
