//! The breaker's state machine: admission, recording and transitions.
//!
//! # How it stays fast and correct
//!
//! Everything a call touches is an atomic:
//!
//! * the **state word** ([`word`]) holds the state, its generation, and the half-open probe
//!   counters. Admitting a call in Closed is one load of it. Admitting a probe, counting a probe's
//!   result and returning a probe permit are one compare-and-swap each, so a permit can never be
//!   counted against the wrong episode;
//! * the **window** ([`window`]) and the consecutive-failure counter record outcomes. A healthy
//!   closed breaker only reads them;
//! * `open_until` and `half_open_until` are deadlines in nanoseconds since the breaker's creation.
//!
//! Transitions are rare, so they take a short lock (`episode`), which makes each one happen
//! exactly once and orders its side effects (deadlines, attempt number, clearing the window) before
//! the new state word is published with `Release`. Readers load the word with `Acquire` and so see
//! the deadlines that belong to it. The lock is never taken on the closed, open or half-open paths
//! that do not change the state.
//!
//! An outcome that changes the window registers in `recording` around its generation check and
//! its writes: a transition that clears the window (reset, metrics-only, closing) waits for the
//! registered writers, so a stale outcome can never land in the fresh window, and a writer that
//! arrives during the clear is stale and records nothing. The registration's `SeqCst` decrement
//! also makes the last of two racing writers see both outcomes when it evaluates the thresholds.
//! A healthy closed breaker (a count window of successes) skips all of this: it only reads.
//!
//! Every admitted call carries a [`Ticket`] with the generation that admitted it. A result whose
//! generation is no longer current is stale and is dropped: it cannot move the state, and it
//! cannot take a probe's place.

pub(crate) mod lane;
pub(crate) mod waiters;
pub(crate) mod window;
pub(crate) mod word;

#[cfg(all(test, loom))]
mod loom_tests;

use std::fmt;
use std::num::NonZeroU64;
use std::sync::Arc as StdArc;
use std::time::Duration;

use tokio::time::Instant;

use crate::classify::Outcome;
use crate::config::{Config, WindowKind};
use crate::event::{Event, EventStream, Subscribers};
use crate::handle::Metrics;
use crate::sync::{AtomicU32, AtomicU64, CachePadded, Mutex, Ordering, lock, yield_now};
use waiters::Waiters;
use window::{Sample, Window};
use word::{FAIL_ONE, Generation, SUCC_ONE, TAKEN_ONE, Word};

/// The state of a circuit breaker.
///
/// `Closed`, `Open` and `HalfOpen` are driven by outcomes; the other three are set by an operator
/// through a [`Handle`](crate::Handle) and stay until changed.
///
/// ```
/// use tower_circuit_breaker::{CircuitBreakerLayer, State};
///
/// let handle = CircuitBreakerLayer::builder().build().unwrap().handle();
/// assert_eq!(handle.state(), State::Closed);
/// handle.disable();
/// assert_eq!(handle.state(), State::Disabled);
/// assert_eq!(State::HalfOpen.to_string(), "half-open");
/// assert!(State::ForcedOpen.is_open());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls pass; outcomes are recorded and the thresholds evaluated.
    Closed,
    /// Calls are rejected (or go to the fallback) until the open interval ends.
    Open,
    /// A bounded number of probe calls test the dependency.
    HalfOpen,
    /// Calls are rejected until an operator changes the state.
    ForcedOpen,
    /// Calls pass and nothing is recorded.
    Disabled,
    /// Calls pass and outcomes are recorded, but the breaker never opens.
    MetricsOnly,
}

impl State {
    /// Whether calls are rejected in this state (before any probe admission).
    pub fn is_open(self) -> bool {
        matches!(self, State::Open | State::ForcedOpen)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half-open",
            State::ForcedOpen => "forced-open",
            State::Disabled => "disabled",
            State::MetricsOnly => "metrics-only",
        })
    }
}

// ===== Now =====

