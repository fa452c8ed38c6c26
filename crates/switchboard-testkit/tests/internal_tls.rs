//! TLS on the internal links (`gateway.internal_tls`, `[worker.internal_tls]`) end to
//! end: workers and API clients over TLS, and every mismatch refused and logged — no
//! link, no silent downgrade.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::pki::{self, Ca, Leaf};
use common::*;
use switchboard_testkit::{Client, Deployment, Options, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A CA and a gateway certificate for `IP:127.0.0.1` in a directory of their own.
struct Certs {
    dir: tempfile::TempDir,
    authority: Ca,
    leaf: Leaf,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Certs {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let authority = Ca::new("internal CA");
        let leaf = authority.leaf("gateway");
        let (cert, key) = leaf.write(dir.path(), "gateway");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &authority.pem).unwrap();
        Self {
            dir,
            authority,
            leaf,
            ca,
            cert,
            key,
        }
    }

    /// `gateway.internal_tls`.
    fn gateway(&self, options: Options) -> Options {
        options.gateway_keys(&format!(
            "internal_tls = {}",
            pki::tls_table(&self.cert, &self.key)
        ))
    }

    /// `[worker.internal_tls]` trusting `ca`.
    fn worker(options: Options, ca: &std::path::Path) -> Options {
        options.section(&format!(
            "[worker.internal_tls]\nca = {:?}",
            ca.display().to_string()
        ))
    }
}

