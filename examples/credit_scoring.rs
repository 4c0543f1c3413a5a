//! A bank scores loan applications with an external credit-scoring API over HTTP, with a
//! 250 ms timeout per call and up to 2 retries. The API goes down: it hangs, and every call times
//! out. Ten applications arrive, one every 100 ms, twice:
//!
//! 1. **Without a circuit breaker** (retry + timeout): every application makes all of its
//!    3 attempts, and every attempt reaches the struggling API and waits out the timeout. That is
//!    the retry storm.
//! 2. **With a circuit breaker** between the retry and the timeout: it opens after 3 timeouts in a
//!    row; from then on every attempt is rejected at once, and `RespectBreaker` does not retry a
//!    rejection. The rejection says when to come back (`Rejected::retry_at`): the bank parks the
//!    rejected applications until then. By that time the API has recovered; the first resubmitted
//!    application is the probe that closes the circuit, and every parked application is scored.
//!
//! The API is a real HTTP server on loopback that counts the requests that reach it; the bank
//! calls it through hyper-util's `Client`. Prints each application's fate, the transitions, and a
//! summary of both rounds. Exits by itself in about four seconds.
//!
//! ```sh
//! cargo run --example credit_scoring
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State as Shared};
use axum::routing::get;
use bytes::Bytes;
use examples::Server;
use futures::StreamExt;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep, sleep, sleep_until};
use tower::retry::Policy;
use tower::timeout::error::Elapsed;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_circuit_breaker::error::Rejected;
use tower_circuit_breaker::http::{HttpClassify, HttpHints};
use tower_circuit_breaker::retry::RespectBreaker;
use tower_circuit_breaker::{CircuitBreakerLayer, Event, Handle};

const APPLICATIONS: u32 = 10;
const ARRIVE_EVERY: Duration = Duration::from_millis(100);
const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// Retries after the first attempt.
const RETRIES: u32 = 2;
const BACKOFF: Duration = Duration::from_millis(50);
/// How long the API takes to answer while it is down: far longer than the bank waits.
const HANG: Duration = Duration::from_secs(1);
/// In the second round, when the API recovers.
const RECOVERS_AT: Duration = Duration::from_millis(1200);

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let api = ScoringApi::start().await?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    print_header();

    println!("\nround 1: retry, timeout; no circuit breaker\n");
    api.set_down(true);
    let scoring = ServiceBuilder::new()
        .retry(Attempts::new(RETRIES))
        .map_request(Application::attempt)
        .timeout(CALL_TIMEOUT)
        .service(scoring_api(&client, api.addr));
    let without = run_round(scoring, Instant::now()).await;
    let reached_without = api.take_reached();
    println!("\n  requests that reached the scoring API: {reached_without}");

    println!(
        "\nround 2: retry, circuit breaker (opens after 3 failures in a row, for 1 s), timeout\n"
    );
    let breaker = CircuitBreakerLayer::builder()
        .name("credit-scoring")
        .consecutive_failures(3)
        .open_duration(Duration::from_secs(1))
        .classify(HttpClassify::new())
        .build()?;
    let handle = breaker.handle();
    let scoring = ServiceBuilder::new()
        // Never retries a rejection; would wait out an upstream's Retry-After.
        .retry(RespectBreaker::new(Attempts::new(RETRIES)).with_hints(HttpHints))
        .map_request(Application::attempt)
        .layer(breaker)
        // Under the breaker, so that a timeout counts as a failure (the breaker's own
        // `call_timeout` would do the same).
        .timeout(CALL_TIMEOUT)
        .service(scoring_api(&client, api.addr));

    let start = Instant::now();
    print_transitions(&handle, start);
    let recovery = api.recover_at(start + RECOVERS_AT, start);
    let with = run_round(scoring.clone(), start).await;
    let reached_with = api.take_reached();
    let resubmitted = resubmit_when_told(&scoring, &with, start).await;
    recovery.await?;

    println!("\nsummary, while the API was down             without breaker   with breaker");
    let row = |what: &str, without: u64, with: u64, unit: &str| {
        let (without, with) = (format!("{without}{unit}"), format!("{with}{unit}"));
        println!("  {what:<40} {without:>15} {with:>14}");
    };
    let reached = "requests that reached the scoring API";
    row(reached, reached_without, reached_with, "");
    let attempts = |fates: &[Fate]| sum(fates, |a| a.attempts.into());
    let made = "attempts the bank made";
    row(made, attempts(&without), attempts(&with), "");
    let waited = |fates: &[Fate]| sum(fates, |a| a.waited.as_millis() as u64);
    let answer = "time applicants waited for a first answer";
    row(answer, waited(&without), waited(&with), " ms");
    let scored = |fates: &[Fate]| sum(fates, |a| a.scored.into());
    println!(
        "  applications scored: {} without the breaker; {} with it, resubmitted when the \
         rejection said",
        scored(&without),
        scored(&resubmitted),
    );
    println!("  final state of the circuit: {}", handle.state());

    drop((scoring, client));
    api.stop().await?;
    Ok(())
}

