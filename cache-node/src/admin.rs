//! The admin HTTP API: metrics, status and site operations.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/metrics` | Prometheus text format |
//! | GET | `/status` | JSON: site, caches and roles, WAL, shipper, consumers |
//! | GET | `/caches/{cache}/digest` | JSON: live keys and an order-independent digest |
//! | POST | `/caches/{cache}/promote` | make this site the primary (active-passive) |
//! | POST | `/caches/{cache}/demote` | turn this site read-only for the cache (active-passive) |
//! | POST | `/caches/{cache}/switchover` | planned hand-over to the successor (`?to=<site>`, `timeout_ms`): stop writes here, wait until it applied everything, promote it |
//! | POST | `/caches/{cache}/push-state` | re-publish every record of the cache to this site's topic |
//! | POST | `/sites/{site}/offline` | stop consuming a remote site (until an operator brings it back); this site: drain it (no sentinel names it, its clients are closed once, it keeps replicating) |
//! | POST | `/sites/{site}/online` | consume it again, from where it stopped; this site: named again once caught up |
//! | POST | `/sites/{site}/state-transfer` | close a gap: the remote pushes its state (`?pushed=true`: it did) |
//! | POST | `/snapshot` | take a snapshot now |
//! | GET | `/v1/bdbs` | JSON: this node's caches as Redis Enterprise databases (see below) |
//! | GET | `/v1/bdbs/{uid}/availability` | 200 when this site's database is available (see below) |
//!
//! With `server.admin_token` set, every POST needs `Authorization: Bearer <token>`
//! (else 401, with `WWW-Authenticate: Bearer`); the GETs stay open, so scrapers and
//! status checks need no secret (and a client's `Authorization: Basic …` is ignored).
//!
//! The two `/v1/bdbs` routes are the shapes of the Redis Enterprise REST API that
//! client-side geographic failover calls (redis-py's `LagAwareHealthCheck`): it finds
//! the database whose endpoint host is its client's host, then asks whether it is
//! available. `/v1/bdbs` is an array with one object per cache of `config.caches`:
//!
//! ```json
//! {"uid": 1, "name": "default", "xsite_site": "site-a",
//!  "endpoints": [{"uid": "1:1", "dns_name": "10.0.0.5", "addr": ["10.0.0.5"], "port": 6379,
//!                 "addr_type": "external", "proxy_policy": "single"}]}
//! ```
//!
//! `uid` is 1 + the cache's index in `config.caches` (stable while the list is), and
//! the endpoint is this node's announced RESP address (`server.announce_host`/`port`).
//! `/v1/bdbs/{uid}/availability` answers 200 `{"uid", "name", "xsite_site",
//! "available": true}` when this site's WAL can write (and, for an active-passive
//! cache, this site is its primary and not fenced); with `?extend_check=lag`, also
//! only when this site is caught up (see [`crate::sentinel::view`]) within
//! `availability_lag_tolerance_ms` (default `sentinel.failback_lag_ms`). Otherwise 503
//! `{"error_code": "bdb_unavailable" | "bdb_lagging", "description": <why>}`; an
//! unknown uid is 404 `bdb_not_found`, a bad query 400 `invalid_parameter`.

use crate::config::Config;
use crate::engine::Engine;
use crate::metrics;
use crate::replication::Replication;
use crate::server::ServerStats;
use crate::topology::Roles;
use axum::extract::{Path, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use xsite_schemas::{CacheName, SiteId};

#[derive(Clone)]
pub struct AdminState {
    pub config: Config,
    pub engine: Arc<Engine>,
    pub roles: Arc<Roles>,
    pub replication: Option<Arc<Replication>>,
    pub server: Arc<ServerStats>,
    pub directory: Arc<crate::sentinel::view::Directory>,
    pub failover: Option<Arc<crate::replication::failover::Failover>>,
}

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

fn bad_request(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, e.to_string())
}

fn cache_name(state: &AdminState, name: &str) -> Result<CacheName, ApiError> {
    let cache = CacheName::new(name).map_err(bad_request)?;
    if !state.config.caches.iter().any(|c| c.name == cache) {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no cache named '{cache}'")));
    }
    Ok(cache)
}

fn replication(state: &AdminState) -> Result<&Arc<Replication>, ApiError> {
    state
        .replication
        .as_ref()
        .ok_or_else(|| ApiError(StatusCode::CONFLICT, "replication is not configured on this node".into()))
}

