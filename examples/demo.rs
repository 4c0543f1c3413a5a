//! A checkout service charges cards through a payment provider over HTTP. After 1.2 seconds
//! the provider starts answering `500 Internal Server Error`; 1.6 seconds later it recovers.
//!
//! The checkout calls the provider through a circuit breaker that classifies HTTP responses
//! (`HttpClassify`: a `5xx` is a failure) and opens after 5 failures in a row. While it is open,
//! payments go to a backup provider (the fallback: a second HTTP server, called through the same
//! kind of client). After one second a probe goes to the primary again: it fails the first time
//! (the primary is still down), succeeds the second, and the circuit closes.
//!
//! Both providers are real HTTP servers on loopback; the checkout calls them through hyper-util's
//! `Client`. It prints one line per half second (the state, and what happened to the payments),
//! each state transition as it happens, and a summary. Exits by itself in about five seconds.
//!
//! ```sh
//! cargo run --example demo
//! ```

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use axum::Router;
use axum::extract::State as Shared;
use axum::http::StatusCode;
use axum::routing::post;
use bytes::Bytes;
use examples::Server;
use futures::StreamExt;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_circuit_breaker::http::HttpClassify;
use tower_circuit_breaker::{CircuitBreakerLayer, Event, Handle, State};

/// When the primary provider answers 500, relative to the start.
const OUTAGE: Range<Duration> = Duration::from_millis(1200)..Duration::from_millis(2800);
const RUN_FOR: Duration = Duration::from_millis(5000);
/// One line of the timeline per interval.
const TICK: Duration = Duration::from_millis(500);
const PAY_EVERY: Duration = Duration::from_millis(20);

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let primary = Provider::start("primary").await?;
    let backup = Provider::start("backup").await?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    // Every payment the breaker rejects is sent to the backup provider; count them on the way.
    let rerouted = Arc::new(AtomicU64::new(0));
    let to_backup = {
        let rerouted = rerouted.clone();
        provider_at(&client, backup.addr).map_request(move |payment| {
            rerouted.fetch_add(1, Relaxed);
            payment
        })
    };

    let breaker = CircuitBreakerLayer::builder()
        .name("payments")
        .consecutive_failures(5)
        .open_duration(Duration::from_secs(1))
        .classify(HttpClassify::new())
        .build()?
        .with_fallback(to_backup);
    let handle = breaker.handle();
    let mut checkout = ServiceBuilder::new()
        .layer(breaker)
        .service(provider_at(&client, primary.addr));

    let start = Instant::now();
    print_transitions(&handle, start);
    print_header();

    let mut interval = Tally::default();
    let mut total = Tally::default();
    let mut during_outage = 0;
    let mut next_line = start + TICK;
    let mut payments = tokio::time::interval(PAY_EVERY);
    let mut order = 0;
    while start.elapsed() < RUN_FOR {
        payments.tick().await;
        let down = OUTAGE.contains(&start.elapsed());
        if primary.set_failing(down) {
            let what = if down {
                "starts answering 500"
            } else {
                "has recovered"
            };
            println!(
                "{:>6} ms  -- the primary provider {what}",
                start.elapsed().as_millis()
            );
        }
        during_outage += u64::from(down);

        order += 1;
        interval.payments += 1;
        // Once the open interval is over, the next payment is the probe.
        let probe = handle.state() == State::HalfOpen;
        let paid = pay(&mut checkout, order).await;
        // An error is a payment that failed for the customer: a 500 of the primary before the
        // circuit opened (or a failed probe), or a transport error.
        interval.errors += u64::from(paid.is_err());
        if probe || paid.is_err() {
            let what = match paid {
                Ok(receipt) => receipt,
                Err(e) => e.to_string(),
            };
            let label = if probe { " (the probe)" } else { "" };
            let at = start.elapsed().as_millis();
            println!("{at:>6} ms     order {order}{label}: {what}");
        }

        if Instant::now() >= next_line {
            next_line += TICK;
            interval.count(&primary, &backup, &rerouted);
            interval.print_line(start, handle.state());
            total.add(&interval);
            interval = Tally::default();
        }
    }
    interval.count(&primary, &backup, &rerouted);
    total.add(&interval);

    total.print_summary(during_outage, handle.state());

    // Close the pooled connections before stopping the servers.
    drop(checkout);
    drop(client);
    primary.stop().await?;
    backup.stop().await?;
    Ok(())
}

// ===== what the checkout prints =====

fn print_header() {
    println!(
        "The checkout charges a card every {} ms; the primary provider answers 500 from {} ms to \
         {} ms.",
        PAY_EVERY.as_millis(),
        OUTAGE.start.as_millis(),
        OUTAGE.end.as_millis(),
    );
    println!("The breaker opens after 5 failures in a row and sends payments to the backup;");
    println!("after 1 s open, it lets one payment through to the primary as a probe.\n");
    println!("  rejected: payments the breaker kept from the primary (sent to the backup instead)");
    println!("  errors:   payments that failed for the customer\n");
    println!(
        "  time     state       payments  primary ok  primary 500  rejected  backup ok  errors"
    );
}

