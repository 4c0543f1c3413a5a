//! End to end: a hyper HTTP/1.1 server on 127.0.0.1, with and without our breaker in front of
//! the same handler, driven by a load generator in this process.
//!
//! `e2e [requests per batch] [connections] [batches]` (defaults 256, 8, and as many pairs of
//! batches as fit in 40 s of measuring; an explicit count of pairs is run in full).
//!
//! * The server is one thread, a current-thread tokio runtime pinned to the last allowed CPU,
//!   with two listeners: connections accepted on the first get the raw handler, on the second
//!   the breaker in front of it. Both modes share the thread, runtime and allocator, so nothing
//!   but the breaker differs between them (two server threads, one per mode, came out up to 1 %
//!   apart in an A/A run).
//! * The load generator is the main thread, pinned to the first allowed CPU: a minimal HTTP/1.1
//!   client on non-blocking std sockets that polls without sleeping, with `connections`
//!   keep-alive connections to each listener (opened alternately). A batch sends
//!   `requests / connections` sequential GET requests on every connection of one mode at once,
//!   each response read to the end and checked. (hyper's client on a tokio runtime, pinned,
//!   spent more CPU per request than the server and left it idle 70 % of the time, waiting for
//!   cross-CPU wake-ups; this one keeps the server busy over 90 % of the time, so the server is
//!   the bottleneck.) Batches alternate between the modes in pairs, and the order within a pair
//!   alternates too, so that the drift of a shared machine cancels out.
//! * Per batch: wall time, and the server thread's CPU time (its `pthread_getcpuclockid` clock,
//!   read by the client before and after the batch; the server thread does nothing else).
//!
//! Reported (TSV on stdout, details on stderr): per mode, requests per second (wall clock),
//! server CPU µs per request and the server's busy fraction (CPU ÷ wall); the throughput ratio
//! breaker ÷ raw, from wall time and from server CPU time, over all batches and as the median of
//! the paired batches' ratios with a distribution-free 95 % confidence interval (pairs assumed
//! independent); on stderr also whether the CPU estimate settles the 0.98 target.
//!
//! Why server CPU time: a CPU-bound server serves 1 ÷ (CPU time per request) requests per second,
//! so raw CPU per request ÷ breaker CPU per request estimates the ratio of the throughputs. It is
//! far less sensitive to the scheduler than wall time: when other processes take the client's or
//! the server's CPU for milliseconds, the batch's wall time grows (paired wall ratios range from
//! 0.05 to 10 and more) but the server's CPU time does not. What remains is cache and wake-up
//! pattern disturbance, p10–p90 of the paired CPU ratios about 0.90–1.10, symmetric, hence many
//! short pairs and the median. While the server is busy nearly all the time the wall-clock
//! medians agree with the CPU ones; when the machine is busy they do not, and the CPU figure is
//! the one to read.
//!
//! Then checks that the breaker stayed closed, recorded the calls and rejected none.
//!
//! Switches:
//! * `E2E_AA=1` serves the raw handler on both listeners, an A/A control (its ratios came out
//!   1.000–1.002).
//! * `E2E_BOXED=1` puts both modes behind one `BoxCloneService` type, as axum's router boxes its
//!   routes, so that the thread runs one copy of hyper's generic connection code instead of two.
//!   With two copies alternating, callgrind's cache model counts ~120 more instruction-cache
//!   misses per breaker request than in the A/A run. Boxed, the breaker's ratio came out
//!   0.990–0.993 (against 0.982–0.988 unboxed), and the boxed A/A 1.001.
//! * `E2E_NOPIN=1` leaves the threads unpinned (the client then yields when idle; on the 2-core VM
//!   it gave the same ratios as pinned).
//! * `E2E_DUMP=<path>` writes every pair's wall and CPU nanoseconds as TSV.

use std::convert::Infallible;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::util::BoxCloneService;
use tower::{BoxError, Layer, ServiceExt, service_fn};

/// Both modes behind one boxed service type (`E2E_BOXED=1`), as axum's router boxes routes.
type Boxed = BoxCloneService<Request<Incoming>, Response<Full<Bytes>>, BoxError>;
use tower_circuit_breaker::{CircuitBreakerLayer, Handle, State};

/// By default: pairs of batches until this much time has been spent measuring (about 6 000 pairs
/// on the quiet 2-core VM, fewer when it is busy), at most this many.
const DEFAULT_BUDGET: Duration = Duration::from_secs(40);
const DEFAULT_PAIRS: usize = 20_000;
/// Untimed pairs of batches first.
const WARM_UP_PAIRS: usize = 20;

