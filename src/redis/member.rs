//! What the fleet does for one breaker (a shared breaker, or one key of a shared keyed layer):
//! publish its transitions, follow the fleet's state, its window and its probe lease. The same
//! code serves both tasks; each hands it the breaker and the `Link` to Redis.

use redis::{FromRedisValue, Value};
use tokio::time::Instant;

use super::codec::{Keys, Record, parse};
use super::link::{Link, SYNC_STRIDE, SyncArgs, millis};
use crate::State;
use crate::state::Breaker;
use crate::state::remote::{Observed, OpenUntil};
use crate::state::word::Generation;

pub(super) struct Member {
    pub(super) keys: Keys,
    /// The counts at the last tick, and the generation they were read under.
    last: Option<Observed>,
    /// The local generation whose state the fleet knows (published, or applied from the fleet).
    known: Option<(Generation, State)>,
    /// The fleet's epoch of counts (its last closing) last seen.
    epoch: Option<u64>,
    /// Whether this instance holds the probe lease of the current open interval's episode.
    owner: bool,
    /// No claim before then (one attempt per interval while another instance holds the lease).
    claim_not_before: Option<Instant>,
    warned_data: bool,
}

impl Member {
    pub(super) fn new(keys: Keys) -> Self {
        Member {
            keys,
            last: None,
            known: None,
            epoch: None,
            owner: false,
            claim_not_before: None,
            warned_data: false,
        }
    }

    /// Whether the breaker made a transition that the fleet does not know yet.
    pub(super) fn unpublished(&self, seen: &Observed) -> bool {
        self.known.map(|(generation, _)| generation) != Some(seen.generation)
    }

    /// Whether the fleet knows this breaker as open (a probe lease to claim, in time).
    #[cfg(feature = "keyed")]
    pub(super) fn known_open(&self) -> bool {
        matches!(self.known, Some((_, State::Open)))
    }

    fn know(&mut self, breaker: &Breaker) {
        let seen = breaker.observe();
        self.known = Some((seen.generation, seen.state));
    }

    // ===== the local breaker's transitions =====

    /// Publishes the local breaker's transition that the fleet does not know yet, if any.
    pub(super) async fn local(&mut self, link: &mut Link, breaker: &Breaker) {
        let seen = breaker.observe();
        let previous = self.known.map(|(_, state)| state);
        if !self.unpublished(&seen) {
            return;
        }
        match seen.state {
            State::Open => {
                self.owner = false;
                self.claim_not_before = None;
                let (Some(until), Some(clock)) = (seen.open_until, link.clock) else {
                    return; // never reached Redis: published at the next tick that does
                };
                let until_ms = clock.server(until).to_string();
                let ttl = millis(link.settings.key_ttl).to_string();
                let scripts = link.scripts.clone();
                let mut invocation = scripts.open.prepare_invoke();
                invocation
                    .key(self.keys.state())
                    .key(self.keys.probe())
                    .arg(&*link.origin)
                    .arg(until_ms)
                    .arg(ttl)
                    .arg(self.keys.channel())
                    .arg(longest_open_ms(link, breaker));
                if let Some(reply) = link.invoke("open", invocation).await {
                    self.known = Some((seen.generation, seen.state));
                    self.fleet_reply(link, breaker, &reply, 1);
                }
            }
            State::Closed if matches!(previous, Some(State::Open | State::HalfOpen)) => {
                // From HalfOpen: the probes succeeded. From Open: an operator's reset, which
                // resets the fleet.
                let reset = if previous == Some(State::Open) {
                    "1"
                } else {
                    "0"
                };
                let ttl = millis(link.settings.key_ttl).to_string();
                let scripts = link.scripts.clone();
                let mut invocation = scripts.close.prepare_invoke();
                invocation
                    .key(self.keys.state())
                    .key(self.keys.probe())
                    .arg(&*link.origin)
                    .arg(ttl)
                    .arg(self.keys.channel())
                    .arg(reset)
                    .arg(longest_open_ms(link, breaker));
                if let Some(reply) = link.invoke("close", invocation).await {
                    self.known = Some((seen.generation, seen.state));
                    self.fleet_reply(link, breaker, &reply, 1);
                }
            }
            State::HalfOpen if !self.owner && link.reachable() => {
                // The interval ended before this instance could claim the lease (Redis slow):
                // claim now, and go back to Open if another instance holds it.
                self.known = Some((seen.generation, seen.state));
                self.claim(link, breaker).await;
            }
            _ => self.known = Some((seen.generation, seen.state)),
        }
    }

