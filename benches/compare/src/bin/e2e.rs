//! End to end: requests per second of a hyper HTTP/1.1 server on 127.0.0.1, with and without our
//! breaker in front of the same handler, driven by a load generator in this process.
//!
//! `e2e [requests per round] [connections] [rounds]` (defaults 40 000, 8, 7). Each round runs both
//! modes, in alternating order, each on a fresh server (its own OS thread, a one-worker tokio
//! runtime); the client (a current-thread runtime on the main thread) opens the connections with
//! keep-alive and sends a bounded number of GET requests, each read to the end. Prints the
//! median requests per second of each mode and their ratio, then checks that the breaker stayed
//! closed, recorded the calls and rejected none.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Instant;

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

async fn client(addr: SocketAddr, requests: usize) {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
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
}

/// One measurement: requests per second.
fn round(mode: Mode, layer: &CircuitBreakerLayer, requests: usize, connections: usize) -> f64 {
    let (addr, stop) = serve(mode, layer.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let per_connection = requests / connections;
    let elapsed = runtime.block_on(async {
        // Warm-up: one request per connection's worth, not timed.
        client(addr, 200).await;
        let start = Instant::now();
        let clients: Vec<_> = (0..connections)
            .map(|_| tokio::spawn(client(addr, per_connection)))
            .collect();
        for c in clients {
            c.await.unwrap();
        }
        start.elapsed()
    });
    let _ = stop.send(());
    // Wake the accept loop so that it sees the stop signal.
    let _ = std::net::TcpStream::connect(addr);
    (per_connection * connections) as f64 / elapsed.as_secs_f64()
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
    let requests = args.first().copied().unwrap_or(40_000);
    let connections = args.get(1).copied().unwrap_or(8);
    let rounds = args.get(2).copied().unwrap_or(7);

    let layer = CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .consecutive_failures(5)
        .build()
        .expect("valid configuration");
    let handle: Handle = layer.handle();

    let (mut raw, mut breaker) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let order = if r % 2 == 0 {
            [Mode::Raw, Mode::Breaker]
        } else {
            [Mode::Breaker, Mode::Raw]
        };
        for mode in order {
            let rps = round(mode, &layer, requests, connections);
            eprintln!("round {r} {mode:?}: {rps:.0} requests/s");
            match mode {
                Mode::Raw => raw.push(rps),
                Mode::Breaker => breaker.push(rps),
            }
        }
    }
    let metrics = handle.metrics();
    assert_eq!(
        handle.state(),
        State::Closed,
        "the breaker must stay closed"
    );
    assert_eq!(metrics.failed(), 0);
    assert_eq!(metrics.not_permitted(), 0);
    assert!(metrics.calls() > 0, "the breaker saw no calls");
    let (raw, breaker) = (median(raw), median(breaker));
    println!("mode\trequests_per_s");
    println!("raw\t{raw:.0}");
    println!("breaker\t{breaker:.0}");
    println!("ratio\t{:.3}", breaker / raw);
}
