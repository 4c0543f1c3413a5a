//! The admin API over a [`Registry`]: the routes, the parsing of what an operator sends, and the
//! log of transitions the operator's page shows. Used by `main.rs`, and by the tests
//! (`tests/admin.rs`, `tests/admin_page.rs`), which include this file.
//!
//! | route | what it does | answers |
//! |---|---|---|
//! | `GET /` | the operator's page (HTML, refreshes itself) | 200 |
//! | `GET /breakers` | every breaker and key: state, rates and thresholds, counts, retry-after | 200, JSON array |
//! | `GET /transitions` | the latest transitions, newest first | 200, JSON array |
//! | `POST /breakers/{name}/{action}[?key=K]` | `force-open`, `disable`, `metrics-only` or `reset`; one key of a keyed breaker with `key` | 200 and the rows after; 404 unknown name or key; 400 unknown action |
//! | `PUT /breakers/{name}/config` | a JSON object of the fields to change (`ConfigUpdate`) | 200 and the rows after; 400 not such an object; 404 unknown name; 422 a value out of range |
//!
//! Every refusal is a JSON object `{"error": "..."}` saying why, and changes nothing.

#![allow(dead_code)] // each includer uses a part

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State as Extract};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};
use tower_circuit_breaker::State;
use tower_circuit_breaker::registry::{ConfigUpdate, Control, Registry, RegistryError, Snapshot};

/// The largest request body (a configuration change is a few hundred bytes).
pub const MAX_BODY: usize = 16 * 1024;
/// How many transitions the log keeps.
pub const LOG: usize = 50;

/// The operator's page.
pub const PAGE: &str = include_str!("page.html");

/// What the routes share.
#[derive(Clone)]
pub struct Admin {
    pub registry: Registry,
    pub log: TransitionLog,
}

/// The admin API's routes.
pub fn router(admin: Admin) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/breakers", get(list))
        .route("/transitions", get(transitions))
        .route("/breakers/{name}/config", put(configure))
        .route("/breakers/{name}/{action}", post(control))
        .fallback(|| async { refuse(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            refuse(StatusCode::METHOD_NOT_ALLOWED, "not a method of this route")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(admin)
}

/// A refusal: `status` and `{"error": message}`.
pub fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    #[derive(Serialize)]
    struct Refusal {
        error: String,
    }
    let body = Refusal {
        error: message.into(),
    };
    (status, Json(body)).into_response()
}

/// The status a registry's refusal gets.
pub fn status_of(err: &RegistryError) -> StatusCode {
    match err {
        RegistryError::UnknownName(_) | RegistryError::UnknownKey { .. } => StatusCode::NOT_FOUND,
        RegistryError::UnknownAction(_) => StatusCode::BAD_REQUEST,
        RegistryError::Config(_) => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::CONFLICT,
    }
}

fn refused(err: RegistryError) -> Response {
    refuse(status_of(&err), err.to_string())
}

async fn list(Extract(admin): Extract<Admin>) -> Json<Vec<Snapshot>> {
    Json(admin.registry.list())
}

async fn transitions(Extract(admin): Extract<Admin>) -> Json<Vec<Transition>> {
    Json(admin.log.latest())
}

/// `?key=...`
#[derive(Deserialize)]
pub struct KeyQuery {
    key: Option<String>,
}

/// What axum says of a path it cannot decode (not UTF-8 after percent-decoding).
type PathResult<T> = Result<Path<T>, axum::extract::rejection::PathRejection>;

fn bad_path(rejection: axum::extract::rejection::PathRejection) -> Response {
    refuse(StatusCode::BAD_REQUEST, format!("bad path: {rejection}"))
}

async fn control(
    Extract(admin): Extract<Admin>,
    path: PathResult<(String, String)>,
    query: Result<Query<KeyQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (name, action) = match path {
        Ok(Path(parts)) => parts,
        Err(rejection) => return bad_path(rejection),
    };
    let Ok(Query(query)) = query else {
        return refuse(StatusCode::BAD_REQUEST, "the query must be ?key=<key>");
    };
    let control = match action.parse::<Control>() {
        Ok(control) => control,
        Err(err) => return refused(err),
    };
    match admin.registry.control(&name, query.key.as_deref(), control) {
        Ok(()) => {
            admin.log.look(&admin.registry);
            Json(rows_of(&admin.registry, &name)).into_response()
        }
        Err(err) => refused(err),
    }
}

async fn configure(
    Extract(admin): Extract<Admin>,
    path: PathResult<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return refuse(rejection.status(), rejection.body_text()),
    };
    let name = match path {
        Ok(Path(name)) => name,
        Err(rejection) => return bad_path(rejection),
    };
    let update = match parse_update(&body) {
        Ok(update) => update,
        Err(message) => return refuse(StatusCode::BAD_REQUEST, message),
    };
    match admin.registry.update(&name, &update) {
        Ok(()) => Json(rows_of(&admin.registry, &name)).into_response(),
        Err(err) => refused(err),
    }
}

/// A configuration change from a request body: a JSON object of `ConfigUpdate`'s fields, at
/// least one. The error says what is wrong, for a 400.
pub fn parse_update(body: &[u8]) -> Result<ConfigUpdate, String> {
    let update: ConfigUpdate = serde_json::from_slice(body)
        .map_err(|e| format!("the body must be a JSON object of configuration fields: {e}"))?;
    if update == ConfigUpdate::default() {
        return Err("the body sets no configuration field".to_string());
    }
    Ok(update)
}

fn rows_of(registry: &Registry, name: &str) -> Vec<Snapshot> {
    registry
        .list()
        .into_iter()
        .filter(|row| row.name == name)
        .collect()
}

// ===== the transition log =====

/// A state change seen by the log.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Transition {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub name: String,
    pub key: Option<String>,
    pub from: String,
    pub to: String,
}

/// The latest transitions of every breaker and key, found by comparing listings: [`look`]
/// (TransitionLog::look) is called by [`watch`] and after each operator action. A transition
/// and its reverse between two looks are not seen; the page shows the state each time it looks.
#[derive(Clone, Default)]
pub struct TransitionLog(Arc<Mutex<LogState>>);

#[derive(Default)]
struct LogState {
    last: Vec<((String, Option<String>), State)>,
    seen: VecDeque<Transition>,
}

impl TransitionLog {
    /// Compares the registry's states with the last look's, and logs the changes.
    pub fn look(&self, registry: &Registry) {
        let now: Vec<_> = registry
            .list()
            .into_iter()
            .map(|row| ((row.name, row.key), row.state))
            .collect();
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut log = self.0.lock().unwrap();
        for (id, state) in &now {
            let before = log.last.iter().find(|(seen, _)| seen == id).map(|s| s.1);
            let from = before.unwrap_or(State::Closed);
            if from != *state {
                log.seen.push_front(Transition {
                    at_ms,
                    name: id.0.clone(),
                    key: id.1.clone(),
                    from: from.to_string(),
                    to: state.to_string(),
                });
                log.seen.truncate(LOG);
            }
        }
        log.last = now;
    }

    /// The latest transitions, newest first.
    pub fn latest(&self) -> Vec<Transition> {
        self.0.lock().unwrap().seen.iter().cloned().collect()
    }
}

/// Looks at the registry every `every`, for as long as the runtime runs.
pub fn watch(admin: &Admin, every: Duration) -> tokio::task::JoinHandle<()> {
    let admin = admin.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        loop {
            ticks.tick().await;
            admin.log.look(&admin.registry);
        }
    })
}
