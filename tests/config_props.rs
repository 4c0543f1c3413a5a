//! No `Builder` input panics: every combination of setters, extremes included, either fails to
//! build with a `ConfigError` naming a setter whose value is out of range, or builds a layer that
//! survives calls, failures, slow calls, time advances and every handle operation.
//!
//! The validity rules below are written from the setters' documentation, independently of
//! `config.rs`: a build must fail exactly when one of them is broken, and name a broken one.

use std::time::Duration;

use proptest::prelude::*;
use tower::timeout::error::Elapsed;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_circuit_breaker::error::Rejected;
use tower_circuit_breaker::{Backoff, CircuitBreakerLayer, Handle, Metrics, State, Window};

const MAX_WINDOW: u32 = 1 << 20;
const MAX_PROBES: u32 = 4095;

#[derive(Clone, Debug)]
enum WindowIn {
    Count(u32),
    Time(Duration, Option<u32>),
}

#[derive(Clone, Debug)]
struct BackoffIn {
    initial: Duration,
    multiplier: f64,
    max: Duration,
    jitter: Option<f64>,
}

/// Which setters are called, with what.
#[derive(Clone, Debug, Default)]
struct Input {
    name: Option<String>,
    failure_rate_threshold: Option<f64>,
    slow_call_rate_threshold: Option<f64>,
    slow_call_duration: Option<Duration>,
    sliding_window: Option<WindowIn>,
    minimum_calls: Option<u32>,
    consecutive_failures: Option<u32>,
    open_duration: Option<Duration>,
    open_backoff: Option<BackoffIn>,
    half_open_calls: Option<u32>,
    half_open_successes: Option<u32>,
    half_open_max_wait: Option<Duration>,
    call_timeout: Option<Duration>,
}

impl Input {
    fn build(&self) -> Result<CircuitBreakerLayer, tower_circuit_breaker::ConfigError> {
        let mut b = CircuitBreakerLayer::builder();
        if let Some(v) = &self.name {
            b = b.name(v);
        }
        if let Some(v) = self.failure_rate_threshold {
            b = b.failure_rate_threshold(v);
        }
        if let Some(v) = self.slow_call_rate_threshold {
            b = b.slow_call_rate_threshold(v);
        }
        if let Some(v) = self.slow_call_duration {
            b = b.slow_call_duration(v);
        }
        if let Some(w) = &self.sliding_window {
            b = b.sliding_window(match *w {
                WindowIn::Count(n) => Window::count(n),
                WindowIn::Time(d, None) => Window::time(d),
                WindowIn::Time(d, Some(k)) => Window::time(d).buckets(k),
            });
        }
        if let Some(v) = self.minimum_calls {
            b = b.minimum_calls(v);
        }
        if let Some(v) = self.consecutive_failures {
            b = b.consecutive_failures(v);
        }
        if let Some(v) = self.open_duration {
            b = b.open_duration(v);
        }
        if let Some(o) = &self.open_backoff {
            let mut backoff = Backoff::exponential(o.initial, o.multiplier, o.max);
            if let Some(j) = o.jitter {
                backoff = backoff.jitter(j);
            }
            b = b.open_backoff(backoff);
        }
        if let Some(v) = self.half_open_calls {
            b = b.half_open_calls(v);
        }
        if let Some(v) = self.half_open_successes {
            b = b.half_open_successes(v);
        }
        if let Some(v) = self.half_open_max_wait {
            b = b.half_open_max_wait(v);
        }
        if let Some(v) = self.call_timeout {
            b = b.call_timeout(v);
        }
        b.build()
    }

