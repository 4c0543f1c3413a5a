//! Model-based property test: random sequences of operations are applied both to the real breaker
//! (driven through its Tower service on a current-thread runtime with a paused clock) and to a
//! plain reference model of DESIGN §3, written here from the contract and sharing no code with the
//! crate. The state, the metrics, the events and every admission decision (admitted or rejected,
//! with the rejection's state and retry-after) must agree. Each case either looks at the breaker
//! (state, metrics, events) after every step, after some steps, or only at its end: a deadline may
//! pass with nobody looking, and what calls see must not depend on who looked.
//!
//! Readings the model takes where the contract leaves room (each one a reviewer of Resilience4j or
//! tower would accept):
//! * time-driven transitions happen at their deadline instant, whoever looks and whenever: Open ->
//!   HalfOpen at `opened_at + interval`; a half-open episode's `half_open_max_wait` counts from the
//!   first probe permit taken in the episode (a permit given back later, even one taken by a
//!   `poll_ready` whose inner service was not ready, still started the clock); an episode in which
//!   no permit was taken never expires and is no failed attempt; an expired episode reopens with
//!   `opened_at` = its expiry instant (first probe + max wait), as the next attempt of the backoff;
//! * a probe result that arrives at or after the episode's expiry finds it already over (back to
//!   Open), so it is stale and decides nothing;
//! * `reset()` while Closed starts a new generation (calls admitted before it are stale) and emits
//!   a Closed -> Closed event;
//! * operator transitions do not clear the window, except to Closed (`reset`) and MetricsOnly;
//! * from a trip until the window is next cleared, a time window reads as it was at the trip (it
//!   does not drain while open, half-open, or in an operator state entered from there);
//! * a rejection's retry-after is the time left, when asked, until the instant decided in
//!   `poll_ready`.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use futures::channel::oneshot;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tower::timeout::error::Elapsed;
use tower::{Layer, Service};
use tower_circuit_breaker::error::Rejected;
use tower_circuit_breaker::{
    Backoff, CircuitBreaker, CircuitBreakerLayer, Event, EventStream, Outcome, State, Window,
};

const MS: u64 = 1_000_000;
const SLOTS: usize = 3;

