//! Every key of a keyed layer shared through one task (`Fleet::share_keyed`): one connection
//! for scripts, one pattern subscription, one sync script per tick for the keys that recorded
//! outcomes, each key followed as `member.rs` follows a shared breaker.
//!
//! The task holds no key's breaker: it keeps weak references and each key's event stream, and
//! learns of new keys from the keyed map's watcher (called when a key's breaker is made, off
//! the path of existing keys). An evicted key's breaker is dropped as without sharing; its
//! event stream ends and the task forgets it.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use futures::stream::{BoxStream, SelectAll};
use futures::{StreamExt, stream};
use redis::aio::PubSubStream;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::time::Instant;

use super::codec::Keys;
use super::link::{Link, SYNC_STRIDE, Window, next, sleep_until};
use super::member::Member;
use crate::EventStream;
use crate::state::Breaker;

/// The most keys in one sync script (a tick with more active keys sends several).
const BATCH: usize = 500;

/// A key's breaker as the task knows it.
struct Shared {
    breaker: Weak<Breaker>,
    member: Member,
    /// Not synced yet (a new key, or every key after a new subscription): in the next tick's
    /// script even without outcomes, so that it reads the fleet's state.
    fresh: bool,
}

/// What a key's event stream says: the key (its keys' prefix) had a transition, or its breaker
/// is gone (the stream ended).
type Tagged = (Arc<str>, Weak<Breaker>, bool);

pub(super) struct KeyedTask {
    pub(super) link: Link,
    pub(super) window: Window,
    pub(super) namespace: String,
    pub(super) name: String,
    pub(super) new_keys: UnboundedReceiver<(Weak<Breaker>, EventStream)>,
    keys: HashMap<Arc<str>, Shared>,
    events: SelectAll<BoxStream<'static, Tagged>>,
}

/// The channel on which the task hears of new keys' breakers, and the watcher that sends on it.
pub(super) fn watcher() -> (
    crate::keyed::map::Watcher,
    UnboundedReceiver<(Weak<Breaker>, EventStream)>,
) {
    let (sender, receiver) = unbounded_channel();
    let watcher: crate::keyed::map::Watcher = Arc::new(move |breaker: &Arc<Breaker>| {
        // Subscribed before the breaker serves a call: none of its transitions is missed.
        sender
            .send((Arc::downgrade(breaker), breaker.subscribe()))
            .is_ok()
    });
    (watcher, receiver)
}

impl KeyedTask {
    pub(super) fn new(
        link: Link,
        window: Window,
        namespace: String,
        name: String,
        new_keys: UnboundedReceiver<(Weak<Breaker>, EventStream)>,
        existing: Vec<Arc<Breaker>>,
    ) -> Self {
        let mut task = KeyedTask {
            link,
            window,
            namespace,
            name,
            new_keys,
            keys: HashMap::new(),
            events: SelectAll::new(),
        };
        for breaker in existing {
            let events = breaker.subscribe();
            task.add(Arc::downgrade(&breaker), events);
        }
        task
    }

