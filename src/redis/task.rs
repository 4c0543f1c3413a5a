//! The background task of one shared breaker: it publishes the breaker's counts and transitions,
//! reads the fleet's, and applies them. Nothing here runs on a call's path; the task talks to
//! the breaker through the crate-internal hooks of `state/remote.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use redis::aio::{ConnectionManager, PubSubStream};
use redis::{Client, FromRedisValue, Value};
use tokio::time::Instant;

use super::Settings;
use super::codec::{Keys, Record, parse};
use super::script::Scripts;
use crate::State;
use crate::state::Breaker;
use crate::state::remote::{Observed, OpenUntil};
use crate::state::word::Generation;

/// What the task shares with its [`Shared`](super::Shared) guard.
#[derive(Debug, Default)]
pub(super) struct Status {
    pub(super) reachable: AtomicBool,
    /// Redis commands sent (scripts, subscriptions), for the figures of commands per second.
    pub(super) commands: AtomicU64,
}

/// The Redis server's clock, seen from this instance: the server's time `server_ms` was read at
/// about `at` (the middle of the round trip that answered it).
#[derive(Clone, Copy, Debug)]
struct ServerClock {
    server_ms: u64,
    at: Instant,
}

impl ServerClock {
    fn local(self, ms: u64) -> Instant {
        if ms >= self.server_ms {
            let ahead = Duration::from_millis(ms - self.server_ms);
            // Deadlines are checked against the breaker's longest opening before they get here.
            self.at.checked_add(ahead).unwrap_or(self.at)
        } else {
            self.at
                .checked_sub(Duration::from_millis(self.server_ms - ms))
                .unwrap_or(self.at)
        }
    }

    fn server(self, at: Instant) -> u64 {
        if at >= self.at {
            let ahead = u64::try_from(at.duration_since(self.at).as_millis()).unwrap_or(u64::MAX);
            self.server_ms.saturating_add(ahead)
        } else {
            let behind = u64::try_from(self.at.duration_since(at).as_millis()).unwrap_or(u64::MAX);
            self.server_ms.saturating_sub(behind)
        }
    }
}

pub(super) struct Task {
    pub(super) breaker: Arc<Breaker>,
    pub(super) keys: Keys,
    pub(super) client: Client,
    pub(super) connection: ConnectionManager,
    pub(super) settings: Settings,
    pub(super) origin: Arc<str>,
    pub(super) status: Arc<Status>,
    pub(super) scripts: Arc<Scripts>,
    /// The fleet window: bucket length and count.
    pub(super) bucket_ms: u64,
    pub(super) buckets: u64,
    clock: Option<ServerClock>,
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
    /// Whether unreachability was logged (once, until Redis answers again).
    warned_down: bool,
    warned_data: bool,
}

