//! The two atomic words that admission reads: the state word and the probe word.
//!
//! The **state word** holds the state and its generation. It changes only under the transition
//! lock, so a closed call is admitted with one load of it:
//!
//! ```text
//!  63                                               3 2   0
//! +--------------------------------------------------+-----+
//! | generation (61 bits)                             | tag |
//! +--------------------------------------------------+-----+
//! ```
//!
//! 2^61 transitions do not happen in practice (a million a second for 73,000 years), so a
//! generation never comes round again: a stale result can never be taken for a current one.
//!
//! The **probe word** counts the current half-open episode's probes, so that admitting a probe,
//! counting its result and giving a permit back are each one compare-and-swap. It carries the low
//! bits of the episode's generation: every transition replaces it, so a swap prepared against an
//! older episode fails.
//!
//! ```text
//!  63          37  36  35      24 23      12 11       0
//! +--------------+----+----------+----------+----------+
//! | episode (27) | st | fail (12)| succ (12)| taken(12)|
//! +--------------+----+----------+----------+----------+
//! ```
//!
//! `st` (started) is set by the episode's first probe, from which `half_open_max_wait` counts.

use std::num::NonZeroU64;

use crate::State;
use crate::config::MAX_HALF_OPEN_CALLS;

// ===== StateWord =====

const TAG_BITS: u32 = 3;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;

/// The generation of a state: one more with every transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Generation(u64);

/// The state and its generation, as stored in the state word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StateWord(pub(crate) u64);

impl StateWord {
    /// The first word of a breaker: Closed, generation 0.
    pub(crate) const INITIAL: StateWord = StateWord(0);

    pub(crate) fn state(self) -> State {
        match self.0 & TAG_MASK {
            0 => State::Closed,
            1 => State::Open,
            2 => State::HalfOpen,
            3 => State::ForcedOpen,
            4 => State::Disabled,
            _ => State::MetricsOnly,
        }
    }

    pub(crate) fn generation(self) -> Generation {
        Generation(self.0 >> TAG_BITS)
    }

    /// The state's tag (`0..8`), as stored.
    #[inline]
    pub(crate) fn tag(self) -> u32 {
        (self.0 & TAG_MASK) as u32
    }

    /// The tag of `state`.
    pub(crate) const fn tag_of(state: State) -> u32 {
        match state {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
            State::ForcedOpen => 3,
            State::Disabled => 4,
            State::MetricsOnly => 5,
        }
    }

    /// The word of the next generation, in `state`.
    pub(crate) fn next(self, state: State) -> StateWord {
        let tag = u64::from(StateWord::tag_of(state));
        StateWord(((self.0 >> TAG_BITS).wrapping_add(1) << TAG_BITS) | tag)
    }
}

// ===== Ticket =====

/// What admitted a call, carried by it until its result is recorded or it is dropped: the
/// generation that admitted it and what the admission holds. One word (`generation << 2 | kind`),
/// so that it is stored and loaded whole.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket(NonZeroU64);

/// What a ticket holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TicketKind {
    /// Admitted in Closed or MetricsOnly: the result goes into the window.
    Recorded = 1,
    /// Admitted in HalfOpen: holds one probe permit.
    Probe = 2,
    /// Admitted in Disabled: nothing is recorded.
    Unrecorded = 3,
}

impl Ticket {
    #[inline]
    /// A ticket whose outcome is not recorded: a call a panicking group lets through.
    pub(crate) fn unrecorded(generation: Generation) -> Self {
        Ticket::new(generation, TicketKind::Unrecorded)
    }

    #[inline]
    pub(crate) fn new(generation: Generation, kind: TicketKind) -> Self {
        let bits = (generation.0 << 2) | kind as u64;
        Ticket(NonZeroU64::new(bits).expect("a ticket kind is never 0"))
    }

    #[inline]
    pub(crate) fn generation(self) -> Generation {
        Generation(self.0.get() >> 2)
    }

    #[inline]
    pub(crate) fn kind(self) -> TicketKind {
        match self.0.get() & 3 {
            1 => TicketKind::Recorded,
            2 => TicketKind::Probe,
            _ => TicketKind::Unrecorded,
        }
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("generation", &self.generation())
            .field("kind", &self.kind())
            .finish()
    }
}

