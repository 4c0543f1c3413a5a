//! HTTP (feature `http`): the classifier, the 503 response mode, the body that records at its
//! end, nested breakers and the retry policy, against real axum, hyper and hyper-util on
//! loopback where the wire matters, and in process on tokio's paused clock where time does.
#![cfg(feature = "http")]

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use bytes::Bytes;
use http::header::RETRY_AFTER;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::retry::Policy;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_circuit_breaker::error::Rejected;
use tower_circuit_breaker::http::{HttpClassify, HttpHints, track_body};
use tower_circuit_breaker::retry::RespectBreaker;
use tower_circuit_breaker::{CircuitBreakerLayer, Outcome, State};

const OPEN: Duration = Duration::from_secs(10);

fn breaker(failures: u32) -> CircuitBreakerLayer<HttpClassify> {
    CircuitBreakerLayer::builder()
        .consecutive_failures(failures)
        .open_duration(OPEN)
        .classify(HttpClassify::new())
        .build()
        .expect("a valid configuration")
}

fn status(code: u16) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"body")));
    *response.status_mut() = StatusCode::from_u16(code).unwrap();
    response
}

type Answer = Ready<Result<Response<Full<Bytes>>, Infallible>>;

/// An in-process upstream that answers each request with the status it is given.
fn upstream() -> tower::util::ServiceFn<fn(u16) -> Answer> {
    service_fn(|code: u16| ready(Ok(status(code))))
}

// ===== a real server and a real client =====

