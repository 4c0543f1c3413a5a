//! gRPC (feature `grpc`): tonic end to end on loopback (a tonic `Channel` and tonic-health's
//! generated client against a tonic server, and against a hand-made HTTP/2 server that sends
//! its status in the trailers after data), and the classifier on tokio's paused clock.
#![cfg(feature = "grpc")]

use std::convert::Infallible;
use std::future::ready;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::body::Body;
use tonic::transport::{Channel, Server};
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::{BoxError, Layer, ServiceBuilder, ServiceExt, service_fn};
use tower_circuit_breaker::error::Rejected;
use tower_circuit_breaker::grpc::{GrpcClassify, GrpcHints};
use tower_circuit_breaker::retry::RespectBreaker;
use tower_circuit_breaker::{CircuitBreakerLayer, Outcome, State};

const OPEN: Duration = Duration::from_secs(10);

fn breaker(failures: u32) -> CircuitBreakerLayer<GrpcClassify> {
    CircuitBreakerLayer::builder()
        .consecutive_failures(failures)
        .open_duration(OPEN)
        .classify(GrpcClassify::new())
        .build()
        .expect("a valid configuration")
}

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_owned(),
    }
}

// ===== a tonic server =====

/// A tonic server with the health service, whose every answer is a trailers-only UNAVAILABLE
/// while `down` is set; counts the requests that reached it.
async fn tonic_server(down: Arc<AtomicBool>, served: Arc<AtomicUsize>) -> SocketAddr {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fail = tower::layer::layer_fn(move |inner| {
        let (down, served) = (down.clone(), served.clone());
        FailOnCommand {
            inner,
            down,
            served,
        }
    });
    tokio::spawn(async move {
        let _reporter = reporter;
        Server::builder()
            .layer(fail)
            .add_service(health)
            .serve_with_incoming(tokio_stream_of(listener))
            .await
            .unwrap()
    });
    addr
}

fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    })
}

/// Answers UNAVAILABLE (trailers-only) while `down` is set.
#[derive(Clone)]
struct FailOnCommand<S> {
    inner: S,
    down: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
}

impl<S> tower::Service<Request<Body>> for FailOnCommand<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        self.served.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Box::pin(ready(Ok(Status::unavailable("down").into_http())));
        }
        Box::pin(self.inner.call(request))
    }
}

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn unavailable_from_a_tonic_server_opens_the_circuit_and_callers_see_unavailable() {
    let down = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let addr = tonic_server(down.clone(), served.clone()).await;
    let layer = breaker(3).with_grpc_responses();
    let channel = ServiceBuilder::new()
        .layer(layer.clone().with_tracked_bodies())
        .service(channel(addr).await);
    let mut client = HealthClient::new(channel);

    let answer = client.check(check("")).await.unwrap().into_inner();
    assert_eq!(answer.status, 1, "SERVING");
    assert_eq!(layer.handle().metrics().successful(), 1);

    down.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let status = client.check(check("")).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "down");
    }
    assert_eq!(layer.handle().state(), State::Open);

    let status = client.check(check("")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "not Unknown");
    assert_eq!(status.message(), "circuit breaker open");
    let pushback = status.metadata().get("grpc-retry-pushback-ms").unwrap();
    let ms: u64 = pushback.to_str().unwrap().parse().unwrap();
    assert!(ms > 9_000 && ms <= 10_000, "{ms}");
    assert_eq!(
        served.load(Ordering::SeqCst),
        4,
        "the rejection never reached the server"
    );
}