/// Serve the admin API on the configured port until `cancel`.
pub async fn serve(state: AdminState, cancel: CancellationToken) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let port = state.config.server.admin_port.unwrap_or(0);
    let addr = format!("{}:{}", state.config.server.bind, port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the admin port {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/status", get(status))
        .route("/caches/{cache}/digest", get(digest))
        .route("/caches/{cache}/promote", post(promote))
        .route("/caches/{cache}/demote", post(demote))
        .route("/caches/{cache}/switchover", post(switchover))
        .route("/caches/{cache}/push-state", post(push_state))
        .route("/sites/{site}/offline", post(offline))
        .route("/sites/{site}/online", post(online))
        .route("/sites/{site}/state-transfer", post(state_transfer))
        .route("/snapshot", post(snapshot))
        .route("/v1/bdbs", get(bdbs))
        .route("/v1/bdbs/{uid}/availability", get(bdb_availability))
        .layer(axum::middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state);
    let task = tokio::spawn(async move {
        let shutdown = async move { cancel.cancelled().await };
        if let Err(err) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %err, "admin api stopped");
        }
    });
    Ok((local, task))
}

/// With `server.admin_token` set, lets a request other than a GET (or HEAD) through
/// only with `Authorization: Bearer <token>`.
async fn authorize(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let Some(token) = &state.config.server.admin_token else { return next.run(request).await };
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| same_secret(g.trim().as_bytes(), token.as_bytes())) {
        return next.run(request).await;
    }
    let message = match given {
        None => "this admin API needs a bearer token for its actions: Authorization: Bearer <server.admin_token>",
        Some(_) => "the bearer token is not this node's server.admin_token",
    };
    let mut response = ApiError(StatusCode::UNAUTHORIZED, message.into()).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
    response
}