/// A hyper server (through axum) on loopback that answers every request with the status set in
/// `status`, counting the requests it answered.
async fn server(status: Arc<AtomicU16>, served: Arc<AtomicUsize>) -> SocketAddr {
    let app = Router::new().fallback(move || {
        let code = status.load(Ordering::SeqCst);
        served.fetch_add(1, Ordering::SeqCst);
        async move { StatusCode::from_u16(code).unwrap() }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn get_request(addr: SocketAddr) -> Request<Empty<Bytes>> {
    Request::get(format!("http://{addr}/"))
        .body(Empty::new())
        .unwrap()
}

#[tokio::test]
async fn a_5xx_from_a_hyper_util_client_is_a_failure_and_opens_the_circuit() {
    let code = Arc::new(AtomicU16::new(200));
    let served = Arc::new(AtomicUsize::new(0));
    let addr = server(code.clone(), served.clone()).await;
    let layer = breaker(3);
    let svc = layer.layer(client());

    let response = svc.clone().oneshot(get_request(addr)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    code.store(500, Ordering::SeqCst);
    for _ in 0..3 {
        let response = svc.clone().oneshot(get_request(addr)).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(layer.handle().state(), State::Open);
    let err = svc.oneshot(get_request(addr)).await.unwrap_err();
    assert!(err.is::<Rejected>());
    assert_eq!(
        served.load(Ordering::SeqCst),
        4,
        "the rejection never reached the server"
    );
}

#[tokio::test]
async fn a_connect_error_is_a_failure() {
    // A port nobody listens on: bound, then closed.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let layer = breaker(1);
    let err = layer
        .layer(client())
        .oneshot(get_request(addr))
        .await
        .unwrap_err();
    assert!(!err.is::<Rejected>(), "the transport error itself: {err}");
    assert_eq!(layer.handle().state(), State::Open);
}

// ===== classification =====

#[tokio::test]
async fn statuses_classify_as_configured_with_429_ignored_by_default() {
    let layer = CircuitBreakerLayer::builder()
        .classify(HttpClassify::new())
        .build()
        .unwrap();
    let svc = layer.layer(upstream());
    for code in [200, 201, 302, 404, 429, 500, 503, 599] {
        svc.clone().oneshot(code).await.unwrap();
    }
    let metrics = layer.handle().metrics();
    assert_eq!(
        (metrics.successful(), metrics.failed()),
        (4, 3),
        "429 ignored"
    );

    let layer = CircuitBreakerLayer::builder()
        .classify(
            HttpClassify::new()
                .status(StatusCode::TOO_MANY_REQUESTS, Outcome::Failure)
                .status(StatusCode::NOT_IMPLEMENTED, Outcome::Ignored),
        )
        .build()
        .unwrap();
    let svc = layer.layer(upstream());
    for code in [429, 501, 502] {
        svc.clone().oneshot(code).await.unwrap();
    }
    let metrics = layer.handle().metrics();
    assert_eq!((metrics.successful(), metrics.failed()), (0, 2));
}

#[tokio::test(start_paused = true)]
async fn retry_after_on_a_failure_keeps_the_circuit_open_that_long() {
    let layer = breaker(1);
    let svc = layer.layer(service_fn(|secs: &'static str| {
        let mut response = status(503);
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static(secs));
        ready(Ok::<_, Infallible>(response))
    }));
    svc.clone().oneshot("60").await.unwrap();
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(
        layer.handle().state(),
        State::Open,
        "60 s asked, 10 s configured"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(layer.handle().state(), State::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_capped_by_max_retry_after_and_garbage_is_ignored() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(OPEN)
        .max_retry_after(Duration::from_secs(30))
        .classify(HttpClassify::new())
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|secs: &'static str| {
        let mut response = status(503);
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static(secs));
        ready(Ok::<_, Infallible>(response))
    }));
    svc.clone()
        .oneshot("99999999999999999999999")
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(layer.handle().state(), State::HalfOpen, "capped at 30 s");

    layer.handle().reset();
    svc.oneshot("soon").await.unwrap();
    tokio::time::advance(OPEN).await;
    assert_eq!(
        layer.handle().state(),
        State::HalfOpen,
        "garbage: the configured 10 s"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_on_an_ignored_429_changes_nothing() {
    let layer = breaker(1);
    let svc = layer.layer(service_fn(|_: ()| {
        let mut response = status(429);
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("60"));
        ready(Ok::<_, Infallible>(response))
    }));
    svc.oneshot(()).await.unwrap();
    assert_eq!(layer.handle().state(), State::Closed);
    assert_eq!(layer.handle().metrics().calls(), 0);
}

// ===== the response mode =====

#[tokio::test(start_paused = true)]
async fn a_rejection_answers_503_with_retry_after_in_whole_seconds_rounded_up() {
    let layer = breaker(1).with_http_responses();
    let svc = layer.layer(upstream());
    svc.clone().oneshot(500).await.unwrap(); // trips
    tokio::time::advance(Duration::from_millis(2_500)).await;

    let response: Response<Full<Bytes>> = svc.clone().oneshot(200).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[RETRY_AFTER], "8", "7.5 s left");
    let rejected = response.extensions().get::<Rejected>().expect("marked");
    assert_eq!(rejected.state(), State::Open);
    assert!(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );

    layer.handle().force_open();
    let response = svc.oneshot(200).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        !response.headers().contains_key(RETRY_AFTER),
        "nobody knows when"
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_timeout_answers_504_and_counts_as_a_failure() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .call_timeout(Duration::from_secs(1))
        .classify(HttpClassify::new())
        .build()
        .unwrap()
        .with_http_responses();
    let svc = layer.layer(service_fn(|_: ()| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok::<_, Infallible>(status(200))
    }));
    let response = svc.oneshot(()).await.unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(layer.handle().state(), State::Open);
}