async fn handler(_: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Pins the calling thread to one CPU.
fn pin(cpu: usize) {
    // SAFETY: as above; pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let r = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(r, 0, "sched_setaffinity({cpu}) failed");
    }
}

/// CPU time consumed so far by the thread whose CPU clock is `clock`.
fn cpu_time(clock: libc::clockid_t) -> Duration {
    // SAFETY: timespec is plain data; clock_gettime writes it on success.
    unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        assert_eq!(libc::clock_gettime(clock, &mut ts), 0);
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
}

/// The CPU clock of the calling thread, readable from any thread of the process.
fn this_thread_clock() -> libc::clockid_t {
    // SAFETY: pthread_self is always valid; the clock id is written on success.
    unsafe {
        let mut clock: libc::clockid_t = 0;
        assert_eq!(
            libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock),
            0
        );
        clock
    }
}

/// Starts the server thread (see the top of the file), pinned to `cpu` if given; with `control`
/// both listeners serve the raw handler. Returns the raw and the breaker address and the CPU
/// clock of the server thread.
fn serve(
    layer: CircuitBreakerLayer,
    cpu: Option<usize>,
    control: bool,
    boxed: bool,
) -> (SocketAddr, SocketAddr, libc::clockid_t) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Some(cpu) = cpu {
            pin(cpu);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let raw = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let breaker = TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send((
                raw.local_addr().unwrap(),
                breaker.local_addr().unwrap(),
                this_thread_clock(),
            ))
            .unwrap();
            // Runs until the process exits.
            loop {
                let (stream, with_breaker) = tokio::select! {
                    accepted = raw.accept() => (accepted.unwrap().0, false),
                    accepted = breaker.accept() => (accepted.unwrap().0, !control),
                };
                stream.set_nodelay(true).unwrap();
                let io = TokioIo::new(stream);
                let builder = hyper::server::conn::http1::Builder::new();
                if boxed {
                    // One service type for both modes, so one copy of hyper's connection code.
                    let svc: Boxed = if with_breaker {
                        BoxCloneService::new(layer.layer(service_fn(handler)))
                    } else {
                        BoxCloneService::new(
                            service_fn(handler).map_err(|e: Infallible| -> BoxError { match e {} }),
                        )
                    };
                    tokio::spawn(builder.serve_connection(io, TowerToHyperService::new(svc)));
                } else if with_breaker {
                    let svc = TowerToHyperService::new(layer.layer(service_fn(handler)));
                    tokio::spawn(builder.serve_connection(io, svc));
                } else {
                    let svc = TowerToHyperService::new(service_fn(handler));
                    tokio::spawn(builder.serve_connection(io, svc));
                }
            }
        });
    });
    rx.recv().unwrap()
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n";

/// The length of the response at the start of `buf`, once it is all there.
fn complete_response(buf: &[u8]) -> Option<usize> {
    let head = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = std::str::from_utf8(&buf[..head]).expect("an ASCII response head");
    let length: usize = text
        .split("\r\n")
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().expect("a numeric content-length"))
        })
        .expect("a content-length");
    (buf.len() >= head + length).then_some(head + length)
}

struct Sample {
    wall: Duration,
    server_cpu: Duration,
}

/// One batch: `per_connection` requests one after the other on every connection of `conns` at
/// once. With `spin` the client polls its sockets without pause (it has a CPU of its own),
/// otherwise it yields after a pass that found nothing.
fn batch(
    conns: &mut [TcpStream],
    per_connection: usize,
    server: libc::clockid_t,
    spin: bool,
) -> Sample {
    let cpu0 = cpu_time(server);
    let start = Instant::now();
    let mut left = vec![per_connection; conns.len()];
    let mut bufs = vec![Vec::<u8>::with_capacity(512); conns.len()];
    let mut chunk = [0u8; 1024];
    for c in conns.iter_mut() {
        c.write_all(REQUEST).unwrap();
    }
    let mut busy = conns.len();
    while busy > 0 {
        let mut progress = false;
        for (i, conn) in conns.iter_mut().enumerate() {
            if left[i] == 0 {
                continue;
            }
            let n = match conn.read(&mut chunk) {
                Ok(0) => panic!("the server closed a connection"),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                Err(e) => panic!("read: {e}"),
            };
            progress = true;
            let buf = &mut bufs[i];
            buf.extend_from_slice(&chunk[..n]);
            let Some(len) = complete_response(buf) else {
                continue;
            };
            assert_eq!(len, buf.len(), "unexpected bytes after the response");
            assert!(buf.starts_with(b"HTTP/1.1 200 OK\r\n"), "{buf:?}");
            assert!(buf.ends_with(b"\r\n\r\nok"), "{buf:?}");
            buf.clear();
            left[i] -= 1;
            if left[i] > 0 {
                // 35 bytes into an idle connection's empty send buffer: never WouldBlock.
                conn.write_all(REQUEST).unwrap();
            } else {
                busy -= 1;
            }
        }
        if !progress && !spin {
            std::thread::yield_now();
        }
    }
    let wall = start.elapsed();
    Sample {
        wall,
        server_cpu: cpu_time(server) - cpu0,
    }
}

