//! `handshake`: C connectors, each opening connections one after another for T seconds
//! and closing each as soon as the server has answered: a TCP connect, the TLS
//! handshake (with `--tls`; full handshakes, resumption off), then the name prompt
//! (`text`) or the WebSocket upgrade's `101` (`websocket`), both of which prove that a
//! worker handled the new client.
//!
//! Figures: connections completed per second, failures, the time each took, and the
//! CPU time the gateways, the workers and the generator spent per connection. Run it
//! with and without `--tls` on the same deployment shape: the difference is what TLS
//! costs per handshake.

use std::time::Duration;

use anyhow::bail;
use clap::Args;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::{self, PROMPT, STEP_TIMEOUT};
use crate::deploy::Deployment;
use crate::procinfo::{self, CpuSample};
use crate::procs::{self, Children, Share};
use crate::stats::Histogram;
use crate::wire::Protocol;
use crate::{Figures, Job, Load};

/// Parameters of `handshake`.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct Params {
    /// Connections in progress at once, over all load-generator processes.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Seconds of connecting.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
}

/// What one child measured.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Outcome {
    done: u64,
    failed: u64,
    errors: Vec<String>,
    latency: Histogram,
    /// CPU seconds this child spent from `go` to its result.
    cpu_s: f64,
}

/// Most error messages a child passes on.
const MAX_ERRORS: usize = 3;

/// One connection: open it, wait for the server's first word, close it.
async fn once(share: &Share, index: usize) -> anyhow::Result<()> {
    let (mut conn, _) = client::open(share, index).await?;
    if share.protocol == Protocol::Text {
        let mut got = Vec::with_capacity(64);
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        while client::after(&got, PROMPT.as_bytes()).is_none() {
            if got.capacity() == got.len() {
                got.reserve(64);
            }
            let n = tokio::time::timeout_at(deadline, conn.read_buf(&mut got))
                .await
                .map_err(|_| anyhow::anyhow!("no prompt within {STEP_TIMEOUT:?}"))??;
            if n == 0 {
                bail!("closed before the prompt");
            }
        }
    }
    Ok(())
}

/// One connector: connections one after another until `end`.
async fn connector(share: Share, slot: usize, stride: usize, end: Instant) -> Outcome {
    let mut out = Outcome::default();
    // Spreads the connections over the source addresses.
    let mut index = slot;
    while Instant::now() < end {
        let t = Instant::now();
        match once(&share, index).await {
            Ok(()) => {
                out.done += 1;
                out.latency.record(t.elapsed().as_micros() as u64);
            }
            Err(e) => {
                out.failed += 1;
                if out.errors.len() < MAX_ERRORS {
                    out.errors.push(format!("{e:#}"));
                }
            }
        }
        index += stride;
    }
    out
}

/// Child side: after `go`, this share of the connectors for the whole period.
pub async fn child(p: Params, share: Share) -> anyhow::Result<()> {
    let (first, count) = share.part(p.concurrency);
    procs::report("ready", &serde_json::json!({ "connectors": count }))?;
    procs::wait_go().await?;
    let cpu_at_go = procinfo::cpu_seconds(std::process::id());
    let end = Instant::now() + Duration::from_secs_f64(p.seconds);
    let mut tasks = JoinSet::new();
    for slot in first..first + count {
        tasks.spawn(connector(share, slot, p.concurrency, end));
    }
    let mut out = Outcome::default();
    while let Some(joined) = tasks.join_next().await {
        let o = joined?;
        out.done += o.done;
        out.failed += o.failed;
        for e in o.errors {
            if out.errors.len() < MAX_ERRORS {
                out.errors.push(e);
            }
        }
        out.latency.merge(&o.latency);
    }
    out.cpu_s = procinfo::cpu_seconds(std::process::id()) - cpu_at_go;
    procs::report("result", &out)
}

/// Parent side: one run.
pub async fn parent(p: &Params, load: &Load, d: &Deployment) -> anyhow::Result<Figures> {
    if p.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let procs = load.procs.min(p.concurrency);
    // Every connection leaves a port in TIME_WAIT for a minute: spread them widely.
    let sources = if load.sources > 0 { load.sources } else { 16 };
    let mut kids = Children::spawn(&Job::Handshake(p.clone()), load, procs, sources, d)?;
    let _: Vec<serde_json::Value> = kids.collect("ready", Duration::from_secs(60)).await?;
    let cpu = CpuSample::start(&[
        ("gateways", d.pids("gateway")),
        ("workers", d.pids("worker")),
        ("loadgen", kids.pids()),
    ]);
    let window = CpuSample::start(&[
        ("gateways", d.pids("gateway")),
        ("workers", d.pids("worker")),
    ]);
    kids.go().await?;
    tokio::time::sleep(Duration::from_secs_f64(p.seconds)).await;
    let cpu = cpu.percent();
    let outcomes: Vec<Outcome> = kids
        .collect("result", STEP_TIMEOUT + Duration::from_secs(30))
        .await?;
    let window = window.seconds();
    kids.wait().await;
    let done: u64 = outcomes.iter().map(|o| o.done).sum();
    let failed: u64 = outcomes.iter().map(|o| o.failed).sum();
    for e in outcomes.iter().flat_map(|o| &o.errors) {
        eprintln!("handshake error: {e}");
    }
    let mut latency = Histogram::default();
    for o in &outcomes {
        latency.merge(&o.latency);
    }
    let loadgen_s: f64 = outcomes.iter().map(|o| o.cpu_s).sum();
    eprintln!("cpu while connecting: {}", procinfo::format_cpu(&cpu));
    let ms = |us: u64| us as f64 / 1e3;
    let per = |s: f64| (s * 1e6 / done.max(1) as f64 * 10.0).round() / 10.0;
    Ok(vec![
        ("connections", done as f64),
        ("failed", failed as f64),
        ("per_s", (done as f64 / p.seconds).round()),
        ("p50_ms", ms(latency.quantile(0.5))),
        ("p99_ms", ms(latency.quantile(0.99))),
        ("max_ms", ms(latency.max())),
        ("cpu_gateways_pct", cpu["gateways"].round()),
        ("cpu_workers_pct", cpu["workers"].round()),
        ("cpu_loadgen_pct", cpu["loadgen"].round()),
        ("cpu_others_pct", cpu["others"].round()),
        ("cpu_softirq_pct", cpu["softirq"].round()),
        ("cpu_steal_pct", cpu["steal"].round()),
        ("gateway_us_per_conn", per(window["gateways"])),
        ("workers_us_per_conn", per(window["workers"])),
        ("loadgen_us_per_conn", per(loadgen_s)),
    ])
}
