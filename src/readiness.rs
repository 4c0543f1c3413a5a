//! The readiness mode, for load balancers: `poll_ready` waits while the circuit is open.
//!
//! By default an open breaker is ready and rejects each call at once (with an error, a fallback
//! or a response mode): that is what a caller wants, who would rather hear "no" now than wait.
//! A balancer wants something else. `tower::balance::p2c` picks among *ready* endpoints, and
//! drops an endpoint whose `poll_ready` fails for good; an open endpoint that is ready gets
//! picked and rejects its share of the calls. With
//! [`CircuitBreakerLayer::pending_while_open`](crate::CircuitBreakerLayer::pending_while_open),
//! `poll_ready` returns `Pending` while the circuit rejects (Open, ForcedOpen, and HalfOpen with
//! every probe permit taken), without polling the inner service, and wakes the task when a probe
//! becomes possible: at the end of the open interval (on tokio's timer), when a probe permit
//! comes back, or at any transition. The balancer routes around the endpoint meanwhile.
//!
//! # Which mode
//!
//! * **Error** (the default): a caller that must answer at once; handle [`Rejected`](crate::error::Rejected).
//! * **Response** (`with_http_responses`, `with_grpc_responses`): the same, for servers whose
//!   callers are HTTP or gRPC clients (a 503, an UNAVAILABLE).
//! * **Readiness** (`pending_while_open`): an endpoint among others behind a balancer, which
//!   chooses among ready ones. Alone, a waiting `poll_ready` only delays callers: put
//!   `tower::load_shed` in front to turn the wait into an immediate `Overloaded`, or a timeout.
//!   Behind a `tower::buffer::Buffer`, the buffer's worker waits for the circuit and every
//!   caller of the buffer waits with it (head-of-line): that is the point for one endpoint, but
//!   put the buffer *under* the breaker if its callers must not wait.
//!
//! # A panic threshold
//!
//! When most endpoints are open at once, waiting for all of them turns a partial outage into a
//! total one. Breakers that share a [`PanicGroup`] stop gating while more than its threshold of
//! the group (half, by default) is open: their calls go through to the inner service again,
//! until the fraction falls back. Open, half-open and forced-open members count as open. Calls
//! let through this way are not recorded by an open member (its window stays as it was when it
//! tripped, as for any open breaker): the member still probes and closes on its own schedule.
//! A member an operator forced open is let through too, while the group panics. A `warn` tracing
//! event says when a group starts to panic, an `info` one when a member's poll
//! finds that it stopped.
//!
//! ```
//! use std::time::Duration;
//! use tower::{Layer, ServiceExt, service_fn};
//! use tower_circuit_breaker::CircuitBreakerLayer;
//! use tower_circuit_breaker::readiness::PanicGroup;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let group = PanicGroup::new(0.5)?;
//! let endpoint = |name: &'static str| {
//!     CircuitBreakerLayer::builder()
//!         .name(name)
//!         .open_duration(Duration::from_secs(5))
//!         .build()
//!         .map(|layer| layer.pending_while_open().in_panic_group(&group))
//! };
//! let (a, b) = (endpoint("a")?, endpoint("b")?);
//! a.handle().force_open();
//! assert!(!group.is_panicking(), "one of two is not more than half");
//! b.handle().force_open();
//! assert!(group.is_panicking());
//! // Both open, the group panics: calls go through.
//! let svc = a.layer(service_fn(|_: ()| async { Ok::<_, std::io::Error>("through") }));
//! assert_eq!(svc.oneshot(()).await?, "through");
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};

use crate::error::ConfigError;
use crate::state::Breaker;
use crate::sync::{caught, raise};
use crate::{CircuitBreakerLayer, State};

/// Breakers that stop gating together while more than a fraction of them is open. Cloning it
/// gives another handle to the same group.
#[derive(Clone)]
pub struct PanicGroup {
    shared: Arc<Group>,
}

struct Group {
    threshold: f64,
    members: RwLock<Vec<Weak<Breaker>>>,
    panicking: AtomicBool,
}

impl PanicGroup {
    /// A group that panics while more than `threshold` of its members are open; `threshold` in
    /// `(0, 1]`. Envoy's and Finagle's equivalents default to half.
    pub fn new(threshold: f64) -> Result<Self, ConfigError> {
        if !(threshold > 0.0 && threshold <= 1.0) {
            return Err(ConfigError::new("panic_threshold", threshold, "(0, 1]"));
        }
        Ok(PanicGroup {
            shared: Arc::new(Group {
                threshold,
                members: RwLock::new(Vec::new()),
                panicking: AtomicBool::new(false),
            }),
        })
    }

