//! Two circuit breakers in an axum app, exported to Prometheus, while their dependencies fail and
//! recover.
//!
//! The shop answers `/price` from a pricing service and `/stock` from an inventory service, each
//! behind a breaker. A load generator in the same process calls both routes over HTTP. On a
//! script, pricing fails outright for two seconds (its breaker opens, and a fallback answers with
//! a cached price), and inventory turns slow (its breaker opens on the slow-call rate, and
//! `/stock` answers 503 with a `Retry-After`); then both recover and the breakers close. The
//! breakers' metrics are served at `/metrics` through `metrics-exporter-prometheus`; the Grafana
//! dashboard in `examples/grafana/dashboard.json` reads them (tests/prometheus.rs checks every one
//! of its queries against a real Prometheus scraping this example).
//!
//! ```sh
//! cargo run --example prometheus              # the scripted run, then exits
//! cargo run --example prometheus -- --serve   # then keeps serving on :3000
//! cargo run --example prometheus -- --serve --listen 127.0.0.1:9898
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State as Extract;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Router, body::Body};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Layer, ServiceExt, service_fn};
use tower_circuit_breaker::error::Rejected;
use tower_circuit_breaker::metrics::Export;
use tower_circuit_breaker::{CircuitBreakerLayer, Event, Handle, Window};

/// How long the scripted run lasts.
pub const SCRIPT: Duration = Duration::from_secs(8);
/// One line of the story per interval.
const TICK: Duration = Duration::from_millis(500);
/// Time between two requests of the load generator (to each route).
const PACE: Duration = Duration::from_millis(10);
/// Pricing fails outright in this part of the script.
const PRICING_DOWN: (Duration, Duration) =
    (Duration::from_millis(1500), Duration::from_millis(3500));
/// Inventory answers slowly in this part.
const INVENTORY_SLOW: (Duration, Duration) =
    (Duration::from_millis(2000), Duration::from_millis(4500));

type Dependency = BoxCloneSyncService<(), String, BoxError>;

#[derive(Clone)]
struct App {
    pricing: Dependency,
    inventory: Dependency,
    prometheus: PrometheusHandle,
}

/// Where the script stands: the moment it started.
#[derive(Clone, Copy)]
struct Script(Instant);

impl Script {
    fn within(self, (from, to): (Duration, Duration)) -> bool {
        let t = self.0.elapsed();
        from <= t && t < to
    }
}

/// The pricing service: answers at once, or fails while the script says it is down.
async fn pricing(script: Script) -> Result<String, BoxError> {
    tokio::time::sleep(Duration::from_millis(2)).await;
    match script.within(PRICING_DOWN) {
        true => Err("pricing: connection refused".into()),
        false => Ok("12.50".to_owned()),
    }
}

/// The inventory service: 5 ms, or 150 ms while the script says it is slow.
async fn inventory(script: Script) -> Result<String, BoxError> {
    let latency = match script.within(INVENTORY_SLOW) {
        true => Duration::from_millis(150),
        false => Duration::from_millis(5),
    };
    tokio::time::sleep(latency).await;
    Ok("42 in stock".to_owned())
}

/// Prints each transition and rate crossing as it happens.
fn announce(event: &Event) {
    let name = event.name().unwrap_or("?");
    match event {
        Event::StateTransition { from, to, .. } => println!("    {name}: {from} -> {to}"),
        Event::FailureRateExceeded {
            failure_rate,
            threshold,
            calls,
            ..
        } => println!(
            "    {name}: failure rate {:.0} % of {calls} calls >= {:.0} %",
            failure_rate * 100.0,
            threshold * 100.0
        ),
        Event::SlowCallRateExceeded {
            slow_call_rate,
            threshold,
            calls,
            ..
        } => println!(
            "    {name}: slow calls {:.0} % of {calls} calls >= {:.0} %",
            slow_call_rate * 100.0,
            threshold * 100.0
        ),
        _ => {}
    }
}

/// The two breakers, with their handles.
fn breakers(script: Script) -> (Dependency, Dependency, Handle, Handle) {
    let pricing_layer = CircuitBreakerLayer::builder()
        .name("pricing")
        .failure_rate_threshold(0.5)
        .sliding_window(Window::count(20))
        .minimum_calls(10)
        .open_duration(Duration::from_millis(500))
        .half_open_calls(3)
        .on_event(announce)
        .export_metrics(Export::new().durations(true))
        .build()
        .expect("a valid configuration");
    let inventory_layer = CircuitBreakerLayer::builder()
        .name("inventory")
        .slow_call_rate_threshold(0.5)
        .slow_call_duration(Duration::from_millis(100))
        .sliding_window(Window::time(Duration::from_secs(1)).buckets(10))
        .minimum_calls(5)
        .open_duration(Duration::from_millis(700))
        .half_open_calls(2)
        .on_event(announce)
        .export_metrics(Export::new().durations(true))
        .build()
        .expect("a valid configuration");
    let (pricing_handle, inventory_handle) = (pricing_layer.handle(), inventory_layer.handle());
    // While pricing's breaker rejects, a cached price answers.
    let cached = service_fn(|()| async { Ok::<_, Infallible>("12.00 (cached)".to_owned()) });
    let pricing = pricing_layer
        .with_fallback(cached)
        .layer(service_fn(move |()| pricing(script)));
    let inventory = inventory_layer.layer(service_fn(move |()| inventory(script)));
    (
        BoxCloneSyncService::new(pricing),
        BoxCloneSyncService::new(inventory),
        pricing_handle,
        inventory_handle,
    )
}

