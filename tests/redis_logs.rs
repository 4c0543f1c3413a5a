//! The fleet's logs (feature `redis`): an outage of Redis is logged once, and its end once. In a
//! binary of its own: tracing caches each callsite's interest process-wide, and the other fleet
//! tests' threads, with no subscriber, would register the same callsites.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::redis::{RedisServer, namespace};
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

impl tracing::Subscriber for FleetLogs {
    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::always()
    }
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        if message.0.starts_with("fleet state unreachable") {
            self.unreachable.fetch_add(1, Ordering::SeqCst);
        } else if message.0.starts_with("fleet state reachable again") {
            self.reachable_again.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// On a current-thread runtime, so that the fleet's task runs under the test's subscriber.
#[test]
fn an_outage_is_logged_once_and_the_return_once() {
    let logs = Arc::new(FleetLogs::default());
    let _default = tracing::subscriber::set_default(logs.clone());
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