/// Prints each transition of the breaker the moment it happens.
fn print_transitions(handle: &Handle, start: Instant) {
    let mut events = handle.subscribe();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if let Event::StateTransition { from, to, .. } = event {
                let at = start.elapsed().as_millis();
                println!("{at:>6} ms  ** circuit {from} -> {to}");
            }
        }
    });
}

// ===== the checkout =====

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The client, sending each request to the provider at `addr`: the checkout's requests carry
/// only a path, so that the same request can go to either provider.
fn provider_at(
    client: &HttpClient,
    addr: SocketAddr,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = http::Response<hyper::body::Incoming>,
    Error = hyper_util::client::legacy::Error,
    Future: Send,
> + Clone
+ Send
+ 'static {
    client
        .clone()
        .map_request(move |mut request: Request<Full<Bytes>>| {
            let path = request.uri().path().to_owned();
            *request.uri_mut() = Uri::builder()
                .scheme("http")
                .authority(addr.to_string())
                .path_and_query(path)
                .build()
                .expect("a socket address and a path make a URI");
            request
        })
}

/// Charges order `order`: the provider's receipt, or why it failed.
async fn pay<S>(checkout: &mut S, order: u64) -> Result<String, BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = http::Response<hyper::body::Incoming>>,
    S::Error: Into<BoxError>,
{
    let payment = Request::post("/charge")
        .body(Full::from(format!("order={order}&amount=42.00")))
        .expect("a valid request");
    let response = checkout
        .ready()
        .await
        .map_err(Into::into)?
        .call(payment)
        .await
        .map_err(Into::into)?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("payment failed: the provider answered {status}").into());
    }
    let receipt = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&receipt).into_owned())
}

/// What happened to the payments in one interval (or in all of them).
#[derive(Default)]
struct Tally {
    payments: u64,
    primary_ok: u64,
    primary_failed: u64,
    rejected: u64,
    backup_ok: u64,
    errors: u64,
}

impl Tally {
    /// Takes what the providers answered, and what the breaker rerouted, since the last count.
    fn count(&mut self, primary: &Provider, backup: &Provider, rerouted: &AtomicU64) {
        (self.primary_ok, self.primary_failed) = primary.take_counts();
        (self.backup_ok, _) = backup.take_counts();
        self.rejected = rerouted.swap(0, Relaxed);
    }

    fn print_line(&self, start: Instant, state: State) {
        println!(
            "{:>6} ms  {:<10} {:>9} {:>11} {:>12} {:>9} {:>10} {:>7}",
            start.elapsed().as_millis(),
            state.to_string(),
            self.payments,
            self.primary_ok,
            self.primary_failed,
            self.rejected,
            self.backup_ok,
            self.errors,
        );
    }

    fn print_summary(&self, during_outage: u64, state: State) {
        println!("\nsummary");
        println!("  payments                   {}", self.payments);
        println!("  charged by the primary     {}", self.primary_ok);
        println!(
            "  charged by the backup      {} (every payment the breaker rejected: {})",
            self.backup_ok, self.rejected
        );
        println!(
            "  failed for the customer    {} (before the circuit opened, and failed probes)",
            self.errors
        );
        println!(
            "  without the breaker        {during_outage} payments would have failed during the \
             outage"
        );
        println!("  final state                {state}");
    }

    fn add(&mut self, other: &Tally) {
        self.payments += other.payments;
        self.primary_ok += other.primary_ok;
        self.primary_failed += other.primary_failed;
        self.rejected += other.rejected;
        self.backup_ok += other.backup_ok;
        self.errors += other.errors;
    }
}

// ===== the payment providers =====

/// A payment provider: an HTTP server on loopback that charges cards (`POST /charge`), or
/// answers `500` while it is told to fail. It counts what it answered.
struct Provider {
    server: Server,
    addr: SocketAddr,
    failing: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

#[derive(Clone)]
struct ProviderState {
    name: &'static str,
    failing: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl Provider {
    async fn start(name: &'static str) -> io::Result<Provider> {
        let state = ProviderState {
            name,
            failing: Arc::default(),
            ok: Arc::default(),
            failed: Arc::default(),
        };
        let app = Router::new()
            .route("/charge", post(charge))
            .with_state(state.clone());
        let server = Server::start(app).await?;
        Ok(Provider {
            addr: server.addr,
            server,
            failing: state.failing,
            ok: state.ok,
            failed: state.failed,
        })
    }

    /// Makes the provider fail or recover; returns whether that changed anything.
    fn set_failing(&self, failing: bool) -> bool {
        self.failing.swap(failing, Relaxed) != failing
    }

    /// The counts since the last call: charged, failed.
    fn take_counts(&self) -> (u64, u64) {
        (self.ok.swap(0, Relaxed), self.failed.swap(0, Relaxed))
    }

    async fn stop(self) -> io::Result<()> {
        self.server.stop().await
    }
}

async fn charge(Shared(provider): Shared<ProviderState>) -> (StatusCode, String) {
    if provider.failing.load(Relaxed) {
        provider.failed.fetch_add(1, Relaxed);
        (StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
    } else {
        provider.ok.fetch_add(1, Relaxed);
        (StatusCode::OK, format!("charged by {}", provider.name))
    }
}

// ===== servers on loopback =====
