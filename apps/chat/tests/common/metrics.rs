//! `/metrics` of a deployment's admin listener, read as a test reads it: one plain
//! HTTP/1.1 GET (no client library in between) and the page parsed as Prometheus text.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use switchboard_testkit::{Deployment, WAIT};

/// The `/metrics` page (no admin token); fails the test on anything but a 200.
pub fn page(d: &Deployment) -> String {
    let addr = d.admin_addr();
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("read /metrics: {e}"));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "GET /metrics answered {head:?}"
    );
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "a chunked /metrics page: {head:?}"
    );
    body.to_owned()
}

// Not every test binary that includes this module reads samples.
#[allow(unused_imports)]
pub use switchboard_testkit::metric;

/// Polls `/metrics` until `check` holds (processes write their figures once a second);
/// returns that page, or fails the test with the last page and the log after [`WAIT`].
pub fn wait_for(d: &Deployment, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let body = page(d);
        if check(&body) {
            return body;
        }
        if Instant::now() > deadline {
            panic!("/metrics never showed {what}:\n{body}\nlog:\n{}", d.log());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
