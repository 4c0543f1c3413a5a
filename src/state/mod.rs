//! The breaker's state machine: admission, recording and transitions.
//!
//! # The state machine
//!
//! | from | to | trigger |
//! |---|---|---|
//! | Closed | Open | an outcome makes [`should_trip`] true (rate or consecutive failures) |
//! | Open | HalfOpen | the open interval ends (at `opened_at + interval`, inclusive) |
//! | HalfOpen | Closed | `half_open_successes` probes succeeded |
//! | HalfOpen | Open | more than `half_open_calls - half_open_successes` probes failed, or the episode is undecided `half_open_max_wait` after its first probe |
//! | any | ForcedOpen, Disabled, MetricsOnly, Closed | an operator, through a `Handle` (`reset` is to Closed) |
//!
//! A transition that time makes happens at its deadline, whoever notices it (a call, a readiness
//! check, a state read): Open turns HalfOpen at `open_until`, and an expired episode reopens at its
//! deadline, with the new open interval counted from there. So looking at the breaker never
//! changes what it does. An episode in which no probe was admitted has no deadline.
//!
//! # How it stays fast and correct
//!
//! The paths every call takes are lock-free:
//!
//! * the **state word** ([`word`]) holds the state and its generation; admitting a call in Closed
//!   is one load of it. It changes only under the transition lock;
//! * the **probe word** counts the half-open episode's probes: taking a permit, counting a
//!   probe's result and giving a permit back are one compare-and-swap each;
//! * `open_until` and `half_open_until` are deadlines (nanoseconds since the breaker's creation)
//!   that a rejection compares with the clock;
//! * `clean` says that a plain success would change nothing (a count window full of plain
//!   successes): a healthy closed call records by reading it;
//! * any other plain success, while it cannot trip the breaker, is counted in its lane's batch
//!   with one compare-and-swap, and folded into the window by the lock's next holder
//!   (`batch`).
//!
//! Everything else takes the transition lock (`core`): a failed or slow outcome, and every
//! transition. Under it the window is plain data, so a snapshot is always one that a
//! sequential order of the outcomes gives, a stale outcome (its generation is no longer current)
//! can never land in a window that a transition cleared, and each transition happens once. No
//! user code runs under it: a transition queues its announcement (tracing, events, wake-ups),
//! and the announcements run after the lock is released, in transition order (`announce.rs`).
//!
//! Every admitted call carries a [`Ticket`] with the generation that admitted it. A result whose
//! generation is no longer current is stale and dropped: it cannot move the state, and it cannot
//! take a probe's place.
//!
//! # Where things are
//!
//! `mod.rs` admits calls; `record.rs` records their outcomes, `batch/` counts successes
//! without the lock; `locked.rs` holds what the transition lock guards (`Core`) and the
//! trip decision; `transition.rs` makes every change of state; `announce.rs` announces them;
//! `probe.rs` runs the half-open probes; `observe.rs` answers rejections and reads; `word.rs`,
//! `window/`, `lane.rs` and `clock.rs` are the pieces.

mod announce;
mod batch;
pub(crate) mod clock;
pub(crate) mod lane;
mod locked;
mod observe;
mod probe;
mod record;
#[cfg(feature = "redis")]
pub(crate) mod remote;
mod transition;
pub(crate) mod waiters;
pub(crate) mod window;
pub(crate) mod word;

#[cfg(all(test, loom))]
mod loom_tests;

use std::fmt;
use std::sync::Arc as StdArc;
use std::time::Duration;

use tokio::time::Instant;

