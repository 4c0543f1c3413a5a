//! The registry (feature `keyed`): breakers by name, plain and keyed; listing, control by name
//! and by key, reconfiguration; refusals that change nothing.

#![cfg(feature = "keyed")]

use std::sync::Arc;
use std::time::Duration;

use tower::{BoxError, Layer, ServiceExt, service_fn};
use tower_circuit_breaker::registry::{ConfigUpdate, Control, Registry, RegistryError};
use tower_circuit_breaker::{CircuitBreakerLayer, KeyedCircuitBreakerLayer, State};

fn keyed_hosts(registry: &Registry) -> tower_circuit_breaker::KeyedHandle<&'static str> {
    let layer = KeyedCircuitBreakerLayer::builder(|host: &&'static str| *host)
        .breaker(CircuitBreakerLayer::builder().name("hosts"))
        .build()
        .unwrap();
    registry.register_keyed(&layer).unwrap();
    let svc = layer.layer(service_fn(|_: &'static str| async {
        Ok::<_, BoxError>(())
    }));
    futures::executor::block_on(async {
        for host in ["a", "b"] {
            svc.clone().oneshot(host).await.unwrap();
        }
    });
    layer.handle()
}

#[test]
fn get_or_create_makes_a_breaker_once_and_shares_it_by_name() {
    let registry = Registry::new();
    let first = registry
        .get_or_create(
            CircuitBreakerLayer::builder()
                .name("db")
                .consecutive_failures(1),
        )
        .unwrap();
    // The second builder's configuration is not used: the breaker exists.
    let second = registry
        .get_or_create(
            CircuitBreakerLayer::builder()
                .name("db")
                .consecutive_failures(9),
        )
        .unwrap();
    let svc = second.layer(service_fn(|_: ()| async { Err::<(), _>("down") }));
    futures::executor::block_on(svc.oneshot(())).unwrap_err();
    assert_eq!(first.handle().state(), State::Open);
    assert_eq!(registry.names(), ["db"]);
    assert_eq!(registry.handle("db").unwrap().state(), State::Open);
}

#[test]
fn a_missing_or_taken_name_and_a_bad_configuration_are_refused() {
    let registry = Registry::new();
    let err = registry
        .get_or_create(CircuitBreakerLayer::builder())
        .unwrap_err();
    assert!(
        matches!(&err, RegistryError::Config(e) if e.field() == "name"),
        "{err}"
    );
    let err = registry
        .get_or_create(CircuitBreakerLayer::builder().name("x").minimum_calls(0))
        .unwrap_err();
    assert!(matches!(&err, RegistryError::Config(e) if e.field() == "minimum_calls"));
    assert!(registry.names().is_empty());

    keyed_hosts(&registry);
    let plain = CircuitBreakerLayer::builder()
        .name("hosts")
        .build()
        .unwrap();
    assert_eq!(
        registry.register(&plain),
        Err(RegistryError::NameTaken("hosts".into()))
    );
    assert_eq!(
        registry
            .get_or_create(CircuitBreakerLayer::builder().name("hosts"))
            .unwrap_err(),
        RegistryError::NameTaken("hosts".into())
    );
    let unnamed = CircuitBreakerLayer::builder().build().unwrap();
    assert!(matches!(
        registry.register(&unnamed),
        Err(RegistryError::Config(_))
    ));
}

#[test]
fn the_listing_has_every_breaker_and_every_key() {
    let registry = Registry::new();
    registry
        .get_or_create(CircuitBreakerLayer::builder().name("db"))
        .unwrap();
    keyed_hosts(&registry);
    let mut rows: Vec<(String, Option<String>)> = registry
        .list()
        .into_iter()
        .map(|row| (row.name, row.key))
        .collect();
    rows.sort();
    let expected = [
        ("db", None),
        ("hosts", Some("(overflow)")),
        ("hosts", Some("a")),
        ("hosts", Some("b")),
    ]
    .map(|(n, k)| (n.to_string(), k.map(str::to_string)));
    assert_eq!(rows, expected);
}

/// A row's retry-after is the time left while the breaker is open, and none once the interval is
/// over (half-open) or after a reset to Closed.
#[tokio::test(start_paused = true)]
async fn the_listing_shows_a_retry_after_only_while_open() {
    let registry = Registry::new();
    let layer = registry
        .get_or_create(
            CircuitBreakerLayer::builder()
                .name("db")
                .consecutive_failures(1)
                .open_duration(Duration::from_secs(10)),
        )
        .unwrap();
    let failing = layer.layer(service_fn(|_: ()| async {
        Err::<(), BoxError>("down".into())
    }));
    failing.oneshot(()).await.unwrap_err();
    let row = |registry: &Registry| {
        let row = registry.list().remove(0);
        (row.state, row.retry_after_ms)
    };
    assert_eq!(row(&registry), (State::Open, Some(10_000)));
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(row(&registry), (State::HalfOpen, None));
    layer.handle().reset();
    assert_eq!(row(&registry), (State::Closed, None));
}