    /// The setters whose values break their documented ranges.
    fn offending(&self) -> Vec<&'static str> {
        let rate = |r: f64| r > 0.0 && r <= 1.0;
        let positive = |d: Duration| d > Duration::ZERO;
        let mut bad = Vec::new();
        let mut check = |ok: bool, field| {
            if !ok {
                bad.push(field);
            }
        };
        if let Some(r) = self.failure_rate_threshold {
            check(rate(r), "failure_rate_threshold");
        }
        if let Some(r) = self.slow_call_rate_threshold {
            check(rate(r), "slow_call_rate_threshold");
        }
        if let Some(d) = self.slow_call_duration {
            check(positive(d), "slow_call_duration");
        }
        if let Some(w) = &self.sliding_window {
            let ok = match *w {
                WindowIn::Count(n) => (1..=MAX_WINDOW).contains(&n),
                WindowIn::Time(d, k) => {
                    // Default: one bucket per second, at least 10 and at most 4096, and none
                    // shorter than 1 ms.
                    let default = d.as_secs().clamp(10, 4096).min(d.as_millis() as u64).max(1);
                    let k = k.unwrap_or(default as u32);
                    (1..=4096).contains(&k) && d / k >= Duration::from_millis(1)
                }
            };
            check(ok, "sliding_window");
        }
        if let Some(n) = self.minimum_calls {
            check((1..=MAX_WINDOW).contains(&n), "minimum_calls");
        }
        if let Some(n) = self.consecutive_failures {
            check(n >= 1, "consecutive_failures");
        }
        // Checked even when a backoff replaces it.
        if let Some(d) = self.open_duration {
            check(positive(d), "open_duration");
        }
        match &self.open_backoff {
            None => {}
            Some(o) => {
                let jitter = o.jitter.unwrap_or(0.0);
                check(
                    positive(o.initial)
                        && o.multiplier.is_finite()
                        && o.multiplier >= 1.0
                        && o.max >= o.initial
                        && (0.0..=1.0).contains(&jitter),
                    "open_backoff",
                );
            }
        }
        let calls = self.half_open_calls.unwrap_or(1);
        if self.half_open_calls.is_some() {
            check((1..=MAX_PROBES).contains(&calls), "half_open_calls");
        }
        if let Some(s) = self.half_open_successes {
            check(s >= 1 && s <= calls, "half_open_successes");
        }
        if let Some(d) = self.half_open_max_wait {
            check(positive(d), "half_open_max_wait");
        }
        if let Some(d) = self.call_timeout {
            check(positive(d), "call_timeout");
        }
        bad
    }
}

// ===== strategies =====

fn f64_in() -> impl Strategy<Value = f64> {
    prop_oneof![
        prop::sample::select(vec![
            0.0,
            -0.0,
            1.0,
            0.5,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
            f64::MIN_POSITIVE / 2.0, // subnormal
            5e-324,                  // the smallest subnormal
            1.0 + f64::EPSILON,
            1.0 - f64::EPSILON / 2.0,
            f64::MAX,
            f64::MIN,
            1e308,
        ]),
        any::<f64>(),
        0.0..=1.0,
    ]
}

fn multiplier_in() -> impl Strategy<Value = f64> {
    prop_oneof![f64_in(), Just(1.0), Just(2.0), Just(1e300), 1.0..1e6f64]
}

