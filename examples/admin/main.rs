//! An admin API for circuit breakers, over HTTP (axum), with an operator's page.
//!
//! Two breakers are registered: `payments` (one breaker) and `upstreams` (one breaker per host).
//! The example serves the admin API on loopback, prints the curl commands it accepts, then runs
//! a scripted session against it: traffic that opens a host's breaker, a reset of that host, a
//! forced open, a new configuration, and five bad requests that are refused with a 4xx and
//! change nothing. It exits after that, unless run with `--serve` (then it keeps serving, with
//! traffic in the background, until Ctrl-C: open the page in a browser).
//!
//! ```sh
//! cargo run --example admin
//! cargo run --example admin -- --serve   # and open http://127.0.0.1:3000/
//! ```

mod api;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use api::{Admin, TransitionLog};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{BoxError, Layer, ServiceExt, service_fn};
use tower_circuit_breaker::registry::{Registry, Snapshot};
use tower_circuit_breaker::{CircuitBreakerLayer, KeyedCircuitBreakerLayer, Window};

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let serve = std::env::args().any(|a| a == "--serve");
    let port = if serve { 3000 } else { 0 };

    // ===== the breakers and the services they guard =====
    let registry = Registry::new();
    let payments = registry.get_or_create(
        CircuitBreakerLayer::builder()
            .name("payments")
            .failure_rate_threshold(0.5)
            .sliding_window(Window::count(20))
            .minimum_calls(4)
            .consecutive_failures(3)
            .open_duration(Duration::from_secs(30)),
    )?;
    let upstreams = KeyedCircuitBreakerLayer::builder(|host: &&'static str| *host)
        .breaker(
            CircuitBreakerLayer::builder()
                .name("upstreams")
                .failure_rate_threshold(0.5)
                .sliding_window(Window::count(20))
                .minimum_calls(4)
                .consecutive_failures(2)
                .open_duration(Duration::from_secs(30)),
        )
        .max_keys(1_000)
        .build()?;
    registry.register_keyed(&upstreams)?;

    // b.example is down; payments works until the operator's script says otherwise.
    let payments_down = Arc::new(AtomicBool::new(false));
    let payments_svc = {
        let down = payments_down.clone();
        payments.layer(service_fn(move |amount: u32| {
            let down = down.load(Ordering::Relaxed);
            async move {
                if down {
                    Err("card processor timeout")
                } else {
                    Ok(amount)
                }
            }
        }))
    };
    let upstreams_svc = upstreams.layer(service_fn(|host: &'static str| async move {
        if host == "b.example" {
            Err("connection refused")
        } else {
            Ok(host)
        }
    }));

    // ===== the admin API =====
    let admin = Admin {
        registry: registry.clone(),
        log: TransitionLog::default(),
    };
    api::watch(&admin, Duration::from_millis(200));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, api::router(admin)).await });

    println!("admin API for the breakers `payments` and `upstreams` on {base}");
    println!("  curl -s {base}/breakers");
    println!(
        "  curl -s -X POST {base}/breakers/payments/force-open     # disable, metrics-only, reset"
    );
    println!("  curl -s -X POST '{base}/breakers/upstreams/reset?key=b.example'");
    println!(
        "  curl -s -X PUT -H 'content-type: application/json' -d '{{\"failure_rate_threshold\": 0.3}}' {base}/breakers/payments/config"
    );
    println!("  the operator's page: {base}/");
    println!();

    let traffic = |n: usize| traffic(payments_svc.clone(), upstreams_svc.clone(), n);

    if serve {
        println!("serving until Ctrl-C (traffic every second; b.example stays down)");
        loop {
            tokio::select! {
                _ = traffic(1) => tokio::time::sleep(Duration::from_secs(1)).await,
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    }

    // ===== the scripted session =====
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut refused = 0;

    println!("1. traffic: 5 payments, 5 calls each to a.example and b.example (down)");
    traffic(5).await;
    show(&client, &base).await?;

    println!("\n2. POST /breakers/upstreams/reset?key=b.example");
    let (status, _) = send(
        &client,
        "POST",
        &format!("{base}/breakers/upstreams/reset?key=b.example"),
        "",
    )
    .await?;
    println!("   {status}");
    show(&client, &base).await?;

    println!("\n3. the card processor fails: payments opens; an operator then forces it open");
    payments_down.store(true, Ordering::Relaxed);
    traffic(3).await;
    let (status, _) = send(
        &client,
        "POST",
        &format!("{base}/breakers/payments/force-open"),
        "",
    )
    .await?;
    println!("   POST /breakers/payments/force-open: {status}");
    show(&client, &base).await?;

    println!("\n4. PUT /breakers/upstreams/config: open after 5 failures, a 50-call window");
    let body = r#"{"consecutive_failures": 5, "window_calls": 50}"#;
    let (status, _) = send(
        &client,
        "PUT",
        &format!("{base}/breakers/upstreams/config"),
        body,
    )
    .await?;
    println!("   {status}");

    println!("\n5. bad requests, each refused and changing nothing");
    let before = listing(&client, &base).await?;
    for (method, path, body) in [
        ("POST", "/breakers/nope/reset", ""),
        ("POST", "/breakers/payments/explode", ""),
        (
            "PUT",
            "/breakers/payments/config",
            "{\"failure_rate_threshold\": ",
        ),
        (
            "PUT",
            "/breakers/payments/config",
            "{\"failure_rate_treshold\": 0.5}",
        ),
        (
            "PUT",
            "/breakers/payments/config",
            "{\"failure_rate_threshold\": 1.5}",
        ),
    ] {
        let (status, answer) = send(&client, method, &format!("{base}{path}"), body).await?;
        println!("   {method} {path} {body}\n     -> {status} {answer}");
        refused += usize::from(status.is_client_error());
    }
    let after = listing(&client, &base).await?;
    let unchanged = strip_timing(before) == strip_timing(after);

    println!(
        "\nsummary: {refused} of 5 bad requests refused with a 4xx; breakers unchanged by them: {unchanged}"
    );
    if refused != 5 || !unchanged {
        return Err("the admin API accepted a bad request".into());
    }
    Ok(())
}

/// `n` rounds of calls: a payment, then one call to each host.
async fn traffic<P, U>(payments: P, upstreams: U, n: usize)
where
    P: tower::Service<u32> + Clone,
    U: tower::Service<&'static str> + Clone,
{
    for i in 0..n {
        let _ = payments.clone().oneshot(i as u32 + 1).await;
        for host in ["a.example", "b.example"] {
            let _ = upstreams.clone().oneshot(host).await;
        }
    }
}

/// Sends a request; returns the status and the body.
async fn send(
    client: &HttpClient,
    method: &str,
    url: &str,
    body: &str,
) -> Result<(hyper::StatusCode, String), BoxError> {
    let request = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let response = client.request(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

async fn listing(client: &HttpClient, base: &str) -> Result<Vec<serde_json::Value>, BoxError> {
    let (_, body) = send(client, "GET", &format!("{base}/breakers"), "").await?;
    Ok(serde_json::from_str(&body)?)
}

/// The rows without the retry-after, which counts down between two looks.
fn strip_timing(mut rows: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    for row in &mut rows {
        row.as_object_mut().map(|o| o.remove("retry_after_ms"));
    }
    rows.sort_by_key(|row| row.to_string());
    rows
}

/// Prints `GET /breakers` as a table.
async fn show(client: &HttpClient, base: &str) -> Result<(), BoxError> {
    let rows: Vec<serde_json::Value> = listing(client, base).await?;
    println!(
        "   {:<10} {:<11} {:<12} {:>14} {:>8} {:>6} {:>10} {:>12}",
        "name", "key", "state", "failure rate", "failures", "calls", "rejections", "retry after"
    );
    let mut rows = rows;
    rows.sort_by_key(|row| (row["name"].to_string(), row["key"].to_string()));
    for row in rows {
        let text = |field: &str| row[field].as_str().unwrap_or("").to_string();
        let number = |field: &str| row[field].as_u64().map_or(String::new(), |n| n.to_string());
        let retry = row["retry_after_ms"]
            .as_u64()
            .map_or(String::new(), |ms| format!("{:.1} s", ms as f64 / 1000.0));
        let rate = |field: &str| {
            row[field]
                .as_f64()
                .map_or("–".to_string(), |r| format!("{:.0} %", 100.0 * r))
        };
        println!(
            "   {:<10} {:<11} {:<12} {:>14} {:>8} {:>6} {:>10} {:>12}",
            text("name"),
            text("key"),
            text("state"),
            format!(
                "{} / {}",
                rate("failure_rate"),
                rate("failure_rate_threshold")
            ),
            number("failed"),
            number("calls"),
            number("rejections"),
            retry
        );
    }
    Ok(())
}

// `Snapshot` is what `GET /breakers` serializes.
const _: fn(Snapshot) = |_| {};
