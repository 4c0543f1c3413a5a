//! A real Prometheus server scrapes `examples/prometheus.rs` (its scripted outage and recovery,
//! then a light load) every second, and every query of `examples/grafana/dashboard.json` must
//! return data through Prometheus's HTTP API.
//!
//! Prometheus is Debian's package, installed by `scripts/prometheus install` (which
//! `scripts/test` runs first) and started here through `scripts/prometheus run`, on loopback.
//! When it is not installed, or does not start, the test fails and says so: it never skips.

#[path = "../examples/prometheus.rs"]
#[allow(dead_code)]
mod example;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::net::TcpListener;

/// How long Prometheus may take to say it is ready.
const START: Duration = Duration::from_secs(30);
/// The range the dashboard's `$__rate_interval` stands for here (Grafana makes it at least four
/// scrape intervals; the scrape interval is a second).
const RATE_INTERVAL: &str = "10s";

/// A Prometheus server started by `scripts/prometheus run`, ended when dropped.
struct Prometheus {
    child: Child,
    url: String,
    dir: PathBuf,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!("tcb-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a data directory");
        let log = std::fs::File::create(dir.join("stderr.log")).expect("a log file");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/prometheus");
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new(&script)
            .args(["run", target, &listen])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        Prometheus {
            child,
            url: format!("http://{listen}"),
            dir,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Waits until Prometheus answers `/-/ready`; fails, saying what is missing, if it exits or
    /// does not answer in time.
    async fn ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("the child's status") {
                panic!(
                    "Prometheus did not start ({status}). Is Debian's `prometheus` package \
                     installed? `scripts/prometheus install` installs it (scripts/test runs \
                     it). Its output:\n{}",
                    self.stderr()
                );
            }
            if get(&format!("{}/-/ready", self.url)).await.is_some() {
                return;
            }
            assert!(
                started.elapsed() < START,
                "Prometheus did not become ready within {START:?}. Its output:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Evaluates `query` now; panics unless Prometheus answers with success.
    async fn query(&self, query: &str) -> Vec<Value> {
        let url = format!("{}/api/v1/query?query={}", self.url, encode(query));
        let body = get(&url)
            .await
            .unwrap_or_else(|| panic!("no answer to {query}"));
        let answer: Value = serde_json::from_str(&body).expect("JSON from Prometheus");
        assert_eq!(answer["status"], "success", "{query}: {answer}");
        answer["data"]["result"]
            .as_array()
            .expect("a result vector")
            .clone()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The body of a 200 answer to a GET of `url`, or `None`.
async fn get(url: &str) -> Option<String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let response = client.get(url.parse().ok()?).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body = response.into_body().collect().await.ok()?.to_bytes();
    String::from_utf8(body.to_vec()).ok()
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every query of the dashboard's panels, with Grafana's variables replaced: `$name` by every
/// breaker, `$__rate_interval` by [`RATE_INTERVAL`].
fn dashboard_queries() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/grafana/dashboard.json");
    let text = std::fs::read_to_string(&path).expect("examples/grafana/dashboard.json");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            let expr = expr
                .replace("$__rate_interval", RATE_INTERVAL)
                .replace("$name", ".*");
            assert!(
                !expr.contains('$'),
                "a variable this test does not know: {expr}"
            );
            let title = panel["title"].as_str().expect("a title").to_owned();
            queries.push((title, expr));
        }
    }
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_of_the_dashboard_returns_data_from_a_real_prometheus() {
    let queries = dashboard_queries();
    assert!(queries.len() >= 7, "the dashboard's queries: {queries:?}");

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let target = listener.local_addr().expect("an address").to_string();
    let mut prometheus = Prometheus::start(&target);
    prometheus.ready().await;
    let started = Instant::now();
    tokio::spawn(example::run(listener, true));

    // The scripted outage and recovery, then a few scrapes of the light load after it.
    tokio::time::sleep(example::SCRIPT + Duration::from_secs(3)).await;
    let up = prometheus.query("up").await;
    assert!(
        up.iter().any(|s| s["value"][1] == "1"),
        "Prometheus did not scrape the example at {target}: {up:?}"
    );

    // The dashboard's variable: the breakers' names.
    let names = get(&format!(
        "{}/api/v1/label/name/values?match[]=circuit_breaker_state",
        prometheus.url
    ))
    .await
    .expect("label values");
    assert!(
        names.contains("pricing") && names.contains("inventory"),
        "{names}"
    );

    for (panel, query) in &queries {
        let result = prometheus.query(query).await;
        assert!(
            !result.is_empty(),
            "panel {panel:?}: no data for {query}\n(after {:?})",
            started.elapsed()
        );
        let finite = result.iter().any(|sample| {
            sample["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(f64::is_finite)
        });
        assert!(
            finite,
            "panel {panel:?}: only NaN or infinite values for {query}: {result:?}"
        );
    }

    // What the story did shows in Prometheus: both breakers opened and closed again.
    for name in ["pricing", "inventory"] {
        let opened = format!(
            "circuit_breaker_transitions_total{{name=\"{name}\", from=\"closed\", to=\"open\"}}"
        );
        let result = prometheus.query(&opened).await;
        let value: f64 = result[0]["value"][1].as_str().unwrap().parse().unwrap();
        assert!(value >= 1.0, "{name} never opened: {result:?}");
        let state = format!("circuit_breaker_state{{name=\"{name}\", state=\"closed\"}}");
        let result = prometheus.query(&state).await;
        assert_eq!(
            result[0]["value"][1], "1",
            "{name} did not close again: {result:?}"
        );
    }
    let fallbacks = "circuit_breaker_calls_total{name=\"pricing\", outcome=\"fallback\"}";
    let result = prometheus.query(fallbacks).await;
    let value: f64 = result[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(value > 0.0, "no fallback answered: {result:?}");
}
