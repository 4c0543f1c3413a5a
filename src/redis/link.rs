//! One shared breaker's (or keyed layer's) line to Redis: the connection, the server's clock as
//! last read, the scripts, and the "unreachable" state, logged once. Used by both tasks (one
//! breaker, every key of a keyed layer); what is per breaker is in `member.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use redis::aio::{ConnectionManager, PubSubStream};
use redis::{Client, FromRedisValue, Value};
use tokio::time::Instant;

use super::Settings;
use super::script::Scripts;

/// What a task shares with its guard ([`Shared`](super::Shared),
/// [`SharedKeyed`](super::SharedKeyed)).
#[derive(Debug, Default)]
pub(super) struct Status {
    pub(super) reachable: AtomicBool,
    /// Redis commands sent (scripts, subscriptions), for the figures of commands per second.
    pub(super) commands: AtomicU64,
    /// Breakers' ticks carried by the sync scripts (one per breaker per script).
    pub(super) synced: AtomicU64,
}

/// The Redis server's clock, seen from this instance: the server's time `server_ms` was read at
/// about `at` (the middle of the round trip that answered it).
#[derive(Clone, Copy, Debug)]
pub(super) struct ServerClock {
    pub(super) server_ms: u64,
    at: Instant,
}

impl ServerClock {
    pub(super) fn local(self, ms: u64) -> Instant {
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

    pub(super) fn server(self, at: Instant) -> u64 {
        if at >= self.at {
            let ahead = u64::try_from(at.duration_since(self.at).as_millis()).unwrap_or(u64::MAX);
            self.server_ms.saturating_add(ahead)
        } else {
            let behind = u64::try_from(self.at.duration_since(at).as_millis()).unwrap_or(u64::MAX);
            self.server_ms.saturating_sub(behind)
        }
    }
}

/// The fleet window of a shared breaker (or of every key of a keyed layer).
#[derive(Clone, Copy, Debug)]
pub(super) struct Window {
    pub(super) bucket_ms: u64,
    pub(super) buckets: u64,
}

/// One breaker's part of a tick's sync script.
#[derive(Debug)]
pub(super) struct SyncArgs {
    pub(super) state: String,
    pub(super) window: String,
    pub(super) delta: (u64, u64, u64),
    pub(super) longest_ms: u64,
}

/// How many values the sync script answers per breaker (state, malformed, calls, failed, slow).
pub(super) const SYNC_STRIDE: usize = 5;

pub(super) struct Link {
    /// For the logs: the breakers' name.
    pub(super) name: Arc<str>,
    pub(super) client: Client,
    pub(super) connection: ConnectionManager,
    pub(super) settings: Settings,
    pub(super) origin: Arc<str>,
    pub(super) status: Arc<Status>,
    pub(super) scripts: Arc<Scripts>,
    pub(super) clock: Option<ServerClock>,
    /// Whether unreachability was logged (once, until Redis answers again).
    warned_down: bool,
}

impl Link {
    pub(super) fn new(
        name: Arc<str>,
        client: Client,
        connection: ConnectionManager,
        settings: Settings,
        origin: Arc<str>,
        status: Arc<Status>,
        scripts: Arc<Scripts>,
    ) -> Self {
        Link {
            name,
            client,
            connection,
            settings,
            origin,
            status,
            scripts,
            clock: None,
            warned_down: false,
        }
    }

    pub(super) fn reachable(&self) -> bool {
        self.status.reachable.load(Ordering::Relaxed)
    }

    /// A failed command: the first failure after a success is logged (warn), the others not.
    fn down(&mut self, what: &str, error: &dyn std::fmt::Display) {
        self.status.reachable.store(false, Ordering::Relaxed);
        if !self.warned_down {
            self.warned_down = true;
            tracing::warn!(
                breaker = &*self.name,
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
            tracing::info!(breaker = &*self.name, "fleet state reachable again");
        }
    }

    /// Runs `script` with a deadline; `None` (logged once) when Redis does not answer in time.
    pub(super) async fn invoke(
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

    /// One tick's counts of one or more breakers, and the fleet's state and window of each, in
    /// one script: the answer of breaker `i` starts at `1 + i * SYNC_STRIDE`.
    pub(super) async fn sync(
        &mut self,
        window: Window,
        entries: &[SyncArgs],
    ) -> Option<Vec<Value>> {
        let bucket_ttl = (window.bucket_ms * (window.buckets + 2)).to_string();
        let ttl = millis(self.settings.key_ttl).to_string();
        let scripts = self.scripts.clone();
        let mut invocation = scripts.sync.prepare_invoke();
        invocation
            .arg(window.bucket_ms)
            .arg(window.buckets)
            .arg(bucket_ttl)
            .arg(ttl);
        for entry in entries {
            invocation
                .key(&entry.state)
                .arg(&entry.window)
                .arg(entry.delta.0)
                .arg(entry.delta.1)
                .arg(entry.delta.2)
                .arg(entry.longest_ms);
        }
        let synced = u64::try_from(entries.len()).unwrap_or(u64::MAX);
        self.status.synced.fetch_add(synced, Ordering::Relaxed);
        self.invoke("sync", invocation).await
    }

    /// Subscribes to `channel`, or to the channels matching it if `pattern`.
    pub(super) async fn subscribe(
        &mut self,
        channel: String,
        pattern: bool,
    ) -> Option<PubSubStream> {
        self.status.commands.fetch_add(1, Ordering::Relaxed);
        let client = self.client.clone();
        let subscribed = tokio::time::timeout(self.settings.timeout, async move {
            let mut pubsub = client.get_async_pubsub().await?;
            if pattern {
                pubsub.psubscribe(channel).await?;
            } else {
                pubsub.subscribe(channel).await?;
            }
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
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(super) async fn next(messages: &mut Option<PubSubStream>) -> Option<redis::Msg> {
    match messages {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

pub(super) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
