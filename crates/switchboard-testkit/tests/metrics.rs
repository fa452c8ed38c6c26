//! Statistics and built-in metrics of the fixture application (`src/bin/fixture.rs`) in
//! real processes: reports made outside handlers (`on_worker_start`, an API client),
//! handler errors and panics, store errors, and connections that end before they
//! become clients (refused upgrades, failed TLS handshakes). `/metrics` is parsed as
//! Prometheus text; the statistics are read back from the admin JSON API.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::pki::{self, Ca};
use common::*;
use switchboard_testkit::{Client, Deployment, Listener, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `on_worker_start` reports through the worker's collector, and an API client (a
/// program outside the deployment, `Gateway::connect`) through its own, whose last
/// reports `close()` flushes: both reach the supervisor's statistics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_from_on_worker_start_and_an_api_client_reach_the_statistics() {
    let d = Deployment::start(options());
    let started = [
        ("module", "fixture"),
        ("interface", "worker_start"),
        ("success", "true"),
    ];
    // One worker, one report, in the machine's /metrics (from the worker's snapshot) ...
    let page = wait_metrics(&d, "the report of on_worker_start", |p| {
        metric(p, "switchboard_statistic_calls_total", &started).is_some()
    });
    assert_eq!(
        metric(&page, "switchboard_statistic_calls_total", &started),
        Some(1.0),
        "{page}"
    );
    // ... and in the statistics database (through the spool).
    let s = wait_json(
        &d,
        "/api/summary?module=fixture&interface=worker_start",
        |v| v["total"]["calls"] == 1,
    );
    assert_eq!(s["total"]["ok"], 1, "{s}");

    // An API client that would flush only once an hour: what it reports reaches the
    // supervisor because `close()` flushes it.
    let mut config = d.config().clone();
    config.statistic.flush_interval = Duration::from_secs(3600);
    let api = switchboard::Gateway::connect(&config)
        .await
        .expect("the Gateway API");
    api.statistic("billing", "charge").success();
    api.statistic("billing", "charge")
        .fail(402, "card declined");
    drop(api.statistic("billing", "refund")); // forgotten: reported as UNREPORTED
    let timed: Result<u32, String> = api
        .statistic("billing", "invoice")
        .time(async { Ok(3) })
        .await;
    assert_eq!(timed, Ok(3));
    api.close().await;
    drop(api);

    let charge = wait_json(&d, "/api/summary?module=billing&interface=charge", |v| {
        v["total"]["calls"] == 2
    });
    assert_eq!(
        (&charge["total"]["ok"], &charge["total"]["fail"]),
        (&1.into(), &1.into()),
        "{charge}"
    );
    assert_eq!(charge["total"]["codes"]["402"], 1, "{charge}");
    let tree = admin_json(&d, "/api/tree");
    let billing: Vec<(&str, u64)> = tree
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["module"] == "billing")
        .map(|r| {
            (
                r["interface"].as_str().unwrap(),
                r["calls"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        billing,
        [("charge", 2), ("invoice", 1), ("refund", 1)],
        "{tree}"
    );
    let fails = admin_json(&d, "/api/failures?module=billing");
    let fails: Vec<(&str, i64)> = fails
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["interface"].as_str().unwrap(),
                f["code"].as_i64().unwrap(),
            )
        })
        .collect();
    // Newest first.
    assert_eq!(
        fails,
        [
            ("refund", i64::from(switchboard::statistic::UNREPORTED)),
            ("charge", 402)
        ]
    );
}

/// Handler errors and panics, and store calls that fail, are counted by the worker
/// with no help from the application; the worker goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_errors_panics_and_store_errors_are_counted() {
    let d = Deployment::start(options());
    let mut c = Client::connect(d.addr()).await;
    c.send("/error").await;
    c.send("/panic").await;
    c.send("/store-error").await;
    let answer = c.line().await;
    assert!(
        answer.starts_with("store error: ") && answer.contains("does not hold a number"),
        "{answer}"
    );
    c.send("still here").await;
    c.expect_next("still here").await;
    let increment = [("backend", "file"), ("op", "increment")];
    let page = wait_metrics(&d, "one handler error, one panic, one store error", |p| {
        metric(p, "switchboard_handler_errors_total", &[]) == Some(1.0)
            && metric(p, "switchboard_handler_panics_total", &[]) == Some(1.0)
            && metric(p, "switchboard_store_errors_total", &increment) == Some(1.0)
    });
    // The set before the increment worked; the failed call is timed like any other.
    assert_eq!(
        metric(&page, "switchboard_store_errors_total", &[("op", "set")]),
        Some(0.0),
        "{page}"
    );
    assert!(
        metric(
            &page,
            "switchboard_store_duration_seconds_count",
            &increment
        ) >= Some(1.0),
        "{page}"
    );
    // connect + four messages, each timed by the handler histogram.
    assert_eq!(
        metric(&page, "switchboard_events_total", &[("kind", "message")]),
        Some(4.0),
        "{page}"
    );
    assert_eq!(
        metric(
            &page,
            "switchboard_handler_duration_seconds_count",
            &[("kind", "message")]
        ),
        Some(4.0),
        "{page}"
    );
}