fn duration_in() -> impl Strategy<Value = Duration> {
    prop_oneof![
        prop::sample::select(vec![
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_nanos(999_999),
            Duration::from_millis(1),
            Duration::from_secs(1),
            Duration::from_secs(u64::from(u32::MAX)),
            Duration::from_secs(u64::MAX / 2),
            Duration::MAX,
        ]),
        (0u64..=u64::MAX, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (0u64..10_000_000_000).prop_map(Duration::from_nanos),
    ]
}

fn u32_in() -> impl Strategy<Value = u32> {
    prop_oneof![
        prop::sample::select(vec![
            0,
            1,
            2,
            3,
            100,
            4095,
            4096,
            4097,
            MAX_WINDOW,
            MAX_WINDOW + 1,
            u32::MAX - 1,
            u32::MAX,
        ]),
        any::<u32>(),
        0u32..10,
    ]
}

fn window_in() -> impl Strategy<Value = WindowIn> {
    prop_oneof![
        u32_in().prop_map(WindowIn::Count),
        (duration_in(), prop::option::of(u32_in())).prop_map(|(d, k)| WindowIn::Time(d, k)),
    ]
}

fn backoff_in() -> impl Strategy<Value = BackoffIn> {
    (
        duration_in(),
        multiplier_in(),
        duration_in(),
        prop::option::of(f64_in()),
    )
        .prop_map(|(initial, multiplier, max, jitter)| BackoffIn {
            initial,
            multiplier,
            max,
            jitter,
        })
}

fn input() -> impl Strategy<Value = Input> {
    use prop::option::weighted as maybe;
    (
        (
            maybe(
                0.2,
                prop::sample::select(vec!["", "payments", "ünïcødé ✓", "a\0b"]),
            ),
            maybe(0.5, f64_in()),
            maybe(0.3, f64_in()),
            maybe(0.3, duration_in()),
            maybe(0.5, window_in()),
            maybe(0.5, u32_in()),
            maybe(0.4, u32_in()),
        ),
        (
            maybe(0.4, duration_in()),
            maybe(0.4, backoff_in()),
            maybe(0.4, u32_in()),
            maybe(0.3, u32_in()),
            maybe(0.3, duration_in()),
            maybe(0.3, duration_in()),
        ),
    )
        .prop_map(|(a, b)| Input {
            name: a.0.map(str::to_owned),
            failure_rate_threshold: a.1,
            slow_call_rate_threshold: a.2,
            slow_call_duration: a.3,
            sliding_window: a.4,
            minimum_calls: a.5,
            consecutive_failures: a.6,
            open_duration: b.0,
            open_backoff: b.1,
            half_open_calls: b.2,
            half_open_successes: b.3,
            half_open_max_wait: b.4,
            call_timeout: b.5,
        })
}

/// Only values inside the documented ranges, biased to their ends.
fn valid_input() -> impl Strategy<Value = Input> {
    use prop::option::weighted as maybe;
    let rate = prop::sample::select(vec![5e-324, f64::MIN_POSITIVE, 1e-9, 0.5, 1.0 - 1e-16, 1.0]);
    let duration = prop::sample::select(vec![
        Duration::from_nanos(1),
        Duration::from_micros(999),
        Duration::from_millis(1),
        Duration::from_secs(1),
        Duration::from_secs(u64::from(u32::MAX)),
        Duration::MAX,
    ]);
    let count = prop::sample::select(vec![1u32, 2, 7, 4096, MAX_WINDOW]);
    let window = prop_oneof![
        count.clone().prop_map(WindowIn::Count),
        prop::sample::select(vec![
            WindowIn::Time(Duration::from_millis(1), Some(1)),
            WindowIn::Time(Duration::from_millis(4096), Some(4096)),
            WindowIn::Time(Duration::from_millis(999), None),
            WindowIn::Time(Duration::MAX, None),
            WindowIn::Time(Duration::MAX, Some(1)),
            WindowIn::Time(Duration::MAX, Some(4096)),
            WindowIn::Time(Duration::from_secs(u64::from(u32::MAX)), Some(3)),
        ]),
    ];
    let backoff = (
        duration.clone(),
        prop::sample::select(vec![1.0, 1.0 + f64::EPSILON, 2.0, 1e300, f64::MAX]),
        prop::sample::select(vec![1u32, 2, u32::MAX]),
        maybe(0.5, prop::sample::select(vec![0.0, 5e-324, 0.5, 1.0])),
    )
        .prop_map(|(initial, multiplier, factor, jitter)| BackoffIn {
            initial,
            multiplier,
            max: initial.checked_mul(factor).unwrap_or(Duration::MAX),
            jitter,
        });
    let probes = prop::sample::select(vec![1u32, 2, 3, MAX_PROBES]).prop_flat_map(|n| {
        (
            Just(n),
            maybe(0.5, prop::sample::select(vec![1u32, n.div_ceil(2), n])),
        )
    });
    (
        (
            maybe(0.5, rate.clone()),
            maybe(0.4, rate),
            maybe(0.4, duration.clone()),
            maybe(0.7, window),
            maybe(0.5, count.clone()),
            maybe(0.5, count),
        ),
        (
            maybe(0.5, duration.clone()),
            maybe(0.5, backoff),
            maybe(0.6, probes),
            maybe(0.4, duration.clone()),
            maybe(0.3, duration),
        ),
    )
        .prop_map(|(a, b)| Input {
            name: Some("extreme".to_owned()),
            failure_rate_threshold: a.0,
            slow_call_rate_threshold: a.1,
            slow_call_duration: a.2,
            sliding_window: a.3,
            minimum_calls: a.4,
            consecutive_failures: a.5,
            open_duration: b.0,
            open_backoff: b.1,
            half_open_calls: b.2.map(|p| p.0),
            half_open_successes: b.2.and_then(|p| p.1),
            half_open_max_wait: b.3,
            call_timeout: b.4,
        })
}

#[derive(Clone, Debug)]
enum Action {
    /// A call that takes `delay` and succeeds or fails.
    Call {
        fail: bool,
        delay: Duration,
    },
    Advance(Duration),
    ForceOpen,
    Disable,
    MetricsOnly,
    Reset,
    Subscribe,
}

fn action() -> impl Strategy<Value = Action> {
    let delay = prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_nanos(1)),
        (0u64..5_000).prop_map(Duration::from_millis),
        Just(Duration::from_secs(3600)),
    ];
    let advance = prop_oneof![
        (0u64..100_000_000_000).prop_map(Duration::from_nanos),
        Just(Duration::from_secs(86_400 * 365)),
    ];
    prop_oneof![
        8 => (any::<bool>(), delay).prop_map(|(fail, delay)| Action::Call { fail, delay }),
        3 => advance.prop_map(Action::Advance),
        1 => Just(Action::ForceOpen),
        1 => Just(Action::Disable),
        1 => Just(Action::MetricsOnly),
        1 => Just(Action::Reset),
        1 => Just(Action::Subscribe),
    ]
}

