//! `soak`: a steady population of telnet clients for a long time, with churn, private
//! messages, broadcasts and a `reload` every few minutes; one line (and one CSV row)
//! per sample with the resident memory of every server process, CPU, messages and
//! disconnects. What it is for: memory that grows when nothing else does, and messages
//! or clients lost over an hour, not peak rates.
//!
//! The population is `clients` logged-in telnet users in this process (the rates are
//! moderate, so one generator process suffices, and every message's sender and
//! recipient are known to it):
//!
//! - **stable** clients, in pairs, stay connected for the whole run; each sends
//!   `ID:p KEY SEQ MICROS` to its partner on a fixed schedule (`rate` in total); the
//!   first one also sends `b SEQ MICROS` to everybody (`broadcast_rate`), which every
//!   stable client must receive;
//! - **churners** log in, send one private line to a stable client, wait for its echo,
//!   stay for `churners / churn` seconds and disconnect, then reconnect as a new client:
//!   `churn` disconnects and reconnects a second in all.
//!
//! Every message is entered in a ledger before it is written and crossed off when it
//! arrives: one that arrives twice is a duplicate, one still missing `late_after`
//! seconds after it was sent is lost. A stable client's connection that ends, or a
//! churner's that ends before its time, is an unexpected disconnect (the slot then
//! reconnects and goes on). The tool runs `chat --config CONFIG reload` every
//! `reload_every`.
//!
//! Memory is `VmRSS` and `RssAnon` of the supervisor and of each child by slot
//! (`gateway0`, `worker0`, …) read from `run/supervisor.json` at every sample, so a
//! worker replaced by a reload is followed to its new pid. `RssAnon` (heap, stacks) is
//! what a leak grows; `VmRSS` also counts the pages of the executable a process has
//! touched so far (about 13 MiB of the 15 here), which rise as new code paths run. CPU is read every second from `/proc/PID/stat` of every
//! server process seen, including old workers still draining after a reload.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::{self, Session};
use crate::deploy::Deployment;
use crate::procinfo;
use crate::procs::Share;
use crate::stats::Histogram;
use crate::wire::Protocol;

/// Parameters of `soak`.
#[derive(Debug, Clone, Args)]
pub struct Params {
    /// Minutes of traffic.
    #[arg(long, default_value_t = 60.0)]
    pub minutes: f64,
    /// Clients logged in at any time: the stable pairs plus the churners.
    #[arg(long, default_value_t = 200)]
    pub clients: usize,
    /// Of them, clients that disconnect and reconnect in turn.
    #[arg(long, default_value_t = 40)]
    pub churners: usize,
    /// Disconnects (each followed by a reconnect) per second over all churners.
    #[arg(long, default_value_t = 2.0)]
    pub churn: f64,
    /// Private messages per second over all stable clients.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Broadcast lines per second (one sender; every client receives each).
    #[arg(long, default_value_t = 2.0)]
    pub broadcast_rate: f64,
    /// `chat reload` this often (`300s`, `5m`, `1m`; `0s`: never).
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub reload_every: Duration,
    /// Seconds between two samples (a line and a CSV row each).
    #[arg(long, default_value_t = 60)]
    pub sample_every: u64,
    /// Minutes of warm-up: the summary's memory trend is taken from this sample on.
    #[arg(long, default_value_t = 10.0)]
    pub warmup: f64,
    /// Seconds after which a message not received counts as lost.
    #[arg(long, default_value_t = 10.0)]
    pub late_after: f64,
    /// Write the samples to this CSV file too.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Also print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `300s`, `5m`, `1h`, `250ms` or a number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("not a duration: {text:?}"))?;
    let seconds = match unit {
        "" | "s" => n,
        "ms" => n / 1e3,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit in {text:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string())
}

/// Marker of a private line at its recipient.
const PRIVATE: &[u8] = b" said to You :p ";
/// Marker of a broadcast line of this run.
const BROADCAST: &[u8] = b" said :b ";
/// Marker of the echo a sender of a private line gets.
const ECHO: &[u8] = b" said to [";
/// What the chat answers when the recipient of a private line is unknown.
const NOT_ONLINE: &[u8] = b"is not online";
/// Ledger keys of broadcast deliveries: this bit and the receiving stable slot.
const BROADCAST_KEY: u64 = 1 << 63;
/// How long a churner waits for the echo of its private line.
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Clients log in; nothing is sent.
    Login,
    /// Traffic.
    Run,
    /// Sending stopped; clients still read what is on its way.
    Drain,
    /// Everybody disconnects.
    Done,
}

