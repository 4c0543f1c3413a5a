//! The throttle's random draws: cheap, unshared by default, reproducible when seeded.
//!
//! Unseeded, each thread draws from its own xorshift generator (a thread-local, seeded once per
//! thread from std's random hasher keys), so that concurrent calls share no cache line for it.
//! Seeded ([`AdaptiveThrottle::seed`](crate::AdaptiveThrottle::seed)), the breaker draws from one
//! shared splitmix64 sequence: one atomic add per draw, and on a single-threaded runtime the same
//! calls make the same draws on every run, which tests and simulations need.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// A draw in `[0, 1)` from 53 random bits.
fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// splitmix64's output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

thread_local! {
    // `const` with no destructor: usable while the thread's other thread-locals are destroyed.
    static XORSHIFT: Cell<u64> = const { Cell::new(0) };
}

/// Where a breaker's draws come from.
#[derive(Debug)]
pub(crate) enum Draws {
    /// The calling thread's generator.
    PerThread,
    /// One splitmix64 sequence for the breaker.
    Seeded(AtomicU64),
}

impl Draws {
    pub(crate) fn new(seed: Option<u64>) -> Self {
        match seed {
            Some(seed) => Draws::Seeded(AtomicU64::new(seed)),
            None => Draws::PerThread,
        }
    }

    /// A uniform draw in `[0, 1)`.
    #[inline]
    pub(crate) fn next(&self) -> f64 {
        match self {
            // Relaxed: any order of the draws is a valid sequence; each is taken once.
            Draws::Seeded(state) => unit(mix(state
                .fetch_add(GOLDEN, Ordering::Relaxed)
                .wrapping_add(GOLDEN))),
            Draws::PerThread => unit(thread_draw()),
        }
    }
}

/// The next value of the calling thread's xorshift64* generator.
fn thread_draw() -> u64 {
    let mut x = XORSHIFT.get();
    if x == 0 {
        x = thread_seed();
    }
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    XORSHIFT.set(x);
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

#[cold]
fn thread_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    // xorshift's state must not be zero.
    mix(bits) | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deciles(draws: &Draws) -> [u32; 10] {
        let mut deciles = [0u32; 10];
        for _ in 0..10_000 {
            let u = draws.next();
            assert!((0.0..1.0).contains(&u), "{u}");
            deciles[(u * 10.0) as usize] += 1;
        }
        deciles
    }

    #[test]
    fn both_generators_spread_their_draws_evenly_over_0_to_1() {
        for draws in [Draws::new(None), Draws::new(Some(7)), Draws::new(Some(0))] {
            let d = deciles(&draws);
            assert!(d.iter().all(|d| (850..=1150).contains(d)), "{d:?}");
        }
    }

    #[test]
    fn a_seeded_generator_repeats_its_sequence() {
        let (a, b) = (Draws::new(Some(42)), Draws::new(Some(42)));
        let first: Vec<f64> = (0..5).map(|_| a.next()).collect();
        let second: Vec<f64> = (0..5).map(|_| b.next()).collect();
        assert_eq!(first, second);
        assert_ne!(first[0], first[1]);
    }
}