/// The median of `v` and a distribution-free 95 % confidence interval for it: the order
/// statistics n/2 ∓ 0.98·√n (normal approximation of the binomial; pairs assumed independent).
fn median_ci(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let half = 0.98 * (n as f64).sqrt();
    let lo = (n as f64 / 2.0 - half).floor().max(0.0) as usize;
    let hi = ((n as f64 / 2.0 + half).ceil() as usize).min(n - 1);
    (v[n / 2], v[lo], v[hi])
}

/// The extremes and the 10th, 50th and 90th percentiles, for the spread on stderr.
fn spread(v: &[f64]) -> String {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    format!(
        "min {:.3} p10 {:.3} p50 {:.3} p90 {:.3} max {:.3}",
        v[0],
        at(0.1),
        at(0.5),
        at(0.9),
        v[v.len() - 1]
    )
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| {
            a.parse()
                .expect("e2e [requests per batch] [connections] [batches]")
        })
        .collect();
    let requests = args.first().copied().unwrap_or(256);
    let connections = args.get(1).copied().unwrap_or(8).max(1);
    let (pairs, budget) = match args.get(2) {
        Some(&n) => (n, None),
        None => (DEFAULT_PAIRS, Some(DEFAULT_BUDGET)),
    };
    let per_connection = requests / connections;
    assert!(per_connection > 0 && pairs > 0, "nothing to send");
    let control = env_flag("E2E_AA");
    let boxed = env_flag("E2E_BOXED");

    let cpus = allowed_cpus();
    let (client_cpu, server_cpu) = if !env_flag("E2E_NOPIN") && cpus.len() >= 2 {
        (Some(cpus[0]), Some(cpus[cpus.len() - 1]))
    } else {
        (None, None)
    };
    let spin = client_cpu.is_some();
    match (client_cpu, server_cpu) {
        (Some(c), Some(s)) => eprintln!("load generator pinned to CPU {c}, server to CPU {s}"),
        _ => eprintln!("not pinned (allowed CPUs: {cpus:?})"),
    }
    if let Some(cpu) = client_cpu {
        pin(cpu);
    }

    let layer = CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .consecutive_failures(5)
        .build()
        .expect("valid configuration");
    let handle: Handle = layer.handle();
    let (raw_addr, breaker_addr, server) = serve(layer, server_cpu, control, boxed);
    let open = |addr| {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_nonblocking(true).unwrap();
        s
    };
    // Opened alternately, so that neither mode's connections come first on either side.
    let (mut raw_conns, mut breaker_conns) = (Vec::new(), Vec::new());
    for i in 0..connections {
        if i.is_multiple_of(2) {
            raw_conns.push(open(raw_addr));
            breaker_conns.push(open(breaker_addr));
        } else {
            breaker_conns.push(open(breaker_addr));
            raw_conns.push(open(raw_addr));
        }
    }

    for _ in 0..WARM_UP_PAIRS {
        batch(&mut raw_conns, per_connection, server, spin);
        batch(&mut breaker_conns, per_connection, server, spin);
    }
    let start = Instant::now();
    let mut samples: Vec<(Sample, Sample)> = Vec::with_capacity(pairs);
    for b in 0..pairs {
        let (r, k) = if b.is_multiple_of(2) {
            let r = batch(&mut raw_conns, per_connection, server, spin);
            (r, batch(&mut breaker_conns, per_connection, server, spin))
        } else {
            let k = batch(&mut breaker_conns, per_connection, server, spin);
            (batch(&mut raw_conns, per_connection, server, spin), k)
        };
        samples.push((r, k));
        // Stop early on an even count, so that both orders weigh the same.
        if budget.is_some_and(|budget| start.elapsed() > budget) && samples.len().is_multiple_of(2)
        {
            eprintln!("time budget reached after {} pairs", samples.len());
            break;
        }
    }
    let elapsed = start.elapsed();

    if let Ok(path) = std::env::var("E2E_DUMP") {
        let mut out = String::from("raw_wall_ns\tbreaker_wall_ns\traw_cpu_ns\tbreaker_cpu_ns\n");
        for (r, k) in &samples {
            out += &format!(
                "{}\t{}\t{}\t{}\n",
                r.wall.as_nanos(),
                k.wall.as_nanos(),
                r.server_cpu.as_nanos(),
                k.server_cpu.as_nanos()
            );
        }
        std::fs::write(path, out).unwrap();
    }

    let metrics = handle.metrics();
    if control {
        eprintln!("A/A control: the raw handler on both listeners");
    } else {
        assert_eq!(
            handle.state(),
            State::Closed,
            "the breaker must stay closed"
        );
        assert_eq!(metrics.failed(), 0);
        assert_eq!(metrics.not_permitted(), 0);
        assert!(metrics.calls() > 0, "the breaker saw no calls");
    }

    let per_batch = per_connection * connections;
    let total = (per_batch * samples.len()) as f64;
    let sum = |f: fn(&(Sample, Sample)) -> Duration| -> f64 {
        samples.iter().map(f).sum::<Duration>().as_secs_f64()
    };
    let (raw_wall, breaker_wall) = (sum(|s| s.0.wall), sum(|s| s.1.wall));
    let (raw_cpu, breaker_cpu) = (sum(|s| s.0.server_cpu), sum(|s| s.1.server_cpu));
    // Throughput with the breaker over throughput without: time without over time with.
    let ratios = |f: fn(&Sample) -> Duration| -> Vec<f64> {
        samples
            .iter()
            .map(|(r, k)| f(r).as_secs_f64() / f(k).as_secs_f64())
            .collect()
    };
    let wall_ratios = ratios(|s| s.wall);
    let cpu_ratios = ratios(|s| s.server_cpu);
    eprintln!(
        "{} pairs of {per_batch}-request batches on {connections} connections in {:.1} s",
        samples.len(),
        elapsed.as_secs_f64()
    );
    eprintln!("paired wall ratios: {}", spread(&wall_ratios));
    eprintln!("paired CPU ratios:  {}", spread(&cpu_ratios));
    let (wall_median, wall_lo, wall_hi) = median_ci(wall_ratios);
    let (cpu_median, cpu_lo, cpu_hi) = median_ci(cpu_ratios);
    let verdict = if cpu_lo >= 0.98 {
        "met"
    } else if cpu_hi < 0.98 {
        "not met"
    } else {
        "undecided"
    };
    eprintln!(
        "target 0.98 by the CPU estimate: {verdict} (median {cpu_median:.4}, 95 % CI \
         {cpu_lo:.4}–{cpu_hi:.4})"
    );

    let us = |cpu: f64| cpu / total * 1e6;
    println!("mode\trequests_per_s\tserver_cpu_us_per_request\tserver_busy");
    println!(
        "raw\t{:.0}\t{:.3}\t{:.3}",
        total / raw_wall,
        us(raw_cpu),
        raw_cpu / raw_wall
    );
    println!(
        "breaker\t{:.0}\t{:.3}\t{:.3}",
        total / breaker_wall,
        us(breaker_cpu),
        breaker_cpu / breaker_wall
    );
    // From here on the columns hold the ratio breaker ÷ raw of throughput: from wall time in
    // requests_per_s, from server CPU time in server_cpu_us_per_request.
    println!(
        "ratio\t{:.4}\t{:.4}\t-",
        raw_wall / breaker_wall,
        raw_cpu / breaker_cpu
    );
    println!("median_batch_ratio\t{wall_median:.4}\t{cpu_median:.4}\t-");
    println!("ci95_low\t{wall_lo:.4}\t{cpu_lo:.4}\t-");
    println!("ci95_high\t{wall_hi:.4}\t{cpu_hi:.4}\t-");
    // Counts, in the first column.
    println!("pairs\t{}\t-\t-", samples.len());
    println!("pinned\t{}\t-\t-", u8::from(spin));
    println!("requests_per_batch\t{per_batch}\t-\t-");
    println!("connections\t{connections}\t-\t-");
}