// ===== configuration =====

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WindowCfg {
    Count(u32),
    /// `buckets: None` is the default (see [`Model::default_buckets`]).
    Time {
        millis: u64,
        buckets: Option<u32>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpenCfg {
    Fixed {
        millis: u64,
    },
    /// `multiplier` is `num / den`; `max` is `initial * max_factor`.
    Backoff {
        initial_ms: u64,
        multiplier: (u64, u64),
        max_factor: u64,
    },
}

#[derive(Clone, Copy, Debug)]
struct Cfg {
    window: WindowCfg,
    /// `num / den`.
    failure_rate: (u64, u64),
    slow_rate: Option<(u64, u64)>,
    slow_ms: Option<u64>,
    minimum_calls: u32,
    consecutive: Option<u32>,
    open: OpenCfg,
    half_open_calls: u32,
    half_open_successes: Option<u32>,
    half_open_max_wait_ms: Option<u64>,
    call_timeout_ms: Option<u64>,
}

fn ratio((num, den): (u64, u64)) -> f64 {
    num as f64 / den as f64
}

impl Cfg {
    fn layer(&self) -> CircuitBreakerLayer<Classifier> {
        let mut b = CircuitBreakerLayer::builder()
            .name("model")
            .failure_rate_threshold(ratio(self.failure_rate))
            .minimum_calls(self.minimum_calls)
            .half_open_calls(self.half_open_calls);
        b = b.sliding_window(match self.window {
            WindowCfg::Count(n) => Window::count(n),
            WindowCfg::Time { millis, buckets } => {
                let w = Window::time(Duration::from_millis(millis));
                match buckets {
                    Some(k) => w.buckets(k),
                    None => w,
                }
            }
        });
        if let Some(r) = self.slow_rate {
            b = b.slow_call_rate_threshold(ratio(r));
        }
        if let Some(ms) = self.slow_ms {
            b = b.slow_call_duration(Duration::from_millis(ms));
        }
        if let Some(k) = self.consecutive {
            b = b.consecutive_failures(k);
        }
        b = match self.open {
            OpenCfg::Fixed { millis } => b.open_duration(Duration::from_millis(millis)),
            OpenCfg::Backoff {
                initial_ms,
                multiplier,
                max_factor,
            } => b.open_backoff(Backoff::exponential(
                Duration::from_millis(initial_ms),
                ratio(multiplier),
                Duration::from_millis(initial_ms * max_factor),
            )),
        };
        if let Some(s) = self.half_open_successes {
            b = b.half_open_successes(s);
        }
        if let Some(ms) = self.half_open_max_wait_ms {
            b = b.half_open_max_wait(Duration::from_millis(ms));
        }
        if let Some(ms) = self.call_timeout_ms {
            b = b.call_timeout(Duration::from_millis(ms));
        }
        b.classify(classify as Classifier)
            .build()
            .expect("the generated configuration is valid")
    }
}

// ===== the inner service =====

/// The inner service's answer: `Ok(0)` a success, `Ok(1)` ignored, `Err` a failure.
type Answer = Result<u8, &'static str>;
type Classifier = fn(Result<&u8, &&'static str>) -> Outcome;

fn classify(result: Result<&u8, &&'static str>) -> Outcome {
    match result {
        Ok(0) => Outcome::Success,
        Ok(_) => Outcome::Ignored,
        Err(_) => Outcome::Failure,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Res {
    Success,
    Failure,
    Ignored,
}

impl Res {
    fn answer(self) -> Answer {
        match self {
            Res::Success => Ok(0),
            Res::Ignored => Ok(1),
            Res::Failure => Err("failure"),
        }
    }
}

#[derive(Default)]
struct Shared {
    next_id: u64,
    pending: HashMap<u64, oneshot::Sender<Answer>>,
    ready_polls: u64,
    calls: u64,
    not_ready_once: bool,
}

/// Answers each call when the test says so, through a oneshot channel.
#[derive(Clone, Default)]
struct Inner(Rc<RefCell<Shared>>);

impl Service<()> for Inner {
    type Response = u8;
    type Error = &'static str;
    type Future = InnerFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let mut s = self.0.borrow_mut();
        s.ready_polls += 1;
        if std::mem::take(&mut s.not_ready_once) {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, _: ()) -> InnerFuture {
        let (tx, rx) = oneshot::channel();
        let mut s = self.0.borrow_mut();
        let id = s.next_id;
        s.next_id += 1;
        s.calls += 1;
        s.pending.insert(id, tx);
        InnerFuture(rx)
    }
}

struct InnerFuture(oneshot::Receiver<Answer>);

impl Future for InnerFuture {
    type Output = Answer;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err("sender dropped")))
    }
}

type Svc = CircuitBreaker<Inner, Classifier>;
type Fut = <Svc as Service<()>>::Future;

// ===== the reference model =====

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Recorded,
    Probe,
    Unrecorded,
}

#[derive(Clone, Copy, Debug)]
struct Ticket {
    generation: u64,
    kind: Kind,
    /// When `call` dispatched it (ns on the model's clock).
    start: u64,
}

#[derive(Clone, Copy, Debug)]
enum Admission {
    Admit(Ticket),
    /// The state, and the instant (ns) at which a probe will be admitted, if anyone knows.
    Reject(State, Option<u64>),
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    at: u64,
    failed: bool,
    slow: bool,
}

/// DESIGN §3, written as plainly as possible.
struct Model {
    cfg: Cfg,
    now: u64,
    state: State,
    generation: u64,
    /// Every recorded outcome since the window was last cleared (trimmed to `n` for a count
    /// window; a time window filters by age when read).
    samples: VecDeque<Sample>,
    /// The instant of the trip while a time window reads as it was then (from a trip until the
    /// window is cleared).
    frozen_at: Option<u64>,
    consecutive: u32,
    not_permitted: u64,
    attempt: u32,
    /// `opened_at + interval`: the instant the breaker becomes HalfOpen.
    open_until: u64,
    /// First probe admitted + `half_open_max_wait`: the instant the episode expires; `None`
    /// until a probe is admitted (such an episode never expires).
    half_open_until: Option<u64>,
    taken: u32,
    succeeded: u32,
    failed: u32,
    events: Vec<(State, State)>,
}

impl Model {
    fn new(cfg: Cfg) -> Self {
        Model {
            cfg,
            now: 0,
            state: State::Closed,
            generation: 0,
            samples: VecDeque::new(),
            frozen_at: None,
            consecutive: 0,
            not_permitted: 0,
            attempt: 0,
            open_until: 0,
            half_open_until: None,
            taken: 0,
            succeeded: 0,
            failed: 0,
            events: Vec::new(),
        }
    }

    fn half_open_successes(&self) -> u32 {
        self.cfg
            .half_open_successes
            .unwrap_or(self.cfg.half_open_calls)
    }

    fn slow_limit(&self) -> Option<u64> {
        match (self.cfg.slow_ms, self.cfg.slow_rate) {
            (Some(ms), _) => Some(ms * MS),
            (None, Some(_)) => Some(60_000 * MS),
            (None, None) => None,
        }
    }

    fn minimum_calls(&self) -> u64 {
        match self.cfg.window {
            WindowCfg::Count(n) => u64::from(self.cfg.minimum_calls.min(n)),
            WindowCfg::Time { .. } => u64::from(self.cfg.minimum_calls),
        }
    }

    /// `min(max, initial * multiplier^(attempt - 1))`, exactly.
    fn open_interval(&self, attempt: u32) -> u64 {
        match self.cfg.open {
            OpenCfg::Fixed { millis } => millis * MS,
            OpenCfg::Backoff {
                initial_ms,
                multiplier: (num, den),
                max_factor,
            } => {
                let max = u128::from(initial_ms * max_factor * MS);
                let mut value = u128::from(initial_ms * MS);
                let mut den_power = 1u128;
                for _ in 1..attempt {
                    value *= u128::from(num);
                    den_power *= u128::from(den);
                    if value / den_power >= max {
                        return max as u64;
                    }
                }
                assert_eq!(value % den_power, 0, "choose exact backoff parameters");
                (value / den_power).min(max) as u64
            }
        }
    }

    /// The default number of buckets of a time window of `millis`: one per whole second, at
    /// least 10 and at most 4096, lowered so that each bucket is at least 1 ms.
    fn default_buckets(millis: u64) -> u64 {
        (millis / 1000).clamp(10, 4096).min(millis)
    }

    /// (calls, failed, slow) in the window now (as it was when recording stopped, while frozen).
    fn totals(&self) -> (u64, u64, u64) {
        let now = self.frozen_at.unwrap_or(self.now);
        let counted = |s: &&Sample| match self.cfg.window {
            WindowCfg::Count(_) => true,
            WindowCfg::Time { millis, buckets } => {
                let k = buckets.map_or_else(|| Self::default_buckets(millis), u64::from);
                let bucket = millis * MS / k;
                now / bucket - s.at / bucket < k
            }
        };
        let mut totals = (0, 0, 0);
        for s in self.samples.iter().filter(counted) {
            totals.0 += 1;
            totals.1 += u64::from(s.failed);
            totals.2 += u64::from(s.slow);
        }
        totals
    }

    fn rate(&self, count: u64, calls: u64) -> Option<f64> {
        (calls > 0 && calls >= self.minimum_calls()).then(|| count as f64 / calls as f64)
    }

    /// A transition now.
    fn transition(&mut self, to: State) {
        self.transition_at(to, self.now);
    }

    /// A transition that happens at instant `at` (a deadline, or now).
    fn transition_at(&mut self, to: State, at: u64) {
        let from = self.state;
        let records = |s: State| matches!(s, State::Closed | State::MetricsOnly);
        if records(from) && !records(to) {
            // Recording stops: the window reads as it is now until it records again.
            self.frozen_at = Some(at);
        }
        match to {
            State::Open => {
                self.attempt = if from == State::HalfOpen {
                    self.attempt + 1
                } else {
                    1
                };
                self.open_until = at + self.open_interval(self.attempt);
            }
            State::HalfOpen => self.half_open_until = None,
            State::Closed => {
                self.samples.clear();
                self.frozen_at = None;
                self.consecutive = 0;
                self.not_permitted = 0;
                self.attempt = 0;
            }
            State::MetricsOnly => {
                self.samples.clear();
                self.frozen_at = None;
                self.consecutive = 0;
            }
            State::ForcedOpen | State::Disabled => {}
        }
        self.generation += 1;
        self.state = to;
        self.taken = 0;
        self.succeeded = 0;
        self.failed = 0;
        // Every transition is announced, `reset()` of a Closed breaker included.
        self.events.push((from, to));
    }

    /// Applies the transitions that are due by time, each at its deadline (both inclusive):
    /// Open -> HalfOpen at `open_until`, an expired episode back to Open at `half_open_until`.
    fn observe(&mut self) {
        loop {
            match (self.state, self.half_open_until) {
                (State::Open, _) if self.now >= self.open_until => {
                    self.transition_at(State::HalfOpen, self.open_until);
                }
                (State::HalfOpen, Some(until)) if self.now >= until => {
                    self.transition_at(State::Open, until);
                }
                _ => return,
            }
        }
    }

    fn admit(&mut self) -> Admission {
        self.observe();
        let admit = |kind| {
            Admission::Admit(Ticket {
                generation: self.generation,
                kind,
                start: 0,
            })
        };
        match self.state {
            State::Closed | State::MetricsOnly => admit(Kind::Recorded),
            State::Disabled => admit(Kind::Unrecorded),
            State::ForcedOpen => Admission::Reject(State::ForcedOpen, None),
            State::Open => Admission::Reject(State::Open, Some(self.open_until)),
            State::HalfOpen if self.taken < self.cfg.half_open_calls => {
                if self.half_open_until.is_none() {
                    // The first probe of the episode starts `half_open_max_wait`.
                    let wait = self.cfg.half_open_max_wait_ms.unwrap_or(60_000);
                    self.half_open_until = Some(self.now + wait * MS);
                }
                self.taken += 1;
                admit(Kind::Probe)
            }
            State::HalfOpen => Admission::Reject(State::HalfOpen, None),
        }
    }

    /// A permit that will never complete (dropped future, dropped service, inner not ready).
    fn release(&mut self, ticket: Ticket) {
        if ticket.kind == Kind::Probe && ticket.generation == self.generation {
            self.taken -= 1;
        }
    }

    fn should_trip(&self) -> bool {
        if self.cfg.consecutive.is_some_and(|k| self.consecutive >= k) {
            return true;
        }
        let (calls, failed, slow) = self.totals();
        if calls == 0 || calls < self.minimum_calls() {
            return false;
        }
        let (num, den) = self.cfg.failure_rate;
        failed * den >= num * calls
            || self
                .cfg
                .slow_rate
                .is_some_and(|(num, den)| slow * den >= num * calls)
    }

    fn complete(&mut self, ticket: Ticket, res: Res) {
        let slow = self
            .slow_limit()
            .is_some_and(|limit| self.now - ticket.start > limit);
        match ticket.kind {
            Kind::Unrecorded => {}
            Kind::Recorded => {
                if ticket.generation != self.generation {
                    return;
                }
                let failed = match res {
                    Res::Ignored => return,
                    Res::Success => false,
                    Res::Failure => true,
                };
                self.consecutive = if failed {
                    self.consecutive.saturating_add(1)
                } else {
                    0
                };
                self.samples.push_back(Sample {
                    at: self.now,
                    failed,
                    slow,
                });
                if let WindowCfg::Count(n) = self.cfg.window {
                    while self.samples.len() > n as usize {
                        self.samples.pop_front();
                    }
                }
                if self.state == State::Closed && self.should_trip() {
                    self.transition(State::Open);
                }
            }
            Kind::Probe => {
                self.observe();
                if ticket.generation != self.generation {
                    return;
                }
                let calls = self.cfg.half_open_calls;
                let needed = self.half_open_successes();
                match (res, slow) {
                    (Res::Ignored, _) => self.taken -= 1,
                    (Res::Success, false) => {
                        self.succeeded += 1;
                        if self.succeeded >= needed {
                            self.transition(State::Closed);
                        }
                    }
                    (Res::Success, true) | (Res::Failure, _) => {
                        self.failed += 1;
                        if self.failed > calls - needed {
                            self.transition(State::Open);
                        }
                    }
                }
            }
        }
    }

    fn force(&mut self, to: State) {
        // What was due by time happened at its deadline, whether anybody looked or not.
        self.observe();
        if self.state == to && to != State::Closed {
            return;
        }
        self.transition(to);
    }
}

// ===== operations =====

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Manual {
    ForceOpen,
    Disable,
    MetricsOnly,
    Reset,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    /// `poll_ready` (unless the slot already holds readiness), then `call`.
    Call(usize),
    /// `poll_ready` only: the decision (and any probe permit) waits in the service.
    Ready(usize),
    /// `poll_ready` while the inner service is not ready: an admission is given back.
    NotReady(usize),
    /// Advance the clock by `after` ns, answer in-flight call `call` (modulo) and poll it.
    Complete {
        call: usize,
        after: u64,
        res: Res,
    },
    /// Answer in-flight call `call` without polling its future.
    Respond {
        call: usize,
        res: Res,
    },
    /// Advance the clock by `after` ns, then poll in-flight call `call` (timeouts fire here).
    Poll {
        call: usize,
        after: u64,
    },
    /// Drop the future of in-flight call `call`, polled or not.
    DropCall(usize),
    /// Drop a service clone (and the readiness it holds), replacing it with a fresh clone.
    DropService(usize),
    /// `calls` times: call on slot 0, advance by `gap` ns, answer with `res` and poll (a quick
    /// way through a whole episode; the check runs after each call).
    Burst {
        calls: u8,
        gap: u64,
        res: Res,
    },
    Advance(u64),
    Force(Manual),
}

/// One operation, and whether the test looks at the breaker (state, metrics, events) after it.
#[derive(Clone, Copy, Debug)]
struct Step {
    op: Op,
    look: bool,
}

struct InFlight {
    future: Pin<Box<Fut>>,
    id: u64,
    ticket: Ticket,
    answered: Option<Res>,
}

/// Runs one case on a fresh current-thread runtime with a paused clock; returns the breaker's state
/// at the end (after the final check).
fn run_case(cfg: Cfg, steps: &[Step]) -> Result<State, TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(Harness::run(cfg, steps))
}

