//! The HTTP rows: the same inner service answering `http::Response<()>` behind the plain
//! breaker, `HttpClassify`, the 503 response mode, and a closure classifier, called as
//! applications call; and a gRPC unary answer behind the plain breaker and `GrpcClassify`. Shared by `benches/http.rs` (criterion, allocations) and `cg-http`
//! (callgrind).
//!
//! Scenarios: `A`, closed, every call a 200; `C`, open after a transport error, every call
//! rejected with a retry-after hint.

use std::future::{Ready, ready};
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response};
use http_body_util::Empty;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_circuit_breaker::grpc::GrpcClassify;
use tower_circuit_breaker::http::HttpClassify;
use tower_circuit_breaker::{CircuitBreakerLayer, Outcome};

use crate::block_on_task;

/// The inner service's error: `u64::MAX` is a transport error, anything else a 200.
type Answer = Ready<Result<Response<()>, &'static str>>;
type Inner = tower::util::ServiceFn<fn(u64) -> Answer>;

/// The request that fails, to open a breaker.
pub const FAIL: u64 = u64::MAX;

/// A gRPC unary answer, trailers-only: `grpc-status: 0` in the headers (or a transport error).
type GrpcAnswer = Ready<Result<Response<Empty<Bytes>>, &'static str>>;

fn grpc_inner() -> tower::util::ServiceFn<fn(u64) -> GrpcAnswer> {
    service_fn(|x: u64| {
        ready(if x == FAIL {
            Err("refused")
        } else {
            let mut response = Response::new(Empty::new());
            response
                .headers_mut()
                .insert("grpc-status", HeaderValue::from_static("0"));
            Ok(response)
        })
    })
}

fn inner() -> Inner {
    service_fn(|x: u64| {
        ready(if x == FAIL {
            Err("refused")
        } else {
            Ok(Response::new(()))
        })
    })
}

/// One call as applications make it; the outcome is kept from the optimiser.
async fn one<S: Service<u64>>(svc: &mut S, x: u64) {
    if let Ok(svc) = svc.ready().await {
        black_box(svc.call(x).await.is_ok());
    }
}

/// A row: its name and one call of it.
pub type Row = (&'static str, Box<dyn FnMut(u64)>);

fn row<S: Service<u64> + 'static>(name: &'static str, mut svc: S, open: bool) -> Row {
    if open {
        block_on_task(one(&mut svc, FAIL));
    }
    (name, Box::new(move |x| block_on_task(one(&mut svc, x))))
}

/// Every row, closed (`open == false`) or open.
pub fn rows(open: bool) -> Vec<Row> {
    let builder = || {
        CircuitBreakerLayer::builder()
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(3600))
    };
    let plain = builder().build().unwrap();
    let classify = builder().classify(HttpClassify::new()).build().unwrap();
    let mode = builder()
        .classify(HttpClassify::new())
        .build()
        .unwrap()
        .with_http_responses();
    let closure = builder()
        .classify(|r: Result<&Response<()>, &&'static str>| match r {
            Ok(r) if r.status().is_server_error() => Outcome::Failure,
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        })
        .build()
        .unwrap();
    let grpc = builder().classify(GrpcClassify::new()).build().unwrap();
    vec![
        row("grpc-plain", plain.clone().layer(grpc_inner()), open),
        row(
            "grpc-classify",
            grpc.with_tracked_bodies().layer(grpc_inner()),
            open,
        ),
        row("plain", plain.layer(inner()), open),
        row("http-classify", classify.layer(inner()), open),
        row("http-503", mode.layer(inner()), open),
        row("closure-5xx", closure.layer(inner()), open),
    ]
}
