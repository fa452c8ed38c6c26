//! The admin listener as the tests read it: raw HTTP `GET`s, `/metrics` parsed as
//! Prometheus text, and polling until a figure shows (each process writes its figures
//! once a second).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use switchboard_testkit::{Deployment, WAIT};

/// `GET path` on the admin listener: the status and the body (`Connection: close`, so
/// the body is whatever comes before the end).
pub fn admin_get(d: &Deployment, path: &str) -> (u16, String) {
    let addr = d.admin_addr();
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status from {addr}{path}: {text:?}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

pub fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A JSON answer of the admin API.
pub fn admin_json(d: &Deployment, path: &str) -> serde_json::Value {
    let (status, body) = admin_get(d, path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

// Not every test binary that includes this module reads samples.
#[allow(unused_imports)]
pub use switchboard_testkit::metric;

/// Polls `/metrics` until `check` holds (each process writes its figures once a
/// second); returns the page, or fails the test after [`WAIT`].
pub fn wait_metrics(d: &Deployment, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, page) = admin_get(d, "/metrics");
        assert_eq!(status, 200, "{page}");
        if check(&page) {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "/metrics never showed {what} within {WAIT:?}:\n{page}\nlog:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls an admin API path until `check` holds on its JSON; returns it.
pub fn wait_json(
    d: &Deployment,
    path: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = admin_json(d, path);
        if check(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never held within {WAIT:?}: {v}\nlog:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
