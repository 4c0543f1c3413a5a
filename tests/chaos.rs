//! A chaos soak on loopback: a real hyper server whose faults change phase by phase, many
//! concurrent hyper-util clients behind one breaker (half of them with a fallback), and the
//! accounting that says every request ended, no probe permit leaked and the heap stayed flat.
//!
//! This is the one test that runs on real time: it is an end-to-end network soak. Every bound it
//! asserts is generous (seconds where the expected figure is milliseconds) and every phase is
//! sized in requests, not in wall time, so that its outcome does not depend on the machine's load.
//!
//! * `cargo test --test chaos` runs the short version (`SOAK_REQUESTS`, default 6000).
//! * `scripts/soak` runs the long one (100,000 requests, release) and prints its figures.
//!
//! The schedule: a healthy warm-up; then, for each fault (500s, added latency, hangs, connection
//! resets, a panicking handler, trickling bodies), a phase of that fault, a recovery that waits
//! (with one request at a time, nothing else in flight) until the breaker is closed again, and a
//! healthy phase; then a final healthy phase. Each request carries its phase's fault in a header,
//! so the server injects exactly the fault of the phase the request belongs to.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use support::alloc::{Counting, process_live_bytes, process_peak_bytes};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tower::timeout::error::Elapsed;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_circuit_breaker::error::Rejected;
use tower_circuit_breaker::{
    Backoff, CircuitBreakerLayer, Event, EventStream, Handle, Outcome, State, Window,
};

// ===== counting allocator =====

#[global_allocator]
static COUNTING: Counting = Counting;

// ===== parameters =====

/// Requests of the short run (the normal suite); `SOAK_REQUESTS` overrides it.
const DEFAULT_REQUESTS: u64 = 6_000;
/// Concurrent clients; even ones go through the fallback, odd ones get rejections.
const CLIENTS: usize = 32;

/// The breaker's own deadline on a call (up to the response head).
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// A call slower than this is slow; the latency phase adds more than this, less than the timeout.
const SLOW_CALL: Duration = Duration::from_millis(250);
const ADDED_LATENCY: Duration = Duration::from_millis(400);
/// A trickling body: this many chunks, one after each delay.
const SLOW_BODY_CHUNKS: u32 = 5;
const SLOW_BODY_DELAY: Duration = Duration::from_millis(20);
/// A hung handler answers when the hang phase is over, or after this, whichever comes first.
const HANG_LIMIT: Duration = Duration::from_secs(60);
/// How long a client waits after a rejection or a fallback before its next request.
const CLIENT_BACKOFF: Duration = Duration::from_millis(5);
/// Impatient clients (half of them) give up on a request after this, dropping its future before
/// the breaker's call timeout would end it: their half-open probes must give their permits back.
/// They also, every few requests, take readiness and drop the service without calling it.
const IMPATIENCE: Duration = Duration::from_millis(600);
/// Every this many requests, an impatient client takes readiness and drops it unused.
const DROP_READINESS_EVERY: u64 = 5;

/// The overall deadline of one request, head and body: generous, many times the call timeout.
const REQUEST_DEADLINE: Duration = Duration::from_secs(20);
/// A fault phase must open the breaker before this many of its requests have started. Opening
/// takes at most five consecutive failures, or ten slow calls in a window of twenty, after the
/// requests already in flight; the rest is slack for scheduling.
const OPEN_WITHIN_CALLS: u64 = 4 * CLIENTS as u64 + 50;
/// Once the fault is gone and nothing is in flight, the breaker must close within this. The open
/// interval is at most 400 ms, and with nothing in flight a probe is admitted at once.
const CLOSE_WITHIN: Duration = Duration::from_secs(20);
/// Longer than any phase, on purpose: every probe ends by the call timeout or gives its permit
/// back, so no episode needs this safety net. A permit that leaks instead strands its episode,
/// which outlasts the phase and is then seen by the recovery, with nothing in flight.
const HALF_OPEN_MAX_WAIT: Duration = Duration::from_secs(120);
/// The live heap at the end may exceed the one after warm-up by at most this.
const HEAP_GROWTH_LIMIT: isize = 1 << 20;

const FAULT_HEADER: &str = "x-chaos-fault";
const FALLBACK_HEADER: &str = "x-fallback";

