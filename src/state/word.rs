//! The state word: one `AtomicU64` that holds the state, its generation and, while half-open,
//! the probe counters, so that admitting a probe, counting its result and deciding the episode are
//! each a single compare-and-swap on one word, tied to the generation that admitted the probe.
//!
//! ```text
//!  63            39 38      27 26      15 14       3 2   0
//! +----------------+----------+----------+----------+-----+
//! | generation (25)| fail (12)| succ (12)| taken(12)| tag |
//! +----------------+----------+----------+----------+-----+
//! ```
//!
//! The generation wraps after 2^25 transitions; a call would have to stay in flight across that
//! many transitions for its stale result to be taken for a current one.

use crate::State;

const TAG_BITS: u32 = 3;
const COUNT_BITS: u32 = 12;
const TAKEN_SHIFT: u32 = TAG_BITS;
const SUCC_SHIFT: u32 = TAKEN_SHIFT + COUNT_BITS;
const FAIL_SHIFT: u32 = SUCC_SHIFT + COUNT_BITS;
const GEN_SHIFT: u32 = FAIL_SHIFT + COUNT_BITS;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;

/// The largest number of probes per half-open episode that the counters can hold.
pub(crate) const MAX_PROBES: u32 = COUNT_MASK as u32;

/// One probe admitted (added to the word).
pub(crate) const TAKEN_ONE: u64 = 1 << TAKEN_SHIFT;
/// One probe succeeded.
pub(crate) const SUCC_ONE: u64 = 1 << SUCC_SHIFT;
/// One probe failed.
pub(crate) const FAIL_ONE: u64 = 1 << FAIL_SHIFT;

/// The generation of a state: changes with every transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Generation(u32);

impl Generation {
    /// The generation as a number (to pack it with other fields).
    pub(crate) const fn bits(self) -> u32 {
        self.0
    }

    /// The inverse of [`bits`](Self::bits).
    pub(crate) const fn from_bits(bits: u32) -> Self {
        Generation(bits)
    }
}

pub(crate) const fn tag_of(state: State) -> u64 {
    match state {
        State::Closed => 0,
        State::Open => 1,
        State::HalfOpen => 2,
        State::ForcedOpen => 3,
        State::Disabled => 4,
        State::MetricsOnly => 5,
    }
}

/// A decoded state word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Word(pub(crate) u64);

impl Word {
    /// The first word of a breaker: Closed, generation 0.
    pub(crate) const INITIAL: Word = Word(0);

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
        Generation((self.0 >> GEN_SHIFT) as u32)
    }

    /// Probes admitted and not returned in this half-open episode.
    pub(crate) fn taken(self) -> u32 {
        ((self.0 >> TAKEN_SHIFT) & COUNT_MASK) as u32
    }

    /// Probes that succeeded in this half-open episode.
    pub(crate) fn succeeded(self) -> u32 {
        ((self.0 >> SUCC_SHIFT) & COUNT_MASK) as u32
    }

    /// Probes that failed in this half-open episode.
    pub(crate) fn failed(self) -> u32 {
        ((self.0 >> FAIL_SHIFT) & COUNT_MASK) as u32
    }

    /// The word of the next generation in `state`, with cleared probe counters.
    pub(crate) fn next(self, state: State) -> Word {
        let generation = (self.0 >> GEN_SHIFT).wrapping_add(1) & ((1 << (64 - GEN_SHIFT)) - 1);
        Word((generation << GEN_SHIFT) | tag_of(state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_fields_round_trip() {
        let w = Word::INITIAL.next(State::HalfOpen);
        assert_eq!(w.state(), State::HalfOpen);
        assert_eq!(w.generation(), Generation(1));
        let w = Word(w.0 + 3 * TAKEN_ONE + 2 * SUCC_ONE + FAIL_ONE);
        assert_eq!((w.taken(), w.succeeded(), w.failed()), (3, 2, 1));
        assert_eq!(w.generation(), Generation(1));
        let w = Word(w.0 + MAX_PROBES as u64 * FAIL_ONE - FAIL_ONE);
        assert_eq!(w.failed(), MAX_PROBES);
        assert_eq!(w.generation(), Generation(1));
    }

    #[test]
    fn generation_wraps_without_touching_the_tag() {
        let mut w = Word(!TAG_MASK);
        w = w.next(State::Open);
        assert_eq!(w.generation(), Generation(0));
        assert_eq!(w.state(), State::Open);
    }

    #[test]
    fn every_state_round_trips() {
        for s in [
            State::Closed,
            State::Open,
            State::HalfOpen,
            State::ForcedOpen,
            State::Disabled,
            State::MetricsOnly,
        ] {
            assert_eq!(Word::INITIAL.next(s).state(), s);
        }
    }
}
