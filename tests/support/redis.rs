//! Real Redis servers on loopback for tests/redis.rs: the one scripts/test started
//! (`TCB_REDIS_URL`), or one of the test's own, started from the `redis-server` binary that
//! `scripts/redis install` installs (for the tests that kill, restart or slow it).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;
use tower_circuit_breaker::{Event, EventStream, State};

/// A `redis-server` process of the test's own, killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers.
    pub fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = RedisServer { child: None, port };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (its data goes with it: no persistence).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server is not installed: run `scripts/redis install` (Debian's package)",
            );
        self.child = Some(child);
        let client = ::redis::Client::open(self.url()).unwrap();
        for _ in 0..200 {
            if let Ok(mut c) = client.get_connection() {
                if ::redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not answer on port {}", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The server scripts/test started, or one of this test's own (kept alive by the guard).
pub fn shared_server() -> (String, Option<RedisServer>) {
    match std::env::var("TCB_REDIS_URL") {
        Ok(url) if !url.is_empty() => (url, None),
        _ => {
            let server = RedisServer::start();
            (server.url(), Some(server))
        }
    }
}

/// A namespace of this test's own, so that tests sharing one server never share keys.
///
/// The process id alone is not enough: the server outlives the process, its keys live for an
/// hour, and a later test process may get the same id (a long suite, or repeated runs) and find
/// what an earlier one left under its keys. The time the process first asked tells them apart.
pub fn namespace(test: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    static STARTED: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    let started = STARTED.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    });
    format!(
        "test-{}-{started:x}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        test
    )
}

/// Waits for a transition to `to` on `events`, up to `limit`: how long it took, or `None`.
pub async fn transition_to(
    events: &mut EventStream,
    to: State,
    limit: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    let found = tokio::time::timeout(limit, async {
        while let Some(event) = events.next().await {
            if let Event::StateTransition { to: t, .. } = event {
                if t == to {
                    return;
                }
            }
        }
        std::future::pending::<()>().await
    })
    .await;
    found.ok().map(|()| start.elapsed())
}

/// Waits until `ready()` holds, looking every few milliseconds, up to `limit` (then panics
/// with `what`). For conditions that no event announces (Redis found reachable, a counter).
pub async fn until(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < limit, "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
