//! A threshold learned from the breaker's own history, by live reconfiguration.
//!
//! A control task reads the breaker's metrics every 10 s and keeps a slow average of the failure
//! rate that is normal for this dependency. It sets the failure-rate threshold to three times
//! that (plus a margin), kept within configured bounds: a dependency that rarely fails gets a
//! strict breaker, a noisy one a tolerant breaker, and neither is reconfigured by replacing it
//! (state, window and counters stay).
//!
//! The story runs on tokio's paused clock, so 6 simulated minutes take a moment: 2 min of a noisy
//! dependency (12 % errors, normal for it: the threshold relaxes from 50 % to about 40 %, and the
//! breaker stays closed), 2 min after a fix (1 %: the threshold tightens to its floor, 10 %), then
//! a partial outage (30 % errors: the breaker opens within seconds, where a fixed threshold of
//! 50 % would never have opened).
//!
//! ```sh
//! cargo run --example adaptive_threshold
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tower::{BoxError, Layer, ServiceExt, service_fn};
use tower_circuit_breaker::{CircuitBreakerLayer, Handle, State, Window};

/// The bounds the control task keeps the threshold within.
const FLOOR: f64 = 0.10;
const CEILING: f64 = 0.60;
/// How much of each new reading the average takes.
const SMOOTHING: f64 = 0.3;
const INTERVAL: Duration = Duration::from_secs(10);

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> Result<(), BoxError> {
    let layer = CircuitBreakerLayer::builder()
        .name("search")
        .failure_rate_threshold(0.5)
        .sliding_window(Window::time(Duration::from_secs(10)))
        .minimum_calls(50)
        .open_duration(Duration::from_secs(30))
        .build()?;
    let handle = layer.handle();

    // The dependency's error rate in per mille, changed by the story; errors spread evenly.
    let error_rate = Arc::new(AtomicU32::new(10));
    let svc = {
        let (error_rate, calls) = (error_rate.clone(), Arc::new(AtomicU32::new(0)));
        layer.layer(service_fn(move |_: ()| {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            // Call n fails when the running count of failures due moves on (a Bresenham line).
            let rate = error_rate.load(Ordering::Relaxed);
            let fails = (n + 1) * rate / 1000 != n * rate / 1000;
            async move { if fails { Err("timeout") } else { Ok(()) } }
        }))
    };

    println!(
        "breaker `search`: threshold learned from its own failure rate, within [{FLOOR}, {CEILING}]"
    );
    println!(
        "{:>5}  {:>10}  {:>8}  {:>9}  {:<7}",
        "time", "dependency", "observed", "threshold", "state"
    );
    let mut normal: Option<f64> = None;
    let mut opened_at = None;
    for tick in 1..=36u32 {
        let phase = match tick {
            1..=12 => ("noisy", 120),
            13..=24 => ("fixed", 10),
            _ => ("outage", 300),
        };
        error_rate.store(phase.1, Ordering::Relaxed);
        // 20 calls a second for the interval.
        for _ in 0..200 {
            let _ = svc.clone().oneshot(()).await;
            tokio::time::advance(INTERVAL / 200).await;
        }

        // The control task: learn only from a closed breaker's window.
        let metrics = handle.metrics();
        let observed = metrics.failure_rate();
        if let (State::Closed, Some(rate)) = (metrics.state(), observed) {
            let average = normal.map_or(rate, |n| n + SMOOTHING * (rate - n));
            normal = Some(average);
            adjust(&handle, (3.0 * average + 0.05).clamp(FLOOR, CEILING))?;
        }
        let threshold = current_threshold(&handle);
        if metrics.state() != State::Closed && opened_at.is_none() {
            opened_at = Some(tick);
        }
        println!(
            "{:>4}s  {:>10}  {:>8}  {:>9.2}  {}",
            tick * 10,
            phase.0,
            observed.map_or("–".into(), |r| format!("{:.1} %", 100.0 * r)),
            threshold,
            metrics.state()
        );
    }
    match opened_at {
        Some(tick) if tick > 24 => println!(
            "summary: the threshold followed the dependency's normal failure rate; the 30 % outage \
             opened the breaker within {} s",
            (tick - 24) * 10
        ),
        Some(tick) => return Err(format!("opened at {} s, before the outage", tick * 10).into()),
        None => return Err("the outage never opened the breaker".into()),
    }
    Ok(())
}

/// Sets the threshold, if it moved by more than a point: the state and window stay.
fn adjust(handle: &Handle, threshold: f64) -> Result<(), BoxError> {
    if (threshold - current_threshold(handle)).abs() > 0.01 {
        handle.reconfigure(handle.config().failure_rate_threshold(threshold))?;
    }
    Ok(())
}

fn current_threshold(handle: &Handle) -> f64 {
    // The builder's `Debug` shows the configuration in force.
    let config = format!("{:?}", handle.config());
    config
        .split("failure_rate_threshold: Some(")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::NAN)
}
