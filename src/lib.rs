//! A circuit breaker for [Tower](https://docs.rs/tower) services: axum routes, tonic and hyper
//! clients, or any `Service`.
//!
//! A [`CircuitBreakerLayer`] wraps a service. Every outcome of the inner service is classified
//! (success, failure, ignored; slow calls and timeouts count too). When failures cross the
//! configured policy the breaker **opens**: calls are rejected at once with a
//! [`Rejected`](error::Rejected) error that carries a retry-after hint, or go to a fallback
//! service. After the open interval a few probe calls test the dependency (**half-open**), and the
//! breaker **closes** again when it has recovered.
//!
//! ```
//! use std::time::Duration;
//! use tower::{Service, ServiceExt, service_fn};
//! use tower_circuit_breaker::{CircuitBreakerLayer, State, error::Rejected};
//! use tower::Layer;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let layer = CircuitBreakerLayer::builder()
//!     .consecutive_failures(3)
//!     .open_duration(Duration::from_secs(5))
//!     .build()?;
//! let handle = layer.handle();
//! let mut svc = layer.layer(service_fn(|fail: bool| async move {
//!     if fail { Err("boom") } else { Ok("fine") }
//! }));
//!
//! for _ in 0..3 {
//!     let _ = svc.ready().await?.call(true).await;
//! }
//! assert_eq!(handle.state(), State::Open);
//!
//! // Rejected at once, without reaching the service.
//! let err = svc.ready().await?.call(false).await.unwrap_err();
//! let rejected = err.downcast_ref::<Rejected>().unwrap();
//! assert_eq!(rejected.retry_after(), Some(Duration::from_secs(5)));
//!
//! // After the open interval one probe is admitted; its success closes the circuit.
//! tokio::time::advance(Duration::from_secs(5)).await;
//! assert_eq!(svc.ready().await?.call(false).await?, "fine");
//! assert_eq!(handle.state(), State::Closed);
//! # Ok(())
//! # }
//! ```
//!
//! # The contract
//!
//! * **Closed**: each recorded outcome goes into a sliding [`Window`] (the last `n` calls, or the
//!   last `d` of time) and the thresholds are evaluated after each one: the failure rate and the
//!   slow-call rate (both `>=`, undefined below [`minimum_calls`](Builder::minimum_calls)), and
//!   optionally a number of consecutive failures.
//! * **Open**: calls are rejected without touching the inner service, not even its `poll_ready`.
//!   The open interval is fixed or a [`Backoff`]. The breaker becomes half-open lazily, on the
//!   next call, readiness check or state read, at `opened_at + interval`: no background task.
//! * **HalfOpen**: at most [`half_open_calls`](Builder::half_open_calls) probe permits are held
//!   at once. A probe that is ignored, dropped (even unpolled) or never used gives its permit
//!   back, and another call may take it. It closes when enough probes succeeded, reopens as soon
//!   as that became impossible, and goes back to Open if undecided
//!   [`half_open_max_wait`](Builder::half_open_max_wait) after its first probe.
//!   Transitions that time makes happen at their deadline, whoever notices them: reading the
//!   state never changes what the breaker does.
//! * **Always**: time comes from tokio's clock, so tests on a paused clock are exact. Each call
//!   carries the generation of the state that admitted it, and a stale result never moves the
//!   state. Transitions are linearizable: each happens once, and emits one [`Event`] and one
//!   tracing event (`warn` on open, `info` otherwise; `debug` per rejection), in transition order.
//!   No user code (a tracing subscriber, an event consumer, a waker, the classifier) runs under a
//!   lock of the breaker, so any of it may call back into the breaker.
//!
//! # Beyond open and closed
//!
//! [`Builder::adaptive_throttling`] sheds a share of the calls that grows as the dependency's
//! success rate falls (Envoy's admission control, the SRE book's client-side throttling), through
//! the same rejection path; [`Builder::learned_failure_threshold`] sets the failure-rate
//! threshold from the dependency's own history, within bounds. The [`adaptive`] module explains
//! both and when each helps.
//!
//! # Performance
//!
//! A closed call allocates nothing. Admitting it is one load of the state word, and rejecting one
//! takes no lock either. With a count window full of successes, a successful call records by
//! reading one flag: no lock, no write to shared memory, and no clock read unless slow calls or a
//! [`call_timeout`](Builder::call_timeout) are configured (each reads the clock once per call).
//! An outcome that changes the window (a failure, a success while the window holds a failure,
//! every outcome of a time window) takes a short internal lock, as do transitions: under it the
//! window is plain data, so that racing outcomes always leave a state some sequential order of
//! them gives. A call whose inner service is not ready registers its waker under a short lock.
//! See `BENCHMARKS.md` in the repository.
//!
//! # Observability
//!
//! Every transition is traced (`warn` to open, `info` otherwise, with the breaker's name and key,
//! the window's rates and the open interval), every rejection at `debug`. [`Handle::subscribe`]
//! streams the [`Event`]s (transitions, and rates that reached their threshold with the numbers),
//! and [`Builder::on_event`] runs a callback for each (rejections included). [`Metrics::totals`]
//! are lifetime counts that never reset: calls by outcome, rejections, fallbacks, transitions.
//! With the feature `metrics`, `Builder::export_metrics` exports all of it through the
//! `metrics` facade, under this crate's names or Resilience4j's (the `metrics` module).
//!
//! # Features
//!
//! * `metrics`: the `metrics` module, on the [`metrics`](https://docs.rs/metrics) facade.
//! # Operating it
//!
//! A [`Handle`] reads and steers one breaker while it runs: its state and [`Metrics`], the
//! operator's states (force open, disable, metrics only, reset), its events, and live
//! reconfiguration ([`Handle::reconfigure`]): thresholds, window, minimum calls, open interval
//! and probes change without losing the state, the counters or the newest outcomes.
//!
//! # Composition
//!
//! Put the breaker *outside* `tower::timeout` (or use [`Builder::call_timeout`]) so that timeouts
//! count as failures, and *inside* `tower::retry`, with the policy wrapped in
//! [`RespectBreaker`](retry::RespectBreaker) so that a rejection is never retried (the
//! [`retry`] module weighs both orders).
//!
//! Put `ConcurrencyLimit` and `LoadShed` *outside* the breaker as well:
//!
//! * A concurrency limit *inside* the breaker can be left holding a permit for an idle service:
//!   a service that queued at the full limit stays queued when the circuit opens (an open breaker
//!   no longer polls its inner service), and the next permit released is granted to that queued
//!   request until the service is used again or dropped. Outside, a rejection holds a permit only
//!   until its future ends.
//! * `LoadShed` *inside* the breaker turns a busy dependency into failures: the default
//!   classifier counts its `Overloaded` error like any other error. Outside, it sheds only while
//!   the inner service is not ready; an open breaker is always ready (it rejects), so callers see
//!   `Rejected`, not `Overloaded`. Where it must sit inside, classify `Overloaded` as ignored:
//!
//! ```
//! use tower::BoxError;
//! use tower::load_shed::error::Overloaded;
//! use tower_circuit_breaker::{CircuitBreakerLayer, Outcome};
//!
//! let layer = CircuitBreakerLayer::builder()
//!     .classify(|result: Result<&String, &BoxError>| match result {
//!         Ok(_) => Outcome::Success,
//!         Err(e) if e.is::<Overloaded>() => Outcome::Ignored,
//!         Err(_) => Outcome::Failure,
//!     })
//!     .build()?;
//! # Ok::<(), tower_circuit_breaker::ConfigError>(())
//! ```

