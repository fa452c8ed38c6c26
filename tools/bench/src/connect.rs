//! `connect`: N idle clients — connected and prompted for a name, never logged in (a
//! login is announced to everybody, which is quadratic) — held for a while. A
//! WebSocket client is connected once its upgrade is answered `101` (which proves a
//! worker ran the upgrade hook); the browser chat sends nothing more before a login.
//!
//! Figures: clients connected and failed, connect rate, connect latency (until the
//! prompt or the `101` arrives), the gateways' resident memory (sum of `VmRSS`) in
//! total and per client, how many clients were still connected at the end of the
//! hold, and the CPU time the gateways, workers and the generator spent per connect.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::{self, PROMPT, STEP_TIMEOUT};
use crate::deploy::Deployment;
use crate::procinfo::{self, CpuSample};
use crate::procs::{self, Children, Share};
use crate::stats::Histogram;
use crate::wire::{Conn, Protocol};
use crate::{Figures, Job, Load};

/// Parameters of `connect`.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct Params {
    /// Idle clients to open, over all load-generator processes.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Seconds to hold them once all are connected (gateway memory is read then).
    #[arg(long, default_value_t = 5.0)]
    pub hold: f64,
    /// Connects in flight at once, per load-generator process.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
}

/// A child's connect phase.
#[derive(Debug, Serialize, Deserialize)]
struct Ready {
    connected: u64,
    failed: u64,
    errors: Vec<String>,
    started_us: u64,
    ended_us: u64,
    latency: Histogram,
}

/// A child's check at the end of the hold.
#[derive(Debug, Serialize, Deserialize)]
struct Done {
    alive: u64,
}

/// Most error messages a child passes on.
const MAX_ERRORS: usize = 3;

/// Connects one client and reads the name prompt (text) or the upgrade's answer.
async fn open_idle(share: &Share, index: usize) -> anyhow::Result<Conn> {
    let (mut stream, _) = client::open(share, index).await?;
    if share.protocol == Protocol::Websocket {
        return Ok(stream);
    }
    // A small buffer of our own: 100,000 buffered readers would cost the load
    // generator more memory than the gateways.
    // Lines sent to everybody may come first (not in this scenario, but in a shared
    // deployment); only the tail that may still hold the prompt is kept.
    let prompt = format!("{PROMPT}\n");
    let mut got = Vec::with_capacity(128);
    let mut buf = [0u8; 64];
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    while client::after(&got, prompt.as_bytes()).is_none() {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .map_err(|_| anyhow::anyhow!("no prompt within {STEP_TIMEOUT:?}"))??;
        if n == 0 {
            bail!("closed before the prompt");
        }
        got.extend_from_slice(&buf[..n]);
        let keep = got.len().saturating_sub(prompt.len() + buf.len());
        got.drain(..keep);
    }
    Ok(stream)
}

/// Child side: opens this share of the clients, reports, holds until `go`, checks.
pub async fn child(p: Params, share: Share) -> anyhow::Result<()> {
    let (first, count) = share.part(p.clients);
    let started_us = client::now_micros();
    let permits = Arc::new(Semaphore::new(p.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for index in first..first + count {
        let permit = permits.clone().acquire_owned().await?;
        tasks.spawn(async move {
            let t = Instant::now();
            let result = open_idle(&share, index).await;
            drop(permit);
            (result, t.elapsed())
        });
    }
    let mut streams = Vec::with_capacity(count);
    let mut ready = Ready {
        connected: 0,
        failed: 0,
        errors: vec![],
        started_us,
        ended_us: 0,
        latency: Histogram::default(),
    };
    while let Some(joined) = tasks.join_next().await {
        match joined? {
            (Ok(stream), took) => {
                ready.connected += 1;
                ready.latency.record(took.as_micros() as u64);
                streams.push(stream);
            }
            (Err(e), _) => {
                ready.failed += 1;
                if ready.errors.len() < MAX_ERRORS {
                    ready.errors.push(format!("{e:#}"));
                }
            }
        }
    }
    ready.ended_us = client::now_micros();
    procs::report("ready", &ready)?;
    procs::wait_go().await?;
    let mut alive = 0;
    for s in &mut streams {
        alive += u64::from(s.alive().await);
    }
    procs::report("result", &Done { alive })
}

/// Parent side: one run.
pub async fn parent(p: &Params, load: &Load, d: &Deployment) -> anyhow::Result<Figures> {
    let per_proc = p.clients.div_ceil(load.procs);
    if per_proc > 19_500 {
        bail!("{per_proc} clients per process is over the open-file limit; raise --procs");
    }
    let baseline = d.gateway_rss();
    let mut kids = Children::spawn(
        &Job::Connect(p.clone()),
        load,
        load.procs,
        load.sources_for(p.clients),
        d,
    )?;
    let cpu = CpuSample::start(&[
        ("gateways", d.pids("gateway")),
        ("workers", d.pids("worker")),
        ("loadgen", kids.pids()),
    ]);
    let ready: Vec<Ready> = kids.collect("ready", Duration::from_secs(120)).await?;
    let switches = cpu.switches();
    let cpu = cpu.seconds();
    let connected: u64 = ready.iter().map(|r| r.connected).sum();
    let failed: u64 = ready.iter().map(|r| r.failed).sum();
    for e in ready.iter().flat_map(|r| &r.errors) {
        eprintln!("connect error: {e}");
    }
    let first = ready.iter().map(|r| r.started_us).min().unwrap_or(0);
    let last = ready.iter().map(|r| r.ended_us).max().unwrap_or(0);
    let secs = (last.saturating_sub(first) as f64 / 1e6).max(1e-3);
    let mut latency = Histogram::default();
    for r in &ready {
        latency.merge(&r.latency);
    }

    // Hold; the gateways' stats files refresh once a second.
    let hold = Duration::from_secs_f64(p.hold.max(1.5));
    tokio::time::sleep(hold).await;
    let rss = d.gateway_rss();
    let pss = d.gateway_pss();
    let reported = d.gateway_clients();

    kids.go().await?;
    let done: Vec<Done> = kids.collect("result", Duration::from_secs(60)).await?;
    kids.wait().await;
    let alive: u64 = done.iter().map(|d| d.alive).sum();
    let per = |bytes: u64| bytes as f64 / connected.max(1) as f64;
    let us_per = |group: &str| (cpu[group] * 1e6 / connected.max(1) as f64).round();
    Ok(vec![
        ("clients", connected as f64),
        ("failed", failed as f64),
        ("alive_after_hold", alive as f64),
        ("gateway_reported", reported as f64),
        ("connects_per_s", (connected as f64 / secs).round()),
        ("connect_p50_ms", latency.quantile(0.5) as f64 / 1e3),
        ("connect_p99_ms", latency.quantile(0.99) as f64 / 1e3),
        ("gateway_rss_mib", rss as f64 / (1 << 20) as f64),
        ("rss_bytes_per_client", per(rss).round()),
        ("gateway_pss_mib", pss as f64 / (1 << 20) as f64),
        ("pss_bytes_per_client", per(pss).round()),
        (
            "added_bytes_per_client",
            per(rss.saturating_sub(baseline)).round(),
        ),
        ("gateway_us_per_connect", us_per("gateways")),
        ("workers_us_per_connect", us_per("workers")),
        ("loadgen_us_per_connect", us_per("loadgen")),
        (
            "gateway_switches_per_connect",
            procinfo::per_count(switches["gateways"], connected),
        ),
        (
            "workers_switches_per_connect",
            procinfo::per_count(switches["workers"], connected),
        ),
    ])
}
