//! The admin API of `examples/admin` (feature `serde`), end to end over loopback with hyper's
//! client, bad input included; and its parser under proptest: garbage gets a 4xx with a
//! message and changes nothing.

#![cfg(feature = "serde")]

#[path = "../examples/admin/api.rs"]
mod api;

use std::time::Duration;

use api::{Admin, TransitionLog};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_circuit_breaker::registry::Registry;
use tower_circuit_breaker::{CircuitBreakerLayer, KeyedCircuitBreakerLayer, State};

type Payments = tower_circuit_breaker::CircuitBreaker<
    tower::util::ServiceFn<fn(bool) -> std::future::Ready<Result<(), &'static str>>>,
>;

fn pay(fail: bool) -> std::future::Ready<Result<(), &'static str>> {
    std::future::ready(if fail {
        Err("declined by the processor")
    } else {
        Ok(())
    })
}

/// A registry with `payments` (opens after 2 failures) and `hosts` (one breaker per host, and
/// hosts `h1`, `h2` called once), and the payments service.
async fn registry() -> (Registry, Payments) {
    let registry = Registry::new();
    let payments = registry
        .get_or_create(
            CircuitBreakerLayer::builder()
                .name("payments")
                .consecutive_failures(2)
                .open_duration(Duration::from_secs(60)),
        )
        .unwrap();
    let hosts = KeyedCircuitBreakerLayer::builder(|host: &String| host.clone())
        .breaker(CircuitBreakerLayer::builder().name("hosts"))
        .build()
        .unwrap();
    registry.register_keyed(&hosts).unwrap();
    let host_svc = hosts.layer(service_fn(|_: String| async { Ok::<_, BoxError>(()) }));
    for host in ["h1", "h2"] {
        host_svc.clone().oneshot(host.to_string()).await.unwrap();
    }
    let payments = payments.layer(service_fn(
        pay as fn(bool) -> std::future::Ready<Result<(), &'static str>>,
    ));
    (registry, payments)
}

fn admin(registry: &Registry) -> Admin {
    Admin {
        registry: registry.clone(),
        log: TransitionLog::default(),
    }
}

/// The listing without the retry-after (it counts down), in a fixed order.
fn comparable(registry: &Registry) -> Vec<String> {
    let mut rows: Vec<String> = registry
        .list()
        .into_iter()
        .map(|mut row| {
            row.retry_after_ms = None;
            format!("{row:?}")
        })
        .collect();
    rows.sort();
    rows
}

struct Http {
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    base: String,
}

impl Http {
    async fn start(admin: Admin) -> Http {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, api::router(admin)).await });
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base,
        }
    }

    async fn send(&self, method: &str, path: &str, body: &str) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let response = self.client.request(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    async fn json(&self, method: &str, path: &str, body: &str) -> (StatusCode, Value) {
        let (status, text) = self.send(method, path, body).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn row(&self, name: &str, key: Option<&str>) -> Value {
        let (_, rows) = self.json("GET", "/breakers", "").await;
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name && r["key"] == json!(key))
            .unwrap_or_else(|| panic!("no row {name} {key:?} in {rows}"))
            .clone()
    }
}

