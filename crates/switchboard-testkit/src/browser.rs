//! A real browser for end-to-end tests: headless Chromium, driven through chromedriver
//! (WebDriver, with the `fantoccini` crate).
//!
//! Each [`Browser`] is one chromedriver process of its own (on a free port) with one
//! session: one Chromium with a fresh profile in a temporary directory. Two pages that
//! must not share anything are two `Browser`s.
//!
//! Chromium is Debian's `chromium` and `chromium-driver` (`scripts/services.sh`
//! installs them). Where they are missing, [`Browser::start_or_skip`] prints
//! `SKIPPED` and why, and the test returns, except under `CI=true`, where it fails.
//!
//! ```no_run
//! # async fn demo(url: &str) {
//! use switchboard_testkit::browser::Browser;
//!
//! let Some(page) = Browser::start_or_skip("my_test").await else { return };
//! page.goto(url).await;
//! page.wait_until("document.title === 'chat'").await;
//! let title: String = page.eval_as("return document.title").await;
//! page.screenshot("my_test-laptop").await; // target/screenshots/my_test-laptop.png
//! page.close().await;
//! # let _ = title; }
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

use crate::WAIT;

/// Where Debian puts Chromium.
const CHROMIUM: &str = "/usr/bin/chromium";
/// Where Debian puts chromedriver.
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Chromium's flags: headless, no sandbox (tests run as root), and nothing that talks
/// to the network or runs in the background.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
];

/// Chromium and chromedriver, or why they cannot be used: Debian's, or the files
/// named by `SWITCHBOARD_TEST_CHROMIUM` and `SWITCHBOARD_TEST_CHROMEDRIVER`.
pub fn find() -> Result<(PathBuf, PathBuf), String> {
    let path = |var: &str, default: &str| {
        std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from)
    };
    let chromium = path("SWITCHBOARD_TEST_CHROMIUM", CHROMIUM);
    let driver = path("SWITCHBOARD_TEST_CHROMEDRIVER", CHROMEDRIVER);
    for (path, package) in [(&chromium, "chromium"), (&driver, "chromium-driver")] {
        if !path.exists() {
            return Err(format!(
                "{} is missing (Debian package {package}; scripts/services.sh installs it)",
                path.display()
            ));
        }
    }
    Ok((chromium, driver))
}

/// One headless Chromium page, through its own chromedriver.
pub struct Browser {
    client: Client,
    driver: Child,
    profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a Chromium session with a fresh profile, a 1280×800
    /// window and dialogs left open (so that [`dialog`](Browser::dialog) sees them).
    /// Fails the test if Chromium is missing or does not start within [`WAIT`].
    pub async fn start() -> Self {
        let (chromium, driver) = find().unwrap_or_else(|why| panic!("no browser: {why}"));
        let profile = tempfile::tempdir().expect("create a browser profile directory");
        let log_path = profile.path().join("chromedriver.log");
        let log = File::create(&log_path).expect("create the chromedriver log");
        let mut driver = spawn_driver(&driver, log);
        let port = driver_port(&mut driver, &log_path).await;
        let browser = Browser {
            client: connect(&chromium, port, profile.path()).await,
            driver,
            profile,
        };
        browser.set_size(1280, 800).await;
        browser
    }

