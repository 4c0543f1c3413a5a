//! HTTP (feature `http`): a classifier for `http::Response`, the 503 response mode, and a body
//! that records its call's outcome at its end.
//!
//! * [`HttpClassify`] counts `5xx` and transport errors as failures, honours `Retry-After`, and
//!   never counts another breaker's rejection.
//! * [`CircuitBreakerLayer::with_http_responses`](crate::CircuitBreakerLayer::with_http_responses)
//!   answers rejections with `503` (and `Retry-After`) and call timeouts with `504`, keeping the
//!   inner service's error type: axum's `Router::layer` and `route_layer` take it as it is.
//! * [`TrackedBody`] (with [`HttpClassify::to_end_of_body`]) times a call to the end of its
//!   body.
//! * [`HttpHints`] lets [`RespectBreaker`](crate::retry::RespectBreaker) see a breaker's 503 (never
//!   retried) and `Retry-After` (waited out before a retry).
//!
//! A breaker in front of a hyper-util client:
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_circuit_breaker::{CircuitBreakerLayer, http::HttpClassify};
//!
//! # fn client<B>(client: hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, B>)
//! # where B: http_body::Body + Send + 'static, B::Data: Send, B::Error: Into<Box<dyn std::error::Error + Send + Sync>> {
//! let breaker = CircuitBreakerLayer::builder()
//!     .consecutive_failures(5)
//!     .call_timeout(Duration::from_secs(2))
//!     .classify(HttpClassify::new())
//!     .build()
//!     .expect("a valid configuration");
//! let client = ServiceBuilder::new().layer(breaker).service(client);
//! # let _ = client;
//! # }
//! ```

pub(crate) mod body;
mod classify;
mod hints;
mod response;
mod retry_after;

pub use body::{TrackBody, TrackBodyFuture, TrackBodyLayer, TrackedBody, track_body};
pub use classify::{AtEndOfBody, AtHead, HttpClassify};
pub use hints::HttpHints;
pub use response::{HttpResponseFuture, HttpResponses};