impl Task {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        breaker: Arc<Breaker>,
        keys: Keys,
        client: Client,
        connection: ConnectionManager,
        settings: Settings,
        origin: Arc<str>,
        status: Arc<Status>,
        scripts: Arc<Scripts>,
        bucket_ms: u64,
        buckets: u64,
    ) -> Self {
        Task {
            breaker,
            keys,
            client,
            connection,
            settings,
            origin,
            status,
            scripts,
            bucket_ms,
            buckets,
            clock: None,
            last: None,
            known: None,
            epoch: None,
            owner: false,
            claim_not_before: None,
            warned_down: false,
            warned_data: false,
        }
    }

    fn name(&self) -> &str {
        self.breaker.name().map_or("", |n| n)
    }

    pub(super) async fn run(mut self) {
        let mut events = self.breaker.subscribe();
        let mut ticks = tokio::time::interval(self.settings.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut messages: Option<PubSubStream> = None;
        loop {
            let claim_at = self.claim_at();
            tokio::select! {
                _ = ticks.tick() => {
                    self.tick().await;
                    if messages.is_none() && self.reachable() {
                        messages = self.subscribe().await;
                        if messages.is_some() {
                            // Whatever was published while unsubscribed is in the state key.
                            self.tick().await;
                        }
                    }
                }
                event = events.next() => match event {
                    Some(_) => self.local().await,
                    None => return,
                },
                message = next(&mut messages) => match message {
                    Some(message) => self.message(message),
                    None => messages = None,
                },
                _ = sleep_until(claim_at), if claim_at.is_some() => self.claim().await,
            }
        }
    }

    fn reachable(&self) -> bool {
        self.status.reachable.load(Ordering::Relaxed)
    }

    /// A failed command: the first failure after a success is logged (warn), the others not.
    fn down(&mut self, what: &str, error: &dyn std::fmt::Display) {
        self.status.reachable.store(false, Ordering::Relaxed);
        if !self.warned_down {
            self.warned_down = true;
            tracing::warn!(
                breaker = self.name(),
                command = what,
                error = %error,
                "fleet state unreachable; the breaker works on its local state until it is back"
            );
        }
    }

    fn up(&mut self) {
        self.status.reachable.store(true, Ordering::Relaxed);
        if self.warned_down {
            self.warned_down = false;
            tracing::info!(breaker = self.name(), "fleet state reachable again");
        }
    }

    /// Runs `script` with a deadline; `None` (logged once) when Redis does not answer in time.
    async fn invoke(
        &mut self,
        what: &str,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Option<Vec<Value>> {
        self.status.commands.fetch_add(1, Ordering::Relaxed);
        let sent = Instant::now();
        let reply = tokio::time::timeout(
            self.settings.timeout,
            invocation.invoke_async::<Vec<Value>>(&mut self.connection),
        )
        .await;
        match reply {
            Ok(Ok(values)) => {
                let received = Instant::now();
                self.up();
                if let Some(server_ms) = values
                    .first()
                    .and_then(|v| i64::from_redis_value_ref(v).ok())
                {
                    let half = received.duration_since(sent) / 2;
                    self.clock = Some(ServerClock {
                        server_ms: u64::try_from(server_ms).unwrap_or(0),
                        at: sent + half,
                    });
                }
                Some(values)
            }
            Ok(Err(error)) => {
                self.down(what, &error);
                None
            }
            Err(_) => {
                self.down(what, &"no answer within the timeout");
                None
            }
        }
    }

    async fn subscribe(&mut self) -> Option<PubSubStream> {
        self.status.commands.fetch_add(1, Ordering::Relaxed);
        let channel = self.keys.channel();
        let client = self.client.clone();
        let subscribed = tokio::time::timeout(self.settings.timeout, async move {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok::<_, redis::RedisError>(pubsub.into_on_message())
        })
        .await;
        match subscribed {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(error)) => {
                self.down("SUBSCRIBE", &error);
                None
            }
            Err(_) => {
                self.down("SUBSCRIBE", &"no answer within the timeout");
                None
            }
        }
    }

    // ===== the local breaker's transitions =====

    /// Publishes the local breaker's transition that the fleet does not know yet, if any.
    async fn local(&mut self) {
        let seen = self.breaker.observe();
        let previous = self.known.map(|(_, state)| state);
        if self.known.map(|(generation, _)| generation) == Some(seen.generation) {
            return;
        }
        match seen.state {
            State::Open => {
                self.owner = false;
                self.claim_not_before = None;
                let (Some(until), Some(clock)) = (seen.open_until, self.clock) else {
                    return; // never reached Redis: published at the next tick that does
                };
                let until_ms = clock.server(until).to_string();
                let ttl = millis(self.settings.key_ttl).to_string();
                let (state, probe, channel) =
                    (self.keys.state(), self.keys.probe(), self.keys.channel());
                let scripts = self.scripts.clone();
                let mut invocation = scripts.open.prepare_invoke();
                invocation
                    .key(state)
                    .key(probe)
                    .arg(&*self.origin)
                    .arg(until_ms)
                    .arg(ttl)
                    .arg(channel)
                    .arg(self.longest_open_ms());
                if let Some(reply) = self.invoke("open", invocation).await {
                    self.known = Some((seen.generation, seen.state));
                    self.fleet_reply(&reply, 1);
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
                let ttl = millis(self.settings.key_ttl).to_string();
                let (state, probe, channel) =
                    (self.keys.state(), self.keys.probe(), self.keys.channel());
                let scripts = self.scripts.clone();
                let mut invocation = scripts.close.prepare_invoke();
                invocation
                    .key(state)
                    .key(probe)
                    .arg(&*self.origin)
                    .arg(ttl)
                    .arg(channel)
                    .arg(reset)
                    .arg(self.longest_open_ms());
                if let Some(reply) = self.invoke("close", invocation).await {
                    self.known = Some((seen.generation, seen.state));
                    self.fleet_reply(&reply, 1);
                }
            }
            State::HalfOpen if !self.owner && self.reachable() => {
                // The interval ended before this instance could claim the lease (Redis slow):
                // claim now, and go back to Open if another instance holds it.
                self.known = Some((seen.generation, seen.state));
                self.claim().await;
            }
            _ => self.known = Some((seen.generation, seen.state)),
        }
    }

    // ===== the fleet's state =====

    /// A tick: publishes the counts since the last one, reads the fleet's state and window, and
    /// follows them.
    async fn tick(&mut self) {
        self.local().await;
        let seen = self.breaker.observe();
        let delta = match self.last {
            Some(last) if last.generation == seen.generation && seen.state == State::Closed => (
                seen.calls.saturating_sub(last.calls),
                seen.failed.saturating_sub(last.failed),
                seen.slow.saturating_sub(last.slow),
            ),
            _ => (0, 0, 0),
        };
        self.last = Some(seen);
        let bucket_ttl = (self.bucket_ms * (self.buckets + 2)).to_string();
        let ttl = millis(self.settings.key_ttl).to_string();
        let state = self.keys.state();
        let window = self.keys.window();
        let scripts = self.scripts.clone();
        let mut invocation = scripts.sync.prepare_invoke();
        invocation
            .key(state)
            .arg(window)
            .arg(self.bucket_ms)
            .arg(self.buckets)
            .arg(delta.0)
            .arg(delta.1)
            .arg(delta.2)
            .arg(bucket_ttl)
            .arg(ttl)
            .arg(self.longest_open_ms());
        let Some(reply) = self.invoke("sync", invocation).await else {
            return;
        };
        let record = self.fleet_reply(&reply, 1);
        let counts: Vec<i64> = reply
            .iter()
            .skip(2)
            .map(|v| i64::from_redis_value_ref(v).unwrap_or(-1))
            .collect();
        if counts.first().is_some_and(|&bad| bad != 0) {
            self.malformed("window counts", &"not non-negative integers in hashes");
        }
        let (calls, failed, slow) = match counts[..] {
            [_, c, f, s] if c >= 0 && f >= 0 && s >= 0 => (c as u64, f as u64, s as u64),
            _ => return,
        };
        let fleet_open = matches!(record, Some(Record::Open { .. }));
        if !fleet_open
            && self.breaker.observe().state == State::Closed
            && self.breaker.trips_on(calls, failed, slow)
            && self.breaker.trip_from_fleet()
        {
            tracing::warn!(
                breaker = self.name(),
                calls,
                failed,
                slow,
                "the fleet's window trips the breaker"
            );
            self.local().await; // publishes the opening at once
        }
    }

    /// Reads the record at `reply[index]` and follows it; returns it.
    fn fleet_reply(&mut self, reply: &[Value], index: usize) -> Option<Record> {
        let value = match reply.get(index) {
            Some(Value::BulkString(bytes)) => bytes.clone(),
            Some(Value::SimpleString(text)) => text.clone().into_bytes(),
            _ => return None,
        };
        if value.is_empty() {
            return None; // no state: closed, no opening known
        }
        match parse(&value) {
            Ok(record) => self.follow(&record).then_some(record),
            Err(reason) => {
                self.malformed("state", &reason);
                None
            }
        }
    }

    fn malformed(&mut self, what: &str, reason: &dyn std::fmt::Display) {
        if !self.warned_data {
            self.warned_data = true;
            tracing::warn!(
                breaker = self.name(),
                key = %self.keys.prefix,
                what,
                reason = %reason,
                "ignoring data under the fleet's keys that is not ours"
            );
        }
    }

    fn message(&mut self, message: redis::Msg) {
        match parse(message.get_payload_bytes()) {
            Ok(record) => {
                self.follow(&record);
            }
            Err(reason) => self.malformed("published state", &reason),
        }
    }

    /// Applies the fleet's state to the local breaker; `false` if the record is refused as
    /// foreign (an opening further ahead than this kind of breaker ever opens).
    fn follow(&mut self, record: &Record) -> bool {
        let Some(clock) = self.clock else {
            return true;
        };
        match *record {
            Record::Open { until_ms, .. } => {
                let now_ms = clock.server(Instant::now());
                if until_ms <= now_ms {
                    return true; // that interval is over: its episode decides
                }
                if until_ms - now_ms > self.longest_open_ms() {
                    let reason = "an opening further ahead than this breaker ever opens";
                    self.malformed("state", &reason);
                    return false;
                }
                let until = clock.local(until_ms);
                if self.breaker.open_until(until) == OpenUntil::Opened {
                    // Known: applied from the fleet, not to be published back.
                    let seen = self.breaker.observe();
                    self.known = Some((seen.generation, seen.state));
                    self.owner = false;
                    self.claim_not_before = None;
                }
            }
            Record::Closed { since_ms, .. } => {
                let newer =
                    self.epoch.is_some_and(|epoch| epoch != since_ms) || self.epoch.is_none();
                self.epoch = Some(since_ms);
                if newer && self.breaker.close_from_fleet() {
                    let seen = self.breaker.observe();
                    self.known = Some((seen.generation, seen.state));
                    self.last = None;
                }
            }
        }
        true
    }

    /// How far ahead an opening of this breaker's kind can be: its longest open interval and a
    /// probe lease, with a minute of slack for instances configured a little differently.
    fn longest_open_ms(&self) -> u64 {
        let longest = self.breaker.longest_open() + self.settings.probe_lease;
        millis(longest).saturating_add(60_000)
    }

    // ===== the probe lease =====

    /// When to claim the probe lease: a little before the local open interval ends (by the
    /// tick interval), unless this instance holds it or Redis is unreachable.
    fn claim_at(&self) -> Option<Instant> {
        if self.owner || !self.reachable() {
            return None;
        }
        let seen = self.breaker.observe();
        if self.known.map(|(generation, _)| generation) != Some(seen.generation) {
            return None; // the opening is not published yet
        }
        let until = seen.open_until?;
        let at = until.checked_sub(self.settings.interval).unwrap_or(until);
        Some(match self.claim_not_before {
            Some(not_before) => at.max(not_before),
            None => at,
        })
    }

    async fn claim(&mut self) {
        self.claim_not_before = Some(Instant::now() + self.settings.interval);
        let lease = millis(self.settings.probe_lease).to_string();
        let (state, probe) = (self.keys.state(), self.keys.probe());
        let scripts = self.scripts.clone();
        let mut invocation = scripts.claim.prepare_invoke();
        invocation
            .key(state)
            .key(probe)
            .arg(&*self.origin)
            .arg(lease);
        let Some(reply) = self.invoke("claim", invocation).await else {
            return; // unreachable: this instance probes on its own
        };
        let record = self.fleet_reply(&reply, 1);
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
            tracing::debug!(breaker = self.name(), "this instance probes for the fleet");
            return;
        }
        let (Some(clock), Ok(left)) = (self.clock, u64::try_from(left)) else {
            return;
        };
        // Another instance probes: stay open until its lease ends (or its result arrives).
        let left = left.min(millis(self.settings.probe_lease));
        let until = clock.local(clock.server_ms.saturating_add(left));
        if self.breaker.open_until(until) == OpenUntil::Opened {
            let seen = self.breaker.observe();
            self.known = Some((seen.generation, seen.state));
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn next(messages: &mut Option<PubSubStream>) -> Option<redis::Msg> {
    match messages {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
