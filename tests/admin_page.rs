//! The operator's page of `examples/admin` in a real headless browser (chromium, driven through
//! chromedriver's WebDriver protocol on loopback): the page shows a breaker open, in red, after
//! its dependency fails, and a click on its reset button closes it.
//!
//! Ignored by default: it needs chromium and chromedriver, which `scripts/browser` installs
//! (Debian's packages) before running it. `CHROMEDRIVER` and `CHROMIUM` name the binaries.

#![cfg(feature = "serde")]

#[path = "../examples/admin/api.rs"]
mod api;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use api::{Admin, TransitionLog};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tower::{Layer, ServiceExt, service_fn};
use tower_circuit_breaker::registry::Registry;
use tower_circuit_breaker::{CircuitBreakerLayer, State};

/// How long the page may take to show what the test waits for. It refreshes every second; the
/// rest is for a loaded machine, where a headless browser can fall seconds behind.
const PATIENCE: Duration = Duration::from_secs(30);

/// A WebDriver session of a chromedriver this test started.
struct Browser {
    driver: Child,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    base: String,
    session: String,
}

impl Browser {
    async fn start() -> Browser {
        let driver_bin = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{driver_bin}: {e} (scripts/browser installs it)"));
        let mut browser = Browser {
            driver,
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
        };
        let started = Instant::now();
        while browser.send("GET", "/status", None).await.is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,900"],
            },
        }}});
        let session = browser.send("POST", "/session", Some(capabilities)).await;
        let session = session.expect("a session");
        browser.session = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {session}"))
            .to_string();
        browser
    }

    /// A WebDriver command; its `value`, or `None` if it failed (or the driver is not up).
    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> Option<Value> {
        let body = body.map_or_else(String::new, |b| b.to_string());
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = self.client.request(request).await.ok()?;
        let ok = response.status().is_success();
        let bytes = response.into_body().collect().await.ok()?.to_bytes();
        let value: Value = serde_json::from_slice(&bytes).ok()?;
        ok.then(|| value["value"].clone())
    }

    async fn command(&self, method: &str, path: &str, body: Option<Value>) -> Option<Value> {
        let path = format!("/session/{}{path}", self.session);
        self.send(method, &path, body).await
    }

    /// A command on the element `css` matches (`/element/{id}{path}`), found again and retried
    /// if it fails: the page rebuilds its tables every second, so an element found just before a
    /// refresh is stale by the time the command reaches it. Within [`PATIENCE`].
    async fn on_element(&self, css: &str, method: &str, path: &str, body: Option<Value>) -> Value {
        let started = Instant::now();
        loop {
            let id = self.wait_for(css).await;
            let path = format!("/element/{id}{path}");
            if let Some(value) = self.command(method, &path, body.clone()).await {
                return value;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "{method} {path} on `{css}` failed"
            );
        }
    }

    /// The element `css` matches, once it exists (within [`PATIENCE`]).
    async fn wait_for(&self, css: &str) -> String {
        let started = Instant::now();
        loop {
            let found = self
                .command(
                    "POST",
                    "/element",
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await;
            if let Some(element) = found {
                let id = element.as_object().and_then(|o| o.values().next()).cloned();
                return id
                    .and_then(|v| v.as_str().map(str::to_string))
                    .expect("an element id");
            }
            assert!(started.elapsed() < PATIENCE, "no `{css}` on the page");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver: run scripts/browser"]
async fn the_page_shows_a_breaker_open_and_a_click_on_reset_closes_it() {
    let registry = Registry::new();
    let payments = registry
        .get_or_create(
            CircuitBreakerLayer::builder()
                .name("payments")
                .consecutive_failures(2)
                .open_duration(Duration::from_secs(60)),
        )
        .unwrap();
    let payments = payments.layer(service_fn(|fail: bool| async move {
        if fail {
            Err("card processor timeout")
        } else {
            Ok(())
        }
    }));
    let admin = Admin {
        registry: registry.clone(),
        log: TransitionLog::default(),
    };
    api::watch(&admin, Duration::from_millis(100));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, api::router(admin)).await });

    let browser = Browser::start().await;
    browser
        .command("POST", "/url", Some(json!({"url": page})))
        .await
        .unwrap();
    browser
        .wait_for("tr[data-name='payments'][data-state='closed']")
        .await;

    // The dependency fails: the breaker opens, and the page shows it, in red.
    for _ in 0..2 {
        payments.clone().oneshot(true).await.unwrap_err();
    }
    assert_eq!(registry.handle("payments").unwrap().state(), State::Open);
    browser
        .wait_for("tr[data-name='payments'][data-state='open']")
        .await;
    let badge = "tr[data-name='payments'] span.state";
    let colour = browser
        .on_element(badge, "GET", "/css/background-color", None)
        .await;
    assert_eq!(colour, "rgba(198, 40, 40, 1)", "open is red");
    let text = browser.on_element(badge, "GET", "/text", None).await;
    assert_eq!(text, "open");
    browser.wait_for("#transitions td span.open").await;

    // A click on its reset button closes it.
    let reset = "tr[data-name='payments'] button[data-action='reset']";
    browser
        .on_element(reset, "POST", "/click", Some(json!({})))
        .await;
    browser
        .wait_for("tr[data-name='payments'][data-state='closed']")
        .await;
    assert_eq!(registry.handle("payments").unwrap().state(), State::Closed);
    payments.clone().oneshot(false).await.unwrap();

    browser.command("DELETE", "", None).await;
}
