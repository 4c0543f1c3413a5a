//! The readiness mode behind `tower::balance::p2c`, against three real HTTP servers on loopback
//! (axum on hyper), each reached through hyper-util's `Client` wrapped in its own breaker.
//!
//! Real sockets do not mix with tokio's paused clock (it jumps ahead while the runtime waits on
//! IO), so these tests run on the real clock and make their correctness independent of timing:
//! the servers fail and recover when a test flips an atomic, an open interval is long (a minute)
//! where a test must see no probe and short where it waits for one, and every wait is bounded by
//! [`LIMIT`], failing with a message that says what did not happen.
//!
//! A call is *lost* when the caller gets no HTTP answer: the balancer or a breaker returns an
//! error (a rejection, a transport error, an endpoint p2c dropped), or nothing comes back within
//! [`LIMIT`]. A `500` is an answer: the failing endpoint's own, which its breaker needs to see.
#![cfg(feature = "http")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::TokioExecutor;
use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PendingRequests};
use tower::{BoxError, Service, ServiceExt};
use tower_circuit_breaker::error::Rejected;
use tower_circuit_breaker::http::HttpClassify;
use tower_circuit_breaker::readiness::PanicGroup;
use tower_circuit_breaker::{CircuitBreaker, CircuitBreakerLayer, Event, Handle, State};

/// Consecutive failures that open an endpoint's circuit.
const FAILURES: u32 = 3;
/// An open interval no test outlives: no probe.
const NO_PROBE: Duration = Duration::from_secs(60);
/// An open interval short enough to wait for its probes.
const PROBE_SOON: Duration = Duration::from_millis(30);
/// The bound on every wait, and on every call.
const LIMIT: Duration = Duration::from_secs(10);
/// The calls of one measured stretch.
const CALLS: usize = 300;
/// The fewest calls of a stretch an endpoint in rotation gets: p2c picks among three equally
/// loaded endpoints at random, so each expects a third (fewer than this is vanishingly unlikely).
const FAIR_SHARE: usize = CALLS / 10;

// ===== the servers =====

/// An HTTP server on loopback that answers `200` with its index as the body, or `500` while it
/// is told to fail, and counts the requests it got.
struct Backend {
    addr: SocketAddr,
    failing: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
}

impl Backend {
    async fn start(index: usize) -> Backend {
        let failing = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let app = {
            let (failing, served) = (failing.clone(), served.clone());
            Router::new().fallback(move || {
                served.fetch_add(1, Ordering::SeqCst);
                let status = if failing.load(Ordering::SeqCst) {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                };
                async move { (status, index.to_string()) }
            })
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Backend {
            addr,
            failing,
            served,
        }
    }

    fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Requests the server got, whatever it answered.
    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

// ===== the client side =====

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// The client, sending each request (which carries only a path) to one server.
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
            .unwrap();
        self.client.call(request)
    }
}

type Endpoint = PendingRequests<CircuitBreaker<Upstream, HttpClassify>, CompleteOnResponse>;

/// How the balancer is set up.
#[derive(Clone, Copy)]
enum Mode {
    /// Each breaker in the readiness mode, all three in one panic group.
    Readiness { open: Duration },
    /// Each breaker as it is by default: an open one is ready and rejects.
    Rejecting,
}

/// Three servers behind p2c, each through its own breaker.
struct Cluster {
    balance: Balance<ServiceList<Vec<Endpoint>>, Request<Empty<Bytes>>>,
    backends: Vec<Backend>,
    handles: Vec<Handle>,
    group: PanicGroup,
}

/// What one call through the balancer got.
#[derive(Debug)]
enum Answer {
    /// A `200` from the endpoint of this index.
    Ok(usize),
    /// A `500` from the endpoint of this index.
    Failed(usize),
    /// No HTTP answer: why.
    Lost(String),
}

/// What a stretch of calls got.
#[derive(Default)]
struct Tally {
    /// Calls answered by each endpoint (`200` or `500`).
    answered_by: [usize; 3],
    /// `500`s from each endpoint.
    failed_by: [usize; 3],
    /// Lost calls, with why.
    lost: Vec<String>,
    /// Lost calls that were a breaker's rejection.
    rejected: usize,
}

impl std::fmt::Debug for Tally {
    /// The counts, and the first lost call's story (a failure message stays short).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "answered by [0, 1, 2]: {:?}, of which 500: {:?}, lost: {} ({} rejected), first lost: {:?}",
            self.answered_by,
            self.failed_by,
            self.lost.len(),
            self.rejected,
            self.lost.first()
        )
    }
}