#[tokio::test]
async fn a_client_error_from_a_tonic_server_is_not_a_failure() {
    let addr = tonic_server(Arc::default(), Arc::default()).await;
    let layer = breaker(1);
    let channel = ServiceBuilder::new()
        .layer(layer.clone().with_tracked_bodies())
        .service(channel(addr).await);
    let mut client = HealthClient::new(channel);
    let status = client.check(check("no.such.Service")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(layer.handle().state(), State::Closed);
    assert_eq!(layer.handle().metrics().successful(), 1);
}

#[tokio::test]
async fn the_unavailable_mode_on_a_tonic_server() {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let layer = breaker(1).with_grpc_responses();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_layer = layer.clone().with_tracked_bodies();
    tokio::spawn(async move {
        let _reporter = reporter;
        Server::builder()
            .layer(server_layer)
            .add_service(health)
            .serve_with_incoming(tokio_stream_of(listener))
            .await
            .unwrap()
    });
    let mut client = HealthClient::new(channel(addr).await);
    assert!(client.check(check("")).await.is_ok());
    layer.handle().force_open();
    let status = client.check(check("")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "circuit breaker open");
}

// ===== a status in the trailers, after data =====

/// An HTTP/2 server that answers every gRPC call with one message (a `HealthCheckResponse`,
/// SERVING) and then trailers with `grpc-status: 14`, as a proxy or a streaming server does.
async fn trailers_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request| async {
                    // A gRPC frame: uncompressed, 2 bytes, the message `status: 1`.
                    let message = Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 0x01]);
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static("14"));
                    trailers.insert("grpc-message", HeaderValue::from_static("late"));
                    let frames = futures::stream::iter([
                        Ok::<_, Infallible>(http_body::Frame::data(message)),
                        Ok(http_body::Frame::trailers(trailers)),
                    ]);
                    let mut response = Response::new(StreamBody::new(frames));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        HeaderValue::from_static("application/grpc"),
                    );
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_status_in_the_trailers_after_data_is_classified_at_the_end() {
    let addr = trailers_server().await;
    let layer = breaker(2);
    let channel = ServiceBuilder::new()
        .layer(layer.clone().with_tracked_bodies())
        .service(channel(addr).await);
    let mut client = HealthClient::new(channel);
    for _ in 0..2 {
        let status = client.check(check("")).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "late");
    }
    assert_eq!(layer.handle().metrics().failed(), 2);
    assert_eq!(layer.handle().state(), State::Open);
}

// ===== the classifier, in process =====

/// A gRPC response whose status comes in the trailers after one frame of data.
fn streamed(code: &'static str, pushback: Option<&'static str>) -> Response<Body> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static(code));
    if let Some(ms) = pushback {
        trailers.insert("grpc-retry-pushback-ms", HeaderValue::from_static(ms));
    }
    let frames = futures::stream::iter([
        Ok::<_, Status>(http_body::Frame::data(Bytes::from_static(b"data"))),
        Ok(http_body::Frame::trailers(trailers)),
    ]);
    Response::new(Body::new(StreamBody::new(frames)))
}

/// A trailers-only response.
fn trailers_only(code: &'static str, pushback: Option<&'static str>) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    response
        .headers_mut()
        .insert("grpc-status", HeaderValue::from_static(code));
    if let Some(ms) = pushback {
        response
            .headers_mut()
            .insert("grpc-retry-pushback-ms", HeaderValue::from_static(ms));
    }
    response
}

#[tokio::test]
async fn codes_classify_as_configured() {
    let layer = CircuitBreakerLayer::builder()
        .classify(GrpcClassify::new().code(Code::NotFound, Outcome::Ignored))
        .build()
        .unwrap();
    let svc = layer
        .clone()
        .with_tracked_bodies()
        .layer(service_fn(|code: &'static str| {
            ready(Ok::<_, Infallible>(streamed(code, None)))
        }));
    // OK, CANCELLED, INVALID_ARGUMENT: successes; NOT_FOUND: ignored here; RESOURCE_EXHAUSTED:
    // ignored; UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE, DATA_LOSS: failures; garbage
    // is UNKNOWN.
    for code in ["0", "1", "3", "5", "8", "2", "4", "13", "14", "15", "x"] {
        let response = svc.clone().oneshot(code).await.unwrap();
        response.into_body().collect().await.unwrap();
    }
    let metrics = layer.handle().metrics();
    assert_eq!((metrics.successful(), metrics.failed()), (3, 6));
}

