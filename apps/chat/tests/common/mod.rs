//! Test harness: starts the real `chat` binary (supervisor, gateways, workers) in a
//! temporary directory on free ports, and drives it with real TCP clients.
//!
//! Every process a test starts is stopped when its `Deployment` is dropped; tests only
//! ever signal pids they started (the supervisor and the children it reports).

#![allow(dead_code)]

pub mod web;

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchboard::{stats, supervisor, ClientId, Config};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// How long any single expectation may wait.
pub const WAIT: Duration = Duration::from_secs(15);

/// Path of the binary under test.
pub fn chat_bin() -> &'static str {
    env!("CARGO_BIN_EXE_chat")
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `binary --config CONFIG ARGS...` with its output to `log`. If the test process
/// dies, the child (a supervisor, and through it every process it started) goes too.
pub fn spawn_chat(binary: &Path, config: &Path, args: &[&str], log: std::fs::File) -> Child {
    let mut cmd = Command::new(binary);
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    cmd.spawn().expect("start chat")
}

/// A deployment of the chat demo under test.
pub struct Deployment {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub config: Config,
    pub addr: SocketAddr,
    supervisor: Option<Child>,
    pub log_path: PathBuf,
    pub binary: PathBuf,
}

/// Settings a test may change; the rest is the chat's default.
pub struct Options {
    pub gateways: usize,
    pub workers: usize,
    /// Extra TOML appended to the generated file (must not repeat generated tables).
    pub extra: String,
    /// Extra `[gateway]` keys.
    pub gateway_extra: String,
    /// `[gateway.heartbeat]` body.
    pub heartbeat: String,
    /// Listener keys appended to the telnet listener.
    pub listener_extra: String,
    /// `gateway.hold_timeout`.
    pub hold_timeout: String,
    /// `supervisor.restart_delay`.
    pub restart_delay: String,
    /// The binary to run (default: the one cargo built).
    pub binary: Option<PathBuf>,
    /// `[admin]` body: by default a free port, so that tests never share
    /// 127.0.0.1:55757 (the address is in `run/admin.addr`).
    pub admin: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            gateways: 1,
            workers: 2,
            extra: String::new(),
            gateway_extra: String::new(),
            heartbeat: "interval = \"25s\"\nidle_intervals = 0\n".into(),
            listener_extra: String::new(),
            hold_timeout: "30s".into(),
            restart_delay: "200ms".into(),
            binary: None,
            admin: "listen = \"127.0.0.1:0\"\n".into(),
        }
    }
}

impl Deployment {
    /// Writes a config and starts `chat start`, waiting until every gateway has every
    /// worker connected.
    pub fn start(opts: Options) -> Self {
        let (gateways, workers) = (opts.gateways, opts.workers);
        let mut d = Self::prepare(opts);
        d.spawn_supervisor();
        d.wait_ready(gateways, workers);
        d
    }

