//! The deployment under test: either one this tool starts (a temporary config, the
//! release `chat` binary, stopped at the end by signalling only the supervisor it
//! started), an existing address, or with `--floor` this tool's own floor server (see
//! [`crate::floor`]).
//!
//! Readiness and process ids come from the files the supervisor and its children keep
//! under `<data_dir>/run`: `supervisor.json` (children and pids) and `stats/*.json`
//! (each gateway's worker links).

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde::Deserialize;

use crate::wire::Protocol;

/// How long a started deployment may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the supervisor may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the load goes.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Use a running deployment at this address instead of starting one.
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// Its data directory (for gateway and worker pids: memory and CPU figures).
    #[arg(long, requires = "addr")]
    pub data_dir: Option<PathBuf>,
    /// The `chat` binary to start (default: `chat` beside this executable).
    #[arg(long)]
    pub chat: Option<PathBuf>,
    /// A second `chat` binary, the baseline: its runs alternate with `--chat`'s (the
    /// baseline first), `--runs` of each, and the summary gives each one's median and
    /// spread, the ratio of the medians (new ÷ base) and in how many pairs the new
    /// figure was lower — the comparison docs/BENCHMARKS.md asks for, where the machine
    /// changes pace from one minute to the next.
    #[arg(long, value_name = "CHAT", conflicts_with_all = ["addr", "floor"])]
    pub against: Option<PathBuf>,
    /// Gateway processes of a started deployment.
    #[arg(long, default_value_t = 1)]
    pub gateways: usize,
    /// Worker processes of a started deployment.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Most clients per gateway process (`gateway.max_clients`).
    #[arg(long, default_value_t = 19_000)]
    pub max_clients: usize,
    /// Keep the chat history in SQLite (`[db.instances.history]`, as the demo ships);
    /// without it every public line skips the database write.
    #[arg(long)]
    pub history: bool,
    /// Client port of a started deployment (0: one the deployment picks).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// The clients' protocol: `text` (telnet users) or `websocket` (browsers speaking
    /// the browser chat's JSON). A started deployment gets one listener of it.
    #[arg(long, value_enum, default_value_t = Protocol::Text)]
    pub protocol: Protocol,
    /// Connect over TLS. A started deployment's listener gets a certificate made for
    /// the run (an ECDSA P-256 leaf for IP 127.0.0.1, signed by a CA made with it).
    #[arg(long)]
    pub tls: bool,
    /// Instead of the chat, start this tool's floor server: the telnet chat's login,
    /// private and public lines straight on epoll, nothing else — `alone`, one process
    /// (what the kernel's socket calls of a message cost), or `split`, a gateway
    /// process and a worker process on one link (reported as the gateway's and the
    /// workers' CPU). It paces its writes by `SWITCHBOARD__GATEWAY__MIN_WRITE_INTERVAL`
    /// as the chat does. `connect`, `private` and `broadcast`, telnet clients only (no
    /// client count reported).
    #[arg(long, value_enum, conflicts_with_all = ["addr", "chat", "tls", "history"])]
    pub floor: Option<crate::floor::Shape>,
}

/// One process the supervisor started.
#[derive(Debug, Deserialize)]
struct ChildState {
    role: String,
    #[serde(default)]
    index: usize,
    pid: u32,
}

#[derive(Debug, Deserialize)]
struct SupervisorState {
    #[serde(default)]
    pid: u32,
    children: Vec<ChildState>,
}

#[derive(Debug, Deserialize)]
struct ProcessStats {
    role: String,
    pid: u32,
    #[serde(default)]
    clients: u64,
    #[serde(default)]
    detail: serde_json::Map<String, serde_json::Value>,
}

/// A deployment to benchmark.
pub struct Deployment {
    /// Client address.
    pub addr: SocketAddr,
    /// The clients' protocol.
    pub protocol: Protocol,
    /// Whether clients connect over TLS.
    pub tls: bool,
    data_dir: Option<PathBuf>,
    /// The `chat` binary and configuration of a deployment this tool started (for CLI
    /// commands such as `reload`).
    cli: Option<(PathBuf, PathBuf)>,
    /// The temporary directory and supervisor of a deployment this tool started.
    started: Option<(PathBuf, Child)>,
    /// The floor server this tool started (`--floor`), and its worker's pid when split.
    floor: Option<(Child, Option<u32>)>,
}