#[tokio::test]
async fn route_layer_takes_the_breaker_as_it_is() {
    let layer = breaker(1).with_http_responses();
    let app: Router = Router::new()
        .route("/", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
        .route_layer(layer.clone());
    let first = app
        .clone()
        .oneshot(Request::new(Body::empty()))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let second = app.oneshot(Request::new(Body::empty())).await.unwrap();
    assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(second.headers()[RETRY_AFTER], "10");
}

async fn get_path(app: &Router, path: &str) -> StatusCode {
    let request = Request::get(path).body(Body::empty()).unwrap();
    app.clone().oneshot(request).await.unwrap().status()
}

#[tokio::test]
async fn nested_breakers_do_not_cascade() {
    let per_route = breaker(2).with_http_responses();
    let app_wide = breaker(3).with_http_responses();
    let app = Router::new()
        .route(
            "/bad",
            get(|| async { StatusCode::INTERNAL_SERVER_ERROR }).route_layer(per_route.clone()),
        )
        .route("/good", get(|| async { "fine" }))
        .layer(app_wide.clone());

    for _ in 0..2 {
        assert_eq!(
            get_path(&app, "/bad").await,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    assert_eq!(per_route.handle().state(), State::Open);
    // The app-wide breaker saw the two failures too (one short of opening), and a success.
    assert_eq!(get_path(&app, "/good").await, StatusCode::OK);
    for _ in 0..5 {
        assert_eq!(
            get_path(&app, "/bad").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    assert_eq!(
        app_wide.handle().state(),
        State::Closed,
        "the route's 503s are not failures"
    );
    assert_eq!(get_path(&app, "/good").await, StatusCode::OK);
}

#[tokio::test]
async fn a_rejected_error_is_not_a_failure_for_an_outer_breaker() {
    let inner = CircuitBreakerLayer::builder().build().unwrap();
    inner.handle().force_open();
    // The default classifier, and the HTTP one, on a `BoxError` that wraps a rejection.
    let outer_default = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .build()
        .unwrap();
    let svc = outer_default.layer(inner.layer(upstream()));
    assert!(svc.oneshot(200).await.unwrap_err().is::<Rejected>());
    assert_eq!(outer_default.handle().state(), State::Closed);

    let outer_http = breaker(1);
    let svc = outer_http.layer(tower::buffer::Buffer::new(inner.layer(upstream()), 4));
    let err = svc.oneshot(200).await.unwrap_err();
    assert!(
        Rejected::find(&*err).is_some(),
        "wrapped by the buffer: {err}"
    );
    assert_eq!(outer_http.handle().state(), State::Closed);
    assert_eq!(outer_http.handle().metrics().calls(), 0);
}

// ===== verdict at the end of the body =====

/// A body of two chunks, the second `gap` after the first, or never.
fn trickle(
    gap: Option<Duration>,
) -> Response<impl http_body::Body<Data = Bytes, Error = Infallible>> {
    let frames = futures::stream::unfold(0, move |sent| async move {
        match sent {
            0 => Some((Ok(http_body::Frame::data(Bytes::from_static(b"a"))), 1)),
            1 => {
                match gap {
                    Some(gap) => tokio::time::sleep(gap).await,
                    None => std::future::pending().await,
                }
                Some((Ok(http_body::Frame::data(Bytes::from_static(b"b"))), 2))
            }
            _ => None,
        }
    });
    Response::new(StreamBody::new(frames))
}

#[tokio::test(start_paused = true)]
async fn by_default_the_verdict_and_the_timeout_stop_at_the_head() {
    let layer = CircuitBreakerLayer::builder()
        .slow_call_duration(Duration::from_millis(500))
        .slow_call_rate_threshold(1.0)
        .minimum_calls(1)
        .call_timeout(Duration::from_secs(1))
        .classify(HttpClassify::new())
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|_: ()| {
        ready(Ok::<_, Infallible>(trickle(Some(Duration::from_secs(2)))))
    }));
    let response = svc.oneshot(()).await.unwrap();
    assert_eq!(
        layer.handle().metrics().successful(),
        1,
        "recorded at the head"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "ab", "the body outlives the call timeout");
    assert_eq!(layer.handle().metrics().slow(), 0);
    assert_eq!(layer.handle().state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn to_end_of_body_times_a_slow_call_to_its_last_frame() {
    let layer = CircuitBreakerLayer::builder()
        .slow_call_duration(Duration::from_millis(500))
        .slow_call_rate_threshold(1.0)
        .minimum_calls(1)
        .classify(HttpClassify::new().to_end_of_body())
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .map_response(track_body)
        .service(service_fn(|_: ()| {
            ready(Ok::<_, Infallible>(trickle(Some(Duration::from_secs(2)))))
        }));
    let response = svc.oneshot(()).await.unwrap();
    assert_eq!(
        layer.handle().metrics().calls(),
        0,
        "nothing known at the head"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "ab");
    assert_eq!(layer.handle().metrics().slow(), 1, "two seconds to the end");
    assert_eq!(layer.handle().state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn to_end_of_body_the_call_timeout_covers_the_body() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .call_timeout(Duration::from_secs(1))
        .classify(HttpClassify::new().to_end_of_body())
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .map_response(track_body)
        .service(service_fn(|_: ()| {
            ready(Ok::<_, Infallible>(trickle(None)))
        }));
    let response = svc.oneshot(()).await.unwrap();
    let err = response.into_body().collect().await.unwrap_err();
    assert!(err.is::<tower::timeout::error::Elapsed>(), "{err}");
    assert_eq!(layer.handle().metrics().failed(), 1);
    assert_eq!(layer.handle().state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn a_body_dropped_before_its_end_records_nothing_and_gives_back_the_probe_permit() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(OPEN)
        .half_open_calls(1)
        .classify(HttpClassify::new().to_end_of_body())
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .map_response(track_body)
        .service(service_fn(|fail: bool| {
            ready(Ok::<_, Infallible>(if fail {
                status(500).map(|b| b.boxed_unsync())
            } else {
                trickle(None).map(|b| b.boxed_unsync())
            }))
        }));
    svc.clone().oneshot(true).await.unwrap(); // a 5xx head: recorded at once, trips
    assert_eq!(layer.handle().state(), State::Open);
    tokio::time::advance(OPEN).await;

    let probe = svc.clone().oneshot(false).await.unwrap();
    let err = svc.clone().oneshot(false).await.unwrap_err();
    assert!(
        err.is::<Rejected>(),
        "the one permit is held by the streaming probe"
    );
    drop(probe);
    let again = svc.oneshot(false).await.unwrap();
    assert_eq!(layer.handle().state(), State::HalfOpen, "nothing recorded");
    drop(again);
}

#[tokio::test]
async fn a_body_read_up_to_is_end_stream_records_without_being_polled_to_its_end() {
    // hyper stops reading a body once `is_end_stream` says it ended.
    let layer = CircuitBreakerLayer::builder()
        .classify(HttpClassify::new().to_end_of_body())
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .map_response(track_body)
        .service(service_fn(|empty: bool| {
            ready(Ok::<_, Infallible>(if empty {
                Response::new(Full::new(Bytes::new()))
            } else {
                status(200)
            }))
        }));
    let empty = svc.clone().oneshot(true).await.unwrap();
    assert!(http_body::Body::is_end_stream(empty.body()));
    assert_eq!(
        layer.handle().metrics().successful(),
        1,
        "an ended body, at once"
    );

    let mut body = svc.oneshot(false).await.unwrap().into_body();
    assert_eq!(layer.handle().metrics().successful(), 1);
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "body");
    assert!(http_body::Body::is_end_stream(&body));
    assert_eq!(
        layer.handle().metrics().successful(),
        2,
        "at its last frame"
    );
}

#[tokio::test]
async fn to_end_of_body_records_a_success_over_a_real_connection() {
    let code = Arc::new(AtomicU16::new(200));
    let addr = server(code, Arc::new(AtomicUsize::new(0))).await;
    let layer = CircuitBreakerLayer::builder()
        .classify(HttpClassify::new().to_end_of_body())
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .map_response(track_body)
        .service(client());
    let response = svc.oneshot(get_request(addr)).await.unwrap();
    // hyper may never poll a body it knows to be empty: the end is recorded anyway.
    response.into_body().collect().await.unwrap();
    assert_eq!(layer.handle().metrics().successful(), 1);
}

// ===== retry =====

/// Retries every failure (an error or a 5xx) up to `left` times, at once.
#[derive(Clone)]
struct Attempts {
    left: usize,
}

impl<B, E> Policy<u16, Response<B>, E> for Attempts {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut u16, result: &mut Result<Response<B>, E>) -> Option<Ready<()>> {
        let failed = result
            .as_ref()
            .map_or(true, |response| response.status().is_server_error());
        (failed && self.left > 0).then(|| {
            self.left -= 1;
            ready(())
        })
    }

    fn clone_request(&mut self, request: &u16) -> Option<u16> {
        Some(*request)
    }
}

#[tokio::test]
async fn a_retry_outside_the_breaker_never_retries_a_rejection() {
    let layer = breaker(1);
    layer.handle().force_open();
    let svc = ServiceBuilder::new()
        .retry(RespectBreaker::new(Attempts { left: 3 }))
        .layer(layer.clone())
        .service(upstream());
    for _ in 0..3 {
        assert!(svc.clone().oneshot(200).await.unwrap_err().is::<Rejected>());
    }
    assert_eq!(
        layer.handle().metrics().not_permitted(),
        3,
        "three requests, three rejections"
    );
}

#[tokio::test]
async fn a_retry_never_retries_a_breakers_503() {
    let layer = breaker(1).with_http_responses();
    layer.handle().force_open();
    let svc = ServiceBuilder::new()
        .retry(RespectBreaker::new(Attempts { left: 3 }).with_hints(HttpHints))
        .layer(layer.clone())
        .service(upstream());
    let response = svc.oneshot(200).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(layer.handle().metrics().not_permitted(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_retry_waits_at_least_the_upstreams_retry_after() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let svc = ServiceBuilder::new()
        .retry(RespectBreaker::new(Attempts { left: 1 }).with_hints(HttpHints))
        .service(service_fn(move |_: u16| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            let mut response = status(if n == 0 { 503 } else { 200 });
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("3"));
            ready(Ok::<_, Infallible>(response))
        }));
    let started = tokio::time::Instant::now();
    let response = svc.oneshot(1).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(started.elapsed(), Duration::from_secs(3));
}

/// Retries a failure when the budget allows it, and deposits each success: tower's way of
/// keeping retries a fraction of the traffic.
#[derive(Clone)]
struct Budgeted(Arc<TpsBudget>);

impl<Req: Clone, B, E> Policy<Req, Response<B>, E> for Budgeted {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut Req, result: &mut Result<Response<B>, E>) -> Option<Ready<()>> {
        match result {
            Ok(response) if !response.status().is_server_error() => {
                self.0.deposit();
                None
            }
            _ => self.0.withdraw().then(|| ready(())),
        }
    }

    fn clone_request(&mut self, request: &Req) -> Option<Req> {
        Some(request.clone())
    }
}

/// No deposits yet: a reserve of two retries (two per second for one second).
fn budget() -> Budgeted {
    Budgeted(Arc::new(TpsBudget::new(Duration::from_secs(1), 2, 0.0)))
}

#[tokio::test]
async fn retry_outside_the_breaker_counts_each_attempt() {
    let layer = CircuitBreakerLayer::builder()
        .classify(HttpClassify::new())
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .retry(RespectBreaker::new(budget()))
        .layer(layer.clone())
        .service(upstream());
    let response = svc.oneshot(500).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        layer.handle().metrics().failed(),
        3,
        "the request and its two retries"
    );
}

#[tokio::test]
async fn a_breaker_outside_the_retry_records_one_outcome_per_request() {
    let layer = CircuitBreakerLayer::builder()
        .classify(HttpClassify::new())
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .retry(RespectBreaker::new(budget()))
        .service(upstream());
    svc.oneshot(500).await.unwrap();
    assert_eq!(layer.handle().metrics().failed(), 1);
}

#[tokio::test]
async fn an_open_circuit_stops_a_budgeted_retry_storm() {
    let served = Arc::new(AtomicUsize::new(0));
    let counted = served.clone();
    let layer = breaker(3);
    let svc = ServiceBuilder::new()
        .retry(RespectBreaker::new(Budgeted(Arc::new(TpsBudget::new(
            Duration::from_secs(1),
            100,
            0.0,
        )))))
        .layer(layer.clone())
        .service(service_fn(move |_: u16| {
            counted.fetch_add(1, Ordering::SeqCst);
            ready(Ok::<_, Infallible>(status(500)))
        }));
    for _ in 0..10 {
        let _ = svc.clone().oneshot(1).await;
    }
    assert_eq!(
        served.load(Ordering::SeqCst),
        3,
        "then every attempt was rejected, once"
    );
    assert_eq!(layer.handle().metrics().not_permitted(), 10);
}

// ===== composition =====

#[tokio::test(start_paused = true)]
async fn the_breaker_outside_tower_timeout_counts_elapsed_as_a_failure() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .classify(HttpClassify::new())
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .timeout(Duration::from_secs(1))
        .service(service_fn(|_: ()| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, Infallible>(status(200))
        }));
    let err = svc.oneshot(()).await.unwrap_err();
    assert!(err.is::<tower::timeout::error::Elapsed>());
    assert_eq!(layer.handle().state(), State::Open);
}

#[tokio::test]
async fn the_503_mode_keeps_infallible_for_axum_and_hyper() {
    fn assert_infallible<S: Service<Request<Body>, Error = Infallible>>(_: &S) {}
    let svc = breaker(1)
        .with_http_responses()
        .layer(service_fn(|_: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::empty()))
        }));
    assert_infallible(&svc);
    let _ = BoxError::from("unused");
}