    /// Writes the config (and the directory) without starting anything.
    pub fn prepare(opts: Options) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let text = format!(
            r#"name = "chat-test"
secret = "test-secret"
data_dir = "{data}"

[store]
backend = "file"
path = "store.sqlite"

[gateway]
count = {gateways}
hold_timeout = "{hold_timeout}"
{gateway_extra}

[[gateway.listeners]]
name = "telnet"
listen = "127.0.0.1:{port}"
protocol = "text"
{listener_extra}

[gateway.heartbeat]
{heartbeat}

[worker]
count = {workers}
discovery_interval = "200ms"
drain_timeout = "10s"

[supervisor]
stop_timeout = "10s"
restart_delay = "{restart_delay}"

[db.instances.history]
driver = "sqlite"
path = "history.sqlite"

[admin]
{admin}

{extra}
"#,
            data = dir.path().join("data").display(),
            gateways = opts.gateways,
            gateway_extra = opts.gateway_extra,
            listener_extra = opts.listener_extra,
            heartbeat = opts.heartbeat,
            workers = opts.workers,
            extra = opts.extra,
            hold_timeout = opts.hold_timeout,
            restart_delay = opts.restart_delay,
            admin = opts.admin,
        );
        let config_path = dir.path().join("chat.toml");
        std::fs::write(&config_path, &text).unwrap();
        let config = Config::load(&config_path).unwrap();
        let log_path = dir.path().join("supervisor.log");
        Deployment {
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            config_path,
            config,
            supervisor: None,
            log_path,
            binary: opts.binary.unwrap_or_else(|| PathBuf::from(chat_bin())),
            dir,
        }
    }

    fn spawn_supervisor(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        self.supervisor = Some(spawn_chat(&self.binary, &self.config_path, &["start"], log));
    }

    /// Waits until `gateways` gateways each report `workers` worker links.
    pub fn wait_ready(&self, gateways: usize, workers: usize) {
        let deadline = Instant::now() + WAIT;
        loop {
            let all = stats::read_all(&self.config.run_dir());
            let ready_gateways = all
                .iter()
                .filter(|s| s.role == "gateway")
                .filter(|s| {
                    s.detail.get("workers").and_then(|v| v.as_u64()) == Some(workers as u64)
                })
                .count();
            if ready_gateways == gateways {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "deployment not ready after {WAIT:?}: {all:#?}\nlog:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The supervisor's pid (started in the foreground, or a daemon through the pid file).
    pub fn supervisor_pid(&self) -> u32 {
        self.supervisor
            .as_ref()
            .map(|c| c.id())
            .or_else(|| supervisor::running_pid(&self.config))
            .unwrap_or(0)
    }

    /// Pids of the running children of a role (`gateway` / `worker`).
    pub fn pids(&self, role: &str) -> Vec<u32> {
        let state = supervisor::read_state(&self.config).expect("supervisor state");
        state
            .children
            .iter()
            .filter(|c| format!("{:?}", c.role).to_lowercase() == role && c.pid != 0)
            .map(|c| c.pid)
            .collect()
    }

    /// Everything the deployment logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            if Instant::now() > deadline {
                panic!("log never contained {needle:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the chat binary with this deployment's config and `args`.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.binary)
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .output()
            .unwrap()
    }

    /// Stops the deployment (SIGTERM to the supervisor) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.supervisor.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.wait();
        }
        // A daemon this test started through `start -d`.
        if let Some(pid) = supervisor::running_pid(&self.config) {
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while switchboard::process::alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Stops and starts the supervisor again on the same data directory.
    pub fn restart(&mut self, gateways: usize, workers: usize) {
        self.stop();
        self.spawn_supervisor();
        self.wait_ready(gateways, workers);
    }

    /// Where the admin listener of the running supervisor listens (`run/admin.addr`),
    /// waiting for it to appear.
    pub fn admin_addr(&self) -> SocketAddr {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(a) = switchboard::admin::running_address(&self.config) {
                return a;
            }
            if Instant::now() > deadline {
                panic!("no admin listener address after {WAIT:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// Appends a line to the test's own notes in the log (helps reading failures).
    pub fn note(&self, text: &str) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log_path)
        {
            let _ = writeln!(f, "---- test: {text}");
        }
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A line-protocol client.
pub struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// Set by `login`.
    pub id: Option<ClientId>,
    pub name: String,
}

impl Client {
    /// Connects.
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (r, w) = stream.into_split();
        Client {
            reader: BufReader::new(r),
            writer: w,
            id: None,
            name: String::new(),
        }
    }

    /// Reads one line (without the newline); panics after `WAIT`.
    pub async fn line(&mut self) -> String {
        self.try_line(WAIT)
            .await
            .unwrap_or_else(|| panic!("{}: no line within {WAIT:?}", self.name))
    }

    /// Reads one line, or `None` on timeout or EOF.
    pub async fn try_line(&mut self, wait: Duration) -> Option<String> {
        let mut buf = String::new();
        match tokio::time::timeout(wait, self.reader.read_line(&mut buf)).await {
            Ok(Ok(0)) => None,
            Ok(Ok(_)) => Some(buf.trim_end_matches('\n').to_string()),
            _ => None,
        }
    }

    /// Reads lines until one equals `expected`; returns the lines skipped.
    pub async fn expect(&mut self, expected: &str) -> Vec<String> {
        let mut skipped = vec![];
        loop {
            let l = self.line().await;
            if l == expected {
                return skipped;
            }
            skipped.push(l);
            assert!(
                skipped.len() < 100_000,
                "{}: never got {expected:?}",
                self.name
            );
        }
    }

    /// Reads exactly the next line and checks it.
    pub async fn expect_next(&mut self, expected: &str) {
        let l = self.line().await;
        assert_eq!(l, expected, "{}: unexpected line", self.name);
    }

    /// Sends a line.
    pub async fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("send");
    }

    /// Sends raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("send");
    }

    /// Goes through the prompt and the welcome; returns the client id.
    pub async fn login(&mut self, name: &str) -> ClientId {
        self.name = name.to_string();
        // A broadcast (another client's login) may reach us before our own prompt.
        self.expect("type in your name:").await;
        self.send(name).await;
        let hello = self.line().await;
        let id: ClientId = hello
            .split_once('[')
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(id, _)| id.parse().expect("client id in welcome"))
            .unwrap_or_else(|| panic!("unexpected welcome {hello:?}"));
        assert_eq!(
            hello,
            format!("Hello {name}[{id}]! Your client_id is {id}.")
        );
        let explain = self.line().await;
        assert!(
            explain.contains("client_id:words") && explain.contains("words"),
            "{explain}"
        );
        self.expect(&format!("{name}[{id}] come")).await;
        self.id = Some(id);
        id
    }

    /// Whether the server closes the connection within `wait` (data before EOF ignored).
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, self.reader.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}