/// Counters of the whole run.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    private_sent: u64,
    private_received: u64,
    private_duplicates: u64,
    not_online: u64,
    broadcast_sent: u64,
    broadcast_expected: u64,
    broadcast_received: u64,
    broadcast_duplicates: u64,
    logins: u64,
    login_failures: u64,
    disconnects: u64,
    unexpected_disconnects: u64,
    echo_timeouts: u64,
    reloads: u64,
    reload_failures: u64,
}

/// What was sent and has not arrived yet, and the counters.
#[derive(Default)]
struct Ledger {
    tally: Tally,
    /// `(stream, seq)` → when it was sent. A private stream is its sender's session
    /// key; a broadcast delivery's is `BROADCAST_KEY | receiving slot`.
    outstanding: HashMap<(u64, u64), Instant>,
    /// Latencies since the last sample, and over the run.
    private_window: Histogram,
    broadcast_window: Histogram,
    private_all: Histogram,
    broadcast_all: Histogram,
}

impl Ledger {
    /// Crosses off `(stream, seq)`; whether it was outstanding (else a duplicate).
    fn arrived(&mut self, key: (u64, u64)) -> bool {
        self.outstanding.remove(&key).is_some()
    }

    /// Messages outstanding for longer than `after`: (private, broadcast deliveries).
    fn late(&self, after: Duration) -> (u64, u64) {
        let now = Instant::now();
        let mut late = (0, 0);
        for ((stream, _), at) in &self.outstanding {
            if now.duration_since(*at) >= after {
                if stream & BROADCAST_KEY != 0 {
                    late.1 += 1;
                } else {
                    late.0 += 1;
                }
            }
        }
        late
    }
}

/// What every client task shares.
struct Ctx {
    share: Share,
    stable: usize,
    churners: usize,
    params: Params,
    phase: watch::Receiver<Phase>,
    /// When traffic started (set as the phase becomes `Run`).
    start: OnceLock<Instant>,
    /// The current client id of every stable slot (partners look it up to send).
    ids: Vec<RwLock<String>>,
    ledger: Mutex<Ledger>,
    /// Session keys (a private stream each).
    next_key: AtomicU64,
    /// Broadcast sequence numbers.
    next_broadcast: AtomicU64,
    /// Told once per slot when its first login is done.
    logged_in: mpsc::UnboundedSender<()>,
}

impl Ctx {
    fn tally(&self, f: impl FnOnce(&mut Tally)) {
        f(&mut self.ledger.lock().expect("ledger").tally);
    }

    fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Handles a line received by stable slot `slot` (`None`: a churner).
    fn on_line(&self, slot: Option<usize>, line: &[u8]) {
        if let Some(rest) = client::after(line, PRIVATE) {
            if let Some((key, seq, at)) = parse_three(rest) {
                let mut l = self.ledger.lock().expect("ledger");
                if l.arrived((key, seq)) {
                    l.tally.private_received += 1;
                    let latency = client::now_micros().saturating_sub(at);
                    l.private_window.record(latency);
                    l.private_all.record(latency);
                } else {
                    l.tally.private_duplicates += 1;
                }
            }
        } else if let Some(rest) = client::after(line, BROADCAST) {
            // Churners receive broadcasts too; only the stable clients' are checked.
            let (Some(slot), Some((seq, at))) = (slot, client::parse_seq_time(rest)) else {
                return;
            };
            let mut l = self.ledger.lock().expect("ledger");
            if l.arrived((BROADCAST_KEY | slot as u64, seq)) {
                l.tally.broadcast_received += 1;
                let latency = client::now_micros().saturating_sub(at);
                l.broadcast_window.record(latency);
                l.broadcast_all.record(latency);
            } else {
                l.tally.broadcast_duplicates += 1;
            }
        } else if client::after(line, NOT_ONLINE).is_some() {
            self.tally(|t| t.not_online += 1);
        }
    }

    /// Enters private message `(key, seq)` in the ledger and makes its line to `to`.
    fn private_line(&self, to: &str, key: u64, seq: u64) -> String {
        let mut l = self.ledger.lock().expect("ledger");
        l.outstanding.insert((key, seq), Instant::now());
        l.tally.private_sent += 1;
        client::say_to(
            Protocol::Text,
            to,
            &format!("p {key} {seq} {}", client::now_micros()),
        )
    }

    /// Enters the next broadcast in the ledger (one delivery per stable client) and
    /// makes its line.
    fn broadcast_line(&self) -> String {
        let seq = self.next_broadcast.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut l = self.ledger.lock().expect("ledger");
        for slot in 0..self.stable {
            l.outstanding
                .insert((BROADCAST_KEY | slot as u64, seq), now);
        }
        l.tally.broadcast_sent += 1;
        l.tally.broadcast_expected += self.stable as u64;
        client::say_all(Protocol::Text, &format!("b {seq} {}", client::now_micros()))
    }