// ===== faults =====

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Healthy,
    /// Every answer is a 500.
    Errors,
    /// Two answers in three are 500s, so the breaker opens and closes again within the phase.
    Flaky,
    Latency,
    Hang,
    Reset,
    /// Requests go to a loopback port nobody listens on: connection refused.
    Refused,
    Panic,
    SlowBody,
}

/// Every fault, in the order of the schedule.
const FAULTS: [Fault; 9] = [
    Fault::Healthy,
    Fault::Errors,
    Fault::Flaky,
    Fault::Latency,
    Fault::Hang,
    Fault::Reset,
    Fault::Refused,
    Fault::Panic,
    Fault::SlowBody,
];

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Healthy => "healthy",
            Fault::Errors => "errors",
            Fault::Flaky => "flaky",
            Fault::Refused => "refused",
            Fault::Latency => "latency",
            Fault::Hang => "hang",
            Fault::Reset => "reset",
            Fault::Panic => "panic",
            Fault::SlowBody => "slow-body",
        }
    }

    fn parse(value: &[u8]) -> Fault {
        FAULTS
            .into_iter()
            .find(|f| f.name().as_bytes() == value)
            .unwrap_or(Fault::Healthy)
    }

    /// Within how many requests of its phase this fault must open the breaker, if it must. A
    /// trickling body does not: the breaker classifies the response head, which arrives on time
    /// with a 200.
    fn must_open_within(self) -> Option<u64> {
        match self {
            Fault::Healthy | Fault::SlowBody => None,
            // Until the breaker trips, every window of 20 completions holds at most 9 failures,
            // while the server fails 2 in 3 of the requests it gets and at most CLIENTS of them
            // are still in flight: both hold for at most about 200 completions.
            Fault::Flaky => Some(OPEN_WITHIN_CALLS + 200),
            _ => Some(OPEN_WITHIN_CALLS),
        }
    }
}

// ===== server =====

/// The payload of an injected panic, so that the panic hook can keep it quiet.
struct InjectedPanic;

type ServerBody = UnsyncBoxBody<Bytes, Infallible>;

#[derive(Default)]
struct ServerStats {
    injected: [AtomicU64; FAULTS.len()],
    accepted: AtomicU64,
    live_connections: AtomicU64,
    panics_caught: AtomicU64,
    flaky_answers: AtomicU64,
    connections_reset: AtomicU64,
}

struct Server {
    addr: SocketAddr,
    stats: Arc<ServerStats>,
    release_hangs: watch::Sender<bool>,
    accept_loop: tokio::task::JoinHandle<()>,
}

/// Counts a connection as live until dropped, however its task ends.
struct LiveConnection(Arc<ServerStats>);

impl Drop for LiveConnection {
    fn drop(&mut self) {
        self.0.live_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

fn full(text: &'static str) -> ServerBody {
    Full::new(Bytes::from_static(text.as_bytes())).boxed_unsync()
}

fn respond(status: StatusCode, body: ServerBody) -> Response<ServerBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}

async fn handle_request(
    request: Request<Incoming>,
    kill_connection: Arc<Notify>,
    stats: Arc<ServerStats>,
    mut hangs_released: watch::Receiver<bool>,
) -> Result<Response<ServerBody>, Infallible> {
    let fault = request
        .headers()
        .get(FAULT_HEADER)
        .map_or(Fault::Healthy, |v| Fault::parse(v.as_bytes()));
    stats.injected[fault as usize].fetch_add(1, Ordering::Relaxed);
    let response = match fault {
        Fault::Healthy => respond(StatusCode::OK, full("ok")),
        Fault::Errors => respond(StatusCode::INTERNAL_SERVER_ERROR, full("injected error")),
        Fault::Flaky => {
            if stats.flaky_answers.fetch_add(1, Ordering::Relaxed) % 3 == 0 {
                respond(StatusCode::OK, full("ok"))
            } else {
                respond(StatusCode::INTERNAL_SERVER_ERROR, full("injected error"))
            }
        }
        // The client never reaches this server.
        Fault::Refused => respond(StatusCode::OK, full("ok")),
        Fault::Latency => {
            tokio::time::sleep(ADDED_LATENCY).await;
            respond(StatusCode::OK, full("late"))
        }
        Fault::Hang => {
            // Never answers while the client waits: the breaker's call timeout must end the call.
            let _ = tokio::time::timeout(HANG_LIMIT, hangs_released.wait_for(|r| *r)).await;
            respond(StatusCode::OK, full("too late"))
        }
        Fault::Reset => {
            // The connection's task drops the socket (with a zero linger: a RST) mid-request.
            kill_connection.notify_one();
            std::future::pending::<()>().await;
            unreachable!("the connection is dropped before this answers")
        }
        Fault::Panic => std::panic::panic_any(InjectedPanic),
        Fault::SlowBody => {
            let chunks = futures::stream::unfold(0, |sent| async move {
                if sent == SLOW_BODY_CHUNKS {
                    return None;
                }
                tokio::time::sleep(SLOW_BODY_DELAY).await;
                let chunk = Frame::data(Bytes::from_static(b"chunk "));
                Some((Ok::<_, Infallible>(chunk), sent + 1))
            });
            respond(StatusCode::OK, StreamBody::new(chunks).boxed_unsync())
        }
    };
    Ok(response)
}

/// Keeps the default panic hook for every panic but the injected ones.
fn silence_injected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<InjectedPanic>() {
                default(info);
            }
        }));
    });
}

