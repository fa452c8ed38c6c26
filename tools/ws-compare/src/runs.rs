//! The measured scenarios. Each run starts the candidate's server as a process of its
//! own and spreads the client connections over child processes of this executable
//! (`ws-compare child JSON`): a child opens its share of the connections, prints
//! `ready JSON`, then does what the parent's next line on its stdin says (`msg`: one
//! echoed message per connection; `go`: the timed load) and prints `done JSON` or
//! `result JSON`.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Conn};
use crate::hist::Histogram;
use crate::procinfo::{self, CpuSample, CpuUse};
use crate::servers::Candidate;

/// Handshakes in flight at once per child.
const CONNECT_CONCURRENCY: usize = 200;

/// What one child process does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub addr: SocketAddr,
    /// Raw TCP (the `tcp` baseline) instead of WebSocket.
    pub raw: bool,
    /// This child's connections: global indexes `first..first + count` of `total`.
    pub first: usize,
    pub count: usize,
    pub total: usize,
    pub sources: usize,
    /// Message size in bytes.
    pub size: usize,
    /// `None`: the idle scenario.
    pub load: Option<Load>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Load {
    /// Messages per second over all connections (open loop).
    pub rate: f64,
    pub seconds: f64,
    pub binary: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Ready {
    connected: usize,
    failed: usize,
    first_error: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Done {
    ok: usize,
    failed: usize,
    first_error: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct LoadResult {
    sent: u64,
    received: u64,
    bad: u64,
    errors: u64,
    last_recv_us: u64,
    max_lag_us: u64,
    hist: Histogram,
}

// ---------------------------------------------------------------- child side

/// `ws-compare child JSON`.
pub async fn child(job: Job) -> anyhow::Result<()> {
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let (conns, ready) = open_all(&job).await;
    report("ready", &ready)?;
    match job.load {
        None => {
            let mut conns = conns;
            loop {
                match stdin.next_line().await? {
                    Some(l) if l.trim() == "msg" => {
                        let (back, done) = one_message_each(conns, job.size).await;
                        conns = back;
                        report("done", &done)?;
                    }
                    // `quit` or the parent gone.
                    _ => return Ok(()),
                }
            }
        }
        Some(load) => {
            match stdin.next_line().await? {
                Some(l) if l.trim() == "go" => {}
                other => bail!("expected go, got {other:?}"),
            }
            let result = run_load(&job, load, conns).await;
            report("result", &result)
        }
    }
}

fn report<T: Serialize>(tag: &str, value: &T) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{tag} {}", serde_json::to_string(value)?)?;
    out.flush()?;
    Ok(())
}

async fn open_all(job: &Job) -> (Vec<(usize, Conn)>, Ready) {
    let limit = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut set = JoinSet::new();
    for i in job.first..job.first + job.count {
        let limit = limit.clone();
        let (addr, raw, sources) = (job.addr, job.raw, job.sources);
        set.spawn(async move {
            let _permit = limit.acquire_owned().await;
            (
                i,
                Conn::open(addr, client::source_ip(i, sources), raw).await,
            )
        });
    }
    let mut conns = Vec::with_capacity(job.count);
    let mut ready = Ready::default();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, Ok(c))) => {
                conns.push((i, c));
                ready.connected += 1;
            }
            Ok((_, Err(e))) => {
                ready.failed += 1;
                ready.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            Err(e) => {
                ready.failed += 1;
                ready.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    conns.sort_by_key(|(i, _)| *i);
    (conns, ready)
}

async fn one_message_each(conns: Vec<(usize, Conn)>, size: usize) -> (Vec<(usize, Conn)>, Done) {
    let limit = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut set = JoinSet::new();
    for (i, mut c) in conns {
        let limit = limit.clone();
        set.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let r = c.one_message(i as u64, size).await;
            (i, c, r)
        });
    }
    let mut back = Vec::new();
    let mut done = Done::default();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, c, r)) => {
                match r {
                    Ok(()) => done.ok += 1,
                    Err(e) => {
                        done.failed += 1;
                        done.first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
                back.push((i, c));
            }
            Err(e) => {
                done.failed += 1;
                done.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    (back, done)
}

async fn run_load(job: &Job, load: Load, conns: Vec<(usize, Conn)>) -> LoadResult {
    let per_conn_rate = load.rate / job.total.max(1) as f64;
    let per_conn = ((per_conn_rate * load.seconds).round() as u64).max(1);
    let interval = Duration::from_secs_f64(1.0 / per_conn_rate.max(1e-6));
    let start = tokio::time::Instant::now();
    let deadline = start + Duration::from_secs_f64(load.seconds) + Duration::from_secs(5);
    let mut set = JoinSet::new();
    for (i, conn) in conns {
        let Conn::Ws(ws) = conn else { continue };
        let phase = interval.mul_f64(i as f64 / job.total.max(1) as f64);
        set.spawn(one_connection_load(
            *ws,
            i as u64,
            start + phase,
            interval,
            per_conn,
            deadline,
            job.size,
            load.binary,
        ));
    }
    let mut total = LoadResult::default();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(r) => {
                total.sent += r.sent;
                total.received += r.received;
                total.bad += r.bad;
                total.errors += r.errors;
                total.last_recv_us = total.last_recv_us.max(r.last_recv_us);
                total.max_lag_us = total.max_lag_us.max(r.max_lag_us);
                total.hist.merge(&r.hist);
            }
            Err(_) => total.errors += 1,
        }
    }
    total
}