impl Tally {
    fn add(&mut self, answer: Answer) {
        match answer {
            Answer::Ok(i) => self.answered_by[i] += 1,
            Answer::Failed(i) => {
                self.answered_by[i] += 1;
                self.failed_by[i] += 1;
            }
            Answer::Lost(why) => {
                self.rejected += usize::from(why.starts_with("rejected"));
                self.lost.push(why);
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        for i in 0..3 {
            self.answered_by[i] += other.answered_by[i];
            self.failed_by[i] += other.failed_by[i];
        }
        self.lost.extend(other.lost);
        self.rejected += other.rejected;
    }

    #[track_caller]
    fn assert_none_lost(&self) {
        assert!(
            self.lost.is_empty(),
            "{} call(s) lost, first: {}",
            self.lost.len(),
            self.lost[0]
        );
    }
}

impl Cluster {
    async fn start(mode: Mode) -> Cluster {
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let group = PanicGroup::default();
        let (mut backends, mut handles, mut endpoints) = (Vec::new(), Vec::new(), Vec::new());
        for index in 0..3 {
            let backend = Backend::start(index).await;
            let open = match mode {
                Mode::Readiness { open } => open,
                Mode::Rejecting => NO_PROBE,
            };
            let mut layer = CircuitBreakerLayer::builder()
                .name(index.to_string())
                .consecutive_failures(FAILURES)
                .open_duration(open)
                .classify(HttpClassify::new())
                .build()
                .unwrap();
            if let Mode::Readiness { .. } = mode {
                layer = layer.pending_while_open().in_panic_group(&group);
            }
            let upstream = Upstream {
                client: client.clone(),
                addr: backend.addr,
            };
            handles.push(layer.handle());
            endpoints.push(PendingRequests::new(
                tower::Layer::layer(&layer, upstream),
                CompleteOnResponse::default(),
            ));
            backends.push(backend);
        }
        Cluster {
            balance: Balance::new(ServiceList::new(endpoints)),
            backends,
            handles,
            group,
        }
    }

    /// One call through the balancer, bounded by [`LIMIT`].
    async fn send(&mut self) -> Answer {
        let call = async {
            let request = Request::get("/").body(Empty::new()).unwrap();
            let response = self.balance.ready().await?.call(request).await?;
            read(response).await
        };
        match tokio::time::timeout(LIMIT, call).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => Answer::Lost(describe(&e)),
            Err(_) => Answer::Lost(format!("no answer within {LIMIT:?}")),
        }
    }

    /// `n` calls, one after the other.
    async fn send_many(&mut self, n: usize) -> Tally {
        let mut tally = Tally::default();
        for _ in 0..n {
            tally.add(self.send().await);
        }
        tally
    }

    /// `n` calls, `in_flight` of them at a time: the balancer picks an endpoint for the next
    /// call while the others are on the wire.
    async fn send_concurrently(&mut self, n: usize, in_flight: usize) -> Tally {
        let mut tally = Tally::default();
        let mut running = FuturesUnordered::new();
        for _ in 0..n {
            while running.len() >= in_flight {
                tally.add(running.next().await.expect("calls are running"));
            }
            let ready = tokio::time::timeout(LIMIT, self.balance.ready()).await;
            let call = match ready {
                Ok(Ok(balance)) => balance.call(Request::get("/").body(Empty::new()).unwrap()),
                Ok(Err(e)) => {
                    tally.add(Answer::Lost(describe(&e)));
                    continue;
                }
                Err(_) => {
                    tally.add(Answer::Lost(format!("not ready within {LIMIT:?}")));
                    continue;
                }
            };
            running.push(
                async move {
                    match tokio::time::timeout(LIMIT, async { read(call.await?).await }).await {
                        Ok(Ok(answer)) => answer,
                        Ok(Err(e)) => Answer::Lost(describe(&e)),
                        Err(_) => Answer::Lost(format!("no answer within {LIMIT:?}")),
                    }
                }
                .boxed(),
            );
        }
        while let Some(answer) = running.next().await {
            tally.add(answer);
        }
        tally
    }

    /// Sends calls until `done` holds, failing the test if it does not within [`LIMIT`].
    async fn send_until(&mut self, what: &str, mut done: impl FnMut(&Cluster) -> bool) -> Tally {
        let mut tally = Tally::default();
        let waited = tokio::time::timeout(LIMIT, async {
            while !done(self) {
                tally.add(self.send().await);
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "{what}: not within {LIMIT:?} ({} calls: {tally:?})",
            tally.answered_by.iter().sum::<usize>() + tally.lost.len()
        );
        tally
    }

    fn state(&self, index: usize) -> State {
        self.handles[index].state()
    }
}

/// The endpoint that answered, and whether it answered `200`.
async fn read(response: Response<Incoming>) -> Result<Answer, BoxError> {
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let index: usize = std::str::from_utf8(&body)?.parse()?;
    Ok(match status {
        StatusCode::OK => Answer::Ok(index),
        StatusCode::INTERNAL_SERVER_ERROR => Answer::Failed(index),
        other => return Err(format!("unexpected status {other}").into()),
    })
}

fn describe(error: &BoxError) -> String {
    match error.downcast_ref::<Rejected>() {
        Some(rejected) => format!("rejected: {rejected}"),
        None => format!("error: {error}"),
    }
}

/// Open -> HalfOpen transitions already announced on `events`: the probes the breaker allowed.
fn half_open_entries(events: &mut tower_circuit_breaker::EventStream) -> usize {
    let mut entries = 0;
    while let Some(Some(event)) = events.next().now_or_never() {
        match event {
            Event::StateTransition {
                to: State::HalfOpen,
                ..
            } => entries += 1,
            Event::Lagged { missed, .. } => panic!("missed {missed} events"),
            _ => {}
        }
    }
    entries
}

// ===== one endpoint fails =====

#[tokio::test]
async fn a_failed_endpoint_gets_exactly_its_threshold_of_calls_then_none_and_no_call_is_lost() {
    let mut cluster = Cluster::start(Mode::Readiness { open: NO_PROBE }).await;
    let warm_up = cluster.send_many(30).await;
    warm_up.assert_none_lost();
    let before = cluster.backends[0].served();

    cluster.backends[0].fail(true);
    let tally = cluster.send_many(CALLS).await;

    tally.assert_none_lost();
    assert_eq!(cluster.state(0), State::Open);
    assert_eq!(
        cluster.backends[0].served() - before,
        FAILURES as usize,
        "the failed endpoint got the calls that opened its circuit, then none: {tally:?}"
    );
    assert_eq!(tally.failed_by, [FAILURES as usize, 0, 0]);
    assert_eq!(
        tally.answered_by[1] + tally.answered_by[2],
        CALLS - FAILURES as usize,
        "every other call went to the other two"
    );
    assert!(
        tally.answered_by[1] >= FAIR_SHARE && tally.answered_by[2] >= FAIR_SHARE,
        "both share the traffic: {tally:?}"
    );
    assert!(!cluster.group.is_panicking(), "one of three is open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_calls_in_flight_a_failed_endpoint_gets_at_most_its_threshold_plus_those_in_flight() {
    const IN_FLIGHT: usize = 8;
    let mut cluster = Cluster::start(Mode::Readiness { open: NO_PROBE }).await;
    cluster
        .send_concurrently(30, IN_FLIGHT)
        .await
        .assert_none_lost();
    let before = cluster.backends[0].served();

    cluster.backends[0].fail(true);
    let tally = cluster.send_concurrently(CALLS, IN_FLIGHT).await;

    tally.assert_none_lost();
    assert_eq!(cluster.state(0), State::Open);
    let after_failing = cluster.backends[0].served() - before;
    // Calls admitted before the third failure was recorded: those on the wire with it, and the
    // one p2c may hold ready for the endpoint.
    assert!(
        (FAILURES as usize..=FAILURES as usize + IN_FLIGHT).contains(&after_failing),
        "the failed endpoint got {after_failing} calls after failing: {tally:?}"
    );
    assert_eq!(tally.failed_by[0], after_failing, "each of them a 500");
    assert_eq!(tally.answered_by.iter().sum::<usize>(), CALLS);
}

#[tokio::test]
async fn a_failed_endpoint_gets_only_probes_and_rejoins_after_it_recovers() {
    let mut cluster = Cluster::start(Mode::Readiness { open: PROBE_SOON }).await;
    let mut events = cluster.handles[0].subscribe();
    cluster.send_many(30).await.assert_none_lost();
    let before = cluster.backends[0].served();

    cluster.backends[0].fail(true);
    let mut tally = cluster
        .send_until("the failing endpoint's circuit opens", |c| {
            c.state(0) == State::Open
        })
        .await;
    let opened = cluster.backends[0].served();
    assert_eq!(opened - before, FAILURES as usize);
    let failing = cluster
        .send_until("a probe reaches the failing endpoint", |c| {
            c.backends[0].served() > opened
        })
        .await;
    let probes_allowed = half_open_entries(&mut events);
    let probes = cluster.backends[0].served() - opened;
    assert!(
        (1..=probes_allowed).contains(&probes),
        "while open, only probes reach it: {probes} calls, {probes_allowed} half-open episodes"
    );
    tally.merge(failing);

    cluster.backends[0].fail(false);
    let recovered = tokio::time::Instant::now();
    let rejoining = cluster
        .send_until("the recovered endpoint answers 200 again", |c| {
            c.state(0) == State::Closed
        })
        .await;
    let rejoined_after = recovered.elapsed();
    tally.merge(rejoining);
    tally.assert_none_lost();

    let back = cluster.send_many(CALLS).await;
    back.assert_none_lost();
    assert_eq!(back.failed_by, [0, 0, 0]);
    assert!(
        back.answered_by.iter().all(|&n| n >= FAIR_SHARE),
        "the recovered endpoint is back in rotation: {back:?} (rejoined {rejoined_after:?} \
         after recovering)"
    );
}

// ===== two of three fail: the panic threshold =====

#[tokio::test]
async fn when_two_of_three_are_open_the_group_panics_and_calls_reach_all_three() {
    let mut cluster = Cluster::start(Mode::Readiness { open: NO_PROBE }).await;
    cluster.send_many(30).await.assert_none_lost();
    cluster.backends[0].fail(true);
    cluster.backends[1].fail(true);
    cluster
        .send_until("both failing circuits open", |c| {
            c.state(0) == State::Open && c.state(1) == State::Open
        })
        .await
        .assert_none_lost();
    assert!(
        cluster.group.is_panicking(),
        "two of three is more than half"
    );

    let panicking = cluster.send_many(CALLS).await;
    panicking.assert_none_lost();
    assert!(
        panicking.answered_by.iter().all(|&n| n >= FAIR_SHARE),
        "the gates are lifted: every endpoint gets calls: {panicking:?}"
    );
    assert_eq!(
        panicking.failed_by[..2],
        panicking.answered_by[..2],
        "the open ones still fail"
    );
    assert_eq!(
        (cluster.state(0), cluster.state(1)),
        (State::Open, State::Open),
        "calls let through do not close a circuit"
    );

    // One comes back (an operator's reset stands in for a probe here): one of three is open, the
    // group stops panicking, and the open one is gated again.
    cluster.backends[1].fail(false);
    cluster.handles[1].reset();
    assert!(!cluster.group.is_panicking());
    let before = cluster.backends[0].served();
    let calmed = cluster.send_many(CALLS).await;
    calmed.assert_none_lost();
    let to_open_one = cluster.backends[0].served() - before;
    // At most the one call p2c held ready for it from the panic.
    assert!(
        to_open_one <= 1,
        "the open endpoint is gated again: it got {to_open_one} calls: {calmed:?}"
    );
    assert!(calmed.answered_by[1] >= FAIR_SHARE && calmed.answered_by[2] >= FAIR_SHARE);
}

#[tokio::test]
async fn a_panicking_group_recovers_when_its_endpoints_do() {
    let mut cluster = Cluster::start(Mode::Readiness { open: PROBE_SOON }).await;
    cluster.send_many(30).await.assert_none_lost();
    cluster.backends[0].fail(true);
    cluster.backends[1].fail(true);
    let mut tally = cluster
        .send_until("the group panics", |c| c.group.is_panicking())
        .await;
    let during = cluster.send_many(CALLS).await;
    assert!(
        during.answered_by.iter().all(|&n| n >= FAIR_SHARE),
        "calls reach every endpoint while the group panics: {during:?}"
    );

    cluster.backends[0].fail(false);
    cluster.backends[1].fail(false);
    let recovering = cluster
        .send_until("both circuits close", |c| {
            c.state(0) == State::Closed && c.state(1) == State::Closed
        })
        .await;
    assert!(!cluster.group.is_panicking());
    tally.merge(during);
    tally.merge(recovering);
    tally.assert_none_lost();
}

// ===== without the mode =====

#[tokio::test]
async fn without_the_mode_p2c_keeps_choosing_an_open_endpoint_and_its_calls_are_rejected() {
    let mut cluster = Cluster::start(Mode::Rejecting).await;
    cluster.send_many(30).await.assert_none_lost();
    let before = cluster.backends[0].served();

    cluster.backends[0].fail(true);
    let tally = cluster.send_many(CALLS).await;

    assert_eq!(cluster.state(0), State::Open);
    assert_eq!(
        cluster.backends[0].served() - before,
        FAILURES as usize,
        "the breaker keeps the calls from the server..."
    );
    assert!(
        tally.rejected >= FAIR_SHARE,
        "...but p2c still picks the open endpoint, which is ready, and its calls are rejected: \
         {} of {CALLS}",
        tally.rejected
    );
    assert_eq!(
        tally.rejected,
        tally.lost.len(),
        "every lost call is a rejection"
    );
    assert_eq!(
        tally.rejected as u64,
        cluster.handles[0].metrics().not_permitted()
    );
}