/// Compares two secrets in a time that depends on their lengths only.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn metrics_text(State(state): State<AdminState>) -> Response {
    let body = metrics::render(metrics::Parts {
        engine: &state.engine,
        server: &state.server,
        roles: &state.roles,
        replication: state.replication.as_deref(),
        directory: &state.directory,
        failover: state.failover.as_deref(),
    });
    ([(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
        .into_response()
}

async fn status(State(state): State<AdminState>) -> Json<Value> {
    let engine = &state.engine;
    let repl = state.replication.as_ref().map(|r| {
        let s = &r.shipper_stats;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        json!({
            "shipper": {
                "acked_lsn": load(&s.acked_lsn),
                "backlog_records": load(&s.backlog_records),
                "backlog_alarm": load(&s.backlog_alarm) == 1,
                "shipped_entries": load(&s.shipped_entries),
                "delivery_errors": load(&s.delivery_errors),
                "undeliverable_entries": load(&s.undeliverable_entries),
                "last_undeliverable": s.last_undeliverable.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
            },
            "remotes": r.consumer_stats.iter().map(|(site, c)| json!({
                "site": site.as_str(),
                "online": r.online_sites().contains(site),
                "applied": load(&c.applied_changed) + load(&c.applied_unchanged),
                "state": c.remote.status(),
                "offline_at_its_site": c.offline_at_its_site(),
                "gaps": load(&c.gaps),
                "dead_lettered": load(&c.dead_lettered),
                "transient_errors": load(&c.transient_errors),
                "checkpoints_pending": load(&c.checkpoints_pending),
                "last_applied_wall_ms": load(&c.last_applied_wall_ms),
                "consumer_errors": load(&c.errors),
                "last_consumer_error": c.last_error(),
                "health": r.health[site].status(),
                "lag": r.lag[site].total().map(|(ms, entries)| json!({
                    "ms": ms,
                    "entries": entries,
                    "partitions": r.lag[site].partitions(),
                })),
            })).collect::<Vec<_>>(),
            "local_watermark": r.local_watermark().map(|h| h.as_u64()),
            "stale_dropped": r.stale_dropped(),
            "gc_floor": r.gc_floor().map(|h| h.as_u64()),
            "offsets": r.offsets().into_iter().map(|(t, p, o, flushed)| json!({"topic": t, "partition": p, "offset": o, "flushed": flushed})).collect::<Vec<_>>(),
        })
    });
    Json(json!({
        "site": state.config.site.as_str(),
        "offline": state.replication.as_ref().is_some_and(|r| r.own_site_offline()),
        "caches": state.roles.describe(),
        "store": engine.stats_json(),
        "wal": {
            "last_lsn": engine.wal().last_lsn().0,
            "durable_lsn": engine.wal().durable_lsn().0,
            "oldest_lsn": engine.wal().oldest_lsn().0,
            "health": engine.wal().health(),
        },
        "replication": repl,
        "failover": state.failover.as_ref().map(|f| json!({
            "mode": state.config.failover.mode,
            "caches": f.status(),
        })),
        "sites": state.directory.sites().iter().map(|v| json!({
            "site": v.site.as_str(),
            "caught_up": state.directory.caught_up(&v.site).is_ok(),
            "named": v.usable,
            "why": v.why,
        })).collect::<Vec<_>>(),
        "sentinel": state.config.sentinel.port.map(|_| json!({
            "learning": state.directory.learning(),
            "masters": state.directory.masters().iter().map(|m| json!({
                "name": m.name,
                "site": m.site.as_str(),
                "address": m.addr.as_ref().map(|(h, p)| format!("{h}:{p}")),
                "down": m.down,
            })).collect::<Vec<_>>(),
        })),
    }))
}

async fn digest(State(state): State<AdminState>, Path(cache): Path<String>) -> ApiResult {
    let cache = cache_name(&state, &cache)?;
    let (keys, digest) = state.engine.live_count_and_digest(&cache);
    Ok(Json(json!({ "cache": cache.as_str(), "keys": keys, "digest": format!("{digest:016x}") })))
}

async fn promote(State(state): State<AdminState>, Path(cache): Path<String>) -> ApiResult {
    let cache = cache_name(&state, &cache)?;
    let epoch = state.roles.promote(&cache).map_err(bad_request)?;
    if let Some(f) = &state.failover {
        f.promoted(&cache);
    }
    state
        .engine
        .announce_epoch(&cache)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(json!({ "cache": cache.as_str(), "primary": state.config.site.as_str(), "epoch": epoch })))
}

async fn demote(State(state): State<AdminState>, Path(cache): Path<String>) -> ApiResult {
    let cache = cache_name(&state, &cache)?;
    let was_primary = state.roles.demote(&cache).map_err(bad_request)?;
    Ok(Json(json!({
        "cache": cache.as_str(),
        "site": state.config.site.as_str(),
        "read_only": true,
        "was_primary": was_primary,
        "epoch": state.engine.epoch(&cache),
    })))
}

#[derive(Debug, Deserialize, Default)]
struct SwitchoverQuery {
    to: Option<String>,
    timeout_ms: Option<u64>,
}

/// Longest a switchover waits for the new primary to apply everything, by default.
const SWITCHOVER_TIMEOUT_MS: u64 = 30_000;

/// A planned switchover of an active-passive cache from this site (its primary) to
/// its successor: this site stops taking writes, waits until the successor has
/// applied every one of its entries, then asks the successor to promote itself
/// (through `[[remote]] admin_url`). Nothing acknowledged is lost; the pause is
/// reported. If the successor does not catch up in time, this site takes writes
/// again and nothing changes.
async fn switchover(
    State(state): State<AdminState>,
    Path(cache): Path<String>,
    axum::extract::Query(q): axum::extract::Query<SwitchoverQuery>,
) -> ApiResult {
    let cache = cache_name(&state, &cache)?;
    let repl = replication(&state)?.clone();
    let local = state.config.site.clone();
    let c = state.engine.cache(&cache).expect("a known cache");
    if c.topology != crate::config::Topology::ActivePassive {
        return Err(bad_request(format!("cache '{cache}' is active-active: there is no primary to hand over")));
    }
    if c.primary().as_ref() != Some(&local) || c.is_read_only() {
        return Err(bad_request(format!("this site ({local}) is not the primary of '{cache}'")));
    }
    let to = match &q.to {
        Some(s) => SiteId::new(s.as_str()).map_err(bad_request)?,
        None => state.config.successor_of(&local).ok_or_else(|| bad_request("no successor to hand over to"))?,
    };
    let remote = state
        .config
        .remotes
        .iter()
        .find(|r| r.site == to)
        .ok_or_else(|| bad_request(format!("'{to}' is not a configured remote")))?;
    let Some(url) = remote.admin_url.clone() else {
        return Err(bad_request(format!(
            "[[remote]] '{to}' has no admin_url: a switchover asks it to promote itself through its admin API"
        )));
    };
    let timeout = Duration::from_millis(q.timeout_ms.unwrap_or(SWITCHOVER_TIMEOUT_MS));
    let started = Instant::now();
    let epoch = state.engine.epoch(&cache);
    state.roles.demote(&cache).map_err(bad_request)?;
    let undo = |why: String| {
        let resumed = state.roles.resume(&cache, epoch).unwrap_or(false);
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "switchover of '{cache}' to {to} abandoned: {why}; this site {}",
                if resumed { "is the primary again" } else { "stays read-only (a site was promoted meanwhile)" }
            ),
        )
    };
    // Writes already past the read-only check get their LSNs; then nothing new.
    state.engine.barrier().await.map_err(|e| undo(e.to_string()))?;
    let last = state.engine.clock().now();
    let waited = repl.wait_applied_by(&to, last, timeout).await.map_err(|e| undo(e.to_string()))?;
    let target = format!("{}/caches/{cache}/promote", url.trim_end_matches('/'));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().map_err(|e| undo(e.to_string()))?;
    let mut request = http.post(&target);
    if let Some(token) = &remote.admin_token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| undo(format!("POST {target}: {e}")))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        return Err(undo(format!("POST {target}: {status} {body}")));
    }
    let paused = started.elapsed();
    tracing::warn!(cache = %cache, from = %local, to = %to, paused_ms = paused.as_millis() as u64, waited_ms = waited.as_millis() as u64, "switchover done");
    Ok(Json(json!({
        "cache": cache.as_str(),
        "from": local.as_str(),
        "to": to.as_str(),
        "epoch": body["epoch"],
        "paused_ms": paused.as_millis() as u64,
        "waited_ms": waited.as_millis() as u64,
    })))
}