use crate::adaptive::Throttle;
use crate::config::Config;
use crate::event::Subscribers;
use crate::sync::{AtomicBool, AtomicU64, CachePadded, Mutex, Ordering};
use clock::{Now, instant_at};
use locked::Core;
pub(crate) use locked::{Rates, should_trip};
#[cfg(feature = "keyed")]
pub(crate) use observe::Forgettable;
use probe::{ProbeRefused, half_open_limits, half_open_max_wait};
use waiters::Waiters;
use window::Window;
use word::{Generation, Probes, StateWord, Ticket, TicketKind};

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
    /// Every state, in declaration order: for a gauge per state, or a table of transitions.
    ///
    /// ```
    /// use tower_circuit_breaker::State;
    ///
    /// assert_eq!(State::ALL.len(), 6);
    /// assert_eq!(State::ALL[0], State::Closed);
    /// let labels: Vec<&str> = State::ALL.iter().map(|s| s.as_str()).collect();
    /// assert!(labels.contains(&"half-open"));
    /// ```
    pub const ALL: [State; 6] = [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::ForcedOpen,
        State::Disabled,
        State::MetricsOnly,
    ];

    /// The state's name in lowercase with hyphens, as `Display` writes it (`"half-open"`).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half-open",
            State::ForcedOpen => "forced-open",
            State::Disabled => "disabled",
            State::MetricsOnly => "metrics-only",
        }
    }

    /// The state's position in [`State::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Whether calls are rejected in this state (before any probe admission).
    pub fn is_open(self) -> bool {
        matches!(self, State::Open | State::ForcedOpen)
    }

    /// Whether outcomes go into the window in this state.
    fn records(self) -> bool {
        matches!(self, State::Closed | State::MetricsOnly)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a call was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub(crate) state: State,
    /// When a probe will be admitted (`None`: nobody knows).
    pub(crate) retry_at: Option<Instant>,
    /// The generation of the state that rejected the call.
    pub(crate) generation: Generation,
}

/// The admission decision for one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    Admit(Ticket),
    Reject(Rejection),
}

/// What every call reads, on lines of their own: the atomics of admission and of the healthy
/// completion, which calls only read (except probes) and transitions write, and the breaker's
/// fixed identity, never written (which fills the line rather than lines of its own).
#[derive(Debug)]
struct Words {
    state: AtomicU64,
    probes: AtomicU64,
    /// End of the current open interval (`u64::MAX`: never). Written under the lock before the
    /// state word that it belongs to is published.
    open_until: AtomicU64,
    /// Deadline of the current half-open episode, set by its first probe (`u64::MAX`: none).
    half_open_until: AtomicU64,
    /// The current episode's probe numbers, `half_open_calls << 32 | half_open_successes`, fixed
    /// when it starts (an episode finishes under the configuration it started with). Written
    /// with Release under the lock before the HalfOpen word is published; read with Acquire.
    half_open_limits: AtomicU64,
    /// The current episode's `half_open_max_wait` in nanoseconds (`u64::MAX`: none), fixed with
    /// its limits.
    half_open_max_wait: AtomicU64,
    /// The slow-call duration in nanoseconds (`u64::MAX`: slow calls are not tracked). Read
    /// without the lock when a call completes; replaced by a reconfiguration.
    slow_call_nanos: AtomicU64,
    /// Whether recording an outcome reads the clock (a time window, or a learned baseline): read
    /// before taking the lock, so that the clock is read outside it.
    time_window: AtomicBool,
    /// Whether the breaker throttles (`Breaker::throttle` is set): fixed when it is built.
    throttles: bool,
    /// The states whose calls are admitted by the one-load fast path, one bit per state tag
    /// (`StateWord::tag`): Closed and MetricsOnly, or only MetricsOnly when the breaker throttles
    /// (its closed calls take a draw). Fixed when it is built, on the line admission reads
    /// anyway, so that throttling costs a breaker without it nothing on that path.
    fast_admit: u8,
    /// Whether a plain success would change nothing: a count window full of plain successes and
    /// no consecutive failure. Written under the lock when it changes.
    clean: Clean,
    epoch: Instant,
    /// The breaker's name (from its configuration; a reconfiguration keeps it).
    name: Option<StdArc<str>>,
    /// The current batch of plain successes (`batch`): its epoch, with `batch::OPEN` while
    /// successes may join it, and its bounds, in nanoseconds. Written under the lock.
    batch_epoch: AtomicU64,
    batch_start: AtomicU64,
    batch_end: AtomicU64,
    /// Whether calls are timed (slow calls), fixed for the breaker's life: part of `Fixed`, kept
    /// here, where it fits, so that the breaker's other fields fit in fewer lines.
    tracks_duration: bool,
    /// Whether a thread is running the queued announcements (see `announce.rs`): written once per
    /// announced transition, which writes the state word on this line anyway.
    announcing: AtomicBool,
}

