//! `bench`: load generator for the Switchboard chat demo (`apps/chat`).
//!
//! Scenarios: `connect` (idle clients: connect rate, gateway memory per client),
//! `private` (pairs sending `ID:words` at a target rate: latency, loss), `broadcast`
//! (a few senders, every client receives every line: deliveries/s, latency, loss) and
//! `handshake` (connections opened and closed: connections per second, CPU per
//! connection). Clients are telnet users or, with `--protocol websocket`, browsers of
//! the browser chat; `--tls` puts either over TLS. `soak` runs mixed traffic (churn,
//! private, broadcast, reloads) for an hour and samples every server process's memory
//! each minute.
//!
//! Each run starts its own deployment (a temporary config, the release `chat` binary)
//! unless `--addr` names a running one, spreads the clients over `--procs` child
//! processes and `--sources` loopback source addresses, and prints one line per run and
//! the median and spread of `--runs` runs; `--against BASE` alternates the runs with
//! a baseline `chat` binary and compares the two. `connect`, `private` and `broadcast` with
//! `--floor alone|split` run against the tool's own bare servers of the same protocol
//! instead (see [`floor`]): the floor the chat's figures are compared with. See
//! docs/BENCHMARKS.md.
//!
//! ```text
//! CARGO_TARGET_DIR=target-bench cargo build --release -p chat -p bench
//! target-bench/release/bench private --clients 200 --rate 20000 --seconds 10 --runs 3
//! ```

mod broadcast;
mod client;
mod connect;
mod deploy;
mod floor;
mod handshake;
mod private;
mod procinfo;
mod procs;
mod soak;
mod stats;
mod wire;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};

use deploy::{Deployment, Target};
use procs::Share;

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "Load generator and benchmark scenarios for the Switchboard chat demo")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Open idle clients (connected, not logged in) and hold them: connect rate and
    /// gateway memory per client.
    Connect {
        #[command(flatten)]
        params: connect::Params,
        #[command(flatten)]
        load: Load,
        #[command(flatten)]
        target: Target,
    },
    /// Pairs of logged-in clients sending private lines to each other at a total rate:
    /// delivery latency and loss.
    Private {
        #[command(flatten)]
        params: private::Params,
        #[command(flatten)]
        load: Load,
        #[command(flatten)]
        target: Target,
    },
    /// Logged-in clients all receiving the public lines of a few senders: deliveries per
    /// second, latency and loss.
    Broadcast {
        #[command(flatten)]
        params: broadcast::Params,
        #[command(flatten)]
        load: Load,
        #[command(flatten)]
        target: Target,
    },
    /// Connections opened and closed as fast as the server takes them (TCP, TLS with
    /// `--tls`, the WebSocket upgrade or the name prompt): connections per second and
    /// CPU per connection.
    Handshake {
        #[command(flatten)]
        params: handshake::Params,
        #[command(flatten)]
        load: Load,
        #[command(flatten)]
        target: Target,
    },
    /// An hour (or `--minutes`) of mixed traffic — a steady population with churn,
    /// private messages, broadcasts, a `reload` every `--reload-every` — with the
    /// resident memory of every server process sampled each minute: leaks, loss and
    /// unexpected disconnects.
    Soak {
        #[command(flatten)]
        params: soak::Params,
        #[command(flatten)]
        target: Target,
    },
    /// (internal) The floor server `--floor` starts: the telnet chat's prompt, login,
    /// private and public lines on one thread, straight on epoll.
    #[command(hide = true)]
    FloorServer {
        /// Address to listen on; the bound address is printed on stdout.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// One process, or a gateway and a worker.
        #[arg(long, value_enum)]
        shape: floor::Shape,
    },
    /// (internal) The worker of the split floor server.
    #[command(hide = true)]
    FloorWorker {
        /// The floor server's link address.
        #[arg(long)]
        link: std::net::SocketAddr,
    },
    /// (internal) One load-generator child process.
    #[command(hide = true)]
    Child {
        /// `{"share": ..., "job": ...}`.
        spec: String,
    },
}

