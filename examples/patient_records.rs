//! A hospital's records service (axum) answers `GET /records/{id}` from a records backend, a
//! separate HTTP server. The backend goes down for a while: the service keeps answering with the
//! last good copy of each record, marked `"stale": true`, and serves live data again once the
//! backend is back.
//!
//! The service calls the backend through a circuit breaker (`HttpClassify`, open after 2 failures
//! in a row, for 1 s) whose fallback answers from a cache: the last good answer per record. The
//! two requests that find the backend down fail (`502`) and open the circuit; from then on every
//! request is answered from the cache, without waiting for the backend (`503` for a record that
//! was never fetched). The backend comes back with an updated record; once the open interval has
//! passed, the next request probes it, the circuit closes, and the update shows.
//!
//! The records service, the backend and the ward's client are all real HTTP (loopback, axum
//! servers, hyper-util's `Client`). Prints each request the ward makes and its answer, the
//! breaker's transitions, and a summary. Exits by itself in under two seconds.
//!
//! ```sh
//! cargo run --example patient_records
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State as Shared};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use examples::Server;
use futures::StreamExt;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::{Instant, sleep, sleep_until};
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder, ServiceExt, service_fn};
use tower_circuit_breaker::http::HttpClassify;
use tower_circuit_breaker::{CircuitBreakerLayer, Event, Handle};

const OPEN_FOR: Duration = Duration::from_secs(1);

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let start = Instant::now();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let reached = Arc::new(AtomicU64::new(0));
    let mut backend = Server::start(backend_app(1, reached.clone())).await?;
    let backend_addr = backend.addr;

    let cache = Cache::default();
    let breaker = CircuitBreakerLayer::builder()
        .name("records-backend")
        .consecutive_failures(2)
        .open_duration(OPEN_FOR)
        .call_timeout(Duration::from_millis(500))
        .classify(HttpClassify::new())
        .build()?
        .with_fallback(cache.answers());
    let from_cache = cache.answered.clone();
    let handle = breaker.handle();
    let records = ServiceBuilder::new().layer(breaker).service(fetch_from(
        client.clone(),
        backend_addr,
        cache.clone(),
    ));
    let service = Server::start(records_app(Records::new(records))).await?;
    print_transitions(&handle, start);

    let mut ward = Ward {
        client: client.clone(),
        service: service.addr,
        handle: handle.clone(),
        start,
        tally: Tally::default(),
    };
    let say = |what: &str| println!("{:>6} ms  -- {what}", start.elapsed().as_millis());

    println!(
        "The ward reads patient records through the records service, which calls the records \
         backend\nthrough a circuit breaker (open after 2 failures in a row, for {} s) with a \
         cache as its fallback.\n",
        OPEN_FOR.as_secs()
    );
    say("the records backend is up");
    ward.get(1).await?;
    ward.get(2).await?;

    sleep(Duration::from_millis(100)).await;
    backend.stop().await?;
    say("the records backend goes down (connection refused)");
    ward.get(1).await?;
    ward.get(2).await?;
    let opened = Instant::now();

    sleep(Duration::from_millis(200)).await;
    ward.get(1).await?;
    ward.get(2).await?;
    ward.get(3).await?;

    sleep(Duration::from_millis(200)).await;
    // Same address: the service's configuration does not change.
    backend = Server::start_on(backend_addr, backend_app(2, reached.clone())).await?;
    say("the records backend is back, with record 1 updated; the circuit is still open");
    ward.get(1).await?;

    sleep_until(opened + OPEN_FOR + Duration::from_millis(100)).await;
    say("the open interval is over: the next request probes the backend");
    ward.get(1).await?;
    ward.get(2).await?;
    ward.get(3).await?;

    ward.tally.print_summary();
    println!(
        "  kept from the backend by the breaker {}",
        from_cache.load(Relaxed)
    );
    println!(
        "  requests that reached the backend    {}",
        reached.load(Relaxed)
    );
    println!("  final state of the circuit           {}", handle.state());

    drop((ward, client));
    service.stop().await?;
    backend.stop().await?;
    Ok(())
}

/// Prints each transition of the breaker the moment it happens.
fn print_transitions(handle: &Handle, start: Instant) {
    let mut events = handle.subscribe();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if let Event::StateTransition { from, to, .. } = event {
                let at = start.elapsed().as_millis();
                println!("{at:>6} ms  ** circuit {from} -> {to}");
            }
        }
    });
}

// ===== the records service =====

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// The records backend as the service sees it: a record's id in, the backend's answer out.
type Records = BoxCloneSyncService<u32, http::Response<Bytes>, BoxError>;

/// `GET /records/{id}`: the record, with `"stale": true` and its age when it comes from the
/// cache.
fn records_app(records: Records) -> Router {
    Router::new()
        .route("/records/{id}", get(record))
        .with_state(records)
}