/// Answers from a dependency; a rejection becomes a 503 with `Retry-After`.
async fn answer(dependency: Dependency) -> Response {
    match dependency.oneshot(()).await {
        Ok(body) => body.into_response(),
        Err(error) => match error.downcast_ref::<Rejected>() {
            Some(rejected) => {
                let mut response =
                    (StatusCode::SERVICE_UNAVAILABLE, "try again later").into_response();
                let secs = rejected.retry_after().map_or(1, |d| d.as_secs().max(1));
                let value = HeaderValue::from(secs);
                response.headers_mut().insert(header::RETRY_AFTER, value);
                response
            }
            None => (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
        },
    }
}

fn router(app: App) -> Router {
    Router::new()
        .route(
            "/price",
            get(|Extract(app): Extract<App>| answer(app.pricing)),
        )
        .route(
            "/stock",
            get(|Extract(app): Extract<App>| answer(app.inventory)),
        )
        .route(
            "/metrics",
            get(|Extract(app): Extract<App>| async move {
                // The breakers' lifetime counts into the exporter's counters, then render.
                tower_circuit_breaker::metrics::collect();
                app.prometheus.render()
            }),
        )
        .with_state(app)
}

/// Calls both routes every `pace` until `until` (forever if `None`).
async fn load(addr: SocketAddr, pace: Duration, until: Option<Instant>) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let mut ticker = tokio::time::interval(pace);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while until.is_none_or(|until| Instant::now() < until) {
        ticker.tick().await;
        for path in ["/price", "/stock"] {
            let client = client.clone();
            let uri = format!("http://{addr}{path}").parse().expect("a URI");
            tokio::spawn(async move {
                if let Ok(response) = client.get(uri).await {
                    let _ = response.into_body().collect().await;
                }
            });
        }
    }
}

/// One line per interval: what each breaker did since the last one.
struct Line {
    handle: Handle,
    last: tower_circuit_breaker::Totals,
}

impl Line {
    fn next(&mut self) -> String {
        let metrics = self.handle.metrics();
        let now = metrics.totals();
        let delta = |f: fn(&tower_circuit_breaker::Totals) -> u64| f(&now) - f(&self.last);
        let text = format!(
            "{:>9} {:<12} ok {:>3}  failed {:>3}  slow {:>3}  rejected {:>3} (fallback {:>3})",
            self.handle.name().unwrap_or("?"),
            metrics.state().as_str(),
            delta(|t| t.successful()),
            delta(|t| t.failed()),
            delta(|t| t.slow()),
            delta(|t| t.rejected()),
            delta(|t| t.fallbacks()),
        );
        self.last = now;
        text
    }
}

/// Serves the app on `listener`, runs the script (load, outage, recovery) with one line per
/// interval, prints a summary, and returns; with `serve`, keeps serving (under a light load)
/// instead of returning.
pub async fn run(listener: TcpListener, serve: bool) {
    let prometheus = PrometheusBuilder::new()
        // Buckets, so that Grafana can compute percentiles (`histogram_quantile`).
        .set_buckets_for_metric(
            Matcher::Full("circuit_breaker_call_duration_seconds".to_owned()),
            &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0],
        )
        .expect("buckets")
        .install_recorder()
        .expect("no other recorder is installed");
    // Built after the recorder, so that the breakers register their metrics with it.
    let script = Script(Instant::now());
    let (pricing, inventory, pricing_handle, inventory_handle) = breakers(script);
    let addr = listener.local_addr().expect("a bound listener");
    let app = App {
        pricing,
        inventory,
        prometheus,
    };
    tokio::spawn(async move { axum::serve(listener, router(app)).await });

    println!(
        "serving http://{addr}/metrics; pricing fails from {:?} to {:?}, inventory is slow from {:?} to {:?}",
        PRICING_DOWN.0, PRICING_DOWN.1, INVENTORY_SLOW.0, INVENTORY_SLOW.1
    );
    let end = script.0 + SCRIPT;
    tokio::spawn(load(addr, PACE, Some(end)));
    let mut lines = [
        Line {
            handle: pricing_handle.clone(),
            last: Default::default(),
        },
        Line {
            handle: inventory_handle.clone(),
            last: Default::default(),
        },
    ];
    let mut ticker = tokio::time::interval_at(script.0 + TICK, TICK);
    while Instant::now() < end {
        ticker.tick().await;
        let t = script.0.elapsed().as_secs_f64();
        println!("t={t:4.1}s {}", lines[0].next());
        println!("        {}", lines[1].next());
    }
    for handle in [&pricing_handle, &inventory_handle] {
        let totals = handle.metrics().totals();
        println!(
            "{}: {} ok, {} failed, {} slow, {} rejected ({} answered by the fallback), {} transitions; now {}",
            handle.name().unwrap_or("?"),
            totals.successful(),
            totals.failed(),
            totals.slow(),
            totals.rejected(),
            totals.fallbacks(),
            totals.transitions_total(),
            handle.state(),
        );
    }
    if serve {
        println!("still serving http://{addr}/metrics (Ctrl-C to stop)");
        load(addr, PACE * 10, None).await;
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let serve = args.iter().any(|a| a == "--serve");
    let listen = args
        .iter()
        .position(|a| a == "--listen")
        .and_then(|i| args.get(i + 1))
        .map_or("127.0.0.1:3000", String::as_str);
    let listener = TcpListener::bind(listen)
        .await
        .expect("the address to listen on");
    run(listener, serve).await;
}