async fn push_state(State(state): State<AdminState>, Path(cache): Path<String>) -> ApiResult {
    let cache = cache_name(&state, &cache)?;
    replication(&state)?;
    let count = crate::replication::push_state(&state.config, &state.engine, &cache)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    Ok(Json(json!({ "cache": cache.as_str(), "pushed": count })))
}

async fn offline(State(state): State<AdminState>, Path(site): Path<String>) -> ApiResult {
    let site = SiteId::new(site).map_err(bad_request)?;
    let changed = replication(&state)?.take_offline(&site).await.map_err(bad_request)?;
    let this_site = site == state.config.site;
    Ok(Json(json!({ "site": site.as_str(), "online": false, "changed": changed, "this_site": this_site })))
}

async fn online(State(state): State<AdminState>, Path(site): Path<String>) -> ApiResult {
    let site = SiteId::new(site).map_err(bad_request)?;
    let changed = replication(&state)?.bring_online(&site).map_err(bad_request)?;
    let this_site = site == state.config.site;
    Ok(Json(json!({ "site": site.as_str(), "online": true, "changed": changed, "this_site": this_site })))
}

#[derive(Debug, serde::Deserialize)]
struct TransferQuery {
    #[serde(default)]
    pushed: bool,
}

async fn state_transfer(
    State(state): State<AdminState>,
    Path(site): Path<String>,
    axum::extract::Query(q): axum::extract::Query<TransferQuery>,
) -> ApiResult {
    let site = SiteId::new(site).map_err(bad_request)?;
    let repl = replication(&state)?;
    let pushed = repl.state_transfer(&site, q.pushed).await.map_err(|e| bad_request(format!("{e:#}")))?;
    let status = repl.consumer_stats[&site].remote.status();
    Ok(Json(json!({ "site": site.as_str(), "pushed": pushed, "remote": status })))
}

async fn snapshot(State(state): State<AdminState>) -> ApiResult {
    let lsn = state.engine.snapshot().await.map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(json!({ "lsn": lsn.0 })))
}

/// An error of the `/v1/bdbs` routes, shaped as Redis Enterprise's:
/// `{"error_code", "description"}`.
struct BdbError(StatusCode, &'static str, String);

impl IntoResponse for BdbError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error_code": self.1, "description": self.2 }))).into_response()
    }
}

