//! `fixture`: the application the testkit's own end-to-end tests run
//! (`tests/websocket.rs`, `tests/json.rs`, `tests/tls.rs`, `tests/internal_tls.rs`), and a
//! short example of [`Events::on_websocket_connect`].
//!
//! - Every message comes back as it came: text as text, binary as binary.
//! - `/whoami` (on a `json` listener also the JSON string `"/whoami"`) is answered with
//!   `listener=NAME protocol=P addr=ADDR request_path=PATH forwarded_for=IP` (`-` where
//!   there is none: the request exists for WebSocket clients only).
//! - `/header NAME` is answered with the value of the upgrade request's first header
//!   of that name (case-insensitive), or `-` (also on the other protocols, which have
//!   no request): the connect event keeps the request's headers in the session.
//! - `/error` makes `on_message` return an error, `/panic` makes it panic, and
//!   `/store-error` makes a store call fail (an `increment` of a value that is not a
//!   number; the answer is `store error: ...`): the built-in metrics count each.
//! - `on_worker_start` reports one `fixture::worker_start` statistic, a report made
//!   outside any handler.
//! - The upgrade hook refuses `/private…` without `?token=letmein` (401), refuses
//!   `/forbidden` (403), panics on `/panic` (500), sleeps [`SLOW`] on `/slow` (longer
//!   than the tests' `handshake_timeout`: 503) and accepts every other path.
//! - `/flood N SIZE` is answered with `N` messages of `SIZE` bytes (`x`s), then
//!   `fixture: flooded ADDR` is logged: for tests of clients that do not read.
//! - `/pid` is answered with `pid PID`, the worker process that handled it;
//!   `/block MS` holds the worker's thread for `MS` milliseconds (at most 10,000: a
//!   handler doing CPU work without `spawn_blocking`), then answers `blocked by PID`:
//!   for tests of `gateway.routing`.
//! - Every event is written to standard error as `fixture: EVENT ADDR ...` (and the end
//!   of the `/slow` hook as `fixture: slow_done ADDR`), which the supervisor's log
//!   collects: tests read it to prove an event did *not* happen.

use std::process::ExitCode;
use std::time::Duration;

use switchboard::{
    async_trait, App, Context, Events, Gateway, HandlerResult, Message, Refuse, WebSocketRequest,
};

/// How long the hook takes on `/slow`.
const SLOW: Duration = Duration::from_secs(3);

/// The store key `/store-error` sets to a value that is not a number.
const NOT_A_NUMBER: &str = "fixture-not-a-number";

/// The page `GET /` serves on `websocket` listeners.
const PAGE: &[u8] = b"<!doctype html><title>fixture</title><p>switchboard fixture</p>\n";

struct Fixture;

#[async_trait]
impl Events for Fixture {
    async fn on_worker_start(&self, gateway: &Gateway) -> HandlerResult {
        gateway.statistic("fixture", "worker_start").success();
        Ok(())
    }

    async fn on_websocket_connect(
        &self,
        ctx: &mut Context,
        request: &WebSocketRequest,
    ) -> HandlerResult {
        eprintln!(
            "fixture: websocket_connect {} {}",
            ctx.client_addr(),
            request.path
        );
        let path = request.path.as_str();
        if path == "/private" || path.starts_with("/private/") {
            if request.query_param("token").as_deref() != Some("letmein") {
                return Err(Refuse::unauthorized("a token is required").into());
            }
        } else if path == "/forbidden" {
            return Err(Refuse::forbidden("nobody may connect here").into());
        } else if path == "/panic" {
            panic!("the fixture panics on /panic");
        } else if path == "/slow" {
            tokio::time::sleep(SLOW).await;
            eprintln!("fixture: slow_done {}", ctx.client_addr());
        }
        Ok(())
    }

