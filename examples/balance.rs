//! Three replicas of a service, `a`, `b` and `c`, behind tower's power-of-two-choices balancer
//! (`tower::balance::p2c`). Each replica is reached through its own circuit breaker in the
//! readiness mode: while its circuit is open the replica reports itself *not ready*, so the
//! balancer, which picks among ready replicas, routes around it, and no call is rejected. When a
//! probe becomes possible (after 500 ms open) the replica is ready again, the balancer sends it a
//! call, and that call is the probe. The three breakers share a panic group: when more than half
//! of them are open, none of them gates, and calls reach every replica again rather than piling
//! onto the last one standing.
//!
//! Run 1: `b` answers `500` for a while, then recovers. Run 2: `a` and `b` fail together, and the
//! group panics until `a` recovers. Each breaker opens after 5 failures in a row (`HttpClassify`:
//! a `5xx` is a failure). The replicas are real HTTP servers on loopback (axum); the balancer
//! calls them through hyper-util's `Client`, 500 calls a second, several in flight.
//!
//! Prints one line per quarter second (each breaker's state, what each replica answered, what
//! the callers got), the breakers' transitions and the group's panics as they happen, and for
//! run 1 the calls `b` got after it failed and its time to rejoin after it recovered. Exits by
//! itself in under ten seconds.
//!
//! ```sh
//! cargo run --example balance
//! ```

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use bytes::Bytes;
use examples::Server;
use futures::StreamExt;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::TokioExecutor;
use tokio::time::{Instant, MissedTickBehavior};
use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PendingRequests};
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_circuit_breaker::http::HttpClassify;
use tower_circuit_breaker::readiness::PanicGroup;
use tower_circuit_breaker::{CircuitBreaker, CircuitBreakerLayer, Event, Handle, State};

const NAMES: [&str; 3] = ["a", "b", "c"];
const FAILURES_TO_OPEN: u32 = 5;
const OPEN_FOR: Duration = Duration::from_millis(500);
/// One line of the timeline per interval.
const TICK: Duration = Duration::from_millis(250);
const CALL_EVERY: Duration = Duration::from_millis(2);

/// One run: which replicas answer `500`, and when (from the start of the run).
struct Scenario {
    title: &'static str,
    outages: [Option<Range<Duration>>; 3],
    length: Duration,
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    println!(
        "Three replicas behind p2c, each behind its own breaker: open after {FAILURES_TO_OPEN} \
         failures in a row, for {} ms; all three in one panic group (panics while more than \
         half is open).",
        OPEN_FOR.as_millis()
    );
    println!(
        "A call every {} ms. Columns: each breaker's state and what its replica answered in the \
         interval (200s/500s); the group; what the callers got (lost: no HTTP answer at all).",
        CALL_EVERY.as_millis()
    );

    let one = run(Scenario {
        title: "Run 1: b answers 500 from 1000 ms to 2600 ms",
        outages: [None, Some(ms(1000)..ms(2600)), None],
        length: ms(4000),
    })
    .await?;
    let b = &one.replicas[1];
    println!("\nrun 1, the numbers:");
    println!(
        "  calls sent to b after it failed:  {} ({} before its circuit opened, {} probes, {} \
         already on their way when it opened)",
        b.calls_while_down,
        FAILURES_TO_OPEN,
        b.probes_while_down,
        b.calls_while_down
            .saturating_sub(u64::from(FAILURES_TO_OPEN) + b.probes_while_down),
    );
    match b.rejoined_after {
        Some(after) => println!(
            "  time from b's recovery to its rejoining (its first 200): {} ms (the rest of the \
             open interval its last failed probe started)",
            after.as_millis()
        ),
        None => println!("  b did not rejoin before the end of the run"),
    }
    println!(
        "  calls lost: {} of {}; calls that got a 500: {}",
        one.lost, one.sent, one.failed
    );

    let two = run(Scenario {
        title: "Run 2: a answers 500 from 500 ms to 1800 ms, b from 500 ms to 2800 ms",
        outages: [Some(ms(500)..ms(1800)), Some(ms(500)..ms(2800)), None],
        length: ms(4000),
    })
    .await?;
    println!("\nrun 2, the numbers:");
    println!(
        "  the group panicked for {} ms in all ({} time(s)); in the intervals marked PANIC, a \
         got {} calls, b {}, c {}",
        two.panicking_for.as_millis(),
        two.panics,
        two.replicas[0].calls_while_panicking,
        two.replicas[1].calls_while_panicking,
        two.replicas[2].calls_while_panicking,
    );
    println!(
        "  calls lost: {} of {}; calls that got a 500: {}",
        two.lost, two.sent, two.failed
    );
    println!(
        "\nWithout the panic group, c alone would have taken every call while a and b were \
         open; without the readiness mode, the balancer would have kept picking the open \
         replicas, whose breakers reject (an error for the caller) instead of waiting."
    );
    Ok(())
}

