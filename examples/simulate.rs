//! Simulation: what each policy does for a struggling dependency, through the real layer.
//!
//! A dependency serves up to a capacity of calls a second; past it, its error rate rises with the
//! load (half past capacity, every call fails), and in a brown-out its latency rises first. A
//! client offers 50 calls a second (Poisson arrivals) for 4 minutes; each scenario degrades the
//! dependency in its own way, and each policy guards the client's calls:
//!
//! * scenarios: error spikes of 20 %, 60 % and 100 % (from 60 s to 120 s); a sustained 20 %
//!   error rate (normal for that dependency: a policy should leave it alone); a slow brown-out
//!   (capacity falls from 60 s, latency rises, errors come later, when the load passes the
//!   capacity; recovered at 180 s); one of four dependencies failing (100 %, 60 s to 120 s).
//! * policies: none; the breaker with a count window and with a time window (50 %); adaptive
//!   throttling (Envoy's defaults); the breaker with a learned threshold.
//!
//! Everything runs on tokio's paused clock and on a seeded generator, so that 4 simulated
//! minutes take a moment and every run prints the same table. The figures, per scenario and
//! policy:
//!
//! * goodput: the share of offered calls that succeeded;
//! * sent to failing: calls that reached a failing dependency during the incident;
//! * user failures: calls that reached the dependency and failed (a rejection is not counted
//!   here: it is immediate and can go to a fallback; it has its own column);
//! * detect: from the incident's start to the first second in which at least 10 % of the failing
//!   dependency's calls were rejected;
//! * recover: from the incident's end to the first of 3 seconds in a row in which the failing
//!   dependency's calls succeed at 95 % of their rate before the incident.
//!
//! It writes a plot of one scenario (goodput and rejection rate over time, per policy) as SVG.
//!
//! ```sh
//! cargo run --release --example simulate                     # the README's table and plot
//! cargo run --release --example simulate -- --seed 7 --plot spike-60 --svg /tmp/spike.svg
//! ```

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plotters::prelude::*;
use tokio::time::Instant;
use tower::{BoxError, Layer, ServiceExt, service_fn};
use tower_circuit_breaker::error::Rejected;
use tower_circuit_breaker::{
    AdaptiveThrottle, Builder, CircuitBreakerLayer, LearnedThreshold, Window,
};

/// Simulated seconds.
const DURATION: usize = 240;
/// Calls offered a second, over all dependencies.
const OFFERED: f64 = 50.0;
/// A dependency's normal capacity, in calls a second (shared by the dependencies of a scenario
/// in proportion to the calls they get).
const CAPACITY: f64 = 80.0;
const BASE_ERROR: f64 = 0.01;
const BASE_LATENCY_MS: f64 = 40.0;
/// The plot's moving average, in seconds.
const SMOOTHING: usize = 5;

// ===== randomness =====

/// splitmix64: small, seedable, good enough for arrivals and error draws.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

// ===== scenarios =====

/// The dependency's condition at a time: its own error rate and its capacity (calls a second).
#[derive(Clone, Copy)]
struct Condition {
    error: f64,
    capacity: f64,
}

struct Scenario {
    name: &'static str,
    dependencies: usize,
    /// When the failing dependency is degraded (none: nothing to detect).
    incident: Option<(f64, f64)>,
    /// The condition of dependency `d` at time `t` (seconds).
    condition: fn(d: usize, t: f64) -> Condition,
}

fn normal() -> Condition {
    Condition {
        error: BASE_ERROR,
        capacity: CAPACITY,
    }
}