/// The cache a bdb uid designates: uid 1 is `config.caches[0]`.
fn bdb_cache<'a>(state: &'a AdminState, uid: &str) -> Result<(usize, &'a CacheName), BdbError> {
    let not_found = || BdbError(StatusCode::NOT_FOUND, "bdb_not_found", format!("no database with uid '{uid}'"));
    let n: usize = uid.parse().map_err(|_| not_found())?;
    let cache = n.checked_sub(1).and_then(|i| state.config.caches.get(i)).ok_or_else(not_found)?;
    Ok((n, &cache.name))
}

async fn bdbs(State(state): State<AdminState>) -> Json<Value> {
    let announced = state.engine.address_of(state.engine.site());
    let all = state.config.caches.iter().enumerate().map(|(i, cache)| {
        let uid = i + 1;
        let endpoints = announced.iter().map(|(host, port)| {
            json!({
                "uid": format!("{uid}:1"),
                "dns_name": host,
                "addr": [host],
                "port": port,
                "addr_type": "external",
                "proxy_policy": "single",
            })
        });
        json!({
            "uid": uid,
            "name": cache.name.as_str(),
            "endpoints": endpoints.collect::<Vec<_>>(),
            "xsite_site": state.config.site.as_str(),
        })
    });
    Json(Value::Array(all.collect()))
}

#[derive(Debug, serde::Deserialize)]
struct AvailabilityQuery {
    extend_check: Option<String>,
    availability_lag_tolerance_ms: Option<String>,
}

impl AvailabilityQuery {
    /// The lag tolerance to check, when the lag is to be checked at all.
    fn lag_tolerance_ms(&self, default_ms: u64) -> Result<Option<u64>, BdbError> {
        let invalid = |what: String| BdbError(StatusCode::BAD_REQUEST, "invalid_parameter", what);
        match self.extend_check.as_deref() {
            None | Some("") => Ok(None),
            Some("lag") => match &self.availability_lag_tolerance_ms {
                None => Ok(Some(default_ms)),
                Some(ms) => ms.parse().map(Some).map_err(|_| {
                    invalid(format!("availability_lag_tolerance_ms must be a whole number of ms, not '{ms}'"))
                }),
            },
            Some(other) => Err(invalid(format!("extend_check must be 'lag', not '{other}'"))),
        }
    }
}

/// Available: this site is not taken offline and its WAL can write; with `extend_check=lag`, this site is also
/// caught up within the tolerance (one definition: [`crate::sentinel::view`]).
async fn bdb_availability(
    State(state): State<AdminState>,
    Path(uid): Path<String>,
    axum::extract::Query(q): axum::extract::Query<AvailabilityQuery>,
) -> Result<Json<Value>, BdbError> {
    let (uid, cache) = bdb_cache(&state, &uid)?;
    let tolerance_ms = q.lag_tolerance_ms(state.config.sentinel.failback_lag_ms)?;
    if state.replication.as_ref().is_some_and(|r| r.own_site_offline()) {
        let why = format!("{} was taken offline by an operator", state.config.site);
        return Err(BdbError(StatusCode::SERVICE_UNAVAILABLE, "bdb_unavailable", why));
    }
    // An active-passive cache is available only where it takes writes: at its
    // primary, while the primary's lease holds.
    if let Some(c) = state.engine.cache(cache).filter(|c| c.topology == crate::config::Topology::ActivePassive) {
        let site = state.config.site.as_str();
        let why = if c.is_read_only() {
            let primary = c.primary().map_or_else(|| "none known".to_string(), |p| p.to_string());
            Some(format!("{site} is a standby of '{cache}' (its primary: {primary})"))
        } else if !state.engine.lease_holds(c) {
            Some(format!("{site} is fenced for '{cache}': its successor has not acknowledged it lately"))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(BdbError(StatusCode::SERVICE_UNAVAILABLE, "bdb_unavailable", why));
        }
    }
    let check = match tolerance_ms {
        Some(ms) => state.directory.local_caught_up_within(ms),
        None => match state.engine.wal().health() {
            h if h.is_ok() => Ok(()),
            h => Err(format!("its WAL cannot write ({h:?})")),
        },
    };
    if let Err(why) = check {
        let code = if state.engine.wal().health().is_ok() { "bdb_lagging" } else { "bdb_unavailable" };
        let site = state.config.site.as_str();
        return Err(BdbError(StatusCode::SERVICE_UNAVAILABLE, code, format!("{site} is not available: {why}")));
    }
    Ok(Json(json!({
        "uid": uid,
        "name": cache.as_str(),
        "xsite_site": state.config.site.as_str(),
        "available": true,
    })))
}