impl Deployment {
    /// Starts a deployment as `target` says, or describes the existing one.
    pub fn open(target: &Target) -> anyhow::Result<Self> {
        if let Some(addr) = target.addr {
            return Ok(Self {
                addr,
                protocol: target.protocol,
                tls: target.tls,
                data_dir: target.data_dir.clone(),
                cli: None,
                started: None,
                floor: None,
            });
        }
        if let Some(shape) = target.floor {
            return Self::floor(target, shape);
        }
        let chat = match &target.chat {
            Some(p) => p.clone(),
            None => std::env::current_exe()?
                .parent()
                .context("executable directory")?
                .join("chat"),
        };
        if !chat.exists() {
            bail!(
                "no chat binary at {} (build it: cargo build --release -p chat, or pass --chat)",
                chat.display()
            );
        }
        // Port 0: the supervisor picks the port (shared by every gateway) and the
        // gateways report it; read back once they are ready.
        let port = target.port;
        let dir = std::env::temp_dir().join(format!(
            "switchboard-bench-{}-{}",
            std::process::id(),
            crate::client::now_micros()
        ));
        std::fs::create_dir_all(&dir)?;
        let tls = if target.tls {
            Some(write_certificate(&dir)?)
        } else {
            None
        };
        let config = dir.join("chat.toml");
        std::fs::write(
            &config,
            config_text(target, &dir.join("data"), port, tls.as_ref()),
        )?;
        let log = std::fs::File::create(dir.join("chat.log"))?;
        let mut cmd = Command::new(&chat);
        cmd.arg("--config")
            .arg(&config)
            .arg("start")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // If this tool dies, the supervisor (and through it every child) stops too.
        // SAFETY: prctl is async-signal-safe and touches only the child being set up.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("start {}", chat.display()))?;
        let mut deployment = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            protocol: target.protocol,
            tls: target.tls,
            data_dir: Some(dir.join("data")),
            cli: Some((chat, config)),
            started: Some((dir, child)),
            floor: None,
        };
        deployment.wait_ready(target.gateways, target.workers)?;
        if port == 0 {
            deployment.addr = deployment
                .stats()
                .iter()
                .filter(|s| s.role == "gateway")
                .find_map(|s| s.detail.get("listeners")?.get(0)?.as_str()?.parse().ok())
                .context("no gateway reported the address of its listener")?;
        }
        Ok(deployment)
    }

    /// Starts this tool's floor server on a port it picks and reads the address back.
    fn floor(target: &Target, shape: crate::floor::Shape) -> anyhow::Result<Self> {
        anyhow::ensure!(
            target.protocol == Protocol::Text,
            "--floor speaks text lines only (telnet clients)"
        );
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("floor-server")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", target.port))
            .arg("--shape")
            .arg(format!("{shape:?}").to_ascii_lowercase())
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        // SAFETY: prctl is async-signal-safe and touches only the child being set up.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("start the floor server")?;
        let mut line = String::new();
        let stdout = child.stdout.take().context("the floor server's stdout")?;
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        // `ADDR`, or `ADDR WORKER_PID` when split.
        let mut words = line.split_whitespace();
        let addr = words.next().and_then(|a| a.parse().ok());
        let worker = words.next().and_then(|p| p.parse().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the floor server did not print its address (got {line:?})");
        };
        Ok(Self {
            addr,
            protocol: Protocol::Text,
            tls: false,
            data_dir: None,
            cli: None,
            started: None,
            floor: Some((child, worker)),
        })
    }

    fn run_dir(&self) -> Option<PathBuf> {
        self.data_dir.as_ref().map(|d| d.join("run"))
    }

    /// Waits until `gateways` gateways each report `workers` worker links.
    fn wait_ready(&self, gateways: usize, workers: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let ready = self
                .stats()
                .iter()
                .filter(|s| s.role == "gateway")
                .filter(|s| {
                    s.detail.get("workers").and_then(|v| v.as_u64()) == Some(workers as u64)
                })
                .count();
            if ready >= gateways && self.pids("gateway").len() == gateways {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "deployment not ready after {READY_TIMEOUT:?} ({ready} of {gateways} gateways); log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stats(&self) -> Vec<ProcessStats> {
        let Some(dir) = self.run_dir().map(|d| d.join("stats")) else {
            return vec![];
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return vec![];
        };
        entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<ProcessStats>(&b).ok())
            .filter(|s| crate::procinfo::rss_bytes(s.pid) > 0)
            .collect()
    }

    /// Clients the gateways report (their stats files, refreshed once a second).
    pub fn gateway_clients(&self) -> u64 {
        self.stats()
            .iter()
            .filter(|s| s.role == "gateway")
            .map(|s| s.clients)
            .sum()
    }

    /// The supervisor's `run/supervisor.json`, if it can be read.
    fn supervisor_state(&self) -> Option<SupervisorState> {
        let path = self.run_dir()?.join("supervisor.json");
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Pids of the running processes of a role (`gateway` / `worker`); the floor server
    /// counts as the gateway.
    pub fn pids(&self, role: &str) -> Vec<u32> {
        if let Some((floor, worker)) = &self.floor {
            return match role {
                "gateway" => vec![floor.id()],
                "worker" => worker.iter().copied().collect(),
                _ => vec![],
            };
        }
        let Some(state) = self.supervisor_state() else {
            return vec![];
        };
        state
            .children
            .into_iter()
            .filter(|c| c.role.eq_ignore_ascii_case(role) && c.pid != 0)
            .map(|c| c.pid)
            .collect()
    }

    /// Every server process by name — `supervisor`, `gateway0`, …, `worker0`, … (a
    /// role and its slot index, so a worker replaced by a reload keeps its name) —
    /// with its current pid, from `run/supervisor.json`. Empty if it cannot be read.
    pub fn processes(&self) -> Vec<(String, u32)> {
        let Some(state) = self.supervisor_state() else {
            return vec![];
        };
        let mut out = vec![("supervisor".to_string(), state.pid)];
        out.extend(
            state
                .children
                .into_iter()
                .map(|c| (format!("{}{}", c.role.to_ascii_lowercase(), c.index), c.pid)),
        );
        out
    }

    /// A `chat --config CONFIG` command for the deployment this tool started (to add
    /// a subcommand such as `reload`); `None` for a deployment given by `--addr`.
    pub fn cli(&self) -> Option<Command> {
        let (chat, config) = self.cli.as_ref()?;
        let mut cmd = Command::new(chat);
        cmd.arg("--config").arg(config);
        Some(cmd)
    }

    /// Sum of the gateways' resident memory, in bytes.
    pub fn gateway_rss(&self) -> u64 {
        self.pids("gateway")
            .into_iter()
            .map(crate::procinfo::rss_bytes)
            .sum()
    }

    /// Sum of the gateways' proportional resident memory (`Pss`), in bytes: what the
    /// gateways take of the machine together, the executable's pages counted once.
    pub fn gateway_pss(&self) -> u64 {
        self.pids("gateway")
            .into_iter()
            .map(crate::procinfo::pss_bytes)
            .sum()
    }

    /// What a started deployment logged.
    pub fn log(&self) -> String {
        self.started
            .as_ref()
            .and_then(|(dir, _)| std::fs::read_to_string(dir.join("chat.log")).ok())
            .unwrap_or_default()
    }

    /// Stops a deployment this tool started (SIGTERM to its supervisor only).
    pub fn stop(&mut self) {
        if let Some((mut floor, _)) = self.floor.take() {
            let _ = floor.kill();
            let _ = floor.wait();
        }
        let Some((dir, mut child)) = self.started.take() else {
            return;
        };
        // SAFETY: kill on the pid of a child we spawned and have not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                eprintln!("bench: supervisor did not stop within {STOP_TIMEOUT:?}; killing it");
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(dir);
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Makes a CA and a leaf for `IP:127.0.0.1` signed by it (as the testkit's tests do);
/// writes the leaf's certificate and key into `dir` and returns their paths.
fn write_certificate(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "switchboard bench CA");
    let ca_key = KeyPair::generate()?;
    ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])?;
    leaf.distinguished_name
        .push(DnType::CommonName, "switchboard bench");
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &issuer)?;
    let (cert_path, key_path) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    Ok((cert_path, key_path))
}

