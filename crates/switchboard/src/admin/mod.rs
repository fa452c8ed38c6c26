//! The admin listener: one HTTP port per machine, served by the supervisor
//! (`admin.listen`, default `127.0.0.1:55757`).
//!
//! | path | what |
//! |---|---|
//! | `GET /` | the statistics dashboard (one page, embedded; charts drawn on canvas) |
//! | `GET /metrics` | the machine's metrics, Prometheus/OpenMetrics text format |
//! | `GET /api/summary` | per-minute figures and totals (`range=hour|day`, `module`, `interface`, `host`) |
//! | `GET /api/tree` | module → interface totals of the range |
//! | `GET /api/failures` | the failure log, newest first (`module`, `interface`, `code`, `host`, `q` for text in the message, `limit`; `range=hour|day` or `minutes=N` or `since_ms` for the time: all of it without any) |
//! | `GET /api/live` | clients, messages per second, processes, the current minute |
//! | `GET /api/stream` | the same as `/api/live`, pushed every second (server-sent events) |
//! | `/v1/...` | the HTTP push API: every Gateway API call as JSON ([`push`], `docs/push-api.md`) |
//! | `GET /openapi.json` | the push API's OpenAPI 3 document |
//!
//! On a loopback address no token is needed unless one is configured; anywhere else
//! `admin.token` (or `admin.token_file`) is required by the configuration, and every
//! request must carry `Authorization: Bearer TOKEN` or gets 401 (the push API's 401
//! is JSON).
//!
//! The supervisor also runs [`collect_loop`] here: every second it ingests the
//! statistics spool into the database and reads the processes' metric snapshots.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::merge::{render, Merger};
use crate::metrics::Series;
use crate::statistic::db::{FailureFilter, Filter, StatDb};
use crate::{stats, Error};

pub mod push;

/// The dashboard page, embedded in the binary.
const DASHBOARD: &str = include_str!("dashboard.html");

type Body = BoxBody<Bytes, Infallible>;