//!
//! # Features
//!
//! The core depends on tower, tokio, pin-project-lite, futures and tracing only. Integrations sit
//! behind features, none on by default:
//!
//! | feature | what it adds |
//! |---|---|
//! | `grpc` | `grpc::GrpcClassify` (the status from the headers or the trailers; `tonic::Status` errors by their code), the UNAVAILABLE response mode (`CircuitBreakerLayer::with_grpc_responses`), `grpc::GrpcHints`; implies `http` |
//! | `http` | `http::HttpClassify` (5xx and transport errors are failures, `Retry-After` honoured), the 503/504 response mode (`CircuitBreakerLayer::with_http_responses`), `http::TrackedBody` (a verdict at the end of the body), `http::HttpHints` for [`retry::RespectBreaker`] |
//! | `keyed` | `keyed::KeyedCircuitBreakerLayer`: one breaker per key of the request (host, route, gRPC method, tenant), bounded in number and expiring when idle, open breakers never evicted; `registry::Registry` of named breakers for operator control by name and key. No dependency |
//! | `redis` | `redis::Fleet`: breakers of one name on many instances share their window counts, their openings (an absolute open-until) and one probe lease through Redis or Valkey, never on a call's path; each instance goes on alone while Redis is unreachable |
//! | `serde` | `registry::Snapshot` serializes and `registry::ConfigUpdate` deserializes (the JSON of an admin API: `examples/admin`); implies `keyed` |

#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod adaptive;
pub mod error;
pub mod fallback;
pub mod future;
#[cfg(feature = "grpc")]
#[cfg_attr(docsrs, doc(cfg(feature = "grpc")))]
pub mod grpc;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
#[cfg(feature = "keyed")]
#[cfg_attr(docsrs, doc(cfg(feature = "keyed")))]
pub mod keyed;
pub mod readiness;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
#[cfg(feature = "keyed")]
#[cfg_attr(docsrs, doc(cfg(feature = "keyed")))]
pub mod registry;
pub mod retry;

mod classify;
mod config;
mod event;
mod handle;
mod layer;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
mod service;
mod state;
mod sync;

/// The README's snippets, compiled as doc-tests.
#[cfg(all(
    doctest,
    feature = "http",
    feature = "grpc",
    feature = "metrics",
    feature = "keyed"
))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use adaptive::{AdaptiveThrottle, LearnedThreshold};
pub use classify::{Classify, Completion, DefaultClassify, Outcome};
pub use config::{Backoff, Builder, Window};
pub use error::ConfigError;
pub use event::{EVENT_BUFFER, Event, EventStream};
pub use handle::{Handle, Metrics, Totals};
pub use layer::CircuitBreakerLayer;
pub use service::CircuitBreaker;
pub use state::State;

#[cfg(feature = "keyed")]
#[cfg_attr(docsrs, doc(cfg(feature = "keyed")))]
pub use keyed::{KeyedCircuitBreaker, KeyedCircuitBreakerLayer, KeyedHandle};
#[cfg(feature = "keyed")]
#[cfg_attr(docsrs, doc(cfg(feature = "keyed")))]
pub use registry::Registry;
