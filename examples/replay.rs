//! Replay: tune a breaker on your own history.
//!
//! Reads a trace of calls (CSV: time, outcome, latency; the format is documented in
//! `examples/src/replay.rs`) and runs each candidate configuration over it, through the real
//! layer, on tokio's paused clock: a 10-minute trace replays in a moment. For each configuration
//! it prints when the breaker would have opened and closed, the false trips (openings outside
//! every real outage), the calls it would have spared the dependency during the outages, those
//! that still reached it, and the good calls it would have rejected outside them.
//!
//! ```sh
//! cargo run --example replay                      # the sample trace, examples/data/trace.csv
//! cargo run --example replay -- my-trace.csv
//! ```
//!
//! The candidates are in `candidates()` below: edit them to try your own.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use examples::replay::{Outage, Trace, TraceCall, TraceOutcome, parse};
use tokio::time::Instant;
use tower::{BoxError, Layer, ServiceExt, service_fn};
use tower_circuit_breaker::error::Rejected;
use tower_circuit_breaker::{
    AdaptiveThrottle, Builder, CircuitBreakerLayer, Event, LearnedThreshold, Outcome, State, Window,
};

/// The replayed dependency's error.
#[derive(Debug)]
enum TraceError {
    Failed,
    Ignored,
}

impl std::fmt::Display for TraceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for TraceError {}

type Classifier = fn(Result<&(), &TraceError>) -> Outcome;

fn classify(result: Result<&(), &TraceError>) -> Outcome {
    match result {
        Ok(()) => Outcome::Success,
        Err(TraceError::Failed) => Outcome::Failure,
        Err(TraceError::Ignored) => Outcome::Ignored,
    }
}

fn builder() -> Builder<Classifier> {
    CircuitBreakerLayer::builder()
        .classify(classify as Classifier)
        .open_duration(Duration::from_secs(10))
        .half_open_calls(3)
}

/// The configurations to compare.
fn candidates() -> Vec<(&'static str, Builder<Classifier>)> {
    vec![
        ("default: count(100), 50 %", builder()),
        (
            "time(10s), 50 %, min 20",
            builder()
                .sliding_window(Window::time(Duration::from_secs(10)))
                .minimum_calls(20)
                .failure_rate_threshold(0.5),
        ),
        (
            "time(10s), 15 %, min 20",
            builder()
                .sliding_window(Window::time(Duration::from_secs(10)))
                .minimum_calls(20)
                .failure_rate_threshold(0.15),
        ),
        (
            "10 consecutive failures",
            builder().consecutive_failures(10),
        ),
        (
            "time(10s), learned threshold",
            builder()
                .sliding_window(Window::time(Duration::from_secs(10)))
                .minimum_calls(20)
                .learned_failure_threshold(LearnedThreshold::new()),
        ),
        (
            "adaptive throttling (Envoy defaults)",
            builder().adaptive_throttling(AdaptiveThrottle::new().seed(1)),
        ),
    ]
}

/// What one configuration did over the trace.
#[derive(Debug, Default)]
struct Report {
    /// (when, from, to), from the start of the trace.
    transitions: Vec<(Duration, State, State)>,
    false_trips: usize,
    spared: usize,
    reached: usize,
    outage_calls: usize,
    rejected_outside: usize,
    calls_outside: usize,
}

fn in_outage(outages: &[Outage], at: Duration) -> bool {
    outages.iter().any(|o| o.contains(at))
}