    async fn on_connect(&self, ctx: &mut Context) -> HandlerResult {
        eprintln!("fixture: connect {}", ctx.client_addr());
        // The request is in this event and the hook's only: keep what later ones need.
        let (path, forwarded, headers) = match ctx.request() {
            Some(r) => (r.path.clone(), r.forwarded_for.clone(), r.headers.clone()),
            None => ("-".into(), None, Vec::new()),
        };
        let session = ctx.session_mut();
        session.insert(
            "headers".into(),
            serde_json::to_value(headers).unwrap_or_default(),
        );
        session.insert("path".into(), path.into());
        session.insert(
            "forwarded_for".into(),
            forwarded.unwrap_or("-".into()).into(),
        );
        Ok(())
    }

    async fn on_message(&self, ctx: &mut Context, message: Message) -> HandlerResult {
        eprintln!(
            "fixture: message {} {} bytes",
            ctx.client_addr(),
            message.len()
        );
        let text = message.text().map(str::trim).unwrap_or_default();
        match text {
            "/error" => return Err("the fixture fails on /error".into()),
            "/panic" => panic!("the fixture panics on /panic"),
            "/store-error" => {
                let store = ctx.gateway().store().clone();
                store.set(NOT_A_NUMBER, b"not a number", None).await?;
                let answer = match store.increment(NOT_A_NUMBER, 1).await {
                    Ok(n) => format!("store incremented to {n}"),
                    Err(e) => format!("store error: {e}"),
                };
                ctx.reply(answer).await?;
                return Ok(());
            }
            _ => {}
        }
        if let Some(name) = text.trim_matches('"').strip_prefix("/header ") {
            let value = ctx
                .session()
                .get("headers")
                .and_then(|h| h.as_array())
                .into_iter()
                .flatten()
                .filter_map(|pair| Some((pair.get(0)?.as_str()?, pair.get(1)?.as_str()?)))
                .find(|(n, _)| n.eq_ignore_ascii_case(name.trim()))
                .map_or("-", |(_, v)| v)
                .to_owned();
            ctx.reply(value).await?;
            return Ok(());
        }
        if text == "/pid" {
            ctx.reply(format!("pid {}", std::process::id())).await?;
            return Ok(());
        }
        if let Some(ms) = text.strip_prefix("/block ") {
            let ms: u64 = ms.trim().parse().map_err(|e| format!("/block MS: {e}"))?;
            // The worker's one thread, held as a CPU-bound handler would hold it.
            std::thread::sleep(Duration::from_millis(ms.min(10_000)));
            ctx.reply(format!("blocked by {}", std::process::id()))
                .await?;
            return Ok(());
        }
        if let Some((n, size)) = flood_request(text) {
            let chunk = switchboard::Bytes::from("x".repeat(size));
            for _ in 0..n {
                ctx.reply(chunk.clone()).await?;
            }
            eprintln!("fixture: flooded {}", ctx.client_addr());
            return Ok(());
        }
        let asks = matches!(text, "/whoami" | "\"/whoami\"");
        if asks {
            let field = |k: &str| {
                ctx.session()
                    .get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or("-")
                    .to_owned()
            };
            let answer = format!(
                "listener={} protocol={} addr={} request_path={} forwarded_for={}",
                ctx.listener(),
                ctx.protocol(),
                ctx.client_addr(),
                field("path"),
                field("forwarded_for"),
            );
            ctx.reply(answer).await?;
        } else {
            ctx.reply(&message).await?;
        }
        Ok(())
    }

    async fn on_close(&self, ctx: &mut Context) -> HandlerResult {
        eprintln!("fixture: close {}", ctx.client_addr());
        Ok(())
    }
}

/// `/flood N SIZE` → `(N, SIZE)`.
fn flood_request(text: &str) -> Option<(usize, usize)> {
    let mut words = text.trim().strip_prefix("/flood ")?.split_whitespace();
    let n = words.next()?.parse().ok()?;
    let size = words.next()?.parse().ok()?;
    Some((n, size))
}

fn main() -> ExitCode {
    App::new("fixture", || Fixture)
        .asset("/", PAGE)
        .asset("/hello.txt", b"hello\n")
        .run()
}