/// One connection's share of the load: a sender on a fixed schedule (open loop: a late
/// sender catches up, it does not wait for answers) and a receiver that measures.
#[allow(clippy::too_many_arguments)]
async fn one_connection_load(
    ws: client::Ws,
    index: u64,
    first_due: tokio::time::Instant,
    interval: Duration,
    count: u64,
    deadline: tokio::time::Instant,
    size: usize,
    binary: bool,
) -> LoadResult {
    let (mut sink, mut stream) = ws.split();
    let sender = tokio::spawn(async move {
        let mut max_lag = Duration::ZERO;
        let mut sent = 0u64;
        for k in 0..count {
            let due = first_due + interval.mul_f64(k as f64);
            let now = tokio::time::Instant::now();
            if now < due {
                tokio::time::sleep_until(due).await;
            } else {
                max_lag = max_lag.max(now - due);
            }
            let micros = client::now_micros();
            let seq = index << 32 | k;
            let msg = if binary {
                Message::binary(client::binary_payload(seq, micros, size))
            } else {
                Message::text(client::text_payload(seq, micros, size))
            };
            if sink.send(msg).await.is_err() {
                break;
            }
            sent += 1;
        }
        (sent, max_lag, sink)
    });
    let mut r = LoadResult::default();
    while r.received + r.bad < count {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(msg))) => match client::stamp_of(&msg, size, binary) {
                Some(sent_at) => {
                    let now = client::now_micros();
                    r.hist.record(now.saturating_sub(sent_at));
                    r.received += 1;
                    r.last_recv_us = now;
                }
                None => r.bad += 1,
            },
            Ok(Some(Err(_))) | Ok(None) => {
                r.errors += 1;
                break;
            }
            Err(_) => break,
        }
    }
    match sender.await {
        Ok((sent, lag, _sink)) => {
            r.sent = sent;
            r.max_lag_us = lag.as_micros() as u64;
        }
        Err(_) => r.errors += 1,
    }
    r
}

// ---------------------------------------------------------------- parent side

/// A candidate's server process.
pub struct Server {
    child: Child,
    _stdin: ChildStdin,
    pub pid: u32,
    pub addr: SocketAddr,
}