#[tokio::test]
async fn the_admin_api_lists_controls_and_reconfigures_over_loopback() {
    let (registry, payments) = registry().await;
    let admin = admin(&registry);
    let http = Http::start(admin.clone()).await;

    let (status, rows) = http.json("GET", "/breakers", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        rows.as_array().unwrap().len(),
        4,
        "payments, h1, h2, the overflow: {rows}"
    );
    let row = http.row("payments", None).await;
    for field in [
        "state",
        "failure_rate",
        "slow_call_rate",
        "failure_rate_threshold",
        "calls",
        "rejections",
        "retry_after_ms",
    ] {
        assert!(row.get(field).is_some(), "{field} missing from {row}");
    }

    // The dependency fails: the listing shows payments open, with a retry-after.
    for _ in 0..2 {
        payments.clone().oneshot(true).await.unwrap_err();
    }
    payments.clone().oneshot(false).await.unwrap_err();
    let row = http.row("payments", None).await;
    assert_eq!(row["state"], "open");
    assert_eq!(
        (row["failed"].as_u64(), row["rejections"].as_u64()),
        (Some(2), Some(1))
    );
    let retry = row["retry_after_ms"].as_u64().unwrap();
    assert!(retry > 50_000 && retry <= 60_000, "{retry}");
    admin.log.look(&registry);

    // Reset by name.
    let (status, rows) = http.json("POST", "/breakers/payments/reset", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rows[0]["state"], "closed");
    assert_eq!(registry.handle("payments").unwrap().state(), State::Closed);
    let (_, log) = http.json("GET", "/transitions", "").await;
    assert_eq!(log[0]["name"], "payments");
    assert_eq!(
        (&log[0]["from"], &log[0]["to"]),
        (&json!("open"), &json!("closed"))
    );

    // One key of a keyed breaker, then all of them.
    let (status, _) = http
        .send("POST", "/breakers/hosts/force-open?key=h1", "")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(http.row("hosts", Some("h1")).await["state"], "forced-open");
    assert_eq!(http.row("hosts", Some("h2")).await["state"], "closed");
    let (status, _) = http.send("POST", "/breakers/hosts/metrics-only", "").await;
    assert_eq!(status, StatusCode::OK);
    for key in ["h1", "h2", "(overflow)"] {
        assert_eq!(http.row("hosts", Some(key)).await["state"], "metrics-only");
    }
    http.send("POST", "/breakers/hosts/disable", "").await;
    assert_eq!(http.row("hosts", Some("h2")).await["state"], "disabled");
    http.send("POST", "/breakers/payments/force-open", "").await;
    assert_eq!(http.row("payments", None).await["state"], "forced-open");

    // A new configuration.
    let update = r#"{"failure_rate_threshold": 0.3, "window_calls": 20, "minimum_calls": 10}"#;
    let (status, rows) = http.json("PUT", "/breakers/payments/config", update).await;
    assert_eq!(status, StatusCode::OK, "{rows}");
    assert_eq!(rows[0]["failure_rate_threshold"], 0.3);
    assert_eq!(rows[0]["state"], "forced-open", "the state is kept");
    let config = format!("{:?}", registry.config("payments").unwrap());
    assert!(config.contains("Window::count(20)") && config.contains("minimum_calls: 10"));
    let (status, _) = http
        .send("PUT", "/breakers/hosts/config", r#"{"half_open_calls": 3}"#)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(format!("{:?}", registry.config("hosts").unwrap()).contains("half_open_calls: 3"));

    // The operator's page.
    let (status, page) = http.send("GET", "/", "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<table") && page.contains("/breakers"));
}