/// What the admin listener and the collection loop share.
pub struct Admin {
    config: Config,
    token: Option<String>,
    db: Mutex<StatDb>,
    merger: Mutex<Merger>,
    /// Series the supervisor itself sets (processes by role).
    own: Mutex<Vec<Series>>,
    /// The HTTP push API and its Gateway handle.
    push: push::PushApi,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Admin {
    /// Opens the statistics database and the retired metric totals.
    pub fn open(config: &Config) -> Result<Arc<Self>, Error> {
        let token = config.admin_token()?;
        let path = config.statistic_db();
        let db = StatDb::open(&path).map_err(|e| {
            Error::Other(format!(
                "cannot open the statistics database {}: {e}",
                path.display()
            ))
        })?;
        let merger = Merger::load(&db);
        Ok(Arc::new(Self {
            config: config.clone(),
            token,
            db: Mutex::new(db),
            merger: Mutex::new(merger),
            own: Mutex::new(Vec::new()),
            push: push::PushApi::new(config.admin.max_body),
        }))
    }

    /// Connects the push API's Gateway handle (an API client like any outside caller),
    /// retrying every few seconds while the store cannot be opened; closes it at
    /// `stop`.
    pub async fn connect_push(self: Arc<Self>, stop: CancellationToken) {
        let mut failing = false;
        let gateway = loop {
            let name = format!("admin-{}", std::process::id());
            let attempt = tokio::select! {
                _ = stop.cancelled() => return,
                r = crate::Gateway::connect_as(&self.config, name, false) => r,
            };
            match attempt {
                Ok(g) => break g,
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "push API: cannot open the store; retrying");
                        failing = true;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                }
            }
        };
        if failing {
            tracing::info!("push API: store reachable; pushes are served");
        }
        if self.push.set_gateway(gateway.clone()).is_err() {
            gateway.close().await;
            return;
        }
        stop.cancelled().await;
        gateway.close().await;
    }

    /// Replaces the supervisor's own gauges.
    pub fn set_own(&self, series: Vec<Series>) {
        *lock(&self.own) = series;
    }

    /// Adds one to a counter of the supervisor (kept across its restarts).
    pub fn bump(&self, series: Series) {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let event = format!("bump-{}-{}-{seq}", std::process::id(), now_ms());
        let mut db = lock(&self.db);
        lock(&self.merger).bump(&mut db, series, now_ms(), &event);
    }

    /// One round of collection: spool → database, metric snapshots → merger, and
    /// (every `prune` call) retention.
    pub fn collect(&self, prune: bool) {
        let run = self.config.run_dir();
        let now = now_ms();
        let mut db = lock(&self.db);
        db.ingest_dir(&crate::statistic::spool::dir(&run), now);
        lock(&self.merger).poll(
            &crate::metrics::dir(&run),
            &mut db,
            now,
            crate::process::alive,
        );
        if prune {
            let st = &self.config.statistic;
            if let Err(e) = db.prune(now, st.retention.as_millis() as u64, st.failure_log) {
                tracing::warn!(error = %e, "cannot prune the statistics database");
            }
        }
    }

    /// The machine's `/metrics` text.
    pub fn metrics_text(&self) -> String {
        let own = lock(&self.own).clone();
        render(lock(&self.merger).merged(&own))
    }

    fn live(&self) -> serde_json::Value {
        let all = stats::read_all(&self.config.run_dir());
        let (clients, mps) = stats::gateway_totals(&all);
        let processes: Vec<_> = all
            .iter()
            .map(|s| {
                json!({"role": s.role, "pid": s.pid, "clients": s.clients,
                       "events_per_sec": s.events_per_sec, "rss_bytes": s.rss_bytes})
            })
            .collect();
        let minute = now_ms() / 60_000;
        let db = lock(&self.db);
        let current = db
            .minutes(&Filter {
                from_minute: minute.saturating_sub(1),
                to_minute: minute,
                ..Filter::default()
            })
            .map(|(p, _)| p)
            .unwrap_or_default();
        let dropped = db.dropped().unwrap_or_default();
        json!({
            "now_ms": now_ms(),
            "clients": clients,
            "messages_per_sec": mps,
            "processes": processes,
            "last_minute": current.first(),
            "this_minute": current.get(1),
            "dropped": dropped,
        })
    }

    fn summary(&self, q: &BTreeMap<String, String>) -> Result<serde_json::Value, String> {
        let f = filter_of(q);
        let db = lock(&self.db);
        let (points, total) = db.minutes(&f).map_err(|e| e.to_string())?;
        let hosts = db.hosts().unwrap_or_default();
        Ok(json!({
            "from_minute": f.from_minute, "to_minute": f.to_minute,
            "module": f.module, "interface": f.interface, "host": f.host,
            "points": points, "total": total, "hosts": hosts,
            "dropped": db.dropped().unwrap_or_default(),
        }))
    }

    fn tree(&self, q: &BTreeMap<String, String>) -> Result<serde_json::Value, String> {
        let mut f = filter_of(q);
        f.module = None;
        f.interface = None;
        let rows = lock(&self.db).tree(&f).map_err(|e| e.to_string())?;
        Ok(serde_json::to_value(rows).unwrap_or_default())
    }

    fn failures(&self, q: &BTreeMap<String, String>) -> Result<serde_json::Value, String> {
        let nonempty = |k: &str| q.get(k).filter(|v| !v.is_empty()).cloned();
        let f = FailureFilter {
            module: nonempty("module"),
            interface: nonempty("interface"),
            code: match nonempty("code") {
                Some(c) => Some(
                    c.parse()
                        .map_err(|_| format!("code {c:?} is not a number"))?,
                ),
                None => None,
            },
            host: nonempty("host"),
            text: nonempty("q"),
            // An explicit time, else the start of the range asked for, else all.
            since_ms: match nonempty("since_ms") {
                Some(v) => Some(
                    v.parse()
                        .map_err(|_| format!("since_ms {v:?} is not a number"))?,
                ),
                None if q.contains_key("range") || q.contains_key("minutes") => {
                    Some(filter_of(q).from_minute * 60_000)
                }
                None => None,
            },
            limit: nonempty("limit")
                .and_then(|v| v.parse().ok())
                .unwrap_or(200)
                .min(5000),
        };
        let rows = lock(&self.db).failures(&f).map_err(|e| e.to_string())?;
        Ok(serde_json::to_value(rows).unwrap_or_default())
    }
}