    /// [`start`](Browser::start), or `None` when Chromium is missing and this is not CI:
    /// then it prints `SKIPPED: TEST: why` and the test should return. Under `CI=true`
    /// a missing Chromium fails the test.
    pub async fn start_or_skip(test: &str) -> Option<Self> {
        if let Err(why) = find() {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("{test}: Chromium is required in CI: {why}");
            }
            eprintln!("SKIPPED: {test}: {why}");
            return None;
        }
        Some(Self::start().await)
    }

    /// The WebDriver client, for anything the helpers below do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Opens `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    }

    /// Reloads the page.
    pub async fn reload(&self) {
        self.client
            .refresh()
            .await
            .unwrap_or_else(|e| panic!("cannot reload: {e}"));
    }

    /// Sets the window so that the page's viewport is `width`×`height` CSS pixels.
    pub async fn set_size(&self, width: u32, height: u32) {
        self.client
            .set_window_size(width, height)
            .await
            .unwrap_or_else(|e| panic!("cannot resize the window: {e}"));
        // Headless windows may differ from their viewport: correct by the difference.
        let inner: Vec<u32> = self
            .eval_as("return [window.innerWidth, window.innerHeight]")
            .await;
        if let [w, h] = inner[..] {
            if (w, h) != (width, height) {
                let (dw, dh) = (width.saturating_sub(w), height.saturating_sub(h));
                self.client
                    .set_window_size(width + dw, height + dh)
                    .await
                    .unwrap_or_else(|e| panic!("cannot resize the window: {e}"));
            }
        }
    }

    /// Runs `script` (a function body: `return` gives the value) in the page.
    pub async fn eval(&self, script: &str) -> Value {
        self.eval_with(script, vec![]).await
    }

    /// Runs `script` with `args` (`arguments[0]`, ...) in the page.
    pub async fn eval_with(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script {script:?} failed: {e}"))
    }

    /// Runs `script` and deserializes its value.
    pub async fn eval_as<T: serde::de::DeserializeOwned>(&self, script: &str) -> T {
        let value = self.eval(script).await;
        serde_json::from_value(value.clone())
            .unwrap_or_else(|e| panic!("script {script:?} gave {value}: {e}"))
    }

    /// Waits until the JavaScript expression `condition` is true in the page; fails the
    /// test after [`WAIT`], with what [`describe`](Browser::describe) says.
    pub async fn wait_until(&self, condition: &str) {
        let script = format!("return !!({condition});");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if self.eval(&script).await == json!(true) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "the page never had {condition} within {WAIT:?}; the page says:\n{}",
                    self.describe().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The page's visible text (`document.body.innerText`), for failure messages.
    pub async fn describe(&self) -> String {
        match self
            .client
            .execute("return document.body.innerText", vec![])
            .await
        {
            Ok(Value::String(text)) => text,
            Ok(other) => other.to_string(),
            Err(e) => format!("(cannot read the page: {e})"),
        }
    }

    /// Types `text` into the element matching the CSS selector `css` (after clearing it).
    pub async fn fill(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        element
            .clear()
            .await
            .unwrap_or_else(|e| panic!("cannot clear {css}: {e}"));
        element
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("cannot type into {css}: {e}"));
    }

    /// Clicks the element matching `css`. A page that re-renders (live updates) may
    /// replace the element between finding and clicking it: then it is found again.
    pub async fn click(&self, css: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match self.find(css).await.click().await {
                Ok(_) => return,
                Err(fantoccini::error::CmdError::Standard(e))
                    if e.error == fantoccini::error::ErrorStatus::StaleElementReference
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("cannot click {css}: {e}"),
            }
        }
    }

    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match self.client.find(Locator::Css(css)).await {
                Ok(element) => return element,
                Err(e) if tokio::time::Instant::now() > deadline => {
                    panic!("no element {css} within {WAIT:?}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The text of an open `alert`, `confirm` or `prompt` dialog, if one is open.
    pub async fn dialog(&self) -> Option<String> {
        match self.client.get_alert_text().await {
            Ok(text) => Some(text),
            Err(e) if e.is_no_such_alert() => None,
            Err(e) => panic!("cannot ask for a dialog: {e}"),
        }
    }

    /// Saves a screenshot of the viewport as `target/screenshots/NAME.png` and returns
    /// its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("cannot take a screenshot: {e}"));
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    /// The chromedriver log, for failure messages.
    pub fn driver_log(&self) -> String {
        std::fs::read_to_string(self.profile.path().join("chromedriver.log")).unwrap_or_default()
    }

    /// Ends the session (Chromium quits), then stops chromedriver.
    pub async fn close(mut self) {
        let client = self.client.clone();
        let _ = tokio::time::timeout(WAIT, client.close()).await;
        self.stop_driver();
    }

    fn stop_driver(&mut self) {
        if self.driver.try_wait().ok().flatten().is_none() {
            switchboard::process::signal(self.driver.id(), libc::SIGTERM);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while self.driver.try_wait().ok().flatten().is_none() {
                if std::time::Instant::now() > deadline {
                    let _ = self.driver.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Without `close`, chromedriver's SIGTERM makes it quit its Chromium too.
        self.stop_driver();
    }
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("chromedriver_pid", &self.driver.id())
            .field("profile", &self.profile.path())
            .finish_non_exhaustive()
    }
}

/// `target/screenshots/`: `CARGO_TARGET_DIR`, or the `target` directory the test
/// binary runs from (`target/debug/deps/NAME`).
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            exe.ancestors().nth(3).map(Path::to_path_buf)
        })
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("screenshots")
}

/// Starts chromedriver on `port`, output to `log`, dying with the test's thread.
/// Starts chromedriver on port 0: it picks a free port and says which in its log.
fn spawn_driver(driver: &Path, log: File) -> Child {
    let mut cmd = Command::new(driver);
    cmd.arg("--port=0").arg("--allowed-ips=127.0.0.1");
    crate::spawn_with_log(cmd, log)
}

/// The port chromedriver reports in its log (`ChromeDriver was started successfully
/// on port N.`); fails the test if it exits or says nothing within [`WAIT`].
async fn driver_port(driver: &mut Child, log: &Path) -> u16 {
    const SAID: &str = "started successfully on port ";
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let port = text.split_once(SAID).and_then(|(_, rest)| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse::<u16>()
                .ok()
        });
        if let Some(port) = port.filter(|p| *p != 0) {
            return port;
        }
        if let Ok(Some(status)) = driver.try_wait() {
            panic!("chromedriver exited ({status}) before it listened:\n{text}");
        }
        if tokio::time::Instant::now() > deadline {
            panic!("chromedriver did not say its port within {WAIT:?}:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens a session on the chromedriver at `port`, retrying while it starts.
async fn connect(chromium: &Path, port: u16, profile: &Path) -> Client {
    let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
    args.push(format!(
        "--user-data-dir={}",
        profile.join("chromium").display()
    ));
    let mut caps = Capabilities::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert("unhandledPromptBehavior".into(), json!("ignore"));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({ "binary": chromium, "args": args }),
    );
    let url = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let attempt = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&url)
            .await;
        match attempt {
            Ok(client) => return client,
            Err(e) if tokio::time::Instant::now() > deadline => {
                let log =
                    std::fs::read_to_string(profile.join("chromedriver.log")).unwrap_or_default();
                panic!("no Chromium session within {WAIT:?}: {e}\nchromedriver log:\n{log}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
