//! End to end: requests per second of a hyper HTTP/1.1 server on 127.0.0.1, with and without our
//! breaker in front of the same handler, driven by a load generator in this process.
//!
//! `e2e [requests per batch] [connections] [batches]` (defaults 2 000, 8, 200). Two servers run at
//! once, each in its own OS thread on a one-worker tokio runtime: one with the raw handler, one
//! with the breaker in front of it. The client (a current-thread runtime on the main thread) keeps
//! 8 keep-alive connections to each and sends the batches to one server then the other, in
//! alternating order, each request read to the end. Interleaving small batches cancels the drift
//! of a shared machine. Prints requests per second of each mode over all its batches, their
//! ratio, and the median of the batches' paired ratios; then checks that the breaker stayed
//! closed, recorded the calls and rejected none.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tower::{Layer, service_fn};
use tower_circuit_breaker::{CircuitBreakerLayer, Handle, State};

async fn handler(_: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Raw,
    Breaker,
}

/// Starts a server in its own thread; returns its address and a shutdown sender.
fn serve(mode: Mode, layer: CircuitBreakerLayer) -> (SocketAddr, oneshot::Sender<()>) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => accepted.unwrap(),
                    _ = &mut stop_rx => return,
                };
                stream.set_nodelay(true).unwrap();
                let io = TokioIo::new(stream);
                let builder = hyper::server::conn::http1::Builder::new();
                match mode {
                    Mode::Raw => {
                        let svc = TowerToHyperService::new(service_fn(handler));
                        tokio::spawn(builder.serve_connection(io, svc));
                    }
                    Mode::Breaker => {
                        let svc = TowerToHyperService::new(layer.layer(service_fn(handler)));
                        tokio::spawn(builder.serve_connection(io, svc));
                    }
                }
            }
        });
    });
    (addr_rx.recv().unwrap(), stop_tx)
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Sender {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// Sends `requests` GET requests one after the other on one keep-alive connection.
async fn send(mut sender: Sender, requests: usize) -> Sender {
    for _ in 0..requests {
        let request = Request::get("/")
            .header("host", "127.0.0.1")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert!(response.status().is_success());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
    }
    sender
}

/// One batch on one server's connections, all at once; returns the wall time.
async fn batch(senders: &mut Vec<Sender>, per_connection: usize) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = senders
        .drain(..)
        .map(|s| tokio::spawn(send(s, per_connection)))
        .collect();
    for t in tasks {
        senders.push(t.await.unwrap());
    }
    start.elapsed()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number"))
        .collect();
    let requests = args.first().copied().unwrap_or(2_000);
    let connections = args.get(1).copied().unwrap_or(8);
    let batches = args.get(2).copied().unwrap_or(200);
    let per_connection = requests / connections;

    let layer = CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .consecutive_failures(5)
        .build()
        .expect("valid configuration");
    let handle: Handle = layer.handle();
    let (raw_addr, raw_stop) = serve(Mode::Raw, layer.clone());
    let (breaker_addr, breaker_stop) = serve(Mode::Breaker, layer.clone());

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (raw, breaker, ratios) = runtime.block_on(async {
        let mut raw_conns = Vec::new();
        let mut breaker_conns = Vec::new();
        for _ in 0..connections {
            raw_conns.push(connect(raw_addr).await);
            breaker_conns.push(connect(breaker_addr).await);
        }
        // Warm-up, not timed.
        batch(&mut raw_conns, per_connection).await;
        batch(&mut breaker_conns, per_connection).await;
        let (mut raw, mut breaker) = (Duration::ZERO, Duration::ZERO);
        let mut ratios = Vec::new();
        for b in 0..batches {
            let (r, k) = if b % 2 == 0 {
                let r = batch(&mut raw_conns, per_connection).await;
                (r, batch(&mut breaker_conns, per_connection).await)
            } else {
                let k = batch(&mut breaker_conns, per_connection).await;
                (batch(&mut raw_conns, per_connection).await, k)
            };
            raw += r;
            breaker += k;
            // Requests per second with the breaker over without: time without over time with.
            ratios.push(r.as_secs_f64() / k.as_secs_f64());
        }
        (raw, breaker, ratios)
    });
    let _ = raw_stop.send(());
    let _ = breaker_stop.send(());
    // Wake the accept loops so that they see the stop signal.
    let _ = std::net::TcpStream::connect(raw_addr);
    let _ = std::net::TcpStream::connect(breaker_addr);

    let total = (per_connection * connections * batches) as f64;
    let metrics = handle.metrics();
    assert_eq!(
        handle.state(),
        State::Closed,
        "the breaker must stay closed"
    );
    assert_eq!(metrics.failed(), 0);
    assert_eq!(metrics.not_permitted(), 0);
    assert!(metrics.calls() > 0, "the breaker saw no calls");
    let (raw, breaker) = (total / raw.as_secs_f64(), total / breaker.as_secs_f64());
    eprintln!("paired batch ratios: {ratios:.3?}");
    println!("mode\trequests_per_s");
    println!("raw\t{raw:.0}");
    println!("breaker\t{breaker:.0}");
    println!("ratio\t{:.3}", breaker / raw);
    println!("median_batch_ratio\t{:.3}", median(ratios));
}
