//! Rejections on two threads: one forced-open breaker, each thread with its own service,
//! rejecting `calls` times (default 2 000 000); prints ns per call on one thread, on two threads
//! at once, and the ratio of their rates (2.0 = the second core doubles the rejections served).
//! A rejection storm on several cores is when rejections matter: every rejection counts in
//! `Metrics::not_permitted`, and that count must not make the cores fight over one cache line.
//!
//! `cargo run --release --bin reject2 [calls]`

use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tower::{Layer, Service, service_fn};
use tower_circuit_breaker::CircuitBreakerLayer;

type Inner = fn(bool) -> std::future::Ready<Result<u64, std::io::Error>>;

fn inner(_: bool) -> std::future::Ready<Result<u64, std::io::Error>> {
    std::future::ready(Ok(1))
}

/// `n` calls through `svc`, each polled once with a no-op waker; returns how many were rejected.
fn reject<S: Service<bool, Response = u64, Error = tower::BoxError>>(svc: &mut S, n: u64) -> u64 {
    let mut cx = Context::from_waker(Waker::noop());
    let mut rejected = 0;
    for _ in 0..n {
        assert!(svc.poll_ready(&mut cx).is_ready());
        let mut future = std::pin::pin!(svc.call(true));
        if let Poll::Ready(Err(_)) = future.as_mut().poll(&mut cx) {
            rejected += 1;
        }
    }
    rejected
}

fn main() {
    let calls: u64 = std::env::args()
        .nth(1)
        .map_or(2_000_000, |n| n.parse().expect("a number of calls"));
    let layer = CircuitBreakerLayer::builder()
        .open_duration(Duration::from_secs(3600))
        .build()
        .expect("valid configuration");
    layer.handle().force_open();
    let mut expected = 0;
    for round in 0..3 {
        let mut svc = layer.layer(service_fn(inner as Inner));
        let start = Instant::now();
        assert_eq!(reject(&mut svc, calls), calls);
        let one = start.elapsed().as_nanos() as f64 / calls as f64;
        let barrier = Arc::new(Barrier::new(2));
        let start = Instant::now();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let mut svc = layer.layer(service_fn(inner as Inner));
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    assert_eq!(reject(&mut svc, calls), calls);
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let two = start.elapsed().as_nanos() as f64 / calls as f64;
        println!(
            "round {round}: one thread {one:.1} ns/call, two threads {two:.1} ns/call/thread, \
             two ÷ one {:.2}",
            2.0 * one / two
        );
        expected += 3 * calls;
        assert_eq!(layer.handle().metrics().not_permitted(), expected);
    }
}