#[tokio::test]
async fn bad_requests_get_a_4xx_with_a_message_and_change_nothing() {
    let (registry, _payments) = registry().await;
    let http = Http::start(admin(&registry)).await;
    let before = comparable(&registry);
    let too_large = format!("{{\"minimum_calls\": {}}}", "1".repeat(api::MAX_BODY));
    let cases: &[(&str, &str, &str, StatusCode)] = &[
        ("POST", "/breakers/nope/reset", "", StatusCode::NOT_FOUND),
        (
            "POST",
            "/breakers/payments/explode",
            "",
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/breakers/payments/reset?key=h1",
            "",
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            "/breakers/hosts/reset?key=nope",
            "",
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            "/breakers/payments/reset?key=a&key=b",
            "",
            StatusCode::BAD_REQUEST,
        ),
        (
            "PUT",
            "/breakers/nope/config",
            r#"{"minimum_calls": 5}"#,
            StatusCode::NOT_FOUND,
        ),
        (
            "PUT",
            "/breakers/payments/config",
            "",
            StatusCode::BAD_REQUEST,
        ),
        (
            "PUT",
            "/breakers/payments/config",
            "{}",
            StatusCode::BAD_REQUEST,
        ),
        (
            "PUT",
            "/breakers/payments/config",
            "[1, 2]",
            StatusCode::BAD_REQUEST,
        ),
        (
            "PUT",
            "/breakers/payments/config",
            "{\"minimum_calls\": ",
            StatusCode::BAD_REQUEST,
        ),
        (
            "PUT",
            "/breakers/payments/config",
            r#"{"minimum_calls": "5"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "PUT",
            "/breakers/payments/config",
            r#"{"minimum_calls": -5}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "PUT",
            "/breakers/payments/config",
            r#"{"minimum_cals": 5}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "PUT",
            "/breakers/payments/config",
            r#"{"minimum_calls": 0}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "PUT",
            "/breakers/payments/config",
            r#"{"failure_rate_threshold": 0}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "PUT",
            "/breakers/payments/config",
            r#"{"window_calls": 5, "window_seconds": 5}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "PUT",
            "/breakers/payments/config",
            r#"{"half_open_successes": 9}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "PUT",
            "/breakers/payments/config",
            r#"{"slow_call_duration_ms": 100}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "PUT",
            "/breakers/payments/config",
            &too_large,
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        ("GET", "/breakers/payments", "", StatusCode::NOT_FOUND),
        (
            "DELETE",
            "/breakers/payments/reset",
            "",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    for (method, path, body, expected) in cases {
        let (status, answer) = http.send(method, path, body).await;
        assert_eq!(status, *expected, "{method} {path} {body:.60}: {answer}");
        let error: Value = serde_json::from_str(&answer).unwrap();
        let message = error["error"].as_str().unwrap_or("");
        assert!(
            message.len() > 10,
            "{method} {path}: no message in {answer}"
        );
        assert_eq!(
            comparable(&registry),
            before,
            "{method} {path} {body:.60} changed something"
        );
    }
}

// ===== the parser under proptest =====

/// One request to the router, in process.
fn request(
    router: &mut axum::Router,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .body(axum::body::Body::from(body));
    let Ok(request) = request else {
        return (StatusCode::BAD_REQUEST, Value::Null); // not even a request: http refuses it
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let response = router
            .as_service()
            .ready()
            .await
            .unwrap()
            .call(request)
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    })
}

fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("failure_rate_threshold".to_string()),
        Just("slow_call_rate_threshold".to_string()),
        Just("window_calls".to_string()),
        Just("window_seconds".to_string()),
        Just("window_buckets".to_string()),
        Just("minimum_calls".to_string()),
        Just("consecutive_failures".to_string()),
        Just("open_duration_ms".to_string()),
        Just("half_open_calls".to_string()),
        Just("half_open_successes".to_string()),
        Just("half_open_max_wait_ms".to_string()),
        "[a-z_]{1,24}",
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        (0u32..5_000).prop_map(Value::from),
        (0.0f64..2.0).prop_map(Value::from),
        ".{0,8}".prop_map(Value::from),
        Just(Value::Null),
        Just(json!([1])),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any body: 200 only for an object of known fields whose values the builder accepts;
    /// anything else a 4xx with a message, and nothing changed.
    #[test]
    fn a_configuration_body_is_applied_whole_or_refused_with_a_4xx(
        fields in prop::collection::vec((field(), value()), 0..4),
        garbage in prop::collection::vec(any::<u8>(), 0..64),
        use_garbage in any::<bool>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (registry, _payments) = runtime.block_on(registry());
        let mut router = api::router(admin(&registry));
        let before = comparable(&registry);
        let body = if use_garbage {
            garbage
        } else {
            serde_json::to_vec(&fields.iter().cloned().collect::<serde_json::Map<_, _>>()).unwrap()
        };
        let expected = api::parse_update(&body)
            .map_err(|_| StatusCode::BAD_REQUEST)
            .and_then(|update| {
                let builder = update.apply(registry.config("payments").unwrap())
                    .map_err(|_| StatusCode::UNPROCESSABLE_ENTITY)?;
                // What the registry must accept: what a builder accepts, keeping slow calls off.
                match builder.clone().build() {
                    Ok(_) if update.slow_call_duration_ms.is_none()
                        && update.slow_call_rate_threshold.is_none() => Ok(()),
                    _ => Err(StatusCode::UNPROCESSABLE_ENTITY),
                }
            });
        let (status, answer) = request(&mut router, "PUT", "/breakers/payments/config", body);
        match expected {
            Ok(()) => prop_assert_eq!(status, StatusCode::OK, "{}", answer),
            Err(code) => {
                prop_assert_eq!(status, code, "{}", answer);
                prop_assert!(answer["error"].as_str().is_some_and(|m| !m.is_empty()));
                prop_assert_eq!(comparable(&registry), before);
            }
        }
    }

    /// Any name and action: 200 only for a registered name and a known action.
    #[test]
    fn an_action_is_applied_or_refused_with_a_4xx(
        name in prop_oneof![Just("payments".to_string()), Just("hosts".to_string()), "[a-zA-Z0-9%._-]{1,16}"],
        action in prop_oneof![
            Just("force-open".to_string()), Just("reset".to_string()),
            Just("metrics-only".to_string()), Just("disable".to_string()),
            "[a-zA-Z0-9%._-]{1,16}",
        ],
        key in proptest::option::of("[a-z0-9]{1,3}"),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (registry, _payments) = runtime.block_on(registry());
        let mut router = api::router(admin(&registry));
        let before = comparable(&registry);
        let query = key.as_ref().map_or(String::new(), |k| format!("?key={k}"));
        let path = format!("/breakers/{name}/{action}{query}");
        let (status, answer) = request(&mut router, "POST", &path, Vec::new());
        let known_action = action.parse::<tower_circuit_breaker::registry::Control>().is_ok();
        let known_target = match (name.as_str(), key.as_deref()) {
            ("payments", None) | ("hosts", None) => true,
            ("hosts", Some(k)) => k == "h1" || k == "h2",
            _ => false,
        };
        if known_action && known_target {
            prop_assert_eq!(status, StatusCode::OK, "{}: {}", path, answer);
        } else {
            prop_assert!(status.is_client_error(), "{}: {} {}", path, status, answer);
            prop_assert!(answer["error"].as_str().is_some_and(|m| !m.is_empty()), "{}", answer);
            prop_assert_eq!(comparable(&registry), before);
        }
    }
}