    /// Logs in client `index` as `name`, counting the login or its failure.
    async fn login(&self, index: usize, name: &str) -> Option<Session> {
        match client::login(&self.share, index, name).await {
            Ok(s) => {
                self.tally(|t| t.logins += 1);
                Some(s)
            }
            Err(e) => {
                eprintln!("soak: login of {name} failed: {e:#}");
                self.tally(|t| t.login_failures += 1);
                None
            }
        }
    }
}

/// Parses `KEY SEQ MICROS`.
fn parse_three(text: &[u8]) -> Option<(u64, u64, u64)> {
    let digits = text.iter().take_while(|b| b.is_ascii_digit()).count();
    let key = std::str::from_utf8(&text[..digits]).ok()?.parse().ok()?;
    let rest = text.get(digits..)?.strip_prefix(b" ")?;
    let (seq, at) = client::parse_seq_time(rest)?;
    Some((key, seq, at))
}

/// How a session ended.
enum End {
    /// The run is over.
    Done,
    /// The connection ended without being asked to.
    Cut,
}

/// A far instant for a timer that is off.
fn never() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// A stable client: logs in, then sends to its partner (and, slot 0, to everybody) on
/// schedule and reads until the run is done; reconnects if its connection is cut.
async fn stable_client(ctx: Arc<Ctx>, slot: usize) {
    let name = format!("s{slot}");
    let mut first = true;
    while ctx.phase() != Phase::Done {
        let Some(session) = ctx.login(slot, &name).await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        *ctx.ids[slot].write().expect("ids") = session.id.clone();
        if std::mem::take(&mut first) {
            let _ = ctx.logged_in.send(());
        }
        match stable_session(&ctx, slot, session).await {
            End::Done => break,
            End::Cut => {
                eprintln!("soak: stable client {name} was disconnected; reconnecting");
                ctx.tally(|t| t.unexpected_disconnects += 1);
            }
        }
    }
}

async fn stable_session(ctx: &Ctx, slot: usize, session: Session) -> End {
    let Session {
        mut lines,
        mut writer,
        ..
    } = session;
    let mut phase = ctx.phase.clone();
    let partner = slot ^ 1;
    let key = ctx.next_key.fetch_add(1, Ordering::Relaxed);
    let mut seq = 0u64;
    let per_client = ctx.params.rate.max(1e-3) / ctx.stable as f64;
    let private_every = Duration::from_secs_f64(1.0 / per_client);
    let broadcast_every = Duration::from_secs_f64(1.0 / ctx.params.broadcast_rate.max(1e-3));
    let sends_broadcasts = slot == 0 && ctx.params.broadcast_rate > 0.0;
    // The next sends, while the phase is `Run`.
    let schedule = |now: Instant| -> (Option<Instant>, Option<Instant>) {
        let Some(start) = ctx.start.get().copied() else {
            return (None, None);
        };
        // Phases spread evenly over the clients; a reconnected client picks up its
        // schedule where it is.
        let phase = private_every.mul_f64(slot as f64 / ctx.stable as f64);
        let mut p = start + phase;
        if p < now {
            let behind = now.duration_since(p).as_secs_f64();
            p += private_every.mul_f64((behind / private_every.as_secs_f64()).ceil());
        }
        (Some(p), sends_broadcasts.then_some(now.max(start)))
    };
    let (mut next_private, mut next_broadcast) = if ctx.phase() == Phase::Run {
        schedule(Instant::now())
    } else {
        (None, None)
    };
    loop {
        tokio::select! {
            changed = phase.changed() => {
                let now = *phase.borrow_and_update();
                if changed.is_err() || now == Phase::Done {
                    return End::Done;
                }
                (next_private, next_broadcast) = if now == Phase::Run {
                    schedule(Instant::now())
                } else {
                    (None, None)
                };
            }
            _ = tokio::time::sleep_until(next_private.unwrap_or_else(never)), if next_private.is_some() => {
                let to = ctx.ids[partner].read().expect("ids").clone();
                let line = ctx.private_line(&to, key, seq);
                seq += 1;
                next_private = next_private.map(|t| t + private_every);
                if writer.send(&line).await.is_err() {
                    return End::Cut;
                }
            }
            _ = tokio::time::sleep_until(next_broadcast.unwrap_or_else(never)), if next_broadcast.is_some() => {
                let line = ctx.broadcast_line();
                next_broadcast = next_broadcast.map(|t| t + broadcast_every);
                if writer.send(&line).await.is_err() {
                    return End::Cut;
                }
            }
            m = lines.next() => match m {
                Ok(Some(line)) => ctx.on_line(Some(slot), line),
                Ok(None) | Err(_) => return End::Cut,
            },
        }
    }
}