fn spike(t: f64, error: f64) -> Condition {
    match (60.0..120.0).contains(&t) {
        true => Condition { error, ..normal() },
        false => normal(),
    }
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "spike-20",
            dependencies: 1,
            incident: Some((60.0, 120.0)),
            condition: |_, t| spike(t, 0.2),
        },
        Scenario {
            name: "spike-60",
            dependencies: 1,
            incident: Some((60.0, 120.0)),
            condition: |_, t| spike(t, 0.6),
        },
        Scenario {
            name: "spike-100",
            dependencies: 1,
            incident: Some((60.0, 120.0)),
            condition: |_, t| spike(t, 1.0),
        },
        Scenario {
            name: "sustained-20",
            dependencies: 1,
            incident: None,
            condition: |_, _| Condition {
                error: 0.2,
                ..normal()
            },
        },
        Scenario {
            name: "brownout",
            dependencies: 1,
            incident: Some((60.0, 180.0)),
            // Capacity falls from 80 to 35 calls a second over a minute, holds, and comes back.
            condition: |_, t| {
                let capacity = match t {
                    t if !(60.0..180.0).contains(&t) => CAPACITY,
                    t if t < 120.0 => CAPACITY - (CAPACITY - 35.0) * (t - 60.0) / 60.0,
                    _ => 35.0,
                };
                Condition {
                    capacity,
                    ..normal()
                }
            },
        },
        Scenario {
            name: "one-of-four",
            dependencies: 4,
            incident: Some((60.0, 120.0)),
            condition: |d, t| match d {
                0 => spike(t, 1.0),
                _ => normal(),
            },
        },
    ]
}

// ===== the dependency =====

#[derive(Debug)]
struct Failed;

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the dependency failed")
    }
}

impl std::error::Error for Failed {}

/// One dependency: the calls it took in the last second (its load), and its draws.
struct Dependency {
    recent: VecDeque<Instant>,
    rng: Rng,
}

impl Dependency {
    /// Takes a call at `now` under `condition` (its capacity already scaled to this dependency's
    /// share): whether it fails, and how long it takes.
    fn take(&mut self, now: Instant, condition: Condition) -> (bool, Duration) {
        while self
            .recent
            .front()
            .is_some_and(|&at| now.duration_since(at) >= Duration::from_secs(1))
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        let load = self.recent.len() as f64 / condition.capacity.max(1e-9);
        // Past capacity, errors rise with load: every call fails at 1.5 times the capacity.
        let overload = ((load - 1.0) / 0.5).clamp(0.0, 1.0);
        let error = condition.error + (1.0 - condition.error) * overload;
        // Latency rises as the load nears the capacity (the brown-out comes before the errors).
        let latency = BASE_LATENCY_MS * (1.0 + 10.0 * (load - 0.6).max(0.0));
        let failed = self.rng.next() < error;
        (failed, Duration::from_secs_f64(latency / 1000.0))
    }
}

// ===== policies =====