/// A hyper server on 127.0.0.1 (port 0, loopback only) that injects the fault each request names.
async fn start_server() -> Server {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    assert!(addr.ip().is_loopback());
    let stats = Arc::new(ServerStats::default());
    let (release_hangs, hangs_released) = watch::channel(false);
    let accept_stats = stats.clone();
    let accept_loop = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                // Out of descriptors or a connection aborted before accept: keep serving.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            // Closing a connection mid-request then sends a RST, as a crashing peer would.
            let _ = stream.set_zero_linger();
            let stats = accept_stats.clone();
            stats.accepted.fetch_add(1, Ordering::Relaxed);
            stats.live_connections.fetch_add(1, Ordering::Relaxed);
            let hangs_released = hangs_released.clone();
            tokio::spawn(async move {
                let _live = LiveConnection(stats.clone());
                let kill = Arc::new(Notify::new());
                let service = {
                    let (kill, stats) = (kill.clone(), stats.clone());
                    hyper::service::service_fn(move |request| {
                        handle_request(request, kill.clone(), stats.clone(), hangs_released.clone())
                    })
                };
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(stream), service);
                // A panicking handler unwinds through this connection only: caught here, the
                // connection is dropped and the server goes on.
                let served = AssertUnwindSafe(async {
                    tokio::select! {
                        _ = connection => false,
                        () = kill.notified() => true,
                    }
                })
                .catch_unwind()
                .await;
                match served {
                    Err(_) => stats.panics_caught.fetch_add(1, Ordering::Relaxed),
                    Ok(true) => stats.connections_reset.fetch_add(1, Ordering::Relaxed),
                    Ok(false) => 0,
                };
            });
        }
    });
    Server {
        addr,
        stats,
        release_hangs,
        accept_loop,
    }
}