// ===== one run =====

/// What a run measured.
#[derive(Default)]
struct Summary {
    sent: u64,
    failed: u64,
    lost: u64,
    panics: u64,
    panicking_for: Duration,
    replicas: [ReplicaSummary; 3],
}

#[derive(Default)]
struct ReplicaSummary {
    /// Calls the replica got while it was answering 500.
    calls_while_down: u64,
    /// Half-open episodes of its breaker while it was down: the probes it was allowed.
    probes_while_down: u64,
    calls_while_panicking: u64,
    /// From its recovery to its first 200.
    rejoined_after: Option<Duration>,
}

/// A replica as the balancer sees it: its breaker, and the load p2c compares.
type Endpoint = PendingRequests<CircuitBreaker<Upstream, HttpClassify>, CompleteOnResponse>;

async fn run(scenario: Scenario) -> Result<Summary, BoxError> {
    println!("\n{}\n", scenario.title);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let group = PanicGroup::default();
    let start = Instant::now();

    let mut replicas = Vec::new();
    let mut handles = Vec::new();
    let mut endpoints = Vec::new();
    for name in NAMES {
        let replica = Replica::start(name).await?;
        let breaker = CircuitBreakerLayer::builder()
            .name(name)
            .consecutive_failures(FAILURES_TO_OPEN)
            .open_duration(OPEN_FOR)
            .classify(HttpClassify::new())
            .build()?
            // Not ready while open, rather than ready and rejecting: the balancer goes elsewhere.
            .pending_while_open()
            .in_panic_group(&group);
        print_transitions(&breaker.handle(), start, replica.probes.clone());
        handles.push(breaker.handle());
        let upstream = Upstream {
            client: client.clone(),
            addr: replica.addr,
        };
        // p2c compares the calls in flight of two replicas picked at random.
        endpoints.push(PendingRequests::new(
            breaker.layer(upstream),
            CompleteOnResponse::default(),
        ));
        replicas.push(replica);
    }
    let mut balance: Balance<ServiceList<Vec<Endpoint>>, Request<Empty<Bytes>>> =
        Balance::new(ServiceList::new(endpoints));

    print_header();
    let callers = Arc::new(Callers::default());
    let mut summary = Summary::default();
    let mut panicking_since: Option<Instant> = None;
    let mut next_line = start + TICK;
    let mut calls = tokio::time::interval(CALL_EVERY);
    calls.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while start.elapsed() < scenario.length {
        calls.tick().await;
        let now = start.elapsed();
        for (replica, outage) in replicas.iter().zip(&scenario.outages) {
            let down = outage.as_ref().is_some_and(|o| o.contains(&now));
            if replica.set_failing(down) {
                let what = if down {
                    "starts answering 500"
                } else {
                    "has recovered"
                };
                println!("{:>6} ms  -- {} {what}", now.as_millis(), replica.name);
            }
        }

        let panicking = group.is_panicking();
        if panicking != panicking_since.is_some() {
            let count = |state: State| handles.iter().filter(|h| h.state() == state).count();
            let (open, half_open) = (count(State::Open), count(State::HalfOpen));
            let at = start.elapsed().as_millis();
            if panicking {
                summary.panics += 1;
                panicking_since = Some(Instant::now());
                println!(
                    "{at:>6} ms  !! the group panics ({open} of 3 open): gates lifted, calls go \
                     to every replica"
                );
            } else {
                summary.panicking_for += panicking_since
                    .take()
                    .map_or(Duration::ZERO, |s| s.elapsed());
                // A half-open breaker does not count as open: while the open ones probe, the
                // group is calm and gates them, until a probe fails.
                println!(
                    "{at:>6} ms  !! the group is calm ({open} open, {half_open} half-open): the \
                     open ones are gated again"
                );
            }
        }

        let request = Request::get("/").body(Empty::new())?;
        let call = balance.ready().await?.call(request);
        callers.sent.fetch_add(1, Relaxed);
        tokio::spawn(callers.clone().answer(call));

        if Instant::now() >= next_line {
            next_line += TICK;
            let line = Line::take(&replicas, &handles, &callers, panicking);
            line.print(start);
            for (i, counts) in line.replicas.iter().enumerate() {
                let calls = counts.ok + counts.failed;
                if panicking {
                    summary.replicas[i].calls_while_panicking += calls;
                }
            }
        }
    }
    if let Some(since) = panicking_since {
        summary.panicking_for += since.elapsed();
    }
    // Let the last calls come back before counting them.
    tokio::time::sleep(ms(50)).await;
    Line::take(&replicas, &handles, &callers, group.is_panicking()).print(start);

    summary.sent = callers.sent.load(Relaxed);
    summary.failed = callers.failed_total.load(Relaxed);
    summary.lost = callers.lost_total.load(Relaxed);
    for (i, replica) in replicas.iter().enumerate() {
        let out = &mut summary.replicas[i];
        out.calls_while_down = replica.calls_while_down.load(Relaxed);
        out.probes_while_down = replica.probes_while_down.load(Relaxed);
        out.rejoined_after = replica.rejoined_after();
    }

    drop(balance);
    drop(client);
    for replica in replicas {
        replica.server.stop().await?;
    }
    Ok(summary)
}