/// A call's answer is one the call can have: `Ok` only if it did not fail, the inner error only
/// if it failed, a timeout only if it took time, and a rejection only from a rejecting state.
#[track_caller]
fn assert_answer_fits_the_call(answer: &Result<(), BoxError>, fail: bool, delay: Duration) {
    match answer {
        Ok(()) => assert!(!fail, "a failing call answered Ok"),
        Err(err) => {
            if let Some(rejected) = err.downcast_ref::<Rejected>() {
                assert!(
                    matches!(
                        rejected.state(),
                        State::Open | State::HalfOpen | State::ForcedOpen
                    ),
                    "rejected in {:?}",
                    rejected.state()
                );
            } else if err.is::<Elapsed>() {
                assert!(delay > Duration::ZERO, "a call without delay timed out");
            } else {
                assert!(fail, "a succeeding call answered {err}");
                assert_eq!(err.to_string(), "failure");
            }
        }
    }
}

/// Formatting a handle and its metrics must not panic, in any state the actions reach. Only a
/// "does not panic" property: what the text says is not this test's business (`Debug` has tests
/// of its own), so the check is that the text was made.
#[track_caller]
fn assert_formats_without_panicking(handle: &Handle, metrics: &Metrics) {
    let shown = format!("{handle:?} {metrics:?}");
    assert!(!shown.is_empty());
}