    // ===== the fleet's state =====

    /// This tick's part of the sync script: the counts recorded while Closed since the last tick.
    pub(super) fn sync_args(&mut self, link: &Link, breaker: &Breaker) -> SyncArgs {
        let seen = breaker.observe();
        let delta = match self.last {
            Some(last) if last.generation == seen.generation && seen.state == State::Closed => (
                seen.calls.saturating_sub(last.calls),
                seen.failed.saturating_sub(last.failed),
                seen.slow.saturating_sub(last.slow),
            ),
            _ => (0, 0, 0),
        };
        self.last = Some(seen);
        SyncArgs {
            state: self.keys.state(),
            window: self.keys.window(),
            delta,
            longest_ms: longest_open_ms(link, breaker),
        }
    }

    /// Whether the breaker recorded outcomes since the last tick (or has not had one yet).
    #[cfg(feature = "keyed")]
    pub(super) fn active(&self, seen: &Observed) -> bool {
        match self.last {
            Some(last) => last.generation != seen.generation || last.calls != seen.calls,
            None => true,
        }
    }

    /// Follows the fleet's state and window as the sync script answered them at `index`.
    pub(super) async fn synced(
        &mut self,
        link: &mut Link,
        breaker: &Breaker,
        reply: &[Value],
        index: usize,
    ) {
        let record = self.fleet_reply(link, breaker, reply, index);
        let counts: Vec<i64> = reply
            .iter()
            .skip(index + 1)
            .take(SYNC_STRIDE - 1)
            .map(|v| i64::from_redis_value_ref(v).unwrap_or(-1))
            .collect();
        if counts.first().is_some_and(|&bad| bad != 0) {
            self.malformed(
                breaker,
                "window counts",
                &"not non-negative integers in hashes",
            );
        }
        let (calls, failed, slow) = match counts[..] {
            [_, c, f, s] if c >= 0 && f >= 0 && s >= 0 => (c as u64, f as u64, s as u64),
            _ => return,
        };
        let fleet_open = matches!(record, Some(Record::Open { .. }));
        if !fleet_open
            && breaker.observe().state == State::Closed
            && breaker.trips_on(calls, failed, slow)
            && breaker.trip_from_fleet()
        {
            tracing::warn!(
                breaker = name(breaker),
                key = breaker.key().map(|k| &**k),
                calls,
                failed,
                slow,
                "the fleet's window trips the breaker"
            );
            self.local(link, breaker).await; // publishes the opening at once
        }
    }

    /// Reads the record at `reply[index]` and follows it; returns it.
    fn fleet_reply(
        &mut self,
        link: &Link,
        breaker: &Breaker,
        reply: &[Value],
        index: usize,
    ) -> Option<Record> {
        let value = match reply.get(index) {
            Some(Value::BulkString(bytes)) => bytes.clone(),
            Some(Value::SimpleString(text)) => text.clone().into_bytes(),
            _ => return None,
        };
        if value.is_empty() {
            return None; // no state: closed, no opening known
        }
        match parse(&value) {
            Ok(record) => self.follow(link, breaker, &record).then_some(record),
            Err(reason) => {
                self.malformed(breaker, "state", &reason);
                None
            }
        }
    }

    fn malformed(&mut self, breaker: &Breaker, what: &str, reason: &dyn std::fmt::Display) {
        if !self.warned_data {
            self.warned_data = true;
            tracing::warn!(
                breaker = name(breaker),
                key = %self.keys.prefix,
                what,
                reason = %reason,
                "ignoring data under the fleet's keys that is not ours"
            );
        }
    }

    /// A record published on the breaker's channel.
    pub(super) fn message(&mut self, link: &Link, breaker: &Breaker, payload: &[u8]) {
        match parse(payload) {
            Ok(record) => {
                self.follow(link, breaker, &record);
            }
            Err(reason) => self.malformed(breaker, "published state", &reason),
        }
    }