async fn record(Shared(records): Shared<Records>, Path(id): Path<u32>) -> Response {
    let answer = match records.oneshot(id).await {
        Ok(answer) => answer,
        Err(e) => {
            let error = format!(r#"{{"error":"records backend failed: {}"}}"#, causes(&*e));
            return json(StatusCode::BAD_GATEWAY, error);
        }
    };
    let status = answer.status();
    let cached = answer.extensions().get::<Cached>().copied();
    let body = String::from_utf8_lossy(answer.body()).into_owned();
    let body = match cached {
        _ if !status.is_success() => body,
        None => format!(r#"{{"stale":false,"record":{body}}}"#),
        Some(Cached { age }) => format!(
            r#"{{"stale":true,"age_ms":{},"record":{body}}}"#,
            age.as_millis()
        ),
    };
    json(status, body)
}

/// An error and its sources, as one line: hyper-util's own message is only "client error
/// (Connect)".
fn causes(mut error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    while let Some(source) = error.source() {
        line = format!("{line}: {source}");
        error = source;
    }
    line
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Fetches a record from the backend at `addr`, and keeps each good answer in `cache`.
fn fetch_from(
    client: HttpClient,
    addr: SocketAddr,
    cache: Cache,
) -> impl tower::Service<u32, Response = http::Response<Bytes>, Error = BoxError, Future: Send + 'static>
+ Clone
+ Send
+ Sync
+ 'static {
    service_fn(move |id: u32| {
        let (client, cache) = (client.clone(), cache.clone());
        async move {
            let request = Request::get(format!("http://{addr}/records/{id}"))
                .body(Empty::new())
                .expect("a socket address and a path make a URI");
            let (head, body) = client.request(request).await?.into_parts();
            let body = body.collect().await?.to_bytes();
            if head.status == StatusCode::OK {
                cache.keep(id, body.clone());
            }
            Ok::<_, BoxError>(http::Response::from_parts(head, body))
        }
    })
}

/// The last good answer for each record, and when it was fetched.
#[derive(Clone, Default)]
struct Cache {
    records: Arc<Mutex<HashMap<u32, (Bytes, Instant)>>>,
    /// Requests answered from here.
    answered: Arc<AtomicU64>,
}

/// Marks an answer that comes from the cache, with its age.
#[derive(Clone, Copy)]
struct Cached {
    age: Duration,
}

impl Cache {
    fn keep(&self, id: u32, record: Bytes) {
        let mut records = self
            .records
            .lock()
            .expect("the cache's lock is never poisoned");
        records.insert(id, (record, Instant::now()));
    }

    /// The fallback: answers from the cache, marked [`Cached`], or `503` for a record never
    /// fetched.
    fn answers(
        &self,
    ) -> impl tower::Service<
        u32,
        Response = http::Response<Bytes>,
        Error = BoxError,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static {
        let cache = self.clone();
        service_fn(move |id: u32| {
            cache.answered.fetch_add(1, Relaxed);
            let cached = cache
                .records
                .lock()
                .expect("the cache's lock is never poisoned")
                .get(&id)
                .cloned();
            let answer = match cached {
                Some((record, fetched)) => {
                    let mut answer = http::Response::new(record);
                    let age = fetched.elapsed();
                    answer.extensions_mut().insert(Cached { age });
                    answer
                }
                None => {
                    let error = format!(
                        r#"{{"error":"records backend unavailable, and record {id} is not cached"}}"#
                    );
                    let mut answer = http::Response::new(Bytes::from(error));
                    *answer.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    answer
                }
            };
            std::future::ready(Ok::<_, BoxError>(answer))
        })
    }
}

// ===== the ward =====

/// The ward's client: reads records from the records service and prints each answer.
struct Ward {
    client: HttpClient,
    service: SocketAddr,
    handle: Handle,
    start: Instant,
    tally: Tally,
}

/// The answers the ward got.
#[derive(Default)]
struct Tally {
    live: u32,
    stale: u32,
    unavailable: u32,
    failed: u32,
}

impl Tally {
    fn print_summary(&self) {
        println!("\nsummary");
        println!("  live answers                         {}", self.live);
        println!("  stale answers, from the cache        {}", self.stale);
        println!(
            "  not cached, answered 503             {}",
            self.unavailable
        );
        println!("  failed (found the backend down)      {}", self.failed);
    }
}

impl Ward {
    async fn get(&mut self, id: u32) -> Result<(), BoxError> {
        let uri = format!("http://{}/records/{id}", self.service);
        let request = Request::get(&uri)
            .body(Empty::new())
            .expect("a socket address and a path make a URI");
        let response = self.client.request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        let body = String::from_utf8_lossy(&body);
        match status {
            StatusCode::OK if body.contains(r#""stale":true"#) => self.tally.stale += 1,
            StatusCode::OK => self.tally.live += 1,
            StatusCode::SERVICE_UNAVAILABLE => self.tally.unavailable += 1,
            _ => self.tally.failed += 1,
        }
        println!(
            "{:>6} ms  GET /records/{id} -> {} {body}   [circuit {}]",
            self.start.elapsed().as_millis(),
            status.as_u16(),
            self.handle.state()
        );
        Ok(())
    }
}

// ===== the records backend =====

/// The backend's records: `GET /records/{id}`, at `version` (record 1 changes in version 2).
/// Counts the requests that reach it in `reached`.
fn backend_app(version: u32, reached: Arc<AtomicU64>) -> Router {
    let allergies = if version >= 2 {
        r#"["penicillin"]"#
    } else {
        "[]"
    };
    let patients: Arc<HashMap<u32, String>> = Arc::new(
        [
            (1, "Ada Lovelace", allergies),
            (2, "Alan Turing", "[]"),
            (3, "Grace Hopper", "[]"),
        ]
        .into_iter()
        .map(|(id, name, allergies)| {
            let record = format!(
                r#"{{"id":{id},"name":"{name}","allergies":{allergies},"version":{version}}}"#
            );
            (id, record)
        })
        .collect(),
    );
    Router::new().route(
        "/records/{id}",
        get(move |Path(id): Path<u32>| async move {
            reached.fetch_add(1, Relaxed);
            match patients.get(&id) {
                Some(record) => (StatusCode::OK, record.clone()),
                None => (
                    StatusCode::NOT_FOUND,
                    format!(r#"{{"error":"no record {id}"}}"#),
                ),
            }
        }),
    )
}

// ===== servers on loopback =====
