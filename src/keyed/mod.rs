//! One breaker per key: per downstream host, per route, per gRPC method, per tenant.
//!
//! A [`KeyedCircuitBreakerLayer`] takes a key function of the request (the URI's authority,
//! axum's `MatchedPath`, a gRPC method path, a tenant header: anything `Hash + Eq + Clone`) and
//! keeps one breaker per key, made on first use from one shared configuration (an `Arc`, not a
//! copy per key). A failing host opens its own breaker only. Each key's breaker has its own
//! [`Handle`](crate::Handle), and a [`KeyedHandle`] lists and controls them all.
//!
//! ```
//! use std::time::Duration;
//! use tower::{Layer, ServiceExt, service_fn};
//! use tower_circuit_breaker::{CircuitBreakerLayer, KeyedCircuitBreakerLayer, State};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! // Requests are (host, path); one breaker per host.
//! let layer = KeyedCircuitBreakerLayer::builder(|(host, _): &(&'static str, u32)| *host)
//!     .breaker(CircuitBreakerLayer::builder().name("hosts").consecutive_failures(2))
//!     .max_keys(1_000)
//!     .idle_timeout(Duration::from_secs(600))
//!     .build()?;
//! let hosts = layer.handle();
//! let svc = layer.layer(service_fn(|(host, _): (&'static str, u32)| async move {
//!     if host == "down.example" { Err("connection refused") } else { Ok(host) }
//! }));
//!
//! for path in 0..3 {
//!     let _ = svc.clone().oneshot(("down.example", path)).await;
//!     svc.clone().oneshot(("up.example", path)).await?;
//! }
//! assert_eq!(hosts.get(&"down.example").unwrap().state(), State::Open);
//! assert_eq!(hosts.get(&"up.example").unwrap().state(), State::Closed);
//! # Ok(())
//! # }
//! ```
//!
//! # Readiness: why the keyed service is always ready
//!
//! The key is known only in `call`, after `poll_ready`: a service cannot say whether a call
//! will be admitted before it knows which breaker decides. So the keyed service does as axum's
//! `Route` does: its `poll_ready` is always ready, and `call` drives the key's
//! [`CircuitBreaker`](crate::CircuitBreaker) (around a clone of the inner service) with
//! `oneshot`, inside the response future. There, as for a plain breaker, admission comes first:
//! a call its breaker rejects never polls the inner service's readiness (nor calls it), and an
//! admitted call waits for the inner service's readiness in its future.
//!
//! What follows: the inner service must be `Clone` (each call uses a clone, as under axum and
//! hyper), and backpressure from the inner service is felt by each call's future, not by the
//! keyed service's `poll_ready`, so a `Buffer` or a balancer in front of the keyed service does
//! not see it. Put concurrency limits inside, around the inner service, or per key in front of
//! it.
//!
//! # Bounded memory
//!
//! * [`max_keys`](KeyedBuilder::max_keys) bounds the number of breakers (exactly: a slot is
//!   reserved before a breaker is made). At the bound, a new key evicts idle closed breakers
//!   first, then idle breakers that have recovered (the open interval is over and no probe was
//!   admitted since: they reject nobody), then the least recently used closed one. Idle ones go
//!   a few at a time (up to a sixteenth of one of the map's shards), so that the cost of finding
//!   them is shared by the next new keys.
//! * [`idle_timeout`](KeyedBuilder::idle_timeout): a breaker unused for that long, that may be
//!   forgotten (as above), is removed at the next sweep. Sweeps run when a new key arrives (at
//!   most every quarter of the timeout), when the keys are listed, and on
//!   [`KeyedHandle::evict_idle`]. No background task is needed.
//! * Never evicted, nor expired: a breaker that rejects calls (Open within its interval,
//!   HalfOpen with probes), one an operator set (ForcedOpen, Disabled, MetricsOnly), one with a
//!   call in flight, and one whose [`Handle`](crate::Handle) is kept somewhere.
//!
//! **When every breaker is open and the bound is hit**, a new key shares the **overflow
//! breaker**: one more breaker of the same configuration, whose key is `"(overflow)"`
//! ([`KeyedHandle::overflow`]). The new key's calls are still guarded: if the new hosts fail as
//! well (likely, when every other host is down), the overflow breaker opens and rejects them,
//! rather than letting untracked calls through to an outage. The first call that overflows logs
//! a warning; a new key gets a breaker of its own again as soon as one may be evicted.
//!
//! A call in flight when its breaker is evicted (it cannot be, by the rules above, unless it
//! started after the breaker's last check) records into the evicted breaker, which is then
//! dropped: it is a closed breaker's window that is lost, never an open breaker.
//!
//! # Costs
//!
//! Looking up an existing key is a read lock of one of the map's shards, one hash and one
//! comparison of the key; the call then costs what a plain breaker's call costs when the
//! service is cloned per call (see `BENCHMARKS.md`). The key function runs on every call: make
//! it cheap (a key that owns a `String` allocates per call; `http::uri::Authority` and
//! `Arc<str>` clone without allocating). The key's `Hash` and `Eq` run under a shard's lock, as
//! in any concurrent map; the text of a key (for handles and logs) is made once per breaker,
//! outside any lock.

mod future;
mod handle;
mod layer;
pub(crate) mod map;
mod service;

pub use future::ResponseFuture;
pub use handle::KeyedHandle;
pub use layer::{DisplayKey, KeyText, KeyedBuilder, KeyedCircuitBreakerLayer};
pub use service::KeyedCircuitBreaker;

/// The key text of the overflow breaker.
pub(crate) const OVERFLOW_KEY: &str = "(overflow)";