struct Harness {
    model: Model,
    inner: Inner,
    template: Svc,
    slots: Vec<Svc>,
    readiness: Vec<Option<Admission>>,
    in_flight: Vec<InFlight>,
    handle: tower_circuit_breaker::Handle,
    events: EventStream,
    timeout: bool,
}

fn poll_once<T>(f: impl FnOnce(&mut Context<'_>) -> T) -> impl Future<Output = T> {
    let mut f = Some(f);
    poll_fn(move |cx| Poll::Ready((f.take().expect("polled once"))(cx)))
}

impl Harness {
    async fn run(cfg: Cfg, steps: &[Step]) -> Result<State, TestCaseError> {
        // Built at time 0 of the paused clock: the breaker's epoch is the model's 0.
        let layer = cfg.layer();
        let inner = Inner::default();
        let template = layer.layer(inner.clone());
        let mut h = Harness {
            model: Model::new(cfg),
            handle: layer.handle(),
            events: layer.handle().subscribe(),
            slots: (0..SLOTS).map(|_| template.clone()).collect(),
            readiness: vec![None; SLOTS],
            in_flight: Vec::new(),
            inner,
            template,
            timeout: cfg.call_timeout_ms.is_some(),
        };
        h.check("start").await?;
        for (i, &Step { op, look }) in steps.iter().enumerate() {
            // A fresh coop budget for each step (the timeout's sleep takes from it).
            tokio::task::yield_now().await;
            h.step(op, look).await?;
            // Look also when many events are due, so that no subscriber's buffer overflows.
            if look || h.model.events.len() >= 32 {
                h.check(&format!("after step {i}: {op:?}")).await?;
            }
        }
        h.check("at the end").await?;
        Ok(h.handle.state())
    }

    async fn advance(&mut self, nanos: u64) {
        // The timer wheel has 1 ms ticks: with a call timeout keep the clock on whole ms, so that
        // the timeout fires at exactly its deadline.
        let nanos = if self.timeout {
            nanos.div_ceil(MS) * MS
        } else {
            nanos
        };
        if nanos > 0 {
            tokio::time::advance(Duration::from_nanos(nanos)).await;
            self.model.now += nanos;
        }
    }

    fn shared(&self) -> std::cell::RefMut<'_, Shared> {
        self.inner.0.borrow_mut()
    }

    /// `poll_ready` on a slot without readiness: the model decides, the service must agree.
    async fn poll_ready(&mut self, slot: usize, inner_ready: bool) -> Result<(), TestCaseError> {
        let polls = self.shared().ready_polls;
        self.shared().not_ready_once = !inner_ready;
        let svc = &mut self.slots[slot];
        let result = poll_once(|cx| svc.poll_ready(cx)).await;
        self.shared().not_ready_once = false;
        let admission = self.model.admit();
        let inner_polled = self.shared().ready_polls - polls;
        match admission {
            Admission::Admit(ticket) => {
                prop_assert_eq!(inner_polled, 1, "an admitted call polls the inner service");
                if inner_ready {
                    prop_assert!(matches!(result, Poll::Ready(Ok(()))));
                    self.readiness[slot] = Some(admission);
                } else {
                    prop_assert!(result.is_pending(), "inner not ready");
                    self.model.release(ticket);
                }
            }
            Admission::Reject(..) => {
                prop_assert_eq!(inner_polled, 0, "a rejection never polls the inner service");
                prop_assert!(matches!(result, Poll::Ready(Ok(()))));
                self.readiness[slot] = Some(admission);
            }
        }
        Ok(())
    }

    /// Polls in-flight call `index`; the model says what the outcome must be.
    async fn poll_call(&mut self, index: usize) -> Result<(), TestCaseError> {
        let call = &mut self.in_flight[index];
        let result = poll_once(|cx| call.future.as_mut().poll(cx)).await;
        let timed_out = self
            .model
            .cfg
            .call_timeout_ms
            .is_some_and(|ms| self.model.now >= call.ticket.start + ms * MS);
        let expected = match (call.answered, timed_out) {
            (Some(res), _) => Some(res),
            (None, true) => Some(Res::Failure),
            (None, false) => None,
        };
        let Some(res) = expected else {
            prop_assert!(
                result.is_pending(),
                "unanswered call completed: {:?}",
                result
            );
            return Ok(());
        };
        let Poll::Ready(output) = result else {
            return Err(TestCaseError::fail(format!(
                "call {index} should have completed with {res:?}"
            )));
        };
        match (call.answered, output) {
            (Some(_), Ok(v)) => prop_assert_eq!(Ok(v), res.answer()),
            (Some(_), Err(e)) => prop_assert_eq!(e.to_string(), "failure"),
            (None, Err(e)) => prop_assert!(e.is::<Elapsed>(), "expected a timeout: {}", e),
            (None, Ok(v)) => return Err(TestCaseError::fail(format!("unanswered call gave {v}"))),
        }
        let call = self.in_flight.remove(index);
        self.model.complete(call.ticket, res);
        Ok(())
    }

    fn answer(&mut self, index: usize, res: Res) {
        let call = &mut self.in_flight[index];
        if call.answered.is_none() {
            call.answered = Some(res);
            let sender = self.inner.0.borrow_mut().pending.remove(&call.id);
            let _ = sender.expect("sender").send(res.answer());
        }
    }

    /// `poll_ready` (unless the slot holds readiness) and `call` on a slot.
    async fn call(&mut self, slot: usize) -> Result<(), TestCaseError> {
        if self.readiness[slot].is_none() {
            self.poll_ready(slot, true).await?;
        }
        let admission = self.readiness[slot].take().expect("ready");
        let calls = self.shared().calls;
        let mut future = Box::pin(self.slots[slot].call(()));
        let dispatched = self.shared().calls - calls;
        match admission {
            Admission::Admit(mut ticket) => {
                prop_assert_eq!(dispatched, 1, "an admitted call reaches the inner");
                ticket.start = self.model.now;
                let id = self.shared().next_id - 1;
                self.in_flight.push(InFlight {
                    future,
                    id,
                    ticket,
                    answered: None,
                });
            }
            Admission::Reject(state, retry_at) => {
                self.model.not_permitted += 1;
                prop_assert_eq!(dispatched, 0, "a rejected call never reaches the inner");
                let result = poll_once(|cx| future.as_mut().poll(cx)).await;
                let Poll::Ready(Err(err)) = result else {
                    return Err(TestCaseError::fail("a rejection completes at once"));
                };
                let rejected = err.downcast_ref::<Rejected>();
                prop_assert!(rejected.is_some(), "not a Rejected: {}", err);
                let rejected = rejected.expect("checked");
                prop_assert_eq!(rejected.state(), state);
                match retry_at {
                    // Computed when asked: the time left now until the instant `poll_ready` saw.
                    Some(at) if at > self.model.now => prop_assert_eq!(
                        rejected.retry_after(),
                        Some(Duration::from_nanos(at - self.model.now))
                    ),
                    // The instant has passed while the decision waited in the service.
                    Some(_) => prop_assert!(
                        rejected.retry_after().is_none_or(|d| d.is_zero()),
                        "retry-after of a passed instant: {:?}",
                        rejected.retry_after()
                    ),
                    None => prop_assert_eq!(rejected.retry_after(), None),
                }
                prop_assert_eq!(rejected.name(), Some("model"));
            }
        }
        Ok(())
    }

    /// Applies `op`; `look` says whether a burst looks at the breaker between its calls.
    async fn step(&mut self, op: Op, look: bool) -> Result<(), TestCaseError> {
        let n = self.in_flight.len();
        match op {
            Op::Call(slot) => self.call(slot).await?,
            Op::Burst { calls, gap, res } => {
                for k in 0..calls {
                    let before = self.in_flight.len();
                    self.call(0).await?;
                    if self.in_flight.len() > before {
                        self.advance(gap).await;
                        self.answer(before, res);
                        self.poll_call(before).await?;
                    }
                    if look && k + 1 < calls {
                        self.check(&format!("in {op:?}, call {k}")).await?;
                    }
                }
            }
            Op::Ready(slot) | Op::NotReady(slot) => {
                if self.readiness[slot].is_some() {
                    // Readiness is stable until `call`: the inner service is not asked again.
                    let polls = self.shared().ready_polls;
                    let svc = &mut self.slots[slot];
                    let result = poll_once(|cx| svc.poll_ready(cx)).await;
                    prop_assert!(matches!(result, Poll::Ready(Ok(()))));
                    prop_assert_eq!(self.shared().ready_polls, polls);
                } else {
                    self.poll_ready(slot, matches!(op, Op::Ready(_))).await?;
                }
            }
            Op::Complete { call, after, res } => {
                self.advance(after).await;
                if n > 0 {
                    self.answer(call % n, res);
                    self.poll_call(call % n).await?;
                }
            }
            Op::Respond { call, res } => {
                if n > 0 {
                    self.answer(call % n, res);
                }
            }
            Op::Poll { call, after } => {
                self.advance(after).await;
                if n > 0 {
                    self.poll_call(call % n).await?;
                }
            }
            Op::DropCall(call) => {
                if n > 0 {
                    let call = self.in_flight.remove(call % n);
                    drop(call.future);
                    self.shared().pending.remove(&call.id);
                    self.model.release(call.ticket);
                }
            }
            Op::DropService(slot) => {
                self.slots[slot] = self.template.clone();
                if let Some(Admission::Admit(ticket)) = self.readiness[slot].take() {
                    self.model.release(ticket);
                }
            }
            Op::Advance(nanos) => self.advance(nanos).await,
            Op::Force(manual) => match manual {
                Manual::ForceOpen => {
                    self.handle.force_open();
                    self.model.force(State::ForcedOpen);
                }
                Manual::Disable => {
                    self.handle.disable();
                    self.model.force(State::Disabled);
                }
                Manual::MetricsOnly => {
                    self.handle.metrics_only();
                    self.model.force(State::MetricsOnly);
                }
                Manual::Reset => {
                    self.handle.reset();
                    self.model.force(State::Closed);
                }
            },
        }
        Ok(())
    }

    async fn check(&mut self, when: &str) -> Result<(), TestCaseError> {
        let state = self.handle.state();
        self.model.observe();
        prop_assert_eq!(state, self.model.state, "state {}", when);

        let m = self.handle.metrics();
        let (calls, failed, slow) = self.model.totals();
        prop_assert_eq!(m.state(), self.model.state, "metrics state {}", when);
        prop_assert_eq!(
            (m.calls(), m.failed(), m.successful(), m.slow()),
            (calls, failed, calls - failed, slow),
            "calls, failed, successful, slow {}",
            when
        );
        prop_assert_eq!(
            m.not_permitted(),
            self.model.not_permitted,
            "not_permitted {}",
            when
        );
        prop_assert_eq!(
            m.consecutive_failures(),
            self.model.consecutive,
            "consecutive {}",
            when
        );
        prop_assert_eq!(
            m.failure_rate(),
            self.model.rate(failed, calls),
            "rate {}",
            when
        );
        prop_assert_eq!(
            m.slow_call_rate(),
            self.model.rate(slow, calls),
            "slow rate {}",
            when
        );

        let mut seen = Vec::new();
        let events = &mut self.events;
        while let Poll::Ready(Some(event)) = poll_once(|cx| events.poll_next_unpin(cx)).await {
            match event {
                Event::StateTransition { from, to, .. } => seen.push((from, to)),
                // The model predicts transitions; rate events are tests/observability.rs's.
                Event::FailureRateExceeded { .. } | Event::SlowCallRateExceeded { .. } => {}
                other => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
            }
        }
        let expected = std::mem::take(&mut self.model.events);
        prop_assert_eq!(seen, expected, "events {}", when);
        Ok(())
    }
}