/// A churner: logs in, sends one private line to a stable client and waits for its
/// echo, stays until its turn to leave, disconnects and comes back, until the run is
/// over.
async fn churner(ctx: Arc<Ctx>, n: usize) {
    let index = ctx.stable + n;
    let name = format!("c{n}");
    let lifetime = ctx.churners as f64 / ctx.params.churn.max(1e-3);
    let offset = n as f64 / ctx.params.churn.max(1e-3);
    let mut first = true;
    let mut sessions = 0u64;
    while !matches!(ctx.phase(), Phase::Drain | Phase::Done) {
        let Some(session) = ctx.login(index, &name).await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        if std::mem::take(&mut first) {
            let _ = ctx.logged_in.send(());
        }
        sessions += 1;
        match churner_session(&ctx, n, sessions, session, lifetime, offset).await {
            Some(End::Done) => break,
            Some(End::Cut) => {
                eprintln!("soak: churner {name} was disconnected before its time");
                ctx.tally(|t| t.unexpected_disconnects += 1);
            }
            None => ctx.tally(|t| t.disconnects += 1),
        }
    }
}

/// One session of a churner; `None` when it left as planned (the session is dropped,
/// which closes the connection).
async fn churner_session(
    ctx: &Ctx,
    n: usize,
    sessions: u64,
    session: Session,
    lifetime: f64,
    offset: f64,
) -> Option<End> {
    let Session {
        mut lines,
        mut writer,
        ..
    } = session;
    let mut phase = ctx.phase.clone();
    // Wait for the run if it has not started.
    loop {
        match ctx.phase() {
            Phase::Run => break,
            Phase::Drain | Phase::Done => return Some(End::Done),
            Phase::Login => {}
        }
        tokio::select! {
            changed = phase.changed() => if changed.is_err() { return Some(End::Done) },
            m = lines.next() => match m {
                Ok(Some(line)) => ctx.on_line(None, line),
                Ok(None) | Err(_) => return Some(End::Cut),
            },
        }
    }
    let start = *ctx.start.get()?;
    // Leave at the next of start + offset + k × lifetime, at least a second from now.
    let now = Instant::now();
    let since = now.duration_since(start).as_secs_f64() + 1.0;
    let k = ((since - offset) / lifetime).ceil().max(0.0);
    let leave = start + Duration::from_secs_f64(offset + k * lifetime);

    // One private line to a stable client, acknowledged by its echo.
    let key = ctx.next_key.fetch_add(1, Ordering::Relaxed);
    let target = (n * 7 + sessions as usize) % ctx.stable;
    let to = ctx.ids[target].read().expect("ids").clone();
    let line = ctx.private_line(&to, key, 0);
    if writer.send(&line).await.is_err() {
        return Some(End::Cut);
    }
    let echo_by = Instant::now() + ECHO_TIMEOUT;
    let mut echoed = false;
    loop {
        tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() || matches!(*phase.borrow_and_update(), Phase::Drain | Phase::Done) {
                    return Some(End::Done);
                }
            }
            _ = tokio::time::sleep_until(echo_by), if !echoed => {
                ctx.tally(|t| t.echo_timeouts += 1);
                echoed = true;
            }
            _ = tokio::time::sleep_until(leave), if echoed => return None,
            m = lines.next() => match m {
                Ok(Some(line)) => {
                    if !echoed && client::after(line, ECHO).is_some() {
                        echoed = true;
                    } else {
                        ctx.on_line(None, line);
                    }
                }
                Ok(None) | Err(_) => return Some(End::Cut),
            },
        }
    }
}

/// CPU seconds of the server processes, read every second so that a process that
/// exits (an old worker after a reload) loses at most its last second.
struct CpuTracker {
    /// pid → (group, CPU seconds at the last reading).
    known: HashMap<u32, (String, f64)>,
    /// Whether the first reading is done: processes seen after it are new ones.
    primed: bool,
    /// CPU seconds per group since the last sample.
    spent: BTreeMap<String, f64>,
    machine: (f64, f64),
    at: Instant,
}

impl CpuTracker {
    fn new() -> Self {
        Self {
            known: HashMap::new(),
            primed: false,
            spent: BTreeMap::new(),
            machine: procinfo::machine_seconds(),
            at: Instant::now(),
        }
    }