fn config_text(
    target: &Target,
    data: &Path,
    port: u16,
    tls: Option<&(PathBuf, PathBuf)>,
) -> String {
    let name = match target.protocol {
        Protocol::Text => "telnet",
        Protocol::Websocket => "browser",
    };
    let tls = match tls {
        Some((cert, key)) => format!(
            "tls = {{ cert = {:?}, key = {:?} }}\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
        None => String::new(),
    };
    let history = if target.history {
        "[db.instances.history]\ndriver = \"sqlite\"\npath = \"history.sqlite\"\n"
    } else {
        ""
    };
    format!(
        r#"# Written by tools/bench.
name = "bench"
secret = "bench-secret"
data_dir = "{data}"

[store]
backend = "file"
path = "store.sqlite"

[gateway]
count = {gateways}
max_clients = {max_clients}

[[gateway.listeners]]
name = "{name}"
listen = "127.0.0.1:{port}"
protocol = "{protocol}"
{tls}
[gateway.heartbeat]
interval = "25s"
idle_intervals = 0

[worker]
count = {workers}
discovery_interval = "200ms"

[log]
level = "warn"

# A free port: a bench never collides with a running demo's admin listener.
[admin]
listen = "127.0.0.1:0"

{history}"#,
        data = data.display(),
        gateways = target.gateways,
        workers = target.workers,
        max_clients = target.max_clients,
        protocol = target.protocol.config_name(),
    )
}