// ===== strategies =====

fn cfg_strategy() -> impl Strategy<Value = Cfg> {
    let window = prop_oneof![
        3 => (1u32..=6).prop_map(WindowCfg::Count),
        2 => (1u32..=4, prop::sample::select(vec![1u64, 10, 250, 1000])).prop_map(|(k, b)| {
            WindowCfg::Time {
                millis: u64::from(k) * b,
                buckets: Some(k),
            }
        }),
        // The default buckets: 10 (5 of 1 ms for the 5 ms window).
        1 => prop::sample::select(vec![5u64, 1000, 1500, 2000, 3000]).prop_map(|millis| {
            WindowCfg::Time {
                millis,
                buckets: None,
            }
        }),
        1 => Just(WindowCfg::Time {
            millis: 1000,
            buckets: Some(3),
        }),
    ];
    let rate = prop::sample::select(vec![(1u64, 4u64), (1, 2), (3, 5), (2, 3), (1, 1)]);
    let slow = (
        prop::option::weighted(0.3, rate.clone()),
        prop::option::weighted(0.3, prop::sample::select(vec![1u64, 50, 100, 1000])),
    );
    let open = prop_oneof![
        (prop::sample::select(vec![1u64, 100, 1000, 5000]))
            .prop_map(|millis| OpenCfg::Fixed { millis }),
        (
            prop::sample::select(vec![1u64, 100, 333, 1000]),
            prop::sample::select(vec![(1u64, 1u64), (3, 2), (2, 1), (3, 1)]),
            1u64..=10,
        )
            .prop_map(|(initial_ms, multiplier, max_factor)| OpenCfg::Backoff {
                initial_ms,
                multiplier,
                max_factor,
            }),
    ];
    let half_open = (1u32..=4).prop_flat_map(|n| {
        (
            Just(n),
            prop::option::weighted(0.5, 1u32..=n),
            prop::option::weighted(0.6, prop::sample::select(vec![1u64, 100, 1000, 5000])),
        )
    });
    (
        window,
        rate,
        slow,
        1u32..=6,
        prop::option::weighted(0.4, 1u32..=4),
        open,
        half_open,
        prop::option::weighted(0.15, prop::sample::select(vec![50u64, 1000])),
    )
        .prop_map(
            |(
                window,
                failure_rate,
                (slow_rate, slow_ms),
                minimum_calls,
                consecutive,
                open,
                (half_open_calls, half_open_successes, half_open_max_wait_ms),
                call_timeout_ms,
            )| Cfg {
                window,
                failure_rate,
                slow_rate,
                slow_ms,
                minimum_calls,
                consecutive,
                open,
                half_open_calls,
                half_open_successes,
                half_open_max_wait_ms,
                call_timeout_ms,
            },
        )
}

