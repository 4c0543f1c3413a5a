//! The fleet's logs (feature `redis`): an outage of Redis is logged once, and its end once. In a
//! binary of its own: tracing caches each callsite's interest process-wide, and the other fleet
//! tests' threads, with no subscriber, would register the same callsites.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::redis::{RedisServer, namespace};
use support::traced::{OnEvent, fields};
use tokio::time::Instant;
use tower_circuit_breaker::CircuitBreakerLayer;
use tower_circuit_breaker::redis::{Fleet, Shared};

async fn reachable(shared: &Shared) {
    let start = Instant::now();
    while !shared.is_reachable() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Counts the tracing events whose message is one of the fleet's.
#[derive(Default)]
struct FleetLogs {
    unreachable: AtomicUsize,
    reachable_again: AtomicUsize,
}

impl FleetLogs {
    fn count(&self, event: &tracing::Event<'_>) {
        let message = fields(event).remove("message").unwrap_or_default();
        if message.starts_with("fleet state unreachable") {
            self.unreachable.fetch_add(1, Ordering::SeqCst);
        } else if message.starts_with("fleet state reachable again") {
            self.reachable_again.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// On a current-thread runtime, so that the fleet's task runs under the test's subscriber.
#[test]
fn an_outage_is_logged_once_and_the_return_once() {
    let logs = Arc::new(FleetLogs::default());
    let counted = logs.clone();
    let _default = tracing::subscriber::set_default(OnEvent(move |event: &tracing::Event<'_>| {
        counted.count(event)
    }));
    // See tests/observability.rs: another test's thread may have cached a callsite as "never".
    tracing::callsite::rebuild_interest_cache();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut server = RedisServer::start();
        let layer = CircuitBreakerLayer::builder().name("db").build().unwrap();
        let fleet = Fleet::builder(namespace("logs"))
            .build(server.url())
            .unwrap();
        let shared = fleet.share(&layer.handle()).unwrap();
        reachable(&shared).await;
        server.kill();
        let start = Instant::now();
        while shared.is_reachable() {
            assert!(start.elapsed() < Duration::from_secs(3), "still reachable");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Twenty ticks or more fail meanwhile.
        let failing = shared.commands_sent();
        while shared.commands_sent() < failing + 20 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.restart();
        reachable(&shared).await;
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    assert_eq!(logs.unreachable.load(Ordering::SeqCst), 1);
    assert_eq!(logs.reachable_again.load(Ordering::SeqCst), 1);
}