/// Prints each transition of a breaker as it happens, and counts the probes its replica gets
/// while down (each Open -> HalfOpen allows one).
fn print_transitions(handle: &Handle, start: Instant, probes: Arc<Probes>) {
    let mut events = handle.subscribe();
    let name = handle.name().unwrap_or("?").to_owned();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if let Event::StateTransition { from, to, .. } = event {
                let at = start.elapsed().as_millis();
                let note = match (from, to) {
                    (State::Closed, State::Open) => ": not ready, the balancer routes around it",
                    (State::Open, State::HalfOpen) => ": ready for one call, the probe",
                    (State::HalfOpen, State::Open) => ": the probe failed",
                    (State::HalfOpen, State::Closed) => ": the probe succeeded, back in rotation",
                    _ => "",
                };
                println!("{at:>6} ms  ** {name}: {from} -> {to}{note}");
                if to == State::HalfOpen {
                    probes.allowed();
                }
            }
        }
    });
}

fn print_header() {
    let mut header = format!("{:>9} ", "time");
    for name in NAMES {
        header += &format!("  {:<9} {:>9} ", format!("{name}: state"), "200s/500s");
    }
    header += &format!(
        " {:<6} {:>6} {:>6} {:>5} {:>5}",
        "group", "calls", "200s", "500s", "lost"
    );
    println!("{header}");
}

// ===== the callers' side =====

/// What the callers got, since the last line and in all.
#[derive(Default)]
struct Callers {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    lost: AtomicU64,
    failed_total: AtomicU64,
    lost_total: AtomicU64,
}

impl Callers {
    async fn answer<F>(self: Arc<Self>, call: F)
    where
        F: Future<Output = Result<Response<Incoming>, BoxError>>,
    {
        let answered = async {
            let response = call.await?;
            let status = response.status();
            response.into_body().collect().await?;
            Ok::<_, BoxError>(status)
        };
        match tokio::time::timeout(Duration::from_secs(5), answered).await {
            Ok(Ok(status)) if status.is_success() => {
                self.ok.fetch_add(1, Relaxed);
            }
            Ok(Ok(_)) => {
                self.failed.fetch_add(1, Relaxed);
                self.failed_total.fetch_add(1, Relaxed);
            }
            Ok(Err(error)) => {
                println!("            a call was lost: {error}");
                self.lost.fetch_add(1, Relaxed);
                self.lost_total.fetch_add(1, Relaxed);
            }
            Err(_) => {
                println!("            a call was lost: no answer within 5 s");
                self.lost.fetch_add(1, Relaxed);
                self.lost_total.fetch_add(1, Relaxed);
            }
        }
    }
}

/// One line of the timeline.
struct Line {
    states: Vec<State>,
    replicas: Vec<Counts>,
    panicking: bool,
    ok: u64,
    failed: u64,
    lost: u64,
}

struct Counts {
    ok: u64,
    failed: u64,
}