impl Server {
    /// Waits until every connection is closed (the client's pool lets idle ones go after a
    /// short idle timeout); false if some are still open after a generous bound.
    async fn wait_idle(&self) -> bool {
        let started = Instant::now();
        while self.stats.live_connections.load(Ordering::Relaxed) > 0 {
            if started.elapsed() > Duration::from_secs(15) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Let the client's connection tasks, whose sockets are now closed, finish too.
        tokio::time::sleep(Duration::from_millis(100)).await;
        true
    }
}

// ===== client =====

type ClientBody = UnsyncBoxBody<Bytes, hyper::Error>;
type ClientResponse = Response<ClientBody>;
type ClientError = hyper_util::client::legacy::Error;
type ClientRequest = Request<Empty<Bytes>>;

fn fallback_response() -> ClientResponse {
    let body = Full::new(Bytes::from_static(b"canned"))
        .map_err(|never: Infallible| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(FALLBACK_HEADER, http::HeaderValue::from_static("1"));
    response
}

/// How one request ended.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Reply {
    Success,
    Fallback,
    Rejected {
        state: State,
        retry_after: Option<Duration>,
    },
    Error(ErrorKind),
    /// Did not end within [`REQUEST_DEADLINE`].
    Hung,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ErrorKind {
    /// A 5xx answer.
    Status,
    /// The breaker's call timeout.
    Timeout,
    /// The connection failed after it was made (reset, closed mid-request).
    Transport,
    /// The connection could not be made.
    Connect,
    /// The body failed after the head arrived.
    Body,
    /// An impatient client gave up first and dropped the request.
    Cancelled,
}

const ERROR_KINDS: [ErrorKind; 6] = [
    ErrorKind::Status,
    ErrorKind::Timeout,
    ErrorKind::Transport,
    ErrorKind::Connect,
    ErrorKind::Body,
    ErrorKind::Cancelled,
];

/// Sends one request through `service` and reads the whole answer, within the overall deadline
/// (and within `patience`, if given, after which the request is dropped).
async fn exchange<S>(service: &mut S, uri: &Uri, fault: Fault, patience: Option<Duration>) -> Reply
where
    S: Service<ClientRequest, Response = ClientResponse, Error = BoxError>,
{
    let request = Request::get(uri.clone())
        .header(FAULT_HEADER, fault.name())
        .body(Empty::new())
        .expect("a valid request");
    let attempt = async {
        let result = match service.ready().await {
            Ok(ready) => ready.call(request).await,
            Err(e) => Err(e),
        };
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                return match e.downcast_ref::<Rejected>() {
                    Some(r) => Reply::Rejected {
                        state: r.state(),
                        retry_after: r.retry_after(),
                    },
                    None if e.is::<Elapsed>() => Reply::Error(ErrorKind::Timeout),
                    None if e
                        .downcast_ref::<ClientError>()
                        .is_some_and(|e| e.is_connect()) =>
                    {
                        Reply::Error(ErrorKind::Connect)
                    }
                    None => Reply::Error(ErrorKind::Transport),
                };
            }
        };
        let fallback = response.headers().contains_key(FALLBACK_HEADER);
        let status = response.status();
        match response.into_body().collect().await {
            Err(_) => Reply::Error(ErrorKind::Body),
            Ok(_) if fallback => Reply::Fallback,
            Ok(_) if status.is_server_error() => Reply::Error(ErrorKind::Status),
            Ok(_) => Reply::Success,
        }
    };
    let attempt = async {
        match patience {
            Some(patience) => tokio::time::timeout(patience, attempt)
                .await
                .unwrap_or(Reply::Error(ErrorKind::Cancelled)),
            None => attempt.await,
        }
    };
    tokio::time::timeout(REQUEST_DEADLINE, attempt)
        .await
        .unwrap_or(Reply::Hung)
}

// ===== accounting =====

/// The figures of one step of the schedule: a load phase or a recovery.
struct StepStats {
    name: String,
    fault: Fault,
    quota: u64,
    started: AtomicU64,
    successes: AtomicU64,
    fallbacks: AtomicU64,
    rejections: AtomicU64,
    errors: [AtomicU64; ERROR_KINDS.len()],
    hung: AtomicU64,
    /// Requests of this step started when the first transition to Open was seen.
    first_open_at: AtomicU64,
    /// Index (in this step) of the first request answered by a rejection or the fallback.
    first_rejection_at: AtomicU64,
    opens: AtomicU64,
    closes: AtomicU64,
    half_opens: AtomicU64,
    /// Readiness taken and dropped without a call.
    readiness_dropped: AtomicU64,
    /// Recoveries: half-open rejections while nothing else was in flight (a leaked permit).
    leaked_permits: AtomicU64,
    /// Recoveries: how long the breaker took to close, in microseconds (`u64::MAX`: never).
    closed_after_micros: AtomicU64,
    wall_micros: AtomicU64,
}