    /// Applies the fleet's state to the local breaker; `false` if the record is refused as
    /// foreign (an opening further ahead than this kind of breaker ever opens).
    fn follow(&mut self, link: &Link, breaker: &Breaker, record: &Record) -> bool {
        let Some(clock) = link.clock else {
            return true;
        };
        match *record {
            Record::Open { until_ms, .. } => {
                let now_ms = clock.server(Instant::now());
                if until_ms <= now_ms {
                    return true; // that interval is over: its episode decides
                }
                if until_ms - now_ms > longest_open_ms(link, breaker) {
                    let reason = "an opening further ahead than this breaker ever opens";
                    self.malformed(breaker, "state", &reason);
                    return false;
                }
                if breaker.open_until(clock.local(until_ms)) == OpenUntil::Opened {
                    // Known: applied from the fleet, not to be published back.
                    self.know(breaker);
                    self.owner = false;
                    self.claim_not_before = None;
                }
            }
            Record::Closed { since_ms, .. } => {
                let newer =
                    self.epoch.is_some_and(|epoch| epoch != since_ms) || self.epoch.is_none();
                self.epoch = Some(since_ms);
                if newer && breaker.close_from_fleet() {
                    self.know(breaker);
                    self.last = None;
                }
            }
        }
        true
    }

    // ===== the probe lease =====

    /// When to claim the probe lease: a little before the local open interval ends (by the
    /// tick interval), unless this instance holds it or Redis is unreachable.
    pub(super) fn claim_at(&self, link: &Link, breaker: &Breaker) -> Option<Instant> {
        if self.owner || !link.reachable() {
            return None;
        }
        let seen = breaker.observe();
        if self.unpublished(&seen) {
            return None; // the opening is not published yet
        }
        let until = seen.open_until?;
        let at = until.checked_sub(link.settings.interval).unwrap_or(until);
        Some(match self.claim_not_before {
            Some(not_before) => at.max(not_before),
            None => at,
        })
    }

    pub(super) async fn claim(&mut self, link: &mut Link, breaker: &Breaker) {
        self.claim_not_before = Some(Instant::now() + link.settings.interval);
        let lease = millis(link.settings.probe_lease).to_string();
        let scripts = link.scripts.clone();
        let mut invocation = scripts.claim.prepare_invoke();
        invocation
            .key(self.keys.state())
            .key(self.keys.probe())
            .arg(&*link.origin)
            .arg(lease);
        let Some(reply) = link.invoke("claim", invocation).await else {
            return; // unreachable: this instance probes on its own
        };
        let record = self.fleet_reply(link, breaker, &reply, 1);
        if matches!(record, Some(Record::Closed { .. })) {
            return; // the fleet closed meanwhile (followed above)
        }
        let granted = reply.get(2).and_then(|v| i64::from_redis_value_ref(v).ok()) == Some(1);
        let left = reply
            .get(3)
            .and_then(|v| i64::from_redis_value_ref(v).ok())
            .unwrap_or(0);
        if granted {
            self.owner = true;
            tracing::debug!(
                breaker = name(breaker),
                key = breaker.key().map(|k| &**k),
                "this instance probes for the fleet"
            );
            return;
        }
        let (Some(clock), Ok(left)) = (link.clock, u64::try_from(left)) else {
            return;
        };
        // Another instance probes: stay open until its lease ends (or its result arrives).
        let left = left.min(millis(link.settings.probe_lease));
        let until = clock.local(clock.server_ms.saturating_add(left));
        if breaker.open_until(until) == OpenUntil::Opened {
            self.know(breaker);
        }
    }
}

fn name(breaker: &Breaker) -> &str {
    breaker.name().map_or("", |n| n)
}

/// How far ahead an opening of this breaker's kind can be: its longest open interval and a
/// probe lease, with a minute of slack for instances configured a little differently.
fn longest_open_ms(link: &Link, breaker: &Breaker) -> u64 {
    let longest = breaker.longest_open() + link.settings.probe_lease;
    millis(longest).saturating_add(60_000)
}