fn print_header() {
    println!(
        "A bank scores loan applications with a credit-scoring API: {} ms timeout per call, up \
         to {RETRIES} retries.",
        CALL_TIMEOUT.as_millis()
    );
    println!(
        "The API is down (it hangs). {APPLICATIONS} applications arrive, one every {} ms; twice, \
         without and with a circuit breaker.",
        ARRIVE_EVERY.as_millis()
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

// ===== the bank =====

/// A loan application to score. Its retries share the count of attempts.
#[derive(Clone)]
struct Application {
    id: u32,
    attempts: Arc<AtomicU32>,
}

impl Application {
    fn new(id: u32) -> Self {
        Application {
            id,
            attempts: Arc::default(),
        }
    }

    /// Counts one attempt (for `map_request`, above the breaker: rejected attempts count too).
    fn attempt(self) -> Self {
        self.attempts.fetch_add(1, Relaxed);
        self
    }
}

/// What became of one application.
struct Fate {
    id: u32,
    attempts: u32,
    waited: Duration,
    scored: bool,
    /// Set when the breaker rejected it: when the circuit will admit a call again.
    come_back_at: Option<Instant>,
}

/// Sends `APPLICATIONS` applications, one every `ARRIVE_EVERY`, each in its own task, and
/// waits for all of them.
async fn run_round<S>(scoring: S, start: Instant) -> Vec<Fate>
where
    S: Service<Application, Response = Response<Incoming>, Error = BoxError>,
    S: Clone + Send + 'static,
    S::Future: Send,
{
    let mut applications = Vec::new();
    for id in 1..=APPLICATIONS {
        sleep_until(start + ARRIVE_EVERY * (id - 1)).await;
        let arrived = format!("arrived at {:>4} ms", start.elapsed().as_millis());
        applications.push(tokio::spawn(apply(scoring.clone(), id, start, arrived)));
    }
    let mut fates = Vec::new();
    for application in applications {
        fates.push(
            application
                .await
                .expect("an application's task does not panic"),
        );
    }
    fates
}

/// Resubmits the applications the breaker rejected, one after the other, at the time their
/// rejections gave (`Rejected::retry_at`): the first is the probe, and its success closes the
/// circuit.
async fn resubmit_when_told<S>(scoring: &S, fates: &[Fate], start: Instant) -> Vec<Fate>
where
    S: Service<Application, Response = Response<Incoming>, Error = BoxError> + Clone,
{
    let parked: Vec<u32> = fates
        .iter()
        .filter(|a| a.come_back_at.is_some())
        .map(|a| a.id)
        .collect();
    let Some(come_back_at) = fates.iter().filter_map(|a| a.come_back_at).max() else {
        return Vec::new();
    };
    sleep_until(come_back_at).await;
    println!(
        "{:>6} ms  the bank resubmits the {} parked applications, when the rejections said",
        start.elapsed().as_millis(),
        parked.len()
    );
    let mut resubmitted = Vec::new();
    for id in parked {
        resubmitted.push(apply(scoring.clone(), id, start, "resubmitted").await);
    }
    resubmitted
}

/// Scores application `id` and prints what became of it, after `label`.
async fn apply<S>(scoring: S, id: u32, start: Instant, label: impl std::fmt::Display) -> Fate
where
    S: Service<Application, Response = Response<Incoming>, Error = BoxError>,
{
    let application = Application::new(id);
    let attempts = application.attempts.clone();
    let arrived = Instant::now();
    let result = scoring.oneshot(application).await;
    let mut fate = Fate {
        id,
        attempts: attempts.load(Relaxed),
        waited: arrived.elapsed(),
        scored: false,
        come_back_at: None,
    };
    let what = match result {
        Ok(response) if response.status().is_success() => {
            fate.scored = true;
            match response.into_body().collect().await {
                Ok(body) => format!("scored: {}", String::from_utf8_lossy(&body.to_bytes())),
                Err(e) => format!("the score could not be read: {e}"),
            }
        }
        Ok(response) => format!("the API answered {}", response.status()),
        Err(e) => match Rejected::find(&*e) {
            Some(rejected) => {
                fate.come_back_at = rejected.retry_at();
                match rejected.retry_after() {
                    Some(after) => format!(
                        "rejected, not retried (circuit {}; come back in {} ms)",
                        rejected.state(),
                        after.as_millis()
                    ),
                    None => format!("rejected, not retried ({rejected})"),
                }
            }
            None if e.is::<Elapsed>() => "timed out".to_owned(),
            None => format!("failed: {e}"),
        },
    };
    println!(
        "{:>6} ms  application {id:>2} ({label}, {} attempt{}): {what}",
        start.elapsed().as_millis(),
        fate.attempts,
        if fate.attempts == 1 { "" } else { "s" },
    );
    fate
}

fn sum(fates: &[Fate], f: impl Fn(&Fate) -> u64) -> u64 {
    fates.iter().map(f).sum()
}

/// A retry policy: retries a failed call (an error or a `5xx`) up to `retries` times, after a
/// short pause. Tower clones it for each request, so each application has its own count.
#[derive(Clone)]
struct Attempts {
    retries: u32,
}

impl Attempts {
    fn new(retries: u32) -> Self {
        Attempts { retries }
    }
}

impl<Req: Clone, B> Policy<Req, Response<B>, BoxError> for Attempts {
    type Future = Sleep;

    fn retry(
        &mut self,
        _: &mut Req,
        result: &mut Result<Response<B>, BoxError>,
    ) -> Option<Self::Future> {
        let failed = match result {
            Ok(response) => response.status().is_server_error(),
            Err(_) => true,
        };
        if !failed || self.retries == 0 {
            return None;
        }
        self.retries -= 1;
        Some(sleep(BACKOFF))
    }

    fn clone_request(&mut self, request: &Req) -> Option<Req> {
        Some(request.clone())
    }
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// The client, turning an application into `GET /score/{id}` on the API at `addr`.
fn scoring_api(
    client: &HttpClient,
    addr: SocketAddr,
) -> impl Service<
    Application,
    Response = Response<Incoming>,
    Error = hyper_util::client::legacy::Error,
    Future: Send,
> + Clone
+ Send
+ 'static {
    client.clone().map_request(move |application: Application| {
        Request::get(format!("http://{addr}/score/{}", application.id))
            .body(Empty::new())
            .expect("a socket address and a path make a URI")
    })
}

// ===== the credit-scoring API =====

/// The credit-scoring API: an HTTP server on loopback (`GET /score/{id}`) that counts the
/// requests reaching it, and hangs while it is down.
struct ScoringApi {
    server: Server,
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    reached: Arc<AtomicU64>,
}

#[derive(Clone)]
struct ApiState {
    down: Arc<AtomicBool>,
    reached: Arc<AtomicU64>,
}

impl ScoringApi {
    async fn start() -> io::Result<ScoringApi> {
        let state = ApiState {
            down: Arc::default(),
            reached: Arc::default(),
        };
        let app = Router::new()
            .route("/score/{id}", get(score))
            .with_state(state.clone());
        let server = Server::start(app).await?;
        Ok(ScoringApi {
            addr: server.addr,
            server,
            down: state.down,
            reached: state.reached,
        })
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Relaxed);
    }

    /// The requests that reached the API since the last call.
    fn take_reached(&self) -> u64 {
        self.reached.swap(0, Relaxed)
    }

    /// Recovers at `at`, and says so.
    fn recover_at(&self, at: Instant, start: Instant) -> JoinHandle<()> {
        let down = self.down.clone();
        tokio::spawn(async move {
            sleep_until(at).await;
            down.store(false, Relaxed);
            let now = start.elapsed().as_millis();
            println!("{now:>6} ms  -- the scoring API has recovered");
        })
    }

    async fn stop(self) -> io::Result<()> {
        self.server.stop().await
    }
}

async fn score(Shared(api): Shared<ApiState>, Path(id): Path<u32>) -> String {
    api.reached.fetch_add(1, Relaxed);
    if api.down.load(Relaxed) {
        sleep(HANG).await;
    }
    format!("{}", 600 + (id * 37) % 250)
}

// ===== servers on loopback =====