impl Line {
    /// Takes the counts since the last line.
    fn take(replicas: &[Replica], handles: &[Handle], callers: &Callers, panicking: bool) -> Line {
        Line {
            states: handles.iter().map(Handle::state).collect(),
            replicas: replicas
                .iter()
                .map(|r| Counts {
                    ok: r.ok.swap(0, Relaxed),
                    failed: r.failed.swap(0, Relaxed),
                })
                .collect(),
            panicking,
            ok: callers.ok.swap(0, Relaxed),
            failed: callers.failed.swap(0, Relaxed),
            lost: callers.lost.swap(0, Relaxed),
        }
    }

    fn print(&self, start: Instant) {
        let mut line = format!("{:>6} ms ", start.elapsed().as_millis());
        for (state, counts) in self.states.iter().zip(&self.replicas) {
            let answered = format!("{}/{}", counts.ok, counts.failed);
            line += &format!("  {:<9} {answered:>9} ", state.to_string());
        }
        let group = if self.panicking { "PANIC" } else { "-" };
        line += &format!(
            " {group:<6} {:>6} {:>6} {:>5} {:>5}",
            self.ok + self.failed + self.lost,
            self.ok,
            self.failed,
            self.lost
        );
        println!("{line}");
    }
}

// ===== the client =====

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// The client, sending each request (which carries only a path) to one replica.
#[derive(Clone)]
struct Upstream {
    client: HttpClient,
    addr: SocketAddr,
}

impl Service<Request<Empty<Bytes>>> for Upstream {
    type Response = Response<Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.client.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Empty<Bytes>>) -> ResponseFuture {
        let path = request.uri().path().to_owned();
        *request.uri_mut() = Uri::builder()
            .scheme("http")
            .authority(self.addr.to_string())
            .path_and_query(path)
            .build()
            .expect("a socket address and a path make a URI");
        self.client.call(request)
    }
}

// ===== the replicas =====

/// A replica: an HTTP server on loopback that answers `200`, or `500` while it is told to fail.
/// It counts what it answered, and remembers when it recovered and when it next answered `200`.
struct Replica {
    name: &'static str,
    addr: SocketAddr,
    server: Server,
    failing: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    calls_while_down: Arc<AtomicU64>,
    probes_while_down: Arc<AtomicU64>,
    probes: Arc<Probes>,
    recovery: Arc<Recovery>,
}

/// Counts the probes a replica's breaker allows while the replica is down.
struct Probes {
    failing: Arc<AtomicBool>,
    while_down: Arc<AtomicU64>,
}

impl Probes {
    fn allowed(&self) {
        if self.failing.load(Relaxed) {
            self.while_down.fetch_add(1, Relaxed);
        }
    }
}

#[derive(Default)]
struct Recovery {
    /// When the replica last recovered, and its first `200` after that.
    at: Mutex<Option<(Instant, Option<Instant>)>>,
}

impl Replica {
    async fn start(name: &'static str) -> io::Result<Replica> {
        let failing = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let calls_while_down = Arc::new(AtomicU64::new(0));
        let recovery = Arc::new(Recovery::default());
        let app = {
            let (failing, ok, failed) = (failing.clone(), ok.clone(), failed.clone());
            let (calls_while_down, recovery) = (calls_while_down.clone(), recovery.clone());
            Router::new().fallback(move || {
                let status = if failing.load(Relaxed) {
                    failed.fetch_add(1, Relaxed);
                    calls_while_down.fetch_add(1, Relaxed);
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    ok.fetch_add(1, Relaxed);
                    if let Some((_, first @ None)) = &mut *recovery.at.lock().unwrap() {
                        *first = Some(Instant::now());
                    }
                    StatusCode::OK
                };
                async move { (status, name) }
            })
        };
        let server = Server::start(app).await?;
        let probes_while_down = Arc::new(AtomicU64::new(0));
        Ok(Replica {
            name,
            addr: server.addr,
            server,
            probes: Arc::new(Probes {
                failing: failing.clone(),
                while_down: probes_while_down.clone(),
            }),
            failing,
            ok,
            failed,
            calls_while_down,
            probes_while_down,
            recovery,
        })
    }

    /// Makes the replica fail or recover; returns whether that changed anything.
    fn set_failing(&self, failing: bool) -> bool {
        let changed = self.failing.swap(failing, Relaxed) != failing;
        if changed && !failing {
            *self.recovery.at.lock().unwrap() = Some((Instant::now(), None));
        }
        changed
    }

    fn rejoined_after(&self) -> Option<Duration> {
        match *self.recovery.at.lock().unwrap() {
            Some((recovered, Some(first_ok))) => Some(first_ok - recovered),
            _ => None,
        }
    }
}

// ===== servers on loopback =====