    /// Reads every known process and any new one in `processes` (name, pid).
    fn update(&mut self, processes: &[(String, u32)]) {
        for (name, pid) in processes {
            if *pid == 0 {
                continue;
            }
            let group = name.trim_end_matches(|c: char| c.is_ascii_digit());
            let cpu = procinfo::cpu_seconds(*pid);
            // A process seen for the first time counts from the first reading, except
            // for a new one (after a reload), which counts whole.
            let first = if self.primed { 0.0 } else { cpu };
            self.known
                .entry(*pid)
                .or_insert_with(|| (group.to_string(), first));
        }
        let mut gone = Vec::new();
        for (pid, (group, last)) in &mut self.known {
            let cpu = procinfo::cpu_seconds(*pid);
            if cpu == 0.0 && procinfo::rss_bytes(*pid) == 0 {
                gone.push(*pid);
                continue;
            }
            *self.spent.entry(group.clone()).or_default() += (cpu - *last).max(0.0);
            *last = cpu;
        }
        for pid in gone {
            self.known.remove(&pid);
        }
        self.primed = true;
    }

    /// Percent of one core per group since the last sample, with `others` (the rest of
    /// the machine); starts the next window.
    fn sample(&mut self) -> BTreeMap<String, f64> {
        let wall = self.at.elapsed().as_secs_f64().max(0.001);
        let (busy, _) = procinfo::machine_seconds();
        let machine = 100.0 * (busy - self.machine.0) / wall;
        let mut out: BTreeMap<String, f64> = self
            .spent
            .iter_mut()
            .map(|(g, s)| (g.clone(), 100.0 * std::mem::take(s) / wall))
            .collect();
        let ours: f64 = out.values().sum();
        out.insert("others".into(), (machine - ours).max(0.0));
        self.machine = procinfo::machine_seconds();
        self.at = Instant::now();
        out
    }
}

/// One sample: resident memory per process (KiB).
struct Sample {
    minute: f64,
    rss_kib: Vec<u64>,
    anon_kib: Vec<u64>,
}

/// Least-squares slope of `ys` over `xs` (per unit of x).
fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    if xs.len() < 2 {
        return 0.0;
    }
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let (mut num, mut den) = (0.0, 0.0);
    for (x, y) in xs.iter().zip(ys) {
        num += (x - mx) * (y - my);
        den += (x - mx) * (x - mx);
    }
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

/// Runs `chat reload` through the CLI every `every` from `start` until `end`.
async fn reloads(
    ctx: Arc<Ctx>,
    mut cli: std::process::Command,
    start: Instant,
    every: Duration,
    end: Instant,
) {
    cli.arg("reload")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    let mut cli = tokio::process::Command::from(cli);
    for k in 1u32.. {
        let at = start + every * k;
        if at >= end {
            break;
        }
        tokio::time::sleep_until(at).await;
        let ok = matches!(cli.status().await, Ok(s) if s.success());
        if !ok {
            eprintln!("soak: `chat reload` failed");
        }
        ctx.tally(|t| {
            t.reloads += 1;
            if !ok {
                t.reload_failures += 1;
            }
        });
    }
}