/// The current time in nanoseconds since the breaker's creation, read from tokio's clock at most
/// once, and only if something needs it.
#[derive(Debug)]
pub(crate) struct Now<'a> {
    /// Borrowed, not copied: most callers never read the clock.
    epoch: &'a Instant,
    value: Option<u64>,
}

impl Now<'static> {
    /// A time that is already known (loom models).
    #[cfg(all(test, loom))]
    pub(crate) fn fixed(nanos: u64) -> Self {
        static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        Now {
            epoch: EPOCH.get_or_init(Instant::now),
            value: Some(nanos),
        }
    }
}

impl Now<'_> {
    pub(crate) fn get(&mut self) -> u64 {
        let epoch = *self.epoch;
        *self.value.get_or_insert_with(|| {
            saturating_nanos(Instant::now().saturating_duration_since(epoch))
        })
    }
}

/// `d` in nanoseconds, saturating at `u64::MAX` (about 584 years). In `u64` arithmetic rather than
/// through `Duration::as_nanos`'s `u128`.
#[inline]
pub(crate) fn saturating_nanos(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

// ===== Ticket, Decision =====

/// What admitted a call: carried by the call until its result is recorded or it is dropped.
///
/// Packed into one non-zero word (`generation << 8 | kind`): an admitted call hands its ticket
/// from `poll_ready` to `call` to its future, and a one-word value is stored and loaded whole
/// (a struct of a `u32` and a `u8` is written field by field and then read back with one wider
/// load, which stalls on store forwarding).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket(NonZeroU64);

impl Ticket {
    #[inline]
    fn new(generation: Generation, kind: TicketKind) -> Self {
        let bits = (u64::from(generation.bits()) << 8) | kind as u64;
        Ticket(NonZeroU64::new(bits).expect("a ticket kind is never 0"))
    }

    #[inline]
    fn generation(self) -> Generation {
        Generation::from_bits((self.0.get() >> 8) as u32)
    }

    /// Whether this ticket holds a half-open probe permit (to give back if it goes unused).
    #[inline]
    pub(crate) fn is_probe(self) -> bool {
        self.kind() == TicketKind::Probe
    }

    #[inline]
    fn kind(self) -> TicketKind {
        match self.0.get() & 0xff {
            1 => TicketKind::Recorded,
            2 => TicketKind::Probe,
            _ => TicketKind::Unrecorded,
        }
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("generation", &self.generation())
            .field("kind", &self.kind())
            .finish()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum TicketKind {
    /// Admitted in Closed or MetricsOnly: the result goes into the window.
    Recorded = 1,
    /// Admitted in HalfOpen: holds one probe permit.
    Probe = 2,
    /// Admitted in Disabled: nothing is recorded.
    Unrecorded = 3,
}

/// Why a call was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub(crate) state: State,
    pub(crate) retry_after: Option<Duration>,
}

/// The admission decision for one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    Admit(Ticket),
    Reject(Rejection),
}

// ===== Breaker =====

#[derive(Debug)]
struct Episode {
    /// Opening attempt: 1 on Closed -> Open, +1 on each HalfOpen -> Open, 0 after closing.
    attempt: u32,
    /// State of the jitter generator (splitmix64).
    rng: u64,
}

impl Episode {
    fn next_uniform(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Rejections since the last transition to Closed, counted per lane (the rejecting thread's), each
/// on a 64-byte line of its own: in a rejection storm on several cores, one shared counter would
/// move between them on every call (`benches/compare`'s `reject2`: two threads served 0.78–0.99×
/// one thread's rejections with it, 1.23–1.91× without). Lanes 0 and 1, the first two threads',
/// are also 128 bytes apart, out of reach of the adjacent-line prefetcher.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Rejections([Line; lane::LANES]);

#[derive(Debug, Default)]
#[repr(align(64))]
struct Line(AtomicU64);

impl Rejections {
    #[inline]
    fn add(&self, lane: usize) {
        // Lanes 0, 1, 2, 3 count in lines 0, 2, 1, 3: lanes 0 and 1 on different 128-byte pairs.
        const _: () = assert!(lane::LANES == 4);
        let slot = ((lane & 1) << 1) | ((lane >> 1) & 1);
        // Relaxed: a statistic; a count racing with `clear` lands on either side of it.
        self.0[slot].0.fetch_add(1, Ordering::Relaxed);
    }

    fn sum(&self) -> u64 {
        self.0.iter().fold(0u64, |sum, line| {
            sum.wrapping_add(line.0.load(Ordering::Relaxed))
        })
    }

    fn clear(&self) {
        for line in &self.0 {
            line.0.store(0, Ordering::Relaxed);
        }
    }
}

/// The counters recorders write, together on one padded block (they have the same writers; a
/// block each would cost 128 bytes per breaker).
#[derive(Debug, Default)]
struct Recorders {
    consecutive: AtomicU32,
    recording: AtomicU32,
}

/// Set in `Recorders::recording` while a transition clears the window.
const CLEARING: u32 = 1 << 31;

/// One circuit breaker: shared, behind an `Arc`, by its layer, services, futures and handles.
pub(crate) struct Breaker {
    word: CachePadded<AtomicU64>,
    window: CachePadded<Window>,
    /// The counters recorders write, on one padded block: the consecutive failures, and the
    /// recorders between their generation check and the end of their window writes, plus
    /// `CLEARING` while a transition clears the window (see `while_recording`).
    recorders: CachePadded<Recorders>,
    not_permitted: Rejections,
    /// Deadline of the current Open state. Written under `episode` before the word is published.
    open_until: AtomicU64,
    /// Deadline of the current HalfOpen episode (`u64::MAX`: none).
    half_open_until: AtomicU64,
    episode: Mutex<Episode>,
    subscribers: Subscribers,
    /// Tasks waiting for the inner service's readiness, woken when the circuit opens.
    waiters: Waiters,
    config: StdArc<Config>,
    epoch: Instant,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.config.name)
            .field("state", &self.load().state())
            .finish_non_exhaustive()
    }
}

impl Breaker {
    pub(crate) fn new(config: StdArc<Config>) -> Self {
        let window = match config.window {
            WindowKind::Count(n) => Window::count(n),
            WindowKind::Time { duration, buckets } => {
                let k = buckets.unwrap_or(1).max(1);
                Window::time(saturating_nanos(duration / k), k)
            }
        };
        let seed = {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        };
        Breaker {
            word: CachePadded(AtomicU64::new(Word::INITIAL.0)),
            window: CachePadded(window),
            recorders: CachePadded(Recorders::default()),
            not_permitted: Rejections::default(),
            open_until: AtomicU64::new(0),
            half_open_until: AtomicU64::new(u64::MAX),
            episode: Mutex::new(Episode {
                attempt: 0,
                rng: seed,
            }),
            subscribers: Subscribers::default(),
            waiters: Waiters::default(),
            config,
            epoch: Instant::now(),
        }
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn name(&self) -> Option<&StdArc<str>> {
        self.config.name.as_ref()
    }

    /// A lazy reading of the breaker's clock.
    #[inline]
    pub(crate) fn now(&self) -> Now<'_> {
        Now {
            epoch: &self.epoch,
            value: None,
        }
    }

    /// Whether recording needs the time a call ended (slow calls or a time window).
    #[inline]
    pub(crate) fn tracks_duration(&self) -> bool {
        self.config.slow_call_duration.is_some()
    }

    #[inline]
    fn load(&self) -> Word {
        // Acquire: pairs with the Release of a transition, so the deadlines and the cleared window
        // written before it are visible with the word.
        Word(self.word.load(Ordering::Acquire))
    }

    // ===== admission =====

    /// The ticket of a call admitted by a closed (or metrics-only) breaker; in every other state,
    /// the word read, for `admit_from` to decide. The service's inline fast path: one load, no
    /// clock.
    #[inline]
    pub(crate) fn admit_recorded(&self) -> Result<Ticket, Word> {
        let word = self.load();
        match word.state() {
            State::Closed | State::MetricsOnly => {
                Ok(Ticket::new(word.generation(), TicketKind::Recorded))
            }
            _ => Err(word),
        }
    }

    /// Decides whether a call may proceed, taking a probe permit in HalfOpen.
    pub(crate) fn admit(&self, now: &mut Now<'_>) -> Decision {
        self.admit_from(self.load(), now)
    }

    /// `admit`, starting from `word`, a value of the state word read by the caller.
    #[inline]
    pub(crate) fn admit_from(&self, mut word: Word, now: &mut Now<'_>) -> Decision {
        loop {
            let generation = word.generation();
            let kind = match word.state() {
                State::Closed | State::MetricsOnly => TicketKind::Recorded,
                State::Disabled => TicketKind::Unrecorded,
                State::ForcedOpen => {
                    return Decision::Reject(Rejection {
                        state: State::ForcedOpen,
                        retry_after: None,
                    });
                }
                State::Open => {
                    // Still open, the common case, inline: one clock read, no call. `settle`
                    // makes the same comparison with the same reads.
                    let until = self.open_until.load(Ordering::Relaxed);
                    let left = until.saturating_sub(now.get());
                    if left > 0 {
                        return Decision::Reject(Rejection {
                            state: State::Open,
                            retry_after: Some(Duration::from_nanos(left)),
                        });
                    }
                    match self.settle(word, now) {
                        Some(next) => {
                            word = next;
                            continue;
                        }
                        None => {
                            return Decision::Reject(Rejection {
                                state: State::Open,
                                retry_after: Some(Duration::ZERO),
                            });
                        }
                    }
                }
                State::HalfOpen => {
                    if let Some(next) = self.settle(word, now) {
                        word = next;
                        continue;
                    }
                    if word.taken() >= self.config.half_open_calls {
                        return Decision::Reject(Rejection {
                            state: State::HalfOpen,
                            retry_after: None,
                        });
                    }
                    // AcqRel on success: the permit belongs to this exact word (generation and
                    // counters); on failure, retry with the word that won.
                    match self.word.compare_exchange_weak(
                        word.0,
                        word.0 + TAKEN_ONE,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => TicketKind::Probe,
                        Err(actual) => {
                            word = Word(actual);
                            continue;
                        }
                    }
                }
            };
            return Decision::Admit(Ticket::new(generation, kind));
        }
    }

    /// Applies a transition that is due by time (Open -> HalfOpen at `open_until`, HalfOpen ->
    /// Open at `half_open_until`). Returns the word to continue with if the state moved.
    fn settle(&self, word: Word, now: &mut Now<'_>) -> Option<Word> {
        let (deadline, to) = match word.state() {
            State::Open => (self.open_until.load(Ordering::Relaxed), State::HalfOpen),
            State::HalfOpen => (self.half_open_until.load(Ordering::Relaxed), State::Open),
            _ => return None,
        };
        if deadline == u64::MAX || now.get() < deadline {
            return None;
        }
        let from = word.state();
        self.transition_if(word.generation(), now, |w| {
            (w.state() == from).then_some(to)
        });
        Some(self.load())
    }

    /// The current state, after applying any transition that is due by time.
    pub(crate) fn state(&self, now: &mut Now<'_>) -> State {
        let mut word = self.load();
        while let Some(next) = self.settle(word, now) {
            word = next;
        }
        word.state()
    }

    // ===== recording =====

    /// Records the result of an admitted call. `slow` says whether it took longer than the
    /// slow-call duration (always false when slow calls are not tracked).
    #[inline]
    pub(crate) fn complete(&self, ticket: Ticket, outcome: Outcome, slow: bool, now: &mut Now<'_>) {
        match ticket.kind() {
            TicketKind::Unrecorded => {}
            TicketKind::Recorded => self.record(ticket.generation(), outcome, slow, now),
            TicketKind::Probe => {
                let result = match outcome {
                    Outcome::Ignored => ProbeResult::Returned,
                    Outcome::Success if !slow => ProbeResult::Succeeded,
                    Outcome::Success | Outcome::Failure => ProbeResult::Failed,
                };
                self.finish_probe(ticket.generation(), result, now);
            }
        }
    }

    /// Whether recording `outcome` for `ticket` would change nothing: a success (not slow) in a
    /// closed breaker whose window is full of successes. The response future's inline fast path:
    /// `complete` would reach the same conclusion for it, reading the same atomics, but out of
    /// line and after reading the clock for slow calls. A stale ticket changes nothing either way,
    /// so its generation need not be checked here.
    #[inline]
    pub(crate) fn absorbs(&self, ticket: Ticket, outcome: Outcome) -> bool {
        // Relaxed: as in `record`.
        ticket.kind() == TicketKind::Recorded
            && outcome == Outcome::Success
            && self.recorders.consecutive.load(Ordering::Relaxed) == 0
            && self.window.absorbs(Sample {
                failed: false,
                slow: false,
            })
    }

    /// Gives back what a call that will never complete holds: its probe permit, if any. Nothing
    /// is recorded.
    #[inline]
    pub(crate) fn release(&self, ticket: Ticket) {
        if ticket.is_probe() {
            self.return_probe(ticket.generation());
        }
    }

    #[inline(never)]
    fn return_probe(&self, generation: Generation) {
        self.finish_probe(generation, ProbeResult::Returned, &mut self.now());
    }

    #[inline]
    fn record(&self, generation: Generation, outcome: Outcome, slow: bool, now: &mut Now<'_>) {
        let failed = match outcome {
            Outcome::Ignored => return,
            Outcome::Success => false,
            Outcome::Failure => true,
        };
        let word = self.load();
        if word.generation() != generation {
            return; // stale: admitted under a state that has since changed
        }
        let sample = Sample { failed, slow };
        // Relaxed: a full window of successes stays one whatever order racing successes take; a
        // racing failure is counted either before or after this success, and evaluates itself.
        if !failed
            && self.recorders.consecutive.load(Ordering::Relaxed) == 0
            && self.window.absorbs(sample)
        {
            return; // a healthy closed breaker: nothing changes, nothing is written
        }
        // Where the outcome falls in a time window (a clock read and a division), once for every
        // step below; a count window reads no clock.
        let tick = self.window.tick(|| now.get());
        // A stale outcome never lands in a window that a transition cleared meanwhile (it would
        // count toward the next trip); and of two outcomes recorded at once, the later one to
        // finish sees both when it evaluates the thresholds.
        let Some(consecutive) = self.while_recording(generation, || {
            let consecutive = if failed {
                self.recorders
                    .consecutive
                    .fetch_add(1, Ordering::Relaxed)
                    .saturating_add(1)
            } else {
                if self.recorders.consecutive.load(Ordering::Relaxed) != 0 {
                    self.recorders.consecutive.store(0, Ordering::Relaxed);
                }
                0
            };
            self.window.record(sample, tick);
            consecutive
        }) else {
            return; // stale
        };
        if word.state() != State::Closed {
            return; // MetricsOnly records but never trips
        }
        if !failed && !slow && !self.window.may_hold_bad(tick) {
            return; // a success cannot raise a rate that is zero
        }
        if !failed && !slow && self.window.was_past_minimum(self.config.minimum_calls) {
            // In a count window a success only replaces an older outcome once the rates are
            // defined: it lowers or keeps both. Only the outcome that brings the window to its
            // minimum can trip it.
            return;
        }
        if !failed && !slow && self.window.evaluated_in_bucket(generation.bits(), tick) {
            // In a time window no outcome left since that evaluation: likewise (see
            // `Window::mark_evaluated`).
            return;
        }
        if self.should_trip(generation, consecutive, now) {
            self.transition_if(generation, now, |w| {
                (w.state() == State::Closed).then_some(State::Open)
            });
        }
    }

    /// Runs `write` (recording one outcome) unless `generation` is stale, registered in
    /// `recording`, so that a transition that clears the window waits for the write to end. A
    /// write that starts during such a transition is stale: the transition publishes a new
    /// generation (a clearing transition from Closed or MetricsOnly cannot fail, as nothing but
    /// the lock holder changes their word), so it records nothing and never waits.
    #[inline]
    fn while_recording<T>(&self, generation: Generation, write: impl FnOnce() -> T) -> Option<T> {
        // SeqCst read-modify-writes on one location: either this registration precedes the
        // transition's `CLEARING` (which then waits for it), or it sees `CLEARING`. The final
        // decrements also order every recorder's writes before the next one's threshold check.
        if self.recorders.recording.fetch_add(1, Ordering::SeqCst) & CLEARING != 0 {
            self.recorders.recording.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        let result = (self.load().generation() == generation).then(write);
        self.recorders.recording.fetch_sub(1, Ordering::SeqCst);
        result
    }

    fn should_trip(&self, generation: Generation, consecutive: u32, now: &mut Now<'_>) -> bool {
        let config = &self.config;
        if config
            .consecutive_failures
            .is_some_and(|k| consecutive >= k)
        {
            return true;
        }
        let totals = self.window.totals(|| now.get());
        if totals.calls == 0 || totals.calls < config.minimum_calls {
            return false;
        }
        self.window.mark_evaluated(generation.bits(), || now.get());
        let calls = totals.calls as f64;
        totals.failed as f64 / calls >= config.failure_rate_threshold
            || config
                .slow_call_rate_threshold
                .is_some_and(|threshold| totals.slow as f64 / calls >= threshold)
    }

    fn finish_probe(&self, generation: Generation, result: ProbeResult, now: &mut Now<'_>) {
        let config = &self.config;
        let decides = |w: Word| match result {
            ProbeResult::Returned => None,
            ProbeResult::Succeeded => {
                (w.succeeded() + 1 >= config.half_open_successes).then_some(State::Closed)
            }
            ProbeResult::Failed => (w.failed() + 1
                > config.half_open_calls - config.half_open_successes)
                .then_some(State::Open),
        };
        let mut word = self.load();
        loop {
            if word.generation() != generation || word.state() != State::HalfOpen {
                return; // stale: the episode this permit belonged to is over
            }
            if self.settle(word, now).is_some() {
                // `half_open_max_wait` ended the episode before this result arrived (nobody had
                // looked since): the result is stale, as if the transition had happened on time.
                return;
            }
            if decides(word).is_some() {
                self.transition_if(generation, now, |w| {
                    if w.state() == State::HalfOpen {
                        decides(w)
                    } else {
                        None
                    }
                });
                return;
            }
            let next = match result {
                ProbeResult::Returned => word.0 - TAKEN_ONE,
                ProbeResult::Succeeded => word.0 + SUCC_ONE,
                ProbeResult::Failed => word.0 + FAIL_ONE,
            };
            // AcqRel/Acquire as for admission: the count lands in this episode or not at all.
            match self
                .word
                .compare_exchange_weak(word.0, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(actual) => word = Word(actual),
            }
        }
    }

    /// Counts one rejected call (reported by `Metrics::not_permitted`).
    #[inline]
    pub(crate) fn count_rejection(&self) {
        self.not_permitted.add(lane::thread_lane());
    }

    // ===== transitions =====

    /// Moves to the state `decide` picks from the current word, provided the generation is still
    /// `generation`. Returns whether a transition happened.
    fn transition_if(
        &self,
        generation: Generation,
        now: &mut Now<'_>,
        decide: impl Fn(Word) -> Option<State>,
    ) -> bool {
        let mut episode = lock(&self.episode);
        loop {
            let current = self.load();
            if current.generation() != generation {
                return false;
            }
            let Some(to) = decide(current) else {
                return false;
            };
            match self.apply(&mut episode, current, to, now) {
                Ok(()) => return true,
                // Only probe counters change without the lock: look again at the new word.
                Err(()) => continue,
            }
        }
    }

    /// An operator's transition: from any state to `to`. `reset` (to Closed) always clears.
    pub(crate) fn force(&self, to: State) {
        let mut now = self.now();
        let mut episode = lock(&self.episode);
        loop {
            let current = self.load();
            if current.state() == to && to != State::Closed {
                return;
            }
            if self.apply(&mut episode, current, to, &mut now).is_ok() {
                return;
            }
        }
    }

    /// Performs the side effects of entering `to`, then publishes the new word. Called with the
    /// episode lock held. Fails (changing nothing visible) if probe counters moved meanwhile.
    fn apply(
        &self,
        episode: &mut Episode,
        current: Word,
        to: State,
        now: &mut Now<'_>,
    ) -> Result<(), ()> {
        let from = current.state();
        let mut attempt = episode.attempt;
        // Relaxed stores: published by the Release of the compare-and-swap below. Under the lock
        // only the probe counters can change; if the swap fails these are written again with the
        // same values, and no reader of the old word reads them.
        match to {
            State::Open => {
                attempt = if from == State::HalfOpen {
                    attempt.saturating_add(1)
                } else {
                    1
                };
                let interval = self.config.open_interval(attempt, episode.next_uniform());
                let until = now.get().saturating_add(saturating_nanos(interval));
                self.open_until.store(until, Ordering::Relaxed);
            }
            State::HalfOpen => {
                let until = match self.config.half_open_max_wait {
                    Some(wait) => now.get().saturating_add(saturating_nanos(wait)),
                    None => u64::MAX,
                };
                self.half_open_until.store(until, Ordering::Relaxed);
            }
            State::Closed | State::MetricsOnly => {
                // Wait for the recorders that checked the old generation; new ones wait for us.
                self.recorders
                    .recording
                    .fetch_or(CLEARING, Ordering::SeqCst);
                while self.recorders.recording.load(Ordering::SeqCst) & !CLEARING != 0 {
                    yield_now();
                }
                self.window.clear();
                self.recorders.consecutive.store(0, Ordering::Relaxed);
                if to == State::Closed {
                    self.not_permitted.clear();
                    attempt = 0;
                }
            }
            State::ForcedOpen | State::Disabled => {}
        }
        let next = current.next(to);
        // Release: publishes the side effects above with the new word.
        let published =
            self.word
                .compare_exchange(current.0, next.0, Ordering::AcqRel, Ordering::Acquire);
        if matches!(to, State::Closed | State::MetricsOnly) {
            self.recorders
                .recording
                .fetch_and(!CLEARING, Ordering::SeqCst);
        }
        published.map_err(|_| ())?;
        episode.attempt = attempt;
        self.announce(from, to);
        Ok(())
    }

    /// Reports a transition: under the episode lock, so that events and wake-ups come in the order
    /// of the transitions (a tracing subscriber must not call back into this breaker meanwhile).
    fn announce(&self, from: State, to: State) {
        let name = self.config.name.as_deref().unwrap_or("");
        if from == to {
            tracing::info!(breaker = name, state = %to, "circuit reset");
            return;
        }
        if to.is_open() {
            tracing::warn!(breaker = name, %from, %to, "circuit opened");
            // Calls waiting for the inner service's readiness are rejected now instead.
            self.waiters.wake_all();
        } else {
            tracing::info!(breaker = name, %from, %to, "circuit state changed");
        }
        self.subscribers.emit(|| Event::StateTransition {
            from,
            to,
            name: self.config.name.clone(),
        });
    }

    // ===== observation =====

    /// Whether calls are rejected now, before any time-based transition (Open, ForcedOpen).
    pub(crate) fn is_rejecting(&self) -> bool {
        self.load().state().is_open()
    }

    pub(crate) fn waiters(&self) -> &Waiters {
        &self.waiters
    }

    pub(crate) fn metrics(&self) -> Metrics {
        let mut now = self.now();
        let state = self.state(&mut now);
        let totals = self.window.totals(|| now.get());
        Metrics {
            state,
            calls: totals.calls,
            failed: totals.failed,
            slow: totals.slow,
            not_permitted: self.not_permitted.sum(),
            consecutive_failures: self.recorders.consecutive.load(Ordering::Relaxed),
            minimum_calls: self.config.minimum_calls,
        }
    }

    pub(crate) fn subscribe(&self) -> EventStream {
        self.subscribers.subscribe()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProbeResult {
    Succeeded,
    Failed,
    /// Ignored, dropped or never used: the permit goes back and nothing is counted.
    Returned,
}