impl Server {
    pub async fn start(candidate: Candidate) -> anyhow::Result<Server> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["server", "--candidate", &candidate.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("start the server")?;
        let stdin = child.stdin.take().context("server stdin")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let pid = child.id().context("server pid")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .context("server did not start in time")??
            .context("server exited at start")?;
        let addr = line
            .strip_prefix("listening ")
            .context("expected `listening ADDR`")?
            .parse()?;
        Ok(Server {
            child,
            _stdin: stdin,
            pid,
            addr,
        })
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// The load-generator processes of one run.
struct Children {
    kids: Vec<(Child, ChildStdin, Lines<BufReader<ChildStdout>>)>,
}

impl Children {
    fn spawn(job: &Job, procs: usize) -> anyhow::Result<Children> {
        let exe = std::env::current_exe()?;
        let procs = procs.clamp(1, job.total.max(1));
        let mut kids = Vec::with_capacity(procs);
        for p in 0..procs {
            let base = job.total / procs;
            let extra = job.total % procs;
            let share = Job {
                first: p * base + p.min(extra),
                count: base + usize::from(p < extra),
                ..job.clone()
            };
            let mut child = Command::new(&exe)
                .arg("child")
                .arg(serde_json::to_string(&share)?)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("start a client process")?;
            let stdin = child.stdin.take().context("child stdin")?;
            let stdout = child.stdout.take().context("child stdout")?;
            kids.push((child, stdin, BufReader::new(stdout).lines()));
        }
        Ok(Children { kids })
    }

    fn pids(&self) -> Vec<u32> {
        self.kids.iter().filter_map(|(c, _, _)| c.id()).collect()
    }

    async fn collect<T: DeserializeOwned>(
        &mut self,
        tag: &str,
        timeout: Duration,
    ) -> anyhow::Result<Vec<T>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        for (i, (_, _, lines)) in self.kids.iter_mut().enumerate() {
            let line = tokio::time::timeout_at(deadline, lines.next_line())
                .await
                .with_context(|| format!("child {i}: no {tag} in {timeout:?}"))??
                .with_context(|| format!("child {i} exited before {tag}"))?;
            let json = line
                .strip_prefix(tag)
                .with_context(|| format!("child {i}: expected {tag}, got {line:?}"))?;
            out.push(serde_json::from_str(json.trim())?);
        }
        Ok(out)
    }

    async fn tell(&mut self, word: &str) -> anyhow::Result<()> {
        for (_, stdin, _) in &mut self.kids {
            stdin.write_all(format!("{word}\n").as_bytes()).await?;
            stdin.flush().await?;
        }
        Ok(())
    }

    async fn finish(mut self) {
        let _ = self.tell("quit").await;
        for (child, _, _) in &mut self.kids {
            if tokio::time::timeout(Duration::from_secs(20), child.wait())
                .await
                .is_err()
            {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
    }
}

/// Median, min and max.
fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
}

fn fmt_spread(values: &[f64], decimals: usize) -> String {
    let (m, lo, hi) = spread(values);
    format!("{m:.decimals$} [{lo:.decimals$}..{hi:.decimals$}]")
}

fn median(values: &[f64]) -> f64 {
    spread(values).0
}

/// `clients` connections spread over processes and source addresses.
fn default_procs(conns: usize) -> usize {
    conns.div_ceil(2_500).clamp(1, 8)
}

fn default_sources(conns: usize) -> usize {
    conns.div_ceil(5_000).max(2)
}

// ---------------------------------------------------------------- idle

#[derive(Debug, Clone, Serialize)]
pub struct IdleRun {
    pub candidate: String,
    pub conns: usize,
    pub rss_before: u64,
    pub rss_idle: u64,
    pub rss_after_message: u64,
    pub bytes_per_conn_idle: f64,
    pub bytes_per_conn_after_message: f64,
    pub load_average: f64,
}

pub struct IdleOptions {
    pub conns: usize,
    pub procs: Option<usize>,
    pub size: usize,
    pub settle: Duration,
}

pub async fn idle_run(candidate: Candidate, o: &IdleOptions) -> anyhow::Result<IdleRun> {
    let server = Server::start(candidate).await?;
    tokio::time::sleep(o.settle).await;
    let rss_before = procinfo::rss_bytes(server.pid);
    let job = Job {
        addr: server.addr,
        raw: !candidate.is_websocket(),
        first: 0,
        count: o.conns,
        total: o.conns,
        sources: default_sources(o.conns),
        size: o.size,
        load: None,
    };
    let mut kids = Children::spawn(&job, o.procs.unwrap_or_else(|| default_procs(o.conns)))?;
    let ready: Vec<Ready> = kids.collect("ready", Duration::from_secs(120)).await?;
    let connected: usize = ready.iter().map(|r| r.connected).sum();
    if connected != o.conns {
        let e = ready.iter().find_map(|r| r.first_error.clone());
        bail!(
            "{candidate}: {connected} of {} connected; first error: {e:?}",
            o.conns
        );
    }
    tokio::time::sleep(o.settle).await;
    let rss_idle = procinfo::rss_bytes(server.pid);
    kids.tell("msg").await?;
    let done: Vec<Done> = kids.collect("done", Duration::from_secs(120)).await?;
    let ok: usize = done.iter().map(|d| d.ok).sum();
    if ok != o.conns {
        let e = done.iter().find_map(|d| d.first_error.clone());
        bail!(
            "{candidate}: {ok} of {} echoed; first error: {e:?}",
            o.conns
        );
    }
    tokio::time::sleep(o.settle).await;
    let rss_after_message = procinfo::rss_bytes(server.pid);
    kids.finish().await;
    server.stop().await;
    let per = |rss: u64| (rss as f64 - rss_before as f64) / o.conns as f64;
    Ok(IdleRun {
        candidate: candidate.to_string(),
        conns: o.conns,
        rss_before,
        rss_idle,
        rss_after_message,
        bytes_per_conn_idle: per(rss_idle),
        bytes_per_conn_after_message: per(rss_after_message),
        load_average: procinfo::load_average(),
    })
}

/// Every candidate `runs` times, interleaved; a markdown table of medians at the end.
pub async fn idle_set(
    candidates: &[Candidate],
    runs: usize,
    o: &IdleOptions,
    json: bool,
) -> anyhow::Result<()> {
    println!(
        "idle: {} connections, one message of {} B, load average {:.2}",
        o.conns,
        o.size,
        procinfo::load_average()
    );
    let mut all: Vec<Vec<IdleRun>> = vec![Vec::new(); candidates.len()];
    for run in 0..runs {
        for (c, candidate) in candidates.iter().enumerate() {
            let r = idle_run(*candidate, o).await?;
            println!(
                "run {run} {:<22} before {:>7} KiB  idle {:>7.0} B/conn  after one message {:>7.0} B/conn  (load {:.2})",
                r.candidate,
                r.rss_before / 1024,
                r.bytes_per_conn_idle,
                r.bytes_per_conn_after_message,
                r.load_average
            );
            if json {
                println!("{}", serde_json::to_string(&r)?);
            }
            all[c].push(r);
        }
    }
    let base = all
        .iter()
        .find(|runs| runs.first().is_some_and(|r| r.candidate == "tcp"))
        .map(|runs| {
            median(
                &runs
                    .iter()
                    .map(|r| r.bytes_per_conn_after_message)
                    .collect::<Vec<_>>(),
            )
        });
    println!();
    println!(
        "| candidate | server RSS before | idle B/conn | idle after one message B/conn | over tcp baseline (after msg) |"
    );
    println!("|---|---|---|---|---|");
    for runs in &all {
        let Some(first) = runs.first() else { continue };
        let idle: Vec<f64> = runs.iter().map(|r| r.bytes_per_conn_idle).collect();
        let after: Vec<f64> = runs
            .iter()
            .map(|r| r.bytes_per_conn_after_message)
            .collect();
        let before: Vec<f64> = runs.iter().map(|r| r.rss_before as f64 / 1024.0).collect();
        let over = base.map_or("–".into(), |b| format!("{:+.0} B", median(&after) - b));
        println!(
            "| {} | {} KiB | {} | {} | {} |",
            first.candidate,
            fmt_spread(&before, 0),
            fmt_spread(&idle, 0),
            fmt_spread(&after, 0),
            over
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- load

#[derive(Debug, Clone, Serialize)]
pub struct LoadRun {
    pub candidate: String,
    pub target_rate: f64,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub bad: u64,
    pub achieved_rate: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub max_send_lag_ms: f64,
    pub server_cpu_us_per_msg: f64,
    pub cpu: CpuUse,
    pub load_average: f64,
}

pub struct LoadOptions {
    pub conns: usize,
    pub procs: usize,
    pub rate: f64,
    pub seconds: f64,
    pub size: usize,
    pub binary: bool,
}

pub async fn load_run(candidate: Candidate, o: &LoadOptions) -> anyhow::Result<LoadRun> {
    if !candidate.is_websocket() {
        bail!("the load scenario needs a WebSocket candidate");
    }
    let server = Server::start(candidate).await?;
    let job = Job {
        addr: server.addr,
        raw: false,
        first: 0,
        count: o.conns,
        total: o.conns,
        sources: default_sources(o.conns),
        size: o.size,
        load: Some(Load {
            rate: o.rate,
            seconds: o.seconds,
            binary: o.binary,
        }),
    };
    let mut kids = Children::spawn(&job, o.procs)?;
    let ready: Vec<Ready> = kids.collect("ready", Duration::from_secs(60)).await?;
    let connected: usize = ready.iter().map(|r| r.connected).sum();
    if connected != o.conns {
        let e = ready.iter().find_map(|r| r.first_error.clone());
        bail!(
            "{candidate}: {connected} of {} connected; first error: {e:?}",
            o.conns
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sample = CpuSample::start(server.pid, &kids.pids());
    let go_us = client::now_micros();
    kids.tell("go").await?;
    let results: Vec<LoadResult> = kids
        .collect("result", Duration::from_secs_f64(o.seconds + 40.0))
        .await?;
    let cpu = sample.finish();
    kids.finish().await;
    server.stop().await;
    let mut hist = Histogram::default();
    let (mut sent, mut received, mut bad, mut last, mut lag) = (0, 0, 0, 0, 0);
    for r in &results {
        hist.merge(&r.hist);
        sent += r.sent;
        received += r.received;
        bad += r.bad;
        last = last.max(r.last_recv_us);
        lag = lag.max(r.max_lag_us);
    }
    let per_conn = ((o.rate / o.conns as f64 * o.seconds).round() as u64).max(1);
    let expected = per_conn * o.conns as u64;
    let span = (last.saturating_sub(go_us) as f64 / 1e6).max(1e-3);
    Ok(LoadRun {
        candidate: candidate.to_string(),
        target_rate: o.rate,
        sent,
        received,
        lost: expected.saturating_sub(received),
        bad,
        achieved_rate: received as f64 / span,
        p50_us: hist.quantile(0.50),
        p99_us: hist.quantile(0.99),
        max_us: hist.max(),
        max_send_lag_ms: lag as f64 / 1000.0,
        server_cpu_us_per_msg: cpu.server_s * 1e6 / received.max(1) as f64,
        cpu,
        load_average: procinfo::load_average(),
    })
}

pub async fn load_set(
    candidates: &[Candidate],
    runs: usize,
    o: &LoadOptions,
    json: bool,
) -> anyhow::Result<()> {
    println!(
        "load: {} connections, {} msg/s, {} B {}, {} s, {} client processes, load average {:.2}",
        o.conns,
        o.rate,
        o.size,
        if o.binary { "binary" } else { "text" },
        o.seconds,
        o.procs,
        procinfo::load_average()
    );
    let mut all: Vec<Vec<LoadRun>> = vec![Vec::new(); candidates.len()];
    for run in 0..runs {
        for (c, candidate) in candidates.iter().enumerate() {
            let r = load_run(*candidate, o).await?;
            println!(
                "run {run} {:<22} {:>8.0} msg/s lost {:>6} p50 {:>6.2} ms p99 {:>7.2} ms max {:>7.1} ms  server {:>5.2} µs/msg ({:>3.0} %) clients {:>3.0} % others {:>3.0} % softirq {:>3.0} %  lag {:.1} ms",
                r.candidate,
                r.achieved_rate,
                r.lost,
                r.p50_us as f64 / 1000.0,
                r.p99_us as f64 / 1000.0,
                r.max_us as f64 / 1000.0,
                r.server_cpu_us_per_msg,
                r.cpu.server_pct,
                r.cpu.clients_pct,
                r.cpu.others_pct,
                r.cpu.softirq_pct,
                r.max_send_lag_ms
            );
            if json {
                println!("{}", serde_json::to_string(&r)?);
            }
            all[c].push(r);
        }
    }
    let base = all.first().map(|runs| {
        median(
            &runs
                .iter()
                .map(|r| r.server_cpu_us_per_msg)
                .collect::<Vec<_>>(),
        )
    });
    println!();
    println!("| candidate | achieved msg/s | lost | p50 ms | p99 ms | server µs CPU/msg | vs first | server / clients / others / softirq CPU % |");
    println!("|---|---|---|---|---|---|---|---|");
    for runs in &all {
        let Some(first) = runs.first() else { continue };
        let f = |g: &dyn Fn(&LoadRun) -> f64| runs.iter().map(g).collect::<Vec<f64>>();
        let cpu = f(&|r| r.server_cpu_us_per_msg);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.0} / {:.0} / {:.0} / {:.0} |",
            first.candidate,
            fmt_spread(&f(&|r| r.achieved_rate), 0),
            fmt_spread(&f(&|r| r.lost as f64), 0),
            fmt_spread(&f(&|r| r.p50_us as f64 / 1000.0), 2),
            fmt_spread(&f(&|r| r.p99_us as f64 / 1000.0), 2),
            fmt_spread(&cpu, 2),
            base.map_or("–".into(), |b| format!("{:.2}×", median(&cpu) / b)),
            median(&f(&|r| r.cpu.server_pct)),
            median(&f(&|r| r.cpu.clients_pct)),
            median(&f(&|r| r.cpu.others_pct)),
            median(&f(&|r| r.cpu.softirq_pct)),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- smoke

async fn expect(ws: &mut client::Ws, want: Message) -> anyhow::Result<()> {
    let got = tokio::time::timeout(client::STEP_TIMEOUT, ws.next())
        .await
        .context("no answer in time")?;
    match got {
        Some(Ok(m)) if m == want => Ok(()),
        other => bail!("expected {want:?}, got {other:?}"),
    }
}

/// Every check of one connection: text, fragmented text, binary (64-bit length), ping,
/// close.
async fn smoke_connection(addr: SocketAddr, i: usize) -> anyhow::Result<()> {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;

    let mut ws = client::ws_connect(addr, client::source_ip(i, 2)).await?;
    let text = format!("hello {i} ✓");
    ws.send(Message::text(text.clone())).await?;
    expect(&mut ws, Message::text(text)).await?;

    ws.send(Message::Frame(Frame::message(
        "frag",
        OpCode::Data(Data::Text),
        false,
    )))
    .await?;
    ws.send(Message::Frame(Frame::message(
        "mented",
        OpCode::Data(Data::Continue),
        true,
    )))
    .await?;
    expect(&mut ws, Message::text("fragmented")).await?;

    let binary: Vec<u8> = (0..65_536u32).map(|b| (b * 7 + i as u32) as u8).collect();
    ws.send(Message::binary(binary.clone())).await?;
    expect(&mut ws, Message::binary(binary)).await?;

    let ping = format!("ping {i}");
    ws.send(Message::Ping(ping.clone().into())).await?;
    expect(&mut ws, Message::Pong(ping.into())).await?;

    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await?;
    let got = tokio::time::timeout(client::STEP_TIMEOUT, ws.next())
        .await
        .context("no close answer in time")?;
    match got {
        Some(Ok(Message::Close(Some(f)))) if f.code == CloseCode::Normal => {}
        other => bail!("expected the close answer, got {other:?}"),
    }
    // Then the stream ends.
    let end = tokio::time::timeout(client::STEP_TIMEOUT, ws.next())
        .await
        .context("connection not ended after close")?;
    if let Some(Ok(m)) = end {
        bail!("expected the end after close, got {m:?}");
    }
    Ok(())
}

/// `conns` connections to every candidate, each doing every check; Err if any failed.
pub async fn smoke(candidates: &[Candidate], conns: usize) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for candidate in candidates {
        let server = Server::start(*candidate).await?;
        let started = std::time::Instant::now();
        let mut set = JoinSet::new();
        for i in 0..conns {
            set.spawn(smoke_connection(server.addr, i));
        }
        let (mut ok, mut first_error) = (0, None);
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(Ok(())) => ok += 1,
                Ok(Err(e)) => {
                    first_error.get_or_insert_with(|| format!("{e:#}"));
                }
                Err(e) => {
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        server.stop().await;
        println!(
            "smoke {candidate}: {ok}/{conns} ok in {:.2} s{}",
            started.elapsed().as_secs_f64(),
            first_error
                .as_ref()
                .map_or(String::new(), |e| format!("; first error: {e}"))
        );
        if ok != conns {
            failed.push(candidate.to_string());
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("smoke failed for {}", failed.join(", "))
    }
}
