//! Two instances of a service share one circuit breaker through Redis (feature `redis`): each
//! runs on its own tokio runtime, with its own connection, as two processes would. The
//! dependency they call is down from 0.55 s to 2.0 s. Instance A calls it often and sees the
//! failures; instance B calls it rarely and sees none: A opens, and B opens with it, from the
//! fleet. Each open interval ends in one half-open episode for the whole fleet: one instance
//! holds the probe lease and sends the probes, the other stays open. When a probe succeeds, both
//! close. Prints one line per interval, side by side, the transitions as they happen, and a
//! summary; exits by itself in about four seconds.
//!
//! ```sh
//! cargo run --example fleet                          # starts its own redis-server (scripts/redis install)
//! TCB_REDIS_URL=redis://127.0.0.1:6379 cargo run --example fleet
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;
use tower::{BoxError, Layer, ServiceExt, service_fn};
use tower_circuit_breaker::redis::Fleet;
use tower_circuit_breaker::{CircuitBreakerLayer, Event, Handle, State};

const OUTAGE: std::ops::Range<Duration> = Duration::from_millis(550)..Duration::from_millis(2000);
const RUN_FOR: Duration = Duration::from_millis(3600);
const TICK: Duration = Duration::from_millis(300);

/// What one instance did in the current interval, and in all.
#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    /// Calls that reached the dependency while the instance was half-open.
    probes: AtomicU64,
    /// Microseconds from the start to the instance's first opening (0: not yet).
    opened_us: AtomicU64,
    /// Failures before the first opening.
    failed_before_open: AtomicU64,
    /// Half-open episodes of this instance.
    episodes: AtomicU64,
}

fn main() -> Result<(), BoxError> {
    let (url, _server) = redis_url()?;
    let namespace = format!("fleet-example-{}", std::process::id());
    println!("fleet: instances A and B share breaker `inventory` through {url}");
    println!(
        "fleet: the dependency is down from 0.55 s to 2.0 s; A calls every 4 ms, B every 100 ms\n"
    );
    let start = std::time::Instant::now();
    let instances = [("A", 4), ("B", 100)].map(|(name, every)| {
        let counters = Arc::new(Counters::default());
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (url, namespace, c) = (url.clone(), namespace.clone(), counters.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(instance(name, every, &url, &namespace, start, c, handle_tx))
        });
        let handle: Handle = handle_rx.recv().expect("the instance started");
        (name, counters, handle, thread)
    });
    let counters = [instances[0].1.clone(), instances[1].1.clone()];
    let mut totals = [[0u64; 4]; 2];
    let begin = std::time::Instant::now();
    while begin.elapsed() < RUN_FOR {
        std::thread::sleep(TICK);
        let mut line = format!("{:5.2}s", start.elapsed().as_secs_f64());
        for (i, (name, counters, handle, _)) in instances.iter().enumerate() {
            let taken = [
                &counters.calls,
                &counters.failed,
                &counters.rejected,
                &counters.probes,
            ]
            .map(|c| c.swap(0, Relaxed));
            for (total, n) in totals[i].iter_mut().zip(taken) {
                *total += n;
            }
            let [calls, failed, rejected, probes] = taken;
            line += &format!(
                "  | {name}: {:<9} calls {calls:>3} failed {failed:>2} rejected {rejected:>3} probes {probes}",
                handle.state().as_str()
            );
        }
        println!("{line}");
    }
    for (_, _, _, thread) in instances {
        thread.join().expect("no panic")?;
    }
    println!("\nfleet: summary");
    for (i, name) in ["A", "B"].iter().enumerate() {
        let [calls, failed, rejected, probes] = totals[i];
        println!("  {name}: {calls} calls, {failed} failed, {rejected} rejected, {probes} probes");
    }
    let [a, b] = counters
        .clone()
        .map(|c| c.opened_us.load(Relaxed) as f64 / 1000.0);
    println!(
        "  B opened {:.1} ms after A, having failed {} calls of its own",
        b - a,
        counters[1].failed_before_open.load(Relaxed)
    );
    let episodes: u64 = counters.iter().map(|c| c.episodes.load(Relaxed)).sum();
    let probes = totals[0][3] + totals[1][3];
    println!(
        "  {episodes} half-open episodes over the fleet, {probes} probes in all (half_open_calls = 2 per episode, not per instance)"
    );
    Ok(())
}

/// One instance: its breaker, shared; its calls; its transitions, printed.
async fn instance(
    name: &'static str,
    every_ms: u64,
    url: &str,
    namespace: &str,
    start: std::time::Instant,
    counters: Arc<Counters>,
    handle_tx: std::sync::mpsc::Sender<Handle>,
) -> Result<(), BoxError> {
    let layer = CircuitBreakerLayer::builder()
        .name("inventory")
        .consecutive_failures(5)
        .open_duration(Duration::from_millis(600))
        .half_open_calls(2)
        .build()?;
    let handle = layer.handle();
    let fleet = Fleet::builder(namespace).build(url)?;
    let shared = fleet.share(&handle)?;
    while !shared.is_reachable() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut events = handle.subscribe();
    let c = counters.clone();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if let Event::StateTransition { from, to, .. } = event {
                let elapsed = start.elapsed();
                if to == State::Open && c.opened_us.load(Relaxed) == 0 {
                    c.opened_us.store(elapsed.as_micros() as u64, Relaxed);
                }
                if to == State::HalfOpen {
                    c.episodes.fetch_add(1, Relaxed);
                }
                let at = elapsed.as_secs_f64();
                println!("{at:5.2}s    {name}: {from} -> {to}");
            }
        }
    });
    handle_tx.send(handle.clone())?;
    let dependency = {
        let (counters, handle) = (counters.clone(), handle.clone());
        service_fn(move |()| {
            let down = OUTAGE.contains(&start.elapsed());
            if handle.state() == State::HalfOpen {
                counters.probes.fetch_add(1, Relaxed);
            }
            async move {
                match down {
                    true => Err::<(), BoxError>("inventory unavailable".into()),
                    false => Ok(()),
                }
            }
        })
    };
    let service = layer.layer(dependency);
    let until = tokio::time::Instant::now() + RUN_FOR;
    let mut ticks = tokio::time::interval(Duration::from_millis(every_ms));
    while Instant::now() < until {
        ticks.tick().await;
        counters.calls.fetch_add(1, Relaxed);
        match service.clone().oneshot(()).await {
            Ok(()) => {}
            Err(e) if e.is::<tower_circuit_breaker::error::Rejected>() => {
                counters.rejected.fetch_add(1, Relaxed);
            }
            Err(_) => {
                counters.failed.fetch_add(1, Relaxed);
                if counters.opened_us.load(Relaxed) == 0 {
                    counters.failed_before_open.fetch_add(1, Relaxed);
                }
            }
        }
    }
    drop(shared);
    Ok(())
}

/// `TCB_REDIS_URL`, or a redis-server of this example's own on a free loopback port (killed
/// when the returned guard is dropped).
fn redis_url() -> Result<(String, Option<KillOnDrop>), BoxError> {
    if let Ok(url) = std::env::var("TCB_REDIS_URL") {
        return Ok((url, None));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| {
            format!(
                "cannot start redis-server ({e}): run scripts/redis install, or set TCB_REDIS_URL"
            )
        })?;
    let guard = KillOnDrop(child);
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok((format!("redis://127.0.0.1:{port}"), Some(guard)));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err("redis-server did not start".into())
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
