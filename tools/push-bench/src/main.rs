//! `push-bench`: how fast pushing from outside is — the admin listener's HTTP push API
//! (`POST /v1/push`, keep-alive, several connections) against the client library
//! (`Gateway::send_to_uid` / `send_to_group_counted` from this process), to single
//! uids and to one group of every client.
//!
//! Each run starts its own deployment of the `chat` binary (beside this executable, or
//! `--chat`): 1 gateway, 1 worker, a temporary data directory, log level `warn`. It
//! connects `--clients` telnet clients (not logged in: they get only the pushes), binds
//! client `i` to uid `u{i}` and puts every client in group `all-clients` through the
//! library, then pushes for `--seconds` from `--connections` concurrent senders,
//! closed loop (each sends its next push when the previous one was answered). Every
//! client counts the pushes it receives; a run ends when all have arrived (or after 10 s
//! more, which counts as loss).
//!
//! Printed per run and as the median [min..max] of `--runs`: pushes/s (answered), deliveries/s (received
//! by the clients, over the time until the last one), and CPU from `/proc/PID/stat` —
//! of the supervisor (which serves HTTP and runs the push API's client), of the gateway,
//! and of this generator — per push and in percent of one core.
//!
//! ```text
//! CARGO_TARGET_DIR=target-bench cargo build --release -p chat -p push-bench
//! target-bench/release/push-bench --scenario http-uid --runs 3
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use loadkit::proc::cpu_seconds;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// `POST /v1/push {"uid": ...}`, one client per push.
    HttpUid,
    /// `POST /v1/push {"group": "all-clients"}`, every client per push.
    HttpGroup,
    /// `Gateway::send_to_uid` from this process.
    LibUid,
    /// `Gateway::send_to_group_counted` from this process.
    LibGroup,
}

#[derive(Debug, Parser)]
#[command(about = "Pushes per second: the HTTP push API against the client library")]
struct Cli {
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Clients connected (each bound to its own uid, all in one group).
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Concurrent senders (HTTP: keep-alive connections; library: tasks).
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// How long each run pushes.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Runs; the median and range are printed.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The `chat` binary (default: beside this executable).
    #[arg(long)]
    chat: Option<PathBuf>,
}