    /// Whether more than the threshold of the group's members is open now (Open, HalfOpen or
    /// ForcedOpen, as stored: reading it changes no state).
    pub fn is_panicking(&self) -> bool {
        let members = self.members();
        let alive = members.len();
        // Half-open counts with open: a member probing is not healthy yet, and counting it
        // healthy would make the group flicker in and out of panic at every probe.
        let open = members
            .iter()
            .filter(|member| {
                matches!(
                    member.stored_state(),
                    State::Open | State::ForcedOpen | State::HalfOpen
                )
            })
            .count();
        // Dropped here, with no lock held: the last reference to a member drops its breaker.
        drop(members);
        let panicking = alive > 0 && open as f64 > self.shared.threshold * alive as f64;
        if self.shared.panicking.swap(panicking, Ordering::AcqRel) != panicking {
            if panicking {
                tracing::warn!(
                    open,
                    members = alive,
                    "panic group: too many open, gates lifted"
                );
            } else {
                tracing::info!(open, members = alive, "panic group recovered: gates back");
            }
        }
        panicking
    }

    /// The members still alive, taken out of the lock.
    fn members(&self) -> Vec<Arc<Breaker>> {
        let members = self
            .shared
            .members
            .read()
            .unwrap_or_else(|e| e.into_inner());
        members.iter().filter_map(Weak::upgrade).collect()
    }

    /// Puts `breaker` in this group, unless it is in a group already.
    fn join(&self, breaker: &Arc<Breaker>) {
        if !breaker.join_group(self.clone()) {
            return;
        }
        let mut members = self
            .shared
            .members
            .write()
            .unwrap_or_else(|e| e.into_inner());
        members.retain(|m| m.strong_count() > 0);
        members.push(Arc::downgrade(breaker));
    }

    /// Wakes the tasks waiting on every member: a member's transition, or its departure, may
    /// change whether the group panics. Their services left their wakers with their own breaker
    /// before reading the group, so none misses a change it did not see.
    pub(crate) fn wake_members(&self) {
        let mut panic = None;
        for member in self.members() {
            caught(&mut panic, || member.waiters().wake_all());
        }
        raise(panic);
    }
}

impl Default for PanicGroup {
    /// A group that panics while more than half of it is open.
    fn default() -> Self {
        PanicGroup::new(0.5).expect("one half is in range")
    }
}

impl fmt::Debug for PanicGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PanicGroup")
            .field("threshold", &self.shared.threshold)
            .field("panicking", &self.shared.panicking.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The readiness mode: a gated service waits, rather than reject, while its breaker rejects.
#[derive(Clone, Debug, Default)]
pub(crate) struct Gate;

impl Gate {
    /// Whether a call the breaker rejects goes through anyway: its panic group (the breaker's,
    /// whichever layer put it there) panics.
    pub(crate) fn lets_through(&self, breaker: &Breaker) -> bool {
        breaker.group().is_some_and(PanicGroup::is_panicking)
    }
}

impl<C, F> CircuitBreakerLayer<C, F> {
    /// The readiness mode: `poll_ready` returns `Pending` while the circuit rejects, and wakes
    /// when a probe becomes possible; see the [module docs](crate::readiness).
    ///
    /// ```
    /// use std::time::Duration;
    /// use std::task::Poll;
    /// use tower::{Layer, Service, service_fn};
    /// use tower_circuit_breaker::CircuitBreakerLayer;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let layer = CircuitBreakerLayer::builder().build().unwrap().pending_while_open();
    /// let mut svc = layer.layer(service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) }));
    /// layer.handle().force_open();
    /// let waker = std::task::Waker::noop();
    /// assert!(svc.poll_ready(&mut std::task::Context::from_waker(&waker)).is_pending());
    /// layer.handle().reset();
    /// assert!(matches!(svc.poll_ready(&mut std::task::Context::from_waker(&waker)), Poll::Ready(Ok(()))));
    /// # }
    /// ```
    pub fn pending_while_open(mut self) -> Self {
        self.gate.get_or_insert_with(Gate::default);
        self
    }

    /// Puts this breaker in `group` (and in the readiness mode): while more than the group's
    /// threshold of its members is open, none of them gates. A breaker is in one group at most,
    /// the first it joins through any of its layers: a later call puts this layer in the
    /// readiness mode, and the breaker stays where it is.
    pub fn in_panic_group(mut self, group: &PanicGroup) -> Self {
        self.gate.get_or_insert_with(Gate::default);
        group.join(self.breaker.breaker());
        self
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn breaker() -> Arc<Breaker> {
        Arc::new(CircuitBreakerLayer::builder().breaker_for_tests())
    }

    /// Members come and go for a process's life (a keyed layer's breakers): a member that joins
    /// clears the group of those that went away, so the group holds no more than are alive.
    #[test]
    fn a_member_that_joins_clears_the_group_of_members_that_went_away() {
        let group = PanicGroup::default();
        let kept = breaker();
        group.join(&kept);
        for _ in 0..10 {
            group.join(&breaker()); // dropped at once
        }
        let last = breaker();
        group.join(&last);
        let members = group.shared.members.read().unwrap().len();
        assert_eq!(members, 2, "the two alive");
    }
}
