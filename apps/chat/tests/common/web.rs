//! HTTP and browser helpers for tests of what the deployment serves over HTTP (the
//! admin listener's dashboard and `/metrics`, and later the browser chat).
//!
//! - [`http_get`]: one plain HTTP/1.1 GET, no client library, for exact status codes.
//! - [`Browser`]: headless Chromium driven through chromedriver (WebDriver, with the
//!   `fantoccini` crate). It needs the Debian packages `chromium` and
//!   `chromium-driver` (`source scripts/services.sh` installs them). Without them
//!   [`Browser::start`] returns `None` and the test should skip — loudly, and only
//!   outside CI: under `CI=true` a missing browser fails the test.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A GET and its answer: status code, headers (lower-cased names) and body.
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` on `addr`, with `Authorization: Bearer token` when given. Reads until
/// the server closes (the request says `Connection: close`), at most 10 s.
pub fn http_get(addr: SocketAddr, path: &str, token: Option<&str>) -> HttpReply {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status from {addr}{path}: {text:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    HttpReply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
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

/// Whether this run is CI (`CI=true`), where skipping is not allowed.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Paths of chromium and chromedriver, if installed.
pub fn browser_binaries() -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| names.iter().map(PathBuf::from).find(|p| p.exists());
    Some((
        find(&["/usr/bin/chromium", "/usr/bin/chromium-browser"])?,
        find(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"])?,
    ))
}

/// A headless Chromium under chromedriver, with a fresh profile. Stop it with
/// [`Browser::close`]; dropping it kills chromedriver (and with it the browser).
pub struct Browser {
    pub client: fantoccini::Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and opens a session with a window of
    /// `width` × `height`. `None` when chromium or chromedriver is missing and this is
    /// not CI (the caller prints why it skips); in CI that panics.
    pub async fn start(width: u32, height: u32) -> Option<Browser> {
        let Some((chromium, driver_bin)) = browser_binaries() else {
            assert!(
                !in_ci(),
                "CI=true but chromium/chromedriver are missing; install them with scripts/services.sh"
            );
            eprintln!(
                "SKIPPED: chromium or chromedriver is not installed (apt-get install chromium chromium-driver, or source scripts/services.sh)"
            );
            return None;
        };
        let port = super::free_port();
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-quic", "--no-first-run",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.path().display()),
                    format!("--window-size={width},{height}"),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = fantoccini::ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("open a chromedriver session");
        Some(Browser {
            client,
            driver,
            _profile: profile,
        })
    }

    /// Saves a PNG screenshot of the window to `path` (directories created).
    pub async fn screenshot(&self, path: &Path) {
        let png = self.client.screenshot().await.expect("screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }

    /// Evaluates `js` (a function body; `return` a value) until it returns something
    /// truthy, or panics after `wait` with `what`.
    pub async fn wait_js(&self, js: &str, wait: Duration, what: &str) -> serde_json::Value {
        let deadline = Instant::now() + wait;
        loop {
            let v = self
                .client
                .execute(js, vec![])
                .await
                .unwrap_or(serde_json::Value::Null);
            let truthy = match &v {
                serde_json::Value::Null => false,
                serde_json::Value::Bool(b) => *b,
                serde_json::Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
                serde_json::Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "browser: {what} (last value {v})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Ends the session (closing the browser) and chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The chromedriver this helper started (a pid we own); it takes the browser
        // with it.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `target/screenshots/<name>` of this workspace.
pub fn screenshot_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/screenshots")
        .join(name)
}
