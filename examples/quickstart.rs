//! A dependency fails for a while and then recovers; a client calls it through a circuit breaker
//! with a fallback. Prints one line per interval (state, calls, failures, rejections, fallbacks),
//! every state transition as it happens, and a summary. Exits by itself in about four seconds.
//!
//! ```sh
//! cargo run --example quickstart
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_circuit_breaker::{Backoff, CircuitBreakerLayer, Event, Window};

/// When the dependency is down, relative to the start.
const OUTAGE: std::ops::Range<Duration> = Duration::from_millis(800)..Duration::from_millis(2300);
const RUN_FOR: Duration = Duration::from_millis(4000);
const TICK: Duration = Duration::from_millis(200);
const CALL_EVERY: Duration = Duration::from_millis(4);

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    reached: AtomicU64,
    failures: AtomicU64,
    fallbacks: AtomicU64,
}

impl Counters {
    fn take(&self) -> [u64; 4] {
        [&self.calls, &self.reached, &self.failures, &self.fallbacks].map(|c| c.swap(0, Relaxed))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let start = Instant::now();
    let counters = Arc::new(Counters::default());

    // The dependency: answers at once, but fails during the outage.
    let dependency = {
        let counters = counters.clone();
        service_fn(move |id: u64| {
            let counters = counters.clone();
            async move {
                counters.reached.fetch_add(1, Relaxed);
                if OUTAGE.contains(&start.elapsed()) {
                    counters.failures.fetch_add(1, Relaxed);
                    Err::<String, BoxError>(format!("request {id}: dependency unavailable").into())
                } else {
                    Ok(format!("request {id}: fresh answer"))
                }
            }
        })
    };

    // The fallback: a degraded answer while the breaker rejects.
    let fallback = {
        let counters = counters.clone();
        service_fn(move |id: u64| {
            counters.fallbacks.fetch_add(1, Relaxed);
            std::future::ready(Ok::<_, BoxError>(format!("request {id}: cached answer")))
        })
    };

    let breaker = CircuitBreakerLayer::builder()
        .name("dependency")
        .failure_rate_threshold(0.5)
        .sliding_window(Window::count(20))
        .minimum_calls(10)
        .open_backoff(Backoff::exponential(
            Duration::from_millis(300),
            2.0,
            Duration::from_millis(1200),
        ))
        .half_open_calls(3)
        .build()?
        .with_fallback(fallback);
    let handle = breaker.handle();

    // Print every transition the moment it happens.
    let mut events = handle.subscribe();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if let Event::StateTransition { from, to, .. } = event {
                println!("{:>6} ms  ** {from} -> {to}", start.elapsed().as_millis());
            }
        }
    });

    let mut client = ServiceBuilder::new().layer(breaker).service(dependency);

    println!(
        "dependency down from {} ms to {} ms; one call every {} ms\n",
        OUTAGE.start.as_millis(),
        OUTAGE.end.as_millis(),
        CALL_EVERY.as_millis()
    );
    println!("  time     state         calls  reached  failed  fallbacks");

    let mut totals = [0u64; 4];
    let mut id = 0;
    let mut next_tick = start + TICK;
    let mut calls = tokio::time::interval(CALL_EVERY);
    while start.elapsed() < RUN_FOR {
        calls.tick().await;
        id += 1;
        counters.calls.fetch_add(1, Relaxed);
        // A rejected call goes to the fallback, so every call gets an answer.
        let answer = client.ready().await?.call(id).await;
        if let Err(e) = answer {
            // The dependency's own failures still reach the caller.
            debug_assert!(e.to_string().contains("unavailable"));
        }
        if Instant::now() >= next_tick {
            next_tick += TICK;
            let [c, r, f, fb] = counters.take();
            for (total, n) in totals.iter_mut().zip([c, r, f, fb]) {
                *total += n;
            }
            println!(
                "{:>6} ms  {:<12} {:>6} {:>8} {:>7} {:>10}",
                start.elapsed().as_millis(),
                handle.state().to_string(),
                c,
                r,
                f,
                fb
            );
        }
    }

    let [c, r, f, fb] = counters.take();
    let [calls_total, reached, failed, fallbacks] =
        [totals[0] + c, totals[1] + r, totals[2] + f, totals[3] + fb];
    let metrics = handle.metrics();
    println!("\nsummary");
    println!("  calls made             {calls_total}");
    println!("  reached the dependency {reached} ({failed} failed)");
    println!("  answered by fallback   {fallbacks}");
    println!(
        "  spared the dependency  {:.0} % of the calls it would have failed",
        100.0 * fallbacks as f64 / (failed + fallbacks).max(1) as f64
    );
    println!("  final state            {}", metrics.state());
    Ok(())
}
