//! The breaker on an axum `Router`, served in-process with `ServiceExt::oneshot`.
//!
//! axum calls `Layer::layer` once per route and method (the fallback included), and the router is
//! typically rebuilt or cloned per connection: the breaker lives in the layer, so all of those
//! services share one state. axum needs `Error = Infallible`, so `HandleErrorLayer` turns the
//! breaker's `BoxError` into a response. axum handlers answer a failure with a 5xx response, not an
//! error, so the breaker classifies by status.
//!
//! What is tested here is the breaker without a response mode: which requests it rejects, and
//! that its error reaches an axum error handler (`HandleErrorLayer`) as a [`Rejected`] with the
//! state and the `retry_after()` of the moment (the handler records each one it is given, see
//! [`Handled`]). The 503 here is the test's own error handler ([`error_response`]); the crate's
//! 503 response mode, which needs no `HandleErrorLayer`, is tested in `http.rs`.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower::{BoxError, Layer, ServiceBuilder, ServiceExt};
use tower_circuit_breaker::error::Rejected;
use tower_circuit_breaker::{CircuitBreakerLayer, Outcome, State};

const OPEN: Duration = Duration::from_secs(30);
const FAILURES: u32 = 3;

/// 5xx responses are failures; 4xx are the caller's business.
fn by_status(result: Result<&Response, &Infallible>) -> Outcome {
    match result {
        Ok(response) if response.status().is_server_error() => Outcome::Failure,
        Ok(response) if response.status().is_client_error() => Outcome::Ignored,
        Ok(_) => Outcome::Success,
        Err(never) => match *never {},
    }
}

type Classifier = fn(Result<&Response, &Infallible>) -> Outcome;

fn breaker() -> CircuitBreakerLayer<Classifier> {
    CircuitBreakerLayer::builder()
        .name("api")
        .consecutive_failures(FAILURES)
        .open_duration(OPEN)
        .classify(by_status as Classifier)
        .build()
        .expect("a valid configuration")
}