/// Drives a built layer through `actions` on a paused clock; panics are the failure.
fn exercise(layer: CircuitBreakerLayer, actions: &[Action]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let handle = layer.handle();
        let mut svc = layer.layer(service_fn(|(fail, delay): (bool, Duration)| async move {
            tokio::time::sleep(delay).await;
            if fail { Err("failure") } else { Ok(()) }
        }));
        let mut streams = Vec::new();
        for action in actions {
            match action {
                Action::Call { fail, delay } => {
                    let ready = svc.ready().await.expect("never an error from poll_ready");
                    let answer = ready.call((*fail, *delay)).await;
                    assert_answer_fits_the_call(&answer, *fail, *delay);
                }
                Action::Advance(d) => tokio::time::advance(*d).await,
                Action::ForceOpen => handle.force_open(),
                Action::Disable => handle.disable(),
                Action::MetricsOnly => handle.metrics_only(),
                Action::Reset => handle.reset(),
                Action::Subscribe => streams.push(handle.subscribe()),
            }
            let m = handle.metrics();
            assert!(m.failed() <= m.calls() && m.slow() <= m.calls());
            assert_eq!(m.successful(), m.calls() - m.failed());
            if let Some(rate) = m.failure_rate() {
                assert!((0.0..=1.0).contains(&rate));
            }
            assert_eq!(
                handle.state(),
                m.state(),
                "a state read agrees with the metrics read at the same instant"
            );
            assert_formats_without_panicking(&handle, &m);
        }
        // A reset always brings the breaker back to a working Closed state.
        handle.reset();
        assert_eq!(handle.state(), State::Closed);
        let answer = svc
            .ready()
            .await
            .expect("ready")
            .call((false, Duration::ZERO))
            .await;
        // Admitted and answered (its outcome may still trip: a zero-delay call can be a slow one
        // on the paused clock, whose timer has a resolution of a millisecond).
        assert!(
            answer.is_ok(),
            "a call after a reset is admitted: {answer:?}"
        );
    });
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_builder_input_panics(input in input(), actions in prop::collection::vec(action(), 0..24)) {
        let offending = input.offending();
        match input.build() {
            Ok(layer) => {
                prop_assert!(offending.is_empty(), "built despite {:?}", offending);
                exercise(layer, &actions);
            }
            Err(err) => {
                prop_assert!(
                    offending.contains(&err.field()),
                    "error names `{}`, but the offending setters are {:?} ({})",
                    err.field(),
                    offending,
                    err
                );
                prop_assert!(!err.to_string().is_empty() && !err.allowed().is_empty());
                prop_assert!(
                    err.to_string().contains(err.value()),
                    "the message shows the value {:?}: {}",
                    err.value(),
                    err
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn valid_extremes_build_and_survive(
        input in valid_input(),
        actions in prop::collection::vec(action(), 0..24),
    ) {
        prop_assert_eq!(input.offending(), Vec::<&str>::new());
        let layer = input.build();
        prop_assert!(layer.is_ok(), "{:?}", layer.err());
        exercise(layer.expect("checked"), &actions);
    }
}

/// Every extreme at once where it is allowed: the largest windows, the longest durations, the
/// most probes, a huge multiplier, full jitter.
#[test]
fn the_largest_valid_values_build_and_run() {
    let layer = CircuitBreakerLayer::builder()
        .failure_rate_threshold(f64::MIN_POSITIVE / 2.0)
        .slow_call_rate_threshold(1.0)
        .slow_call_duration(Duration::MAX)
        .sliding_window(Window::count(MAX_WINDOW))
        .minimum_calls(MAX_WINDOW)
        .consecutive_failures(u32::MAX)
        .open_backoff(
            Backoff::exponential(Duration::from_nanos(1), f64::MAX, Duration::MAX).jitter(1.0),
        )
        .half_open_calls(MAX_PROBES)
        .half_open_successes(MAX_PROBES)
        .half_open_max_wait(Duration::MAX)
        .call_timeout(Duration::MAX)
        .build()
        .expect("valid");
    let actions: Vec<Action> = (0..6)
        .map(|i| Action::Call {
            fail: i % 2 == 0,
            delay: Duration::from_millis(1),
        })
        .chain([Action::Advance(Duration::from_secs(86_400 * 365))])
        .collect();
    exercise(layer, &actions);

    let layer = CircuitBreakerLayer::builder()
        .sliding_window(Window::time(Duration::MAX).buckets(4096))
        .open_duration(Duration::MAX)
        .consecutive_failures(1)
        .build()
        .expect("valid");
    exercise(
        layer,
        &[
            Action::Call {
                fail: true,
                delay: Duration::ZERO,
            },
            Action::Advance(Duration::from_secs(86_400 * 365)),
            Action::Call {
                fail: false,
                delay: Duration::ZERO,
            },
        ],
    );
}