type Policy = (&'static str, fn(dependency: u64) -> Option<Builder>);

fn breaker() -> Builder {
    CircuitBreakerLayer::builder()
        .minimum_calls(20)
        .failure_rate_threshold(0.5)
        .open_duration(Duration::from_secs(5))
        .half_open_calls(5)
}

fn policies() -> Vec<Policy> {
    vec![
        ("none", |_| None),
        ("breaker, count(100)", |_| {
            Some(breaker().sliding_window(Window::count(100)))
        }),
        ("breaker, time(10s)", |_| {
            Some(breaker().sliding_window(Window::time(Duration::from_secs(10))))
        }),
        ("adaptive throttling", |d| {
            Some(
                CircuitBreakerLayer::builder().adaptive_throttling(AdaptiveThrottle::new().seed(d)),
            )
        }),
        ("breaker, learned", |_| {
            Some(
                breaker()
                    .sliding_window(Window::time(Duration::from_secs(10)))
                    .learned_failure_threshold(LearnedThreshold::new()),
            )
        }),
    ]
}

// ===== one run =====

/// Per second: offered calls, successes, failures, rejections; all dependencies, and the failing
/// one(s) apart.
#[derive(Clone, Copy, Default)]
struct Second {
    offered: u32,
    ok: u32,
    failed: u32,
    rejected: u32,
}

struct Run {
    all: Vec<Second>,
    failing: Vec<Second>,
    /// Calls that reached a failing dependency during the incident.
    sent_to_failing: u32,
}

/// What a call ended as.
#[derive(Clone, Copy, PartialEq)]
enum End {
    Ok,
    Failed,
    Rejected,
}

async fn run(scenario: &Scenario, policy: &Policy, seed: u64) -> Run {
    let start = Instant::now();
    let mut services = Vec::new();
    for d in 0..scenario.dependencies {
        let dependency = Arc::new(Mutex::new(Dependency {
            recent: VecDeque::new(),
            rng: Rng(seed ^ (d as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F)),
        }));
        let condition = scenario.condition;
        let share = 1.0 / scenario.dependencies as f64;
        let inner = service_fn(move |()| {
            let now = Instant::now();
            let t = now.duration_since(start).as_secs_f64();
            let mut c = condition(d, t);
            c.capacity *= share;
            let (failed, latency) = dependency.lock().unwrap().take(now, c);
            async move {
                tokio::time::sleep(latency).await;
                if failed { Err(Failed) } else { Ok(()) }
            }
        });
        let svc: tower::util::BoxCloneSyncService<(), (), BoxError> = match (policy.1)(d as u64) {
            Some(builder) => {
                let layer = builder.build().expect("a valid policy");
                tower::util::BoxCloneSyncService::new(layer.layer(inner))
            }
            None => tower::util::BoxCloneSyncService::new(inner.map_err(BoxError::from)),
        };
        services.push(svc);
    }

    let mut arrivals = Rng(seed);
    let mut at = 0.0;
    let mut calls = Vec::new();
    let mut i = 0usize;
    loop {
        at += -(1.0 - arrivals.next()).ln() / OFFERED;
        if at >= DURATION as f64 {
            break;
        }
        tokio::time::sleep_until(start + Duration::from_secs_f64(at)).await;
        let d = i % scenario.dependencies;
        i += 1;
        let svc = services[d].clone();
        let call = tokio::spawn(async move {
            match svc.oneshot(()).await {
                Ok(()) => End::Ok,
                Err(e) if e.is::<Rejected>() => End::Rejected,
                Err(_) => End::Failed,
            }
        });
        calls.push((at, d, call));
    }

    let mut all = vec![Second::default(); DURATION];
    let mut failing = vec![Second::default(); DURATION];
    let mut sent_to_failing = 0;
    for (at, d, call) in calls {
        let end = call.await.expect("no panic");
        let second = at as usize;
        // In "one of four", dependency 0 fails; otherwise the only one does.
        let is_failing = d == 0;
        let in_incident = scenario
            .incident
            .is_some_and(|(from, to)| (from..to).contains(&at));
        if is_failing && in_incident && end != End::Rejected {
            sent_to_failing += 1;
        }
        let buckets: &mut [&mut Vec<Second>] = if is_failing {
            &mut [&mut all, &mut failing]
        } else {
            &mut [&mut all]
        };
        for bucket in buckets.iter_mut() {
            let s = &mut bucket[second];
            s.offered += 1;
            match end {
                End::Ok => s.ok += 1,
                End::Failed => s.failed += 1,
                End::Rejected => s.rejected += 1,
            }
        }
    }
    Run {
        all,
        failing,
        sent_to_failing,
    }
}

// ===== figures =====

struct Figures {
    goodput: f64,
    sent_to_failing: u32,
    user_failures: u32,
    rejected: u32,
    detect: Option<usize>,
    recover: Option<usize>,
}

fn figures(scenario: &Scenario, run: &Run) -> Figures {
    let sum = |f: fn(&Second) -> u32| run.all.iter().map(f).sum::<u32>();
    let offered = sum(|s| s.offered);
    let share = |s: &Second, n: u32| match s.offered {
        0 => 0.0,
        offered => f64::from(n) / f64::from(offered),
    };
    let (detect, recover) = match scenario.incident {
        None => (None, None),
        Some((from, to)) => {
            let (from, to) = (from as usize, to as usize);
            let detect = (from..DURATION)
                .find(|&t| share(&run.failing[t], run.failing[t].rejected) >= 0.1)
                .map(|t| t - from);
            let before: Vec<f64> = (10..from)
                .map(|t| share(&run.failing[t], run.failing[t].ok))
                .collect();
            let normal = before.iter().sum::<f64>() / before.len() as f64;
            let recovered = |t: usize| share(&run.failing[t], run.failing[t].ok) >= 0.95 * normal;
            let recover = (to..DURATION - 2)
                .find(|&t| (t..t + 3).all(recovered))
                .map(|t| t - to);
            (detect, recover)
        }
    };
    Figures {
        goodput: f64::from(sum(|s| s.ok)) / f64::from(offered),
        sent_to_failing: run.sent_to_failing,
        user_failures: sum(|s| s.failed),
        rejected: sum(|s| s.rejected),
        detect,
        recover,
    }
}

fn seconds(s: Option<usize>) -> String {
    s.map_or("-".to_string(), |s| format!("{s} s"))
}

// ===== the plot =====

const COLORS: [RGBColor; 5] = [
    RGBColor(120, 120, 120),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

fn plot(
    path: &str,
    scenario: &Scenario,
    runs: &[(&str, Run)],
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let (upper, lower) = root.split_vertically(320);
    let panels = [
        (
            upper,
            "goodput (successful calls per second, 5 s average)",
            OFFERED * 1.2,
            0,
        ),
        (
            lower,
            "rejection rate (share of offered calls rejected, 5 s average)",
            1.0,
            1,
        ),
    ];
    for (area, title, top, which) in panels {
        let mut chart = ChartBuilder::on(&area)
            .caption(format!("{}: {title}", scenario.name), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(48)
            .build_cartesian_2d(0f64..DURATION as f64, 0f64..top)?;
        chart
            .configure_mesh()
            .x_desc("time (s)")
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        for (i, (name, run)) in runs.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            // Moving averages over 5 s: per-second counts of a Poisson load are too noisy to read.
            let points = (SMOOTHING..=DURATION).map(|end| {
                let seconds = &run.all[end - SMOOTHING..end];
                let total = |f: fn(&Second) -> u32| seconds.iter().map(f).sum::<u32>();
                let y = match which {
                    0 => f64::from(total(|s| s.ok)) / SMOOTHING as f64,
                    _ => match total(|s| s.offered) {
                        0 => 0.0,
                        offered => f64::from(total(|s| s.rejected)) / f64::from(offered),
                    },
                };
                (end as f64, y)
            });
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        if which == 0 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
        }
    }
    root.present()?;
    Ok(())
}

// ===== main =====

fn main() {
    let mut seed = 1u64;
    let mut plotted = "brownout".to_string();
    let mut svg = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/simulation.svg").to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        match (arg.as_str(), value) {
            ("--seed", Some(v)) => seed = v.parse().expect("--seed takes a number"),
            ("--plot", Some(v)) => plotted = v,
            ("--svg", Some(v)) => svg = v,
            _ => {
                eprintln!("usage: simulate [--seed N] [--plot SCENARIO] [--svg PATH]");
                std::process::exit(2);
            }
        }
    }
    println!(
        "simulating {DURATION} s at {OFFERED} calls/s per scenario and policy (seed {seed}), on a paused clock\n"
    );
    println!(
        "| scenario | policy | goodput | sent to failing | user failures | rejected | detect | recover |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for scenario in scenarios() {
        let mut runs = Vec::new();
        for policy in policies() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("a runtime");
            let run = runtime.block_on(run(&scenario, &policy, seed));
            let f = figures(&scenario, &run);
            println!(
                "| {} | {} | {:.1} % | {} | {} | {} | {} | {} |",
                scenario.name,
                policy.0,
                f.goodput * 100.0,
                f.sent_to_failing,
                f.user_failures,
                f.rejected,
                seconds(f.detect),
                seconds(f.recover)
            );
            runs.push((policy.0, run));
        }
        if scenario.name == plotted {
            match plot(&svg, &scenario, &runs) {
                Ok(()) => eprintln!("wrote the plot of `{plotted}` to {svg}"),
                Err(e) => eprintln!("could not write {svg}: {e}"),
            }
        }
    }
}