#[test]
fn control_applies_by_name_and_by_key() {
    let registry = Registry::new();
    let db = registry
        .get_or_create(CircuitBreakerLayer::builder().name("db"))
        .unwrap();
    let hosts = keyed_hosts(&registry);

    registry.control("db", None, Control::ForceOpen).unwrap();
    assert_eq!(db.handle().state(), State::ForcedOpen);
    registry
        .control("hosts", Some("a"), Control::Disable)
        .unwrap();
    assert_eq!(hosts.get(&"a").unwrap().state(), State::Disabled);
    assert_eq!(hosts.get(&"b").unwrap().state(), State::Closed);
    registry
        .control("hosts", None, Control::MetricsOnly)
        .unwrap();
    assert_eq!(hosts.get(&"b").unwrap().state(), State::MetricsOnly);
    registry
        .control("hosts", Some("(overflow)"), Control::Reset)
        .unwrap();
    assert_eq!(hosts.overflow().state(), State::Closed);
    registry.control("hosts", None, Control::Reset).unwrap();
    assert_eq!(hosts.get(&"a").unwrap().state(), State::Closed);
}

#[test]
fn an_unknown_name_or_key_is_refused_and_changes_nothing() {
    let registry = Registry::new();
    let db = registry
        .get_or_create(CircuitBreakerLayer::builder().name("db"))
        .unwrap();
    let hosts = keyed_hosts(&registry);
    let before = format!("{:?}", registry.list());
    let refusals = [
        registry.control("nope", None, Control::ForceOpen),
        registry.control("db", Some("a"), Control::ForceOpen),
        registry.control("hosts", Some("c"), Control::ForceOpen),
        registry.reconfigure("nope", CircuitBreakerLayer::builder()),
        registry.reconfigure("db", CircuitBreakerLayer::builder().half_open_calls(0)),
        registry.update(
            "hosts",
            &ConfigUpdate {
                window_calls: Some(10),
                window_seconds: Some(10),
                ..ConfigUpdate::default()
            },
        ),
    ];
    let messages: Vec<String> = refusals
        .into_iter()
        .map(|r| r.unwrap_err().to_string())
        .collect();
    assert_eq!(
        messages,
        [
            "no breaker named `nope`",
            "breaker `db` has no key `a`",
            "breaker `hosts` has no key `c`",
            "no breaker named `nope`",
            "invalid `half_open_calls`: 0 (allowed: 1..=4095)",
            "invalid `window_calls`: Some(10) (allowed: unset when window_seconds is set (one window))",
        ]
    );
    assert_eq!(format!("{:?}", registry.list()), before);
    assert_eq!(db.handle().state(), State::Closed);
    assert_eq!(hosts.get(&"a").unwrap().state(), State::Closed);
}

#[test]
fn reconfiguring_by_name_reaches_a_plain_breaker_and_every_key() {
    let registry = Registry::new();
    registry
        .get_or_create(CircuitBreakerLayer::builder().name("db"))
        .unwrap();
    let hosts = keyed_hosts(&registry);
    registry
        .update(
            "db",
            &ConfigUpdate {
                failure_rate_threshold: Some(0.2),
                ..ConfigUpdate::default()
            },
        )
        .unwrap();
    registry
        .reconfigure(
            "hosts",
            registry.config("hosts").unwrap().consecutive_failures(4),
        )
        .unwrap();
    let db = registry
        .list()
        .into_iter()
        .find(|r| r.name == "db")
        .unwrap();
    assert_eq!(db.failure_rate_threshold, Some(0.2));
    for key in ["a", "b"] {
        let config = hosts.get(&key).unwrap().config();
        assert!(format!("{config:?}").contains("consecutive_failures: Some(4)"));
    }
}

#[test]
fn concurrent_get_or_create_makes_one_breaker() {
    let registry = Registry::new();
    let start = Arc::new(std::sync::Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (registry, start) = (registry.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                registry
                    .get_or_create(CircuitBreakerLayer::builder().name("shared"))
                    .unwrap()
            })
        })
        .collect();
    let layers: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    layers[0].handle().force_open();
    assert!(
        layers
            .iter()
            .all(|l| l.handle().state() == State::ForcedOpen)
    );
    assert_eq!(registry.names().len(), 1);
}