/// One circuit breaker: shared, behind an `Arc`, by its layer, services, futures and handles.
pub(crate) struct Breaker {
    words: CachePadded<Words>,
    /// The key of a keyed breaker, as a string.
    key: Option<StdArc<str>>,
    /// The transition lock and what it guards.
    core: Mutex<Core>,
    /// Lifetime counts of outcomes and rejections, per lane.
    counters: lane::Counters,
    subscribers: Subscribers,
    /// Tasks waiting for readiness, woken on every transition.
    waiters: Waiters,
    /// The panic group this breaker is in (`readiness.rs`): after every transition, and when
    /// this breaker goes, it wakes its members' waiting tasks, with no lock held.
    group: std::sync::OnceLock<crate::readiness::PanicGroup>,
    /// What every call reads on its path, fixed when the breaker is built (see `reconfigure`).
    fixed: Fixed,
    /// The event callback (`Builder::on_event`), fixed when the breaker is built.
    on_event: Option<crate::config::EventCallback>,
    /// The handles of the metrics this breaker exports, registered when it was made. Boxed: a
    /// breaker that exports nothing (most of a keyed layer's, say) does not carry their room.
    #[cfg(feature = "metrics")]
    pub(crate) exported: Option<Box<crate::metrics::Exported>>,
    /// Adaptive throttling (`Builder::adaptive_throttling`), fixed when the breaker is built.
    /// Boxed: a breaker without it (most keyed breakers) pays one word.
    throttle: Option<Box<Throttle>>,
}

/// Whether a plain success would change nothing (`Breaker::clean`).
#[derive(Debug)]
struct Clean {
    /// For `Lane::absorbs`, which takes the success without `complete`: never for a breaker that
    /// throttles.
    absorbed: AtomicBool,
    /// For `complete`.
    settled: AtomicBool,
}

/// The part of the configuration a call's path reads without the lock, fixed for the breaker's
/// life: the call timeout (and `Words::tracks_duration`).
#[derive(Clone, Copy, Debug)]
struct Fixed {
    call_timeout: Option<Duration>,
}

/// The configuration values read outside the transition lock (`Breaker::config`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct LiveConfig {
    pub(crate) call_timeout: Option<Duration>,
    /// `Some` when slow calls are tracked: the current slow-call duration.
    pub(crate) slow_call_duration: Option<Duration>,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.words.name)
            .field("key", &self.key)
            .field("state", &self.stored_state())
            .finish_non_exhaustive()
    }
}

impl Drop for Breaker {
    /// Leaving its panic group may make the group panic: the other members' tasks look again.
    fn drop(&mut self) {
        if let Some(group) = self.group.get() {
            group.wake_members();
        }
    }
}

impl Breaker {
    /// A breaker with `config` (shared, not copied) and, for a keyed breaker, its `key`.
    pub(crate) fn new(config: StdArc<Config>, key: Option<StdArc<str>>) -> Self {
        Breaker {
            #[cfg(feature = "metrics")]
            exported: config.export.as_ref().map(|export| {
                Box::new(crate::metrics::Exported::register(
                    export,
                    &config,
                    key.as_deref(),
                ))
            }),
            words: CachePadded(Words {
                state: AtomicU64::new(StateWord::INITIAL.0),
                probes: AtomicU64::new(Probes::fresh(StateWord::INITIAL.generation()).0),
                open_until: AtomicU64::new(u64::MAX),
                half_open_until: AtomicU64::new(u64::MAX),
                half_open_limits: AtomicU64::new(half_open_limits(&config)),
                half_open_max_wait: AtomicU64::new(half_open_max_wait(&config)),
                slow_call_nanos: AtomicU64::new(slow_call_nanos(&config)),
                time_window: AtomicBool::new(config.window.is_time() || config.learned.is_some()),
                throttles: config.adaptive.is_some(),
                fast_admit: fast_admit(config.adaptive.is_some()),
                clean: Clean {
                    absorbed: AtomicBool::new(false),
                    settled: AtomicBool::new(false),
                },
                epoch: Instant::now(),
                name: config.name.clone(),
                batch_epoch: AtomicU64::new(0),
                batch_start: AtomicU64::new(0),
                batch_end: AtomicU64::new(0),
                tracks_duration: config.slow_call_duration.is_some(),
                announcing: AtomicBool::new(false),
            }),
            key,
            counters: lane::Counters::default(),
            subscribers: Subscribers::default(),
            waiters: Waiters::default(),
            group: std::sync::OnceLock::new(),
            fixed: Fixed {
                call_timeout: config.call_timeout,
            },
            on_event: config.on_event.clone(),
            throttle: config.adaptive.map(|t| Box::new(Throttle::new(t))),
            core: Mutex::new(Core::new(
                Window::new(config.window, config.slow_call_duration.is_some()),
                config,
            )),
        }
    }