/// The range of a query: `range=hour` (default, the last 60 minutes) or `day`
/// (1440), or `minutes=N`; `module`, `interface`, `host` narrow it.
fn filter_of(q: &BTreeMap<String, String>) -> Filter {
    let span: u64 = match q.get("range").map(String::as_str) {
        Some("day") => 1440,
        _ => q
            .get("minutes")
            .and_then(|m| m.parse().ok())
            .unwrap_or(60)
            .clamp(1, 60 * 24 * 31),
    };
    let to = now_ms() / 60_000;
    let nonempty = |k: &str| q.get(k).filter(|v| !v.is_empty()).cloned();
    Filter {
        from_minute: to + 1 - span,
        to_minute: to,
        module: nonempty("module"),
        interface: nonempty("interface"),
        host: nonempty("host"),
    }
}

/// Ingests and polls every second until `stop`; prunes every minute.
pub async fn collect_loop(admin: Arc<Admin>, stop: CancellationToken) {
    let mut tick = 0u64;
    loop {
        let a = admin.clone();
        // Retention every 60th round (once a minute).
        let prune = tick == 0;
        let _ = tokio::task::spawn_blocking(move || a.collect(prune)).await;
        tick = (tick + 1) % 60;
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    // The children have stopped by now: take in their last files.
    let _ = tokio::task::spawn_blocking(move || admin.collect(false)).await;
}

/// Binds the admin listener (at `start`, so a taken port fails before anything
/// starts) and writes its address to `run/admin.addr`.
pub fn bind(config: &Config) -> Result<Option<std::net::TcpListener>, Error> {
    if !config.admin.enabled {
        return Ok(None);
    }
    let addr = config.admin.listen;
    let l = std::net::TcpListener::bind(addr).map_err(|e| {
        Error::Other(format!(
            "invalid config: admin.listen: cannot bind {addr}: {e} (another deployment's admin listener? set admin.listen)"
        ))
    })?;
    l.set_nonblocking(true)
        .map_err(|e| Error::io("admin listener", e))?;
    let local = l.local_addr().map_err(|e| Error::io("admin listener", e))?;
    let path = address_file(config);
    let _ = std::fs::write(&path, format!("{local}\n"));
    Ok(Some(l))
}

/// Where the supervisor writes the admin listener's bound address.
pub fn address_file(config: &Config) -> PathBuf {
    config.run_dir().join("admin.addr")
}

/// The running admin listener's address (from `run/admin.addr`).
pub fn running_address(config: &Config) -> Option<SocketAddr> {
    std::fs::read_to_string(address_file(config))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Serves HTTP on `listener` until `stop`.
pub async fn serve(listener: std::net::TcpListener, admin: Arc<Admin>, stop: CancellationToken) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin listener failed");
            return;
        }
    };
    if let Ok(a) = listener.local_addr() {
        tracing::info!(addr = %a, token = admin.token.is_some(), "admin listener: dashboard at /, Prometheus at /metrics");
    }
    loop {
        let (socket, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (admin, stop) = (admin.clone(), stop.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (admin, stop) = (admin.clone(), stop.clone());
                async move { Ok::<_, Infallible>(route(&admin, req, stop).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(socket), svc);
            let _ = conn.await;
        });
    }
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .header("x-content-type-options", "nosniff")
        .body(Full::new(body.into()).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn json_response(r: Result<serde_json::Value, String>) -> Response<Body> {
    match r {
        Ok(v) => full(StatusCode::OK, "application/json", v.to_string()),
        Err(e) => full(
            StatusCode::BAD_REQUEST,
            "application/json",
            json!({ "error": e }).to_string(),
        ),
    }
}

/// Compares without leaking where two tokens differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(admin: &Admin, req: &Request<Incoming>) -> bool {
    let Some(token) = &admin.token else {
        return true;
    };
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| same(given.trim().as_bytes(), token.as_bytes()))
}

