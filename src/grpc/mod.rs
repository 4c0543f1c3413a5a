//! gRPC (feature `grpc`): a classifier that reads the status from the response headers or the
//! trailers, the UNAVAILABLE response mode, and retry hints.
//!
//! * [`GrpcClassify`] reads `grpc-status` from the headers (a trailers-only response) or, at the
//!   end of the body, from the trailers; a `tonic::Status` error is classified by its code the
//!   same way. Failures by default: UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN and
//!   DATA_LOSS. RESOURCE_EXHAUSTED is ignored (a quota, as HTTP's 429); the client's own errors
//!   (INVALID_ARGUMENT, NOT_FOUND, ...) and CANCELLED are successes: they say nothing of the
//!   dependency's health.
//! * [`CircuitBreakerLayer::with_grpc_responses`](crate::CircuitBreakerLayer::with_grpc_responses)
//!   answers a rejection with a trailers-only UNAVAILABLE and `grpc-retry-pushback-ms`, and a
//!   call timeout before the response head with DEADLINE_EXCEEDED (one while a tracked body
//!   streams ends the body with an error: the head is gone), keeping the inner service's error type (tonic's server
//!   takes it as it is).
//! * [`GrpcHints`] lets [`RespectBreaker`](crate::retry::RespectBreaker) see a breaker's
//!   UNAVAILABLE (never retried) and `grpc-retry-pushback-ms` (waited out; negative: never
//!   retried).
//!
//! The status of a streamed response is in its trailers, so the responses carry a
//! [`TrackedBody`](crate::http::TrackedBody):
//! [`with_tracked_bodies`](crate::CircuitBreakerLayer::with_tracked_bodies) puts it under the
//! breaker, in one layer. A tonic client:
//!
//! ```
//! use tonic::transport::Channel;
//! use tower::ServiceBuilder;
//! use tower_circuit_breaker::{CircuitBreakerLayer, grpc::GrpcClassify};
//!
//! # async fn connect() -> Result<(), Box<dyn std::error::Error>> {
//! let channel = Channel::from_static("http://127.0.0.1:50051").connect_lazy();
//! let breaker = CircuitBreakerLayer::builder()
//!     .consecutive_failures(5)
//!     .classify(GrpcClassify::new())
//!     .build()?;
//! let channel = ServiceBuilder::new()
//!     .layer(breaker.with_tracked_bodies())
//!     .service(channel);
//! // Any generated client takes it: `HealthClient::new(channel)`.
//! # let _ = channel;
//! # Ok(())
//! # }
//! ```

mod classify;
mod hints;
mod response;

pub use classify::GrpcClassify;
pub use hints::GrpcHints;
pub use response::GrpcResponses;

use std::time::Duration;

use http::{HeaderMap, HeaderName};

/// The header (or trailer) of gRFC A6's server pushback.
const PUSHBACK: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// What `grpc-retry-pushback-ms` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pushback {
    /// Come back after this long.
    After(Duration),
    /// Do not retry: a negative or unreadable value (gRFC A6).
    Never,
}

/// The pushback in `headers`, if there is one. Capped at a day (the breaker caps it again with
/// `max_retry_after`).
fn pushback(headers: &HeaderMap) -> Option<Pushback> {
    let value = headers.get(PUSHBACK)?;
    let text = value.to_str().ok().map(str::trim).unwrap_or("");
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Pushback::Never);
    }
    let ms = text.parse::<u64>().unwrap_or(u64::MAX);
    Some(Pushback::After(
        Duration::from_millis(ms).min(Duration::from_secs(86_400)),
    ))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn headers(value: &[u8]) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(PUSHBACK, HeaderValue::from_bytes(value).unwrap());
        map
    }

    #[test]
    fn pushback_is_milliseconds_or_never() {
        assert_eq!(
            pushback(&headers(b"1500")),
            Some(Pushback::After(Duration::from_millis(1500)))
        );
        assert_eq!(
            pushback(&headers(b"0")),
            Some(Pushback::After(Duration::ZERO))
        );
        for never in [&b"-1"[..], b"soon", b"", b"1.5", b"+5"] {
            assert_eq!(
                pushback(&headers(never)),
                Some(Pushback::Never),
                "{never:?}"
            );
        }
        assert_eq!(pushback(&HeaderMap::new()), None);
        let huge = pushback(&headers(b"99999999999999999999999"));
        assert_eq!(huge, Some(Pushback::After(Duration::from_secs(86_400))));
    }

    proptest! {
        #[test]
        fn arbitrary_pushback_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                let mut map = HeaderMap::new();
                map.insert(PUSHBACK, value);
                let read = pushback(&map);
                prop_assert!(read.is_some());
            }
        }
    }
}