/// How the load is generated and repeated.
#[derive(Debug, Clone, Args)]
pub struct Load {
    /// Load-generator processes to spread the clients over (each holds at most about
    /// 19,900 sockets on this machine).
    #[arg(long, default_value_t = 2)]
    pub procs: usize,
    /// Loopback source addresses (127.0.1.1, 127.0.1.2, …) to spread the clients over;
    /// each gives about 28,000 ephemeral ports, and the kernel finds a free port faster
    /// when few are taken. 0: one per 4,000 clients.
    #[arg(long, default_value_t = 0)]
    pub sources: usize,
    /// Logins in progress at once, per load-generator process. In a crowded browser
    /// room every login costs the server time in proportion to the room, and a long
    /// queue of them makes the chat's queries wait past the worker's `query_timeout`
    /// (3 s): use fewer (8) for 10,000 browsers in one room.
    #[arg(long, default_value_t = 64)]
    pub login_concurrency: usize,
    /// Threads of each load-generator process's runtime; 0 (the default): one per
    /// core. One thread spends 10–15 % less of the generator's CPU per message, but
    /// the server's figures move with it (its writes wake a generator that waits more
    /// often): compare runs only at the same setting (docs/BENCHMARKS.md, *The
    /// generator's own cost*).
    #[arg(long, default_value_t = 0)]
    pub child_threads: usize,
    /// Runs (each on a fresh deployment); the median and spread are reported.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Also print the figures of every run as one JSON object per line.
    #[arg(long)]
    pub json: bool,
}

impl Load {
    /// Source addresses for `clients` clients.
    pub fn sources_for(&self, clients: usize) -> usize {
        if self.sources > 0 {
            self.sources
        } else {
            clients.div_ceil(4_000).max(1)
        }
    }
}

/// A scenario with its parameters, as handed to a child.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "scenario", rename_all = "lowercase")]
pub enum Job {
    Connect(connect::Params),
    Private(private::Params),
    Broadcast(broadcast::Params),
    Handshake(handshake::Params),
}