#[tokio::test]
async fn status_errors_are_classified_by_their_code() {
    let layer = breaker(100);
    let svc = layer
        .clone()
        .with_tracked_bodies()
        .layer(service_fn(|code: Code| {
            ready(Err::<Response<Body>, BoxError>(Box::new(Status::new(
                code,
                "from the error",
            ))))
        }));
    for code in [
        Code::Unavailable,
        Code::NotFound,
        Code::Internal,
        Code::InvalidArgument,
    ] {
        let _ = svc.clone().oneshot(code).await;
    }
    let metrics = layer.handle().metrics();
    assert_eq!((metrics.successful(), metrics.failed()), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn pushback_keeps_the_circuit_open_that_long_from_headers_or_trailers() {
    for streamed_status in [false, true] {
        let layer = breaker(1);
        let svc = layer
            .clone()
            .with_tracked_bodies()
            .layer(service_fn(move |_: ()| {
                ready(Ok::<_, Infallible>(if streamed_status {
                    streamed("14", Some("60000"))
                } else {
                    trailers_only("14", Some("60000"))
                }))
            }));
        let response = svc.oneshot(()).await.unwrap();
        response.into_body().collect().await.unwrap();
        assert_eq!(layer.handle().state(), State::Open);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(layer.handle().state(), State::Open, "60 s asked");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(layer.handle().state(), State::HalfOpen);
    }
}

#[tokio::test(start_paused = true)]
async fn a_negative_pushback_counts_the_failure_with_the_configured_interval() {
    let layer = breaker(1);
    let svc = layer
        .clone()
        .with_tracked_bodies()
        .layer(service_fn(|_: ()| {
            ready(Ok::<_, Infallible>(trailers_only("14", Some("-1"))))
        }));
    svc.oneshot(()).await.unwrap();
    assert_eq!(layer.handle().state(), State::Open);
    tokio::time::advance(OPEN).await;
    assert_eq!(layer.handle().state(), State::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn a_body_that_ends_without_a_status_is_a_failure_and_a_dropped_one_records_nothing() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(OPEN)
        .half_open_calls(1)
        .classify(GrpcClassify::new())
        .build()
        .unwrap();
    let svc = layer
        .clone()
        .with_tracked_bodies()
        .layer(service_fn(|hang: bool| {
            let frames = futures::stream::iter([Ok::<_, Status>(http_body::Frame::data(
                Bytes::from_static(b"data"),
            ))]);
            let body = if hang {
                Body::new(StreamBody::new(futures::StreamExt::chain(
                    frames,
                    futures::stream::pending(),
                )))
            } else {
                Body::new(StreamBody::new(frames))
            };
            ready(Ok::<_, Infallible>(Response::new(body)))
        }));
    let response = svc.clone().oneshot(false).await.unwrap();
    response.into_body().collect().await.unwrap();
    assert_eq!(layer.handle().state(), State::Open, "no status: UNKNOWN");

    tokio::time::advance(OPEN).await;
    let probe = svc.clone().oneshot(true).await.unwrap();
    assert!(
        svc.clone()
            .oneshot(true)
            .await
            .unwrap_err()
            .is::<Rejected>()
    );
    drop(probe);
    let again = svc.oneshot(true).await.unwrap();
    assert_eq!(
        layer.handle().state(),
        State::HalfOpen,
        "the dropped probe recorded nothing"
    );
    drop(again);
}

#[tokio::test]
async fn an_outer_breaker_ignores_an_inner_breakers_unavailable() {
    let inner = breaker(1).with_grpc_responses();
    inner.handle().force_open();
    let outer = breaker(1);
    let svc = outer
        .clone()
        .with_tracked_bodies()
        .layer(inner.with_tracked_bodies().layer(service_fn(|_: ()| {
            ready(Ok::<_, Infallible>(trailers_only("0", None)))
        })));
    let response = svc.oneshot(()).await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "14");
    assert_eq!(outer.handle().state(), State::Closed);
    assert_eq!(outer.handle().metrics().calls(), 0);
}

// ===== retry =====

#[derive(Clone)]
struct Once(bool);

impl<B> tower::retry::Policy<(), Response<B>, Infallible> for Once {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _: &mut (),
        _: &mut Result<Response<B>, Infallible>,
    ) -> Option<Self::Future> {
        std::mem::take(&mut self.0).then(|| ready(()))
    }

    fn clone_request(&mut self, _: &()) -> Option<()> {
        Some(())
    }
}

#[tokio::test(start_paused = true)]
async fn grpc_hints_never_retry_a_breakers_unavailable_or_a_negative_pushback_and_wait_out_a_positive_one()
 {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let pushback: Arc<std::sync::Mutex<&'static str>> = Arc::new(std::sync::Mutex::new("-1"));
    let value = pushback.clone();
    let svc = ServiceBuilder::new()
        .retry(RespectBreaker::new(Once(true)).with_hints(GrpcHints))
        .service(service_fn(move |_: ()| {
            counted.fetch_add(1, Ordering::SeqCst);
            ready(Ok::<_, Infallible>(trailers_only(
                "14",
                Some(*value.lock().unwrap()),
            )))
        }));
    svc.clone().oneshot(()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "negative: do not retry");

    *pushback.lock().unwrap() = "2500";
    let started = tokio::time::Instant::now();
    svc.oneshot(()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3, "retried once");
    assert_eq!(started.elapsed(), Duration::from_millis(2500));

    let layer = breaker(1).with_grpc_responses();
    layer.handle().force_open();
    let svc = ServiceBuilder::new()
        .retry(RespectBreaker::new(Once(true)).with_hints(GrpcHints))
        .layer(layer.clone().with_tracked_bodies())
        .service(service_fn(|_: ()| {
            ready(Ok::<_, Infallible>(trailers_only("0", None)))
        }));
    svc.oneshot(()).await.unwrap();
    assert_eq!(layer.handle().metrics().not_permitted(), 1, "not retried");
}