/// The gateway's stats file (this machine has one gateway).
fn gateway_stats(d: &Deployment) -> switchboard::stats::ProcessStats {
    let deadline = Instant::now() + WAIT;
    loop {
        let all = switchboard::stats::read_all(&d.config().run_dir());
        if let Some(s) = all.into_iter().find(|s| s.role == "gateway") {
            return s;
        }
        assert!(Instant::now() < deadline, "no gateway stats:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a plain TCP peer gets from the internal listener within a second, after it
/// sent `hi`.
async fn plain_peer_gets(addr: SocketAddr) -> Vec<u8> {
    let mut s = tcp(addr).await;
    let _ = s.write_all(b"hi").await;
    let mut got = vec![0u8; 256];
    match tokio::time::timeout(Duration::from_secs(1), s.read(&mut got)).await {
        Ok(Ok(n)) => got.truncate(n),
        _ => got.clear(),
    }
    got
}

/// Starts the supervisor as a daemon (`start -d`): for deployments whose workers never
/// get ready, which [`Deployment::start`] would wait for. Its log is `log.file`.
fn start_daemon(d: &Deployment) {
    let out = d.cli(&["start", "-d"]);
    assert!(out.status.success(), "start -d: {out:?}");
}

/// Waits until the daemon's log contains `needle`; returns the log.
fn wait_daemon_log(d: &Deployment, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = std::fs::read_to_string(d.config().log_file()).unwrap_or_default();
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon's log never said {needle:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The gateway still has no worker link after the refusals were logged.
fn assert_no_worker_link(d: &Deployment) {
    std::thread::sleep(Duration::from_millis(500));
    let stats = gateway_stats(d);
    assert_eq!(stats.detail["workers"], 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_and_api_clients_work_over_internal_tls() {
    let certs = Certs::new();
    let d = Deployment::start(Certs::worker(certs.gateway(options()), &certs.ca));
    // Workers are linked (Deployment::start waited for it): clients get answers.
    let mut c = Client::connect(d.addr()).await;
    c.send("over TLS").await;
    c.expect_next("over TLS").await;
    // The Gateway API speaks TLS too.
    let api = d.api().await;
    assert_eq!(api.all_client_count().await.unwrap(), 1);
    api.send_to_all("from the API").await.unwrap();
    c.expect_next("from the API").await;
    // The internal listener does not speak plain TCP: no hello frame for such a peer.
    let got = plain_peer_gets(internal_addr(&d)).await;
    assert!(got.is_empty() || got[0] == 0x15, "{got:02x?}");
    d.wait_log("refused internal connection: TLS handshake failed");
    assert!(!d.log().contains("gateway link failed"), "{}", d.log());
    let tls = pki::connect(internal_addr(&d), &certs.authority.pem, &[]).await;
    assert_eq!(pki::peer_cert(&tls), certs.leaf.der);
    drop(tls);

    // The certificate is re-read like a listener's: new links get the new one, the
    // links up keep working.
    let second = certs.authority.leaf("gateway, second");
    second.write(certs.dir.path(), "gateway");
    assert!(switchboard::process::signal(
        d.supervisor_pid(),
        libc::SIGHUP
    ));
    d.wait_log("certificate reloaded what=gateway.internal_tls");
    let tls = pki::connect(internal_addr(&d), &certs.authority.pem, &[]).await;
    assert_eq!(pki::peer_cert(&tls), second.der);
    let fresh = d.api().await;
    assert_eq!(fresh.all_client_count().await.unwrap(), 1);
    c.send("after the reload").await;
    c.expect_next("after the reload").await;
    // So does the `connections` command.
    let out = d.cli(&["connections"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains(&c.local_addr().to_string()) && stdout.contains("1 client(s)"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_name_verifies_a_gateway_certificate_without_an_ip() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("internal CA");
    let (cert, key) = ca
        .leaf_for("gateway", &["gateway.internal"])
        .write(dir.path(), "gateway");
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &ca.pem).unwrap();
    let d = Deployment::start(
        options()
            .gateway_keys(&format!("internal_tls = {}", pki::tls_table(&cert, &key)))
            .section(&format!(
                "[worker.internal_tls]\nca = {:?}\nserver_name = \"gateway.internal\"",
                ca_path.display().to_string()
            )),
    );
    let mut c = Client::connect(d.addr()).await;
    c.send("by name").await;
    c.expect_next("by name").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_internal_tls_refuses_a_tls_gateway_naming_the_key() {
    let certs = Certs::new();
    let d = Deployment::prepare(certs.gateway(options()));
    start_daemon(&d);
    let log = wait_daemon_log(&d, "the gateway speaks TLS on its internal listener");
    let line = log
        .lines()
        .find(|l| l.contains("the gateway speaks TLS"))
        .unwrap();
    assert!(
        line.contains("gateway link failed") && line.contains("[worker.internal_tls]"),
        "{line}"
    );
    assert_no_worker_link(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_internal_tls_refuses_a_plain_gateway() {
    let certs = Certs::new();
    let d = Deployment::prepare(Certs::worker(options(), &certs.ca));
    start_daemon(&d);
    let log = wait_daemon_log(&d, "refusing the unencrypted link");
    let line = log
        .lines()
        .find(|l| l.contains("refusing the unencrypted link"))
        .unwrap();
    assert!(line.contains("[worker.internal_tls]"), "{line}");
    assert_no_worker_link(&d);
    // The gateway is indeed plain: a TCP peer gets its hello frame (type 0x01) at once.
    let got = plain_peer_gets(internal_addr(&d)).await;
    assert_eq!(got.get(4), Some(&0x01), "{got:02x?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_trusting_another_ca_gets_no_link_and_says_why() {
    let certs = Certs::new();
    let other = certs.dir.path().join("other-ca.pem");
    std::fs::write(&other, Ca::new("some other CA").pem).unwrap();
    let d = Deployment::prepare(Certs::worker(certs.gateway(options()), &other));
    start_daemon(&d);
    let log = wait_daemon_log(&d, "gateway link failed");
    let line = log
        .lines()
        .find(|l| l.contains("gateway link failed"))
        .unwrap();
    assert!(line.contains("TLS: invalid peer certificate"), "{line}");
    wait_daemon_log(&d, "refused internal connection: TLS handshake failed");
    assert_no_worker_link(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_internal_tls_files_are_refused_at_config_check_and_start() {
    let certs = Certs::new();
    let missing = certs.dir.path().join("missing.pem");
    let cases = [
        (
            "gateway.internal_tls",
            Deployment::prepare(options().gateway_keys(&format!(
                "internal_tls = {}",
                pki::tls_table(&certs.cert, &missing)
            ))),
        ),
        (
            "worker.internal_tls",
            Deployment::prepare(Certs::worker(options(), &missing)),
        ),
    ];
    for (key, d) in cases {
        let check = d.cli(&["config", "check"]);
        let stderr = String::from_utf8_lossy(&check.stderr);
        assert!(!check.status.success(), "{key}: config check passed");
        assert!(
            stderr.contains(key) && stderr.contains("missing.pem"),
            "{key}: {stderr}"
        );
        let (status, output) = run_bounded(&d, &["start"]);
        assert!(!status.success(), "{key}: start succeeded:\n{output}");
        assert!(output.contains(key), "{key}: {output}");
        assert_eq!(switchboard::supervisor::running_pid(d.config()), None);
    }
}