/// Raw bytes on `addr`, then everything the server answers until it closes.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = tcp(addr).await;
    s.write_all(bytes).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(WAIT, s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "{addr} did not close within {WAIT:?}");
    String::from_utf8_lossy(&got).into_owned()
}

/// An upgrade request for `path`.
fn upgrade_request(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// Connections that end before they become clients are counted in
/// `switchboard_connections_total` too: upgrades refused (by the application or the
/// origin check) as `refused`, bad HTTP requests and failed TLS handshakes as
/// `protocol_error`; a plain HTTP request for a file is no client connection and is
/// not counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upgrades_and_failed_tls_handshakes_are_counted() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new("switchboard test CA");
    let (cert, key) = ca.leaf("server").write(certs.path(), "server");
    let tls = format!("tls = {}", pki::tls_table(&cert, &key));
    let d = Deployment::start(
        options()
            .listener(websocket("ws"))
            .listener(websocket("strict").keys("allowed_origins = [\"https://good.example\"]"))
            .listener(Listener::text("lines").keys(&tls)),
    );
    let ended =
        |listener: &'static str, reason: &'static str| [("listener", listener), ("reason", reason)];

    // Refused by the application (403) and by the origin check.
    let answer = exchange(d.listener_addr("ws"), &upgrade_request("/forbidden")).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let mut bad_origin = upgrade_request("/");
    bad_origin.splice(
        bad_origin.len() - 2..bad_origin.len() - 2,
        b"Origin: https://evil.example\r\n".iter().copied(),
    );
    let answer = exchange(d.listener_addr("strict"), &bad_origin).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    // Not HTTP at all.
    let answer = exchange(d.listener_addr("ws"), b"\x00\x01 hello\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // A file: answered, not a client, not counted.
    let answer = exchange(
        d.listener_addr("ws"),
        b"GET /hello.txt HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A TLS listener spoken to in plain text: the handshake fails.
    let _ = exchange(d.listener_addr("lines"), b"hello in plain text\r\n").await;
    // And one that succeeds, for contrast: it becomes a client.
    let mut ok = pki::connect(d.listener_addr("lines"), &ca.pem, &[]).await;
    ok.write_all(b"hi\n").await.unwrap();
    let mut buf = [0u8; 3];
    tokio::time::timeout(WAIT, ok.read_exact(&mut buf))
        .await
        .expect("an echo within WAIT")
        .unwrap();
    assert_eq!(&buf, b"hi\n");

    let page = wait_metrics(&d, "the refused and failed connections", |p| {
        metric(p, "switchboard_connections_total", &ended("ws", "refused")) == Some(1.0)
            && metric(
                p,
                "switchboard_connections_total",
                &ended("strict", "refused"),
            ) == Some(1.0)
            && metric(
                p,
                "switchboard_connections_total",
                &ended("ws", "protocol_error"),
            ) == Some(1.0)
            && metric(
                p,
                "switchboard_connections_total",
                &ended("lines", "protocol_error"),
            ) == Some(1.0)
            && metric(p, "switchboard_clients", &[("listener", "lines")]) == Some(1.0)
    });
    // Nothing else ended on the websocket listener: the file request is not counted.
    assert_eq!(
        metric(
            &page,
            "switchboard_connections_total",
            &[("listener", "ws")]
        ),
        Some(2.0),
        "{page}"
    );
    assert_eq!(
        metric(
            &page,
            "switchboard_connections_accepted_total",
            &[("listener", "ws")]
        ),
        None,
        "{page}"
    );
}