fn duration_strategy() -> impl Strategy<Value = u64> {
    prop::sample::select(vec![
        0,
        1,
        MS,
        10 * MS,
        49 * MS,
        50 * MS,
        100 * MS,
        250 * MS,
        999 * MS,
        1000 * MS,
        5000 * MS,
        30_000 * MS,
        61_000 * MS,
    ])
}

fn res_strategy() -> impl Strategy<Value = Res> {
    prop_oneof![3 => Just(Res::Success), 3 => Just(Res::Failure), 1 => Just(Res::Ignored)]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let slot = 0..SLOTS;
    prop_oneof![
        8 => slot.clone().prop_map(Op::Call),
        1 => slot.clone().prop_map(Op::Ready),
        1 => slot.clone().prop_map(Op::NotReady),
        7 => (0usize..4, duration_strategy(), res_strategy())
            .prop_map(|(call, after, res)| Op::Complete { call, after, res }),
        1 => (0usize..4, res_strategy()).prop_map(|(call, res)| Op::Respond { call, res }),
        1 => (0usize..4, duration_strategy()).prop_map(|(call, after)| Op::Poll { call, after }),
        1 => (0usize..4).prop_map(Op::DropCall),
        1 => slot.prop_map(Op::DropService),
        3 => (1u8..=4, prop::sample::select(vec![0, 1, MS, 50 * MS, 100 * MS]), res_strategy())
            .prop_map(|(calls, gap, res)| Op::Burst { calls, gap, res }),
        4 => duration_strategy().prop_map(Op::Advance),
        1 => prop::sample::select(vec![
            Manual::ForceOpen,
            Manual::Disable,
            Manual::MetricsOnly,
            Manual::Reset,
        ])
        .prop_map(Op::Force),
    ]
}