/// A rejection is a 503 that says when to come back (whole seconds, rounded up); anything else a
/// 500. The test's own mapping: the crate has no HTTP response mode yet.
fn error_response(err: &BoxError) -> Response {
    match err.downcast_ref::<Rejected>() {
        Some(rejected) => {
            let mut response =
                (StatusCode::SERVICE_UNAVAILABLE, rejected.to_string()).into_response();
            if let Some(after) = rejected.retry_after() {
                let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            response
        }
        None => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}

/// What the error handler was given: for each error, its rejection's state and `retry_after()`
/// as the handler read them, or `None` for an error that is not a [`Rejected`].
#[derive(Clone, Default)]
struct Handled(Arc<Mutex<Vec<Option<Seen>>>>);

/// A rejection's state and `retry_after()`, as the error handler read them.
type Seen = (State, Option<Duration>);

impl Handled {
    /// The error handler for `HandleErrorLayer`: records the error, then answers with
    /// [`error_response`].
    fn handler(&self) -> impl FnOnce(BoxError) -> Ready<Response> + Clone + Send + Sync + 'static {
        let handled = self.clone();
        move |err: BoxError| {
            let seen = err
                .downcast_ref::<Rejected>()
                .map(|rejected| (rejected.state(), rejected.retry_after()));
            handled.0.lock().unwrap().push(seen);
            ready(error_response(&err))
        }
    }

    /// The errors handled since the last call.
    fn take(&self) -> Vec<Option<(State, Option<Duration>)>> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// Counts how often axum calls `Layer::layer`.
#[derive(Clone)]
struct CountLayers<L> {
    inner: L,
    count: Arc<AtomicUsize>,
}

impl<S, L: Layer<S>> Layer<S> for CountLayers<L> {
    type Service = L::Service;

    fn layer(&self, service: S) -> L::Service {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.inner.layer(service)
    }
}

/// Routes whose handlers count their calls: `/fail` answers 500, `/ok` and `/other` 200.
fn routes(handled: Arc<AtomicUsize>) -> Router {
    let count = move || {
        handled.fetch_add(1, Ordering::SeqCst);
    };
    let (c1, c2, c3) = (count.clone(), count.clone(), count);
    Router::new()
        .route(
            "/fail",
            get(move || async move {
                c1();
                StatusCode::INTERNAL_SERVER_ERROR
            }),
        )
        .route(
            "/ok",
            get(move || async move {
                c2();
                "fine"
            })
            .post(|| async { "posted" }),
        )
        .route(
            "/other",
            get(move || async move {
                c3();
                "other"
            }),
        )
}

async fn send(app: &Router, method: &str, uri: &str) -> Response {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    app.clone().oneshot(request).await.expect("infallible")
}

async fn get_status(app: &Router, uri: &str) -> StatusCode {
    send(app, "GET", uri).await.status()
}

#[tokio::test(start_paused = true)]
async fn router_layer_opens_after_the_configured_failures() {
    let breaker = breaker();
    let handle = breaker.handle();
    let layers = Arc::new(AtomicUsize::new(0));
    let handled = Arc::new(AtomicUsize::new(0));
    let errors = Handled::default();
    let app = routes(handled.clone()).layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(errors.handler()))
            .layer(CountLayers {
                inner: breaker,
                count: layers.clone(),
            }),
    );
    assert!(
        layers.load(Ordering::SeqCst) > 1,
        "axum layered each route separately"
    );

    assert_eq!(get_status(&app, "/ok").await, StatusCode::OK);
    for _ in 0..FAILURES - 1 {
        assert_eq!(
            get_status(&app, "/fail").await,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(handle.state(), State::Closed);
    }
    // A 404 from the router's fallback is ignored, not a success that resets the count.
    assert_eq!(get_status(&app, "/missing").await, StatusCode::NOT_FOUND);
    assert_eq!(
        get_status(&app, "/fail").await,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(handle.state(), State::Open);
    assert_eq!(handled.load(Ordering::SeqCst), 1 + FAILURES as usize);

    // Every route and method shares the one breaker: all are rejected without reaching a handler.
    tokio::time::advance(Duration::from_millis(1500)).await;
    for (method, uri) in [
        ("GET", "/ok"),
        ("GET", "/other"),
        ("POST", "/ok"),
        ("GET", "/fail"),
    ] {
        let response = send(&app, method, uri).await;
        assert_eq!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{method} {uri}"
        );
        assert_eq!(
            response.headers()[header::RETRY_AFTER],
            "29",
            "28.5 s left, rounded up"
        );
        assert_eq!(
            errors.take(),
            [Some((State::Open, Some(Duration::from_millis(28_500))))],
            "{method} {uri}: the breaker's rejection reached the error handler, 28.5 s left"
        );
    }
    assert_eq!(handled.load(Ordering::SeqCst), 1 + FAILURES as usize);
    assert_eq!(handle.metrics().not_permitted(), 4);
}

#[tokio::test(start_paused = true)]
async fn route_layer_opens_after_the_configured_failures_and_recovers() {
    let breaker = breaker();
    let handle = breaker.handle();
    let handled = Arc::new(AtomicUsize::new(0));
    let errors = Handled::default();
    let app = routes(handled.clone()).route_layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(errors.handler()))
            .layer(breaker),
    );

    for _ in 0..FAILURES {
        assert_eq!(
            get_status(&app, "/fail").await,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    assert_eq!(handle.state(), State::Open);
    let response = send(&app, "GET", "/other").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[header::RETRY_AFTER], "30");
    assert_eq!(errors.take(), [Some((State::Open, Some(OPEN)))]);
    // `route_layer` leaves unmatched paths alone.
    assert_eq!(get_status(&app, "/missing").await, StatusCode::NOT_FOUND);
    assert_eq!(handled.load(Ordering::SeqCst), FAILURES as usize);

    // After the open interval one probe goes through, and its success closes the circuit.
    tokio::time::advance(OPEN).await;
    assert_eq!(handle.state(), State::HalfOpen);
    assert_eq!(get_status(&app, "/ok").await, StatusCode::OK);
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(get_status(&app, "/other").await, StatusCode::OK);
    assert_eq!(
        errors.take(),
        [],
        "nothing rejected after the circuit closed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_router_built_per_request_still_shares_one_breaker() {
    let breaker = breaker();
    let handle = breaker.handle();
    let handled = Arc::new(AtomicUsize::new(0));
    // Everything rebuilt for every request: routes, layering, services. Only the layer is cloned.
    let errors = Handled::default();
    let app = || {
        routes(handled.clone()).layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(errors.handler()))
                .layer(breaker.clone()),
        )
    };

    for _ in 0..FAILURES {
        assert_eq!(
            get_status(&app(), "/fail").await,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    assert_eq!(handle.state(), State::Open);
    assert_eq!(
        get_status(&app(), "/ok").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(errors.take(), [Some((State::Open, Some(OPEN)))]);
    assert_eq!(handled.load(Ordering::SeqCst), FAILURES as usize);
}

#[tokio::test(start_paused = true)]
async fn forced_open_router_answers_503_without_retry_after() {
    let breaker = breaker();
    let handle = breaker.handle();
    let handled = Arc::new(AtomicUsize::new(0));
    let errors = Handled::default();
    let app = routes(handled.clone()).layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(errors.handler()))
            .layer(breaker),
    );

    handle.force_open();
    let response = send(&app, "GET", "/ok").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        response.headers().get(header::RETRY_AFTER).is_none(),
        "nobody knows when"
    );
    assert_eq!(
        errors.take(),
        [Some((State::ForcedOpen, None))],
        "a forced-open rejection has no retry-after"
    );
    assert_eq!(handled.load(Ordering::SeqCst), 0);

    handle.reset();
    assert_eq!(get_status(&app, "/ok").await, StatusCode::OK);
}