/// Runs the soak on deployment `d`.
pub async fn run(p: &Params, d: &Deployment) -> anyhow::Result<()> {
    if d.protocol != Protocol::Text || d.tls {
        bail!("soak speaks the telnet chat only (no --protocol websocket, no --tls)");
    }
    let stable = p.clients.saturating_sub(p.churners);
    if stable < 2 || !stable.is_multiple_of(2) {
        bail!("--clients minus --churners must be an even number of at least 2");
    }
    if p.churners > 0 && p.churn <= 0.0 {
        bail!("--churn must be positive when there are churners");
    }
    let reload_cli = if p.reload_every.is_zero() {
        None
    } else {
        Some(
            d.cli()
                .context("--reload-every needs a deployment this tool starts (no --addr)")?,
        )
    };
    let sample_every = Duration::from_secs(p.sample_every.max(1));
    let samples = ((p.minutes * 60.0 / sample_every.as_secs_f64()).ceil() as u64).max(1);
    let duration = sample_every * samples as u32;

    let (phase_tx, phase_rx) = watch::channel(Phase::Login);
    let (logged_in, mut logins) = mpsc::unbounded_channel();
    let ctx = Arc::new(Ctx {
        share: Share {
            index: 0,
            procs: 1,
            sources: 1,
            addr: d.addr,
            protocol: Protocol::Text,
            tls: false,
            login_concurrency: 32,
            threads: 0,
        },
        stable,
        churners: p.churners,
        params: p.clone(),
        phase: phase_rx,
        start: OnceLock::new(),
        ids: (0..stable).map(|_| RwLock::new(String::new())).collect(),
        ledger: Mutex::new(Ledger::default()),
        next_key: AtomicU64::new(1),
        next_broadcast: AtomicU64::new(0),
        logged_in,
    });

    // Log everybody in, a few at a time (each login is announced to everybody).
    let mut tasks = JoinSet::new();
    let login_deadline = Instant::now() + Duration::from_secs(120);
    for slot in 0..stable {
        tasks.spawn(stable_client(ctx.clone(), slot));
    }
    for n in 0..p.churners {
        tasks.spawn(churner(ctx.clone(), n));
    }
    for done in 0..p.clients {
        if tokio::time::timeout_at(login_deadline, logins.recv())
            .await
            .ok()
            .flatten()
            .is_none()
        {
            let _ = phase_tx.send(Phase::Done);
            bail!(
                "only {done} of {} clients logged in within 120 s",
                p.clients
            );
        }
    }

    let labels: Vec<String> = d.processes().into_iter().map(|(n, _)| n).collect();
    let mut csv = match &p.csv {
        Some(path) => {
            let mut f = std::fs::File::create(path)
                .with_context(|| format!("create {}", path.display()))?;
            let mut header = vec!["minute".to_string(), "load1".into(), "clients".into()];
            header.extend(labels.iter().map(|l| format!("rss_{l}_kib")));
            header.extend(labels.iter().map(|l| format!("anon_{l}_kib")));
            header.extend(
                labels
                    .iter()
                    .filter(|l| l.starts_with("worker"))
                    .map(|l| format!("pid_{l}")),
            );
            header.extend(
                [
                    "cpu_supervisor_pct",
                    "cpu_gateway_pct",
                    "cpu_worker_pct",
                    "cpu_bench_pct",
                    "cpu_others_pct",
                    "private_sent",
                    "private_received",
                    "private_p99_ms",
                    "broadcast_sent",
                    "broadcast_received",
                    "broadcast_p99_ms",
                    "lost_private_total",
                    "lost_broadcast_total",
                    "duplicates_total",
                    "connects",
                    "disconnects",
                    "unexpected_disconnects_total",
                    "login_failures_total",
                    "echo_timeouts_total",
                    "not_online_total",
                    "reloads_total",
                ]
                .map(String::from),
            );
            writeln!(f, "{}", header.join(","))?;
            Some(f)
        }
        None => None,
    };

    let start = Instant::now();
    let _ = ctx.start.set(start);
    let _ = phase_tx.send(Phase::Run);
    let end = start + duration;
    println!(
        "soak: {} clients ({stable} stable, {} churners, {:.1} reconnects/s), {:.0} private msg/s, \
         {:.1} broadcasts/s, reload every {:?}, {} samples every {:?}, processes: {}",
        p.clients,
        p.churners,
        p.churn,
        p.rate,
        p.broadcast_rate,
        p.reload_every,
        samples,
        sample_every,
        labels.join(" ")
    );
    if let Some(cli) = reload_cli {
        tasks.spawn(reloads(ctx.clone(), cli, start, p.reload_every, end));
    }

    let me = std::process::id();
    let mut cpu = CpuTracker::new();
    let with_me = |mut procs: Vec<(String, u32)>| {
        procs.push(("bench".into(), me));
        procs
    };
    cpu.update(&with_me(d.processes()));
    cpu.sample();
    let late_after = Duration::from_secs_f64(p.late_after);
    let mut previous = Tally::default();
    let mut history: Vec<Sample> = Vec::new();
    let seconds = duration.as_secs();
    for second in 1..=seconds {
        tokio::time::sleep_until(start + Duration::from_secs(second)).await;
        let processes = d.processes();
        cpu.update(&with_me(processes.clone()));
        if second % sample_every.as_secs() != 0 {
            continue;
        }
        let minute = second as f64 / 60.0;
        let pid_of = |label: &str| {
            processes
                .iter()
                .find(|(n, _)| n == label)
                .map_or(0, |(_, pid)| *pid)
        };
        let rss: Vec<u64> = labels
            .iter()
            .map(|l| procinfo::rss_bytes(pid_of(l)) / 1024)
            .collect();
        let anon: Vec<u64> = labels
            .iter()
            .map(|l| procinfo::rss_anon_bytes(pid_of(l)) / 1024)
            .collect();
        let percent = cpu.sample();
        let pct = |g: &str| percent.get(g).copied().unwrap_or(0.0);
        let (tally, late, private_p99, broadcast_p99) = {
            let mut l = ctx.ledger.lock().expect("ledger");
            let late = l.late(late_after);
            let p99 = |h: &Histogram| h.quantile(0.99) as f64 / 1e3;
            let out = (
                l.tally,
                late,
                p99(&l.private_window),
                p99(&l.broadcast_window),
            );
            l.private_window = Histogram::default();
            l.broadcast_window = Histogram::default();
            out
        };
        let clients = d.gateway_clients();
        let load = loadkit::proc::load_average();
        let rss_text: Vec<String> = labels
            .iter()
            .zip(rss.iter().zip(&anon))
            .map(|(l, (kib, anon))| format!("{l}={kib}/{anon}"))
            .collect();
        let worker_pids: Vec<String> = labels
            .iter()
            .filter(|l| l.starts_with("worker"))
            .map(|l| pid_of(l).to_string())
            .collect();
        println!(
            "min {minute:>6.2} load {load:.2} clients {clients} rss/anon_kib {} worker_pids {} \
             cpu% sup {:.1} gw {:.1} wk {:.1} bench {:.1} others {:.0} | \
             private {}/{} p99 {private_p99:.1}ms bcast {}/{} p99 {broadcast_p99:.1}ms | \
             lost {}+{} dup {} | conn {} disc {} unexpected {} | reloads {}",
            rss_text.join(" "),
            worker_pids.join("/"),
            pct("supervisor"),
            pct("gateway"),
            pct("worker"),
            pct("bench"),
            pct("others"),
            tally.private_sent - previous.private_sent,
            tally.private_received - previous.private_received,
            tally.broadcast_sent - previous.broadcast_sent,
            tally.broadcast_received - previous.broadcast_received,
            late.0,
            late.1,
            tally.private_duplicates + tally.broadcast_duplicates,
            tally.logins - previous.logins,
            tally.disconnects - previous.disconnects,
            tally.unexpected_disconnects,
            tally.reloads,
        );
        if let Some(f) = csv.as_mut() {
            let mut row = vec![
                format!("{minute:.2}"),
                format!("{load:.2}"),
                clients.to_string(),
            ];
            row.extend(rss.iter().chain(&anon).map(u64::to_string));
            row.extend(worker_pids.iter().cloned());
            row.extend(
                [
                    pct("supervisor"),
                    pct("gateway"),
                    pct("worker"),
                    pct("bench"),
                    pct("others"),
                ]
                .map(|v| format!("{v:.1}")),
            );
            row.extend([
                (tally.private_sent - previous.private_sent).to_string(),
                (tally.private_received - previous.private_received).to_string(),
                format!("{private_p99:.1}"),
                (tally.broadcast_sent - previous.broadcast_sent).to_string(),
                (tally.broadcast_received - previous.broadcast_received).to_string(),
                format!("{broadcast_p99:.1}"),
                late.0.to_string(),
                late.1.to_string(),
                (tally.private_duplicates + tally.broadcast_duplicates).to_string(),
                (tally.logins - previous.logins).to_string(),
                (tally.disconnects - previous.disconnects).to_string(),
                tally.unexpected_disconnects.to_string(),
                tally.login_failures.to_string(),
                tally.echo_timeouts.to_string(),
                tally.not_online.to_string(),
                tally.reloads.to_string(),
            ]);
            writeln!(f, "{}", row.join(","))?;
            f.flush()?;
        }
        std::io::stdout().flush()?;
        previous = tally;
        history.push(Sample {
            minute,
            rss_kib: rss,
            anon_kib: anon,
        });
    }

    // Stop sending; give what is on its way `late_after` to arrive; disconnect.
    let _ = phase_tx.send(Phase::Drain);
    let drain_until = Instant::now() + late_after;
    loop {
        let outstanding = ctx.ledger.lock().expect("ledger").outstanding.len();
        if outstanding == 0 || Instant::now() >= drain_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (tally, lost_private, lost_broadcast, private_all, broadcast_all) = {
        let l = ctx.ledger.lock().expect("ledger");
        let lost = l.late(Duration::ZERO);
        (
            l.tally,
            lost.0,
            lost.1,
            l.private_all.clone(),
            l.broadcast_all.clone(),
        )
    };
    let _ = phase_tx.send(Phase::Done);
    let stop_by = Instant::now() + Duration::from_secs(30);
    while let Ok(Some(_)) = tokio::time::timeout_at(stop_by, tasks.join_next()).await {}
    tasks.abort_all();

    println!("summary:");
    println!(
        "  private   sent {} received {} lost {lost_private} duplicates {} not_online {} \
         p50 {:.2} ms p99 {:.2} ms max {:.1} ms",
        tally.private_sent,
        tally.private_received,
        tally.private_duplicates,
        tally.not_online,
        private_all.quantile(0.5) as f64 / 1e3,
        private_all.quantile(0.99) as f64 / 1e3,
        private_all.max() as f64 / 1e3,
    );
    println!(
        "  broadcast sent {} deliveries expected {} received {} lost {lost_broadcast} duplicates {} \
         p50 {:.2} ms p99 {:.2} ms max {:.1} ms",
        tally.broadcast_sent,
        tally.broadcast_expected,
        tally.broadcast_received,
        tally.broadcast_duplicates,
        broadcast_all.quantile(0.5) as f64 / 1e3,
        broadcast_all.quantile(0.99) as f64 / 1e3,
        broadcast_all.max() as f64 / 1e3,
    );
    println!(
        "  clients   logins {} planned disconnects {} unexpected disconnects {} login failures {} \
         echo timeouts {}",
        tally.logins,
        tally.disconnects,
        tally.unexpected_disconnects,
        tally.login_failures,
        tally.echo_timeouts,
    );
    println!(
        "  reloads   {} ({} failed)",
        tally.reloads, tally.reload_failures
    );
    let mut json = serde_json::json!({
        "private_sent": tally.private_sent,
        "private_received": tally.private_received,
        "lost_private": lost_private,
        "broadcast_sent": tally.broadcast_sent,
        "broadcast_expected": tally.broadcast_expected,
        "broadcast_received": tally.broadcast_received,
        "lost_broadcast": lost_broadcast,
        "duplicates": tally.private_duplicates + tally.broadcast_duplicates,
        "not_online": tally.not_online,
        "logins": tally.logins,
        "disconnects": tally.disconnects,
        "unexpected_disconnects": tally.unexpected_disconnects,
        "login_failures": tally.login_failures,
        "echo_timeouts": tally.echo_timeouts,
        "reloads": tally.reloads,
        "reload_failures": tally.reload_failures,
        "samples": history.len(),
    });
    let warm: Vec<&Sample> = history.iter().filter(|s| s.minute >= p.warmup).collect();
    for (title, key, anon) in [("VmRSS", "rss", false), ("RssAnon", "anon", true)] {
        println!(
            "  memory ({title}, KiB): first, at warm-up end, last, min..max after warm-up, \
             trend after warm-up"
        );
        for (i, label) in labels.iter().enumerate() {
            let at = |s: &Sample| if anon { s.anon_kib[i] } else { s.rss_kib[i] };
            let first = history.first().map_or(0, at);
            let last = history.last().map_or(0, at);
            let at_warm = warm.first().map_or(0, |s| at(s));
            let xs: Vec<f64> = warm.iter().map(|s| s.minute / 60.0).collect();
            let ys: Vec<f64> = warm.iter().map(|s| at(s) as f64).collect();
            let min = warm.iter().map(|s| at(s)).min().unwrap_or(0);
            let max = warm.iter().map(|s| at(s)).max().unwrap_or(0);
            let trend = slope(&xs, &ys);
            println!(
                "  {label:<12} {first:>8} {at_warm:>8} {last:>8}   {min}..{max}   {trend:+.0} KiB/h"
            );
            json[format!("{key}_{label}_kib_first")] = first.into();
            json[format!("{key}_{label}_kib_last")] = last.into();
            json[format!("{key}_{label}_kib_per_h")] = trend.round().into();
        }
    }
    let log = d.log();
    let lines: Vec<&str> = log.lines().collect();
    println!(
        "  deployment log: {} line(s) at level warn or above",
        lines.len()
    );
    for l in lines.iter().take(40) {
        println!("    {l}");
    }
    if p.json {
        println!("{json}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300s"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn payloads() {
        let line = b"s1[7f000001000000010001] said to You :p 12 34 1700000000000000";
        let rest = client::after(line, PRIVATE).unwrap();
        assert_eq!(parse_three(rest), Some((12, 34, 1_700_000_000_000_000)));
        assert_eq!(parse_three(b"12 x"), None);
    }

    #[test]
    fn ledger_counts_late_and_duplicates() {
        let mut l = Ledger::default();
        l.outstanding.insert((1, 0), Instant::now());
        l.outstanding.insert((BROADCAST_KEY | 3, 0), Instant::now());
        assert_eq!(l.late(Duration::ZERO), (1, 1));
        assert!(l.arrived((1, 0)));
        assert!(!l.arrived((1, 0)));
        assert_eq!(l.late(Duration::ZERO), (0, 1));
        assert_eq!(l.late(Duration::from_secs(60)), (0, 0));
    }

    #[test]
    fn trend() {
        let xs = [0.0, 1.0, 2.0, 3.0];
        assert!((slope(&xs, &[5.0, 7.0, 9.0, 11.0]) - 2.0).abs() < 1e-9);
        assert_eq!(slope(&xs, &[4.0; 4]), 0.0);
    }
}
