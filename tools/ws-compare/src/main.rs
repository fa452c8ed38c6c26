//! `ws-compare`: measures the idle memory and the echo throughput of WebSocket
//! implementations for the gateway. See docs/BENCHMARKS.md, "WebSocket: choosing the
//! implementation".

mod client;
mod handshake;
mod hist;
mod procinfo;
mod runs;
mod servers;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use servers::Candidate;

#[derive(Parser)]
#[command(about = "Compare WebSocket implementations: idle memory and echo throughput")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one candidate's echo server (until stdin closes); prints `listening ADDR`.
    Server {
        #[arg(long)]
        candidate: Candidate,
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: SocketAddr,
    },
    /// Server RSS before, with N idle connections, and after one message on each.
    Idle {
        /// Comma-separated candidates; `all` = tcp and every WebSocket candidate.
        #[arg(long, default_value = "all")]
        candidates: String,
        /// tungstenite buffer sizes that `all` includes (besides the default config).
        #[arg(long, default_value = "4k,1k")]
        tungstenite_bufs: String,
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
        /// Client processes (default: one per 2,500 connections).
        #[arg(long)]
        procs: Option<usize>,
        /// Size of the one message each connection sends.
        #[arg(long, default_value = "64")]
        size: String,
        #[arg(long, default_value_t = 1000)]
        settle_ms: u64,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long)]
        json: bool,
    },
    /// Echo at a fixed open-loop rate: achieved rate, latency, server CPU per message.
    Load {
        /// Comma-separated candidates; `all` = every WebSocket candidate.
        #[arg(long, default_value = "all")]
        candidates: String,
        #[arg(long, default_value = "4k,1k")]
        tungstenite_bufs: String,
        #[arg(long, default_value_t = 200)]
        conns: usize,
        #[arg(long, default_value_t = 2)]
        procs: usize,
        /// Messages per second, all connections together.
        #[arg(long)]
        rate: f64,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, default_value = "64")]
        size: String,
        /// Binary messages (default: text).
        #[arg(long)]
        binary: bool,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long)]
        json: bool,
    },
    /// A few seconds: every candidate echoes text, fragmented text, 64 KiB binary, ping
    /// and close on 100 connections.
    Smoke {
        #[arg(long, default_value = "all")]
        candidates: String,
        #[arg(long, default_value = "4k,1k")]
        tungstenite_bufs: String,
        #[arg(long, default_value_t = 100)]
        conns: usize,
    },
    /// A client process of a run (started by `idle` and `load`).
    #[command(hide = true)]
    Child { job: String },
}

fn candidates(list: &str, bufs: &str, with_tcp: bool) -> anyhow::Result<Vec<Candidate>> {
    if list == "all" {
        let bufs = bufs
            .split(',')
            .filter(|s| !s.is_empty())
            .map(servers::parse_size)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut v = Vec::new();
        if with_tcp {
            v.push(Candidate::Tcp);
        }
        v.extend(Candidate::all_ws(&bufs));
        return Ok(v);
    }
    list.split(',').map(str::parse).collect()
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Server { candidate, addr } => servers::run(candidate, addr),
        Cmd::Child { job } => {
            let job: runs::Job = serde_json::from_str(&job).context("child job")?;
            runtime()?.block_on(runs::child(job))
        }
        Cmd::Idle {
            candidates: list,
            tungstenite_bufs,
            conns,
            procs,
            size,
            settle_ms,
            runs,
            json,
        } => {
            let cands = candidates(&list, &tungstenite_bufs, true)?;
            let o = runs::IdleOptions {
                conns,
                procs,
                size: servers::parse_size(&size)?,
                settle: Duration::from_millis(settle_ms),
            };
            runtime()?.block_on(runs::idle_set(&cands, runs, &o, json))
        }
        Cmd::Load {
            candidates: list,
            tungstenite_bufs,
            conns,
            procs,
            rate,
            seconds,
            size,
            binary,
            runs,
            json,
        } => {
            let cands = candidates(&list, &tungstenite_bufs, false)?;
            let o = runs::LoadOptions {
                conns,
                procs,
                rate,
                seconds,
                size: servers::parse_size(&size)?,
                binary,
            };
            runtime()?.block_on(runs::load_set(&cands, runs, &o, json))
        }
        Cmd::Smoke {
            candidates: list,
            tungstenite_bufs,
            conns,
        } => {
            let cands = candidates(&list, &tungstenite_bufs, false)?;
            runtime()?.block_on(runs::smoke(&cands, conns))
        }
    }
}