#[tokio::test(start_paused = true)]
async fn retry_breaker_and_timeout_over_a_hanging_server_stop_after_the_trip() {
    // A server that accepts and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().fallback(std::future::pending::<&'static str>);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    let layer = breaker(3);
    let retry = Budgeted(Arc::new(TpsBudget::new(Duration::from_secs(1), 100, 0.0)));
    let svc = ServiceBuilder::new()
        .retry(RespectBreaker::new(retry).with_hints(HttpHints))
        .layer(layer.clone())
        .timeout(Duration::from_secs(1))
        .map_request(move |addr: SocketAddr| {
            counted.fetch_add(1, Ordering::SeqCst);
            get_request(addr)
        })
        .service(client());
    for _ in 0..5 {
        let err = svc.clone().oneshot(addr).await.unwrap_err();
        assert!(
            err.is::<tower::timeout::error::Elapsed>() || err.is::<Rejected>(),
            "{err}"
        );
    }
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        3,
        "three timeouts, then rejections"
    );
    assert_eq!(layer.handle().state(), State::Open);
    assert_eq!(layer.handle().metrics().not_permitted(), 5);
}

/// A call the adaptive throttle rejects answers 503 as an open circuit's does, marked with state
/// Closed, with a Retry-After of one bucket of the throttle's window in whole seconds.
#[tokio::test(start_paused = true)]
async fn a_throttled_call_answers_503_with_retry_after_one_bucket() {
    use tower_circuit_breaker::AdaptiveThrottle;
    let layer = CircuitBreakerLayer::builder()
        .classify(HttpClassify::new())
        .adaptive_throttling(
            AdaptiveThrottle::new()
                .window(Duration::from_secs(120)) // buckets of 2 s
                .max_rejection_probability(1.0)
                .seed(3),
        )
        .build()
        .unwrap()
        .with_http_responses();
    let svc = layer.layer(upstream());
    let mut throttled = None;
    for _ in 0..1_000 {
        let response: Response<Full<Bytes>> = svc.clone().oneshot(500).await.unwrap();
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            throttled = Some(response);
            break;
        }
    }
    let response = throttled.expect("failures get throttled");
    assert_eq!(response.headers()[RETRY_AFTER], "2");
    let rejected = response.extensions().get::<Rejected>().expect("marked");
    assert_eq!(rejected.state(), State::Closed);
    assert_eq!(
        layer.handle().state(),
        State::Closed,
        "throttling never opens"
    );
}