async fn route(
    admin: &Arc<Admin>,
    req: Request<Incoming>,
    stop: CancellationToken,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let query = parse_query(req.uri().query().unwrap_or(""));
    let is_push = push::is_push_path(&path);
    if !is_push && req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return full(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n");
    }
    if !authorized(admin, &req) && is_push {
        let mut r = push::json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized: send Authorization: Bearer <admin.token>",
        );
        r.headers_mut().insert(
            "www-authenticate",
            hyper::header::HeaderValue::from_static("Bearer realm=\"switchboard admin\""),
        );
        return r;
    }
    if is_push {
        return push::handle(&admin.push, req).await;
    }
    if !authorized(admin, &req) {
        // The page itself carries no data: it is sent so that a browser can ask for
        // the token, which it then sends as a bearer token with every request.
        let (ct, body): (&str, Bytes) = if path == "/" {
            (
                "text/html; charset=utf-8",
                Bytes::from_static(DASHBOARD.as_bytes()),
            )
        } else {
            (
                "text/plain",
                Bytes::from_static(b"401 unauthorized: send Authorization: Bearer <admin.token>\n"),
            )
        };
        let mut r = full(StatusCode::UNAUTHORIZED, ct, body);
        r.headers_mut().insert(
            "www-authenticate",
            hyper::header::HeaderValue::from_static("Bearer realm=\"switchboard admin\""),
        );
        return r;
    }
    match path.as_str() {
        "/" | "/index.html" => full(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD),
        "/metrics" => {
            let a = admin.clone();
            let text = tokio::task::spawn_blocking(move || a.metrics_text())
                .await
                .unwrap_or_default();
            full(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            )
        }
        "/api/summary" => json_response(blocking(admin, move |a| a.summary(&query)).await),
        "/api/tree" => json_response(blocking(admin, move |a| a.tree(&query)).await),
        "/api/failures" => json_response(blocking(admin, move |a| a.failures(&query)).await),
        "/api/live" => json_response(blocking(admin, |a| Ok(a.live())).await),
        "/api/stream" => stream(admin.clone(), stop),
        _ => full(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

async fn blocking(
    admin: &Arc<Admin>,
    f: impl FnOnce(&Admin) -> Result<serde_json::Value, String> + Send + 'static,
) -> Result<serde_json::Value, String> {
    let a = admin.clone();
    tokio::task::spawn_blocking(move || f(&a))
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
}

/// Server-sent events: `event: live` with [`Admin::live`]'s JSON every second.
fn stream(admin: Arc<Admin>, stop: CancellationToken) -> Response<Body> {
    let s = futures::stream::unfold((admin, stop, true), |(admin, stop, first)| async move {
        if !first {
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        let a = admin.clone();
        let live = tokio::task::spawn_blocking(move || a.live()).await.ok()?;
        let frame = Frame::data(Bytes::from(format!("event: live\ndata: {live}\n\n")));
        Some((Ok::<_, Infallible>(frame), (admin, stop, false)))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-store")
        .body(StreamBody::new(s).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_decoded() {
        let q = parse_query("module=chat&q=not+online%21&x=%zz&code=");
        assert_eq!(q["module"], "chat");
        assert_eq!(q["q"], "not online!");
        assert_eq!(q["x"], "%zz");
        assert_eq!(q["code"], "");
        assert_eq!(percent_decode("%4"), "%4");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }
}
