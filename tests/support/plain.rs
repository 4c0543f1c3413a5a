//! Helpers for the tests that put a plain [`CircuitBreakerLayer`] (the default classifier: `Err`
//! is a failure) around services of their own (`tower_contract`, `composition`, `concurrency`,
//! `alloc`), where the rest of support wraps its own [`Inner`](super::Inner) in a harness.

use std::future::{Future, Ready, ready};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::watch;
use tower::util::ServiceFn;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_circuit_breaker::error::Rejected;
use tower_circuit_breaker::{CircuitBreakerLayer, State};

use super::OPEN;

/// Opens after one failure, for [`OPEN`], then admits `probes` probes.
pub fn breaker(name: &'static str, probes: u32) -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .name(name)
        .consecutive_failures(1)
        .open_duration(OPEN)
        .half_open_calls(probes)
        .build()
        .expect("a valid configuration")
}

/// One failing call through a service of `layer`, admitted (not rejected). With a breaker that
/// opens after one failure this opens it, but the state is not asserted: with an open interval of
/// a nanosecond (the multi-thread tests) it may already be over.
pub async fn fail_once(layer: &CircuitBreakerLayer) {
    let failing = layer.layer(service_fn(|()| ready(Err::<(), BoxError>("down".into()))));
    let err = failing.oneshot(()).await.expect_err("the call fails");
    assert!(!err.is::<Rejected>(), "admitted, not rejected");
}

/// Opens `layer`'s breaker (one failure trips it) with a failing call through a service of its own.
pub async fn trip(layer: &CircuitBreakerLayer) {
    fail_once(layer).await;
    assert_eq!(layer.handle().state(), State::Open);
}

/// Trips the breaker and waits out the open interval ([`OPEN`]) on the paused clock.
pub async fn half_open(layer: &CircuitBreakerLayer) {
    trip(layer).await;
    tokio::time::advance(OPEN).await;
    assert_eq!(layer.handle().state(), State::HalfOpen);
}

/// The service [`echo`] makes.
pub type Echo<R> = ServiceFn<fn(R) -> Ready<Result<R, BoxError>>>;

/// An always-ready service that answers at once with the request.
pub fn echo<R>() -> Echo<R> {
    service_fn(|request: R| ready(Ok(request)))
}

/// The dependency of the multi-thread races: every call is held until the test opens the gate,
/// so that all callers decide (are admitted or rejected) before any call completes. It counts its
/// calls and the most that were in flight at once.
#[derive(Debug)]
pub struct Dependency {
    calls: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    gate: watch::Sender<bool>,
}

/// With [`Dependency::service`]: every call fails.
pub const EVERY_CALL: usize = usize::MAX;

impl Dependency {
    /// A dependency whose gate is closed.
    pub fn new() -> Self {
        Dependency {
            calls: Arc::default(),
            in_flight: Arc::default(),
            max_in_flight: Arc::default(),
            gate: watch::channel(false).0,
        }
    }

    /// A service that calls this dependency: its first `failures` calls (counted over all the
    /// services of this dependency) fail once the gate opens, the others answer `Ok(())`.
    pub fn service(
        &self,
        failures: usize,
    ) -> impl Service<
        (),
        Response = (),
        Error = BoxError,
        Future = impl Future<Output = Result<(), BoxError>> + Send,
    > + Clone
    + Send
    + Sync
    + 'static {
        let (calls, in_flight, max_in_flight) = (
            self.calls.clone(),
            self.in_flight.clone(),
            self.max_in_flight.clone(),
        );
        let gate = self.gate.subscribe();
        service_fn(move |()| {
            let index = calls.fetch_add(1, Ordering::SeqCst);
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            max_in_flight.fetch_max(now, Ordering::SeqCst);
            let (in_flight, mut gate) = (in_flight.clone(), gate.clone());
            async move {
                gate.wait_for(|open| *open)
                    .await
                    .expect("the gate outlives the calls");
                in_flight.fetch_sub(1, Ordering::SeqCst);
                if index < failures {
                    Err(BoxError::from("down"))
                } else {
                    Ok(())
                }
            }
        })
    }

    /// Lets every held call, and every later one, answer.
    pub fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    /// Calls that reached the dependency.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The most calls that were in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }
}