impl StepStats {
    fn new(name: impl Into<String>, fault: Fault, quota: u64) -> Self {
        StepStats {
            name: name.into(),
            fault,
            quota,
            started: AtomicU64::new(0),
            successes: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            rejections: AtomicU64::new(0),
            errors: Default::default(),
            hung: AtomicU64::new(0),
            first_open_at: AtomicU64::new(u64::MAX),
            first_rejection_at: AtomicU64::new(u64::MAX),
            opens: AtomicU64::new(0),
            closes: AtomicU64::new(0),
            half_opens: AtomicU64::new(0),
            readiness_dropped: AtomicU64::new(0),
            leaked_permits: AtomicU64::new(0),
            closed_after_micros: AtomicU64::new(u64::MAX),
            wall_micros: AtomicU64::new(0),
        }
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn errors(&self) -> u64 {
        self.errors.iter().map(Self::get).sum()
    }

    fn ended(&self) -> u64 {
        Self::get(&self.successes)
            + Self::get(&self.fallbacks)
            + Self::get(&self.rejections)
            + self.errors()
            + Self::get(&self.hung)
    }

    /// Counts a reply to the request with index `index` in this step.
    fn count(&self, index: u64, reply: Reply) {
        let counter = match reply {
            Reply::Success => &self.successes,
            Reply::Fallback => &self.fallbacks,
            Reply::Rejected { .. } => &self.rejections,
            Reply::Error(kind) => &self.errors[kind as usize],
            Reply::Hung => &self.hung,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if matches!(reply, Reply::Fallback | Reply::Rejected { .. }) {
            self.first_rejection_at.fetch_min(index, Ordering::Relaxed);
        }
    }
}

/// The breaker's events, read after every request so that each transition is tied to the step,
/// and the request count, at which it happened.
///
/// Transitions are linearizable and each is announced once, in order, so the events form one
/// chain: each starts from the state the previous one entered. A break in the chain is counted.
struct Events {
    stream: Mutex<(EventStream, State)>,
    broken_chain: AtomicU64,
}

impl Events {
    fn new(stream: EventStream) -> Self {
        Events {
            stream: Mutex::new((stream, State::Closed)),
            broken_chain: AtomicU64::new(0),
        }
    }

    fn drain(&self, step: &StepStats) {
        let mut guard = self.stream.lock().expect("events lock");
        let (stream, last) = &mut *guard;
        while let Some(Some(event)) = stream.next().now_or_never() {
            let Event::StateTransition { from, to, .. } = event else {
                continue;
            };
            if from != *last || from == to {
                self.broken_chain.fetch_add(1, Ordering::Relaxed);
            }
            *last = to;
            match to {
                State::Open => {
                    step.opens.fetch_add(1, Ordering::Relaxed);
                    let at = step.started.load(Ordering::Relaxed);
                    step.first_open_at.fetch_min(at, Ordering::Relaxed);
                }
                State::Closed => {
                    step.closes.fetch_add(1, Ordering::Relaxed);
                }
                State::HalfOpen => {
                    step.half_opens.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    }
}

// ===== load =====

/// One client: sends requests of `step` until its quota is used up.
async fn client<S>(
    mut service: S,
    uri: Uri,
    step: Arc<StepStats>,
    events: Arc<Events>,
    patience: Option<Duration>,
) where
    S: Service<ClientRequest, Response = ClientResponse, Error = BoxError> + Clone,
{
    loop {
        let index = step.started.fetch_add(1, Ordering::Relaxed);
        if index >= step.quota {
            step.started.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        if patience.is_some() && index % DROP_READINESS_EVERY == 0 {
            // Readiness (maybe a probe permit) taken, then the service dropped without a call.
            let mut unused = service.clone();
            tokio::time::timeout(REQUEST_DEADLINE, unused.ready())
                .await
                .expect("readiness within the deadline")
                .expect("the breaker is always ready");
            drop(unused);
            step.readiness_dropped.fetch_add(1, Ordering::Relaxed);
        }
        let reply = exchange(&mut service, &uri, step.fault, patience).await;
        step.count(index, reply);
        events.drain(&step);
        if matches!(reply, Reply::Fallback | Reply::Rejected { .. }) {
            tokio::time::sleep(CLIENT_BACKOFF).await;
        }
    }
}

/// Runs one load step with every client, and waits until all of them are done.
async fn run_load<A, B>(
    with_fallback: &A,
    plain: &B,
    uri: &Uri,
    step: &Arc<StepStats>,
    events: &Arc<Events>,
) where
    A: Service<ClientRequest, Response = ClientResponse, Error = BoxError> + Clone + Send + 'static,
    A::Future: Send,
    B: Service<ClientRequest, Response = ClientResponse, Error = BoxError> + Clone + Send + 'static,
    B::Future: Send,
{
    let started = Instant::now();
    let mut clients = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let (uri, step, events) = (uri.clone(), step.clone(), events.clone());
        let patience = (i % 4 >= 2).then_some(IMPATIENCE);
        clients.push(if i % 2 == 0 {
            tokio::spawn(client(with_fallback.clone(), uri, step, events, patience))
        } else {
            tokio::spawn(client(plain.clone(), uri, step, events, patience))
        });
    }
    for c in clients {
        c.await.expect("a client task panicked");
    }
    events.drain(step);
    step.wall_micros
        .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
}

/// With nothing else in flight, sends one healthy request at a time until the breaker is closed.
///
/// While it is open, waits for the time the rejection gives. While it is half-open, a probe must
/// be admitted: nothing else is in flight, so a half-open rejection means that a permit of an
/// earlier call was never given back.
async fn recover<S>(mut service: S, handle: &Handle, uri: &Uri, step: &StepStats, events: &Events)
where
    S: Service<ClientRequest, Response = ClientResponse, Error = BoxError>,
{
    let started = Instant::now();
    loop {
        events.drain(step);
        if handle.state() == State::Closed {
            events.drain(step);
            let took = started.elapsed().as_micros() as u64;
            step.closed_after_micros.store(took, Ordering::Relaxed);
            break;
        }
        if started.elapsed() > CLOSE_WITHIN {
            break; // reported and asserted by the caller
        }
        let index = step.started.fetch_add(1, Ordering::Relaxed);
        let reply = exchange(&mut service, uri, Fault::Healthy, None).await;
        step.count(index, reply);
        match reply {
            Reply::Rejected {
                state: State::Open,
                retry_after,
            } => {
                let wait = retry_after.unwrap_or(Duration::from_millis(10));
                tokio::time::sleep(wait.min(Duration::from_secs(1)) + Duration::from_millis(1))
                    .await;
            }
            Reply::Rejected {
                state: State::HalfOpen,
                ..
            } => {
                step.leaked_permits.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Reply::Rejected { state, .. } => panic!("unexpected rejection in state {state}"),
            _ => {}
        }
    }
    step.wall_micros
        .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
}

// ===== the soak =====

enum Step {
    Load(Arc<StepStats>),
    Recover(Arc<StepStats>),
    /// Measures the live heap after warm-up, once every connection is closed.
    HeapBaseline,
}

fn requested_total() -> u64 {
    std::env::var("SOAK_REQUESTS")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(DEFAULT_REQUESTS)
}

/// The schedule, with each load step's share of `total` requests: warm-up 1, each fault 2, each
/// healthy phase after a fault 1/2, final 1.
fn schedule(total: u64) -> Vec<Step> {
    let faults = &FAULTS[1..];
    let weight_sum = 1.0 + faults.len() as f64 * 2.5 + 1.0;
    let quota = |weight: f64| ((total as f64 * weight / weight_sum) as u64).max(4 * CLIENTS as u64);
    let load = |name: String, fault, weight| {
        Step::Load(Arc::new(StepStats::new(name, fault, quota(weight))))
    };
    let recover = |name: String| Step::Recover(Arc::new(StepStats::new(name, Fault::Healthy, 0)));
    let mut steps = vec![
        load("warm-up".into(), Fault::Healthy, 1.0),
        Step::HeapBaseline,
    ];
    for &fault in faults {
        steps.push(load(fault.name().into(), fault, 2.0));
        steps.push(recover(format!("recover after {}", fault.name())));
        steps.push(load(
            format!("healthy after {}", fault.name()),
            Fault::Healthy,
            0.5,
        ));
        steps.push(recover(format!("closed before next ({})", fault.name())));
    }
    steps.push(load("final (recovery)".into(), Fault::Healthy, 1.0));
    steps.push(recover("final recover".into()));
    steps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak_every_request_ends_no_permit_leaks_and_the_heap_stays_flat() {
    silence_injected_panics();
    let wall = Instant::now();
    let total = requested_total();
    let server = start_server().await;
    let uri: Uri = format!("http://{}/", server.addr).parse().expect("uri");
    // A loopback port that was just free: nothing listens there, connections are refused.
    let refused_uri: Uri = {
        let unused = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind a loopback port");
        let addr = unused.local_addr().expect("local address");
        format!("http://{addr}/").parse().expect("uri")
    };

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_millis(300))
        .pool_max_idle_per_host(CLIENTS)
        .pool_timer(TokioTimer::new())
        .build::<_, Empty<Bytes>>(connector);

    let layer = CircuitBreakerLayer::builder()
        .name("chaos")
        .sliding_window(Window::count(20))
        .minimum_calls(10)
        .failure_rate_threshold(0.5)
        .consecutive_failures(5)
        .slow_call_duration(SLOW_CALL)
        .slow_call_rate_threshold(0.5)
        .open_backoff(
            Backoff::exponential(Duration::from_millis(50), 2.0, Duration::from_millis(400))
                .jitter(0.2),
        )
        .half_open_calls(4)
        .half_open_successes(2)
        .half_open_max_wait(HALF_OPEN_MAX_WAIT)
        .call_timeout(CALL_TIMEOUT)
        .classify(
            |result: Result<&ClientResponse, &ClientError>| match result {
                Ok(response) if response.status().is_server_error() => Outcome::Failure,
                Ok(_) => Outcome::Success,
                // Connect and I/O errors alike.
                Err(_) => Outcome::Failure,
            },
        )
        .build()
        .expect("a valid configuration");
    let handle = layer.handle();
    let events = Arc::new(Events::new(handle.subscribe()));
    let to_boxed = |response: Response<Incoming>| response.map(|body| body.boxed_unsync());
    // Two stacks, one breaker: the layer's clones share it.
    let fallback =
        service_fn(|_: ClientRequest| async { Ok::<_, Infallible>(fallback_response()) });
    let with_fallback = ServiceBuilder::new()
        .layer(layer.clone().with_fallback(fallback))
        .map_response(to_boxed)
        .service(client.clone());
    let plain = ServiceBuilder::new()
        .layer(layer)
        .map_response(to_boxed)
        .service(client);

    let steps = schedule(total);
    let mut heap_after_warm_up = None;
    for step in &steps {
        match step {
            Step::Load(stats) => {
                let target = match stats.fault {
                    Fault::Refused => &refused_uri,
                    _ => &uri,
                };
                run_load(&with_fallback, &plain, target, stats, &events).await;
                if stats.fault == Fault::Hang {
                    server.release_hangs.send_replace(true);
                }
            }
            Step::Recover(stats) => recover(plain.clone(), &handle, &uri, stats, &events).await,
            Step::HeapBaseline => {
                assert!(
                    server.wait_idle().await,
                    "connections still open after warm-up"
                );
                heap_after_warm_up = Some(process_live_bytes());
            }
        }
    }
    let idle_at_end = server.wait_idle().await;
    let heap_at_end = process_live_bytes();
    let heap_peak = process_peak_bytes();
    let heap_after_warm_up = heap_after_warm_up.expect("the schedule measures after warm-up");
    let metrics = handle.metrics();
    let server_alive = !server.accept_loop.is_finished();

    // ===== report =====
    let stats: Vec<&StepStats> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Load(s) | Step::Recover(s) => Some(&**s),
            Step::HeapBaseline => None,
        })
        .collect();
    let sum = |f: &dyn Fn(&StepStats) -> u64| stats.iter().map(|s| f(s)).sum::<u64>();
    let get = StepStats::get;
    let sent = sum(&|s| get(&s.started));
    let successes = sum(&|s| get(&s.successes));
    let fallbacks = sum(&|s| get(&s.fallbacks));
    let rejections = sum(&|s| get(&s.rejections));
    let errors = sum(&|s| s.errors());
    let hung = sum(&|s| get(&s.hung));
    let lost = sent - sum(&|s| s.ended());
    let leaked = sum(&|s| get(&s.leaked_permits));
    let opens = sum(&|s| get(&s.opens));
    let closes = sum(&|s| get(&s.closes));
    let half_opens = sum(&|s| get(&s.half_opens));
    let broken_chain = get(&events.broken_chain);
    let injected: Vec<u64> = server.stats.injected.iter().map(get).collect();

    println!("\n== chaos soak: {sent} requests ({total} asked), {CLIENTS} clients ==");
    println!(
        "{:<32} {:>7} {:>7} {:>7} {:>7} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>5} {:>6} {:>7} {:>7} {:>5} {:>5} {:>9}",
        "step",
        "sent",
        "ok",
        "fallbk",
        "reject",
        "5xx",
        "tmout",
        "conn",
        "refusd",
        "body",
        "cancel",
        "hung",
        "rdrop",
        "open@",
        "reject@",
        "opens",
        "close",
        "ms"
    );
    for s in &stats {
        println!(
            "{:<32} {:>7} {:>7} {:>7} {:>7} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>5} {:>6} {:>7} {:>7} {:>5} {:>5} {:>9.1}",
            s.name,
            get(&s.started),
            get(&s.successes),
            get(&s.fallbacks),
            get(&s.rejections),
            get(&s.errors[ErrorKind::Status as usize]),
            get(&s.errors[ErrorKind::Timeout as usize]),
            get(&s.errors[ErrorKind::Transport as usize]),
            get(&s.errors[ErrorKind::Connect as usize]),
            get(&s.errors[ErrorKind::Body as usize]),
            get(&s.errors[ErrorKind::Cancelled as usize]),
            get(&s.hung),
            get(&s.readiness_dropped),
            at_str(get(&s.first_open_at)),
            at_str(get(&s.first_rejection_at)),
            get(&s.opens),
            get(&s.closes),
            get(&s.wall_micros) as f64 / 1000.0,
        );
    }
    print!("faults injected (server):");
    for f in FAULTS {
        print!(" {}={}", f.name(), injected[f as usize]);
    }
    let refused = sum(&|s| get(&s.errors[ErrorKind::Connect as usize]));
    print!("; refused connections (client): {refused}");
    println!(
        "\nserver: {} connections accepted, {} panics caught, {} connections reset, alive={server_alive}",
        get(&server.stats.accepted),
        get(&server.stats.panics_caught),
        get(&server.stats.connections_reset),
    );
    println!(
        "totals: successes={successes} fallbacks={fallbacks} rejections={rejections} errors={errors} \
         lost={lost} hung={hung} leaked_permits={leaked}"
    );
    println!(
        "breaker: opens={opens} closes={closes} half-opens={half_opens} broken event chain={broken_chain} \
         final={metrics:?}",
    );
    println!(
        "heap: after warm-up={} KiB, end={} KiB (growth {} KiB), peak={} KiB; idle at end={idle_at_end}",
        heap_after_warm_up / 1024,
        heap_at_end / 1024,
        (heap_at_end - heap_after_warm_up) / 1024,
        heap_peak / 1024,
    );
    println!("wall time: {:.2} s", wall.elapsed().as_secs_f64());

    // ===== assertions =====
    assert_eq!(
        hung, 0,
        "requests outlived their {REQUEST_DEADLINE:?} deadline"
    );
    assert_eq!(lost, 0, "requests without an outcome");
    assert_eq!(
        sent,
        successes + fallbacks + rejections + errors,
        "every request is counted once"
    );
    assert_eq!(leaked, 0, "half-open rejections with nothing in flight");
    assert_eq!(
        broken_chain, 0,
        "each transition is announced once, in order"
    );
    assert_eq!(
        half_opens, opens,
        "each opening ended in a half-open episode"
    );
    for s in &stats {
        if let Some(bound) = s.fault.must_open_within() {
            let at = get(&s.first_open_at);
            assert!(
                at <= bound,
                "{}: the breaker opened at request {} of the phase (bound {bound})",
                s.name,
                at_str(at),
            );
        }
        if s.quota == 0 {
            let took = get(&s.closed_after_micros);
            assert!(
                took <= CLOSE_WITHIN.as_micros() as u64,
                "{}: the breaker did not close within {CLOSE_WITHIN:?}",
                s.name
            );
        }
    }
    assert!(server_alive, "the server's accept loop ended");
    assert_eq!(
        get(&server.stats.panics_caught),
        injected[Fault::Panic as usize],
        "every injected panic is caught by its connection's task"
    );
    assert_eq!(
        get(&server.stats.connections_reset),
        injected[Fault::Reset as usize],
        "every injected reset drops its connection"
    );
    for f in FAULTS {
        let n = match f {
            Fault::Refused => sum(&|s| get(&s.errors[ErrorKind::Connect as usize])),
            _ => injected[f as usize],
        };
        assert!(n > 0, "fault {} was injected", f.name());
    }
    let final_load = stats
        .iter()
        .find(|s| s.name.starts_with("final (recovery)"))
        .expect("final phase");
    assert!(
        get(&final_load.successes) > 0,
        "the server answers after the chaos"
    );

    assert_eq!(handle.state(), State::Closed);
    assert_eq!(metrics.state(), State::Closed);
    assert!(metrics.calls() <= 20, "the count window holds at most 20");
    assert!(metrics.failed() <= metrics.calls() && metrics.slow() <= metrics.calls());
    assert!(metrics.failure_rate().is_none_or(|r| r < 0.5));
    assert!(metrics.not_permitted() <= fallbacks + rejections);
    let must_open = FAULTS.iter().filter(|f| f.must_open_within().is_some());
    assert!(
        opens >= must_open.count() as u64,
        "each fault that must open did"
    );
    assert!(closes >= opens.min(1), "the breaker closed after opening");

    assert!(idle_at_end, "connections still open at the end");
    assert!(
        heap_at_end - heap_after_warm_up < HEAP_GROWTH_LIMIT,
        "live heap grew by {} bytes (limit {HEAP_GROWTH_LIMIT})",
        heap_at_end - heap_after_warm_up
    );
}

fn at_str(at: u64) -> String {
    if at == u64::MAX {
        "never".to_string()
    } else {
        at.to_string()
    }
}