/// A case looks at the breaker after every step, after about half of them, or only at its end.
fn steps_strategy() -> impl Strategy<Value = Vec<Step>> {
    prop::sample::select(vec![1.0, 0.5, 0.0]).prop_flat_map(|p| {
        prop::collection::vec((op_strategy(), prop::bool::weighted(p)), 1..48).prop_map(|steps| {
            steps
                .into_iter()
                .map(|(op, look)| Step { op, look })
                .collect()
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 10_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn breaker_agrees_with_the_reference_model(
        cfg in cfg_strategy(),
        steps in steps_strategy(),
    ) {
        run_case(cfg, &steps)?;
    }
}

// ===== regression cases (each one a bug the model found) =====

/// Runs `ops`, looking at the breaker after each one if `look`; returns the final state.
fn replay_looking(cfg: Cfg, ops: &[Op], look: bool) -> State {
    let steps: Vec<Step> = ops.iter().map(|&op| Step { op, look }).collect();
    run_case(cfg, &steps).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `ops`, looking after every step.
fn replay(cfg: Cfg, ops: &[Op]) -> State {
    replay_looking(cfg, ops, true)
}

/// Runs `ops`, looking only at the end.
fn replay_unobserved(cfg: Cfg, ops: &[Op]) -> State {
    replay_looking(cfg, ops, false)
}

/// A plain configuration for hand-written cases.
fn base() -> Cfg {
    Cfg {
        window: WindowCfg::Count(4),
        failure_rate: (1, 2),
        slow_rate: None,
        slow_ms: None,
        minimum_calls: 2,
        consecutive: None,
        open: OpenCfg::Fixed { millis: 1000 },
        half_open_calls: 2,
        half_open_successes: None,
        half_open_max_wait_ms: Some(1000),
        call_timeout_ms: None,
    }
}

/// Two failures on slot 0 and 1 trip `base()` (count 4, minimum 2, threshold 1/2) at time 0.
fn trip_ops() -> Vec<Op> {
    let fail = Op::Complete {
        call: 0,
        after: 0,
        res: Res::Failure,
    };
    vec![Op::Call(0), Op::Call(1), fail, fail]
}

#[test]
fn model_smoke_trip_probe_and_close() {
    use Op::*;
    let success = Complete {
        call: 0,
        after: 0,
        res: Res::Success,
    };
    let mut ops = trip_ops();
    ops.extend([
        Call(0),
        Advance(1000 * MS),
        Call(0),
        Call(1),
        Call(2),
        success,
        success,
    ]);
    assert_eq!(replay(base(), &ops), State::Closed);
    assert_eq!(replay_unobserved(base(), &ops), State::Closed);
}

/// A probe answered at the very instant `half_open_max_wait` ends, with nobody looking in between:
/// the episode is already over, the result is stale (fixed in b18d1fc; the model agrees).
#[test]
fn model_probe_result_after_half_open_max_wait_is_stale() {
    use Op::*;
    let mut ops = trip_ops();
    ops.extend([
        Advance(1000 * MS),
        Call(0),
        Complete {
            call: 0,
            after: 1000 * MS,
            res: Res::Success,
        },
    ]);
    let cfg = Cfg {
        half_open_calls: 1,
        ..base()
    };
    assert_eq!(replay(cfg, &ops), State::Open);
}

/// Issue 8, defect 17: looking at an idle half-open breaker (no probe) never ends its episode, so
/// a call long after the open interval is a probe, whether somebody looked or not.
#[test]
fn model_an_idle_half_open_episode_never_expires() {
    use Op::*;
    let mut ops = trip_ops();
    ops.extend([
        Advance(1000 * MS),
        Advance(61_000 * MS),
        Advance(61_000 * MS),
        Call(0),
        Complete {
            call: 0,
            after: 0,
            res: Res::Success,
        },
    ]);
    let cfg = Cfg {
        half_open_calls: 1,
        ..base()
    };
    assert_eq!(replay(cfg, &ops), State::Closed);
    assert_eq!(replay_unobserved(cfg, &ops), State::Closed);
}

/// Issue 8, defect 17: an episode whose probe hangs expires at first probe + max wait (2 s) and
/// reopens from that instant (HalfOpen again at 3 s), not from when the next call arrives.
#[test]
fn model_an_expired_episode_reopens_at_its_expiry_instant() {
    use Op::*;
    let mut ops = trip_ops();
    ops.extend([
        Advance(1000 * MS),
        Call(0), // the probe that hangs
        Advance(61_000 * MS),
        Call(1), // a probe of the next episode
        Complete {
            call: 1,
            after: 0,
            res: Res::Success,
        },
    ]);
    let cfg = Cfg {
        half_open_calls: 1,
        ..base()
    };
    assert_eq!(replay_unobserved(cfg, &ops), State::Closed);
    assert_eq!(replay(cfg, &ops), State::Closed);
}