/// The figures of one run, by name, in report order.
pub type Figures = Vec<(&'static str, f64)>;

#[derive(Deserialize)]
struct ChildSpec {
    share: Share,
    job: Job,
}

/// A runtime of `threads` threads (0: one per core, Tokio's default; 1: the current
/// thread only).
fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    match threads {
        0 => tokio::runtime::Runtime::new(),
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The parent keeps a thread per core; a child's runtime is the run's to choose.
    let runtime = match &cli.command {
        Command::Child { spec } => {
            let spec: ChildSpec = serde_json::from_str(spec).context("child spec")?;
            runtime(spec.share.threads)?
        }
        // No runtime: the floor is the server without one.
        Command::FloorServer { listen, shape } => return floor::serve(*listen, *shape),
        Command::FloorWorker { link } => return floor::work(*link),
        _ => runtime(0)?,
    };
    match cli.command {
        Command::Connect {
            params,
            load,
            target,
        } => runtime.block_on(run(Job::Connect(params), &load, &target)),
        Command::Private {
            params,
            load,
            target,
        } => runtime.block_on(run(Job::Private(params), &load, &target)),
        Command::Broadcast {
            params,
            load,
            target,
        } => runtime.block_on(run(Job::Broadcast(params), &load, &target)),
        Command::Handshake {
            params,
            load,
            target,
        } => runtime.block_on(run(Job::Handshake(params), &load, &target)),
        Command::Soak { params, target } => runtime.block_on(async move {
            let deployment = Deployment::open(&target)?;
            let result = soak::run(&params, &deployment).await;
            if result.is_err() {
                eprintln!("deployment log (last lines):");
                for l in deployment.log().lines().rev().take(20) {
                    eprintln!("  {l}");
                }
            }
            result
        }),
        Command::FloorServer { listen, shape } => floor::serve(listen, shape),
        Command::FloorWorker { link } => floor::work(link),
        Command::Child { spec } => {
            let spec: ChildSpec = serde_json::from_str(&spec).context("child spec")?;
            runtime.block_on(async move {
                match spec.job {
                    Job::Connect(p) => connect::child(p, spec.share).await,
                    Job::Private(p) => private::child(p, spec.share).await,
                    Job::Broadcast(p) => broadcast::child(p, spec.share).await,
                    Job::Handshake(p) => handshake::child(p, spec.share).await,
                }
            })
        }
    }
}

/// Runs a scenario `load.runs` times and prints every run and the summary; with
/// `--against`, `load.runs` times for each binary, alternating.
async fn run(job: Job, load: &Load, target: &Target) -> anyhow::Result<()> {
    anyhow::ensure!(load.procs >= 1, "--procs must be at least 1");
    anyhow::ensure!(
        target.floor.is_none() || !matches!(job, Job::Handshake(_)),
        "--floor serves the connect, private and broadcast scenarios only"
    );
    // What each run starts: the chat alone, or the baseline and the chat in turn.
    let builds: Vec<(Option<&str>, Target)> = match &target.against {
        None => vec![(None, target.clone())],
        Some(base) => {
            anyhow::ensure!(
                base.is_file(),
                "--against {}: no such file (the baseline's `chat` binary)",
                base.display()
            );
            let base = Target {
                chat: Some(base.clone()),
                ..target.clone()
            };
            vec![(Some("base"), base), (Some("new"), target.clone())]
        }
    };
    let mut runs: Vec<Vec<Figures>> = vec![Vec::new(); builds.len()];
    for n in 1..=load.runs.max(1) {
        for (b, (label, target)) in builds.iter().enumerate() {
            let rounds = run_once(&job, load, target).await?;
            let several = rounds.len() > 1;
            for (r, figures) in rounds.into_iter().enumerate() {
                let line: Vec<String> = figures
                    .iter()
                    .map(|(k, v)| format!("{k}={}", short(*v)))
                    .collect();
                let round = if several {
                    format!(" round {}", r + 1)
                } else {
                    String::new()
                };
                let build = label.map(|l| format!("{l} ")).unwrap_or_default();
                println!("{build}run {n}{round}: {}", line.join(" "));
                if load.json {
                    let mut obj: serde_json::Map<String, serde_json::Value> = figures
                        .iter()
                        .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
                        .collect();
                    if let Some(l) = label {
                        obj.insert("build".into(), serde_json::json!(l));
                    }
                    println!("{}", serde_json::Value::Object(obj));
                }
                runs[b].push(figures);
            }
        }
    }
    match runs.as_slice() {
        [one] => summary(one),
        [base, new] => comparison(base, new),
        _ => {}
    }
    Ok(())
}

/// One run on a fresh deployment of `target`: its figures (one set per round).
async fn run_once(job: &Job, load: &Load, target: &Target) -> anyhow::Result<Vec<Figures>> {
    let deployment = Deployment::open(target)?;
    let figures = match job {
        Job::Connect(p) => connect::parent(p, load, &deployment).await.map(|f| vec![f]),
        Job::Private(p) => private::parent(p, load, &deployment).await.map(|f| vec![f]),
        Job::Broadcast(p) => broadcast::parent(p, load, &deployment).await,
        Job::Handshake(p) => handshake::parent(p, load, &deployment)
            .await
            .map(|f| vec![f]),
    };
    if figures.is_err() {
        let log = deployment.log();
        eprintln!("deployment log (last lines, newest first):");
        for l in log.lines().rev().take(20) {
            eprintln!("  {l}");
        }
    }
    figures
}

/// The values of figure `i` over `runs`.
fn column(runs: &[Figures], i: usize) -> Vec<f64> {
    runs.iter().filter_map(|r| r.get(i).map(|f| f.1)).collect()
}

/// Decimals to print `values` with: none for counts, three below 1, else two.
fn decimals(values: &[f64]) -> usize {
    if values.iter().all(|v| v.fract() == 0.0) {
        0
    } else if values.iter().all(|v| v.abs() < 1.0) {
        3
    } else {
        2
    }
}

/// Prints the median and spread of every figure.
fn summary(runs: &[Figures]) {
    println!(
        "summary over {} run(s) or round(s): median [min..max]",
        runs.len()
    );
    let Some(first) = runs.first() else { return };
    for (i, (name, _)) in first.iter().enumerate() {
        let values = column(runs, i);
        println!("  {name:<24} {}", stats::spread(&values, decimals(&values)));
    }
}

/// Prints, for every figure, the baseline's and the new build's median and spread,
/// the ratio of the medians and in how many pairs of runs (in the order they ran) the
/// new figure was the lower.
fn comparison(base: &[Figures], new: &[Figures]) {
    println!(
        "summary over {} and {} run(s) or round(s), alternating: base then new, median [min..max]; new ÷ base; pairs where new is lower",
        base.len(),
        new.len()
    );
    let Some(first) = new.first() else { return };
    for (i, (name, _)) in first.iter().enumerate() {
        let (b, n) = (column(base, i), column(new, i));
        let d = decimals(&b).max(decimals(&n));
        let ratio = stats::median(&n) / stats::median(&b);
        let ratio = if ratio.is_finite() {
            format!("{ratio:.3}")
        } else {
            "-".to_owned()
        };
        let lower = b.iter().zip(&n).filter(|(b, n)| n < b).count();
        println!(
            "  {name:<24} {:<30} {:<30} {ratio:<7} {lower}/{}",
            stats::spread(&b, d),
            stats::spread(&n, d),
            b.len().min(n.len())
        );
    }
}

/// A figure for a one-line report.
fn short(v: f64) -> String {
    format!("{v:.*}", decimals(&[v]))
}