/// Replays `trace` through a breaker built from `builder`, on the current (paused) clock.
async fn replay(trace: &Trace, outages: &[Outage], builder: Builder<Classifier>) -> Report {
    let start = Instant::now();
    let transitions = Arc::new(Mutex::new(Vec::new()));
    let log = transitions.clone();
    let layer = builder
        .on_event(move |event: &Event| {
            if let Event::StateTransition { from, to, .. } = event {
                log.lock().unwrap().push((start.elapsed(), *from, *to));
            }
        })
        .build()
        .expect("a valid candidate");
    let svc = layer.layer(service_fn(|call: TraceCall| async move {
        tokio::time::sleep(call.latency).await;
        match call.outcome {
            TraceOutcome::Ok => Ok(()),
            TraceOutcome::Error => Err(TraceError::Failed),
            TraceOutcome::Ignored => Err(TraceError::Ignored),
        }
    }));
    let mut calls = Vec::with_capacity(trace.calls.len());
    for &call in &trace.calls {
        tokio::time::sleep_until(start + call.at).await;
        let svc = svc.clone();
        calls.push((
            call.at,
            tokio::spawn(async move {
                let result: Result<(), BoxError> = svc.oneshot(call).await;
                !result.is_err_and(|e| e.is::<Rejected>())
            }),
        ));
    }
    let mut report = Report::default();
    for (at, call) in calls {
        let admitted = call.await.expect("no panic");
        if in_outage(outages, at) {
            report.outage_calls += 1;
            match admitted {
                true => report.reached += 1,
                false => report.spared += 1,
            }
        } else {
            report.calls_outside += 1;
            report.rejected_outside += usize::from(!admitted);
        }
    }
    report.transitions = std::mem::take(&mut *transitions.lock().unwrap());
    report.false_trips = report
        .transitions
        .iter()
        .filter(|&&(at, from, to)| {
            from == State::Closed && to == State::Open && !in_outage(outages, at)
        })
        .count();
    report
}

fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/data/trace.csv").to_string());
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("replay: cannot read {path}: {e}");
            std::process::exit(1);
        }
    };
    let trace = parse(&text);
    for bad in &trace.bad_lines {
        eprintln!("{path}: skipped {bad}");
    }
    let outages = trace.outages_or_derived();
    let span = trace.calls.last().map_or(Duration::ZERO, |c| c.at);
    println!(
        "replaying {} calls over {} from {path}, {} bad line(s) skipped",
        trace.calls.len(),
        seconds(span),
        trace.bad_lines.len()
    );
    let written = if trace.outages.is_empty() {
        "derived"
    } else {
        "from the trace"
    };
    let listed: Vec<String> = outages
        .iter()
        .map(|o| format!("{}..{}", seconds(o.start), seconds(o.end)))
        .collect();
    println!("real outages ({written}): {}\n", listed.join(", "));

    println!(
        "{:<38} {:>6} {:>11} {:>8} {:>8} {:>13}",
        "configuration", "opened", "false trips", "spared", "reached", "good rejected"
    );
    let mut details = Vec::new();
    for (name, builder) in candidates() {
        // A fresh paused clock per candidate: each replays the same trace from time zero.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a runtime");
        let report = runtime.block_on(replay(&trace, &outages, builder));
        let opened = report
            .transitions
            .iter()
            .filter(|t| t.1 == State::Closed && t.2 == State::Open)
            .count();
        println!(
            "{:<38} {:>6} {:>11} {:>8} {:>8} {:>13}",
            name,
            opened,
            report.false_trips,
            format!("{}/{}", report.spared, report.outage_calls),
            report.reached,
            format!("{}/{}", report.rejected_outside, report.calls_outside)
        );
        details.push((name, report));
    }
    println!(
        "\nspared: calls rejected during the outages; reached: calls that still went to the failing"
    );
    println!("dependency; good rejected: calls rejected outside the outages.\n");
    for (name, report) in details {
        let episodes: Vec<String> = report
            .transitions
            .iter()
            .filter(|t| {
                matches!(
                    (t.1, t.2),
                    (State::Closed, State::Open) | (State::HalfOpen, State::Closed)
                )
            })
            .map(|&(at, _, to)| {
                let what = if to == State::Open {
                    "opened"
                } else {
                    "closed"
                };
                let false_trip = to == State::Open && !in_outage(&outages, at);
                format!(
                    "{what} {}{}",
                    seconds(at),
                    if false_trip { " (false trip)" } else { "" }
                )
            })
            .collect();
        let told = if episodes.is_empty() {
            "never opened".to_string()
        } else {
            episodes.join(", ")
        };
        println!("{name}: {told}");
    }
}