    /// The configuration values a call reads without the lock.
    pub(crate) fn config(&self) -> LiveConfig {
        let slow = self.words.slow_call_nanos.load(Ordering::Relaxed);
        LiveConfig {
            call_timeout: self.fixed.call_timeout,
            slow_call_duration: (slow != u64::MAX).then(|| Duration::from_nanos(slow)),
        }
    }

    /// The configuration in force (for reading it back, and reconfiguring from it).
    pub(crate) fn current_config(&self) -> StdArc<Config> {
        self.lock().config_arc().clone()
    }

    /// Puts this breaker in `group`; `false` if it is in a group already.
    pub(crate) fn join_group(&self, group: crate::readiness::PanicGroup) -> bool {
        self.group.set(group).is_ok()
    }

    /// The panic group this breaker is in, if any.
    pub(crate) fn group(&self) -> Option<&crate::readiness::PanicGroup> {
        self.group.get()
    }

    pub(crate) fn name(&self) -> Option<&StdArc<str>> {
        self.words.name.as_ref()
    }

    /// The key of a keyed breaker.
    pub(crate) fn key(&self) -> Option<&StdArc<str>> {
        self.key.as_ref()
    }

    /// Whether recording needs the time a call took (slow calls, or an exported histogram of
    /// call durations).
    #[inline]
    pub(crate) fn tracks_duration(&self) -> bool {
        self.words.tracks_duration || self.exports_durations()
    }

    #[inline]
    fn exports_durations(&self) -> bool {
        #[cfg(feature = "metrics")]
        if let Some(exported) = &self.exported {
            return exported.durations();
        }
        false
    }