// ===== Probes =====

const COUNT_BITS: u32 = 12;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const TAKEN_ONE: u64 = 1;
const SUCC_ONE: u64 = 1 << COUNT_BITS;
const FAIL_ONE: u64 = 1 << (2 * COUNT_BITS);
const STARTED: u64 = 1 << (3 * COUNT_BITS);
const EPISODE_SHIFT: u32 = 3 * COUNT_BITS + 1;

// The counters hold every probe the configuration allows.
const _: () = assert!(MAX_HALF_OPEN_CALLS as u64 <= COUNT_MASK);

/// The probe counters of one half-open episode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Probes(pub(crate) u64);

impl Probes {
    /// No probe yet, in the episode of `generation`.
    pub(crate) fn fresh(generation: Generation) -> Self {
        Probes(generation.0 << EPISODE_SHIFT)
    }

    /// Whether these counters belong to the episode of `generation`.
    pub(crate) fn belongs_to(self, generation: Generation) -> bool {
        (self.0 >> EPISODE_SHIFT) == (generation.0 << EPISODE_SHIFT) >> EPISODE_SHIFT
    }

    /// Permits taken and not given back.
    pub(crate) fn taken(self) -> u32 {
        (self.0 & COUNT_MASK) as u32
    }

    pub(crate) fn succeeded(self) -> u32 {
        ((self.0 / SUCC_ONE) & COUNT_MASK) as u32
    }

    pub(crate) fn failed(self) -> u32 {
        ((self.0 / FAIL_ONE) & COUNT_MASK) as u32
    }

    /// Whether a probe was admitted in this episode.
    pub(crate) fn started(self) -> bool {
        self.0 & STARTED != 0
    }

    /// One more permit taken (the caller checked the limit).
    pub(crate) fn take(self) -> Self {
        Probes((self.0 + TAKEN_ONE) | STARTED)
    }

    /// One permit given back, nothing counted.
    pub(crate) fn give_back(self) -> Self {
        Probes(self.0 - TAKEN_ONE)
    }

    /// One probe succeeded (its permit stays taken: it was used).
    pub(crate) fn succeed(self) -> Self {
        Probes(self.0 + SUCC_ONE)
    }

    /// One probe failed (its permit stays taken: it was used).
    pub(crate) fn fail(self) -> Self {
        Probes(self.0 + FAIL_ONE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_and_each_transition_is_a_new_generation() {
        let mut word = StateWord::INITIAL;
        for (n, state) in State::ALL.into_iter().enumerate() {
            word = word.next(state);
            assert_eq!(word.state(), state);
            assert_eq!(word.generation(), Generation(n as u64 + 1));
        }
    }

    #[test]
    fn a_ticket_round_trips_a_generation_of_61_bits() {
        let generation = StateWord(!TAG_MASK).generation();
        for kind in [
            TicketKind::Recorded,
            TicketKind::Probe,
            TicketKind::Unrecorded,
        ] {
            let ticket = Ticket::new(generation, kind);
            assert_eq!((ticket.generation(), ticket.kind()), (generation, kind));
        }
    }

    #[test]
    fn probe_counters_stay_in_their_fields_up_to_the_configured_limit() {
        let generation = StateWord(!TAG_MASK).generation();
        let mut probes = Probes::fresh(generation);
        assert!(!probes.started());
        for _ in 0..MAX_HALF_OPEN_CALLS {
            probes = probes.take().succeed().fail();
        }
        assert_eq!(
            (probes.taken(), probes.succeeded(), probes.failed()),
            (
                MAX_HALF_OPEN_CALLS,
                MAX_HALF_OPEN_CALLS,
                MAX_HALF_OPEN_CALLS
            )
        );
        assert!(probes.started() && probes.belongs_to(generation));
        assert_eq!(probes.give_back().taken(), MAX_HALF_OPEN_CALLS - 1);
    }

    #[test]
    fn probes_of_another_episode_do_not_belong_to_it() {
        let word = StateWord::INITIAL.next(State::HalfOpen);
        let probes = Probes::fresh(word.generation());
        assert!(probes.belongs_to(word.generation()));
        assert!(!probes.belongs_to(word.next(State::HalfOpen).generation()));
    }
}
