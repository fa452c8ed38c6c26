//! End-to-end tests for Switchboard applications: the real binary, real processes, real
//! sockets.
//!
//! An application tests itself the way it runs: a test starts the application's own
//! binary (`env!("CARGO_BIN_EXE_<bin>")`, which cargo builds for integration tests)
//! with its supervisor, gateways and workers, in a temporary directory, on ports it
//! picks itself (port 0, read back from the gateways), and talks to it over TCP like a
//! client would.
//!
//! - [`Options`] says what to deploy: the binary, how many gateways and workers, the
//!   client [`Listener`]s, timings, and any extra configuration the application needs
//!   (its database instances, say).
//! - [`Deployment`] writes the configuration, starts `BIN --config FILE start`, waits
//!   until every gateway has every worker connected, and stops everything when dropped.
//!   It also runs the binary's commands ([`Deployment::cli`]), reads the log, tells the
//!   pids of the processes, and opens the Gateway API ([`Deployment::api`]).
//! - [`Client`] is a client of a `text` listener: send lines, expect lines, with every
//!   wait bounded by [`WAIT`] and failing with a message that names the client.
//! - [`browser::Browser`] is a real headless Chromium page (through chromedriver), for
//!   an application's web page: open, type, click, read, screenshot.
//!
//! Every process a test starts dies with it: the supervisor gets a parent-death signal
//! (see [`spawn`]) and its children follow their supervisor. The kit signals only the
//! processes it started: the supervisor, or the daemon a test started itself with
//! `start -d` in the deployment's data directory.
//!
//! The `Deployment` methods that wait ([`Deployment::start`], [`Deployment::wait_ready`],
//! [`Deployment::wait_log`], ...) block the calling thread while they poll: call them
//! from plain `#[test]`s, or from `#[tokio::test(flavor = "multi_thread")]` tests.
//!
//! # Example
//!
//! `tests/echo.rs` of an application whose binary `echo` greets each client with
//! `hello` and sends every line back:
//!
//! ```no_run
//! # macro_rules! env { ($name:literal) => { "/path/to/echo" }; }
//! use switchboard_testkit::{Client, Deployment, Options};
//!
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn lines_come_back_on_both_gateways() {
//!     // Two gateway processes share the client port; two workers run the code.
//!     let d = Deployment::start(Options::new(env!("CARGO_BIN_EXE_echo")).gateways(2));
//!     let mut c = Client::connect(d.addr()).await;
//!     c.expect_next("hello").await;
//!     c.send("ping").await;
//!     c.expect_next("ping").await;
//!     // Commands of the binary run against this deployment.
//!     let out = d.cli(&["status"]);
//!     assert!(out.status.success());
//! } // Dropping `d` stops the supervisor and, with it, every gateway and worker.
//! # fn main() {}
//! ```

#![warn(missing_docs)]

pub mod browser;
mod client;
mod deployment;
mod metrics;

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use client::Client;
pub use deployment::{Deployment, Listener, Options};
pub use metrics::metric;
pub use switchboard::supervisor::ChildRole;

/// How long any single expectation may wait before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// A port on `127.0.0.1` that was free a moment ago — and may not be by the time it is
/// used: another test running in parallel can take it between this call and the
/// bind. Never use it for a Switchboard listener: configure port 0 and read the bound
/// address instead ([`Deployment::listener_addr`], [`Deployment::admin_addr`], the
/// gateways' stats files). It is here for third-party servers that can neither bind
/// port 0 and tell which port they got, nor be started again on a port they
/// reported (a memcached that a test stops and restarts on the same port).
///
/// ```
/// let port = switchboard_testkit::free_port();
/// assert_ne!(port, 0);
/// ```
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Starts `binary --config CONFIG ARGS...` with stdout and stderr to `log`, stdin
/// closed.
///
/// The child gets `PR_SET_PDEATHSIG` = `SIGTERM`: if the test dies, so does the child
/// (a supervisor stops its gateways and workers when it gets SIGTERM). Linux sends
/// that signal when the *thread* that spawned the child ends, so spawn from the test's
/// own thread or a runtime worker, not from a short-lived `spawn_blocking` task.
///
/// ```no_run
/// use std::path::Path;
///
/// let log = std::fs::File::create("/tmp/node.log").unwrap();
/// let args = ["start", "--only", "worker"];
/// let mut node = switchboard_testkit::spawn(
///     Path::new("/path/to/app"),
///     Path::new("/tmp/node.toml"),
///     &args,
///     log,
/// );
/// # let _ = node.kill();
/// ```
pub fn spawn(binary: &Path, config: &Path, args: &[&str], log: File) -> Child {
    let mut cmd = Command::new(binary);
    cmd.arg("--config").arg(config).args(args);
    spawn_with_log(cmd, log)
}

/// Starts `cmd` with its output to `log` and standard input closed; it gets SIGTERM
/// when the thread that started it ends (a test that panics takes it along).
pub(crate) fn spawn_with_log(mut cmd: Command, log: File) -> Child {
    let stdout = log.try_clone().expect("clone the log file handle");
    cmd.stdin(Stdio::null()).stdout(stdout).stderr(log);
    // SAFETY: the closure only calls prctl(2), which is async-signal-safe, between fork
    // and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()))
}