    /// A lazy reading of the breaker's clock.
    #[inline]
    pub(crate) fn now(&self) -> Now<'_> {
        Now::new(&self.words.epoch)
    }

    #[inline]
    fn load(&self) -> StateWord {
        // Acquire: pairs with the Release of a transition, so the deadlines and the probe word
        // written before it are visible with the word.
        StateWord(self.words.state.load(Ordering::Acquire))
    }

    /// The state as stored, without applying a transition that is due by time.
    pub(crate) fn stored_state(&self) -> State {
        self.load().state()
    }

    // ===== admission =====

    /// Decides whether a call may proceed, taking a probe permit in HalfOpen. The common case,
    /// a closed breaker, is one load.
    #[inline]
    pub(crate) fn admit(&self, now: &mut Now<'_>) -> Decision {
        let word = self.load();
        if (self.words.fast_admit >> word.tag()) & 1 != 0 {
            return Decision::Admit(Ticket::new(word.generation(), TicketKind::Recorded));
        }
        self.admit_other(word, now)
    }

    /// Admission in Closed with adaptive throttling: a draw against the rejection probability.
    /// A throttled call is rejected as an open circuit rejects one, with state Closed and a
    /// retry-after of one bucket of the throttle's window.
    #[inline(never)]
    fn admit_throttled(&self, word: StateWord, now: &mut Now<'_>) -> Decision {
        let generation = word.generation();
        let Some(throttle) = &self.throttle else {
            return Decision::Admit(Ticket::new(generation, TicketKind::Recorded));
        };
        let at = now.get();
        if throttle.admits(at) {
            return Decision::Admit(Ticket::new(generation, TicketKind::Recorded));
        }
        Decision::Reject(Rejection {
            state: State::Closed,
            retry_at: instant_at(self.words.epoch, at.saturating_add(throttle.retry_in())),
            generation,
        })
    }

    /// Counts a completed call in the throttle's window (`accepted`: it succeeded). Out of line:
    /// the completion path of a breaker without throttling only tests the flag.
    #[inline(never)]
    fn throttle_record(&self, accepted: bool, now: &mut Now<'_>) {
        if let Some(throttle) = &self.throttle {
            throttle.record(now.get(), accepted);
        }
    }

    /// The throttle's rejection probability at `at`, if the breaker throttles.
    pub(crate) fn rejection_probability(&self, at: u64) -> Option<f64> {
        self.throttle
            .as_ref()
            .map(|throttle| throttle.probability(at))
    }

    #[inline(never)]
    fn admit_other(&self, mut word: StateWord, now: &mut Now<'_>) -> Decision {
        loop {
            let generation = word.generation();
            let reject = |state, retry_at| {
                Decision::Reject(Rejection {
                    state,
                    retry_at,
                    generation,
                })
            };
            match word.state() {
                State::Closed if self.words.throttles => return self.admit_throttled(word, now),
                State::Closed | State::MetricsOnly => {
                    return Decision::Admit(Ticket::new(generation, TicketKind::Recorded));
                }
                State::Disabled => {
                    return Decision::Admit(Ticket::new(generation, TicketKind::Unrecorded));
                }
                State::ForcedOpen => return reject(State::ForcedOpen, None),
                State::Open => {
                    // Relaxed: published with the word, read with Acquire. Compared as an
                    // instant, which is also the rejection's retry-after: one conversion.
                    let until = self.words.open_until.load(Ordering::Relaxed);
                    match instant_at(self.words.epoch, until) {
                        Some(at) if now.instant() >= at => word = self.settle(now),
                        retry_at => return reject(State::Open, retry_at),
                    }
                }
                State::HalfOpen if !self.is_due(word, now) => match self.take_probe(word, now) {
                    Ok(ticket) => return Decision::Admit(ticket),
                    Err(ProbeRefused::Full) => return reject(State::HalfOpen, None),
                    Err(ProbeRefused::Stale) => word = self.load(),
                },
                State::HalfOpen => word = self.settle(now),
            }
        }
    }

    /// Whether a transition is due by time in `word`'s state (Open past `open_until`, HalfOpen
    /// past `half_open_until`).
    fn is_due(&self, word: StateWord, now: &mut Now<'_>) -> bool {
        // Relaxed: the deadlines were published with the word, read with Acquire.
        let deadline = match word.state() {
            State::Open => self.words.open_until.load(Ordering::Relaxed),
            State::HalfOpen => self.words.half_open_until.load(Ordering::Relaxed),
            _ => return false,
        };
        deadline != u64::MAX && now.get() >= deadline
    }

    /// The current state, after applying the transitions due by time.
    pub(crate) fn state(&self, now: &mut Now<'_>) -> State {
        let word = self.load();
        if self.is_due(word, now) {
            return self.settle(now).state();
        }
        word.state()
    }
}

/// `Words::fast_admit`: the tags of Closed (unless the breaker throttles) and MetricsOnly.
fn fast_admit(throttles: bool) -> u8 {
    let tag = |state| 1u8 << StateWord::tag_of(state);
    match throttles {
        true => tag(State::MetricsOnly),
        false => tag(State::Closed) | tag(State::MetricsOnly),
    }
}

/// `Words::slow_call_nanos` for `config`.
fn slow_call_nanos(config: &Config) -> u64 {
    config
        .slow_call_duration
        .map_or(u64::MAX, |d| clock::saturating_nanos(d).min(u64::MAX - 1))
}