/// One run's figures.
#[derive(Debug, Clone, Default)]
struct Figures {
    pushes_per_s: f64,
    deliveries_per_s: f64,
    lost: u64,
    supervisor_us_per_push: f64,
    gateway_us_per_push: f64,
    generator_us_per_push: f64,
    supervisor_pct: f64,
    gateway_pct: f64,
    worker_pct: f64,
    generator_pct: f64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let chat = match &cli.chat {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory")?
            .join("chat"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut all = Vec::new();
    for run in 1..=cli.runs {
        let f = rt.block_on(one_run(&cli, &chat))?;
        println!(
            "run {run}: {:?} pushes/s {:.0} deliveries/s {:.0} lost {} | CPU µs/push: supervisor {:.1} gateway {:.1} generator {:.1} | % of a core: supervisor {:.0} gateway {:.0} worker {:.0} generator {:.0}",
            cli.scenario, f.pushes_per_s, f.deliveries_per_s, f.lost, f.supervisor_us_per_push,
            f.gateway_us_per_push, f.generator_us_per_push, f.supervisor_pct, f.gateway_pct,
            f.worker_pct, f.generator_pct
        );
        all.push(f);
    }
    let med = |get: fn(&Figures) -> f64| {
        let mut v: Vec<f64> = all.iter().map(get).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        format!("{:.1} [{:.1}..{:.1}]", v[v.len() / 2], v[0], v[v.len() - 1])
    };
    println!(
        "median of {}: {:?} clients {} connections {}\n  pushes/s {}\n  deliveries/s {}\n  lost {}\n  CPU µs per push: supervisor {} gateway {} generator {}\n  CPU % of a core: supervisor {} gateway {} worker {} generator {}",
        all.len(), cli.scenario, cli.clients, cli.connections,
        med(|f| f.pushes_per_s), med(|f| f.deliveries_per_s), med(|f| f.lost as f64),
        med(|f| f.supervisor_us_per_push), med(|f| f.gateway_us_per_push), med(|f| f.generator_us_per_push),
        med(|f| f.supervisor_pct), med(|f| f.gateway_pct), med(|f| f.worker_pct), med(|f| f.generator_pct),
    );
    Ok(())
}

/// A deployment this tool started; SIGTERM to its supervisor (only) when dropped.
struct Deployment {
    _dir: tempfile::TempDir,
    config: switchboard::Config,
    supervisor: Child,
    client_addr: SocketAddr,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of the child this tool started.
        unsafe { libc::kill(self.supervisor.id() as i32, libc::SIGTERM) };
        let _ = self.supervisor.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start(chat: &Path, clients: usize) -> anyhow::Result<Deployment> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let text = format!(
        r#"name = "push-bench"
secret = "push-bench-secret"
data_dir = "{data}"

[store]
backend = "file"
path = "store.sqlite"

[gateway]
count = 1
max_clients = {max}

[[gateway.listeners]]
listen = "127.0.0.1:{port}"

[worker]
count = 1
discovery_interval = "200ms"

[log]
level = "warn"

[admin]
listen = "127.0.0.1:0"
"#,
        data = dir.path().join("data").display(),
        max = clients + 100,
    );
    let path = dir.path().join("bench.toml");
    std::fs::write(&path, text)?;
    let config = switchboard::Config::load(&path)?;
    let log = std::fs::File::create(dir.path().join("chat.log"))?;
    let supervisor = Command::new(chat)
        .arg("--config")
        .arg(&path)
        .arg("start")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {}", chat.display()))?;
    let d = Deployment {
        _dir: dir,
        config,
        supervisor,
        client_addr: format!("127.0.0.1:{port}").parse()?,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = switchboard::stats::read_all(&d.config.run_dir())
            .iter()
            .any(|s| {
                s.role == "gateway" && s.detail.get("workers").and_then(|v| v.as_u64()) == Some(1)
            });
        if ready && switchboard::admin::running_address(&d.config).is_some() {
            return Ok(d);
        }
        if Instant::now() > deadline {
            bail!("the deployment did not become ready in 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pids of the deployment's gateways and workers (from `run/supervisor.json`).
fn children(config: &switchboard::Config, role: switchboard::supervisor::ChildRole) -> Vec<u32> {
    switchboard::supervisor::read_state(config)
        .map(|s| {
            s.children
                .iter()
                .filter(|c| c.role == role && c.pid != 0)
                .map(|c| c.pid)
                .collect()
        })
        .unwrap_or_default()
}

async fn one_run(cli: &Cli, chat: &Path) -> anyhow::Result<Figures> {
    let d = start(chat, cli.clients)?;
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..cli.clients {
        let s = TcpStream::connect(d.client_addr).await?;
        let (received, stop) = (received.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut lines = BufReader::new(s).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if l.starts_with('p') {
                    received.fetch_add(1, Ordering::Relaxed);
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        }));
    }
    let lib = switchboard::Gateway::connect(&d.config).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let ids = loop {
        let ids = lib.all_client_ids().await?;
        if ids.len() == cli.clients {
            break ids;
        }
        if Instant::now() > deadline {
            bail!("{} of {} clients connected", ids.len(), cli.clients);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (i, id) in ids.iter().enumerate() {
        lib.bind_uid(*id, &format!("u{i}")).await?;
        lib.join_group(*id, "all-clients").await?;
    }
    // Every command is applied before the first push (the gateway runs a link's
    // commands in order; this query comes after them).
    anyhow::ensure!(lib.client_count_by_group("all-clients").await? == cli.clients as u64);
    let admin = switchboard::admin::running_address(&d.config).context("admin address")?;

    let supervisor = d.supervisor.id();
    let gateways = children(&d.config, switchboard::supervisor::ChildRole::Gateway);
    let workers = children(&d.config, switchboard::supervisor::ChildRole::Worker);
    let me = std::process::id();
    let cpu = |pids: &[u32]| pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let before = (
        cpu(&[supervisor]),
        cpu(&gateways),
        cpu(&workers),
        cpu(&[me]),
    );
    let began = Instant::now();
    let until = began + Duration::from_secs(cli.seconds);
    let per_push: u64 = match cli.scenario {
        Scenario::HttpGroup | Scenario::LibGroup => cli.clients as u64,
        _ => 1,
    };
    let mut senders = Vec::new();
    for k in 0..cli.connections {
        let (scenario, clients, lib) = (cli.scenario, cli.clients, lib.clone());
        senders.push(tokio::spawn(async move {
            let mut sent = 0u64;
            let mut http = match scenario {
                Scenario::HttpUid | Scenario::HttpGroup => Some(Http::connect(admin).await?),
                _ => None,
            };
            let mut n = k;
            while Instant::now() < until {
                let uid = format!("u{}", n % clients);
                n += 7919; // spread over the uids
                match (scenario, http.as_mut()) {
                    (Scenario::HttpUid, Some(h)) => {
                        h.push(&format!(r#"{{"message":"p {sent}","uid":"{uid}"}}"#))
                            .await?
                    }
                    (Scenario::HttpGroup, Some(h)) => {
                        h.push(&format!(
                            r#"{{"message":"p {sent}","group":"all-clients"}}"#
                        ))
                        .await?
                    }
                    (Scenario::LibUid, _) => {
                        anyhow::ensure!(
                            lib.send_to_uid(&[uid.as_str()], format!("p {sent}"))
                                .await?
                                == 1
                        )
                    }
                    _ => {
                        let n = lib
                            .send_to_group_counted(&["all-clients"], format!("p {sent}"), &[])
                            .await?;
                        anyhow::ensure!(n == clients);
                    }
                }
                sent += 1;
            }
            anyhow::Ok(sent)
        }));
    }
    let mut pushes = 0;
    for s in senders {
        pushes += s.await??;
    }
    let sending = began.elapsed();
    let expected = pushes * per_push;
    let grace = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < grace {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let delivered_in = began.elapsed();
    let after = (
        cpu(&[supervisor]),
        cpu(&gateways),
        cpu(&workers),
        cpu(&[me]),
    );
    let got = received.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    lib.close().await;
    for r in readers {
        r.abort();
    }
    drop(d);
    let pct = |a: f64, b: f64| (b - a) / delivered_in.as_secs_f64() * 100.0;
    let us = |a: f64, b: f64| (b - a) * 1e6 / pushes.max(1) as f64;
    Ok(Figures {
        pushes_per_s: pushes as f64 / sending.as_secs_f64(),
        deliveries_per_s: got as f64 / delivered_in.as_secs_f64(),
        lost: expected.saturating_sub(got),
        supervisor_us_per_push: us(before.0, after.0),
        gateway_us_per_push: us(before.1, after.1),
        generator_us_per_push: us(before.3, after.3),
        supervisor_pct: pct(before.0, after.0),
        gateway_pct: pct(before.1, after.1),
        worker_pct: pct(before.2, after.2),
        generator_pct: pct(before.3, after.3),
    })
}

/// One keep-alive HTTP/1.1 connection to the admin listener.
struct Http {
    stream: BufReader<TcpStream>,
    addr: SocketAddr,
    head: String,
}

impl Http {
    async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Self {
            stream: BufReader::new(s),
            addr,
            head: String::new(),
        })
    }

    /// `POST /v1/push` with `body`; fails unless the answer is 200.
    async fn push(&mut self, body: &str) -> anyhow::Result<()> {
        let req = format!(
            "POST /v1/push HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        self.stream.get_mut().write_all(req.as_bytes()).await?;
        let mut length = 0usize;
        let mut status = 0u16;
        loop {
            self.head.clear();
            if self.stream.read_line(&mut self.head).await? == 0 {
                bail!("the admin listener closed the connection");
            }
            let line = self.head.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some(code) = line.strip_prefix("HTTP/1.1 ") {
                status = code.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            } else if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse()?;
                }
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        if status != 200 {
            bail!("{status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(())
    }
}