    pub(super) async fn run(mut self) {
        let mut ticks = tokio::time::interval(self.link.settings.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut messages: Option<PubSubStream> = None;
        let pattern = Keys::pattern(&self.namespace, &self.name);
        loop {
            let claim_at = self.claim_at();
            tokio::select! {
                _ = ticks.tick() => {
                    self.tick().await;
                    if messages.is_none() && self.link.reachable() {
                        messages = self.link.subscribe(pattern.clone(), true).await;
                        if messages.is_some() {
                            // Whatever was published while unsubscribed is in the state keys.
                            self.keys.values_mut().for_each(|shared| shared.fresh = true);
                            self.tick().await;
                        }
                    }
                }
                new = self.new_keys.recv() => match new {
                    Some((breaker, events)) => self.add(breaker, events),
                    None => return, // the keyed layer is gone
                },
                Some((prefix, breaker, alive)) = next_event(&mut self.events) => {
                    self.event(&prefix, &breaker, alive).await;
                }
                message = next(&mut messages) => match message {
                    Some(message) => self.message(&message),
                    None => messages = None,
                },
                _ = sleep_until(claim_at), if claim_at.is_some() => self.claim_due().await,
            }
        }
    }

    /// Starts following a key's breaker (unless it is followed already).
    fn add(&mut self, breaker: Weak<Breaker>, events: EventStream) {
        let Some(strong) = breaker.upgrade() else {
            return; // made and dropped meanwhile (a racing call made the key first)
        };
        let Some(key) = strong.key() else { return };
        let keys = Keys::new(&self.namespace, &self.name, Some(&**key));
        let prefix: Arc<str> = Arc::from(keys.prefix.as_str());
        if let Some(shared) = self.keys.get(&prefix)
            && Weak::ptr_eq(&shared.breaker, &breaker)
        {
            return;
        }
        // A newer breaker of the key replaces an evicted one whose stream has not ended yet.
        let (tag, weak) = (prefix.clone(), breaker.clone());
        let gone = (prefix.clone(), breaker.clone(), false);
        let stream = events
            .map(move |_| (tag.clone(), weak.clone(), true))
            .chain(stream::once(async move { gone }));
        self.events.push(stream.boxed());
        let shared = Shared {
            breaker,
            member: Member::new(keys),
            fresh: true,
        };
        self.keys.insert(prefix, shared);
    }

    /// A transition of a key's breaker (published at once), or the end of its stream.
    async fn event(&mut self, prefix: &Arc<str>, breaker: &Weak<Breaker>, alive: bool) {
        let Some(shared) = self.keys.get_mut(prefix) else {
            return;
        };
        if !Weak::ptr_eq(&shared.breaker, breaker) {
            return; // an older breaker of the key
        }
        match breaker.upgrade() {
            Some(strong) if alive => shared.member.local(&mut self.link, &strong).await,
            Some(_) => {}
            None => {
                self.keys.remove(prefix); // evicted: no longer published
            }
        }
    }

    /// A tick: publishes the transitions not published yet, then, in one script, the counts of
    /// the keys that recorded outcomes (and the new keys), and follows the fleet's answer.
    async fn tick(&mut self) {
        let mut batch: Vec<(Arc<str>, Arc<Breaker>)> = Vec::new();
        let mut gone = Vec::new();
        for (prefix, shared) in &mut self.keys {
            let Some(breaker) = shared.breaker.upgrade() else {
                gone.push(prefix.clone());
                continue;
            };
            let seen = breaker.observe();
            if shared.member.unpublished(&seen) {
                shared.member.local(&mut self.link, &breaker).await;
            }
            if shared.fresh || shared.member.active(&seen) {
                batch.push((prefix.clone(), breaker));
            }
        }
        for prefix in gone {
            self.keys.remove(&prefix);
        }
        if batch.is_empty() && !self.link.reachable() {
            // Nothing to send, but Redis must be found reachable (and its clock read) to
            // subscribe: a script of no key.
            self.link.sync(self.window, &[]).await;
        }
        for chunk in batch.chunks(BATCH) {
            let args: Vec<_> = chunk
                .iter()
                .filter_map(|(prefix, breaker)| {
                    let shared = self.keys.get_mut(prefix)?;
                    Some(shared.member.sync_args(&self.link, breaker))
                })
                .collect();
            let Some(reply) = self.link.sync(self.window, &args).await else {
                return;
            };
            for (i, (prefix, breaker)) in chunk.iter().enumerate() {
                if let Some(shared) = self.keys.get_mut(prefix) {
                    shared.fresh = false;
                    let index = 1 + i * SYNC_STRIDE;
                    shared
                        .member
                        .synced(&mut self.link, breaker, &reply, index)
                        .await;
                }
            }
        }
    }

    /// A record published on a key's channel; a key without a breaker here is not made for it.
    fn message(&mut self, message: &redis::Msg) {
        let channel = message.get_channel_name();
        let Some(prefix) = channel.strip_suffix("events") else {
            return;
        };
        let Some(shared) = self.keys.get_mut(prefix) else {
            return;
        };
        if let Some(breaker) = shared.breaker.upgrade() {
            let payload = message.get_payload_bytes();
            shared.member.message(&self.link, &breaker, payload);
        }
    }

    /// The earliest probe lease to claim, among the keys the fleet knows as open.
    fn claim_at(&self) -> Option<Instant> {
        self.keys
            .values()
            .filter(|shared| shared.member.known_open())
            .filter_map(|shared| {
                let breaker = shared.breaker.upgrade()?;
                shared.member.claim_at(&self.link, &breaker)
            })
            .min()
    }

    async fn claim_due(&mut self) {
        let now = Instant::now();
        for shared in self.keys.values_mut() {
            if !shared.member.known_open() {
                continue;
            }
            let Some(breaker) = shared.breaker.upgrade() else {
                continue;
            };
            if shared
                .member
                .claim_at(&self.link, &breaker)
                .is_some_and(|at| at <= now)
            {
                shared.member.claim(&mut self.link, &breaker).await;
            }
        }
    }
}

async fn next_event(events: &mut SelectAll<BoxStream<'static, Tagged>>) -> Option<Tagged> {
    if events.is_empty() {
        return std::future::pending().await;
    }
    events.next().await
}

impl super::Fleet {
    /// Shares every key of a keyed layer, the keys to come included, with every other
    /// instance's keyed layer of the same name in this namespace: each key's breaker as
    /// [`share`](Self::share) shares a breaker, through one background task and one
    /// subscription for all the keys (see [keyed breakers](super#keyed-breakers)). Until the
    /// returned [`SharedKeyed`] is dropped. Keys are still evicted as without sharing. Returns at
    /// once (Redis may be down: the task connects when it can).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`](crate::ConfigError) for `name` if the keyed layer has none, or
    /// `runtime` if called outside a tokio runtime.
    ///
    /// ```no_run
    /// use tower_circuit_breaker::{CircuitBreakerLayer, KeyedCircuitBreakerLayer};
    /// use tower_circuit_breaker::redis::Fleet;
    ///
    /// # async fn run() -> Result<(), tower_circuit_breaker::ConfigError> {
    /// let per_host = KeyedCircuitBreakerLayer::builder(|host: &String| host.clone())
    ///     .breaker(CircuitBreakerLayer::builder().name("upstreams"))
    ///     .build()?;
    /// let fleet = Fleet::builder("checkout").build("redis://127.0.0.1:6379")?;
    /// let shared = fleet.share_keyed(&per_host.handle())?; // keep it: dropping it stops sharing
    /// // ... serve with `per_host` ...
    /// # drop(shared);
    /// # Ok(()) }
    /// ```
    pub fn share_keyed<K>(
        &self,
        handle: &crate::KeyedHandle<K>,
    ) -> Result<SharedKeyed, crate::ConfigError>
    where
        K: std::hash::Hash + Eq + Clone,
    {
        let name = super::named(handle.name())?;
        let (runtime, link) = self.link(name)?;
        let breakers = handle.breakers();
        let window = self.window(&breakers.config());
        let (watcher, new_keys) = watcher();
        let existing = breakers.watch(watcher);
        let status = link.status.clone();
        let origin = link.origin.clone();
        let task = KeyedTask::new(
            link,
            window,
            self.inner.namespace.clone(),
            name.to_owned(),
            new_keys,
            existing,
        );
        let task = runtime.spawn(task.run());
        Ok(SharedKeyed {
            task,
            status,
            origin,
        })
    }
}

/// Every key of a keyed layer shared through a [`Fleet`](super::Fleet): dropping it stops the
/// sharing (every key's breaker goes on alone, as it is).
///
/// ```no_run
/// # use tower_circuit_breaker::{CircuitBreakerLayer, KeyedCircuitBreakerLayer, redis::Fleet};
/// # async fn run() -> Result<(), tower_circuit_breaker::ConfigError> {
/// # let layer = KeyedCircuitBreakerLayer::builder(|k: &String| k.clone())
/// #     .breaker(CircuitBreakerLayer::builder().name("hosts"))
/// #     .build()?;
/// let shared = Fleet::builder("app").build("redis://127.0.0.1")?.share_keyed(&layer.handle())?;
/// if !shared.is_reachable() {
///     // Redis has not answered yet, or not lately: every key works alone.
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct SharedKeyed {
    task: tokio::task::JoinHandle<()>,
    status: Arc<super::link::Status>,
    origin: Arc<str>,
}

impl SharedKeyed {
    /// Whether Redis answered the last command (`false` until it first has).
    pub fn is_reachable(&self) -> bool {
        self.status
            .reachable
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// This instance's id in Redis (in the state records it writes and the probe leases).
    pub fn instance(&self) -> &str {
        &self.origin
    }

    /// How many Redis commands (scripts and subscriptions) the task has sent, for all the keys.
    pub fn commands_sent(&self) -> u64 {
        self.status
            .commands
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many keys' ticks the task's scripts carried (a key that recorded outcomes since the
    /// last tick counts one in that tick's script; an idle key none).
    pub fn keys_synced(&self) -> u64 {
        self.status
            .synced
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for SharedKeyed {
    fn drop(&mut self) {
        self.task.abort();
    }
}
