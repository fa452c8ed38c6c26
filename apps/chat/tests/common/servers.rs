//! Private servers a fault test starts, stops and starts again: Redis, memcached and
//! MariaDB, each on a port of its own with its files in the test's directory, so the
//! services other tests share (scripts/services.sh) are never touched.
//!
//! A missing binary skips the test loudly — except in CI (`CI` set) or when
//! scripts/services.sh has run (it exports `SWITCHBOARD_TEST_*`, and installs the
//! binaries), where it fails the test.

use std::io::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchboard_testkit::free_port;

/// How long a server may take to start or stop.
const SERVER_WAIT: Duration = Duration::from_secs(60);

/// The first of `candidates` that exists as a file, or `None`.
fn find(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Prints a loud `SKIPPED` line when the test may skip (the caller returns), and fails
/// the test when it must run: in CI, or when `services_var` (exported by
/// scripts/services.sh, which installs the binary) is set.
pub fn skip_or_fail(test: &str, why: &str, services_var: &str) {
    if std::env::var_os("CI").is_some() || std::env::var_os(services_var).is_some() {
        panic!("{test}: {why}; it must run here (CI or {services_var} set; scripts/services.sh installs it)");
    }
    // Straight to stderr: the harness does not capture it, so the skip is seen.
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!! SKIPPED {test}: {why} (run scripts/services.sh) !!!!!!!!\n"
    );
}

/// A server process owned by a test: started on its own port, stopped with SIGTERM
/// (SIGKILL if it does not exit in time), killed when dropped.
pub struct Server {
    /// What it is, for messages.
    what: &'static str,
    program: PathBuf,
    args: Vec<String>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Server {
    fn new(
        what: &'static str,
        program: PathBuf,
        args: Vec<String>,
        port: u16,
        log: PathBuf,
    ) -> Self {
        Server {
            what,
            program,
            args,
            port,
            log,
            child: None,
        }
    }

    /// A private `redis-server` (no persistence), or `None` if it is not installed and
    /// the test may skip.
    pub fn redis(dir: &Path, test: &str) -> Option<Server> {
        let Some(program) = find(&["/usr/bin/redis-server", "/usr/local/bin/redis-server"]) else {
            skip_or_fail(
                test,
                "redis-server is not installed",
                "SWITCHBOARD_TEST_REDIS_URL",
            );
            return None;
        };
        // redis-server cannot bind port 0 and say which port it got, and the test
        // restarts it on the same port: a port picked before (see `free_port`).
        let port = free_port();
        let args = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            &dir.to_string_lossy(),
        ]
        .map(str::to_owned)
        .to_vec();
        Some(Server::new(
            "redis-server",
            program,
            args,
            port,
            dir.join("redis.log"),
        ))
    }

    /// A private `memcached`, or `None` if it is not installed and the test may skip.
    pub fn memcached(dir: &Path, test: &str) -> Option<Server> {
        let Some(program) = find(&["/usr/bin/memcached", "/usr/local/bin/memcached"]) else {
            skip_or_fail(
                test,
                "memcached is not installed",
                "SWITCHBOARD_TEST_MEMCACHED",
            );
            return None;
        };
        let port = free_port();
        // `-u root` is needed (and only used) when the test runs as root.
        let args = ["-u", "root", "-l", "127.0.0.1", "-U", "0", "-m", "16", "-p"]
            .map(str::to_owned)
            .into_iter()
            .chain([port.to_string()])
            .collect();
        Some(Server::new(
            "memcached",
            program,
            args,
            port,
            dir.join("memcached.log"),
        ))
    }

    /// A private MariaDB server with a fresh data directory in `dir`, grant tables
    /// off (anyone connects as root), or `None` if it is not installed and the test
    /// may skip. `mariadb-install-db` runs here; [`start`](Server::start) starts it.
    pub fn mariadb(dir: &Path, test: &str) -> Option<Server> {
        let var = "SWITCHBOARD_TEST_MYSQL_URL";
        let Some(server) = find(&[
            "/usr/sbin/mariadbd",
            "/usr/bin/mariadbd",
            "/usr/sbin/mysqld",
        ]) else {
            skip_or_fail(test, "mariadbd is not installed", var);
            return None;
        };
        let Some(install) = find(&["/usr/bin/mariadb-install-db", "/usr/bin/mysql_install_db"])
        else {
            skip_or_fail(test, "mariadb-install-db is not installed", var);
            return None;
        };
        let data = dir.join("mariadb");
        let out = Command::new(&install)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(["--user=root", "--auth-root-authentication-method=normal"])
            .args(["--skip-test-db", "--skip-name-resolve"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", install.display()));
        assert!(
            out.status.success(),
            "{} failed: {}{}",
            install.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let args = vec![
            "--no-defaults".to_owned(),
            format!("--datadir={}", data.display()),
            format!("--socket={}", dir.join("mariadb.sock").display()),
            format!("--pid-file={}", dir.join("mariadb.pid").display()),
            format!("--port={port}"),
            "--bind-address=127.0.0.1".to_owned(),
            "--skip-grant-tables".to_owned(),
            "--skip-name-resolve".to_owned(),
            "--user=root".to_owned(),
            "--innodb-buffer-pool-size=16M".to_owned(),
            "--skip-log-bin".to_owned(),
        ];
        Some(Server::new(
            "mariadbd",
            server,
            args,
            port,
            dir.join("mariadb.log"),
        ))
    }

    /// `host:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the server and waits until its port accepts connections; fails the test,
    /// with the server's log, after a minute.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already runs", self.what);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log.display()));
        let stderr = log.try_clone().expect("clone a file handle");
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr);
        // SAFETY: only prctl(2), async-signal-safe, between fork and exec: the server
        // dies with the test's thread if the test is killed.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program.display()));
        self.child = Some(child);
        let deadline = Instant::now() + SERVER_WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("{} exited at start ({status}):\n{}", self.what, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{} does not accept connections on port {} after {SERVER_WAIT:?}:\n{}",
                self.what,
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (SIGTERM; SIGKILL if it has not exited after a minute) and
    /// waits until it is gone.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        switchboard::process::signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + SERVER_WAIT;
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.wait();
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
